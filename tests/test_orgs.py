"""Organisations kept apart on every DICOMweb route, even when the other one knows the UIDs.

Organisation ``org-a`` stores a study; ``org-b`` (an all-powerful token of its own) cannot find
it (QIDO omits it), read it (WADO, metadata, frames, bulk data → 404), write into it (STOW →
0124H "Refused: Not Authorized" per instance, nothing of the study changes) or delete it (404).
A regional hub's deliberate cross-organisation grant searches every organisation and still reads
only its own. Every study a request touches is noted for the audit.
"""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

import dicomfactory as f
from conftest import Mint
from drimhub.server import auditctx
from drimhub.store.models import Instance, Study

FAILED, REASON, REFERENCED, STUDY_ID = "00081198", "00081197", "00081199", "0020000D"
NOT_AUTHORIZED = 0x0124


@pytest.fixture
def org_a_study(client: FlaskClient) -> list[f.Instance]:
    """A study of org-a: one CT and one two-frame instance in one series."""
    study, series = f.new_uid(), f.new_uid()
    items = [f.ct(study, series, seed=1), f.ct(study, series, frames=2, seed=2, instance_number=2)]
    body, ctype = f.multipart([i.data for i in items])
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    return items


@pytest.fixture
def org_b(app: Flask, mint: Mint) -> FlaskClient:
    """A client of org-b with every ImagingStudy permission."""
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {mint('system/*.cruds', org='org-b')}"
    return other


def _urls(inst: f.Instance) -> dict[str, str]:
    study = f"/dicom-web/studies/{inst.study}"
    series = f"{study}/series/{inst.series}"
    instance = f"{series}/instances/{inst.sop}"
    return {"study": study, "series": series, "instance": instance}


def _snapshot(app: Flask) -> tuple[int, int, list[tuple[str, str]]]:
    with app.extensions["drimhub"].sessions() as s:
        studies = s.scalar(select(func.count()).select_from(Study)) or 0
        instances = s.scalar(select(func.count()).select_from(Instance)) or 0
        rows = sorted((r.sop_uid, r.digest) for r in s.execute(select(Instance.sop_uid, Instance.digest)))
    return studies, instances, rows


def test_other_org_cannot_find_the_study(client: FlaskClient, org_b: FlaskClient, org_a_study) -> None:
    inst = org_a_study[1]
    u = _urls(inst)
    searches = ["/dicom-web/studies", f"/dicom-web/studies?StudyInstanceUID={inst.study}", "/dicom-web/series",
                f"/dicom-web/series?SeriesInstanceUID={inst.series}", f"/dicom-web/instances?SOPInstanceUID={inst.sop}",
                f"{u['study']}/series", f"{u['study']}/instances", f"{u['series']}/instances",
                "/dicom-web/studies?PatientID=PAT001"]
    for url in searches:
        assert org_b.get(url).json == [], url
        assert client.get(url).json != [], url  # org-a finds it on the same URL


def test_other_org_cannot_read_the_study(client: FlaskClient, org_b: FlaskClient, org_a_study) -> None:
    u = _urls(org_a_study[1])
    reads = [u["study"], u["series"], u["instance"], f"{u['study']}/metadata", f"{u['series']}/metadata",
             f"{u['instance']}/metadata", f"{u['instance']}/frames/1", f"{u['instance']}/bulkdata/7FE00010"]
    for url in reads:
        r = org_b.get(url)
        assert r.status_code == 404, url  # as if it did not exist
        assert r.mimetype == "application/dicom+json"
        assert client.get(url).status_code == 200, url


def test_other_org_cannot_delete_the_study(app: Flask, org_b: FlaskClient, org_a_study) -> None:
    before = _snapshot(app)
    u = _urls(org_a_study[0])
    for url in (u["instance"], u["series"], u["study"]):
        assert org_b.delete(url).status_code == 404, url
    assert _snapshot(app) == before


