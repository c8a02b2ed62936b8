//! Tokens with odd headers and claims, signed with the server's own key: each is refused
//! with 401 or accepted, never a 500, and an accepted one is revoked by logout.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token with exactly this header and payload text, HMAC-SHA256-signed with the server's
/// key whatever the header says.
fn forge(header: &str, payload: &str) -> String {
    let message = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// Claims text for user `id`: `members` is raw JSON text (`"exp":1,"iat":2`), so that it
/// can hold what serde_json would not write (1e400, a name twice).
fn claims(id: i64, members: &str) -> String {
    format!(r#"{{"id":{id},{members}}}"#)
}

fn get_user(s: &Server, token: &str) -> Resp {
    s.get("/api/user/", &[("Cookie", &format!("jwt={token}"))])
}

fn logout(s: &Server, token: &str) -> Resp {
    request(
        s.addr,
        "POST",
        "/api/logout/",
        &[("Cookie", &format!("jwt={token}"))],
        None,
    )
}

/// Registers a user; its id.
fn user(s: &Server) -> i64 {
    s.register("A", "a@example.com", "Password123").expect(201)["id"]
        .as_i64()
        .unwrap()
}

#[test]
fn odd_headers_and_claims_are_401_and_logout_is_200_never_500() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let id = user(&s);
    let t = now();
    let good = format!(r#""jti":"j","iat":{t},"exp":{}"#, t + 600);
    // the forging is right: the good token with the good header passes
    get_user(&s, &forge(HEADER, &claims(id, &good))).expect(200);

    let mut cases: Vec<(String, String)> = Vec::new();
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"HS384","typ":"JWT"}"#,
        r#"{"alg":"HS512","typ":"JWT"}"#,
        r#"{"alg":"hs256","typ":"JWT"}"#,
        r#"{"alg":"RS256","typ":"JWT"}"#,
        r#"{"alg":null,"typ":"JWT"}"#,
        r#"{"typ":"JWT"}"#,
        r#"{"alg":"none","alg":"HS256"}"#,
        r#"{"alg":"HS256","alg":"HS256"}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","jku":"http://127.0.0.1:1/jwks.json"}"#,
        r#"{"alg":"HS256","x5u":"http://127.0.0.1:1/cert.pem"}"#,
        r#"{"alg":"HS256","jwk":{"kty":"oct","k":"c2VjcmV0"}}"#,
        r#"{"alg":"HS256","x5c":["MIIB"]}"#,
        "[]",
        "null",
    ] {
        cases.push((header.to_string(), claims(id, &good)));
    }
    let big = (i64::MAX as u64 + 1).to_string();
    let members = [
        // iat in the future (PyJWT's ImmatureSignatureError)
        format!(r#""jti":"j","iat":{},"exp":{}"#, t + 60, t + 600),
        format!(r#""iat":{},"exp":{}"#, t + 3600, t + 7200),
        // not NumericDates, with and without a jti
        format!(r#""jti":"j","iat":"{t}","exp":{}"#, t + 600),
        format!(r#""iat":"{t}","exp":{}"#, t + 600),
        format!(r#""jti":"j","iat":true,"exp":{}"#, t + 600),
        format!(r#""iat":null,"exp":{}"#, t + 600),
        format!(r#""jti":"j","iat":[{t}],"exp":{}"#, t + 600),
        format!(r#""jti":"j","iat":{t},"exp":"{}""#, t + 600),
        format!(r#""iat":{t},"exp":"{}""#, t + 600),
        format!(r#""jti":"j","iat":{t},"exp":true"#),
        format!(r#""jti":"j","iat":{t},"exp":null"#),
        format!(r#""jti":"j","iat":{t},"exp":[{}]"#, t + 600),
        format!(r#""jti":"j","iat":{t},"exp":{{}}"#),
        format!(r#""jti":"j","iat":{t},"exp":{},"nbf":"{t}""#, t + 600),
        format!(r#""jti":"j","iat":{t},"exp":{},"nbf":null"#, t + 600),
        format!(r#""jti":"j","iat":{t},"exp":{},"nbf":{}"#, t + 600, t + 60),
        // out of range or out of JSON
        format!(r#""jti":"j","iat":{t},"exp":1e400"#),
        format!(r#""jti":"j","iat":{t},"exp":-1e400"#),
        format!(r#""jti":"j","iat":{t},"exp":1e300"#),
        format!(r#""jti":"j","iat":{t},"exp":{big}"#),
        format!(r#""jti":"j","iat":{t},"exp":{}"#, u64::MAX),
        format!(r#""jti":"j","iat":1e400,"exp":{}"#, t + 600),
        format!(r#""jti":"j","iat":-1e300,"exp":{}"#, t + 600),
        format!(r#""jti":"j","iat":{t},"exp":-1"#),
        format!(r#""jti":"j","iat":{t},"exp":{}"#, i64::MIN),
        format!(r#""jti":"j","iat":{t},"exp":{}"#, t - 30),
        format!(r#""jti":"j","iat":{t}"#),
        r#""jti":"j""#.to_string(),
        // a name twice: the later exp would pass, the earlier has expired
        format!(r#""jti":"j","iat":{t},"exp":{},"exp":{}"#, t - 100, t + 600),
        format!(
            r#""jti":"j","iat":{t},"exp":{},"\u0065xp":{}"#,
            t - 100,
            t + 600
        ),
        // jti that PostgreSQL could not even look up, or too long
        format!(r#""jti":"\u0000","iat":{t},"exp":{}"#, t + 600),
        format!(r#""jti":"a\nb","iat":{t},"exp":{}"#, t + 600),
        format!(r#""jti":"{}","iat":{t},"exp":{}"#, "j".repeat(65), t + 600),
        format!(r#""jti":"","iat":{t},"exp":{}"#, t + 600),
        format!(r#""jti":7,"iat":{t},"exp":{}"#, t + 600),
        format!(r#""exp":{}"#, t + 600),
        // an audience
        format!(r#""jti":"j","iat":{t},"exp":{},"aud":"authd""#, t + 600),
        format!(r#""jti":"j","iat":{t},"exp":{},"aud":null"#, t + 600),
    ];
    for m in &members {
        cases.push((HEADER.to_string(), claims(id, m)));
    }
    for bad_id in ["9223372036854775808", "1e3", "-1", r#""1""#] {
        cases.push((HEADER.to_string(), format!(r#"{{"id":{bad_id},{good}}}"#)));
    }
    cases.push((HEADER.to_string(), "[]".to_string()));
    cases.push((HEADER.to_string(), format!("{} x", claims(id, &good))));

    for (header, payload) in &cases {
        let token = forge(header, payload);
        let why = format!("{header} {payload}");
        let r = get_user(&s, &token);
        assert_eq!(
            r.expect(401),
            json!({"detail": "Unauthenticated."}),
            "{why}"
        );
        assert_eq!(
            logout(&s, &token).expect(200)["message"],
            "success",
            "{why}"
        );
        for (method, path) in [
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/metrics"),
            ("GET", "/api/openapi.yaml"),
        ] {
            let r = request(
                s.addr,
                method,
                path,
                &[("Cookie", &format!("jwt={token}"))],
                None,
            );
            assert!(r.status < 500, "{method} {path} {why}: {}", r.status);
        }
    }
    assert_eq!(db.count("SELECT count(*) FROM authd_revoked_token"), 0);
    assert!(!s.log_text().contains("internal error"), "{}", s.log_text());
}

#[test]
fn odd_but_valid_tokens_work_until_logout_revokes_them() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let id = user(&s);
    let t = now();
    let decades = t + 40 * 365 * 24 * 3600;
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "exp decades ahead",
            HEADER,
            format!(r#""jti":"decades","iat":{t},"exp":{decades}"#),
        ),
        (
            "exp at i64::MAX",
            HEADER,
            format!(r#""jti":"max","iat":{t},"exp":{}"#, i64::MAX),
        ),
        (
            "exp past the year 9999",
            HEADER,
            format!(r#""jti":"far","iat":{t},"exp":1e12"#),
        ),
        (
            "exp a float",
            HEADER,
            format!(r#""jti":"float","iat":{t},"exp":{}.5"#, t + 600),
        ),
        (
            "exp 1.7e11",
            HEADER,
            format!(r#""jti":"exponent","iat":{t},"exp":1.7e11"#),
        ),
        (
            "iat negative",
            HEADER,
            format!(r#""jti":"negative","iat":-1,"exp":{}"#, t + 600),
        ),
        (
            "iat i64::MIN",
            HEADER,
            format!(r#""jti":"min","iat":{},"exp":{}"#, i64::MIN, t + 600),
        ),
        (
            "nbf negative",
            HEADER,
            format!(r#""jti":"nbf","iat":{t},"nbf":-5,"exp":{}"#, t + 600),
        ),
        (
            "no jti, iat a float",
            HEADER,
            format!(r#""iat":{}.5,"exp":{decades}"#, t - 10),
        ),
        (
            "no jti, iat negative, exp at i64::MAX",
            HEADER,
            format!(r#""iat":-7,"exp":{}"#, i64::MAX),
        ),
        (
            "a kid, never followed",
            r#"{"alg":"HS256","typ":"JWT","kid":"../../etc/passwd"}"#,
            format!(r#""jti":"kid","iat":{t},"exp":{}"#, t + 600),
        ),
    ];
    let session = s.login("a@example.com", "Password123");
    let session = session.cookie_pair("jwt").unwrap();
    for (why, header, members) in &cases {
        let token = forge(header, &claims(id, members));
        for _ in 0..2 {
            assert_eq!(get_user(&s, &token).expect(200)["id"], id, "{why}");
        }
        logout(&s, &token).expect(200);
        get_user(&s, &token).expect(401);
        // logging out again is still a success, and still revoked
        logout(&s, &token).expect(200);
        get_user(&s, &token).expect(401);
    }
    assert_eq!(
        db.count("SELECT count(*) FROM authd_revoked_token"),
        cases.len() as i64
    );
    // i64::MAX twice and 1e12: expiries PostgreSQL cannot hold, kept for ever
    assert_eq!(
        db.count("SELECT count(*) FROM authd_revoked_token WHERE expires_at = 'infinity'"),
        3
    );
    // the user's own session was not touched
    s.get("/api/user/", &[("Cookie", &session)]).expect(200);
}
