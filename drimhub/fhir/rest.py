"""The FHIR RESTful interactions (R4 http.html) as one service, used by the views and by bundles.

:func:`perform` takes an :class:`Interaction` (method, type, id, version, query, body and the
conditional headers) and returns a :class:`Result` (status, resource or bundle, and the version
written or read, for ``ETag``/``Last-Modified``/``Location``). The HTTP views
(:mod:`drimhub.fhir.routes`) and each entry of a batch or transaction
(:mod:`drimhub.fhir.bundles`) go through it, so an interaction behaves the same either way.

Decisions (R4 http.html):

- create 201; update 200, or 201 when it created (updateCreate, or a deleted resource brought
  back); delete 204, also for a resource that is already deleted or not known (§delete);
- conditional create (``If-None-Exist``): 0 matches create, 1 match 200 with it, several 412;
  conditional update (``PUT Type?criteria``): 0 create (with the body's id if any, 409 when
  that id exists), 1 update (the body's id, if any, must be the match's: else 400), several
  412; conditional delete: 0 or 1 match, several 412 (§cond-update, §cdelete). The match is a
  search: a conditional create shows the match's body only to a token that may search the type
  (else 200 with Location and ETag only), a conditional update or delete needs that grant (403);
  criteria without any search parameter, or with result parameters, are a 400;
- ``If-Match`` with a stale version: 412 (§concurrency);
- patch: JSON Patch (RFC 6902); a patch that changes ``id`` or ``resourceType`` or leaves an
  invalid resource is a 422;
- derived types (ImagingStudy, Endpoint) answer reads and searches only; any write is a 405
  ("read-only: its truth is DICOM").
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jsonpatch
import orjson
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from drimhub.errors import Conflict, Forbidden, InvalidQuery, InvalidRequest, MethodNotAllowed, NotFound, PreconditionFailed, Unprocessable
from drimhub.fhir import locks, resources
from drimhub.fhir.dates import date_range
from drimhub.fhir.registry import ResourceType, resource_type
from drimhub.fhir.resources import Stored, instant
from drimhub.store import fhir as rows
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore

DEFAULT_HISTORY_COUNT = 50
MAX_HISTORY_COUNT = 500
#: SMART permission letter of each interaction (history of a type is a search of it).
PERMISSIONS = {"read": "r", "vread": "r", "history-instance": "r", "search-type": "s", "history-type": "s",
               "create": "c", "update": "u", "patch": "u", "delete": "d"}
_METHODS_OF = {"read": "GET", "update": "PUT", "patch": "PATCH", "delete": "DELETE"}
_TYPE_METHODS_OF = {"search-type": "GET", "create": "POST", "update": "PUT", "delete": "DELETE"}


@dataclass(frozen=True)
class Context:
    """Who asks, and where: the session of the request (or of the bundle), the blob store, the
    caller's organisation and access, and the node's FHIR and DICOMweb base URLs.

    ``authorize(type, letter)`` tells what else the caller may do (its access, or Forbidden):
    a conditional interaction's match is a search, which the token must also be granted
    (:func:`may_search`). Without it, nothing more is granted (fail closed)."""

    session: Session
    blobs: FileBlobStore
    org: str
    access: Access
    base: str
    dicomweb_base: str
    authorize: Callable[[str, str], Access] | None = None


@dataclass(frozen=True)
class Interaction:
    """One RESTful request, from the URL and headers of a view or from a bundle entry."""

    method: str
    type: str
    id: str | None = None
    version: str | None = None
    history: bool = False
    query: str | None = None
    body: Any = None
    if_match: str | None = None
    if_none_exist: str | None = None
    strict: bool = False
    #: Id of a create, assigned beforehand (a transaction resolving ``urn:uuid`` references).
    assigned_id: str | None = None
    #: A read standing for a transaction's conditional create that matched (answered as one).
    existing: bool = False

    @property
    def name(self) -> str:
        """The R4 interaction code (``read``, ``vread``, ``update``, ``search-type``...)."""
        if self.id is None:
            if self.history:
                return "history-type"
            return {"GET": "search-type", "POST": "create", "PUT": "update", "DELETE": "delete"}.get(
                self.method, "unknown")
        if self.version is not None:
            return "vread"
        if self.history:
            return "history-instance"
        return {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(self.method, "unknown")


@dataclass
class Result:
    """What an interaction produced: status, body, and the version behind it."""

    status: int
    body: dict[str, Any] | None = None
    stored: Stored | None = None
    headers: dict[str, str] = field(default_factory=dict)


def permission(interaction: Interaction) -> str:
    """The SMART permission letter the interaction needs."""
    return PERMISSIONS.get(interaction.name, "r")


def allowed_methods(rtype: ResourceType, instance: bool) -> list[str]:
    """The HTTP methods of the instance (or type) URL of ``rtype`` (the ``Allow`` of a 405)."""
    table = _METHODS_OF if instance else _TYPE_METHODS_OF
    methods = [m for name, m in table.items() if name in rtype.interactions]
    return sorted(set(methods + (["HEAD"] if "GET" in methods else [])))


def served_type(name: str) -> ResourceType:
    """The served type ``name``.

    Raises
    ------
    NotFound
        Not a type this server serves (issue code not-supported).
    """
    rtype = resource_type(name)
    if rtype is None:
        raise _not_supported(name)
    return rtype


def _not_supported(name: str) -> NotFound:
    error = NotFound(f"resource type {name!r} is not supported by this server")
    error.issue_code = "not-supported"
    return error


# --- the interactions -------------------------------------------------------------------------

def perform(ctx: Context, it: Interaction) -> Result:
    """Carry out one interaction (the caller has checked the scopes and commits the session).

    Raises
    ------
    DrimhubError
        Per the interaction: 400, 404, 405, 409, 410, 412, 422 (see the module docstring).
    """
    rtype = served_type(it.type)
    if it.name not in rtype.interactions:
        raise _method_not_allowed(rtype, it)
    handler = _HANDLERS[it.name]
    return handler(ctx, it)


def _method_not_allowed(rtype: ResourceType, it: Interaction) -> MethodNotAllowed:
    allow = allowed_methods(rtype, it.id is not None)
    if rtype.derived:
        message = f"{rtype.name} is read-only: its truth is DICOM (store and delete studies over DICOMweb)" \
            if rtype.name == "ImagingStudy" else f"{rtype.name} is read-only: derived from the node's configuration"
    else:
        message = f"{it.name} is not supported on {rtype.name}"
    return MethodNotAllowed(message, allow=allow)


def _read(ctx: Context, it: Interaction) -> Result:
    assert it.id is not None
    rtype = served_type(it.type)
    if rtype.derived:
        return Result(200, read_derived(ctx, it.type, it.id))
    stored = resources.read(ctx.session, it.type, it.id, ctx.access)
    if it.existing:
        return _existing(ctx, stored)
    return Result(200, stored.content, stored)


def read_derived(ctx: Context, type_: str, id_: str) -> dict[str, Any]:
    """An ImagingStudy or Endpoint, built from what it is derived from."""
    if type_ == "ImagingStudy":
        from drimhub.fhir import imagingstudy
        return imagingstudy.read(ctx.session, id_, ctx.access, ctx.base)
    from drimhub.fhir import endpoints
    return endpoints.read(id_, ctx.dicomweb_base, ctx.base)


def _vread(ctx: Context, it: Interaction) -> Result:
    assert it.id is not None and it.version is not None
    if not it.version.isdigit():
        raise NotFound(f"{it.type}/{it.id}/_history/{it.version} is not known")
    stored = resources.vread(ctx.session, it.type, it.id, int(it.version), ctx.access)
    return Result(200, stored.content, stored)


def _body(it: Interaction) -> dict[str, Any]:
    if not isinstance(it.body, dict):
        raise InvalidRequest("the body must be a FHIR resource (a JSON object)")
    return it.body


def _create(ctx: Context, it: Interaction) -> Result:
    body = localize_references(_body(it), ctx.base)
    resources.validate(body, it.type)
    if it.if_none_exist:
        stored, created = resources.conditional_create(ctx.session, ctx.blobs, body, ctx.org, it.if_none_exist,
                                                       ctx.access)
    else:
        stored, created = resources.create(ctx.session, ctx.blobs, body, ctx.org, id_=it.assigned_id), True
    _check_visible(ctx, stored)
    if not created:
        return _existing(ctx, stored)
    return Result(201, stored.content, stored)


def _existing(ctx: Context, stored: Stored) -> Result:
    """The answer of a conditional create that matched: 200, its ``Location`` and ``ETag``; its
    body only when the token may also search the type. Without that grant, returning the match
    would let a create-only token read any resource (``If-None-Exist: _id=x``) or probe by
    prefix (``name=Sec``); R4 http.html#ccreate lets the 200 come without a body."""
    location = {"Location": f"{ctx.base}/{stored.type}/{stored.id}/_history/{stored.version}"}
    body = stored.content if may_search(ctx, stored.type) else None
    return Result(200, body, stored, headers=location)


