//! HTTP/1.1 on the wire (API.md, "HTTP/1.1 on the wire"): black-box tests of authd's HTTP layer
//! over raw sockets, against the real binary.
//!
//! What is covered, in the order of the contract:
//! - the request line is exactly `method SP target SP version` (400), only HTTP/1.0 and
//!   HTTP/1.1 are spoken (505), without leaking threads or descriptors;
//! - `Host` rules, origin-form and absolute-form targets;
//! - field names are tokens, obs-fold is refused (even when it would carry a cookie), obs-text
//!   is opaque data, NUL is refused;
//! - the limits on the request line (414), one header line, the header count and the whole
//!   head (431), enforced while reading so that memory stays flat;
//! - message framing (`Content-Length`, `Transfer-Encoding`, chunked);
//! - `Expect: 100-continue`, and clients that wait for it and then stall;
//! - deadlines: slowloris, idle keep-alive, silent connections, slow bodies, clients that stop
//!   reading;
//! - `MAX_CONNECTIONS`, pipelining.
//!
//! Every refusal is sent together with a second, well-formed request in the same write (the
//! "smuggled" request): exactly one response may come back, then the connection must close,
//! so bytes after a bad head are never read as another request. Every error answer of the
//! HTTP layer is JSON (`Content-Type: application/json`, `X-Content-Type-Options: nosniff`,
//! a body with `detail`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A well-formed request sent right after a bad head, in the same write: it must never be
/// answered.
const SMUGGLED: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// How long to wait for an answer (or a close) that the server should give at once.
const PROMPT: Duration = Duration::from_secs(3);

/// A login body with credentials no account has: a processed request gets 401.
const LOGIN: &str = r#"{"email":"nobody@example.com","password":"Password123"}"#;

// ---------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(PROMPT)).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

/// Writes all of `bytes`; false if the server refused them (closed or reset).
fn send(c: &mut TcpStream, bytes: impl AsRef<[u8]>) -> bool {
    c.write_all(bytes.as_ref()).is_ok()
}

/// What came back on a connection.
struct Reply {
    bytes: Vec<u8>,
    /// The server closed (EOF) or reset the connection.
    closed: bool,
    elapsed: Duration,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// How many `HTTP/1.` status lines came back (interim 1xx ones included).
    fn responses(&self) -> usize {
        status_lines(&self.bytes)
    }

    /// The status code of the first response.
    fn status(&self) -> Option<u16> {
        first_status(&self.bytes)
    }

    /// The first response, parsed.
    fn first(&self) -> Option<Resp> {
        parse_response(&self.text())
    }

    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }
}

