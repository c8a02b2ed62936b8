//! The "Sessions" section of API.md, rule by rule, against the real binary and a real
//! database: the cookie pair, refresh rotation and reuse, lifetimes, logout scopes, the
//! session list, deleting a session, password change, CSRF, and the operator commands.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use serde_json::{Value, json};

const PW: &str = "Password123";
const EVIL: &str = "https://evil.example";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One client's cookie pair (the values) under the default names.
#[derive(Debug, Clone)]
struct Pair {
    jwt: String,
    rt: String,
}

impl Pair {
    /// The session id, from the refresh token's documented form `rt1.<sid>.<gen>.<hmac>`.
    fn sid(&self) -> i64 {
        sid_of(&self.rt)
    }

    /// A `Cookie` header carrying both.
    fn both(&self) -> String {
        format!("jwt={}; refresh={}", self.jwt, self.rt)
    }
}

fn sid_of(rt: &str) -> i64 {
    let parts: Vec<&str> = rt.split('.').collect();
    assert_eq!(parts.len(), 4, "refresh token form: {rt}");
    assert_eq!(parts[0], "rt1", "{rt}");
    parts[1].parse().unwrap()
}

/// `(name, value, attributes)` of a `Set-Cookie` value; attribute names lowercased.
fn parse_set_cookie(c: &str) -> (String, String, BTreeMap<String, String>) {
    let mut parts = c.split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    let attrs = parts
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), v.to_string()),
            None => (p.to_ascii_lowercase(), String::new()),
        })
        .collect();
    (name.to_string(), value.to_string(), attrs)
}

/// Whether a `Set-Cookie` value clears its cookie.
fn clears(c: &str) -> bool {
    let (_, value, attrs) = parse_set_cookie(c);
    value.is_empty() || attrs.get("max-age").is_some_and(|v| v == "0")
}

/// The one `Set-Cookie` of `r` for cookie `name`.
fn set_cookie<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    let all: Vec<&str> = r
        .all("Set-Cookie")
        .into_iter()
        .filter(|c| c.starts_with(&format!("{name}=")))
        .collect();
    assert!(all.len() <= 1, "two Set-Cookie for {name}: {all:?}");
    all.first().copied()
}

fn wanted_attrs(same_site: &str, secure: bool, max_age: u64) -> BTreeMap<String, String> {
    let mut want = BTreeMap::from([
        ("httponly".to_string(), String::new()),
        ("path".to_string(), "/".to_string()),
        ("max-age".to_string(), max_age.to_string()),
        ("samesite".to_string(), same_site.to_string()),
    ]);
    if secure {
        want.insert("secure".into(), String::new());
    }
    want
}

/// Asserts that `r` sets cookie `name` with exactly these attributes; its value.
fn assert_set(r: &Resp, name: &str, same_site: &str, secure: bool, max_age: u64) -> String {
    let c = set_cookie(r, name).unwrap_or_else(|| panic!("no {name} cookie: {:?}", r.headers));
    let (_, value, attrs) = parse_set_cookie(c);
    assert!(!value.is_empty(), "{c}");
    assert_eq!(attrs, wanted_attrs(same_site, secure, max_age), "{c}");
    value
}

/// The `Max-Age` of cookie `name` in `r`.
fn max_age(r: &Resp, name: &str) -> u64 {
    let c = set_cookie(r, name).unwrap_or_else(|| panic!("no {name} cookie: {:?}", r.headers));
    parse_set_cookie(c).2["max-age"].parse().unwrap()
}

/// Asserts that `r` clears cookie `name` with the attributes it was set with.
fn assert_cleared(r: &Resp, name: &str, same_site: &str, secure: bool) {
    let c = set_cookie(r, name)
        .unwrap_or_else(|| panic!("{name} not cleared: {} {:?}", r.status, r.headers));
    let (_, value, mut attrs) = parse_set_cookie(c);
    assert_eq!(value, "", "{c}");
    if let Some(exp) = attrs.remove("expires") {
        assert!(exp.contains("1970"), "{c}");
    }
    assert_eq!(attrs, wanted_attrs(same_site, secure, 0), "{c}");
}

/// Both default cookies cleared, `Secure` (the test servers run with DEBUG off).
fn assert_both_cleared(r: &Resp) {
    assert_cleared(r, "jwt", "Lax", true);
    assert_cleared(r, "refresh", "Strict", true);
}

fn assert_no_set_cookie(r: &Resp) {
    assert!(
        r.all("Set-Cookie").is_empty(),
        "{} sets cookies: {:?}",
        r.status,
        r.all("Set-Cookie")
    );
}

/// The rules every answer of this section keeps: `Cache-Control: no-store`, no token in
/// a body, and no 409, 429 or 5xx that clears a cookie.
fn checked(r: Resp) -> Resp {
    assert_eq!(
        r.header("Cache-Control"),
        Some("no-store"),
        "{} {:?}",
        r.status,
        r.headers
    );
    assert!(
        !r.body.contains("eyJ") && !r.body.contains("rt1."),
        "a token in a body: {}",
        r.body
    );
    if r.status == 409 || r.status == 429 || r.status >= 500 {
        for c in r.all("Set-Cookie") {
            assert!(!clears(c), "a {} clears a cookie: {c}", r.status);
        }
    }
    r
}

fn call(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    checked(request(s.addr, method, path, headers, body))
}

fn login_as(s: &Server, email: &str, password: &str, ua: &str) -> Resp {
    let body = json!({"email": email, "password": password}).to_string();
    call(
        s,
        "POST",
        "/api/login/",
        &[("Content-Type", "application/json"), ("User-Agent", ua)],
        Some(body.as_bytes()),
    )
}

fn pair_of(r: &Resp) -> Pair {
    let value = |name: &str| {
        let c = set_cookie(r, name).unwrap_or_else(|| panic!("no {name}: {:?}", r.headers));
        parse_set_cookie(c).1
    };
    Pair {
        jwt: value("jwt"),
        rt: value("refresh"),
    }
}

/// A new session of an existing user.
fn login(s: &Server, email: &str) -> Pair {
    login_ua(s, email, "test-agent")
}

fn login_ua(s: &Server, email: &str, ua: &str) -> Pair {
    let r = login_as(s, email, PW, ua);
    assert_eq!(r.status, 200, "{}", r.body);
    pair_of(&r)
}

/// Registers `email` and logs it in.
fn signup(s: &Server, email: &str) -> Pair {
    assert_eq!(s.register("Alice", email, PW).status, 201);
    login(s, email)
}

/// Status of `GET /api/user/` with this access token.
fn me(s: &Server, jwt: &str) -> u16 {
    call(
        s,
        "GET",
        "/api/user/",
        &[("Cookie", &format!("jwt={jwt}"))],
        None,
    )
    .status
}

fn refresh_with(s: &Server, cookie: &str, extra: &[(&str, &str)]) -> Resp {
    let mut h = vec![("Cookie", cookie)];
    h.extend_from_slice(extra);
    call(s, "POST", "/api/token/refresh/", &h, None)
}

fn refresh(s: &Server, rt: &str) -> Resp {
    refresh_with(s, &format!("refresh={rt}"), &[])
}

/// Refreshes and asserts 200; the new pair.
fn refreshed(s: &Server, rt: &str) -> Pair {
    let r = refresh(s, rt);
    assert_eq!(r.status, 200, "{}", r.body);
    pair_of(&r)
}

/// Asserts that the session of `p` is over: its access token and refresh token are 401.
fn assert_ended(s: &Server, p: &Pair) {
    assert_eq!(me(s, &p.jwt), 401, "access token of session {}", p.sid());
    let r = refresh(s, &p.rt);
    assert_eq!(r.status, 401, "refresh token of session {}", p.sid());
}

/// Asserts that the session of `p` is live (its access token works).
fn assert_live(s: &Server, p: &Pair) {
    assert_eq!(me(s, &p.jwt), 200, "access token of session {}", p.sid());
}

fn logout(s: &Server, query: &str, cookie: &str, extra: &[(&str, &str)]) -> Resp {
    let mut h = vec![("Cookie", cookie)];
    h.extend_from_slice(extra);
    call(s, "POST", &format!("/api/logout/{query}"), &h, None)
}

