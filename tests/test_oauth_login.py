"""The built-in authorization server for professionals: login with PKCE S256, refresh tokens,
revocation and introspection (SQLite and PostgreSQL)."""

from __future__ import annotations

import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey

import oauthhelpers as h
from drimhub.server.auth import server, tokens


# --- authorization code + PKCE --------------------------------------------------------------

@pytest.fixture
def app_client_id(app: Flask) -> str:
    """A public app (PKCE only) and a professional of hospital-a."""
    client_id, _ = h.register(app, "user/*.rs offline_access online_access", name="Viewer",
                              redirect_uris=[h.REDIRECT])
    h.add_professional(app, "alice", scope="user/ImagingStudy.rs user/Patient.rs", org="hospital-a")
    return client_id


def code_token(client: FlaskClient, client_id: str, code: str, verifier: str | None) -> object:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": h.REDIRECT, "client_id": client_id}
    if verifier is not None:
        data["code_verifier"] = verifier
    return client.post("/oauth/token", data=data)


def test_login_page_shows_client_and_scopes(client: FlaskClient, app_client_id: str) -> None:
    _, challenge = h.pkce_pair()
    page = client.get("/oauth/authorize", query_string=h.authorize_params(app_client_id, challenge))
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "Viewer" in html and "user/ImagingStudy.rs" in html and 'name="password"' in html
    assert page.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(("challenge", "method"), [(None, None), ("c" * 43, "plain"), ("c" * 43, None)],
                         ids=["no challenge", "plain", "method missing means plain"])
def test_authorize_without_s256_is_refused(client: FlaskClient, app_client_id: str, challenge: str | None,
                                           method: str | None) -> None:
    response = client.get("/oauth/authorize", query_string=h.authorize_params(app_client_id, challenge, method))
    params = h.redirect_params(response)
    assert params["error"] == "invalid_request" and params["state"] == "st-123"


def test_authorize_with_unknown_redirect_uri_does_not_redirect(client: FlaskClient, app_client_id: str) -> None:
    _, challenge = h.pkce_pair()
    params = {**h.authorize_params(app_client_id, challenge), "redirect_uri": "https://evil.example/cb"}
    response = client.get("/oauth/authorize", query_string=params)
    assert response.status_code == 400 and h.error_of(response) == "invalid_request"


def test_authorize_checks_smart_aud(client: FlaskClient, app_client_id: str) -> None:
    _, challenge = h.pkce_pair()
    good = client.get("/oauth/authorize", query_string=h.authorize_params(app_client_id, challenge,
                                                                         aud="http://localhost/fhir"))
    assert good.status_code == 200
    bad = client.get("/oauth/authorize", query_string=h.authorize_params(app_client_id, challenge,
                                                                        aud="https://other.example/fhir"))
    assert h.redirect_params(bad)["error"] == "invalid_request"


def test_wrong_password_and_deny(client: FlaskClient, app_client_id: str) -> None:
    _, challenge = h.pkce_pair()
    form = {**h.authorize_params(app_client_id, challenge), "username": "alice", "password": "wrong password",
            "action": "allow"}
    wrong = client.post("/oauth/authorize", data=form)
    assert wrong.status_code == 400 and "wrong password" in wrong.get_data(as_text=True)
    denied = client.post("/oauth/authorize", data={**form, "action": "deny"})
    assert h.redirect_params(denied)["error"] == "access_denied"


@pytest.mark.parametrize(("verifier", "error"), [(None, "invalid_request"), ("w" * 50, "invalid_grant")],
                         ids=["missing verifier", "wrong verifier"])
def test_code_exchange_needs_the_right_verifier(client: FlaskClient, app_client_id: str, verifier: str | None,
                                                error: str) -> None:
    right, challenge = h.pkce_pair()
    code = h.login_code(client, app_client_id, challenge)
    response = code_token(client, app_client_id, code, verifier)
    assert response.status_code == 400 and h.error_of(response) == error  # type: ignore[attr-defined]
    # the code was burnt by the failed attempt (single use)
    again = code_token(client, app_client_id, code, right)
    assert again.status_code == 400 and h.error_of(again) == "invalid_grant"  # type: ignore[attr-defined]


