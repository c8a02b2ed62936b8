//! `Name`, `Email`, `Password`: types that can only be built by parsing valid input.

use std::fmt;

/// A user's display name: trimmed, 1 to 255 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

/// A plausible email address, trimmed, at most 254 characters, domain lowercased; with
/// its [`canonical_email`] form, which decides which account it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    stored: String,
    canonical: String,
}

/// The longest canonical form of an address, in characters (the
/// `authd_user_email.canonical` column).
pub const CANONICAL_MAX_CHARS: usize = 512;

/// Whether `c` is a default-ignorable code point (zero-width space, joiners, variation
/// selectors, soft hyphen, ...): invisible, so two addresses that differ only by one look
/// the same to a person.
pub fn is_default_ignorable(c: char) -> bool {
    icu_properties::CodePointSetData::new::<icu_properties::props::DefaultIgnorableCodePoint>()
        .contains(c)
}

fn nfkc(s: &str) -> String {
    icu_normalizer::ComposingNormalizerBorrowed::new_nfkc()
        .normalize(s)
        .into_owned()
}

/// `s` in NFKC with default-ignorable code points removed and outer whitespace trimmed,
/// case-folded too when `fold`; repeated until it stops changing (removing an invisible
/// character or folding can leave a string that NFKC changes again).
fn settle(s: &str, fold: bool) -> String {
    let mut s = s.to_string();
    for _ in 0..8 {
        let mut next: String = nfkc(&s)
            .chars()
            .filter(|c| !is_default_ignorable(*c))
            .collect();
        if fold {
            next = nfkc(&icu_casemap::CaseMapper::new().fold_string(&next));
        }
        let next = next.trim().to_string();
        if next == s {
            break;
        }
        s = next;
    }
    s
}

/// The one form of an address used for uniqueness, lookup and throttling, computed here and
/// nowhere else (no lowercasing in SQL): Unicode NFKC; default-ignorable code points removed;
/// the domain by UTS #46 to its ASCII (`xn--`) form, lowercased; the local part with full
/// Unicode case folding. `None` when the domain is not a valid IDNA name or the form is
/// longer than [`CANONICAL_MAX_CHARS`].
pub fn canonical_email(raw: &str) -> Option<String> {
    let visible = settle(raw, false);
    let (local, domain) = visible.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let domain = idna::domain_to_ascii(domain).ok()?;
    if domain.is_empty() {
        return None;
    }
    let local = settle(local, true);
    if local.is_empty() {
        return None;
    }
    let canonical = format!("{local}@{domain}");
    (canonical.chars().count() <= CANONICAL_MAX_CHARS).then_some(canonical)
}

/// A throttle or lookup key for any input, valid address or not: its canonical form, or
/// else the whole input folded the same way.
pub fn email_key(raw: &str) -> String {
    canonical_email(raw).unwrap_or_else(|| settle(raw, true))
}

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
        // Invisible characters are refused here, and removed in the canonical form, so that
        // no account holds one and a variant with one still finds the account.
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_default_ignorable(c))
        {
            return Err(invalid());
        }
        // The rules hold for the compatibility form (full-width letters and dots count as
        // the letters and dots they stand for); the address is stored as typed.
        let n = nfkc(s);
        let (local, domain) = n.split_once('@').ok_or_else(invalid)?;
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
        let canonical = canonical_email(s).ok_or_else(invalid)?;
        let (local, domain) = s.rsplit_once('@').ok_or_else(invalid)?;
        let stored = format!("{local}@{}", domain.to_lowercase());
        // Lowercasing can lengthen (İ is two characters in lower case).
        if stored.chars().count() > 254 {
            return Err("Ensure this field has no more than 254 characters.".into());
        }
        Ok(Email { stored, canonical })
    }

    /// The address as stored (as typed, trimmed, domain lowercased).
    pub fn as_str(&self) -> &str {
        &self.stored
    }

    /// The canonical form (see [`canonical_email`]).
    pub fn canonical(&self) -> &str {
        &self.canonical
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
        assert!(Email::parse("a\u{200B}b@example.com").is_err());
        assert!(Email::parse("ab@exa\u{AD}mple.com").is_err());
        // Lower case can be longer than what was typed: still within 254, or refused.
        let turkish = format!("a@{}.com", "İ".repeat(125));
        assert!(Email::parse(&turkish).is_err());
    }

    #[test]
    fn one_mailbox_one_canonical_form() {
        let same = [
            "Alice@Example.com",
            "alice@EXAMPLE.COM",
            "ALICE@example.com",
            "ａｌｉｃｅ@ｅｘａｍｐｌｅ．ｃｏｍ",
            "al\u{200B}ice@example.com",
            "alice@exam\u{200D}ple.com",
            " alice@example.com ",
        ];
        for s in same {
            assert_eq!(
                canonical_email(s).as_deref(),
                Some("alice@example.com"),
                "{s:?}"
            );
        }
        assert_eq!(
            canonical_email("zoë@BÜCHER.de"),
            canonical_email("ZOË@xn--bcher-kva.de")
        );
        assert_eq!(
            canonical_email("zoë@bücher.de").as_deref(),
            Some("zoë@xn--bcher-kva.de")
        );
        // Full case folding: ß folds to ss; the Turkish dotted capital I to i + U+0307.
        assert_eq!(
            canonical_email("STRAẞE@x.de"),
            canonical_email("strasse@x.de")
        );
        assert_eq!(
            canonical_email("\u{130}@x.de"),
            canonical_email("i\u{307}@x.de")
        );
        assert_eq!(Email::parse("İ@x.de").unwrap().canonical(), "i\u{307}@x.de");
        assert!(canonical_email("a@").is_none());
        assert!(canonical_email("@x.de").is_none());
        assert_eq!(email_key("  NOT AN ADDRESS "), "not an address");
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
        fn the_canonical_form_is_idempotent_stable_under_nfkc_and_bounded(s in "\\PC{0,300}") {
            if let Some(c) = canonical_email(&s) {
                prop_assert_eq!(canonical_email(&c), Some(c.clone()));
                prop_assert_eq!(canonical_email(&nfkc(&s)), Some(c.clone()));
                prop_assert!(c.chars().count() <= CANONICAL_MAX_CHARS);
                prop_assert!(!c.chars().any(is_default_ignorable));
            }
            prop_assert_eq!(email_key(&email_key(&s)), email_key(&s));
        }

        #[test]
        fn variants_of_one_mailbox_have_one_canonical_form(
            local in "[a-zA-Z0-9]{1,12}",
            domain in "[a-z]{1,10}",
            at in 0usize..12,
        ) {
            let plain = format!("{local}@{domain}.example");
            let want = canonical_email(&plain).unwrap();
            let upper = plain.to_uppercase();
            let full_width: String = format!("{local}@{domain}.example")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() {
                    char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap()
                } else if c == '.' { '\u{FF0E}' } else { c })
                .collect();
            let cut = at.min(local.len());
            let zero_width = format!("{}\u{200B}{}@{domain}.example", &local[..cut], &local[cut..]);
            for v in [upper, full_width, zero_width] {
                prop_assert_eq!(canonical_email(&v), Some(want.clone()), "{}", v);
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
