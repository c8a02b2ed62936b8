//! Account recovery over real SMTP: a small SMTP server inside the test process (plain
//! text, no STARTTLS offered, on 127.0.0.1) receives what authd's outbox sends.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{Value, json};

/// One message as the SMTP server received it.
#[derive(Debug, Clone)]
struct Mail {
    /// `MAIL FROM:<…>`
    envelope_from: String,
    /// `RCPT TO:<…>`, in order.
    envelope_to: Vec<String>,
    /// The DATA, dot-unstuffed, lines ending in CRLF.
    data: String,
}

impl Mail {
    fn head(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(h, _)| h)
    }

    /// The top-level header fields, unfolded, in order.
    fn headers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in self.head().split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = out.last_mut() {
                    last.1.push_str(line);
                }
            } else if let Some((k, v)) = line.split_once(':') {
                out.push((k.to_string(), v.trim().to_string()));
            } else {
                panic!("not a header line: {line:?} in\n{}", self.data);
            }
        }
        out
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The decoded body of the part of type `mime` (`text/plain`, `text/html`).
    fn part(&self, mime: &str) -> String {
        let ctype = self.header("Content-Type").unwrap();
        let boundary = ctype
            .split("boundary=")
            .nth(1)
            .unwrap()
            .trim_matches('"')
            .to_string();
        let body = self.data.split_once("\r\n\r\n").unwrap().1;
        for part in body.split(&format!("--{boundary}")) {
            let Some((head, content)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            let head = head.to_ascii_lowercase();
            if !head.contains(&format!("content-type: {mime}")) {
                continue;
            }
            let content = content.trim_end_matches("\r\n");
            return if head.contains("content-transfer-encoding: quoted-printable") {
                quoted_printable(content)
            } else if head.contains("content-transfer-encoding: base64") {
                let joined: String = content.split_whitespace().collect();
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(joined)
                        .unwrap(),
                )
                .unwrap()
            } else {
                content.to_string()
            };
        }
        panic!("no {mime} part in\n{}", self.data)
    }

    fn text(&self) -> String {
        self.part("text/plain")
    }

    /// The token the mail carries (after "it is: " in the text part).
    fn token(&self) -> String {
        token_in(&self.text())
    }
}

/// The token after "it is: " in `text`.
fn token_in(text: &str) -> String {
    let rest = text
        .split("it is: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no token in {text:?}"));
    rest.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// Quoted-printable (RFC 2045 6.7), decoded.