def test_s256_login_gives_a_user_token(app: Flask, client: FlaskClient, app_client_id: str) -> None:
    verifier, challenge = h.pkce_pair()
    code = h.login_code(client, app_client_id, challenge, scope="user/*.rs offline_access")
    response = code_token(client, app_client_id, code, verifier)
    assert response.status_code == 200, response.get_json()  # type: ignore[attr-defined]
    body = response.get_json()  # type: ignore[attr-defined]
    # user/*.rs of the app, narrowed to what alice holds
    assert body["scope"] == "user/ImagingStudy.rs user/Patient.rs offline_access"
    assert body["refresh_token"] and body["expires_in"] <= 300
    claims = h.decode(app, body["access_token"]).claims
    assert claims["sub"] == "alice" and claims["org"] == "hospital-a" and claims["client_id"] == app_client_id
    assert code_token(client, app_client_id, code, verifier).status_code == 400  # type: ignore[attr-defined]


def test_expired_code_is_refused(client: FlaskClient, app_client_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "CODE_TTL", -1)
    verifier, challenge = h.pkce_pair()
    code = h.login_code(client, app_client_id, challenge)
    response = code_token(client, app_client_id, code, verifier)
    assert response.status_code == 400 and h.error_of(response) == "invalid_grant"  # type: ignore[attr-defined]


def test_no_refresh_token_without_offline_or_online_access(client: FlaskClient, app_client_id: str) -> None:
    verifier, challenge = h.pkce_pair()
    code = h.login_code(client, app_client_id, challenge, scope="user/ImagingStudy.rs")
    body = code_token(client, app_client_id, code, verifier).get_json()  # type: ignore[attr-defined]
    assert "refresh_token" not in body and body["scope"] == "user/ImagingStudy.rs"


def test_user_without_any_requested_scope_is_denied(app: Flask, client: FlaskClient, app_client_id: str) -> None:
    h.add_professional(app, "bob", scope="user/Observation.rs")
    _, challenge = h.pkce_pair()
    form = {**h.authorize_params(app_client_id, challenge, scope="user/ImagingStudy.rs"), "username": "bob",
            "password": h.PASSWORD, "action": "allow"}
    assert h.redirect_params(client.post("/oauth/authorize", data=form))["error"] == "access_denied"


# --- refresh, revocation, introspection -----------------------------------------------------

def login_tokens(client: FlaskClient, client_id: str) -> dict[str, str]:
    verifier, challenge = h.pkce_pair()
    code = h.login_code(client, client_id, challenge)
    body: dict[str, str] = code_token(client, client_id, code, verifier).get_json()  # type: ignore[attr-defined]
    return body


def refresh(client: FlaskClient, client_id: str, token: str, scope: str | None = None) -> object:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    if scope:
        data["scope"] = scope
    return client.post("/oauth/token", data=data)


def test_refresh_tokens_rotate_and_revoke(app: Flask, client: FlaskClient, app_client_id: str) -> None:
    first = login_tokens(client, app_client_id)
    response = refresh(client, app_client_id, first["refresh_token"])
    assert response.status_code == 200, response.get_json()  # type: ignore[attr-defined]
    second = response.get_json()  # type: ignore[attr-defined]
    assert second["refresh_token"] != first["refresh_token"]
    assert h.decode(app, second["access_token"]).claims["sub"] == "alice"
    reused = refresh(client, app_client_id, first["refresh_token"])
    assert reused.status_code == 400 and h.error_of(reused) == "invalid_grant"  # type: ignore[attr-defined]
    revoked = client.post("/oauth/revoke", data={"token": second["refresh_token"], "client_id": app_client_id,
                                                 "token_type_hint": "refresh_token"})
    assert revoked.status_code == 200
    after = refresh(client, app_client_id, second["refresh_token"])
    assert after.status_code == 400 and h.error_of(after) == "invalid_grant"  # type: ignore[attr-defined]


