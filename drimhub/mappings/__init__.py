"""DICOM and HTTP facts ⇄ FHIR resources, as tables and pure functions (no Flask, no SQLAlchemy)."""
