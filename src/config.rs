//! Every setting, read once from the environment (or `.env`) into a typed [`Config`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::proxy::TrustedProxies;

/// The server's settings, validated; built once at start by [`Config::from_env`].
#[derive(Clone)]
pub struct Config {
    /// HS256 key for the JWT.
    pub secret_key: Vec<u8>,
    /// True when no `SECRET_KEY` was given and a random one was made (DEBUG only).
    pub secret_key_generated: bool,
    /// Development mode.
    pub debug: bool,
    /// PostgreSQL connection settings.
    pub database: postgres::Config,
    /// Listen address.
    pub bind: SocketAddr,
    /// Request worker threads (cheap requests).
    pub workers: usize,
    /// Threads that may run bcrypt at once (logins and registrations).
    pub hash_workers: usize,
    /// Pooled database connections.
    pub db_pool_size: u32,
    /// Longest wait for a pooled connection (and connect timeout).
    pub db_timeout: Duration,
    /// Token and cookie lifetime.
    pub jwt_ttl: Duration,
    /// Add `Secure` to the cookie.
    pub cookie_secure: bool,
    /// Cookie name (`jwt` or `__Host-jwt`).
    pub cookie_name: String,
    /// The refresh token's cookie (`refresh` or `__Host-refresh`).
    pub refresh_cookie_name: String,
    /// Add `Secure` to the refresh cookie (as `cookie_secure`, forced by a `__Host-` name).
    pub refresh_cookie_secure: bool,
    /// How long a just-rotated refresh token still gets the current pair.
    pub refresh_reuse_grace: Duration,
    /// A session not refreshed for this long ends.
    pub session_idle_timeout: Duration,
    /// A session ends this long after its login, however often refreshed.
    pub session_max_age: Duration,
    /// bcrypt work factor.
    pub bcrypt_cost: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Idle keep-alive connections are closed after this.
    pub keepalive_timeout: Duration,
    /// A request must arrive within this.
    pub read_timeout: Duration,
    /// Open client connections at most; `None`: worked out from the descriptor limit.
    pub max_connections: Option<usize>,
    /// Failed logins per email per window before 429.
    pub login_max_failures: i32,
    /// Failed logins per client address per window before 429.
    pub login_max_failures_per_ip: i32,
    /// Throttle window.
    pub login_window: Duration,
    /// Registrations per client address per [`Config::register_window`] before 429.
    pub register_max_per_ip: i32,
    /// The registration throttle's window.
    pub register_window: Duration,
    /// IPv6 clients are counted per network of this prefix length (IPv4 per address).
    pub throttle_ipv6_prefix: u8,
    /// Extra origins allowed for cross-origin POSTs and CORS.
    pub allowed_origins: Vec<String>,
    /// Serve `GET /metrics`.
    pub metrics_enabled: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Account recovery: mail, tokens, verification.
    pub recovery: Recovery,
}

/// The settings of account recovery (password reset, e-mail verification).
#[derive(Clone)]
pub struct Recovery {
    /// Lifetime of a reset or verification token.
    pub token_ttl: Duration,
    /// Reset and resend requests per email per `LOGIN_WINDOW`.
    pub max_per_email: i32,
    /// Reset and resend requests per client address per `LOGIN_WINDOW`.
    pub max_per_ip: i32,
    /// Where mail goes (`SMTP_URL`, which may hold a password); `None`: to the log.
    pub smtp_url: Option<String>,
    /// The sender: `From` and the envelope sender; its display name is the product name.
    pub email_from: lettre::message::Mailbox,
    /// Link template with `{token}` for reset mails.
    pub reset_url: Option<String>,
    /// Link template with `{token}` for verification mails.
    pub verify_url: Option<String>,
    /// Refuse login until the address is verified; registration sends the mail.
    pub require_verification: bool,
}

impl fmt::Debug for Config {
    // Never print the secret key or the database password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("debug", &self.debug)
            .field("bind", &self.bind)
            .field("workers", &self.workers)
            .field("db_pool_size", &self.db_pool_size)
            .finish_non_exhaustive()
    }
}

