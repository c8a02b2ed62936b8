//! Password hashing and verification. New hashes are bcrypt in Django's
//! `bcrypt_sha256$<hash>` format, which a stock Django reads; existing hashes in Django's
//! formats (`pbkdf2_sha256$`, `pbkdf2_sha1$`, `bcrypt_sha256$`, `bcrypt$`) are verified so that
//! a database taken over from the Django original keeps every user.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::domain::{PASSWORD_MAX_BYTES, Password};

/// Django's `BCryptSHA256PasswordHasher`: bcrypt of the hex SHA-256 of the password. It is in
/// Django's default `PASSWORD_HASHERS`, so users authd writes can log in to Django's admin.
const BCRYPT_SHA256: &str = "bcrypt_sha256$";
/// Django's `BCryptPasswordHasher` (what authd wrote before it wrote `bcrypt_sha256$`).
const BCRYPT: &str = "bcrypt$";

/// More PBKDF2 iterations than this in a stored hash is refused rather than run: it would pin
/// a hashing worker for tens of seconds (Django 5.2 itself uses 1,000,000).
const MAX_PBKDF2_ITERATIONS: u32 = 20_000_000;

/// What a login's password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Wrong password, unusable or unreadable hash, or no such user.
    Mismatch,
    /// The password matches and the stored hash is current.
    Match,
    /// The password matches, but the stored hash should be replaced by [`Hasher::hash`]'s
    /// (another algorithm, or another bcrypt cost).
    MatchOutdated,
}

impl Verdict {
    /// Whether the password matched.
    pub fn matches(self) -> bool {
        self != Verdict::Mismatch
    }
}

/// A stored hash, read.
enum Stored<'a> {
    /// A bcrypt hash (`$2b$…`), applied to the password itself or to its hex SHA-256.
    Bcrypt { hash: &'a str, sha256: bool },
    /// Django's PBKDF2 hashers: `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`.
    Pbkdf2 {
        sha1: bool,
        iterations: u32,
        salt: &'a str,
        hash: &'a str,
    },
}

impl<'a> Stored<'a> {
    fn parse(stored: &'a str) -> Option<Stored<'a>> {
        if let Some(h) = stored.strip_prefix(BCRYPT_SHA256) {
            return Some(Stored::Bcrypt {
                hash: h,
                sha256: true,
            });
        }
        if let Some(h) = stored.strip_prefix(BCRYPT) {
            return Some(Stored::Bcrypt {
                hash: h,
                sha256: false,
            });
        }
        if stored.starts_with("$2") {
            return Some(Stored::Bcrypt {
                hash: stored,
                sha256: false,
            });
        }
        let (algorithm, rest) = stored.split_once('$')?;
        let sha1 = match algorithm {
            "pbkdf2_sha256" => false,
            "pbkdf2_sha1" => true,
            _ => return None,
        };
        let mut parts = rest.split('$');
        let (Some(iterations), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let iterations: u32 = iterations.parse().ok()?;
        if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS || hash.is_empty() {
            return None;
        }
        Some(Stored::Pbkdf2 {
            sha1,
            iterations,
            salt,
            hash,
        })
    }
}

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
            bcrypt::hash(sha256_hex("authd dummy password"), self.cost).unwrap_or_else(|_| {
                "$2b$04$invalidinvalidinvalidinvalidinvalidinvalidinvalidinv".into()
            })
        })
    }

    /// A storable hash of `password`, in Django's `bcrypt_sha256$` format.
    pub fn hash(&self, password: &Password) -> Result<String, String> {
        self.hash_str(password.expose())
    }

    /// A fresh hash of a password that has just matched its stored hash (to bring an old
    /// format up to date: it may predate authd's length rules, which must not lock it out).
    pub fn rehash(&self, matched: &str) -> Result<String, String> {
        self.hash_str(matched)
    }

    fn hash_str(&self, password: &str) -> Result<String, String> {
        bcrypt::hash(sha256_hex(password), self.cost)
            .map(|h| format!("{BCRYPT_SHA256}{h}"))
            .map_err(|e| format!("bcrypt: {e}"))
    }

    /// Checks `password` against `stored`. `None` for `stored` means no such user: the same
    /// bcrypt work is done against a dummy hash so that timing does not tell. An unusable
    /// (`!…`) or unreadable hash is a mismatch, logged, never an error to the client.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> Verdict {
        let parsed = stored.and_then(Stored::parse);
        let (ok, current) = match parsed {
            Some(Stored::Bcrypt { hash, sha256 }) => {
                let ok = if sha256 {
                    bcrypt::verify(sha256_hex(password), hash)
                } else {
                    // Plain bcrypt reads only 72 bytes: a longer password must never match
                    // on its first 72. The other formats read every byte (a password Django
                    // took longer than 72 bytes still logs in, and is then moved to
                    // bcrypt_sha256, which keeps reading every byte).
                    bcrypt::verify(password, hash)
                        .map(|ok| ok && password.len() <= PASSWORD_MAX_BYTES)
                }
                .unwrap_or_else(|e| {
                    log::warn!("stored password hash is unreadable: {e}");
                    false
                });
                (ok, sha256 && bcrypt_cost(hash) == Some(self.cost))
            }
            Some(Stored::Pbkdf2 {
                sha1,
                iterations,
                salt,
                hash,
            }) => (
                pbkdf2_matches(password, sha1, iterations, salt, hash),
                false,
            ),
            None => {
                match stored {
                    Some(s) if s.starts_with('!') => {} // Django's unusable password
                    Some(_) => log::warn!("stored password hash has a format authd does not read"),
                    None => {}
                }
                let _ = bcrypt::verify(sha256_hex(password), self.dummy_hash());
                (false, false)
            }
        };
        match (ok, current) {
            (false, _) => Verdict::Mismatch,
            (true, true) => Verdict::Match,
            (true, false) => Verdict::MatchOutdated,
        }
    }
}

