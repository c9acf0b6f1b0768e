"""Who serialises with whom: the lock keys of FHIR writers and the one order they are taken in.

Writers that could create or change the same resource meet on one advisory lock key
(PostgreSQL ``pg_advisory_xact_lock``; on SQLite every writer is already serialised by
:func:`drimhub.store.engine.write_session`): a resource's own key for writes by id, one key per
identifier value and organisation for everything that finds a resource by identifier
(conditional interactions, the DICOM derivation, the delete of a Patient), and the normalised
criteria text for other conditional writes. Keys are taken sorted, identifier keys before the
resource's key, the row lock last: one order everywhere, so no two writers wait on each other
in a cycle.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.orm import Session

from drimhub.store import fhir as rows
from drimhub.store.models import FhirResource


def identifier_lock_keys(type_: str, org: str, values: Iterable[str]) -> list[str]:
    """The lock keys of the identifier ``values`` of ``type_`` in ``org``: THE one rule for every
    writer of a resource found by identifier (conditional interactions, the DICOM derivation,
    the delete of a Patient), so that two of them on one identifier always meet on one key.

    The key names the value only (not its system): a criterion ``identifier=value`` without a
    system and an ``identifier=system|value`` must serialise with each other."""
    return sorted({f"{type_}|{org}|identifier|{value}" for value in values if value})


def _criteria_identifiers(criteria: str) -> list[str]:
    """The identifier values of the plain ``identifier`` criteria of a search query string."""
    found = []
    for key, value in parse_qsl(criteria, keep_blank_values=True):
        if key != "identifier":
            continue
        for item in re.split(r"(?<!\\),", value):
            found.append(item.split("|", 1)[-1].replace("\\,", ","))
    return found


def criteria_lock_keys(type_: str, org: str, criteria: str) -> list[str]:
    """The lock keys a conditional writer of ``type_`` with the search ``criteria`` takes: one for
    the criteria text (normalised), plus :func:`identifier_lock_keys` of its identifier values.
    ``criteria`` may start with ``Type?`` (some clients send If-None-Exist as a search URL)."""
    criteria = criteria.removeprefix(f"{type_}?")
    text = f"{type_}|{org}?{urlencode(sorted(parse_qsl(criteria, keep_blank_values=True)))}"
    return sorted({text, *identifier_lock_keys(type_, org, _criteria_identifiers(criteria))})


def lock_all(session: Session, keys: Iterable[str]) -> None:
    """Take the locks of ``keys`` in sorted order (one order everywhere: no lock cycle)."""
    for key in sorted(set(keys)):
        lock(session, key)


def lock(session: Session, key: str) -> None:
    """Serialise the writers of ``key`` until the end of the transaction.

    PostgreSQL: ``pg_advisory_xact_lock`` on a 64-bit hash of ``key``; SQLite: nothing (its
    writers are already serialised by :func:`drimhub.store.engine.write_session`).
    """
    rows.lock(session, key)


def lock_resource(session: Session, type_: str, id_: str) -> FhirResource | None:
    """Lock ``type_/id_`` for a write and return its row (None when unknown), current.

    One lock order for every writer of a resource: identifier locks, if any
    (:func:`identifier_lock_keys`), then the resource's advisory lock (it also serialises two
    updateCreates of one new id: the second sees the first), then the row (``FOR UPDATE``).
    Taking the row before the advisory lock (as a patch once did) deadlocks with a PUT.
    """
    lock(session, f"{type_}/{id_}")
    return rows.get(session, type_, id_, for_update=True)
