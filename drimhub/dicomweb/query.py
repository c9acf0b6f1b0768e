"""QIDO-RS query parameters (PS3.18 §8.3.4) parsed into a typed, frozen :class:`QueryExpression`.

Pure: no Flask, no SQLAlchemy. :func:`parse_query` takes the request arguments (a werkzeug
``MultiDict`` or any mapping with ``getlist``) and either returns the expression or raises
:class:`~drimhub.server.errors.InvalidQuery` with a readable reason, so that a bad query is a 400
before any SQL runs (an unknown or unsupported key is never silently skipped).

Matching (PS3.4 C.2.2.2) as implemented here:

- an empty value is universal matching (C.2.2.2.3): no filter, the attribute is returned;
- ``*`` / ``?`` in a text value is wildcard matching (C.2.2.2.4); not for DA, TM, UI, IS;
- ``A-B``, ``A-`` and ``-B`` on DA / TM are range matching (C.2.2.2.5); a partial TM upper bound
  covers the whole hour or minute it names (``-10`` ends at 10:59:59.999999);
- a comma- or backslash-separated list on UI is list of UID matching (C.2.2.2.2); a CS list on
  Modality / ModalitiesInStudy matches any of its values;
- PN values are folded with :func:`~drimhub.dicomweb.normalize.fold_text` (case- and
  accent-insensitive, as the stored ``*_key`` columns are);
- ``fuzzymatching=true`` is supported for PN (PS3.18 §8.3.4.1): each word of the value must
  start a word (split on ``^``, space or ``-``) of the stored name, in any order, so
  ``PatientName=jer dup`` finds ``DUPONT^Jérôme``. A PN value with wildcards stays a wildcard
  match. No ``Warning`` header is therefore ever sent for fuzzy matching.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from drimhub.dicomweb.normalize import fold_text, time_key
from drimhub.dicomweb.uids import is_valid_uid
from drimhub.errors import InvalidQuery


class Level(enum.IntEnum):
    """Query/retrieve level (PS3.4 C.3); a higher value is a lower (child) level."""

    STUDY = 1
    SERIES = 2
    INSTANCE = 3


@dataclass(frozen=True)
class MatchKey:
    """One supported matching key: its level, the indexed column and the VR of its matcher."""

    keyword: str
    tag: str
    level: Level
    #: ``table.column`` of the index (tables: study, series, instance).
    column: str
    vr: str
    #: Whether a comma/backslash list of values is accepted (UI lists, CS lists).
    multi: bool = False


def _key(keyword: str, level: Level, column: str, multi: bool = False) -> MatchKey:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return MatchKey(keyword, f"{tag:08X}", level, column, dictionary_VR(tag), multi)


_S, _R, _I = Level.STUDY, Level.SERIES, Level.INSTANCE

#: Supported matching keys per level: PS3.18 Table 6.7.1-1 ("Study, Series and Instance Query
#: Attributes") plus the extra study keys of the DRIMbox use cases (IssuerOfPatientID,
#: PatientBirthDate, PatientSex, StudyDescription, InstitutionName, SOPClassesInStudy).
MATCH_KEYS: dict[str, MatchKey] = {k.keyword: k for k in (
    # Study level (Table 6.7.1-1, "Study")
    _key("StudyDate", _S, "study.study_date"),
    _key("StudyTime", _S, "study.study_time"),
    _key("AccessionNumber", _S, "study.accession_number"),
    _key("ModalitiesInStudy", _S, "series.modality", multi=True),   # matched via EXISTS on series
    _key("ReferringPhysicianName", _S, "study.referring_physician_key"),
    _key("PatientName", _S, "study.patient_name_key"),
    _key("PatientID", _S, "study.patient_id"),
    _key("StudyInstanceUID", _S, "study.study_uid", multi=True),
    _key("StudyID", _S, "study.study_id"),
    _key("IssuerOfPatientID", _S, "study.issuer_of_patient_id"),
    _key("PatientBirthDate", _S, "study.patient_birth_date"),
    _key("PatientSex", _S, "study.patient_sex"),
    _key("StudyDescription", _S, "study.study_description"),
    _key("InstitutionName", _S, "study.institution_name"),
    _key("SOPClassesInStudy", _S, "instance.sop_class_uid", multi=True),  # EXISTS on instances
    # Series level (Table 6.7.1-1, "Series")
    _key("Modality", _R, "series.modality", multi=True),
    _key("SeriesInstanceUID", _R, "series.series_uid", multi=True),
    _key("SeriesNumber", _R, "series.series_number"),
    _key("SeriesDescription", _R, "series.series_description"),
    _key("BodyPartExamined", _R, "series.body_part"),
    _key("PerformedProcedureStepStartDate", _R, "series.pps_start_date"),
    _key("PerformedProcedureStepStartTime", _R, "series.pps_start_time"),
    # Instance level (Table 6.7.1-1, "Instance")
    _key("SOPClassUID", _I, "instance.sop_class_uid", multi=True),
    _key("SOPInstanceUID", _I, "instance.sop_uid", multi=True),
    _key("InstanceNumber", _I, "instance.instance_number"),
)}


# --- conditions -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """A condition on one matching key."""

    key: MatchKey


@dataclass(frozen=True)
class Universal(Condition):
    """Universal matching (PS3.4 C.2.2.2.3): every entity matches; the key is returned."""


@dataclass(frozen=True)
class Single(Condition):
    """Single value matching (PS3.4 C.2.2.2.1); ``value`` is normalised like the column."""

    value: str | int


@dataclass(frozen=True)
class Wildcard(Condition):
    """Wildcard matching (PS3.4 C.2.2.2.4): ``pattern`` keeps the DICOM ``*`` and ``?``."""

    pattern: str


@dataclass(frozen=True)
class Range(Condition):
    """Range matching (PS3.4 C.2.2.2.5); an open end is None. Bounds are in column form."""

    low: str | None
    high: str | None


@dataclass(frozen=True)
class ValueList(Condition):
    """List of UID matching (PS3.4 C.2.2.2.2), or a list of CS values: any one matches."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class FuzzyName(Condition):
    """PN fuzzy matching (PS3.18 §8.3.4.1): every folded word prefixes a word of the name."""

    words: tuple[str, ...]


