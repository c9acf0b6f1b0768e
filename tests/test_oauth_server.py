"""The built-in authorization server: SMART Backend Services (private_key_jwt, secrets, scope
narrowing), discovery documents and the CLI (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select

import oauthhelpers as h
from drimhub.server.auth import clients, tokens
from drimhub.server.cli import main
from drimhub.store.engine import make_engine, make_sessionmaker
from drimhub.store.security import OAuthClient, User



# --- SMART Backend Services -----------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_token(app: Flask, client: FlaskClient, alg: str) -> None:
    key = h.client_key(alg)
    client_id, _ = h.register(app, h.BACKEND_SCOPE, org="ris-vendor", jwks=h.jwks_of(key))
    response = client.post("/oauth/token", data=h.backend_form(key, client_id))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/ImagingStudy.rs"
    assert 0 < body["expires_in"] <= 300
    assert response.headers["Cache-Control"] == "no-store"
    token = h.decode(app, body["access_token"])
    assert token.header["typ"] == "at+jwt" and token.header["kid"] == h.node_key(app).kid
    claims = token.claims
    assert claims["iss"] == "http://localhost" and claims["aud"] == "http://localhost"
    assert claims["sub"] == claims["client_id"] == client_id
    assert claims["org"] == "ris-vendor" and claims["scope"] == "system/ImagingStudy.rs"
    assert claims["exp"] - claims["iat"] <= 300 and claims["jti"]


def test_replayed_jti_is_refused(app: Flask, client: FlaskClient) -> None:
    key = h.client_key("RS384")
    client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks=h.jwks_of(key))
    form = h.backend_form(key, client_id)
    assert client.post("/oauth/token", data=form).status_code == 200
    replay = client.post("/oauth/token", data=form)
    assert replay.status_code == 401 and h.error_of(replay) == "invalid_client"
    # the same jti in a freshly signed assertion is a replay too
    again = client.post("/oauth/token", data=h.backend_form(key, client_id, jti=json.loads(
        base64.urlsafe_b64decode(form["client_assertion"].split(".")[1] + "=="))["jti"]))
    assert again.status_code == 401


@pytest.mark.parametrize(("case", "kw"), [
    ("exp more than 5 minutes ahead", {"exp_in": 600}),
    ("expired", {"exp_in": -120}),
    ("wrong aud", {"aud": "https://other.example/oauth/token"}),
    ("aud is the base URL, not the token endpoint", {"aud": "http://localhost"}),
    ("unknown kid", {"kid": "no-such-kid"}),
    ("RS256 is not offered", {"alg": "RS256"}),
])
def test_bad_assertions_are_refused(app: Flask, client: FlaskClient, case: str, kw: dict[str, object]) -> None:
    key = h.client_key("RS384")
    client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks=h.jwks_of(key))
    response = client.post("/oauth/token", data=h.backend_form(key, client_id, **kw))  # type: ignore[arg-type]
    assert response.status_code == 401, case
    assert h.error_of(response) == "invalid_client", case


def test_assertion_signed_by_another_key_is_refused(app: Flask, client: FlaskClient) -> None:
    key, impostor = h.client_key("RS384", kid="k1"), h.client_key("RS384", kid="k1")
    client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks=h.jwks_of(key))
    response = client.post("/oauth/token", data=h.backend_form(impostor, client_id))
    assert response.status_code == 401 and h.error_of(response) == "invalid_client"


def test_unknown_client_is_refused(client: FlaskClient) -> None:
    key = h.client_key("RS384")
    response = client.post("/oauth/token", data=h.backend_form(key, "no-such-client"))
    assert response.status_code == 401 and h.error_of(response) == "invalid_client"


def test_jwks_by_url_with_key_rotation(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients.JWKS_CACHE, "min_refetch", 0)
    old, new = h.client_key("ES384"), h.client_key("RS384")
    with h.serve_json(h.jwks_of(old)) as (url, served):
        client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks_url=url)
        assert client.post("/oauth/token", data=h.backend_form(old, client_id)).status_code == 200
        assert client.post("/oauth/token", data=h.backend_form(old, client_id)).status_code == 200
        assert served["hits"] == 1  # cached
        served["doc"] = h.jwks_of(new)  # the client rotates its key: an unknown kid refetches
        assert client.post("/oauth/token", data=h.backend_form(new, client_id)).status_code == 200
        assert served["hits"] == 2


def test_peer_node_authenticates_with_its_own_jwks_url(app: Flask, live_server: str) -> None:
    """A peer registered with --jwks-url <peer>/oauth/jwks signs with its node key (ARCHITECTURE §3)."""
    app.config["BASE_URL"] = live_server
    client_id, _ = h.register(app, "system/*.rs", jwks_url=f"{live_server}/oauth/jwks")
    form = h.backend_form(h.node_key(app), client_id, scope="system/ImagingStudy.rs",
                          aud=f"{live_server}/oauth/token")
    response = requests.post(f"{live_server}/oauth/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    assert h.decode(app, response.json()["access_token"]).claims["aud"] == live_server


@pytest.mark.parametrize(("requested", "granted"), [
    ("system/ImagingStudy.cruds system/Observation.rs user/*.rs", "system/ImagingStudy.rs"),
    ("system/*.read", "system/ImagingStudy.rs system/Patient.r"),
    (None, "system/ImagingStudy.rs system/Patient.r"),
    ("system/Patient.rs launch", "system/Patient.r"),
])
def test_scope_is_narrowed_to_the_registration(app: Flask, client: FlaskClient, requested: str | None,
                                               granted: str) -> None:
    key = h.client_key("RS384")
    client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks=h.jwks_of(key))
    response = client.post("/oauth/token", data=h.backend_form(key, client_id, scope=requested))
    assert response.status_code == 200
    assert response.get_json()["scope"] == granted
    assert h.decode(app, response.get_json()["access_token"]).claims["scope"] == granted


def test_no_registered_scope_in_common_is_invalid_scope(app: Flask, client: FlaskClient) -> None:
    key = h.client_key("RS384")
    client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks=h.jwks_of(key))
    response = client.post("/oauth/token", data=h.backend_form(key, client_id, scope="system/Observation.rs"))
    assert response.status_code == 400 and h.error_of(response) == "invalid_scope"


def test_client_secret_basic_and_post(app: Flask, client: FlaskClient) -> None:
    client_id, secret = h.register(app, h.BACKEND_SCOPE, org="pacs", secret=True)
    assert secret
    data = {"grant_type": "client_credentials", "scope": "system/ImagingStudy.rs"}
    basic = client.post("/oauth/token", data=data, auth=(client_id, secret))
    assert basic.status_code == 200 and h.decode(app, basic.get_json()["access_token"]).claims["org"] == "pacs"
    post = client.post("/oauth/token", data={**data, "client_id": client_id, "client_secret": secret})
    assert post.status_code == 200
    wrong = client.post("/oauth/token", data=data, auth=(client_id, "not-the-secret"))
    assert wrong.status_code == 401 and h.error_of(wrong) == "invalid_client"
    assert "WWW-Authenticate" in wrong.headers


def test_oauth_errors_keep_the_rfc6749_form(client: FlaskClient) -> None:
    response = client.post("/oauth/token", data={"grant_type": "password", "username": "x", "password": "y"})
    assert response.status_code == 400 and h.error_of(response) == "unsupported_grant_type"
    assert response.mimetype == "application/json"
    wrong_method = client.get("/oauth/token")
    assert wrong_method.status_code == 405 and h.error_of(wrong_method) == "invalid_request"
    assert "POST" in wrong_method.headers["Allow"]


def test_framework_errors_under_oauth_use_rfc6749_codes(app: Flask, anon: FlaskClient) -> None:
    @app.post("/oauth/boom")
    def boom() -> None:
        raise RuntimeError("detail for the log only")

    missing = anon.get("/oauth/nothing-here")
    assert missing.status_code == 404 and h.error_of(missing) == "invalid_request"
    assert anon.post("/.well-known/oauth-authorization-server").json["error"] == "invalid_request"  # 405
    failed = anon.post("/oauth/boom")
    assert failed.status_code == 500 and failed.json == {"error": "server_error", "error_description": "internal server error"}
    assert anon.get("/fhir/nothing-here").json["resourceType"] == "OperationOutcome"  # other spaces unchanged


# --- discovery ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"])
def test_smart_configuration(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    doc = response.get_json()
    for field in ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "grant_types_supported",
                  "capabilities", "code_challenge_methods_supported", "scopes_supported", "response_types_supported",
                  "introspection_endpoint", "revocation_endpoint", "token_endpoint_auth_methods_supported",
                  "token_endpoint_auth_signing_alg_values_supported"):
        assert field in doc, field
    assert doc["token_endpoint"] == "http://localhost/oauth/token"
    assert doc["code_challenge_methods_supported"] == ["S256"] and doc["response_types_supported"] == ["code"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert {"client-confidential-asymmetric", "permission-v2", "launch-standalone"} <= set(doc["capabilities"])
    assert "permission-patient" not in doc["capabilities"]
    assert {"client_credentials", "authorization_code", "refresh_token"} == set(doc["grant_types_supported"])


def test_oauth_metadata_and_jwks(app: Flask, client: FlaskClient) -> None:
    meta = client.get("/.well-known/oauth-authorization-server").get_json()
    assert meta["issuer"] == "http://localhost" and meta["jwks_uri"] == "http://localhost/oauth/jwks"
    assert "capabilities" not in meta
    keys = client.get("/oauth/jwks").get_json()["keys"]
    assert [k["kid"] for k in keys] == [h.node_key(app).kid] and "d" not in keys[0]


def test_configured_base_url_and_issuer(app: Flask, client: FlaskClient) -> None:
    app.config.update(BASE_URL="https://node.example/", ISSUER="https://id.example")
    doc = client.get("/.well-known/smart-configuration").get_json()
    assert doc["issuer"] == "https://id.example" and doc["token_endpoint"] == "https://node.example/oauth/token"
    key = h.client_key("RS384")
    client_id, _ = h.register(app, h.BACKEND_SCOPE, jwks=h.jwks_of(key))
    form = h.backend_form(key, client_id, aud="https://node.example/oauth/token")
    claims = h.decode(app, client.post("/oauth/token", data=form).get_json()["access_token"]).claims
    assert claims["iss"] == "https://id.example" and claims["aud"] == "https://node.example"


# --- command line ---------------------------------------------------------------------------

@pytest.fixture
def env(fresh_db_url: str, tmp_path: Path, signing_key_pem: str) -> dict[str, str]:
    return {"DRIMHUB_DATA_DIR": str(tmp_path / "var"), "DRIMHUB_DATABASE_URL": fresh_db_url,
            "DRIMHUB_SIGNING_KEY": signing_key_pem}


def test_cli_token(env: dict[str, str], signing_key_pem: str) -> None:
    result = CliRunner().invoke(main, ["token", "--scope", "system/*.rs", "--org", "org-b", "--sub", "ops",
                                       "--ttl", "60"], env=env)
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert "\n" not in token
    claims = jwt.decode(token, RSAKey.import_key(signing_key_pem), algorithms=["RS384"]).claims
    assert claims["aud"] == claims["iss"] == "http://127.0.0.1:8080"
    assert claims["org"] == "org-b" and claims["sub"] == "ops" and claims["exp"] - claims["iat"] == 60
    defaults = CliRunner().invoke(main, ["token", "--scope", "system/*.rs"],
                                  env={**env, "DRIMHUB_BASE_URL": "https://node.example"})
    claims = jwt.decode(defaults.output.strip(), RSAKey.import_key(signing_key_pem), algorithms=["RS384"]).claims
    assert claims["org"] == "local" and claims["aud"] == claims["iss"] == "https://node.example"


def test_cli_client_create_and_user_add(env: dict[str, str], fresh_db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    secret = runner.invoke(main, ["client", "create", "RIS", "--scope", "system/*.rs", "--secret"], env=env)
    assert secret.exit_code == 0, secret.output
    out = json.loads(secret.output)
    assert out["client_secret"] and out["org"] == "local" and out["token_endpoint_auth_method"] == "client_secret_basic"
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(h.jwks_of(h.client_key("RS384"))))
    keyed = runner.invoke(main, ["client", "create", "PACS", "--scope", "system/ImagingStudy.c", "--org", "org-a",
                                 "--jwks-file", str(jwks_file)], env=env)
    assert keyed.exit_code == 0, keyed.output
    assert "client_secret" not in json.loads(keyed.output)
    both = runner.invoke(main, ["client", "create", "X", "--scope", "s", "--secret", "--jwks-url", "http://a/"],
                         env=env)
    assert both.exit_code != 0 and "at most one" in both.output
    added = runner.invoke(main, ["user", "add", "carol", "--org", "org-a", "--scope", "user/*.rs",
                                 "--password-stdin"], input=h.PASSWORD + "\n", env=env)
    assert added.exit_code == 0, added.output
    dup = runner.invoke(main, ["user", "add", "carol", "--scope", "user/*.rs", "--password-stdin"],
                        input=h.PASSWORD + "\n", env=env)
    assert dup.exit_code != 0 and "exists" in dup.output
    engine = make_engine(fresh_db_url)
    with make_sessionmaker(engine)() as session:
        carol = session.scalar(select(User).where(User.username == "carol"))
        pacs = session.scalar(select(OAuthClient).where(OAuthClient.name == "PACS"))
    engine.dispose()
    assert carol is not None and carol.org == "org-a" and carol.password_hash.startswith("$argon2id$")
    assert pacs is not None and pacs.org == "org-a" and pacs.auth_method == "private_key_jwt"
