"""Tokens of external issuers (``DRIMHUB_TRUSTED_ISSUERS``): by JWKS, and by RFC 7662 introspection.

A local HTTP server on 127.0.0.1 plays both identity providers: it serves a JWKS (a Keycloak-like
issuer, its key generated with joserfc) and an introspection endpoint that wants client
credentials (a Pro Santé Connect-like issuer).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey

from conftest import BASE_URL
from oauthhelpers import JsonHandler, serving
from drimhub.server.auth import protect
from drimhub.server.auth.protect import TrustedIssuer, parse_trusted_issuers

KC_ISSUER = "https://idp.example/realms/imaging"
PSC_ISSUER = "https://psc.example/auth"
QIDO = "/dicom-web/studies"


class IdentityProvider:
    """What the local server serves and what it was asked."""

    def __init__(self) -> None:
        self.keys = [ECKey.generate_key("P-384", private=True)]
        for key in self.keys:
            key.ensure_kid()
        self.jwks_fetches = 0
        self.introspections: list[tuple[str, str | None]] = []  # (token, Authorization header)
        self.active: dict[str, dict[str, Any]] = {}

    def rotate(self) -> ECKey:
        key = ECKey.generate_key("P-384", private=True)
        key.ensure_kid()
        self.keys.append(key)
        return key

    def jwks(self) -> bytes:
        return orjson.dumps({"keys": [k.as_dict(private=False) for k in self.keys]})

    def introspect(self, token: str, authorization: str | None) -> bytes:
        self.introspections.append((token, authorization))
        return orjson.dumps(self.active.get(token, {"active": False}))


@pytest.fixture
def idp() -> Iterator[tuple[IdentityProvider, str]]:
    state = IdentityProvider()

    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802
            state.jwks_fetches += 1
            self.send_json(state.jwks())

        def do_POST(self) -> None:  # noqa: N802
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"drimhub:s3cret").decode():
                self.send_response(401)
                self.end_headers()
                return
            self.send_json(state.introspect(form["token"][0], self.headers.get("Authorization")))

    with serving(Handler) as url:
        yield state, url


@pytest.fixture
def app_config(idp: tuple[IdentityProvider, str], request: pytest.FixtureRequest) -> dict[str, Any]:
    """Both issuers; parametrized indirectly with ``"mapped"``, each with an organisation mapping."""
    _, url = idp
    kc, psc = f"{KC_ISSUER}={url}/jwks", f"{PSC_ISSUER}=introspect:http://drimhub:s3cret@{url.removeprefix('http://')}/introspect"
    if getattr(request, "param", None) == "mapped":
        kc, psc = f"{kc};org-claim=structure_id", f"{psc};org=chu-brest"
    return {"TRUSTED_ISSUERS": f"{kc}, {psc}"}


def _kc_token(key: ECKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": KC_ISSUER, "sub": "dr-martin", "aud": [BASE_URL, "account"], "azp": "viewer", "exp": now + 300,
            "iat": now, "jti": f"kc-{now}-{id(claims)}", "scope": "openid user/ImagingStudy.rs", "org": "org-a",
            **claims}
    return jwt.encode({"alg": "ES384", "kid": key.kid, "typ": "JWT"}, body, key, algorithms=["ES384"])


def _get(anon: FlaskClient, token: str) -> int:
    return anon.get(QIDO, headers={"Authorization": f"Bearer {token}"}).status_code


def test_parse_trusted_issuers() -> None:
    parsed = parse_trusted_issuers("https://a/realm=https://a/certs  https://b=introspect:https://id:pw@b:8443/i")
    assert parsed["https://a/realm"] == TrustedIssuer("https://a/realm", jwks_url="https://a/certs")
    assert parsed["https://b"] == TrustedIssuer("https://b", introspection_url="https://b:8443/i", credentials=("id", "pw"))
    with pytest.raises(ValueError):
        parse_trusted_issuers("no-equals-sign")


def test_parse_trusted_issuers_org_mapping() -> None:
    parsed = parse_trusted_issuers("https://psc/auth=introspect:https://id:pw@psc/i;org=chu-brest,"
                                   "https://kc/realm=https://kc/certs;org-claim=structure_id")
    assert parsed["https://psc/auth"] == TrustedIssuer("https://psc/auth", introspection_url="https://psc/i",
                                                       credentials=("id", "pw"), org="chu-brest")
    assert parsed["https://kc/realm"] == TrustedIssuer("https://kc/realm", jwks_url="https://kc/certs",
                                                       org_claim="structure_id")
    assert parse_trusted_issuers("https://a=https://a/certs")["https://a"].org_claim == "org"
    for bad in ("https://a=https://a/c;org=", "https://a=https://a/c;orga=x", "https://a=https://a/c;org=x;org-claim=y",
                "https://a=;org=x"):
        with pytest.raises(ValueError):
            parse_trusted_issuers(bad)


def test_bad_trusted_issuers_stop_the_app(tmp_path, signing_key_pem: str) -> None:
    from drimhub.server.app import create_app
    from drimhub.errors import DrimhubError

    with pytest.raises(DrimhubError, match="org-claim"):
        create_app({"DATA_DIR": str(tmp_path), "SIGNING_KEY": signing_key_pem,
                    "TRUSTED_ISSUERS": "https://a=https://a/c;colour=blue"})


def test_jwks_issuer_accepted_and_cached(anon: FlaskClient, idp, monkeypatch: pytest.MonkeyPatch) -> None:
    state, _ = idp
    key = state.keys[0]
    assert _get(anon, _kc_token(key)) == 200
    assert _get(anon, _kc_token(key, sub="dr-other")) == 200
    assert state.jwks_fetches == 1  # cached, keyed by kid
    rotated = state.rotate()
    assert _get(anon, _kc_token(rotated)) == 401  # not refetched within JWKS_MIN_REFRESH of the last fetch
    monkeypatch.setattr(protect, "JWKS_MIN_REFRESH", 0)
    assert _get(anon, _kc_token(rotated)) == 200  # an unknown kid refetches the set
    assert state.jwks_fetches == 2


@pytest.mark.parametrize("claims, why", [
    ({"aud": "account"}, "'aud'"),
    ({"exp": int(time.time()) - 100}, "expired"),
    ({"org": None}, "organisation"),
    ({"iss": "https://idp.example/realms/other"}, "not trusted"),
])
def test_jwks_issuer_bad_tokens(anon: FlaskClient, idp, claims: dict[str, Any], why: str) -> None:
    state, _ = idp
    r = anon.get(QIDO, headers={"Authorization": f"Bearer {_kc_token(state.keys[0], **claims)}"})
    assert r.status_code == 401 and why in r.headers["WWW-Authenticate"]


def test_jwks_issuer_key_not_in_its_set(anon: FlaskClient, idp) -> None:
    state, _ = idp
    stranger = ECKey.generate_key("P-384", private=True)
    stranger.ensure_kid()
    assert _get(anon, _kc_token(stranger)) == 401
    assert _get(anon, _kc_token(stranger)) == 401
    assert state.jwks_fetches <= 2  # an unknown kid refetches at most once a minute


def test_jwks_issuer_scopes_and_org_apply(anon: FlaskClient, idp) -> None:
    state, _ = idp
    r = anon.get(QIDO, headers={"Authorization": f"Bearer {_kc_token(state.keys[0], scope='openid')}"})
    assert r.status_code == 403


def test_introspection_issuer(anon: FlaskClient, idp) -> None:
    state, _ = idp
    now = int(time.time())
    state.active["opaque-psc-token"] = {"active": True, "iss": PSC_ISSUER, "sub": "899700000001", "exp": now + 120,
                                        "scope": "user/ImagingStudy.rs", "org": "org-a", "client_id": "psc-app"}
    assert _get(anon, "opaque-psc-token") == 200
    assert _get(anon, "opaque-psc-token") == 200
    assert len(state.introspections) == 1  # the active answer is cached
    assert state.introspections[0][1] == "Basic " + base64.b64encode(b"drimhub:s3cret").decode()
    assert _get(anon, "unknown-opaque-token") == 401  # {"active": false}
    state.active["wrong-issuer"] = {**state.active["opaque-psc-token"], "iss": "https://elsewhere.example"}
    assert _get(anon, "wrong-issuer") == 401


def test_introspection_cache_ends_with_the_token(anon: FlaskClient, idp) -> None:
    state, _ = idp
    state.active["short-lived"] = {"active": True, "sub": "u", "exp": int(time.time()) + 1,
                                   "scope": "user/ImagingStudy.rs", "org": "org-a"}
    assert _get(anon, "short-lived") == 200
    state.active["short-lived"] = {"active": False}  # revoked at the issuer
    time.sleep(2.1)
    assert _get(anon, "short-lived") == 401  # asked again once the token's exp has passed
    assert len(state.introspections) == 2


def test_jwt_of_an_introspection_issuer_is_introspected(anon: FlaskClient, idp) -> None:
    state, _ = idp
    key = state.keys[0]
    token = jwt.encode({"alg": "ES384", "kid": key.kid}, {"iss": PSC_ISSUER, "sub": "x"}, key, algorithms=["ES384"])
    assert _get(anon, token) == 401  # inactive at the issuer, whatever its signature
    state.active[token] = {"active": True, "sub": "x", "exp": int(time.time()) + 60, "scope": "user/ImagingStudy.rs",
                           "org": "org-a", "aud": BASE_URL}
    assert _get(anon, token) == 200
    assert [t for t, _ in state.introspections] == [token, token]


# --- organisation mapping: ;org=ORG and ;org-claim=CLAIM ------------------------------------

def _store_study(client: FlaskClient, mint: Any, org: str) -> str:
    import dicomfactory as f

    instance = f.ct()
    body, ctype = f.multipart([instance.data])
    r = client.post("/dicom-web/studies", data=body,
                    headers={"Content-Type": ctype, "Authorization": f"Bearer {mint(org=org)}"})
    assert r.status_code == 200, r.json
    return str(instance.study)


def _found(anon: FlaskClient, token: str) -> list[str]:
    r = anon.get(QIDO, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 204), r.get_data(as_text=True)
    return [s["0020000D"]["Value"][0] for s in (r.json or [])] if r.status_code == 200 else []


@pytest.mark.parametrize("app_config", ["mapped"], indirect=True)
def test_introspection_issuer_with_a_fixed_organisation(anon: FlaskClient, idp, mint) -> None:
    brest = _store_study(anon, mint, "chu-brest")
    _store_study(anon, mint, "org-a")
    state, _ = idp
    psc = {"active": True, "sub": "899700000001", "exp": int(time.time()) + 120, "scope": "user/ImagingStudy.rs"}
    state.active["psc-no-org"] = psc  # Pro Santé Connect: no org claim
    state.active["psc-other-org"] = {**psc, "org": "org-a"}
    assert _found(anon, "psc-no-org") == [brest]
    r = anon.get(QIDO, headers={"Authorization": "Bearer psc-other-org"})
    assert r.status_code == 401 and "chu-brest" in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize("app_config", ["mapped"], indirect=True)
def test_jwks_issuer_with_an_organisation_claim(anon: FlaskClient, idp, mint) -> None:
    brest = _store_study(anon, mint, "chu-brest")
    state, _ = idp
    key = state.keys[0]
    assert _found(anon, _kc_token(key, org=None, structure_id="chu-brest")) == [brest]
    r = anon.get(QIDO, headers={"Authorization": f"Bearer {_kc_token(key, org='chu-brest')}"})
    assert r.status_code == 401 and "structure_id" in r.headers["WWW-Authenticate"]  # only structure_id is read
