//! The queries of account recovery: one-time tokens, verified addresses, the outbox.

use std::time::Duration;

use postgres::NoTls;
use postgres::fallible_iterator::FallibleIterator;

use super::{Conn, DbError, error_text};
use crate::recovery::Purpose;

/// A reset or verification mail asked for by address (`POST /api/password/reset/`,
/// `POST /api/email/verify/resend/`), with what the throttle needs.
pub struct MailRequest<'a> {
    /// Which mail.
    pub purpose: Purpose,
    /// The canonical form of the address (the lookup).
    pub email_key: &'a str,
    /// The throttle's key for the address (the canonical form, cut to the column's 320).
    pub email_throttle_key: &'a str,
    /// The address as sent, trimmed (for users Django made since the last migrate).
    pub email: &'a str,
    /// The client's throttle key.
    pub ip_key: &'a str,
    /// The throttle window and its limits.
    pub window: Duration,
    /// Requests per email per window.
    pub max_per_email: i32,
    /// Requests per client address per window.
    pub max_per_ip: i32,
    /// The token to queue and how long it lives.
    pub token: &'a Queueable<'a>,
}

/// A new token and what its mail needs.
pub struct Queueable<'a> {
    /// The token, in clear (for the mail only).
    pub token: &'a str,
    /// Its SHA-256 (what the token table keeps).
    pub hash: &'a [u8],
    /// The mail's `Message-ID`, kept across retries.
    pub message_id: &'a str,
    /// The token's lifetime (`PASSWORD_RESET_TTL`).
    pub ttl: Duration,
}

/// A mail claimed from the outbox, its row locked until the delivery is settled.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The outbox row.
    pub id: i64,
    /// Reset or verification.
    pub purpose: Purpose,
    /// The address on record.
    pub recipient: String,
    /// The user's name, for the `To` header.
    pub recipient_name: String,
    /// The token the mail carries.
    pub token: String,
    /// `Message-ID`, the same on every attempt.
    pub message_id: String,
    /// How long the token lives from when it was made.
    pub lifetime: Duration,
    /// Failed attempts so far.
    pub attempts: i32,
}

/// How one attempt to deliver went, as the outbox must record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Accepted by the mail server (or written to the log): the row goes.
    Delivered,
    /// Refused for good (an SMTP 5xx, an address the mail library cannot write): the row
    /// goes, with a warning.
    Rejected(String),
    /// Failed for now (4xx, the server unreachable): tried again later. `server_down`
    /// also puts off every other mail that is due, rather than trying each of them.
    Failed {
        /// The reason, for the row and the log.
        error: String,
        /// The server could not be reached at all.
        server_down: bool,
    },
}

/// SQL for the next attempt of a row that failed, from the row's age: every 5 s for the
/// first 10 minutes, then a quarter of its age (exponential in effect), at most an hour.
/// `now()` is the claiming transaction's start, so the 5 s count from the attempt's start.
const NEXT_ATTEMPT: &str = "now() + CASE WHEN now() - created_at < interval '10 minutes' \
     THEN interval '5 seconds' \
     ELSE least(greatest((now() - created_at) / 4, interval '30 seconds'), interval '1 hour') END";

/// Makes the token row and the outbox row for the user `target` (a CTE yielding `id`,
/// `email`, `name`, `password`), and wakes the senders (`NOTIFY authd_outbox`; a request
/// for a mail notifies whether or not it makes one, so that both cost the same).
fn queue_sql(target: &str, purpose: &str, hash: &str, ttl: &str, token: &str, mid: &str) -> String {
    format!(
        "{target}, \
         made AS (INSERT INTO authd_recovery_token \
             (token_hash, purpose, user_id, email, password_fp, expires_at) \
           SELECT {hash}, {purpose}, t.id, t.email, sha256(convert_to(t.password, 'UTF8')), \
             now() + make_interval(secs => {ttl}) FROM target t \
           RETURNING token_hash, email, expires_at, pg_notify('authd_outbox', '')::text) \
         INSERT INTO authd_outbox (token_hash, kind, recipient, recipient_name, token, \
             message_id, expires_at) \
         SELECT m.token_hash, {purpose}, m.email, t.name, {token}, {mid}, m.expires_at \
         FROM made m, target t RETURNING id"
    )
}

