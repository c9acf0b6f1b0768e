"""DICOM Patient module ⇒ FHIR Patient, row by row over :data:`drimhub.mappings.patient.RULES`."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.patient import Patient
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from drimhub.mappings import patient as m
from drimhub.mappings.dicom import V2_0203

PI = {"coding": [{"system": V2_0203, "code": "PI", "display": "Patient internal identifier"}]}
NIR = {"coding": [{"system": m.FR_CORE_V2_0203, "code": "INS-NIR", "display": "NIR définitif"}]}
NIA = {"coding": [{"system": m.FR_CORE_V2_0203, "code": "INS-NIA", "display": "NIR temporaire"}]}


def ds(**attrs: Any) -> Dataset:
    out = Dataset()
    for key, value in attrs.items():
        setattr(out, key, value)
    return out


def ins(value: str, oid: str = "1.2.250.1.213.1.4.8") -> Dataset:
    return ds(PatientID=value, IssuerOfPatientID=oid)


# rule (element, keyword) ⇒ (attributes, expected value in the element)
CASES: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {
    ("identifier[]", "PatientID"): ({"PatientID": "123", "IssuerOfPatientID": "CHU-TEST"},
                                    {"type": PI, "system": "urn:drimhub:issuer:CHU-TEST", "value": "123"}),
    ("identifier[]", "OtherPatientIDsSequence"): (
        {"PatientID": "123", "OtherPatientIDsSequence": Sequence([ins("1580175123456")])},
        {"use": "official", "type": NIR, "system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1580175123456"}),
    ("name[]", "PatientName"): ({"PatientName": "DUPONT^Jérôme^^M."},
                                {"family": "DUPONT", "given": ["Jérôme"], "prefix": ["M."]}),
    ("gender", "PatientSex"): ({"PatientSex": "F"}, "female"),
    ("birthDate", "PatientBirthDate"): ({"PatientBirthDate": "19580101"}, "1958-01-01"),
}


def test_every_rule_has_a_case_and_a_source() -> None:
    assert {(r.element, r.keyword) for r in m.RULES} == set(CASES)
    assert all(r.source and r.tag for r in m.RULES)


@pytest.mark.parametrize("rule", m.RULES, ids=lambda r: f"{r.element}<-{r.keyword}")
def test_rule(rule: Any) -> None:
    attrs, expected = CASES[(rule.element, rule.keyword)]
    resource = m.patient(ds(**attrs))
    got = resource.get(rule.element.removesuffix("[]"))
    assert expected in got if rule.element.endswith("[]") else got == expected
    Patient.model_validate(resource)


@pytest.mark.parametrize("sex, gender", [("M", "male"), ("F", "female"), ("O", "other"), ("", "unknown"),
                                         ("X", "unknown")])
def test_gender(sex: str, gender: str) -> None:
    assert m.patient(ds(PatientSex=sex))["gender"] == gender


def test_identifiers_issuers_and_ins_types() -> None:
    qualifiers = Sequence([ds(UniversalEntityID="1.2.250.1.71.4.2.2", UniversalEntityIDType="ISO")])
    data = ds(PatientID="123", IssuerOfPatientID="CHU", IssuerOfPatientIDQualifiersSequence=qualifiers,
              OtherPatientIDsSequence=Sequence([ins("2580175123456", "1.2.250.1.213.1.4.11"), ds(PatientID="123",
                                                                                                 IssuerOfPatientID="CHU")]))
    found = [(i.get("system"), i["value"], i["type"]) for i in m.identifiers(data)]
    assert found == [("urn:drimhub:issuer:CHU", "123", PI), ("urn:oid:1.2.250.1.71.4.2.2", "123", PI),
                     ("urn:oid:1.2.250.1.213.1.4.11", "2580175123456", NIA)]  # duplicate dropped


def test_patient_id_without_issuer_has_no_system_and_no_id_means_no_identifier() -> None:
    assert m.identifiers(ds(PatientID="123")) == [{"type": PI, "value": "123"}]
    resource = m.patient(ds(PatientName="=山田^太郎"))
    assert "identifier" not in resource and "name" not in resource
    Patient.model_validate(resource)
