"""The FHIR CapabilityStatement and SearchParameter resources: stub with the final signatures."""

from __future__ import annotations

from typing import Any


def capability_statement(base: str) -> dict[str, Any]:
    """The CapabilityStatement of the FHIR server at ``base``."""
    raise NotImplementedError


def search_parameters() -> list[dict[str, Any]]:
    """SearchParameter resources of this server's custom parameters."""
    raise NotImplementedError
