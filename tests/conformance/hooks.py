"""schemathesis hooks for `make conformance` (scripts/conformance.sh loads this file).

- GET /api/user/ gets a fresh session cookie: POST /api/logout/, also under test, revokes
  tokens, so one cookie for the whole run would be revoked halfway.
- Each generated registration starts from a database without its mailbox: the fuzzer draws
  the same small addresses again and again, and a taken email is (rightly) a 400, which
  would hide whether a schema-valid registration is accepted. The duplicate case itself is
  covered by the black-box tests.
- Password-reset confirmation and e-mail verification get a live token (see RECOVERY).
"""
import json
import os
import secrets
import subprocess
import urllib.request

import schemathesis

BASE = os.environ["AUTHD_BASE"]
DSN = os.environ["AUTHD_DSN"]


def _post(path, body):
    req = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    return urllib.request.urlopen(req, timeout=10)


@schemathesis.auth(refresh_interval=None).apply_to(
    method="GET", path="/api/user/"
).apply_to(method="GET", path="/api/sessions/").apply_to(
    method="POST", path="/api/token/refresh/"
).apply_to(method="DELETE", path="/api/sessions/{id}/")
class Session:
    """Registers a user and logs in, once per request: both cookies."""

    def get(self, case, ctx):
        email = f"session-{secrets.token_hex(6)}@example.com"
        _post("/api/register/", {"name": "Session", "email": email, "password": "Password123"})
        resp = _post("/api/login/", {"email": email, "password": "Password123"})
        cookies = {}
        for header in resp.headers.get_all("Set-Cookie"):
            name, value = header.split(";", 1)[0].split("=", 1)
            cookies[name] = value
        return cookies

    def set(self, case, data, ctx):
        case.cookies = {**(case.cookies or {}), **data}


# Tokens of account recovery are mailed, so the fuzzer cannot know one: a string it
# generates gets 400 "Invalid or expired token." and a schema-valid request never reaches
# the code that accepts one. Each such request gets a live token of a user of its own,
# made as authd makes them (only the SHA-256 stored, with the hash of the password it was
# made for).
RECOVERY = {"POST /api/password/reset/confirm/": "r", "POST /api/email/verify/": "v"}


def _live_token(purpose):
    email = f"session-recovery-{secrets.token_hex(6)}@example.com"
    _post("/api/register/", {"name": "Recovery", "email": email, "password": "Password123"})
    token = secrets.token_urlsafe(32)
    subprocess.run(
        ["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-v", f"email={email}",
         "-v", f"token={token}", "-v", f"purpose={purpose}", DSN],
        input="INSERT INTO authd_recovery_token "
        "(token_hash, purpose, user_id, email, password_fp, expires_at) "
        "SELECT sha256(convert_to(:'token', 'UTF8')), :'purpose', id, email, "
        "sha256(convert_to(password, 'UTF8')), now() + interval '1 hour' "
        "FROM accounts_user WHERE email = :'email';\n",
        text=True, check=True, stdout=subprocess.DEVNULL,
    )
    return token


@schemathesis.hook
def before_call(context, case, kwargs):
    purpose = RECOVERY.get(case.operation.label)
    if purpose and isinstance(case.body, dict) and isinstance(case.body.get("token"), str):
        case.body["token"] = _live_token(purpose)
        return
    if case.operation.label != "POST /api/register/" or not isinstance(case.body, dict):
        return
    email = case.body.get("email")
    if not isinstance(email, str) or "\x00" in email:
        return
    trimmed = email.strip(" \t\n\v\f\r")  # as the server trims it
    # psql interpolates :'email' (quoted as a literal) only in what it reads, not in -c.
    subprocess.run(
        ["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-v", f"email={trimmed}", DSN],
        # Every spelling of one mailbox is one account (authd's canonical form, computed in
        # Rust), so lower() alone would leave variants behind: clear every account but the
        # sessions' own.
        input="DELETE FROM accounts_user WHERE email NOT LIKE 'session-%' "
        "OR lower(email) = lower(:'email');\n",
        text=True, check=True, stdout=subprocess.DEVNULL,
    )
