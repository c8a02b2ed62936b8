//! The endpoint handlers, one file per group, and what they share.

pub mod health;
pub mod login;
pub mod logout;
pub mod meta;
pub mod recovery;
pub mod register;
pub mod session;
pub mod user;

use serde_json::{Map, Value, json};

use crate::Ctx;
use crate::db::{Conn, Throttle, User};
use crate::error::ApiError;
use crate::http::Request;
use crate::token::Verified;

/// The user as every endpoint shows it.
pub fn user_json(u: &User) -> Value {
    json!({ "id": u.id, "name": u.name, "email": u.email })
}

/// The session token the client presented in its cookie, verified; `None` when there is
/// none or it fails any check (the reason goes to the debug log).
pub fn presented_token(ctx: &Ctx, req: &Request) -> Result<Option<Verified>, ApiError> {
    let Some(token) = req.cookie(&ctx.cookie.name)? else {
        return Ok(None);
    };
    match ctx.tokens.verify(&token) {
        Ok(v) => Ok(Some(v)),
        Err(why) => {
            log::debug!("token refused: {why}");
            Ok(None)
        }
    }
}

/// The user of a verified access token if it still holds: its session live (or, for a
/// token from before sessions, not revoked) and the user active. One round trip.
pub fn live_user(ctx: &Ctx, token: &Verified) -> Result<Option<User>, ApiError> {
    let mut conn = ctx.conn()?;
    Ok(match token.session {
        Some(session) => conn.current_session_user(token.user_id, session)?,
        None => conn.current_user(token.user_id, &token.revocation_key)?,
    })
}

/// Longest throttle key kept (`authd_login_throttle.key` is `varchar(320)`); longer emails
/// cannot belong to a user anyway.
pub const MAX_THROTTLE_KEY_CHARS: usize = 320;

/// The throttle's key for an email, valid or not: one per mailbox (the canonical form the
/// account lookup uses too), cut to the column. PostgreSQL text cannot hold NUL: such an
/// email is counted under a stand-in character (no user can have one).
pub fn email_throttle_key(email: &str) -> String {
    crate::domain::email_key(email)
        .replace('\0', "\u{fffd}")
        .chars()
        .take(MAX_THROTTLE_KEY_CHARS)
        .collect()
}

/// Counts one attempt at an account's password (a login, or a password change's old
/// password) against the login throttle (`LOGIN_WINDOW`, `LOGIN_MAX_FAILURES`,
/// `LOGIN_MAX_FAILURES_PER_IP`): the seconds to wait when the email or the client is over
/// its limit.
pub fn count_password_attempt(
    ctx: &Ctx,
    conn: &mut Conn,
    email_key: &str,
    ip_key: &str,
) -> Result<Option<u64>, ApiError> {
    let cfg = &ctx.config;
    let hit = conn.throttle_hit(
        email_key,
        ip_key,
        cfg.login_window,
        cfg.login_max_failures,
        cfg.login_max_failures_per_ip,
    )?;
    Ok(match hit {
        Throttle::Refused(secs) => Some(secs),
        Throttle::Allowed => None,
    })
}

/// The throttle's key for the request's client address (IPv6 per network).
pub fn client_throttle_key(ctx: &Ctx, req: &Request) -> String {
    req.peer
        .map(|ip| crate::proxy::throttle_key(ip, ctx.config.throttle_ipv6_prefix))
        .unwrap_or_default()
}

/// Takes the string field `name` from a JSON object, in DRF's words when it is missing,
/// null, or not a string; a failure is recorded in `errors`.
pub fn string_field(
    body: &Map<String, Value>,
    name: &str,
    errors: &mut Map<String, Value>,
) -> Option<String> {
    let message = match body.get(name) {
        Some(Value::String(s)) => return Some(s.clone()),
        None => "This field is required.",
        Some(Value::Null) => "This field may not be null.",
        Some(_) => "Not a valid string.",
    };
    errors.insert(name.to_string(), json!([message]));
    None
}
