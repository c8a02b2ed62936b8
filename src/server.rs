//! Accept loop, worker pools, graceful shutdown.
//!
//! The patched tiny_http (patches/tiny_http) owns the connections: it reads each head and
//! body on the connection's own thread, within the limits and deadlines given to
//! [`tiny_http::Server::with_limits`], and refuses what is malformed before any of this
//! code sees it. The fast workers take requests from tiny_http and route each once: a
//! request that runs bcrypt (login, register, password change) goes to the bounded hashing
//! lane, served by as many workers as cores at a lower priority, so that logins can
//! saturate the CPU without occupying the workers that cheap requests need; any other is
//! served by the fast worker that took it. A worker turns the request into an owned
//! [`Request`], runs its handler, and writes the reply.

use std::io::{self, Cursor, Read};
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::ApiError;
use crate::http::{self, Body, Reply, Request};
use crate::metrics::{self, Lane};
use crate::router::{self, Matched, Route};
use crate::{Config, Ctx, api, db};

/// Logins and registrations waiting for a hashing worker before new ones get 503.
const HASH_QUEUE: usize = 64;
/// The hashing workers' nice value (see [`spawn_workers`]).
const HASH_NICE: i32 = 10;
/// The hashing workers' scheduler slice, the shortest Linux allows (see [`lower_priority`]).
const HASH_SLICE: Duration = Duration::from_micros(100);
/// How long in-flight requests get to finish after SIGTERM.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(8);
/// Stack of a connection thread (one per open connection: parsing only).
const CONNECTION_STACK: usize = 256 * 1024;
/// Stack of a worker (handlers, bcrypt, the PostgreSQL client).
const WORKER_STACK: usize = 1024 * 1024;
/// How long a fast worker waits for a request before it hands the connection it keeps
/// back to the pool (and checks for shutdown).
const KEEP_IDLE: Duration = Duration::from_millis(200);
/// Longest request line; a longer target gets 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest header line (431).
pub const MAX_HEADER_LINE: usize = 8 * 1024;
/// Most headers in one request (431).
pub const MAX_HEADERS: usize = 100;
/// Longest head, request line and headers together (431).
pub const MAX_HEAD: usize = 64 * 1024;
/// Unanswered requests of one connection at most; a client that pipelines more waits.
pub const MAX_PIPELINED: usize = 16;

/// A bound, not yet serving, authd.
pub struct App {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    addr: SocketAddr,
    max_connections: usize,
    stop: Shutdown,
}

/// Ask a running [`App`] to stop: no new requests, in-flight ones finish.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Starts the graceful shutdown.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether shutdown has started.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Sleeps up to `d`, waking early on shutdown; true if shutdown was requested.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.requested() {
                return true;
            }
            thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
        self.requested()
    }
}

/// Raises the soft descriptor limit to the hard one: each open connection needs two.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}

/// `MAX_CONNECTIONS` when unset: what the descriptor limit allows at two descriptors per
/// connection, after the database pool and some to spare.
pub fn default_max_connections(db_pool_size: u32) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    let spare = db_pool_size as u64 + 64;
    (limit.saturating_sub(spare) / 2).clamp(16, 100_000) as usize
}

/// Logs panics through `log`: one line, with where.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error!("panic at {place}: {what}");
    }));
}

