//! The connection pool, schema migrations and every query authd makes.

use std::time::Duration;

use postgres::{Client, NoTls, Statement};
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

/// Schema steps, applied in order; the files are never edited once landed.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_accounts_user",
        include_str!("../sql/0001_accounts_user.sql"),
    ),
    (
        2,
        "0002_revocation_and_throttle",
        include_str!("../sql/0002_revocation_and_throttle.sql"),
    ),
    (
        3,
        "0003_email_canonical",
        include_str!("../sql/0003_email_canonical.sql"),
    ),
];

/// Advisory lock key held while migrating, so that instances starting together take turns.
const MIGRATION_LOCK: i64 = 0x6175_7468_645f_6d67; // "authd_mg"

/// A database failure, split by what the client should be told.
#[derive(Debug)]
pub enum DbError {
    /// No connection within the timeout, or the server went away: 503.
    Unavailable(String),
    /// Anything else: 500, details in the log.
    Other(String),
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        let unavailable = match e.code() {
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
            // query_canceled (statement timeout), deadlock_detected, serialization_failure:
            // all worth a retry by the client
            Some(c) => matches!(
                c.code(),
                "57P01" | "57P02" | "57P03" | "53300" | "57014" | "40P01" | "40001"
            ),
            None => true,
        };
        let text = error_text(&e);
        if unavailable {
            DbError::Unavailable(text)
        } else {
            DbError::Other(text)
        }
    }
}