@dataclass(frozen=True)
class QueryExpression:
    """A parsed QIDO-RS request."""

    level: Level
    conditions: tuple[Condition, ...]
    #: Requested return tags (8 hex digits), from ``includefield``.
    includefields: tuple[str, ...] = ()
    include_all: bool = False
    fuzzymatching: bool = False
    limit: int | None = None
    offset: int = 0
    #: UIDs fixed by the URL path (PS3.18 §10.6.1); they decide which parent attributes
    #: are returned (PS3.18 §10.6.3.3).
    study_uid: str | None = None
    series_uid: str | None = None


class Args(Protocol):
    """What the parser needs from the request arguments (a werkzeug ``MultiDict``)."""

    def keys(self) -> Iterable[str]: ...  # pragma: no cover

    def getlist(self, key: str) -> list[str]: ...  # pragma: no cover


# --- value parsers, one per VR (PS3.4 C.2.2.2) ----------------------------------------------

_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^(\d{2})((\d{2})((\d{2})(\.\d{1,6})?)?)?$")
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})  # C.2.2.2.4
_FUZZY_SPLIT = re.compile(r"[\^ \-=]+")


def _bad(key: MatchKey, value: str, why: str) -> InvalidQuery:
    return InvalidQuery(f"{key.keyword}={value[:80]!r}: {why}")


def _date(key: MatchKey, value: str) -> str:
    if not _DA.match(value):
        raise _bad(key, value, "a date is YYYYMMDD (PS3.5 Table 6.2-1, DA)")
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise _bad(key, value, "not a calendar date") from None
    return value


