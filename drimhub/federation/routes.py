"""HTTP routes of this package: ``/federated/dicom-web`` (and ``/api/peers``, :mod:`peer_routes`).

``/federated/dicom-web`` answers the QIDO-RS and WADO-RS requests of ``/dicom-web`` (PS3.18
§10.4, §10.6; no STOW, no DELETE) over this node's studies, the cached copies of peers' studies,
and every peer: :mod:`drimhub.federation.qido` merges searches, :mod:`drimhub.federation.wado`
retrieves a peer's study and caches it. The views stay thin and reuse the ``/dicom-web`` views
where the answer comes from the local store.

Access: the rules of ``/dicom-web`` (ImagingStudy ``s`` to search, ``r`` to retrieve). Before each
view the caller's :class:`~drimhub.store.access.Access` is widened to the cached copies of the
current peers (:func:`drimhub.federation.cache.widen`, :attr:`Access.cached`), so the reused
views and services see them; plain ``/dicom-web`` never does. Answered from this node's own
studies only, asking no peer and seeing no cached copy (:func:`local_only`): a peer node's token
(``drimhub/peer``: no transitive federation, no token relayed to a third origin), a share link's
capability, and a ``patient/`` scope whose ``patient`` claim has no issuer (a bare PatientID
names no one across hospitals). ``relay`` peers get the caller's token only when an external
issuer both nodes trust issued it (:func:`drimhub.server.auth.protect.relayable_token`), else
they are skipped with a Warning; ``smart-backend`` peers get this node's
(drimhub.federation.outbound).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request

from drimhub.dicomweb import qido
from drimhub.dicomweb import routes as local
from drimhub.dicomweb import wado
from drimhub.dicomweb.query import Level, parse_query
from drimhub.federation import cache as fcache
from drimhub.federation import fhir_search
from drimhub.federation import qido as fqido
from drimhub.federation import wado as fwado
from drimhub.federation.fanout import Outbound
from drimhub.federation.peers import PeerInfo, list_peers
from drimhub.server import auditctx, urls
from drimhub.server.auth import policy, protect
from drimhub.server.auth.policy import Requirement, current_access, current_principal
from drimhub.server.auth.principal import Principal
from drimhub.server.db import get_session, resources
from drimhub.store import retrieve
from drimhub.store.access import Access

bp = Blueprint("federated", __name__, url_prefix="/federated/dicom-web")


def base_url() -> str:
    """Public URL of the federated DICOMweb root (BulkDataURIs of the metadata it serves)."""
    return f"{urls.base_url()}/federated/dicom-web"


@dataclass(frozen=True)
class Federation:
    """What the views of one request need: the peers, how to call them, where the cache is."""

    peers: tuple[PeerInfo, ...]
    out: Outbound
    cache: fcache.Cache

    def peer(self, name: str) -> PeerInfo | None:
        return next((p for p in self.peers if p.name == name), None)


def _accept() -> str | None:
    # PS3.18 §8.3.3.1: the "accept" query parameter, when present, replaces the Accept header
    return request.args.get("accept") or request.headers.get("Accept")


def _answer(answer: wado.WadoAnswer) -> Response:
    return Response(answer.body, status=answer.status, headers=answer.headers)


def local_only(principal: Principal, access: Access) -> bool:
    """True when the request is answered from this node's own studies only (module docstring)."""
    return (principal.share is not None or access.only is not None or policy.PEER_SCOPE in principal.scopes.other
            or (access.patient is not None and access.patient.issuer is None))


def _peers(principal: Principal, access: Access) -> tuple[PeerInfo, ...]:
    return () if local_only(principal, access) else tuple(list_peers(get_session()))


def _outbound(principal: Principal) -> Outbound:
    return Outbound(resources().signing_key, protect.relayable_token(principal),
                    float(current_app.config["PEER_TIMEOUT"]))


