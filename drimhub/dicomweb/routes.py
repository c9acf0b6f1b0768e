"""Every DICOMweb URL, registered under its PS3.18 section; the views stay thin.

Views turn the request into service calls and the service results into responses; the protocol
rules live in :mod:`stow`, :mod:`qido` and :mod:`wado`. Each view passes the caller's
:class:`~drimhub.store.access.Access` (set by :mod:`drimhub.server.auth.policy` before the view
runs) to the services, and notes every study it touches for the audit (:func:`auditctx.involve`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Blueprint, Flask, Response, current_app, request

from drimhub.dicomweb import delete, qido, rendered, wado, xml
from drimhub.dicomweb.query import Level, parse_query
from drimhub.dicomweb.stow import StoreService
from drimhub.jobs.rules import after_store
from drimhub.sharing import retention
from drimhub.server import auditctx, urls
from drimhub.server.auth import policy
from drimhub.server.auth.policy import Requirement, current_access, current_principal
from drimhub.server.db import get_session, resources
from drimhub.server.ops import STOW_INSTANCES
from drimhub.store.access import Access
from drimhub.store.retrieve import StoredInstance

bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")

DICOM_JSON = "application/dicom+json"


def base_url() -> str:
    """Public URL of the DICOMweb root, without a trailing slash."""
    return f"{urls.base_url()}/dicom-web"


def dicom_json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype=DICOM_JSON)


# --- PS3.18 §10.5 Store Instances (STOW-RS) -------------------------------------------------

def store(study: str | None = None) -> Response:
    res, access = resources(), current_access()
    service = StoreService(res.sessions, res.blobs, overwrite=current_app.config["STOW_DUPLICATE_POLICY"] == "overwrite",
                           org=current_principal().org, patient=access.patient,
                           node=retention.node_url(current_app.config))
    result = service.store_request(request.stream, request.headers.get("Content-Type"), study)
    for patient, issuer, study_uid in sorted(result.touched, key=str):
        auditctx.involve(patient, study_uid, issuer)
    STOW_INSTANCES.labels("stored").inc(len(result.referenced))
    STOW_INSTANCES.labels("failed").inc(len(result.failed))
    if result.studies:
        after_store(res, result.studies)  # the pushes the push rules ask for (drimhub.jobs)
    return dicom_json(result.to_dicom_json(base_url(), study), result.http_status)


bp.add_url_rule("/studies", "store", store, methods=["POST"])
bp.add_url_rule("/studies/<uid:study>", "store_study", store, methods=["POST"])


# --- PS3.18 §10.6 Search (QIDO-RS) ----------------------------------------------------------

def search(level: str, study: str | None = None, series: str | None = None) -> Response:
    media_type = qido.response_media_type(_accept())
    expr = parse_query(Level[level.upper()], request.args, study, series)
    result = qido.search(get_session(), expr, base_url(), current_app.config["QIDO_MAX_RESULTS"], current_access())
    return search_answer(result, media_type)


def search_answer(result: qido.SearchResult, media_type: str) -> Response:
    """A QIDO-RS answer: the studies it touched noted for the audit, the matches in ``media_type``
    (DICOM JSON, or multipart DICOM XML), a ``Warning`` per warning text whose agent is this
    node's public host (never the client-supplied Host header)."""
    for patient, issuer, study_uid in sorted(result.touched, key=str):
        auditctx.involve(patient, study_uid, issuer)
    if media_type == xml.DICOM_XML:
        response = _answer(wado.multipart_answer(xml.parts(result.matches), xml.DICOM_XML))
    else:
        response = Response(orjson.dumps(result.matches), mimetype=media_type)
    agent = urlsplit(urls.base_url()).netloc
    for text in result.warnings:
        response.headers.add("Warning", qido.warning_header(agent, text))
    return response


bp.add_url_rule("/studies", "search_studies", search, methods=["GET"], defaults={"level": "study"})
bp.add_url_rule("/series", "search_series", search, methods=["GET"], defaults={"level": "series"})
bp.add_url_rule("/instances", "search_instances", search, methods=["GET"], defaults={"level": "instance"})
bp.add_url_rule("/studies/<uid:study>/series", "search_study_series", search, methods=["GET"],
                defaults={"level": "series"})
bp.add_url_rule("/studies/<uid:study>/instances", "search_study_instances", search, methods=["GET"],
                defaults={"level": "instance"})
bp.add_url_rule("/studies/<uid:study>/series/<uid:series>/instances", "search_series_instances", search,
                methods=["GET"], defaults={"level": "instance"})


# --- PS3.18 §10.4 Retrieve (WADO-RS) --------------------------------------------------------

def _accept() -> str | None:
    # PS3.18 §8.3.3.1: the "accept" query parameter, when present, replaces the Accept header
    return request.args.get("accept") or request.headers.get("Accept")


def _answer(answer: wado.WadoAnswer) -> Response:
    return Response(answer.body, status=answer.status, headers=answer.headers)


def access_to(study: str) -> Access:
    """The caller's access, once it is known to cover ``study``: 404 when the study is not visible
    to its organisations, 403 when it is another patient's than a ``patient/`` scope's (noted)."""
    access = current_access()
    ref = wado.locate(get_session(), study, access)
    auditctx.involve(ref.patient_id, ref.study_uid, ref.issuer_of_patient_id)
    wado.check_patient(ref, access)
    return access