def _time(key: MatchKey, value: str, upper: bool = False) -> str:
    m = _TM.match(value)
    if not m or int(m.group(1)) > 23 or int(m.group(3) or 0) > 59 or int(m.group(5) or 0) > 60:
        raise _bad(key, value, "a time is HH[MM[SS[.FFFFFF]]] (PS3.5 Table 6.2-1, TM)")
    if upper:  # a partial upper bound covers the span it names (PS3.4 C.2.2.2.5)
        main, _, frac = value.partition(".")
        value = main + "5959"[len(main) - 2:] + "." + frac.ljust(6, "9")
    return time_key(value)


def _range(key: MatchKey, value: str, bound: Callable[[MatchKey, str, bool], str]) -> Condition:
    low, _, high = value.partition("-")
    if not low and not high:
        raise _bad(key, value, "a range needs at least one bound (PS3.4 C.2.2.2.5)")
    lo = bound(key, low, False) if low else None
    hi = bound(key, high, True) if high else None
    if lo is not None and hi is not None and lo > hi:
        raise _bad(key, value, "the range ends before it starts")
    return Range(key, lo, hi)


def _parse_da(key: MatchKey, value: str, fuzzy: bool) -> Condition:
    if "-" in value:
        return _range(key, value, lambda k, v, _upper: _date(k, v))
    return Single(key, _date(key, value))


def _parse_tm(key: MatchKey, value: str, fuzzy: bool) -> Condition:
    if "-" in value:
        return _range(key, value, _time)
    return Single(key, _time(key, value))


def _parse_ui(key: MatchKey, value: str, fuzzy: bool) -> Condition:
    uids = tuple(u.strip() for u in re.split(r"[,\\]", value))
    for uid in uids:
        if not is_valid_uid(uid):
            raise _bad(key, value, f"{uid[:70]!r} is not a UID (PS3.5 §9.1)")
    return Single(key, uids[0]) if len(uids) == 1 else ValueList(key, uids)


#: IS values: at most 12 characters, in the range of a signed 32-bit integer (PS3.5 Table 6.2-1).
IS_RANGE = (-(2**31), 2**31 - 1)


def _parse_is(key: MatchKey, value: str, fuzzy: bool) -> Condition:
    try:
        number = int(value) if len(value.strip()) <= 12 else None
    except ValueError:
        number = None
    if number is None or not IS_RANGE[0] <= number <= IS_RANGE[1]:
        raise _bad(key, value, "an integer string of at most 12 characters within ±2^31 is expected "
                               "(PS3.5 Table 6.2-1, IS)")
    return Single(key, number)


def _parse_text(key: MatchKey, value: str, fuzzy: bool) -> Condition:
    if key.multi and re.search(r"[,\\]", value):
        values = tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
        if not values or any(c in v for v in values for c in "*?"):
            raise _bad(key, value, "a value list holds plain values")
        return ValueList(key, values)
    if "*" in value or "?" in value:
        return Wildcard(key, value)  # PS3.4 C.2.2.2.4
    return Single(key, value)


def _parse_pn(key: MatchKey, value: str, fuzzy: bool) -> Condition:
    folded = fold_text(value)  # same folding as the *_key columns (normalize.fold_text)
    if fuzzy and "*" not in folded and "?" not in folded:
        words = tuple(w for w in _FUZZY_SPLIT.split(folded) if w)
        if words:
            return FuzzyName(key, words)
    return _parse_text(key, folded, fuzzy)


#: Matcher per VR of the supported keys (PS3.4 C.2.2.2: which matching applies to which VR).
PARSERS: dict[str, Callable[[MatchKey, str, bool], Condition]] = {
    "DA": _parse_da, "TM": _parse_tm, "UI": _parse_ui, "IS": _parse_is, "PN": _parse_pn,
    "CS": _parse_text, "LO": _parse_text, "SH": _parse_text,
}
assert all(k.vr in PARSERS for k in MATCH_KEYS.values())


# --- attributes and parameters --------------------------------------------------------------

