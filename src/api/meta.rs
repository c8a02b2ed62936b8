//! What describes the service: `GET /metrics` (Prometheus) and `GET /api/openapi.yaml`.

use crate::Ctx;
use crate::error::ApiError;
use crate::http::{Reply, Request};
use crate::metrics::Pool;

/// The OpenAPI 3.1 description of the API, as committed at the repository's root.
const OPENAPI: &str = include_str!("../../openapi.yaml");

/// The Prometheus text exposition (format 0.0.4); 404 when `METRICS_ENABLED=false`.
pub fn metrics(ctx: &Ctx, _req: &Request) -> Result<Reply, ApiError> {
    if !ctx.config.metrics_enabled {
        return Err(ApiError::NotFound);
    }
    let state = ctx.pool.state();
    let pool = Pool {
        in_use: state.connections - state.idle_connections,
        idle: state.idle_connections,
        max: ctx.pool.max_size(),
    };
    Ok(Reply::text(
        "text/plain; version=0.0.4; charset=utf-8",
        ctx.metrics.render(&pool).into_bytes(),
    ))
}

/// The OpenAPI document, to read or to feed to a client generator or a fuzzer.
pub fn openapi(_ctx: &Ctx, _req: &Request) -> Result<Reply, ApiError> {
    Ok(Reply::text("application/yaml", OPENAPI.as_bytes().to_vec()))
}