/// Reads until `done(bytes)`, the peer closes, or `within` passes.
fn read_until(c: &mut TcpStream, within: Duration, done: impl Fn(&[u8]) -> bool) -> Reply {
    let start = Instant::now();
    let until = start + within;
    let mut bytes = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 16 * 1024];
    while !done(&bytes) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match c.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    Reply {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// Reads everything until the peer closes or `within` passes.
fn read_all(c: &mut TcpStream, within: Duration) -> Reply {
    read_until(c, within, |_| false)
}

/// Reads until `n` complete responses are in, the peer closes, or `within` passes.
fn read_responses(c: &mut TcpStream, n: usize, within: Duration) -> Reply {
    read_until(c, within, |b| complete_responses(b).len() >= n)
}

/// One connection: send `bytes`, read everything until the server closes (or [`PROMPT`]).
fn exchange(s: &Server, bytes: impl AsRef<[u8]>) -> Reply {
    let mut c = connect(s);
    // The server may refuse a large head before it is all written: that is fine.
    let _ = send(&mut c, bytes);
    read_all(&mut c, PROMPT)
}

/// The number of `HTTP/1.` status lines (at the start of a line) in `bytes`.
fn status_lines(bytes: &[u8]) -> usize {
    (0..bytes.len())
        .filter(|&i| (i == 0 || bytes[i - 1] == b'\n') && bytes[i..].starts_with(b"HTTP/1."))
        .count()
}

/// The status code on the first line of `bytes`.
fn first_status(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.strip_prefix("HTTP/1.")?;
    line.split(' ').nth(1)?.trim().parse().ok()
}

/// The complete responses at the start of `bytes`, as byte ranges (a head without
/// `Content-Length` is taken as having no body, which holds for 1xx and for authd's answers).
fn complete_responses(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(end) = find(&bytes[at..], b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[at..at + end]);
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let next = at + end + 4 + len;
        if next > bytes.len() {
            break;
        }
        out.push(at..next);
        at = next;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Asserts that the first response in `reply` is `status`, and shaped as every error of the
/// HTTP layer must be: JSON with a `detail`, `nosniff`.
fn assert_json_error(reply: &Reply, status: u16, case: &str) -> Value {
    let r = reply
        .first()
        .unwrap_or_else(|| panic!("{case}: no response came back (closed: {})", reply.closed));
    assert_eq!(r.status, status, "{case}: {}", reply.text());
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json"),
        "{case}: {}",
        reply.text()
    );
    assert_eq!(
        r.header("X-Content-Type-Options"),
        Some("nosniff"),
        "{case}: {}",
        reply.text()
    );
    let body: Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{case}: the body is not JSON ({e}): {:?}", r.body));
    assert!(
        body.get("detail").is_some_and(Value::is_string),
        "{case}: no \"detail\": {body}"
    );
    body
}

/// Sends `head` with [`SMUGGLED`] behind it in one write; asserts one `status` answer (JSON),
/// then the close, and that the smuggled request was not answered.
fn assert_refused_and_closed(s: &Server, head: impl AsRef<[u8]>, status: u16, case: &str) {
    let mut bytes = head.as_ref().to_vec();
    bytes.extend_from_slice(SMUGGLED);
    let r = exchange(s, &bytes);
    assert_json_error(&r, status, case);
    assert_eq!(
        r.responses(),
        1,
        "{case}: the request sent after the refused head was answered: {}",
        r.text()
    );
    assert!(
        r.closed,
        "{case}: the connection stayed open after the {status}"
    );
}

/// Sends one complete request (which should carry `Connection: close`) and returns the reply.
fn served(s: &Server, request: impl AsRef<[u8]>, case: &str) -> Resp {
    let r = exchange(s, request);
    r.first()
        .unwrap_or_else(|| panic!("{case}: no response (closed: {})", r.closed))
}

/// A field of `/proc/<pid>/status`, as its number (`Threads`, or `VmRSS` in kB).
fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn healthz_keepalive(c: &mut TcpStream) -> Reply {
    assert!(send(c, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    read_responses(c, 1, PROMPT)
}

fn login_head(extra: &str) -> String {
    format!("POST /api/login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n")
}

// ---------------------------------------------------------------------------------------
// 1, 12. The request line
// ---------------------------------------------------------------------------------------

#[test]
fn a_request_line_that_is_not_method_sp_target_sp_version_gets_400_and_the_connection_closes() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cases: &[(&str, &[u8])] = &[
        ("two spaces after the method", b"GET  /healthz HTTP/1.1"),
        ("two spaces before the version", b"GET /healthz  HTTP/1.1"),
        ("a tab instead of a space", b"GET\t/healthz HTTP/1.1"),
        ("no version", b"GET /healthz"),
        ("a word after the version", b"GET /healthz HTTP/1.1 extra"),
        ("a lowercase version", b"GET /healthz http/1.1"),
        ("a version without a minor number", b"GET /healthz HTTP/1"),
        ("a method that is not a token", b"GE(T /healthz HTTP/1.1"),
        ("a control byte in the target", b"GET /heal\x01thz HTTP/1.1"),
    ];
    for (case, line) in cases {
        let mut head = line.to_vec();
        head.extend_from_slice(b"\r\nHost: x\r\n\r\n");
        assert_refused_and_closed(&s, head, 400, case);
    }
    s.get("/healthz", &[]).expect(200);
}

#[test]
fn a_bare_cr_inside_the_request_line_gets_400() {
    let db = TestDb::new();
    let s = Server::start(&db);
    assert_refused_and_closed(
        &s,
        b"GET /healthz\rX HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "a bare CR in the request line",
    );
}

// ---------------------------------------------------------------------------------------
// 2. Versions
// ---------------------------------------------------------------------------------------

#[test]
fn versions_other_than_1_0_and_1_1_get_505_and_the_connection_closes() {
    let db = TestDb::new();
    let s = Server::start(&db);
    for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0", "HTTP/0.9"] {
        assert_refused_and_closed(
            &s,
            format!("GET /healthz {version}\r\nHost: x\r\n\r\n"),
            505,
            version,
        );
    }
}

#[test]
fn two_hundred_505s_leak_neither_threads_nor_descriptors() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let pid = s.pid();
    for _ in 0..5 {
        s.get("/healthz", &[]).expect(200);
    }
    thread::sleep(Duration::from_millis(200));
    let (threads, fds) = (proc_status(pid, "Threads"), open_fds(pid));
    for i in 0..200 {
        let r = exchange(&s, b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n");
        assert_eq!(r.status(), Some(505), "request {i}: {}", r.text());
        assert!(
            r.closed,
            "request {i}: the connection stayed open after the 505"
        );
    }
    let mut now = (0, 0);
    let settled = eventually(Duration::from_secs(3), || {
        now = (proc_status(pid, "Threads"), open_fds(pid));
        now.0 <= threads + 10 && now.1 <= fds + 10
    });
    assert!(
        settled,
        "threads {threads} -> {}, descriptors {fds} -> {} after 200 refused connections",
        now.0, now.1
    );
    s.get("/healthz", &[]).expect(200);
}

// ---------------------------------------------------------------------------------------
// 3, 4. Host and the target's form
// ---------------------------------------------------------------------------------------

#[test]
fn an_http_1_0_request_without_host_is_served_and_then_the_connection_closes() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let mut bytes = b"GET /healthz HTTP/1.0\r\n\r\n".to_vec();
    bytes.extend_from_slice(SMUGGLED);
    let r = exchange(&s, &bytes);
    let first = r.first().expect("an answer");
    assert_eq!(first.status, 200, "{}", r.text());
    assert_eq!(first.json(), json!({"status": "ok"}));
    assert_eq!(r.responses(), 1, "HTTP/1.0 is not persistent: {}", r.text());
    assert!(r.closed, "the HTTP/1.0 connection stayed open");
}