def attribute_tag(name: str) -> str:
    """The 8-hex-digit tag of an attribute named by keyword or by tag.

    Raises
    ------
    InvalidQuery
        ``name`` is neither a dictionary keyword nor 8 hex digits; or a sequence path.
    """
    if "." in name:
        raise InvalidQuery(f"{name[:80]!r}: sequence matching is not supported")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidQuery(f"{name[:80]!r} is not a DICOM keyword or tag (PS3.18 §8.3.4.1)")
    return f"{tag:08X}"


def _match_key(name: str, level: Level) -> MatchKey:
    tag = attribute_tag(name)
    keyword = keyword_for_tag(int(tag, 16))
    key = MATCH_KEYS.get(keyword)
    if key is None or key.level > level:  # parent keys are allowed at lower levels
        raise InvalidQuery(f"{name[:80]!r} is not a matching key at {level.name.lower()} level "
                           "(PS3.18 Table 6.7.1-1)")
    return key


def _single(args: Args, name: str) -> str:
    values = args.getlist(name)
    if len(values) != 1:
        raise InvalidQuery(f"{name[:80]!r} is given {len(values)} times")
    return values[0]


def _count(args: Args, name: str) -> int:
    value = _single(args, name)
    if not re.fullmatch(r"\d{1,9}", value.strip()):
        raise InvalidQuery(f"{name}={value[:80]!r}: a non-negative integer is expected (PS3.18 §8.3.4.4)")
    return int(value)


def _fuzzy(args: Args) -> bool:
    value = _single(args, "fuzzymatching").strip().lower()
    if value not in ("true", "false"):
        raise InvalidQuery(f"fuzzymatching={value[:80]!r}: true or false (PS3.18 §8.3.4.1)")
    return value == "true"


def _includefields(args: Args) -> tuple[tuple[str, ...], bool]:
    tags: list[str] = []
    include_all = False
    for raw in args.getlist("includefield"):
        for name in (n.strip() for n in raw.split(",")):
            if name == "all":
                include_all = True
            elif name:
                tags.append(attribute_tag(name))
    return tuple(dict.fromkeys(tags)), include_all


# PS3.18 Table 8.3.4-1; accept and charset are the §8.3.3 media type parameters, read by the view
_PARAMETERS = frozenset({"limit", "offset", "fuzzymatching", "includefield", "accept", "charset"})


def parse_query(level: Level, args: Args, study_uid: str | None = None,
                series_uid: str | None = None) -> QueryExpression:
    """Parse QIDO-RS query parameters into a :class:`QueryExpression`.

    Parameters
    ----------
    level : Level
        The level searched (PS3.18 §10.6.1: studies, series or instances).
    args : Args
        The decoded query parameters (werkzeug ``MultiDict``).
    study_uid, series_uid : str, optional
        UIDs from the URL path; they become single value conditions.

    Returns
    -------
    QueryExpression

    Raises
    ------
    InvalidQuery
        Unknown parameter or attribute, a key not supported at ``level``, a malformed value,
        a bad ``limit``/``offset``/``fuzzymatching``.
    """
    fuzzy = _fuzzy(args) if args.getlist("fuzzymatching") else False
    conditions: list[Condition] = []
    for uid, keyword in ((study_uid, "StudyInstanceUID"), (series_uid, "SeriesInstanceUID")):
        if uid is not None:
            conditions.append(_parse_ui(MATCH_KEYS[keyword], uid, False))
    for name in args.keys():
        if name in _PARAMETERS:
            continue
        key = _match_key(name, level)
        value = _single(args, name).strip()
        conditions.append(PARSERS[key.vr](key, value, fuzzy) if value else Universal(key))
    includefields, include_all = _includefields(args)
    return QueryExpression(
        level=level, conditions=tuple(conditions), includefields=includefields,
        include_all=include_all, fuzzymatching=fuzzy,
        limit=_count(args, "limit") if args.getlist("limit") else None,
        offset=_count(args, "offset") if args.getlist("offset") else 0,
        study_uid=study_uid, series_uid=series_uid)
