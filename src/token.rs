//! Issuing and verifying the HS256 JWT. Revocation is keyed on a claim (`jti`), never on
//! the token's bytes, so another encoding of the same token cannot dodge it.
//!
//! What a token must be, checked here from the decoded JSON (so the rules are explicit and
//! table-tested); jsonwebtoken only signs:
//!
//! - Three base64url segments (unpadded); header and payload are JSON objects in which no
//!   member name appears twice (RFC 7515 4, RFC 7519 4: one reading of a token, never the
//!   first `alg` to one parser and the last to another).
//! - Header: `alg` is exactly `"HS256"` (not `"none"`, `"HS384"`, `"hs256"`, …; RFC 8725
//!   3.1). A `crit` is refused whatever it names: authd implements no extension (RFC 7515
//!   4.1.11). `jku`, `x5u`, `jwk` and `x5c` (where a key is, or the key itself) are refused
//!   rather than ignored: authd has one key and follows no pointer to another, and a token
//!   that asks for one was not made by authd. `kid`, `x5t` and `x5t#S256` only name a key;
//!   they are ignored, never used to choose or fetch one.
//! - Signature: HMAC-SHA256 over `header.payload` with the key, compared in constant time
//!   (`hmac`'s `verify_slice`), before the claims are read; the signature segment must be
//!   canonical unpadded base64url.
//! - Claims, as PyJWT (what the Django original used) checks them, with [`LEEWAY_SECS`]:
//!   `exp` is required; `exp`, `nbf` and `iat`, when present, are NumericDates: JSON
//!   numbers, integer or not, taken as whole seconds toward zero as Python's `int()` does
//!   (`1.7e9` is fine; strings, booleans, null, arrays and objects are not, and neither is
//!   a number outside i64, which jsonwebtoken refuses too past u64). Expired (`exp` ≤ now −
//!   leeway), not yet valid (`nbf` > now + leeway) or issued in the future (`iat` > now +
//!   leeway, PyJWT's ImmatureSignatureError) is refused. So is any `aud`: authd is nobody's
//!   audience. `id` is a positive integer; `jti`, when present, 1 to 64 printable ASCII
//!   characters (it is a PostgreSQL text key: a NUL could not even be looked up); a token
//!   without one needs an `iat`, which with `id` keys its revocation.
//!
//! Nothing else about the claims is refused: an `exp` decades ahead, or at i64::MAX, is a
//! valid token until then (the database stores such an expiry as `infinity`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Tokens longer than this are refused before any parsing or signature work.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 2;

/// Header parameters that locate or carry a key: a token that has one is refused.
const KEY_LOCATING_HEADERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];
/// The longest `jti` accepted (the revocation key column is `varchar(80)`).
const MAX_JTI_LEN: usize = 64;

/// Signs and verifies tokens with one key.
pub struct Tokens {
    encoding: EncodingKey,
    /// HMAC-SHA256 keyed with the token key, cloned for each check.
    mac: Hmac<Sha256>,
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
    /// The session the token belongs to (`sid` claim); `None` for tokens issued before
    /// sessions existed.
    pub session: Option<i64>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<i64>,
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
        Tokens {
            encoding: EncodingKey::from_secret(key),
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length"),
            ttl,
        }
    }

    /// Issues a token for `user_id`, with a fresh random `jti`.
    pub fn issue(&self, user_id: i64) -> Result<Issued, String> {
        self.issue_with(user_id, None, self.ttl)
    }

    /// Issues a token of session `session` for `user_id` that lives `ttl`.
    pub fn issue_session(
        &self,
        user_id: i64,
        session: i64,
        ttl: Duration,
    ) -> Result<Issued, String> {
        self.issue_with(user_id, Some(session), ttl)
    }

    fn issue_with(&self, user_id: i64, sid: Option<i64>, ttl: Duration) -> Result<Issued, String> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
        let jti: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let iat = now_secs();
        let claims = Claims {
            id: user_id,
            iat,
            exp: iat + ttl.as_secs() as i64,
            jti: &jti,
            sid,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| format!("signing the token: {e}"))?;
        Ok(Issued { token, jti })
    }

    /// Verifies a token; the error says why it was refused (for the log, never the client).
    pub fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        self.verify_at(token, now_secs())
    }

    /// [`Tokens::verify`] except that an expired token passes (every other rule holds):
    /// for logout, which must find the session of a token that has just expired.
    pub fn verify_allowing_expiry(&self, token: &str) -> Result<Verified, &'static str> {
        self.verify_inner(token, now_secs(), true)
    }

    /// [`Tokens::verify`] with the claims checked against `now` (jsonwebtoken's second
    /// look at `exp` uses the clock, a few seconds' leeway away from mattering).
    fn verify_at(&self, token: &str, now: i64) -> Result<Verified, &'static str> {
        self.verify_inner(token, now, false)
    }

    fn verify_inner(
        &self,
        token: &str,
        now: i64,
        allow_expired: bool,
    ) -> Result<Verified, &'static str> {
        if token.is_empty() {
            return Err("empty token");
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long");
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not three dot-separated segments");
        };
        check_header(&json_object(header).map_err(|_| "header is not a JSON object")?)?;
        let tag = B64
            .decode(signature)
            .map_err(|_| "signature is not base64url")?;
        let mut mac = self.mac.clone();
        mac.update(&token.as_bytes()[..header.len() + 1 + payload.len()]);
        mac.verify_slice(&tag).map_err(|_| "bad signature")?;
        check_claims(
            &json_object(payload).map_err(|_| "payload is not a JSON object")?,
            if allow_expired { i64::MIN / 2 } else { now },
            now,
        )
    }
}

