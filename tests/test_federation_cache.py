"""The cache of peers' studies (issue 5, review findings on federated retrieve-and-cache).

Two real nodes on loopback: A holds studies, B trusts A as a SMART backend peer and keeps cached
copies for ``DRIMHUB_RETENTION=cached=3`` days. A copy is served as a study only once complete;
a STOW by an organisation into a study held as a cached copy replaces it; a retrieve that is not
multipart ``application/dicom`` fills the cache and is answered by the local code; a removed peer's
copies expire. One node in process (SQLite and PostgreSQL): the filling lease and the purge of
expired copies without a policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, update

import dicomfactory as f
from drimhub.federation.cache import LEASE_SECONDS, Lease
from drimhub.sharing.retention import purge
from drimhub.store.audit import AuditRecord
from drimhub.store.engine import write_session
from drimhub.store.models import Instance, Series, Study, utc
from drimhub.store.network import CacheLease
from nodes import Node

READER = "system/ImagingStudy.rs"
DICOM_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Net:
    a: Node
    b: Node

    def put_on_a(self, instances: list[f.Instance]) -> None:
        body, ctype = f.multipart([i.data for i in instances])
        stored = requests.post(self.a.url + "/dicom-web/studies", data=body, timeout=30,
                               headers={**self.a.headers(org="org-a"), "Content-Type": ctype})
        assert stored.status_code == 200, stored.text

    def b_get(self, path: str, **headers: str) -> requests.Response:
        auth = self.b.headers(READER, org="org-b")
        return requests.get(self.b.url + path, headers={**auth, **headers}, timeout=30)

    def b_row(self, study: str) -> Any:
        """(org, origin, expires_at, cache_complete, instance count) of ``study`` in B's database."""
        engine = create_engine(f"sqlite:///{self.b.dir / 'drimhub.db'}")
        try:
            with engine.connect() as conn:
                row = conn.execute(select(Study.org, Study.origin, Study.expires_at, Study.cache_complete)
                                   .where(Study.study_uid == study)).one_or_none()
                count = conn.execute(select(Instance.pk).join(Series).join(Study)
                                     .where(Study.study_uid == study)).all()
        finally:
            engine.dispose()
        return None if row is None else (*row, len(count))


