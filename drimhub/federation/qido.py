"""Federated QIDO-RS (``/federated/dicom-web``): this node's search and every peer's, merged.

The request is parsed once (:func:`drimhub.dicomweb.query.parse_query`: a bad query is a 400
before any peer is asked). The peers are asked at once with dicomweb-client
(:mod:`drimhub.federation.fanout`) while the local search runs
(:func:`drimhub.dicomweb.qido.search`, over the caller's studies and the cached copies).

Merge rules (also for the conformance statement):

- local matches first, then each peer's in the order of the peers' names; a UID already listed
  (Study, Series or SOP Instance UID, by level) is dropped from later sources;
- every match is tagged with its origin: RetrieveURL (0008,1190) is the origin node's WADO-RS
  URL of the study, series or instance (this node's ``/dicom-web`` for its own studies, the peer's
  DICOMweb root for a peer's match and for a cached copy of a peer's study). RetrieveAETitle
  (0008,0054) is not given: no node has a DIMSE AE this node could name;
- ``offset`` and ``limit`` apply to the merged list: each source is asked for ``offset + limit``
  matches from its start; the merged list is then cut, and capped at ``QIDO_MAX_RESULTS`` with
  the truncation Warning (PS3.18 §8.3.4.4);
- a peer that fails or misses its time-out adds ``Warning: 299 HOST: peer NAME unavailable:
  REASON``; the answer is still 200 with what the other sources found;
- a ``patient/`` scope: peers are asked only when the token's ``patient`` claim names the issuer
  (``issuer|id``: a bare PatientID means nothing across hospitals), with PatientID and
  IssuerOfPatientID as filters (:func:`patient_filters`); a peer's match of any other patient, or
  without both, is dropped (:func:`of_patient`);
- a peer's answer is read up to :data:`drimhub.federation.fanout.MAX_ANSWER` bytes within its
  time-out, and its session closed after the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from drimhub.dicomweb import qido
from drimhub.dicomweb.query import Args, Level, QueryExpression
from drimhub.federation import cache
from drimhub.federation.fanout import Fanout, Outbound
from drimhub.federation.peers import PeerInfo
from drimhub.store.access import Access

#: The UID that identifies a match at each level (PS3.18 Table 6.7.1-2, -2a, -2b).
LEVEL_UID = {Level.STUDY: "0020000D", Level.SERIES: "0020000E", Level.INSTANCE: "00080018"}
PATIENT_ID, ISSUER_OF_PATIENT_ID, STUDY_UID, SERIES_UID = "00100020", "00100021", "0020000D", "0020000E"
#: Query parameters that are not matching keys (PS3.18 Table 8.3.4-1, §8.3.3 media type ones).
_NOT_FILTERS = frozenset({"limit", "offset", "fuzzymatching", "includefield", "accept", "charset"})


@dataclass(frozen=True)
class PeerQuery:
    """The request's query as sent to each peer (the arguments of dicomweb-client's searches)."""

    filters: dict[str, str]
    fields: tuple[str, ...]
    fuzzymatching: bool | None
    limit: int | None

    @classmethod
    def of(cls, args: Args, expr: QueryExpression, access: Access) -> PeerQuery:
        """The peers' query for the validated request ``args`` (parsed as ``expr``)."""
        filters = {name: args.getlist(name)[0] for name in args.keys() if name not in _NOT_FILTERS}
        if access.patient is not None:  # the token's patient, whatever the request named (it was checked)
            filters = {k: v for k, v in filters.items() if k not in ("PatientID", "IssuerOfPatientID",
                                                                     PATIENT_ID, ISSUER_OF_PATIENT_ID)}
            filters.update(patient_filters(access))
        fields = tuple(name.strip() for raw in args.getlist("includefield") for name in raw.split(",") if name.strip())
        limit = expr.offset + expr.limit if expr.limit is not None else None
        return cls(filters, fields, expr.fuzzymatching if args.getlist("fuzzymatching") else None, limit)


def patient_filters(access: Access) -> dict[str, str]:
    """The QIDO-RS filters that ask a peer for the studies of ``access``'s patient only (none without one).

    The peers are asked only for a patient named with its issuer (:func:`drimhub.federation.routes`).
    """
    if access.patient is None:
        return {}
    filters = {"PatientID": access.patient.id}
    if access.patient.issuer:
        filters["IssuerOfPatientID"] = access.patient.issuer
    return filters


def of_patient(match: dict[str, Any], access: Access) -> bool:
    """False for a peer's match that ``access``'s patient restriction does not cover (PatientID and
    IssuerOfPatientID both; a restriction without an issuer covers no peer's match)."""
    if access.patient is None:
        return True
    return access.patient.issuer is not None and access.patient.matches(value(match, PATIENT_ID),
                                                                         value(match, ISSUER_OF_PATIENT_ID))