/// A setting that is missing or invalid: names the setting and says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting's name, e.g. `SECRET_KEY`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// The names and defaults of every setting, for `--help`.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    (
        "SECRET_KEY",
        "required unless DEBUG",
        "HS256 key, at least 32 bytes",
    ),
    ("DEBUG", "false", "development mode: cookie not Secure"),
    (
        "DATABASE_URL",
        "from DB_*",
        "PostgreSQL URL or key=value string",
    ),
    (
        "DB_NAME DB_USER DB_PASSWORD DB_HOST DB_PORT",
        "- postgres - 127.0.0.1 5432",
        "the seed's names",
    ),
    ("BIND", "127.0.0.1:8000", "listen address"),
    ("WORKERS", "2 x cores", "request threads"),
    ("DB_POOL_SIZE", "WORKERS + cores", "pooled connections"),
    (
        "DB_TIMEOUT",
        "3",
        "seconds to wait for a connection before 503",
    ),
    ("JWT_TTL", "3600", "token and cookie lifetime, seconds"),
    ("COOKIE_SECURE", "!DEBUG", "add Secure to the cookie"),
    (
        "COOKIE_NAME",
        "jwt",
        "cookie name; __Host-jwt for production",
    ),
    (
        "REFRESH_COOKIE_NAME",
        "refresh",
        "refresh token cookie; __Host-refresh for production",
    ),
    (
        "REFRESH_REUSE_GRACE",
        "10",
        "seconds a just-rotated refresh token still gets the current pair",
    ),
    (
        "SESSION_IDLE_TIMEOUT",
        "604800",
        "seconds without a refresh after which a session ends",
    ),
    (
        "SESSION_MAX_AGE",
        "2592000",
        "seconds after login at which a session ends, refreshed or not",
    ),
    ("BCRYPT_COST", "12", "bcrypt work factor, 4 to 31"),
    ("MAX_BODY_BYTES", "65536", "larger bodies get 413"),
    (
        "KEEPALIVE_TIMEOUT",
        "15",
        "seconds an idle connection is kept",
    ),
    (
        "READ_TIMEOUT",
        "10",
        "seconds a client has to send a request",
    ),
    (
        "MAX_CONNECTIONS",
        "from the descriptor limit",
        "open client connections at most",
    ),
    (
        "LOGIN_MAX_FAILURES",
        "10",
        "failed logins per email per window",
    ),
    (
        "LOGIN_MAX_FAILURES_PER_IP",
        "100",
        "failed logins per address per window",
    ),
    ("LOGIN_WINDOW", "900", "throttle window, seconds"),
    (
        "REGISTER_MAX_PER_IP",
        "20",
        "registrations per client address per REGISTER_WINDOW",
    ),
    (
        "REGISTER_WINDOW",
        "3600",
        "registration throttle window, seconds",
    ),
    (
        "THROTTLE_IPV6_PREFIX",
        "64",
        "IPv6 clients are throttled per network of this prefix",
    ),
    (
        "ALLOWED_ORIGINS",
        "empty",
        "comma-separated origins allowed for CORS",
    ),
    (
        "METRICS_ENABLED",
        "true",
        "serve GET /metrics (Prometheus text format)",
    ),
    (
        "TRUSTED_PROXIES",
        "empty",
        "proxy addresses/CIDRs whose X-Forwarded-For is believed",
    ),
    (
        "PASSWORD_RESET_TTL",
        "3600",
        "seconds a reset or verification token lives",
    ),
    (
        "RESET_MAX_PER_EMAIL",
        "3",
        "reset and resend requests per email per LOGIN_WINDOW",
    ),
    (
        "RESET_MAX_PER_IP",
        "20",
        "reset and resend requests per address per LOGIN_WINDOW",
    ),
    (
        "SMTP_URL",
        "unset: mail to the log",
        "smtp://user:pass@host:587 (STARTTLS if offered) or smtps://…:465",
    ),
    (
        "EMAIL_FROM",
        "authd <authd@localhost>",
        "sender of every mail; required with SMTP_URL",
    ),
    (
        "PASSWORD_RESET_URL",
        "unset",
        "reset link template with {token}",
    ),
    (
        "EMAIL_VERIFY_URL",
        "unset",
        "verification link template with {token}",
    ),
    (
        "REQUIRE_EMAIL_VERIFICATION",
        "false",
        "refuse login until the address is verified",
    ),
    (
        "RUST_LOG",
        "info",
        "log filter; the access log is target authd::access",
    ),
];

