"""Federated search and retrieval (issue 5) between real nodes on loopback.

Node A stores a study; node B trusts A as a peer (SMART backend services: A registered B as a
client with B's JWKS URL) and a node C that is down. Through B's ``/federated/dicom-web`` and
FHIR ``_federated=true``, A's study is found (RetrieveURL to A), retrieved with A's bytes while B
caches it, then served by B from its cache once A is stopped. The tests run in file order on one
set of nodes (module scope); the last one stops A.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select

import dicomfactory as f
from drimhub.store.models import Study
from nodes import Node

READER = "system/ImagingStudy.rs"


@dataclass
class Net:
    a: Node
    b: Node
    c: Node
    study: str
    instances: list[f.Instance]

    def b_get(self, path: str, **headers: str) -> requests.Response:
        auth = self.b.headers(READER, org="org-b")
        return requests.get(self.b.url + path, headers={**auth, **headers}, timeout=30)


def _multipart_parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related answer (RFC 2046 §5.1.1)."""
    ctype = response.headers["Content-Type"]
    boundary = next(p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary="))
    body = response.content
    parts = body.split(b"--" + boundary.encode())[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for part in parts]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root: Path = tmp_path_factory.mktemp("federation")
    a, b = Node("a", root).start(), Node("b", root).start()
    c = Node("c", root)  # registered with B, never running: a peer that is down
    try:
        study, series1, series2 = f.new_uid(), f.new_uid(), f.new_uid()
        instances = [f.ct(study, series1, instance_number=1, seed=1), f.ct(study, series1, instance_number=2, seed=2),
                     f.ct(study, series2, series_number=2, seed=3)]
        body, ctype = f.multipart([i.data for i in instances])
        stored = requests.post(a.url + "/dicom-web/studies", data=body, timeout=30,
                               headers={**a.headers(org="org-a"), "Content-Type": ctype})
        assert stored.status_code == 200, stored.text
        client = json.loads(a.cli("client", "create", "node-b", "--jwks-url", b.url + "/oauth/jwks", "--scope",
                                  f"{READER} drimhub/peer", "--org", "node-b").stdout)
        b.cli("peer", "add", "a", "--url", a.url, "--client-id", client["client_id"],
              "--scope", f"{READER} drimhub/peer", "--allow-private")
        b.cli("peer", "add", "c", "--url", c.url, "--client-id", "node-b", "--scope", READER,
              "--allow-private", "--timeout", "3")
        yield Net(a, b, c, study, instances)
    finally:
        a.stop()
        b.stop()


def test_federated_qido_finds_the_peers_study_and_warns_for_the_peer_that_is_down(net: Net) -> None:
    found = net.b_get(f"/federated/dicom-web/studies?StudyInstanceUID={net.study}")
    assert found.status_code == 200, found.text
    [match] = found.json()
    assert match["0020000D"]["Value"] == [net.study]
    assert match["00081190"]["Value"] == [f"{net.a.url}/dicom-web/studies/{net.study}"]
    assert match["00201208"]["Value"] == [3]  # A's own computed attributes come through
    warnings = found.headers.get("Warning", "")
    assert warnings.startswith("299 ") and "peer c unavailable: " in warnings
    assert "peer a" not in warnings
    # the same study is not visible through B's plain root (it is A's, not B's)
    assert net.b_get(f"/dicom-web/studies?StudyInstanceUID={net.study}").json() == []


def test_federated_qido_series_and_instances_levels(net: Net) -> None:
    series = net.b_get(f"/federated/dicom-web/studies/{net.study}/series").json()
    assert sorted(s["0020000E"]["Value"][0] for s in series) == sorted({i.series for i in net.instances})
    assert all(s["00081190"]["Value"][0].startswith(f"{net.a.url}/dicom-web/studies/{net.study}/series/")
               for s in series)
    inst = net.b_get(f"/federated/dicom-web/instances?StudyInstanceUID={net.study}&limit=2").json()
    assert len(inst) == 2
    assert {i["00080018"]["Value"][0] for i in inst} < {i.sop for i in net.instances}
    assert all(i["00081190"]["Value"][0] == f"{net.a.url}/dicom-web/studies/{net.study}/series/"
               f"{i['0020000E']['Value'][0]}/instances/{i['00080018']['Value'][0]}" for i in inst)
    bad = net.b_get("/federated/dicom-web/studies?NoSuchKey=1")
    assert bad.status_code == 400  # parsed once, before any peer is asked


def test_federated_search_needs_the_imagingstudy_scope(net: Net) -> None:
    denied = requests.get(f"{net.b.url}/federated/dicom-web/studies", timeout=30,
                          headers=net.b.headers("system/Patient.rs", org="org-b"))
    assert denied.status_code == 403
    assert requests.get(f"{net.b.url}/federated/dicom-web/studies", timeout=30).status_code == 401


def test_wado_through_b_streams_as_bytes_and_caches(net: Net) -> None:
    url = f"/federated/dicom-web/studies/{net.study}"
    got = net.b_get(url, Accept='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert got.status_code == 200, got.text
    assert got.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    parts = _multipart_parts(got)
    assert sorted(parts) == sorted(i.data for i in net.instances)  # A's bytes, unchanged
    engine = create_engine(f"sqlite:///{net.b.dir / 'drimhub.db'}")
    try:
        with engine.connect() as conn:
            org, origin, expires = conn.execute(select(Study.org, Study.origin, Study.expires_at)
                                                .where(Study.study_uid == net.study)).one()
    finally:
        engine.dispose()
    assert (org, origin) == ("peer:a", "a") and expires is not None
    # cached copies are never visible through the plain root
    assert net.b_get(f"/dicom-web/studies/{net.study}/metadata").status_code == 404


def test_dicomweb_client_on_the_federated_root(net: Net) -> None:
    client = DICOMwebClient(net.b.url + "/federated/dicom-web", headers=net.b.headers(READER, org="org-b"))
    studies = client.search_for_studies(search_filters={"StudyInstanceUID": net.study})
    assert [s["0020000D"]["Value"][0] for s in studies] == [net.study]
    retrieved = client.retrieve_study(net.study)
    by_sop = {i.sop: i for i in net.instances}
    assert sorted(str(ds.SOPInstanceUID) for ds in retrieved) == sorted(by_sop)
    for ds in retrieved:
        original = pydicom.dcmread(io.BytesIO(by_sop[str(ds.SOPInstanceUID)].data))
        assert ds.PixelData == original.PixelData
    metadata = client.retrieve_study_metadata(net.study)
    assert len(metadata) == 3
    first = net.instances[0]
    frames = client.retrieve_instance_frames(net.study, first.series, first.sop, frame_numbers=[1])
    assert frames == [first.frames[0]]


def test_fhir_federated_lists_the_peers_imagingstudy(net: Net) -> None:
    got = net.b_get(f"/fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{net.study}&_federated=true")
    assert got.status_code == 200, got.text
    entries = got.json().get("entry", [])
    [match] = [e for e in entries if e["search"]["mode"] == "match"]
    assert match["fullUrl"] == f"{net.a.url}/fhir/ImagingStudy/{net.study}"
    assert match["resource"]["endpoint"]  # the peer's own Endpoint reference, as it serves it
    [outcome] = [e for e in entries if e["search"]["mode"] == "outcome"]
    assert "peer c unavailable" in outcome["resource"]["issue"][0]["diagnostics"]
    # without _federated, B's own FHIR view has nothing: the cached copy is not B's organisation's
    plain = net.b_get(f"/fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{net.study}").json()
    assert not [e for e in plain.get("entry", []) if e["search"]["mode"] == "match"]


def test_with_a_stopped_b_serves_the_study_from_its_cache(net: Net) -> None:
    net.a.stop()
    found = net.b_get(f"/federated/dicom-web/studies?StudyInstanceUID={net.study}")
    assert found.status_code == 200
    [match] = found.json()
    assert match["00081190"]["Value"] == [f"{net.a.url}/dicom-web/studies/{net.study}"]  # still A's
    warnings = found.headers.get("Warning", "")
    assert "peer a unavailable" in warnings and "peer c unavailable" in warnings
    got = net.b_get(f"/federated/dicom-web/studies/{net.study}",
                    Accept='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert got.status_code == 200
    assert sorted(_multipart_parts(got)) == sorted(i.data for i in net.instances)
    first = net.instances[0]
    rendered = net.b_get(f"/federated/dicom-web/studies/{net.study}/series/{first.series}/instances/"
                         f"{first.sop}/rendered", Accept="image/png")
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
    unknown = net.b_get(f"/federated/dicom-web/studies/{f.new_uid()}/metadata")
    assert unknown.status_code == 502  # not here, and the peers that could hold it are down


# --- one node, no peer (in-process app, SQLite and PostgreSQL) --------------------------------

def test_without_peers_the_federated_root_answers_as_the_local_one(client: FlaskClient) -> None:
    inst = f.ct()
    body, ctype = f.multipart([inst.data])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    found = client.get(f"/federated/dicom-web/studies?StudyInstanceUID={inst.study}")
    assert found.status_code == 200 and "Warning" not in found.headers
    [match] = found.json
    assert match["00081190"]["Value"] == [f"http://localhost/dicom-web/studies/{inst.study}"]  # this node's own
    assert found.json == client.get(f"/dicom-web/studies?StudyInstanceUID={inst.study}").json
    got = client.get(f"/federated/dicom-web/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}",
                     headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert got.status_code == 200 and got.data == inst.data
    meta = client.get(f"/federated/dicom-web/studies/{inst.study}/metadata").json
    assert meta[0]["7FE00010"]["BulkDataURI"].startswith("http://localhost/federated/dicom-web/studies/")
    assert client.get(f"/federated/dicom-web/studies/{f.new_uid()}").status_code == 404
