"""DICOM values as FHIR datatypes: the conversions every DICOM ⇒ FHIR mapping shares.

Pure functions over pydicom data sets (a stored DICOM JSON object becomes one with
:func:`dataset`). A value that does not parse gives None: a mapping drops the element, it never
fails because of one bad attribute.

Date and time (PS3.5 §6.2 DA, TM, DT; FHIR R4 datatypes.html#dateTime and #instant): a FHIR
dateTime with a time SHALL carry a time zone. DICOM gives it in Timezone Offset From UTC
(0008,0201); without it the time is the local time of the equipment (PS3.3 C.12.1.1.8), read
here in the node's local time zone (the process's ``TZ``), daylight saving included.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from drimhub.mappings.identifiers import patient_id_system

#: Code systems of PS3.16 coding scheme designators (PS3.16 Table 8-1; FHIR R4 terminologies-systems.html).
CODING_SCHEMES: dict[str, str] = {
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "SCT": "http://snomed.info/sct",
    "SRT": "http://snomed.info/srt",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "RADLEX": "http://radlex.org",
    "FMA": "http://purl.org/sig/ont/fma",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "CIM10": "http://hl7.org/fhir/sid/icd-10",
}
DCM = CODING_SCHEMES["DCM"]
SCT = CODING_SCHEMES["SCT"]
LOINC = CODING_SCHEMES["LN"]
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

_DA = re.compile(r"^(\d{4})(\d{2})?(\d{2})?$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def dataset(dicom_json: dict[str, Any]) -> Dataset:
    """A data set from a DICOM JSON object (PS3.18 F.2); BulkDataURI values are left out."""
    return Dataset.from_json({tag: element for tag, element in dicom_json.items() if "BulkDataURI" not in element})


def text(ds: Dataset, keyword: str) -> str | None:
    """The first value of ``keyword`` as stripped text, None when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    result = str(value).strip() if value is not None else ""
    return result or None


def integer(ds: Dataset, keyword: str) -> int | None:
    """An IS/US value as a non-negative int (FHIR unsignedInt), None otherwise."""
    value = text(ds, keyword)
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and 0 <= number <= 2**31 - 1 else None


def fhir_date(da: str | None) -> str | None:
    """``YYYYMMDD`` (or the partial ``YYYY`` / ``YYYYMM``) as a FHIR date; None when invalid."""
    match = _DA.match((da or "").strip())
    if not match:
        return None
    year, month, day = match.group(1), match.group(2), match.group(3)
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    if year == "0000":
        return None
    return "-".join(part for part in (year, month, day) if part)


def _offset(value: str | None) -> timezone | None:
    match = _OFFSET.match((value or "").strip())
    if not match:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14) or int(minutes) >= 60:
        return None
    return timezone(-delta if sign == "-" else delta)


def fhir_datetime(da: str | None, tm: str | None, offset: str | None) -> str | None:
    """DA + TM (+ Timezone Offset From UTC ``+HHMM``) as a FHIR dateTime.

    A partial date gives a partial dateTime (time dropped); a missing or invalid time gives the
    date alone; an invalid date gives None. The time is padded to seconds (FHIR requires them).
    """
    day = fhir_date(da)
    if day is None or len(day) < 10:
        return day
    match = _TM.match((tm or "").strip())
    if not match:
        return day
    hour, minute, second, fraction = match.groups()
    try:
        moment = datetime(int(day[:4]), int(day[5:7]), int(day[8:10]), int(hour), int(minute or 0),
                          int(second or 0), int((fraction or "0").ljust(6, "0")))
    except ValueError:
        return day
    zone = _offset(offset)
    moment = moment.replace(tzinfo=zone) if zone is not None else from_recorded(moment)
    return moment.isoformat(timespec="milliseconds" if fraction else "seconds")


def from_recorded(moment: datetime) -> datetime:
    """A DICOM date and time recorded without Timezone Offset From UTC, as an aware instant.

    PS3.3 C.12.1.1.8: such a time is the local time of the equipment, read here in the node's
    local time zone (the process's ``TZ``, daylight saving included). :func:`as_recorded` is its
    inverse: ImagingStudy ``started`` renders with one and searches with the other.
    """
    return moment.astimezone()


