"""Helpers of the OAuth2 tests: client keys and assertions, PKCE pairs, registration, login."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey, KeyParameters, KeySet, RSAKey
from werkzeug.test import TestResponse

from drimhub.server.auth.clients import create_client
from drimhub.server.auth.users import add_user
from drimhub.store.engine import write_session

TOKEN_URL = "http://localhost/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery staple"
BACKEND_SCOPE = "system/ImagingStudy.rs system/Patient.r"


def node_key(app: Flask) -> RSAKey:
    key: RSAKey = app.extensions["drimhub"].signing_key
    return key


def decode(app: Flask, token: str) -> jwt.Token:
    return jwt.decode(token, node_key(app), algorithms=["RS384"])


def error_of(response: object) -> str:
    body = response.get_json()  # type: ignore[attr-defined]
    assert set(body) >= {"error"}, body
    return str(body["error"])


def client_key(alg: str, kid: str | None = None) -> RSAKey | ECKey:
    """A private key for ``alg`` (RS384 or ES384) with a ``kid``."""
    params: KeyParameters = {"kid": kid or uuid.uuid4().hex}
    if alg == "ES384":
        return ECKey.generate_key("P-384", params, private=True)
    return RSAKey.generate_key(2048, params, private=True)


def jwks_of(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return KeySet(list(keys)).as_dict(private=False)  # type: ignore[return-value]


def assertion(key: RSAKey | ECKey, client_id: str, *, alg: str | None = None, aud: str = TOKEN_URL,
              exp_in: int = 240, jti: str | None = None, kid: str | None = None) -> str:
    """A client assertion (SMART Backend Services) signed by ``key``."""
    alg = alg or ("ES384" if isinstance(key, ECKey) else "RS384")
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + exp_in, "iat": now,
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "typ": "JWT", "kid": kid or key.kid}, claims, key, algorithms=[alg])


def backend_form(key: RSAKey | ECKey, client_id: str, scope: str | None = "system/ImagingStudy.rs",
                 **kw: Any) -> dict[str, str]:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(key, client_id, **kw)}
    if scope is not None:
        form["scope"] = scope
    return form


def register(app: Flask, scope: str, **kw: Any) -> tuple[str, str | None]:
    """Register a client directly in the store; returns its id and secret."""
    with write_session(app.extensions["drimhub"].sessions) as session:
        row, secret = create_client(session, kw.pop("name", "test client"), scope, **kw)
    return row.client_id, secret


def add_professional(app: Flask, username: str = "alice", scope: str = "user/*.rs", org: str = "hospital-a") -> None:
    with write_session(app.extensions["drimhub"].sessions) as session:
        add_user(session, username, PASSWORD, scope=scope, org=org)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(client_id: str, challenge: str | None, method: str | None = "S256",
                     scope: str = "user/ImagingStudy.rs offline_access", **extra: str) -> dict[str, str]:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
              "state": "st-123", **extra}
    if challenge is not None:
        params["code_challenge"] = challenge
    if method is not None:
        params["code_challenge_method"] = method
    return params


def redirect_params(response: TestResponse) -> dict[str, str]:
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def login_code(http: FlaskClient, client_id: str, challenge: str, username: str = "alice",
               scope: str = "user/ImagingStudy.rs offline_access") -> str:
    """Log in at /oauth/authorize and return the authorization code."""
    form = {**authorize_params(client_id, challenge, scope=scope), "username": username, "password": PASSWORD,
            "action": "allow"}
    params = redirect_params(http.post("/oauth/authorize", data=form))
    assert params["state"] == "st-123"
    return params["code"]


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet request handler that answers JSON."""

    def send_json(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve_json(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Serve ``document`` (mutable: the dict yielded) as JSON on 127.0.0.1; yields its URL."""
    holder: dict[str, Any] = {"doc": document, "hits": 0}

    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            holder["hits"] += 1
            self.send_json(json.dumps(holder["doc"]).encode())

    with serving(Handler) as url:
        yield f"{url}/jwks.json", holder


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a free port of 127.0.0.1 in a thread; yields the server's base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