def may_search(ctx: Context, type_: str) -> bool:
    """True when the caller's token also grants the search of ``type_``."""
    try:
        return ctx.authorize is not None and ctx.authorize(type_, "s") is not None
    except Forbidden:
        return False


def require_search(ctx: Context, type_: str, what: str) -> None:
    """Refuse (403) a conditional update or delete to a token that may not search ``type_``: its
    match is a search (an update would otherwise overwrite, and a delete remove, resources the
    token cannot find, and their answers would tell whether any match)."""
    if ctx.authorize is None:
        raise Forbidden(f"a conditional {what} needs the search permission on {type_}")
    ctx.authorize(type_, "s")


def _update(ctx: Context, it: Interaction) -> Result:
    body = localize_references(_body(it), ctx.base)
    if it.id is None:
        return _conditional_update(ctx, it, body)
    stored, created = resources.update(ctx.session, ctx.blobs, it.type, it.id, body, ctx.org, ctx.access,
                                       if_match=it.if_match)
    _check_visible(ctx, stored)
    return Result(201 if created else 200, stored.content, stored)


def conditional_target(ctx: Context, type_: str, query: str, body: dict[str, Any]) -> str | None:
    """The id a conditional update ``PUT type_?query`` writes: the one match; with no match, the
    body's id (updateCreate), or None (a create with a new id).

    R4 http.html#cond-update: "No matches, id provided: The server treats the interaction as an
    Update as Create interaction"; an Update as Create of an id that exists is not a create, and
    R5 http.html#cond-update says it outright: "No matches, id provided and already exist: The
    server rejects the update with a 409 Conflict error". Overwriting that resource would let
    criteria that match nothing replace any resource whose id the client knows.

    Raises
    ------
    Forbidden
        The token may not search ``type_`` (:func:`require_search`).
    PreconditionFailed
        Several matches.
    InvalidRequest
        The body's id is not the match's.
    Conflict
        No match, and the body's id is that of an existing resource.
    """
    require_search(ctx, type_, "update")
    ids = match(ctx, type_, query, lock=True)
    if len(ids) > 1:
        raise PreconditionFailed(f"several {type_} resources match {query!r}: be more selective")
    given = body.get("id")
    if ids:
        if given not in (None, ids[0]):
            raise InvalidRequest(f"the body's id {given!r} is not the id of the resource matched ({ids[0]})")
        return ids[0]
    if not given:
        return None
    existing = rows.get(ctx.session, type_, str(given))
    if existing is not None and not existing.deleted:
        raise Conflict(f"nothing matches {query!r} and {type_}/{given} already exists: "
                       "a conditional update does not overwrite a resource its criteria do not match")
    return str(given)


