"""Retention policies (DRIMHUB_RETENTION) and their purge: `drimhub purge` and drimhub.sharing.retention.purge.

Real studies stored over STOW, real reports over FHIR; each purge is checked in the rows, the blob
files, the manifests and the audit trail.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

import dicomfactory as f
from drimhub.errors import DrimhubError
from drimhub.server.auth.policy import SHARE_SCOPE
from drimhub.server.cli import main
from drimhub.server.db import Resources
from drimhub.sharing import retention
from drimhub.sharing.retention import PurgeReport, Rule, parse_rules
from drimhub.store.audit import AuditRecord
from drimhub.store.engine import write_session
from drimhub.store.models import Instance, Series, Study
from drimhub.store.network import Manifest

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)

#: (DRIMHUB_RETENTION value, the policies read from it)
GOOD = [
    ("", ()),
    ("cached=30", (Rule("cached", 30),)),
    ("cached=30 org:tele=90", (Rule("cached", 30), Rule("org", 90, "tele"))),
    ("org:a=0,org:b=7,  cached=1", (Rule("org", 0, "a"), Rule("org", 7, "b"), Rule("cached", 1))),
]
BAD = ["cached", "cached=", "cached=-1", "cached=1.5", "cached=x", "kept=3", "org:=3", "org=3", "org:a",
       "cached=1 cached=2", "org:a=1 org:a=2", "cached=30;org:b=1"]


@pytest.mark.parametrize("text, rules", GOOD)
def test_policies_are_read(text: str, rules: tuple[Rule, ...]) -> None:
    assert parse_rules(text) == rules


@pytest.mark.parametrize("text", BAD)
def test_a_bad_policy_is_refused(text: str) -> None:
    with pytest.raises(DrimhubError, match="DRIMHUB_RETENTION"):
        parse_rules(text)


def test_a_bad_policy_stops_the_start(tmp_path: Path) -> None:
    from drimhub.server.app import create_app

    with pytest.raises(DrimhubError, match="DRIMHUB_RETENTION"):
        create_app({"RETENTION": "cached=soon", "DATA_DIR": str(tmp_path), "AUTO_MIGRATE": False})


# --- purging --------------------------------------------------------------------------------

def stow(client: FlaskClient, token: str | None = None, **attrs: Any) -> str:
    study = f.new_uid()
    series = f.new_uid()
    body, ctype = f.multipart([f.ct(study, series, instance_number=n, seed=n, **attrs).data for n in (1, 2)])
    headers = {"Content-Type": ctype, "Accept": "application/dicom+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    assert client.post("/dicom-web/studies", data=body, headers=headers).status_code == 200
    return study


def purge(res: Resources, rules: str, *, now: datetime, dry_run: bool = False) -> list[str]:
    """The studies a purge removed (none failing)."""
    report = retention.run(res, {"RETENTION": rules, "BASE_URL": "https://node.example"}, now=now, dry_run=dry_run)
    assert report.failed == []
    return report.purged


def make_cached(res: Resources, study: str, expires: datetime | None, origin: str = "peer-a") -> None:
    with write_session(res.sessions) as session:
        session.execute(update(Study).where(Study.study_uid == study).values(origin=origin, expires_at=expires))


def blob_paths(res: Resources, study: str) -> list[Path]:
    with res.sessions() as session:
        keys = session.scalars(select(Instance.blob_key).join(Series).join(Study).where(Study.study_uid == study))
        return [res.blobs.path(key) for key in keys]


def exists(res: Resources, study: str) -> bool:
    with res.sessions() as session:
        return bool(session.scalar(select(func.count()).select_from(Study).where(Study.study_uid == study)))


def deletions(res: Resources) -> list[dict[str, Any]]:
    with res.sessions() as session:
        rows = session.scalars(select(AuditRecord.resource).where(AuditRecord.subtype.endswith("110105")))
        return [orjson.loads(r) for r in rows]


def test_expired_cached_copy_is_purged(app: Flask, client: FlaskClient) -> None:
    res: Resources = app.extensions["drimhub"]
    now = datetime.now(timezone.utc)
    expired, fresh, undated, local = (stow(client, patient_id=f"P{n}") for n in range(4))
    make_cached(res, expired, now - timedelta(hours=1))
    make_cached(res, fresh, now + timedelta(days=3))
    make_cached(res, undated, None)  # stored "now": 30 days of cache from its storage
    files = blob_paths(res, expired)
    assert len(files) == 2 and all(p.exists() for p in files)

    assert purge(res, "cached=30", now=now, dry_run=True) == [expired]
    assert exists(res, expired) and all(p.exists() for p in files) and deletions(res) == []

    assert purge(res, "cached=30", now=now) == [expired]
    assert not exists(res, expired) and not any(p.exists() for p in files)
    assert all(exists(res, uid) for uid in (fresh, undated, local))
    event, = deletions(res)
    assert event["type"]["code"] == "110105" and event["action"] == "D" and event["outcome"] == "0"
    what = [e["what"] for e in event["entity"] if "what" in e]
    assert {"type": "Patient", "identifier": {"system": "urn:drimhub:issuer-of-patient-id:CHU-TEST", "value": "P0"}} \
        in what
    study_entity = next(e for e in event["entity"] if e.get("what", {}).get("type") == "ImagingStudy")
    assert study_entity["what"]["identifier"]["value"] == f"urn:oid:{expired}"
    assert study_entity["description"] == "retention policy cached=30"
    assert any(a["who"].get("display") == "drimhub-purge" for a in event["agent"])
    assert event["source"]["site"] == "https://node.example"  # the node's base URL (retention.run)

    later = now + timedelta(days=31)
    assert purge(res, "cached=30", now=later) == sorted([fresh, undated])
    assert exists(res, local)  # stored here: no cached policy applies
    assert purge(res, "", now=later + timedelta(days=3650)) == []


def report(study: str, status: str, issued: str) -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "status": status,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
            "imagingStudy": [{"reference": f"ImagingStudy/{study}"}], "issued": issued, "conclusion": "Normal."}


def post_report(client: FlaskClient, body: dict[str, Any], token: str | None = None) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = client.post("/fhir/DiagnosticReport", data=orjson.dumps(body), headers=headers)
    assert r.status_code == 201, r.json


def test_organisation_policy_counts_from_the_final_report(app: Flask, client: FlaskClient, mint: Any) -> None:
    res: Resources = app.extensions["drimhub"]
    tele = mint(org="tele")
    reported, amended, preliminary, unreported = (stow(client, tele, patient_id=f"T{n}") for n in range(4))
    other_org = stow(client)  # org-a: no policy
    post_report(client, report(reported, "final", "2030-01-01T10:00:00Z"), tele)
    post_report(client, report(amended, "final", "2030-01-01T10:00:00Z"), tele)
    post_report(client, report(amended, "amended", "2030-02-15T10:00:00Z"), tele)  # the latest one counts
    post_report(client, report(preliminary, "preliminary", "2029-01-01T10:00:00Z"), tele)
    post_report(client, report(other_org, "final", "2020-01-01T10:00:00Z"))
    rules = "org:tele=90"
    assert purge(res, rules, now=datetime(2030, 3, 31, tzinfo=timezone.utc)) == []
    assert purge(res, rules, now=datetime(2030, 4, 2, tzinfo=timezone.utc)) == [reported]
    assert purge(res, rules, now=datetime(2030, 5, 16, 11, tzinfo=timezone.utc)) == [amended]
    assert all(exists(res, uid) for uid in (preliminary, unreported, other_org))
    assert len(deletions(res)) == 2


def test_purge_removes_the_manifests(app: Flask, client: FlaskClient, mint: Any) -> None:
    res: Resources = app.extensions["drimhub"]
    study = stow(client)
    publisher = {"Authorization": f"Bearer {mint(scope=f'system/*.cruds {SHARE_SCOPE}')}"}
    r = client.post(f"/api/studies/{study}/manifest", headers=publisher)
    assert r.status_code == 201
    make_cached(res, study, NOW - timedelta(days=1))
    assert purge(res, "cached=30", now=NOW) == [study]
    with res.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Manifest)) == 0
    assert client.get(f"/fhir/DocumentReference/{r.json['sopInstanceUID']}").status_code == 410
    assert client.get(f"/api/studies/{study}/manifest").status_code == 404
    event, = deletions(res)  # the DocumentReference deletion is in the study's event
    assert {"reference": f"DocumentReference/{r.json['sopInstanceUID']}", "type": "DocumentReference"} \
        in [e["what"] for e in event["entity"]]


def test_a_failing_study_is_left_whole_and_the_others_purged(app: Flask, client: FlaskClient, mint: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit event, the manifests and the rows of a study go in one transaction: when writing the
    event fails (injected for one study), nothing of that study is deleted, and the purge goes on."""
    res: Resources = app.extensions["drimhub"]
    failing, purged = stow(client, patient_id="F1"), stow(client, patient_id="F2")
    publisher = {"Authorization": f"Bearer {mint(scope=f'system/*.cruds {SHARE_SCOPE}')}"}
    sop = client.post(f"/api/studies/{failing}/manifest", headers=publisher).json["sopInstanceUID"]
    for uid in (failing, purged):
        make_cached(res, uid, NOW - timedelta(days=1))
    files = blob_paths(res, failing)
    real = retention.audit_event

    def audit_event(study: retention.Deleted, *args: Any) -> Any:
        if study.study_uid == failing:
            raise RuntimeError("audit trail unavailable")
        return real(study, *args)

    monkeypatch.setattr(retention, "audit_event", audit_event)
    report = retention.run(res, {"RETENTION": "cached=30"}, now=NOW)
    assert report == PurgeReport([purged], [failing])
    assert exists(res, failing) and all(p.exists() for p in files)
    with res.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Manifest).where(Manifest.study_uid == failing)) == 1
    assert client.get(f"/fhir/DocumentReference/{sop}").json["status"] == "current"
    event, = deletions(res)  # the purged study's only: no event without its deletion
    assert f"urn:oid:{purged}" in orjson.dumps(event).decode() and failing not in orjson.dumps(event).decode()
    monkeypatch.setattr(retention, "audit_event", real)
    assert retention.run(res, {"RETENTION": "cached=30"}, now=NOW) == PurgeReport([failing], [])  # next time
    assert not exists(res, failing) and len(deletions(res)) == 2


