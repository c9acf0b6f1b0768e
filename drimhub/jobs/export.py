"""The audit trail of pushes: one DICOM "Export" event (PS3.15 A.5.3.6, DCM 110106) per push
attempt outcome, with the study, its patient, the destination peer and the outcome (no Flask here).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from drimhub.jobs import state
from drimhub.store.models import Study
from drimhub.store.network import Job

#: The event type (DCM 110106 "Export": instances sent to another node).
EXPORT = ("http://dicom.nema.org/resources/ontology/DCM", "110106", "Export")
#: The role of the destination in a transfer (DCM 110152 "Destination Role ID").
DESTINATION = ("http://dicom.nema.org/resources/ontology/DCM", "110152", "Destination Role ID")
#: The agent of push events (the source of the export).
PUSH_AGENT = "drimhub-push"


def export_event(job: Job, outcome: str, error: str | None, node: str, patient_id: str | None,
                 issuer: str | None) -> tuple[dict[str, Any], bytes]:
    """The search columns and the FHIR JSON of the "Export" event of one push attempt.

    ``outcome``: the job's state after the attempt (succeeded: outcome 0; retrying or failed: 8,
    the state and ``error`` as outcomeDesc).
    """
    from drimhub.mappings.audit import (AccessFacts, Caller, PatientRef, build_event, patient_system,
                                        search_columns)

    ok = outcome == state.SUCCEEDED
    description = f"push {outcome}" + (f": {error}" if error else "") + f" (job {job.id}, attempt {job.attempts})"
    facts = AccessFacts(event_id=str(uuid.uuid4()), recorded=datetime.now(timezone.utc), domain="dicomweb",
                        interaction="push", status=200 if ok else 502,
                        caller=Caller(client_id=PUSH_AGENT, org=job.org, sub=job.created_by),
                        server_url=node or "urn:drimhub:node", outcome_desc=None if ok else description,
                        patient=PatientRef(patient_system(issuer), patient_id) if patient_id else None,
                        studies=(job.study_uid,) if job.study_uid else ())
    event = build_event(facts)
    system, code, display = EXPORT
    event["type"] = {"system": system, "code": code, "display": display}
    event["action"] = "R"  # PS3.15 A.5.3.6: Export is a read of the instances sent
    role_system, role_code, role_display = DESTINATION
    event["agent"].append({"type": {"coding": [{"system": role_system, "code": role_code, "display": role_display}]},
                           "who": {"display": f"peer {job.peer}"}, "requestor": False})
    columns = {**search_columns(facts), "event_type": code}
    return columns, orjson.dumps(event)


def audit_attempt(sessions: sessionmaker[Session], job: Job, outcome: str, error: str | None, node: str) -> None:
    """Record the "Export" event of one attempt of the push ``job`` (:func:`export_event`)."""
    from drimhub.store import audit as audit_store

    with sessions() as session:
        row = _patient(session, job)
    audit_store.append(sessions, [export_event(job, outcome, error, node, *row)])


def _patient(session: Session, job: Job) -> tuple[str | None, str | None]:
    found = session.execute(select(Study.patient_id, Study.issuer_of_patient_id)
                            .where(Study.study_uid == job.study_uid, Study.org == job.org)).first()
    return (found[0], found[1]) if found else (None, None)
