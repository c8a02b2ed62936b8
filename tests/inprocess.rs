//! Handlers called in-process, as plain functions: an owned `Request` built by hand goes
//! through the same `respond` the server's workers call, against a real PostgreSQL, with
//! no socket in between.
mod common;

use std::collections::HashMap;

use authd::http::{Body, Request};
use authd::{Config, Ctx, router, server};
use common::*;
use serde_json::{Value, json};

fn ctx(db: &TestDb) -> Ctx {
    let env: HashMap<String, String> = [
        ("DATABASE_URL", db.url()),
        ("SECRET_KEY", SECRET.to_string()),
        ("BCRYPT_COST", "4".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = Config::from_map(&env).expect("a valid config");
    authd::db::migrate(&config.database).expect("migrate");
    let ctx = Ctx::new(config);
    ctx.set_migrated();
    ctx
}

/// The reply's status, headers and JSON body for `req`, routed as the server routes it.
fn call(ctx: &Ctx, req: &Request) -> (u16, Vec<(&'static str, String)>, Value) {
    let reply = match router::route(&req.method, &req.target) {
        Ok(matched) => server::respond(ctx, req, matched).unwrap_or_else(|e| e.into_reply()),
        Err(e) => e.into_reply(),
    };
    let body = serde_json::from_slice(&reply.body).expect("a JSON body");
    (reply.status, reply.headers, body)
}

#[test]
fn register_login_user_and_logout_run_as_plain_functions() {
    let db = TestDb::new();
    let ctx = ctx(&db);
    let creds = json!({"email": "in@example.com", "password": "Password123"});
    let register = Request::fake("POST", "/api/register/")
        .with_json(&json!({"name": "In", "email": "in@example.com", "password": "Password123"}));
    let (status, _, body) = call(&ctx, &register);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["email"], "in@example.com");

    let (status, headers, _) = call(&ctx, &Request::fake("POST", "/api/login").with_json(&creds));
    assert_eq!(status, 200);
    let cookie = headers
        .iter()
        .find(|(k, _)| *k == "Set-Cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_string())
        .expect("a Set-Cookie");

    let user = Request::fake("GET", "/api/user/").with_header("Cookie", &cookie);
    let (status, _, body) = call(&ctx, &user);
    assert_eq!((status, body["name"].as_str()), (200, Some("In")));

    let logout = Request::fake("POST", "/api/logout/").with_header("Cookie", &cookie);
    assert_eq!(call(&ctx, &logout).0, 200);
    assert_eq!(call(&ctx, &user).0, 401);
}

#[test]
fn the_same_rules_hold_without_a_socket() {
    let db = TestDb::new();
    let ctx = ctx(&db);
    let cases: Vec<(Request, u16)> = vec![
        (Request::fake("GET", "/nowhere"), 404),
        (Request::fake("GET", "/api/login/"), 405),
        (Request::fake("GET", "/api/user/"), 401),
        (Request::fake("GET", "/healthz"), 200),
        (
            Request::fake("POST", "/api/login/")
                .with_json(&json!({"email": "x@example.com", "password": "Password123"}))
                .with_header("Origin", "https://evil.example"),
            403,
        ),
        (
            Request {
                body: Body::TooLarge,
                ..Request::fake("POST", "/api/register/")
                    .with_header("Content-Type", "application/json")
            },
            413,
        ),
        (
            Request {
                body: Body::Bytes(b"{}".to_vec()),
                ..Request::fake("POST", "/api/register/").with_header("Content-Type", "text/plain")
            },
            415,
        ),
        (
            Request::fake("POST", "/api/register/").with_json(&json!({})),
            400,
        ),
    ];
    for (req, want) in cases {
        let (status, _, body) = call(&ctx, &req);
        assert_eq!(status, want, "{} {}: {body}", req.method, req.target);
    }
}
