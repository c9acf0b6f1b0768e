"""Durable jobs and pushes (drimhub.jobs): the API, the job states, the push to a real peer, push rules,
and the Redis back-end running a job.

The peer is a second drimhub app on its own SQLite database, served on loopback by werkzeug, that
registered this node as a SMART backend client; the worker side (:func:`tasks.run_job`) runs
in the test's process, or in a huey consumer thread for the Redis back-end.
"""

from __future__ import annotations

import os
import shutil
import struct
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

import dicomfactory as f
from conftest import Mint
from drimhub.errors import DrimhubError
from drimhub.federation.peers import add_peer
from drimhub.jobs import push, queue, state, tasks
from drimhub.server.app import create_app
from drimhub.server.auth.clients import create_client
from drimhub.server.cli import main
from drimhub.store.engine import write_session
from drimhub.store.models import Study
from drimhub.store.network import Job
from serverproc import free_port
from werkzeug.serving import make_server

PEER_ORG = "org-peer"
PUSH = "drimhub/push"
ADMIN = "drimhub/admin"
JOB_KEYS = {"id", "kind", "state", "peer", "study", "attempts", "done", "total", "error", "created", "updated"}


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"JOBS_RETRY_BASE": 0.2, "JOBS_RETRY_CAP": 0.4, "JOBS_MAX_ATTEMPTS": 2}


class PeerNode:
    """A second drimhub app served on loopback: the peer pushes go to."""

    def __init__(self, app: Flask, url: str) -> None:
        self.app, self.url = app, url

    def client(self, org: str = PEER_ORG) -> FlaskClient:
        from drimhub.server.auth import tokens

        claims = tokens.access_token_claims(issuer=self.url, audience=self.url, subject="t", client_id="t",
                                            scope="system/*.cruds", org=org, ttl=600)
        http = self.app.test_client()
        http.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + tokens.sign(claims, self.app.extensions["drimhub"].signing_key)
        return http

    def instances(self, study: str) -> list[str]:
        answer = self.client().get(f"/dicom-web/studies/{study}/instances")
        return [] if answer.status_code == 204 else [i["00080018"]["Value"][0] for i in answer.get_json()]


@pytest.fixture
def peer(tmp_path: Path, sqlite_template: Path, signing_key_pem: str) -> Iterator[PeerNode]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    shutil.copyfile(sqlite_template, tmp_path / "peer.db")
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path / "peer"), "DATABASE_URL": f"sqlite:///{tmp_path / 'peer.db'}",
                      "STORAGE_URL": f"file://{tmp_path / 'peer-blobs'}", "SIGNING_KEY": signing_key_pem,
                      "BASE_URL": url})
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield PeerNode(app, url)
    server.shutdown()
    thread.join(5)
    app.extensions["drimhub"].engine.dispose()


def trust(app: Flask, peer: PeerNode, name: str = "b", url: str | None = None, **options: Any) -> None:
    """``peer`` registers this node as a client; this node adds it as peer ``name``."""
    public = {"keys": [app.extensions["drimhub"].signing_key.as_dict(private=False)]}
    with write_session(peer.app.extensions["drimhub"].sessions) as session:
        row, _ = create_client(session, "node-a", "system/ImagingStudy.crs", org=PEER_ORG, jwks=public)
        client_id = row.client_id
    with write_session(app.extensions["drimhub"].sessions) as session:
        add_peer(session, name, url or peer.url, client_id=client_id, scope="system/ImagingStudy.crs",
                 allow_private=True, **options)


def stow(http: FlaskClient, instances: list[f.Instance]) -> None:
    body, content_type = f.multipart([i.data for i in instances])
    answer = http.post("/dicom-web/studies", data=body, content_type=content_type)
    assert answer.status_code == 200, answer.get_json()


def study_of(n: int, **attrs: Any) -> list[f.Instance]:
    study, series = f.new_uid(), f.new_uid()
    return [f.ct(study, series, instance_number=i + 1, **attrs) for i in range(n)]


def bearer(mint: Mint, scope: str, org: str = "org-a") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(scope=scope, org=org)}"}


def post_push(client: FlaskClient, mint: Mint, study: str, peer: str = "b", scope: str = PUSH,
              org: str = "org-a") -> Any:
    return client.post(f"/api/peers/{peer}/push", json={"study": study}, headers=bearer(mint, scope, org))


