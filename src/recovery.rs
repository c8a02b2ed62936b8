//! One-time tokens of account recovery (password reset, e-mail verification): 256 random
//! bits, shown once in a mail, kept only as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

/// Random bytes in a token (256 bits; the contract asks for at least 128).
const TOKEN_BYTES: usize = 32;

/// What a token is for; a token made for one purpose is refused for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST /api/password/reset/confirm/`
    Reset,
    /// `POST /api/email/verify/`
    Verify,
}

impl Purpose {
    /// The one-letter code the tables keep (`authd_recovery_token.purpose`, `authd_outbox.kind`).
    pub fn code(self) -> &'static str {
        match self {
            Purpose::Reset => "r",
            Purpose::Verify => "v",
        }
    }

    /// The purpose of a code read back from the tables.
    pub fn from_code(code: &str) -> Option<Purpose> {
        match code {
            "r" => Some(Purpose::Reset),
            "v" => Some(Purpose::Verify),
            _ => None,
        }
    }
}

/// A new token: what the mail carries, and the hash the database keeps.
pub struct NewToken {
    /// The token in base64url (43 characters), for the mail only.
    pub token: String,
    /// Its SHA-256.
    pub hash: Vec<u8>,
    /// A random `Message-ID` local part for the mail that carries it.
    pub message_key: String,
}

/// Makes a token from the operating system's randomness.
pub fn new_token() -> Result<NewToken, String> {
    let mut raw = [0u8; TOKEN_BYTES + 12];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
    let token = B64.encode(&raw[..TOKEN_BYTES]);
    let hash = Sha256::digest(token.as_bytes()).to_vec();
    let message_key = raw[TOKEN_BYTES..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(NewToken {
        token,
        hash,
        message_key,
    })
}

/// The hash to look a presented token up by; `None` for anything that cannot be a token
/// (wrong length or alphabet), which is then refused without a database round trip.
pub fn token_hash(presented: &str) -> Option<Vec<u8>> {
    let decoded = B64.decode(presented.as_bytes()).ok()?;
    (decoded.len() == TOKEN_BYTES && B64.encode(&decoded) == presented)
        .then(|| Sha256::digest(presented.as_bytes()).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_found_by_their_hash() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 43);
        assert_eq!(token_hash(&a.token), Some(a.hash.clone()));
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.message_key.len(), 24);
    }

    #[test]
    fn what_cannot_be_a_token_is_refused() {
        let t = new_token().unwrap().token;
        for bad in [
            "",
            "abc",
            &t[..42],
            &format!("{t}A"),
            &t.replace(|c: char| c.is_ascii_alphabetic(), "+"),
            &format!("{}=", &t[..42]),
        ] {
            assert_eq!(token_hash(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn purposes_round_trip() {
        for p in [Purpose::Reset, Purpose::Verify] {
            assert_eq!(Purpose::from_code(p.code()), Some(p));
        }
        assert_eq!(Purpose::from_code("x"), None);
    }
}