def _conditional_update(ctx: Context, it: Interaction, body: dict[str, Any]) -> Result:
    target = conditional_target(ctx, it.type, it.query or "", body)
    if target is None:
        resources.validate(body, it.type)
        stored = resources.create(ctx.session, ctx.blobs, body, ctx.org, method="PUT")
        _check_visible(ctx, stored)
        return Result(201, stored.content, stored)
    return _update(ctx, Interaction("PUT", it.type, target, body={**body, "id": target}, if_match=it.if_match))


def _patch(ctx: Context, it: Interaction) -> Result:
    assert it.id is not None
    if not isinstance(it.body, list):
        raise InvalidRequest("a JSON Patch is a JSON array of operations (RFC 6902)")
    locks.lock_resource(ctx.session, it.type, it.id)  # no concurrent writer between read and update
    current = resources.read(ctx.session, it.type, it.id, ctx.access)
    try:
        patched = jsonpatch.JsonPatch(it.body).apply(copy.deepcopy(current.content))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise Unprocessable(f"the patch cannot be applied: {exc}") from None
    if not isinstance(patched, dict) or patched.get("resourceType") != it.type or patched.get("id") != it.id:
        raise Unprocessable("a patch may not change the resource's id or resourceType")
    stored, _ = resources.update(ctx.session, ctx.blobs, it.type, it.id, localize_references(patched, ctx.base),
                                 ctx.org, ctx.access, if_match=it.if_match, method="PATCH")
    _check_visible(ctx, stored)
    # the updated resource is the answer, as for any update (R4 http.html#patch, #update: the
    # token holds "u" on the type, which is what a PUT returning its result needs too)
    return Result(200, stored.content, stored)


