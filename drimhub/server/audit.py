"""The audit recorder: one AuditEvent per patient for every request that touches health data.

After each response, the recorder looks at what the request involved (the views call
:func:`drimhub.server.auditctx.involve`) and at who called (``flask.g.principal``, set by the
resource protection once the token is validated; absent means anonymous) and appends:

- one event per patient involved, or one event without a patient when the request involved
  none (a search without a match, a 404), for every request under a data URL
  (:data:`DATA_PREFIXES`): allowed or failed, with its outcome;
- one Security Alert event (DICOM 110113), naming no patient, for every refused request
  (401 or 403) on any URL.

The events are built by :mod:`drimhub.mappings.audit` and appended in one transaction; when
that fails the response becomes a 500 (no access without a trace). Nothing here updates or
deletes an event. Every response carries an ``X-Request-Id``: the client's, sanitised, or a new
UUID; log records carry it as ``request_id``.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus

import orjson
from flask import Flask, Response, g, has_request_context, request

from drimhub.mappings.audit import (AccessFacts, Caller, PatientRef, build_event, patient_system,
                                    search_columns, token_tail)
from drimhub.server.auditctx import touched
from drimhub.server.db import resources
from drimhub.server.errors import render_error
from drimhub.server.urls import base_url
from drimhub.store import audit as audit_store

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_BAD = re.compile(r"[^A-Za-z0-9._-]")
_REQUEST_ID_MAX = 128
#: Query parameters whose value is a credential: kept as their tail only, even base64-encoded.
_SECRET_PARAMS = re.compile(rb"(^|&)(access_token|refresh_token|id_token_hint|client_assertion|code)=([^&]*)")
#: Statuses that make a request a Security Alert.
REFUSED = (401, 403)

# --- which requests are data requests, and what they do ---------------------------------------

#: URL prefixes of health data, and their domain (ARCHITECTURE.md §3).
DATA_PREFIXES: tuple[tuple[str, str], ...] = (
    ("/federated/dicom-web", "dicomweb"), ("/dicom-web", "dicomweb"), ("/wado", "dicomweb"),
    ("/IHEInvokeImageDisplay", "dicomweb"), ("/fhir", "fhir"),
    ("/api/studies", "dicomweb"),  # KOS manifests (drimhub.sharing.manifest_routes): they name the patient
    ("/api/shares", "sharing"), ("/api/jobs", "sharing"),  # grants and pushes disclose a patient's study
)
#: Data URLs that are not a prefix: a push of a study to a peer (drimhub.jobs.routes), its domain.
DATA_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = ((re.compile(r"^/api/peers/[^/]+/push$"), "sharing"),)
#: Paths under a data prefix that carry no health data (conformance and discovery).
NON_DATA_PATHS: tuple[str, ...] = ("/fhir/metadata", "/fhir/.well-known")
_DEFAULT_INTERACTIONS = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "PATCH": "patch",
                         "DELETE": "delete"}
_DICOMWEB_SEARCH_ENDS = ("studies", "series", "instances")
#: FHIR URL shape (T: type, id, v: version) ⇒ REST interaction, per method.
_FHIR_SHAPES: dict[tuple[str, str], str] = {
    ("", "GET"): "search-system", ("", "POST"): "transaction", ("_history", "GET"): "history-system",
    ("T", "GET"): "search-type", ("T", "POST"): "create", ("T", "PUT"): "update", ("T", "PATCH"): "patch",
    ("T", "DELETE"): "delete", ("T/_search", "POST"): "search-type", ("T/_search", "GET"): "search-type",
    ("T/_history", "GET"): "history-type", ("T/id", "GET"): "read", ("T/id", "PUT"): "update",
    ("T/id", "PATCH"): "patch", ("T/id", "DELETE"): "delete", ("T/id/_history", "GET"): "history-instance",
    ("T/id/_history/v", "GET"): "vread",
}


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def classify(method: str, path: str) -> tuple[str, str] | None:
    """The (domain, REST interaction) of a request, or None when it touches no health data.

    Parameters
    ----------
    method : str
        The HTTP method; OPTIONS (CORS preflight, Allow) is never a data request.
    path : str
        The request path, without the query string.

    Returns
    -------
    tuple of str, or None
        For example ``("dicomweb", "search-type")`` for a QIDO-RS search, ``("audit", "read")``
        for ``GET /fhir/AuditEvent/{id}``, ``("sharing", "create")`` for a share grant or a push.
    """
    method = "GET" if method.upper() == "HEAD" else method.upper()
    if method == "OPTIONS" or any(_under(path, p) for p in NON_DATA_PATHS):
        return None
    for pattern, domain in DATA_PATTERNS:
        if pattern.match(path):
            return domain, _DEFAULT_INTERACTIONS.get(method, "operation")
    for prefix, domain in DATA_PREFIXES:
        if _under(path, prefix):
            segments = [s for s in path[len(prefix):].split("/") if s]
            if domain == "sharing":  # POST grants or pushes (create), GET reads, DELETE revokes
                return domain, _DEFAULT_INTERACTIONS.get(method, "operation")
            if domain == "dicomweb":
                return domain, _dicomweb_interaction(method, segments)
            if segments and segments[0] == "AuditEvent":
                domain = "audit"
            return domain, _fhir_interaction(method, segments)
    return None


def _dicomweb_interaction(method: str, segments: list[str]) -> str:
    if method == "GET":
        return "search-type" if segments and segments[-1] in _DICOMWEB_SEARCH_ENDS else "read"
    return _DEFAULT_INTERACTIONS.get(method, "operation")


def _fhir_interaction(method: str, segments: list[str]) -> str:
    if any(s.startswith("$") for s in segments):
        return "operation"
    shape = [s if s in ("_search", "_history") else ("T", "id", "", "v")[min(i, 3)] for i, s in enumerate(segments)]
    return _FHIR_SHAPES.get(("/".join(shape), method), _DEFAULT_INTERACTIONS.get(method, "operation"))



# --- request id -------------------------------------------------------------------------------

def sanitise_request_id(value: str | None) -> str | None:
    """Keep at most 128 characters of ``[A-Za-z0-9._-]``; None when nothing is left."""
    if not value:
        return None
    cleaned = _REQUEST_ID_BAD.sub("", value)[:_REQUEST_ID_MAX]
    return cleaned or None


def request_id() -> str:
    """The id of the current request: the client's ``X-Request-Id`` (sanitised) or a new UUID."""
    rid: str | None = g.get("request_id")
    if rid is None:
        rid = sanitise_request_id(request.headers.get(REQUEST_ID_HEADER)) or str(uuid.uuid4())
        g.request_id = rid
    return rid


