//! `GET /healthz` (the process is up) and `GET /readyz` (the database answers).

use std::time::Duration;

use serde_json::json;

use crate::Ctx;
use crate::error::ApiError;
use crate::http::{Reply, Request};

/// Always 200 while the process serves; touches no database.
pub fn healthz(_ctx: &Ctx, _req: &Request) -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &json!({ "status": "ok" })))
}

/// 200 when the schema is in place and the database answers a round trip, else 503.
pub fn readyz(ctx: &Ctx, _req: &Request) -> Result<Reply, ApiError> {
    let wait = ctx.config.db_timeout.min(Duration::from_secs(1));
    let ready = ctx.is_migrated() && ctx.conn_within(wait).is_some_and(|mut c| c.ping().is_ok());
    Ok(if ready {
        Reply::json(200, &json!({ "status": "ok" }))
    } else {
        Reply::json(503, &json!({ "status": "unavailable" })).with("Retry-After", "2".into())
    })
}