/// Django's `BCryptSHA256PasswordHasher` pre-hash: the SHA-256 of the password, in lowercase hex.
fn sha256_hex(password: &str) -> String {
    sha2::Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cost in a `$2b$12$…` hash.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

/// PBKDF2-HMAC as Django encodes it: the derived key (the digest's length) in standard
/// base64 with padding, compared in constant time.
fn pbkdf2_matches(password: &str, sha1: bool, iterations: u32, salt: &str, expected: &str) -> bool {
    let mut buf = [0u8; 32];
    let key = if sha1 {
        let key = &mut buf[..20];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password.as_bytes(), salt.as_bytes(), iterations, key);
        key
    } else {
        let key = &mut buf[..];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), salt.as_bytes(), iterations, key);
        key
    };
    let computed = B64.encode(key);
    computed.as_bytes().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_hashes_are_djangos_bcrypt_sha256_and_current() {
        let h = Hasher::new(4);
        let p = Password::parse("Password123").unwrap();
        let stored = h.hash(&p).unwrap();
        assert!(stored.starts_with("bcrypt_sha256$$2b$04$"), "{stored}");
        assert_eq!(h.verify("Password123", Some(&stored)), Verdict::Match);
        assert_eq!(h.verify("Password124", Some(&stored)), Verdict::Mismatch);
        assert_eq!(h.verify("Password123", None), Verdict::Mismatch);
        // Another cost is a match to bring up to date.
        assert_eq!(
            Hasher::new(5).verify("Password123", Some(&stored)),
            Verdict::MatchOutdated
        );
    }

    #[test]
    fn a_longer_password_with_the_same_first_72_bytes_does_not_match() {
        let h = Hasher::new(4);
        let p72 = "x".repeat(72);
        let plain = format!("bcrypt${}", bcrypt::hash(&p72, 4).unwrap());
        assert_eq!(h.verify(&p72, Some(&plain)), Verdict::MatchOutdated);
        assert_eq!(
            h.verify(&format!("{p72}y"), Some(&plain)),
            Verdict::Mismatch
        );
        let stored = h.hash(&Password::parse(&p72).unwrap()).unwrap();
        assert_eq!(h.verify(&p72, Some(&stored)), Verdict::Match);
        assert_eq!(
            h.verify(&format!("{p72}y"), Some(&stored)),
            Verdict::Mismatch
        );
    }

    #[test]
    fn a_django_password_over_72_bytes_logs_in_and_moves_to_bcrypt_sha256_whole() {
        let h = Hasher::new(4);
        let long = "Long passphrase for Django ".repeat(4);
        let long = &long[..100];
        // PBKDF2-HMAC-SHA256, 1000 iterations, salt "longsalt", as Django encodes it.
        let stored = "pbkdf2_sha256$1000$longsalt$eCStnIHYXW46aT/xVCj/n3zp89KpNukGN1XaWc6CPyI=";
        assert_eq!(h.verify(long, Some(stored)), Verdict::MatchOutdated);
        assert_eq!(h.verify(&long[..72], Some(stored)), Verdict::Mismatch);
        let moved = h.rehash(long).unwrap();
        assert_eq!(h.verify(long, Some(&moved)), Verdict::Match);
        assert_eq!(h.verify(&long[..72], Some(&moved)), Verdict::Mismatch);
        assert_eq!(
            h.verify(&format!("{long}x"), Some(&moved)),
            Verdict::Mismatch
        );
    }

    /// Hashes made by Django 5.2's own hashers (`make_password` with a fixed salt).
    #[test]
    fn djangos_published_formats_verify() {
        let h = Hasher::new(4);
        let cases = [
            "pbkdf2_sha256$1000$saltsaltsalt$b1Rw+wv6txPoJEfIbnnOXoaAZaQ8yNmaIlUu1JJIBVU=",
            "pbkdf2_sha1$1000$saltsaltsalt$RwuabG7k4ozp5ParyF+P1vFrcBg=",
            "bcrypt$$2b$04$Vn3iGeTk0WvKlLP0uVyOA.T632cgjRLRV3rRI1kwEpLu5wPbNG9Xq",
            "bcrypt_sha256$$2b$04$Vn3iGeTk0WvKlLP0uVyOA.o8T6OjC25pkdrtXnz0ubOpKfQQlUAWe",
        ];
        for stored in cases {
            assert!(h.verify("Password123", Some(stored)).matches(), "{stored}");
            assert_eq!(
                h.verify("Password124", Some(stored)),
                Verdict::Mismatch,
                "{stored}"
            );
        }
    }

    #[test]
    fn unusable_and_unreadable_hashes_are_a_mismatch() {
        let h = Hasher::new(4);
        for stored in [
            "",
            "!unusable",
            "!",
            "bcrypt$$2b$04$short",
            "md5$abc$def",
            "pbkdf2_sha256$0$salt$abc=",
            "pbkdf2_sha256$999999999$salt$abc=",
            "pbkdf2_sha256$1000$salt",
            "pbkdf2_sha256$1000$salt$$",
            "pbkdf2_sha256$x$salt$abc=",
        ] {
            assert_eq!(
                h.verify("Password123", Some(stored)),
                Verdict::Mismatch,
                "{stored}"
            );
        }
    }
}