/// postgres::Error's Display names only the kind ("db error", "error connecting to
/// server"): the server's message, or the underlying cause, says what failed.
fn error_text(e: &postgres::Error) -> String {
    use std::error::Error as _;
    match (e.as_db_error(), e.source()) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

impl From<r2d2::Error> for DbError {
    fn from(e: r2d2::Error) -> DbError {
        DbError::Unavailable(e.to_string())
    }
}

/// A pooled connection and its statements, prepared once on first use.
pub struct Conn {
    client: Client,
    stmts: Option<Stmts>,
}

struct Stmts {
    current_user: Statement,
    insert_canonical: Statement,
    user_by_email: Statement,
    insert_user: Statement,
    throttle_hit: Statement,
    login_succeeded: Statement,
    revoke: Statement,
}

/// Wraps r2d2_postgres so that each connection carries its prepared statements.
pub struct Manager(PostgresConnectionManager<NoTls>);

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.0.connect()?;
        // A hung query must not pin a worker for ever.
        client.batch_execute("SET statement_timeout = '10s'")?;
        Ok(Conn {
            client,
            stmts: None,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// The pool type handlers draw from.
pub type Pool = r2d2::Pool<Manager>;

/// Builds the pool without connecting, so that authd starts while the database is down.
/// Connections are not tested on checkout (one round trip saved); broken ones are dropped.
pub fn pool(config: &postgres::Config, size: u32, timeout: Duration) -> Pool {
    let manager = Manager(PostgresConnectionManager::new(config.clone(), NoTls));
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(timeout)
        .test_on_check_out(false)
        .error_handler(Box::new(QuietErrors))
        .build_unchecked(manager)
}

/// r2d2 logs every failed connect at error level; one line per request is enough.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<postgres::Error> for QuietErrors {
    fn handle_error(&self, e: postgres::Error) {
        log::debug!("database connect failed: {}", error_text(&e));
    }
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Email as stored.
    pub email: String,
}

/// A user found at login, with what is needed to check the password.
pub struct LoginUser {
    /// The user.
    pub user: User,
    /// The stored password hash.
    pub password: String,
    /// Inactive users cannot log in.
    pub is_active: bool,
}

/// What the throttle says about one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Go ahead.
    Allowed,
    /// Over a limit: retry after this many seconds.
    Refused(u64),
}

impl Conn {
    fn stmts(&mut self) -> Result<&Stmts, DbError> {
        if self.stmts.is_none() {
            let c = &mut self.client;
            self.stmts = Some(Stmts {
                current_user: c.prepare(
                    "SELECT u.id, u.name, u.email FROM accounts_user u \
                     WHERE u.id = $1 AND u.is_active \
                     AND NOT EXISTS (SELECT 1 FROM authd_revoked_token r WHERE r.token_key = $2)",
                )?,
                // By canonical form; a user without one yet (made by Django since the last
                // migrate) by its stored spelling, which Rust then checks and records.
                user_by_email: c.prepare(
                    "(SELECT u.id, u.name, u.email, u.password, u.is_active, true \
                      FROM authd_user_email c JOIN accounts_user u ON u.id = c.user_id \
                      WHERE c.canonical = $1) \
                     UNION ALL \
                     (SELECT u.id, u.name, u.email, u.password, u.is_active, false \
                      FROM accounts_user u WHERE lower(u.email) = lower($2) \
                      AND NOT EXISTS (SELECT 1 FROM authd_user_email c WHERE c.user_id = u.id) \
                      ORDER BY u.id LIMIT 1) \
                     LIMIT 1",
                )?,
                insert_canonical: c.prepare(
                    "INSERT INTO authd_user_email (user_id, canonical) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING RETURNING user_id",
                )?,
                insert_user: c.prepare(
                    "INSERT INTO accounts_user (password, is_superuser, first_name, last_name, \
                     is_staff, is_active, date_joined, name, email) \
                     VALUES ($1, $4, '', '', $4, true, now(), $2, $3) \
                     ON CONFLICT DO NOTHING RETURNING id",
                )?,
                throttle_hit: c.prepare(
                    "INSERT INTO authd_login_throttle AS t (scope, key, window_start, failures) \
                     VALUES ('e', $1, now(), 1), ('i', $2, now(), 1) \
                     ON CONFLICT (scope, key) DO UPDATE SET \
                       failures = CASE WHEN t.window_start > now() - make_interval(secs => $3) \
                                  THEN t.failures + 1 ELSE 1 END, \
                       window_start = CASE WHEN t.window_start > now() - make_interval(secs => $3) \
                                  THEN t.window_start ELSE now() END \
                     RETURNING t.scope::text, t.failures, \
                       ceil(extract(epoch FROM t.window_start + make_interval(secs => $3) - now()))::float8",
                )?,
                login_succeeded: c.prepare(
                    // Rows are locked in (scope, key) order, 'e' before 'i', as throttle_hit's
                    // INSERT locks them: two logins to one account cannot deadlock.
                    "WITH locked AS (SELECT scope, key FROM authd_login_throttle \
                       WHERE (scope = 'e' AND key = $2) OR (scope = 'i' AND key = $3) \
                       ORDER BY scope, key FOR UPDATE), \
                     reset AS (UPDATE authd_login_throttle t SET failures = \
                       CASE WHEN t.scope = 'e' THEN 0 ELSE greatest(t.failures - 1, 0) END \
                       FROM locked l WHERE t.scope = l.scope AND t.key = l.key) \
                     UPDATE accounts_user SET last_login = now(), \
                       password = CASE WHEN password = $4 THEN $5 ELSE password END \
                     WHERE id = $1",
                )?,
                revoke: c.prepare(
                    "INSERT INTO authd_revoked_token (token_key, user_id, expires_at) \
                     VALUES ($1, $2, to_timestamp($3)) ON CONFLICT (token_key) DO NOTHING",
                )?,
            });
        }
        Ok(self.stmts.as_ref().expect("prepared just above"))
    }

    /// The active user `id`, unless the token keyed `token_key` was revoked: one round trip.
    pub fn current_user(&mut self, id: i64, token_key: &str) -> Result<Option<User>, DbError> {
        let st = self.stmts()?.current_user.clone();
        let row = self.client.query_opt(&st, &[&id, &token_key])?;
        Ok(row.map(|r| User {
            id: r.get(0),
            name: r.get(1),
            email: r.get(2),
        }))
    }

    /// The user whose email has the canonical form of `email` (see
    /// [`crate::domain::email_key`]).
    pub fn user_by_email(&mut self, email: &str) -> Result<Option<LoginUser>, DbError> {
        let key = crate::domain::email_key(email);
        let (st, insert) = {
            let s = self.stmts()?;
            (s.user_by_email.clone(), s.insert_canonical.clone())
        };
        let Some(r) = self.client.query_opt(&st, &[&key, &email.trim()])? else {
            return Ok(None);
        };
        let found = LoginUser {
            user: User {
                id: r.get(0),
                name: r.get(1),
                email: r.get(2),
            },
            password: r.get(3),
            is_active: r.get(4),
        };
        let recorded: bool = r.get(5);
        if !recorded {
            // Matched by spelling only: it is this account only if the forms agree.
            if crate::domain::email_key(&found.user.email) != key {
                return Ok(None);
            }
            self.client.query_opt(&insert, &[&found.user.id, &key])?;
        }
        Ok(Some(found))
    }

    /// Inserts a user (`superuser`: also staff, as Django's `createsuperuser` makes them);
    /// `None` when the email is taken (in any letter case).
    pub fn insert_user(
        &mut self,
        name: &str,
        email: &crate::domain::Email,
        password_hash: &str,
        superuser: bool,
    ) -> Result<Option<i64>, DbError> {
        let (st, canonical) = {
            let s = self.stmts()?;
            (s.insert_user.clone(), s.insert_canonical.clone())
        };
        // One transaction: a user whose canonical form is taken is never left behind.
        let mut tx = self.client.transaction()?;
        let Some(row) = tx.query_opt(&st, &[&password_hash, &name, &email.as_str(), &superuser])?
        else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        if tx
            .query_opt(&canonical, &[&id, &email.canonical()])?
            .is_none()
        {
            tx.rollback()?;
            return Ok(None);
        }
        tx.commit()?;
        Ok(Some(id))
    }

    /// Counts a login attempt against the email and the client address, and says whether
    /// either is over its limit. Counting before the password check keeps parallel
    /// attempts from slipping past the limit; a success takes the count back.
    pub fn throttle_hit(
        &mut self,
        email_key: &str,
        ip_key: &str,
        window: Duration,
        max_email: i32,
        max_ip: i32,
    ) -> Result<Throttle, DbError> {
        let st = self.stmts()?.throttle_hit.clone();
        let rows = self
            .client
            .query(&st, &[&email_key, &ip_key, &window.as_secs_f64()])?;
        let mut wait: Option<u64> = None;
        for r in rows {
            let scope: String = r.get(0);
            let failures: i32 = r.get(1);
            let left: f64 = r.get(2);
            let max = if scope == "e" { max_email } else { max_ip };
            if failures > max {
                let secs = left.max(1.0) as u64;
                wait = Some(wait.map_or(secs, |w| w.max(secs)));
            }
        }
        Ok(wait.map_or(Throttle::Allowed, Throttle::Refused))
    }

    /// Counts a registration against the client address (scope `r` of the throttle table)
    /// and says whether it may go ahead.
    pub fn register_hit(
        &mut self,
        ip_key: &str,
        window: Duration,
        max: i32,
    ) -> Result<Throttle, DbError> {
        let r = self.client.query_one(
            "INSERT INTO authd_login_throttle AS t (scope, key, window_start, failures) \
             VALUES ('r', $1, now(), 1) \
             ON CONFLICT (scope, key) DO UPDATE SET \
               failures = CASE WHEN t.window_start > now() - make_interval(secs => $2) \
                          THEN t.failures + 1 ELSE 1 END, \
               window_start = CASE WHEN t.window_start > now() - make_interval(secs => $2) \
                          THEN t.window_start ELSE now() END \
             RETURNING t.failures, \
               ceil(extract(epoch FROM t.window_start + make_interval(secs => $2) - now()))::float8",
            &[&ip_key, &window.as_secs_f64()],
        )?;
        let (count, left): (i32, f64) = (r.get(0), r.get(1));
        Ok(if count > max {
            Throttle::Refused(left.max(1.0) as u64)
        } else {
            Throttle::Allowed
        })
    }

    /// After a successful login: reset the email's count, take back the address's attempt,
    /// record `last_login`, and, given `upgrade = (old, new)`, replace the password hash
    /// unless it changed meanwhile. One statement, so all of it happens or none.
    pub fn login_succeeded(
        &mut self,
        user_id: i64,
        email_key: &str,
        ip_key: &str,
        upgrade: Option<(&str, &str)>,
    ) -> Result<(), DbError> {
        let st = self.stmts()?.login_succeeded.clone();
        let (old, new) = (upgrade.map(|u| u.0), upgrade.map(|u| u.1));
        self.client
            .execute(&st, &[&user_id, &email_key, &ip_key, &old, &new])?;
        Ok(())
    }

    /// Records a revoked token until its expiry.
    pub fn revoke(&mut self, token_key: &str, user_id: i64, exp: i64) -> Result<(), DbError> {
        // `to_timestamp` fails outside 4713 BC to 294276 AD ("timestamp out of range"): an
        // expiry after the year 9999 is stored as `infinity` (the row of a token valid that
        // long is never purged), one before the year 1 as `-infinity`.
        const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        const FIRST: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
        let at = match exp {
            e if e > LAST => f64::INFINITY,
            e if e < FIRST => f64::NEG_INFINITY,
            e => e as f64,
        };
        let st = self.stmts()?.revoke.clone();
        self.client.execute(&st, &[&token_key, &user_id, &at])?;
        Ok(())
    }

    /// One round trip, for `/readyz`.
    pub fn ping(&mut self) -> Result<(), DbError> {
        self.client.simple_query("")?;
        Ok(())
    }

    /// Deletes revocations of tokens that have expired and throttle windows that have passed.
    pub fn purge(&mut self, window: Duration) -> Result<u64, DbError> {
        let a = self.client.execute(
            "DELETE FROM authd_revoked_token WHERE expires_at < now() - interval '1 minute'",
            &[],
        )?;
        let b = self.client.execute(
            "DELETE FROM authd_login_throttle WHERE window_start < now() - make_interval(secs => $1)",
            &[&window.as_secs_f64()],
        )?;
        Ok(a + b)
    }
}

/// Why migrating failed.
#[derive(Debug)]
pub enum MigrateError {
    /// The database could not be reached; trying again later may work.
    Unreachable(String),
    /// A step failed or the data forbids it; a person must act.
    Failed(String),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateError::Unreachable(m) | MigrateError::Failed(m) => f.write_str(m),
        }
    }
}

