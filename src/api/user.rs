//! `GET /api/user/`: the user the session cookie belongs to.

use super::{presented_token, user_json};
use crate::Ctx;
use crate::error::ApiError;
use crate::http::{Reply, Request};

/// The current user; 401 when the token is missing, invalid, revoked, or its user is gone
/// or inactive. One database round trip.
pub fn current(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let token = presented_token(ctx, req)?.ok_or(ApiError::Unauthenticated)?;
    let user = super::live_user(ctx, &token)?.ok_or(ApiError::Unauthenticated)?;
    Ok(Reply::json(200, &user_json(&user)))
}