/// A base64url segment holding a JSON object in which no member name appears twice.
fn json_object(segment: &str) -> Result<Map<String, Value>, ()> {
    let bytes = B64.decode(segment).map_err(|_| ())?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .map(|o| o.0)
        .map_err(|_| ())
}

/// A JSON object whose member names are unique (after unescaping); nested values are kept
/// as serde_json reads them.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UniqueObject, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object with unique member names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UniqueObject, A::Error> {
                let mut out = Map::new();
                while let Some((name, value)) = m.next_entry::<String, Value>()? {
                    if out.contains_key(&name) {
                        return Err(A::Error::custom("duplicate member name"));
                    }
                    out.insert(name, value);
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// The JWS header rules (see the module documentation).
fn check_header(header: &Map<String, Value>) -> Result<(), &'static str> {
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err("alg is not HS256");
    }
    if header.contains_key("crit") {
        return Err("crit names an extension authd does not implement");
    }
    if KEY_LOCATING_HEADERS.iter().any(|h| header.contains_key(*h)) {
        return Err("header points at or carries a key (jku, x5u, jwk or x5c)");
    }
    Ok(())
}

/// A NumericDate (RFC 7519 2) as PyJWT takes one: a JSON number, integer or not, in whole
/// seconds toward zero (Python's `int()`); `None` for anything else, or outside i64.
fn numeric_date(v: &Value) -> Option<i64> {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    let Value::Number(n) = v else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.is_u64() {
        return None; // above i64::MAX
    }
    let t = n.as_f64()?.trunc();
    (t.is_finite() && (-LIMIT..LIMIT).contains(&t)).then_some(t as i64)
}

/// The NumericDate claim `name`, if present; present but not a NumericDate is an error.
fn optional_date(
    claims: &Map<String, Value>,
    name: &str,
    malformed: &'static str,
) -> Result<Option<i64>, &'static str> {
    claims
        .get(name)
        .map(|v| numeric_date(v).ok_or(malformed))
        .transpose()
}