fn quoted_printable(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.map(|h| u8::from_str_radix(h, 16)) {
            Some(Ok(v)) if b[i] == b'=' => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// An SMTP server on 127.0.0.1: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, no TLS.
struct Smtp {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    stop: Arc<AtomicBool>,
}

impl Smtp {
    fn start() -> Smtp {
        Smtp::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Smtp {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mails.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let m = m.clone();
                        thread::spawn(move || {
                            let _ = serve(stream, &m);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Smtp { addr, mails, stop }
    }

    fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits until at least `n` mails have arrived; all of them.
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let ok = eventually(timeout, || self.mails().len() >= n);
        let mails = self.mails();
        assert!(ok, "{} mails of {n} arrived: {mails:#?}", mails.len());
        mails
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, mails: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 test.invalid ESMTP test server\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let path = |line: &str| {
        line.split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(p, _)| p.to_string())
            .unwrap_or_default()
    };
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-test.invalid\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 OK\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = path(&line);
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(path(&line));
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l)? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            mails.lock().unwrap().push(Mail {
                envelope_from: std::mem::take(&mut from),
                envelope_to: std::mem::take(&mut to),
                data,
            });
            b"250 OK queued\r\n"
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            b"502 not implemented\r\n"
        };
        w.write_all(reply)?;
    }
}

const FROM: &str = "Acme <no-reply@acme.test>";
const RESET_SENT: &str = "Password reset e-mail has been sent.";
const VERIFY_SENT: &str = "Verification e-mail has been sent.";
const WAIT: Duration = Duration::from_secs(10);

/// authd sending to `smtp`, with `extra` settings.
fn server(db: &TestDb, smtp: &Smtp, extra: &[(&str, &str)]) -> Server {
    let url = smtp.url();
    let mut env = vec![("SMTP_URL", url.as_str()), ("EMAIL_FROM", FROM)];
    env.extend_from_slice(extra);
    Server::start_with(db, &env)
}

fn ask_reset(s: &Server, email: &str) -> Resp {
    s.post_json("/api/password/reset/", &json!({ "email": email }), &[])
}

fn confirm(s: &Server, token: &str, password: &str) -> Resp {
    s.post_json(
        "/api/password/reset/confirm/",
        &json!({"token": token, "new_password": password}),
        &[],
    )
}

fn verify(s: &Server, token: &str) -> Resp {
    s.post_json("/api/email/verify/", &json!({ "token": token }), &[])
}

fn invalid_token() -> Value {
    json!({"token": ["Invalid or expired token."]})
}

/// Registers and logs in; the `jwt=…` and `refresh=…` cookie pairs.
fn logged_in(s: &Server, email: &str, password: &str) -> (String, String) {
    s.register("Alice", email, password).expect(201);
    let r = s.login(email, password);
    r.expect(200);
    (
        r.cookie_pair("jwt").unwrap(),
        r.cookie_pair("refresh").unwrap(),
    )
}

#[test]
fn a_reset_mail_arrives_and_its_token_sets_a_new_password_once_ending_every_session() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(
        &db,
        &smtp,
        &[("PASSWORD_RESET_URL", "https://app.test/reset?token={token}")],
    );
    let email = unique_email("reset");
    let (jwt, refresh) = logged_in(&s, &email, "Password123");
    let jwt2 = s.login(&email, "Password123").cookie_pair("jwt").unwrap();

    // Another spelling of the address: the mail goes to the address on record.
    let r = ask_reset(&s, &email.to_uppercase());
    assert_eq!(r.expect(200), json!({ "detail": RESET_SENT }));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let mails = smtp.wait_for(1, WAIT);
    let mail = &mails[0];
    assert_eq!(mail.envelope_from, "no-reply@acme.test");
    assert_eq!(mail.envelope_to, vec![email.clone()]);
    assert_eq!(mail.header("Subject").unwrap(), "Reset your Acme password");
    assert!(mail.header("Date").is_some(), "{}", mail.data);
    let mid = mail.header("Message-ID").unwrap();
    assert!(
        mid.starts_with('<') && mid.ends_with("@acme.test>"),
        "{mid}"
    );
    assert_eq!(mail.header("From").unwrap(), FROM);
    assert_eq!(mail.header("To").unwrap(), format!("Alice <{email}>"));
    assert!(
        mail.header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative")
    );
    let token = mail.token();
    assert!(token.len() >= 22, "{token}");
    let link = format!("https://app.test/reset?token={token}");
    let text = mail.text();
    assert!(text.contains(&link), "{text}");
    assert!(text.contains("1 hour"), "{text}");
    assert!(mail.part("text/html").contains(&format!("href=\"{link}\"")));
    // Only the token's hash is kept; the outbox row went with the delivery.
    assert!(eventually(WAIT, || db
        .count("SELECT count(*) FROM authd_outbox")
        == 0));
    let stored = db.count(&format!(
        "SELECT count(*) FROM authd_recovery_token WHERE token_hash = sha256('{token}'::bytea)"
    ));
    assert_eq!(stored, 1);
    assert!(!s.log_text().contains(&token), "the token is in the log");

    let weak = confirm(&s, &token, "short");
    assert!(weak.expect(400)["new_password"].is_array(), "{}", weak.body);
    let r = confirm(&s, &token, "NewPassword456");
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert_eq!(
        confirm(&s, &token, "OtherPassword789").expect(400),
        invalid_token()
    );

    // Every session ended: access tokens and the refresh token alike.
    for cookie in [&jwt, &jwt2] {
        s.get("/api/user/", &[("Cookie", cookie)]).expect(401);
    }
    let r = request(
        s.addr,
        "POST",
        "/api/token/refresh/",
        &[("Cookie", &refresh)],
        None,
    );
    r.expect(401);
    s.login(&email, "Password123").expect(401);
    s.login(&email, "OtherPassword789").expect(401);
    s.login(&email, "NewPassword456").expect(200);
    assert!(s.log_text().contains("password reset for user"));
    assert!(!s.log_text().contains(&token), "the token is in the log");
    assert_eq!(db.count("SELECT count(*) FROM authd_recovery_token"), 0);
}

