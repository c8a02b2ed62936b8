//! (method, path) → route; 404 for unknown paths, 405 with `Allow` for wrong methods.

use crate::error::ApiError;

/// Every endpoint authd serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/register/`
    Register,
    /// `POST /api/login/`
    Login,
    /// `GET /api/user/`
    User,
    /// `POST /api/logout/`
    Logout,
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics` (Prometheus)
    Metrics,
    /// `GET /api/openapi.yaml`
    OpenApi,
    /// `POST /api/token/refresh/`
    TokenRefresh,
    /// `GET /api/sessions/`
    Sessions,
    /// `DELETE /api/sessions/<id>/`
    Session,
    /// `POST /api/password/change/`
    PasswordChange,
    /// `POST /api/password/reset/`
    PasswordReset,
    /// `POST /api/password/reset/confirm/`
    PasswordResetConfirm,
    /// `POST /api/email/verify/`
    EmailVerify,
    /// `POST /api/email/verify/resend/`
    EmailVerifyResend,
}

/// What the router decided: the route, and whether this is a CORS preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// The endpoint.
    pub route: Route,
    /// The request is `OPTIONS`.
    pub preflight: bool,
}

const POST: &str = "POST, OPTIONS";
const GET: &str = "GET, HEAD, OPTIONS";
const DELETE: &str = "DELETE, OPTIONS";

const ROUTES: &[(&str, Route, &str)] = &[
    ("/api/register", Route::Register, POST),
    ("/api/login", Route::Login, POST),
    ("/api/user", Route::User, GET),
    ("/api/logout", Route::Logout, POST),
    ("/healthz", Route::Healthz, GET),
    ("/readyz", Route::Readyz, GET),
    ("/metrics", Route::Metrics, GET),
    ("/api/openapi.yaml", Route::OpenApi, GET),
    ("/api/token/refresh", Route::TokenRefresh, POST),
    ("/api/sessions", Route::Sessions, GET),
    ("/api/sessions/<id>", Route::Session, DELETE),
    ("/api/password/change", Route::PasswordChange, POST),
    ("/api/password/reset", Route::PasswordReset, POST),
    (
        "/api/password/reset/confirm",
        Route::PasswordResetConfirm,
        POST,
    ),
    ("/api/email/verify", Route::EmailVerify, POST),
    ("/api/email/verify/resend", Route::EmailVerifyResend, POST),
];

/// The id in `/api/sessions/<id>` (digits only), if `path` is that shape.
pub fn session_id(path: &str) -> Option<i64> {
    let id = path.strip_prefix("/api/sessions/")?;
    let id = id.strip_suffix('/').unwrap_or(id);
    (!id.is_empty() && id.len() <= 18 && id.bytes().all(|b| b.is_ascii_digit()))
        .then(|| id.parse().ok())
        .flatten()
}

/// The route table's path for `path`: `/api/sessions/<id>` stands for every session id.
fn pattern(path: &str) -> &str {
    if session_id(path).is_some() {
        "/api/sessions/<id>"
    } else {
        path
    }
}

/// The path of a request target, without its query string.
pub fn path_of(url: &str) -> &str {
    url.split_once('?').map_or(url, |(p, _)| p)
}

impl Route {
    /// The `Allow` header for this route.
    pub fn allow(self) -> &'static str {
        ROUTES
            .iter()
            .find(|(_, r, _)| *r == self)
            .map_or(GET, |(_, _, a)| a)
    }

    /// Whether this route's handler runs bcrypt (and so belongs on the hashing workers).
    pub fn hashes(self) -> bool {
        matches!(
            self,
            Route::Register | Route::Login | Route::PasswordChange | Route::PasswordResetConfirm
        )
    }

    /// The route's path as the contract writes it (for logs and metrics).
    pub fn name(self) -> &'static str {
        match self {
            Route::Register => "/api/register/",
            Route::Login => "/api/login/",
            Route::User => "/api/user/",
            Route::Logout => "/api/logout/",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/api/openapi.yaml",
            Route::TokenRefresh => "/api/token/refresh/",
            Route::Sessions => "/api/sessions/",
            Route::Session => "/api/sessions/<id>/",
            Route::PasswordChange => "/api/password/change/",
            Route::PasswordReset => "/api/password/reset/",
            Route::PasswordResetConfirm => "/api/password/reset/confirm/",
            Route::EmailVerify => "/api/email/verify/",
            Route::EmailVerifyResend => "/api/email/verify/resend/",
        }
    }

    /// The route's index in [`crate::metrics::ROUTES`].
    pub fn metrics_index(self) -> usize {
        self as usize
    }
}

/// The route a request target names, whatever the method (for metrics); `None` for an
/// unknown path.
pub fn route_of(url: &str) -> Option<Route> {
    let path = pattern(trimmed(url));
    ROUTES.iter().find(|(p, _, _)| *p == path).map(|r| r.1)
}

/// The path without its query string and without one trailing slash.
fn trimmed(url: &str) -> &str {
    let path = path_of(url);
    if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    }
}

/// Finds the route for `method` and request target `url` (query string ignored, one
/// trailing slash optional).
pub fn route(method: &str, url: &str) -> Result<Matched, ApiError> {
    route_of(url).ok_or(ApiError::NotFound)?.matched(method)
}

impl Route {
    /// The endpoint's answer to `method`: matched (`OPTIONS` as a preflight, `HEAD` as
    /// `GET`), or 405 naming what it allows.
    pub fn matched(self, method: &str) -> Result<Matched, ApiError> {
        if method == "OPTIONS" {
            return Ok(Matched {
                route: self,
                preflight: true,
            });
        }
        let wanted = if method == "HEAD" { "GET" } else { method };
        let allow = self.allow();
        if allow.split(", ").any(|m| m == wanted) {
            Ok(Matched {
                route: self,
                preflight: false,
            })
        } else {
            Err(ApiError::MethodNotAllowed {
                method: method.to_string(),
                allow,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, url: &str) -> Route {
        route(method, url).unwrap().route
    }

    #[test]
    fn with_and_without_trailing_slash() {
        assert_eq!(ok("POST", "/api/login/"), Route::Login);
        assert_eq!(ok("POST", "/api/login"), Route::Login);
        assert_eq!(ok("GET", "/api/user/"), Route::User);
        assert_eq!(ok("GET", "/api/user"), Route::User);
        assert_eq!(ok("GET", "/healthz"), Route::Healthz);
        assert_eq!(ok("GET", "/healthz/"), Route::Healthz);
        assert_eq!(ok("POST", "/api/register/"), Route::Register);
        assert_eq!(ok("POST", "/api/logout"), Route::Logout);
        assert_eq!(ok("GET", "/readyz"), Route::Readyz);
        assert_eq!(ok("GET", "/metrics"), Route::Metrics);
        assert_eq!(ok("GET", "/api/openapi.yaml"), Route::OpenApi);
        assert_eq!(ok("POST", "/api/token/refresh/"), Route::TokenRefresh);
        assert_eq!(ok("GET", "/api/sessions"), Route::Sessions);
        assert_eq!(ok("DELETE", "/api/sessions/12/"), Route::Session);
        assert_eq!(ok("DELETE", "/api/sessions/12"), Route::Session);
        assert_eq!(ok("POST", "/api/password/change"), Route::PasswordChange);
        assert_eq!(ok("POST", "/api/password/reset/"), Route::PasswordReset);
        assert_eq!(
            ok("POST", "/api/password/reset/confirm"),
            Route::PasswordResetConfirm
        );
        assert_eq!(ok("POST", "/api/email/verify/"), Route::EmailVerify);
        assert_eq!(
            ok("POST", "/api/email/verify/resend"),
            Route::EmailVerifyResend
        );
        assert_eq!(session_id("/api/sessions/12/"), Some(12));
        for bad in [
            "/api/sessions/",
            "/api/sessions/x/",
            "/api/sessions/-1/",
            "/api/sessions/1/2/",
            "/api/sessions/9999999999999999999/",
        ] {
            assert_eq!(session_id(bad), None, "{bad}");
        }
        assert!(matches!(
            route("DELETE", "/api/sessions/abc/"),
            Err(ApiError::NotFound)
        ));
    }

    #[test]
    fn metrics_indexes_name_the_same_routes() {
        for (path, route, _) in ROUTES {
            let label = crate::metrics::ROUTES[route.metrics_index()];
            assert!(path.contains(label), "{path} {label}");
            assert_eq!(route_of(path), Some(*route));
        }
        assert_eq!(route_of("/nope"), None);
    }

    #[test]
    fn query_strings_are_ignored() {
        assert_eq!(ok("GET", "/api/user/?x=1"), Route::User);
        assert_eq!(ok("GET", "/api/user?"), Route::User);
        assert_eq!(ok("GET", "/healthz?a=/b"), Route::Healthz);
    }

    #[test]
    fn unknown_paths_are_404() {
        for url in [
            "/",
            "",
            "/api",
            "/api/",
            "/api/users/",
            "//api/user/",
            "/api//user/",
            "/api/user//",
            "/API/USER/",
            "/api/user/x",
            "/api/%75ser/",
            "*",
        ] {
            assert!(
                matches!(route("GET", url), Err(ApiError::NotFound)),
                "{url:?}"
            );
        }
    }

    #[test]
    fn wrong_methods_are_405_with_allow() {
        match route("GET", "/api/login/") {
            Err(ApiError::MethodNotAllowed { method, allow }) => {
                assert_eq!(method, "GET");
                assert_eq!(allow, "POST, OPTIONS");
            }
            other => panic!("{other:?}"),
        }
        match route("DELETE", "/api/user") {
            Err(ApiError::MethodNotAllowed { allow, .. }) => {
                assert_eq!(allow, "GET, HEAD, OPTIONS")
            }
            other => panic!("{other:?}"),
        }
        assert!(route("POST", "/healthz").is_err());
        assert!(route("PUT", "/api/register/").is_err());
    }

    #[test]
    fn head_is_get_and_options_is_a_preflight() {
        assert_eq!(ok("HEAD", "/api/user/"), Route::User);
        assert!(route("HEAD", "/api/login/").is_err());
        let m = route("OPTIONS", "/api/login/").unwrap();
        assert!(m.preflight);
        assert_eq!(m.route, Route::Login);
    }
}
