"""The FHIR R4 side of drimhub (``/fhir``): resources served from the shared metadata store."""
