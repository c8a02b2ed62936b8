//! bcrypt hashing and verification, stored in Django's `bcrypt$<hash>` format so that a
//! Django configured with `BCryptPasswordHasher` can read what authd writes.

use std::sync::OnceLock;

use crate::domain::{PASSWORD_MAX_BYTES, Password};

/// Prefix Django's `BCryptPasswordHasher` puts before the bcrypt hash.
const DJANGO_PREFIX: &str = "bcrypt$";

/// Hashes and verifies passwords at one bcrypt cost.
pub struct Hasher {
    cost: u32,
    dummy: OnceLock<String>,
}

impl Hasher {
    /// A hasher at `cost`.
    pub fn new(cost: u32) -> Hasher {
        Hasher {
            cost,
            dummy: OnceLock::new(),
        }
    }

    /// Computes the dummy hash now (call from a background thread at start, so the first
    /// login of an unknown email costs the same as any other).
    pub fn warm_up(&self) {
        self.dummy_hash();
    }

    fn dummy_hash(&self) -> &str {
        self.dummy.get_or_init(|| {
            bcrypt::hash("authd dummy password", self.cost).unwrap_or_else(|_| {
                "$2b$04$invalidinvalidinvalidinvalidinvalidinvalidinvalidinv".into()
            })
        })
    }

    /// A storable hash of `password`.
    pub fn hash(&self, password: &Password) -> Result<String, String> {
        bcrypt::hash(password.expose(), self.cost)
            .map(|h| format!("{DJANGO_PREFIX}{h}"))
            .map_err(|e| format!("bcrypt: {e}"))
    }

    /// Whether `password` matches `stored`. `None` for `stored` means no such user: the
    /// same bcrypt work is done against a dummy hash so that timing does not tell.
    /// A hash it cannot read is a failed login, logged, never an error to the client.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let too_long = password.len() > PASSWORD_MAX_BYTES;
        let hash = stored.map(|s| s.strip_prefix(DJANGO_PREFIX).unwrap_or(s));
        match hash {
            Some(h) if h.starts_with("$2") => {
                // bcrypt only reads 72 bytes: a longer password must never match.
                let ok = bcrypt::verify(password, h).unwrap_or_else(|e| {
                    log::warn!("stored password hash is unreadable: {e}");
                    false
                });
                ok && !too_long
            }
            other => {
                if other.is_some() {
                    log::warn!("stored password hash has a format authd does not read");
                }
                let _ = bcrypt::verify(password, self.dummy_hash());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_carry_the_django_prefix() {
        let h = Hasher::new(4);
        let p = Password::parse("Password123").unwrap();
        let stored = h.hash(&p).unwrap();
        assert!(stored.starts_with("bcrypt$$2b$04$"));
        assert!(h.verify("Password123", Some(&stored)));
        assert!(!h.verify("Password124", Some(&stored)));
        assert!(!h.verify("Password123", None));
    }

    #[test]
    fn a_longer_password_with_the_same_first_72_bytes_does_not_match() {
        let h = Hasher::new(4);
        let p72 = "x".repeat(72);
        let stored = h.hash(&Password::parse(&p72).unwrap()).unwrap();
        assert!(h.verify(&p72, Some(&stored)));
        assert!(!h.verify(&format!("{p72}y"), Some(&stored)));
    }

    #[test]
    fn unreadable_hashes_are_a_failed_login() {
        let h = Hasher::new(4);
        for stored in ["", "!unusable", "bcrypt$$2b$04$short", "md5$abc$def"] {
            assert!(!h.verify("Password123", Some(stored)), "{stored}");
        }
    }
}
