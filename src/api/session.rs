//! Sessions: `POST /api/token/refresh/`, `GET /api/sessions/`, `DELETE /api/sessions/<id>/`,
//! `POST /api/password/change/`, and what logout and login share with them (the cookie
//! pair, the session the request belongs to).

use std::time::Duration;

use serde_json::{Map, json};

use super::string_field;
use crate::Ctx;
use crate::db::{Refreshed, SessionClient, SessionPair};
use crate::domain::Password;
use crate::error::ApiError;
use crate::http::{Reply, Request};
use crate::token::Verified;

/// The longest `User-Agent` kept with a session, in characters.
const MAX_USER_AGENT: usize = 512;

/// The client a session records: the `User-Agent` and address of this request.
pub fn client_of(req: &Request) -> SessionClient {
    SessionClient {
        user_agent: req
            .header("User-Agent")
            .unwrap_or("")
            .chars()
            .take(MAX_USER_AGENT)
            .collect(),
        ip: req.peer.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

/// `reply` with both cookies set for `pair`: the access token lives `JWT_TTL`, never past
/// the session's absolute end; the refresh cookie the idle timeout, capped the same way.
/// Returns the reply and the access token's lifetime in seconds.
pub fn with_pair(ctx: &Ctx, reply: Reply, pair: &SessionPair) -> Result<(Reply, u64), ApiError> {
    let left = pair.left.max(1.0) as u64;
    let access = ctx.config.jwt_ttl.as_secs().min(left).max(1);
    let issued = ctx
        .tokens
        .issue_session(pair.user_id, pair.session, Duration::from_secs(access))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let refresh_age = (pair.idle_left.max(1.0) as u64).min(left);
    let refresh = ctx.refresh.issue(pair.session, pair.generation);
    let reply = reply
        .with(
            "Set-Cookie",
            ctx.cookie.set(&issued.token, Duration::from_secs(access)),
        )
        .with(
            "Set-Cookie",
            ctx.refresh_cookie
                .set(&refresh, Duration::from_secs(refresh_age)),
        );
    Ok((reply, access))
}

/// `reply` with both cookies cleared, with the attributes they were set with.
pub fn clearing(ctx: &Ctx, reply: Reply) -> Reply {
    reply
        .with("Set-Cookie", ctx.cookie.clear())
        .with("Set-Cookie", ctx.refresh_cookie.clear())
}

/// A 401 that clears both cookies.
fn unauthenticated(ctx: &Ctx) -> Reply {
    clearing(ctx, ApiError::Unauthenticated.into_reply())
}

/// The access token of a request, verified, whose session (if it has one) is live, with its
/// user; 401 otherwise.
fn authenticated(ctx: &Ctx, req: &Request) -> Result<(Verified, crate::db::User), ApiError> {
    let token = super::presented_token(ctx, req)?.ok_or(ApiError::Unauthenticated)?;
    let user = super::live_user(ctx, &token)?.ok_or(ApiError::Unauthenticated)?;
    Ok((token, user))
}

/// Rotates the refresh token in the `refresh` cookie and sets a new pair.
pub fn refresh(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    // No body is needed; one that is there must be JSON.
    req.json_object(ctx.config.max_body_bytes)?;
    let presented = req.cookie(&ctx.refresh_cookie.name)?;
    let Some((session, generation)) = presented.as_deref().and_then(|t| ctx.refresh.verify(t))
    else {
        return Ok(unauthenticated(ctx));
    };
    let outcome = ctx
        .conn()?
        .refresh(session, generation, &ctx.lifetimes(), &client_of(req))?;
    let pair = match outcome {
        Refreshed::Rotated(pair) | Refreshed::Again(pair) => pair,
        Refreshed::Reused { session } => {
            log::warn!(
                target: "authd::session",
                "refresh token reused: session {session} revoked"
            );
            return Ok(unauthenticated(ctx));
        }
        Refreshed::Dead => return Ok(unauthenticated(ctx)),
        Refreshed::Busy => {
            return Err(ApiError::Conflict(
                "The session is being refreshed by another request; try again.",
            ));
        }
    };
    let placeholder = Reply::json(200, &json!({}));
    let (reply, expires_in) = with_pair(ctx, placeholder, &pair)?;
    let body = json!({
        "expires_in": expires_in,
        "session_expires_in": pair.left.max(0.0) as u64,
    });
    Ok(Reply {
        body: serde_json::to_vec(&body).unwrap_or_default(),
        ..reply
    })
}

/// The caller's live sessions, newest first; `current` marks the one of this request.
pub fn list(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let (token, user) = authenticated(ctx, req)?;
    let sessions = ctx.conn()?.sessions(user.id)?;
    let items: Vec<_> = sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "created_at": s.created_at,
                "last_used_at": s.last_used_at,
                "expires_at": s.expires_at,
                "user_agent": s.user_agent,
                "ip": s.ip,
                "current": Some(s.id) == token.session,
            })
        })
        .collect();
    Ok(Reply::json(200, &json!(items)))
}

