//! One account per mailbox: every spelling a mail system delivers to the same mailbox
//! (letter case in any script, full-width forms, invisible characters, IDN domains in
//! Unicode or `xn--` form) registers once, logs in, and shares one throttle counter.
//! Also the registration throttle, IPv6 clients per /64, and bounded access-log lines.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::json;

/// (as registered, other spellings of the same mailbox)
const MAILBOXES: &[(&str, &[&str])] = &[
    (
        "Alice@Example.com",
        &[
            "alice@example.com",
            "ALICE@EXAMPLE.COM",
            "ａｌｉｃｅ@ｅｘａｍｐｌｅ．ｃｏｍ",
            "al\u{200B}ice@example.com",
            "alice\u{2060}@exa\u{200D}mple.com",
            "  alice@example.com  ",
        ],
    ),
    (
        "zoë@bücher.de",
        &[
            "ZOË@BÜCHER.DE",
            "zoë@xn--bcher-kva.de",
            "ZOË@XN--BCHER-KVA.DE",
            "zoe\u{308}@bücher.de",
        ],
    ),
    (
        "İnci@example.com",
        &["i\u{307}nci@example.com", "İNCI@example.com"],
    ),
    (
        "strasse@example.de",
        &["STRAẞE@example.de", "straße@example.de"],
    ),
];

#[test]
fn every_spelling_of_a_mailbox_logs_in_and_none_registers_again() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("REGISTER_MAX_PER_IP", "1000")]);
    for (registered, variants) in MAILBOXES {
        let v = s.register("A", registered, "Password123").expect(201);
        // Stored as typed (trimmed), the domain lowercased.
        let (local, domain) = registered.rsplit_once('@').unwrap();
        assert_eq!(v["email"], format!("{local}@{}", domain.to_lowercase()));
        s.login(registered, "Password123").expect(200);
        for other in *variants {
            let r = s.login(other, "Password123");
            assert_eq!(
                r.status, 200,
                "login as {other:?} for {registered:?}: {}",
                r.body
            );
            let again = s.register("B", other, "Password123");
            assert_eq!(
                again.status, 400,
                "{other:?} registered again: {}",
                again.body
            );
        }
    }
    assert_eq!(
        db.count("SELECT count(*) FROM accounts_user"),
        MAILBOXES.len() as i64
    );
    assert_eq!(
        db.count("SELECT count(*) FROM authd_user_email"),
        MAILBOXES.len() as i64
    );
}

#[test]
fn invisible_characters_are_refused_at_registration() {
    let db = TestDb::new();
    let s = Server::start(&db);
    for bad in [
        "a\u{200B}b@example.com",
        "ab@exam\u{AD}ple.com",
        "ab\u{FE0F}@example.com",
        "ab@example.com\u{200E}",
    ] {
        let v = s.register("A", bad, "Password123").expect(400);
        assert!(v.get("email").is_some(), "{bad:?}: {v}");
    }
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 0);
}

#[test]
fn addresses_whose_lower_case_is_longer_are_a_400_never_a_500() {
    let db = TestDb::new();
    let s = Server::start(&db);
    // İ (1 character) lowercases to two: 254 typed characters become more than the column.
    let long = format!("a@{}.com", "İ".repeat(125));
    assert!(long.chars().count() <= 254);
    let r = s.register("A", &long, "Password123");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.login(&long, "Password123");
    assert_eq!(r.status, 401, "{}", r.body);
    for odd in ["a@xn--", "a@xn--zz.com", "a@-.com", &"ǅ".repeat(300)] {
        let r = s.login(odd, "Password123");
        assert_eq!(r.status, 401, "{odd:?}: {}", r.body);
    }
}

#[test]
fn spellings_of_one_mailbox_share_one_throttle_counter() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("LOGIN_MAX_FAILURES", "3")]);
    s.register("A", "Alice@Example.com", "Password123")
        .expect(201);
    for spelling in [
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        "ａｌｉｃｅ@example.com",
    ] {
        s.login(spelling, "wrong-password").expect(401);
    }
    let r = s.login("al\u{200B}ice@example.com", "Password123");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("Retry-After").is_some());
}

#[test]
fn registrations_are_limited_per_client_address() {
    let db = TestDb::new();
    let s = Server::start_with(&db, &[("REGISTER_MAX_PER_IP", "2")]);
    s.register("A", "one@example.com", "Password123")
        .expect(201);
    s.register("A", "two@example.com", "Password123")
        .expect(201);
    let r = s.register("A", "three@example.com", "Password123");
    let v = r.expect(429);
    assert!(
        v["detail"].as_str().unwrap().contains("registrations"),
        "{v}"
    );
    let secs: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&secs));
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 2);
    // Nothing else is throttled: the registered users log in.
    s.login("one@example.com", "Password123").expect(200);
}

#[test]
fn behind_a_trusted_proxy_ipv6_clients_are_counted_per_network() {
    let db = TestDb::new();
    let s = Server::start_with(
        &db,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("LOGIN_MAX_FAILURES_PER_IP", "2"),
            ("REGISTER_MAX_PER_IP", "1000"),
        ],
    );
    let login_from = |ip: &str, email: &str| {
        s.post_json(
            "/api/login/",
            &json!({"email": email, "password": "wrong-password"}),
            &[("X-Forwarded-For", ip)],
        )
    };
    // Three addresses of one /64 share a bucket...
    login_from("2001:db8:1:2::1", "a@example.com").expect(401);
    login_from("2001:db8:1:2::2", "b@example.com").expect(401);
    login_from("2001:db8:1:2:ffff::3", "c@example.com").expect(429);
    // ...another /64 has its own, and IPv4 clients are counted per address.
    login_from("2001:db8:1:3::1", "d@example.com").expect(401);
    login_from("192.0.2.1", "e@example.com").expect(401);
    login_from("192.0.2.1", "f@example.com").expect(401);
    login_from("192.0.2.1", "g@example.com").expect(429);
    login_from("192.0.2.2", "h@example.com").expect(401);
}

#[test]
fn every_access_log_line_is_bounded_and_one_line() {
    let db = TestDb::new();
    let s = Server::start(&db);
    // The longest method the request line allows, and a path full of escapes.
    let method = "M".repeat(5000);
    let path = format!("/{}", "%0A%0D\\x".repeat(300));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(eventually(Duration::from_secs(5), || s
        .log_text()
        .contains("MMMMMMMM")));
    for line in s.log_text().lines() {
        assert!(line.len() < 1024, "a {}-byte log line", line.len());
    }
}
