"""FHIR R4 search (search.html): stub with the final signatures; implementation follows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from drimhub.store.access import Access


def match_ids(session: Session, type_: str, query: str, access: Access) -> list[str]:
    """Ids of the ``type_`` resources ``access`` sees that a search query string matches."""
    raise NotImplementedError


def search(session: Session, type_: str, args: MultiDict[str, str] | Iterable[tuple[str, str]], access: Access,
           base: str, strict: bool) -> tuple[dict[str, Any], list[str]]:
    """The searchset Bundle of a search, and warnings for the parameters it ignored."""
    raise NotImplementedError
