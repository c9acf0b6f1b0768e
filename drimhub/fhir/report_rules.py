"""The server's business rules for DiagnosticReport writes (a violation is a 422, FHIR R4
http.html "422 Unprocessable Entity: ... server business rules").

- status lifecycle (R4 ValueSet diagnostic-report-status, whose hierarchy this follows):
  registered → partial / preliminary → final → amended / corrected / appended; cancelled and
  entered-in-error from any status; a status may be sent again (idempotent re-sends); ``unknown``
  is free both ways;
- a literal reference to ``Patient/id`` names an existing, not deleted Patient of the writer's
  organisation;
- a report naming its study only by accession (``basedOn[].identifier`` of type v2-0203 ACSN)
  gets ``imagingStudy: ImagingStudy/<Study Instance UID>`` when exactly one study of the
  organisation has that accession. A reference ``ImagingStudy/<uid>`` to a study not stored yet
  is kept as is: the id is the Study Instance UID and the images may arrive after the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from drimhub.errors import Unprocessable
from drimhub.store import fhir as rows
from drimhub.store.access import Access
from drimhub.store.models import Study

ACSN_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
_RANK = {"registered": 0, "partial": 1, "preliminary": 1, "final": 2, "amended": 3, "corrected": 3, "appended": 3}
_TERMINAL = ("cancelled", "entered-in-error")


def check_transition(before: str | None, after: str) -> None:
    """Refuse a status change the lifecycle does not allow (``before`` None: a new report).

    Raises
    ------
    Unprocessable
        For example ``final`` → ``preliminary``, or out of ``cancelled``.
    """
    if after not in _RANK and after not in (*_TERMINAL, "unknown"):
        raise Unprocessable(f"DiagnosticReport.status: {after!r} is not a report status")
    if before is None or before == after or "unknown" in (before, after) or after in _TERMINAL:
        return
    rank_before, rank_after = _RANK.get(before), _RANK[after]
    # forward, or sideways between partial / preliminary and between amended / corrected / appended
    if rank_before is None or not (rank_after > rank_before or (rank_after == rank_before in (1, 3))):
        raise Unprocessable(f"DiagnosticReport.status cannot go from {before!r} to {after!r} "
                            "(registered → partial/preliminary → final → amended/corrected/appended)")


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def check_patients(session: Session, resource: dict[str, Any], org: str) -> None:
    """Every literal ``Patient/id`` reference names a live Patient of ``org``.

    Raises
    ------
    Unprocessable
        One does not.
    """
    for ref in _references(resource):
        if ref.startswith("Patient/"):
            row = rows.get_visible(session, "Patient", ref.split("/")[1], Access.of_org(org))
            if row is None or row.deleted:
                raise Unprocessable(f"{ref} is not a known Patient")


def accession_numbers(resource: dict[str, Any]) -> list[str]:
    """The accession numbers of ``basedOn[].identifier`` (type v2-0203 ACSN)."""
    found = []
    for based_on in resource.get("basedOn") or []:
        ident = based_on.get("identifier") or {}
        codings = (ident.get("type") or {}).get("coding") or []
        if ident.get("value") and any(c.get("code") == "ACSN" for c in codings):
            found.append(ident["value"])
    return found


def resolve_imaging_study(session: Session, resource: dict[str, Any], org: str) -> None:
    """Add ``imagingStudy`` from the accession when the report names none and one study matches."""
    if resource.get("imagingStudy"):
        return
    for accession in accession_numbers(resource):
        uids = session.scalars(select(Study.study_uid).where(Study.accession_number == accession,
                                                             Study.org == org).limit(2)).all()
        if len(uids) == 1:
            resource["imagingStudy"] = [{"reference": f"ImagingStudy/{uids[0]}"}]
            return


def apply(session: Session, resource: dict[str, Any], org: str, previous: dict[str, Any] | None) -> None:
    """Check and complete a DiagnosticReport about to be stored (``previous``: its current version)."""
    check_transition(previous.get("status") if previous else None, str(resource.get("status")))
    check_patients(session, resource, org)
    resolve_imaging_study(session, resource, org)
