//! The command line: --help, --version, migrate, and refusals of bad settings.

mod common;

use common::*;

#[test]
fn help_lists_the_commands_and_every_setting() {
    let out = authd(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "migrate",
        "check",
        "create-user",
        "--superuser",
        "Exit status",
        "SECRET_KEY",
        "DEBUG",
        "DATABASE_URL",
        "DB_NAME",
        "BIND",
        "WORKERS",
        "DB_POOL_SIZE",
        "DB_TIMEOUT",
        "JWT_TTL",
        "COOKIE_SECURE",
        "COOKIE_NAME",
        "BCRYPT_COST",
        "MAX_BODY_BYTES",
        "KEEPALIVE_TIMEOUT",
        "READ_TIMEOUT",
        "LOGIN_MAX_FAILURES",
        "LOGIN_MAX_FAILURES_PER_IP",
        "LOGIN_WINDOW",
        "ALLOWED_ORIGINS",
        "METRICS_ENABLED",
        "TRUSTED_PROXIES",
        "RUST_LOG",
    ] {
        assert!(text.contains(word), "{word} missing from --help");
    }
    let out = authd(&["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("authd "));
    let out = authd(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_bad_or_missing_setting_stops_the_start_with_one_line_naming_it() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("DB_NAME", "x")], "SECRET_KEY"),
        (
            &[("DB_NAME", "x"), ("SECRET_KEY", "too-short")],
            "SECRET_KEY",
        ),
        (&[("SECRET_KEY", SECRET)], "DATABASE_URL"),
        (
            &[
                ("DB_NAME", "x"),
                ("SECRET_KEY", SECRET),
                ("BCRYPT_COST", "99"),
            ],
            "BCRYPT_COST",
        ),
        (
            &[
                ("DB_NAME", "x"),
                ("SECRET_KEY", SECRET),
                ("BIND", "nowhere"),
            ],
            "BIND",
        ),
        (
            &[
                ("DB_NAME", "x"),
                ("SECRET_KEY", SECRET),
                ("DEBUG", "perhaps"),
            ],
            "DEBUG",
        ),
    ];
    for (env, setting) in cases {
        let out = authd(&[], env);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(setting), "{setting} not named in {err}");
        assert!(!err.contains("too-short"), "the key leaked: {err}");
    }
}

#[test]
fn debug_without_a_key_starts_with_a_warning() {
    let db = TestDb::new();
    let url = db.url();
    let env = env_of(&[
        ("DATABASE_URL", url.as_str()),
        ("DEBUG", "True"),
        ("BIND", "127.0.0.1:0"),
        ("RUST_LOG", "info"),
    ]);
    let s = Server::spawn(&env);
    assert_eq!(s.get("/healthz", &[]).status, 200);
    assert!(s.log_text().contains("SECRET_KEY is not set"));
}

#[test]
fn migrate_applies_the_schema_once_and_is_safe_to_rerun() {
    let db = TestDb::new();
    let url = db.url();
    for _ in 0..2 {
        let out = authd(
            &["migrate"],
            &[("DATABASE_URL", &url), ("SECRET_KEY", SECRET)],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 6);
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 0);
}

#[test]
fn the_seeds_db_settings_are_understood() {
    let db = TestDb::new();
    let port = admin_dsn()
        .split_whitespace()
        .find_map(|p| p.strip_prefix("port="))
        .unwrap()
        .to_string();
    let out = authd(
        &["migrate"],
        &[
            ("DB_NAME", &db.name),
            ("DB_USER", "postgres"),
            ("DB_PASSWORD", ""),
            ("DB_HOST", "127.0.0.1"),
            ("DB_PORT", &port),
            ("SECRET_KEY", SECRET),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 6);
}

#[test]
fn instances_migrating_at_once_do_not_collide() {
    let db = TestDb::new();
    let url = db.url();
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    authd(
                        &["migrate"],
                        &[("DATABASE_URL", &url), ("SECRET_KEY", SECRET)],
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 6);
}

fn db_env(db: &TestDb) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.url()),
        ("SECRET_KEY", SECRET.to_string()),
        ("BCRYPT_COST", "4".to_string()),
    ]
}

fn run(args: &[&str], env: &[(&'static str, String)], input: &str) -> std::process::Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    authd_with_input(args, &env, Some(input))
}

#[test]
fn create_user_reads_the_password_from_stdin_and_the_user_can_log_in() {
    let db = TestDb::new();
    let env = db_env(&db);
    let out = run(
        &[
            "create-user",
            "--email",
            "Admin@Example.COM",
            "--name",
            " Ada Admin ",
            "--superuser",
        ],
        &env,
        "S3cret-enough\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Admin@example.com"), "{stdout}");
    let row = db
        .client()
        .query_one(
            "SELECT name, is_superuser, is_staff, is_active FROM accounts_user",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Ada Admin");
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2) && row.get::<_, bool>(3));

    let s = Server::start(&db);
    let body = s.login("admin@example.com", "S3cret-enough").expect(200);
    assert_eq!(body["name"], "Ada Admin");
    s.login("admin@example.com", "S3cret-enough\n").expect(401);

    // without --superuser: a plain user
    let out = run(
        &["create-user", "--email=b@example.com", "--name=B"],
        &env,
        "Password123",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.count("SELECT count(*) FROM accounts_user WHERE email = 'b@example.com' AND NOT is_staff AND NOT is_superuser"),
        1
    );
    s.login("b@example.com", "Password123").expect(200);
}

