"""Every ``/fhir`` URL but AuditEvent: registered here, the REST rules live in the services.

One view per URL pattern serves every type (FHIR R4 http.html §"RESTful API"); what differs
between types is the registry (:mod:`drimhub.fhir.registry`) and the services
(:mod:`drimhub.fhir.rest`, :mod:`drimhub.fhir.bundles`, :mod:`drimhub.fhir.binary`).

Media types (http.html §"Content Types and encodings"): JSON only. ``application/fhir+json``
and ``application/json`` (``_format=json``) are served; an ``Accept`` or ``_format`` asking for
XML or anything else is a 406; a write whose Content-Type is not FHIR JSON is a 415 (a raw
Binary and a JSON Patch excepted); a body that is not JSON is a 400. ``Prefer: return=minimal |
representation | OperationOutcome`` shapes a write's answer (representation by default);
``Prefer: handling=strict`` makes unknown search parameters a 400.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import select
from werkzeug.http import http_date
from werkzeug.routing import BaseConverter

from drimhub.errors import InvalidRequest, NotAcceptable, NotFound, PayloadTooLarge, UnsupportedMediaType
from drimhub.fhir import binary, bundles, rest
from drimhub.fhir.resources import Stored
from drimhub.fhir.rest import Context, Interaction, Result
from drimhub.mappings.identifiers import issuer_for_system
from drimhub.server import auditctx
from drimhub.server.auth import policy
from drimhub.server.auth.policy import FROM_URL, PER_ENTRY, Requirement
from drimhub.server.db import get_session, resources
from drimhub.server.urls import base_url
from drimhub.store.engine import with_retries
from drimhub.store.models import FhirResource, Study

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
_FORMATS = ("json", "application/json", "application/fhir+json", "application/json+fhir")


class TypeConverter(BaseConverter):
    """A resource type name (R4: an upper-case letter, then letters)."""

    regex = r"[A-Z][A-Za-z]{0,63}"


class IdConverter(BaseConverter):
    """A logical id (R4 datatypes.html#id: ``[A-Za-z0-9\\-\\.]{1,64}``)."""

    regex = r"[A-Za-z0-9\-.]{1,64}"


# --- request and response ---------------------------------------------------------------------

def fhir_base() -> str:
    """The FHIR base URL of the node."""
    return base_url() + "/fhir"


def _context(session: Any, access: Any = None) -> Context:
    return Context(session, resources().blobs, policy.current_principal().org,
                   policy.current_access() if access is None else access, fhir_base(), base_url() + "/dicom-web",
                   authorize=policy.authorize_entry)


def check_accept() -> None:
    """406 unless the client accepts FHIR JSON (``_format`` first, then ``Accept``)."""
    fmt = request.args.get("_format")
    if fmt is not None:
        if fmt not in _FORMATS:
            raise NotAcceptable(f"_format={fmt}: this server speaks JSON only (application/fhir+json)")
        return
    accept = request.accept_mimetypes
    if accept and not any(accept[m] for m in (FHIR_JSON, "application/json", "application/json+fhir")):
        raise NotAcceptable("this server speaks JSON only: accept application/fhir+json or application/json")


def _json_body(patch: bool = False) -> Any:
    """The request body as JSON, after checking its Content-Type (415) and syntax (400)."""
    mimetype = request.mimetype
    if patch and mimetype != JSON_PATCH:
        raise UnsupportedMediaType(f"PATCH takes {JSON_PATCH} (RFC 6902), not {mimetype or 'no Content-Type'}")
    if not patch and not binary.is_fhir_json(mimetype):
        raise UnsupportedMediaType(f"send {FHIR_JSON} (this server speaks JSON only), not {mimetype or 'nothing'}")
    try:
        return orjson.loads(_capped_body())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None


def _capped_body() -> bytes:
    """The request body, at most ``FHIR_MAX_BODY`` bytes: a larger ``Content-Length`` is refused
    before anything is read, a chunked body as soon as it passes the cap (413). Flask's global
    ``MAX_CONTENT_LENGTH`` is not used: STOW-RS takes far larger streamed bodies."""
    cap = int(current_app.config["FHIR_MAX_BODY"])
    too_large = PayloadTooLarge(f"a FHIR request body is at most {cap} bytes (DRIMHUB_FHIR_MAX_BODY); "
                                "send documents as a raw Binary")
    if request.content_length is not None and request.content_length > cap:
        raise too_large
    chunks, total = [], 0
    while chunk := request.stream.read(min(1 << 20, cap + 1 - total)):
        total += len(chunk)
        if total > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _prefer(name: str) -> str | None:
    for part in request.headers.get("Prefer", "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key.strip() == name:
                return value.strip().strip('"')
    return None


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON answer."""
    return Response(orjson.dumps(body) if body is not None else b"", status=status,
                    mimetype=FHIR_JSON if body is not None else None, headers=headers)


def version_headers(stored: Stored, status: int) -> dict[str, str]:
    """``ETag``, ``Last-Modified`` and, on a creation, ``Location`` (http.html#create, #versioning)."""
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}
    if status == 201 or request.method in ("PUT", "PATCH"):
        location = f"{fhir_base()}/{stored.type}/{stored.id}/_history/{stored.version}"
        headers["Location" if status == 201 else "Content-Location"] = location
    return headers


def _answer(result: Result, write: bool = False) -> Response:
    headers = dict(result.headers)
    if result.stored is not None and result.status != 204:
        headers.update(version_headers(result.stored, result.status))
    elif result.body is not None:  # a derived resource (ImagingStudy): its meta says it
        meta = result.body.get("meta") or {}
        if version := meta.get("versionId"):
            headers["ETag"] = f'W/"{version}"'
        if updated := meta.get("lastUpdated"):
            try:
                headers["Last-Modified"] = http_date(datetime.fromisoformat(str(updated)))
            except ValueError:
                pass
    body = result.body if result.status != 204 else None
    if write and body is not None:
        prefer = _prefer("return")
        if prefer == "minimal":
            body = None
        elif prefer == "OperationOutcome":
            body = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational",
                 "diagnostics": f"{request.method} {request.path}: {result.status}"}]}
    return fhir_response(body, result.status, headers)


