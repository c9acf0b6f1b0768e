"""One access ⇒ one FHIR R4 AuditEvent in the IHE Basic Audit Log Patterns (BALP) shape.

Pure functions over plain values: the Flask side says what happened, this module says how it is
written down. The rules are tables: :data:`EVENT_KINDS` ((domain, REST interaction) ⇒ action
C/R/U/D/E, restful-interaction subtype, DICOM audit event ID of PS3.15 A.5 / CID 400),
:data:`AGENT_TYPES` (action ⇒ BALP types of the client, server and user agents) and
:data:`OUTCOMES`. Entities: patient, studies, the raw query in base64 (searches) and the
X-Request-Id (transaction). A refused request (401/403) is a Security Alert (DICOM 110113) and
names no patient. A token appears only as its ``jti`` or at most its last 32 characters.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

# --- code systems ---------------------------------------------------------------------------

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
URI_SYSTEM = "urn:ietf:rfc:3986"
DICOM_UID_SYSTEM = "urn:dicom:uid"
#: System of patient identifiers whose IssuerOfPatientID is neither an OID nor a URI.
LOCAL_ISSUER_PREFIX = "urn:drimhub:issuer-of-patient-id:"

# --- tables ---------------------------------------------------------------------------------

#: DICOM audit event IDs used here (PS3.16 CID 400 "Audit Event ID").
DICOM_EVENTS: dict[str, str] = {"110101": "Audit Log Used", "110104": "DICOM Instances Transferred",
                                 "110105": "DICOM Study Deleted", "110112": "Query", "110113": "Security Alert"}
SECURITY_ALERT = "110113"

#: REST interaction (restful-interaction code) ⇒ AuditEvent.action (BALP; FHIR "E" = execute/query).
INTERACTION_ACTIONS: dict[str, str] = {
    "create": "C", "read": "R", "vread": "R", "update": "U", "patch": "U", "delete": "D",
    "search": "E", "search-type": "E", "search-system": "E", "history-instance": "R",
    "history-type": "R", "history-system": "R", "transaction": "E", "batch": "E", "operation": "E",
}


@dataclass(frozen=True)
class EventKind:
    """What an interaction is recorded as: action, restful-interaction code, DICOM event ID."""

    action: str
    interaction: str
    dicom_event: str | None


#: (domain, interaction) ⇒ event kind. Domains: ``dicomweb`` (DICOMweb and WADO-URI),
#: ``audit`` (the audit log itself, ITI-81) and ``fhir`` (every other FHIR resource).
EVENT_KINDS: dict[tuple[str, str], EventKind] = {
    ("dicomweb", "create"): EventKind("C", "create", "110104"),        # STOW-RS
    ("dicomweb", "read"): EventKind("R", "read", "110104"),            # WADO-RS / WADO-URI
    ("dicomweb", "search-type"): EventKind("E", "search-type", "110112"),  # QIDO-RS
    ("dicomweb", "delete"): EventKind("D", "delete", "110105"),
    ("audit", "read"): EventKind("R", "read", "110101"),
    ("audit", "search-type"): EventKind("E", "search-type", "110101"),
    ("fhir", "read"): EventKind("R", "read", None),
    ("fhir", "search-type"): EventKind("E", "search-type", None),
    ("fhir", "create"): EventKind("C", "create", None),
    ("fhir", "update"): EventKind("U", "update", None),
    ("fhir", "delete"): EventKind("D", "delete", None),
}
#: DICOM event ID of any other interaction of a domain (a write attempt on the audit log…).
DOMAIN_EVENTS: dict[str, str] = {"audit": "110101"}


@dataclass(frozen=True)
class AgentTypes:
    """BALP agent types (Coding: system, code, display) for one action."""

    client: tuple[str, str, str]
    server: tuple[str, str, str]
    user: tuple[str, str, str]


_SOURCE = (DCM, "110153", "Source Role ID")
_DESTINATION = (DCM, "110152", "Destination Role ID")
_APPLICATION = (DCM, "110150", "Application")
_CUSTODIAN = (PROVENANCE_PARTICIPANT_TYPE, "custodian", "Custodian")
_AUTHOR = (PARTICIPATION_TYPE, "AUT", "author (originator)")
_RECIPIENT = (PARTICIPATION_TYPE, "IRCP", "information recipient")

#: Action ⇒ agent types (BALP Create/Update/Read/Query/Delete profiles). For a query the client
#: is the Source, as DICOM and IHE have it: the query parameters flow from client to server.
AGENT_TYPES: dict[str, AgentTypes] = {
    "C": AgentTypes(_SOURCE, _DESTINATION, _AUTHOR),
    "U": AgentTypes(_SOURCE, _DESTINATION, _AUTHOR),
    "R": AgentTypes(_DESTINATION, _SOURCE, _RECIPIENT),
    "E": AgentTypes(_SOURCE, _DESTINATION, _RECIPIENT),
    "D": AgentTypes(_APPLICATION, _CUSTODIAN, _AUTHOR),
}

#: AuditEvent.outcome (http://hl7.org/fhir/audit-event-outcome).
OUTCOMES: dict[str, str] = {"0": "Success", "4": "Minor failure", "8": "Serious failure", "12": "Major failure"}


def outcome_for_status(status: int) -> str:
    """AuditEvent.outcome of an HTTP status: 0 below 400, 4 for a 4xx, 8 for a 5xx (12 is never inferred)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def kind_for(domain: str | None, interaction: str | None) -> EventKind:
    """The event kind of ``interaction`` in ``domain``; unknown pairs fall back on the action table."""
    if domain and interaction and (domain, interaction) in EVENT_KINDS:
        return EVENT_KINDS[(domain, interaction)]
    if not interaction:
        return EventKind("E", "", None)
    return EventKind(INTERACTION_ACTIONS.get(interaction, "E"), interaction, DOMAIN_EVENTS.get(domain or ""))