fn list(s: &Server, jwt: &str) -> Resp {
    call(
        s,
        "GET",
        "/api/sessions/",
        &[("Cookie", &format!("jwt={jwt}"))],
        None,
    )
}

fn delete(s: &Server, cookie: &str, id: i64, extra: &[(&str, &str)]) -> Resp {
    let mut h = vec![("Cookie", cookie)];
    h.extend_from_slice(extra);
    call(s, "DELETE", &format!("/api/sessions/{id}/"), &h, None)
}

fn change(s: &Server, p: &Pair, body: &Value, extra: &[(&str, &str)]) -> Resp {
    let cookie = p.both();
    let mut h = vec![
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
    ];
    h.extend_from_slice(extra);
    let body = body.to_string();
    call(
        s,
        "POST",
        "/api/password/change/",
        &h,
        Some(body.as_bytes()),
    )
}

fn change_pw(s: &Server, p: &Pair, old: &str, new: &str) -> Resp {
    change(
        s,
        p,
        &json!({"old_password": old, "new_password": new}),
        &[],
    )
}

/// The claims of a JWT (unverified: the server checks them, the test reads them).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The absolute end of session `sid`, epoch seconds (the database's clock).
fn session_end(db: &TestDb, sid: i64) -> f64 {
    db.client()
        .query_one(
            "SELECT extract(epoch FROM expires_at)::float8 FROM authd_session WHERE id = $1",
            &[&sid],
        )
        .unwrap()
        .get(0)
}

/// Epoch seconds of an ISO 8601 UTC time `YYYY-MM-DDTHH:MM:SS[.fff]Z`; panics on any
/// other form.
fn iso_utc(s: &str) -> i64 {
    let b = s.as_bytes();
    assert!(s.ends_with('Z') && b.len() >= 20, "not ISO 8601 UTC: {s:?}");
    let digits = |r: std::ops::Range<usize>| -> i64 {
        let part = &s[r];
        assert!(part.bytes().all(|c| c.is_ascii_digit()), "{s:?}");
        part.parse().unwrap()
    };
    for (i, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        assert_eq!(b[i], sep, "not ISO 8601: {s:?}");
    }
    if b.len() > 20 {
        assert_eq!(b[19], b'.', "{s:?}");
        digits(20..b.len() - 1);
    }
    let (y, m, d) = (digits(0..4), digits(5..7), digits(8..10));
    let (hh, mm, ss) = (digits(11..13), digits(14..16), digits(17..19));
    assert!((1..=12).contains(&m) && (1..=31).contains(&d) && hh < 24 && mm < 60 && ss < 61);
    // days from civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn same_origin(s: &Server) -> String {
    format!("http://{}", s.addr)
}

// ---------------------------------------------------------------------------------------
// Login: the cookie pair
// ---------------------------------------------------------------------------------------

#[test]
fn login_refresh_and_logout_write_both_cookies_with_exact_attributes() {
    struct Case {
        env: &'static [(&'static str, &'static str)],
        names: (&'static str, &'static str),
        secure: bool,
        jwt_age: u64,
        rt_age: u64,
    }
    let cases = [
        Case {
            env: &[],
            names: ("jwt", "refresh"),
            secure: true,
            jwt_age: 3600,
            rt_age: 604_800,
        },
        Case {
            env: &[("COOKIE_SECURE", "false")],
            names: ("jwt", "refresh"),
            secure: false,
            jwt_age: 3600,
            rt_age: 604_800,
        },
        Case {
            env: &[("DEBUG", "true")],
            names: ("jwt", "refresh"),
            secure: false,
            jwt_age: 3600,
            rt_age: 604_800,
        },
        // the refresh cookie lives the idle timeout, capped at the absolute end
        Case {
            env: &[
                ("JWT_TTL", "120"),
                ("SESSION_IDLE_TIMEOUT", "600"),
                ("SESSION_MAX_AGE", "300"),
            ],
            names: ("jwt", "refresh"),
            secure: true,
            jwt_age: 120,
            rt_age: 300,
        },
        // the access token never outlives the session, whatever JWT_TTL is
        Case {
            env: &[("SESSION_MAX_AGE", "60")],
            names: ("jwt", "refresh"),
            secure: true,
            jwt_age: 60,
            rt_age: 60,
        },
        Case {
            env: &[
                ("COOKIE_NAME", "sess"),
                ("REFRESH_COOKIE_NAME", "rfr"),
                ("COOKIE_SECURE", "false"),
                ("JWT_TTL", "900"),
                ("SESSION_IDLE_TIMEOUT", "1000"),
            ],
            names: ("sess", "rfr"),
            secure: false,
            jwt_age: 900,
            rt_age: 1000,
        },
    ];
    for case in cases {
        let label = format!("{:?}", case.env);
        let db = TestDb::new();
        let s = Server::start_with(&db, case.env);
        let (jn, rn) = case.names;
        assert_eq!(s.register("Alice", "a@example.com", PW).status, 201);
        let r = login_as(&s, "a@example.com", PW, "ua");
        assert_eq!(r.status, 200, "{label}: {}", r.body);
        assert_eq!(r.all("Set-Cookie").len(), 2, "{label}: {:?}", r.headers);
        let jwt = assert_set(&r, jn, "Lax", case.secure, case.jwt_age);
        let rt = assert_set(&r, rn, "Strict", case.secure, case.rt_age);
        assert!(!r.body.contains(&jwt) && !r.body.contains(&rt), "{label}");
        let c = claims(&jwt);
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            case.jwt_age as i64,
            "{label}: exp is iat + the cookie's lifetime"
        );
        assert!(rt.starts_with("rt1."), "{label}: {rt}");
        // the access token works under its own name only
        let get =
            |cookie: String| call(&s, "GET", "/api/user/", &[("Cookie", &cookie)], None).status;
        assert_eq!(get(format!("{jn}={jwt}")), 200, "{label}");

        // refresh: both replaced, same attributes (a few seconds may have passed)
        let r = refresh_with(&s, &format!("{rn}={rt}"), &[]);
        assert_eq!(r.status, 200, "{label}: {}", r.body);
        assert_eq!(r.all("Set-Cookie").len(), 2, "{label}: {:?}", r.headers);
        let ja = max_age(&r, jn);
        let ra = max_age(&r, rn);
        assert!(
            ja + 2 >= case.jwt_age && ja <= case.jwt_age,
            "{label}: {ja}"
        );
        assert!(ra + 2 >= case.rt_age && ra <= case.rt_age, "{label}: {ra}");
        let jwt2 = assert_set(&r, jn, "Lax", case.secure, ja);
        let rt2 = assert_set(&r, rn, "Strict", case.secure, ra);
        assert_ne!(jwt2, jwt, "{label}");
        assert_ne!(rt2, rt, "{label}");
        assert_eq!(r.json()["expires_in"].as_u64(), Some(ja), "{label}");

        // logout clears both with the attributes they were set with
        let r = logout(&s, "", &format!("{jn}={jwt2}; {rn}={rt2}"), &[]);
        assert_eq!(r.status, 200, "{label}");
        assert_eq!(r.all("Set-Cookie").len(), 2, "{label}: {:?}", r.headers);
        assert_cleared(&r, jn, "Lax", case.secure);
        assert_cleared(&r, rn, "Strict", case.secure);
        assert_eq!(get(format!("{jn}={jwt2}")), 401, "{label}");
    }
}

// ---------------------------------------------------------------------------------------
// Refresh
// ---------------------------------------------------------------------------------------

#[test]
fn refresh_answers_relative_lifetimes_and_replaces_both_cookies() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("JWT_TTL", "600"), ("SESSION_MAX_AGE", "5000")]);
    assert_eq!(s.register("Alice", "a@example.com", PW).status, 201);
    let p = login(&s, "a@example.com");
    let mut current = p.clone();
    for body in [None, Some(&b"{}"[..]), Some(&b" { \"x\": 1 } "[..])] {
        let cookie = format!("refresh={}", current.rt);
        let mut h = vec![("Cookie", cookie.as_str())];
        if body.is_some() {
            h.push(("Content-Type", "application/json; charset=utf-8"));
        }
        let r = call(&s, "POST", "/api/token/refresh/", &h, body);
        let v = r.expect(200);
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{v}");
        let expires_in = v["expires_in"].as_u64().expect("a whole number");
        let left = v["session_expires_in"].as_u64().expect("a whole number");
        assert_eq!(expires_in, 600, "{v}");
        assert!(
            (4990..=5000).contains(&left),
            "relative, not a timestamp: {v}"
        );
        let next = pair_of(&r);
        assert_ne!(next.jwt, current.jwt);
        assert_ne!(next.rt, current.rt);
        assert_eq!(next.sid(), p.sid(), "the same session");
        assert_eq!(max_age(&r, "jwt"), expires_in);
        let c = claims(&next.jwt);
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
        assert_live(&s, &next);
        current = next;
    }
}