def access_to_instance(scope: wado.Scope) -> tuple[Access, StoredInstance | None]:
    """:func:`access_to` for one instance, with the instance: one query when the caller sees it.

    Otherwise (None for the instance) the answer is :func:`access_to`'s (404, 403, or a study the
    caller sees without that instance, whose retrieve then answers 404), noted the same way.
    """
    access = current_access()
    found = wado.locate_instance(get_session(), scope, access)
    if found is None:
        return access_to(scope.study), None
    ref, inst = found
    auditctx.involve(ref.patient_id, ref.study_uid, ref.issuer_of_patient_id)
    wado.check_patient(ref, access)
    return access, inst


def retrieve(study: str, series: str | None = None, sop: str | None = None) -> Response:
    access = access_to(study)
    return _answer(wado.retrieve_instances(get_session(), resources().blobs, wado.Scope(study, series, sop),
                                           _accept(), access=access, range_header=request.headers.get("Range")))


def retrieve_metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
    access = access_to(study)
    gzip_ok = request.accept_encodings.quality("gzip") > 0
    return _answer(wado.retrieve_metadata(get_session(), wado.Scope(study, series, sop), base_url(), _accept(),
                                          request.headers.get("If-None-Match"), gzip_ok, access=access))


def retrieve_frames(study: str, series: str, sop: str, frames: list[int]) -> Response:
    scope = wado.Scope(study, series, sop)
    access, inst = access_to_instance(scope)
    return _answer(wado.retrieve_frames(get_session(), resources().blobs, scope, frames, _accept(), access=access,
                                        instance=inst))


def retrieve_bulkdata(study: str, series: str, sop: str, tag: str) -> Response:
    scope = wado.Scope(study, series, sop)
    access, inst = access_to_instance(scope)
    return _answer(wado.retrieve_bulkdata(get_session(), resources().blobs, scope, tag, _accept(), access=access,
                                          range_header=request.headers.get("Range"), instance=inst))


_STUDY = "/studies/<uid:study>"
_SERIES = _STUDY + "/series/<uid:series>"
_INSTANCE = _SERIES + "/instances/<uid:sop>"
bp.add_url_rule(_STUDY, "retrieve_study", retrieve, methods=["GET"])                          # §10.4.1.1.1
bp.add_url_rule(_SERIES, "retrieve_series", retrieve, methods=["GET"])
bp.add_url_rule(_INSTANCE, "retrieve_instance", retrieve, methods=["GET"])
bp.add_url_rule(_STUDY + "/metadata", "study_metadata", retrieve_metadata, methods=["GET"])   # §10.4.1.1.2
bp.add_url_rule(_SERIES + "/metadata", "series_metadata", retrieve_metadata, methods=["GET"])
bp.add_url_rule(_INSTANCE + "/metadata", "instance_metadata", retrieve_metadata, methods=["GET"])
bp.add_url_rule(_INSTANCE + "/bulkdata/<tag>", "bulkdata", retrieve_bulkdata, methods=["GET"])  # §10.4.1.1.5
bp.add_url_rule(_INSTANCE + "/frames/<frames:frames>", "frames", retrieve_frames, methods=["GET"])  # §10.4.1.1.6


# --- PS3.18 §10.4.1.1.3-4 Rendered and Thumbnail resources ----------------------------------

def retrieve_rendered(study: str, series: str | None = None, sop: str | None = None,
                      frames: list[int] | None = None, thumbnail: bool = False) -> Response:
    access = access_to(study)
    return _answer(rendered.retrieve_rendered(get_session(), resources().blobs, wado.Scope(study, series, sop), frames,
                                              request.args, _accept(), access=access, thumbnail=thumbnail))


#: (endpoint suffix, URL) of the four levels a rendered or thumbnail resource exists at.
_RENDERED_LEVELS = (("study", _STUDY), ("series", _SERIES), ("instance", _INSTANCE),
                    ("frames", _INSTANCE + "/frames/<frames:frames>"))
RENDERED_ENDPOINTS = tuple(f"{level}_{kind}" for kind in ("rendered", "thumbnail") for level, _ in _RENDERED_LEVELS)
for _level, _url in _RENDERED_LEVELS:
    bp.add_url_rule(_url + "/rendered", f"{_level}_rendered", retrieve_rendered, methods=["GET"])  # §10.4.1.1.3
    bp.add_url_rule(_url + "/thumbnail", f"{_level}_thumbnail", retrieve_rendered, methods=["GET"],  # §10.4.1.1.4
                    defaults={"thumbnail": True})


# --- DELETE (outside PS3.18: 204 No Content, as dcm4chee) and OPTIONS (RFC 9110 §9.3.7) ----

def delete_resource(study: str, series: str | None = None, sop: str | None = None) -> Response:
    res, access = resources(), access_to(study)
    delete.delete(res.sessions, res.blobs, access, study, series, sop)
    return Response(status=204)


def options_root() -> Response:
    # the DICOMweb root has no representation of its own; OPTIONS on every other URL is
    # answered by Flask from the route table (Allow lists the methods registered for it)
    return Response(status=204, headers={"Allow": "OPTIONS"})


bp.add_url_rule(_STUDY, "delete_study", delete_resource, methods=["DELETE"])
bp.add_url_rule(_SERIES, "delete_series", delete_resource, methods=["DELETE"])
bp.add_url_rule(_INSTANCE, "delete_instance", delete_resource, methods=["DELETE"])
bp.add_url_rule("", "root", options_root, methods=["OPTIONS"])
bp.add_url_rule("/", "root_slash", options_root, methods=["OPTIONS"])


def init_app(app: Flask) -> None:
    for endpoint in RENDERED_ENDPOINTS:
        policy.require(f"{bp.name}.{endpoint}", Requirement("ImagingStudy", "r"))
    app.register_blueprint(bp)
