"""QIDO-RS query parsing (PS3.18 §8.3.4, PS3.4 C.2.2.2): no database, no HTTP."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from drimhub.dicomweb.query import (MATCH_KEYS, Condition, FuzzyName, Level, QueryExpression, Range, Single,
                                    Universal, ValueList, Wildcard, attribute_tag, parse_query)
from drimhub.errors import InvalidQuery

S, R, I = Level.STUDY, Level.SERIES, Level.INSTANCE
K = MATCH_KEYS
UID1, UID2 = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def parse(level: Level, params: list[tuple[str, str]], **path: str) -> QueryExpression:
    return parse_query(level, MultiDict(params), **path)


# (level, query parameters, the one condition expected) -- PS3.4 C.2.2.2 / PS3.18 §8.3.4.1
CONDITIONS = [
    pytest.param(S, [("PatientID", "PAT001")], Single(K["PatientID"], "PAT001"), id="PS3.4-C.2.2.2.1-single"),
    pytest.param(S, [("00100020", "PAT001")], Single(K["PatientID"], "PAT001"), id="PS3.18-8.3.4.1-tag"),
    pytest.param(S, [("00100020", "")], Universal(K["PatientID"]), id="PS3.4-C.2.2.2.3-universal"),
    pytest.param(S, [("PatientID", "PAT*")], Wildcard(K["PatientID"], "PAT*"), id="PS3.4-C.2.2.2.4-wildcard-star"),
    pytest.param(S, [("AccessionNumber", "AC?001")], Wildcard(K["AccessionNumber"], "AC?001"),
                 id="PS3.4-C.2.2.2.4-wildcard-question"),
    pytest.param(S, [("PatientName", "DUPONT^Jérôme")], Single(K["PatientName"], "dupont^jerome"),
                 id="PS3.4-C.2.2.2.1-pn-folded"),
    pytest.param(S, [("PatientName", "Dupont*")], Wildcard(K["PatientName"], "dupont*"),
                 id="PS3.4-C.2.2.2.4-pn-wildcard-folded"),
    pytest.param(S, [("PatientName", "jér DUP"), ("fuzzymatching", "true")],
                 FuzzyName(K["PatientName"], ("jer", "dup")), id="PS3.18-8.3.4.1-fuzzy-pn"),
    pytest.param(S, [("PatientName", "dup*"), ("fuzzymatching", "true")], Wildcard(K["PatientName"], "dup*"),
                 id="PS3.18-8.3.4.1-fuzzy-with-wildcard-stays-wildcard"),
    pytest.param(S, [("PatientID", "PAT001"), ("fuzzymatching", "true")], Single(K["PatientID"], "PAT001"),
                 id="PS3.18-8.3.4.1-fuzzy-only-pn"),
    pytest.param(S, [("StudyDate", "20240315")], Single(K["StudyDate"], "20240315"), id="PS3.4-C.2.2.2.1-date"),
    pytest.param(S, [("StudyDate", "20240101-20241231")], Range(K["StudyDate"], "20240101", "20241231"),
                 id="PS3.4-C.2.2.2.5-closed-range"),
    pytest.param(S, [("StudyDate", "20240101-")], Range(K["StudyDate"], "20240101", None),
                 id="PS3.4-C.2.2.2.5-open-range"),
    pytest.param(S, [("StudyDate", "-20240101")], Range(K["StudyDate"], None, "20240101"),
                 id="PS3.4-C.2.2.2.5-open-range-low"),
    pytest.param(S, [("StudyTime", "1015")], Single(K["StudyTime"], "101500.000000"), id="PS3.4-C.2.2.2.1-time"),
    pytest.param(S, [("StudyTime", "10-1030")], Range(K["StudyTime"], "100000.000000", "103059.999999"),
                 id="PS3.4-C.2.2.2.5-time-range-partial-upper"),
    pytest.param(S, [("StudyTime", "080000.5-")], Range(K["StudyTime"], "080000.500000", None),
                 id="PS3.4-C.2.2.2.5-time-fraction"),
    pytest.param(S, [("StudyInstanceUID", f"{UID1},{UID2}")], ValueList(K["StudyInstanceUID"], (UID1, UID2)),
                 id="PS3.4-C.2.2.2.2-uid-list-comma"),
    pytest.param(S, [("StudyInstanceUID", f"{UID1}\\{UID2}")], ValueList(K["StudyInstanceUID"], (UID1, UID2)),
                 id="PS3.4-C.2.2.2.2-uid-list-backslash"),
    pytest.param(S, [("ModalitiesInStudy", "CT,MR")], ValueList(K["ModalitiesInStudy"], ("CT", "MR")),
                 id="PS3.18-6.7.1-modalities-list"),
    pytest.param(I, [("PatientID", "X")], Single(K["PatientID"], "X"), id="PS3.18-6.7.1-parent-key-at-instance"),
    pytest.param(R, [("SeriesNumber", "3")], Single(K["SeriesNumber"], 3), id="PS3.4-C.2.2.2.1-integer"),
    pytest.param(I, [("SOPClassUID", UID1)], Single(K["SOPClassUID"], UID1), id="PS3.4-C.2.2.2.1-uid"),
]


@pytest.mark.parametrize("level, params, expected", CONDITIONS)
def test_condition(level: Level, params: list[tuple[str, str]], expected: Condition) -> None:
    assert parse(level, params).conditions == (expected,)


# (level, query parameters, fragment of the 400 reason) -- PS3.18 §8.3.4, PS3.4 C.2.2.2
ERRORS = [
    pytest.param(S, [("Foo", "1")], "not a DICOM keyword", id="PS3.18-8.3.4.1-unknown-keyword"),
    pytest.param(S, [("0010002", "1")], "not a DICOM keyword", id="PS3.18-8.3.4.1-short-tag"),
    pytest.param(S, [("Rows", "512")], "not a matching key at study", id="PS3.18-6.7.1-1-unsupported-key"),
    pytest.param(S, [("Modality", "CT")], "not a matching key at study", id="PS3.18-6.7.1-1-child-key"),
    pytest.param(R, [("SOPInstanceUID", UID1)], "not a matching key at series", id="PS3.18-6.7.1-1-instance-key"),
    pytest.param(S, [("00400275.0020000D", UID1)], "sequence matching", id="PS3.18-8.3.4.1-sequence"),
    pytest.param(S, [("StudyDate", "2024")], "YYYYMMDD", id="PS3.5-DA-short-date"),
    pytest.param(S, [("StudyDate", "20240230")], "calendar", id="PS3.5-DA-impossible-date"),
    pytest.param(S, [("StudyDate", "2024*")], "YYYYMMDD", id="PS3.4-C.2.2.2.4-no-wildcard-on-DA"),
    pytest.param(S, [("StudyDate", "-")], "at least one bound", id="PS3.4-C.2.2.2.5-empty-range"),
    pytest.param(S, [("StudyDate", "20241231-20240101")], "ends before", id="PS3.4-C.2.2.2.5-reversed-range"),
    pytest.param(S, [("StudyDate", "20240101-2024")], "YYYYMMDD", id="PS3.4-C.2.2.2.5-bad-bound"),
    pytest.param(S, [("StudyTime", "2500")], "HH", id="PS3.5-TM-bad-hour"),
    pytest.param(S, [("StudyTime", "10:15")], "HH", id="PS3.5-TM-colon"),
    pytest.param(S, [("StudyInstanceUID", "1.2.abc")], "not a UID", id="PS3.5-9.1-bad-uid"),
    pytest.param(S, [("StudyInstanceUID", "1.2.3*")], "not a UID", id="PS3.4-C.2.2.2.4-no-wildcard-on-UI"),
    pytest.param(S, [("StudyInstanceUID", f"{UID1},")], "not a UID", id="PS3.4-C.2.2.2.2-empty-list-item"),
    pytest.param(R, [("SeriesNumber", "three")], "integer", id="PS3.5-IS-not-integer"),
    pytest.param(S, [("limit", "ten")], "non-negative integer", id="PS3.18-8.3.4.4-limit-not-integer"),
    pytest.param(S, [("limit", "-1")], "non-negative integer", id="PS3.18-8.3.4.4-limit-negative"),
    pytest.param(S, [("offset", "-5")], "non-negative integer", id="PS3.18-8.3.4.4-offset-negative"),
    pytest.param(S, [("offset", "1.5")], "non-negative integer", id="PS3.18-8.3.4.4-offset-not-integer"),
    pytest.param(S, [("limit", "1"), ("limit", "2")], "given 2 times", id="PS3.18-8.3.4-limit-twice"),
    pytest.param(S, [("PatientID", "A"), ("PatientID", "B")], "given 2 times", id="PS3.18-8.3.4.1-key-twice"),
    pytest.param(S, [("fuzzymatching", "yes")], "true or false", id="PS3.18-8.3.4.1-fuzzy-not-boolean"),
    pytest.param(S, [("includefield", "NotAKeyword")], "not a DICOM keyword", id="PS3.18-8.3.4.3-bad-include"),
    pytest.param(S, [("ModalitiesInStudy", "CT,M*")], "plain values", id="PS3.4-C.2.2.2.2-list-no-wildcard"),
    pytest.param(Level.INSTANCE, [("InstanceNumber", "99999999999999999999")], "at most 12 characters",
                 id="PS3.5-6.2-IS-too-long"),
    pytest.param(Level.SERIES, [("SeriesNumber", "-2147483649")], "within", id="PS3.5-6.2-IS-out-of-range"),
]


@pytest.mark.parametrize("level, params, reason", ERRORS)
def test_invalid_query(level: Level, params: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(InvalidQuery, match=reason):
        parse(level, params)


# (query parameters, includefields, include_all) -- PS3.18 §8.3.4.3
INCLUDES = [
    pytest.param([("includefield", "PatientAge")], ("00101010",), False, id="PS3.18-8.3.4.3-keyword"),
    pytest.param([("includefield", "00101010")], ("00101010",), False, id="PS3.18-8.3.4.3-tag"),
    pytest.param([("includefield", "00101010,StudyDescription"), ("includefield", "00101010")],
                 ("00101010", "00081030"), False, id="PS3.18-8.3.4.3-comma-and-repeat"),
    pytest.param([("includefield", "all")], (), True, id="PS3.18-8.3.4.3-all"),
]


@pytest.mark.parametrize("params, tags, include_all", INCLUDES)
def test_includefield(params: list[tuple[str, str]], tags: tuple[str, ...], include_all: bool) -> None:
    expr = parse(S, params)
    assert (expr.includefields, expr.include_all) == (tags, include_all)


def test_paging_and_flags() -> None:
    expr = parse(S, [("limit", "10"), ("offset", "20"), ("fuzzymatching", "false")])
    assert (expr.limit, expr.offset, expr.fuzzymatching, expr.conditions) == (10, 20, False, ())
    assert parse(S, []).limit is None and parse(S, []).offset == 0


def test_path_uids_become_conditions() -> None:
    expr = parse(I, [("SOPClassUID", UID2)], study_uid=UID1, series_uid=UID2)
    assert expr.conditions[:2] == (Single(K["StudyInstanceUID"], UID1), Single(K["SeriesInstanceUID"], UID2))
    assert (expr.study_uid, expr.series_uid) == (UID1, UID2)


def test_expression_is_frozen() -> None:
    expr = parse(S, [])
    with pytest.raises(AttributeError):
        expr.limit = 3  # type: ignore[misc]


@pytest.mark.parametrize("name, tag", [("PatientName", "00100010"), ("0020000d", "0020000D")])
def test_attribute_tag(name: str, tag: str) -> None:
    assert attribute_tag(name) == tag
