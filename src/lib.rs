//! authd: a small, fast, safe user-authentication server (register, login with a JWT in an
//! HttpOnly cookie, current user, logout) over PostgreSQL.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod cookie;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod password;
pub mod proxy;
pub mod recovery;
pub mod router;
pub mod server;
pub mod session;
pub mod token;

use std::sync::atomic::{AtomicBool, Ordering};

pub use config::Config;
pub use server::{App, Shutdown};

use cookie::CookieSpec;
use error::ApiError;
use password::Hasher;
use token::Tokens;

/// What every handler shares: settings, the pool, the token keys, the hasher.
pub struct Ctx {
    /// The settings.
    pub config: Config,
    /// PostgreSQL connections.
    pub pool: db::Pool,
    /// JWT signer and verifier.
    pub tokens: Tokens,
    /// bcrypt.
    pub hasher: Hasher,
    /// How the access-token cookie is written.
    pub cookie: CookieSpec,
    /// How the refresh-token cookie is written.
    pub refresh_cookie: CookieSpec,
    /// Refresh-token signer and verifier.
    pub refresh: session::RefreshTokens,
    /// Counters for `GET /metrics`.
    pub metrics: metrics::Metrics,
    migrated: AtomicBool,
}

impl Ctx {
    /// Builds the shared state; connects to nothing yet.
    pub fn new(config: Config) -> Ctx {
        Ctx {
            pool: db::pool(&config.database, config.db_pool_size, config.db_timeout),
            tokens: Tokens::new(&config.secret_key, config.jwt_ttl),
            hasher: Hasher::new(config.bcrypt_cost),
            cookie: CookieSpec {
                name: config.cookie_name.clone(),
                secure: config.cookie_secure,
                same_site: "Lax",
            },
            refresh_cookie: CookieSpec {
                name: config.refresh_cookie_name.clone(),
                secure: config.refresh_cookie_secure,
                same_site: "Strict",
            },
            refresh: session::RefreshTokens::new(&config.secret_key),
            metrics: Default::default(),
            migrated: AtomicBool::new(false),
            config,
        }
    }

    /// A pooled connection, or 503 when the schema is not in place or none is free in time.
    pub fn conn(&self) -> Result<r2d2::PooledConnection<db::Manager>, ApiError> {
        if !self.is_migrated() {
            return Err(ApiError::Unavailable(
                "the schema is not migrated yet (database unreachable)".into(),
            ));
        }
        self.pool
            .get()
            .map_err(|e| ApiError::from(db::DbError::from(e)))
    }

    /// Whether the schema is known to be in place.
    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    /// The client's address: the peer, or the one a trusted proxy forwarded in
    /// `X-Forwarded-For` (every such header, in order).
    pub fn client_ip<'a>(
        &self,
        peer: std::net::IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> std::net::IpAddr {
        if self.config.trusted_proxies.is_empty() {
            return peer;
        }
        self.config.trusted_proxies.client_ip(peer, forwarded_for)
    }

    /// Session lifetimes, from the settings.
    pub fn lifetimes(&self) -> db::Lifetimes {
        db::Lifetimes {
            idle: self.config.session_idle_timeout,
            max_age: self.config.session_max_age,
            grace: self.config.refresh_reuse_grace,
        }
    }

    /// Records that the schema is in place.
    pub fn set_migrated(&self) {
        self.migrated.store(true, Ordering::Release);
    }
}
