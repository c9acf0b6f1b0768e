"""Binary (R4 binary.html): raw bodies streamed to a blob and back byte for byte, the FHIR JSON
form with base64 ``data``, and Accept negotiation."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient

from conftest import Mint
from drimhub.fhir import binary

FHIR = "application/fhir+json"


def _store(client: FlaskClient, data: bytes, ctype: str = "application/pdf") -> str:
    r = client.post("/fhir/Binary", data=data, headers={"Content-Type": ctype})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.headers["Location"].startswith("http://localhost/fhir/Binary/")
    get_fhir_model_class("Binary").model_validate(r.json)
    assert "data" not in r.json and r.json["contentType"] == ctype
    return str(r.json["id"])


def test_raw_round_trip_multi_megabyte(client: FlaskClient) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    bid = _store(client, data)
    for accept in ("application/pdf", "*/*", None):
        r = client.get(f"/fhir/Binary/{bid}", headers={"Accept": accept} if accept else {})
        assert r.status_code == 200 and r.mimetype == "application/pdf"
        assert r.headers["Content-Length"] == str(len(data)) and r.headers["ETag"] == 'W/"1"'
        assert r.data == data


def test_raw_body_is_streamed(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body is read in chunks from the request stream: a limit cuts it off part way (413)."""
    monkeypatch.setattr(binary, "MAX_RAW_BYTES", 3 * 1024 * 1024)
    r = client.post("/fhir/Binary", data=os.urandom(4 * 1024 * 1024), headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and r.json["resourceType"] == "OperationOutcome"


def test_json_form(client: FlaskClient) -> None:
    data = b"<html><body>CR</body></html>"
    bid = _store(client, data, "text/html")
    r = client.get(f"/fhir/Binary/{bid}", headers={"Accept": FHIR})
    assert r.status_code == 200 and r.mimetype == FHIR
    res = get_fhir_model_class("Binary").model_validate(r.json)
    assert base64.b64decode(r.json["data"]) == data and res.contentType == "text/html"
    assert client.get(f"/fhir/Binary/{bid}?_format=json").json["data"] == r.json["data"]
    assert client.get(f"/fhir/Binary/{bid}", headers={"Accept": "text/html"}).data == data
    assert client.get(f"/fhir/Binary/{bid}", headers={"Accept": "text/*"}).data == data
    assert client.get(f"/fhir/Binary/{bid}", headers={"Accept": "image/png"}).status_code == 406


def test_json_create_and_too_large_for_json(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(4096)
    r = client.post("/fhir/Binary", json={"resourceType": "Binary", "contentType": "application/octet-stream",
                                          "data": base64.b64encode(data).decode()}, headers={"Content-Type": FHIR})
    assert r.status_code == 201 and "data" not in r.json
    bid = r.json["id"]
    assert client.get(f"/fhir/Binary/{bid}", headers={"Accept": "application/octet-stream"}).data == data
    monkeypatch.setattr(binary, "MAX_JSON_BYTES", 1000)
    r = client.get(f"/fhir/Binary/{bid}", headers={"Accept": FHIR})
    assert r.status_code == 406 and "Accept: application/octet-stream" in r.json["issue"][0]["diagnostics"]
    bad = client.post("/fhir/Binary", json={"resourceType": "Binary", "contentType": "text/plain", "data": "@@"},
                      headers={"Content-Type": FHIR})
    assert bad.status_code == 422


def test_binary_versions_and_access(app: Flask, client: FlaskClient, mint: Mint) -> None:
    bid = _store(client, b"first")
    r = client.put(f"/fhir/Binary/{bid}", json={"resourceType": "Binary", "id": bid, "contentType": "text/plain",
                                                 "data": base64.b64encode(b"second").decode()},
                   headers={"Content-Type": FHIR})
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"'
    assert client.get(f"/fhir/Binary/{bid}").data == b"second"
    old = client.get(f"/fhir/Binary/{bid}/_history/1")
    assert old.data == b"first" and old.mimetype == "application/pdf"
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint(org='org-b')}"
    assert other.get(f"/fhir/Binary/{bid}").status_code == 404
    patient = app.test_client()
    patient.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('patient/*.rs', patient='123')}"
    assert patient.get(f"/fhir/Binary/{bid}").status_code == 404  # in no patient compartment
    reader = app.test_client()
    reader.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('system/Binary.r')}"
    assert reader.get(f"/fhir/Binary/{bid}").data == b"second"
    assert reader.post("/fhir/Binary", data=b"x", headers={"Content-Type": "text/plain"}).status_code == 403
    assert client.patch(f"/fhir/Binary/{bid}", json=[], headers={
        "Content-Type": "application/json-patch+json"}).status_code == 405


def test_raw_binary_is_served_sandboxed(client: FlaskClient) -> None:
    """A text/html Binary must not run in the node's origin (nor be sniffed into something else)."""
    bid = _store(client, b"<script>alert(1)</script>", "text/html")
    r = client.get(f"/fhir/Binary/{bid}", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Security-Policy"] == "sandbox"


def test_slow_raw_upload_does_not_hold_the_write_lock(live_server: str, mint: Mint) -> None:
    """The body of a raw Binary is spooled before its transaction: other writers do not wait for it."""
    import threading

    import requests

    headers = {"Authorization": f"Bearer {mint()}"}
    written = threading.Event()

    def slow_body() -> Any:
        yield b"%PDF-1.4 first part"
        written.wait(4)  # the client pauses until the other write is done (or gives up)
        yield b" last part"

    upload: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: upload.update(r=requests.post(
        f"{live_server}/fhir/Binary", data=slow_body(), timeout=30,
        headers={**headers, "Content-Type": "application/pdf"})))
    thread.start()
    try:
        import time
        time.sleep(0.3)  # the upload is under way
        started = time.monotonic()
        r = requests.post(f"{live_server}/fhir/Patient", json={"resourceType": "Patient"}, timeout=30,
                          headers={**headers, "Content-Type": FHIR})
        assert r.status_code == 201 and time.monotonic() - started < 2
    finally:
        written.set()
        thread.join(10)
    assert upload["r"].status_code == 201
    assert requests.get(f"{live_server}/fhir/Binary/{upload['r'].json()['id']}", headers=headers,
                        timeout=10).content == b"%PDF-1.4 first part last part"
