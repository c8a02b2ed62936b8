//! Running it on a small host: /metrics, the access log, the OpenAPI document, and client
//! addresses behind a trusted proxy.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;

/// One sample line of the text format: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses the Prometheus text exposition format 0.0.4 strictly: every sample belongs to a
/// family announced by `# HELP` and `# TYPE` before it, names and labels are well formed,
/// label values are quoted with escapes, values are floats, and no family repeats.
fn parse_exposition(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let name_ok = |n: &str| {
        let mut cs = n.chars();
        cs.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = Vec::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    for line in text.lines() {
        assert!(!line.is_empty(), "no empty lines");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(name_ok(name), "{line}");
            assert!(!helped.contains(&name.to_string()), "HELP repeated: {line}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "TYPE repeated: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = Vec::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert!(
                        name_ok(&key) && !key.starts_with("__"),
                        "label name: {line}"
                    );
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut v = String::new();
                    loop {
                        match chars
                            .next()
                            .unwrap_or_else(|| panic!("unterminated: {line}"))
                        {
                            '\\' => match chars.next() {
                                Some('\\') => v.push('\\'),
                                Some('"') => v.push('"'),
                                Some('n') => v.push('\n'),
                                other => panic!("bad escape {other:?}: {line}"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    labels.push((key, v));
                    match chars.next() {
                        None => break,
                        Some(',') => {}
                        Some(c) => panic!("unexpected {c:?}: {line}"),
                    }
                }
                (name, labels)
            }
        };
        assert!(name_ok(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        assert!(
            helped.contains(&family.to_string()),
            "sample before its HELP: {line}"
        );
        samples.push((name.to_string(), labels, value));
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
}

#[test]
fn metrics_parse_by_the_text_format_rules_and_move_with_requests() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let r = s.get("/metrics", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let (types, before) = parse_exposition(&r.body);
    for (name, kind) in [
        ("authd_http_requests_total", "counter"),
        ("authd_http_request_duration_seconds", "histogram"),
        ("authd_logins_total", "counter"),
        ("authd_registrations_total", "counter"),
        ("authd_db_pool_connections", "gauge"),
        ("authd_queue_depth", "gauge"),
        ("authd_build_info", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&before, "authd_build_info", &[("version", version)]),
        Some(1.0)
    );
    for state in ["in_use", "idle"] {
        assert!(value(&before, "authd_db_pool_connections", &[("state", state)]).is_some());
    }
    for lane in ["fast", "hash"] {
        assert_eq!(
            value(&before, "authd_queue_depth", &[("lane", lane)]),
            Some(0.0)
        );
    }

    let email = unique_email("metrics");
    s.register("M", &email, "Password123").expect(201);
    s.login(&email, "Password123").expect(200);
    s.login(&email, "Password124").expect(401);
    s.login(&email, "Password125").expect(401);
    s.get("/api/user/", &[]).expect(401);
    s.get("/nope", &[]).expect(404);

    let (_, after) = parse_exposition(&s.get("/metrics", &[]).body);
    let logins = |r| value(&after, "authd_logins_total", &[("result", r)]);
    assert_eq!(logins("succeeded"), Some(1.0));
    assert_eq!(logins("failed"), Some(2.0));
    assert_eq!(logins("throttled"), Some(0.0));
    assert_eq!(value(&after, "authd_registrations_total", &[]), Some(1.0));
    let requests = |route, status| {
        value(
            &after,
            "authd_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("login", "200"), Some(1.0));
    assert_eq!(requests("login", "401"), Some(2.0));
    assert_eq!(requests("register", "201"), Some(1.0));
    assert_eq!(requests("user", "401"), Some(1.0));
    assert_eq!(requests("other", "404"), Some(1.0));
    // the first /metrics request itself was counted
    assert_eq!(requests("metrics", "200"), Some(1.0));
    // histograms: cumulative buckets ending at +Inf == _count
    let h = "authd_http_request_duration_seconds";
    let buckets: Vec<f64> = after
        .iter()
        .filter(|(n, l, _)| {
            n == &format!("{h}_bucket") && l.contains(&("route".into(), "login".into()))
        })
        .map(|s| s.2)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&3.0));
    assert_eq!(
        value(&after, &format!("{h}_count"), &[("route", "login")]),
        Some(3.0)
    );
    assert!(value(&after, &format!("{h}_sum"), &[("route", "login")]).unwrap() > 0.0);
}

#[test]
fn metrics_can_be_turned_off() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("METRICS_ENABLED", "false")]);
    assert_eq!(
        s.get("/metrics", &[]).expect(404),
        json!({"detail": "Not found."})
    );
}

#[test]
fn the_access_log_has_one_line_per_request_and_no_secret() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let email = unique_email("log");
    s.register("L", &email, "Sup3rSecretPassw0rd").expect(201);
    let login = s.login(&email, "Sup3rSecretPassw0rd");
    let cookie = login.cookie_pair("jwt").unwrap();
    let token = cookie.trim_start_matches("jwt=").to_string();
    s.get(
        "/api/user/?secret=query-string-value",
        &[("Cookie", &cookie)],
    )
    .expect(200);
    s.post_json("/api/logout/", &json!({}), &[("Cookie", &cookie)])
        .expect(200);
    // the line is written after the answer: give the last one a moment
    let count = || {
        s.log_text()
            .lines()
            .filter(|l| l.contains("authd::access"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(2), || count() == 4),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authd::access"))
        .collect();
    assert_eq!(access.len(), 4, "{log}");
    let line = access.iter().find(|l| l.contains("GET ")).unwrap();
    // method, path without the query string, status, milliseconds, client address
    let fields: Vec<&str> = line
        .split("authd::access] ")
        .nth(1)
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(fields[..3], ["GET", "/api/user/", "200"], "{line}");
    assert!(fields[3].ends_with("ms") && fields[3].trim_end_matches("ms").parse::<f64>().is_ok());
    assert_eq!(fields[4], "127.0.0.1");
    for secret in [
        "Sup3rSecretPassw0rd",
        token.as_str(),
        "query-string-value",
        "jwt=",
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[test]
fn the_access_log_can_be_filtered_alone() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("RUST_LOG", "info,authd::access=off")]);
    s.get("/healthz", &[]).expect(200);
    let log = s.log_text();
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains("authd::access"), "{log}");
}

#[test]
fn the_openapi_document_is_served_as_committed() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let r = s.get("/api/openapi.yaml", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/yaml"));
    assert_eq!(r.body, include_str!("../openapi.yaml"));
    for path in [
        "/api/register/:",
        "/api/login/:",
        "/api/user/:",
        "/api/logout/:",
        "/healthz:",
        "/readyz:",
        "/metrics:",
    ] {
        assert!(r.body.contains(path), "{path}");
    }
}

/// Fails logins for fresh emails with the given X-Forwarded-For until a 429.
fn failures_until_throttled(s: &Server, xff: &str, limit: usize) -> usize {
    for i in 1..=limit + 2 {
        let r = s.post_json(
            "/api/login/",
            &json!({"email": unique_email("xff"), "password": "Password123"}),
            &[("X-Forwarded-For", xff)],
        );
        if r.status == 429 {
            return i;
        }
        assert_eq!(r.status, 401, "{}", r.body);
    }
    usize::MAX
}

#[test]
fn a_spoofed_x_forwarded_for_is_ignored_from_an_untrusted_peer() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("LOGIN_MAX_FAILURES_PER_IP", "3")]);
    // Each attempt claims another address; the limit still holds for the real peer.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = s.post_json(
            "/api/login/",
            &json!({"email": unique_email("spoof"), "password": "Password123"}),
            &[("X-Forwarded-For", &format!("198.51.100.{i}"))],
        );
        statuses.push(r.status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    assert!(
        s.log_text()
            .lines()
            .filter(|l| l.contains("authd::access"))
            .all(|l| l.ends_with(" 127.0.0.1"))
    );
}

