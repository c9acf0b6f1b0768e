"""Stored DICOM study ⇒ FHIR R4 ImagingStudy, as tables of rules (one row per DICOM attribute).

Each :class:`Rule` names the DICOM attribute (keyword and tag), the ImagingStudy element it
fills and its source; :func:`imaging_study` only applies the tables, and the tests go through
them row by row. Sources:

R4
    FHIR R4 (4.0.1) ImagingStudy resource, its DICOM mapping column and imagingstudy-notes
    (identifiers: Study Instance UID as ``urn:dicom:uid`` / ``urn:oid:``; accession as an ACSN
    identifier and in ``basedOn``).
MADO
    IHE RAD MADO (trial use): Study Instance UID identifier typed DCM#110180, a WADO-RS
    Endpoint at study and at series level, numberOfSeries and series.numberOfInstances.
PS3.16 L
    PS3.16 Annex L, Body Part Examined defined terms ⇒ anatomic region codes (SNOMED CT, CID 4031).

Not mapped (the notes advise WADO-RS ``/metadata`` for what FHIR does not carry): interpreter,
performers, location, specimens, Image Type as an instance title (it is not a title).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from drimhub.mappings.dicom import (DCM, SCT, V2_0203, attr_datetime, concept, display_name, integer, issuer_system,
                                    text)
from drimhub.mappings.endpoint import WADO_ENDPOINT_ID
from drimhub.mappings.identifiers import DICOM_UID_SYSTEM, patient_id_system, uid_urn

URI_SYSTEM = "urn:ietf:rfc:3986"
R4 = "R4 ImagingStudy mapping"
NOTES = "R4 imagingstudy-notes"
MADO = "IHE RAD MADO"
ANNEX_L = "PS3.16 Annex L / CID 4031"


@dataclass(frozen=True)
class InstanceFacts:
    """One stored instance: its index columns and, for a non-image, the attributes giving its title."""

    uid: str
    sop_class: str
    number: int | None = None
    #: Document Title / Concept Name Code Sequence / Content Label, when the instance has no pixels.
    attrs: Dataset | None = None


@dataclass(frozen=True)
class SeriesFacts:
    """One series: its stored attributes (General Series module) and its instances."""

    attrs: Dataset
    instances: Sequence[InstanceFacts]


@dataclass(frozen=True)
class StudyFacts:
    """One study: its stored attributes (patient and study modules), series, subject and endpoint."""

    attrs: Dataset
    series: Sequence[SeriesFacts]
    #: Id of the study's FHIR Patient (``Study.patient_ref``); None for a study stored before it existed.
    patient_ref: str | None = None
    endpoint_id: str = WADO_ENDPOINT_ID


@dataclass(frozen=True)
class Rule:
    """DICOM attribute ⇒ FHIR element.

    ``element`` ending in ``[]`` collects (each value appended, a list extends); otherwise the
    first rule giving a value fills the element.
    """

    keyword: str
    tag: str
    element: str
    source: str
    value: Callable[[Any], Any]


# --- values -----------------------------------------------------------------------------------

def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def study_uid_identifier(uid: str) -> dict[str, Any]:
    """The Study Instance UID identifier (R4 notes; MADO type DCM#110180, use official)."""
    return {"use": "official", "type": {"coding": [_coding(DCM, "110180", "Study Instance UID")]},
            "system": DICOM_UID_SYSTEM, "value": uid_urn(uid)}


def accession_identifier(ds: Dataset) -> dict[str, Any] | None:
    """Accession Number with its issuer (0008,0051) as an Identifier of type v2-0203 ACSN.

    IHE RAD MADO adds the type's second coding DCM 121022 "Accession Number" (fhir.md a.4).
    """
    value = text(ds, "AccessionNumber")
    if value is None:
        return None
    ident: dict[str, Any] = {"type": {"coding": [_coding(V2_0203, "ACSN", "Accession ID"),
                                                 _coding(DCM, "121022", "Accession Number")]}}
    system = issuer_system(ds.get("IssuerOfAccessionNumberSequence"))
    if system is not None:
        ident["system"] = system
    ident["value"] = value
    return ident


def _modality(code: str | None) -> dict[str, str] | None:
    return {"system": DCM, "code": code} if code else None


def _based_on(ds: Dataset) -> dict[str, Any] | None:
    ident = accession_identifier(ds)
    return {"type": "ServiceRequest", "identifier": ident} if ident else None


def _referrer(ds: Dataset) -> dict[str, str] | None:
    name = display_name(ds.get("ReferringPhysicianName"))
    return {"display": name} if name else None


def _subject(facts: StudyFacts) -> dict[str, Any]:
    return patient_subject(facts.attrs, facts.patient_ref)


def patient_subject(ds: Dataset, patient_ref: str | None) -> dict[str, Any]:
    """The subject of a study's resources (ImagingStudy, a manifest's DocumentReference):
    ``Patient/<patient_ref>``; for a study without one, a logical reference by Patient ID and issuer."""
    if patient_ref:
        return {"reference": f"Patient/{patient_ref}"}
    out: dict[str, Any] = {"type": "Patient"}
    patient_id = text(ds, "PatientID")
    if patient_id is not None:
        system = patient_id_system(text(ds, "IssuerOfPatientID"))
        out["identifier"] = {**({"system": system} if system else {}), "value": patient_id}
    out["display"] = display_name(ds.get("PatientName")) or patient_id or "unknown patient"
    return out


def _reasons(facts: StudyFacts) -> list[dict[str, Any]] | None:
    """Reason for the Requested Procedure (0040,1002) as text, coded (0040,100A) when given,
    from the series' Request Attributes Sequence (0040,0275); duplicates dropped."""
    reasons: list[dict[str, Any]] = []
    for series in facts.series:
        for request in series.attrs.get("RequestAttributesSequence") or []:
            coded = concept(request.get("ReasonForRequestedProcedureCodeSequence"))
            reason = text(request, "ReasonForTheRequestedProcedure")
            entry = {**(coded or {}), **({"text": reason} if reason else {})}
            if entry and entry not in reasons:
                reasons.append(entry)
    return reasons or None


def _modalities(facts: StudyFacts) -> list[dict[str, str]] | None:
    codes = dict.fromkeys(text(s.attrs, "Modality") for s in facts.series)
    return [_modality(c) for c in codes if c] or None  # type: ignore[misc]


def _endpoint(facts: StudyFacts | SeriesFacts, endpoint_id: str = WADO_ENDPOINT_ID) -> list[dict[str, str]]:
    return [{"reference": f"Endpoint/{endpoint_id}"}]


#: Body Part Examined (0018,0015) defined terms ⇒ SNOMED CT (PS3.16 Annex L; codes of CID 4031,
#: 2025 edition). A term not in this table is kept as the coding's display alone.
BODY_PARTS: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("816094009", "Chest"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "CLAVICLE": ("51299004", "Clavicle"),
    "COCCYX": ("64688005", "Coccyx"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("16953009", "Elbow joint"),
    "EXTREMITY": ("66019005", "Extremity"),
    "FOOT": ("56459004", "Foot"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and Neck"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("24136001", "Hip Joint"),
    "KNEE": ("72696002", "Knee"),
    "LEG": ("30021000", "Lower leg"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "NECK": ("45048000", "Neck"),
    "PELVIS": ("816092008", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"),
    "SACRUM": ("54735007", "Sacrum"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WHOLEBODY": ("38266002", "Entire body"),
}

#: Laterality (0020,0060) ⇒ SNOMED CT (R4 ImagingStudy.series.laterality, example binding).
LATERALITY: dict[str, tuple[str, str]] = {
    "R": ("24028007", "Right"),
    "L": ("7771000", "Left"),
    "B": ("51440002", "Right and left"),
}


def body_site(term: str | None) -> dict[str, str] | None:
    """A Body Part Examined defined term as a Coding (SNOMED CT when Annex L gives it)."""
    if not term:
        return None
    found = BODY_PARTS.get(term.upper())
    return _coding(SCT, *found) if found else {"display": term}


def laterality(value: str | None) -> dict[str, str] | None:
    found = LATERALITY.get((value or "").upper())
    return _coding(SCT, *found) if found else None


def sop_class(uid: str) -> dict[str, str]:
    """The SOP Class as a Coding (R4 examples: ``urn:ietf:rfc:3986`` / ``urn:oid:``; display from pydicom)."""
    out = {"system": URI_SYSTEM, "code": uid_urn(uid)}
    name = UID(uid).name
    if name and name != uid:
        out["display"] = name
    return out


def _concept_meaning(ds: Dataset | None) -> str | None:
    seq = ds.get("ConceptNameCodeSequence") if ds is not None else None
    return text(seq[0], "CodeMeaning") if seq else None


# --- the tables -------------------------------------------------------------------------------

STUDY_RULES: tuple[Rule, ...] = (
    Rule("StudyInstanceUID", "(0020,000D)", "identifier[]", f"{NOTES}; {MADO}",
         lambda f: study_uid_identifier(u) if (u := text(f.attrs, "StudyInstanceUID")) else None),
    Rule("AccessionNumber", "(0008,0050)", "identifier[]", f"{R4}; {NOTES} (issuer (0008,0051)); {MADO} (DCM 121022)",
         lambda f: accession_identifier(f.attrs)),
    Rule("", "", "status", f"{R4} (server state: stored instances are available)", lambda f: "available"),
    Rule("ModalitiesInStudy", "(0008,0061)", "modality", f"{R4} (union of the series' Modality)", _modalities),
    Rule("PatientID", "(0010,0020)", "subject", f"{R4} (Patient module, merged into a Patient)", _subject),
    Rule("StudyDate", "(0008,0020)", "started", f"{R4} (+ StudyTime (0008,0030), TimezoneOffsetFromUTC (0008,0201))",
         lambda f: attr_datetime(f.attrs, "StudyDate", "StudyTime")),
    Rule("AccessionNumber", "(0008,0050)", "basedOn[]", f"{NOTES}; {MADO}", lambda f: _based_on(f.attrs)),
    Rule("ReferringPhysicianName", "(0008,0090)", "referrer", R4, lambda f: _referrer(f.attrs)),
    Rule("", "", "endpoint", f"{MADO} (study-level WADO-RS)", lambda f: _endpoint(f, f.endpoint_id)),
    Rule("NumberOfStudyRelatedSeries", "(0020,1206)", "numberOfSeries", f"{R4}; {MADO} (computed)",
         lambda f: len(f.series)),
    Rule("NumberOfStudyRelatedInstances", "(0020,1208)", "numberOfInstances", f"{R4} (computed)",
         lambda f: sum(len(s.instances) for s in f.series)),
    Rule("ProcedureCodeSequence", "(0008,1032)", "procedureCode[]", R4,
         lambda f: concept(f.attrs.get("ProcedureCodeSequence"))),
    Rule("ReasonForTheRequestedProcedure", "(0040,1002)", "reasonCode[]", f"{R4} (in RequestAttributesSequence)",
         _reasons),
    Rule("StudyDescription", "(0008,1030)", "description", R4, lambda f: text(f.attrs, "StudyDescription")),
)

SERIES_RULES: tuple[Rule, ...] = (
    Rule("SeriesInstanceUID", "(0020,000E)", "uid", f"{R4} (id type: no urn:oid:)",
         lambda s: text(s.attrs, "SeriesInstanceUID")),
    Rule("SeriesNumber", "(0020,0011)", "number", R4, lambda s: integer(s.attrs, "SeriesNumber")),
    Rule("Modality", "(0008,0060)", "modality", f"{R4} (1..1: OT when absent)",
         lambda s: _modality(text(s.attrs, "Modality") or "OT")),
    Rule("SeriesDescription", "(0008,103E)", "description", R4, lambda s: text(s.attrs, "SeriesDescription")),
    Rule("NumberOfSeriesRelatedInstances", "(0020,1209)", "numberOfInstances", f"{R4}; {MADO} (computed)",
         lambda s: len(s.instances)),
    Rule("", "", "endpoint", f"{MADO} (series-level WADO-RS)", _endpoint),
    Rule("BodyPartExamined", "(0018,0015)", "bodySite", f"{R4}; {ANNEX_L}",
         lambda s: body_site(text(s.attrs, "BodyPartExamined"))),
    Rule("Laterality", "(0020,0060)", "laterality", R4, lambda s: laterality(text(s.attrs, "Laterality"))),
    Rule("SeriesDate", "(0008,0021)", "started", f"{R4} (+ SeriesTime (0008,0031))",
         lambda s: attr_datetime(s.attrs, "SeriesDate", "SeriesTime")),
)

INSTANCE_RULES: tuple[Rule, ...] = (
    Rule("SOPInstanceUID", "(0008,0018)", "uid", f"{R4} (id type: no urn:oid:)", lambda i: i.uid),
    Rule("SOPClassUID", "(0008,0016)", "sopClass", f"{R4} (urn:ietf:rfc:3986, urn:oid:)", lambda i: sop_class(i.sop_class)),
    Rule("InstanceNumber", "(0020,0013)", "number", R4, lambda i: i.number),
    Rule("DocumentTitle", "(0042,0010)", "title", R4,
         lambda i: text(i.attrs, "DocumentTitle") if i.attrs is not None else None),
    Rule("ConceptNameCodeSequence", "(0040,A043)", "title", f"{R4} (> Code Meaning (0008,0104))",
         lambda i: _concept_meaning(i.attrs)),
    Rule("ContentLabel", "(0070,0080)", "title", R4,
         lambda i: text(i.attrs, "ContentLabel") if i.attrs is not None else None),
)


def apply(rules: Sequence[Rule], facts: Any) -> dict[str, Any]:
    """The elements ``rules`` give for ``facts`` (absent values left out)."""
    out: dict[str, Any] = {}
    for rule in rules:
        value = rule.value(facts)
        if value is None or value == []:
            continue
        if rule.element.endswith("[]"):
            out.setdefault(rule.element[:-2], []).extend(value if isinstance(value, list) else [value])
        elif rule.element not in out:
            out[rule.element] = value
    return out


def series_element(series: SeriesFacts) -> dict[str, Any]:
    """One ``ImagingStudy.series`` element, instances in Instance Number order."""
    out = apply(SERIES_RULES, series)
    instances = sorted(series.instances, key=lambda i: (i.number is None, i.number or 0, i.uid))
    if instances:
        out["instance"] = [apply(INSTANCE_RULES, i) for i in instances]
    return out


def imaging_study(facts: StudyFacts) -> dict[str, Any]:
    """The ImagingStudy of one study (id = Study Instance UID; ``meta`` is the caller's)."""
    uid = text(facts.attrs, "StudyInstanceUID")
    study: dict[str, Any] = {"resourceType": "ImagingStudy", "id": uid, **apply(STUDY_RULES, facts)}
    ordered = sorted(facts.series, key=lambda s: (integer(s.attrs, "SeriesNumber") is None,
                                                 integer(s.attrs, "SeriesNumber") or 0,
                                                 text(s.attrs, "SeriesInstanceUID") or ""))
    if ordered:
        study["series"] = [series_element(s) for s in ordered]
    return study
