//! Tokens, throttling, enumeration by timing, CSRF/CORS, outages and shutdown.

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

fn b64(v: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in v.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn forged_tokens_are_all_refused() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let id = s.register("A", "a@example.com", "Password123").expect(201)["id"]
        .as_i64()
        .unwrap();
    let key = SECRET.as_bytes();
    let good = json!({"id": id, "iat": now(), "exp": now() + 600, "jti": "forged-but-signed"});
    // the right key and claims pass: the suite below fails for the reason it names
    let ok = sign(Algorithm::HS256, key, &good);
    s.get("/api/user/", &[("Cookie", &format!("jwt={ok}"))])
        .expect(200);
    let parts: Vec<String> = ok.split('.').map(String::from).collect();
    let mut forged: Vec<(&str, String)> = vec![
        ("HS384", sign(Algorithm::HS384, key, &good)),
        ("HS512", sign(Algorithm::HS512, key, &good)),
        (
            "wrong key",
            sign(
                Algorithm::HS256,
                b"wrong-key-wrong-key-wrong-key-wrong-key",
                &good,
            ),
        ),
        ("stripped signature", format!("{}.{}.", parts[0], parts[1])),
        ("no signature part", format!("{}.{}", parts[0], parts[1])),
        (
            "expired by 30 s",
            sign(
                Algorithm::HS256,
                key,
                &json!({"id": id, "iat": now() - 90, "exp": now() - 30}),
            ),
        ),
        (
            "no exp",
            sign(Algorithm::HS256, key, &json!({"id": id, "iat": now()})),
        ),
        (
            "unknown user",
            sign(
                Algorithm::HS256,
                key,
                &json!({"id": id + 1000, "iat": now(), "exp": now() + 60}),
            ),
        ),
    ];
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        forged.push(("alg none", format!("{header}.{}.", parts[1])));
        forged.push((
            "alg none with sig",
            format!("{header}.{}.{}", parts[1], parts[2]),
        ));
    }
    let mut tampered = good.clone();
    tampered["id"] = json!(id + 1);
    forged.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(tampered.to_string().as_bytes()),
            parts[2]
        ),
    ));
    for bad_id in [
        json!("1"),
        json!(0),
        json!(-5),
        json!(1.5),
        json!(null),
        json!(u64::MAX),
        json!([1]),
    ] {
        let mut c = good.clone();
        c["id"] = bad_id;
        forged.push(("bad id", sign(Algorithm::HS256, key, &c)));
    }
    forged.push((
        "oversized",
        format!("{}.{}.{}", parts[0], "a".repeat(5_000), parts[2]),
    ));
    for (why, token) in forged {
        let r = s.get("/api/user/", &[("Cookie", &format!("jwt={token}"))]);
        assert_eq!(
            r.expect(401),
            json!({"detail": "Unauthenticated."}),
            "{why}"
        );
    }
}

#[test]
fn django_issued_tokens_without_jti_work_and_are_revoked_at_logout() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let id = s.register("A", "a@example.com", "Password123").expect(201)["id"]
        .as_i64()
        .unwrap();
    let t = now();
    let token = sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"id": id, "iat": t, "exp": t + 60}),
    );
    let cookie = format!("jwt={token}");
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
    request(s.addr, "POST", "/api/logout/", &[("Cookie", &cookie)], None).expect(200);
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(401);
}

#[test]
fn failed_logins_are_throttled_per_email_until_the_window_passes() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("LOGIN_MAX_FAILURES", "3"), ("LOGIN_WINDOW", "3")]);
    s.register("A", "a@example.com", "Password123").expect(201);
    s.register("B", "b@example.com", "Password123").expect(201);
    for _ in 0..3 {
        s.login("a@example.com", "wrong-password").expect(401);
    }
    for password in ["wrong-password", "Password123"] {
        let r = s.login("A@EXAMPLE.COM", password);
        assert!(r.expect(429)["detail"].is_string());
        let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!((1..=3).contains(&retry), "{retry}");
        assert!(r.header("Set-Cookie").is_none());
    }
    // another email is not affected
    s.login("b@example.com", "Password123").expect(200);
    thread::sleep(Duration::from_millis(3200));
    s.login("a@example.com", "Password123").expect(200);
}