#[test]
fn a_reused_refresh_token_revokes_its_session_and_only_it() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let other = signup(&s, "a@example.com");
    let p0 = login(&s, "a@example.com");
    let p1 = refreshed(&s, &p0.rt);
    let p2 = refreshed(&s, &p1.rt);
    assert_live(&s, &p2);
    // p0's token was retired two rotations ago: reuse, whatever the grace
    let r = refresh(&s, &p0.rt);
    assert_eq!(r.expect(401), json!({"detail": "Unauthenticated."}));
    assert_both_cleared(&r);
    // the whole session is over: every access token of it, and its current refresh token
    for jwt in [&p0.jwt, &p1.jwt, &p2.jwt] {
        assert_eq!(me(&s, jwt), 401);
    }
    assert_eq!(refresh(&s, &p2.rt).status, 401);
    // the user's other session is not affected
    assert_live(&s, &other);
    let other = refreshed(&s, &other.rt);
    assert_live(&s, &other);
    // one warning that names the session, and never a token
    let sid = p0.sid().to_string();
    assert!(
        eventually(Duration::from_secs(3), || {
            s.log_text().lines().any(|l| {
                l.contains("reused") && l.split(|c: char| !c.is_ascii_digit()).any(|w| w == sid)
            })
        }),
        "no reuse line naming session {sid}: {}",
        s.log_text()
    );
    let log = s.log_text();
    for secret in [&p0.rt, &p1.rt, &p2.rt, &p0.jwt, &p2.jwt] {
        assert!(!log.contains(secret.as_str()), "a token in the log");
    }
    let tag = p0.rt.rsplit('.').next().unwrap();
    assert!(!log.contains(tag) && !log.contains("rt1."), "{log}");
}

#[test]
fn within_the_grace_the_retired_token_gets_the_current_pair_and_the_grace_is_not_extended() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("REFRESH_REUSE_GRACE", "2")]);
    let p0 = signup(&s, "a@example.com");
    let first = refresh(&s, &p0.rt);
    let rotated = Instant::now(); // the rotation happened before this instant
    assert_eq!(first.status, 200);
    let p1 = pair_of(&first);
    // a second tab, a moment later, with the token just retired: the current pair
    let again = refresh(&s, &p0.rt);
    assert_eq!(again.status, 200, "{}", again.body);
    let v = again.json();
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    let a = pair_of(&again);
    assert_eq!(a.rt, p1.rt, "the same current refresh token");
    assert_live(&s, &a);
    // later, still within the grace
    thread::sleep(Duration::from_millis(1200).saturating_sub(rotated.elapsed()));
    let r = refresh(&s, &p0.rt);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(pair_of(&r).rt, p1.rt);
    // past the grace counted from the rotation (not from the replays): reuse
    thread::sleep(Duration::from_millis(2400).saturating_sub(rotated.elapsed()));
    let r = refresh(&s, &p0.rt);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_both_cleared(&r);
    assert_ended(&s, &p1);
    assert_eq!(me(&s, &a.jwt), 401);
}

#[test]
fn a_retired_token_replayed_after_the_grace_is_reuse() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("REFRESH_REUSE_GRACE", "1")]);
    let p0 = signup(&s, "a@example.com");
    let p1 = refreshed(&s, &p0.rt);
    thread::sleep(Duration::from_millis(1500));
    let r = refresh(&s, &p0.rt);
    assert_eq!(r.status, 401);
    assert_both_cleared(&r);
    assert_ended(&s, &p1);
}

fn parallel_refreshes(n: usize) {
    let db = TestDb::new();
    let s = Server::start(&db);
    let p = signup(&s, "a@example.com");
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (b, addr, cookie) = (barrier.clone(), s.addr, format!("refresh={}", p.rt));
            thread::spawn(move || {
                b.wait();
                request(
                    addr,
                    "POST",
                    "/api/token/refresh/",
                    &[("Cookie", &cookie)],
                    None,
                )
            })
        })
        .collect();
    let answers: Vec<Resp> = handles
        .into_iter()
        .map(|h| checked(h.join().unwrap()))
        .collect();
    for r in &answers {
        assert_eq!(r.status, 200, "{}: {}", r.status, r.body);
    }
    let pairs: Vec<Pair> = answers.iter().map(pair_of).collect();
    for q in &pairs {
        assert_eq!(
            q.rt, pairs[0].rt,
            "every racer gets the one current refresh token"
        );
        assert_live(&s, q);
    }
    assert_live(&s, &p);
    let next = refreshed(&s, &pairs[0].rt);
    assert_live(&s, &next);
    assert_eq!(
        db.count("SELECT count(*) FROM authd_session WHERE revoked_at IS NOT NULL"),
        0
    );
}

#[test]
fn two_parallel_refreshes_with_one_token_both_get_200() {
    parallel_refreshes(2);
}

#[test]
fn twenty_parallel_refreshes_with_one_token_all_get_200() {
    parallel_refreshes(20);
}

#[test]
fn a_refresh_that_cannot_take_the_session_lock_is_409_and_clears_nothing() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let p = signup(&s, "a@example.com");
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    tx.query(
        "SELECT 1 FROM authd_session WHERE id = $1 FOR UPDATE",
        &[&p.sid()],
    )
    .unwrap();
    let t = Instant::now();
    let r = refresh(&s, &p.rt);
    let waited = t.elapsed();
    r.expect(409);
    assert!(r.header("Retry-After").is_some(), "{:?}", r.headers);
    assert_no_set_cookie(&r);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    tx.rollback().unwrap();
    // nothing was rotated or revoked
    assert_live(&s, &p);
    assert_live(&s, &refreshed(&s, &p.rt));
}

#[test]
fn an_access_token_is_no_refresh_token_nor_the_reverse() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let p = signup(&s, "a@example.com");
    let cases = [
        format!("refresh={}", p.jwt),
        format!("jwt={}", p.jwt),
        format!("jwt={}", p.rt),
        String::new(),
    ];
    for cookie in &cases {
        let r = refresh_with(&s, cookie, &[]);
        assert_eq!(
            r.expect(401),
            json!({"detail": "Unauthenticated."}),
            "{cookie}"
        );
        assert_both_cleared(&r);
    }
    // a refresh token in the access cookie authenticates nothing
    let cookie = format!("jwt={}", p.rt);
    for path in ["/api/user/", "/api/sessions/"] {
        let r = call(&s, "GET", path, &[("Cookie", &cookie)], None);
        assert_eq!(r.status, 401, "{path}");
    }
    let r = delete(&s, &cookie, p.sid(), &[]);
    assert_eq!(r.status, 401);
    let r = change(
        &s,
        &Pair {
            jwt: p.rt.clone(),
            rt: p.rt.clone(),
        },
        &json!({"old_password": PW, "new_password": "Another123"}),
        &[],
    );
    assert_eq!(r.status, 401);
    // none of it harmed the session
    assert_live(&s, &p);
    assert_live(&s, &refreshed(&s, &p.rt));
}

