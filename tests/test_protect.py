"""Resource protection: every route needs a valid bearer token, and SMART scopes decide the rest.

- every ``url_map`` rule outside the public allowlist answers 401 without a token (none forgotten),
  and has an access rule;
- the bad-token cases (expired, wrong aud, unknown iss, alg none, bad signature, revoked, …) on
  QIDO, WADO and STOW, each a 401 with ``WWW-Authenticate: Bearer … error="invalid_token"``;
- the scope × route matrix (SMART v2 and v1 forms), 403 ``insufficient_scope`` when not covered;
- ``patient/`` scopes: restricted to the token's patient, a mismatch is 403.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc.jwk import RSAKey

import dicomfactory as f
from conftest import BASE_URL, Mint
from drimhub.server.auth import policy, tokens
from drimhub.store.security import RevokedToken

QIDO, WADO, STOW = "/dicom-web/studies", "/dicom-web/studies/{study}/metadata", "/dicom-web/studies"
SAMPLES = {"study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5", "frames": "1", "tag": "7FE00010"}
STUDY_ID = "0020000D"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _stored(client: FlaskClient, **attrs: object) -> f.Instance:
    inst = f.ct(frames=2, **attrs)
    body, ctype = f.multipart([inst.data])
    assert client.post(STOW, data=body, headers={"Content-Type": ctype}).status_code == 200
    return inst


def _call(client: FlaskClient, method: str, route: str, token: str | None, inst: f.Instance | None = None):
    url = route.format(study=inst.study, series=inst.series, sop=inst.sop) if inst else route.format(**SAMPLES)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if method == "POST":
        body, ctype = f.multipart([f.ct().data])
        return client.post(url, data=body, headers={**headers, "Content-Type": ctype})
    return client.open(url, method=method, headers=headers)


# --- every route ------------------------------------------------------------------------------

def _protected_rules(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, sample URL) of every rule and method that is not public."""
    adapter = app.url_map.bind("localhost")
    out = []
    for rule in app.url_map.iter_rules():
        if policy.is_public(rule.rule):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            values = {name: SAMPLES.get(name, "x") for name in rule.arguments if name not in (rule.defaults or {})}
            out.append((rule.endpoint, method, adapter.build(rule.endpoint, values, method=method)))
    return out


def test_every_route_outside_the_allowlist_needs_a_token(app: Flask, anon: FlaskClient) -> None:
    checked = _protected_rules(app)
    assert len(checked) >= 22  # the DICOMweb routes at least
    for endpoint, method, url in checked:
        r = anon.open(url, method=method)
        assert r.status_code == 401, (endpoint, method, url, r.status_code)
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="drimhub"', (endpoint, url)  # no error: no token


def test_every_protected_endpoint_has_an_access_rule(app: Flask) -> None:
    missing = {endpoint for endpoint, _, _ in _protected_rules(app) if endpoint not in policy.RULES}
    assert not missing, f"endpoints without a scope rule in drimhub.server.auth.policy: {sorted(missing)}"


