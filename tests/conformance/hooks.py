"""schemathesis hooks for `make conformance` (scripts/conformance.sh loads this file).

- GET /api/user/ gets a fresh session cookie: POST /api/logout/, also under test, revokes
  tokens, so one cookie for the whole run would be revoked halfway.
- The contract answers a taken email with 400 (DRF's behaviour, API.md), where schemathesis
  expects 409 for a conflict. schemathesis.toml lets a schema-valid registration get a 400;
  the check below makes sure that 400 is *only* ever the taken-email one.
"""
import json
import os
import secrets
import urllib.request

import schemathesis
from schemathesis import GenerationMode

BASE = os.environ["AUTHD_BASE"]
TAKEN = {"email": ["user with this email already exists."]}


def _post(path, body):
    req = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    return urllib.request.urlopen(req, timeout=10)


@schemathesis.auth(refresh_interval=None).apply_to(method="GET", path="/api/user/")
class Session:
    """Registers a user and logs in, once per request."""

    def get(self, case, ctx):
        email = f"session-{secrets.token_hex(6)}@example.com"
        _post("/api/register/", {"name": "Session", "email": email, "password": "Password123"})
        resp = _post("/api/login/", {"email": email, "password": "Password123"})
        cookie = resp.headers["Set-Cookie"]
        return cookie.split(";", 1)[0].split("=", 1)[1]

    def set(self, case, data, ctx):
        case.cookies = {**(case.cookies or {}), "jwt": data}


@schemathesis.check
def schema_valid_registrations_are_refused_only_for_a_taken_email(ctx, response, case):
    if case.operation.label != "POST /api/register/" or response.status_code != 400:
        return None
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return None
    body = response.json()
    if body != TAKEN:
        raise AssertionError(f"a schema-valid registration was refused: {body}")
    return None
