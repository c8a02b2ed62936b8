//! `POST /api/register/`: create a user.

use serde_json::{Map, json};

use super::{string_field, user_json};
use crate::Ctx;
use crate::db::{Throttle, User};
use crate::domain::{Email, Name, Password};
use crate::error::ApiError;
use crate::http::{Reply, Request};

/// DRF's message for a taken email (the API's and `authd create-user`'s).
pub const DUPLICATE_EMAIL: &str = "user with this email already exists.";

/// Validates every field (reporting all bad ones at once), hashes the password, and
/// inserts the user; a taken email (in any letter case) is a 400 on `email`.
pub fn register(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let body = req.json_object(ctx.config.max_body_bytes)?;
    let mut errors = Map::new();
    let name = string_field(&body, "name", &mut errors);
    let email = string_field(&body, "email", &mut errors);
    let password = string_field(&body, "password", &mut errors);
    let name = name.and_then(|s| record(&mut errors, "name", Name::parse(&s)));
    let email = email.and_then(|s| record(&mut errors, "email", Email::parse(&s)));
    let password = password.and_then(|s| record(&mut errors, "password", Password::parse(&s)));
    let (Some(name), Some(email), Some(password)) = (name, email, password) else {
        return Err(ApiError::Validation(errors));
    };
    // Counted per client address before any hashing: registration is the costly path
    // with no password to guess, so it has its own limit.
    let ip_key = super::client_throttle_key(ctx, req);
    let cfg = &ctx.config;
    if let Throttle::Refused(secs) =
        ctx.conn()?
            .register_hit(&ip_key, cfg.register_window, cfg.register_max_per_ip)?
    {
        log::info!("registration throttled");
        return Err(ApiError::RegistrationThrottled(secs));
    }
    // Hash before taking a connection: bcrypt must not hold a pooled connection.
    let hash = ctx
        .hasher
        .hash(&password)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let id = ctx
        .conn()?
        .insert_user(name.as_str(), &email, &hash, false)?
        .ok_or_else(|| ApiError::field("email", DUPLICATE_EMAIL))?;
    ctx.metrics.registered();
    if ctx.config.recovery.require_verification {
        super::recovery::queue_verification(ctx, id);
    }
    let user = User {
        id,
        name: name.as_str().to_string(),
        email: email.as_str().to_string(),
    };
    Ok(Reply::json(201, &user_json(&user)))
}

fn record<T>(
    errors: &mut Map<String, serde_json::Value>,
    field: &str,
    parsed: Result<T, String>,
) -> Option<T> {
    parsed
        .map_err(|m| {
            errors.insert(field.to_string(), json!([m]));
        })
        .ok()
}
