//! Issuing and verifying the HS256 JWT. Revocation is keyed on a claim (`jti`), never on
//! the token's bytes, so another encoding of the same token cannot dodge it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::Value;

/// Tokens longer than this are refused before any parsing or signature work.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 2;

/// Signs and verifies tokens with one key.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

/// A token that passed every check: signature, algorithm, expiry and claim types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user id (`id` claim), positive.
    pub user_id: i64,
    /// What revocation is keyed on: the `jti`, or the user and issue time for tokens
    /// without one (those the Django original issued).
    pub revocation_key: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

/// A freshly issued token.
pub struct Issued {
    /// The compact JWT.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    id: i64,
    iat: i64,
    exp: i64,
    jti: &'a str,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Tokens {
    /// A signer/verifier for `key`, issuing tokens that live `ttl`.
    pub fn new(key: &[u8], ttl: Duration) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Tokens {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
        }
    }

    /// Issues a token for `user_id`, with a fresh random `jti`.
    pub fn issue(&self, user_id: i64) -> Result<Issued, String> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
        let jti: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let iat = now_secs();
        let claims = Claims {
            id: user_id,
            iat,
            exp: iat + self.ttl.as_secs() as i64,
            jti: &jti,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("signing the token: {e}"))?;
        Ok(Issued { token, jti })
    }

    /// Verifies a token; the error says why it was refused (for the log, never the client).
    pub fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        if token.is_empty() {
            return Err("empty token");
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long");
        }
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &self.validation)
            .map_err(|_| "invalid token")?;
        let claims = data.claims;
        let user_id = claims
            .get("id")
            .and_then(Value::as_i64)
            .filter(|id| *id > 0)
            .ok_or("id claim is not a positive integer")?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or("exp claim is not an integer")?;
        let revocation_key = match claims.get("jti") {
            Some(Value::String(j)) if !j.is_empty() && j.len() <= 64 => j.clone(),
            Some(_) => return Err("jti claim is malformed"),
            None => {
                let iat = claims
                    .get("iat")
                    .and_then(Value::as_i64)
                    .ok_or("token has neither jti nor an integer iat")?;
                format!("iat:{user_id}:{iat}")
            }
        };
        Ok(Verified {
            user_id,
            revocation_key,
            exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::new(KEY, Duration::from_secs(3600))
    }

    fn sign(alg: Algorithm, key: &[u8], claims: Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn b64(v: &Value) -> String {
        use base64_url as b;
        b::encode(&serde_json::to_vec(v).unwrap())
    }

    /// Minimal unpadded base64url, enough to forge tokens in tests.
    mod base64_url {
        pub fn encode(data: &[u8]) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in data.chunks(3) {
                let n = chunk.len();
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let v = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
                for i in 0..=n {
                    out.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        }
    }

    fn valid_claims() -> Value {
        let now = now_secs();
        json!({"id": 7, "iat": now, "exp": now + 60, "jti": "abc"})
    }

    #[test]
    fn issued_tokens_verify() {
        let t = tokens();
        let issued = t.issue(42).unwrap();
        let v = t.verify(&issued.token).unwrap();
        assert_eq!(v.user_id, 42);
        assert_eq!(v.revocation_key, issued.jti);
    }

    #[test]
    fn two_tokens_for_one_user_have_different_keys() {
        let t = tokens();
        let a = t.verify(&t.issue(1).unwrap().token).unwrap();
        let b = t.verify(&t.issue(1).unwrap().token).unwrap();
        assert_ne!(a.revocation_key, b.revocation_key);
    }

    #[test]
    fn wrong_key_is_refused() {
        let tok = sign(
            Algorithm::HS256,
            b"another key another key another key",
            valid_claims(),
        );
        assert!(tokens().verify(&tok).is_err());
    }

    #[test]
    fn other_algorithms_are_refused_even_with_the_right_key() {
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let tok = sign(alg, KEY, valid_claims());
            assert!(tokens().verify(&tok).is_err(), "{alg:?}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        for alg in ["none", "None", "NONE"] {
            let tok = format!(
                "{}.{}.",
                b64(&json!({"alg": alg, "typ": "JWT"})),
                b64(&valid_claims())
            );
            assert!(tokens().verify(&tok).is_err(), "{alg}");
        }
    }

    #[test]
    fn tampered_payload_and_stripped_signature_are_refused() {
        let good = sign(Algorithm::HS256, KEY, valid_claims());
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = valid_claims();
        c["id"] = json!(1);
        let tampered = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
        assert!(tokens().verify(&tampered).is_err());
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert!(tokens().verify(&stripped).is_err());
        let two_parts = format!("{}.{}", parts[0], parts[1]);
        assert!(tokens().verify(&two_parts).is_err());
        assert!(tokens().verify(&good).is_ok());
    }

    #[test]
    fn expired_by_thirty_seconds_is_refused() {
        let now = now_secs();
        let tok = sign(
            Algorithm::HS256,
            KEY,
            json!({"id": 7, "iat": now - 100, "exp": now - 30}),
        );
        assert!(tokens().verify(&tok).is_err());
    }

    #[test]
    fn missing_exp_is_refused() {
        let tok = sign(Algorithm::HS256, KEY, json!({"id": 7, "iat": now_secs()}));
        assert!(tokens().verify(&tok).is_err());
    }

    #[test]
    fn id_must_be_a_positive_integer_that_fits_i64() {
        for id in [
            json!(0),
            json!(-1),
            json!("7"),
            json!(7.5),
            json!(null),
            json!(true),
            json!([7]),
            json!(u64::MAX),
        ] {
            let mut c = valid_claims();
            c["id"] = id.clone();
            let tok = sign(Algorithm::HS256, KEY, c);
            assert!(tokens().verify(&tok).is_err(), "id {id}");
        }
        let mut c = valid_claims();
        c.as_object_mut().unwrap().remove("id");
        assert!(tokens().verify(&sign(Algorithm::HS256, KEY, c)).is_err());
    }

    #[test]
    fn django_style_tokens_key_revocation_on_id_and_iat() {
        let now = now_secs();
        let tok = sign(
            Algorithm::HS256,
            KEY,
            json!({"id": 9, "iat": now, "exp": now + 60}),
        );
        let v = tokens().verify(&tok).unwrap();
        assert_eq!(v.revocation_key, format!("iat:9:{now}"));
    }

    #[test]
    fn oversized_and_garbage_tokens_are_refused() {
        assert!(tokens().verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        for junk in ["", ".", "..", "a.b.c", "\u{0}", "é.é.é"] {
            assert!(tokens().verify(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn tokens_with_an_audience_are_refused() {
        let mut c = valid_claims();
        c["aud"] = json!("someone");
        assert!(tokens().verify(&sign(Algorithm::HS256, KEY, c)).is_err());
    }
}
