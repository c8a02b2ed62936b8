//! Accept loop, worker pools, graceful shutdown.
//!
//! tiny_http reads requests on its own connection threads and queues them; a pump thread
//! moves each one into one of two bounded lanes: the hashing lane (login, register: bcrypt)
//! with as many workers as cores, and the fast lane for everything else, so that logins
//! can saturate the CPU without occupying the workers that cheap requests need.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::ApiError;
use crate::http::{self, Reply, Req};
use crate::metrics::{self, Lane};
use crate::router::{self, Route};
use crate::{Config, Ctx, api, db, guard};

/// Set by the panic hook when code inside tiny_http panics: its accept thread panics (rather
/// than returning an error) when it cannot duplicate an accepted socket for lack of
/// descriptors, and then nothing accepts any more.
static TINY_HTTP_PANICKED: AtomicBool = AtomicBool::new(false);

/// Logs panics through `log` (one line, with where), and notes those inside tiny_http.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if place.contains("tiny_http") {
            TINY_HTTP_PANICKED.store(true, Ordering::Release);
        }
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error!("panic at {place}: {what}");
    }));
}

/// Requests waiting for a fast worker before new ones get 503.
const FAST_QUEUE: usize = 1024;
/// Logins and registrations waiting for a hashing worker before new ones get 503.
const HASH_QUEUE: usize = 64;
/// The hashing workers' nice value (see [`spawn_workers`]).
const HASH_NICE: i32 = 10;
/// How long in-flight requests get to finish after SIGTERM.
const DRAIN_DEADLINE: Duration = Duration::from_secs(8);