def _delete(ctx: Context, it: Interaction) -> Result:
    target = it.id
    if target is None:
        require_search(ctx, it.type, "delete")
        ids = match(ctx, it.type, it.query or "", lock=True)
        if len(ids) > 1:
            raise PreconditionFailed(f"several {it.type} resources match {it.query!r}: delete one at a time")
        if not ids:
            return Result(204)
        target = ids[0]
    deleted = resources.delete(ctx.session, it.type, target, ctx.access, if_match=it.if_match)
    result = Result(204, stored=deleted)
    if deleted is not None:
        result.headers["ETag"] = deleted.etag
    return result


def _search(ctx: Context, it: Interaction) -> Result:
    from drimhub.fhir.search import search

    args = MultiDict(parse_qsl(it.query or "", keep_blank_values=True))
    bundle, warnings = search(ctx.session, it.type, args, ctx.access, ctx.base, it.strict)
    if warnings and not any((e.get("search") or {}).get("mode") == "outcome" for e in bundle.get("entry") or []):
        outcome = {"resourceType": "OperationOutcome",
                   "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": w} for w in warnings]}
        bundle.setdefault("entry", []).append({"resource": outcome, "search": {"mode": "outcome"}})
    return Result(200, bundle)


def _history(ctx: Context, it: Interaction) -> Result:
    return Result(200, history_bundle(ctx, it.type, it.id, it.query or ""))


_HANDLERS = {"read": _read, "vread": _vread, "create": _create, "update": _update, "patch": _patch,
             "delete": _delete, "search-type": _search, "history-type": _history, "history-instance": _history}


def _check_visible(ctx: Context, stored: Stored) -> None:
    """A ``patient/`` caller may write only inside its compartment (403 otherwise; the caller rolls back)."""
    if ctx.access.patient is not None and rows.get_visible(ctx.session, stored.type, stored.id, ctx.access) is None:
        raise Forbidden(f"{stored.type}/{stored.id} would be outside the patient compartment of the token")