def _run(it: Interaction, write: bool) -> Response:
    if write:
        def work(session: Any) -> Result:
            done = rest.perform(_context(session), it)
            _involve(session, done.body)
            return done
        result = with_retries(resources().sessions, work, f"FHIR {it.method} {it.type}")
    else:
        session = get_session()
        result = rest.perform(_context(session), it)
        _involve(session, result.body)
    return _answer(result, write)


def _interaction(method: str, type_: str, id_: str | None = None, **kwargs: Any) -> Interaction:
    return Interaction(method, type_, id_, if_match=request.headers.get("If-Match"),
                       query=request.query_string.decode("latin-1") or None, **kwargs)


# --- audit: the patients a request involves (IHE BALP, drimhub.server.audit) -------------------

def _patient_identifier(content: dict[str, Any]) -> tuple[str | None, str | None]:
    for ident in content.get("identifier") or []:
        if ident.get("value"):
            return ident["value"], issuer_for_system(ident.get("system"))
    return None, None


def _involve(session: Any, body: dict[str, Any] | None) -> None:
    """Note the patients of the resources in ``body`` (a resource or a Bundle) for the audit."""
    if not body:
        return
    found = [e.get("resource") or {} for e in body.get("entry") or []] if body.get("resourceType") == "Bundle" \
        else [body]
    patients: set[str] = set()
    for res in found:
        kind = res.get("resourceType")
        if kind == "Patient":
            value, issuer = _patient_identifier(res)
            auditctx.involve(value, None, issuer)
        elif kind in ("DiagnosticReport", "ImagingStudy"):
            ref = (res.get("subject") or {}).get("reference") or ""
            if ref.startswith("Patient/"):
                patients.add(ref.split("/", 1)[1])
    if patients:
        query = select(FhirResource.content).where(FhirResource.type == "Patient", FhirResource.id.in_(patients))
        for content in session.scalars(query):
            value, issuer = _patient_identifier(orjson.loads(content) if content else {})
            auditctx.involve(value, None, issuer)
    studies = [r["id"] for r in found if r.get("resourceType") == "ImagingStudy" and r.get("id")]
    if studies:
        query = select(Study.patient_id, Study.issuer_of_patient_id, Study.study_uid).where(Study.study_uid.in_(studies))
        for patient_id, issuer, uid in session.execute(query):
            auditctx.involve(patient_id, uid, issuer)