#[test]
fn bad_tokens_and_bad_bodies_are_400s() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(&db, &smtp, &[]);
    let real = "A".repeat(43);
    for token in [
        "",
        "x",
        "not a token at all",
        real.as_str(),
        &"A".repeat(5000),
    ] {
        assert_eq!(
            confirm(&s, token, "Password123").expect(400),
            invalid_token(),
            "{token:?}"
        );
        assert_eq!(verify(&s, token).expect(400), invalid_token(), "{token:?}");
    }
    let r = s.post_json("/api/password/reset/confirm/", &json!({}), &[]);
    let body = r.expect(400);
    assert!(body["token"].is_array() && body["new_password"].is_array());
    let r = s.post_json("/api/email/verify/", &json!({"token": 5}), &[]);
    assert_eq!(r.expect(400), json!({"token": ["Not a valid string."]}));
    for path in ["/api/password/reset/", "/api/email/verify/resend/"] {
        for bad in [json!({}), json!({"email": "nope"}), json!({"email": null})] {
            let r = s.post_json(path, &bad, &[]);
            assert!(r.expect(400)["email"].is_array(), "{path} {bad} {}", r.body);
        }
        let r = request(
            s.addr,
            "POST",
            path,
            &[("Content-Type", "text/plain")],
            Some(b"{\"email\":\"a@example.com\"}"),
        );
        r.expect(415);
    }
}

#[test]
fn a_reset_token_expires_after_password_reset_ttl() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(&db, &smtp, &[("PASSWORD_RESET_TTL", "1")]);
    let email = unique_email("ttl");
    s.register("Alice", &email, "Password123").expect(201);
    let asked = Instant::now();
    ask_reset(&s, &email).expect(200);
    let mail = smtp.wait_for(1, WAIT).remove(0);
    assert!(mail.text().contains("within 1 second"), "{}", mail.text());
    thread::sleep(Duration::from_millis(1500).saturating_sub(asked.elapsed()));
    assert_eq!(
        confirm(&s, &mail.token(), "NewPassword456").expect(400),
        invalid_token()
    );
    s.login(&email, "Password123").expect(200);
}

#[test]
fn a_reset_mail_not_delivered_before_its_token_expires_is_dropped() {
    let db = TestDb::new();
    // Nothing listens here, so every attempt fails.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("smtp://{closed}");
    let s = Server::start_with(
        &db,
        &[
            ("SMTP_URL", &url),
            ("EMAIL_FROM", FROM),
            ("PASSWORD_RESET_TTL", "2"),
        ],
    );
    let email = unique_email("drop");
    s.register("Alice", &email, "Password123").expect(201);
    ask_reset(&s, &email).expect(200);
    assert_eq!(db.count("SELECT count(*) FROM authd_outbox"), 1);
    assert!(eventually(Duration::from_secs(15), || {
        db.count("SELECT count(*) FROM authd_outbox") == 0
            && db.count("SELECT count(*) FROM authd_recovery_token") == 0
    }));
}

