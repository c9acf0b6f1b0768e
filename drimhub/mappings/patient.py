"""DICOM Patient module (PS3.3 C.7.1.1) ⇒ FHIR R4 Patient, as a table of rules.

Sources:

R4
    FHIR R4 ImagingStudy.subject mapping (Patient module), Patient resource (gender
    administrative-gender, birthDate date, HumanName).
FR Core
    Interop'Santé FR Core Patient INS profile: an INS (``urn:oid:1.2.250.1.213.1.4.8``, NIA
    ``.9``; test OIDs ``.10`` / ``.11``) is ``use: official`` typed with the FR Core CodeSystem
    v2-0203 (INS-NIR "NIR définitif", INS-NIA "NIR temporaire"); a local IPP is typed v2-0203 PI.

Identifiers: the Patient ID with its issuer (Issuer of Patient ID (0010,0021), system by
:func:`drimhub.mappings.identifiers.patient_id_system`), the same ID under the Universal Entity ID of
the Issuer of Patient ID Qualifiers Sequence (0010,0024) when it names another system, then each
item of Other Patient IDs Sequence (0010,1002) the same way. The first identifier is the one the
node merges on (Patient ID + issuer).
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from drimhub.mappings.dicom import V2_0203, fhir_date, human_name, issuer_system, text
from drimhub.mappings.identifiers import INS_NIA, INS_NIA_TEST, INS_OIDS, patient_id_system
from drimhub.mappings.imagingstudy import Rule, apply

FR_CORE_V2_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
R4 = "R4 Patient / ImagingStudy.subject mapping"
FR_CORE = "FR Core Patient INS"

#: Patient Sex (0010,0040) ⇒ administrative-gender (R4 Patient.gender); anything else is unknown.
GENDERS: dict[str, str] = {"M": "male", "F": "female", "O": "other"}


def _type(system: str | None) -> dict[str, Any]:
    oid = system[len("urn:oid:"):] if system and system.startswith("urn:oid:") else None
    if oid in INS_OIDS:
        code, display = ("INS-NIA", "NIR temporaire") if oid in (INS_NIA, INS_NIA_TEST) else ("INS-NIR", "NIR définitif")
        return {"coding": [{"system": FR_CORE_V2_0203, "code": code, "display": display}]}
    return {"coding": [{"system": V2_0203, "code": "PI", "display": "Patient internal identifier"}]}


def identifier(value: str, system: str | None) -> dict[str, Any]:
    """One patient Identifier, typed INS (official) or PI."""
    ident: dict[str, Any] = {}
    kind = _type(system)
    if kind["coding"][0]["system"] == FR_CORE_V2_0203:
        ident["use"] = "official"
    ident["type"] = kind
    if system is not None:
        ident["system"] = system
    ident["value"] = value
    return ident


def _ids_of(item: Dataset) -> list[dict[str, Any]]:
    """The identifiers of one Patient ID with its issuers (the data set itself or an Other Patient IDs item)."""
    value = text(item, "PatientID")
    if value is None:
        return []
    local = patient_id_system(text(item, "IssuerOfPatientID"))
    universal = issuer_system(item.get("IssuerOfPatientIDQualifiersSequence"))
    systems = dict.fromkeys(s for s in (local, universal) if s is not None) or {None: None}
    return [identifier(value, system) for system in systems]


def identifiers(ds: Dataset) -> list[dict[str, Any]]:
    """Every identifier of the patient module, the Patient ID (+ issuer) first, duplicates dropped."""
    found: list[dict[str, Any]] = []
    for item in (ds, *(ds.get("OtherPatientIDsSequence") or [])):
        for ident in _ids_of(item):
            if all((i.get("system"), i["value"]) != (ident.get("system"), ident["value"]) for i in found):
                found.append(ident)
    return found


RULES: tuple[Rule, ...] = (
    Rule("PatientID", "(0010,0020)", "identifier[]", f"{R4}; {FR_CORE} (+ IssuerOfPatientID (0010,0021), (0010,0024))",
         lambda ds: _ids_of(ds)),
    Rule("OtherPatientIDsSequence", "(0010,1002)", "identifier[]", f"{R4}; {FR_CORE}",
         lambda ds: identifiers(ds)[len(_ids_of(ds)):]),
    Rule("PatientName", "(0010,0010)", "name[]", f"{R4} (alphabetic group)", lambda ds: human_name(ds.get("PatientName"))),
    Rule("PatientSex", "(0010,0040)", "gender", R4,
         lambda ds: GENDERS.get((text(ds, "PatientSex") or "").upper(), "unknown")),
    Rule("PatientBirthDate", "(0010,0030)", "birthDate", R4, lambda ds: fhir_date(text(ds, "PatientBirthDate"))),
)


def patient(ds: Dataset) -> dict[str, Any]:
    """A Patient (no id, no meta) from the patient module of ``ds``."""
    return {"resourceType": "Patient", **apply(RULES, ds)}
