//! Account recovery: `POST /api/password/reset/`, `POST /api/password/reset/confirm/`,
//! `POST /api/email/verify/`, `POST /api/email/verify/resend/`.
//!
//! A request for a mail answers the same, in the same time, whatever the address: the one
//! statement it makes has the same shape for a known, an unknown and a throttled address,
//! and nothing else (no bcrypt, no SMTP) depends on which. The mail itself is sent later,
//! by the outbox's sender ([`crate::mail`]).

use serde_json::{Map, json};

use super::string_field;
use crate::Ctx;
use crate::db::DbError;
use crate::db::recovery::{MailRequest, Queueable};
use crate::domain::{Email, Password};
use crate::error::ApiError;
use crate::http::{Reply, Request};
use crate::recovery::{NewToken, Purpose, new_token, token_hash};

/// The answer to a reset request, always.
pub const RESET_SENT: &str = "Password reset e-mail has been sent.";
/// The answer to a resend request, always.
pub const VERIFY_SENT: &str = "Verification e-mail has been sent.";
/// Login's 403 while the address is not verified (with `REQUIRE_EMAIL_VERIFICATION`).
pub const NOT_VERIFIED: &str = "E-mail address is not verified.";

/// A bad, used, expired or void token, of either purpose.
fn invalid_token() -> ApiError {
    ApiError::field("token", "Invalid or expired token.")
}

/// A fresh token with what its outbox row needs.
fn fresh(ctx: &Ctx) -> Result<(NewToken, String), ApiError> {
    let t = new_token().map_err(|e| ApiError::Internal(e.into()))?;
    let mid = crate::mail::message_id(&ctx.config.recovery, &t.message_key);
    Ok((t, mid))
}

/// `POST /api/password/reset/` `{"email"}`: 200 whatever the address.
pub fn reset(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    request_mail(ctx, req, Purpose::Reset, RESET_SENT)
}

/// `POST /api/email/verify/resend/` `{"email"}`: 200 whatever the address.
pub fn resend(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    request_mail(ctx, req, Purpose::Verify, VERIFY_SENT)
}

/// The two mail requests: only an address that is not one is a 400. A database that cannot
/// be reached is a 503 for every address alike; any other failure is logged and answered
/// as a success, so that it cannot tell one address from another either.
fn request_mail(
    ctx: &Ctx,
    req: &Request,
    purpose: Purpose,
    answer: &'static str,
) -> Result<Reply, ApiError> {
    let body = req.json_object(ctx.config.max_body_bytes)?;
    let mut errors = Map::new();
    let email = string_field(&body, "email", &mut errors).ok_or(ApiError::Validation(errors))?;
    let email = Email::parse(&email).map_err(|m| ApiError::field("email", m))?;
    let cfg = &ctx.config;
    let ip_key = super::client_throttle_key(ctx, req);
    let throttle_key = super::email_throttle_key(email.canonical());
    let (token, message_id) = fresh(ctx)?;
    let queued = ctx.conn()?.request_mail(&MailRequest {
        purpose,
        email_key: email.canonical(),
        email_throttle_key: &throttle_key,
        email: email.as_str(),
        ip_key: &ip_key,
        window: cfg.login_window,
        max_per_email: cfg.recovery.max_per_email,
        max_per_ip: cfg.recovery.max_per_ip,
        token: &Queueable {
            token: &token.token,
            hash: &token.hash,
            message_id: &message_id,
            ttl: cfg.recovery.token_ttl,
        },
    });
    match queued {
        Ok(_) => {}
        Err(DbError::Unavailable(cause)) => return Err(ApiError::Unavailable(cause.into())),
        Err(DbError::Other(cause)) => {
            log::error!(target: "authd::recovery", "a mail could not be queued: {cause}");
        }
    }
    Ok(Reply::json(200, &json!({ "detail": answer })))
}

/// `POST /api/password/reset/confirm/` `{"token", "new_password"}`: the new password
/// (validated as at registration) replaces the old one, the token is used up, and every
/// session of the user ends.
pub fn reset_confirm(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let body = req.json_object(ctx.config.max_body_bytes)?;
    let mut errors = Map::new();
    let token = string_field(&body, "token", &mut errors);
    let new = string_field(&body, "new_password", &mut errors).and_then(|p| {
        Password::parse(&p)
            .map_err(|m| {
                errors.insert("new_password".into(), json!([m]));
            })
            .ok()
    });
    let (Some(token), Some(new)) = (token, new) else {
        return Err(ApiError::Validation(errors));
    };
    let hash = token_hash(&token).ok_or_else(invalid_token)?;
    let (user, old) = ctx.conn()?.reset_target(&hash)?.ok_or_else(invalid_token)?;
    // Hashed with no connection held: bcrypt must not pin a pooled connection.
    let new = ctx
        .hasher
        .hash(&new)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let ended = ctx
        .conn()?
        .reset_password(&hash, user, &old, &new)?
        .ok_or_else(invalid_token)?;
    log::info!(
        target: "authd::recovery",
        "password reset for user {user}: {ended} sessions ended"
    );
    Ok(Reply::json(200, &json!({"message": "success"})))
}

/// `POST /api/email/verify/` `{"token"}`: the address the token was sent to is verified.
pub fn verify(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let body = req.json_object(ctx.config.max_body_bytes)?;
    let mut errors = Map::new();
    let token = string_field(&body, "token", &mut errors).ok_or(ApiError::Validation(errors))?;
    let hash = token_hash(&token).ok_or_else(invalid_token)?;
    let user = ctx.conn()?.verify_email(&hash)?.ok_or_else(invalid_token)?;
    log::info!(target: "authd::recovery", "e-mail address of user {user} verified");
    Ok(Reply::json(200, &json!({"message": "success"})))
}

/// Queues the verification mail of a user just registered. A failure is logged, not the
/// registration's: the user can ask again (`/api/email/verify/resend/`).
pub fn queue_verification(ctx: &Ctx, user: i64) {
    let queued = fresh(ctx).map_err(|e| e.to_string()).and_then(|(t, mid)| {
        let q = Queueable {
            token: &t.token,
            hash: &t.hash,
            message_id: &mid,
            ttl: ctx.config.recovery.token_ttl,
        };
        ctx.conn()
            .map_err(|e| e.to_string())?
            .queue_verification(user, &q)
            .map_err(|e| format!("{e:?}"))
    });
    if let Err(e) = queued {
        log::error!(
            target: "authd::recovery",
            "the verification mail of user {user} could not be queued: {e}"
        );
    }
}

/// With `REQUIRE_EMAIL_VERIFICATION`, login's check after a correct password: 403 until
/// the address on record is verified.
pub fn check_verified(ctx: &Ctx, user: i64) -> Result<(), ApiError> {
    if ctx.config.recovery.require_verification && !ctx.conn()?.email_verified(user)? {
        return Err(ApiError::Forbidden(NOT_VERIFIED));
    }
    Ok(())
}
