"""DICOM reports (Encapsulated PDF, Basic / Enhanced / Comprehensive SR) ⇒ FHIR R4 DiagnosticReport.

Sources:

R4
    FHIR R4 DiagnosticReport (status diagnostic-report-status, category v2-0074 RAD, code LOINC
    preferred, presentedForm Attachment) and the project research notes on FHIR
    (``shared/reference/fhir.md`` a.7).
PS3.3
    SR Document General module C.17.2 (Completion Flag (0040,A491), Verification Flag (0040,A493),
    Verifying Observer Sequence (0040,A073), Preliminary Flag (0040,A496), Referenced Request
    Sequence (0040,A370), Current Requested Procedure Evidence Sequence (0040,A375)); SR Document
    Content C.17.3; Encapsulated Document module C.24.2.

Status (R4 diagnostic-report-status: ``partial`` = "data in the report may be incomplete or
unverified"; ``preliminary`` = "verified early results are available, but not all results are
final"; ``final`` = "complete and verified"):

====================  ======================  ===================
Completion Flag       Verification Flag       status
====================  ======================  ===================
COMPLETE              VERIFIED                final
PARTIAL (or a         VERIFIED                preliminary
Preliminary Flag
PRELIMINARY)
any                   UNVERIFIED              partial
none (PDF)            none                    final
====================  ======================  ===================

The text of an SR goes to ``conclusion`` (its findings / impressions / conclusions, flattened and
capped) and to an HTML rendering of the content tree; a PDF's bytes to a ``application/pdf``
form. Forms are returned as bytes: the writer stores them as Binary resources and fills
``url``, ``size`` and ``hash`` (:func:`attachment`).
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from drimhub.mappings.dicom import LOINC, attr_datetime, coding, concept, display_name, dt_value, fhir_instant, text
from drimhub.mappings.identifiers import DICOM_UID_SYSTEM, uid_urn
from drimhub.mappings.imagingstudy import Rule, accession_identifier, apply

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
#: SR SOP Classes mapped (PS3.4 Table B.5-1): Basic Text, Enhanced, Comprehensive, Comprehensive 3D.
SR_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
                        "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"})
REPORT_CLASSES = SR_CLASSES | {ENCAPSULATED_PDF}

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
#: LOINC "Diagnostic imaging study", the code of a report whose own code is not LOINC.
IMAGING_REPORT = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
#: Concept names (DCM) of the report sections and items whose text makes the conclusion (TID 2000).
CONCLUSION_CONCEPTS = frozenset({"121070", "121071", "121072", "121073", "121076", "121077"})
CONCLUSION_MAX = 4000
HTML_MAX_ITEMS = 2000
R4 = "R4 DiagnosticReport; fhir.md a.7"
SR = "PS3.3 C.17.2 SR Document General"
ENC = "PS3.3 C.24.2 Encapsulated Document"


@dataclass(frozen=True)
class Form:
    """A presentedForm to store as a Binary: its bytes, media type and title."""

    content_type: str
    data: bytes
    title: str | None = None


@dataclass
class Draft:
    """A DiagnosticReport without subject and forms' locations, and the forms to store."""

    resource: dict[str, Any]
    forms: list[Form] = field(default_factory=list)


def attachment(form: Form, url: str) -> dict[str, Any]:
    """The presentedForm Attachment of ``form`` stored at ``url`` (R4 Attachment: size, SHA-1 base64 hash)."""
    out: dict[str, Any] = {"contentType": form.content_type, "url": url, "size": len(form.data),
                           "hash": base64.b64encode(hashlib.sha1(form.data).digest()).decode()}
    if form.title:
        out["title"] = form.title
    return out


def status(ds: Dataset) -> str:
    """The report status of the table above."""
    completion = (text(ds, "CompletionFlag") or "").upper()
    verification = (text(ds, "VerificationFlag") or "").upper()
    preliminary = (text(ds, "PreliminaryFlag") or "").upper() == "PRELIMINARY"
    if not completion and not verification:
        return "preliminary" if preliminary else "final"
    if verification != "VERIFIED":
        return "partial"
    return "final" if completion == "COMPLETE" and not preliminary else "preliminary"


