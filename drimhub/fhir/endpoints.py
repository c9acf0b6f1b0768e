"""The node's Endpoint resources (derived from configuration, read-only)."""

from __future__ import annotations

from typing import Any


def endpoints(base_dicomweb: str, base_fhir: str) -> list[dict[str, Any]]:
    """Every Endpoint of this node."""
    raise NotImplementedError


def read(id_: str, base_dicomweb: str, base_fhir: str) -> dict[str, Any]:
    """``Endpoint/<id_>``; NotFound when there is none."""
    raise NotImplementedError