#[test]
fn an_http_1_1_request_without_host_or_with_two_gets_400() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cases = [
        ("no Host", "GET /healthz HTTP/1.1\r\nAccept: */*\r\n\r\n"),
        (
            "two different Hosts",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        ),
        (
            "the same Host twice",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
        ),
    ];
    for (case, head) in cases {
        assert_refused_and_closed(&s, head, 400, case);
    }
}

#[test]
fn absolute_form_targets_are_routed_like_origin_form() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let addr = s.addr;
    let r = served(
        &s,
        format!("GET http://{addr}/healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        "absolute-form /healthz",
    );
    assert_eq!(r.expect(200), json!({"status": "ok"}));
    let r = served(
        &s,
        format!(
            "GET http://{addr}/api/user/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        ),
        "absolute-form /api/user/",
    );
    assert_eq!(r.expect(401)["detail"], "Unauthenticated.");
}

// ---------------------------------------------------------------------------------------
// 5. Header fields
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_header_fields_get_400_and_the_connection_closes() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cases: &[(&str, &[u8])] = &[
        ("a space inside the name", b"Host: x\r\nBad Name: x\r\n"),
        ("a space before the colon of Host", b"Host : x\r\n"),
        ("a space before the colon", b"Host: x\r\nX-A : b\r\n"),
        ("an empty name", b"Host: x\r\n: x\r\n"),
        ("a ( in the name", b"Host: x\r\nX(A: b\r\n"),
        ("a line without a colon", b"Host: x\r\nNoColonHere\r\n"),
        ("obs-fold with a space", b"Host: x\r\nX-Foo: a\r\n b\r\n"),
        ("obs-fold with a tab", b"Host: x\r\nX-Foo: a\r\n\tb\r\n"),
        ("a NUL in a value", b"Host: x\r\nX-A: a\0b\r\n"),
    ];
    for (case, fields) in cases {
        let mut head = b"GET /healthz HTTP/1.1\r\n".to_vec();
        head.extend_from_slice(fields);
        head.extend_from_slice(b"\r\n");
        assert_refused_and_closed(&s, head, 400, case);
    }
}

#[test]
fn a_cookie_folded_into_the_previous_header_never_authenticates() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let jwt = s.session(&unique_email("fold"));
    // The same cookie, unfolded, does authenticate: the refusal below is the fold's doing.
    s.get("/api/user/", &[("Cookie", &jwt)]).expect(200);
    for fold in [" ", "\t"] {
        assert_refused_and_closed(
            &s,
            format!(
                "GET /api/user/ HTTP/1.1\r\nHost: x\r\nX-Foo: a\r\n{fold}Cookie: {jwt}\r\n\r\n"
            ),
            400,
            &format!("a Cookie folded with {fold:?}"),
        );
    }
}

