"""SMART on FHIR scopes (App Launch 2.x §"Scopes for requesting clinical data"), parsed once.

``context/resource.permissions[?query]`` with context ``patient``, ``user`` or ``system``,
resource a FHIR type or ``*``, permissions letters of ``cruds`` in that order (v2) or the v1
forms ``read`` (= ``rs``), ``write`` (= ``cud``) and ``*`` (= ``cruds``). Other scopes
(``openid``, ``fhirUser``, ``launch/patient``, ``offline_access``…) are kept as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: v1 permission words and the v2 letters they stand for (SMART 2.x "Scopes for requesting
#: clinical data", backwards compatibility).
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
CONTEXTS = ("patient", "user", "system")
_V2 = re.compile(r"^c?r?u?d?s?$")
_CLINICAL = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")


@dataclass(frozen=True)
class ResourceScope:
    """One clinical-data scope."""

    context: str
    resource: str
    permissions: frozenset[str]

    def covers(self, resource: str, permission: str) -> bool:
        return self.resource in ("*", resource) and permission in self.permissions


@dataclass(frozen=True)
class ScopeSet:
    """The scopes of a token."""

    clinical: tuple[ResourceScope, ...]
    other: frozenset[str]

    def allows(self, resource: str, permission: str, contexts: tuple[str, ...] = CONTEXTS) -> bool:
        """True when a scope of one of ``contexts`` grants ``permission`` (a letter of cruds) on ``resource``."""
        return any(s.context in contexts and s.covers(resource, permission) for s in self.clinical)

    def contexts_for(self, resource: str, permission: str) -> set[str]:
        """The contexts (patient, user, system) in which ``permission`` on ``resource`` is granted."""
        return {s.context for s in self.clinical if s.covers(resource, permission)}

    def __str__(self) -> str:
        parts = [f"{s.context}/{s.resource}.{''.join(c for c in 'cruds' if c in s.permissions)}" for s in self.clinical]
        return " ".join(sorted(parts) + sorted(self.other))


def parse_scopes(value: str | None) -> ScopeSet:
    """Parse a space-separated scope string; unknown or malformed clinical scopes are ignored.

    SMART 2.x lets a server ignore scopes it does not understand (out-of-order letters such as
    ``.dus``), rather than fail the whole request.
    """
    clinical: list[ResourceScope] = []
    other: set[str] = set()
    for word in (value or "").split():
        match = _CLINICAL.match(word)
        if not match:
            other.add(word)
            continue
        context, resource, perms, _query = match.groups()
        letters = V1_PERMISSIONS.get(perms, perms)
        if not _V2.match(letters) or not letters:
            continue
        clinical.append(ResourceScope(context, resource, frozenset(letters)))
    return ScopeSet(tuple(clinical), frozenset(other))
