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

use std::cell::{Cell, RefCell};
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
    /// On a thread that keeps its connection ([`Ctx::keep_connections_here`]), the one it
    /// used last, if it has it.
    pub fn conn(&self) -> Result<PoolConn, ApiError> {
        if !self.is_migrated() {
            return Err(ApiError::Unavailable(
                "the schema is not migrated yet (database unreachable)".into(),
            ));
        }
        self.checkout(None)
            .map_err(|e| ApiError::from(db::DbError::from(e)))
    }

    /// The connection [`Ctx::conn`] would give, waiting at most `wait` for one from the
    /// pool; `None` if there is none in time.
    pub fn conn_within(&self, wait: std::time::Duration) -> Option<PoolConn> {
        self.checkout(Some(wait)).ok()
    }

    fn checkout(&self, wait: Option<std::time::Duration>) -> Result<PoolConn, r2d2::Error> {
        let keep = KEEPER.with(Cell::get) == self.id();
        let conn = match keep.then(|| KEPT.with(|k| k.borrow_mut().take())).flatten() {
            Some(kept) => kept,
            None => match wait {
                Some(wait) => self.pool.get_timeout(wait)?,
                None => self.pool.get()?,
            },
        };
        Ok(PoolConn {
            conn: Some(conn),
            keep,
        })
    }

    /// From now on this thread keeps the connection it used last, instead of handing it
    /// back to the pool after each request (the fast workers do, when the pool has a
    /// connection for every request thread). A connection that moves between threads on
    /// every request costs its new thread cache misses and its allocator cross-thread
    /// frees: at 64 connections, GET /api/user/ against the bare stack went from 0.89-0.93x
    /// to 0.97-1.00x (BENCHMARKS.md, "Kept connections").
    pub fn keep_connections_here(&self) {
        KEEPER.with(|k| k.set(self.id()));
    }

    /// Hands the connection this thread keeps back to the pool (a fast worker does when no
    /// request has come for a while, so that an idle authd holds none, as the pool would).
    pub fn release_kept_connection() {
        let _ = KEPT.try_with(|k| k.borrow_mut().take());
    }

    fn id(&self) -> usize {
        self as *const Ctx as usize
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

thread_local! {
    /// The `Ctx` (by address) whose connection this thread keeps; 0 for none.
    static KEEPER: Cell<usize> = const { Cell::new(0) };
    /// The connection this thread keeps between requests.
    static KEPT: RefCell<Option<r2d2::PooledConnection<db::Manager>>> = const { RefCell::new(None) };
}

/// A connection taken with [`Ctx::conn`]: back to the pool when dropped, or kept by the
/// thread that keeps its connection (unless it broke or reached [`db::MAX_CONN_AGE`]: the
/// pool then drops it and connects anew when asked).
pub struct PoolConn {
    conn: Option<r2d2::PooledConnection<db::Manager>>,
    keep: bool,
}

impl std::ops::Deref for PoolConn {
    type Target = db::Conn;
    fn deref(&self) -> &db::Conn {
        self.conn.as_ref().expect("taken only in drop")
    }
}

impl std::ops::DerefMut for PoolConn {
    fn deref_mut(&mut self) -> &mut db::Conn {
        self.conn.as_mut().expect("taken only in drop")
    }
}

impl Drop for PoolConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // Not kept after a panic in its handler either: the connection may be in the middle
        // of something (the pool gets it, as it did before keeping).
        if !self.keep || std::thread::panicking() || conn.is_broken() {
            return; // to the pool, which drops a broken connection
        }
        // A second connection taken while the first was out goes back to the pool; so does
        // this one if the thread is ending.
        let _ = KEPT.try_with(|k| {
            let mut k = k.borrow_mut();
            if k.is_none() {
                *k = Some(conn);
            }
        });
    }
}