#[test]
fn garbage_and_tampered_refresh_tokens_are_401_and_revoke_nothing() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let p = signup(&s, "a@example.com");
    let parts: Vec<&str> = p.rt.split('.').collect();
    let (sid, generation, tag) = (parts[1], parts[2], parts[3]);
    let g: i64 = generation.parse().unwrap();
    let mut flipped: Vec<char> = tag.chars().collect();
    flipped[5] = if flipped[5] == 'A' { 'B' } else { 'A' };
    let flipped: String = flipped.into_iter().collect();
    let bad = [
        String::new(),
        "garbage".into(),
        "rt1.".into(),
        "rt1...".into(),
        format!("rt1.{sid}.{generation}"),
        format!("rt1.{sid}.{generation}.{flipped}"),
        format!("rt1.{sid}.{}.{tag}", g + 1),
        format!("rt1.{}.{generation}.{tag}", sid.parse::<i64>().unwrap() + 1),
        format!("rt2.{sid}.{generation}.{tag}"),
        format!("rt1.0{sid}.{generation}.{tag}"),
        format!("{}x", p.rt),
        format!("{}=", p.rt),
        format!("{}.x", p.rt),
        format!("\"{}x\"", p.rt),
        "x".repeat(300),
    ];
    for t in &bad {
        let r = refresh(&s, t);
        assert_eq!(
            r.expect(401),
            json!({"detail": "Unauthenticated."}),
            "{t:?}"
        );
        assert_both_cleared(&r);
    }
    // a quoted cookie value is the same token (RFC 6265)
    let p1 = {
        let r = refresh_with(&s, &format!("refresh=\"{}\"", p.rt), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        pair_of(&r)
    };
    assert_live(&s, &p1);
    assert_eq!(
        db.count("SELECT count(*) FROM authd_session WHERE revoked_at IS NOT NULL"),
        0
    );
}

// ---------------------------------------------------------------------------------------
// Lifetimes
// ---------------------------------------------------------------------------------------

#[test]
fn the_absolute_end_is_never_extended_and_no_access_token_outlives_it() {
    let db = TestDb::new();
    let s = Server::start_with(
        &db,
        &[
            ("SESSION_MAX_AGE", "3"),
            ("SESSION_IDLE_TIMEOUT", "2"),
            ("JWT_TTL", "3600"),
        ],
    );
    assert_eq!(s.register("Alice", "a@example.com", PW).status, 201);
    let r = login_as(&s, "a@example.com", PW, "ua");
    assert_eq!(r.status, 200);
    let start = Instant::now();
    let mut p = pair_of(&r);
    let end = session_end(&db, p.sid());
    let check = |r: &Resp, p: &Pair| {
        let ja = max_age(r, "jwt");
        let ra = max_age(r, "refresh");
        assert!((1..=3).contains(&ja), "jwt Max-Age {ja}");
        assert!((1..=2).contains(&ra), "refresh Max-Age {ra}");
        let exp = claims(&p.jwt)["exp"].as_f64().unwrap();
        assert!(
            exp <= end.ceil(),
            "exp {exp} passes the session's end {end}"
        );
        assert!(
            now_f64() + ja as f64 <= end + 1.0,
            "Max-Age {ja} past the end"
        );
    };
    assert_eq!(max_age(&r, "jwt"), 3);
    assert_eq!(max_age(&r, "refresh"), 2);
    check(&r, &p);
    let mut last_left = 3;
    for at in [1000, 2000] {
        thread::sleep(Duration::from_millis(at).saturating_sub(start.elapsed()));
        let r = refresh(&s, &p.rt);
        let v = r.expect(200);
        p = pair_of(&r);
        check(&r, &p);
        let left = v["session_expires_in"].as_u64().unwrap();
        let expires_in = v["expires_in"].as_u64().unwrap();
        assert!(left < last_left, "refreshing extended the session: {v}");
        assert!(expires_in <= left.max(1), "{v}");
        assert_eq!(max_age(&r, "jwt"), expires_in);
        last_left = left;
        assert_live(&s, &p);
    }
    // past the absolute end, though refreshed every second
    thread::sleep(Duration::from_millis(3300).saturating_sub(start.elapsed()));
    let r = refresh(&s, &p.rt);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_both_cleared(&r);
    assert_eq!(me(&s, &p.jwt), 401, "an access token of an ended session");
}

#[test]
fn a_session_not_refreshed_for_the_idle_timeout_ends() {
    let db = TestDb::new();
    let s = Server::start_with(
        &db,
        &[
            ("SESSION_IDLE_TIMEOUT", "2"),
            ("SESSION_MAX_AGE", "3600"),
            ("JWT_TTL", "3600"),
        ],
    );
    let start = Instant::now();
    let p = signup(&s, "a@example.com");
    // idle time counts from the last refresh: 2.5 s after login, 1.5 s after a refresh
    thread::sleep(Duration::from_millis(1000).saturating_sub(start.elapsed()));
    let p = refreshed(&s, &p.rt);
    thread::sleep(Duration::from_millis(1500));
    assert_live(&s, &p);
    let p = refreshed(&s, &p.rt);
    // now more than 2 s without a refresh
    thread::sleep(Duration::from_millis(2500));
    let r = refresh(&s, &p.rt);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_both_cleared(&r);
    assert_eq!(me(&s, &p.jwt), 401, "the idle session's access token");
}

// ---------------------------------------------------------------------------------------
// Logout
// ---------------------------------------------------------------------------------------

#[test]
fn logout_local_ends_only_this_session_and_clears_both_cookies() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let other = signup(&s, "a@example.com");
    for query in ["", "?scope=local", "?x=1&scope=local"] {
        let p = login(&s, "a@example.com");
        let r = logout(&s, query, &p.both(), &[]);
        assert_eq!(r.expect(200), json!({"message": "success"}), "{query}");
        assert_eq!(r.all("Set-Cookie").len(), 2, "{query}");
        assert_both_cleared(&r);
        assert_ended(&s, &p);
        assert_live(&s, &other);
    }
    assert_live(&s, &refreshed(&s, &other.rt));
}

#[test]
fn logout_with_only_the_refresh_cookie_ends_the_session() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let other = signup(&s, "a@example.com");
    let p = login(&s, "a@example.com");
    let r = logout(&s, "", &format!("refresh={}", p.rt), &[]);
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_both_cleared(&r);
    assert_ended(&s, &p);
    assert_live(&s, &other);
    // with neither cookie: still 200, cookies cleared, nothing else ended
    let r = logout(&s, "", "", &[]);
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_both_cleared(&r);
    assert_live(&s, &other);
}

#[test]
fn logout_finds_the_session_from_an_expired_access_token_whose_signature_holds() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("JWT_TTL", "1")]);
    let other = signup(&s, "a@example.com");
    let p = login(&s, "a@example.com");
    assert!(
        eventually(Duration::from_secs(8), || me(&s, &p.jwt) == 401),
        "the access token never expired"
    );
    // a tampered expired token ends nothing
    let (head, sig) = p.jwt.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    sig[5] = if sig[5] == 'A' { 'B' } else { 'A' };
    let forged = format!("{head}.{}", sig.into_iter().collect::<String>());
    let r = logout(&s, "", &format!("jwt={forged}"), &[]);
    assert_eq!(r.status, 200);
    let p1 = refreshed(&s, &p.rt); // the session lives on
    // the genuine expired token (alone, no refresh cookie) ends it
    let r = logout(&s, "", &format!("jwt={}", p.jwt), &[]);
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_both_cleared(&r);
    assert_eq!(refresh(&s, &p1.rt).status, 401);
    assert_eq!(me(&s, &p1.jwt), 401);
    assert_eq!(refresh(&s, &other.rt).status, 200, "the other session");
}

#[test]
fn logout_others_ends_every_other_session_and_leaves_this_one_and_its_cookies() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let c = login(&s, "a@example.com");
    let stranger = signup(&s, "z@example.com");
    let r = logout(&s, "?scope=others", &a.both(), &[]);
    assert_eq!(r.expect(200), json!({"message": "success", "revoked": 2}));
    assert_no_set_cookie(&r);
    assert_live(&s, &a);
    assert_ended(&s, &b);
    assert_ended(&s, &c);
    assert_live(&s, &stranger);
    let a = refreshed(&s, &a.rt);
    assert_live(&s, &a);
    // nothing left to end
    let r = logout(&s, "?scope=others", &a.both(), &[]);
    assert_eq!(r.expect(200), json!({"message": "success", "revoked": 0}));
    assert_live(&s, &a);
}

#[test]
fn logout_global_ends_every_session_of_the_user_and_clears_the_cookies() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let c = login(&s, "a@example.com");
    let stranger = signup(&s, "z@example.com");
    let r = logout(&s, "?scope=global", &b.both(), &[]);
    assert_eq!(r.expect(200), json!({"message": "success", "revoked": 3}));
    assert_both_cleared(&r);
    for p in [&a, &b, &c] {
        assert_ended(&s, p);
    }
    assert_live(&s, &stranger);
    assert_live(&s, &refreshed(&s, &stranger.rt));
}

