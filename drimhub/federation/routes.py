"""HTTP routes of this package."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the routes and their access rules."""
    from drimhub.federation import peer_routes

    peer_routes.init_app(app)
