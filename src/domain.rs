//! `Name`, `Email`, `Password`: types that can only be built by parsing valid input.

use std::fmt;

/// A user's display name: trimmed, 1 to 255 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

/// A plausible email address, trimmed, at most 254 characters, domain lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// A password of 8 to 72 bytes in UTF-8 (bcrypt reads only 72).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

/// The longest password bcrypt reads in full, in bytes.
pub const PASSWORD_MAX_BYTES: usize = 72;
/// The shortest password accepted, in bytes.
pub const PASSWORD_MIN_BYTES: usize = 8;

impl Name {
    /// Parses a name, or says why not (in DRF's words where DRF has them).
    pub fn parse(raw: &str) -> Result<Name, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("This field may not be blank.".into());
        }
        if s.chars().count() > 255 {
            return Err("Ensure this field has no more than 255 characters.".into());
        }
        if s.chars().any(char::is_control) {
            return Err("Control characters are not allowed.".into());
        }
        Ok(Name(s.to_string()))
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Email {
    /// Parses an email address, or says why not.
    pub fn parse(raw: &str) -> Result<Email, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("This field may not be blank.".into());
        }
        if s.chars().count() > 254 {
            return Err("Ensure this field has no more than 254 characters.".into());
        }
        let invalid = || "Enter a valid email address.".to_string();
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = s.split_once('@').ok_or_else(invalid)?;
        if local.is_empty() || domain.contains('@') || !domain.contains('.') {
            return Err(invalid());
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if !domain.split('.').all(label_ok) {
            return Err(invalid());
        }
        Ok(Email(format!("{local}@{}", domain.to_lowercase())))
    }

    /// The address as stored (domain lowercased).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Password {
    /// Parses a password; never trims it.
    pub fn parse(raw: &str) -> Result<Password, String> {
        if raw.is_empty() {
            return Err("This field may not be blank.".into());
        }
        if raw.contains('\0') {
            return Err("Null characters are not allowed.".into());
        }
        if raw.len() < PASSWORD_MIN_BYTES {
            return Err(format!(
                "Ensure this field has at least {PASSWORD_MIN_BYTES} bytes."
            ));
        }
        if raw.len() > PASSWORD_MAX_BYTES {
            return Err(format!(
                "Ensure this field has no more than {PASSWORD_MAX_BYTES} bytes in UTF-8 (bcrypt reads only {PASSWORD_MAX_BYTES})."
            ));
        }
        Ok(Password(raw.to_string()))
    }

    /// The password's bytes, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_at_the_edges() {
        assert_eq!(Name::parse("  Alice \n").unwrap().as_str(), "Alice");
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse("").is_err());
        assert!(Name::parse(&"é".repeat(255)).is_ok());
        assert!(Name::parse(&"é".repeat(256)).is_err());
        assert!(Name::parse(&"a".repeat(255)).is_ok());
        assert!(Name::parse(&"a".repeat(256)).is_err());
        assert!(Name::parse("Al\u{0}ice").is_err());
        assert!(Name::parse("Al\u{7}ice").is_err());
        assert!(Name::parse("Al\nice").is_err());
        assert_eq!(Name::parse("Zoë 🦀 李").unwrap().as_str(), "Zoë 🦀 李");
        assert_eq!(
            Name::parse("Robert'); DROP TABLE accounts_user;--")
                .unwrap()
                .as_str(),
            "Robert'); DROP TABLE accounts_user;--"
        );
    }

    #[test]
    fn emails_at_the_edges() {
        assert_eq!(
            Email::parse(" Alice@Example.COM ").unwrap().as_str(),
            "Alice@example.com"
        );
        let local = "a".repeat(254 - "@example.com".len());
        assert!(Email::parse(&format!("{local}@example.com")).is_ok());
        assert!(Email::parse(&format!("{local}a@example.com")).is_err());
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a@b@example.com",
            "al ice@example.com",
            "alice@exa mple.com",
            "alice@exa_mple.com",
            "alice@.example.com",
            "alice@example..com",
            "alice@example.com.",
            "alice@-example.com",
            "ali\u{1}ce@example.com",
            "alice@example.com\u{0}",
            "alice\u{a0}@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Email::parse("zoë@BÜCHER.de").unwrap().as_str(),
            "zoë@bücher.de"
        );
        assert!(Email::parse("o'brien+tag@example.co.uk").is_ok());
    }

    #[test]
    fn passwords_at_the_edges() {
        assert!(Password::parse("Password123").is_ok());
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"a".repeat(72)).is_ok());
        assert!(Password::parse(&"a".repeat(73)).is_err());
        // 24 three-byte characters are 72 bytes; one more is 75.
        assert!(Password::parse(&"€".repeat(24)).is_ok());
        assert!(Password::parse(&"€".repeat(25)).is_err());
        // three characters, nine bytes: long enough in bytes
        assert!(Password::parse("€€€").is_ok());
        assert!(Password::parse("  spaces  ").is_ok());
        assert_eq!(
            Password::parse(" padded pw ").unwrap().expose(),
            " padded pw "
        );
        assert!(Password::parse("abc\0defgh").is_err());
        assert!(
            Password::parse(&"a".repeat(73))
                .unwrap_err()
                .contains("72 bytes")
        );
    }

    #[test]
    fn password_debug_hides_the_secret() {
        let p = Password::parse("Password123").unwrap();
        assert!(!format!("{p:?}").contains("Password123"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = Name::parse(&s);
            let _ = Email::parse(&s);
            let _ = Password::parse(&s);
        }

        #[test]
        fn valid_names_round_trip(s in "[^\\p{Cc}]{1,255}") {
            if let Ok(n) = Name::parse(&s) {
                prop_assert_eq!(n.as_str(), s.trim());
            }
        }

        #[test]
        fn parsed_emails_reparse_to_themselves(s in "[a-zA-Z0-9.+_-]{1,20}@[a-zA-Z0-9-]{1,10}\\.[a-zA-Z]{2,5}") {
            if let Ok(e) = Email::parse(&s) {
                let again = Email::parse(e.as_str()).unwrap();
                prop_assert_eq!(again.as_str(), e.as_str());
            }
        }
    }
}
