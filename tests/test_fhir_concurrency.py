"""Concurrent writers through a real HTTP server (threads), on SQLite and PostgreSQL:
conditional creates on one identifier make exactly one resource (R4 http.html#ccreate), and of
concurrent updates carrying the same If-Match exactly one wins (http.html#concurrency)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import requests
from flask import Flask
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import func, select

import dicomfactory as f
from conftest import Mint
from drimhub.store.models import FhirResource

FHIR = "application/fhir+json"
WORKERS = 10
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"


def _headers(mint: Mint, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint()}", "Content-Type": FHIR, **extra}


def test_concurrent_conditional_creates_make_one(app: Flask, live_server: str, mint: Mint) -> None:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "42"}]}
    headers = _headers(mint, **{"If-None-Exist": "identifier=urn:oid:1.2.250.1.213.1.4.10|42"})

    def create(_: int) -> tuple[int, str]:
        r = requests.post(f"{live_server}/fhir/Patient", json=body, headers=headers, timeout=60)
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(create, range(WORKERS)))
    assert sorted(s for s, _ in results) == [200] * (WORKERS - 1) + [201]
    assert len({i for _, i in results}) == 1
    with app.extensions["drimhub"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(FhirResource)) == 1


def test_concurrent_if_match_updates_one_wins(live_server: str, mint: Mint) -> None:
    created = requests.post(f"{live_server}/fhir/Patient", json={"resourceType": "Patient"},
                         headers=_headers(mint), timeout=60).json()
    url = f"{live_server}/fhir/Patient/{created['id']}"

    def update(i: int) -> int:
        body = {**created, "name": [{"family": f"Writer{i}"}]}
        return requests.put(url, json=body, headers=_headers(mint, **{"If-Match": 'W/"1"'}), timeout=60).status_code

    with ThreadPoolExecutor(WORKERS) as pool:
        statuses = sorted(pool.map(update, range(WORKERS)))
    assert statuses == [200] + [412] * (WORKERS - 1)
    assert requests.get(url, headers=_headers(mint), timeout=60).json()["meta"]["versionId"] == "2"


def test_concurrent_put_and_patch_on_one_resource(live_server: str, mint: Mint) -> None:
    """PUT and PATCH take the resource's locks in one order: no deadlock, consecutive versions."""
    created = requests.post(f"{live_server}/fhir/Patient", json={"resourceType": "Patient"},
                            headers=_headers(mint), timeout=60).json()
    url = f"{live_server}/fhir/Patient/{created['id']}"
    token = mint()

    def write(i: int) -> int:
        auth = {"Authorization": f"Bearer {token}"}
        if i % 2:
            patch = [{"op": "add", "path": "/name", "value": [{"family": f"Patch{i}"}]}]
            return requests.patch(url, json=patch, timeout=60,
                                  headers={**auth, "Content-Type": "application/json-patch+json"}).status_code
        body = {"resourceType": "Patient", "id": created["id"], "name": [{"family": f"Put{i}"}]}
        return requests.put(url, json=body, headers={**auth, "Content-Type": FHIR}, timeout=60).status_code

    rounds = 3 * WORKERS
    with ThreadPoolExecutor(WORKERS) as pool:
        statuses = list(pool.map(write, range(rounds)))
    assert statuses == [200] * rounds
    history = requests.get(f"{url}/_history?_count=100", headers=_headers(mint), timeout=60).json()
    assert sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"]) == list(range(1, rounds + 2))


def test_transactions_with_conditional_entries_in_opposite_orders(app: Flask, live_server: str, mint: Mint) -> None:
    """Two transactions with the same conditional entries in opposite orders lock in one order."""
    def entry(value: str) -> dict[str, Any]:
        return {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": value}]},
                "request": {"method": "PUT", "url": f"Patient?identifier=urn:x|{value}"}}

    forward = {"resourceType": "Bundle", "type": "transaction", "entry": [entry("A"), entry("B")]}
    backward = {"resourceType": "Bundle", "type": "transaction", "entry": [entry("B"), entry("A")]}
    headers = _headers(mint)

    def send(i: int) -> int:
        bundle = forward if i % 2 else backward
        return requests.post(f"{live_server}/fhir", json=bundle, headers=headers, timeout=60).status_code

    rounds = 3 * WORKERS
    with ThreadPoolExecutor(WORKERS) as pool:
        statuses = list(pool.map(send, range(rounds)))
    assert statuses == [200] * rounds
    with app.extensions["drimhub"].sessions() as s:
        assert s.scalar(select(func.count()).select_from(FhirResource)) == 2


def test_ris_conditional_create_racing_stows_of_the_same_ins_makes_one_patient(app: Flask, live_server: str,
                                                                                 mint: Mint) -> None:
    """A RIS's If-None-Exist on an INS and STOWs of studies carrying that INS meet on one lock:
    each INS (one per round) ends with exactly one Patient."""
    token = mint()
    rounds = 4

    def act(i: int) -> int:
        ins = f"15801751234{i % rounds:02d}"
        auth = {"Authorization": f"Bearer {token}"}
        if (i // rounds) % 2:
            other = Dataset()
            other.PatientID, other.IssuerOfPatientID = ins, "1.2.250.1.213.1.4.10"
            data, ctype = f.multipart([f.ct(patient_id=f"IPP{i}", OtherPatientIDsSequence=Sequence([other])).data])
            return requests.post(f"{live_server}/dicom-web/studies", data=data, timeout=60,
                                 headers={**auth, "Content-Type": ctype, "Accept": "application/dicom+json"}).status_code
        body = {"resourceType": "Patient", "identifier": [{"system": INS_SYSTEM, "value": ins}]}
        return requests.post(f"{live_server}/fhir/Patient", json=body, timeout=60,
                             headers={**auth, "Content-Type": FHIR,
                                      "If-None-Exist": f"identifier={INS_SYSTEM}|{ins}"}).status_code

    with ThreadPoolExecutor(WORKERS) as pool:
        statuses = list(pool.map(act, range(rounds * WORKERS // 2)))
    assert all(s in (200, 201) for s in statuses), statuses
    with app.extensions["drimhub"].sessions() as s:
        found = s.scalars(select(FhirResource).where(FhirResource.type == "Patient",
                                                     FhirResource.deleted.is_(False))).all()
    holders: dict[str, int] = {}
    for row in found:
        for ident in orjson.loads(row.content).get("identifier", []):
            if ident.get("system") == INS_SYSTEM:
                holders[ident["value"]] = holders.get(ident["value"], 0) + 1
    assert holders == {f"15801751234{r:02d}": 1 for r in range(rounds)}