def match(ctx: Context, type_: str, query: str, *, lock: bool = False) -> list[str]:
    """Ids of ``type_`` matching a search query string (conditional interactions and references):
    none, one, or two standing for several (:func:`drimhub.fhir.search.match_ids`).

    ``lock``: first take :func:`drimhub.fhir.locks.criteria_lock_keys` (a transaction has
    taken them all beforehand, in order: taking them again is free)."""
    from drimhub.fhir.search import match_ids

    query = query.removeprefix(f"{type_}?")
    if not query:
        raise InvalidQuery(f"a conditional interaction on {type_} needs search criteria")
    if lock:
        locks.lock_all(ctx.session, locks.criteria_lock_keys(type_, ctx.org, query))
    return match_ids(ctx.session, type_, query, ctx.access)


# --- history ----------------------------------------------------------------------------------

def history_bundle(ctx: Context, type_: str, id_: str | None, query: str) -> dict[str, Any]:
    """A ``history`` Bundle (R4 http.html#history), newest first, ``_count`` per page, ``_since``.

    Raises
    ------
    NotFound
        Instance history of a resource the caller does not see.
    InvalidQuery
        A bad ``_count``, ``_since`` or page cursor.
    """
    args = MultiDict(parse_qsl(query, keep_blank_values=True))
    if id_ is not None and rows.get_visible(ctx.session, type_, id_, ctx.access) is None:
        raise NotFound(f"{type_}/{id_} is not known")
    count = _int_arg(args, "_count", DEFAULT_HISTORY_COUNT, MAX_HISTORY_COUNT)
    since = _since(args.get("_since"))
    cursor = _int_arg(args, "_cursor", 0, 2**62) or None
    found = rows.history(ctx.session, type_, id_, ctx.access, since=since, count=count + 1, before_pk=cursor)
    page = found[:count]
    url = f"{ctx.base}/{type_}" + (f"/{id_}" if id_ else "") + "/_history"
    keep = [(k, v) for k, v in args.items(multi=True) if k != "_cursor"]
    links = [{"relation": "self", "url": url + ("?" + urlencode(keep) if keep else "")}]
    if len(found) > count:
        links.append({"relation": "next", "url": f"{url}?{urlencode([*keep, ('_cursor', str(page[-1].pk))])}"})
    return {"resourceType": "Bundle", "type": "history", "link": links,
            "entry": [_history_entry(ctx.base, type_, e) for e in page]}


def _history_entry(base: str, type_: str, entry: rows.HistoryEntry) -> dict[str, Any]:
    etag, modified = f'W/"{entry.version}"', instant(entry.last_updated)
    out: dict[str, Any] = {"fullUrl": f"{base}/{type_}/{entry.id}"}
    if entry.content is not None:
        out["resource"] = orjson.loads(entry.content)
    method = entry.method if entry.method in ("POST", "PUT", "PATCH", "DELETE") else "PUT"
    status = "204 No Content" if method == "DELETE" else ("201 Created" if entry.version == 1 else "200 OK")
    out["request"] = {"method": method, "url": type_ if method == "POST" else f"{type_}/{entry.id}"}
    out["response"] = {"status": status, "etag": etag, "lastModified": modified}
    return out


def _int_arg(args: MultiDict[str, str], name: str, default: int, maximum: int) -> int:
    text = args.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) > maximum:
        raise InvalidQuery(f"{name}: an integer from 0 to {maximum}")
    return int(text)


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return date_range(text)[0]
    except ValueError:
        raise InvalidQuery(f"_since: {text!r} is not an instant") from None


# --- references -------------------------------------------------------------------------------

def localize_references(resource: Any, base: str) -> Any:
    """``resource`` with every ``reference`` on this server's FHIR ``base`` made relative (``Type/id``).

    R4 references.html: an absolute URL on the server's own base is the same as the relative one.
    """
    prefix = base.rstrip("/") + "/"
    if isinstance(resource, dict):
        return {k: (v[len(prefix):] if k == "reference" and isinstance(v, str) and v.startswith(prefix)
                    else localize_references(v, base)) for k, v in resource.items()}
    if isinstance(resource, list):
        return [localize_references(v, base) for v in resource]
    return resource
