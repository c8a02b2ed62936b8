//! The HTTP contract of API.md, row by row, against the real binary and a real database.

mod common;

use common::*;
use serde_json::{Value, json};

fn user_row_count(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM accounts_user")
}

#[test]
fn register_answers_201_with_the_user_and_never_the_password() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let r = s.register("Alice", "alice@example.com", "Password123");
    let body = r.expect(201);
    assert!(body["id"].as_i64().unwrap() > 0);
    assert_eq!(body["name"], "Alice");
    assert_eq!(body["email"], "alice@example.com");
    assert_eq!(body.as_object().unwrap().len(), 3);
    assert!(!r.body.contains("Password123") && !r.body.contains("password"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let stored: String = db
        .client()
        .query_one("SELECT password FROM accounts_user", &[])
        .unwrap()
        .get(0);
    assert!(stored.starts_with("bcrypt_sha256$$2b$04$"), "{stored}");
    assert!(!s.log_text().contains("Password123"));
}

#[test]
fn register_trims_fields_and_lowercases_only_the_domain() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let body = s
        .register("  Zoë 🦀  ", "  Mixed.Case@Example.COM ", "  pass word  ")
        .expect(201);
    assert_eq!(body["name"], "Zoë 🦀");
    assert_eq!(body["email"], "Mixed.Case@example.com");
    // the password is not trimmed
    s.login("mixed.case@EXAMPLE.com", "  pass word  ")
        .expect(200);
    s.login("mixed.case@example.com", "pass word").expect(401);
}

#[test]
fn register_validation_errors_are_drf_shaped_and_leave_no_row() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let long = "a".repeat(256);
    let email254 = format!("{}@example.com", "a".repeat(254 - 12));
    let email255 = format!("a{email254}");
    let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
        (
            json!({}),
            vec![
                ("name", "This field is required."),
                ("email", "This field is required."),
                ("password", "This field is required."),
            ],
        ),
        (
            json!({"name": null, "email": 5, "password": ["x"]}),
            vec![
                ("name", "This field may not be null."),
                ("email", "Not a valid string."),
                ("password", "Not a valid string."),
            ],
        ),
        (
            json!({"name": "   ", "email": "a@b.co", "password": "Password123"}),
            vec![("name", "This field may not be blank.")],
        ),
        (
            json!({"name": long, "email": "a@b.co", "password": "Password123"}),
            vec![("name", "Ensure this field has no more than 255 characters.")],
        ),
        (
            json!({"name": "A\u{7}", "email": "a@b.co", "password": "Password123"}),
            vec![("name", "Control characters are not allowed.")],
        ),
        (
            json!({"name": "A", "email": "not-an-email", "password": "Password123"}),
            vec![("email", "Enter a valid email address.")],
        ),
        (
            json!({"name": "A", "email": "a@localhost", "password": "Password123"}),
            vec![("email", "Enter a valid email address.")],
        ),
        (
            json!({"name": "A", "email": email255, "password": "Password123"}),
            vec![(
                "email",
                "Ensure this field has no more than 254 characters.",
            )],
        ),
        (
            json!({"name": "A", "email": "a@b.co", "password": "short"}),
            vec![("password", "Ensure this field has at least 8 bytes.")],
        ),
        (
            json!({"name": "A", "email": "a@b.co", "password": "x".repeat(73)}),
            vec![(
                "password",
                "Ensure this field has no more than 72 bytes in UTF-8 (bcrypt reads only 72).",
            )],
        ),
        (
            json!({"name": "A", "email": "a@b.co", "password": "€".repeat(25)}),
            vec![(
                "password",
                "Ensure this field has no more than 72 bytes in UTF-8 (bcrypt reads only 72).",
            )],
        ),
    ];
    for (body, expected) in cases {
        let r = s.post_json("/api/register/", &body, &[]);
        let got = r.expect(400);
        let obj = got.as_object().unwrap();
        assert_eq!(obj.len(), expected.len(), "{body} -> {got}");
        for (field, message) in expected {
            assert_eq!(got[field], json!([message]), "{body} -> {got}");
        }
    }
    assert_eq!(user_row_count(&db), 0);
    // the edges that are valid
    s.register("A", &email254, &"x".repeat(72)).expect(201);
    s.register(&"n".repeat(255), "b@b.co", "12345678")
        .expect(201);
    assert_eq!(user_row_count(&db), 2);
}