#[test]
fn obs_text_in_a_header_value_is_accepted_as_opaque_bytes() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let r = served(
        &s,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xC3\xA9 \xFF\r\nConnection: close\r\n\r\n",
        "obs-text",
    );
    assert_eq!(r.expect(200), json!({"status": "ok"}));
}

// ---------------------------------------------------------------------------------------
// 6. Limits
// ---------------------------------------------------------------------------------------

/// A GET /healthz head with `Host`, `Connection: close` and `extra` more fields.
fn head_with_fields(extra: impl IntoIterator<Item = String>) -> Vec<u8> {
    let mut head = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_string();
    for f in extra {
        head.push_str(&f);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn numbered_fields(n: usize, value_len: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("X-Field-{i}: {}", "a".repeat(value_len)))
        .collect()
}

#[test]
fn heads_past_the_limits_get_431_or_414_and_the_connection_closes() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cases = [
        (
            "a header line of 9000 bytes",
            head_with_fields([format!("X-Big: {}", "a".repeat(9000))]),
            431,
        ),
        // Host + Connection + 99 = 101 fields
        (
            "101 header fields",
            head_with_fields(numbered_fields(99, 1)),
            431,
        ),
        (
            "60 fields of 1200 bytes (more than 64 KiB in all)",
            head_with_fields(numbered_fields(60, 1200)),
            431,
        ),
        (
            "a target of 9000 bytes",
            format!(
                "GET /healthz?{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(9000)
            )
            .into_bytes(),
            414,
        ),
    ];
    for (case, head, status) in cases {
        assert_refused_and_closed(&s, head, status, case);
    }
}

#[test]
fn heads_just_inside_the_limits_are_served() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let cases = [
        (
            "a header line of 8000 bytes",
            head_with_fields([format!("X-Big: {}", "a".repeat(8000))]),
        ),
        // Host + Connection + 98 = 100 fields
        (
            "100 header fields",
            head_with_fields(numbered_fields(98, 1)),
        ),
        (
            "50 fields of 1200 bytes (under 64 KiB in all)",
            head_with_fields(numbered_fields(50, 1200)),
        ),
        (
            "a target of 8000 bytes",
            format!(
                "GET /healthz?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "a".repeat(8000)
            )
            .into_bytes(),
        ),
    ];
    for (case, head) in cases {
        let r = served(&s, head, case);
        assert_eq!(r.status, 200, "{case}: {}", r.body);
    }
}

