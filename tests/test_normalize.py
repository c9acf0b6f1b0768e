"""Normalisation of stored and queried values (one rule for both sides)."""

from __future__ import annotations

import pytest

from drimhub.dicomweb.normalize import fold_text, time_key

# (value, folded) -- PS3.4 C.2.2.2.1 (PN matching, case and accents documented), PS3.5 §6.2 (PN)
FOLDS = [
    pytest.param("DUPONT^Jérôme", "dupont^jerome", id="case-and-accents"),
    pytest.param("DUPONT^Jérôme^^^", "dupont^jerome", id="PS3.5-6.2-trailing-empty-components"),
    pytest.param("DUPONT^Jérôme==", "dupont^jerome", id="PS3.5-6.2-trailing-empty-groups"),
    pytest.param("  MÜLLER^Jürgen ", "muller^jurgen", id="spaces-and-umlauts"),
    pytest.param("dupont*", "dupont*", id="wildcards-kept"),
]


@pytest.mark.parametrize("value, folded", FOLDS)
def test_fold_text(value: str, folded: str) -> None:
    assert fold_text(value) == folded


@pytest.mark.parametrize("value, key", [
    pytest.param("1230", "123000.000000", id="PS3.5-6.2-TM-partial"),
    pytest.param("12:30:15", "123015.000000", id="PS3.5-6.2-TM-acr-nema-colons"),
    pytest.param("101500.5", "101500.500000", id="PS3.5-6.2-TM-fraction"),
])
def test_time_key(value: str, key: str) -> None:
    assert time_key(value) == key