impl App {
    /// Binds the listen address (port 0 picks a free one). `migrated` says whether the
    /// schema is already in place; if not, it is retried in the background while serving.
    pub fn build(config: Config, migrated: bool) -> io::Result<App> {
        raise_fd_limit();
        let listener = TcpListener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| default_max_connections(config.db_pool_size));
        let ctx = Arc::new(Ctx::new(config));
        if migrated {
            ctx.set_migrated();
        }
        Ok(App {
            ctx,
            listener,
            addr,
            max_connections,
            stop: Shutdown::default(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection cap in force (`MAX_CONNECTIONS`, or worked out).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A handle that stops [`App::run`].
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Serves until shutdown is triggered, then lets in-flight requests finish.
    pub fn run(self) -> io::Result<()> {
        let App {
            ctx,
            listener,
            max_connections,
            stop,
            ..
        } = self;
        install_panic_hook();
        background(&ctx, &stop);
        let cfg = &ctx.config;
        let limits = tiny_http::Limits {
            max_request_line: MAX_REQUEST_LINE,
            max_header_line: MAX_HEADER_LINE,
            max_headers: MAX_HEADERS,
            max_head: MAX_HEAD,
            max_buffered_body: cfg.max_body_bytes,
            read_timeout: cfg.read_timeout,
            keepalive_timeout: cfg.keepalive_timeout,
            max_connections,
            max_pipelined: MAX_PIPELINED,
            thread_stack_size: CONNECTION_STACK,
            require_host: true,
            error_response: refusal,
        };
        let server =
            Arc::new(tiny_http::Server::with_limits(listener, limits).map_err(io::Error::other)?);
        let (hash_tx, hash_rx) = sync_channel(HASH_QUEUE);
        let mut workers = spawn_workers(
            "hasher",
            Lane::Hash,
            &ctx,
            hash_rx,
            cfg.hash_workers,
            HASH_NICE,
        )?;
        let (refuse_tx, refuse_rx) = channel();
        workers.push(spawn_refuser(&ctx, refuse_rx)?);
        let lanes = Arc::new(Lanes {
            ctx: ctx.clone(),
            hash: hash_tx,
            refuse: refuse_tx,
        });
        // A fast worker keeps its connection between requests when the pool has one for
        // every request thread (the default), so that the hashing threads and the purge
        // still draw from the rest; with a smaller pool every request hands its back.
        let keep = cfg.db_pool_size as usize >= cfg.workers + cfg.hash_workers;
        let fast = (0..cfg.workers)
            .map(|i| {
                let (server, lanes, stop) = (server.clone(), lanes.clone(), stop.clone());
                thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .stack_size(WORKER_STACK)
                    .spawn(move || {
                        if keep {
                            lanes.ctx.keep_connections_here();
                        }
                        while !stop.requested() {
                            match server.recv_timeout(KEEP_IDLE) {
                                Ok(Some(rq)) => lanes.take(rq),
                                // idle: the pool gets the connection back
                                Ok(None) => Ctx::release_kept_connection(),
                                Err(e) => log::warn!("receiving a request failed: {e}"),
                            }
                        }
                        Ctx::release_kept_connection();
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        while !stop.sleep(Duration::from_secs(3600)) {}
        // Fast workers finish the request in hand and stop taking new ones.
        for w in fast {
            let _ = w.join();
        }
        // No new connections; the lanes' senders go, so workers finish what is queued.
        drop(server);
        drop(lanes);
        let deadline = Instant::now() + DRAIN_DEADLINE;
        for w in workers {
            while !w.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
        log::info!("stopped");
        Ok(())
    }
}

/// The answer tiny_http writes itself when it refuses a request (malformed, too large,
/// too slow, another HTTP version): JSON, as every answer is.
fn refusal(status: tiny_http::StatusCode) -> tiny_http::Response<Cursor<Vec<u8>>> {
    to_response(ApiError::Wire(status.0).into_reply())
}

/// Migration retries, the dummy-hash warm-up, the purge of expired rows, and the mail
/// sender (src/mail.rs).
fn background(ctx: &Arc<Ctx>, stop: &Shutdown) {
    crate::mail::spawn_sender(ctx, stop);
    let c = ctx.clone();
    thread::spawn(move || c.hasher.warm_up());
    let (c, s) = (ctx.clone(), stop.clone());
    thread::spawn(move || {
        while !c.is_migrated() {
            match db::migrate(&c.config.database) {
                Ok(_) => {
                    log::info!("database schema is in place");
                    c.set_migrated();
                }
                Err(e) => log::warn!("migration not done, retrying: {e}"),
            }
            if !c.is_migrated() && s.sleep(Duration::from_secs(1)) {
                return;
            }
        }
        while !s.sleep(Duration::from_secs(60)) {
            let purged = c
                .pool
                .get()
                .map_err(db::DbError::from)
                .and_then(|mut conn| {
                    conn.purge(c.config.login_window.max(c.config.register_window))
                });
            match purged {
                Ok(n) if n > 0 => log::debug!("purged {n} expired rows"),
                Ok(_) => {}
                Err(e) => log::debug!("purge skipped: {e:?}"),
            }
        }
    });
}

/// A request on its way to a worker, with the router's decision.
struct Job {
    rq: tiny_http::Request,
    /// The endpoint its path names, if any (for the metrics, whatever the method).
    endpoint: Option<Route>,
    routed: Result<Matched, ApiError>,
    queued: Instant,
}

/// Where a fast worker sends what it does not serve itself: the bounded hashing lane, and
/// the thread that answers 503 when that is full.
struct Lanes {
    ctx: Arc<Ctx>,
    hash: SyncSender<Job>,
    refuse: Sender<Job>,
}

impl Lanes {
    /// Routes a request (the only time it is routed). A request that runs bcrypt goes to
    /// the hashing lane (503 at once when that is full, rather than an unbounded wait), so
    /// that logins can never occupy the fast workers; any other is served here and now.
    fn take(&self, rq: tiny_http::Request) {
        let endpoint = router::route_of(rq.url());
        let routed = endpoint
            .ok_or(ApiError::NotFound)
            .and_then(|r| r.matched(rq.method().as_str()));
        let hashes = matches!(&routed, Ok(m) if !m.preflight && m.route.hashes());
        let job = Job {
            rq,
            endpoint,
            routed,
            queued: Instant::now(),
        };
        if !hashes {
            return handle(&self.ctx, job);
        }
        // Counted before the send, so that a worker's decrement never comes first.
        self.ctx.metrics.queue(Lane::Hash, 1);
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.hash.try_send(job)
        {
            self.ctx.metrics.queue(Lane::Hash, -1);
            // Answered elsewhere: writing it can wait for the connection's earlier answers,
            // and a worker must not. (Unbounded, but no connection has more than
            // MAX_PIPELINED requests out.)
            let _ = self.refuse.send(job);
        }
    }
}

/// The thread that answers 503 for requests that found their lane full.
fn spawn_refuser(ctx: &Arc<Ctx>, rx: Receiver<Job>) -> io::Result<JoinHandle<()>> {
    let ctx = ctx.clone();
    thread::Builder::new()
        .name("refuser".into())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            for job in rx {
                let e = ApiError::Unavailable("request queue is full".into());
                let req = owned(&ctx, &job.rq, Body::None);
                finish(&ctx, job.rq, job.endpoint, &req, Err(e), job.queued);
            }
        })
}

/// Starts `n` workers on one lane. `nice` lowers their scheduling priority: the hashing
/// workers run at nice 10, so that while bcrypt saturates the cores the kernel still gives
/// cheap requests the CPU first.
fn spawn_workers(
    name: &'static str,
    lane: Lane,
    ctx: &Arc<Ctx>,
    rx: Receiver<Job>,
    n: usize,
    nice: i32,
) -> io::Result<Vec<JoinHandle<()>>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..n)
        .map(|i| {
            let (ctx, rx) = (ctx.clone(), rx.clone());
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    if nice != 0
                        && let Err(e) = lower_priority(nice)
                    {
                        log::debug!("cannot lower the priority of {name}-{i}: {e}");
                    }
                    loop {
                        let next = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match next {
                            Ok(job) => {
                                ctx.metrics.queue(lane, -1);
                                handle(&ctx, job)
                            }
                            Err(_) => return,
                        }
                    }
                })
        })
        .collect()
}

/// Lowers the calling thread's priority (Linux keeps one per thread): its nice value by
/// `by`, and its scheduler slice to the shortest there is, [`HASH_SLICE`].
///
/// The nice value gives a hashing thread a small share of a contended core. The slice
/// decides how soon it yields that core: Linux's scheduler (EEVDF) lets a thread it has
/// just picked run out its slice before a waking one may take the core, so with the default
/// slice every wake-up of a cheap request's threads (a worker, its PostgreSQL backend, the
/// client) could wait out a bcrypt thread's time. With the shortest slice they wait
/// 0.1 ms at most; across autogroups too, since a group's slice is its shortest member's.
/// When nothing else wants the cores, nothing changes: a slice is not a quota. Kernels
/// before 6.12 take the call and ignore the slice; where the call is refused, or the thread
/// has a scheduling policy of the operator's own, only the nice value changes.
fn lower_priority(by: i32) -> io::Result<()> {
    let fair = [uapi::c::SCHED_OTHER as u32, uapi::c::SCHED_BATCH as u32];
    // sched_setattr sets a nice value rather than adding to it: start from the thread's
    // own (a service may run all of authd at a nice value of its own).
    if let Ok(mut attr) = uapi::sched_getattr(0, 0)
        && fair.contains(&attr.sched_policy)
    {
        attr.sched_nice = (attr.sched_nice + by).min(19);
        attr.sched_runtime = HASH_SLICE.as_nanos() as u64;
        if uapi::sched_setattr(0, &attr, 0).is_ok() {
            return Ok(());
        }
    }
    rustix::process::nice(by).map(drop).map_err(io::Error::from)
}

/// The request as handlers see it. The body is already in memory (tiny_http read it on
/// the connection's thread, up to `MAX_BODY_BYTES`); a declared larger one is never read.
fn owned(ctx: &Ctx, rq: &tiny_http::Request, body: Body) -> Request {
    let headers: Vec<(String, String)> = rq
        .headers()
        .iter()
        .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
        .collect();
    let peer = rq.remote_addr().map(|a| {
        let forwarded = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("X-Forwarded-For"))
            .map(|(_, v)| v.as_str());
        ctx.client_ip(a.ip(), forwarded)
    });
    Request {
        method: rq.method().as_str().to_string(),
        target: rq.url().to_string(),
        headers,
        body,
        peer,
    }
}

/// Takes the body out of `rq`: from memory, since tiny_http buffered it.
fn body_of(rq: &mut tiny_http::Request, max: usize) -> io::Result<Body> {
    let chunked = rq
        .headers()
        .iter()
        .any(|h| h.field.equiv("Transfer-Encoding"));
    match rq.body_length() {
        Some(n) if n > max => return Ok(Body::TooLarge),
        Some(0) => return Ok(Body::None),
        None if !chunked => return Ok(Body::None),
        _ => {}
    }
    let mut buf = Vec::new();
    rq.as_reader().take(max as u64 + 1).read_to_end(&mut buf)?;
    Ok(if buf.len() > max {
        Body::TooLarge
    } else {
        Body::Bytes(buf)
    })
}

/// Runs one request through its handler; a panic becomes a logged 500 and the worker
/// lives on.
fn handle(ctx: &Ctx, job: Job) {
    let Job {
        mut rq,
        endpoint,
        routed,
        queued,
    } = job;
    let (body, unread) = match body_of(&mut rq, ctx.config.max_body_bytes) {
        Ok(body) => (body, None),
        Err(e) => (Body::None, Some(e)),
    };
    let req = owned(ctx, &rq, body);
    let result = match unread {
        Some(e) => {
            log::debug!("reading a buffered body failed: {e}");
            Err(ApiError::BadRequest("The request body could not be read."))
        }
        None => match routed {
            Ok(matched) => catch_unwind(AssertUnwindSafe(|| respond(ctx, &req, matched)))
                .unwrap_or_else(|_| Err(ApiError::Internal("a handler panicked".into()))),
            Err(e) => Err(e),
        },
    };
    finish(ctx, rq, endpoint, &req, result, queued);
}

/// The reply for a routed request: CORS, the CSRF check on unsafe methods, the handler.
pub fn respond(ctx: &Ctx, req: &Request, matched: Matched) -> Result<Reply, ApiError> {
    let cors = http::cors_origin(req, &ctx.config.allowed_origins);
    if matched.preflight {
        let allow = matched.route.allow();
        let mut reply = Reply::json(200, &json!({})).with("Allow", allow.into());
        if let Some(origin) = cors {
            reply = http::with_cors(reply, origin)
                .with("Access-Control-Allow-Methods", allow.into())
                .with("Access-Control-Allow-Headers", "Content-Type".into())
                .with("Access-Control-Max-Age", "600".into());
        }
        return Ok(reply);
    }
    if !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        http::check_origin(req, &ctx.config.allowed_origins)?;
    }
    let reply = match matched.route {
        Route::Register => api::register::register(ctx, req),
        Route::Login => api::login::login(ctx, req),
        Route::User => api::user::current(ctx, req),
        Route::Logout => api::logout::logout(ctx, req),
        Route::Healthz => api::health::healthz(ctx, req),
        Route::Readyz => api::health::readyz(ctx, req),
        Route::Metrics => api::meta::metrics(ctx, req),
        Route::OpenApi => api::meta::openapi(ctx, req),
        Route::TokenRefresh => api::session::refresh(ctx, req),
        Route::Sessions => api::session::list(ctx, req),
        Route::Session => api::session::delete(ctx, req),
        Route::PasswordChange => api::session::change_password(ctx, req),
        Route::PasswordReset => api::recovery::reset(ctx, req),
        Route::PasswordResetConfirm => api::recovery::reset_confirm(ctx, req),
        Route::EmailVerify => api::recovery::verify(ctx, req),
        Route::EmailVerifyResend => api::recovery::resend(ctx, req),
    };
    // CORS headers go on errors too, so that an allowed page can read them.
    let reply = reply.unwrap_or_else(|e| error_reply(req, e));
    Ok(match cors {
        Some(origin) => http::with_cors(reply, origin),
        None => reply,
    })
}