# --- inputs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    """Who called: a validated token's facts (``token_ref``: its ``jti`` or last 32 characters), or only
    an address and the tail of a refused bearer token (``unverified_tail``)."""

    address: str | None = None
    issuer: str | None = None
    sub: str | None = None
    client_id: str | None = None
    org: str | None = None
    token_ref: str | None = None
    unverified_tail: str | None = None


@dataclass(frozen=True)
class PatientRef:
    """A patient identifier: FHIR system (None when unknown) and value (the PatientID)."""

    system: str | None
    value: str

    def token(self) -> str:
        """The FHIR token form, ``system|value`` (or the value alone)."""
        return f"{self.system}|{self.value}" if self.system else self.value


@dataclass(frozen=True)
class AccessFacts:
    """Everything one AuditEvent says; the builder adds nothing it does not find here."""

    event_id: str
    recorded: datetime
    domain: str | None
    interaction: str | None
    status: int
    caller: Caller
    server_url: str
    request_id: str | None = None
    patient: PatientRef | None = None
    studies: tuple[str, ...] = ()
    raw_query: bytes | None = None
    query_text: str | None = None
    security_alert: bool = False
    outcome_desc: str | None = None

    @property
    def kind(self) -> EventKind:
        """The event kind of this access (its action, subtype and DICOM event)."""
        return kind_for(self.domain, self.interaction)

    @property
    def dicom_event(self) -> str | None:
        """The DICOM event ID: 110113 for a refused request, else the kind's."""
        return SECURITY_ALERT if self.security_alert else self.kind.dicom_event


# --- helpers --------------------------------------------------------------------------------

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
#: IssuerOfPatientID values with a known FHIR system (ANS: INS-NIR, production).
KNOWN_ISSUERS: dict[str, str] = {"ASIP-SANTE-INS-NIR": "urn:oid:1.2.250.1.213.1.4.8"}


