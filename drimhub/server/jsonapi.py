"""JSON answers of the node's own API (``/api``): one helper for every package's routes."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from flask import Response


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``body`` serialised by orjson as ``application/json``, with ``status`` and extra ``headers``.

    Errors are not made here: they are typed exceptions (:mod:`drimhub.errors`) rendered by the
    one error handler as ``{"error", "error_description"}``.
    """
    return Response(orjson.dumps(body), status=status, mimetype="application/json",
                    headers=dict(headers) if headers else None)