def job_row(app: Flask, job_id: str) -> Job:
    with app.extensions["drimhub"].sessions() as session:
        job = state.get(session, job_id)
        assert job is not None
        return job


# --- settings -----------------------------------------------------------------------------------

#: (attempt that failed, seconds before the next) under the default policy: 5 s doubling, capped at 10 min.
BACK_OFF = [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (7, 320.0), (8, 600.0), (40, 600.0)]


@pytest.mark.parametrize("attempt, delay", BACK_OFF)
def test_default_back_off(attempt: int, delay: float) -> None:
    assert state.RetryPolicy.from_config({}).delay(attempt) == delay


@pytest.mark.parametrize("config", [{"JOBS_RETRY_BASE": 0}, {"JOBS_RETRY_BASE": 10, "JOBS_RETRY_CAP": 5},
                                    {"JOBS_MAX_ATTEMPTS": 0}, {"JOBS_RETRY_BASE": "soon"}])
def test_bad_retry_settings_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(DrimhubError):
        state.RetryPolicy.from_config(config)


@pytest.mark.parametrize("url", ["sqlite://", "postgresql://x/y", "file:///tmp/q"])
def test_bad_job_urls_are_refused(url: str) -> None:
    with pytest.raises(DrimhubError):
        queue.make_huey(url)


# --- the API ----------------------------------------------------------------------------------

def test_push_answers_202_with_the_queued_job(app: Flask, client: FlaskClient, mint: Mint, peer: PeerNode) -> None:
    trust(app, peer)
    instances = study_of(2)
    stow(client, instances)
    answer = post_push(client, mint, instances[0].study)
    assert answer.status_code == 202
    job = answer.get_json()
    assert set(job) == JOB_KEYS
    assert answer.headers["Location"] == f"/api/jobs/{job['id']}"
    assert (job["kind"], job["state"], job["peer"], job["study"], job["attempts"], job["done"]) == \
        ("push", "queued", "b", instances[0].study, 0, 0)
    assert queue.queue_of(app).huey.pending_count() == 1  # huey carries the job's id
    got = client.get(answer.headers["Location"], headers=bearer(mint, PUSH))
    assert got.status_code == 200 and got.get_json() == job
    again = post_push(client, mint, instances[0].study)  # still pending: the same job, not a second one
    assert again.status_code == 202 and again.get_json()["id"] == job["id"]
    assert queue.queue_of(app).huey.pending_count() == 1


def test_push_and_job_access(app: Flask, client: FlaskClient, anon: FlaskClient, mint: Mint, peer: PeerNode) -> None:
    trust(app, peer)
    instances = study_of(1)
    stow(client, instances)
    study = instances[0].study
    refused = post_push(client, mint, study, scope="system/*.cruds")
    assert refused.status_code == 403 and refused.get_json()["error"] == "insufficient_scope"
    assert post_push(client, mint, study, org="org-b").status_code == 404  # another organisation's study
    assert post_push(client, mint, study, scope=ADMIN, org="org-b").status_code == 404
    assert post_push(client, mint, study, peer="nobody").status_code == 404
    assert post_push(client, mint, "1.2.3.999").status_code == 404
    bad = client.post("/api/peers/b/push", json={"study": "../x"}, headers=bearer(mint, PUSH))
    assert bad.status_code == 400
    assert anon.post("/api/peers/b/push", json={"study": study}).status_code == 401
    location = post_push(client, mint, study).headers["Location"]
    assert client.get(location, headers=bearer(mint, PUSH)).status_code == 200
    assert client.get(location, headers=bearer(mint, ADMIN, "org-b")).status_code == 200
    assert client.get(location, headers=bearer(mint, PUSH, "org-b")).status_code == 404
    assert client.get(location, headers=bearer(mint, "system/*.cruds")).status_code == 403
    assert client.get("/api/jobs/nope", headers=bearer(mint, ADMIN)).status_code == 404
    assert anon.get(location).status_code == 401


def test_a_patient_who_opposed_sharing_is_not_pushed(app: Flask, client: FlaskClient, mint: Mint,
                                                    peer: PeerNode) -> None:
    trust(app, peer)
    instances = study_of(1)
    stow(client, instances)
    with app.extensions["drimhub"].sessions() as session:
        patient = session.scalar(select(Study.patient_ref).where(Study.study_uid == instances[0].study))
    consent = {"resourceType": "Consent", "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                     "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
               "patient": {"reference": f"Patient/{patient}"}, "provision": {"type": "deny"}}
    assert client.post("/fhir/Consent", json=consent).status_code == 201
    answer = post_push(client, mint, instances[0].study)
    assert answer.status_code == 403
    assert answer.get_json()["error_description"]
    with app.extensions["drimhub"].sessions() as session:
        assert session.scalar(select(Job.pk)) is None


