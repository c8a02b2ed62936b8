//! Parsing the `Cookie` request header (RFC 6265 §5.4) and building `Set-Cookie`.

use std::time::Duration;

/// The value of the first cookie called `name` in a `Cookie` header, with surrounding
/// double quotes removed. Pairs without `=` are skipped, as browsers do.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim_matches(is_ows) != name {
            return None;
        }
        let v = v.trim_matches(is_ows);
        Some(
            v.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v),
        )
    })
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// How the session cookie is written: its name and whether it is `Secure`.
#[derive(Debug, Clone)]
pub struct CookieSpec {
    /// Cookie name, `jwt` by default.
    pub name: String,
    /// Add the `Secure` attribute.
    pub secure: bool,
    /// `SameSite`: `Lax` for the access token, `Strict` for the refresh token.
    pub same_site: &'static str,
}

impl CookieSpec {
    /// `Set-Cookie` value that stores `token` for `ttl`.
    pub fn set(&self, token: &str, ttl: Duration) -> String {
        format!(
            "{}={}; HttpOnly; Path=/; Max-Age={}; SameSite={}{}",
            self.name,
            token,
            ttl.as_secs(),
            self.same_site,
            self.secure_attr()
        )
    }

    /// `Set-Cookie` value that clears the cookie, with the same attributes.
    pub fn clear(&self) -> String {
        format!(
            "{}=; HttpOnly; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite={}{}",
            self.name,
            self.same_site,
            self.secure_attr()
        )
    }

    fn secure_attr(&self) -> &'static str {
        if self.secure { "; Secure" } else { "" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_cookie_among_several() {
        assert_eq!(find("jwt=abc", "jwt"), Some("abc"));
        assert_eq!(find("a=1; jwt=abc; b=2", "jwt"), Some("abc"));
        assert_eq!(find("a=1;jwt=abc;b=2", "jwt"), Some("abc"));
        assert_eq!(find("  a=1 ;  jwt=abc  ; b=2", "jwt"), Some("abc"));
        assert_eq!(find("a=1;\tjwt=abc", "jwt"), Some("abc"));
    }

    #[test]
    fn quoted_and_empty_values() {
        assert_eq!(find("jwt=\"abc\"", "jwt"), Some("abc"));
        assert_eq!(find("jwt=\"\"", "jwt"), Some(""));
        assert_eq!(find("jwt=", "jwt"), Some(""));
        assert_eq!(find("jwt=\"abc", "jwt"), Some("\"abc"));
    }

    #[test]
    fn names_must_match_exactly() {
        assert_eq!(find("xjwt=1; jwtx=2; JWT=3", "jwt"), None);
        assert_eq!(find("a=1; b=2", "jwt"), None);
        assert_eq!(find("", "jwt"), None);
        assert_eq!(find(";;;", "jwt"), None);
        assert_eq!(find("jwt", "jwt"), None);
        assert_eq!(find("jwt=a=b", "jwt"), Some("a=b"));
    }

    #[test]
    fn first_of_two_wins() {
        assert_eq!(find("jwt=first; jwt=second", "jwt"), Some("first"));
    }

    #[test]
    fn set_cookie_carries_every_attribute() {
        let spec = CookieSpec {
            name: "jwt".into(),
            secure: true,
            same_site: "Lax",
        };
        let s = spec.set("tok", Duration::from_secs(3600));
        assert_eq!(
            s,
            "jwt=tok; HttpOnly; Path=/; Max-Age=3600; SameSite=Lax; Secure"
        );
        let c = spec.clear();
        assert!(c.starts_with("jwt=; HttpOnly; Path=/; Max-Age=0;"));
        assert!(c.ends_with("SameSite=Lax; Secure"));
        let dev = CookieSpec {
            name: "jwt".into(),
            secure: false,
            same_site: "Lax",
        };
        assert!(!dev.set("t", Duration::from_secs(1)).contains("Secure"));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_header(s in "\\PC*") {
            let _ = find(&s, "jwt");
        }

        #[test]
        fn finds_a_cookie_wherever_it_sits(
            before in proptest::collection::vec("[a-ik-z]{1,8}=[a-z0-9]{0,8}", 0..4),
            after in proptest::collection::vec("[a-z]{1,8}=[a-z0-9]{0,8}", 0..4),
            value in "[A-Za-z0-9._-]{0,64}",
        ) {
            let mut parts = before.clone();
            parts.push(format!("jwt={value}"));
            parts.extend(after);
            let header = parts.join("; ");
            prop_assert_eq!(find(&header, "jwt"), Some(value.as_str()));
        }
    }
}