/// The claim rules (see the module documentation), against the clock reading `now`.
/// `expiry_now` is the clock `exp` is compared with (far in the past to let an expired
/// token through; every other rule uses `now`).
fn check_claims(
    claims: &Map<String, Value>,
    expiry_now: i64,
    now: i64,
) -> Result<Verified, &'static str> {
    let leeway = LEEWAY_SECS as i64;
    let exp = optional_date(claims, "exp", "exp is not a NumericDate")?.ok_or("no exp claim")?;
    let nbf = optional_date(claims, "nbf", "nbf is not a NumericDate")?;
    let iat = optional_date(claims, "iat", "iat is not a NumericDate")?;
    if exp <= expiry_now.saturating_sub(leeway) {
        return Err("expired");
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err("not valid yet (nbf)");
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err("issued in the future (iat)");
    }
    if claims.contains_key("aud") {
        return Err("has an audience: authd is nobody's");
    }
    let user_id = claims
        .get("id")
        .and_then(Value::as_i64)
        .filter(|id| *id > 0)
        .ok_or("id claim is not a positive integer")?;
    let revocation_key = match claims.get("jti") {
        Some(Value::String(j))
            if (1..=MAX_JTI_LEN).contains(&j.len())
                && j.bytes().all(|b| b.is_ascii_graphic() || b == b' ') =>
        {
            j.clone()
        }
        Some(_) => return Err("jti claim is malformed"),
        None => format!(
            "iat:{user_id}:{}",
            iat.ok_or("token has neither jti nor iat")?
        ),
    };
    let session = match claims.get("sid") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .filter(|s| *s > 0)
                .ok_or("sid claim is not a positive integer")?,
        ),
    };
    Ok(Verified {
        user_id,
        revocation_key,
        exp,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const L: i64 = LEEWAY_SECS as i64;
    const GOOD_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn tokens() -> Tokens {
        Tokens::new(KEY, Duration::from_secs(3600))
    }

    /// A token with exactly this header and payload text, signed HMAC-SHA256 with `key`
    /// whatever the header says.
    fn forge_with(key: &[u8], header: &str, payload: &str) -> String {
        let message = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(key),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    fn forge(header: &str, payload: &str) -> String {
        forge_with(KEY, header, payload)
    }

    fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
    }

    /// The payload text of a good token at `now` (`id`, `jti`, `iat`, `exp`), with each
    /// `(name, Some(raw JSON))` setting a claim (added last when new) and `(name, None)`
    /// removing it.
    fn claims_text<S: AsRef<str>>(now: i64, changes: &[(&str, Option<S>)]) -> String {
        let mut members: Vec<(String, String)> = vec![
            ("id".into(), "7".into()),
            ("jti".into(), r#""abc""#.into()),
            ("iat".into(), now.to_string()),
            ("exp".into(), (now + 60).to_string()),
        ];
        for (name, value) in changes {
            let at = members.iter().position(|(n, _)| n == name);
            match (at, value) {
                (Some(i), Some(v)) => members[i].1 = v.as_ref().to_string(),
                (None, Some(v)) => members.push((name.to_string(), v.as_ref().to_string())),
                (Some(i), None) => {
                    members.remove(i);
                }
                (None, None) => {}
            }
        }
        let body: Vec<String> = members.iter().map(|(n, v)| format!("{n:?}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    #[test]
    fn claims_table() {
        let now = now_secs();
        let n = |d: i64| (now + d).to_string();
        let year = 365 * 24 * 3600;
        let (max, min) = (i64::MAX.to_string(), i64::MIN.to_string());
        let (u64max, past_i64) = (u64::MAX.to_string(), (i64::MAX as u64 + 1).to_string());
        let float = |d: f64| format!("{:.1}", now as f64 + d);
        let jti64 = format!("{:?}", "j".repeat(64));
        let jti65 = format!("{:?}", "j".repeat(65));
        /// Claims to set (raw JSON) or remove, as `claims_text` takes them.
        type Changes = Vec<(&'static str, Option<String>)>;
        #[rustfmt::skip]
        let cases: Vec<(&str, Changes, bool)> = vec![
            ("good", vec![], true),
            // exp
            ("exp an hour ahead", vec![("exp", Some(n(3600)))], true),
            ("exp forty years ahead", vec![("exp", Some(n(40 * year)))], true),
            ("exp at i64::MAX", vec![("exp", Some(max.clone()))], true),
            ("exp a float", vec![("exp", Some(float(60.5)))], true),
            ("exp in exponent form", vec![("exp", Some("1e10".into()))], true),
            ("exp 1.7e11", vec![("exp", Some("1.7e11".into()))], true),
            ("exp just past the leeway", vec![("exp", Some(n(-L + 1)))], true),
            ("exp at the leeway", vec![("exp", Some(n(-L)))], false),
            ("exp a float truncated to the leeway", vec![("exp", Some(float(-(L as f64) + 0.9)))], false),
            ("exp 30 s ago", vec![("exp", Some(n(-30)))], false),
            ("exp past i64::MAX", vec![("exp", Some(past_i64.clone()))], false),
            ("exp u64::MAX", vec![("exp", Some(u64max.clone()))], false),
            ("exp 1e19", vec![("exp", Some("1e19".into()))], false),
            ("exp 1e300", vec![("exp", Some("1e300".into()))], false),
            ("exp 1e400", vec![("exp", Some("1e400".into()))], false),
            ("exp -1", vec![("exp", Some("-1".into()))], false),
            ("exp i64::MIN", vec![("exp", Some(min.clone()))], false),
            ("exp -1e300", vec![("exp", Some("-1e300".into()))], false),
            ("exp a numeric string", vec![("exp", Some(format!("{:?}", n(60))))], false),
            ("exp true", vec![("exp", Some("true".into()))], false),
            ("exp null", vec![("exp", Some("null".into()))], false),
            ("exp an array", vec![("exp", Some(format!("[{}]", n(60))))], false),
            ("exp an object", vec![("exp", Some("{}".into()))], false),
            ("no exp", vec![("exp", None)], false),
            // iat
            ("no iat, with jti", vec![("iat", None)], true),
            ("iat at the leeway ahead", vec![("iat", Some(n(L)))], true),
            ("iat a float truncated into the leeway", vec![("iat", Some(float(L as f64 + 0.9)))], true),
            ("iat past the leeway ahead", vec![("iat", Some(n(L + 1)))], false),
            ("iat an hour ahead", vec![("iat", Some(n(3600)))], false),
            ("iat 1e300", vec![("iat", Some("1e300".into()))], false),
            ("iat 0", vec![("iat", Some("0".into()))], true),
            ("iat negative", vec![("iat", Some("-1".into()))], true),
            ("iat i64::MIN", vec![("iat", Some(min.clone()))], true),
            ("iat a float", vec![("iat", Some(float(0.5)))], true),
            ("iat -1e300", vec![("iat", Some("-1e300".into()))], false),
            ("iat 1e400", vec![("iat", Some("1e400".into()))], false),
            ("iat a numeric string", vec![("iat", Some(format!("{:?}", n(0))))], false),
            ("iat true", vec![("iat", Some("true".into()))], false),
            ("iat null", vec![("iat", Some("null".into()))], false),
            ("iat an array", vec![("iat", Some(format!("[{}]", n(0))))], false),
            ("iat a string, no jti", vec![("jti", None), ("iat", Some(format!("{:?}", n(0))))], false),
            ("iat null, no jti", vec![("jti", None), ("iat", Some("null".into()))], false),
            ("iat in the future, no jti", vec![("jti", None), ("iat", Some(n(3600)))], false),
            // nbf
            ("nbf now", vec![("nbf", Some(n(0)))], true),
            ("nbf at the leeway ahead", vec![("nbf", Some(n(L)))], true),
            ("nbf past the leeway ahead", vec![("nbf", Some(n(L + 1)))], false),
            ("nbf negative", vec![("nbf", Some("-5".into()))], true),
            ("nbf a float", vec![("nbf", Some(float(-0.5)))], true),
            ("nbf a numeric string", vec![("nbf", Some(format!("{:?}", n(0))))], false),
            ("nbf false", vec![("nbf", Some("false".into()))], false),
            ("nbf null", vec![("nbf", Some("null".into()))], false),
            ("nbf 1e400", vec![("nbf", Some("1e400".into()))], false),
            // aud
            ("aud a string", vec![("aud", Some(r#""someone""#.into()))], false),
            ("aud an empty array", vec![("aud", Some("[]".into()))], false),
            ("aud null", vec![("aud", Some("null".into()))], false),
            // id
            ("id i64::MAX", vec![("id", Some(max.clone()))], true),
            ("id 0", vec![("id", Some("0".into()))], false),
            ("id negative", vec![("id", Some("-1".into()))], false),
            ("id a numeric string", vec![("id", Some(r#""7""#.into()))], false),
            ("id a float", vec![("id", Some("7.5".into()))], false),
            ("id null", vec![("id", Some("null".into()))], false),
            ("id true", vec![("id", Some("true".into()))], false),
            ("id an array", vec![("id", Some("[7]".into()))], false),
            ("id past i64::MAX", vec![("id", Some(u64max.clone()))], false),
            ("no id", vec![("id", None)], false),
            // jti
            ("jti of 64 characters", vec![("jti", Some(jti64.clone()))], true),
            ("jti with a space", vec![("jti", Some(r#""a b""#.into()))], true),
            ("jti of 65 characters", vec![("jti", Some(jti65.clone()))], false),
            ("jti empty", vec![("jti", Some(r#""""#.into()))], false),
            ("jti a NUL", vec![("jti", Some(r#""\u0000""#.into()))], false),
            ("jti with a newline", vec![("jti", Some(r#""a\nb""#.into()))], false),
            ("jti not ASCII", vec![("jti", Some(r#""é""#.into()))], false),
            ("jti a number", vec![("jti", Some("5".into()))], false),
            ("jti null", vec![("jti", Some("null".into()))], false),
            ("neither jti nor iat", vec![("jti", None), ("iat", None)], false),
            ("no jti, iat", vec![("jti", None)], true),
            ("no jti, iat a float", vec![("jti", None), ("iat", Some(float(0.5)))], true),
            ("no jti, iat negative", vec![("jti", None), ("iat", Some("-1".into()))], true),
            // whatever else a token carries is not looked at
            ("an unknown claim", vec![("role", Some(r#""admin""#.into()))], true),
            ("iss and sub", vec![("iss", Some(r#""x""#.into())), ("sub", Some("5".into()))], true),
        ];
        let t = tokens();
        for (why, changes, accept) in &cases {
            let payload = claims_text(now, changes);
            let got = t.verify_at(&forge(GOOD_HEADER, &payload), now);
            assert_eq!(got.is_ok(), *accept, "{why}: {payload} → {got:?}");
        }
    }

    #[test]
    fn payloads_that_are_not_one_unique_object_are_refused() {
        let now = now_secs();
        let good = claims_text::<&str>(now, &[]);
        let inner = &good[1..good.len() - 1];
        let exp_again = format!(r#"{{{inner},"exp":{}}}"#, now + 120);
        let old_exp_first = format!(r#"{{"exp":{},{inner}}}"#, now - 100);
        let escaped_exp = format!(r#"{{{inner},"\u0065xp":{}}}"#, now + 120);
        let id_again = format!(r#"{{{inner},"id":8}}"#);
        let trailing = format!("{good} x");
        let two = format!("{good}{good}");
        let t = tokens();
        assert!(t.verify_at(&forge(GOOD_HEADER, &good), now).is_ok());
        for payload in [
            exp_again.as_str(),
            &old_exp_first,
            &escaped_exp,
            &id_again,
            &trailing,
            &two,
            "[]",
            "null",
            "7",
            r#""claims""#,
            "",
            "{",
        ] {
            let got = t.verify_at(&forge(GOOD_HEADER, payload), now);
            assert!(got.is_err(), "{payload} → {got:?}");
        }
    }

    #[test]
    fn header_table() {
        let cases: &[(&str, bool)] = &[
            (GOOD_HEADER, true),
            (r#"{"alg":"HS256"}"#, true),
            (r#"{ "typ" : "JWT" , "alg" : "HS256" }"#, true),
            // named, never followed
            (r#"{"alg":"HS256","kid":"k1"}"#, true),
            (r#"{"alg":"HS256","kid":"../../../dev/null"}"#, true),
            (r#"{"alg":"HS256","x5t":"c29tZXRoaW5n"}"#, true),
            (r#"{"alg":"HS256","x5t#S256":"c29tZXRoaW5n"}"#, true),
            (r#"{"alg":"HS256","cty":"JWT"}"#, true),
            (r#"{"alg":"HS256","unknown":1}"#, true),
            // not HS256
            (r#"{"alg":"none"}"#, false),
            (r#"{"alg":"None"}"#, false),
            (r#"{"alg":"NONE"}"#, false),
            (r#"{"alg":"HS384"}"#, false),
            (r#"{"alg":"HS512"}"#, false),
            (r#"{"alg":"hs256"}"#, false),
            (r#"{"alg":"HS256 "}"#, false),
            (r#"{"alg":"RS256"}"#, false),
            (r#"{"alg":"ES256"}"#, false),
            (r#"{"alg":"EdDSA"}"#, false),
            (r#"{"alg":""}"#, false),
            (r#"{"alg":null}"#, false),
            (r#"{"alg":["HS256"]}"#, false),
            (r#"{"typ":"JWT"}"#, false),
            (r#"{"alg":"none","alg":"HS256"}"#, false),
            (r#"{"alg":"HS256","alg":"HS256"}"#, false),
            (r#"{"alg":"HS256","\u0061lg":"none"}"#, false),
            // crit, whatever it names
            (r#"{"alg":"HS256","crit":["exp"]}"#, false),
            (r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, false),
            (r#"{"alg":"HS256","crit":[]}"#, false),
            (r#"{"alg":"HS256","crit":"x"}"#, false),
            (r#"{"alg":"HS256","crit":null}"#, false),
            // where a key is, or the key itself
            (
                r#"{"alg":"HS256","jku":"https://evil.example/jwks.json"}"#,
                false,
            ),
            (
                r#"{"alg":"HS256","x5u":"https://evil.example/cert.pem"}"#,
                false,
            ),
            (
                r#"{"alg":"HS256","jwk":{"kty":"oct","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}}"#,
                false,
            ),
            (r#"{"alg":"HS256","x5c":["MIIB"]}"#, false),
            // not an object
            ("[]", false),
            (r#""HS256""#, false),
            ("null", false),
            ("", false),
            (r#"{"alg":"HS256"} x"#, false),
        ];
        let now = now_secs();
        let payload = claims_text::<&str>(now, &[]);
        let t = tokens();
        for (header, accept) in cases {
            let got = t.verify_at(&forge(header, &payload), now);
            assert_eq!(got.is_ok(), *accept, "{header} → {got:?}");
        }
    }

    #[test]
    fn segments_and_signatures_table() {
        let now = now_secs();
        let good = forge(GOOD_HEADER, &claims_text::<&str>(now, &[]));
        let p: Vec<&str> = good.split('.').collect();
        let tampered = B64.encode(claims_text(now, &[("id", Some("8"))]));
        let other_key = forge_with(b"another key another key another key", GOOD_HEADER, "{}");
        let cases: Vec<(&str, String)> = vec![
            ("tampered payload", format!("{}.{tampered}.{}", p[0], p[2])),
            ("stripped signature", format!("{}.{}.", p[0], p[1])),
            ("two segments", format!("{}.{}", p[0], p[1])),
            ("four segments", format!("{good}.{}", p[2])),
            ("padded header", format!("{}=.{}.{}", p[0], p[1], p[2])),
            ("padded signature", format!("{good}=")),
            (
                "standard base64 signature",
                good.replace('-', "+").replace('_', "/"),
            ),
            (
                "another key",
                format!(
                    "{}.{}.{}",
                    p[0],
                    p[1],
                    other_key.rsplit('.').next().unwrap()
                ),
            ),
            ("too long", format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES))),
        ];
        let t = tokens();
        assert!(t.verify_at(&good, now).is_ok());
        for (why, token) in cases {
            if why == "standard base64 signature" && token == good {
                continue; // nothing to swap in this signature
            }
            assert!(t.verify_at(&token, now).is_err(), "{why}");
        }
        for junk in ["", ".", "..", "a.b.c", "\u{0}", "é.é.é"] {
            assert!(t.verify(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn numeric_dates_are_whole_seconds_toward_zero() {
        for (v, want) in [
            (json!(5), Some(5)),
            (json!(-5), Some(-5)),
            (json!(5.9), Some(5)),
            (json!(-5.9), Some(-5)),
            (json!(1.7e9), Some(1_700_000_000)),
            (json!(i64::MAX), Some(i64::MAX)),
            (json!(i64::MIN), Some(i64::MIN)),
            (json!(i64::MAX as u64 + 1), None),
            (json!(9.3e18), None),
            (json!(-9.3e18), None),
            (json!("5"), None),
            (json!(true), None),
            (json!(null), None),
            (json!([5]), None),
            (json!({}), None),
        ] {
            assert_eq!(numeric_date(&v), want, "{v}");
        }
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
    fn tokens_made_by_jsonwebtoken_with_other_algorithms_are_refused() {
        let now = now_secs();
        let claims = json!({"id": 7, "iat": now, "exp": now + 60, "jti": "abc"});
        assert!(
            tokens()
                .verify(&sign(Algorithm::HS256, KEY, &claims))
                .is_ok()
        );
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let tok = sign(alg, KEY, &claims);
            assert!(tokens().verify(&tok).is_err(), "{alg:?}");
        }
    }

    #[test]
    fn revocation_keys_and_expiry() {
        let now = now_secs();
        let t = tokens();
        let key_of = |changes: &[(&str, Option<&str>)]| {
            t.verify_at(&forge(GOOD_HEADER, &claims_text(now, changes)), now)
                .unwrap()
        };
        let django = key_of(&[("jti", None), ("id", Some("9"))]);
        assert_eq!(django.revocation_key, format!("iat:9:{now}"));
        assert_eq!(django.exp, now + 60);
        let iat = format!("{now}.7");
        let float_iat = key_of(&[("jti", None), ("id", Some("9")), ("iat", Some(&iat))]);
        assert_eq!(float_iat.revocation_key, format!("iat:9:{now}"));
        let negative = key_of(&[("jti", None), ("iat", Some("-3"))]);
        assert_eq!(negative.revocation_key, "iat:7:-3");
        let max = key_of(&[("exp", Some(&i64::MAX.to_string()))]);
        assert_eq!((max.revocation_key.as_str(), max.exp), ("abc", i64::MAX));
        let float_exp = key_of(&[("exp", Some("1.7e11"))]);
        assert_eq!(float_exp.exp, 170_000_000_000);
    }
}
