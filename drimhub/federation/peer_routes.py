"""``/api/peers``: the node's peers (admin scope)."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the routes and their access rules."""