def report_code(ds: Dataset) -> dict[str, Any]:
    """Concept Name Code Sequence (0040,A043): LOINC as is, another code with LOINC 18748-4 added."""
    code = concept(ds.get("ConceptNameCodeSequence"))
    if code is None:
        return {"coding": [IMAGING_REPORT], "text": IMAGING_REPORT["display"]}
    if not any(c.get("system") == LOINC for c in code["coding"]):
        code["coding"].append(IMAGING_REPORT)
    return code


def _identifier(ds: Dataset) -> dict[str, Any] | None:
    uid = text(ds, "SOPInstanceUID")
    return {"system": DICOM_UID_SYSTEM, "value": uid_urn(uid)} if uid else None


def _studies(ds: Dataset) -> list[dict[str, str]]:
    """The evidence studies (0040,A375) then the document's own study, each once."""
    uids = [text(item, "StudyInstanceUID") for item in ds.get("CurrentRequestedProcedureEvidenceSequence") or []]
    uids.append(text(ds, "StudyInstanceUID"))
    return [{"reference": f"ImagingStudy/{uid}"} for uid in dict.fromkeys(u for u in uids if u)]


def _orders(ds: Dataset) -> list[dict[str, Any]]:
    """Accession numbers of the Referenced Request Sequence (0040,A370), else of the data set."""
    found: list[dict[str, Any]] = []
    for item in [*(ds.get("ReferencedRequestSequence") or []), ds]:
        ident = accession_identifier(item)
        if ident is not None and all(o["identifier"] != ident for o in found):
            found.append({"type": "ServiceRequest", "identifier": ident})
    return found


def _interpreters(ds: Dataset) -> list[dict[str, Any]]:
    """Verifying observers: display name and the identification code as identifier."""
    found = []
    for item in ds.get("VerifyingObserverSequence") or []:
        ref: dict[str, Any] = {"type": "Practitioner"}
        ids = [c for c in (coding(i) for i in item.get("VerifyingObserverIdentificationCodeSequence") or []) if c]
        if ids:
            ref["identifier"] = {**({"system": ids[0]["system"]} if "system" in ids[0] else {}),
                                 "value": ids[0]["code"]}
        name = display_name(item.get("VerifyingObserverName"))
        if name:
            ref["display"] = name
        if len(ref) > 1:
            found.append(ref)
    return found


def _issued(ds: Dataset) -> str | None:
    offset = text(ds, "TimezoneOffsetFromUTC")
    issued = fhir_instant(text(ds, "ContentDate"), text(ds, "ContentTime"), offset)
    if issued is None:
        for item in ds.get("VerifyingObserverSequence") or []:
            value = dt_value(text(item, "VerificationDateTime"))
            if value and "T" in value:
                return value
    return issued


# --- SR content tree ---------------------------------------------------------------------------

def _item_value(item: Dataset) -> str | None:
    kind = text(item, "ValueType")
    if kind == "TEXT":
        return text(item, "TextValue")
    if kind == "CODE":
        seq = item.get("ConceptCodeSequence")
        return text(seq[0], "CodeMeaning") if seq else None
    if kind == "NUM":
        seq = item.get("MeasuredValueSequence")
        if seq:
            units = seq[0].get("MeasurementUnitsCodeSequence")
            unit = text(units[0], "CodeValue") if units else None
            return " ".join(v for v in (text(seq[0], "NumericValue"), unit) if v)
    if kind in ("DATE", "TIME", "DATETIME", "PNAME", "UIDREF"):
        keyword = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime", "PNAME": "PersonName",
                   "UIDREF": "UID"}[kind]
        return text(item, keyword)
    return None


def _concept_code(item: Dataset) -> tuple[str | None, str | None]:
    seq = item.get("ConceptNameCodeSequence")
    return (text(seq[0], "CodeValue"), text(seq[0], "CodeMeaning")) if seq else (None, None)