#[test]
fn unknown_fields_are_ignored() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let r = s.post_json(
        "/api/register/",
        &json!({"name": "A", "email": "a@b.co", "password": "Password123", "is_superuser": true, "id": 99}),
        &[],
    );
    let body = r.expect(201);
    assert_ne!(body["id"], 99);
    let su: bool = db
        .client()
        .query_one("SELECT is_superuser FROM accounts_user", &[])
        .unwrap()
        .get(0);
    assert!(!su);
}

#[test]
fn an_email_registered_in_any_letter_case_is_taken() {
    let db = TestDb::new();
    let s = Server::start(&db);
    s.register("A", "alice@example.com", "Password123")
        .expect(201);
    for again in [
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        " Alice@Example.com ",
    ] {
        let body = s.register("B", again, "Password123").expect(400);
        assert_eq!(
            body,
            json!({"email": ["user with this email already exists."]})
        );
    }
    assert_eq!(user_row_count(&db), 1);
}

#[test]
fn sixteen_simultaneous_registrations_of_one_email_make_one_user() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let email = if i % 2 == 0 {
                        "race@example.com"
                    } else {
                        "RACE@example.com"
                    };
                    s.register("R", email, "Password123").status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(user_row_count(&db), 1);
}

#[test]
fn bodies_that_are_not_a_json_object_are_400_parse_errors() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for body in [
        "{",
        "not json",
        "[1,2]",
        "\"string\"",
        "42",
        "null",
        "{\"name\": \"a\",}",
        deep.as_str(),
        "   ",
    ] {
        for path in ["/api/register/", "/api/login/"] {
            let r = request(
                s.addr,
                "POST",
                path,
                &[("Content-Type", "application/json")],
                Some(body.as_bytes()),
            );
            let v = r.expect(400);
            let detail = v["detail"].as_str().unwrap_or_default();
            assert!(
                detail.starts_with("JSON parse error - "),
                "{body:.20} -> {v}"
            );
        }
    }
    // invalid UTF-8
    let r = request(
        s.addr,
        "POST",
        "/api/register/",
        &[("Content-Type", "application/json")],
        Some(b"{\"name\": \"\xff\xfe\"}"),
    );
    r.expect(400);
    assert!(s.alive_check());
    assert_eq!(user_row_count(&db), 0);
}

trait Alive {
    fn alive_check(&self) -> bool;
}

impl Alive for Server {
    fn alive_check(&self) -> bool {
        self.get("/healthz", &[]).status == 200
    }
}

#[test]
fn an_empty_json_body_is_a_list_of_required_fields() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let r = request(
        s.addr,
        "POST",
        "/api/login/",
        &[("Content-Type", "application/json")],
        None,
    );
    let v = r.expect(400);
    assert_eq!(v["email"], json!(["This field is required."]));
    assert_eq!(v["password"], json!(["This field is required."]));
}

#[test]
fn a_body_that_is_not_json_media_is_415() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let body = br#"{"name":"A","email":"a@b.co","password":"Password123"}"#;
    for (ctype, shown) in [
        (Some("text/plain"), "text/plain"),
        (
            Some("application/x-www-form-urlencoded"),
            "application/x-www-form-urlencoded",
        ),
        (Some("application/jsonx"), "application/jsonx"),
        (None, ""),
    ] {
        let headers: Vec<(&str, &str)> = ctype.map(|c| ("Content-Type", c)).into_iter().collect();
        let r = request(s.addr, "POST", "/api/register/", &headers, Some(body));
        let v = r.expect(415);
        assert_eq!(
            v["detail"],
            format!("Unsupported media type \"{shown}\" in request.")
        );
    }
    assert_eq!(user_row_count(&db), 0);
    // parameters are fine, and the media type is case-insensitive
    for ctype in ["application/json; charset=utf-8", "Application/JSON"] {
        let email = unique_email("ct");
        let b = json!({"name": "A", "email": email, "password": "Password123"}).to_string();
        let r = request(
            s.addr,
            "POST",
            "/api/register/",
            &[("Content-Type", ctype)],
            Some(b.as_bytes()),
        );
        r.expect(201);
    }
}

