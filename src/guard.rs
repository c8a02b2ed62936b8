//! The connection guard: the timeouts and fairness tiny_http lacks, kept from the outside.
//!
//! tiny_http owns every accepted socket and gives the application none of them, so it can
//! neither time out an idle keep-alive connection, nor cut off a client that dribbles its
//! headers, nor see the connections its pool left queued behind one idle thread. The guard
//! sees them anyway: every 100 ms it lists this process's sockets (`/proc/self/fd`), takes a
//! duplicate of each (`pidfd_getfd`, no `unsafe`), keeps the ones accepted on authd's port,
//! and with what the workers report per client address it
//! - shuts down a connection that has not completed a request within `READ_TIMEOUT` of
//!   being accepted, or whose body read has taken longer than that;
//! - shuts down a keep-alive connection idle for `KEEPALIVE_TIMEOUT` after its last response;
//! - and when an accepted connection has bytes waiting that nobody reads (queued in
//!   tiny_http's pool), connects to itself once per such connection: tiny_http then starts a
//!   new pool thread, which finishes that empty connection at once and takes a queued one.

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

use crate::server::Shutdown;

const TICK: Duration = Duration::from_millis(100);
/// A connection with unread bytes for this long is taken as queued, not being read.
const STARVED_AFTER: Duration = Duration::from_millis(150);
/// tiny_http reads bodies up to this size itself, before handing the request over; its
/// connection buffer holds at most this much of a larger one.
const TINY_HTTP_INLINE_BODY: usize = 1024;

/// What the workers tell the guard about each client connection (keyed by peer address).
#[derive(Default)]
pub struct Activity {
    peers: Mutex<HashMap<SocketAddr, Peer>>,
}

#[derive(Default, Clone, Copy)]
struct Peer {
    in_flight: u32,
    last_done: Option<Instant>,
    body_since: Option<Instant>,
    /// A body larger than tiny_http reads itself: when its request arrived, and its length.
    body_pending: Option<(Instant, usize)>,
}

impl Activity {
    fn with(&self, peer: SocketAddr, f: impl FnOnce(&mut Peer)) {
        if let Ok(mut m) = self.peers.lock() {
            f(m.entry(peer).or_default());
        }
    }

    /// A request from `peer` was received, with a body of `body_len` bytes still unread.
    pub fn begin(&self, peer: SocketAddr, body_len: Option<usize>) {
        self.with(peer, |p| {
            p.in_flight += 1;
            p.body_pending = body_len
                .filter(|n| *n > TINY_HTTP_INLINE_BODY)
                .map(|n| (Instant::now(), n));
        });
    }

    /// The request from `peer` was answered.
    pub fn end(&self, peer: SocketAddr) {
        self.with(peer, |p| {
            p.in_flight = p.in_flight.saturating_sub(1);
            p.last_done = Some(Instant::now());
            p.body_since = None;
            p.body_pending = None;
        });
    }

    /// A worker starts reading the body of `peer`'s request.
    pub fn body_started(&self, peer: SocketAddr) {
        self.with(peer, |p| p.body_since = Some(Instant::now()));
    }

    /// The body has been read.
    pub fn body_done(&self, peer: SocketAddr) {
        self.with(peer, |p| {
            p.body_since = None;
            p.body_pending = None;
        });
    }

    fn get(&self, peer: &SocketAddr) -> Option<Peer> {
        self.peers.lock().ok()?.get(peer).copied()
    }

    fn retain(&self, live: &HashSet<SocketAddr>) {
        if let Ok(mut m) = self.peers.lock() {
            m.retain(|addr, p| live.contains(addr) || p.in_flight > 0);
        }
    }
}

struct Tracked {
    peer: SocketAddr,
    since: Instant,
    unread_since: Option<Instant>,
}

/// Starts the guard for the listener bound at `listen` (raw fd `listen_fd`). Returns false,
/// with a warning, where the kernel does not let a process duplicate its own descriptors.
pub fn spawn(
    listen: SocketAddr,
    listen_fd: i32,
    activity: std::sync::Arc<Activity>,
    read_timeout: Duration,
    keepalive: Duration,
    stop: Shutdown,
) -> bool {
    let pidfd = match pidfd_open(getpid(), PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!(
                "connection guard unavailable (pidfd_open: {e}): no idle or slow-client timeouts"
            );
            return false;
        }
    };
    if let Err(e) = pidfd_getfd(&pidfd, listen_fd, PidfdGetfdFlags::empty()) {
        log::warn!(
            "connection guard unavailable (pidfd_getfd: {e}): no idle or slow-client timeouts"
        );
        return false;
    }
    let poke_addr = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    thread::Builder::new()
        .name("guard".into())
        .spawn(move || {
            let mut g = Guard {
                pidfd,
                listen,
                poke_addr,
                activity,
                read_timeout,
                keepalive,
                tracked: HashMap::new(),
                ignored: HashSet::new(),
            };
            while !stop.sleep(TICK) {
                g.tick();
            }
        })
        .is_ok()
}