# --- the views --------------------------------------------------------------------------------

@bp.get("/metadata")
def metadata() -> Response:
    """The CapabilityStatement (public: SMART clients read it before they have a token)."""
    from drimhub.conformance.fhir import capability_statement

    check_accept()
    return fhir_response(capability_statement(fhir_base()))


@bp.get("/SearchParameter")
def search_parameters() -> Response:
    """The SearchParameter resources of this server's own parameters, as a searchset."""
    from drimhub.conformance.fhir import search_parameters as published

    check_accept()
    found = published()
    entries = [{"fullUrl": f"{fhir_base()}/SearchParameter/{p['id']}", "resource": p, "search": {"mode": "match"}}
               for p in found]
    return fhir_response({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                          "link": [{"relation": "self", "url": f"{fhir_base()}/SearchParameter"}], "entry": entries})


@bp.get("/SearchParameter/<fhirid:id_>")
def search_parameter(id_: str) -> Response:
    """One SearchParameter of this server."""
    from drimhub.conformance.fhir import search_parameters as published

    check_accept()
    for param in published():
        if param.get("id") == id_:
            return fhir_response(param)
    raise NotFound(f"SearchParameter/{id_} is not known")


@bp.get("/<fhirtype:type_>")
@bp.post("/<fhirtype:type_>/_search")
def search(type_: str) -> Response:
    """search-type (GET, or POST with a form body: http.html#search)."""
    check_accept()
    query = request.query_string.decode("latin-1")
    if request.method == "POST":
        if request.mimetype != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded parameters")
        form = _capped_body().decode("utf-8", "replace")
        query = "&".join(q for q in (query, form) if q)
    strict = _prefer("handling") == "strict"
    return _federated(type_, query, _run(Interaction("GET", type_, query=query, strict=strict), write=False))


def _federated(type_: str, query: str, response: Response) -> Response:
    """``ImagingStudy?...&_federated=true``: the peers' results added (drimhub.federation.fhir_search)."""
    from drimhub.federation import fhir_search

    pairs = parse_qsl(query, keep_blank_values=True)
    if response.status_code != 200 or not fhir_search.requested(type_, pairs):
        return response
    from drimhub.federation.routes import federated_fhir

    response.set_data(orjson.dumps(federated_fhir(orjson.loads(response.get_data()), pairs)))
    return response


@bp.post("/<fhirtype:type_>")
def create(type_: str) -> Response:
    """create, conditional create (``If-None-Exist``), and a raw Binary."""
    check_accept()
    if type_ == "Binary" and not binary.is_fhir_json(request.mimetype):
        if not request.mimetype:
            raise UnsupportedMediaType("a raw Binary needs the Content-Type of its bytes")
        stored = binary.create_raw(resources().sessions, resources().blobs, request.mimetype, request.stream,
                                   policy.current_principal().org)
        return _answer(Result(201, stored.content, stored), write=True)
    body = _json_body()
    return _run(_interaction("POST", type_, body=body, if_none_exist=request.headers.get("If-None-Exist")),
                write=True)


@bp.put("/<fhirtype:type_>")
def conditional_update(type_: str) -> Response:
    """conditional update: ``PUT Type?criteria`` (http.html#cond-update)."""
    check_accept()
    return _run(_interaction("PUT", type_, body=_json_body()), write=True)


@bp.delete("/<fhirtype:type_>")
def conditional_delete(type_: str) -> Response:
    """conditional delete: one match at most (http.html#cdelete)."""
    check_accept()
    return _run(_interaction("DELETE", type_), write=True)


@bp.get("/<fhirtype:type_>/<fhirid:id_>")
def read(type_: str, id_: str) -> Response:
    """read (a Binary: raw bytes or JSON by ``Accept``)."""
    if type_ == "Binary":
        return _binary(id_, None)
    check_accept()
    return _run(Interaction("GET", type_, id_), write=False)


@bp.get("/<fhirtype:type_>/<fhirid:id_>/_history/<vid>")
def vread(type_: str, id_: str, vid: str) -> Response:
    """vread."""
    if type_ == "Binary":
        return _binary(id_, vid)
    check_accept()
    return _run(Interaction("GET", type_, id_, version=vid), write=False)


