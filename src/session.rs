//! Refresh tokens: opaque strings that name a session and a generation of it, signed with a
//! key derived from `SECRET_KEY` for this one purpose. Nothing is stored but the session
//! row: a token is valid while its generation is the session's current one (or the one just
//! retired, within the reuse grace). A refresh token is never a JWT (no access token parses
//! as one), and no JWT key can forge one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Every refresh token starts with this (a JWT starts with `eyJ`).
const PREFIX: &str = "rt1.";
/// The longest refresh token parsed; anything longer is refused unread.
const MAX_LEN: usize = 200;

/// Makes and checks refresh tokens.
pub struct RefreshTokens {
    key: Vec<u8>,
}

impl RefreshTokens {
    /// The refresh-token key: HMAC-SHA256(SECRET_KEY, a label of its own), so that it is
    /// never the JWT key.
    pub fn new(secret_key: &[u8]) -> RefreshTokens {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret_key).expect("HMAC takes any key");
        mac.update(b"authd refresh-token key v1");
        RefreshTokens {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self, session: i64, generation: i32) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(format!("{session}.{generation}").as_bytes());
        mac
    }

    /// The token for `generation` of `session`.
    pub fn issue(&self, session: i64, generation: i32) -> String {
        let tag = self.mac(session, generation).finalize().into_bytes();
        format!("{PREFIX}{session}.{generation}.{}", B64.encode(tag))
    }

    /// `(session, generation)` of a well-formed token with a valid tag (checked in
    /// constant time); `None` otherwise.
    pub fn verify(&self, token: &str) -> Option<(i64, i32)> {
        if token.len() > MAX_LEN {
            return None;
        }
        let mut parts = token.strip_prefix(PREFIX)?.split('.');
        let (session, generation, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(session) || !digits(generation) {
            return None;
        }
        let (session, generation): (i64, i32) = (session.parse().ok()?, generation.parse().ok()?);
        let tag = B64.decode(tag).ok()?;
        self.mac(session, generation).verify_slice(&tag).ok()?;
        // One spelling only: the canonical form must be what was sent.
        (self.issue(session, generation) == token).then_some((session, generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_session_and_generation_and_nothing_else_passes() {
        let t = RefreshTokens::new(b"0123456789abcdef0123456789abcdef");
        let tok = t.issue(42, 7);
        assert_eq!(t.verify(&tok), Some((42, 7)));
        let other = RefreshTokens::new(b"another key, 32 bytes or more....");
        assert_eq!(other.verify(&tok), None);
        let tag = tok.rsplit('.').next().unwrap();
        for bad in [
            String::new(),
            "rt1.".into(),
            format!("rt1.42.8.{tag}"),
            format!("rt1.43.7.{tag}"),
            format!("rt1.042.7.{tag}"),
            format!("rt1.+42.7.{tag}"),
            format!("rt1.42.7.{tag}="),
            format!("rt1.42.7.{tag}.x"),
            format!("{tok}x"),
            tok.replace("rt1.", "rt2."),
            "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6MX0.sig".into(),
            "x".repeat(500),
        ] {
            assert_eq!(t.verify(&bad), None, "{bad:?}");
        }
    }
}