#[test]
fn logout_with_another_scope_is_400_and_ends_nothing() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let p = signup(&s, "a@example.com");
    let other = login(&s, "a@example.com");
    for query in [
        "?scope=bogus",
        "?scope=GLOBAL",
        "?scope=",
        "?scope=all",
        "?scope=local%20",
    ] {
        let r = logout(&s, query, &p.both(), &[]);
        let v = r.expect(400);
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1, "{query}: {v}");
        let msgs = v["scope"]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: {v}"));
        assert!(msgs.len() == 1 && msgs[0].is_string(), "{query}: {v}");
        assert_no_set_cookie(&r);
        assert_live(&s, &p);
        assert_live(&s, &other);
    }
    assert_live(&s, &refreshed(&s, &p.rt));
}

#[test]
fn tokens_from_before_sessions_stay_valid_until_logout() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let p = signup(&s, "a@example.com");
    let id = s.login("a@example.com", PW).json()["id"].as_i64().unwrap();
    let now = now_f64() as i64;
    let legacy = signed(&json!({"id": id, "iat": now, "exp": now + 600, "jti": "legacy-token-1"}));
    assert_eq!(me(&s, &legacy), 200);
    // it is no refresh token
    assert_eq!(refresh_with(&s, &format!("jwt={legacy}"), &[]).status, 401);
    let r = logout(&s, "", &format!("jwt={legacy}"), &[]);
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_eq!(me(&s, &legacy), 401, "revoked at logout");
    assert_live(&s, &p);
}

#[test]
fn a_signed_token_naming_another_users_session_is_refused() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let a_id = s.login("a@example.com", PW).json()["id"].as_i64().unwrap();
    // b with many sessions, so that a probe that filtered b's sessions would be seen too
    assert_eq!(s.register("Bob", "b@example.com", PW).status, 201);
    let b: Vec<Pair> = (0..3).map(|_| login(&s, "b@example.com")).collect();
    let b_id = s.login("b@example.com", PW).json()["id"].as_i64().unwrap();
    db.client()
        .batch_execute(&format!(
            "INSERT INTO authd_session (user_id, idle_expires_at, expires_at, user_agent, ip) \
             SELECT {b_id}, now() + interval '1 hour', now() + interval '1 day', 'filler', '' \
             FROM generate_series(1, 2000); ANALYZE authd_session"
        ))
        .unwrap();
    let now = now_f64() as i64;
    let token = |id: i64, sid: i64| {
        signed(
            &json!({"id": id, "iat": now, "exp": now + 600, "jti": format!("t-{id}-{sid}"), "sid": sid}),
        )
    };
    // the right key, a live session, the wrong user: refused, both ways round
    assert_eq!(me(&s, &token(a_id, b[0].sid())), 401);
    assert_eq!(me(&s, &token(b_id, a.sid())), 401);
    assert_eq!(me(&s, &token(a_id + 1000, a.sid())), 401);
    // the same forge with the pair that belongs together passes: the refusals are for the user
    assert_eq!(me(&s, &token(a_id, a.sid())), 200);
    assert_eq!(me(&s, &token(b_id, b[2].sid())), 200);
    // many times over, so that the prepared statement's generic plan is in use too
    for _ in 0..8 {
        assert_eq!(me(&s, &token(a_id, b[1].sid())), 401);
        assert_eq!(me(&s, &token(b_id, b[1].sid())), 200);
    }
    assert_live(&s, &a);
}

// ---------------------------------------------------------------------------------------
// GET /api/sessions/
// ---------------------------------------------------------------------------------------

#[test]
fn the_session_list_shows_the_callers_live_sessions_newest_first_in_utc() {
    let db = TestDb::new();
    // A database whose time zone is not UTC: the list must still be in UTC.
    db.client()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone TO 'Asia/Kolkata'",
            db.name
        ))
        .unwrap();
    let s = Server::start(&db);
    assert_eq!(s.register("Alice", "a@example.com", PW).status, 201);
    let a = login_ua(&s, "a@example.com", "agent-one/1.0");
    let b = login_ua(&s, "a@example.com", "agent-two/2.0");
    let c = login_ua(&s, "a@example.com", "agent-three/3.0");
    let gone = login_ua(&s, "a@example.com", "agent-gone/4.0");
    assert_eq!(logout(&s, "", &gone.both(), &[]).status, 200);
    let stranger = signup(&s, "z@example.com");

    let r = list(&s, &b.jwt);
    let v = r.expect(200);
    let items = v.as_array().unwrap_or_else(|| panic!("{v}"));
    let ids: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        vec![c.sid(), b.sid(), a.sid()],
        "newest first, live, mine: {v}"
    );
    let now = now_f64() as i64;
    for (item, (p, ua)) in items.iter().zip([
        (&c, "agent-three/3.0"),
        (&b, "agent-two/2.0"),
        (&a, "agent-one/1.0"),
    ]) {
        let obj = item.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = vec![
            "created_at",
            "current",
            "expires_at",
            "id",
            "ip",
            "last_used_at",
            "user_agent",
        ];
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want, "{item}");
        assert_eq!(item["current"], json!(p.sid() == b.sid()), "{item}");
        assert_eq!(item["user_agent"], ua, "{item}");
        assert_eq!(item["ip"], "127.0.0.1", "{item}");
        let created = iso_utc(item["created_at"].as_str().unwrap());
        let used = iso_utc(item["last_used_at"].as_str().unwrap());
        let expires = iso_utc(item["expires_at"].as_str().unwrap());
        assert!((created - now).abs() <= 60, "UTC, now: {item} (now {now})");
        assert!(used >= created, "{item}");
        assert!(
            (expires - used - 604_800).abs() <= 1,
            "expires_at is the idle end: {item}"
        );
    }
    assert_eq!(
        items.iter().filter(|i| i["current"] == json!(true)).count(),
        1
    );

    // user_agent and ip are those of the last refresh
    thread::sleep(Duration::from_millis(1100));
    let r = refresh_with(
        &s,
        &format!("refresh={}", a.rt),
        &[("User-Agent", "agent-after-refresh/9")],
    );
    assert_eq!(r.status, 200);
    let a2 = pair_of(&r);
    let v = list(&s, &a2.jwt).expect(200);
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 3, "{v}");
    let mine: Vec<&Value> = items
        .iter()
        .filter(|i| i["current"] == json!(true))
        .collect();
    assert_eq!(mine.len(), 1, "{v}");
    assert_eq!(mine[0]["id"], json!(a.sid()));
    assert_eq!(mine[0]["user_agent"], "agent-after-refresh/9");
    assert!(
        iso_utc(mine[0]["last_used_at"].as_str().unwrap())
            > iso_utc(mine[0]["created_at"].as_str().unwrap()),
        "{v}"
    );
    let bi = items.iter().find(|i| i["id"] == json!(b.sid())).unwrap();
    assert_eq!(bi["user_agent"], "agent-two/2.0");
    // the order is by created_at, not by last use
    let ids: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![c.sid(), b.sid(), a.sid()]);

    // the stranger sees only their own
    let v = list(&s, &stranger.jwt).expect(200);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["id"], json!(stranger.sid()));
    assert_eq!(v[0]["current"], json!(true));

    // no token, a bad one, or one of an ended session: 401
    let r = call(&s, "GET", "/api/sessions/", &[], None);
    assert_eq!(r.expect(401), json!({"detail": "Unauthenticated."}));
    assert_eq!(list(&s, "garbage").status, 401);
    assert_eq!(list(&s, &gone.jwt).status, 401);
    assert_eq!(
        call(
            &s,
            "GET",
            "/api/sessions",
            &[("Cookie", &format!("jwt={}", c.jwt))],
            None
        )
        .status,
        200
    );
}

// ---------------------------------------------------------------------------------------
// DELETE /api/sessions/<id>/
// ---------------------------------------------------------------------------------------