def _parts(response: requests.Response) -> list[bytes]:
    ctype = response.headers["Content-Type"]
    boundary = next(p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary="))
    parts = response.content.split(b"--" + boundary.encode())[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for part in parts]


def _study(n: int) -> list[f.Instance]:
    study, series = f.new_uid(), f.new_uid()
    return [f.ct(study, series, instance_number=i + 1, seed=i + 1) for i in range(n)]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root: Path = tmp_path_factory.mktemp("federation-cache")
    a, b = Node("a", root).start(), Node("b", root, DRIMHUB_RETENTION="cached=3").start()
    try:
        client = json.loads(a.cli("client", "create", "node-b", "--jwks-url", b.url + "/oauth/jwks", "--scope",
                                  f"{READER} drimhub/peer", "--org", "node-b").stdout)
        b.cli("peer", "add", "a", "--url", a.url, "--client-id", client["client_id"],
              "--scope", f"{READER} drimhub/peer", "--allow-private")
        yield Net(a, b)
    finally:
        a.stop()
        b.stop()


def test_a_partial_copy_is_not_served_as_the_study(net: Net) -> None:
    instances = _study(3)
    net.put_on_a(instances)
    study, first = instances[0].study, instances[0]
    one = net.b_get(f"/federated/dicom-web/studies/{study}/series/{first.series}/instances/{first.sop}",
                    Accept="application/dicom; transfer-syntax=*")
    assert one.status_code == 200 and one.content == first.data
    org, origin, expires, complete, count = net.b_row(study)
    assert (org, origin, count) == ("peer:a", "a", 1) and complete is None  # one instance: partial
    whole = net.b_get(f"/federated/dicom-web/studies/{study}", Accept=DICOM_AS_STORED)
    assert whole.status_code == 200
    assert sorted(_parts(whole)) == sorted(i.data for i in instances)  # all three, from A
    *_, complete, count = net.b_row(study)
    assert count == 3 and complete is not None


def test_the_cache_lifetime_is_the_retention_policy(net: Net) -> None:
    instances = _study(1)
    net.put_on_a(instances)
    got = net.b_get(f"/federated/dicom-web/studies/{instances[0].study}", Accept=DICOM_AS_STORED)
    assert got.status_code == 200 and _parts(got) == [instances[0].data]
    _, _, expires, complete, _ = net.b_row(instances[0].study)
    left = utc(expires) - datetime.now(timezone.utc)
    assert timedelta(days=3) - timedelta(minutes=5) < left <= timedelta(days=3)  # cached=3, not 30
    assert complete is not None


def test_a_retrieve_in_another_representation_fills_the_cache_and_answers(net: Net) -> None:
    instances = _study(2)
    net.put_on_a(instances)
    study = instances[0].study
    got = net.b_get(f"/federated/dicom-web/studies/{study}", Accept="*/*")  # what requests sends by default
    assert got.status_code == 200, got.text
    assert got.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert sorted(_parts(got)) == sorted(i.data for i in instances)
    *_, complete, count = net.b_row(study)
    assert count == 2 and complete is not None


def test_push_after_a_federated_view(net: Net) -> None:
    instances = _study(2)
    net.put_on_a(instances)
    study = instances[0].study
    viewed = net.b_get(f"/federated/dicom-web/studies/{study}", Accept=DICOM_AS_STORED)
    assert viewed.status_code == 200 and net.b_row(study)[:2] == ("peer:a", "a")
    body, ctype = f.multipart([i.data for i in instances])  # A (or anyone of org-b) pushes it to B
    pushed = requests.post(net.b.url + "/dicom-web/studies", data=body, timeout=30,
                           headers={**net.b.headers(org="org-b"), "Content-Type": ctype})
    assert pushed.status_code == 200, pushed.text
    org, origin, expires, complete, count = net.b_row(study)
    assert (org, origin, expires, complete, count) == ("org-b", None, None, None, 2)
    mine = net.b_get(f"/dicom-web/studies/{study}", Accept=DICOM_AS_STORED)
    assert mine.status_code == 200 and sorted(_parts(mine)) == sorted(i.data for i in instances)
    engine = create_engine(f"sqlite:///{net.b.dir / 'drimhub.db'}")
    try:
        with engine.connect() as conn:  # the copy's deletion is in B's audit trail, naming the study
            events = [json.loads(r) for r in conn.scalars(select(AuditRecord.resource)
                                                          .where(AuditRecord.subtype.endswith("110105")))]
    finally:
        engine.dispose()
    assert [e for e in events if any(study in json.dumps(en) for en in e["entity"])
            and "replaced by org-b" in json.dumps(e)]


def test_a_removed_peers_copies_expire(net: Net) -> None:
    instances = _study(1)
    net.put_on_a(instances)
    study = instances[0].study
    assert net.b_get(f"/federated/dicom-web/studies/{study}", Accept=DICOM_AS_STORED).status_code == 200
    net.b.cli("peer", "remove", "a")
    _, origin, expires, _, _ = net.b_row(study)
    assert origin == "a" and utc(expires) <= datetime.now(timezone.utc)
    net.a.stop()
    net.b.cli("peer", "add", "a", "--url", net.a.url, "--client-id", "someone-else", "--allow-private",
              "--timeout", "2")  # another node under the same name: the old copy is not revived
    found = net.b_get(f"/federated/dicom-web/studies?StudyInstanceUID={study}")
    assert found.status_code == 200 and found.json() == []
    assert net.b_get(f"/federated/dicom-web/studies/{study}", Accept=DICOM_AS_STORED).status_code == 502


# --- one node in process (SQLite and PostgreSQL) ------------------------------------------------

def test_one_request_at_a_time_holds_the_filling_lease(app: Flask) -> None:
    res = app.extensions["drimhub"]
    study = f.new_uid()
    first, second = Lease(res.sessions, "a", study, "first"), Lease(res.sessions, "a", study, "second")
    assert first.take()
    assert not second.take()  # the unique (origin, study) row refuses a second filler
    assert Lease(res.sessions, "b", study, "other-peer").take()  # keyed by the origin peer too
    first.release()
    assert second.take()  # released: the next request fills the copy
    with write_session(res.sessions) as session:  # the holder died: its lease ran out
        session.execute(update(CacheLease).where(CacheLease.holder == "second")
                        .values(until=datetime.now(timezone.utc) - timedelta(seconds=1)))
    assert first.take()  # an expired lease is taken over
    with res.sessions() as session:
        row = session.scalars(select(CacheLease).where(CacheLease.origin == "a", CacheLease.study_uid == study)).one()
        assert row.holder == "first"
        assert utc(row.until) > datetime.now(timezone.utc) + timedelta(seconds=LEASE_SECONDS - 10)
    second.release()  # not its lease any more: nothing happens
    assert not Lease(res.sessions, "a", study, "third").take()


def test_expired_cached_copies_are_purged_without_a_policy(app: Flask, client: FlaskClient) -> None:
    res = app.extensions["drimhub"]
    expired, fresh = f.ct(), f.ct()
    for inst in (expired, fresh):
        body, ctype = f.multipart([inst.data])
        assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype}).status_code == 200
    now = datetime.now(timezone.utc)
    with write_session(res.sessions) as session:
        for inst, expires in ((expired, now - timedelta(minutes=1)), (fresh, now + timedelta(days=1))):
            session.execute(update(Study).where(Study.study_uid == inst.study)
                            .values(origin="a", expires_at=expires))
    assert purge(res, "", node="urn:drimhub:node", now=now).purged == [expired.study]
    assert purge(res, "org:other=1", node="urn:drimhub:node", now=now).purged == []
