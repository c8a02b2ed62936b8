//! Hostile HTTP and hostile connections: what tiny_http gets wrong, contained by authd.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// Reads until the peer closes; returns (bytes, seconds it took).
fn read_until_closed(c: &mut TcpStream) -> (Vec<u8>, f64) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (out, t.elapsed().as_secs_f64())
}

#[test]
fn a_body_declared_far_larger_than_memory_does_not_take_the_process_down() {
    let db = TestDb::new();
    let mut s = Server::start(&db);
    for size in ["100000000000000", "18446744073709551615", "4000000000"] {
        for path in ["/api/register/", "/nowhere"] {
            let raw = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n{{\"a\":1}}"
            );
            let mut c = connect(&s);
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(raw.as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(
                head.starts_with("HTTP/1.1 413") || head.starts_with("HTTP/1.1 404"),
                "{size} {path}: {head}"
            );
        }
    }
    thread::sleep(Duration::from_millis(300));
    assert!(s.alive(), "the process died: {}", s.log_text());
    s.get("/healthz", &[]).expect(200);
    s.register("A", "a@example.com", "Password123").expect(201);
}

#[test]
fn framing_that_could_smuggle_a_request_is_refused() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let body = r#"{"name":"A","email":"smuggle@example.com","password":"Password123"}"#;
    let cases = [
        format!("Content-Length: abc\r\n\r\n{body}"),
        format!("Content-Length: +{}\r\n\r\n{body}", body.len()),
        format!(
            "Content-Length: {}\r\nContent-Length: 5\r\n\r\n{body}",
            body.len()
        ),
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            body.len()
        ),
        "Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n".to_string(),
    ];
    for tail in cases {
        let raw = format!(
            "POST /api/register/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{tail}"
        );
        let text = send_raw(s.addr, raw.as_bytes(), Duration::from_secs(10));
        let first = parse_response(&text).unwrap_or_else(|| panic!("{tail:?}: {text:?}"));
        assert_eq!(first.status, 400, "{tail:?}: {text}");
        first.json();
    }
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 0);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let mut raw = String::new();
    for p in ["/healthz", "/nope", "/api/user/", "/readyz"] {
        raw.push_str(&format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    raw.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = send_raw(s.addr, raw.as_bytes(), Duration::from_secs(10));
    let statuses: Vec<u16> = parse_responses(&text).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 401, 200, 200]);
}

#[test]
fn an_idle_keepalive_connection_is_closed_after_the_timeout() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("KEEPALIVE_TIMEOUT", "2"), ("READ_TIMEOUT", "5")]);
    let mut c = connect(&s);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(c.read(&mut buf).unwrap() > 0);
    let (_, secs) = read_until_closed(&mut c);
    assert!((1.5..4.0).contains(&secs), "closed after {secs}s");
}

#[test]
fn a_client_that_dribbles_its_headers_is_cut_off() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("READ_TIMEOUT", "2")]);
    let mut c = connect(&s);
    let t = Instant::now();
    let mut cut = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: dribble\r\nX-Slow: yes\r\n\r\n" {
        if c.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        thread::sleep(Duration::from_millis(300));
        if t.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    if !cut {
        let (out, _) = read_until_closed(&mut c);
        cut = out.is_empty() || String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408");
    }
    assert!(cut, "the dribbling client was served");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    s.get("/healthz", &[]).expect(200);
}

#[test]
fn a_stalled_body_does_not_pin_the_workers() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("READ_TIMEOUT", "2"), ("WORKERS", "2")]);
    // more stalled bodies than there are workers of either kind
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(
                b"POST /api/register/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"name\":",
            )
            .unwrap();
            c
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    s.get("/healthz", &[]).expect(200);
    s.register("A", "a@example.com", "Password123").expect(201);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(stalled);
}