def ask_peer(out: Outbound, peer: PeerInfo, expr: QueryExpression, query: PeerQuery) -> list[dict[str, Any]]:
    """One peer's matches (dicomweb-client's QIDO-RS search at the request's level)."""
    kwargs: dict[str, Any] = {"fuzzymatching": query.fuzzymatching, "limit": query.limit,
                              "fields": list(query.fields) or None, "search_filters": query.filters}
    with out.client(peer) as client:
        if expr.level is Level.STUDY:
            found = client.search_for_studies(**kwargs)
        elif expr.level is Level.SERIES:
            found = client.search_for_series(study_instance_uid=expr.study_uid, **kwargs)
        else:
            found = client.search_for_instances(study_instance_uid=expr.study_uid,
                                                series_instance_uid=expr.series_uid, **kwargs)
    return [match for match in found if isinstance(match, dict)] if isinstance(found, list) else []


def search(session: Session, expr: QueryExpression, args: Args, access: Access, *, local_base: str,
           max_results: int, peers: Sequence[PeerInfo], out: Outbound) -> qido.SearchResult:
    """The federated QIDO-RS answer: local matches and every peer's, merged (module docstring).

    Parameters
    ----------
    session : Session
        The request's read session (used in the request's thread only).
    expr, args : QueryExpression, Args
        The parsed query and the request's arguments it was parsed from.
    access : Access
        The caller's access, widened to the cached copies (:func:`drimhub.federation.cache.widen`).
    local_base : str
        This node's plain DICOMweb root (RetrieveURL of its own studies).
    max_results : int
        ``QIDO_MAX_RESULTS``.
    peers : sequence of PeerInfo
        The peers to ask (none for a share link's capability).
    out : Outbound
        How to call them.

    Returns
    -------
    SearchResult
        With a Warning text per failed peer.

    Raises
    ------
    Forbidden
        A ``patient/`` scope and a filter naming another patient (:func:`drimhub.dicomweb.qido.search`).
    """
    query = PeerQuery.of(args, expr, access)
    fan = Fanout(peers, out, lambda peer: ask_peer(out, peer, expr, query))
    window = dataclasses.replace(expr, offset=0, limit=query.limit)
    try:
        local = qido.search(session, window, local_base, max_results, access)
    finally:
        gathered = fan.gather()
    _retag_cached(session, local.matches, expr, local_base, peers)
    merged, seen = list(local.matches), {_key(m, expr.level) for m in local.matches} - {None}
    touched = set(local.touched)
    for peer, matches in gathered.answers:
        for match in matches:
            key = _key(match, expr.level)
            if (key is not None and key in seen) or not of_patient(match, access):
                continue
            seen.add(key)
            _tag(match, expr, peer.dicomweb_url)
            merged.append(match)
            if (study := value(match, STUDY_UID) or expr.study_uid) is not None:
                touched.add((value(match, PATIENT_ID), value(match, ISSUER_OF_PATIENT_ID), study))
    end = expr.offset + expr.limit if expr.limit is not None else None
    page, warnings = merged[expr.offset:end], list(local.warnings)
    if len(page) > max_results:  # PS3.18 §8.3.4.4: truncate and warn
        page = page[:max_results]
        if qido.TRUNCATED not in warnings:
            warnings.append(qido.TRUNCATED)
    warnings += [failure.text() for failure in gathered.failures]
    return qido.SearchResult(page, tuple(warnings), frozenset(touched))


def value(match: dict[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` in a DICOM JSON ``match`` as a string (a string or number), else None."""
    values = (match.get(tag) or {}).get("Value") or []
    return str(values[0]) if values and isinstance(values[0], (str, int)) else None


def _key(match: dict[str, Any], level: Level) -> str | None:
    return value(match, LEVEL_UID[level])


def wado_url(base: str, level: Level, study: str | None, series: str | None, sop: str | None) -> str | None:
    """The WADO-RS URL of a study, series or instance under the DICOMweb root ``base`` (None if a UID is unknown)."""
    parts = [("studies", study)] + ([("series", series)] if level >= Level.SERIES else []) \
        + ([("instances", sop)] if level is Level.INSTANCE else [])
    if any(uid is None for _, uid in parts):
        return None
    return base.rstrip("/") + "".join(f"/{name}/{uid}" for name, uid in parts)


def _tag(match: dict[str, Any], expr: QueryExpression, base: str) -> None:
    """Set RetrieveURL to the origin's WADO-RS URL of the match (PS3.18 Table 6.7.1-2)."""
    url = wado_url(base, expr.level, value(match, STUDY_UID) or expr.study_uid,
                   value(match, SERIES_UID) or expr.series_uid, value(match, "00080018"))
    if url is not None:
        match[qido.RETRIEVE_URL] = {"vr": "UR", "Value": [url]}


def _retag_cached(session: Session, matches: list[dict[str, Any]], expr: QueryExpression, local_base: str,
                  peers: Sequence[PeerInfo]) -> None:
    """Local matches of cached copies get their origin peer's RetrieveURL."""
    studies = {study for m in matches if (study := value(m, STUDY_UID) or expr.study_uid)}
    cached = cache.origins(session, studies, peers)
    if not cached:
        return
    roots = {peer.name: peer.dicomweb_url for peer in peers}
    for match in matches:
        origin = cached.get(value(match, STUDY_UID) or expr.study_uid or "")
        if origin in roots:
            _tag(match, expr, roots[origin])