#[test]
fn a_successful_login_resets_the_email_count() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("LOGIN_MAX_FAILURES", "3")]);
    s.register("A", "a@example.com", "Password123").expect(201);
    for _ in 0..2 {
        s.login("a@example.com", "nope-nope").expect(401);
    }
    s.login("a@example.com", "Password123").expect(200);
    for _ in 0..3 {
        s.login("a@example.com", "nope-nope").expect(401);
    }
    s.login("a@example.com", "Password123").expect(429);
}

#[test]
fn failed_logins_are_throttled_per_client_address() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("LOGIN_MAX_FAILURES_PER_IP", "4")]);
    s.register("A", "a@example.com", "Password123").expect(201);
    for i in 0..4 {
        s.login(&format!("nobody{i}@example.com"), "Password123")
            .expect(401);
    }
    s.login("a@example.com", "Password123").expect(429);
    assert!(db.count("SELECT count(*) FROM authd_login_throttle WHERE scope = 'i'") == 1);
}

#[test]
fn throttle_counts_add_up_across_two_instances() {
    let db = TestDb::new();
    let env = [("LOGIN_MAX_FAILURES", "3")];
    let a = Server::start_with(&db, &env);
    let b = Server::start_with(&db, &env);
    a.register("A", "a@example.com", "Password123").expect(201);
    a.login("a@example.com", "wrong-one").expect(401);
    b.login("a@example.com", "wrong-two").expect(401);
    a.login("a@example.com", "wrong-three").expect(401);
    b.login("a@example.com", "Password123").expect(429);
    // and a token from one works on the other
    let db2 = TestDb::new();
    let c = Server::start(&db2);
    let d = Server::start(&db2);
    let cookie = c.session("x@example.com");
    d.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn unknown_email_costs_the_same_time_as_a_wrong_password() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("BCRYPT_COST", "8"), ("LOGIN_MAX_FAILURES", "1000")]);
    s.register("A", "a@example.com", "Password123").expect(201);
    let time = |email: &str| {
        let t = Instant::now();
        s.login(email, "wrong-password").expect(401);
        t.elapsed().as_secs_f64()
    };
    time("warm@example.com");
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..9 {
        wrong.push(time("a@example.com"));
        unknown.push(time(&format!("nobody{i}@example.com")));
    }
    let (w, u) = (median(wrong), median(unknown));
    assert!(
        u > w / 2.0 && u < w * 2.0,
        "wrong password {w:.4}s, unknown email {u:.4}s"
    );
}

#[test]
fn cross_site_posts_are_refused_and_change_nothing() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("ALLOWED_ORIGINS", "https://app.example.com")]);
    let cookie = s.session("a@example.com");
    let evil = [("Origin", "https://evil.example")];
    let body = json!({"email": "a@example.com", "password": "Password123"});
    let r = s.post_json("/api/login/", &body, &evil);
    assert!(r.expect(403)["detail"].is_string());
    assert!(r.header("Set-Cookie").is_none());
    let r = request(
        s.addr,
        "POST",
        "/api/logout/",
        &[("Cookie", &cookie), evil[0]],
        None,
    );
    r.expect(403);
    assert!(r.header("Set-Cookie").is_none());
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
    let reg = json!({"name": "E", "email": "e@example.com", "password": "Password123"});
    s.post_json("/api/register/", &reg, &[("Origin", "null")])
        .expect(403);
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 1);
    // the server's own origin, and a listed one, pass; CORS echoes only the listed one
    let own = format!("http://{}", s.addr);
    let r = s.post_json("/api/login/", &body, &[("Origin", &own)]);
    r.expect(200);
    assert!(r.header("Access-Control-Allow-Origin").is_none());
    let r = s.post_json(
        "/api/login/",
        &body,
        &[("Origin", "https://app.example.com")],
    );
    r.expect(200);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    // preflight
    let pre = request(
        s.addr,
        "OPTIONS",
        "/api/login/",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    );
    pre.expect(200);
    assert_eq!(
        pre.header("Access-Control-Allow-Origin"),
        Some("https://app.example.com")
    );
    assert!(
        pre.header("Access-Control-Allow-Methods")
            .unwrap()
            .contains("POST")
    );
    let pre = request(
        s.addr,
        "OPTIONS",
        "/api/login/",
        &[("Origin", "https://evil.example")],
        None,
    );
    pre.expect(200);
    assert!(pre.header("Access-Control-Allow-Origin").is_none());
}

