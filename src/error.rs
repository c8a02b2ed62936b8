//! One error type for the API; the one place where an error becomes a status and a body.

use serde_json::{Map, Value, json};

use crate::db::DbError;
use crate::http::Reply;

/// Everything a request can fail with. Each variant knows its status and JSON body.
#[derive(Debug)]
pub enum ApiError {
    /// Fields missing, of the wrong type, or invalid: DRF's `{"field": ["message"]}`.
    Validation(Map<String, Value>),
    /// The body is not JSON, or not a JSON object.
    BadJson(String),
    /// The request itself is malformed (framing, headers).
    BadRequest(&'static str),
    /// A POST body whose media type is not JSON; carries the type as sent.
    UnsupportedMediaType(String),
    /// The body is larger than the configured limit (in bytes).
    PayloadTooLarge(usize),
    /// A header (the `Cookie`) is too large.
    HeaderTooLarge,
    /// Refused by the HTTP layer before any handler (400, 408, 414, 417, 431, 505); the
    /// connection closes after it.
    Wire(u16),
    /// Wrong email or password: one message for both.
    InvalidCredentials,
    /// No valid token.
    Unauthenticated,
    /// Too many failed logins: retry after this many seconds.
    Throttled(u64),
    /// Too many registrations from one client address: retry after this many seconds.
    RegistrationThrottled(u64),
    /// A cross-site POST.
    Forbidden(&'static str),
    /// Another request holds what this one needs (a session being refreshed): retry.
    Conflict(&'static str),
    /// Unknown path.
    NotFound,
    /// Known path, wrong method; `allow` lists the methods that are.
    MethodNotAllowed {
        /// The method the client used.
        method: String,
        /// The `Allow` header value.
        allow: &'static str,
    },
    /// Database unreachable, pool exhausted, or the server is overloaded; the cause goes to
    /// the log only.
    Unavailable(Cause),
    /// Anything else; the cause goes to the log only.
    Internal(Cause),
}

/// What made a request fail with a 5xx: kept whole, so that the log line shows its chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unavailable(c) => write!(f, "service unavailable: {c}"),
            ApiError::Internal(c) => write!(f, "internal error: {c}"),
            other => write!(f, "{} {:?}", other.status(), other),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Unavailable(c) | ApiError::Internal(c) => Some(c.as_ref()),
            _ => None,
        }
    }
}

impl ApiError {
    /// The log line for an error worth logging (5xx): the error and every cause under it.
    /// Logged once, where the request ends; `None` for the client's own mistakes.
    pub fn log_line(&self) -> Option<String> {
        if self.status() < 500 {
            return None;
        }
        let mut line = self.to_string();
        let mut next = std::error::Error::source(self).and_then(std::error::Error::source);
        while let Some(cause) = next {
            line.push_str(&format!(": {cause}"));
            next = cause.source();
        }
        Some(line)
    }
}

impl ApiError {
    /// A validation error for a single field.
    pub fn field(name: &str, message: impl Into<String>) -> ApiError {
        let mut m = Map::new();
        m.insert(name.to_string(), json!([message.into()]));
        ApiError::Validation(m)
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Validation(_) | ApiError::BadJson(_) | ApiError::BadRequest(_) => 400,
            ApiError::InvalidCredentials | ApiError::Unauthenticated => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::Conflict(_) => 409,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Throttled(_) | ApiError::RegistrationThrottled(_) => 429,
            ApiError::HeaderTooLarge => 431,
            ApiError::Wire(status) => *status,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// The response: status, JSON body, and the headers the status needs. Logs nothing:
    /// the server logs [`ApiError::log_line`] once, where the request ends.
    pub fn into_reply(self) -> Reply {
        let status = self.status();
        let detail = |s: &str| json!({ "detail": s });
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        let body = match self {
            ApiError::Validation(fields) => Value::Object(fields),
            ApiError::BadJson(why) => detail(&format!("JSON parse error - {why}")),
            ApiError::BadRequest(why) => detail(why),
            ApiError::UnsupportedMediaType(t) => {
                detail(&format!("Unsupported media type \"{t}\" in request."))
            }
            ApiError::PayloadTooLarge(limit) => detail(&format!(
                "Request body is too large (the limit is {limit} bytes)."
            )),
            ApiError::HeaderTooLarge => detail("Request header fields too large."),
            ApiError::Wire(status) => detail(match status {
                408 => "The request took too long to arrive.",
                413 => "Request body is too large.",
                414 => "The request target is too long.",
                417 => "Only the expectation 100-continue is supported.",
                431 => "Request header fields too large.",
                505 => "Only HTTP/1.0 and HTTP/1.1 are supported.",
                _ => "Malformed request.",
            }),
            ApiError::InvalidCredentials => detail("Invalid email or password."),
            ApiError::Unauthenticated => detail("Unauthenticated."),
            ApiError::Throttled(secs) => {
                headers.push(("Retry-After", secs.to_string()));
                detail(&format!(
                    "Too many failed login attempts. Try again in {secs} seconds."
                ))
            }
            ApiError::RegistrationThrottled(secs) => {
                headers.push(("Retry-After", secs.to_string()));
                detail(&format!(
                    "Too many registrations from this address. Try again in {secs} seconds."
                ))
            }
            ApiError::Forbidden(why) => detail(why),
            ApiError::Conflict(why) => {
                headers.push(("Retry-After", "1".to_string()));
                detail(why)
            }
            ApiError::NotFound => detail("Not found."),
            ApiError::MethodNotAllowed { method, allow } => {
                headers.push(("Allow", allow.to_string()));
                detail(&format!("Method \"{method}\" not allowed."))
            }
            ApiError::Unavailable(_) => {
                headers.push(("Retry-After", "2".to_string()));
                detail("Service temporarily unavailable, try again later.")
            }
            ApiError::Internal(_) => detail("Internal server error."),
        };
        let mut reply = Reply::json(status, &body);
        reply.headers.extend(headers);
        reply
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::Unavailable(cause) => ApiError::Unavailable(cause.into()),
            DbError::Other(cause) => ApiError::Internal(cause.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_status() {
        let cases = [
            (ApiError::field("email", "x"), 400),
            (ApiError::BadJson("eof".into()), 400),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415),
            (ApiError::PayloadTooLarge(10), 413),
            (ApiError::InvalidCredentials, 401),
            (ApiError::Unauthenticated, 401),
            (ApiError::Throttled(5), 429),
            (ApiError::Forbidden("no"), 403),
            (ApiError::NotFound, 404),
            (
                ApiError::MethodNotAllowed {
                    method: "GET".into(),
                    allow: "POST, OPTIONS",
                },
                405,
            ),
            (ApiError::Unavailable("down".into()), 503),
            (ApiError::Internal("secret cause".into()), 500),
            (ApiError::Wire(431), 431),
            (ApiError::Wire(505), 505),
        ];
        for (e, status) in cases {
            let r = e.into_reply();
            assert_eq!(r.status, status);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert!(v.is_object());
            assert!(!String::from_utf8_lossy(&r.body).contains("secret cause"));
        }
    }
}