#[test]
fn bodies_over_the_limit_are_413() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("MAX_BODY_BYTES", "1024")]);
    let name = "n".repeat(1100);
    let r = s.post_json(
        "/api/register/",
        &json!({"name": name, "email": "a@b.co", "password": "Password123"}),
        &[],
    );
    let v = r.expect(413);
    assert!(v["detail"].is_string());
    // chunked, no length declared
    let chunk = format!("{{\"name\":\"{}\"}}", "n".repeat(2000));
    let raw = format!(
        "POST /api/register/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let r = parse_response(&send_raw(
        s.addr,
        raw.as_bytes(),
        std::time::Duration::from_secs(10),
    ))
    .unwrap();
    r.expect(413);
    // the default limit is 64 KiB
    let db2 = TestDb::new();
    let s2 = Server::start(&db2);
    let big = json!({"name": "n".repeat(70_000), "email": "a@b.co", "password": "Password123"});
    s2.post_json("/api/register/", &big, &[]).expect(413);
    assert_eq!(user_row_count(&db), 0);
}

#[test]
fn login_sets_an_httponly_cookie_and_returns_the_user_without_the_token() {
    let db = TestDb::new();
    let s = Server::start(&db);
    s.register("Alice", "alice@example.com", "Password123")
        .expect(201);
    let r = s.login("ALICE@example.com", "Password123");
    let body = r.expect(200);
    assert_eq!(body["email"], "alice@example.com");
    assert_eq!(body["name"], "Alice");
    assert_eq!(body.as_object().unwrap().len(), 3);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let cookies = r.all("Set-Cookie");
    assert_eq!(
        cookies.len(),
        2,
        "the access and the refresh cookie: {cookies:?}"
    );
    assert!(cookies[1].starts_with("refresh="), "{cookies:?}");
    let c = cookies[0];
    let token = c.strip_prefix("jwt=").unwrap().split(';').next().unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert!(!r.body.contains(token));
    let attrs: Vec<&str> = c.split("; ").skip(1).collect();
    for want in [
        "HttpOnly",
        "Path=/",
        "Max-Age=3600",
        "SameSite=Lax",
        "Secure",
    ] {
        assert!(attrs.contains(&want), "{want} missing in {c}");
    }
    // the token carries id, iat, exp = iat + JWT_TTL, signed HS256
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(data.claims["id"], body["id"]);
    let iat = data.claims["iat"].as_i64().unwrap();
    assert_eq!(data.claims["exp"].as_i64().unwrap(), iat + 3600);
    assert!(!s.log_text().contains(token));
    assert!(!s.log_text().contains("Password123"));
}

#[test]
fn cookie_attributes_follow_the_settings() {
    let db = TestDb::new();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, bool, &'a str);
    let cases: [Case; 4] = [
        (&[("DEBUG", "True")], "jwt", false, "Max-Age=3600"),
        (&[("COOKIE_SECURE", "false")], "jwt", false, "Max-Age=3600"),
        (&[("JWT_TTL", "120")], "jwt", true, "Max-Age=120"),
        (
            &[("COOKIE_NAME", "__Host-jwt"), ("COOKIE_SECURE", "false")],
            "__Host-jwt",
            true,
            "Max-Age=3600",
        ),
    ];
    for (i, (env, name, secure, max_age)) in cases.into_iter().enumerate() {
        let s = Server::start_with(&db, env);
        let email = format!("c{i}@example.com");
        s.register("A", &email, "Password123").expect(201);
        let r = s.login(&email, "Password123");
        r.expect(200);
        let c = r.header("Set-Cookie").unwrap();
        assert!(c.starts_with(&format!("{name}=")), "{c}");
        assert_eq!(c.contains("; Secure"), secure, "{env:?}: {c}");
        assert!(c.contains(max_age) && c.contains("Path=/") && c.contains("HttpOnly"));
        let pair = r.cookie_pair(name).unwrap();
        s.get("/api/user/", &[("Cookie", &pair)]).expect(200);
        let out = request(s.addr, "POST", "/api/logout/", &[("Cookie", &pair)], None);
        out.expect(200);
        let cleared = out.header("Set-Cookie").unwrap();
        assert!(cleared.starts_with(&format!("{name}=;")), "{cleared}");
        assert_eq!(cleared.contains("; Secure"), secure);
    }
}