#[test]
fn a_token_is_void_once_the_password_changes_another_way() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(&db, &smtp, &[]);
    let email = unique_email("void");
    let (jwt, _) = logged_in(&s, &email, "Password123");
    ask_reset(&s, &email).expect(200);
    ask_reset(&s, &email).expect(200);
    let mails = smtp.wait_for(2, WAIT);
    let (first, second) = (mails[0].token(), mails[1].token());
    assert_ne!(first, second);

    // Changed through the API...
    let r = request(
        s.addr,
        "POST",
        "/api/password/change/",
        &[("Cookie", &jwt), ("Content-Type", "application/json")],
        Some(
            json!({"old_password": "Password123", "new_password": "Changed456"})
                .to_string()
                .as_bytes(),
        ),
    );
    r.expect(200);
    assert_eq!(
        confirm(&s, &first, "NewPassword789").expect(400),
        invalid_token()
    );

    // ... or behind authd's back (Django's set_password): the token is void as well.
    ask_reset(&s, &email).expect(200);
    let third = smtp.wait_for(3, WAIT)[2].token();
    let other = unique_email("other");
    s.register("Other", &other, "Django789").expect(201);
    db.client()
        .execute(
            "UPDATE accounts_user SET password = \
             (SELECT password FROM accounts_user WHERE email = $2) WHERE email = $1",
            &[&email, &other],
        )
        .unwrap();
    assert_eq!(
        confirm(&s, &third, "NewPassword789").expect(400),
        invalid_token()
    );
    s.login(&email, "Django789").expect(200);
    assert_eq!(
        confirm(&s, &second, "NewPassword789").expect(400),
        invalid_token()
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn reset_and_resend_answer_the_same_in_the_same_time_for_known_unknown_and_throttled() {
    const N: usize = 15;
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(
        &db,
        &smtp,
        &[
            ("RESET_MAX_PER_IP", "100000"),
            ("REGISTER_MAX_PER_IP", "100000"),
        ],
    );
    let known: Vec<String> = (0..N + 1)
        .map(|i| {
            let e = unique_email(&format!("known{i}"));
            s.register("Alice", &e, "Password123").expect(201);
            e
        })
        .collect();
    let throttled = known[N].clone();
    for path in ["/api/password/reset/", "/api/email/verify/resend/"] {
        let expected = if path.contains("reset") {
            RESET_SENT
        } else {
            VERIFY_SENT
        };
        let time = |email: &str| {
            let t = Instant::now();
            let r = s.post_json(path, &json!({ "email": email }), &[]);
            let took = t.elapsed().as_secs_f64();
            assert_eq!(r.expect(200), json!({ "detail": expected }), "{path}");
            took
        };
        // Past the per-email limit (and warm: statements prepared, connections open).
        for _ in 0..4 {
            time(&throttled);
        }
        let mut times: [Vec<f64>; 3] = Default::default();
        for (i, email) in known.iter().take(N).enumerate() {
            times[0].push(time(email));
            times[1].push(time(&unique_email(&format!("nobody{i}"))));
            times[2].push(time(&throttled));
        }
        let [k, u, t] = times.map(median);
        eprintln!(
            "{path}: median known {:.2} ms, unknown {:.2} ms, throttled {:.2} ms",
            k * 1e3,
            u * 1e3,
            t * 1e3
        );
        for (name, other) in [("unknown", u), ("throttled", t)] {
            assert!(
                (k - other).abs() < 0.004,
                "{path}: known {:.2} ms, {name} {:.2} ms",
                k * 1e3,
                other * 1e3
            );
        }
        // Unknown and throttled addresses got no mail; each known one (and the throttled
        // one, up to its limit) got exactly one per request.
        // (Resend counts against the same limits: the throttled address stays spent.)
        let wanted = if path.contains("reset") {
            N + 3
        } else {
            2 * N + 3
        };
        let mails = smtp.wait_for(wanted, WAIT);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(smtp.mails().len(), wanted);
        assert!(mails.iter().all(|m| known.contains(&m.envelope_to[0])));
    }
}

#[test]
fn past_the_limits_the_answer_is_the_same_and_no_mail_goes() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(&db, &smtp, &[("RESET_MAX_PER_IP", "6")]);
    let a = unique_email("limit");
    s.register("Alice", &a, "Password123").expect(201);
    // Four requests for one address (in any spelling): three mails.
    for email in [a.clone(), a.to_uppercase(), format!(" {a} "), a.clone()] {
        assert_eq!(
            ask_reset(&s, &email).expect(200),
            json!({ "detail": RESET_SENT })
        );
    }
    smtp.wait_for(3, WAIT);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(smtp.mails().len(), 3);
    // Resend counts against the same limits: the address is spent.
    let r = s.post_json("/api/email/verify/resend/", &json!({ "email": a }), &[]);
    assert_eq!(r.expect(200), json!({ "detail": VERIFY_SENT }));
    // That was this client's fifth request: the sixth gets a mail, the seventh none.
    let b = unique_email("limit-b");
    s.register("Bob", &b, "Password123").expect(201);
    ask_reset(&s, &b).expect(200);
    ask_reset(&s, &b).expect(200);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(smtp.mails().len(), 4);
    assert_eq!(smtp.mails()[3].envelope_to, vec![b.clone()]);
    assert_eq!(
        db.count("SELECT count(*) FROM authd_login_throttle WHERE scope IN ('p', 'q')"),
        3
    );
}