/// A bound, not yet serving, authd.
pub struct App {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    addr: SocketAddr,
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

impl App {
    /// Binds the listen address (port 0 picks a free one). `migrated` says whether the
    /// schema is already in place; if not, it is retried in the background while serving.
    pub fn build(config: Config, migrated: bool) -> io::Result<App> {
        guard::raise_fd_limit();
        let listener = TcpListener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        // Inherited by accepted sockets: a client that stops reading cannot pin a worker in
        // a write. (A receive timeout here would also time out accept(), ending tiny_http's
        // accept thread; the guard keeps read deadlines instead.)
        socket2::SockRef::from(&listener).set_write_timeout(Some(config.read_timeout))?;
        let ctx = Arc::new(Ctx::new(config));
        if migrated {
            ctx.set_migrated();
        }
        Ok(App {
            ctx,
            listener,
            addr,
            stop: Shutdown::default(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
            stop,
            ..
        } = self;
        install_panic_hook();
        background(&ctx, &stop);
        guard::spawn(
            listener.local_addr()?,
            guard::raw_fd(&listener),
            ctx.activity.clone(),
            ctx.config.read_timeout,
            ctx.config.keepalive_timeout,
            stop.clone(),
        );
        let (fast_tx, fast_rx) = sync_channel(FAST_QUEUE);
        let (hash_tx, hash_rx) = sync_channel(HASH_QUEUE);
        let mut workers =
            spawn_workers("worker", Lane::Fast, &ctx, fast_rx, ctx.config.workers, 0)?;
        workers.extend(spawn_workers(
            "hasher",
            Lane::Hash,
            &ctx,
            hash_rx,
            ctx.config.hash_workers,
            HASH_NICE,
        )?);
        let lanes = Lanes {
            ctx: ctx.clone(),
            fast: fast_tx,
            hash: hash_tx,
        };
        let server = tiny_http::Server::from_listener(listener.try_clone()?, None)
            .map_err(io::Error::other)?;
        let pumps = Arc::new(Mutex::new(Vec::new()));
        pump(server, Arc::new(listener), lanes, stop, pumps.clone());
        // Every pump has stopped taking requests once its successor chain has; join them.
        loop {
            let next = pumps.lock().map(|mut p| p.pop()).unwrap_or(None);
            match next {
                Some(h) => {
                    let _ = h.join();
                }
                None => break,
            }
        }
        // The lanes' senders are gone: workers finish what is queued, then exit.
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

/// Migration retries, the dummy-hash warm-up, and the purge of expired rows.
fn background(ctx: &Arc<Ctx>, stop: &Shutdown) {
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
                .and_then(|mut conn| conn.purge(c.config.login_window));
            match purged {
                Ok(n) if n > 0 => log::debug!("purged {n} expired rows"),
                Ok(_) => {}
                Err(e) => log::debug!("purge skipped: {e:?}"),
            }
        }
    });
}

/// The two bounded queues in front of the worker pools.
#[derive(Clone)]
struct Lanes {
    ctx: Arc<Ctx>,
    fast: SyncSender<tiny_http::Request>,
    hash: SyncSender<tiny_http::Request>,
}

impl Lanes {
    /// Queues a request on its lane; a full lane answers 503 at once rather than letting
    /// the request wait unboundedly.
    fn dispatch(&self, rq: tiny_http::Request) {
        if let Some(peer) = rq.remote_addr() {
            let chunked = rq
                .headers()
                .iter()
                .any(|h| h.field.equiv("Transfer-Encoding"));
            let body = (!chunked).then(|| rq.body_length()).flatten();
            self.ctx.activity.begin(*peer, body);
        }
        let hashes = matches!(
            router::route(rq.method().as_str(), rq.url()),
            Ok(m) if !m.preflight && m.route.hashes()
        );
        let (lane, which) = if hashes {
            (&self.hash, Lane::Hash)
        } else {
            (&self.fast, Lane::Fast)
        };
        // Counted before the send, so that a worker's decrement never comes first.
        self.ctx.metrics.queue(which, 1);
        match lane.try_send(rq) {
            Ok(()) => {}
            Err(TrySendError::Full(rq)) | Err(TrySendError::Disconnected(rq)) => {
                self.ctx.metrics.queue(which, -1);
                let started = Instant::now();
                let reply = ApiError::Unavailable("request queue is full".into()).into_reply();
                let client = self.ctx.client_ip(&rq);
                finish(&self.ctx, rq, reply, started, client);
            }
        }
    }
}

/// Moves requests from one tiny_http server into the lanes until shutdown. tiny_http's
/// accept thread ends at its first accept error (e.g. out of descriptors); this starts a
/// successor on the same listening socket, so authd accepts again as soon as it can, while
/// it keeps serving the connections the old acceptor already holds.
fn pump(
    server: tiny_http::Server,
    listener: Arc<TcpListener>,
    lanes: Lanes,
    stop: Shutdown,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut successor = false;
    while !stop.requested() {
        let failed = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(rq)) => {
                lanes.dispatch(rq);
                None
            }
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        let failed = failed.or_else(|| {
            (!successor && TINY_HTTP_PANICKED.swap(false, Ordering::AcqRel))
                .then(|| "a tiny_http thread panicked (out of descriptors?)".to_string())
        });
        if let Some(e) = failed
            && !successor
        {
            successor = true;
            log::error!("accepting connections failed: {e}; starting a new acceptor");
            let (listener, lanes, stop, list) =
                (listener.clone(), lanes.clone(), stop.clone(), pumps.clone());
            let handle = thread::spawn(move || restart(listener, lanes, stop, list));
            if let Ok(mut p) = pumps.lock() {
                p.push(handle);
            }
        }
    }
}

/// Starts a new tiny_http server on `listener`, backing off while that fails.
fn restart(
    listener: Arc<TcpListener>,
    lanes: Lanes,
    stop: Shutdown,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut backoff = Duration::from_millis(10);
    while !stop.sleep(backoff) {
        match listener
            .try_clone()
            .map_err(|e| e.to_string())
            .and_then(|l| tiny_http::Server::from_listener(l, None).map_err(|e| e.to_string()))
        {
            Ok(server) => {
                log::info!("accepting connections again");
                return pump(server, listener, lanes, stop, pumps);
            }
            Err(e) => {
                log::warn!("cannot restart the acceptor yet: {e}");
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Starts `n` workers on one lane. `nice` lowers their scheduling priority: the hashing
/// workers run at nice 10, so that while bcrypt saturates the cores the kernel still gives
/// cheap requests the CPU first.
fn spawn_workers(
    name: &'static str,
    lane: Lane,
    ctx: &Arc<Ctx>,
    rx: Receiver<tiny_http::Request>,
    n: usize,
    nice: i32,
) -> io::Result<Vec<JoinHandle<()>>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..n)
        .map(|i| {
            let (ctx, rx) = (ctx.clone(), rx.clone());
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Linux keeps a nice value per thread; this one only affects this worker.
                    if nice != 0
                        && let Err(e) = rustix::process::nice(nice)
                    {
                        log::debug!("cannot lower the priority of {name}-{i}: {e}");
                    }
                    loop {
                        let next = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match next {
                            Ok(rq) => {
                                ctx.metrics.queue(lane, -1);
                                handle(&ctx, rq)
                            }
                            Err(_) => return,
                        }
                    }
                })
        })
        .collect()
}

/// Runs one request through the router and its handler; a panic becomes a logged 500 and
/// the worker lives on.
fn handle(ctx: &Ctx, mut rq: tiny_http::Request) {
    let started = Instant::now();
    let client = ctx.client_ip(&rq);
    let reply = {
        let mut req = Req::new(&mut rq, client, Some(&ctx.activity));
        match catch_unwind(AssertUnwindSafe(|| dispatch(ctx, &mut req))) {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => e.into_reply(),
            Err(_) => ApiError::Internal("a handler panicked".into()).into_reply(),
        }
    };
    finish(ctx, rq, reply, started, client);
}

fn dispatch(ctx: &Ctx, req: &mut Req) -> Result<Reply, ApiError> {
    http::check_framing(req)?;
    let method = req.method();
    let matched = router::route(&method, req.url())?;
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
    if method == "POST" {
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
    }
    .unwrap_or_else(ApiError::into_reply);
    Ok(match cors {
        Some(origin) => http::with_cors(reply, origin),
        None => reply,
    })
}

/// Writes the reply with the headers every response carries, counts it, and logs one line
/// naming `client` (the address handlers saw).
fn finish(
    ctx: &Ctx,
    rq: tiny_http::Request,
    reply: Reply,
    started: Instant,
    client: Option<std::net::IpAddr>,
) {
    let remote = rq.remote_addr().copied();
    let status = reply.status;
    let route = router::route_of(rq.url()).map_or(metrics::OTHER_ROUTE, Route::metrics_index);
    // Built only when the access log is on: this runs for every request.
    let line = log::log_enabled!(target: "authd::access", log::Level::Info).then(|| {
        let path: String = router::path_of(rq.url())
            .chars()
            .take(200)
            .flat_map(char::escape_default)
            .collect();
        let client = client.map(|a| a.to_string()).unwrap_or_default();
        (rq.method().as_str().to_string(), path, client)
    });
    let mut resp = tiny_http::Response::from_data(reply.body).with_status_code(status);
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
    // Counted before the client can read the answer, so that a /metrics it asks for next
    // already includes this request.
    let took = started.elapsed();
    ctx.metrics.request(route, status, took);
    if let Err(e) = rq.respond(resp) {
        log::debug!("writing the response failed: {e}");
    }
    if let Some(peer) = remote {
        ctx.activity.end(peer);
    }
    if let Some((method, path, client)) = line {
        log::info!(
            target: "authd::access",
            "{method} {path} {status} {:.1}ms {client}",
            took.as_secs_f64() * 1000.0
        );
    }
}
