"""The CapabilityStatement says what the server does: generated requests from it all answer.

Every search parameter, include and revinclude it declares is sent, under
``Prefer: handling=strict`` (where an ignored parameter would be a 400), and must answer 200
with a searchset Bundle that validates; the statement and the SearchParameter resources
validate as R4B.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.searchparameter import SearchParameter
from flask.testing import FlaskClient

from drimhub.fhir.registry import RESOURCE_TYPES

STRICT = {"Prefer": "handling=strict"}
#: A value of each parameter type (matching or not: only the answer's shape is checked here).
SAMPLES = {"token": "x", "string": "x", "date": "ge2000-01-01", "uri": "http://x"}
#: Values a parameter must take (AuditEvent.outcome is a code of 0, 4, 8, 12).
OVERRIDES = {("AuditEvent", "outcome"): "0"}


@pytest.fixture
def statement(anon: FlaskClient) -> dict[str, Any]:
    r = anon.get("/fhir/metadata")
    assert r.status_code == 200 and r.mimetype == "application/fhir+json"
    CapabilityStatement.model_validate(r.json)
    return r.json


def sample(param: dict[str, Any], resource: dict[str, Any]) -> str:
    if (resource["type"], param["name"]) in OVERRIDES:
        return OVERRIDES[resource["type"], param["name"]]
    if param["type"] != "reference":
        return SAMPLES[param["type"]]
    registry = RESOURCE_TYPES.get(resource["type"])
    found = registry.param(param["name"]) if registry else None
    target = found.targets[0] if found and found.targets else "Patient"
    return f"{target}/x"


def requests_of(statement: dict[str, Any]) -> list[str]:
    rest = statement["rest"][0]
    urls = []
    for resource in rest["resource"]:
        type_ = resource["type"]
        if "search-type" not in {i["code"] for i in resource["interaction"]}:
            continue
        prefix = f"/fhir/{type_}?" + ("date=ge2000-01-01&" if type_ == "AuditEvent" else "")
        for param in resource.get("searchParam", []):
            urls.append(f"{prefix}{param['name']}={sample(param, resource)}")
            if type_ != "AuditEvent":
                urls.append(f"{prefix}{param['name']}:missing=true")
        if type_ != "AuditEvent":
            urls += [f"{prefix}{p['name']}{m}" for p in rest["searchParam"]
                     for m in (f"={SAMPLES[p['type']]}", ":missing=false")]
            urls += [f"{prefix}_include={i}" for i in resource.get("searchInclude", [])]
            urls += [f"{prefix}_revinclude={i}" for i in resource.get("searchRevInclude", [])]
            urls += [f"{prefix}_sort={key}" for key in RESOURCE_TYPES[type_].sorts]
    return urls


def test_statement_is_r4_and_complete(statement: dict[str, Any]) -> None:
    assert statement["fhirVersion"] == "4.0.1" and statement["kind"] == "instance"
    assert statement["implementation"]["url"] == "http://localhost/fhir"
    rest = statement["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    assert set(types) == {*RESOURCE_TYPES, "AuditEvent"}
    assert types["ImagingStudy"]["versioning"] == "no-version"
    assert [i["code"] for i in types["ImagingStudy"]["interaction"]] == list(RESOURCE_TYPES["ImagingStudy"].interactions)
    assert types["DiagnosticReport"]["conditionalCreate"] is True
    assert types["DiagnosticReport"]["conditionalDelete"] == "single"
    assert "DiagnosticReport:imaging-study" in types["ImagingStudy"]["searchRevInclude"]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    oauth = rest["security"]["extension"][0]
    assert {e["url"]: e["valueUri"] for e in oauth["extension"]}["token"] == "http://localhost/oauth/token"
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


def test_every_declared_search_answers(client: FlaskClient, statement: dict[str, Any]) -> None:
    urls = requests_of(statement)
    assert len(urls) > 60
    for url in urls:
        r = client.get(url, headers=STRICT)
        assert r.status_code == 200, (url, r.json)
        Bundle.model_validate(r.json)
        assert not [e for e in r.json.get("entry", []) if e["search"]["mode"] == "outcome"], url


def test_custom_search_parameters_are_published(client: FlaskClient, statement: dict[str, Any]) -> None:
    declared = {p["definition"] for r in statement["rest"][0]["resource"] for p in r.get("searchParam", [])}
    listing = client.get("/fhir/SearchParameter")
    assert listing.status_code == 200
    found = [e["resource"] for e in listing.json["entry"]]
    assert [p["id"] for p in found] == ["DiagnosticReport-imaging-study", "DocumentReference-study-instance-uid",
                                        "DocumentReference-accession-number", "DocumentReference-modality",
                                        "DocumentReference-bodysite"]
    for param in found:
        SearchParameter.model_validate(param)
        assert param["url"] in declared
        one = client.get(f"/fhir/SearchParameter/{param['id']}")
        assert one.status_code == 200 and one.json == param
    assert client.get("/fhir/SearchParameter/nope").status_code == 404