def as_recorded(moment: datetime) -> datetime:
    """An aware instant as the naive local date and time DICOM records without an offset.

    The inverse of :func:`from_recorded` (the node's local time zone); what a search bound is
    compared with when only StudyDate and StudyTime are at hand.
    """
    return moment.astimezone().replace(tzinfo=None)


def attr_datetime(ds: Dataset, date_keyword: str, time_keyword: str) -> str | None:
    """A date and a time attribute of ``ds`` (with its Timezone Offset From UTC) as a FHIR dateTime."""
    return fhir_datetime(text(ds, date_keyword), text(ds, time_keyword), text(ds, "TimezoneOffsetFromUTC"))


def fhir_instant(da: str | None, tm: str | None, offset: str | None) -> str | None:
    """Like :func:`fhir_datetime`, but only a full date and time (FHIR instant), else None."""
    value = fhir_datetime(da, tm, offset)
    return value if value is not None and "T" in value else None


def dt_value(dt: str | None) -> str | None:
    """A DT value (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``, partial allowed) as a FHIR dateTime."""
    value = (dt or "").strip()
    zone = None
    if len(value) > 5 and value[-5] in "+-":
        value, zone = value[:-5], value[-5:]
    return fhir_datetime(value[:8], value[8:] or None, zone)


def human_name(pn: Any) -> dict[str, Any] | None:
    """A PN value's alphabetic group as a FHIR HumanName (PS3.5 §6.2.1: family^given^middle^prefix^suffix).

    Middle names are further ``given`` names. The ideographic and phonetic groups are not
    mapped (HumanName has no place for them but another HumanName, which would read as an alias).
    """
    if pn is None or str(pn).strip() == "":
        return None
    name = pn if isinstance(pn, PersonName) else PersonName(str(pn))
    parts = str(name).split("=")[0].split("^")
    family, given, middle, prefix, suffix = (parts + [""] * 5)[:5]
    out: dict[str, Any] = {}
    if family.strip():
        out["family"] = family.strip()
    given_names = [g for g in (given.strip(), *middle.split()) if g]
    if given_names:
        out["given"] = given_names
    if prefix.strip():
        out["prefix"] = [prefix.strip()]
    if suffix.strip():
        out["suffix"] = [suffix.strip()]
    return out or None


def display_name(pn: Any) -> str | None:
    """A PN as a person reads it: ``prefix given middle family suffix`` (``Dr Hélène MARTIN``)."""
    name = human_name(pn)
    if name is None:
        return None
    words = [*name.get("prefix", []), *name.get("given", []), name.get("family", ""), *name.get("suffix", [])]
    return " ".join(w for w in words if w) or None


def coding(item: Dataset) -> dict[str, Any] | None:
    """A Code Sequence Macro item (PS3.3 Table 8.8-1) as a FHIR Coding (system from the designator)."""
    code = text(item, "CodeValue") or text(item, "LongCodeValue") or text(item, "URNCodeValue")
    if code is None:
        return None
    out: dict[str, Any] = {}
    scheme = text(item, "CodingSchemeDesignator")
    if scheme is not None:
        system = CODING_SCHEMES.get(scheme.upper())
        if system is not None:
            out["system"] = system
    out["code"] = code
    meaning = text(item, "CodeMeaning")
    if meaning is not None:
        out["display"] = meaning
    return out


def concept(seq: Any) -> dict[str, Any] | None:
    """A code sequence as a CodeableConcept (every item a coding, the first meaning as text)."""
    codings = [c for c in (coding(item) for item in seq or []) if c is not None]
    if not codings:
        return None
    out: dict[str, Any] = {"coding": codings}
    meaning = codings[0].get("display")
    if meaning:
        out["text"] = meaning
    return out


def issuer_system(seq: Any) -> str | None:
    """``Identifier.system`` of an issuer sequence (HL7v2 Hierarchic Designator Macro, PS3.3 Table 10-17):
    Universal Entity ID (ISO ⇒ ``urn:oid:``, a URI as is) before Local Namespace Entity ID."""
    for item in seq or []:
        universal = text(item, "UniversalEntityID")
        if universal is not None:
            return patient_id_system(universal)
        local = text(item, "LocalNamespaceEntityID")
        if local is not None:
            return patient_id_system(local)
    return None
