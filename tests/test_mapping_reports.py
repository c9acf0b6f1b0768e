"""DICOM PDF / SR ⇒ DiagnosticReport, row by row over :data:`drimhub.mappings.reports.RULES`."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import dicomfactory as f
from drimhub.mappings import reports as m
from drimhub.mappings.dicom import DCM, LOINC, V2_0203

STUDY, OTHER = "1.2.3.4", "1.2.3.9"


def item(**attrs: Any) -> Dataset:
    out = Dataset()
    for key, value in attrs.items():
        setattr(out, key, value)
    return out


def sr(**attrs: Any) -> Dataset:
    return dcmread(io.BytesIO(f.sr(STUDY, **attrs).data))


def build(ds: Dataset) -> dict[str, Any]:
    draft = m.report(ds)
    assert draft is not None
    resource = {**draft.resource, "subject": {"reference": "Patient/p1"}}
    DiagnosticReport.model_validate(resource)
    return resource


ACSN = {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"},
                   {"system": DCM, "code": "121022", "display": "Accession Number"}]}
OBSERVER = item(VerifyingObserverName="KERBRAT^Anne^^Dr", VerifyingOrganization="CH",
                VerificationDateTime="20240316110000+0100",
                VerifyingObserverIdentificationCodeSequence=Sequence([item(CodeValue="10001",
                                                                           CodingSchemeDesignator="99RPPS",
                                                                           CodeMeaning="KERBRAT Anne")]))

# rule (element, keyword) ⇒ (SR attributes, expected value (in the list for [] elements))
CASES: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {
    ("identifier[]", "SOPInstanceUID"): ({"sop": "1.2.3.4.5.6"}, {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5.6"}),
    ("status", "VerificationFlag"): ({"CompletionFlag": "COMPLETE", "VerificationFlag": "VERIFIED"}, "final"),
    ("category[]", ""): ({}, {"coding": [{"system": m.V2_0074, "code": "RAD", "display": "Radiology"}]}),
    ("code", "ConceptNameCodeSequence"): (
        {"ConceptNameCodeSequence": Sequence([item(CodeValue="36643-5", CodingSchemeDesignator="LN",
                                                   CodeMeaning="Chest X-ray 2 views")])},
        {"coding": [{"system": LOINC, "code": "36643-5", "display": "Chest X-ray 2 views"}], "text": "Chest X-ray 2 views"}),
    ("basedOn[]", "ReferencedRequestSequence"): (
        {"ReferencedRequestSequence": Sequence([item(AccessionNumber="ACC9", StudyInstanceUID=STUDY)])},
        {"type": "ServiceRequest", "identifier": {"type": ACSN, "value": "ACC9"}}),
    ("effectiveDateTime", "StudyDate"): ({"study_date": "20240315", "TimezoneOffsetFromUTC": "+0100"},
                                         "2024-03-15T10:15:00+01:00"),
    ("issued", "ContentDate"): ({"ContentDate": "20240316", "ContentTime": "120000", "TimezoneOffsetFromUTC": "+0100"},
                                "2024-03-16T12:00:00+01:00"),
    ("resultsInterpreter[]", "VerifyingObserverSequence"): (
        {"VerifyingObserverSequence": Sequence([OBSERVER])},
        {"type": "Practitioner", "identifier": {"value": "10001"}, "display": "Dr Anne KERBRAT"}),
    ("imagingStudy[]", "CurrentRequestedProcedureEvidenceSequence"): (
        {"CurrentRequestedProcedureEvidenceSequence": Sequence([item(StudyInstanceUID=OTHER)])},
        {"reference": f"ImagingStudy/{OTHER}"}),
}


def test_every_rule_has_a_case_and_a_source() -> None:
    assert {(r.element, r.keyword) for r in m.RULES} == set(CASES)
    assert all(r.source and (r.tag or not r.keyword) for r in m.RULES)


@pytest.mark.parametrize("rule", m.RULES, ids=lambda r: f"{r.element}<-{r.keyword or 'server'}")
def test_rule(rule: Any) -> None:
    attrs, expected = CASES[(rule.element, rule.keyword)]
    got = build(sr(**attrs)).get(rule.element.removesuffix("[]"))
    assert expected in got if rule.element.endswith("[]") else got == expected


# Completion Flag, Verification Flag, Preliminary Flag ⇒ status (R4 diagnostic-report-status)
STATUS_CASES = [
    pytest.param("COMPLETE", "VERIFIED", None, "final", id="complete-verified-final"),
    pytest.param("PARTIAL", "VERIFIED", None, "preliminary", id="partial-verified-preliminary"),
    pytest.param("COMPLETE", "VERIFIED", "PRELIMINARY", "preliminary", id="preliminary-flag-preliminary"),
    pytest.param("COMPLETE", "VERIFIED", "FINAL", "final", id="final-flag-final"),
    pytest.param("COMPLETE", "UNVERIFIED", None, "partial", id="complete-unverified-partial"),
    pytest.param("PARTIAL", "UNVERIFIED", None, "partial", id="partial-unverified-partial"),
    pytest.param(None, None, None, "final", id="no-flags-document-final"),
]


@pytest.mark.parametrize("completion, verification, preliminary, status", STATUS_CASES)
def test_status(completion: str | None, verification: str | None, preliminary: str | None, status: str) -> None:
    data = item(**{k: v for k, v in (("CompletionFlag", completion), ("VerificationFlag", verification),
                                      ("PreliminaryFlag", preliminary)) if v})
    assert m.status(data) == status


def test_non_loinc_code_gets_the_loinc_fallback_and_no_code_gets_it_alone() -> None:
    coded = build(sr(ConceptNameCodeSequence=Sequence([item(CodeValue="121108", CodingSchemeDesignator="DCM",
                                                             CodeMeaning="Report")])))["code"]
    assert [c["code"] for c in coded["coding"]] == ["121108", "18748-4"]
    assert build(sr())["code"]["coding"] == [m.IMAGING_REPORT]


def test_issued_falls_back_to_the_verification_date_time() -> None:
    assert build(sr(VerifyingObserverSequence=Sequence([OBSERVER])))["issued"] == "2024-03-16T11:00:00+01:00"


def test_evidence_and_own_study_each_once() -> None:
    evidence = Sequence([item(StudyInstanceUID=OTHER), item(StudyInstanceUID=STUDY)])
    assert build(sr(CurrentRequestedProcedureEvidenceSequence=evidence))["imagingStudy"] == [
        {"reference": f"ImagingStudy/{OTHER}"}, {"reference": f"ImagingStudy/{STUDY}"}]


def test_sr_text_tree_conclusion_and_html() -> None:
    impression = item(RelationshipType="CONTAINS", ValueType="TEXT", TextValue="Nodule <8 mm> & rien d'autre",
                      ConceptNameCodeSequence=Sequence([item(CodeValue="121073", CodingSchemeDesignator="DCM",
                                                             CodeMeaning="Impression")]))
    history = item(RelationshipType="CONTAINS", ValueType="TEXT", TextValue="Toux",
                   ConceptNameCodeSequence=Sequence([item(CodeValue="121060", CodingSchemeDesignator="DCM",
                                                          CodeMeaning="History")]))
    data = sr()
    data.ContentSequence = Sequence([history, impression])
    draft = m.report(data)
    assert draft is not None and draft.resource["conclusion"] == "Nodule <8 mm> & rien d'autre"
    [form] = draft.forms
    page = form.data.decode()
    assert form.content_type == "text/html" and "Nodule &lt;8 mm&gt; &amp;" in page and "<b>History</b>: Toux" in page


def test_sr_without_findings_concludes_with_all_its_text() -> None:
    assert build(sr(text="Texte libre"))["conclusion"] == "Texte libre"  # under a Finding item
    data = sr()
    data.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue = "121060"
    assert build(data)["conclusion"] == "Pas d'anomalie décelée."


def test_pdf_form_without_padding_and_other_classes_are_not_reports() -> None:
    doc = f.pdf(DocumentTitle="Compte rendu")
    draft = m.report(dcmread(io.BytesIO(doc.data)))
    assert draft is not None
    [form] = draft.forms
    assert form.content_type == "application/pdf" and form.title == "Compte rendu"
    assert form.data.startswith(b"%PDF-") and form.data.endswith(b"%%EOF\n")
    assert "conclusion" not in draft.resource
    assert m.report(dcmread(io.BytesIO(f.ct().data))) is None
    attachment = m.attachment(form, "Binary/x")
    assert attachment["size"] == len(form.data) and attachment["url"] == "Binary/x" and len(attachment["hash"]) == 28
