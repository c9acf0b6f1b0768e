"""Operations endpoints and the error forms of unknown URLs."""

from __future__ import annotations

from flask.testing import FlaskClient

import dicomfactory as f
from conftest import Mint


def test_healthz_readyz(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


def test_metrics_counts_requests_and_stored_instances(client: FlaskClient, mint: Mint) -> None:
    body, ctype = f.multipart([f.ct().data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    assert client.get("/metrics").status_code == 403  # system/*.cruds is no operator scope
    text = client.get("/metrics", headers={"Authorization": f"Bearer {mint('drimhub/metrics.read')}"}).get_data(
        as_text=True)
    assert 'drimhub_stow_instances_total{outcome="stored"}' in text
    assert 'drimhub_http_requests_total{method="POST",route="/dicom-web/studies",status="200"}' in text


def test_unknown_dicomweb_url_is_dicom_json_404(client: FlaskClient) -> None:
    r = client.get("/dicom-web/nothing-here")
    assert r.status_code == 404
    assert r.mimetype == "application/dicom+json"


def test_malformed_uid_is_400_before_any_service(client: FlaskClient) -> None:
    r = client.post("/dicom-web/studies/abc$def", data=b"", headers={"Content-Type": "multipart/related; boundary=x"})
    assert r.status_code == 400
    assert "not a valid UID" in r.json["message"]


def test_conformance_statement_markdown_and_json(client: FlaskClient) -> None:
    md = client.get("/conformance/dicomweb")
    assert md.mimetype == "text/markdown"
    assert "| §10.5 |" in md.get_data(as_text=True)
    js = client.get("/conformance/dicomweb", headers={"Accept": "application/json"}).json
    assert {row["section"] for row in js["rows"]} >= {"10.4.1.1.1", "10.5", "10.6"}


def test_cors_for_browser_viewers(client: FlaskClient) -> None:
    r = client.get("/dicom-web/studies", headers={"Origin": "http://viewer.example"})
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "http://viewer.example")
    pre = client.options("/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1", headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "accept, authorization"})
    assert pre.status_code == 200
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    assert "ETag" in client.get("/dicom-web/studies", headers={"Origin": "http://x"}).headers["Access-Control-Expose-Headers"]