/// Connects a connection of its own (the mail sender's, outside the request pool), which
/// listens for new mail.
pub fn connect(config: &postgres::Config) -> Result<Conn, DbError> {
    let mut client = config.connect(NoTls).map_err(|e| {
        DbError::Unavailable(format!(
            "cannot connect to the database: {}",
            error_text(&e)
        ))
    })?;
    client.batch_execute("SET statement_timeout = '10s'; LISTEN authd_outbox")?;
    Ok(Conn::new(client))
}

impl Conn {
    /// Counts the request against the email and the client address and, within both limits,
    /// for an active user with that address (and, for verification, not yet verified),
    /// makes a token and queues its mail to the address on record. One statement of the
    /// same shape whatever the address, so that known, unknown and throttled addresses cost
    /// the same. Whether a mail was queued.
    pub fn request_mail(&mut self, r: &MailRequest<'_>) -> Result<bool, DbError> {
        let target = "WITH hit AS (INSERT INTO authd_login_throttle AS t \
               (scope, key, window_start, failures) \
               VALUES ('p', $12, now(), 1), ('q', $2, now(), 1) \
               ON CONFLICT (scope, key) DO UPDATE SET \
                 failures = CASE WHEN t.window_start > now() - make_interval(secs => $3) \
                            THEN t.failures + 1 ELSE 1 END, \
                 window_start = CASE WHEN t.window_start > now() - make_interval(secs => $3) \
                            THEN t.window_start ELSE now() END \
               RETURNING t.scope::text AS scope, t.failures, \
                 pg_notify('authd_outbox', '')::text AS woken), \
             allowed AS (SELECT count(*) = 0 AS ok FROM hit \
               WHERE (scope = 'p' AND failures > $4) OR (scope = 'q' AND failures > $5)), \
             found AS ((SELECT u.id, u.email, u.name, u.password, u.is_active \
                 FROM authd_user_email c JOIN accounts_user u ON u.id = c.user_id \
                 WHERE c.canonical = $1) \
               UNION ALL \
               (SELECT u.id, u.email, u.name, u.password, u.is_active FROM accounts_user u \
                 WHERE lower(u.email) = lower($6) \
                 AND NOT EXISTS (SELECT 1 FROM authd_user_email c WHERE c.user_id = u.id) \
                 ORDER BY u.id LIMIT 1) \
               LIMIT 1), \
             target AS (SELECT f.id, f.email, f.name, f.password FROM found f, allowed a \
               WHERE a.ok AND f.is_active AND f.password NOT LIKE '!%' \
               AND ($7::text = 'r' OR NOT EXISTS (SELECT 1 FROM authd_email_verified v \
                 WHERE v.user_id = f.id AND v.email = f.email)))";
        let sql = queue_sql(target, "$7::text", "$8", "$9", "$10", "$11");
        let q = r.token;
        let rows = self.client.query(
            &sql,
            &[
                &r.email_key,
                &r.ip_key,
                &r.window.as_secs_f64(),
                &r.max_per_email,
                &r.max_per_ip,
                &r.email,
                &r.purpose.code(),
                &q.hash,
                &q.ttl.as_secs_f64(),
                &q.token,
                &q.message_id,
                &r.email_throttle_key,
            ],
        )?;
        Ok(!rows.is_empty())
    }