impl Config {
    /// Reads `.env` (if present, without overriding the environment), then the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            return Err(err(".env", e.to_string()));
        }
        Self::from_map(&std::env::vars().collect())
    }

    /// Builds a config from a map of settings (the environment, in production).
    pub fn from_map(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let debug = match get("DEBUG") {
            None => false,
            Some(v) => parse_bool(&v).ok_or_else(|| err("DEBUG", "expected true or false"))?,
        };
        let (secret_key, secret_key_generated) = match env.get("SECRET_KEY") {
            Some(k) if !k.is_empty() => {
                if k.len() < 32 {
                    return Err(err(
                        "SECRET_KEY",
                        format!("must be at least 32 bytes (it is {})", k.len()),
                    ));
                }
                (k.as_bytes().to_vec(), false)
            }
            _ if debug => (random_key()?, true),
            _ => {
                return Err(err(
                    "SECRET_KEY",
                    "required (at least 32 bytes) unless DEBUG=true",
                ));
            }
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        // Two per core: enough to keep the cores busy while some wait on PostgreSQL; more only
        // add PostgreSQL backends and switching (BENCHMARKS.md, "WORKERS and DB_POOL_SIZE").
        let workers = num(&get, "WORKERS", 2 * cores, 1, 1024)?;
        let hash_workers = cores.clamp(1, 64);
        let db_pool_size = num(&get, "DB_POOL_SIZE", workers + hash_workers, 1, 1024)? as u32;
        let db_timeout = secs(&get, "DB_TIMEOUT", 3, 1, 600)?;
        let database = database_config(env, &get, db_timeout)?;
        let bind = match get("BIND") {
            None => "127.0.0.1:8000".parse().expect("literal address"),
            Some(v) => v
                .parse()
                .map_err(|_| err("BIND", format!("not an address:port: {v:?}")))?,
        };
        let cookie_name = get("COOKIE_NAME").unwrap_or_else(|| "jwt".into());
        if !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(err("COOKIE_NAME", "letters, digits, '-', '_' and '.' only"));
        }
        let cookie_secure = match get("COOKIE_SECURE") {
            None => !debug,
            Some(v) => {
                parse_bool(&v).ok_or_else(|| err("COOKIE_SECURE", "expected true or false"))?
            }
        } || cookie_name.starts_with("__Host-")
            || cookie_name.starts_with("__Secure-");
        let refresh_cookie_name = get("REFRESH_COOKIE_NAME").unwrap_or_else(|| "refresh".into());
        if !refresh_cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(err(
                "REFRESH_COOKIE_NAME",
                "letters, digits, '-', '_' and '.' only",
            ));
        }
        if refresh_cookie_name == cookie_name {
            return Err(err("REFRESH_COOKIE_NAME", "must differ from COOKIE_NAME"));
        }
        let refresh_cookie_secure = cookie_secure
            || refresh_cookie_name.starts_with("__Host-")
            || refresh_cookie_name.starts_with("__Secure-");
        let session_max_age = secs(&get, "SESSION_MAX_AGE", 2_592_000, 1, 10 * 365 * 24 * 3600)?;
        let session_idle_timeout = secs(
            &get,
            "SESSION_IDLE_TIMEOUT",
            604_800,
            1,
            10 * 365 * 24 * 3600,
        )?;
        let allowed_origins = get("ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for o in &allowed_origins {
            if o == "*" || !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(err(
                    "ALLOWED_ORIGINS",
                    format!(
                        "{o:?} is not an origin like https://app.example.com ('*' is never allowed)"
                    ),
                ));
            }
        }
        let metrics_enabled = match get("METRICS_ENABLED") {
            None => true,
            Some(v) => {
                parse_bool(&v).ok_or_else(|| err("METRICS_ENABLED", "expected true or false"))?
            }
        };
        let trusted_proxies = TrustedProxies::parse(&get("TRUSTED_PROXIES").unwrap_or_default())
            .map_err(|e| err("TRUSTED_PROXIES", e))?;
        let recovery = recovery_config(&get)?;
        Ok(Config {
            secret_key,
            secret_key_generated,
            debug,
            database,
            bind,
            workers,
            hash_workers,
            db_pool_size,
            db_timeout,
            jwt_ttl: secs(&get, "JWT_TTL", 3600, 1, 365 * 24 * 3600)?,
            cookie_secure,
            cookie_name,
            refresh_cookie_name,
            refresh_cookie_secure,
            refresh_reuse_grace: secs(&get, "REFRESH_REUSE_GRACE", 10, 0, 3600)?,
            session_idle_timeout,
            session_max_age,
            bcrypt_cost: num(&get, "BCRYPT_COST", 12, 4, 31)? as u32,
            max_body_bytes: num(&get, "MAX_BODY_BYTES", 65536, 1, 1 << 30)?,
            keepalive_timeout: secs(&get, "KEEPALIVE_TIMEOUT", 15, 1, 3600)?,
            read_timeout: secs(&get, "READ_TIMEOUT", 10, 1, 3600)?,
            max_connections: match get("MAX_CONNECTIONS") {
                None => None,
                Some(_) => Some(num(&get, "MAX_CONNECTIONS", 0, 1, 1_000_000)?),
            },
            login_max_failures: num(&get, "LOGIN_MAX_FAILURES", 10, 1, 1_000_000)? as i32,
            login_max_failures_per_ip: num(&get, "LOGIN_MAX_FAILURES_PER_IP", 100, 1, 1_000_000)?
                as i32,
            login_window: secs(&get, "LOGIN_WINDOW", 900, 1, 30 * 24 * 3600)?,
            register_max_per_ip: num(&get, "REGISTER_MAX_PER_IP", 20, 1, 1_000_000)? as i32,
            register_window: secs(&get, "REGISTER_WINDOW", 3600, 1, 30 * 24 * 3600)?,
            throttle_ipv6_prefix: num(&get, "THROTTLE_IPV6_PREFIX", 64, 1, 128)? as u8,
            allowed_origins,
            metrics_enabled,
            trusted_proxies,
            recovery,
        })
    }
}