#[test]
fn x_forwarded_for_is_honoured_from_a_trusted_proxy() {
    let db = TestDb::new();
    let s = Server::start_with(
        &db,
        &[
            ("LOGIN_MAX_FAILURES_PER_IP", "3"),
            ("TRUSTED_PROXIES", "127.0.0.0/8"),
        ],
    );
    // Two clients behind the proxy have a limit each.
    assert_eq!(failures_until_throttled(&s, "203.0.113.5", 3), 4);
    assert_eq!(failures_until_throttled(&s, "203.0.113.6", 3), 4);
    // A client that prepends its own X-Forwarded-For is still keyed on what nginx saw.
    assert_eq!(
        s.post_json(
            "/api/login/",
            &json!({"email": unique_email("xff"), "password": "x"}),
            &[("X-Forwarded-For", "1.1.1.1, 203.0.113.5")],
        )
        .status,
        429
    );
    let logged = || {
        s.log_text()
            .lines()
            .any(|l| l.contains("authd::access") && l.ends_with(" 203.0.113.6"))
    };
    assert!(
        eventually(Duration::from_secs(2), logged),
        "{}",
        s.log_text()
    );
}

/// The scheduling attributes of each of authd's threads, by thread name:
/// (name, nice, slice in ns as sched_getattr(2) reports it; 0 before Linux 6.12).
fn thread_attrs(pid: u32) -> Vec<(String, i32, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap();
        let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let (Ok(name), Ok(attr)) = (
            std::fs::read_to_string(t.path().join("comm")),
            uapi::sched_getattr(tid, 0),
        ) else {
            continue; // the thread has ended
        };
        out.push((name.trim().to_string(), attr.sched_nice, attr.sched_runtime));
    }
    out
}

