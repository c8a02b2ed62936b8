//! `POST /api/login/`: check the password, set the session cookie.

use serde_json::Map;

use super::{string_field, user_json};
use crate::Ctx;
use crate::error::ApiError;
use crate::http::{Reply, Request};
use crate::metrics::Login;
use crate::password::Verdict;

/// Logs a user in. Unknown email, wrong password and inactive user all cost one bcrypt
/// verification and get the same 401; over the throttle's limits, 429 whatever the password.
pub fn login(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let body = req.json_object(ctx.config.max_body_bytes)?;
    let mut errors = Map::new();
    let email = string_field(&body, "email", &mut errors);
    let password = string_field(&body, "password", &mut errors);
    let (Some(email), Some(password)) = (email, password) else {
        return Err(ApiError::Validation(errors));
    };
    let email = email.trim();
    let email_key = super::email_throttle_key(email);
    let ip_key = super::client_throttle_key(ctx, req);

    let found = {
        let mut conn = ctx.conn()?;
        if let Some(secs) = super::count_password_attempt(ctx, &mut conn, &email_key, &ip_key)? {
            log::info!("login throttled");
            ctx.metrics.login(Login::Throttled);
            return Err(ApiError::Throttled(secs));
        }
        if email.contains('\0') {
            None
        } else {
            conn.user_by_email(email)?
        }
        // the connection goes back to the pool before bcrypt runs
    };
    let verdict = ctx
        .hasher
        .verify(&password, found.as_ref().map(|u| u.password.as_str()));
    let found = match found {
        Some(u) if verdict.matches() && u.is_active => u,
        _ => {
            ctx.metrics.login(Login::Failed);
            return Err(ApiError::InvalidCredentials);
        }
    };
    // A hash in an older format (PBKDF2 from the Django original) or at another cost is
    // replaced now, while the password is at hand: the next login is bcrypt at BCRYPT_COST.
    let rehash = match verdict {
        Verdict::MatchOutdated => ctx
            .hasher
            .rehash(&password)
            .map_err(|e| log::warn!("password hash not upgraded: {e}"))
            .ok(),
        _ => None,
    };
    let upgrade = rehash.as_deref().map(|new| (found.password.as_str(), new));
    let user = found.user;
    super::recovery::check_verified(ctx, user.id)?;
    let pair = ctx.conn()?.login_succeeded(
        user.id,
        &email_key,
        &ip_key,
        upgrade,
        &ctx.lifetimes(),
        &super::session::client_of(req),
    )?;
    ctx.metrics.login(Login::Succeeded);
    let (reply, _) = super::session::with_pair(ctx, Reply::json(200, &user_json(&user)), &pair)?;
    Ok(reply)
}