/// Where `config` points, for messages: `host:port/dbname` (never the password).
pub fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or("?"))
}

/// Connects once and reads how many of authd's migrations the database holds:
/// `(applied, known)`.
pub fn schema_status(config: &postgres::Config) -> Result<(usize, usize), String> {
    let mut client = config.connect(NoTls).map_err(|e| error_text(&e))?;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('authd_schema_migrations') IS NOT NULL",
            &[],
        )
        .map_err(|e| error_text(&e))?
        .get(0);
    let applied: i64 = if exists {
        client
            .query_one("SELECT count(*) FROM authd_schema_migrations", &[])
            .map_err(|e| error_text(&e))?
            .get(0)
    } else {
        0
    };
    Ok((applied as usize, MIGRATIONS.len()))
}

/// Applies the schema steps not yet recorded, under an advisory lock; returns how many ran.
pub fn migrate(config: &postgres::Config) -> Result<usize, MigrateError> {
    let mut client = config.connect(NoTls).map_err(|e| {
        MigrateError::Unreachable(format!(
            "cannot connect to the database: {}",
            error_text(&e)
        ))
    })?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| {
            MigrateError::Unreachable(format!(
                "cannot take the migration lock: {}",
                error_text(&e)
            ))
        })?;
    let result = apply(&mut client).map_err(MigrateError::Failed);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