#[test]
fn sigterm_lets_a_registration_in_flight_finish_then_exits_zero() {
    let db = TestDb::new();
    let mut s = Server::start_with(&db, &[("BCRYPT_COST", "11")]);
    let addr = s.addr;
    let inflight = thread::spawn(move || {
        let body = json!({"name": "A", "email": "late@example.com", "password": "Password123"});
        request(
            addr,
            "POST",
            "/api/register/",
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    });
    thread::sleep(Duration::from_millis(150));
    let t = Instant::now();
    s.signal("TERM");
    let r = inflight.join().unwrap();
    r.expect(201);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running after 10 s"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 1);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting"
    );
}

/// A PostgreSQL cluster of the test's own, which it may stop and start.
struct OwnCluster {
    dir: String,
}

impl OwnCluster {
    fn script() -> String {
        format!("{}/scripts/pg.sh", env!("CARGO_MANIFEST_DIR"))
    }

    fn start(&self) -> u16 {
        let out = Command::new(Self::script())
            .args(["start", &self.dir, "authd"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    fn stop(&self) {
        Command::new(Self::script())
            .args(["stop", &self.dir])
            .status()
            .unwrap();
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn an_outage_answers_503_and_service_resumes_by_itself() {
    let base = std::env::var("AUTHD_TEST_TMP").unwrap_or_else(|_| "/tmp".into());
    let cluster = OwnCluster {
        dir: format!("{base}/outage-{}", std::process::id()),
    };
    let port = cluster.start();
    let url = format!("postgres://postgres@127.0.0.1:{port}/authd");
    let env = env_of(&[
        ("DATABASE_URL", url.as_str()),
        ("SECRET_KEY", SECRET),
        ("BIND", "127.0.0.1:0"),
        ("RUST_LOG", "info"),
        ("BCRYPT_COST", "4"),
        ("DB_TIMEOUT", "1"),
    ]);
    let mut s = Server::spawn(&env);
    s.register("A", "a@example.com", "Password123").expect(201);
    let cookie = {
        let r = s.login("a@example.com", "Password123");
        r.cookie_pair("jwt").unwrap()
    };
    cluster.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let r = s.register("B", "b@example.com", "Password123");
        r.expect(503);
        assert!(r.header("Retry-After").is_some());
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        s.get("/api/user/", &[("Cookie", &cookie)]).expect(503);
        s.get("/healthz", &[]).expect(200);
        s.get("/readyz", &[]).expect(503);
    }
    assert!(s.alive());
    let again = cluster.start();
    assert_eq!(again, port, "the cluster came back on another port");
    let back = eventually(Duration::from_secs(15), || {
        s.get("/api/user/", &[("Cookie", &cookie)]).status == 200
    });
    assert!(back, "service did not resume: {}", s.log_text());
    s.get("/readyz", &[]).expect(200);
    s.register("C", "c@example.com", "Password123").expect(201);
    s.login("a@example.com", "Password123").expect(200);
}