@pytest.mark.parametrize("policy", ["reject", "overwrite"])
def test_other_org_cannot_write_into_the_study(app: Flask, org_b: FlaskClient, org_a_study, policy: str) -> None:
    app.config["STOW_DUPLICATE_POLICY"] = policy
    before = _snapshot(app)
    first = org_a_study[0]
    attempts = {
        "new instance, study URL": (f"/dicom-web/studies/{first.study}", [f.ct(first.study, first.series, seed=9)]),
        "new instance, body only": ("/dicom-web/studies", [f.ct(first.study, seed=8)]),
        "the same bytes again": ("/dicom-web/studies", [first]),
        "same SOP, other bytes": ("/dicom-web/studies", [f.ct(first.study, first.series, first.sop, seed=7)]),
        "same SOP in a study of its own": ("/dicom-web/studies", [f.ct(sop=first.sop, seed=6)]),
    }
    for name, (url, items) in attempts.items():
        body, ctype = f.multipart([i.data for i in items])
        r = org_b.post(url, data=body, headers={"Content-Type": ctype})
        assert r.status_code == 409, (name, r.json)
        assert [i[REASON]["Value"][0] for i in r.json[FAILED]["Value"]] == [NOT_AUTHORIZED], name
        assert REFERENCED not in r.json, name
    assert _snapshot(app) == before  # nothing of org-a's study changed


def test_partial_stow_stores_own_instances_and_refuses_the_others(app: Flask, org_b: FlaskClient,
                                                                 org_a_study) -> None:
    mine = f.ct(seed=5)
    body, ctype = f.multipart([mine.data, f.ct(org_a_study[0].study, seed=4).data])
    r = org_b.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 202
    assert [i["00081155"]["Value"][0] for i in r.json[REFERENCED]["Value"]] == [mine.sop]
    with app.extensions["drimhub"].sessions() as s:
        owners = dict(s.execute(select(Study.study_uid, Study.org)).all())
    assert owners == {mine.study: "org-b", org_a_study[0].study: "org-a"}
    assert org_b.get(f"/dicom-web/studies/{mine.study}/metadata").status_code == 200


def test_cross_org_search_grant(anon: FlaskClient, mint: Mint, org_a_study) -> None:
    inst = org_a_study[0]
    hub = {"Authorization": f"Bearer {mint('system/ImagingStudy.rs drimhub/cross-org.s', org='hub')}"}
    found = anon.get(f"/dicom-web/studies?StudyInstanceUID={inst.study}", headers=hub)
    assert [s[STUDY_ID]["Value"][0] for s in found.json] == [inst.study]
    assert anon.get(f"/dicom-web/studies/{inst.study}/metadata", headers=hub).status_code == 404  # search only
    plain_hub = {"Authorization": f"Bearer {mint('system/ImagingStudy.rs', org='hub')}"}
    assert anon.get(f"/dicom-web/studies?StudyInstanceUID={inst.study}", headers=plain_hub).json == []
    grant_alone = {"Authorization": f"Bearer {mint('drimhub/cross-org.s', org='hub')}"}
    assert anon.get("/dicom-web/studies", headers=grant_alone).status_code == 403  # not a search scope itself


# --- audit involvement ----------------------------------------------------------------------------

@pytest.fixture
def involved(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None, str | None]]:
    calls: list[tuple[str | None, str | None, str | None]] = []
    real = auditctx.involve

    def spy(patient: str | None, study_uid: str | None = None, issuer: str | None = None) -> None:
        calls.append((patient, study_uid, issuer))
        real(patient, study_uid, issuer)
    monkeypatch.setattr(auditctx, "involve", spy)
    return calls


def test_every_touched_study_is_noted_for_the_audit(client: FlaskClient, org_b: FlaskClient, org_a_study,
                                                    involved: list) -> None:
    inst = org_a_study[1]
    u = _urls(inst)
    expected = [("PAT001", inst.study, "CHU-TEST")]
    other = f.ct(patient_id="PAT777")
    body, ctype = f.multipart([other.data, f.ct(inst.study, inst.series, seed=3).data])
    steps = [
        (lambda: client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}),
         sorted([("PAT777", other.study, "CHU-TEST"), *expected])),
        (lambda: client.get(f"/dicom-web/studies?StudyInstanceUID={inst.study}"), expected),
        (lambda: client.get(f"{u['instance']}/frames/2"), expected),
        (lambda: client.get(f"{u['study']}/metadata"), expected),
        (lambda: org_b.get(f"{u['study']}/metadata"), []),  # not visible: not involved
        (lambda: org_b.get("/dicom-web/studies"), []),
        (lambda: client.delete(u["instance"]), expected),
    ]
    for call, want in steps:
        involved.clear()
        assert call().status_code < 500
        assert sorted(involved) == want, want
