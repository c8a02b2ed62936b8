//! The connection pool, schema migrations and every query authd makes.

use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

pub mod recovery;

/// Schema steps, applied in order; the files are never edited once landed.
/// The columns [`SessionPair::from_row`] reads, in its order, for a `RETURNING` clause:
/// the session id, its generation, and the seconds left to its absolute and idle ends
/// (database clock).
macro_rules! session_pair {
    () => {
        "id, generation, extract(epoch FROM expires_at - now())::float8, \
         extract(epoch FROM idle_expires_at - now())::float8"
    };
}

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
    (4, "0004_sessions", include_str!("../sql/0004_sessions.sql")),
    (5, "0005_recovery", include_str!("../sql/0005_recovery.sql")),
    (
        6,
        "0006_session_user",
        include_str!("../sql/0006_session_user.sql"),
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
    born: Instant,
}

/// How long a connection serves before it is closed and replaced when next handed back
/// (r2d2's `max_lifetime` closes only idle ones, and a fast worker's kept connection is not
/// idle while requests keep coming).
pub const MAX_CONN_AGE: Duration = Duration::from_secs(30 * 60);

struct Stmts {
    current_user: Statement,
    current_session_user: Statement,
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
        Ok(Conn::new(client))
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.is_broken()
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
    /// A connection with nothing prepared yet, its age counted from now.
    fn new(client: Client) -> Conn {
        Conn {
            client,
            stmts: None,
            born: Instant::now(),
        }
    }

