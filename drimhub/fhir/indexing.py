"""The search index of a stored resource: one :class:`~drimhub.fhir.registry.IndexValue` per value.

The registry's FHIRPath expressions of the stored types are simple paths, optionally ending in
``.where(resolve() is Type)``, joined by ``|`` (a union); two more steps are understood, those
of the IHE RAD MADO parameters: ``.where(type.coding.where(system = 'S' and code = 'C').exists())``
(keep the elements whose ``type`` has that coding) and ``.extension('URL')`` (the extensions
with that url). :func:`index_values` walks them over the resource JSON (a choice element such
as ``DiagnosticReport.effective`` matches ``effectiveDateTime`` and ``effectivePeriod``) and
turns each value found into rows by the parameter's type (FHIR R4 search.html §3.1.1.4
"Search Parameter Types"):

token
    Identifier → ``system``/``value``; CodeableConcept → one row per coding; Coding →
    ``system``/``code``; a primitive (code, boolean, id) → its text, no system.
string
    HumanName → one row per part (family, each given, prefix, suffix, text); a string → itself.
    ``value`` folded (:func:`~drimhub.dicomweb.normalize.fold_text`), ``exact`` as written.
date
    date, dateTime, instant → the range it covers at its precision (``2024`` is the whole year),
    by :func:`drimhub.fhir.dates.date_range` (a dateTime without a zone is UTC); Period → start
    to end.
reference
    ``Type/id`` (relative, ``/_history/n`` dropped) → ``ref_type``/``ref_id``;
    ``Reference.identifier`` → ``system``/``value``. Absolute URLs are stored relative by the
    writers when they point at this server (:func:`drimhub.fhir.rest.localize_references`); other
    absolute URLs, contained (``#x``) and ``urn:`` references are not indexed.

``_id`` and ``_lastUpdated`` are columns of the resource row, not index rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from drimhub.dicomweb.normalize import fold_text
from drimhub.fhir.dates import date_range
from drimhub.fhir.registry import IndexValue, SearchParam, resource_type

_WHERE = re.compile(r"^(.*)\.where\(resolve\(\) is (\w+)\)$")
_CODED = re.compile(r"^where\(\s*type\.coding\.where\(\s*system\s*=\s*'([^']*)'\s+and\s+code\s*=\s*'([^']*)'\s*\)"
                    r"\.exists\(\)\s*\)$")
_EXTENSION = re.compile(r"^extension\('([^']+)'\)$")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_HUMAN_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_MAX = 255


def index_values(resource: dict[str, Any]) -> list[IndexValue]:
    """Every index row of ``resource`` (a stored type of the registry; other types have none)."""
    rtype = resource_type(str(resource.get("resourceType")))
    if rtype is None or rtype.derived:
        return []
    rows: list[IndexValue] = []
    for param in rtype.params:
        for path, target in _parse(param):
            for value in _walk(resource, path):
                found = _EXTRACTORS[param.type](param, value, target)
                rows.extend(_with_bare_uids(found) if (rtype.name, param.name) in BARE_UID_PARAMS else found)
    return list(dict.fromkeys(rows))  # the same value twice is one row


#: (type, parameter) whose ``urn:oid:<uid>`` values are found by the bare UID too: MADO's
#: ``study-instance-uid`` (its identifier is written ``urn:oid:<uid>`` as ImagingStudy's; DICOM
#: consumers search with the bare UID, as QIDO-RS has it).
BARE_UID_PARAMS = frozenset({("DocumentReference", "study-instance-uid")})


def _with_bare_uids(rows: list[IndexValue]) -> list[IndexValue]:
    """``rows`` and, for each ``urn:oid:`` value, the same row with the bare UID."""
    bare = [replace(row, value=row.value[len("urn:oid:"):]) for row in rows
            if row.value and row.value.startswith("urn:oid:")]
    return rows + bare


def _parse(param: SearchParam) -> list[tuple[list[str], str | None]]:
    """The element path and the ``resolve() is`` target of each branch of a registry expression."""
    branches = []
    for expression in _split(param.expression, "|"):
        target = None
        match = _WHERE.match(expression)
        if match:
            expression, target = match.groups()
        branches.append((_split(expression, ".")[1:], target))
    return branches


def _split(expression: str, sep: str) -> list[str]:
    """``expression`` split on ``sep`` outside parentheses and quoted strings, parts stripped."""
    parts, current, depth, quoted = [], "", 0, False
    for char in expression:
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == sep:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return parts


def _has_type_coding(node: dict[str, Any], system: str, code: str) -> bool:
    codings = (node.get("type") or {}).get("coding") or []
    return any(isinstance(c, dict) and c.get("system") == system and c.get("code") == code for c in codings)


def _walk(node: Any, path: list[str]) -> Iterator[Any]:
    """The values at ``path`` below ``node`` (arrays flattened, choice elements expanded)."""
    if not path:
        if isinstance(node, list):
            yield from node
        elif node is not None:
            yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, path)
        return
    if not isinstance(node, dict):
        return
    name, rest = path[0], path[1:]
    coded = _CODED.match(name)
    if coded:  # .where(type.coding.where(system = 'S' and code = 'C').exists())
        if _has_type_coding(node, *coded.groups()):
            yield from _walk(node, rest)
        return
    extension = _EXTENSION.match(name)
    if extension:  # .extension('URL')
        for item in node.get("extension") or []:
            if isinstance(item, dict) and item.get("url") == extension.group(1):
                yield from _walk(item, rest)
        return
    if name in node:
        yield from _walk(node[name], rest)
        return
    for key, value in node.items():  # choice element: effective → effectiveDateTime, effectivePeriod
        if key.startswith(name) and key[len(name):len(name) + 1].isupper():
            yield from _walk(value, rest)


# --- per parameter type -----------------------------------------------------------------------

def _tokens(param: SearchParam, value: Any, _target: str | None) -> list[IndexValue]:
    if isinstance(value, bool):
        return [IndexValue(param.name, value="true" if value else "false")]
    if isinstance(value, (str, int)):
        return [IndexValue(param.name, value=_cut(str(value)))]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "code" not in value and "value" not in value):
        return [row for coding in value.get("coding", []) for row in _tokens(param, coding, None)]
    code = value.get("code", value.get("value"))
    if code is None:
        return []
    return [IndexValue(param.name, system=_cut(value.get("system")), value=_cut(str(code)))]


def _strings(param: SearchParam, value: Any, _target: str | None) -> list[IndexValue]:
    if isinstance(value, str):
        return [IndexValue(param.name, value=_cut(fold_text(value)), exact=_cut(value))]
    if not isinstance(value, dict):
        return []
    parts = [value.get(p) for p in _HUMAN_NAME_PARTS]
    texts = [t for part in parts for t in (part if isinstance(part, list) else [part]) if isinstance(t, str)]
    return [row for t in texts for row in _strings(param, t, None)]


def _dates(param: SearchParam, value: Any, _target: str | None) -> list[IndexValue]:
    if isinstance(value, str):
        low, high = date_range(value)
        return [IndexValue(param.name, low=low, high=high)]
    if isinstance(value, dict) and ("start" in value or "end" in value):
        low = date_range(value["start"])[0] if value.get("start") else None
        high = date_range(value["end"])[1] if value.get("end") else None
        return [IndexValue(param.name, low=low, high=high)]
    return []


def _references(param: SearchParam, value: Any, target: str | None) -> list[IndexValue]:
    if not isinstance(value, dict):
        return []
    ref_type = ref_id = None
    match = _RELATIVE.match(value.get("reference") or "")
    if match:
        ref_type, ref_id = match.groups()
    elif target is not None and value.get("type") not in (None, target):
        return []
    if target is not None and ref_type not in (None, target):
        return []
    identifier = value.get("identifier") or {}
    system, ident = identifier.get("system"), identifier.get("value")
    if ref_type is None and ident is None:
        return []
    if target is not None and ref_type is None and value.get("type") != target:
        return []  # resolve() is Patient cannot be told from a bare identifier without Reference.type
    return [IndexValue(param.name, system=_cut(system) if ident else None, value=_cut(ident),
                       ref_type=ref_type, ref_id=ref_id)]


_EXTRACTORS = {"token": _tokens, "string": _strings, "date": _dates, "reference": _references,
               "uri": lambda p, v, t: [IndexValue(p.name, value=_cut(v))] if isinstance(v, str) else []}


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:_MAX]

