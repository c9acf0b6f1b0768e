"""DICOM ⇒ ImagingStudy, row by row over the mapping tables of :mod:`drimhub.mappings.imagingstudy`.

Each case sets DICOM attributes in a generated data set and names the FHIR value its rule must
give; a rule without a case fails :func:`test_every_rule_has_a_case`. Sources are in the tables.
"""

from __future__ import annotations

from datetime import datetime
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from drimhub.mappings import imagingstudy as m
from drimhub.mappings.dicom import DCM, SCT, V2_0203, dataset, display_name, fhir_date, fhir_datetime, human_name

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
CT = "1.2.840.10008.5.1.4.1.1.2"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def item(**attrs: Any) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def facts(study: dict[str, Any] | None = None, series: dict[str, Any] | None = None,
          instance: dict[str, Any] | None = None, more_series: int = 0) -> m.StudyFacts:
    attrs = item(StudyInstanceUID=STUDY, **(study or {}))
    doc = item(**instance) if instance else None
    instances = [m.InstanceFacts(SOP, PDF if doc is not None else CT, 7, doc)]
    first = m.SeriesFacts(item(**{"SeriesInstanceUID": SERIES, "Modality": "CT", **(series or {})}), instances)
    others = [m.SeriesFacts(item(SeriesInstanceUID=f"{SERIES}.{n}", Modality="PT"),
                            [m.InstanceFacts(f"{SOP}.{n}", CT)]) for n in range(more_series)]
    return m.StudyFacts(attrs, [first, *others], patient_ref="p1")


def acsn(value: str, system: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"},
                                               {"system": DCM, "code": "121022", "display": "Accession Number"}]}}
    return {**out, **({"system": system} if system else {}), "value": value}


ISSUER = Sequence([item(UniversalEntityID="1.2.250.1.71.4.2.1", UniversalEntityIDType="ISO")])

# rule (element, DICOM keyword) ⇒ (facts: study, series, instance attributes, other series), expected value
STUDY_CASES: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {
    ("identifier[]", "StudyInstanceUID"): ({}, m.study_uid_identifier(STUDY)),
    ("identifier[]", "AccessionNumber"): ({"study": {"AccessionNumber": "A1", "IssuerOfAccessionNumberSequence": ISSUER}},
                                          acsn("A1", "urn:oid:1.2.250.1.71.4.2.1")),
    ("status", ""): ({}, "available"),
    ("modality", "ModalitiesInStudy"): ({"more_series": 2}, [{"system": DCM, "code": "CT"}, {"system": DCM, "code": "PT"}]),
    ("subject", "PatientID"): ({}, {"reference": "Patient/p1"}),
    ("started", "StudyDate"): ({"study": {"StudyDate": "20240315", "StudyTime": "101500.5", "TimezoneOffsetFromUTC": "+0100"}},
                               "2024-03-15T10:15:00.500+01:00"),
    ("basedOn[]", "AccessionNumber"): ({"study": {"AccessionNumber": "A1"}},
                                       {"type": "ServiceRequest", "identifier": acsn("A1")}),
    ("referrer", "ReferringPhysicianName"): ({"study": {"ReferringPhysicianName": "MARTIN^Hélène^^Dr"}},
                                             {"display": "Dr Hélène MARTIN"}),
    ("endpoint", ""): ({}, [{"reference": "Endpoint/dicomweb"}]),
    ("numberOfSeries", "NumberOfStudyRelatedSeries"): ({"more_series": 2}, 3),
    ("numberOfInstances", "NumberOfStudyRelatedInstances"): ({"more_series": 1}, 2),
    ("procedureCode[]", "ProcedureCodeSequence"): (
        {"study": {"ProcedureCodeSequence": Sequence([code("ZBQK001", "CCAM", "TDM du thorax")])}},
        {"coding": [{"code": "ZBQK001", "display": "TDM du thorax"}], "text": "TDM du thorax"}),
    ("reasonCode[]", "ReasonForTheRequestedProcedure"): (
        {"series": {"RequestAttributesSequence": Sequence([item(ReasonForTheRequestedProcedure="Toux chronique")])}},
        {"text": "Toux chronique"}),
    ("description", "StudyDescription"): ({"study": {"StudyDescription": "TDM THORAX"}}, "TDM THORAX"),
}

