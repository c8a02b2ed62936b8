//! The request as handlers see it (headers, a JSON body read within the limit), and the
//! reply they give back (status, JSON body, headers).

use std::io::Read;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::guard::Activity;

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

/// One request, as handlers see it.
pub struct Req<'a> {
    raw: &'a mut tiny_http::Request,
    /// The client's address.
    pub peer: Option<IpAddr>,
    activity: Option<&'a Activity>,
}

impl<'a> Req<'a> {
    /// Wraps a tiny_http request from client address `peer`.
    pub fn new(
        raw: &'a mut tiny_http::Request,
        peer: Option<IpAddr>,
        activity: Option<&'a Activity>,
    ) -> Req<'a> {
        Req {
            raw,
            peer,
            activity,
        }
    }

    /// The method, as sent.
    pub fn method(&self) -> String {
        self.raw.method().as_str().to_string()
    }

    /// The request target (path and query).
    pub fn url(&self) -> &str {
        self.raw.url()
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every header called `name` (case-insensitive), in order.
    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.raw
            .headers()
            .iter()
            .filter(move |h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The value of the session cookie, if the client sent one. An oversized `Cookie`
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

    /// Whether the request carries a body (a non-zero length, or chunked).
    fn has_body(&self) -> bool {
        self.header("Transfer-Encoding").is_some() || self.raw.body_length().unwrap_or(0) > 0
    }

    /// Reads the body as a JSON object, enforcing the media type and `max` bytes (a declared
    /// length over the limit is refused without reading). No body is an empty object.
    pub fn json_object(&mut self, max: usize) -> Result<Map<String, Value>, ApiError> {
        if !self.has_body() {
            return Ok(Map::new());
        }
        let ctype = self.header("Content-Type").unwrap_or("").to_string();
        let media = ctype.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType(ctype));
        }
        if self.raw.body_length().unwrap_or(0) > max {
            return Err(ApiError::PayloadTooLarge(max));
        }
        // The guard cuts the connection if the body takes longer than READ_TIMEOUT.
        let addr = self.raw.remote_addr().copied();
        let hook = self.activity.zip(addr);
        if let Some((a, peer)) = hook {
            a.body_started(peer);
        }
        let mut body = Vec::new();
        let read = self
            .raw
            .as_reader()
            .take(max as u64 + 1)
            .read_to_end(&mut body);
        if let Some((a, peer)) = hook {
            a.body_done(peer);
        }
        let declared = self.raw.body_length();
        if read.is_err() || declared.is_some_and(|n| body.len() < n) {
            return Err(ApiError::BadRequest("The request body could not be read."));
        }
        if body.len() > max {
            return Err(ApiError::PayloadTooLarge(max));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadJson("the body is empty".into()));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::BadJson("expected a JSON object".into())),
            Err(e) => Err(ApiError::BadJson(e.to_string())),
        }
    }
}

/// Refuses requests whose framing tiny_http would get wrong: a `Content-Length` that is not
/// plain digits, two that disagree, one beside `Transfer-Encoding`, or a transfer coding
/// other than `chunked` (tiny_http treats every value as chunked).
pub fn check_framing(req: &Req) -> Result<(), ApiError> {
    let lengths: Vec<&str> = req.headers("Content-Length").map(str::trim).collect();
    if lengths
        .iter()
        .any(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ApiError::BadRequest("Invalid Content-Length header."));
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err(ApiError::BadRequest("Conflicting Content-Length headers."));
    }
    let codings: Vec<&str> = req.headers("Transfer-Encoding").collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(ApiError::BadRequest(
                "Content-Length and Transfer-Encoding together are refused.",
            ));
        }
        if codings.len() > 1 || !codings[0].trim().eq_ignore_ascii_case("chunked") {
            return Err(ApiError::BadRequest("Unsupported Transfer-Encoding."));
        }
    }
    Ok(())
}

/// The request's `Origin`, when it is one of `allowed` (for CORS with credentials).
pub fn cors_origin(req: &Req, allowed: &[String]) -> Option<String> {
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
pub fn check_origin(req: &Req, allowed: &[String]) -> Result<(), ApiError> {
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
