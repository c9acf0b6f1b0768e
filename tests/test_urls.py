"""One base URL and one issuer for the whole node (drimhub.server.urls)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import dicomfactory as f
from drimhub.server.auth import tokens

PUBLIC = "https://pacs.example.org/"
ISSUER = "https://pacs.example.org/auth/"  # trailing slash kept: issuers compare character for character


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"BASE_URL": PUBLIC, "ISSUER": ISSUER}


def _token(app: Flask, issuer: str = ISSUER, audience: str = PUBLIC.rstrip("/")) -> dict[str, str]:
    claims = tokens.access_token_claims(issuer=issuer, audience=audience, subject="t", client_id="c",
                                        scope="system/*.cruds", org="org-a", ttl=60)
    return {"Authorization": f"Bearer {tokens.sign(claims, app.extensions['drimhub'].signing_key)}"}


def test_discovery_stow_and_token_validation_agree(app: Flask, anon: FlaskClient) -> None:
    meta = anon.get("/.well-known/oauth-authorization-server").json
    assert meta["issuer"] == ISSUER and meta["token_endpoint"] == "https://pacs.example.org/oauth/token"
    body, ctype = f.multipart([f.ct().data])
    stored = anon.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype, **_token(app)})
    assert stored.status_code == 200
    assert stored.json["00081190"]["Value"][0].startswith("https://pacs.example.org/dicom-web/studies/")
    assert anon.get("/dicom-web/studies", headers=_token(app, issuer=ISSUER.rstrip("/"))).status_code == 401