    /// Queues a verification mail to active user `user` (at registration); whether one was.
    pub fn queue_verification(&mut self, user: i64, q: &Queueable<'_>) -> Result<bool, DbError> {
        let target = "WITH target AS (SELECT id, email, name, password FROM accounts_user \
             WHERE id = $1 AND is_active)";
        let sql = queue_sql(target, "'v'", "$2", "$3", "$4", "$5");
        let rows = self.client.query(
            &sql,
            &[
                &user,
                &q.hash,
                &q.ttl.as_secs_f64(),
                &q.token,
                &q.message_id,
            ],
        )?;
        Ok(!rows.is_empty())
    }

    /// The user a live reset token belongs to and the password hash it was made for (the
    /// current one, or the token is void).
    pub fn reset_target(&mut self, hash: &[u8]) -> Result<Option<(i64, String)>, DbError> {
        Ok(self
            .client
            .query_opt(
                "SELECT u.id, u.password FROM authd_recovery_token t \
                 JOIN accounts_user u ON u.id = t.user_id \
                 WHERE t.token_hash = $1 AND t.purpose = 'r' AND t.expires_at > now() \
                 AND u.is_active AND t.password_fp = sha256(convert_to(u.password, 'UTF8'))",
                &[&hash],
            )?
            .map(|r| (r.get(0), r.get(1))))
    }

    /// In one transaction: the reset token `hash` used up, the new password hash stored
    /// (only over `old`, the one the token was checked against), every reset token of the
    /// user dropped, every session of the user ended. How many sessions ended; `None` when
    /// the token or the password went meanwhile (nothing changed).
    pub fn reset_password(
        &mut self,
        hash: &[u8],
        user: i64,
        old: &str,
        new: &str,
    ) -> Result<Option<u64>, DbError> {
        self.in_transaction(|c| {
            let used = c.client.execute(
                "DELETE FROM authd_recovery_token WHERE token_hash = $1 AND purpose = 'r' \
                 AND user_id = $2 AND expires_at > now()",
                &[&hash, &user],
            )?;
            if used != 1 {
                return Ok(None);
            }
            let changed = c.client.execute(
                "UPDATE accounts_user SET password = $3 WHERE id = $1 AND password = $2 \
                 AND is_active",
                &[&user, &old, &new],
            )?;
            if changed != 1 {
                return Ok(None);
            }
            c.client.execute(
                "DELETE FROM authd_recovery_token WHERE user_id = $1 AND purpose = 'r'",
                &[&user],
            )?;
            c.revoke_sessions(user, None, "password_reset").map(Some)
        })
    }

    /// Uses up the verification token `hash` and records its address as verified, if the
    /// token is live, made for this password hash and for the address still on record.
    /// The user id, or `None` for a bad token. One statement.
    pub fn verify_email(&mut self, hash: &[u8]) -> Result<Option<i64>, DbError> {
        Ok(self
            .client
            .query_opt(
                "WITH used AS (DELETE FROM authd_recovery_token t USING accounts_user u \
                   WHERE t.token_hash = $1 AND t.purpose = 'v' AND t.expires_at > now() \
                   AND u.id = t.user_id AND u.is_active AND t.email = u.email \
                   AND t.password_fp = sha256(convert_to(u.password, 'UTF8')) \
                   RETURNING t.user_id, t.email) \
                 INSERT INTO authd_email_verified (user_id, email) \
                 SELECT user_id, email FROM used \
                 ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, verified_at = now() \
                 RETURNING user_id",
                &[&hash],
            )?
            .map(|r| r.get(0)))
    }