    /// Whether the connection to PostgreSQL is gone, or has lived [`MAX_CONN_AGE`]: the
    /// pool then drops it rather than take it back.
    pub fn is_broken(&self) -> bool {
        self.client.is_closed() || self.born.elapsed() >= MAX_CONN_AGE
    }

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
                login_succeeded: c.prepare(concat!(
                    // Rows are locked in (scope, key) order, 'e' before 'i', as throttle_hit's
                    // INSERT locks them: two logins to one account cannot deadlock.
                    "WITH locked AS (SELECT scope, key FROM authd_login_throttle \
                       WHERE (scope = 'e' AND key = $2) OR (scope = 'i' AND key = $3) \
                       ORDER BY scope, key FOR UPDATE), \
                     reset AS (UPDATE authd_login_throttle t SET failures = \
                       CASE WHEN t.scope = 'e' THEN 0 ELSE greatest(t.failures - 1, 0) END \
                       FROM locked l WHERE t.scope = l.scope AND t.key = l.key), \
                     u AS (UPDATE accounts_user SET last_login = now(), \
                       password = CASE WHEN password = $4 THEN $5 ELSE password END \
                     WHERE id = $1 RETURNING id, name, email, is_active) \
                     INSERT INTO authd_session (user_id, idle_expires_at, expires_at, user_agent, ip, \
                       user_name, user_email, user_active) \
                     SELECT u.id, least(now() + make_interval(secs => $6), now() + make_interval(secs => $7)), \
                       now() + make_interval(secs => $7), $8, $9, u.name, u.email, u.is_active FROM u \
                     RETURNING ",
                    session_pair!()
                ))?,
                current_session_user: c.prepare(
                    // One row: the session carries its user's name, email and is_active, kept
                    // exact by triggers (sql/0006_session_user.sql). The session's id is the
                    // only key: with `user_id = $n` here too, a generic plan may take the
                    // user_id index and filter every session of the user; the token's user is
                    // compared with the row's below instead.
                    "SELECT user_id, user_name, user_email FROM authd_session \
                     WHERE id = $1 AND user_active AND revoked_at IS NULL \
                     AND expires_at > now() AND idle_expires_at > now()",
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

    /// Takes back one attempt that [`Conn::throttle_hit`] counted, for a password that was
    /// right after all (a password change whose old password matches: only a wrong one
    /// counts as a failed login). Rows are locked in (scope, key) order, as there.
    pub fn throttle_undo(&mut self, email_key: &str, ip_key: &str) -> Result<(), DbError> {
        self.client.execute(
            "WITH locked AS (SELECT scope, key FROM authd_login_throttle \
               WHERE (scope = 'e' AND key = $1) OR (scope = 'i' AND key = $2) \
               ORDER BY scope, key FOR UPDATE) \
             UPDATE authd_login_throttle t SET failures = greatest(t.failures - 1, 0) \
             FROM locked l WHERE t.scope = l.scope AND t.key = l.key",
            &[&email_key, &ip_key],
        )?;
        Ok(())
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
    /// ... and starts a session (`lifetimes`, seen from `client`), in the same statement.
    pub fn login_succeeded(
        &mut self,
        user_id: i64,
        email_key: &str,
        ip_key: &str,
        upgrade: Option<(&str, &str)>,
        lifetimes: &Lifetimes,
        client: &SessionClient,
    ) -> Result<SessionPair, DbError> {
        let st = self.stmts()?.login_succeeded.clone();
        let (old, new) = (upgrade.map(|u| u.0), upgrade.map(|u| u.1));
        let row = self.client.query_one(
            &st,
            &[
                &user_id,
                &email_key,
                &ip_key,
                &old,
                &new,
                &lifetimes.idle.as_secs_f64(),
                &lifetimes.max_age.as_secs_f64(),
                &client.user_agent,
                &client.ip,
            ],
        )?;
        Ok(SessionPair::from_row(user_id, &row))
    }

    /// The active user `id` if session `session` is live (not revoked, not past its idle
    /// or absolute end): one round trip, one primary-key probe.
    pub fn current_session_user(&mut self, id: i64, session: i64) -> Result<Option<User>, DbError> {
        let st = self.stmts()?.current_session_user.clone();
        let row = self.client.query_opt(&st, &[&session])?;
        Ok(row
            .map(|r| User {
                id: r.get(0),
                name: r.get(1),
                email: r.get(2),
            })
            .filter(|u| u.id == id))
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
        // Ended sessions (an access token of theirs then finds no row: 401 as before).
        let c = self.client.execute(
            "DELETE FROM authd_session WHERE least(expires_at, idle_expires_at, revoked_at) \
             < now() - interval '1 minute'",
            &[],
        )?;
        Ok(a + b + c)
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
/// whose canonical forms collide (two accounts for one mailbox) are named and the caller's
/// transaction is not committed: they must be merged or renamed first.
///
/// The users are read and recorded in batches of [`CANONICAL_BATCH`], by id, so that the
/// memory this takes does not grow with the table: a database taken over from Django may
/// hold millions of users, and authd may run on a small host.
fn record_canonical_emails(tx: &mut postgres::Transaction<'_>) -> Result<usize, String> {
    let e = |e: postgres::Error| error_text(&e);
    let next = tx
        .prepare(
            "SELECT u.id, u.email FROM accounts_user u WHERE u.id > $1 AND NOT EXISTS \
             (SELECT 1 FROM authd_user_email c WHERE c.user_id = u.id) ORDER BY u.id LIMIT $2",
        )
        .map_err(e)?;
    // A form already taken (by an earlier user, or earlier in the same batch) is skipped
    // here and named below.
    let insert = tx
        .prepare(
            "INSERT INTO authd_user_email (user_id, canonical) \
             SELECT * FROM unnest($1::bigint[], $2::text[]) \
             ON CONFLICT (canonical) DO NOTHING RETURNING user_id",
        )
        .map_err(e)?;
    let holder = tx
        .prepare(
            "SELECT u.email FROM authd_user_email c JOIN accounts_user u ON u.id = c.user_id \
             WHERE c.canonical = $1",
        )
        .map_err(e)?;
    let (mut after, mut recorded, mut clashed) = (i64::MIN, 0, 0);
    let mut named: Vec<String> = Vec::new();
    loop {
        let rows = tx.query(&next, &[&after, &CANONICAL_BATCH]).map_err(e)?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        let (ids, keys): (Vec<i64>, Vec<String>) = rows
            .iter()
            .map(|r| {
                let key = crate::domain::email_key(r.get(1))
                    .chars()
                    .take(crate::domain::CANONICAL_MAX_CHARS)
                    .collect();
                (r.get::<_, i64>(0), key)
            })
            .unzip();
        let inserted: std::collections::HashSet<i64> = tx
            .query(&insert, &[&ids, &keys])
            .map_err(e)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        recorded += inserted.len();
        for (row, key) in rows.iter().zip(&keys) {
            if inserted.contains(&row.get::<_, i64>(0)) {
                continue;
            }
            clashed += 1;
            if named.len() < 20 {
                let email: String = row.get(1);
                named.push(match tx.query_opt(&holder, &[key]).map_err(e)? {
                    Some(r) => format!("{}, {email}", r.get::<_, String>(0)),
                    None => email,
                });
            }
        }
    }
    if clashed > 0 {
        return Err(format!(
            "accounts_user holds emails that reach one mailbox (the same canonical form: \
             letter case, Unicode compatibility forms, invisible characters or IDN spelling), \
             so they cannot be kept as separate accounts; merge or rename them first \
             ({clashed} addresses): {}",
            named.join("; ")
        ));
    }
    Ok(recorded)
}

/// Users read and recorded at a time by [`record_canonical_emails`].
const CANONICAL_BATCH: i64 = 10_000;

/// How long sessions live (`SESSION_IDLE_TIMEOUT`, `SESSION_MAX_AGE`, `REFRESH_REUSE_GRACE`).
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Ends after this long without a refresh.
    pub idle: Duration,
    /// Ends this long after its login.
    pub max_age: Duration,
    /// A just-retired refresh token still gets the current pair this long.
    pub grace: Duration,
}

/// Who a session belongs to, as its list shows it: those of the last login or refresh.
#[derive(Debug, Clone, Default)]
pub struct SessionClient {
    /// `User-Agent`, cut to 512 characters.
    pub user_agent: String,
    /// Client address.
    pub ip: String,
}

/// A session's current generation and how long it has left (database clock, seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionPair {
    /// Its user.
    pub user_id: i64,
    /// The session id.
    pub session: i64,
    /// The current refresh-token generation.
    pub generation: i32,
    /// Seconds until the absolute end.
    pub left: f64,
    /// Seconds until the idle end (never past the absolute one).
    pub idle_left: f64,
}

impl SessionPair {
    fn from_row(user_id: i64, r: &postgres::Row) -> SessionPair {
        SessionPair {
            user_id,
            session: r.get(0),
            generation: r.get(1),
            left: r.get(2),
            idle_left: r.get(3),
        }
    }
}

/// What a refresh came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Refreshed {
    /// Rotated: a new generation.
    Rotated(SessionPair),
    /// The token just retired, within the grace: the current generation again.
    Again(SessionPair),
    /// A retired token past the grace (or older): the session is now revoked.
    Reused { session: i64 },
    /// No such session, or revoked, expired, or its user inactive.
    Dead,
    /// The session's lock was not free within 2 s.
    Busy,
}

/// One live session, for `GET /api/sessions/`.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: i64,
    /// Login time, ISO 8601 UTC.
    pub created_at: String,
    /// Last login or refresh, ISO 8601 UTC.
    pub last_used_at: String,
    /// When it ends unless refreshed (the idle end, never past the absolute one).
    pub expires_at: String,
    /// `User-Agent` of the last login or refresh.
    pub user_agent: String,
    /// Client address of the last login or refresh.
    pub ip: String,
}

