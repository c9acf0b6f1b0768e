"""The node's DICOMweb services as FHIR R4 Endpoint resources (IHE MADO / IMR).

One row of :data:`NODE_ENDPOINTS` per service of this node; all share the DICOMweb base URL as
``address`` (FHIR R4 imagingstudy-notes: the WADO-RS base, no ``/studies``, **no trailing
slash**; the client appends ``/studies/{uid}``...). A peer node (a later issue) adds rows of its
own with its own base and ids: :func:`endpoint` is the one way an Endpoint is written.

Sources: FHIR R4 Endpoint (status, connectionType 1..1 Coding, payloadType 1..*, address 1..1);
connection types from ``http://terminology.hl7.org/CodeSystem/endpoint-connection-type``;
IHE MADO ``MadoWadoEndpoint`` (payloadType DCM#113014 "Study", payloadMimeType values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drimhub.mappings.dicom import DCM

CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"

#: Media types the node serves over WADO-RS (PS3.18 §8.7.3: instances, metadata, bulk data,
#: rendered and frames, transcoded frames).
WADO_MIME_TYPES = ("application/dicom", "application/dicom+json", "application/octet-stream",
                   "image/jpeg", "image/png", "image/gif", "image/jp2", "image/jls", "image/dicom-rle",
                   "application/pdf", "video/mp4")


@dataclass(frozen=True)
class NodeEndpoint:
    """One DICOMweb service of a node: its Endpoint id, connection type, name and media types."""

    id: str
    connection_type: str
    display: str
    name: str
    mime_types: tuple[str, ...]


#: Id of the node's WADO-RS Endpoint, the one ImagingStudy.endpoint and series.endpoint reference (MADO).
WADO_ENDPOINT_ID = "dicomweb"

#: The node's own DICOMweb services (same address: PS3.18 serves them under one base).
NODE_ENDPOINTS: tuple[NodeEndpoint, ...] = (
    NodeEndpoint(WADO_ENDPOINT_ID, "dicom-wado-rs", "DICOM WADO-RS", "DICOMweb WADO-RS", WADO_MIME_TYPES),
    NodeEndpoint("dicomweb-qido", "dicom-qido-rs", "DICOM QIDO-RS", "DICOMweb QIDO-RS", ("application/dicom+json",)),
    NodeEndpoint("dicomweb-stow", "dicom-stow-rs", "DICOM STOW-RS", "DICOMweb STOW-RS",
                 ("application/dicom", "application/dicom+json")),
)


def endpoint(spec: NodeEndpoint, address: str) -> dict[str, Any]:
    """The Endpoint resource of ``spec`` served at DICOMweb base ``address`` (trailing slash removed)."""
    return {
        "resourceType": "Endpoint",
        "id": spec.id,
        "status": "active",
        "connectionType": {"system": CONNECTION_TYPE, "code": spec.connection_type, "display": spec.display},
        "name": spec.name,
        "payloadType": [{"coding": [{"system": DCM, "code": "113014", "display": "Study"}]}],
        "payloadMimeType": list(spec.mime_types),
        "address": address.rstrip("/"),
    }
