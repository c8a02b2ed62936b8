//! The request as handlers see it (owned: method, target, headers, body, client address),
//! and the reply they give back (status, JSON body, headers).

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Largest `Cookie` header accepted (all `Cookie` headers together), in bytes.
pub const MAX_COOKIE_BYTES: usize = 8192;

/// A response: status, JSON body, extra headers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Serialized JSON.
    pub body: Vec<u8>,
    /// Headers beyond the common ones.
    pub headers: Vec<(&'static str, String)>,
    /// `Content-Type`: JSON for everything but `/metrics` and the OpenAPI document.
    pub content_type: &'static str,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            body: serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
            headers: Vec::new(),
            content_type: "application/json",
        }
    }

    /// A 200 with a body that is not JSON.
    pub fn text(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            body,
            headers: Vec::new(),
            content_type,
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// A request body, as the HTTP layer delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body (no `Content-Length`, or zero, and not chunked).
    None,
    /// The whole body, read before the request reached a worker.
    Bytes(Vec<u8>),
    /// Larger than `MAX_BODY_BYTES`: never read.
    TooLarge,
}

/// One request, as handlers see it: owned, with nothing of the transport in it, so that a
/// handler is a plain function that tests can call in-process ([`Request::fake`]).
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The request target in origin form (path and query).
    pub target: String,
    /// Every header in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
    /// The client's address: the peer, or the one a trusted proxy forwarded.
    pub peer: Option<IpAddr>,
}

impl Request {
    /// A request built by hand (for in-process tests of handlers): no headers, no body.
    pub fn fake(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Body::None,
            peer: None,
        }
    }

    /// The same request with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The same request with a JSON body (and its `Content-Type`).
    pub fn with_json(self, body: &Value) -> Request {
        let mut r = self.with_header("Content-Type", "application/json");
        r.body = Body::Bytes(body.to_string().into_bytes());
        r
    }

    /// The same request from client address `peer`.
    pub fn with_peer(mut self, peer: IpAddr) -> Request {
        self.peer = Some(peer);
        self
    }

    /// The path, without the query string.
    pub fn path(&self) -> &str {
        crate::router::path_of(&self.target)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header called `name` (case-insensitive), in order.
    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the cookie `name`, if the client sent one. An oversized `Cookie`
    /// header is refused before it is parsed.
    pub fn cookie(&self, name: &str) -> Result<Option<String>, ApiError> {
        let total: usize = self.headers("Cookie").map(str::len).sum();
        if total > MAX_COOKIE_BYTES {
            return Err(ApiError::HeaderTooLarge);
        }
        Ok(self
            .headers("Cookie")
            .find_map(|h| crate::cookie::find(h, name))
            .map(str::to_string))
    }

    /// The body as a JSON object, enforcing the media type and `max` bytes. No body is an
    /// empty object.
    pub fn json_object(&self, max: usize) -> Result<Map<String, Value>, ApiError> {
        let body = match &self.body {
            Body::None => return Ok(Map::new()),
            Body::TooLarge => None,
            Body::Bytes(b) => Some(b),
        };
        let ctype = self.header("Content-Type").unwrap_or("");
        let media = ctype.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType(ctype.to_string()));
        }
        let body = match body {
            Some(b) if b.len() <= max => b,
            _ => return Err(ApiError::PayloadTooLarge(max)),
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadJson("the body is empty".into()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::BadJson("expected a JSON object".into())),
            Err(e) => Err(ApiError::BadJson(e.to_string())),
        }
    }
}

/// The request's `Origin`, when it is one of `allowed` (for CORS with credentials).
pub fn cors_origin(req: &Request, allowed: &[String]) -> Option<String> {
    let origin = req.header("Origin")?.trim();
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin))
        .then(|| origin.to_string())
}

/// Adds the CORS headers for an allowed origin: that exact origin, never `*`.
pub fn with_cors(reply: Reply, origin: String) -> Reply {
    reply
        .with("Access-Control-Allow-Origin", origin)
        .with("Access-Control-Allow-Credentials", "true".into())
        .with("Vary", "Origin".into())
}

/// CSRF defence for POSTs: an `Origin` must be the server's own (the `Host` it was
/// addressed as) or one of `allowed`. Requests without `Origin` (curl, servers) pass.
pub fn check_origin(req: &Request, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = req.header("Origin").map(str::trim) else {
        return Ok(());
    };
    let same_site = req.header("Host").is_some_and(|host| {
        let host = host.trim();
        ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|rest| !host.is_empty() && rest.eq_ignore_ascii_case(host))
        })
    });
    if same_site || cors_origin(req, allowed).is_some() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "Cross-site request refused: the Origin is not allowed.",
        ))
    }
}
