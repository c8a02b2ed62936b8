//! `POST /api/logout/?scope=local|others|global`: end sessions and clear the cookies.

use serde_json::json;

use super::session::clearing;
use crate::Ctx;
use crate::error::ApiError;
use crate::http::{Reply, Request};

/// Which sessions a logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// This session (the default).
    Local,
    /// Every other session of the user.
    Others,
    /// Every session of the user, this one included.
    Global,
}

fn scope_of(req: &Request) -> Result<Scope, ApiError> {
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let mut scope = Scope::Local;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "scope" {
            continue;
        }
        scope = match v {
            "local" => Scope::Local,
            "others" => Scope::Others,
            "global" => Scope::Global,
            _ => {
                return Err(ApiError::field(
                    "scope",
                    "Must be one of: local, others, global.",
                ));
            }
        };
    }
    Ok(scope)
}

/// Answers 200 with or without a valid token. The session is found from the access token,
/// even an expired one (its signature is still checked), or else from the refresh cookie.
/// What is revoked is written to the database first, so that it holds on every instance;
/// if that cannot be written the client is told (503), never a success that did not happen.
pub fn logout(ctx: &Ctx, req: &Request) -> Result<Reply, ApiError> {
    let scope = scope_of(req)?;
    let access = match req.cookie(&ctx.cookie.name)? {
        Some(t) => ctx.tokens.verify_allowing_expiry(&t).ok(),
        None => None,
    };
    let from_refresh = match req.cookie(&ctx.refresh_cookie.name)? {
        Some(t) => ctx.refresh.verify(&t).map(|(session, _)| session),
        None => None,
    };
    let session = access.as_ref().and_then(|a| a.session).or(from_refresh);
    let mut conn = None;
    let user = match (&access, session) {
        (Some(a), _) => Some(a.user_id),
        (None, Some(s)) => conn.get_or_insert(ctx.conn()?).session_user(s)?,
        (None, None) => None,
    };
    let mut revoked = 0;
    if let Some(user) = user {
        let conn = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(ctx.conn()?),
        };
        match scope {
            Scope::Local => {
                if let Some(s) = session {
                    revoked += u64::from(conn.revoke_session(user, s, "logout")?);
                }
            }
            Scope::Others => {
                if let Some(s) = session {
                    revoked = conn.revoke_sessions(user, Some(s), "logout others")?;
                }
            }
            Scope::Global => revoked = conn.revoke_sessions(user, None, "logout global")?,
        }
        // A token from before sessions is revoked by its key, as it always was (an expired
        // one needs nothing).
        let live =
            |a: &&crate::token::Verified| a.session.is_none() && a.exp > crate::token::now_secs();
        if let Some(a) = access.as_ref().filter(live) {
            if scope != Scope::Others {
                conn.revoke(&a.revocation_key, a.user_id, a.exp)?;
            }
        }
    }
    Ok(match scope {
        Scope::Local => clearing(ctx, Reply::json(200, &json!({ "message": "success" }))),
        Scope::Others => Reply::json(200, &json!({ "message": "success", "revoked": revoked })),
        Scope::Global => clearing(
            ctx,
            Reply::json(200, &json!({ "message": "success", "revoked": revoked })),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_comes_from_the_query_and_defaults_to_this_session() {
        let s = |t: &str| scope_of(&Request::fake("POST", t)).ok();
        assert_eq!(s("/api/logout/"), Some(Scope::Local));
        assert_eq!(s("/api/logout/?scope=local"), Some(Scope::Local));
        assert_eq!(s("/api/logout/?scope=others"), Some(Scope::Others));
        assert_eq!(s("/api/logout?x=1&scope=global"), Some(Scope::Global));
        assert_eq!(s("/api/logout/?scope=GLOBAL"), None);
        assert_eq!(s("/api/logout/?scope="), None);
        assert_eq!(s("/api/logout/?scope=all"), None);
    }
}
