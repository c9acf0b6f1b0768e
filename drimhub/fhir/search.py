"""FHIR R4 search (search.html): a request parsed into typed criteria, run, and answered as a searchset.

:func:`parse` turns the parameters into a :class:`Query` (no Flask, no SQL);
:mod:`drimhub.store.fhirsearch` runs it; :func:`search` assembles the Bundle
(:mod:`drimhub.fhir.searchset`); :func:`match_ids` serves conditional interactions.

Parameters (search.html §3.1.1): those the registry (:mod:`drimhub.fhir.registry`) declares for
the type, plus ``_id`` and ``_lastUpdated``. Several values separated by commas are ORed; a
parameter repeated is ANDed (§3.1.1.3; ``\\,`` is a literal comma).

token
    ``code``, ``system|code``, ``|code`` (no system), ``system|`` (any code of the system);
    modifiers ``:missing``, ``:not``; ``:of-type`` (``type-system|type-code|value``) on
    ImagingStudy ``identifier`` (the accession: ``v2-0203|ACSN|value``, fhir.md (f)1).
string
    starts-with by default, case- and accent-insensitive (:func:`~drimhub.dicomweb.normalize.fold_text`);
    ``:exact`` (as written), ``:contains``, ``:missing``.
date
    prefixes ``eq`` (default) ``ne`` ``lt`` ``gt`` ``le`` ``ge`` ``sa`` ``eb`` ``ap`` (§3.1.1.4.2);
    a partial date covers its whole precision; a dateTime without a zone is read as UTC (R4
    requires a zone with a time; UTC is this server's reading of one without).
reference
    ``Type/id``, a bare ``id``, an absolute URL on this server's base; modifiers ``:Type``,
    ``:identifier`` (``system|value`` of ``Reference.identifier``), ``:missing``; chains one
    level deep over the target type's parameters (``patient.identifier=s|v``,
    ``subject:Patient.name=x``), §3.1.1.4.13.

Result parameters (§3.1.1.5 ff.): ``_count`` (default :data:`DEFAULT_COUNT`, larger values cut
to :data:`MAX_COUNT`, 0 gives the total only), ``_sort`` (the registry's keys, ``-`` descending),
``_include`` / ``_revinclude`` (the registry's, ``Type:param[:target]``), ``_summary`` (true,
text, data, count, false), ``_elements``, ``_total`` (none, estimate, accurate) and ``_cursor``
(this server's opaque paging key, found in ``next`` links).

``_federated=true`` on ImagingStudy adds the peer nodes' matches to the first page
(:mod:`drimhub.federation.fhir_search`); on another type it is ignored with a warning.
Unknown parameters and unsupported modifiers are ignored with a warning; under ``Prefer:
handling=strict`` they are a 400 (§3.1.1.2). A value a known parameter cannot take is always a 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from drimhub.errors import InvalidQuery, NotFound
from drimhub.fhir.dates import date_range, split_prefix
from drimhub.fhir.registry import ResourceType, SearchParam, resource_type
from drimhub.store.access import Access
from drimhub.store.fhirquery import (DEFAULT_COUNT, Criterion, DateValue, Include, Query, Ref, SortKey,
                                     Token)

MAX_COUNT = 1000
SUMMARY_MODES = ("true", "text", "data", "count", "false")
TOTAL_MODES = ("none", "estimate", "accurate")
#: Modifiers understood per parameter type (others: ignored with a warning, or 400 when strict).
MODIFIERS = {"token": ("missing", "not"), "string": ("missing", "exact", "contains"),
             "date": ("missing",), "reference": ("missing", "identifier"), "uri": ("missing",)}
#: Parameters accepted and left to others (the view's ``_format``) or without effect (``_pretty``).
PASSIVE = frozenset({"_format", "_pretty"})
_IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


# --- parsing ----------------------------------------------------------------------------------

def _split(value: str, sep: str = ",") -> list[str]:
    """``value`` split on ``sep`` not escaped by ``\\`` (§3.1.1.3); escapes are kept for :func:`_unescape`."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            current += value[i:i + 2]
            i += 2
            continue
        if value[i] == sep:
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    parts.append(current)
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\,$|])", r"\1", value)


def parse_token(value: str, name: str) -> Token:
    """``[system|]code`` (§3.1.1.4.10)."""
    pieces = _split(value, "|")
    if len(pieces) == 1:
        return Token(None, _unescape(pieces[0]) or _bad(name, value, "a code"))
    if len(pieces) != 2 or (not pieces[0] and not pieces[1]):
        _bad(name, value, "[system|]code")
    return Token(_unescape(pieces[0]), _unescape(pieces[1]) or None)