def test_purge_command(app: Flask, client: FlaskClient, db_url: str, tmp_path: Path, signing_key_pem: str) -> None:
    res: Resources = app.extensions["drimhub"]
    study = stow(client)
    make_cached(res, study, datetime.now(timezone.utc) - timedelta(minutes=1))
    env = {"DRIMHUB_DATA_DIR": str(tmp_path / "var"), "DRIMHUB_DATABASE_URL": db_url,
           "DRIMHUB_STORAGE_URL": f"file://{tmp_path / 'blobs'}", "DRIMHUB_SIGNING_KEY": signing_key_pem,
           "DRIMHUB_RETENTION": "cached=30 org:tele=90", "DRIMHUB_BASE_URL": "https://cli.example"}
    runner = CliRunner()
    dry = runner.invoke(main, ["purge", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == [f"would purge {study}", "1 study would be purged"]
    assert exists(res, study)
    done = runner.invoke(main, ["purge"], env=env)
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [f"purged {study}", "1 study purged"]
    assert not exists(res, study) and len(deletions(res)) == 1
    assert deletions(res)[0]["source"]["site"] == "https://cli.example"  # the node as the scheduled purge names it
    bad = runner.invoke(main, ["purge"], env={**env, "DRIMHUB_RETENTION": "cached=later"})
    assert bad.exit_code != 0