/// Checks that the hashing threads of `s` run `base` + 10 with the shortest scheduler slice
/// and that every other thread kept `base` and the default slice.
fn assert_only_hashers_lowered(s: &Server, base: i32) {
    let mut attrs = Vec::new();
    let lowered = eventually(Duration::from_secs(5), || {
        attrs = thread_attrs(s.pid());
        // The address is logged before every thread has started: wait for a fast worker too.
        let hashers = attrs.iter().filter(|a| a.0.starts_with("hasher-"));
        hashers.clone().count() > 0
            && hashers.clone().all(|a| a.1 == base + 10)
            && attrs.iter().any(|a| a.0.starts_with("worker-"))
    });
    assert!(
        lowered,
        "hashing threads not at nice {}: {attrs:?}",
        base + 10
    );
    let default_slice = attrs
        .iter()
        .find(|(name, _, _)| name.starts_with("worker-"))
        .map(|a| a.2)
        .expect("a fast worker");
    for (name, nice, slice) in &attrs {
        if name.starts_with("hasher-") {
            // A kernel that reports slices (6.12 and later) has taken ours.
            if default_slice != 0 {
                assert_eq!(*slice, 100_000, "{name}: {attrs:?}");
            }
        } else {
            assert_eq!(*nice, base, "{name} was changed: {attrs:?}");
            assert_eq!(*slice, default_slice, "{name}: {attrs:?}");
        }
    }
}

/// The hashing threads run at nice 10 with the shortest scheduler slice, so that bcrypt
/// yields a core at once to a cheap request's threads; every other thread keeps the
/// defaults (BENCHMARKS.md, the login-flood tail).
#[test]
fn the_hashing_threads_yield_at_once_and_no_other_thread_is_lowered() {
    let db = TestDb::new();
    assert_only_hashers_lowered(&Server::start(&db), 0);
}

/// Started at nice 5 (as a service with `Nice=5` is), the hashing threads go 10 lower
/// from there, not to 10.
#[test]
fn the_hashing_threads_are_lowered_from_the_nice_value_authd_was_started_with() {
    let db = TestDb::new();
    let mut cmd = std::process::Command::new("nice");
    cmd.args(["-n", "5", env!("CARGO_BIN_EXE_authd")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in base_env(&db) {
        cmd.env(k, v);
    }
    assert_only_hashers_lowered(&Server::from_command(cmd), 5);
}

/// `GET /api/user/` from `clients` threads, each on its own connections, until `stop`;
/// the statuses seen.
fn user_flood(
    s: &Server,
    cookie: &str,
    clients: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<u16> {
    use std::sync::atomic::Ordering;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = request(s.addr, "GET", "/api/user/", &[("Cookie", cookie)], None);
                        seen.push(r.status);
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn pool_in_use(s: &Server) -> f64 {
    let (_, samples) = parse_exposition(&s.get("/metrics", &[]).body);
    value(
        &samples,
        "authd_db_pool_connections",
        &[("state", "in_use")],
    )
    .unwrap()
}

/// The fast workers keep the connection they used last while requests keep coming (when
/// `kept`: the pool has one for every request thread): logins (the hashing lane) still get
/// connections during a flood, and an authd that has gone idle holds none, as the pool
/// alone would.
fn kept_connections_starve_nothing(pool: &str, kept: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = TestDb::new();
    let s = Server::start_with(
        &db,
        &[
            ("WORKERS", "4"),
            ("DB_POOL_SIZE", pool),
            ("DB_TIMEOUT", "1"),
        ],
    );
    let email = unique_email("keep");
    s.register("K", &email, "Password123").expect(201);
    let cookie = s.login(&email, "Password123").cookie_pair("jwt").unwrap();
    // One request answered: its worker keeps the connection (or has handed it back).
    // /metrics takes none.
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
    let held = pool_in_use(&s);
    if kept {
        assert!(held >= 1.0, "no connection kept after a request: {held}");
    } else {
        assert_eq!(held, 0.0, "a connection kept with a pool of {pool}");
    }
    let stop = AtomicBool::new(false);
    let (statuses, logins) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| user_flood(&s, &cookie, 8, &stop));
        std::thread::sleep(Duration::from_millis(300));
        let logins: Vec<u16> = (0..6)
            .map(|_| s.login(&email, "Password123").status)
            .collect();
        stop.store(true, Ordering::Relaxed);
        (flood.join().unwrap(), logins)
    });
    assert!(
        statuses.len() > 50,
        "the flood hardly ran: {}",
        statuses.len()
    );
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    assert_eq!(logins, vec![200; 6], "logins during the flood");
    // /readyz from a worker that keeps a connection answers with that one
    s.get("/readyz", &[]).expect(200);
    // idle (no request at all for longer than a worker waits): every connection is back
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        pool_in_use(&s),
        0.0,
        "an idle authd still holds connections"
    );
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
}

#[test]
fn fast_workers_keep_connections_without_starving_logins_and_give_them_back_when_idle() {
    // the default pool (WORKERS + cores)
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    kept_connections_starve_nothing(&(4 + cores).to_string(), true);
}

#[test]
fn a_pool_smaller_than_the_request_threads_is_shared_request_by_request() {
    kept_connections_starve_nothing("2", false);
}