def patient_system(issuer: str | None) -> str | None:
    """The FHIR identifier system of an IssuerOfPatientID (0010,0021).

    An OID becomes ``urn:oid:<oid>``; a URI is kept; a known name maps through
    :data:`KNOWN_ISSUERS`; any other local name becomes ``urn:drimhub:issuer-of-patient-id:<name>``
    (percent-encoded), so that two issuers' patients never share a system.
    """
    if not issuer:
        return None
    issuer = issuer.strip()
    if issuer in KNOWN_ISSUERS:
        return KNOWN_ISSUERS[issuer]
    if _OID.match(issuer):
        return f"urn:oid:{issuer}"
    if _URI.match(issuer):
        return issuer
    return LOCAL_ISSUER_PREFIX + quote(issuer, safe="")


def token_tail(token: str) -> str:
    """At most the last 32 characters of a token, and never more than half of it."""
    return token[-min(32, len(token) // 2):] if len(token) >= 2 else ""


def _coding(triple: tuple[str, str, str]) -> dict[str, str]:
    system, code, display = triple
    return {"system": system, "code": code, "display": display}


def _identifier(system: str | None, value: str) -> dict[str, str]:
    return {"system": system, "value": value} if system else {"value": value}


# --- agents ---------------------------------------------------------------------------------

def _client_agent(facts: AccessFacts, types: AgentTypes, requestor: bool) -> dict[str, Any]:
    caller = facts.caller
    if caller.client_id:
        who: dict[str, Any] = {"identifier": _identifier(caller.issuer, caller.client_id), "display": caller.client_id}
    else:
        who = {"display": "unauthenticated client"}
    agent: dict[str, Any] = {"type": {"coding": [_coding(types.client)]}, "who": who, "requestor": requestor}
    if caller.org:
        agent["altId"] = f"org:{caller.org}"
    if caller.address:
        agent["network"] = {"address": caller.address, "type": "2"}  # 2: IP address
    return agent


def _server_agent(facts: AccessFacts, types: AgentTypes) -> dict[str, Any]:
    return {
        "type": {"coding": [_coding(types.server)]},
        "who": {"identifier": _identifier(URI_SYSTEM, facts.server_url), "display": "drimhub"},
        "requestor": False,
        "network": {"address": facts.server_url, "type": "5"},  # 5: URI
    }


def _user_agent(facts: AccessFacts, types: AgentTypes) -> dict[str, Any] | None:
    caller = facts.caller
    if caller.sub:
        agent: dict[str, Any] = {"type": {"coding": [_coding(types.user)]},
                                 "who": {"identifier": _identifier(caller.issuer, caller.sub)}, "requestor": True}
        if caller.token_ref:
            agent["policy"] = [caller.token_ref]
        return agent
    if caller.unverified_tail:
        return {"type": {"coding": [_coding(types.user)]}, "who": {"display": "unverified bearer token"},
                "requestor": True, "policy": [caller.unverified_tail]}
    return None


def agents(facts: AccessFacts) -> list[dict[str, Any]]:
    """The agents of the event: client and server always, the user when a token names one.

    The user is the requestor when there is one, else the client.
    """
    types = AGENT_TYPES[facts.kind.action]
    user = _user_agent(facts, types)
    result = [_client_agent(facts, types, requestor=user is None), _server_agent(facts, types)]
    if user:
        result.append(user)
    return result


# --- entities -------------------------------------------------------------------------------

def patient_entity(patient: PatientRef) -> dict[str, Any]:
    """entity[patient]: a Patient reference by identifier (BALP Patient* profiles)."""
    return {
        "what": {"type": "Patient", "identifier": _identifier(patient.system, patient.value)},
        "type": {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
        "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
    }


def study_entity(study_uid: str) -> dict[str, Any]:
    """entity[data]: an ImagingStudy by its Study Instance UID (``urn:dicom:uid`` | ``urn:oid:<uid>``)."""
    identifier = {"type": {"coding": [_coding((DCM, "110180", "Study Instance UID"))]},
                  "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}
    return {
        "what": {"type": "ImagingStudy", "identifier": identifier},
        "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},  # PS3.15 A.5.3: study = role 3
    }


def query_entity(raw_query: bytes, description: str | None = None) -> dict[str, Any]:
    """entity[query]: the raw query string in base64 (malicious patterns kept), the readable one aside."""
    entity: dict[str, Any] = {
        "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
        "query": base64.b64encode(raw_query).decode("ascii"),
    }
    if description:
        entity["description"] = description
    return entity


def transaction_entity(request_id: str) -> dict[str, Any]:
    """entity[transaction]: the X-Request-Id of the request."""
    return {"what": {"identifier": {"value": request_id}},
            "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id"}}


def entities(facts: AccessFacts) -> list[dict[str, Any]]:
    """Patient (never on a security alert), studies, query (searches), transaction."""
    result: list[dict[str, Any]] = []
    if facts.patient and not facts.security_alert:
        result.append(patient_entity(facts.patient))
    result.extend(study_entity(uid) for uid in sorted(facts.studies))
    if facts.raw_query is not None and facts.kind.action == "E":
        result.append(query_entity(facts.raw_query, facts.query_text))
    if facts.request_id:
        result.append(transaction_entity(facts.request_id))
    return result


# --- the event and its search columns -------------------------------------------------------

def subtypes(facts: AccessFacts) -> list[dict[str, str]]:
    """AuditEvent.subtype: the REST interaction, then the DICOM event ID."""
    result = []
    if facts.kind.interaction:
        result.append({"system": RESTFUL_INTERACTION, "code": facts.kind.interaction,
                       "display": facts.kind.interaction})
    if facts.dicom_event:
        result.append({"system": DCM, "code": facts.dicom_event, "display": DICOM_EVENTS[facts.dicom_event]})
    return result


def build_event(facts: AccessFacts) -> dict[str, Any]:
    """The AuditEvent (FHIR R4 JSON, as a dict) of one access and at most one patient.

    Parameters
    ----------
    facts : AccessFacts
        What happened; ``recorded`` must be timezone-aware.

    Returns
    -------
    dict
        A resource valid as ``fhir.resources.R4B.auditevent.AuditEvent``.
    """
    outcome = outcome_for_status(facts.status)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": facts.event_id,
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"},
        "subtype": subtypes(facts),
        "action": facts.kind.action,
        "recorded": facts.recorded.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
        "outcome": outcome,
        "agent": agents(facts),
        "source": {"site": facts.server_url, "observer": {"display": "drimhub"},
                   "type": [{"system": SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        "entity": entities(facts),
    }
    if outcome != "0":
        event["outcomeDesc"] = facts.outcome_desc or f"HTTP {facts.status}"
    return event


def search_columns(facts: AccessFacts) -> dict[str, Any]:
    """The values of the searchable columns of the audit table for this event.

    ``subtype`` holds the interaction code and the DICOM event ID separated by a space
    (``"search-type 110112"``); ``patient`` and ``agent`` hold FHIR tokens (``system|value``).
    """
    caller = facts.caller
    agent = None
    if caller.sub:
        agent = f"{caller.issuer}|{caller.sub}" if caller.issuer else caller.sub
    return {
        "event_id": facts.event_id,
        "recorded": facts.recorded.astimezone(timezone.utc),
        "action": facts.kind.action,
        "subtype": " ".join(c["code"] for c in subtypes(facts))[:64],
        "event_type": "rest",
        "outcome": outcome_for_status(facts.status),
        "patient": facts.patient.token()[:200] if facts.patient and not facts.security_alert else None,
        "agent": agent[:256] if agent else None,
        "client_id": caller.client_id[:128] if caller.client_id else None,
        "org": caller.org[:64] if caller.org else None,
        "request_id": facts.request_id,
    }