/// `PASSWORD_RESET_TTL`, the reset throttle, the mail settings and the link templates.
fn recovery_config(get: &impl Fn(&str) -> Option<String>) -> Result<Recovery, ConfigError> {
    let smtp_url = get("SMTP_URL");
    if let Some(url) = &smtp_url {
        crate::mail::smtp_transport(url).map_err(|e| err("SMTP_URL", e))?;
    }
    let email_from = match get("EMAIL_FROM") {
        Some(v) => v.parse::<lettre::message::Mailbox>().map_err(|e| {
            err(
                "EMAIL_FROM",
                format!("not an address like \"Acme <no-reply@example.com>\": {e}"),
            )
        })?,
        None if smtp_url.is_some() => {
            return Err(err("EMAIL_FROM", "required when SMTP_URL is set"));
        }
        None => "authd <authd@localhost>"
            .parse()
            .map_err(|e| err("EMAIL_FROM", format!("{e}")))?,
    };
    let link = |name: &'static str| -> Result<Option<String>, ConfigError> {
        let Some(v) = get(name) else { return Ok(None) };
        if !(v.starts_with("https://") || v.starts_with("http://")) || !v.contains("{token}") {
            return Err(err(
                name,
                format!("expected an http(s) URL with {{token}} in it, got {v:?}"),
            ));
        }
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(name, "no whitespace or control characters"));
        }
        Ok(Some(v))
    };
    Ok(Recovery {
        token_ttl: secs(get, "PASSWORD_RESET_TTL", 3600, 1, 7 * 24 * 3600)?,
        max_per_email: num(get, "RESET_MAX_PER_EMAIL", 3, 1, 1_000_000)? as i32,
        max_per_ip: num(get, "RESET_MAX_PER_IP", 20, 1, 1_000_000)? as i32,
        smtp_url,
        email_from,
        reset_url: link("PASSWORD_RESET_URL")?,
        verify_url: link("EMAIL_VERIFY_URL")?,
        require_verification: match get("REQUIRE_EMAIL_VERIFICATION") {
            None => false,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| err("REQUIRE_EMAIL_VERIFICATION", "expected true or false"))?,
        },
    })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn num(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(err(
                name,
                format!("expected a whole number from {min} to {max}, got {v:?}"),
            )),
        },
    }
}

fn secs(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    min: usize,
    max: usize,
) -> Result<Duration, ConfigError> {
    num(get, name, default as usize, min, max).map(|n| Duration::from_secs(n as u64))
}

fn random_key() -> Result<Vec<u8>, ConfigError> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| err("SECRET_KEY", format!("no randomness: {e}")))?;
    Ok(key)
}