def parse_of_type(value: str, name: str) -> Token:
    """``type-system|type-code|value`` of ``identifier:of-type`` (§3.1.1.4.10)."""
    pieces = [_unescape(p) for p in _split(value, "|")]
    if len(pieces) != 3 or not all(pieces):
        _bad(name, value, "type-system|type-code|value")
    return Token(None, pieces[2], (pieces[0], pieces[1]))


def parse_date(value: str, name: str) -> DateValue:
    """``[prefix]date`` (§3.1.1.4.2): the instants the value covers (:func:`drimhub.fhir.dates.date_range`)."""
    prefix, text = split_prefix(value)
    try:
        low, high = date_range(text)
    except ValueError:
        _bad(name, value, "[prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][zone]]]]")
    if prefix == "ap":  # §3.1.1.4.2: within 10 % of the distance to now, at least the value's own range
        spread = max(abs(datetime.now(timezone.utc) - low) / 10, timedelta(0))
        low, high = low - spread, high + spread
    return DateValue(prefix, low, high)


def parse_string(value: str, name: str) -> str:
    if not value:
        _bad(name, value, "a non-empty string")
    return _unescape(value)


def parse_reference(value: str, param: SearchParam, base: str, type_modifier: str | None) -> Ref:
    """``Type/id``, ``id`` or ``{base}/Type/id`` (§3.1.1.4.13)."""
    text = _unescape(value)
    if "://" in text:
        if not text.startswith(base.rstrip("/") + "/"):
            return Ref(foreign=True)
        text = text[len(base.rstrip("/")) + 1:]
    text = re.sub(r"/_history/[^/]+$", "", text)
    ref_type, sep, ref_id = text.rpartition("/")
    if not sep:
        ref_type = type_modifier or (param.targets[0] if len(param.targets) == 1 else None)
    elif not _TYPE.match(ref_type) or (type_modifier and ref_type != type_modifier):
        _bad(param.name, value, "Type/id" if not type_modifier else f"an id of {type_modifier}")
    if not _ID.match(ref_id):
        _bad(param.name, value, "Type/id or an id")
    return Ref(ref_type, ref_id)


def _bad(name: str, value: str, expected: str) -> Any:
    raise InvalidQuery(f"{name}: {value!r} is not {expected}")


