"""The WADO-URI endpoint ``/wado`` (PS3.18 §9); the rules live in :mod:`wado_uri`.

Same protection as WADO-RS: ImagingStudy ``r``, the caller's organisations only (another
organisation's study is a 404), the study noted for the audit.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from drimhub.dicomweb import wado_uri
from drimhub.dicomweb.routes import access_to
from drimhub.server.auth import policy
from drimhub.server.auth.policy import Requirement
from drimhub.server.db import get_session, resources

bp = Blueprint("wado_uri", __name__)


def wado() -> Response:
    req = wado_uri.parse(request.args)
    access = access_to(req.scope.study)
    answer = wado_uri.retrieve(get_session(), resources().blobs, req, access=access)
    return Response(answer.body, status=answer.status, headers=answer.headers)


bp.add_url_rule("/wado", "wado", wado, methods=["GET"])  # PS3.18 §9.1


def init_app(app: Flask) -> None:
    policy.require("wado_uri.wado", Requirement("ImagingStudy", "r"))
    app.register_blueprint(bp)