fn database_config(
    env: &HashMap<String, String>,
    get: &impl Fn(&str) -> Option<String>,
    timeout: Duration,
) -> Result<postgres::Config, ConfigError> {
    let mut cfg = match get("DATABASE_URL") {
        Some(url) => url
            .parse::<postgres::Config>()
            .map_err(|e| err("DATABASE_URL", format!("not a PostgreSQL URL: {e}")))?,
        None => {
            let name = get("DB_NAME")
                .ok_or_else(|| err("DATABASE_URL", "not set, and neither is DB_NAME"))?;
            let mut c = postgres::Config::new();
            c.dbname(&name);
            c.host(&get("DB_HOST").unwrap_or_else(|| "127.0.0.1".into()));
            let port = get("DB_PORT").unwrap_or_else(|| "5432".into());
            c.port(
                port.parse()
                    .map_err(|_| err("DB_PORT", format!("not a port: {port:?}")))?,
            );
            c.user(&get("DB_USER").unwrap_or_else(|| "postgres".into()));
            if let Some(p) = env.get("DB_PASSWORD").filter(|p| !p.is_empty()) {
                c.password(p);
            }
            c
        }
    };
    // A dead peer must not hang a worker: bound the connect and detect broken TCP.
    cfg.connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(timeout + Duration::from_secs(2))
        .application_name("authd");
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_map(&map(&[("SECRET_KEY", KEY), ("DB_NAME", "x")])).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8000");
        assert!(c.cookie_secure && !c.debug);
        assert_eq!(c.jwt_ttl.as_secs(), 3600);
        assert_eq!(c.bcrypt_cost, 12);
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.cookie_name, "jwt");
        assert_eq!(c.db_timeout.as_secs(), 3);
    }

    #[test]
    fn secret_key_is_required_and_long_unless_debug() {
        let e = Config::from_map(&map(&[("DB_NAME", "x")])).unwrap_err();
        assert_eq!(e.setting, "SECRET_KEY");
        let e = Config::from_map(&map(&[("DB_NAME", "x"), ("SECRET_KEY", "short")])).unwrap_err();
        assert_eq!(e.setting, "SECRET_KEY");
        let c = Config::from_map(&map(&[("DB_NAME", "x"), ("DEBUG", "True")])).unwrap();
        assert!(c.secret_key_generated && !c.cookie_secure);
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (k, v) in [
            ("BCRYPT_COST", "3"),
            ("BCRYPT_COST", "32"),
            ("WORKERS", "0"),
            ("BIND", "nope"),
            ("DEBUG", "maybe"),
            ("JWT_TTL", "-1"),
            ("ALLOWED_ORIGINS", "*"),
            ("DB_PORT", "x"),
            ("PASSWORD_RESET_TTL", "0"),
            ("RESET_MAX_PER_EMAIL", "0"),
            ("SMTP_URL", "mail.example.com:25"),
            ("SMTP_URL", "http://mail.example.com"),
            ("EMAIL_FROM", "no at sign"),
            ("PASSWORD_RESET_URL", "https://app.example.com/reset"),
            ("EMAIL_VERIFY_URL", "javascript:alert(1)//{token}"),
            ("REQUIRE_EMAIL_VERIFICATION", "maybe"),
        ] {
            let e = Config::from_map(&map(&[("SECRET_KEY", KEY), ("DB_NAME", "x"), (k, v)]))
                .unwrap_err();
            assert_eq!(e.setting, k, "{k}={v}");
        }
    }

    #[test]
    fn mail_settings_default_to_the_log_and_need_a_sender_with_smtp() {
        let c = Config::from_map(&map(&[("SECRET_KEY", KEY), ("DB_NAME", "x")])).unwrap();
        let r = &c.recovery;
        assert!(r.smtp_url.is_none() && !r.require_verification);
        assert_eq!(r.token_ttl.as_secs(), 3600);
        assert_eq!((r.max_per_email, r.max_per_ip), (3, 20));
        let e = Config::from_map(&map(&[
            ("SECRET_KEY", KEY),
            ("DB_NAME", "x"),
            ("SMTP_URL", "smtp://mail.example.com:587"),
        ]))
        .unwrap_err();
        assert_eq!(e.setting, "EMAIL_FROM");
        let c = Config::from_map(&map(&[
            ("SECRET_KEY", KEY),
            ("DB_NAME", "x"),
            ("SMTP_URL", "smtps://user:pa%40ss@mail.example.com"),
            ("EMAIL_FROM", "Acme <no-reply@example.com>"),
        ]))
        .unwrap();
        assert_eq!(crate::mail::product(&c.recovery), "Acme");
    }

    #[test]
    fn host_prefixed_cookie_forces_secure() {
        let c = Config::from_map(&map(&[
            ("DEBUG", "true"),
            ("DB_NAME", "x"),
            ("COOKIE_NAME", "__Host-jwt"),
        ]))
        .unwrap();
        assert!(c.cookie_secure);
    }
}
