"""The searchset Bundle of a parsed search (R4 bundle.html#searchset, search.html §3.1.1.5-7).

- ``entry``: the matches (``search.mode`` ``match``) in the requested order, then the resources
  ``_include`` and ``_revinclude`` bring (``include``), each resource once, then the warnings as
  an OperationOutcome (``outcome``). Included resources go through the same visibility as the
  matches. At most :data:`MAX_INCLUDED` included resources per page: beyond, the Bundle says
  so in its OperationOutcome (fhir.md (f)4-6; narrow the search or lower ``_count``).
- ``fullUrl``: ``{base}/{type}/{id}``.
- ``link``: ``self``, and ``next`` while there are more matches; both repeat the query, ``next``
  with the ``_cursor`` that starts the next page (keyset paging: :mod:`drimhub.store.fhirsearch`).
- ``total``: with ``_total=accurate`` (or ``estimate``, answered exactly) and ``_summary=count``
  always; otherwise only when it costs nothing (a first page that is also the last), since
  ``Bundle.total`` is optional in a searchset and counting a large match is a second query.
  ``_total=none`` never.
- ``_summary`` and ``_elements`` (§3.1.1.5.8-9) shape the matches (included resources are
  served whole) and tag them ``SUBSETTED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import orjson
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy.orm import Session

from drimhub.fhir import endpoints as node_endpoints
from drimhub.fhir import imagingstudy
from drimhub.fhir.registry import resource_type
from drimhub.fhir.search import Include, Query
from drimhub.store import fhirsearch, fhirstudies
from drimhub.store.access import Access
from drimhub.store.fhirquery import Scope

#: Included resources per page, every ``_include`` and ``_revinclude`` together.
MAX_INCLUDED = 1000
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}

Found = tuple[str, str, dict[str, Any]]  # (type, id, resource)
_CUT = "Includes cut:"


def scope_of(session: Session, access: Access, base: str) -> Scope:
    """The search scope of a request on the FHIR base ``base`` (the node's Endpoints included)."""
    dicomweb = base.removesuffix("/fhir") + "/dicom-web"
    return Scope(session, access, tuple(node_endpoints.endpoints(dicomweb, base)))


def run(session: Session, query: Query, access: Access, base: str) -> dict[str, Any]:
    """The searchset Bundle of ``query`` for ``access`` (``base``: the FHIR base URL)."""
    scope = scope_of(session, access, base)
    links = [{"relation": "self", "url": page_url(base, query, query.cursor)}]
    if query.summary == "count" or query.count == 0:
        bundle = _bundle(links, [], _count(scope, query))
        return _with_outcome(bundle, query.warnings)
    matches, following = _matches(scope, query, base)
    if following is not None:
        links.append({"relation": "next", "url": page_url(base, query, following)})
    total = None
    if query.total in ("accurate", "estimate"):
        total = _count(scope, query)
    elif query.total is None and query.cursor is None and following is None:
        total = len(matches)
    included = _included(scope, query, matches, base)
    entries = [_entry(base, t, i, subset(r, query.summary, query.elements), "match") for t, i, r in matches]
    entries += [_entry(base, t, i, r, "include") for t, i, r in included]
    return _with_outcome(_bundle(links, entries, total), query.warnings)


def page_url(base: str, query: Query, cursor: str | None) -> str:
    """The URL of a page of ``query``: its parameters as received, and ``_cursor`` when given."""
    pairs = [*query.pairs, *([("_cursor", cursor)] if cursor else [])]
    return f"{base}/{query.type}" + (f"?{urlencode(pairs)}" if pairs else "")


def _bundle(links: list[dict[str, str]], entries: list[dict[str, Any]], total: int | None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


def _entry(base: str, type_: str, id_: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {"fullUrl": f"{base}/{type_}/{id_}", "resource": resource, "search": {"mode": mode}}


def _with_outcome(bundle: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    if warnings:
        outcome = {"resourceType": "OperationOutcome",
                   "issue": [{"severity": "warning", "code": "too-costly" if w.startswith(_CUT) else "not-supported",
                              "diagnostics": w} for w in warnings]}
        bundle.setdefault("entry", []).append({"resource": outcome, "search": {"mode": "outcome"}})
    return bundle


def _count(scope: Scope, query: Query) -> int:
    if query.type == "Endpoint":
        return len(fhirsearch.memory_match(scope, query.type, query.criteria))
    return fhirsearch.count(scope, query)


# --- matches ----------------------------------------------------------------------------------

def _matches(scope: Scope, query: Query, base: str) -> tuple[list[Found], str | None]:
    """One page of matches and the cursor of the next page (None on the last)."""
    if query.type == "Endpoint":
        return _memory_page(scope, query)
    page = fhirsearch.page(scope, query)
    following = page.next.encode() if page.next is not None else None
    if query.type == "ImagingStudy":
        built = imagingstudy.build(scope.session, [uid for uid, _ in page.rows], base)
        return [(query.type, uid, built[uid]) for uid, _ in page.rows if uid in built], following
    return [(query.type, id_, orjson.loads(content)) for id_, content in page.rows if content], following


def _memory_page(scope: Scope, query: Query) -> tuple[list[Found], str | None]:
    """Endpoints: a handful, sorted and cut in memory (the cursor is the position)."""
    found = fhirsearch.memory_match(scope, query.type, query.criteria)
    for key in reversed(query.sort):
        found = sorted(found, key=lambda r: str(r.get("id") if key.name == "_id" else r.get(key.name) or ""),
                       reverse=key.descending)
    spec = ",".join(map(str, query.sort))
    start = fhirsearch.Cursor.decode(query.cursor, spec, []).pk if query.cursor else 0
    chunk = found[start:start + query.count]
    more = start + query.count < len(found)
    following = fhirsearch.Cursor(spec, (), start + query.count).encode() if more else None
    return [(query.type, r["id"], r) for r in chunk], following


# --- _include and _revinclude -----------------------------------------------------------------

class _Budget:
    """The included resources of one page: each once, at most :data:`MAX_INCLUDED`."""

    def __init__(self, matches: list[Found]) -> None:
        self.seen = {(t, i) for t, i, _ in matches}
        self.found: list[Found] = []
        self.truncated: list[str] = []

    @property
    def left(self) -> int:
        return MAX_INCLUDED - len(self.found)

    def add(self, include: Include, type_: str, resources: Sequence[tuple[str, dict[str, Any]]],
            asked: int) -> None:
        if len(resources) >= asked:
            self.truncated.append(str(include))
        for id_, resource in resources[:max(asked - 1, 0)]:
            if (type_, id_) not in self.seen:
                self.seen.add((type_, id_))
                self.found.append((type_, id_, resource))


def _included(scope: Scope, query: Query, matches: list[Found], base: str) -> list[Found]:
    if not matches or not (query.includes or query.revincludes):
        return []
    budget = _Budget(matches)
    for include in query.includes:
        for type_, ids in _referenced(scope, query, include, matches).items():
            asked = budget.left + 1
            budget.add(include, type_, _resolve(scope, type_, ids, base, asked), asked)
    ids = [i for _, i, _ in matches]
    for include in query.revincludes:
        asked = budget.left + 1
        budget.add(include, include.source, _referring(scope, include, query.type, ids, base, asked), asked)
    if budget.truncated:
        query.warnings.append(f"{_CUT} {', '.join(dict.fromkeys(budget.truncated))}: more than {MAX_INCLUDED} "
                              "included resources on this page, the rest left out (lower _count or narrow the search)")
    return budget.found


def _referenced(scope: Scope, query: Query, include: Include, matches: list[Found]) -> dict[str, list[str]]:
    """Target type → ids the page's resources reference through ``include``'s parameter."""
    source = resource_type(include.source)
    if source is None or source.name != query.type:
        return {}
    if source.derived:  # the derived resource is in hand: read its references
        refs = [ref for _, _, r in matches for ref in _derived_references(r, include.param)]
    else:
        refs = fhirsearch.references_of(scope, include.source, [i for _, i, _ in matches], include.param)
    param = source.param(include.param)
    targets = (include.target,) if include.target else (param.targets if param else ())
    out: dict[str, list[str]] = {}
    for type_, id_ in refs:
        if type_ in targets:
            out.setdefault(type_, []).append(id_)
    return out


def _derived_references(resource: dict[str, Any], param: str) -> list[tuple[str, str]]:
    """ImagingStudy ``patient``/``subject`` and ``endpoint`` (study and series) references."""
    if param in ("patient", "subject"):
        found = [resource.get("subject") or {}]
    elif param == "endpoint":
        found = [*(resource.get("endpoint") or []), *(e for s in resource.get("series") or []
                                                       for e in s.get("endpoint") or [])]
    else:
        found = []
    refs = [str(r.get("reference", "")).split("/") for r in found]
    return [(r[0], r[1]) for r in refs if len(r) == 2]


def _resolve(scope: Scope, type_: str, ids: list[str], base: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
    """The visible resources ``type_/ids`` (in a stable order), at most ``limit``."""
    if type_ == "ImagingStudy":
        uids = fhirstudies.visible_studies(scope, ids)[:limit]
        built = imagingstudy.build(scope.session, uids, base)
        return [(u, built[u]) for u in uids if u in built]
    if type_ == "Endpoint":
        return [(e["id"], e) for e in scope.endpoints if e["id"] in ids][:limit]
    return [(i, orjson.loads(c)) for i, c in fhirsearch.stored_by_ids(scope, type_, ids, limit)]


def _referring(scope: Scope, include: Include, type_: str, ids: list[str], base: str,
               limit: int) -> list[tuple[str, dict[str, Any]]]:
    """The visible ``include.source`` resources whose ``include.param`` references one of ``type_/ids``."""
    if include.target not in (None, type_):
        return []
    if include.source == "ImagingStudy":  # Patient?_revinclude=ImagingStudy:patient
        uids = fhirstudies.studies_of_patients(scope, ids, limit) if type_ == "Patient" else []
        built = imagingstudy.build(scope.session, uids, base)
        return [(u, built[u]) for u in uids if u in built]
    return [(i, orjson.loads(c))
            for i, c in fhirsearch.stored_referring(scope, include.source, include.param, type_, ids, limit)]


# --- _summary and _elements -------------------------------------------------------------------

@lru_cache(maxsize=None)
def _fields(model_name: str) -> tuple[frozenset[str], frozenset[str], dict[str, str]]:
    """JSON names of a model's summary and mandatory elements, and of its backbone elements' models."""
    model = get_fhir_model_class(model_name)
    summary, mandatory, backbones = set(), set(), {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        key = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if info.is_required() or extra.get("element_required") or extra.get("one_of_many_required"):
            mandatory.add(key)
        kind = str(info.annotation)
        element = kind.rsplit("abc.", 1)[-1].split("Type")[0] if "abc." in kind else ""
        if element.startswith(model_name) and element != model_name:
            backbones[key] = element
    return frozenset(summary), frozenset(mandatory), backbones


def _summary_of(node: dict[str, Any], model_name: str) -> dict[str, Any]:
    summary, mandatory, backbones = _fields(model_name)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in summary and key not in mandatory and key != "resourceType":
            continue
        if key in backbones:
            value = ([_summary_of(v, backbones[key]) for v in value] if isinstance(value, list)
                     else _summary_of(value, backbones[key]))
        out[key] = value
    return out


def subset(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """``resource`` as ``_summary`` and ``_elements`` ask (R4 search.html §3.1.1.5.8-9), tagged SUBSETTED.

    ``true``: the elements the R4 definition marks as summary (fhir.resources' element metadata),
    in backbone elements too, with the mandatory ones; ``text``: ``text``, ``id``, ``meta`` and
    the mandatory top-level elements; ``data``: all but ``text``; ``_elements``: the named
    top-level elements, with the mandatory ones.
    """
    type_ = resource["resourceType"]
    if summary == "true":
        out = _summary_of(resource, type_)
    elif summary == "text":
        mandatory = _fields(type_)[1]
        out = {k: v for k, v in resource.items() if k in ("resourceType", "id", "meta", "text") or k in mandatory}
    elif summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    elif elements is not None:
        mandatory = _fields(type_)[1]
        out = {k: v for k, v in resource.items()
               if k in ("resourceType", "id", "meta") or k in elements or k in mandatory}
    else:
        return resource
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*(t for t in meta.get("tag") or [] if t.get("code") != "SUBSETTED"), SUBSETTED]
    return {"resourceType": type_, **({"id": out["id"]} if "id" in out else {}), "meta": meta,
            **{k: v for k, v in out.items() if k not in ("resourceType", "id", "meta")}}


__all__ = ["MAX_INCLUDED", "SUBSETTED", "page_url", "run", "scope_of", "subset"]