    /// Whether user `user`'s address on record is the one they verified.
    pub fn email_verified(&mut self, user: i64) -> Result<bool, DbError> {
        Ok(self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM authd_email_verified v \
                 JOIN accounts_user u ON u.id = v.user_id WHERE v.user_id = $1 \
                 AND v.email = u.email)",
                &[&user],
            )?
            .get(0))
    }

    /// Claims the mail due first that no other sender holds (`FOR UPDATE SKIP LOCKED`),
    /// hands it to `deliver` with its row locked, and records the outcome in the same
    /// transaction: two senders never hold one row, and a delivered row is gone when the
    /// lock is released. `None` when nothing is due.
    pub fn deliver_next(
        &mut self,
        deliver: impl FnOnce(&Queued) -> Attempt,
    ) -> Result<Option<Attempt>, DbError> {
        self.in_transaction(|c| {
            let Some(r) = c.client.query_opt(
                "SELECT id, kind::text, recipient, recipient_name, token, message_id, \
                   extract(epoch FROM expires_at - created_at)::float8, attempts \
                 FROM authd_outbox WHERE next_attempt_at <= now() AND expires_at > now() \
                 ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )?
            else {
                return Ok(None);
            };
            let kind: String = r.get(1);
            let Some(purpose) = Purpose::from_code(&kind) else {
                return Err(DbError::Other(format!(
                    "outbox row of unknown kind {kind:?}"
                )));
            };
            let queued = Queued {
                id: r.get(0),
                purpose,
                recipient: r.get(2),
                recipient_name: r.get(3),
                token: r.get(4),
                message_id: r.get(5),
                lifetime: Duration::from_secs_f64(r.get::<_, f64>(6).max(0.0)),
                attempts: r.get(7),
            };
            let outcome = deliver(&queued);
            match &outcome {
                Attempt::Delivered | Attempt::Rejected(_) => {
                    c.client
                        .execute("DELETE FROM authd_outbox WHERE id = $1", &[&queued.id])?;
                }
                Attempt::Failed { error, server_down } => {
                    let error: String = error.chars().take(500).collect();
                    c.client.execute(
                        &format!(
                            "UPDATE authd_outbox SET attempts = attempts + 1, last_error = $2, \
                             next_attempt_at = {NEXT_ATTEMPT} WHERE id = $1"
                        ),
                        &[&queued.id, &error],
                    )?;
                    if *server_down {
                        c.client.execute(
                            &format!(
                                "UPDATE authd_outbox SET next_attempt_at = {NEXT_ATTEMPT} \
                                 WHERE id IN (SELECT id FROM authd_outbox \
                                   WHERE next_attempt_at <= now() AND id <> $1 \
                                   FOR UPDATE SKIP LOCKED)"
                            ),
                            &[&queued.id],
                        )?;
                    }
                }
            }
            Ok(Some(outcome))
        })
    }

    /// Waits up to `d` for a notification of new mail (on a connection from [`connect`]);
    /// whether one came.
    pub fn wait_for_mail(&mut self, d: Duration) -> Result<bool, DbError> {
        let mut notifications = self.client.notifications();
        let woke = notifications.timeout_iter(d).next()?.is_some();
        // One round of deliveries serves every notification that came meanwhile.
        while notifications.iter().next()?.is_some() {}
        Ok(woke)
    }

    /// Drops recovery tokens past their expiry, and with them their mails still in the
    /// outbox; how many tokens.
    pub fn drop_expired_tokens(&mut self) -> Result<u64, DbError> {
        Ok(self.client.execute(
            "DELETE FROM authd_recovery_token WHERE expires_at <= now()",
            &[],
        )?)
    }

    /// Runs `f` in a transaction on this connection: committed when it returns
    /// `Ok(Some(_))`, rolled back on `Ok(None)` or an error. (Written out rather than with
    /// `Client::transaction`, so that `f` can use the other methods of [`Conn`].)
    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<Option<T>, DbError>,
    ) -> Result<Option<T>, DbError> {
        self.client.batch_execute("BEGIN")?;
        let result = f(self);
        let end = match &result {
            Ok(Some(_)) => "COMMIT",
            _ => "ROLLBACK",
        };
        match (self.client.batch_execute(end), result) {
            (Ok(()), result) => result,
            // The first error says what went wrong; a broken connection is then dropped by
            // the pool (`has_broken`).
            (Err(_), Err(first)) => Err(first),
            (Err(e), Ok(_)) => Err(e.into()),
        }
    }
}