def _federate() -> None:
    """Blueprint ``before_request`` (after :func:`policy.enforce`): widen the access, list the peers."""
    if request.method == "OPTIONS" or g.get("access") is None:
        return
    principal, access = current_principal(), current_access()
    peers = _peers(principal, access)
    if not local_only(principal, access):
        g.access = dataclasses.replace(fcache.widen(access, peers), cached=True)
    res = resources()
    g.federation = Federation(peers, _outbound(principal), fcache.Cache(res.sessions, res.blobs,
                                                               fcache.lifetime(str(current_app.config["RETENTION"]))))


bp.before_request(_federate)


def federation() -> Federation:
    found: Federation = g.federation
    return found


# --- PS3.18 §10.6 Search (QIDO-RS) ----------------------------------------------------------

def search(level: str, study: str | None = None, series: str | None = None) -> Response:
    media_type = qido.response_media_type(_accept())
    expr = parse_query(Level[level.upper()], request.args, study, series)
    fed = federation()
    result = fqido.search(get_session(), expr, request.args, current_access(), local_base=local.base_url(),
                          max_results=current_app.config["QIDO_MAX_RESULTS"], peers=fed.peers, out=fed.out)
    return local.search_answer(result, media_type)


_QIDO = (("/studies", "search_studies", "study"), ("/series", "search_series", "series"),
         ("/instances", "search_instances", "instance"),
         ("/studies/<uid:study>/series", "search_study_series", "series"),
         ("/studies/<uid:study>/instances", "search_study_instances", "instance"),
         ("/studies/<uid:study>/series/<uid:series>/instances", "search_series_instances", "instance"))
for _url, _endpoint, _level in _QIDO:
    bp.add_url_rule(_url, _endpoint, search, methods=["GET"], defaults={"level": _level})


# --- PS3.18 §10.4 Retrieve (WADO-RS) --------------------------------------------------------

def _holder(scope: wado.Scope) -> fwado.Holder | None:
    """The peer to retrieve ``scope`` from, or None when this node serves it (its own study, or a
    cached copy that holds the scope, or a cached copy whose peer is no longer listed).

    Raises
    ------
    NotFound, PeerUnavailable
        Neither this node nor any answering peer holds the study.
    """
    session, access, fed = get_session(), current_access(), federation()
    ref = retrieve.locate_study(session, scope.study, access)
    if ref is not None:
        origin = fed.peer(ref.org.removeprefix(fcache.CACHE_PREFIX)) if ref.org.startswith(fcache.CACHE_PREFIX) \
            else None
        if origin is None or fwado.served_here(session, access, origin.name, scope):
            return None
        wado.check_patient(ref, access)
        return fwado.Holder(origin, ref.patient_id, ref.issuer_of_patient_id)
    holder, failures = fwado.locate(fed.peers, fed.out, scope.study, access)
    if holder is None:
        raise fwado.not_found(scope.study, failures)
    return holder


def _cached(scope: wado.Scope) -> None:
    """Make sure ``scope`` is served by this node: retrieve it from its peer into the cache if needed."""
    holder = _holder(scope)
    if holder is None:
        return
    fed = federation()
    auditctx.involve(holder.patient_id, scope.study, holder.issuer)
    fwado.ensure_cached(fed.cache, fed.out, holder.peer, scope)
    get_session().rollback()  # end the read transaction begun before caching: see the new rows


def retrieve_instances(study: str, series: str | None = None, sop: str | None = None) -> Response:
    scope = wado.Scope(study, series, sop)
    holder = _holder(scope)
    if holder is not None:  # streamed from the peer, or cached first and then served here
        fed = federation()
        auditctx.involve(holder.patient_id, study, holder.issuer)
        answer = fwado.retrieve_from_peer(fed.cache, fed.out, holder.peer, scope, _accept(), current_access())
        if answer is not None:
            return _answer(answer)
        get_session().rollback()  # end the read transaction begun before caching: see the new rows
    return local.retrieve(study, series, sop)