/// Applies every pending migration in one transaction: a failure anywhere (such as case
/// duplicates in a users table made elsewhere) leaves the database as it was.
fn apply(client: &mut Client) -> Result<usize, String> {
    let mut tx = client
        .transaction()
        .map_err(|e| format!("cannot begin the migration: {}", error_text(&e)))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS authd_schema_migrations (\
           version integer PRIMARY KEY, name text NOT NULL, \
           applied_at timestamp with time zone NOT NULL DEFAULT now())",
    )
    .map_err(|e| format!("cannot create authd_schema_migrations: {}", error_text(&e)))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM authd_schema_migrations", &[])
        .map_err(|e| format!("cannot read authd_schema_migrations: {}", error_text(&e)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ran = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        if *version == 1 {
            refuse_case_duplicates(&mut tx)?;
        }
        tx.batch_execute(sql)
            .map_err(|e| format!("migration {name} failed: {}", error_text(&e)))?;
        tx.execute(
            "INSERT INTO authd_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .map_err(|e| format!("migration {name}: {}", error_text(&e)))?;
        ran.push(*name);
    }
    let filled = record_canonical_emails(&mut tx)?;
    tx.commit()
        .map_err(|e| format!("cannot commit the migration: {}", error_text(&e)))?;
    if filled > 0 {
        log::info!("recorded the canonical email of {filled} users");
    }
    for name in &ran {
        log::info!("applied migration {name}");
    }
    Ok(ran.len())
}

/// Records the canonical email (computed in Rust) of every user that has none yet: all of
/// them after the migration that adds the table, and those Django made since. Addresses
/// whose canonical forms collide (two accounts for one mailbox) are named and nothing is
/// written: they must be merged or renamed first.
fn record_canonical_emails(tx: &mut postgres::Transaction<'_>) -> Result<usize, String> {
    let missing: Vec<(i64, String)> = tx
        .query(
            "SELECT u.id, u.email FROM accounts_user u WHERE NOT EXISTS \
             (SELECT 1 FROM authd_user_email c WHERE c.user_id = u.id) ORDER BY u.id",
            &[],
        )
        .map_err(|e| error_text(&e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (_, email) in &missing {
        by_key
            .entry(crate::domain::email_key(email))
            .or_default()
            .push(email.clone());
    }
    let keys: Vec<String> = by_key.keys().cloned().collect();
    for r in tx
        .query(
            "SELECT c.canonical, u.email FROM authd_user_email c JOIN accounts_user u \
             ON u.id = c.user_id WHERE c.canonical = ANY($1)",
            &[&keys],
        )
        .map_err(|e| error_text(&e))?
    {
        if let Some(list) = by_key.get_mut(&r.get::<_, String>(0)) {
            list.push(r.get(1));
        }
    }
    let clashes: Vec<String> = by_key
        .values()
        .filter(|v| v.len() > 1)
        .take(20)
        .map(|v| v.join(", "))
        .collect();
    if !clashes.is_empty() {
        return Err(format!(
            "accounts_user holds emails that reach one mailbox (the same canonical form: \
             letter case, Unicode compatibility forms, invisible characters or IDN spelling), \
             so they cannot be kept as separate accounts; merge or rename them first: {}",
            clashes.join("; ")
        ));
    }
    let st = tx
        .prepare("INSERT INTO authd_user_email (user_id, canonical) VALUES ($1, $2)")
        .map_err(|e| error_text(&e))?;
    for (id, email) in &missing {
        let key: String = crate::domain::email_key(email)
            .chars()
            .take(crate::domain::CANONICAL_MAX_CHARS)
            .collect();
        tx.execute(&st, &[id, &key]).map_err(|e| error_text(&e))?;
    }
    Ok(missing.len())
}

/// A users table made elsewhere may hold emails that differ only in case; the
/// case-insensitive unique index cannot be built then. Name them and change nothing.
fn refuse_case_duplicates(client: &mut postgres::Transaction<'_>) -> Result<(), String> {
    let exists: bool = client
        .query_one("SELECT to_regclass('accounts_user') IS NOT NULL", &[])
        .map_err(|e| error_text(&e))?
        .get(0);
    if !exists {
        return Ok(());
    }
    let dups: Vec<String> = client
        .query(
            "SELECT string_agg(email, ', ' ORDER BY email) FROM accounts_user \
             GROUP BY lower(email) HAVING count(*) > 1 ORDER BY 1 LIMIT 20",
            &[],
        )
        .map_err(|e| error_text(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if dups.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "accounts_user holds emails that differ only in letter case, so they cannot be made \
             unique without regard to case; merge or rename them first: {}",
            dups.join("; ")
        ))
    }
}