/// Ends one of the caller's sessions: 204, the cookies cleared if it is this one; 404
/// for an id that is not a live session of the caller.
pub fn delete(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let (token, user) = authenticated(ctx, req)?;
    let id = crate::router::session_id(req.path()).ok_or(ApiError::NotFound)?;
    if !ctx.conn()?.revoke_session(user.id, id, "deleted")? {
        return Err(ApiError::NotFound);
    }
    let reply = Reply {
        status: 204,
        body: Vec::new(),
        headers: Vec::new(),
        content_type: "application/json",
    };
    Ok(if token.session == Some(id) {
        clearing(ctx, reply)
    } else {
        reply
    })
}

/// Checks `old_password` (a wrong one counts as a failed login for the email), validates
/// `new_password` as registration does, then in one transaction stores the new hash, ends
/// every other session and rotates this one.
pub fn change_password(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let (token, user) = authenticated(ctx, req)?;
    let session = token.session.ok_or(ApiError::Unauthenticated)?;
    let body = req.json_object(ctx.config.max_body_bytes)?;
    let mut errors = Map::new();
    let old = string_field(&body, "old_password", &mut errors);
    let new = string_field(&body, "new_password", &mut errors);
    let (Some(old), Some(new)) = (old, new) else {
        return Err(ApiError::Validation(errors));
    };
    let email_key = super::email_throttle_key(&user.email);
    let ip_key = super::client_throttle_key(ctx, req);
    let stored = {
        let mut conn = ctx.conn()?;
        if let Some(secs) = super::count_password_attempt(ctx, &mut conn, &email_key, &ip_key)? {
            return Err(ApiError::Throttled(secs));
        }
        conn.password_of(user.id)?
            .ok_or(ApiError::Unauthenticated)?
            .0
    };
    if !ctx.hasher.verify(&old, Some(&stored)).matches() {
        return Err(ApiError::field("old_password", "Wrong password."));
    }
    // The right old password is no failed login: the attempt counted above is taken back.
    ctx.conn()?.throttle_undo(&email_key, &ip_key)?;
    let new = Password::parse(&new).map_err(|m| ApiError::field("new_password", m))?;
    let hash = ctx
        .hasher
        .hash(&new)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let changed =
        ctx.conn()?
            .change_password(user.id, session, &stored, &hash, &ctx.lifetimes())?;
    let Some((pair, others)) = changed else {
        return Err(ApiError::Conflict(
            "The password or the session changed meanwhile; try again.",
        ));
    };
    log::info!(
        target: "authd::session",
        "password changed for user {}: {others} other sessions ended",
        user.id
    );
    let (reply, _) = with_pair(ctx, Reply::json(200, &json!({"message": "success"})), &pair)?;
    Ok(reply)
}