def retrieve_metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
    scope = wado.Scope(study, series, sop)
    _cached(scope)
    access = local.access_to(study)
    gzip_ok = request.accept_encodings.quality("gzip") > 0
    return _answer(wado.retrieve_metadata(get_session(), scope, base_url(), _accept(),
                                                request.headers.get("If-None-Match"), gzip_ok, access=access))


def retrieve_frames(study: str, series: str, sop: str, frames: list[int]) -> Response:
    _cached(wado.Scope(study, series, sop))
    return local.retrieve_frames(study, series, sop, frames)


def retrieve_bulkdata(study: str, series: str, sop: str, tag: str) -> Response:
    _cached(wado.Scope(study, series, sop))
    return local.retrieve_bulkdata(study, series, sop, tag)


def retrieve_rendered(study: str, series: str | None = None, sop: str | None = None,
                      frames: list[int] | None = None, thumbnail: bool = False) -> Response:
    _cached(wado.Scope(study, series, sop))
    return local.retrieve_rendered(study, series, sop, frames, thumbnail)


_STUDY = "/studies/<uid:study>"
_SERIES = _STUDY + "/series/<uid:series>"
_INSTANCE = _SERIES + "/instances/<uid:sop>"
_WADO = ((_STUDY, "retrieve_study", retrieve_instances), (_SERIES, "retrieve_series", retrieve_instances),
         (_INSTANCE, "retrieve_instance", retrieve_instances),
         (_STUDY + "/metadata", "study_metadata", retrieve_metadata),
         (_SERIES + "/metadata", "series_metadata", retrieve_metadata),
         (_INSTANCE + "/metadata", "instance_metadata", retrieve_metadata),
         (_INSTANCE + "/bulkdata/<tag>", "bulkdata", retrieve_bulkdata),
         (_INSTANCE + "/frames/<frames:frames>", "frames", retrieve_frames))
for _url, _endpoint, _view in _WADO:
    bp.add_url_rule(_url, _endpoint, _view, methods=["GET"])
#: (endpoint suffix, URL) of the levels a rendered or thumbnail resource exists at (PS3.18 §10.4.1.1.3-4).
_RENDERED_LEVELS = (("study", _STUDY), ("series", _SERIES), ("instance", _INSTANCE),
                    ("frames", _INSTANCE + "/frames/<frames:frames>"))
for _level, _url in _RENDERED_LEVELS:
    bp.add_url_rule(_url + "/rendered", f"{_level}_rendered", retrieve_rendered, methods=["GET"])
    bp.add_url_rule(_url + "/thumbnail", f"{_level}_thumbnail", retrieve_rendered, methods=["GET"],
                    defaults={"thumbnail": True})


def options_root() -> Response:
    return Response(status=204, headers={"Allow": "OPTIONS"})


bp.add_url_rule("", "root", options_root, methods=["OPTIONS"])
bp.add_url_rule("/", "root_slash", options_root, methods=["OPTIONS"])


# --- FHIR ImagingStudy search with _federated=true (called by drimhub.fhir.routes) -----------

def federated_fhir(bundle: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The local searchset ``bundle`` with the peers' results added (:mod:`drimhub.federation.fhir_search`).

    Callers answered from this node only (:func:`local_only`) reach no peer.
    """
    principal, access = current_principal(), current_access()
    return fhir_search.add_peers(bundle, pairs, _peers(principal, access), _outbound(principal), access)


def init_app(app: Flask) -> None:
    """Register the routes and their access rules."""
    from drimhub.federation import peer_routes

    for _, endpoint, _ in _QIDO:
        policy.require(f"{bp.name}.{endpoint}", Requirement("ImagingStudy", "s"))
    for _, endpoint, _ in _WADO:
        policy.require(f"{bp.name}.{endpoint}", Requirement("ImagingStudy", "r"))
    for level, _ in _RENDERED_LEVELS:
        for kind in ("rendered", "thumbnail"):
            policy.require(f"{bp.name}.{level}_{kind}", Requirement("ImagingStudy", "r"))
    app.register_blueprint(bp)
    peer_routes.init_app(app)
