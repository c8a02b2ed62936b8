//! Test fixture: a fresh database per test, the real `authd` binary on a free port, and a
//! small HTTP/1.1 client over a raw socket (so tests control every byte they send).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde_json::Value;

pub const SECRET: &str = "test-secret-key-that-is-at-least-32-bytes-long";

/// `claims` as an HS256 token signed with the test servers' key.
pub fn signed(claims: &Value) -> String {
    use jsonwebtoken::{EncodingKey, Header};
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The admin connection string of the test cluster `make test` started.
pub fn admin_dsn() -> String {
    std::env::var("AUTHD_TEST_PG").unwrap_or_else(|_| {
        panic!("AUTHD_TEST_PG is not set: run the tests with `make test`, which starts PostgreSQL")
    })
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub name: String,
    admin: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let admin = admin_dsn();
        let name = format!("test_{}", random_suffix());
        let mut c = Client::connect(&admin, NoTls).expect("connect to the test cluster");
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        TestDb { name, admin }
    }

    pub fn dsn(&self) -> String {
        format!("{} dbname={}", self.admin, self.name)
    }

    pub fn url(&self) -> String {
        let kv: HashMap<&str, &str> = self
            .admin
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .collect();
        format!(
            "postgres://{}@{}:{}/{}",
            kv["user"], kv["host"], kv["port"], self.name
        )
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.dsn(), NoTls).expect("connect to the test database")
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.admin, NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Runs the real binary with a clean environment plus `env`, and waits for it.
pub fn authd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    authd_with_input(args, env, None)
}

/// [`authd`], with `input` written to its standard input (closed after).
pub fn authd_with_input(
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start authd");
    let mut stdin = child.stdin.take().expect("piped stdin");
    if let Some(text) = input {
        let _ = stdin.write_all(text.as_bytes());
    }
    drop(stdin);
    child.wait_with_output().expect("wait for authd")
}

/// The real binary, started with a clean environment plus the given settings.
pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Owned `(name, value)` settings from string pairs.
pub fn env_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn base_env(db: &TestDb) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url()),
        ("SECRET_KEY", SECRET.to_string()),
        ("BIND", "127.0.0.1:0".to_string()),
        ("RUST_LOG", "info".to_string()),
        ("BCRYPT_COST", "4".to_string()),
        ("WORKERS", "4".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl Server {
    pub fn start(db: &TestDb) -> Server {
        Server::start_with(db, &[])
    }

    pub fn start_with(db: &TestDb, extra: &[(&str, &str)]) -> Server {
        let mut env = base_env(db);
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        Server::spawn(&env)
    }

    /// Spawns authd with exactly `env` (plus PATH), in a folder with no `.env`.
    pub fn spawn(env: &[(String, String)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::from_command(cmd)
    }

    /// Runs `cmd` (which must pipe stderr) and waits for the line that names the address.
    pub fn from_command(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("spawn authd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim().parse::<SocketAddr>().unwrap());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("authd did not start: {:?}", log.lock().unwrap());
            }
        };
        Server { addr, child, log }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap();
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        request(self.addr, "GET", path, headers, None)
    }

    pub fn post_json(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        request(
            self.addr,
            "POST",
            path,
            &h,
            Some(body.to_string().as_bytes()),
        )
    }

    pub fn register(&self, name: &str, email: &str, password: &str) -> Resp {
        self.post_json(
            "/api/register/",
            &serde_json::json!({"name": name, "email": email, "password": password}),
            &[],
        )
    }

    pub fn login(&self, email: &str, password: &str) -> Resp {
        self.post_json(
            "/api/login/",
            &serde_json::json!({"email": email, "password": password}),
            &[],
        )
    }

    /// Registers and logs in a fresh user; returns the cookie pair `jwt=...`.
    pub fn session(&self, email: &str) -> String {
        assert_eq!(self.register("Alice", email, "Password123").status, 201);
        let r = self.login(email, "Password123");
        assert_eq!(r.status, 200, "{}", r.body);
        r.cookie_pair("jwt").expect("jwt cookie")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// `name=value` from the `Set-Cookie` for `name`.
    pub fn cookie_pair(&self, name: &str) -> Option<String> {
        self.all("Set-Cookie")
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(|c| c.split(';').next().unwrap().to_string())
    }

    /// Asserts the status, that the body is JSON, and the headers every response carries.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        assert_eq!(self.header("X-Content-Type-Options"), Some("nosniff"));
        self.json()
    }
}

/// One request on its own connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    let text = send_raw(addr, &bytes, Duration::from_secs(15));
    parse_response(&text).unwrap_or_else(|| panic!("no HTTP response: {text:?}"))
}

/// Sends raw bytes, reads until the server closes (or the timeout), returns the text.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the first response in `text`.
pub fn parse_response(text: &str) -> Option<Resp> {
    parse_responses(text).into_iter().next()
}

/// Parses every response in `text` (pipelined), using Content-Length.
pub fn parse_responses(mut text: &str) -> Vec<Resp> {
    let mut out = Vec::new();
    while let Some((head, rest)) = text.split_once("\r\n\r\n") {
        let mut lines = head.lines();
        let Some(status) = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
        else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(rest.len())
            .min(rest.len());
        out.push(Resp {
            status,
            headers,
            body: rest[..len].to_string(),
        });
        text = &rest[len..];
    }
    out
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", random_suffix())
}