# --- the worker side: states, retries, leases ------------------------------------------------

def test_push_sends_every_instance_once_in_batches(app: Flask, client: FlaskClient, mint: Mint, peer: PeerNode,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push, "BATCH_INSTANCES", 2)
    trust(app, peer)
    instances = study_of(5)
    stow(client, instances)
    study = instances[0].study
    job_id = post_push(client, mint, study).get_json()["id"]
    assert tasks.run_job(app, job_id) == state.SUCCEEDED
    job = client.get(f"/api/jobs/{job_id}", headers=bearer(mint, PUSH)).get_json()
    assert (job["state"], job["attempts"], job["done"], job["total"], job["error"]) == ("succeeded", 1, 5, 5, None)
    assert sorted(peer.instances(study)) == sorted(i.sop for i in instances)
    first = instances[0]
    wado = peer.client().get(f"/dicom-web/studies/{study}/series/{first.series}/instances/{first.sop}",
                             headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert first.data in wado.data  # the stored bytes, unchanged
    assert tasks.run_job(app, job_id) is None  # finished: not run again
    second = post_push(client, mint, study).get_json()["id"]  # the same study again: nothing duplicated
    assert second != job_id and tasks.run_job(app, second) == state.SUCCEEDED
    assert sorted(peer.instances(study)) == sorted(i.sop for i in instances)


def test_unreachable_peer_retries_with_back_off_then_fails(app: Flask, client: FlaskClient, mint: Mint,
                                                          peer: PeerNode) -> None:
    trust(app, peer, url=f"http://127.0.0.1:{free_port()}")  # nobody listens there
    instances = study_of(1)
    stow(client, instances)
    job_id = post_push(client, mint, instances[0].study).get_json()["id"]
    assert tasks.run_job(app, job_id) == state.RETRYING
    job = job_row(app, job_id)
    assert job.state == "retrying" and job.attempts == 1 and job.error and job.next_attempt is not None
    assert tasks.run_job(app, job_id) is None  # not due before its back-off
    assert [t.args for t in queue.queue_of(app).huey.pending() if t.eta] == [(job_id,)]  # the retry, for later
    time.sleep(0.25)
    assert tasks.run_job(app, job_id) == state.FAILED  # JOBS_MAX_ATTEMPTS = 2
    job = job_row(app, job_id)
    assert job.state == "failed" and job.attempts == 2 and "ConnectionError" in (job.error or "")


def test_a_failed_sop_at_the_peer_fails_the_job_with_its_reason(app: Flask, client: FlaskClient, mint: Mint,
                                                               peer: PeerNode) -> None:
    trust(app, peer)
    instances = study_of(2)
    stow(client, instances)
    stow(peer.client("org-other"), instances[:1])  # the peer holds that study for another organisation
    job_id = post_push(client, mint, instances[0].study).get_json()["id"]
    assert tasks.run_job(app, job_id) == state.FAILED  # 0124H is not the peer's transient problem
    job = job_row(app, job_id)
    assert job.attempts == 1 and "0124H" in (job.error or "")


def test_a_job_whose_worker_died_is_recovered(app: Flask, client: FlaskClient, mint: Mint, peer: PeerNode) -> None:
    trust(app, peer)
    instances = study_of(3)
    stow(client, instances)
    job_id = post_push(client, mint, instances[0].study).get_json()["id"]
    res = app.extensions["drimhub"]
    assert tasks.recover(app, state.OVERDUE_SECONDS) == []  # queued just now: not overdue
    assert state.claim(res.sessions, job_id) is not None  # a worker takes it...
    assert state.claim(res.sessions, job_id) is None  # ...and holds it
    assert tasks.run_job(app, job_id) is None
    assert tasks.recover(app) == []  # its lease is alive
    with write_session(res.sessions) as session:  # ...then dies: its lease runs out
        session.execute(update(Job).where(Job.id == job_id)
                        .values(lease_until=state.now_utc() - timedelta(seconds=1)))
    huey = queue.queue_of(app).huey
    before = huey.pending_count()
    assert tasks.recover(app) == [job_id]
    assert huey.pending_count() == before + 1
    assert tasks.run_job(app, job_id) == state.SUCCEEDED
    job = job_row(app, job_id)
    assert job.attempts == 2 and job.done == 3
    assert sorted(peer.instances(instances[0].study)) == sorted(i.sop for i in instances)


def test_a_push_sends_what_the_peer_lacks_whatever_the_row_order(app: Flask, client: FlaskClient, mint: Mint,
                                                                   peer: PeerNode) -> None:
    """An instance whose row sorts before what an attempt had sent (a late commit) is still sent:
    the push asks the peer what it holds, and succeeds only once it holds every instance."""
    trust(app, peer)
    instances = study_of(3)
    stow(client, instances)
    stow(peer.client(), instances[1:2])  # the peer already holds one (an earlier attempt)
    study = instances[0].study
    job_id = post_push(client, mint, study).get_json()["id"]
    res = app.extensions["drimhub"]
    with write_session(res.sessions) as session:  # an earlier attempt's progress, as if all were sent
        session.execute(update(Job).where(Job.id == job_id).values(done=3))
    assert tasks.run_job(app, job_id) == state.SUCCEEDED
    assert sorted(peer.instances(study)) == sorted(i.sop for i in instances)
    assert (job_row(app, job_id).done, job_row(app, job_id).total) == (3, 3)


def test_the_stored_bytes_are_sent_unchanged(app: Flask, client: FlaskClient, mint: Mint, peer: PeerNode) -> None:
    """A file pydicom would re-encode differently (a stale File Meta Information Group Length) reaches
    the peer byte for byte."""
    trust(app, peer)
    instance = study_of(1)[0]
    length = struct.unpack("<I", instance.data[140:144])[0]
    data = instance.data[:140] + struct.pack("<I", length + 2) + instance.data[144:]
    body, content_type = f.multipart([data])
    assert client.post("/dicom-web/studies", data=body, content_type=content_type).status_code == 200
    job_id = post_push(client, mint, instance.study).get_json()["id"]
    assert tasks.run_job(app, job_id) == state.SUCCEEDED
    got = peer.client().get(f"/dicom-web/studies/{instance.study}/series/{instance.series}/instances/{instance.sop}",
                            headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert got.status_code == 200 and data in got.data and instance.data not in got.data


def test_a_stale_worker_cannot_write_a_job_taken_over(app: Flask, client: FlaskClient, mint: Mint,
                                                      peer: PeerNode) -> None:
    trust(app, peer)
    instances = study_of(2)
    stow(client, instances)
    job_id = post_push(client, mint, instances[0].study).get_json()["id"]
    res = app.extensions["drimhub"]
    stale = state.claim(res.sessions, job_id, lease=0.0)  # a worker whose lease runs out at once...
    assert stale is not None and stale.lease_id
    time.sleep(0.01)
    fresh = state.claim(res.sessions, job_id)  # ...and another that takes the job over
    assert fresh is not None and fresh.lease_id not in (None, stale.lease_id)
    policy = state.RetryPolicy.from_config(app.config)
    for write in (lambda: state.progress(res.sessions, job_id, stale.lease_id, done=1, total=2),
                  lambda: state.renew(res.sessions, job_id, stale.lease_id),
                  lambda: state.succeed(res.sessions, job_id, stale.lease_id),
                  lambda: state.fail(res.sessions, job_id, stale.lease_id, "late", policy, permanent=True),
                  lambda: tasks.run_push(app, stale, stale.lease_id)):
        with pytest.raises(state.LeaseLost):
            write()
    job = job_row(app, job_id)
    assert (job.state, job.lease_id, job.error, job.done) == ("running", fresh.lease_id, None, 0)
    assert peer.instances(instances[0].study) == []  # the stale run stopped before sending
    tasks.run_push(app, fresh, fresh.lease_id)
    state.succeed(res.sessions, job_id, fresh.lease_id)
    assert job_row(app, job_id).state == "succeeded"


def test_relay_peers_are_refused_and_peer_refusals_are_permanent(app: Flask, client: FlaskClient, mint: Mint,
                                                                 db_url: str, tmp_path: Path, signing_key_pem: str,
                                                                 peer: PeerNode) -> None:
    trust(app, peer, name="relay", auth="relay")
    trust(app, peer, name="wrong", dicomweb_url=peer.url + "/nothing-here")  # DICOMweb requests answered 404
    instances = study_of(1)
    stow(client, instances)
    refused = post_push(client, mint, instances[0].study, peer="relay")
    assert refused.status_code == 400 and "relay" in refused.get_json()["error_description"]
    env = {"DRIMHUB_DATABASE_URL": db_url, "DRIMHUB_DATA_DIR": str(tmp_path / "var"),
           "DRIMHUB_SIGNING_KEY": signing_key_pem}
    added = CliRunner().invoke(main, ["push-rule", "add", "relay"], env=env)
    assert added.exit_code != 0 and "relay" in added.output
    job_id = post_push(client, mint, instances[0].study, peer="wrong").get_json()["id"]
    assert tasks.run_job(app, job_id) == state.FAILED, job_row(app, job_id).error  # JOBS_MAX_ATTEMPTS = 2
    job = job_row(app, job_id)
    assert job.attempts == 1 and "404" in (job.error or "")


def test_duplicate_failures_count_as_stored_once_held() -> None:
    from pydicom.dataset import Dataset

    answer = Dataset.from_json({"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [0x0111]}},
        {"00081155": {"vr": "UI", "Value": ["1.2.4"]}, "00081197": {"vr": "US", "Value": [45070]}}]},
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.5"]}}]}})
    assert push.check_answer(answer, ["1.2.3", "1.2.4", "1.2.5"]) == {"1.2.3": 0x0111, "1.2.4": 45070}
    with pytest.raises(push.PushError) as refused:
        push.check_answer(answer, ["1.2.3", "1.2.6"])
    assert not refused.value.permanent


def test_each_push_attempt_is_audited_as_an_export(app: Flask, client: FlaskClient, mint: Mint,
                                                   peer: PeerNode) -> None:
    import orjson

    from drimhub.store.audit import AuditRecord

    trust(app, peer)
    trust(app, peer, name="down", url=f"http://127.0.0.1:{free_port()}")
    instances = study_of(1)
    stow(client, instances)
    study = instances[0].study
    assert tasks.run_job(app, post_push(client, mint, study).get_json()["id"]) == state.SUCCEEDED
    assert tasks.run_job(app, post_push(client, mint, study, peer="down").get_json()["id"]) == state.RETRYING
    with app.extensions["drimhub"].sessions() as session:
        events = [orjson.loads(r) for r in session.scalars(
            select(AuditRecord.resource).where(AuditRecord.event_type == "110106").order_by(AuditRecord.pk))]
    assert [(e["outcome"], e["type"]["display"]) for e in events] == [("0", "Export"), ("8", "Export")]
    for event, peer_name in zip(events, ("b", "down")):
        assert {"display": f"peer {peer_name}"} in [agent.get("who") for agent in event["agent"]]
        assert any(study in str(entity) for entity in event["entity"])
        assert any("Patient" in str(entity) for entity in event["entity"])
    assert "retrying" in events[1]["outcomeDesc"]


def test_the_scheduled_purge_runs_without_a_retention_policy(app: Flask, client: FlaskClient) -> None:
    instances = study_of(1)
    stow(client, instances)
    with write_session(app.extensions["drimhub"].sessions) as session:  # made a peer's expired cached copy
        session.execute(update(Study).where(Study.study_uid == instances[0].study).values(
            org="peer:b", origin="b", expires_at=state.now_utc() - timedelta(days=1)))
    assert not app.config.get("RETENTION")
    assert tasks.purge(app) == [instances[0].study]


# --- push rules ---------------------------------------------------------------------------------

def test_push_rules_queue_one_job_per_study_and_peer(app: Flask, client: FlaskClient, db_url: str, tmp_path: Path,
                                                    signing_key_pem: str, peer: PeerNode) -> None:
    trust(app, peer)
    env = {"DRIMHUB_DATABASE_URL": db_url, "DRIMHUB_DATA_DIR": str(tmp_path / "var"),
           "DRIMHUB_SIGNING_KEY": signing_key_pem}
    runner = CliRunner()
    added = runner.invoke(main, ["push-rule", "add", "b", "--org", "org-a", "--modality", "ct"], env=env)
    assert added.exit_code == 0, added.output
    assert runner.invoke(main, ["push-rule", "add", "b", "--modality", "MR"], env=env).exit_code == 0
    assert runner.invoke(main, ["push-rule", "add", "nobody"], env=env).exit_code != 0
    listed = runner.invoke(main, ["push-rule", "list"], env=env)
    assert listed.exit_code == 0 and '"modality": "CT"' in listed.output and listed.output.count("\n") == 2

    ct = study_of(2)
    stow(client, ct)
    stow(client, ct[:1])  # stored again while its push is pending: no second job
    stow(client, study_of(1, modality="US"))
    with app.extensions["drimhub"].sessions() as session:
        jobs = session.execute(select(Job.study_uid, Job.peer, Job.state, Job.org)).all()
    assert jobs == [(ct[0].study, "b", "queued", "org-a")]
    assert queue.queue_of(app).huey.pending_count() == 1
    rule_id = added.output.split('"id": ')[1].split(",")[0]
    assert runner.invoke(main, ["push-rule", "remove", rule_id], env=env).exit_code == 0
    assert runner.invoke(main, ["push-rule", "remove", rule_id], env=env).exit_code != 0


# --- the Redis back-end -------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/13"  # a database of its own; only this test's queue name is flushed


@pytest.fixture
def redis_app(app: Flask) -> Iterator[Flask]:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        if os.environ.get("CI") or os.environ.get("DRIMHUB_TEST_REQUIRE_REDIS"):
            pytest.fail("Redis is required (CI) but unreachable at 127.0.0.1:6379")
        pytest.skip("no Redis on 127.0.0.1:6379")
    app.config.update(JOBS_URL=REDIS_URL, JOBS_NAME=f"drimhub-test-{uuid.uuid4().hex[:8]}")
    app.extensions[queue.EXTENSION] = queue.JobQueue(app)
    yield app
    queue.queue_of(app).huey.flush()


def test_a_redis_queue_runs_a_push(redis_app: Flask, client: FlaskClient, mint: Mint, peer: PeerNode) -> None:
    app = redis_app
    trust(app, peer)
    instances = study_of(3)
    stow(client, instances)
    huey = queue.queue_of(app).huey
    assert type(huey).__name__ == "RedisHuey"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    consumer = huey.create_consumer(workers=1, periodic=False, max_delay=0.2)
    consumer.start()
    try:
        job_id = post_push(client, mint, instances[0].study).get_json()["id"]
        deadline = time.monotonic() + 30
        while (job := job_row(app, job_id)).state != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        consumer.stop(graceful=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert (job.state, job.done, job.total) == ("succeeded", 3, 3)
    assert sorted(peer.instances(instances[0].study)) == sorted(i.sop for i in instances)


def test_rules_follow_a_running_push_and_drimhub_import(app: Flask, client: FlaskClient, db_url: str, tmp_path: Path,
                                                       signing_key_pem: str, peer: PeerNode) -> None:
    trust(app, peer)
    env = {"DRIMHUB_DATABASE_URL": db_url, "DRIMHUB_DATA_DIR": str(tmp_path / "var"),
           "DRIMHUB_SIGNING_KEY": signing_key_pem, "DRIMHUB_JOBS_URL": str(app.config["JOBS_URL"])}
    runner = CliRunner()
    assert runner.invoke(main, ["push-rule", "add", "b"], env=env).exit_code == 0
    instances = study_of(3)
    stow(client, instances[:1])
    res = app.extensions["drimhub"]
    with res.sessions() as session:
        (first,) = session.scalars(select(Job.id))
    assert state.claim(res.sessions, first) is not None  # running: it may have listed the study already
    stow(client, instances[1:2])
    with res.sessions() as session:
        states = sorted(session.execute(select(Job.state, Job.id)).all())
    assert [s for s, _ in states] == ["queued", "running"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(instances[2].data)
    imported = runner.invoke(main, ["import", str(tmp_path / "in"), "--org", "org-a"], env=env)
    assert imported.exit_code == 0, imported.output
    with res.sessions() as session:
        assert session.scalar(select(func.count(Job.pk))) == 2  # the queued one takes the imported instance
    other = study_of(1)
    (tmp_path / "in" / "x.dcm").write_bytes(other[0].data)
    imported = runner.invoke(main, ["import", str(tmp_path / "in"), "--org", "org-a"], env=env)
    assert imported.exit_code == 0 and "1 push(es) queued" in imported.output, imported.output
    with res.sessions() as session:
        assert session.scalar(select(Job.state).where(Job.study_uid == other[0].study)) == "queued"