#[test]
fn a_mail_server_that_is_down_then_up_gets_the_mail_and_the_answer_never_waits() {
    let db = TestDb::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("smtp://{addr}");
    let s = Server::start_with(&db, &[("SMTP_URL", &url), ("EMAIL_FROM", FROM)]);
    let email = unique_email("down");
    s.register("Alice", &email, "Password123").expect(201);
    let t = Instant::now();
    ask_reset(&s, &email).expect(200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(eventually(WAIT, || db.count(
        "SELECT count(*) FROM authd_outbox WHERE attempts >= 1 AND last_error IS NOT NULL"
    ) == 1));

    // A server that accepts and then says nothing: the answer still does not wait.
    let tarpit = TcpListener::bind(addr).unwrap();
    let t = Instant::now();
    ask_reset(&s, &email).expect(200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    drop(tarpit);

    let smtp = Smtp::on(TcpListener::bind(addr).unwrap());
    let mails = smtp.wait_for(2, Duration::from_secs(20));
    assert!(mails.iter().all(|m| m.envelope_to == vec![email.clone()]));
    assert_ne!(mails[0].token(), mails[1].token());
    assert!(eventually(WAIT, || db
        .count("SELECT count(*) FROM authd_outbox")
        == 0));
    confirm(&s, &mails[1].token(), "NewPassword456").expect(200);
}

#[test]
fn without_smtp_url_the_mail_is_written_to_the_log() {
    let db = TestDb::new();
    let s = Server::start_with(
        &db,
        &[("PASSWORD_RESET_URL", "http://localhost:3000/reset/{token}")],
    );
    let email = unique_email("console");
    s.register("Alice", &email, "Password123").expect(201);
    ask_reset(&s, &email).expect(200);
    assert!(eventually(WAIT, || s.log_text().contains("it is: ")));
    let log = s.log_text();
    assert!(log.contains("Subject: Reset your authd password"), "{log}");
    assert!(log.contains(&format!("To: Alice <{email}>")), "{log}");
    let token = token_in(&log);
    assert!(
        log.contains(&format!("http://localhost:3000/reset/{token}")),
        "{log}"
    );
    confirm(&s, &token, "NewPassword456").expect(200);
    s.login(&email, "NewPassword456").expect(200);
}

#[test]
fn names_and_addresses_cannot_inject_headers() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(&db, &smtp, &[]);
    for name in [
        "Eve\r\nBcc: victim@example.com",
        "Eve\nSubject: hi",
        "Eve\rX: y",
    ] {
        let r = s.register(name, &unique_email("eve"), "Password123");
        assert!(r.expect(400)["name"].is_array(), "{name:?}");
    }
    let r = ask_reset(&s, "eve@example.com\r\nBcc: victim@example.com");
    assert!(r.expect(400)["email"].is_array());

    // A user made behind authd's back (Django's admin) with line breaks in the name.
    let email = unique_email("mallory");
    let hash = {
        s.register("Tmp", &email, "Password123").expect(201);
        let row = db
            .client()
            .query_one(
                "SELECT password FROM accounts_user WHERE email = $1",
                &[&email],
            )
            .unwrap();
        row.get::<_, String>(0)
    };
    db.client()
        .execute(
            "UPDATE accounts_user SET name = $2, password = $3 WHERE email = $1",
            &[
                &email,
                &"Mallory\r\nBcc: victim@example.com\r\nSubject: pwned é \"quoted\"",
                &hash,
            ],
        )
        .unwrap();
    ask_reset(&s, &email).expect(200);
    if !eventually(WAIT, || !smtp.mails().is_empty()) {
        panic!("no mail: {}", s.log_text());
    }
    let mail = smtp.mails().remove(0);
    assert_eq!(mail.envelope_to, vec![email.clone()]);
    let names: Vec<String> = mail
        .headers()
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    assert!(!names.contains(&"bcc".to_string()), "{}", mail.head());
    assert_eq!(names.iter().filter(|n| *n == "subject").count(), 1);
    assert_eq!(names.iter().filter(|n| *n == "to").count(), 1);
    assert_eq!(mail.header("Subject").unwrap(), "Reset your Acme password");
    let to = mail.header("To").unwrap();
    assert!(to.ends_with(&format!("<{email}>")), "{to}");
    assert!(!to.contains('\r') && !to.contains('\n'), "{to:?}");
    // Every header line is printable ASCII: names are encoded words, not raw bytes.
    assert!(
        mail.head()
            .split("\r\n")
            .all(|l| l.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t')),
        "{}",
        mail.head()
    );
}

#[test]
fn with_verification_required_login_waits_for_the_address_to_be_verified() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(
        &db,
        &smtp,
        &[
            ("REQUIRE_EMAIL_VERIFICATION", "true"),
            ("EMAIL_VERIFY_URL", "https://app.test/verify#{token}"),
        ],
    );
    let email = unique_email("verify");
    s.register("Alice", &email, "Password123").expect(201);
    let mail = smtp.wait_for(1, WAIT).remove(0);
    assert_eq!(mail.envelope_to, vec![email.clone()]);
    assert_eq!(
        mail.header("Subject").unwrap(),
        "Confirm your e-mail address for Acme"
    );
    let token = mail.token();
    assert!(
        mail.text()
            .contains(&format!("https://app.test/verify#{token}"))
    );

    let r = s.login(&email, "Password123");
    assert_eq!(
        r.expect(403),
        json!({"detail": "E-mail address is not verified."})
    );
    assert!(r.header("Set-Cookie").is_none());
    s.login(&email, "WrongPassword").expect(401);
    s.login(&unique_email("nobody"), "Password123").expect(401);

    // A token is bound to its purpose.
    ask_reset(&s, &email).expect(200);
    let reset_token = smtp.wait_for(2, WAIT)[1].token();
    assert_eq!(verify(&s, &reset_token).expect(400), invalid_token());
    assert_eq!(
        confirm(&s, &token, "NewPassword456").expect(400),
        invalid_token()
    );

    let r = verify(&s, &token);
    assert_eq!(r.expect(200), json!({"message": "success"}));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert_eq!(verify(&s, &token).expect(400), invalid_token());
    s.login(&email, "Password123").expect(200);

    // A verified address gets no more verification mails; the answer is the same.
    let r = s.post_json("/api/email/verify/resend/", &json!({ "email": email }), &[]);
    assert_eq!(r.expect(200), json!({ "detail": VERIFY_SENT }));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(smtp.mails().len(), 2);

    // Resend works for an address not yet verified; an address changed behind authd's back
    // is not verified any more.
    let other = unique_email("verify-b");
    s.register("Bob", &other, "Password123").expect(201);
    smtp.wait_for(3, WAIT);
    s.post_json("/api/email/verify/resend/", &json!({ "email": other }), &[])
        .expect(200);
    let resent = smtp.wait_for(4, WAIT)[3].clone();
    assert_eq!(resent.envelope_to, vec![other.clone()]);
    verify(&s, &resent.token()).expect(200);
    s.login(&other, "Password123").expect(200);
    let moved = unique_email("moved");
    db.client()
        .execute(
            "UPDATE accounts_user SET email = $2 WHERE email = $1",
            &[&other, &moved],
        )
        .unwrap();
    db.client()
        .execute(
            "UPDATE authd_user_email SET canonical = $2 WHERE canonical = $1",
            &[&other, &moved],
        )
        .unwrap();
    s.login(&moved, "Password123").expect(403);
}

#[test]
fn verification_is_off_by_default() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(&db, &smtp, &[]);
    let email = unique_email("off");
    s.register("Alice", &email, "Password123").expect(201);
    s.login(&email, "Password123").expect(200);
    thread::sleep(Duration::from_millis(500));
    assert!(smtp.mails().is_empty());
}