#[test]
fn a_16_mib_header_line_is_refused_while_it_arrives_and_memory_stays_flat() {
    const TOTAL: usize = 16 << 20;
    let db = TestDb::new();
    let s = Server::start(&db);
    s.get("/healthz", &[]).expect(200);
    let rss_before = proc_status(s.pid(), "VmRSS");
    let mut c = connect(&s);
    c.set_write_timeout(Some(PROMPT)).unwrap();
    assert!(send(&mut c, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "));
    let chunk = vec![b'a'; 64 * 1024];
    let (mut written, mut write_failed, mut answered_early) = (0, false, false);
    while written < TOTAL {
        if !send(&mut c, &chunk) {
            write_failed = true;
            break;
        }
        written += chunk.len();
        // Has the server said anything (an answer, a close) yet?
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        answered_early = !matches!(c.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
        c.set_nonblocking(false).unwrap();
        if answered_early {
            break;
        }
    }
    let r = read_all(&mut c, PROMPT);
    assert_json_error(&r, 431, "a 16 MiB header line");
    assert!(
        write_failed || answered_early,
        "all {TOTAL} bytes were taken before any answer: the limit is not enforced while reading"
    );
    assert!(r.closed, "the connection stayed open after the 431");
    let rss_after = proc_status(s.pid(), "VmRSS");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} kB to {rss_after} kB ({written} bytes written)"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Framing
// ---------------------------------------------------------------------------------------

/// `body` in chunks cut at `cuts`.
fn chunked(body: &str, cuts: &[usize]) -> String {
    let mut out = String::new();
    let mut at = 0;
    for &end in cuts.iter().chain([body.len()].iter()) {
        let part = &body[at..end];
        out.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        at = end;
    }
    out.push_str("0\r\n\r\n");
    out
}

#[test]
fn ambiguous_or_unsupported_framing_gets_400_and_the_connection_closes() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let n = LOGIN.len();
    let whole = chunked(LOGIN, &[]);
    let cases = [
        (
            "Content-Length: abc",
            "Content-Length: abc\r\n".to_string(),
            LOGIN.to_string(),
        ),
        (
            "Content-Length: +N",
            format!("Content-Length: +{n}\r\n"),
            LOGIN.to_string(),
        ),
        (
            "Content-Length: -1",
            "Content-Length: -1\r\n".to_string(),
            LOGIN.to_string(),
        ),
        (
            "Content-Length: N, N",
            format!("Content-Length: {n}, {n}\r\n"),
            LOGIN.to_string(),
        ),
        (
            "two Content-Lengths that disagree",
            "Content-Length: 3\r\nContent-Length: 4\r\n".to_string(),
            LOGIN.to_string(),
        ),
        (
            "Transfer-Encoding with Content-Length",
            format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
            whole.clone(),
        ),
        (
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: gzip\r\n".to_string(),
            LOGIN.to_string(),
        ),
        (
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: chunked, gzip\r\n".to_string(),
            whole.clone(),
        ),
        (
            "Transfer-Encoding: identity",
            "Transfer-Encoding: identity\r\n".to_string(),
            LOGIN.to_string(),
        ),
        (
            "two Transfer-Encodings",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n".to_string(),
            whole.clone(),
        ),
        (
            "a chunk size that is not hex",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("zz\r\n{LOGIN}\r\n0\r\n\r\n"),
        ),
    ];
    for (case, framing, body) in cases {
        assert_refused_and_closed(&s, format!("{}{body}", login_head(&framing)), 400, case);
    }
}

#[test]
fn agreeing_content_lengths_and_valid_chunks_are_processed() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let n = LOGIN.len();
    let cases = [
        (
            "two Content-Lengths that agree",
            format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"),
            LOGIN.to_string(),
        ),
        (
            "a body in two chunks",
            "Transfer-Encoding: chunked\r\n".to_string(),
            chunked(LOGIN, &[n / 2]),
        ),
    ];
    for (case, framing, body) in cases {
        let r = served(
            &s,
            format!(
                "{}{body}",
                login_head(&format!("{framing}Connection: close\r\n"))
            ),
            case,
        );
        assert_eq!(r.status, 401, "{case}: {}", r.body);
        assert_eq!(
            r.expect(401)["detail"],
            "Invalid email or password.",
            "{case}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. Expect
// ---------------------------------------------------------------------------------------

/// Reads the interim `100 Continue`; returns the bytes that came after it.
fn read_100_continue(c: &mut TcpStream, within: Duration, case: &str) -> Vec<u8> {
    let r = read_responses(c, 1, within);
    assert!(
        r.bytes.starts_with(b"HTTP/1.1 100 "),
        "{case}: no 100 Continue within {within:?} (closed: {}): {:?}",
        r.closed,
        r.text()
    );
    let first = complete_responses(&r.bytes)[0].clone();
    r.bytes[first.end..].to_vec()
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let mut c = connect(&s);
    let head = login_head(&format!(
        "Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n",
        LOGIN.len()
    ));
    assert!(send(&mut c, head));
    let mut rest = read_100_continue(&mut c, Duration::from_secs(2), "a login head");
    assert!(send(&mut c, LOGIN));
    let r = read_all(&mut c, PROMPT);
    rest.extend_from_slice(&r.bytes);
    let r = Reply { bytes: rest, ..r };
    assert_eq!(
        assert_json_error(&r, 401, "the final answer")["detail"],
        "Invalid email or password."
    );
}

#[test]
fn expect_100_continue_with_a_body_over_the_limit_gets_413_at_once() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let mut c = connect(&s);
    assert!(send(
        &mut c,
        login_head("Content-Length: 10000000\r\nExpect: 100-continue\r\n")
    ));
    let r = read_all(&mut c, Duration::from_millis(2500));
    assert_json_error(&r, 413, "a 10 MB body announced with Expect");
    assert_eq!(r.responses(), 1, "{}", r.text());
    assert!(r.closed, "the connection stayed open after the 413");
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
}

#[test]
fn an_expectation_other_than_100_continue_gets_417() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let mut c = connect(&s);
    let head = login_head(&format!(
        "Content-Length: {}\r\nExpect: something-else\r\nConnection: close\r\n",
        LOGIN.len()
    ));
    assert!(send(&mut c, format!("{head}{LOGIN}")));
    let r = read_responses(&mut c, 1, PROMPT);
    assert_json_error(&r, 417, "Expect: something-else");
}

#[test]
fn clients_that_stall_after_100_continue_hold_no_worker_and_are_cut_off() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("WORKERS", "2"), ("READ_TIMEOUT", "2")]);
    let email = unique_email("stall");
    s.register("Alice", &email, "Password123").expect(201);
    let head = login_head("Content-Length: 50\r\nExpect: 100-continue\r\n");
    let mut stalled: Vec<(TcpStream, Instant, Vec<u8>)> = (0..8)
        .map(|i| {
            let mut c = connect(&s);
            assert!(send(&mut c, &head));
            let sent = Instant::now();
            let rest = read_100_continue(&mut c, Duration::from_secs(2), &format!("stalled {i}"));
            (c, sent, rest)
        })
        .collect();

    let t = Instant::now();
    s.login(&email, "WrongPassword1").expect(401);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "login took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    s.get("/healthz", &[]).expect(200);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "healthz took {:?}",
        t.elapsed()
    );

    for (i, (c, sent, rest)) in stalled.iter_mut().enumerate() {
        let until = *sent + Duration::from_secs(3);
        let r = read_all(c, until.saturating_duration_since(Instant::now()));
        assert!(
            r.closed,
            "stalled {i}: still open {:?} after its head",
            sent.elapsed()
        );
        rest.extend_from_slice(&r.bytes);
        if !rest.is_empty() {
            let r = Reply {
                bytes: rest.clone(),
                ..r
            };
            assert_json_error(&r, 408, &format!("stalled {i}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// 9. Deadlines
// ---------------------------------------------------------------------------------------

fn start_with_short_deadlines(db: &TestDb) -> Server {
    Server::start_with(db, &[("READ_TIMEOUT", "2"), ("KEEPALIVE_TIMEOUT", "2")])
}

/// What a cut connection may have said: nothing, or 408.
fn assert_nothing_or_408(r: &Reply, case: &str) {
    if !r.bytes.is_empty() {
        assert_json_error(r, 408, case);
    }
}

#[test]
fn a_head_sent_one_byte_every_1_5_s_is_cut_off_after_read_timeout_in_total() {
    let db = TestDb::new();
    let s = start_with_short_deadlines(&db);
    let head = b"GET /healthz HTTP/1.1\r\nHost: slowloris\r\n\r\n";
    let mut c = connect(&s);
    assert!(send(&mut c, &head[..1]));
    let t0 = Instant::now();
    let (mut sent, mut got, mut cut_at) = (1, Vec::new(), None);
    let mut buf = [0u8; 1024];
    while t0.elapsed() < Duration::from_secs(5) {
        let next_byte = t0 + Duration::from_millis(1500) * sent as u32;
        let wait = next_byte.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        match c.read(&mut buf) {
            Ok(0) => {
                cut_at = Some(t0.elapsed());
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !send(&mut c, &head[sent..sent + 1]) {
                    cut_at = Some(t0.elapsed());
                    break;
                }
                sent += 1;
            }
            Err(_) => {
                cut_at = Some(t0.elapsed());
                break;
            }
        }
    }
    let cut_at = cut_at.expect("the slowloris connection was never cut off");
    assert!(
        (1.8..2.6).contains(&cut_at.as_secs_f64()),
        "cut off {cut_at:?} after the first byte ({sent} bytes sent)"
    );
    let r = Reply {
        bytes: got,
        closed: true,
        elapsed: cut_at,
    };
    assert_nothing_or_408(&r, "slowloris");
    s.get("/healthz", &[]).expect(200);
}

#[test]
fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let db = TestDb::new();
    let s = start_with_short_deadlines(&db);
    let mut c = connect(&s);
    assert_eq!(healthz_keepalive(&mut c).status(), Some(200));
    let r = read_all(&mut c, Duration::from_secs(4));
    assert!(r.closed, "the idle connection was not closed");
    assert!(
        (1.5..3.0).contains(&r.secs()),
        "closed after {:?}",
        r.elapsed
    );
    assert_nothing_or_408(&r, "idle keep-alive");
}

#[test]
fn a_connection_that_sends_nothing_is_closed_after_read_timeout() {
    let db = TestDb::new();
    let s = start_with_short_deadlines(&db);
    let mut c = connect(&s);
    let r = read_all(&mut c, Duration::from_secs(4));
    assert!(r.closed, "the silent connection was not closed");
    assert!(
        (1.0..=3.0).contains(&r.secs()),
        "closed after {:?}",
        r.elapsed
    );
    assert_nothing_or_408(&r, "silent connection");
}

#[test]
fn a_body_that_stops_arriving_is_cut_off_read_timeout_after_its_head() {
    let db = TestDb::new();
    let s = start_with_short_deadlines(&db);
    let mut c = connect(&s);
    assert!(send(
        &mut c,
        format!("{}{}", login_head("Content-Length: 100\r\n"), &LOGIN[..10])
    ));
    let r = read_all(&mut c, Duration::from_secs(4));
    assert!(r.closed, "the stalled body was not cut off");
    assert!(
        (1.5..=3.0).contains(&r.secs()),
        "cut off {:?} after the head",
        r.elapsed
    );
    assert_nothing_or_408(&r, "stalled body");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_are_served_meanwhile() {
    const PIPELINED: usize = 20_000;
    let db = TestDb::new();
    let s = start_with_short_deadlines(&db);
    // A small receive window, so that the answers back up into the server at once.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut stuck: TcpStream = sock.into();
    let mut writer = stuck.try_clone().unwrap();
    let pipeline = SMUGGLED.repeat(PIPELINED);
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let failed = writer.write_all(&pipeline).is_err();
        let _ = tx.send(failed);
    });

    for i in 0..5 {
        let t = Instant::now();
        s.get("/healthz", &[]).expect(200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "healthz {i} took {:?}",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }

    let deadline = t0 + Duration::from_secs(2 + 3);
    let write_failed = matches!(
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        Ok(true)
    );
    if !write_failed {
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
        // What is left to read of a cut connection is bounded and ends in EOF or a reset; a
        // connection still open would answer all the requests.
        let r = read_all(&mut stuck, Duration::from_secs(2));
        assert!(
            r.closed,
            "the connection that stopped reading was still open {:?} on",
            t0.elapsed()
        );
        assert!(
            r.responses() < PIPELINED,
            "all {PIPELINED} pipelined requests were answered: the client was never cut off"
        );
    }
    s.get("/healthz", &[]).expect(200);
}

// ---------------------------------------------------------------------------------------
// 10. Capacity
// ---------------------------------------------------------------------------------------

#[test]
fn past_max_connections_new_clients_wait_or_get_503_and_open_ones_are_still_served() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("MAX_CONNECTIONS", "8")]);
    let mut open: Vec<TcpStream> = (0..8).map(|_| connect(&s)).collect();
    for (i, c) in open.iter_mut().enumerate() {
        let r = healthz_keepalive(c);
        assert_eq!(r.status(), Some(200), "connection {i}: {}", r.text());
    }

    let mut ninth = connect(&s);
    assert!(send(
        &mut ninth,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    let r = read_responses(&mut ninth, 1, Duration::from_secs(1));
    let ninth_waits = r.bytes.is_empty();
    if ninth_waits {
        assert!(!r.closed, "the 9th connection was closed without an answer");
    } else {
        assert_json_error(&r, 503, "the 9th connection");
    }

    for (i, c) in open.iter_mut().enumerate() {
        let r = healthz_keepalive(c);
        assert_eq!(r.status(), Some(200), "connection {i}, again: {}", r.text());
    }

    drop(open.drain(..2));
    let t = Instant::now();
    let mut tenth = connect(&s);
    assert!(send(
        &mut tenth,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    let r = read_responses(&mut tenth, 1, Duration::from_secs(2));
    assert_eq!(
        r.status(),
        Some(200),
        "a new connection after two closed: {}",
        r.text()
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    if ninth_waits {
        let r = read_responses(&mut ninth, 1, Duration::from_secs(2));
        assert_eq!(
            r.status(),
            Some(200),
            "the waiting 9th connection: {}",
            r.text()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 11. Pipelining
// ---------------------------------------------------------------------------------------

#[test]
fn three_pipelined_requests_get_three_responses_in_order() {
    let db = TestDb::new();
    let s = Server::start(&db);
    let mut c = connect(&s);
    assert!(send(
        &mut c,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /api/user/ HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    let r = read_responses(&mut c, 3, PROMPT);
    let statuses: Vec<u16> = parse_responses(&r.text())
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 404, 401], "{}", r.text());
    assert!(
        !r.closed,
        "the keep-alive connection closed after the pipeline"
    );
    assert_eq!(healthz_keepalive(&mut c).status(), Some(200));
}
