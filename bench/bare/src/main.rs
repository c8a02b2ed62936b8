//! The bare stack: `bare ADDR` with DATABASE_URL and SECRET_KEY set. See Cargo.toml.
use std::sync::Arc;

#[derive(serde::Deserialize)]
struct Claims {
    id: i64,
}

fn main() {
    let addr = std::env::args().nth(1).expect("usage: bare ADDR");
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let secret = std::env::var("SECRET_KEY").expect("SECRET_KEY");
    let server = Arc::new(tiny_http::Server::http(addr).expect("bind"));
    let manager = r2d2_postgres::PostgresConnectionManager::new(
        url.parse().expect("DATABASE_URL"),
        postgres::NoTls,
    );
    let pool = r2d2::Pool::builder()
        .max_size(4)
        .build(manager)
        .expect("pool");
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 2;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (server, pool, key, validation) = (
                server.clone(),
                pool.clone(),
                key.clone(),
                validation.clone(),
            );
            std::thread::spawn(move || {
                let mut conn = pool.get().expect("connection");
                let st = conn
                    .prepare("SELECT id, name, email FROM accounts_user WHERE id = $1")
                    .expect("prepare");
                for rq in server.incoming_requests() {
                    let token = rq
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Cookie"))
                        .and_then(|h| h.value.as_str().strip_prefix("jwt="))
                        .unwrap_or("")
                        .to_string();
                    let (status, body) =
                        match jsonwebtoken::decode::<Claims>(&token, &key, &validation) {
                            Ok(d) => match conn.query_opt(&st, &[&d.claims.id]) {
                                Ok(Some(r)) => {
                                    let (id, name, email): (i64, String, String) =
                                        (r.get(0), r.get(1), r.get(2));
                                    let v =
                                        serde_json::json!({"id": id, "name": name, "email": email});
                                    (200, v.to_string())
                                }
                                _ => (401, "{}".to_string()),
                            },
                            Err(_) => (401, "{}".to_string()),
                        };
                    let resp = tiny_http::Response::from_string(body).with_status_code(status);
                    let _ = rq.respond(resp);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}