SERIES_CASES: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {
    ("uid", "SeriesInstanceUID"): ({}, SERIES),
    ("number", "SeriesNumber"): ({"series": {"SeriesNumber": 3}}, 3),
    ("modality", "Modality"): ({"series": {"Modality": "MR"}}, {"system": DCM, "code": "MR"}),
    ("description", "SeriesDescription"): ({"series": {"SeriesDescription": "Axial 1mm"}}, "Axial 1mm"),
    ("numberOfInstances", "NumberOfSeriesRelatedInstances"): ({}, 1),
    ("endpoint", ""): ({}, [{"reference": "Endpoint/dicomweb"}]),
    ("bodySite", "BodyPartExamined"): ({"series": {"BodyPartExamined": "CHEST"}},
                                       {"system": SCT, "code": "816094009", "display": "Chest"}),
    ("laterality", "Laterality"): ({"series": {"Laterality": "L"}}, {"system": SCT, "code": "7771000", "display": "Left"}),
    ("started", "SeriesDate"): ({"series": {"SeriesDate": "20240315", "SeriesTime": "1016", "TimezoneOffsetFromUTC": "-0500"}},
                                "2024-03-15T10:16:00-05:00"),
}

INSTANCE_CASES: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {
    ("uid", "SOPInstanceUID"): ({}, SOP),
    ("sopClass", "SOPClassUID"): ({}, {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT}", "display": "CT Image Storage"}),
    ("number", "InstanceNumber"): ({}, 7),
    ("title", "DocumentTitle"): ({"instance": {"DocumentTitle": "Compte rendu", "ContentLabel": "LABEL"}}, "Compte rendu"),
    ("title", "ConceptNameCodeSequence"): (
        {"instance": {"ConceptNameCodeSequence": Sequence([code("18748-4", "LN", "Diagnostic imaging study")])}},
        "Diagnostic imaging study"),
    ("title", "ContentLabel"): ({"instance": {"ContentLabel": "SEGMENTATION"}}, "SEGMENTATION"),
}


def _value(resource: dict[str, Any], element: str) -> Any:
    return resource.get(element.removesuffix("[]"))


def _check(resource: dict[str, Any], element: str, expected: Any) -> None:
    got = _value(resource, element)
    if element.endswith("[]"):
        assert expected in got
    else:
        assert got == expected


def _cases(rules: tuple[m.Rule, ...], cases: dict[tuple[str, str], Any]) -> list[Any]:
    return [pytest.param(rule, *cases[(rule.element, rule.keyword)], id=f"{rule.element}<-{rule.keyword or 'server'}")
            for rule in rules if (rule.element, rule.keyword) in cases]


@pytest.mark.parametrize("rules, cases", [(m.STUDY_RULES, STUDY_CASES), (m.SERIES_RULES, SERIES_CASES),
                                          (m.INSTANCE_RULES, INSTANCE_CASES)], ids=["study", "series", "instance"])
def test_every_rule_has_a_case_and_a_source(rules: tuple[m.Rule, ...], cases: dict[Any, Any]) -> None:
    assert {(r.element, r.keyword) for r in rules} == set(cases)
    assert all(r.source and (r.tag or not r.keyword) for r in rules)


@pytest.mark.parametrize("rule, setup, expected", _cases(m.STUDY_RULES, STUDY_CASES))
def test_study_rule(rule: m.Rule, setup: dict[str, Any], expected: Any) -> None:
    resource = m.imaging_study(facts(**setup))
    _check(resource, rule.element, expected)
    ImagingStudy.model_validate(resource)


@pytest.mark.parametrize("rule, setup, expected", _cases(m.SERIES_RULES, SERIES_CASES))
def test_series_rule(rule: m.Rule, setup: dict[str, Any], expected: Any) -> None:
    resource = m.imaging_study(facts(**setup))
    _check(resource["series"][0], rule.element, expected)
    ImagingStudy.model_validate(resource)


@pytest.mark.parametrize("rule, setup, expected", _cases(m.INSTANCE_RULES, INSTANCE_CASES))
def test_instance_rule(rule: m.Rule, setup: dict[str, Any], expected: Any) -> None:
    resource = m.imaging_study(facts(**setup))
    _check(resource["series"][0]["instance"][0], rule.element, expected)
    ImagingStudy.model_validate(resource)


def _local(*args: int) -> str:
    return datetime(*args).astimezone().isoformat(timespec="seconds")  # type: ignore[misc]


# DA, TM, Timezone Offset From UTC ⇒ FHIR dateTime (PS3.5 §6.2; FHIR R4 datatypes dateTime)
DATETIME_CASES = [
    pytest.param("20240315", None, None, "2024-03-15", id="date-only"),
    pytest.param("202403", "1015", None, "2024-03", id="partial-date-month"),
    pytest.param("2024", None, None, "2024", id="partial-date-year"),
    pytest.param("20240230", "1015", "+0100", None, id="invalid-date-dropped"),
    pytest.param("2024-03-15", None, None, None, id="not-a-DA-dropped"),
    pytest.param("", "1015", None, None, id="empty-date"),
    pytest.param("20240315", "2561", "+0100", "2024-03-15", id="invalid-time-date-kept"),
    pytest.param("20240315", "10", "+0000", "2024-03-15T10:00:00+00:00", id="hour-only"),
    pytest.param("20240315", "101500.123456", "+0530", "2024-03-15T10:15:00.123+05:30", id="fraction"),
    pytest.param("20240315", "1015", None, _local(2024, 3, 15, 10, 15), id="no-offset-local-zone"),
    pytest.param("20240315", "1015", "+9999", _local(2024, 3, 15, 10, 15), id="invalid-offset-local-zone"),
]


@pytest.mark.parametrize("da, tm, offset, expected", DATETIME_CASES)
def test_started_from_date_time_and_offset(da: str, tm: str | None, offset: str | None, expected: str | None) -> None:
    assert fhir_datetime(da, tm, offset) == expected


@pytest.fixture
def server_reading() -> Iterator[None]:
    """Read stored DICOM JSON as the server does (create_app: pydicom reading validation IGNORE)."""
    before = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    yield
    pydicom.config.settings.reading_validation_mode = before


def test_invalid_study_date_is_dropped_and_the_study_still_validates(server_reading: None) -> None:
    stored = dataset({"0020000D": {"vr": "UI", "Value": [STUDY]}, "00080020": {"vr": "DA", "Value": ["2024XX01"]},
                      "00080030": {"vr": "TM", "Value": ["99"]}, "00100040": {"vr": "CS", "Value": ["m"]}})
    resource = m.imaging_study(m.StudyFacts(stored, [], "p1"))
    assert "started" not in resource
    ImagingStudy.model_validate(resource)


# PN (PS3.5 §6.2.1) ⇒ HumanName
NAME_CASES = [
    pytest.param("DUPONT", {"family": "DUPONT"}, "DUPONT", id="family-only"),
    pytest.param("DUPONT^Jean^Paul Marie^Dr^Jr", {"family": "DUPONT", "given": ["Jean", "Paul", "Marie"],
                                                  "prefix": ["Dr"], "suffix": ["Jr"]}, "Dr Jean Paul Marie DUPONT Jr",
                 id="all-components"),
    pytest.param("MÜLLER^Jérôme", {"family": "MÜLLER", "given": ["Jérôme"]}, "Jérôme MÜLLER", id="non-ascii"),
    pytest.param("^Anne", {"given": ["Anne"]}, "Anne", id="given-only"),
    pytest.param("Yamada^Tarou=山田^太郎=やまだ^たろう", {"family": "Yamada", "given": ["Tarou"]}, "Tarou Yamada",
                 id="ideographic-phonetic-ignored"),
    pytest.param("=山田^太郎", None, None, id="no-alphabetic-group"),
    pytest.param("", None, None, id="empty"),
]


@pytest.mark.parametrize("pn, name, display", NAME_CASES)
def test_person_name(pn: str, name: dict[str, Any] | None, display: str | None) -> None:
    assert human_name(pn) == name
    assert display_name(pn) == display


def test_body_part_not_in_annex_l_keeps_its_term_and_unknown_laterality_is_dropped() -> None:
    resource = m.imaging_study(facts(series={"BodyPartExamined": "BRAINSTEM", "Laterality": "X"}))
    assert resource["series"][0]["bodySite"] == {"display": "BRAINSTEM"}
    assert "laterality" not in resource["series"][0]
    ImagingStudy.model_validate(resource)


def test_study_without_patient_ref_has_a_logical_subject() -> None:
    study = m.StudyFacts(item(StudyInstanceUID=STUDY, PatientID="PAT1", IssuerOfPatientID="CHU",
                              PatientName="DOE^John"), [], None)
    resource = m.imaging_study(study)
    assert resource["subject"] == {"type": "Patient", "identifier": {"system": "urn:drimhub:issuer:CHU", "value": "PAT1"},
                                   "display": "John DOE"}
    ImagingStudy.model_validate(resource)


def test_birth_date_partial() -> None:
    assert fhir_date("195801") == "1958-01" and fhir_date("00000101") is None