const ISO: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

impl Conn {
    /// Rotates session `session` presented at `generation`, under the row's lock (at most
    /// 2 s): the current generation rotates; the one just retired, within the grace of that
    /// rotation, gets the current one again (the grace is not extended); an older one is
    /// reuse and revokes the session.
    pub fn refresh(
        &mut self,
        session: i64,
        generation: i32,
        lifetimes: &Lifetimes,
        client: &SessionClient,
    ) -> Result<Refreshed, DbError> {
        let mut tx = self.client.transaction()?;
        tx.batch_execute("SET LOCAL lock_timeout = '2s'")?;
        let row = match tx.query_opt(
            "SELECT s.user_id, s.generation, s.revoked_at IS NULL AND s.expires_at > now() \
               AND s.idle_expires_at > now() AND u.is_active, \
               s.rotated_at IS NOT NULL AND now() < s.rotated_at + make_interval(secs => $2), \
               extract(epoch FROM s.expires_at - now())::float8, \
               extract(epoch FROM s.idle_expires_at - now())::float8 \
             FROM authd_session s JOIN accounts_user u ON u.id = s.user_id \
             WHERE s.id = $1 FOR UPDATE OF s",
            &[&session, &lifetimes.grace.as_secs_f64()],
        ) {
            Ok(row) => row,
            Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                return Ok(Refreshed::Busy);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else {
            return Ok(Refreshed::Dead);
        };
        let (user_id, current, live, in_grace): (i64, i32, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if !live {
            return Ok(Refreshed::Dead);
        }
        let outcome = if generation == current {
            let r = tx.query_one(
                concat!(
                    "UPDATE authd_session SET generation = generation + 1, rotated_at = now(), \
                       last_used_at = now(), \
                       idle_expires_at = least(now() + make_interval(secs => $2), expires_at), \
                       user_agent = $3, ip = $4 \
                     WHERE id = $1 RETURNING ",
                    session_pair!()
                ),
                &[
                    &session,
                    &lifetimes.idle.as_secs_f64(),
                    &client.user_agent,
                    &client.ip,
                ],
            )?;
            Refreshed::Rotated(SessionPair::from_row(user_id, &r))
        } else if generation == current - 1 && in_grace {
            Refreshed::Again(SessionPair {
                user_id,
                session,
                generation: current,
                left: row.get(4),
                idle_left: row.get(5),
            })
        } else {
            tx.execute(
                "UPDATE authd_session SET revoked_at = now(), revoked_reason = 'reuse' \
                 WHERE id = $1",
                &[&session],
            )?;
            Refreshed::Reused { session }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// The user of session `session`, whether or not it is still live.
    pub fn session_user(&mut self, session: i64) -> Result<Option<i64>, DbError> {
        Ok(self
            .client
            .query_opt(
                "SELECT user_id FROM authd_session WHERE id = $1",
                &[&session],
            )?
            .map(|r| r.get(0)))
    }

    /// Ends session `session` of `user` (if live); whether it was.
    pub fn revoke_session(
        &mut self,
        user: i64,
        session: i64,
        reason: &str,
    ) -> Result<bool, DbError> {
        Ok(self.client.execute(
            "UPDATE authd_session SET revoked_at = now(), revoked_reason = $3 \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now() \
             AND idle_expires_at > now()",
            &[&session, &user, &reason],
        )? == 1)
    }

    /// Ends every live session of `user` but `except`; how many.
    pub fn revoke_sessions(
        &mut self,
        user: i64,
        except: Option<i64>,
        reason: &str,
    ) -> Result<u64, DbError> {
        Ok(self.client.execute(
            "UPDATE authd_session SET revoked_at = now(), revoked_reason = $3 \
             WHERE user_id = $1 AND id IS DISTINCT FROM $2 AND revoked_at IS NULL \
             AND expires_at > now() AND idle_expires_at > now()",
            &[&user, &except, &reason],
        )?)
    }

    /// The live sessions of `user`, newest first.
    pub fn sessions(&mut self, user: i64) -> Result<Vec<SessionInfo>, DbError> {
        let sql = format!(
            "SELECT id, to_char(created_at AT TIME ZONE 'UTC', {ISO}), \
               to_char(last_used_at AT TIME ZONE 'UTC', {ISO}), \
               to_char(least(idle_expires_at, expires_at) AT TIME ZONE 'UTC', {ISO}), \
               user_agent, ip FROM authd_session \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() \
               AND idle_expires_at > now() \
             ORDER BY created_at DESC, id DESC"
        );
        Ok(self
            .client
            .query(&sql, &[&user])?
            .iter()
            .map(|r| SessionInfo {
                id: r.get(0),
                created_at: r.get(1),
                last_used_at: r.get(2),
                expires_at: r.get(3),
                user_agent: r.get(4),
                ip: r.get(5),
            })
            .collect())
    }

    /// The password hash of active user `user`.
    pub fn password_of(&mut self, user: i64) -> Result<Option<(String, String)>, DbError> {
        Ok(self
            .client
            .query_opt(
                "SELECT password, email FROM accounts_user WHERE id = $1 AND is_active",
                &[&user],
            )?
            .map(|r| (r.get(0), r.get(1))))
    }

    /// In one transaction: the new hash (only over the one checked, `old`), every other
    /// session of `user` ended, `session` rotated. `None` when the hash changed meanwhile.
    pub fn change_password(
        &mut self,
        user: i64,
        session: i64,
        old: &str,
        new: &str,
        lifetimes: &Lifetimes,
    ) -> Result<Option<(SessionPair, u64)>, DbError> {
        let mut tx = self.client.transaction()?;
        if tx.execute(
            "UPDATE accounts_user SET password = $3 WHERE id = $1 AND password = $2",
            &[&user, &old, &new],
        )? != 1
        {
            return Ok(None);
        }
        let others = tx.execute(
            "UPDATE authd_session SET revoked_at = now(), revoked_reason = 'password' \
             WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL",
            &[&user, &session],
        )?;
        let Some(r) = tx.query_opt(
            concat!(
                "UPDATE authd_session SET generation = generation + 1, rotated_at = now(), \
                   last_used_at = now(), \
                   idle_expires_at = least(now() + make_interval(secs => $3), expires_at) \
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now() \
                 RETURNING ",
                session_pair!()
            ),
            &[&session, &user, &lifetimes.idle.as_secs_f64()],
        )?
        else {
            return Ok(None);
        };
        tx.commit()?;
        Ok(Some((SessionPair::from_row(user, &r), others)))
    }

    /// `is_active` off and every session ended, for `authd deactivate-user`; the user id.
    pub fn deactivate(&mut self, email: &str) -> Result<Option<(i64, u64)>, DbError> {
        let Some(user) = self.user_by_email(email)? else {
            return Ok(None);
        };
        let id = user.user.id;
        let mut tx = self.client.transaction()?;
        tx.execute(
            "UPDATE accounts_user SET is_active = false WHERE id = $1",
            &[&id],
        )?;
        let n = tx.execute(
            "UPDATE authd_session SET revoked_at = now(), revoked_reason = 'deactivated' \
             WHERE user_id = $1 AND revoked_at IS NULL",
            &[&id],
        )?;
        tx.commit()?;
        Ok(Some((id, n)))
    }
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
