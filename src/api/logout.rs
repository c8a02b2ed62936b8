//! `POST /api/logout/`: revoke the presented token and clear the cookie.

use serde_json::json;

use super::presented_token;
use crate::Ctx;
use crate::error::ApiError;
use crate::http::{Reply, Request};

/// Answers 200 with or without a valid token. A valid token is revoked in the database
/// first, so that it fails on every instance; if that cannot be written the client is told
/// (503), never a success that did not happen.
pub fn logout(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    if let Some(token) = presented_token(ctx, req)? {
        ctx.conn()?
            .revoke(&token.revocation_key, token.user_id, token.exp)?;
    }
    Ok(Reply::json(200, &json!({ "message": "success" })).with("Set-Cookie", ctx.cookie.clear()))
}
