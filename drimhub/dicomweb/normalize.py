"""How stored values and query values are normalised so that they compare in SQL.

One place for these rules: the ingest side (values written to index columns) and the query side
(values from QIDO-RS parameters) both call these functions.
"""

from __future__ import annotations

import unicodedata


def fold_text(value: str) -> str:
    """Fold a person name for matching: accents removed, lower case, spaces trimmed.

    PatientName and ReferringPhysicianName match case- and accent-insensitively (PS3.4
    C.2.2.2.1 leaves case sensitivity of PN to the implementation; this is documented in the
    conformance statement): ``DUPONT^Jérôme`` and ``DUPONT^Jérôme^^^`` are stored as ``dupont^jerome``.
    """
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    # trailing empty components and groups may be left out (PS3.5 §6.2, PN): DUPONT^Jérôme^^^
    # is the same name as DUPONT^Jérôme
    return stripped.casefold().strip().rstrip("^=").strip()


def time_key(value: str) -> str:
    """A TM value as ``HHMMSS.FFFFFF``, zero-padded, so that TM values compare as strings.

    Accepts the ACR-NEMA form with colons (PS3.5 Table 6.2-1, TM) too. ``"1230"`` gives
    ``"123000.000000"``.
    """
    value = value.strip().replace(":", "")
    main, _, frac = value.partition(".")
    main = main.ljust(6, "0")[:6]
    return f"{main}.{frac.ljust(6, '0')[:6]}"