struct Guard {
    pidfd: OwnedFd,
    listen: SocketAddr,
    poke_addr: SocketAddr,
    activity: std::sync::Arc<Activity>,
    read_timeout: Duration,
    keepalive: Duration,
    tracked: HashMap<u64, Tracked>,
    ignored: HashSet<u64>,
}

impl Guard {
    /// The process's sockets: inode → one descriptor number.
    fn sockets() -> HashMap<u64, i32> {
        let mut out = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return out;
        };
        for entry in dir.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok());
            if let Some(inode) = inode {
                out.entry(inode).or_insert(fd);
            }
        }
        out
    }

    fn dup(&self, fd: i32) -> Option<TcpStream> {
        pidfd_getfd(&self.pidfd, fd, PidfdGetfdFlags::empty())
            .ok()
            .map(TcpStream::from)
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let sockets = Self::sockets();
        self.tracked.retain(|inode, _| sockets.contains_key(inode));
        self.ignored.retain(|inode| sockets.contains_key(inode));
        let mut starving = 0usize;
        for (&inode, &fd) in &sockets {
            if self.ignored.contains(&inode) {
                continue;
            }
            if !self.tracked.contains_key(&inode) {
                let peer = self.dup(fd).and_then(|s| {
                    let local = s.local_addr().ok()?;
                    (local.port() == self.listen.port()).then_some(())?;
                    s.peer_addr().ok()
                });
                match peer {
                    Some(peer) => {
                        self.tracked.insert(
                            inode,
                            Tracked {
                                peer,
                                since: now,
                                unread_since: None,
                            },
                        );
                    }
                    None => {
                        self.ignored.insert(inode);
                    }
                }
                continue;
            }
            let t = self.tracked.get(&inode).expect("checked above");
            let state = self.activity.get(&t.peer).unwrap_or_default();
            let expired = match (state.in_flight, state.body_since, state.last_done) {
                (_, Some(b), _) => now.duration_since(b) > self.read_timeout,
                (n, None, _) if n > 0 => false,
                (_, None, None) => now.duration_since(t.since) > self.read_timeout,
                (_, None, Some(done)) => now.duration_since(done) > self.keepalive,
            };
            let fresh = state.in_flight == 0 && state.last_done.is_none();
            // A request still queued for a worker whose client never sent the body it
            // announced: cut it now rather than when a worker finally gets to it.
            let stalled = state.body_since.is_none()
                && state
                    .body_pending
                    .is_some_and(|(since, _)| now.duration_since(since) > self.read_timeout);
            if !expired && !fresh && !stalled {
                continue;
            }
            let Some(stream) = self.dup(fd) else { continue };
            if stalled && !expired {
                let waiting = rustix::io::ioctl_fionread(stream.as_fd()).unwrap_or(0) as usize;
                let declared = state.body_pending.map_or(0, |(_, n)| n);
                if waiting + TINY_HTTP_INLINE_BODY < declared {
                    log::debug!("closing a connection whose body stalled, from {}", t.peer);
                    let _ = stream.shutdown(NetShutdown::Both);
                }
                continue;
            }
            if expired {
                log::debug!("closing a timed-out connection from {}", t.peer);
                let _ = stream.shutdown(NetShutdown::Both);
                continue;
            }
            // A fresh connection with bytes nobody reads is queued in tiny_http's pool.
            let unread = rustix::io::ioctl_fionread(stream.as_fd()).unwrap_or(0) > 0;
            let t = self.tracked.get_mut(&inode).expect("checked above");
            match (unread, t.unread_since) {
                (false, _) => t.unread_since = None,
                (true, None) => t.unread_since = Some(now),
                (true, Some(since)) if now.duration_since(since) > STARVED_AFTER => {
                    starving += 1;
                    t.unread_since = Some(now);
                }
                (true, Some(_)) => {}
            }
        }
        for _ in 0..starving.min(256) {
            let _ = TcpStream::connect_timeout(&self.poke_addr, Duration::from_millis(200));
        }
        let live: HashSet<SocketAddr> = self.tracked.values().map(|t| t.peer).collect();
        self.activity.retain(&live);
    }
}

/// Raises the soft limit on open descriptors to the hard limit: each connection costs
/// tiny_http three descriptors.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}

/// The raw descriptor number of a listener, for [`spawn`].
pub fn raw_fd(l: &std::net::TcpListener) -> i32 {
    l.as_raw_fd()
}
