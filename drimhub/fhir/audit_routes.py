"""``/fhir/AuditEvent``: the audit trail for an auditor, in the IHE ITI-81 (Retrieve ATNA Audit
Event) shape.

- ``GET /fhir/AuditEvent?date=ge…&date=le…&patient=…&agent=…&subtype=…&outcome=…&_count=…``: a
  searchset Bundle, oldest first, with a ``next`` link (``_offset``). A ``date`` bound is
  required; date prefixes ``eq`` (default), ``ge``, ``gt``, ``le``, ``lt``; a date without a zone
  is UTC. ``patient`` and ``agent`` are tokens (``value`` or ``system|value``; ``agent`` also
  matches the client id). Unknown parameters are refused (400), never silently ignored.
- ``GET /fhir/AuditEvent/{id}``: one event.
- Any write: 405. The trail is append-only for the application.

Access needs ``user/AuditEvent.rs`` or ``system/AuditEvent.rs`` (``patient/`` scopes do not
open the audit log); an auditor sees the events of the organisation of their token. Each use of
this API is itself recorded (DICOM 110101 Audit Log Used) by :mod:`drimhub.server.audit`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Flask, Response, g, request
from werkzeug.datastructures import MultiDict

from drimhub.mappings.audit import DCM, OUTCOMES, RESTFUL_INTERACTION
from drimhub.server.auth import policy
from drimhub.server.auth.policy import Requirement
from drimhub.server.db import get_session
from drimhub.errors import Forbidden, InvalidQuery, MethodNotAllowed, NotFound
from drimhub.fhir.dates import date_range, split_prefix
from drimhub.server.urls import base_url
from drimhub.store import audit as audit_store
from drimhub.store.audit import AuditQuery, TokenMatch

bp = Blueprint("fhir_audit", __name__, url_prefix="/fhir")

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT = 100
MAX_COUNT = 1000
#: Scope contexts that may read the audit log (a ``patient/`` scope never does).
AUDITOR_CONTEXTS = ("user", "system")
SEARCH_PARAMETERS = frozenset({"date", "patient", "agent", "subtype", "outcome", "_count", "_offset"})
_DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
_CODE = re.compile(r"^[A-Za-z0-9-]{1,32}$")


# --- search parameters ------------------------------------------------------------------------

def date_bounds(values: list[str]) -> tuple[datetime | None, datetime | None]:
    """The ``[since, until)`` window of every ``date`` parameter together (their intersection).

    Each value covers its precision (:func:`drimhub.fhir.dates.date_range`: a day, a second, a
    millisecond...); a dateTime without a zone is UTC.

    Raises
    ------
    InvalidQuery
        A prefix other than ``eq ge gt le lt``, or a value that is not a FHIR date or dateTime.
    """
    since: datetime | None = None
    until: datetime | None = None
    for text in values:
        prefix, value = split_prefix(text)
        if prefix not in _DATE_PREFIXES:
            raise InvalidQuery(f"date: prefix {prefix!r} is not one of {', '.join(_DATE_PREFIXES)}")
        try:
            start, end = date_range(value)
        except ValueError:
            raise InvalidQuery(f"date: {value!r} is not a FHIR date or dateTime") from None
        low = {"eq": start, "ge": start, "gt": end}.get(prefix)
        high = {"eq": end, "le": end, "lt": start}.get(prefix)
        since = low if since is None or (low is not None and low > since) else since
        until = high if until is None or (high is not None and high < until) else until
    return since, until


def _single(args: MultiDict[str, str], name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise InvalidQuery(f"{name}: give it once")
    if values and not values[0]:
        raise InvalidQuery(f"{name}: empty value")
    return values[0] if values else None


def _integer(args: MultiDict[str, str], name: str, default: int, maximum: int) -> int:
    text = _single(args, name)
    if text is None:
        return default
    if not text.isdigit() or int(text) > maximum:
        raise InvalidQuery(f"{name}: an integer from 0 to {maximum}")
    return int(text)


def _subtype(text: str | None) -> str | None:
    if text is None:
        return None
    system, sep, code = text.rpartition("|")
    if sep and system not in (RESTFUL_INTERACTION, DCM):
        raise InvalidQuery(f"subtype: unknown system {system!r}")
    if not _CODE.match(code):
        raise InvalidQuery(f"subtype: {code!r} is not a code")
    return code


def parse_search(args: MultiDict[str, str], org: str | None) -> AuditQuery:
    """An :class:`AuditQuery` from ITI-81 search parameters.

    Raises
    ------
    InvalidQuery
        No ``date``, an unknown parameter, or a value that cannot be understood.
    """
    unknown = sorted(set(args) - SEARCH_PARAMETERS)
    if unknown:
        raise InvalidQuery(f"unsupported search parameter(s): {', '.join(unknown)}")
    if not args.getlist("date"):
        raise InvalidQuery("a date bound is required (IHE ITI-81), e.g. date=ge2025-01-01")
    since, until = date_bounds(args.getlist("date"))
    patient, agent, outcome = _single(args, "patient"), _single(args, "agent"), _single(args, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidQuery(f"outcome: one of {', '.join(OUTCOMES)}")
    return AuditQuery(since=since, until=until, patient=TokenMatch.parse(patient) if patient else None,
                      agent=TokenMatch.parse(agent) if agent else None, subtype=_subtype(_single(args, "subtype")),
                      outcome=outcome, org=org, count=_integer(args, "_count", DEFAULT_COUNT, MAX_COUNT),
                      offset=_integer(args, "_offset", 0, 10**9))


# --- views ------------------------------------------------------------------------------------

def _auditor_org(permission: str) -> str | None:
    """The organisation whose trail the caller may read; 403 without an auditor scope."""
    principal = g.get("principal")
    if principal is None or not principal.scopes.allows("AuditEvent", permission, AUDITOR_CONTEXTS):
        raise Forbidden("reading the audit trail needs user/AuditEvent.rs or system/AuditEvent.rs")
    org: str | None = principal.org
    return org


def _fhir_base() -> str:
    return base_url() + "/fhir"


def _page_url(args: MultiDict[str, str], offset: int) -> str:
    pairs = [(k, v) for k, v in args.items(multi=True) if k != "_offset"] + [("_offset", str(offset))]
    return f"{_fhir_base()}/AuditEvent?{urlencode(pairs)}"


def bundle(page: list[tuple[str, bytes]], total: int, query: AuditQuery,
           args: MultiDict[str, str]) -> dict[str, Any]:
    """A searchset Bundle of stored AuditEvents (their JSON spliced in as it is stored)."""
    links = [{"relation": "self", "url": _page_url(args, query.offset)}]
    if page and query.offset + len(page) < total:
        links.append({"relation": "next", "url": _page_url(args, query.offset + len(page))})
    entries = [{"fullUrl": f"{_fhir_base()}/AuditEvent/{event_id}", "resource": orjson.Fragment(resource),
                "search": {"mode": "match"}} for event_id, resource in page]
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}


@bp.get("/AuditEvent")
def search_audit_events() -> Response:
    """ITI-81 search: a searchset Bundle of the caller's organisation's events."""
    query = parse_search(request.args, _auditor_org("s"))
    page, total = audit_store.search(get_session(), query)
    return Response(orjson.dumps(bundle(page, total, query, request.args)), mimetype=FHIR_JSON)


@bp.get("/AuditEvent/<event_id>")
def read_audit_event(event_id: str) -> Response:
    """One event of the caller's organisation (404 for any other)."""
    resource = audit_store.get(get_session(), event_id, _auditor_org("r"))
    if resource is None:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    return Response(resource, mimetype=FHIR_JSON)


@bp.route("/AuditEvent", methods=["POST", "PUT", "PATCH", "DELETE"])
@bp.route("/AuditEvent/<event_id>", methods=["POST", "PUT", "PATCH", "DELETE"])
def refuse_write(event_id: str | None = None) -> Response:
    """405: the application never creates, changes or deletes an event on request."""
    raise MethodNotAllowed("the audit trail is append-only: AuditEvent is read and searched only",
                           allow=["GET", "HEAD"])


def init_app(app: Flask) -> None:
    """Register the blueprint and declare its scopes to the resource protection.

    A write needs an AuditEvent write scope to reach its 405; without one it is a 403.
    """
    policy.require("fhir_audit.search_audit_events", Requirement("AuditEvent", "s"))
    policy.require("fhir_audit.read_audit_event", Requirement("AuditEvent", "r"))
    policy.require("fhir_audit.refuse_write", Requirement("AuditEvent", "r"))
    app.register_blueprint(bp)