#[test]
fn wrong_password_and_unknown_email_get_the_same_401() {
    let db = TestDb::new();
    let s = Server::start(&db);
    s.register("A", "a@example.com", "Password123").expect(201);
    let wrong = s.login("a@example.com", "Password124");
    let unknown = s.login("nobody@example.com", "Password123");
    let invalid_email = s.login("not an email", "Password123");
    let too_long = s.login("a@example.com", &format!("Password123{}", "x".repeat(70)));
    for r in [&wrong, &unknown, &invalid_email, &too_long] {
        let v = r.expect(401);
        assert_eq!(v, json!({"detail": "Invalid email or password."}));
        assert!(r.header("Set-Cookie").is_none());
    }
    let missing = s.post_json("/api/login/", &json!({"email": "a@example.com"}), &[]);
    assert_eq!(
        missing.expect(400),
        json!({"password": ["This field is required."]})
    );
}

#[test]
fn a_password_longer_than_72_bytes_never_matches_its_first_72() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let p72 = "p".repeat(72);
    s.register("A", "a@example.com", &p72).expect(201);
    s.login("a@example.com", &p72).expect(200);
    s.login("a@example.com", &format!("{p72}extra")).expect(401);
}

#[test]
fn inactive_users_cannot_log_in_and_their_tokens_stop_working() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cookie = s.session("a@example.com");
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
    db.client()
        .execute("UPDATE accounts_user SET is_active = false", &[])
        .unwrap();
    s.login("a@example.com", "Password123").expect(401);
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(401);
}

#[test]
fn user_answers_with_the_cookie_and_401_without() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cookie = s.session("a@example.com");
    let token = cookie.strip_prefix("jwt=").unwrap();
    let r = s.get("/api/user/", &[("Cookie", &cookie)]);
    let v = r.expect(200);
    assert_eq!(v["email"], "a@example.com");
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    // RFC 6265 forms: several cookies, spaces, quotes, trailing slash, query string
    for header in [
        format!("a=1; jwt={token}; b=2"),
        format!("a=1;jwt={token}"),
        format!("jwt=\"{token}\""),
        format!("theme=dark;   jwt={token}  "),
    ] {
        s.get("/api/user", &[("Cookie", &header)]).expect(200);
        s.get("/api/user/?x=1", &[("Cookie", &header)]).expect(200);
    }
    let unauth = json!({"detail": "Unauthenticated."});
    for header in [
        None,
        Some("".to_string()),
        Some("jwt=".to_string()),
        Some("jwt=garbage".to_string()),
        Some("jwt=a.b.c".to_string()),
        Some(format!("jwt={token}x")),
        Some(format!("other={token}")),
        Some("jwt=\u{e9}\u{ff}".to_string()),
    ] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Cookie", h.as_str())).collect();
        assert_eq!(
            s.get("/api/user/", &headers).expect(401),
            unauth,
            "{header:?}"
        );
    }
    // the user is gone
    db.client()
        .execute("DELETE FROM accounts_user", &[])
        .unwrap();
    assert_eq!(
        s.get("/api/user/", &[("Cookie", &cookie)]).expect(401),
        unauth
    );
}

#[test]
fn an_oversized_cookie_header_is_refused_without_a_500() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let huge = format!("jwt={}", "a".repeat(9000));
    let r = s.get("/api/user/", &[("Cookie", &huge)]);
    assert!(matches!(r.status, 400 | 401 | 431), "{}", r.status);
    r.json();
    let r = request(s.addr, "POST", "/api/logout/", &[("Cookie", &huge)], None);
    assert!(r.status < 500, "{}", r.status);
}

#[test]
fn logout_revokes_the_token_and_clears_the_cookie() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cookie = s.session("a@example.com");
    let other = {
        let r = s.login("a@example.com", "Password123");
        r.cookie_pair("jwt").unwrap()
    };
    let r = request(s.addr, "POST", "/api/logout/", &[("Cookie", &cookie)], None);
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let cleared = r.header("Set-Cookie").unwrap();
    assert!(cleared.starts_with("jwt=;"), "{cleared}");
    for want in ["Max-Age=0", "Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(
            cleared.split("; ").any(|a| a == want),
            "{want} in {cleared}"
        );
    }
    // The token's session ends (tokens from before sessions are revoked by their jti).
    assert_eq!(
        db.count("SELECT count(*) FROM authd_session WHERE revoked_at IS NOT NULL"),
        1
    );
    // replayed, the token is refused; the user's other session is not affected
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(401);
    s.get("/api/user/", &[("Cookie", &other)]).expect(200);
    // logging in again does not bring the old token back
    s.login("a@example.com", "Password123").expect(200);
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(401);
    // logout answers 200 with no token or a bad one, and still clears the cookie
    for headers in [
        vec![],
        vec![("Cookie", "jwt=garbage")],
        vec![("Cookie", cookie.as_str())],
    ] {
        let r = request(s.addr, "POST", "/api/logout", &headers, None);
        assert_eq!(r.expect(200), json!({"message": "success"}));
        assert!(r.header("Set-Cookie").unwrap().contains("Max-Age=0"));
    }
    assert_eq!(
        db.count("SELECT count(*) FROM authd_session WHERE revoked_at IS NOT NULL"),
        1
    );
}