class _Parser:
    """One request's parameters → a :class:`Query` (warnings, or errors under ``strict``)."""

    def __init__(self, rtype: ResourceType, base: str, strict: bool) -> None:
        self.rtype, self.base, self.strict = rtype, base, strict
        self.query = Query(rtype)

    def ignore(self, message: str, always_lenient: bool = False) -> None:
        if self.strict and not always_lenient:
            raise InvalidQuery(f"{message} (Prefer: handling=strict)")
        self.query.warnings.append(f"{message}: ignored")

    def run(self, pairs: list[tuple[str, str]]) -> Query:
        query = self.query
        for key, value in pairs:
            name = key.split(":", 1)[0].split(".", 1)[0]
            if key != "_cursor":
                query.pairs.append((key, value))
            handler = _RESULT_PARAMS.get(name)
            if handler is not None:
                handler(self, key, value)
            elif name in PASSIVE:
                continue
            elif name == "_federated":
                self.federated(key, value)
            else:
                self.criterion(self.rtype, key, value)
        return query

    # criteria

    def criterion(self, rtype: ResourceType, key: str, value: str) -> None:
        head, _, chained = key.partition(".")
        name, _, modifier = head.partition(":")
        param = rtype.param(name)
        if param is None:
            self.ignore(f"{rtype.name} has no search parameter {name!r}")
            return
        if chained:
            found = self.chain(param, modifier or None, chained, value)
            if found is not None:
                self.query.criteria.append(found)
            return
        found = self.simple(rtype, param, modifier or None, value)
        if found is not None:
            self.query.criteria.append(found)

    def simple(self, rtype: ResourceType, param: SearchParam, modifier: str | None, value: str) -> Criterion | None:
        allowed = MODIFIERS.get(param.type, ())
        type_modifier = None
        if modifier == "of-type" and rtype.name == "ImagingStudy" and param.name == "identifier":
            return Criterion(param, modifier, tuple(parse_of_type(v, param.name) for v in _split(value)))
        if param.type == "reference" and modifier and _TYPE.match(modifier):
            if modifier not in param.targets:
                raise InvalidQuery(f"{param.name}: {modifier} is not a target of the parameter")
            type_modifier, modifier = modifier, None
        if modifier is not None and modifier not in allowed:
            self.ignore(f"{param.name}:{modifier}: modifier not supported")
            return None
        if modifier == "missing":
            if value not in ("true", "false"):
                _bad(f"{param.name}:missing", value, "true or false")
            return Criterion(param, modifier, (value == "true",))
        if param.type == "reference" and modifier is None:
            return Criterion(param, type_modifier,
                             tuple(parse_reference(v, param, self.base, type_modifier) for v in _split(value)))
        parse = {"token": parse_token, "date": parse_date, "string": parse_string, "uri": parse_string}.get(
            param.type if modifier != "identifier" else "token")
        if parse is None:
            raise InvalidQuery(f"{param.name}: parameters of type {param.type} are not searchable here")
        values = tuple(parse(v, param.name) for v in _split(value))
        return Criterion(param, modifier, values)

    def chain(self, param: SearchParam, modifier: str | None, chained: str, value: str) -> Criterion | None:
        if param.type != "reference":
            raise InvalidQuery(f"{param.name}: only reference parameters can be chained")
        if "." in chained:
            self.ignore(f"{param.name}.{chained}: chains deeper than one level are not supported")
            return None
        targets = [modifier] if modifier else list(param.targets)
        served = [t for t in targets if (r := resource_type(t)) is not None and r.param(chained.split(":")[0])]
        if modifier and modifier not in param.targets:
            raise InvalidQuery(f"{param.name}: {modifier} is not a target of the parameter")
        if len(served) != 1:
            self.ignore(f"{param.name}.{chained}: the chain needs one target type that has that parameter "
                        f"(give it as {param.name}:Type.{chained})")
            return None
        target = resource_type(served[0])
        assert target is not None
        sub_name, _, sub_modifier = chained.partition(":")
        sub_param = target.param(sub_name)
        assert sub_param is not None
        if sub_param.type == "reference" and not sub_modifier:
            raise InvalidQuery(f"{param.name}.{chained}: chains through two references are not supported")
        inner = self.simple(target, sub_param, sub_modifier or None, value)
        if inner is None:
            return None
        return Criterion(param, None, (), chain=inner, target=target.name)

    # result parameters

    def count(self, key: str, value: str) -> None:
        self._plain(key)
        if not value.isdigit():
            _bad("_count", value, "a non-negative integer")
        self.query.count = min(int(value), MAX_COUNT)

    def sort(self, key: str, value: str) -> None:
        self._plain(key)
        keys = []
        for item in _split(value):
            name = item.lstrip("-")
            if name not in self.rtype.sorts:
                raise InvalidQuery(f"_sort: {self.rtype.name} sorts by {', '.join(self.rtype.sorts)}, not {name!r}")
            keys.append(SortKey(name, item.startswith("-")))
        self.query.sort = keys

    def include(self, key: str, value: str) -> None:
        name, _, modifier = key.partition(":")
        if modifier and modifier != "iterate":
            self.ignore(f"{key}: modifier not supported")
            return
        if modifier == "iterate":
            self.query.warnings.append(f"{key}: :iterate is not supported, the include is done once")
        pieces = value.split(":")
        if len(pieces) not in (2, 3) or not all(pieces):
            _bad(name, value, "SourceType:parameter[:TargetType]")
        include = Include(pieces[0], pieces[1], pieces[2] if len(pieces) == 3 else None)
        declared = (self.rtype.includes if name == "_include"
                    else self.rtype.revincludes)
        if f"{include.source}:{include.param}" not in declared:
            raise InvalidQuery(f"{name}={value}: {self.rtype.name} declares {name} "
                               f"{', '.join(declared) or 'none'}")
        source = resource_type(include.source)
        param = source.param(include.param) if source else None
        if include.target and (param is None or include.target not in param.targets):
            raise InvalidQuery(f"{name}={value}: {include.target} is not a target of {include.source}:{include.param}")
        (self.query.includes if name == "_include" else self.query.revincludes).append(include)

    def summary(self, key: str, value: str) -> None:
        self._plain(key)
        if value not in SUMMARY_MODES:
            _bad("_summary", value, " or ".join(SUMMARY_MODES))
        self.query.summary = None if value == "false" else value

    def elements(self, key: str, value: str) -> None:
        self._plain(key)
        names = [v.strip() for v in value.split(",")]
        if not all(re.match(r"^[a-z][A-Za-z0-9]*$", n) for n in names):
            _bad("_elements", value, "a list of element names")
        self.query.elements = names

    def total(self, key: str, value: str) -> None:
        self._plain(key)
        if value not in TOTAL_MODES:
            _bad("_total", value, " or ".join(TOTAL_MODES))
        self.query.total = value

    def federated(self, key: str, value: str) -> None:
        """``_federated=true``: ImagingStudy matches of the peers too (added by drimhub.federation.fhir_search)."""
        self._plain(key)
        if value not in ("true", "false"):
            _bad("_federated", value, "true or false")
        if value == "true" and self.rtype.name != "ImagingStudy":
            self.ignore("_federated: only ImagingStudy searches reach the peer nodes", always_lenient=True)

    def cursor(self, key: str, value: str) -> None:
        self._plain(key)
        self.query.cursor = value

    def _plain(self, key: str) -> None:
        if ":" in key:
            raise InvalidQuery(f"{key}: {key.split(':')[0]} takes no modifier")