#[test]
fn create_user_refuses_invalid_input_with_the_apis_messages_and_changes_nothing() {
    let db = TestDb::new();
    let env = db_env(&db);
    let ok = run(
        &["create-user", "--email", "taken@example.com", "--name", "T"],
        &env,
        "Password123\n",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--email", "not-an-email", "--name", "N"],
            "Password123\n",
            "email: Enter a valid email address.",
        ),
        (
            &["--email", "n@example.com", "--name", "   "],
            "Password123\n",
            "name: This field may not be blank.",
        ),
        (
            &["--email", "n@example.com", "--name", "N"],
            "short\n",
            "password: Ensure this field has at least 8 bytes.",
        ),
        (
            &["--email", "n@example.com", "--name", "N"],
            "\n",
            "password: This field may not be blank.",
        ),
        (
            &["--email", "n@example.com", "--name", "N"],
            &format!("{}\n", "x".repeat(73)),
            "password: Ensure this field has no more than 72 bytes",
        ),
        (
            &["--email", "TAKEN@example.com", "--name", "N"],
            "Password123\n",
            "email: user with this email already exists.",
        ),
    ];
    for (args, input, message) in cases {
        let mut full = vec!["create-user"];
        full.extend_from_slice(args);
        let out = run(&full, &env, input);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // usage errors are 2, and name the problem
    for args in [
        &["create-user"][..],
        &["create-user", "--email", "a@b.co"],
        &["create-user", "--bogus"],
    ] {
        let out = run(args, &env, "Password123\n");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert_eq!(db.count("SELECT count(*) FROM accounts_user"), 1);
}

#[test]
fn check_says_ok_in_one_line_or_why_not_and_exits_one() {
    let db = TestDb::new();
    let env = db_env(&db);
    let out = run(&["check"], &env, "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(
        text.contains("reachable") && text.contains("schema at 0 of"),
        "{text}"
    );
    run(&["migrate"], &env, "");
    let text = String::from_utf8_lossy(&run(&["check"], &env, "").stdout).to_string();
    assert!(text.contains("schema up to date"), "{text}");

    // the database is down (nothing listens on that port)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = vec![
        (
            "DATABASE_URL",
            format!("postgres://postgres:hunter2hunter2@127.0.0.1:{port}/x"),
        ),
        ("SECRET_KEY", SECRET.to_string()),
        ("DB_TIMEOUT", "1".to_string()),
    ];
    let out = run(&["check"], &down, "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(
        text.contains("cannot use database") && text.contains(&format!("127.0.0.1:{port}/x")),
        "{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the password is never printed: {text}"
    );

    // reachable, but the server refuses: its own message, not "db error"
    let mut missing = db.url();
    missing.push_str("_missing");
    let out = run(
        &["check"],
        &[
            ("DATABASE_URL", missing),
            ("SECRET_KEY", SECRET.to_string()),
        ],
        "",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("does not exist"), "{text}");

    // a bad setting is a failed check too
    let out = run(&["check"], &[("SECRET_KEY", "short".to_string())], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SECRET_KEY"));
}

/// Runs `authd create-user` on a pseudo-terminal (through python3's pty module, as make
/// itself needs python3) and types `first` and `second` at its prompts.
fn create_user_on_a_terminal(db: &TestDb, first: &str, second: &str) -> (String, i32) {
    const DRIVER: &str = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execve(sys.argv[1], ["authd", "create-user", "--email", "tty@example.com", "--name", "Tty"],
              {"DATABASE_URL": sys.argv[2], "SECRET_KEY": "k" * 40, "BCRYPT_COST": "4", "RUST_LOG": "warn"})
out = b""
def wait_for(text):
    global out
    end = time.time() + 10
    while text not in out and time.time() < end:
        try:
            out += os.read(fd, 1024)
        except OSError:
            return
wait_for(b"Password: ")
os.write(fd, sys.argv[3].encode() + b"\n")
wait_for(b"(again): ")
os.write(fd, sys.argv[4].encode() + b"\n")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode())
sys.exit(os.WEXITSTATUS(status))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            DRIVER,
            env!("CARGO_BIN_EXE_authd"),
            &db.url(),
            first,
            second,
        ])
        .output()
        .expect("python3 runs the terminal driver");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn create_user_on_a_terminal_prompts_twice_without_echo() {
    let db = TestDb::new();
    let (text, code) = create_user_on_a_terminal(&db, "Typed-Secret-1", "Typed-Secret-2");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("the two passwords differ"), "{text}");
    // refused before anything was written: not even the schema
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE tablename = 'accounts_user'"),
        0
    );

    let (text, code) = create_user_on_a_terminal(&db, "Typed-Secret-1", "Typed-Secret-1");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Password: ") && text.contains("Password (again): "),
        "{text}"
    );
    assert!(text.contains("created user"), "{text}");
    assert!(
        !text.contains("Typed-Secret"),
        "the password was echoed: {text}"
    );
    let s = Server::start(&db);
    s.login("tty@example.com", "Typed-Secret-1").expect(200);
}
