"""Identifier systems shared by the DICOM and FHIR sides: one rule, used everywhere.

A DICOM Patient ID is only unique with its issuer (Issuer of Patient ID (0010,0021), or the
Universal Entity ID of the Issuer of Patient ID Qualifiers Sequence (0010,0024)); in FHIR the
issuer is ``Identifier.system``, a URI:

- an ISO OID (the French INS, ``1.2.250.1.213.1.4.8``; an establishment's IPP namespace)
  becomes ``urn:oid:<OID>``;
- a URI (``http(s)://``, ``urn:``) is kept as is;
- any other local namespace becomes ``urn:drimhub:issuer:<issuer>`` (percent-encoded), a URI
  private to this node that round-trips;
- no issuer: no system (the identifier is matched on its value alone).

:func:`issuer_for_system` inverts it, so that ``ImagingStudy?patient.identifier=sys|value``
becomes a match on the study's PatientID and issuer.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

#: INS (Identifiant National de Santé) OIDs: NIR of the person, NIA while it is being
#: attributed, and the test (qualification) OIDs.
INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIA_TEST = "1.2.250.1.213.1.4.11"
INS_OIDS = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIA_TEST})

#: Identifier.system of a DICOM UID (R4 ImagingStudy notes: value ``urn:oid:<uid>``).
DICOM_UID_SYSTEM = "urn:dicom:uid"
LOCAL_ISSUER_PREFIX = "urn:drimhub:issuer:"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI = re.compile(r"^(https?://|urn:)", re.IGNORECASE)


def is_oid(value: str) -> bool:
    """True for a dotted ISO OID (``1.2.250.1.213.1.4.8``)."""
    return bool(_OID.match(value))


def patient_id_system(issuer: str | None) -> str | None:
    """``Identifier.system`` of a Patient ID issued by ``issuer`` (None without one)."""
    issuer = (issuer or "").strip()
    if not issuer:
        return None
    if is_oid(issuer):
        return f"urn:oid:{issuer}"
    if _URI.match(issuer):
        return issuer
    return LOCAL_ISSUER_PREFIX + quote(issuer, safe="")


def issuer_for_system(system: str | None) -> str | None:
    """The DICOM issuer that :func:`patient_id_system` maps to ``system`` (None for none)."""
    if not system:
        return None
    if system.startswith("urn:oid:"):
        return system[len("urn:oid:"):]
    if system.startswith(LOCAL_ISSUER_PREFIX):
        return unquote(system[len(LOCAL_ISSUER_PREFIX):])
    return system


def uid_urn(uid: str) -> str:
    """``urn:oid:<uid>``: a DICOM UID as an identifier value or a coding code."""
    return f"urn:oid:{uid}"


def uid_from_urn(value: str) -> str:
    """A DICOM UID from ``urn:oid:<uid>`` (or the bare UID, accepted as clients send it)."""
    return value[len("urn:oid:"):] if value.startswith("urn:oid:") else value
