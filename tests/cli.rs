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
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 2);
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
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 2);
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
    assert_eq!(db.count("SELECT count(*) FROM authd_schema_migrations"), 2);
}