def test_refresh_cannot_widen_the_scope(client: FlaskClient, app_client_id: str) -> None:
    first = login_tokens(client, app_client_id)
    wider = refresh(client, app_client_id, first["refresh_token"], scope="user/*.cruds offline_access")
    assert wider.status_code == 400 and h.error_of(wider) == "invalid_scope"  # type: ignore[attr-defined]


@pytest.fixture
def resource_server(app: Flask) -> tuple[str, str]:
    """A confidential client allowed to introspect (a resource server)."""
    client_id, secret = h.register(app, "system/*.rs", secret=True, name="gateway")
    assert secret
    return client_id, secret


def introspect(client: FlaskClient, auth: tuple[str, str], token: str) -> dict[str, object]:
    response = client.post("/oauth/introspect", data={"token": token}, auth=auth)
    assert response.status_code == 200, response.get_json()
    body: dict[str, object] = response.get_json()
    return body


def test_introspection_and_access_token_revocation(app: Flask, client: FlaskClient, app_client_id: str,
                                                   resource_server: tuple[str, str]) -> None:
    tokens_ = login_tokens(client, app_client_id)
    active = introspect(client, resource_server, tokens_["access_token"])
    assert active["active"] is True
    assert {"scope", "client_id", "sub", "org", "exp", "iss"} <= set(active)
    assert active["sub"] == "alice" and active["org"] == "hospital-a" and active["client_id"] == app_client_id
    refresh_info = introspect(client, resource_server, tokens_["refresh_token"])
    assert refresh_info["active"] is True and refresh_info["sub"] == "alice"
    revoked = client.post("/oauth/revoke", data={"token": tokens_["access_token"], "client_id": app_client_id})
    assert revoked.status_code == 200
    assert introspect(client, resource_server, tokens_["access_token"]) == {"active": False}


def test_introspection_of_expired_foreign_and_garbage_tokens(app: Flask, client: FlaskClient,
                                                              resource_server: tuple[str, str]) -> None:
    past = tokens.access_token_claims(issuer="http://localhost", audience="http://localhost", subject="x",
                                      client_id="x", scope="system/*.rs", org="local", now=int(time.time()) - 900)
    assert introspect(client, resource_server, tokens.sign(past, h.node_key(app))) == {"active": False}
    fresh = tokens.access_token_claims(issuer="http://localhost", audience="http://localhost", subject="x",
                                       client_id="x", scope="system/*.rs", org="local", patient="p1")
    assert introspect(client, resource_server, tokens.sign(fresh, h.node_key(app)))["patient"] == "p1"
    foreign_key = RSAKey.generate_key(2048, private=True)
    foreign_key.ensure_kid()
    assert introspect(client, resource_server, tokens.sign(fresh, foreign_key)) == {"active": False}
    other_iss = {**fresh, "iss": "https://elsewhere.example"}
    assert introspect(client, resource_server, tokens.sign(other_iss, h.node_key(app))) == {"active": False}
    assert introspect(client, resource_server, "not-a-token") == {"active": False}


def test_introspection_requires_client_authentication(client: FlaskClient, app_client_id: str) -> None:
    anonymous = client.post("/oauth/introspect", data={"token": "x"})
    assert anonymous.status_code == 401 and h.error_of(anonymous) == "invalid_client"
    public = client.post("/oauth/introspect", data={"token": "x", "client_id": app_client_id})
    assert public.status_code == 401


def test_introspection_with_private_key_jwt(app: Flask, client: FlaskClient) -> None:
    key = h.client_key("ES384")
    client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks=h.jwks_of(key))
    access = client.post("/oauth/token", data=h.backend_form(key, client_id)).get_json()["access_token"]
    response = client.post("/oauth/introspect", data={
        "token": access, "client_assertion_type": h.ASSERTION_TYPE,
        "client_assertion": h.assertion(key, client_id, aud="http://localhost/oauth/introspect")})
    assert response.status_code == 200 and response.get_json()["sub"] == client_id
