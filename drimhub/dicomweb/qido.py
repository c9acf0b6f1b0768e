"""QIDO-RS (placeholder until the query module lands)."""
from __future__ import annotations
from typing import Any
from drimhub.server.errors import MethodNotAllowed


def search_response(*args: Any) -> Any:
    raise MethodNotAllowed("not yet")