#[test]
fn deleting_a_session_ends_it_at_once_and_only_the_callers() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let b2 = login(&s, "a@example.com");
    let stranger = signup(&s, "z@example.com");

    // another of my sessions: 204, it ends at once, my cookies stay
    let r = delete(&s, &a.both(), b.sid(), &[]);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.body, "");
    assert_no_set_cookie(&r);
    assert_ended(&s, &b);
    assert_live(&s, &a);

    // without the trailing slash too
    let r = call(
        &s,
        "DELETE",
        &format!("/api/sessions/{}", b2.sid()),
        &[("Cookie", &a.both())],
        None,
    );
    assert_eq!(r.status, 204);
    assert_ended(&s, &b2);

    // someone else's, an ended one, one that does not exist: 404, nothing changes
    for id in [stranger.sid(), b.sid(), 987_654_321] {
        let r = delete(&s, &a.both(), id, &[]);
        assert_eq!(r.expect(404), json!({"detail": "Not found."}), "{id}");
        assert_no_set_cookie(&r);
    }
    assert_live(&s, &stranger);
    assert_live(&s, &refreshed(&s, &stranger.rt));
    assert_live(&s, &a);

    // unauthenticated: 401, the session lives on
    let r = call(
        &s,
        "DELETE",
        &format!("/api/sessions/{}/", stranger.sid()),
        &[],
        None,
    );
    assert_eq!(r.expect(401), json!({"detail": "Unauthenticated."}));
    let r = delete(&s, &format!("refresh={}", a.rt), a.sid(), &[]);
    assert_eq!(r.status, 401, "a refresh cookie is no access token");
    assert_live(&s, &a);

    // the current one: as a local logout, cookies cleared
    let r = delete(&s, &a.both(), a.sid(), &[]);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_both_cleared(&r);
    assert_ended(&s, &a);
    assert_live(&s, &stranger);
}

// ---------------------------------------------------------------------------------------
// POST /api/password/change/
// ---------------------------------------------------------------------------------------

#[test]
fn password_change_revokes_the_other_sessions_and_rotates_this_one() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let c = login(&s, "a@example.com");
    let stranger = signup(&s, "z@example.com");
    let r = change_pw(&s, &a, PW, "NewPassword456");
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_eq!(r.all("Set-Cookie").len(), 2, "{:?}", r.headers);
    let jwt = assert_set(&r, "jwt", "Lax", true, 3600);
    let ra = max_age(&r, "refresh");
    assert!((604_790..=604_800).contains(&ra), "{ra}");
    let rt = assert_set(&r, "refresh", "Strict", true, ra);
    assert_ne!(jwt, a.jwt);
    assert_ne!(rt, a.rt);
    let a2 = Pair { jwt, rt };
    assert_eq!(a2.sid(), a.sid(), "the current session continues");
    assert_live(&s, &a2);
    assert_ended(&s, &b);
    assert_ended(&s, &c);
    assert_live(&s, &stranger);
    let a3 = refreshed(&s, &a2.rt);
    assert_live(&s, &a3);
    let v = list(&s, &a3.jwt).expect(200);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    // the old password no longer logs in, the new one does
    assert_eq!(
        login_as(&s, "a@example.com", PW, "ua").expect(401),
        json!({"detail": "Invalid email or password."})
    );
    assert_eq!(
        login_as(&s, "a@example.com", "NewPassword456", "ua").status,
        200
    );
}

#[test]
fn password_change_validates_old_and_new_and_changes_nothing_when_refused() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let long = "x".repeat(73);
    let cases: Vec<(Value, &[&str])> = vec![
        (
            json!({"old_password": "Wrong-password", "new_password": "NewPassword456"}),
            &["old_password"],
        ),
        (
            json!({"old_password": PW, "new_password": "1234567"}),
            &["new_password"],
        ),
        (
            json!({"old_password": PW, "new_password": long}),
            &["new_password"],
        ),
        (
            json!({"old_password": PW, "new_password": 12345678}),
            &["new_password"],
        ),
        (
            json!({"old_password": PW, "new_password": null}),
            &["new_password"],
        ),
        (json!({"old_password": PW}), &["new_password"]),
        (json!({"new_password": "NewPassword456"}), &["old_password"]),
        (json!({}), &["new_password", "old_password"]),
    ];
    for (body, fields) in &cases {
        let r = change(&s, &a, body, &[]);
        let v = r.expect(400);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, *fields, "{body}: {v}");
        for f in *fields {
            let msgs = v[f].as_array().unwrap();
            assert!(!msgs.is_empty() && msgs.iter().all(Value::is_string), "{v}");
        }
        assert_no_set_cookie(&r);
    }
    // the body must be a JSON object
    for (ctype, body) in [
        ("application/json", &b"not json"[..]),
        ("application/json", b"[1]"),
    ] {
        let cookie = a.both();
        let r = call(
            &s,
            "POST",
            "/api/password/change/",
            &[("Cookie", &cookie), ("Content-Type", ctype)],
            Some(body),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.json()["detail"].is_string());
    }
    assert_live(&s, &a);
    assert_live(&s, &b);
    assert_eq!(login_as(&s, "a@example.com", PW, "ua").status, 200);
    // unauthenticated
    let r = call(
        &s,
        "POST",
        "/api/password/change/",
        &[("Content-Type", "application/json")],
        Some(
            json!({"old_password": PW, "new_password": "NewPassword456"})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(r.expect(401), json!({"detail": "Unauthenticated."}));
    assert_eq!(login_as(&s, "a@example.com", PW, "ua").status, 200);
}

#[test]
fn a_wrong_old_password_counts_toward_the_login_throttle() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("LOGIN_MAX_FAILURES", "2")]);
    let a = signup(&s, "a@example.com");
    for _ in 0..2 {
        let r = change_pw(&s, &a, "Wrong-password", "NewPassword456");
        let v = r.expect(400);
        assert!(v["old_password"].is_array(), "{v}");
    }
    // over the limit: 429 whatever the password, and no cookie cleared
    let r = change_pw(&s, &a, PW, "NewPassword456");
    r.expect(429);
    let wait: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(wait > 0);
    assert_no_set_cookie(&r);
    let r = login_as(&s, "a@example.com", PW, "ua");
    r.expect(429);
    assert!(r.header("Retry-After").is_some());
    assert_no_set_cookie(&r);
    // the session was not touched, nor the password
    assert_live(&s, &a);
    let stranger = signup(&s, "z@example.com");
    assert_live(&s, &stranger);
    assert_eq!(
        db.count("SELECT count(*) FROM authd_session WHERE revoked_at IS NOT NULL"),
        0
    );
}

#[test]
fn a_right_old_password_does_not_count_toward_the_login_throttle() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("LOGIN_MAX_FAILURES", "2")]);
    let mut p = signup(&s, "a@example.com");
    // a refused new password with the right old one is no failed login
    for _ in 0..3 {
        let r = change_pw(&s, &p, PW, "1234567");
        assert!(r.expect(400)["new_password"].is_array());
    }
    let passwords = [PW, "Second-pass1", "Third-pass1", "Fourth-pass1"];
    for w in passwords.windows(2) {
        let r = change_pw(&s, &p, w[0], w[1]);
        assert_eq!(r.status, 200, "{} -> {}: {}", w[0], w[1], r.body);
        p = pair_of(&r);
    }
    assert_eq!(
        login_as(&s, "a@example.com", "Fourth-pass1", "ua").status,
        200
    );
}

// ---------------------------------------------------------------------------------------
// CSRF, media types, Cache-Control
// ---------------------------------------------------------------------------------------