@bp.put("/<fhirtype:type_>/<fhirid:id_>")
def update(type_: str, id_: str) -> Response:
    """update, or create with this id (updateCreate)."""
    check_accept()
    return _run(_interaction("PUT", type_, id_, body=_json_body()), write=True)


@bp.patch("/<fhirtype:type_>/<fhirid:id_>")
def patch(type_: str, id_: str) -> Response:
    """patch (JSON Patch, RFC 6902)."""
    check_accept()
    return _run(_interaction("PATCH", type_, id_, body=_json_body(patch=True)), write=True)


@bp.delete("/<fhirtype:type_>/<fhirid:id_>")
def delete(type_: str, id_: str) -> Response:
    """delete."""
    check_accept()
    return _run(_interaction("DELETE", type_, id_), write=True)


@bp.get("/<fhirtype:type_>/<fhirid:id_>/_history")
def history_instance(type_: str, id_: str) -> Response:
    """history of one resource."""
    check_accept()
    return _run(_interaction("GET", type_, id_, history=True), write=False)


@bp.get("/<fhirtype:type_>/_history")
def history_type(type_: str) -> Response:
    """history of a type."""
    check_accept()
    return _run(_interaction("GET", type_, history=True), write=False)


@bp.post("")
@bp.post("/")
def transaction() -> Response:
    """batch or transaction (http.html#transaction): each entry authorised on its own."""
    check_accept()
    body = _json_body()
    result = bundles.process(body, resources().sessions, _context, policy.authorize_entry,
                             return_preference=_prefer("return"), base=fhir_base())
    with resources().sessions() as session:
        _involve(session, {"resourceType": "Bundle", "entry": [
            {"resource": (e.get("resource") or {})} for e in result.get("entry") or []]})
    return fhir_response(result)


def _binary(id_: str, vid: str | None) -> Response:
    """A Binary: raw bytes streamed, or the resource as JSON (binary.html)."""
    fmt = request.args.get("_format")
    if fmt is not None:
        check_accept()
    session = get_session()
    it = Interaction("GET", "Binary", id_, version=vid)
    stored = rest.perform(_context(session), it).stored
    assert stored is not None
    content_type = str(stored.content.get("contentType") or "application/octet-stream")
    accepted = [m for m, _q in request.accept_mimetypes]
    headers = version_headers(stored, 200)
    if binary.wants_resource(accepted, content_type, fmt):
        return fhir_response(binary.as_resource(resources().blobs, stored), 200, headers)
    chunks, size = binary.raw(resources().blobs, stored)
    headers["Content-Length"] = str(size)
    # stored bytes are the client's: never sniffed into another type, and an HTML or SVG
    # document does not run scripts in the node's origin (it would hold the reader's session)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Content-Security-Policy"] = "sandbox"
    return Response(chunks, status=200, content_type=content_type, headers=headers, direct_passthrough=True)


# --- registration -----------------------------------------------------------------------------

#: View → what its token must grant (the type comes from the URL: :data:`policy.FROM_URL`).
_RULES = {
    "search": Requirement(FROM_URL, "s"), "history_type": Requirement(FROM_URL, "s"),
    "read": Requirement(FROM_URL, "r"), "vread": Requirement(FROM_URL, "r"),
    "history_instance": Requirement(FROM_URL, "r"),
    "create": Requirement(FROM_URL, "c"),
    "update": Requirement(FROM_URL, "u"), "conditional_update": Requirement(FROM_URL, "u"),
    "patch": Requirement(FROM_URL, "u"),
    "delete": Requirement(FROM_URL, "d"), "conditional_delete": Requirement(FROM_URL, "d"),
    "transaction": Requirement(PER_ENTRY),
    "search_parameters": Requirement("SearchParameter", "s"), "search_parameter": Requirement("SearchParameter", "r"),
}


def init_app(app: Flask) -> None:
    """Register the FHIR blueprints and declare their scopes."""
    app.url_map.converters["fhirtype"] = TypeConverter
    app.url_map.converters["fhirid"] = IdConverter
    for view, requirement in _RULES.items():
        policy.require(f"fhir.{view}", requirement)
    app.register_blueprint(bp)