#[test]
fn logout_revokes_on_every_instance_sharing_the_database() {
    let db = TestDb::new();
    let a = Server::start(&db);
    let b = Server::start(&db);
    let cookie = a.session("a@example.com");
    b.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
    request(b.addr, "POST", "/api/logout/", &[("Cookie", &cookie)], None).expect(200);
    a.get("/api/user/", &[("Cookie", &cookie)]).expect(401);
    b.get("/api/user/", &[("Cookie", &cookie)]).expect(401);
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let db = TestDb::new();
    let s = Server::start(&db);
    for path in [
        "/",
        "/api/",
        "/api/users/",
        "/admin/",
        "//api/user/",
        "/api/user/x",
    ] {
        assert_eq!(
            s.get(path, &[]).expect(404),
            json!({"detail": "Not found."}),
            "{path}"
        );
    }
    let cases = [
        ("GET", "/api/register/", "POST, OPTIONS"),
        ("GET", "/api/login", "POST, OPTIONS"),
        ("PUT", "/api/logout/", "POST, OPTIONS"),
        ("POST", "/api/user/", "GET, HEAD, OPTIONS"),
        ("DELETE", "/api/user", "GET, HEAD, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("PATCH", "/readyz", "GET, HEAD, OPTIONS"),
    ];
    for (method, path, allow) in cases {
        let r = request(s.addr, method, path, &[], None);
        assert_eq!(
            r.expect(405),
            json!({"detail": format!("Method \"{method}\" not allowed.")})
        );
        assert_eq!(r.header("Allow"), Some(allow));
    }
}

#[test]
fn health_and_readiness() {
    let db = TestDb::new();
    let s = Server::start(&db);
    for p in ["/healthz", "/healthz/"] {
        assert_eq!(s.get(p, &[]).expect(200), json!({"status": "ok"}));
    }
    assert_eq!(s.get("/readyz", &[]).expect(200), json!({"status": "ok"}));
}

#[test]
fn a_database_that_is_down_gets_503_within_the_timeout() {
    // nothing listens on this port
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/nothing");
    let env = env_of(&[
        ("DATABASE_URL", url.as_str()),
        ("SECRET_KEY", SECRET),
        ("BIND", "127.0.0.1:0"),
        ("RUST_LOG", "info"),
        ("DB_TIMEOUT", "1"),
    ]);
    let s = Server::spawn(&env);
    assert_eq!(s.get("/healthz", &[]).expect(200), json!({"status": "ok"}));
    assert_eq!(
        s.get("/readyz", &[]).expect(503),
        json!({"status": "unavailable"})
    );
    let started = std::time::Instant::now();
    let r = s.register("A", "a@example.com", "Password123");
    r.expect(503);
    assert!(r.header("Retry-After").is_some());
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let r = s.login("a@example.com", "Password123");
    r.expect(503);
    assert!(r.header("Retry-After").is_some());
}

#[test]
fn the_schema_is_the_seeds_accounts_user_plus_authds_own_tables() {
    let db = TestDb::new();
    let _s = Server::start(&db);
    let cols: Vec<String> = db
        .client()
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_name = 'accounts_user' ORDER BY column_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        cols,
        [
            "date_joined",
            "email",
            "first_name",
            "id",
            "is_active",
            "is_staff",
            "is_superuser",
            "last_login",
            "last_name",
            "name",
            "password"
        ]
    );
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 6);
}

#[test]
fn a_nul_in_a_login_email_is_a_plain_401() {
    // PostgreSQL text cannot hold NUL; schemathesis found this answering 500.
    let db = TestDb::new();
    let s = Server::start(&db);
    for email in ["a\u{0}b@example.com", "\u{0}", "x@example.com\u{0}"] {
        let body = s.login(email, "Password123").expect(401);
        assert_eq!(body, json!({"detail": "Invalid email or password."}));
    }
    s.get("/healthz", &[]).expect(200);
}
