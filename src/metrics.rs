//! What `GET /metrics` reports, in the Prometheus text exposition format 0.0.4. Everything
//! is a fixed array of atomics, so recording a request takes no lock on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The `route` label: one per endpoint, and `other` for unknown paths.
pub const ROUTES: [&str; 17] = [
    "register",
    "login",
    "user",
    "logout",
    "healthz",
    "readyz",
    "metrics",
    "openapi",
    "token/refresh",
    "sessions",
    "session",
    "password/change",
    "password/reset",
    "password/reset/confirm",
    "email/verify",
    "email/verify/resend",
    "other",
];
/// Index of `other` in [`ROUTES`].
pub const OTHER_ROUTE: usize = ROUTES.len() - 1;

/// The statuses authd answers; anything else (none is expected) is counted as `other`.
const STATUSES: [u16; 20] = [
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 414, 415, 417, 429, 431, 500, 501, 503,
    505,
];
const NSTATUS: usize = STATUSES.len() + 1;

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const NROUTE: usize = ROUTES.len();

/// How a login ended.
#[derive(Debug, Clone, Copy)]
pub enum Login {
    /// The password matched.
    Succeeded = 0,
    /// Wrong email or password, or an inactive user.
    Failed = 1,
    /// Refused by the throttle (429) before any password check.
    Throttled = 2,
}

/// The two request lanes, for the queue-depth gauge.
#[derive(Debug, Clone, Copy)]
pub enum Lane {
    /// Cheap requests.
    Fast = 0,
    /// Requests that run bcrypt.
    Hash = 1,
}

/// Counters and gauges, shared by every thread.
pub struct Metrics {
    started: Instant,
    requests: [[AtomicU64; NSTATUS]; NROUTE],
    /// Per route: observations per bucket (not cumulative; summed when rendered), then +Inf.
    latency: [[AtomicU64; BUCKETS.len() + 1]; NROUTE],
    latency_sum_us: [AtomicU64; NROUTE],
    logins: [AtomicU64; 3],
    registrations: AtomicU64,
    queued: [AtomicI64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: [const { [const { AtomicU64::new(0) }; NSTATUS] }; NROUTE],
            latency: [const { [const { AtomicU64::new(0) }; BUCKETS.len() + 1] }; NROUTE],
            latency_sum_us: [const { AtomicU64::new(0) }; NROUTE],
            logins: [const { AtomicU64::new(0) }; 3],
            registrations: AtomicU64::new(0),
            queued: [const { AtomicI64::new(0) }; 2],
        }
    }
}

/// Gauges read at render time from elsewhere (the pool).
pub struct Pool {
    /// Connections checked out.
    pub in_use: u32,
    /// Connections open and idle.
    pub idle: u32,
    /// The pool's maximum size.
    pub max: u32,
}

impl Metrics {
    /// Counts one answered request on route index `route` (see [`ROUTES`]).
    pub fn request(&self, route: usize, status: u16, took: Duration) {
        let route = route.min(OTHER_ROUTE);
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(NSTATUS - 1);
        self.requests[route][s].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.latency[route][b].fetch_add(1, Relaxed);
        self.latency_sum_us[route].fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Counts a login outcome.
    pub fn login(&self, outcome: Login) {
        self.logins[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts a registration that created a user.
    pub fn registered(&self) {
        self.registrations.fetch_add(1, Relaxed);
    }

    /// A request entered (`+1`) or left (`-1`) a lane's queue.
    pub fn queue(&self, lane: Lane, delta: i64) {
        self.queued[lane as usize].fetch_add(delta, Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, pool: &Pool) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        family(
            o,
            "authd_http_requests_total",
            "counter",
            "Requests answered, by route and status.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, n) in self.requests[r].iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let status = STATUSES.get(s).map_or("other".to_string(), u16::to_string);
                    let _ = writeln!(
                        o,
                        "authd_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        let name = "authd_http_request_duration_seconds";
        family(
            o,
            name,
            "histogram",
            "Time from taking a request to answering it, by route.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            let counts: Vec<u64> = self.latency[r].iter().map(|c| c.load(Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(&counts) {
                cumulative += n;
                let _ = writeln!(
                    o,
                    "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(o, "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {total}");
            let sum = self.latency_sum_us[r].load(Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "{name}_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(o, "{name}_count{{route=\"{route}\"}} {total}");
        }
        family(
            o,
            "authd_logins_total",
            "counter",
            "Login attempts, by result.",
        );
        for (i, result) in ["succeeded", "failed", "throttled"].iter().enumerate() {
            let n = self.logins[i].load(Relaxed);
            let _ = writeln!(o, "authd_logins_total{{result=\"{result}\"}} {n}");
        }
        family(
            o,
            "authd_registrations_total",
            "counter",
            "Users created by POST /api/register/.",
        );
        let _ = writeln!(
            o,
            "authd_registrations_total {}",
            self.registrations.load(Relaxed)
        );
        family(
            o,
            "authd_db_pool_connections",
            "gauge",
            "Pooled database connections, by state.",
        );
        let _ = writeln!(
            o,
            "authd_db_pool_connections{{state=\"in_use\"}} {}",
            pool.in_use
        );
        let _ = writeln!(
            o,
            "authd_db_pool_connections{{state=\"idle\"}} {}",
            pool.idle
        );
        family(o, "authd_db_pool_max_connections", "gauge", "DB_POOL_SIZE.");
        let _ = writeln!(o, "authd_db_pool_max_connections {}", pool.max);
        family(
            o,
            "authd_queue_depth",
            "gauge",
            "Requests waiting for a worker, by lane.",
        );
        for (i, lane) in ["fast", "hash"].iter().enumerate() {
            let n = self.queued[i].load(Relaxed).max(0);
            let _ = writeln!(o, "authd_queue_depth{{lane=\"{lane}\"}} {n}");
        }
        family(o, "authd_build_info", "gauge", "The running version.");
        let _ = writeln!(
            o,
            "authd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        family(
            o,
            "authd_uptime_seconds",
            "gauge",
            "Seconds since the process started serving.",
        );
        let _ = writeln!(
            o,
            "authd_uptime_seconds {}",
            self.started.elapsed().as_secs_f64()
        );
        if let Some(rss) = resident_bytes() {
            family(
                o,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            let _ = writeln!(o, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// VmRSS from /proc/self/status (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::default();
        m.request(2, 200, Duration::from_micros(300));
        m.request(2, 200, Duration::from_millis(3));
        m.request(2, 401, Duration::from_secs(20));
        m.request(99, 299, Duration::from_millis(1));
        let text = m.render(&Pool {
            in_use: 1,
            idle: 2,
            max: 10,
        });
        assert!(text.contains("authd_http_requests_total{route=\"user\",status=\"200\"} 2\n"));
        assert!(text.contains("authd_http_requests_total{route=\"user\",status=\"401\"} 1\n"));
        assert!(text.contains("authd_http_requests_total{route=\"other\",status=\"other\"} 1\n"));
        let b = "authd_http_request_duration_seconds_bucket{route=\"user\"";
        assert!(text.contains(&format!("{b},le=\"0.0005\"}} 1\n")));
        assert!(text.contains(&format!("{b},le=\"0.005\"}} 2\n")));
        assert!(text.contains(&format!("{b},le=\"10\"}} 2\n")));
        assert!(text.contains(&format!("{b},le=\"+Inf\"}} 3\n")));
        assert!(text.contains("authd_http_request_duration_seconds_count{route=\"user\"} 3\n"));
        assert!(text.contains("authd_db_pool_connections{state=\"idle\"} 2\n"));
    }
}
