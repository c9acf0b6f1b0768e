"""Every DICOMweb URL, registered under its PS3.18 section; the views stay thin.

Views turn the request into service calls and the service results into responses; the protocol
rules live in :mod:`stow`, :mod:`qido` and :mod:`wado`.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request

from drimhub.dicomweb import qido
from drimhub.dicomweb.stow import StoreService
from drimhub.server.db import get_session, resources
from drimhub.server.ops import STOW_INSTANCES

bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")

DICOM_JSON = "application/dicom+json"


def base_url() -> str:
    """Public URL of the DICOMweb root, without a trailing slash."""
    configured = current_app.config.get("BASE_URL")
    root = (configured or request.host_url).rstrip("/")
    return f"{root}/dicom-web"


def dicom_json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype=DICOM_JSON)


# --- PS3.18 §10.5 Store Instances (STOW-RS) -------------------------------------------------

def store(study: str | None = None) -> Response:
    res = resources()
    service = StoreService(res.sessions, res.blobs,
                           overwrite=current_app.config["STOW_DUPLICATE_POLICY"] == "overwrite")
    result = service.store_request(request.stream, request.headers.get("Content-Type"), study)
    STOW_INSTANCES.labels("stored").inc(len(result.referenced))
    STOW_INSTANCES.labels("failed").inc(len(result.failed))
    return dicom_json(result.to_dicom_json(base_url(), study), result.http_status)


bp.add_url_rule("/studies", "store", store, methods=["POST"])
bp.add_url_rule("/studies/<uid:study>", "store_study", store, methods=["POST"])


# --- PS3.18 §10.6 Search (QIDO-RS) ----------------------------------------------------------

def search(level: str, study: str | None = None, series: str | None = None) -> Response:
    return qido.search_response(get_session(), level, request.args, base_url(), study, series,
                                current_app.config["QIDO_MAX_RESULTS"])


bp.add_url_rule("/studies", "search_studies", search, methods=["GET"], defaults={"level": "study"})
bp.add_url_rule("/series", "search_series", search, methods=["GET"], defaults={"level": "series"})
bp.add_url_rule("/instances", "search_instances", search, methods=["GET"], defaults={"level": "instance"})
bp.add_url_rule("/studies/<uid:study>/series", "search_study_series", search, methods=["GET"],
                defaults={"level": "series"})
bp.add_url_rule("/studies/<uid:study>/instances", "search_study_instances", search, methods=["GET"],
                defaults={"level": "instance"})
bp.add_url_rule("/studies/<uid:study>/series/<uid:series>/instances", "search_series_instances", search,
                methods=["GET"], defaults={"level": "instance"})


# --- PS3.18 §10.4 Retrieve (WADO-RS) --------------------------------------------------------


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
