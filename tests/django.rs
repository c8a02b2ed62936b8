//! Taking over a database the Django original made (tests/fixtures/django5_seed.sql): authd
//! adds only its own tables, every user logs in with the password Django hashed, the hash
//! becomes bcrypt on that login, and tokens the original issued work until logout.

mod common;

use common::*;
use serde_json::json;

const FIXTURE: &str = include_str!("fixtures/django5_seed.sql");

fn django_db() -> TestDb {
    let db = TestDb::new();
    db.client()
        .batch_execute(FIXTURE)
        .expect("load the Django fixture");
    db
}

fn texts(db: &TestDb, sql: &str) -> Vec<String> {
    db.client()
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn password_of(db: &TestDb, email: &str) -> String {
    db.client()
        .query_one(
            "SELECT password FROM accounts_user WHERE email = $1",
            &[&email],
        )
        .unwrap()
        .get(0)
}

const ROWS: &str = "SELECT a::text FROM public.accounts_user a ORDER BY id";
const TABLES: &str = "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1";
const INDEXES: &str =
    "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1";
const COLUMNS: &str = "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || \
                       is_nullable || ' ' || coalesce(character_maximum_length::text, '') \
                       FROM information_schema.columns WHERE table_schema = 'public' \
                       AND table_name NOT LIKE 'authd\\_%' ORDER BY 1";
const DJANGO_ROWS: &str = "SELECT (SELECT count(*) FROM public.django_migrations) || ' ' || \
                           (SELECT count(*) FROM public.auth_permission) || ' ' || \
                           (SELECT count(*) FROM public.django_content_type)";

fn seed_settings(db: &TestDb) -> Vec<(&'static str, String)> {
    let port = admin_dsn()
        .split_whitespace()
        .find_map(|p| p.strip_prefix("port="))
        .unwrap()
        .to_string();
    vec![
        ("DB_NAME", db.name.clone()),
        ("DB_USER", "postgres".into()),
        ("DB_PASSWORD", String::new()),
        ("DB_HOST", "127.0.0.1".into()),
        ("DB_PORT", port),
        ("SECRET_KEY", SECRET.into()),
    ]
}

fn migrate(db: &TestDb) -> std::process::Output {
    let settings = seed_settings(db);
    let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    authd(&["migrate"], &env)
}

#[test]
fn migrate_on_a_django_database_adds_only_its_own_tables_and_touches_no_row() {
    let db = django_db();
    let (rows, tables, indexes, columns, django) = (
        texts(&db, ROWS),
        texts(&db, TABLES),
        texts(&db, INDEXES),
        texts(&db, COLUMNS),
        texts(&db, DJANGO_ROWS),
    );
    assert_eq!(rows.len(), 10);
    let out = migrate(&db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(texts(&db, ROWS), rows, "no user row changes");
    assert_eq!(
        texts(&db, COLUMNS),
        columns,
        "no Django column added, dropped or altered"
    );
    assert_eq!(
        texts(&db, DJANGO_ROWS),
        django,
        "Django's own rows are untouched"
    );
    let added = |before: &[String], after: Vec<String>| -> Vec<String> {
        after.into_iter().filter(|t| !before.contains(t)).collect()
    };
    let new_tables = added(&tables, texts(&db, TABLES));
    assert!(!new_tables.is_empty());
    assert!(
        new_tables.iter().all(|t| t.starts_with("authd_")),
        "{new_tables:?}"
    );
    let after_tables = texts(&db, TABLES);
    assert!(
        tables.iter().all(|t| after_tables.contains(t)),
        "no table dropped"
    );
    let new_indexes = added(&indexes, texts(&db, INDEXES));
    assert!(new_indexes.contains(&"authd_user_email_lower_uniq".to_string()));
    assert!(
        new_indexes.iter().all(|i| i.starts_with("authd_")),
        "{new_indexes:?}"
    );

    // A second run (another instance starting) changes nothing either.
    let out = migrate(&db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(texts(&db, ROWS), rows);
}

#[test]
fn every_django_hash_format_logs_in_and_becomes_bcrypt_on_that_login() {
    let db = django_db();
    let s = Server::start(&db);
    for (email, name) in [
        ("pbkdf2-1k@example.com", "One Thousand"),
        ("pbkdf2-260k@example.com", "Django Three"),
        ("pbkdf2-default@example.com", "Django Five"),
        ("sha1@example.com", "Old Sha1"),
        ("bcrypt@example.com", "Plain Bcrypt"),
        ("bcrypt-sha256@example.com", "Bcrypt Sha"),
        ("Carol@Example.COM", "Carol Mixedcase"),
    ] {
        let old = password_of(&db, email);
        let body = s.login(&email.to_lowercase(), "Password123").expect(200);
        assert_eq!(body["name"], name);
        assert_eq!(body["email"], email);
        let new = password_of(&db, email);
        // BCRYPT_COST is 4 in the tests; the fixture's bcrypt hashes are cost 5.
        assert!(new.starts_with("bcrypt_sha256$$2b$04$"), "{email}: {new}");
        assert_ne!(new, old);
        // The next login reads the new hash and leaves it as it is.
        s.login(email, "Password123").expect(200);
        assert_eq!(password_of(&db, email), new, "{email}");
        s.login(email, "Password124").expect(401);
    }
    assert_eq!(
        db.count("SELECT count(*) FROM accounts_user WHERE password LIKE 'pbkdf2%'"),
        2,
        "users who did not log in (inactive, admin) keep their hashes"
    );
}

#[test]
fn wrong_unusable_and_inactive_are_refused_and_change_nothing() {
    let db = django_db();
    let s = Server::start(&db);
    let rows = texts(&db, ROWS);
    for (email, password) in [
        ("pbkdf2-1k@example.com", "Password124"),
        ("pbkdf2-default@example.com", "password123"),
        ("sha1@example.com", ""),
        ("unusable@example.com", "Password123"),
        ("unusable@example.com", ""),
        ("inactive@example.com", "Password123"),
    ] {
        let body = s.login(email, password).expect(401);
        assert_eq!(
            body,
            json!({"detail": "Invalid email or password."}),
            "{email}"
        );
    }
    // the unusable hash itself, as a password, is no way in either
    let unusable = password_of(&db, "unusable@example.com");
    s.login("unusable@example.com", &unusable).expect(401);
    assert_eq!(texts(&db, ROWS), rows);
}

#[test]
fn a_token_the_django_original_issued_works_until_logout_revokes_it() {
    let db = django_db();
    let s = Server::start(&db);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The seed's payload: {'id': user.id, 'exp': now + 60 min, 'iat': now}, HS256, no jti.
    let claims = json!({"id": 10, "exp": now + 3600, "iat": now});
    let token = signed(&claims);
    let cookie = format!("jwt={token}");
    let body = s.get("/api/user/", &[("Cookie", &cookie)]).expect(200);
    assert_eq!(
        body,
        json!({"id": 10, "name": "Admin", "email": "admin@example.com"})
    );

    // The same user's own authd session is another session: logout of one leaves the other.
    let own = s.login("admin@example.com", "Password123");
    let own = own.cookie_pair("jwt").expect("jwt cookie");
    s.post_json("/api/logout/", &json!({}), &[("Cookie", &cookie)])
        .expect(200);
    s.get("/api/user/", &[("Cookie", &cookie)]).expect(401);
    s.get("/api/user/", &[("Cookie", &own)]).expect(200);
}

#[test]
fn users_authd_registers_are_complete_rows_for_django() {
    let db = django_db();
    let s = Server::start(&db);
    let body = s
        .register("Dana", "dana@example.com", "Password123")
        .expect(201);
    // Django's identity sequence was moved past its rows: no clash with ids 1-10.
    assert_eq!(body["id"], 11);
    let row = db
        .client()
        .query_one(
            "SELECT is_superuser, is_staff, is_active, first_name, last_name, \
             date_joined IS NOT NULL, last_login IS NULL, password FROM accounts_user WHERE id = 11",
            &[],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1) && row.get::<_, bool>(2));
    assert_eq!(
        (row.get::<_, String>(3), row.get::<_, String>(4)),
        (String::new(), String::new())
    );
    assert!(row.get::<_, bool>(5) && row.get::<_, bool>(6));
    assert!(row.get::<_, String>(7).starts_with("bcrypt_sha256$$2b$04$"));
    // an address Django holds in another letter case is taken
    s.register("C", "carol@example.com", "Password123")
        .expect(400);
}

#[test]
fn migrate_refuses_emails_that_differ_only_in_case_and_changes_nothing() {
    let db = django_db();
    // Django's unique constraint on email is case-sensitive, so it let this one in.
    db.client()
        .batch_execute(
            "INSERT INTO accounts_user (password, is_superuser, first_name, last_name, is_staff, \
             is_active, date_joined, name, email) VALUES ('!x', false, '', '', false, true, \
             now(), 'Twin', 'PBKDF2-1K@example.com')",
        )
        .unwrap();
    let (rows, tables) = (texts(&db, ROWS), texts(&db, TABLES));
    let out = migrate(&db);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PBKDF2-1K@example.com") && err.contains("pbkdf2-1k@example.com"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(texts(&db, ROWS), rows);
    assert_eq!(texts(&db, TABLES), tables, "no table created");
}

#[test]
fn migrate_refuses_emails_that_reach_one_mailbox_and_changes_nothing() {
    let db = django_db();
    // Not a case duplicate (lower() leaves full-width letters alone), but one mailbox.
    db.client()
        .batch_execute(
            "INSERT INTO accounts_user (password, is_superuser, first_name, last_name, is_staff, \
             is_active, date_joined, name, email) VALUES ('!x', false, '', '', false, true, \
             now(), 'Twin', 'ｐｂｋｄｆ２-1k@example.com')",
        )
        .unwrap();
    let (rows, tables) = (texts(&db, ROWS), texts(&db, TABLES));
    let out = migrate(&db);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ｐｂｋｄｆ２-1k@example.com") && err.contains("pbkdf2-1k@example.com"),
        "{err}"
    );
    assert_eq!(texts(&db, ROWS), rows);
    assert_eq!(texts(&db, TABLES), tables, "no table created");
}

#[test]
fn a_user_django_adds_later_logs_in_by_any_spelling_of_the_address() {
    let db = django_db();
    let s = Server::start(&db);
    s.register("A", "first@example.com", "Password123")
        .expect(201);
    // Django (its admin, say) adds a user while authd runs: no canonical row yet.
    let hash: String = db
        .client()
        .query_one(
            "SELECT password FROM accounts_user WHERE email = 'first@example.com'",
            &[],
        )
        .unwrap()
        .get(0);
    db.client()
        .execute(
            "INSERT INTO accounts_user (password, is_superuser, first_name, last_name, is_staff, \
             is_active, date_joined, name, email) VALUES ($1, false, '', '', false, true, \
             now(), 'Later', 'Later@Example.com')",
            &[&hash],
        )
        .unwrap();
    s.login("later@example.com", "Password123").expect(200);
    // Now recorded: its variants find it, and it cannot be registered again.
    s.login("ＬＡＴＥＲ@example.com", "Password123").expect(200);
    let v = s.register("B", "la\u{200B}ter@example.com", "Password123");
    v.expect(400);
    s.register("B", "LATER@example.com", "Password123")
        .expect(400);
}

#[test]
fn a_django_password_longer_than_72_bytes_still_logs_in() {
    let db = django_db();
    // PBKDF2-HMAC-SHA256 of this 100-byte password, 1000 iterations, salt "longsalt".
    let long = &"Long passphrase for Django ".repeat(4)[..100];
    db.client()
        .execute(
            "UPDATE accounts_user SET password = $1 WHERE email = 'pbkdf2-1k@example.com'",
            &[&"pbkdf2_sha256$1000$longsalt$eCStnIHYXW46aT/xVCj/n3zp89KpNukGN1XaWc6CPyI="],
        )
        .unwrap();
    let s = Server::start(&db);
    s.login("pbkdf2-1k@example.com", &long[..72]).expect(401);
    s.login("pbkdf2-1k@example.com", long).expect(200);
    assert!(password_of(&db, "pbkdf2-1k@example.com").starts_with("bcrypt_sha256$"));
    s.login("pbkdf2-1k@example.com", long).expect(200);
    s.login("pbkdf2-1k@example.com", &long[..72]).expect(401);
}

/// A Django database of 25,000 users (more than two of the backfill's batches) gets every
/// canonical email recorded; a collision in the last batch stops it with nothing written,
/// and once removed the next migrate records them all.
#[test]
fn migrate_records_canonical_emails_batch_by_batch_and_refuses_a_late_collision() {
    let db = django_db();
    db.client()
        .batch_execute(
            "INSERT INTO accounts_user (password, is_superuser, first_name, last_name, is_staff, \
             is_active, date_joined, name, email) SELECT '!x', false, '', '', false, true, \
             now(), 'Many ' || g, 'many' || g || '@example.com' FROM generate_series(1, 25000) g; \
             INSERT INTO accounts_user (password, is_superuser, first_name, last_name, is_staff, \
             is_active, date_joined, name, email) VALUES ('!x', false, '', '', false, true, \
             now(), 'Twin', 'ＭＡＮＹ7@example.com')",
        )
        .unwrap();
    let tables = texts(&db, TABLES);
    let out = migrate(&db);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("many7@example.com, ＭＡＮＹ7@example.com"),
        "{err}"
    );
    assert_eq!(texts(&db, TABLES), tables, "nothing committed");
    db.client()
        .batch_execute("DELETE FROM accounts_user WHERE name = 'Twin'")
        .unwrap();
    let out = migrate(&db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.count("SELECT count(*) FROM authd_user_email"),
        db.count("SELECT count(*) FROM accounts_user")
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM authd_user_email c JOIN accounts_user u ON u.id = c.user_id \
             WHERE c.canonical <> lower(u.email)"
        ),
        0,
        "every form recorded against its own user"
    );
}