def test_public_routes_and_preflight_need_no_token(anon: FlaskClient) -> None:
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/readyz").status_code == 200
    assert anon.get("/conformance/dicomweb").status_code == 200
    pre = anon.options("/dicom-web/studies/1.2.3/metadata", headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200


def test_unknown_url_is_401_without_token_404_with_one(anon: FlaskClient, client: FlaskClient) -> None:
    assert anon.get("/nothing/here").status_code == 401
    assert anon.get("/dicom-web/studies/not$a$uid").status_code == 401
    assert client.get("/nothing/here").status_code == 404
    assert client.get("/dicom-web/nothing").status_code == 404


def test_401_and_403_in_each_protocol_form(anon: FlaskClient, client: FlaskClient, mint: Mint) -> None:
    dw = anon.get(QIDO)
    assert dw.mimetype == "application/dicom+json" and "bearer token" in dw.json["message"]
    plain = anon.get("/metrics", headers={"Authorization": "Bearer not-a-jwt"})
    assert plain.status_code == 401 and plain.json["error"] == "invalid_token"
    denied = client.get("/metrics")
    assert denied.status_code == 403 and denied.json["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    fhir = anon.get("/fhir/Anything")
    assert fhir.status_code == 401 and fhir.json["resourceType"] == "OperationOutcome"
    ok = anon.get("/metrics", headers={"Authorization": f"Bearer {mint('drimhub/metrics.read')}"})
    assert ok.status_code == 200


# --- bad tokens -------------------------------------------------------------------------------

def _bad_tokens(app: Flask, mint: Mint) -> dict[str, str]:
    now = int(time.time())
    other_key = RSAKey.generate_key(2048, private=True)
    other_key.ensure_kid()
    good_claims = tokens.access_token_claims(issuer=BASE_URL, audience=BASE_URL, subject="s", client_id="c",
                                             scope="system/*.cruds", org="org-a")
    revoked = mint(jti="revoked-jti")
    header, _, signature = mint().split(".")
    with app.extensions["drimhub"].sessions.begin() as s:
        s.add(RevokedToken(jti="revoked-jti", expires_at=datetime.now(UTC) + timedelta(hours=1)))
    return {
        "expired": mint(exp=now - 120, iat=now - 420),
        "wrong-aud": mint(audience="https://other-node.example"),
        "unknown-iss": mint(iss="https://idp.unknown.example"),
        "alg-none": f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(good_claims)}.",
        "alg-hs256": f"{_b64({'alg': 'HS256', 'typ': 'at+jwt'})}.{_b64(good_claims)}.c2ln",
        "bad-signature": tokens.sign(good_claims, other_key),
        "tampered": f"{header}.{_b64({**good_claims, 'org': 'org-b'})}.{signature}",
        "revoked": revoked,
        "no-org": mint(org=""),
        "not-an-access-token": _typ_jwt(app, good_claims),
        "garbage": "a.b.c",
    }


def _typ_jwt(app: Flask, claims: dict[str, object]) -> str:
    from joserfc import jwt
    key = app.extensions["drimhub"].signing_key
    return jwt.encode({"alg": "RS384", "kid": key.kid}, claims, key, algorithms=["RS384"])  # typ JWT, not at+jwt


BAD_CASES = ["expired", "wrong-aud", "unknown-iss", "alg-none", "alg-hs256", "bad-signature", "tampered", "revoked",
             "no-org", "not-an-access-token", "garbage"]


@pytest.mark.parametrize("method, route", [("GET", QIDO), ("GET", WADO), ("POST", STOW)], ids=["qido", "wado", "stow"])
def test_bad_tokens_are_401_invalid_token(app: Flask, anon: FlaskClient, mint: Mint, method: str, route: str) -> None:
    bad = _bad_tokens(app, mint)
    for case in BAD_CASES:
        r = _call(anon, method, route, bad[case])
        assert r.status_code == 401, (case, r.status_code, r.get_data(as_text=True)[:200])
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="drimhub", error="invalid_token", error_description="'), case
        assert r.mimetype == "application/dicom+json"
    assert _call(anon, method, route, mint()).status_code in (200, 404)  # the same route with a good token


def test_bad_token_reasons_are_told(app: Flask, anon: FlaskClient, mint: Mint) -> None:
    bad = _bad_tokens(app, mint)
    reasons = {case: _call(anon, "GET", QIDO, bad[case]).headers["WWW-Authenticate"] for case in BAD_CASES}
    assert "expired" in reasons["expired"]
    assert "'aud'" in reasons["wrong-aud"]
    assert "issuer is not trusted" in reasons["unknown-iss"]
    assert "'none' is not accepted" in reasons["alg-none"]
    assert "signature is invalid" in reasons["bad-signature"]
    assert "revoked" in reasons["revoked"]
    assert "organisation" in reasons["no-org"]
    assert "at+jwt" in reasons["not-an-access-token"]
    assert _call(anon, "GET", QIDO, None).headers["WWW-Authenticate"] == 'Bearer realm="drimhub"'
    basic = anon.get(QIDO, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and 'error="invalid_token"' in basic.headers["WWW-Authenticate"]


# --- scope x route matrix -----------------------------------------------------------------------

SEARCH, SEARCH_IN, RETRIEVE = "/dicom-web/studies", "/dicom-web/studies/{study}/series", "/dicom-web/studies/{study}"
META, FRAMES = RETRIEVE + "/metadata", RETRIEVE + "/series/{series}/instances/{sop}/frames/1"
MATRIX = [
    # (scope, method, route, expected status)
    ("system/ImagingStudy.rs", "GET", SEARCH, 200), ("system/ImagingStudy.rs", "GET", META, 200),
    ("system/ImagingStudy.rs", "POST", STOW, 403), ("system/ImagingStudy.rs", "DELETE", RETRIEVE, 403),
    ("system/ImagingStudy.read", "GET", SEARCH_IN, 200), ("system/ImagingStudy.read", "GET", FRAMES, 200),
    ("system/ImagingStudy.read", "POST", STOW, 403),
    ("system/ImagingStudy.write", "GET", SEARCH, 403), ("system/ImagingStudy.write", "GET", RETRIEVE, 403),
    ("system/ImagingStudy.write", "POST", STOW, 200), ("system/ImagingStudy.write", "DELETE", RETRIEVE, 204),
    ("system/ImagingStudy.*", "GET", RETRIEVE, 200), ("system/ImagingStudy.*", "DELETE", RETRIEVE, 204),
    ("system/*.r", "GET", SEARCH, 403), ("system/*.r", "GET", META, 200),
    ("system/*.s", "GET", SEARCH, 200), ("system/*.s", "GET", META, 403), ("system/*.s", "GET", FRAMES, 403),
    ("user/ImagingStudy.c", "POST", STOW, 200), ("user/ImagingStudy.c", "GET", SEARCH, 403),
    ("user/ImagingStudy.d", "DELETE", RETRIEVE, 204), ("user/ImagingStudy.rs", "DELETE", RETRIEVE, 403),
    ("system/ImagingStudy.cruds", "GET", FRAMES, 200), ("system/ImagingStudy.cruds", "POST", STOW, 200),
    ("system/Patient.rs", "GET", SEARCH, 403), ("system/Patient.*", "GET", RETRIEVE, 403),
    ("system/ImagingStudy.dus", "GET", SEARCH, 403), ("system/ImagingStudy.dus", "DELETE", RETRIEVE, 403),
    ("openid fhirUser", "GET", SEARCH, 403), ("drimhub/metrics.read", "GET", SEARCH, 403),
    ("system/*.cruds", "GET", "/metrics", 403), ("drimhub/metrics.read", "GET", "/metrics", 200),
    ("system/ImagingStudy.s system/ImagingStudy.r", "GET", META, 200),
]


@pytest.mark.parametrize("scope, method, route, status", MATRIX,
                         ids=[f"{s}-{m}-{r.rsplit('/', 1)[-1] or r}-{st}" for s, m, r, st in MATRIX])
def test_scope_route_matrix(client: FlaskClient, anon: FlaskClient, mint: Mint, scope: str, method: str, route: str,
                            status: int) -> None:
    inst = _stored(client)
    r = _call(anon, method, route, mint(scope), inst)
    assert r.status_code == status, r.get_data(as_text=True)[:300]
    if status == 403:
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]


# --- patient/ scopes ----------------------------------------------------------------------------

@pytest.fixture
def two_patients(client: FlaskClient) -> tuple[f.Instance, f.Instance]:
    return _stored(client, patient_id="PAT001"), _stored(client, patient_id="PAT002")


@pytest.mark.parametrize("claim", ["PAT001", "CHU-TEST|PAT001"])
def test_patient_scope_sees_its_patient_only(anon: FlaskClient, mint: Mint, two_patients, claim: str) -> None:
    mine, theirs = two_patients
    auth = {"Authorization": f"Bearer {mint('patient/ImagingStudy.rs', patient=claim)}"}
    found = anon.get(QIDO, headers=auth)
    assert found.status_code == 200
    assert [s[STUDY_ID]["Value"][0] for s in found.json] == [mine.study]  # restricted, not everything
    assert anon.get(QIDO + "?PatientID=PAT001", headers=auth).status_code == 200
    assert anon.get(QIDO + "?PatientID=PAT002", headers=auth).status_code == 403  # never an empty answer
    assert anon.get(QIDO + "?PatientID=PAT*", headers=auth).status_code == 403
    assert anon.get(f"{QIDO}/{theirs.study}/series", headers=auth).status_code == 403
    assert anon.get(f"{QIDO}/{mine.study}/metadata", headers=auth).status_code == 200
    for url in (f"{QIDO}/{theirs.study}", f"{QIDO}/{theirs.study}/metadata",
                f"{QIDO}/{theirs.study}/series/{theirs.series}/instances/{theirs.sop}/frames/1"):
        assert anon.get(url, headers=auth).status_code == 403, url


def test_patient_scope_with_another_issuer_or_without_patient(anon: FlaskClient, mint: Mint, two_patients) -> None:
    mine, _ = two_patients
    other_issuer = {"Authorization": f"Bearer {mint('patient/ImagingStudy.rs', patient='OTHER-HOSP|PAT001')}"}
    assert anon.get(f"{QIDO}/{mine.study}/metadata", headers=other_issuer).status_code == 403
    assert anon.get(QIDO, headers=other_issuer).json == []  # no filter: restricted to that (absent) patient
    no_patient = {"Authorization": f"Bearer {mint('patient/ImagingStudy.rs')}"}
    r = anon.get(QIDO, headers=no_patient)
    assert r.status_code == 403 and "patient context" in r.json["message"]
    both = {"Authorization": f"Bearer {mint('patient/ImagingStudy.rs system/ImagingStudy.rs', patient='PAT001')}"}
    assert len(anon.get(QIDO, headers=both).json) == 2  # a system/ grant is not restricted


def test_patient_scope_stores_its_patient_only(anon: FlaskClient, mint: Mint, two_patients) -> None:
    _, theirs = two_patients
    auth = {"Authorization": f"Bearer {mint('patient/ImagingStudy.c', patient='PAT001')}"}
    body, ctype = f.multipart([f.ct(patient_id="PAT001").data, f.ct(patient_id="PAT002").data,
                               f.ct(theirs.study, patient_id="PAT001").data])
    r = anon.post(STOW, data=body, headers={**auth, "Content-Type": ctype})
    assert r.status_code == 202
    assert [i["00081197"]["Value"][0] for i in r.json["00081198"]["Value"]] == [0x0124, 0x0124]
