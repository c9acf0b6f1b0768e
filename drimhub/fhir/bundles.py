"""Batch and transaction Bundles (FHIR R4 http.html#transaction, bundle.html).

transaction
    ONE write transaction, all or nothing: the first failing entry rolls everything back and its
    error is the answer (its OperationOutcome names ``Bundle.entry[i]``). First the locks of
    every conditional entry are taken, all at once and in one order (two transactions with the
    same entries in another order wait for each other instead of deadlocking); a transaction
    that still meets a deadlock or a busy database is run again whole
    (:func:`drimhub.store.engine.with_retries`). Entries are processed DELETE, POST, PUT/PATCH,
    then GET (http.html#trules). After the DELETEs and before any other write, every POST's
    identity is decided (an ``ifNoneExist`` match, else a new id) and every conditional PUT's
    target is found, so that ``fullUrl`` ``urn:uuid:`` references anywhere in the other entries
    are rewritten to ``Type/id``; conditional references (``Patient?identifier=s|v``,
    ``ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3``) are resolved by search: no match is
    a 404, several a 412 (R4 http.html#trules "Conditional References": "If there are no
    matches, or multiple matches, the transaction fails"). A token that may not carry out one
    entry refuses the whole transaction (403).
batch
    Each entry on its own (its own transaction; a GET a plain read session, its ``_count`` at
    most :data:`MAX_ENTRY_COUNT`); an entry's error is its ``response.outcome``.

At most :data:`MAX_ENTRIES` entries (413 beyond). The answer is a ``transaction-response`` or
``batch-response`` Bundle, entries in the order of the request, each with ``response.status``,
``location``, ``etag``, ``lastModified`` (and the resource unless ``Prefer: return=minimal``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from sqlalchemy.orm import Session, sessionmaker

from drimhub.errors import DrimhubError, InvalidRequest, NotFound, PayloadTooLarge, PreconditionFailed
from drimhub.fhir import locks, resources, rest
from drimhub.fhir.resources import instant
from drimhub.fhir.rest import Context, Interaction, Result
from drimhub.store.access import Access
from drimhub.store.engine import with_retries

MAX_ENTRIES = 500
#: Largest ``_count`` of a search or history entry (a Bundle of 500 searches must stay bounded).
MAX_ENTRY_COUNT = 100
#: Processing order of a transaction (R4 http.html#trules).
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_CONDITIONAL_REF = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")

ContextFactory = Callable[[Session, Access], Context]
Authorizer = Callable[[str, str], Access]


@dataclass(frozen=True)
class Entry:
    """One entry of the request Bundle, parsed."""

    index: int
    full_url: str | None
    it: Interaction
    access: Access | None = None


def process(bundle: Any, sessions: sessionmaker[Session], make_context: ContextFactory, authorize: Authorizer,
            return_preference: str | None = None, base: str | None = None) -> dict[str, Any]:
    """Carry out a batch or transaction Bundle; the response Bundle.

    ``base`` is the node's FHIR base URL: an entry's absolute ``request.url`` must be on it.

    Raises
    ------
    InvalidRequest
        Not a batch or transaction Bundle, or (transaction) an entry that cannot be understood.
    PayloadTooLarge
        More than :data:`MAX_ENTRIES` entries.
    DrimhubError
        (transaction) the error of the first failing entry; nothing is written.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidRequest("POST to the base takes a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise InvalidRequest(f"Bundle.type must be batch or transaction, not {kind!r}")
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        raise InvalidRequest("Bundle.entry must be an array")
    if len(raw) > MAX_ENTRIES:
        raise PayloadTooLarge(f"a Bundle has at most {MAX_ENTRIES} entries ({len(raw)} sent)")
    minimal = return_preference == "minimal"
    if kind == "transaction":
        entries = [_authorized(_parse(i, e, base), authorize) for i, e in enumerate(raw)]
        results = _transaction(entries, sessions, make_context, authorize)
        responses = [_response_entry(results[e.index], minimal) for e in entries]
    else:
        responses = [_batch_entry(i, e, sessions, make_context, authorize, minimal, base) for i, e in enumerate(raw)]
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": responses}


# --- parsing ----------------------------------------------------------------------------------

def _parse(index: int, entry: Any, base: str | None = None) -> Entry:
    """An entry's interaction from ``request.method`` / ``request.url`` and its resource."""
    try:
        request = entry["request"]
        method, url = str(request["method"]).upper(), str(request["url"])
    except (KeyError, TypeError):
        raise _at(InvalidRequest("an entry needs request.method and request.url"), index, None) from None
    parts = urlsplit(url)
    path = parts.path
    if parts.scheme or parts.netloc:
        own = urlsplit((base or "").rstrip("/") + "/")
        if not base or (parts.scheme, parts.netloc) != (own.scheme, own.netloc) or not path.startswith(own.path):
            raise _at(InvalidRequest(f"request.url {url} is not on this server's FHIR base ({base})"), index, None)
        path = path[len(own.path):]
    segments = [s for s in path.strip("/").split("/") if s]
    query = parts.query or None
    if method in ("GET", "HEAD") and query:
        query = _capped_count(query)
    it: Interaction | None = None
    body = entry.get("resource")
    if method == "PATCH" and isinstance(body, dict) and body.get("resourceType") == "Binary":
        body = _json_patch_of(body)
    if segments and method in _ORDER:
        type_, rest_ = segments[0], segments[1:]
        common = {"query": query, "body": body, "if_match": request.get("ifMatch"),
                  "if_none_exist": request.get("ifNoneExist")}
        if not rest_:
            it = Interaction(method, type_, **common)
        elif rest_ == ["_history"]:
            it = Interaction(method, type_, history=True, **common)
        elif len(rest_) == 1:
            it = Interaction(method, type_, rest_[0], **common)
        elif len(rest_) == 2 and rest_[1] == "_history":
            it = Interaction(method, type_, rest_[0], history=True, **common)
        elif len(rest_) == 3 and rest_[1] == "_history":
            it = Interaction(method, type_, rest_[0], version=rest_[2], **common)
    if it is None or it.name == "unknown":
        raise _at(InvalidRequest(f"cannot understand request {method} {url}"), index, None)
    return Entry(index, entry.get("fullUrl"), it)


def _capped_count(query: str) -> str:
    """``query`` with ``_count`` at most :data:`MAX_ENTRY_COUNT`."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k == "_count" and v.isdigit() and int(v) > MAX_ENTRY_COUNT for k, v in pairs):
        return query
    return urlencode([(k, str(MAX_ENTRY_COUNT) if k == "_count" and v.isdigit() and int(v) > MAX_ENTRY_COUNT
                       else v) for k, v in pairs])


def _json_patch_of(binary: dict[str, Any]) -> Any:
    """The JSON Patch a Binary entry carries (R4 http.html#patch: patches in bundles are Binaries)."""
    try:
        return orjson.loads(base64.b64decode(str(binary.get("data", ""))))
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidRequest("a PATCH entry's Binary must hold a JSON Patch in base64 data") from None


def _authorized(entry: Entry, authorize: Authorizer) -> Entry:
    try:
        return replace(entry, access=authorize(entry.it.type, rest.permission(entry.it)))
    except DrimhubError as exc:
        raise _at(exc, entry.index, entry.it) from None


def _at(exc: DrimhubError, index: int, it: Interaction | None) -> DrimhubError:
    """``exc`` with the entry it is about in front of its message."""
    where = f"Bundle.entry[{index}]" + (f" ({it.method} {it.type}{'/' + it.id if it.id else ''})" if it else "")
    exc.message = f"{where}: {exc.message}"
    exc.args = (exc.message,)
    return exc


# --- transaction ------------------------------------------------------------------------------

def _transaction(entries: list[Entry], sessions: sessionmaker[Session], make_context: ContextFactory,
                 authorize: Authorizer) -> dict[int, Result]:
    return with_retries(sessions, lambda session: _run_transaction(session, entries, make_context, authorize),
                        f"FHIR transaction of {len(entries)} entries")


def _run_transaction(session: Session, entries: list[Entry], make_context: ContextFactory,
                     authorize: Authorizer) -> dict[int, Result]:
    results: dict[int, Result] = {}
    current: Entry | None = None

    def ctx(entry: Entry) -> Context:
        return make_context(session, entry.access)  # type: ignore[arg-type]

    try:
        # every conditional entry's locks, computed from its criteria text, in one sorted pass
        keys = [k for entry in entries for k in _lock_keys(entry.it, ctx(entry).org)]
        locks.lock_all(session, keys)
        for current in entries:  # DELETE first: a POST or PUT after it matches what it left
            if current.it.method == "DELETE":
                results[current.index] = rest.perform(ctx(current), current.it)
        mapping: dict[str, str] = {}
        identified = [_identify(current, ctx(current), mapping)
                      for current in entries if current.it.method != "DELETE"]
        planned = []
        for current in identified:
            body = _rewrite(current.it.body, mapping, session, make_context, authorize)
            planned.append(replace(current, it=replace(current.it, body=body)))
        for current in sorted(planned, key=lambda e: _ORDER[e.it.method]):
            results[current.index] = rest.perform(ctx(current), current.it)
    except DrimhubError as exc:
        raise _at(exc, current.index, current.it) if current else exc from None
    return results


def _lock_keys(it: Interaction, org: str) -> list[str]:
    """The locks a conditional entry takes (:func:`drimhub.fhir.locks.criteria_lock_keys`)."""
    if it.id is not None:
        return []
    if it.method == "POST" and it.if_none_exist:
        return locks.criteria_lock_keys(it.type, org, it.if_none_exist)
    if it.method in ("PUT", "DELETE") and it.query:
        return locks.criteria_lock_keys(it.type, org, it.query)
    return []


def _identify(entry: Entry, ctx: Context, mapping: dict[str, str]) -> Entry:
    """Decide the id a POST or conditional PUT will have, recording ``fullUrl`` → ``Type/id``."""
    it = entry.it
    target: str | None = None
    if it.method == "POST" and it.id is None:
        if it.if_none_exist:
            ids = rest.match(ctx, it.type, it.if_none_exist, lock=True)
            if len(ids) > 1:
                raise PreconditionFailed(f"ifNoneExist: several {it.type} resources match {it.if_none_exist!r}")
            if ids:
                target = ids[0]
                # the existing one is the answer: 200, its body only to a token that may search
                it = Interaction("GET", it.type, target, existing=True)
        if target is None:
            target = resources.new_id()
            it = replace(it, if_none_exist=None, assigned_id=target)
    elif it.method == "PUT" and it.id is None:
        body = it.body if isinstance(it.body, dict) else {}
        target = rest.conditional_target(ctx, it.type, it.query or "", body) or resources.new_id()
        it = replace(it, id=target, query=None, body={**body, "id": target})
    elif it.method in ("PUT", "PATCH") and it.id is not None:
        target = it.id
    if target is not None and entry.full_url:
        mapping[entry.full_url] = f"{it.type}/{target}"
    return replace(entry, it=it)


def _rewrite(node: Any, mapping: dict[str, str], session: Session, make_context: ContextFactory,
             authorize: Authorizer) -> Any:
    """``node`` with ``fullUrl`` references replaced and conditional references resolved."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and (match := _CONDITIONAL_REF.match(value)):
                out[key] = _resolve(match.group(1), match.group(2), session, make_context, authorize)
            else:
                out[key] = _rewrite(value, mapping, session, make_context, authorize)
        return out
    if isinstance(node, list):
        return [_rewrite(v, mapping, session, make_context, authorize) for v in node]
    if isinstance(node, str) and node in mapping:
        return mapping[node]
    return node


def _resolve(type_: str, query: str, session: Session, make_context: ContextFactory, authorize: Authorizer) -> str:
    ctx = make_context(session, authorize(type_, "s"))
    ids = rest.match(ctx, type_, query)
    if not ids:
        raise NotFound(f"conditional reference {type_}?{query} matches nothing")
    if len(ids) > 1:
        raise PreconditionFailed(f"conditional reference {type_}?{query} matches several resources")
    return f"{type_}/{ids[0]}"


# --- batch ------------------------------------------------------------------------------------

def _batch_entry(index: int, raw: Any, sessions: sessionmaker[Session], make_context: ContextFactory,
                 authorize: Authorizer, minimal: bool, base: str | None = None) -> dict[str, Any]:
    try:
        entry = _authorized(_parse(index, raw, base), authorize)
        if entry.it.method in ("GET", "HEAD"):
            with sessions() as session:  # a read: no write lock
                result = rest.perform(make_context(session, entry.access), entry.it)  # type: ignore[arg-type]
        else:
            result = with_retries(sessions, lambda session: rest.perform(
                make_context(session, entry.access), entry.it), f"FHIR batch entry {index}")  # type: ignore[arg-type]
    except DrimhubError as exc:
        outcome = {"resourceType": "OperationOutcome",
                   "issue": [{"severity": "error", "code": exc.issue_code, "diagnostics": exc.message}]}
        return {"response": {"status": _status(exc.http_status), "outcome": outcome}}
    return _response_entry(result, minimal)


# --- response entries -------------------------------------------------------------------------

def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _response_entry(result: Result, minimal: bool) -> dict[str, Any]:
    response: dict[str, Any] = {"status": _status(result.status)}
    entry: dict[str, Any] = {}
    stored = result.stored
    if stored is not None and result.status != 204:
        response.update(location=f"{stored.type}/{stored.id}/_history/{stored.version}", etag=stored.etag,
                        lastModified=instant(stored.last_updated))
    if result.body is not None and result.status != 204 and not minimal:
        entry["resource"] = result.body
    entry["response"] = response
    return entry
