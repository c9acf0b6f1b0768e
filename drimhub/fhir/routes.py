"""Every ``/fhir`` URL but AuditEvent: registered here, the REST rules live in the services."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the FHIR blueprints and declare their scopes."""
