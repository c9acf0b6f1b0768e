"""Conformance documents: the DICOMweb conformance statement (Markdown, or JSON on request)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Flask, Response, request

from drimhub.conformance import dicom

bp = Blueprint("conformance", __name__)


@bp.get("/conformance/dicomweb")
def dicomweb_statement() -> Response:
    best = request.accept_mimetypes.best_match(["text/markdown", "application/json"], "text/markdown")
    if best == "application/json":
        return Response(orjson.dumps(dicom.to_json()), mimetype="application/json")
    return Response(dicom.to_markdown(), mimetype="text/markdown")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
