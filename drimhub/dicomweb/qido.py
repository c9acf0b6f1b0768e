"""QIDO-RS search (PS3.18 §10.6): run a parsed query and build the DICOM JSON answer.

No Flask here: :func:`search` takes a SQLAlchemy ``Session`` and a
:class:`~drimhub.dicomweb.query.QueryExpression` (see :mod:`drimhub.dicomweb.query` for the
matching rules, including PN fuzzy matching) and returns the matches as DICOM JSON objects
(PS3.18 Annex F) plus the texts of the ``Warning`` headers to send.

Choices (also for the conformance statement):

- no match is ``200`` with ``[]`` (PS3.18 §10.6.3 allows 200 with an empty array or 204; an
  empty array keeps clients' parsing uniform); a scoped search under an unknown study or
  series is an empty answer too, not a 404;
- the server caps an answer at ``max_results`` (config ``QIDO_MAX_RESULTS``); when the matches
  exceed it, the first ``max_results`` are returned with Warning 299 (PS3.18 §8.3.4.4,
  §6.7.1.2.1); a ``limit`` at or below the cap is the client's page size and never warns;
- each result carries the level's default attributes (PS3.18 Tables 6.7.1-2/2a/2b), those of
  the parent levels the URL does not fix (§10.6.3.3), the matching keys, the includefields, and
  the computed attributes; a required attribute without a stored value is present with no
  value (``{"vr": ...}``); BulkDataURI elements are never returned;
- only studies of the organisations the caller's :class:`~drimhub.store.access.Access` names
  are searched (in SQL). A ``patient/`` scope restricts the search to its patient; a PatientID
  or IssuerOfPatientID filter naming anything else, or a search under another patient's study,
  is refused (403, never an empty or partial answer: Argonaut SMART Imaging Access).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from sqlalchemy.orm import Session

from drimhub.dicomweb.attributes import INSTANCE_RETURN, SERIES_RETURN, STUDY_RETURN
from drimhub.dicomweb.negotiation import MULTIPART, parse_accept
from drimhub.dicomweb.xml import DICOM_XML
from drimhub.dicomweb.query import Level, QueryExpression, Single, Universal
from drimhub.errors import Forbidden, NotAcceptable
from drimhub.store import qido as store
from drimhub.store import retrieve
from drimhub.store.access import Access

#: Media types a search answers with, preferred first (PS3.18 §8.7.3, §10.6.2).
MEDIA_TYPES = ("application/dicom+json", "application/json")

RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"
MODALITIES_IN_STUDY = "00080061"
SOP_CLASSES_IN_STUDY = "00080062"
N_STUDY_SERIES = "00201206"
N_STUDY_INSTANCES = "00201208"
N_SERIES_INSTANCES = "00201209"

#: Default return attributes per level (PS3.18 Tables 6.7.1-2, 6.7.1-2a, 6.7.1-2b).
DEFAULT_RETURN = {Level.STUDY: STUDY_RETURN, Level.SERIES: SERIES_RETURN, Level.INSTANCE: INSTANCE_RETURN}

#: Default return attributes the tables qualify ("if present", "if known"): left out when the
#: stored data has no value, where the others are returned empty.
OPTIONAL_RETURN = frozenset({
    "00080005",  # SpecificCharacterSet
    "00080201",  # TimezoneOffsetFromUTC
    "00400275",  # RequestAttributesSequence
    "00400244", "00400245",  # PerformedProcedureStepStartDate / Time
    "00280010", "00280011", "00280100", "00280008",  # Rows, Columns, BitsAllocated, NumberOfFrames
})

#: Computed study attributes (PS3.18 Table 6.7.1-2) and series attributes (Table 6.7.1-2a).
STUDY_COMPUTED = frozenset({MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY, N_STUDY_SERIES, N_STUDY_INSTANCES})
SERIES_COMPUTED = frozenset({N_SERIES_INSTANCES})
OWN_COMPUTED = {Level.STUDY: STUDY_COMPUTED, Level.SERIES: SERIES_COMPUTED}

TRUNCATED = ("The number of results exceeded the maximum supported by the server. "
             "Additional results can be requested.")


@dataclass(frozen=True)
class SearchResult:
    """The DICOM JSON matches of a search and the Warning texts to send with them."""

    matches: list[dict[str, Any]]
    warnings: tuple[str, ...] = field(default=())
    #: (PatientID, IssuerOfPatientID, Study Instance UID) of each study a match belongs to.
    touched: frozenset[tuple[str | None, str | None, str]] = frozenset()


def response_media_type(accept: str | None) -> str:
    """The media type to answer a search with, from the request's Accept header.

    Parameters
    ----------
    accept : str or None
        The Accept header; missing or empty means DICOM JSON.

    Returns
    -------
    str
        ``application/dicom+json``, ``application/json`` when the client prefers it, or
        ``application/dicom+xml`` for ``multipart/related; type="application/dicom+xml"``
        (PS3.18 §8.7.3.2, one Native DICOM Model part per match).

    Raises
    ------
    NotAcceptable
        The client accepts none of them (PS3.18 §8.7.3).
    """
    for media_range in parse_accept(accept):  # best first, one Accept rule for every service
        if media_range.type == MULTIPART and media_range.part == DICOM_XML:
            return DICOM_XML
        if media_range.multipart and media_range.type != "*/*":
            continue
        for media_type in MEDIA_TYPES:
            if media_range.type in (media_type, "*/*", media_type.split("/")[0] + "/*"):
                return media_type
    raise NotAcceptable(f"search results are available as {' or '.join(MEDIA_TYPES)} or multipart/related; "
                        f"type=\"{DICOM_XML}\", not {accept[:100]!r}")


def warning_header(agent: str, text: str) -> str:
    """A ``Warning`` header value, ``299 {agent}: {text}`` (PS3.18 §8.3.4.4)."""
    return f"299 {agent}: {text}"


def search(session: Session, expr: QueryExpression, base_url: str, max_results: int,
           access: Access) -> SearchResult:
    """Run a QIDO-RS search.

    Parameters
    ----------
    session : Session
        A read session.
    expr : QueryExpression
        The parsed query (:func:`drimhub.dicomweb.query.parse_query`).
    base_url : str
        Public DICOMweb root, without a trailing slash, for RetrieveURL.
    max_results : int
        Server cap on the number of matches in one answer.
    access : Access
        The organisations (and patient) whose studies may match.

    Returns
    -------
    SearchResult

    Raises
    ------
    Forbidden
        A ``patient/`` restriction and a filter or a study URL naming another patient.
    """
    check_patient_filters(session, expr, access)
    capped = expr.limit is None or expr.limit > max_results
    fetch = max_results + 1 if capped else expr.limit
    rows = store.find_matches(session, expr, fetch or 0, access)
    warnings: tuple[str, ...] = ()
    if capped and len(rows) > max_results:  # PS3.18 §8.3.4.4: truncate and warn
        rows, warnings = rows[:max_results], (TRUNCATED,)
    wanted = wanted_tags(expr)
    computed = _computed(session, rows, wanted, expr.include_all, expr.level)
    matches = [_result(row, expr, wanted, computed, base_url) for row in rows]
    touched = frozenset((row.patient_id, row.issuer_of_patient_id, row.study_uid) for row in rows)
    return SearchResult(matches, warnings, touched)


#: Matching keys a ``patient/`` restriction checks, with the PatientRef field each must equal.
_PATIENT_KEYS = {"PatientID": "id", "IssuerOfPatientID": "issuer"}


def check_patient_filters(session: Session, expr: QueryExpression, access: Access) -> None:
    """Refuse a search that names another patient than the one of a ``patient/`` restriction.

    A PatientID or IssuerOfPatientID filter must be universal or exactly the token's patient
    (a wildcard or a list is refused too: it could name others); a search under a study URL
    must be under that patient's study. Without such a filter the SQL restriction applies.

    Raises
    ------
    Forbidden
        The search names another patient.
    """
    patient = access.patient
    if patient is None:
        return
    for cond in expr.conditions:
        field_name = _PATIENT_KEYS.get(cond.key.keyword)
        if field_name is None or isinstance(cond, Universal):
            continue
        wanted = getattr(patient, field_name)
        if wanted is None:  # a claim without an issuer: an IssuerOfPatientID filter only narrows
            continue
        if not (isinstance(cond, Single) and cond.value == wanted):
            raise Forbidden(f"the access token is restricted to patient {patient}; "
                            f"the {cond.key.keyword} filter names another one")
    if expr.study_uid is not None:
        ref = retrieve.locate_study(session, expr.study_uid, access)
        if ref is not None and not access.sees_patient(ref.patient_id, ref.issuer_of_patient_id):
            raise Forbidden(f"study {expr.study_uid} is not of the patient in the access token's context")


def wanted_tags(expr: QueryExpression) -> dict[str, bool]:
    """Tags to return, each with whether it is returned empty when it has no value.

    Default attributes of the level and of the parent levels the URL does not fix
    (PS3.18 §10.6.3.3), the matching keys, and the includefields.
    """
    levels = [expr.level]
    if expr.level > Level.STUDY and expr.study_uid is None:
        levels.append(Level.STUDY)
    if expr.level is Level.INSTANCE and expr.series_uid is None:
        levels.append(Level.SERIES)
    wanted: dict[str, bool] = {}
    for level in levels:
        wanted.update({tag: tag not in OPTIONAL_RETURN for tag in DEFAULT_RETURN[level]})
    for cond in expr.conditions:
        wanted[cond.key.tag] = True  # PS3.18 §10.6.3.3: matching keys are returned
    for tag in expr.includefields:
        wanted.setdefault(tag, False)
    return wanted


def _computed(session: Session, rows: list[store.MatchRow], wanted: dict[str, bool], include_all: bool,
              level: Level) -> dict[tuple[str, int], dict[str, Any]]:
    """Computed attributes keyed by (tag, study or series pk); one query per attribute kind."""
    def needed(*tags: str, own: Level) -> bool:
        return any(t in wanted for t in tags) or (include_all and level is own)

    study_pks = {r.study_pk for r in rows}
    series_pks = {r.series_pk for r in rows if r.series_pk is not None}
    out: dict[tuple[str, int], dict[str, Any]] = {}
    if rows and needed(N_STUDY_SERIES, N_STUDY_INSTANCES, own=Level.STUDY):
        counts = store.study_counts(session, study_pks)
        for pk in study_pks:
            n_series, n_instances = counts.get(pk, (0, 0))
            out[(N_STUDY_SERIES, pk)] = _element("IS", [n_series])
            out[(N_STUDY_INSTANCES, pk)] = _element("IS", [n_instances])
    if rows and needed(MODALITIES_IN_STUDY, own=Level.STUDY):
        for pk, values in store.study_modalities(session, study_pks).items():
            out[(MODALITIES_IN_STUDY, pk)] = _element("CS", values)
    if rows and needed(SOP_CLASSES_IN_STUDY, own=Level.STUDY):
        for pk, values in store.study_sop_classes(session, study_pks).items():
            out[(SOP_CLASSES_IN_STUDY, pk)] = _element("UI", values)
    if series_pks and needed(N_SERIES_INSTANCES, own=Level.SERIES):
        series_n = store.series_counts(session, series_pks)
        for pk in series_pks:
            out[(N_SERIES_INSTANCES, pk)] = _element("IS", [series_n.get(pk, 0)])
    return out


def _element(vr: str, values: list[Any] | None = None) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values is not None and values != [] else {"vr": vr}


def _retrieve_url(row: store.MatchRow, level: Level, base_url: str) -> str:
    """RetrieveURL of the entity (PS3.18 §10.6.3.3, Table 6.7.1-2: its WADO-RS URL)."""
    url = f"{base_url}/studies/{row.study_uid}"
    if level >= Level.SERIES:
        url += f"/series/{row.series_uid}"
    if level is Level.INSTANCE:
        url += f"/instances/{row.sop_uid}"
    return url


def _stored(row: store.MatchRow, level: Level) -> tuple[dict[str, Any], dict[str, Any]]:
    """(every stored attribute available to the result, the level's own stored attributes)."""
    study = orjson.loads(row.study_attrs)
    series = orjson.loads(row.series_attrs) if row.series_attrs is not None else {}
    instance = orjson.loads(row.instance_json) if row.instance_json is not None else {}
    own = {Level.STUDY: study, Level.SERIES: series, Level.INSTANCE: instance}[level]
    return {**study, **series, **instance}, own


def _result(row: store.MatchRow, expr: QueryExpression, wanted: dict[str, bool],
            computed: dict[tuple[str, int], dict[str, Any]], base_url: str) -> dict[str, Any]:
    """One match as a DICOM JSON object, every element with its ``vr``."""
    available, own = _stored(row, expr.level)
    for tag in STUDY_COMPUTED | SERIES_COMPUTED:
        pk = row.study_pk if tag in STUDY_COMPUTED else row.series_pk
        if pk is not None and (tag, pk) in computed:
            available[tag] = computed[(tag, pk)]
    available[RETRIEVE_URL] = _element("UR", [_retrieve_url(row, expr.level, base_url)])
    available[INSTANCE_AVAILABILITY] = _element("CS", ["ONLINE"])  # PS3.4 C.4.1.1.3.2: stored locally
    tags: Iterable[str] = wanted
    if expr.include_all:  # PS3.18 §8.3.4.3: every attribute of the level
        tags = [*own, *OWN_COMPUTED.get(expr.level, ()), *wanted]
    out: dict[str, Any] = {}
    for tag in tags:
        element = available.get(tag)
        if element is None and wanted.get(tag):
            element = _element(_dictionary_vr(tag))
        if element is not None and "BulkDataURI" not in element:
            out[tag] = element
    return dict(sorted(out.items()))


def _dictionary_vr(tag: str) -> str:
    """The VR of an empty element: the dictionary's, first choice when ambiguous (``US or SS``)."""
    return str(dictionary_VR(int(tag, 16))).split(" or ")[0]