def _install_log_factory() -> None:
    """Give every log record a ``request_id`` attribute ("-" outside a request); once per process."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "drimhub_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return record

    factory.drimhub_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# --- what the request was ---------------------------------------------------------------------

def _caller() -> Caller:
    principal = g.get("principal")
    address = request.remote_addr
    if principal is not None:
        ref = principal.token_ref
        if ref and (ref.count(".") >= 2 or len(ref) > 64):  # a whole JWT or opaque token slipped in
            ref = token_tail(ref)
        return Caller(address=address, issuer=principal.issuer, sub=principal.sub, client_id=principal.client_id,
                      org=principal.org, token_ref=ref)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    tail = token_tail(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    return Caller(address=address, unverified_tail=tail or None)


def redact_query(raw: bytes) -> bytes:
    """The raw query string with credential values cut to their tail (never a whole token)."""
    def cut(match: re.Match[bytes]) -> bytes:
        tail = token_tail(unquote_plus(match.group(3).decode("latin-1")))
        return match.group(1) + match.group(2) + b"=..." + tail.encode("latin-1", "replace")
    return _SECRET_PARAMS.sub(cut, raw)


def _url_studies() -> tuple[str, ...]:
    """The study a refused or failed request named in its URL (WADO-RS path, WADO-URI studyUID)."""
    study = (request.view_args or {}).get("study") or request.args.get("studyUID")
    return (str(study)[:64],) if study else ()


def split_patient_key(key: str | None) -> PatientRef | None:
    """The patient of an :mod:`auditctx` key (``issuer|PatientID`` or ``PatientID``)."""
    if key is None:
        return None
    issuer, sep, value = key.partition("|")
    return PatientRef(patient_system(issuer), value) if sep else PatientRef(None, key)


def _groups() -> list[tuple[PatientRef | None, tuple[str, ...]]]:
    involved = touched().studies
    groups = [(split_patient_key(key), tuple(sorted(studies))) for key, studies in involved.items()]
    return groups or [(None, _url_studies())]


def _server_url() -> str:
    return base_url()


def access_facts(status: int) -> list[AccessFacts]:
    """The events the current request calls for (empty when it touches no health data)."""
    what = classify(request.method, request.path)
    alert = status in REFUSED
    if what is None and not alert:
        return []
    domain, interaction = what or (None, None)
    query = redact_query(request.query_string)
    common: dict[str, Any] = {
        "recorded": datetime.now(timezone.utc), "domain": domain, "interaction": interaction, "status": status,
        "caller": _caller(), "server_url": _server_url(), "request_id": request_id(), "raw_query": query,
        "query_text": f"{request.method} {request.path}?{unquote_plus(query.decode('latin-1'))}",
        "security_alert": alert,
    }
    groups = [(None, _url_studies())] if alert else _groups()
    return [AccessFacts(event_id=str(uuid.uuid4()), patient=patient, studies=studies, **common)
            for patient, studies in groups]


# --- the hooks --------------------------------------------------------------------------------

def _start() -> None:
    request_id()


def _end_read_transaction() -> None:
    """End the request's read transaction (its connection goes back to the pool) before the audit write.

    The view is done and its answer needs no session (teardown would roll it back anyway). On
    SQLite an open reader pins the WAL: every later commit then retries a checkpoint it cannot
    finish, with an fsync each time (about 1 ms per audit commit).
    """
    session = g.get("db_session")
    if session is not None:
        session.rollback()


def _record(response: Response) -> Response:
    rid = request_id()
    response.headers[REQUEST_ID_HEADER] = rid
    try:
        facts = access_facts(response.status_code)
        if facts:
            _end_read_transaction()
            audit_store.append(resources().sessions,
                               [(search_columns(f), orjson.dumps(build_event(f))) for f in facts])
            log.info("audit: %d event(s) for %s %s -> %d [request %s]", len(facts), request.method, request.path,
                     response.status_code, rid)
    except Exception:  # no access without a trace: the answer is withheld
        log.exception("audit: could not record %s %s [request %s]", request.method, request.path, rid)
        response.close()
        response = render_error(500, "the access could not be audited")
        response.headers[REQUEST_ID_HEADER] = rid
    return response


def init_app(app: Flask) -> None:
    """Register the request id (first before-request hook) and the recorder (after-request)."""
    _install_log_factory()
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_record)