/// The reply for an error; a 5xx is logged here, once, with its causes.
fn error_reply(req: &Request, e: ApiError) -> Reply {
    if let Some(line) = e.log_line() {
        log::error!(
            "{} {}: {line}",
            log_field(&req.method),
            log_field(req.path())
        );
    }
    e.into_reply()
}

/// The tiny_http response for a reply, with the headers every response carries.
fn to_response(reply: Reply) -> tiny_http::Response<Cursor<Vec<u8>>> {
    let mut resp = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    let common = [
        ("Content-Type", reply.content_type),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-store"),
    ];
    for (k, v) in common
        .iter()
        .map(|(k, v)| (*k, *v))
        .chain(reply.headers.iter().map(|(k, v)| (*k, v.as_str())))
    {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    resp
}

/// At most this many characters of any one field go into an access-log line.
const LOG_FIELD_CHARS: usize = 200;

/// A field for the access log: control characters (and every non-ASCII character)
/// escaped, so that no field can start a line or fake another entry; cut at
/// [`LOG_FIELD_CHARS`].
pub fn log_field(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(LOG_FIELD_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if s.chars().nth(LOG_FIELD_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Writes the reply (or the error's), counts it under `endpoint` (the router's, not looked
/// up again), and logs one access line.
fn finish(
    ctx: &Ctx,
    rq: tiny_http::Request,
    endpoint: Option<Route>,
    req: &Request,
    result: Result<Reply, ApiError>,
    started: Instant,
) {
    let reply = result.unwrap_or_else(|e| error_reply(req, e));
    let status = reply.status;
    let route = endpoint.map_or(metrics::OTHER_ROUTE, Route::metrics_index);
    // Counted before the client can read the answer, so that a /metrics it asks for next
    // already includes this request.
    let took = started.elapsed();
    ctx.metrics.request(route, status, took);
    if let Err(e) = rq.respond(to_response(reply)) {
        log::debug!("writing the response failed: {e}");
    }
    if log::log_enabled!(target: "authd::access", log::Level::Info) {
        let client = req.peer.map(|a| a.to_string()).unwrap_or_default();
        log::info!(
            target: "authd::access",
            "{} {} {status} {:.1}ms {client}",
            log_field(&req.method),
            log_field(req.path()),
            took.as_secs_f64() * 1000.0
        );
    }
}
