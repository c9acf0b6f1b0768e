"""The FHIR CapabilityStatement (``/fhir/metadata``) and the SearchParameter resources of this server.

Generated from the registry (:mod:`drimhub.fhir.registry`) and the AuditEvent search of
:mod:`drimhub.fhir.audit_routes`, so that it says what the server really does (R4
capabilitystatement.html): every declared search parameter, include and revinclude answers (the
CapabilityStatement test sends each one).

Per stored type (R4 http.html): versioned with ``vread`` and history, ``updateCreate``,
conditional create, update and delete (single match), ``If-Match``; derived types
(ImagingStudy, Endpoint) are read and searched only, without versions. System interactions:
``transaction`` and ``batch``. Security: SMART on FHIR (the ``oauth-uris`` extension, SMART App
Launch 1.0 §"Declaring support for OAuth2 endpoints") with the node's authorization server.
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from drimhub.fhir.registry import (CANONICAL_BASE, COMMON_PARAMS, FHIR_VERSION, RESOURCE_TYPES, ResourceType,
                                   SearchParam, custom_params)
from drimhub.fhir.search import DEFAULT_COUNT, MAX_COUNT
from drimhub.fhir.searchset import MAX_INCLUDED

JSON_FORMATS = ["application/fhir+json", "json"]
JSON_PATCH = "application/json-patch+json"
#: When this process started: the CapabilityStatement's ``date`` (what it says can change with a release only).
_STARTED = datetime.now(timezone.utc).isoformat(timespec="seconds")

#: What a parameter's value means here, where it says more than its R4 description.
PARAM_NOTES: dict[tuple[str, str], str] = {
    ("ImagingStudy", "identifier"): "Study Instance UID (urn:dicom:uid|urn:oid:<uid>, or the bare UID) or accession "
                                    "number (any system; :of-type=http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|<value>)",
    ("ImagingStudy", "patient"): "Patient/<id>; :identifier and patient.identifier match the DICOM Patient ID and issuer",
    ("ImagingStudy", "started"): "StudyDate/StudyTime as recorded, read in the node's time zone; a study without a "
                                 "time covers its whole day. A study recorded with a Timezone Offset From UTC other "
                                 "than the node's is rendered at its true instant but matched as recorded",
    ("ImagingStudy", "basedon"): "Only :identifier (the accession number) and :missing match: the order is not a "
                                 "resource here",
    ("ImagingStudy", "referrer"): "The referring physician is a display-only reference: only :missing is meaningful, "
                                  "a literal reference matches nothing",
    ("ImagingStudy", "endpoint"): "The node's DICOMweb Endpoint (every stored study is served by it)",
    ("ImagingStudy", "bodysite"): "SNOMED CT code of PS3.16 Annex L, or the Body Part Examined defined term",
    ("ImagingStudy", "status"): "Every stored study is available",
}
#: AuditEvent search (IHE ITI-81, drimhub.fhir.audit_routes): a date bound is required.
AUDIT_PARAMS = (
    SearchParam("date", "date", "AuditEvent.recorded", "Time when the event was recorded (a bound is required)"),
    SearchParam("patient", "reference", "AuditEvent.entity.what.where(resolve() is Patient)",
                "Identity of the patient, as [system|]value of its Patient ID", ("Patient",)),
    SearchParam("agent", "reference", "AuditEvent.agent.who", "Identifier or client id of who participated, as "
                "[system|]value"),
    SearchParam("subtype", "token", "AuditEvent.subtype", "More specific type/id for the event"),
    SearchParam("outcome", "token", "AuditEvent.outcome", "Whether the event succeeded or failed"),
)


def _software_version() -> str:
    try:
        return metadata.version("drimhub")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without installation
        return "0"


def _search_param(type_: str, param: SearchParam) -> dict[str, Any]:
    note = PARAM_NOTES.get((type_, param.name))
    return {"name": param.name, "definition": param.url, "type": param.type,
            "documentation": f"{param.description}. {note}" if note else param.description}


def _resource(rtype: ResourceType) -> dict[str, Any]:
    interactions = rtype.interactions
    stored = not rtype.derived
    searchable = "search-type" in interactions
    out: dict[str, Any] = {
        "type": rtype.name,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype.name}",
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned" if stored else "no-version",
        "readHistory": stored and "vread" in interactions,
        "updateCreate": "update" in interactions,
        "conditionalCreate": stored and searchable and "create" in interactions,
        "conditionalRead": "not-supported",
        "conditionalUpdate": stored and searchable and "update" in interactions,
        "conditionalDelete": "single" if stored and searchable and "delete" in interactions else "not-supported",
        "referencePolicy": ["literal", "logical", "local"],
    }
    if rtype.notes:
        out["documentation"] = rtype.notes
    if rtype.includes:
        out["searchInclude"] = list(rtype.includes)
    if rtype.revincludes:
        out["searchRevInclude"] = list(rtype.revincludes)
    if searchable and rtype.params:
        out["searchParam"] = [_search_param(rtype.name, p) for p in rtype.params]
    return out


def _audit_event() -> dict[str, Any]:
    return {"type": "AuditEvent", "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
            "documentation": "The audit trail (IHE ITI-81), read-only; needs user/ or system/AuditEvent.rs",
            "interaction": [{"code": "read"}, {"code": "search-type"}], "versioning": "no-version",
            "readHistory": False, "updateCreate": False, "conditionalCreate": False, "conditionalRead": "not-supported",
            "conditionalUpdate": False, "conditionalDelete": "not-supported",
            "searchParam": [_search_param("AuditEvent", p) for p in AUDIT_PARAMS]}


def _security(node: str) -> dict[str, Any]:
    uris = {"token": f"{node}/oauth/token", "authorize": f"{node}/oauth/authorize",
            "introspect": f"{node}/oauth/introspect", "revoke": f"{node}/oauth/revoke"}
    return {
        "cors": True,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}], "text": "OAuth2 bearer tokens with SMART scopes"}],
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": k, "valueUri": v} for k, v in uris.items()]}],
        "description": "Every request but /fhir/metadata needs a bearer token; SMART scopes (patient/, user/, "
                       "system/) per resource type and interaction; an organisation sees only its own resources "
                       "(searches, includes and history included); patient/ scopes see one compartment.",
    }


def capability_statement(base: str) -> dict[str, Any]:
    """The CapabilityStatement of the FHIR server at ``base`` (R4 capabilitystatement.html, kind instance)."""
    node = base.removesuffix("/fhir")
    resources = [_resource(t) for t in RESOURCE_TYPES.values()] + [_audit_event()]
    return {
        "resourceType": "CapabilityStatement",
        "url": f"{CANONICAL_BASE}/CapabilityStatement/drimhub",
        "name": "Drimhub",
        "title": "drimhub FHIR R4 server over the DICOMweb store",
        "status": "active",
        "experimental": False,
        "date": _STARTED,
        "publisher": "drimhub",
        "kind": "instance",
        "software": {"name": "drimhub", "version": _software_version()},
        "implementation": {"description": "drimhub FHIR R4 endpoint", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": JSON_FORMATS,
        "patchFormat": [JSON_PATCH],
        "rest": [{
            "mode": "server",
            "documentation": (f"Search: _count defaults to {DEFAULT_COUNT} (at most {MAX_COUNT}); next links page by "
                              f"key (_cursor); at most {MAX_INCLUDED} included resources per page, beyond which an "
                              "OperationOutcome says so; total given on request (_total=accurate) or when the whole "
                              "match fits in one page. Unknown parameters are ignored with a warning, a 400 under "
                              "Prefer: handling=strict. Dates without a time zone are read as UTC."),
            "security": _security(node),
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "searchParam": [_search_param("Resource", p) for p in COMMON_PARAMS],
        }],
    }


def search_parameters() -> list[dict[str, Any]]:
    """SearchParameter resources of this server's custom parameters (R4 searchparameter.html).

    Their id is ``{Type}-{code}``, their ``url`` the one the CapabilityStatement names.
    """
    return [{
        "resourceType": "SearchParameter",
        "id": f"{rtype.name}-{param.name}",
        "url": param.url,
        "version": _software_version(),
        "name": f"{rtype.name}{''.join(w.capitalize() for w in param.name.split('-'))}",
        "status": "active",
        "experimental": False,
        "publisher": "drimhub",
        "description": param.description,
        "code": param.name,
        "base": [rtype.name],
        "type": param.type,
        "expression": param.expression,
        "xpathUsage": "normal",
        **({"target": list(param.targets)} if param.targets else {}),
        "modifier": ["missing", "identifier"] if param.type == "reference" else ["missing"],
        **({"chain": ["*"]} if param.type == "reference" else {}),
    } for rtype, param in custom_params()]


__all__ = ["AUDIT_PARAMS", "PARAM_NOTES", "capability_statement", "search_parameters"]
