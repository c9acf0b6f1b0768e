"""Concurrent writers through a real HTTP server (threads), on SQLite and PostgreSQL:
conditional creates on one identifier make exactly one resource (R4 http.html#ccreate), and of
concurrent updates carrying the same If-Match exactly one wins (http.html#concurrency)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests
from flask import Flask
from sqlalchemy import func, select

from conftest import Mint
from drimhub.store.models import FhirResource

FHIR = "application/fhir+json"
WORKERS = 10


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