_RESULT_PARAMS = {"_count": _Parser.count, "_sort": _Parser.sort, "_include": _Parser.include,
                  "_revinclude": _Parser.include, "_summary": _Parser.summary, "_elements": _Parser.elements,
                  "_total": _Parser.total, "_cursor": _Parser.cursor}


def _pairs(args: MultiDict[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(args, MultiDict):
        return list(args.items(multi=True))
    return list(args)


def parse(type_: str, args: MultiDict[str, str] | Iterable[tuple[str, str]], base: str = "",
          strict: bool = False) -> Query:
    """A :class:`Query` from search parameters.

    Raises
    ------
    NotFound
        ``type_`` is not a searchable type of this server.
    InvalidQuery
        A value a known parameter cannot take; an unknown parameter or modifier when ``strict``.
    """
    rtype = resource_type(type_)
    if rtype is None or "search-type" not in rtype.interactions:
        raise NotFound(f"{type_} is not a resource type searched by this server")
    return _Parser(rtype, base, strict).run(_pairs(args))


# --- entry points -----------------------------------------------------------------------------

#: Matches a conditional interaction needs to tell apart: none, one, or several.
CONDITIONAL_LIMIT = 2


def match_ids(session: Session, type_: str, query: str, access: Access) -> list[str]:
    """Ids of the ``type_`` resources ``access`` sees that the query string ``query`` matches:
    none, one, or two (two stand for "several": no more are read).

    For conditional create, update and delete and conditional references (http.html#ccreate,
    #cond-update, #cdelete; transaction references ``Type?criteria``). Parsed as a strict
    search, so that a criterion this server does not understand never widens a match. A query
    without any criterion (only ``_format``, ``_pretty``...) would match every resource: it is
    refused, and so are result parameters (``_count``, ``_sort``...), which a match cannot obey.

    Raises
    ------
    InvalidQuery
        A malformed or unknown parameter, a result parameter, or no criterion at all.
    """
    from drimhub.fhir.searchset import scope_of
    from drimhub.store import fhirsearch

    pairs = parse_qsl(query, keep_blank_values=True)
    results = sorted({k.split(":", 1)[0] for k, _ in pairs if k.split(":", 1)[0] in _RESULT_PARAMS})
    if results:
        raise InvalidQuery(f"a conditional {type_} match takes search criteria, not {', '.join(results)}")
    parsed = parse(type_, pairs, strict=True)
    if not parsed.criteria:
        raise InvalidQuery(f"a conditional interaction on {type_} needs search criteria: {query!r} has none")
    found = fhirsearch.id_select(scope_of(session, access, ""), parsed.type, parsed.criteria)
    if isinstance(found, list):
        return found[:CONDITIONAL_LIMIT]
    return list(session.scalars(found.limit(CONDITIONAL_LIMIT)))


def search(session: Session, type_: str, args: MultiDict[str, str] | Iterable[tuple[str, str]], access: Access,
           base: str, strict: bool) -> tuple[dict[str, Any], list[str]]:
    """The searchset Bundle of a search (search.html, bundle.html#searchset) and its warnings.

    The warnings (parameters ignored, includes cut) are also in the Bundle, as an
    OperationOutcome entry with ``search.mode`` ``outcome``.

    Raises
    ------
    InvalidQuery
        A malformed value, an unknown ``_sort`` or include, a tampered ``_cursor``; an unknown
        parameter or modifier under ``strict``.
    """
    from drimhub.fhir import searchset

    parsed = parse(type_, args, base, strict)
    return searchset.run(session, parsed, access, base), parsed.warnings


__all__ = ["Criterion", "DEFAULT_COUNT", "DateValue", "Include", "MAX_COUNT", "Query", "Ref", "SortKey", "Token",
           "match_ids", "parse", "search"]
