"""The node's Endpoint resources: derived from its configuration (the DICOMweb base URL), read-only.

Mapping and ids: :mod:`drimhub.mappings.endpoint`. ImagingStudy references ``Endpoint/dicomweb``
(:data:`~drimhub.mappings.endpoint.WADO_ENDPOINT_ID`).
"""

from __future__ import annotations

from typing import Any

from drimhub.errors import NotFound
from drimhub.mappings.endpoint import NODE_ENDPOINTS, endpoint


def endpoints(base_dicomweb: str, base_fhir: str) -> list[dict[str, Any]]:
    """Every Endpoint of this node (``base_fhir`` kept for peers' Endpoints, which a later issue adds)."""
    return [endpoint(spec, base_dicomweb) for spec in NODE_ENDPOINTS]


def read(id_: str, base_dicomweb: str, base_fhir: str) -> dict[str, Any]:
    """``Endpoint/<id_>``.

    Raises
    ------
    NotFound
        No Endpoint has that id.
    """
    for resource in endpoints(base_dicomweb, base_fhir):
        if resource["id"] == id_:
            return resource
    raise NotFound(f"Endpoint/{id_} is not known")