def _walk(item: Dataset, depth: int, inside: bool, texts: list[str], lines: list[str]) -> None:
    code, meaning = _concept_code(item)
    inside = inside or code in CONCLUSION_CONCEPTS
    value = _item_value(item)
    if value and text(item, "ValueType") in ("TEXT", "CODE") and inside:
        texts.append(value)
    if len(lines) < HTML_MAX_ITEMS and (meaning or value):
        label = f"<b>{html.escape(meaning)}</b>" if meaning else ""
        lines.append("<li>" + label + (": " if label and value else "") + html.escape(value or "") + "</li>")
    children = item.get("ContentSequence") or []
    if children and depth < 50:
        lines.append("<ul>")
        for child in children:
            _walk(child, depth + 1, inside, texts, lines)
        lines.append("</ul>")


def sr_text(ds: Dataset) -> tuple[str | None, str]:
    """The conclusion text (findings, impressions, conclusions; every text item when none) and the
    HTML rendering of the content tree."""
    texts: list[str] = []
    lines: list[str] = []
    _walk(ds, 0, False, texts, lines)
    if not texts:
        everything: list[str] = []
        _walk(ds, 0, True, everything, [])
        texts = everything
    conclusion = "\n".join(texts)[:CONCLUSION_MAX] or None
    title = html.escape(_concept_code(ds)[1] or "Report")
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>'
            f"<body><ul>{''.join(lines)}</ul></body></html>")
    return conclusion, page


def _document(ds: Dataset) -> bytes:
    """Encapsulated Document (0042,0011) without its padding (Encapsulated Document Length (0042,0015)
    when given, else one trailing NUL of an odd-length PDF)."""
    data = bytes(ds.get("EncapsulatedDocument") or b"")
    length = ds.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 < length <= len(data):
        return data[:length]
    return data[:-1] if data.endswith(b"%%EOF\n\x00") or data.endswith(b"%%EOF\x00") else data


RULES: tuple[Rule, ...] = (
    Rule("SOPInstanceUID", "(0008,0018)", "identifier[]", f"{R4} (urn:dicom:uid)", _identifier),
    Rule("VerificationFlag", "(0040,A493)", "status", f"{SR} (+ CompletionFlag (0040,A491), PreliminaryFlag (0040,A496))",
         status),
    Rule("", "", "category[]", f"{R4} (v2-0074 RAD)",
         lambda ds: {"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}),
    Rule("ConceptNameCodeSequence", "(0040,A043)", "code", f"{R4} (LOINC, else + 18748-4)", report_code),
    Rule("ReferencedRequestSequence", "(0040,A370)", "basedOn[]", f"{SR} (> AccessionNumber; else (0008,0050))", _orders),
    Rule("StudyDate", "(0008,0020)", "effectiveDateTime", f"{R4} (+ StudyTime (0008,0030))",
         lambda ds: attr_datetime(ds, "StudyDate", "StudyTime")),
    Rule("ContentDate", "(0008,0023)", "issued", f"{R4} (+ ContentTime (0008,0033), else VerificationDateTime)",
         _issued),
    Rule("VerifyingObserverSequence", "(0040,A073)", "resultsInterpreter[]", SR, _interpreters),
    Rule("CurrentRequestedProcedureEvidenceSequence", "(0040,A375)", "imagingStudy[]",
         f"{SR} (+ the document's StudyInstanceUID)", _studies),
)


def report(ds: Dataset) -> Draft | None:
    """The DiagnosticReport of a report data set (None for another SOP Class); no subject, no id."""
    sop_class = text(ds, "SOPClassUID")
    if sop_class not in REPORT_CLASSES:
        return None
    resource: dict[str, Any] = {"resourceType": "DiagnosticReport", **apply(RULES, ds)}
    if sop_class == ENCAPSULATED_PDF:
        mime = text(ds, "MIMETypeOfEncapsulatedDocument") or "application/pdf"
        return Draft(resource, [Form(mime, _document(ds), text(ds, "DocumentTitle"))])
    conclusion, page = sr_text(ds)
    if conclusion:
        resource["conclusion"] = conclusion
    title = _concept_code(ds)[1]
    return Draft(resource, [Form("text/html", page.encode(), title)])