/// Opens `n` keep-alive connections at once, sends one request on each, and returns how
/// many were answered within `within`.
fn burst(s: &Server, n: usize, within: Duration) -> (usize, Vec<TcpStream>) {
    let conns: Vec<TcpStream> = (0..n).map(|_| connect(s)).collect();
    let start = Instant::now();
    let results: Vec<(bool, TcpStream)> = thread::scope(|scope| {
        let hs: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                scope.spawn(move || {
                    c.set_read_timeout(Some(within)).unwrap();
                    let ok = c
                        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        .is_ok()
                        && {
                            let mut buf = [0u8; 256];
                            matches!(c.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
                        }
                        && start.elapsed() <= within;
                    (ok, c)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered = results.iter().filter(|(ok, _)| *ok).count();
    (answered, results.into_iter().map(|(_, c)| c).collect())
}

#[test]
fn sixty_four_simultaneous_keepalive_clients_are_all_answered_within_a_second() {
    let db = TestDb::new();
    let s = Server::start(&db);
    for round in 0..2 {
        let (answered, conns) = burst(&s, 64, Duration::from_secs(1));
        assert_eq!(answered, 64, "round {round}");
        drop(conns);
    }
    // after the pool's extra threads have gone idle and exited
    thread::sleep(Duration::from_secs(6));
    let (answered, _conns) = burst(&s, 64, Duration::from_secs(1));
    assert_eq!(answered, 64, "after idle");
}

#[test]
fn idle_and_dribbling_connections_do_not_stop_others_being_served() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let idle: Vec<TcpStream> = (0..300).map(|_| connect(&s)).collect();
    let mut dribblers: Vec<TcpStream> = (0..64).map(|_| connect(&s)).collect();
    for d in &mut dribblers {
        d.write_all(b"GET /heal").unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let t = Instant::now();
        s.get("/healthz", &[]).expect(200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        for d in &mut dribblers {
            let _ = d.write_all(b"t");
        }
    }
    let (answered, _c) = burst(&s, 16, Duration::from_secs(1));
    assert_eq!(answered, 16);
    drop(idle);
}

#[test]
fn after_running_out_of_descriptors_it_accepts_again_without_a_restart() {
    let db = TestDb::new();
    let mut env = base_env(&db);
    env.push(("WORKERS".into(), "2".into()));
    // A cap above what the descriptors allow, so that accept() itself runs out.
    env.push(("MAX_CONNECTIONS".into(), "1000".into()));
    let script = format!("ulimit -n 48 && exec {}", env!("CARGO_BIN_EXE_authd"));
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut s = Server::from_command(cmd);
    s.get("/healthz", &[]).expect(200);
    // hog descriptors until the server cannot accept
    let mut hogs = Vec::new();
    for _ in 0..60 {
        if let Ok(c) = TcpStream::connect_timeout(&s.addr, Duration::from_millis(500)) {
            hogs.push(c);
        }
    }
    thread::sleep(Duration::from_millis(500));
    assert!(s.alive(), "{}", s.log_text());
    let threads = threads_of(s.pid());
    assert!(threads < 80, "{threads} threads while out of descriptors");
    drop(hogs);
    let back = eventually(Duration::from_secs(10), || {
        let mut c = match TcpStream::connect_timeout(&s.addr, Duration::from_millis(500)) {
            Ok(c) => c,
            Err(_) => return false,
        };
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = [0u8; 32];
        matches!(c.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
    });
    assert!(back, "not accepting again: {}", s.log_text());
    assert!(
        s.log_text().contains("Error accepting new client"),
        "{}",
        s.log_text()
    );
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn the_default_connection_cap_keeps_the_server_inside_its_descriptors() {
    let db = TestDb::new();
    let mut env = base_env(&db);
    env.push(("WORKERS".into(), "2".into()));
    let script = format!("ulimit -n 64 && exec {}", env!("CARGO_BIN_EXE_authd"));
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut s = Server::from_command(cmd);
    let mut hogs = Vec::new();
    for _ in 0..80 {
        if let Ok(c) = TcpStream::connect_timeout(&s.addr, Duration::from_millis(500)) {
            hogs.push(c);
        }
    }
    thread::sleep(Duration::from_millis(500));
    assert!(s.alive(), "{}", s.log_text());
    // Past the cap, connections wait in the backlog: accept() never ran out.
    assert!(
        !s.log_text().contains("Error accepting new client"),
        "{}",
        s.log_text()
    );
    drop(hogs);
    assert!(eventually(Duration::from_secs(5), || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.get("/healthz", &[]).status == 200
        }))
        .unwrap_or(false)
    }));
}

#[test]
fn deep_json_unicode_and_sql_shaped_strings_are_just_data() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cases = [
        (
            "Robert'); DROP TABLE accounts_user;--",
            "x'--@example.com",
            "' OR 1=1 --x",
        ),
        (
            "Zoë 李 🦀 \u{202e}",
            "zoë.李@bücher.example",
            "пароль🦀пароль",
        ),
        (
            "\"quoted\" \\ back",
            "o'brien+tag@example.co.uk",
            "\\\"\u{1F600}\u{0301}x",
        ),
    ];
    for (name, email, password) in cases {
        let body = s.register(name, email, password).expect(201);
        assert_eq!(body["name"], name.trim());
        let stored_email = body["email"].as_str().unwrap().to_string();
        let r = s.login(&stored_email, password);
        assert_eq!(r.expect(200)["name"], name.trim());
        let cookie = r.cookie_pair("jwt").unwrap();
        assert_eq!(
            s.get("/api/user/", &[("Cookie", &cookie)]).expect(200)["email"],
            stored_email
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 3);
    let deep = format!("{{\"name\":{}{}}}", "[".repeat(3000), "]".repeat(3000));
    let r = request(
        s.addr,
        "POST",
        "/api/register/",
        &[("Content-Type", "application/json")],
        Some(deep.as_bytes()),
    );
    assert_eq!(
        r.expect(400)["detail"]
            .as_str()
            .unwrap()
            .split(" - ")
            .next(),
        Some("JSON parse error")
    );
    let _ = json!({});
}
