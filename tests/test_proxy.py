"""Behind a TLS-terminating reverse proxy: ``DRIMHUB_PROXY_HOPS`` and werkzeug's ProxyFix.

The node is reached at http://10.0.0.5 (the proxy's upstream) while clients see
https://pacs.example.org; ``BASE_URL`` is unset, so the public URL comes from the forwarded
headers, which are trusted only when ``PROXY_HOPS`` says a proxy sets them.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from drimhub.server.app import create_app
from drimhub.errors import DrimhubError
from oauthhelpers import backend_form, client_key, jwks_of, register

UPSTREAM = "http://10.0.0.5/"
PUBLIC = "https://pacs.example.org"
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org", "X-Forwarded-For": "192.0.2.7"}


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"BASE_URL": None, "PROXY_HOPS": getattr(request, "param", 1)}


def test_public_url_and_https_come_from_the_proxy(anon: FlaskClient) -> None:
    meta = anon.get("/.well-known/oauth-authorization-server", base_url=UPSTREAM, headers=FORWARDED).json
    assert meta["issuer"] == PUBLIC and meta["token_endpoint"] == f"{PUBLIC}/oauth/token"


def test_backend_services_token_behind_the_proxy(app: Flask, anon: FlaskClient) -> None:
    key = client_key("RS384")
    client_id, _ = register(app, "system/ImagingStudy.rs", jwks=jwks_of(key))
    form = backend_form(key, client_id, aud=f"{PUBLIC}/oauth/token")
    plain = anon.post("/oauth/token", data=form, base_url=UPSTREAM)
    assert plain.status_code == 400 and plain.json["error"] == "insecure_transport"  # Authlib: http off loopback
    r = anon.post("/oauth/token", data=backend_form(key, client_id, aud=f"{PUBLIC}/oauth/token"),
                  base_url=UPSTREAM, headers=FORWARDED)
    assert r.status_code == 200, r.json
    token = r.json["access_token"]
    qido = anon.get("/dicom-web/studies", base_url=UPSTREAM,
                    headers={**FORWARDED, "Authorization": f"Bearer {token}"})
    assert qido.status_code == 200  # aud https://pacs.example.org is this node


def test_the_client_address_is_the_forwarded_one(app: Flask) -> None:
    seen: list[str | None] = []
    app.before_request_funcs.setdefault(None, []).insert(0, lambda: seen.append(request.remote_addr))
    app.test_client().get("/healthz", headers=FORWARDED, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert seen == ["192.0.2.7"]


@pytest.mark.parametrize("app_config", [0], indirect=True)
def test_without_proxy_hops_the_headers_are_ignored(anon: FlaskClient) -> None:
    meta = anon.get("/.well-known/oauth-authorization-server", base_url=UPSTREAM, headers=FORWARDED).json
    assert meta["issuer"] == UPSTREAM.rstrip("/")


@pytest.mark.parametrize("hops", [-1, "two", True])
def test_proxy_hops_must_be_a_count(hops: object, tmp_path: Any) -> None:
    with pytest.raises(DrimhubError, match="PROXY_HOPS"):
        create_app({"DATA_DIR": str(tmp_path), "PROXY_HOPS": hops})