#[test]
fn cross_site_posts_to_the_recovery_endpoints_are_refused() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let s = server(&db, &smtp, &[]);
    let email = unique_email("csrf");
    s.register("Alice", &email, "Password123").expect(201);
    let evil = [("Origin", "https://evil.example")];
    for (path, body) in [
        ("/api/password/reset/", json!({ "email": email })),
        (
            "/api/password/reset/confirm/",
            json!({"token": "A".repeat(43), "new_password": "Password456"}),
        ),
        ("/api/email/verify/", json!({"token": "A".repeat(43)})),
        ("/api/email/verify/resend/", json!({ "email": email })),
    ] {
        let r = s.post_json(path, &body, &evil);
        assert!(r.expect(403)["detail"].is_string(), "{path}");
        assert_eq!(r.header("Cache-Control"), Some("no-store"), "{path}");
        // The same request from the server's own origin passes the check.
        let own = format!("http://{}", s.addr);
        let r = s.post_json(path, &body, &[("Origin", &own)]);
        assert_ne!(r.status, 403, "{path}: {}", r.body);
    }
    assert_eq!(
        db.count("SELECT count(*) FROM authd_login_throttle WHERE scope = 'p'"),
        1
    );
}

#[test]
fn two_instances_sharing_the_outbox_send_each_mail_once() {
    let db = TestDb::new();
    let smtp = Smtp::start();
    let extra = [
        ("RESET_MAX_PER_IP", "1000"),
        ("REGISTER_MAX_PER_IP", "1000"),
    ];
    let a = server(&db, &smtp, &extra);
    let b = server(&db, &smtp, &extra);
    let emails: Vec<String> = (0..20).map(|i| unique_email(&format!("two{i}"))).collect();
    for e in &emails {
        a.register("Alice", e, "Password123").expect(201);
    }
    // Queued from both sides at once, so that both senders are woken for every mail.
    thread::scope(|scope| {
        for (half, s) in [(0, &a), (1, &b)] {
            let emails = &emails;
            scope.spawn(move || {
                for e in emails.iter().skip(half).step_by(2) {
                    ask_reset(s, e).expect(200);
                    ask_reset(s, e).expect(200);
                }
            });
        }
    });
    let mails = smtp.wait_for(40, Duration::from_secs(20));
    thread::sleep(Duration::from_secs(2));
    let mails_after = smtp.mails();
    assert_eq!(mails_after.len(), 40, "{} mails", mails_after.len());
    let mut ids: Vec<String> = mails
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    for e in &emails {
        assert_eq!(
            mails
                .iter()
                .filter(|m| m.envelope_to == vec![e.clone()])
                .count(),
            2
        );
    }
    // Both instances delivered some (each logs what it sent).
    let delivered = |s: &Server| s.log_text().matches("delivered").count();
    assert_eq!(delivered(&a) + delivered(&b), 40);
    assert_eq!(db.count("SELECT count(*) FROM authd_outbox"), 0);
}