#[test]
fn cross_site_requests_to_every_unsafe_endpoint_are_403_and_change_nothing() {
    let db = TestDb::new();
    // Grace 0: a refresh that did rotate would make the next use of the token reuse.
    let s = Server::start_with(
        &db,
        &[
            ("REFRESH_REUSE_GRACE", "0"),
            ("ALLOWED_ORIGINS", "https://app.example"),
        ],
    );
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let change_body = json!({"old_password": PW, "new_password": "NewPassword456"}).to_string();
    let bid = format!("/api/sessions/{}/", b.sid());
    let unsafe_requests: Vec<(&str, &str, Option<&[u8]>)> = vec![
        ("POST", "/api/token/refresh/", None),
        ("POST", "/api/logout/", None),
        ("POST", "/api/logout/?scope=local", None),
        ("POST", "/api/logout/?scope=others", None),
        ("POST", "/api/logout/?scope=global", None),
        ("DELETE", &bid, None),
        (
            "POST",
            "/api/password/change/",
            Some(change_body.as_bytes()),
        ),
    ];
    let host_lookalike = format!("http://{}.evil.example", s.addr);
    let other_port = "http://127.0.0.1:1".to_string();
    for origin in [EVIL, "null", &host_lookalike, &other_port] {
        for (method, path, body) in &unsafe_requests {
            let cookie = a.both();
            let r = call(
                &s,
                method,
                path,
                &[
                    ("Cookie", &cookie),
                    ("Origin", origin),
                    ("Content-Type", "application/json"),
                ],
                *body,
            );
            assert_eq!(r.status, 403, "{origin} {method} {path}: {}", r.body);
            assert!(r.json()["detail"].is_string());
            assert_no_set_cookie(&r);
        }
    }
    // nothing changed: both sessions live, a's refresh token not rotated, the password kept
    assert_live(&s, &a);
    assert_live(&s, &b);
    let a = refreshed(&s, &a.rt);
    assert_live(&s, &b);
    assert_eq!(
        db.count("SELECT count(*) FROM authd_session WHERE revoked_at IS NOT NULL"),
        0
    );

    // the server's own origin, and an allowed one, pass
    let own = same_origin(&s);
    let r = refresh_with(&s, &format!("refresh={}", a.rt), &[("Origin", &own)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let a = pair_of(&r);
    let r = refresh_with(
        &s,
        &format!("refresh={}", a.rt),
        &[("Origin", "https://app.example")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = pair_of(&r);
    let r = delete(&s, &a.both(), b.sid(), &[("Origin", &own)]);
    assert_eq!(r.status, 204);
    assert_ended(&s, &b);
    let c = login(&s, "a@example.com");
    let r = logout(&s, "?scope=others", &a.both(), &[("Origin", &own)]);
    assert_eq!(r.expect(200), json!({"message": "success", "revoked": 1}));
    assert_ended(&s, &c);
    let r = change(
        &s,
        &a,
        &json!({"old_password": PW, "new_password": "NewPassword456"}),
        &[("Origin", &own)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = pair_of(&r);
    let r = logout(&s, "", &a.both(), &[("Origin", &own)]);
    assert_eq!(r.status, 200);
    assert_both_cleared(&r);
    assert_ended(&s, &a);
}

#[test]
fn refresh_and_password_change_with_a_non_json_body_are_415_and_change_nothing() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("REFRESH_REUSE_GRACE", "0")]);
    let a = signup(&s, "a@example.com");
    let change_body = json!({"old_password": PW, "new_password": "NewPassword456"}).to_string();
    for ctype in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        for path in ["/api/token/refresh/", "/api/password/change/"] {
            let cookie = a.both();
            let r = call(
                &s,
                "POST",
                path,
                &[("Cookie", &cookie), ("Content-Type", ctype)],
                Some(change_body.as_bytes()),
            );
            let v = r.expect(415);
            assert!(
                v["detail"]
                    .as_str()
                    .unwrap()
                    .contains("Unsupported media type"),
                "{v}"
            );
            assert_no_set_cookie(&r);
        }
        // a body with no Content-Type at all is no JSON either
        let cookie = a.both();
        let r = call(
            &s,
            "POST",
            "/api/token/refresh/",
            &[("Cookie", &cookie)],
            Some(b"{}"),
        );
        assert_eq!(r.status, 415, "{}", r.body);
    }
    // the refresh token was never rotated (grace 0 would make that reuse), the password kept
    let a = refreshed(&s, &a.rt);
    assert_live(&s, &a);
    assert_eq!(login_as(&s, "a@example.com", PW, "ua").status, 200);
}

#[test]
fn every_endpoint_of_the_section_answers_no_store() {
    let db = TestDb::new();
    let s = Server::start(&db);
    assert_eq!(s.register("Alice", "a@example.com", PW).status, 201);
    let mut seen: Vec<(String, Resp)> = Vec::new();
    let mut keep = |label: &str, r: Resp| {
        seen.push((label.to_string(), r));
    };
    let r = login_as(&s, "a@example.com", PW, "ua");
    let a = pair_of(&r);
    keep("login 200", r);
    keep(
        "login 401",
        login_as(&s, "a@example.com", "Wrong-password", "ua"),
    );
    let b = login(&s, "a@example.com");
    let r = refresh(&s, &a.rt);
    let a = pair_of(&r);
    keep("refresh 200", r);
    keep("refresh 401", refresh(&s, "garbage"));
    keep("sessions 200", list(&s, &a.jwt));
    keep("sessions 401", list(&s, "garbage"));
    keep(
        "sessions HEAD",
        call(
            &s,
            "HEAD",
            "/api/sessions/",
            &[("Cookie", &format!("jwt={}", a.jwt))],
            None,
        ),
    );
    keep("delete 404", delete(&s, &a.both(), 987_654_321, &[]));
    keep("delete 401", delete(&s, "", b.sid(), &[]));
    keep("delete 204", delete(&s, &a.both(), b.sid(), &[]));
    keep(
        "password change 400",
        change_pw(&s, &a, "Wrong-password", "NewPassword456"),
    );
    let r = change_pw(&s, &a, PW, "NewPassword456");
    let a = pair_of(&r);
    keep("password change 200", r);
    keep("logout others", logout(&s, "?scope=others", &a.both(), &[]));
    keep("logout 400", logout(&s, "?scope=bogus", &a.both(), &[]));
    keep("logout local", logout(&s, "", &a.both(), &[]));
    keep("logout global", logout(&s, "?scope=global", "", &[]));
    keep("refresh 403", refresh_with(&s, "", &[("Origin", EVIL)]));
    keep(
        "refresh 405",
        call(&s, "GET", "/api/token/refresh/", &[], None),
    );
    for (label, r) in &seen {
        assert_eq!(r.header("Cache-Control"), Some("no-store"), "{label}");
    }
    let statuses: Vec<u16> = seen.iter().map(|(_, r)| r.status).collect();
    assert_eq!(
        statuses,
        vec![
            200, 401, 200, 401, 200, 401, 200, 404, 401, 204, 400, 200, 200, 400, 200, 200, 403,
            405
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Operator commands
// ---------------------------------------------------------------------------------------

#[test]
fn revoke_sessions_ends_every_session_of_the_account() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let stranger = signup(&s, "z@example.com");
    let env = base_env(&db);
    let env = env_refs(&env);
    let out = authd(&["revoke-sessions", "--email", "A@Example.com"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ended(&s, &a);
    assert_ended(&s, &b);
    assert_live(&s, &stranger);
    // the account itself still works
    assert_live(&s, &login(&s, "a@example.com"));
    let out = authd(&["revoke-sessions", "--email", "nobody@example.com"], &env);
    assert_eq!(out.status.code(), Some(3));
    assert_live(&s, &stranger);
}

#[test]
fn deactivate_user_ends_its_sessions_and_refuses_its_login() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let stranger = signup(&s, "z@example.com");
    let env = base_env(&db);
    let env = env_refs(&env);
    let out = authd(&["deactivate-user", "--email", "a@example.com"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ended(&s, &a);
    assert_ended(&s, &b);
    let r = login_as(&s, "a@example.com", PW, "ua");
    assert_eq!(
        r.expect(401),
        json!({"detail": "Invalid email or password."})
    );
    assert_live(&s, &stranger);
    let out = authd(&["deactivate-user", "--email", "nobody@example.com"], &env);
    assert_eq!(out.status.code(), Some(3));
}

/// `GET /api/user/` with this access token: 200 and the body.
fn whoami(s: &Server, jwt: &str) -> Value {
    call(
        s,
        "GET",
        "/api/user/",
        &[("Cookie", &format!("jwt={jwt}"))],
        None,
    )
    .expect(200)
}

/// The user's name, email and is_active as the session row of `sid` carries them.
fn session_copy(db: &TestDb, sid: i64) -> (String, String, bool) {
    let r = db
        .client()
        .query_one(
            "SELECT user_name, user_email, user_active FROM authd_session WHERE id = $1",
            &[&sid],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Takes the schema back to what 0005 left (no copy of the user in sessions, no triggers),
/// with the rows as they are.
fn schema_before_0006(db: &TestDb) {
    db.client()
        .batch_execute(
            "DROP TRIGGER authd_user_to_sessions ON accounts_user; \
             DROP TRIGGER authd_session_copy_user ON authd_session; \
             DROP FUNCTION authd_user_to_sessions(); DROP FUNCTION authd_session_copy_user(); \
             ALTER TABLE authd_session DROP COLUMN user_name, DROP COLUMN user_email, \
               DROP COLUMN user_active; \
             DELETE FROM authd_schema_migrations WHERE version = 6",
        )
        .unwrap();
}

/// Returns once a backend of this test's database waits for a lock; fails after `limit`
/// naming `who` (the only client that can wait there).
fn until_a_lock_wait(db: &TestDb, limit: Duration, who: &str) {
    let t0 = Instant::now();
    while db.count(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'",
    ) == 0
    {
        assert!(t0.elapsed() < limit, "{who} never waited");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_change_of_the_user_by_another_writer_shows_at_once_on_its_live_sessions() {
    // The session check reads the user from the session row; Django or an operator's SQL
    // writing accounts_user must be seen by the next request, as with a join.
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let b = login(&s, "a@example.com");
    let other = signup(&s, "o@example.com");
    db.client()
        .execute(
            "UPDATE accounts_user SET name = 'Renamed', email = 'new@example.com' \
             WHERE email = 'a@example.com'",
            &[],
        )
        .unwrap();
    for p in [&a, &b] {
        let v = whoami(&s, &p.jwt);
        assert_eq!(
            (&v["name"], &v["email"]),
            (&json!("Renamed"), &json!("new@example.com"))
        );
    }
    assert_eq!(whoami(&s, &other.jwt)["email"], "o@example.com");
    assert_eq!(session_copy(&db, other.sid()).0, "Alice");

    // A deactivation by SQL (no revocation) stops the sessions; reactivating restores them,
    // as the join on accounts_user.is_active did.
    let mut c = db.client();
    c.execute(
        "UPDATE accounts_user SET is_active = false WHERE email = 'new@example.com'",
        &[],
    )
    .unwrap();
    assert_eq!(me(&s, &a.jwt), 401);
    assert_eq!(me(&s, &b.jwt), 401);
    assert_eq!(refresh(&s, &b.rt).status, 401);
    assert_live(&s, &other);
    c.execute(
        "UPDATE accounts_user SET is_active = true WHERE email = 'new@example.com'",
        &[],
    )
    .unwrap();
    assert_live(&s, &a);

    // A write that changes none of the three (authd's login writes last_login, Django's
    // save() writes every column) does not write the sessions: their row version stays.
    let version = |c: &mut postgres::Client| -> String {
        c.query_one(
            "SELECT xmin::text FROM authd_session WHERE id = $1",
            &[&a.sid()],
        )
        .unwrap()
        .get(0)
    };
    let before = version(&mut c);
    c.execute(
        "UPDATE accounts_user SET last_login = now(), name = name, email = email, \
         is_active = is_active WHERE email = 'new@example.com'",
        &[],
    )
    .unwrap();
    assert_eq!(version(&mut c), before);
    // A change of letter case alone is a change.
    c.execute(
        "UPDATE accounts_user SET name = 'RENAMED' WHERE email = 'new@example.com'",
        &[],
    )
    .unwrap();
    assert_eq!(whoami(&s, &a.jwt)["name"], "RENAMED");
}

#[test]
fn a_session_inserted_without_the_user_copy_takes_it_from_its_user() {
    // An instance of an older authd, during a rolling upgrade, inserts sessions as 0004 made
    // them; the row must still carry its user, or that login's token would not work here.
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let sid: i64 = db
        .client()
        .query_one(
            "INSERT INTO authd_session (user_id, idle_expires_at, expires_at) \
             SELECT user_id, idle_expires_at, expires_at FROM authd_session WHERE id = $1 \
             RETURNING id",
            &[&a.sid()],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        session_copy(&db, sid),
        ("Alice".into(), "a@example.com".into(), true)
    );
    // Without a user there is nothing to copy, and the row is refused (NOT NULL comes
    // before the foreign key).
    let err = db
        .client()
        .execute(
            "INSERT INTO authd_session (user_id, idle_expires_at, expires_at) \
             VALUES (999999, now() + interval '1 hour', now() + interval '1 hour')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::NOT_NULL_VIOLATION),
        "{err}"
    );
}

#[test]
fn migrating_a_database_from_before_0006_copies_users_into_its_live_sessions() {
    let db = TestDb::new();
    let pair;
    {
        let s = Server::start(&db);
        pair = signup(&s, "a@example.com");
    }
    // The schema as 0005 left it, with the session made then.
    schema_before_0006(&db);
    let s = Server::start(&db);
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 6);
    assert_eq!(whoami(&s, &pair.jwt)["name"], "Alice");
    assert_eq!(
        session_copy(&db, pair.sid()),
        ("Alice".into(), "a@example.com".into(), true)
    );
}

#[test]
fn a_login_racing_a_change_of_its_user_carries_the_change() {
    // The rename commits while the login waits for the user's row: the new session must
    // carry the new name, not the one its statement started with.
    let db = TestDb::new();
    let s = Server::start(&db);
    signup(&s, "a@example.com");
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    tx.execute("UPDATE accounts_user SET name = 'Renamed'", &[])
        .unwrap();
    let addr = s.addr;
    let waiting = thread::spawn(move || {
        let body = json!({"email": "a@example.com", "password": PW}).to_string();
        request(
            addr,
            "POST",
            "/api/login/",
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    });
    until_a_lock_wait(&db, Duration::from_secs(10), "the login");
    tx.commit().unwrap();
    let r = waiting.join().unwrap();
    // (The body is the user as read when the password was checked, before the wait.)
    r.expect(200);
    let p = pair_of(&r);
    assert_eq!(session_copy(&db, p.sid()).0, "Renamed");
    assert_eq!(whoami(&s, &p.jwt)["name"], "Renamed");
}

#[test]
fn a_writer_with_rights_on_accounts_user_alone_can_still_change_a_user() {
    // Django may run under a role of its own, with no rights on authd's tables: the trigger
    // that copies its change to the sessions must not make its UPDATE fail.
    let db = TestDb::new();
    let s = Server::start(&db);
    let a = signup(&s, "a@example.com");
    let role = format!("{}_django", db.name);
    let mut c = db.client();
    c.batch_execute(&format!(
        "CREATE ROLE {role}; GRANT SELECT, UPDATE ON accounts_user TO {role}; \
         GRANT TEMPORARY ON DATABASE {} TO {role}",
        db.name
    ))
    .unwrap();
    // A temporary table of the writer's named authd_session must not stand in for authd's
    // (the trigger runs with authd's rights).
    let changed = c.batch_execute(&format!(
        "SET ROLE {role}; \
         CREATE TEMP TABLE authd_session (user_id bigint, user_name text, user_email text, \
           user_active boolean); \
         UPDATE accounts_user SET name = 'By Django'; \
         DROP TABLE pg_temp.authd_session; RESET ROLE"
    ));
    c.batch_execute(&format!(
        "RESET ROLE; REVOKE ALL ON accounts_user FROM {role}; \
         REVOKE ALL ON DATABASE {} FROM {role}; DROP ROLE {role}",
        db.name
    ))
    .unwrap();
    changed.unwrap();
    assert_eq!(whoami(&s, &a.jwt)["name"], "By Django");
}

#[test]
fn a_change_of_a_user_during_the_0006_migration_reaches_its_sessions() {
    // The migration locks accounts_user before it copies: a rename it has to wait for is
    // in the copy, not lost between the copy and the trigger.
    let db = TestDb::new();
    let pair;
    {
        let s = Server::start(&db);
        pair = signup(&s, "a@example.com");
    }
    schema_before_0006(&db);
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    tx.execute("UPDATE accounts_user SET name = 'Renamed'", &[])
        .unwrap();
    let env = base_env(&db);
    let migrating = thread::spawn(move || {
        let env = env_refs(&env);
        authd(&["migrate"], &env)
    });
    until_a_lock_wait(&db, Duration::from_secs(30), "the migration");
    tx.commit().unwrap();
    let out = migrating.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(session_copy(&db, pair.sid()).0, "Renamed");
    let s = Server::start(&db);
    assert_eq!(whoami(&s, &pair.jwt)["name"], "Renamed");
}
