"""The one handler that renders every error in the protocol's own form.

Every error a service raises is a :class:`drimhub.errors.DrimhubError`; the app-level handler picks the
protocol's own error form from the URL space of the request (DICOMweb JSON status, FHIR
OperationOutcome, RFC 6749 JSON with RFC 6749 codes under ``/oauth/``). A 500 shows generic
text; the detail goes to the log only.
"""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from drimhub.errors import DrimhubError

log = logging.getLogger(__name__)


# --- rendering ------------------------------------------------------------------------------

#: DICOM JSON attribute used for the human-readable reason of a DICOMweb error:
#: (0000,0902) Error Comment, LO (PS3.7 Annex C).
_ERROR_COMMENT = "00000902"


def _dicomweb_body(status: int, message: str) -> Response:
    body = {_ERROR_COMMENT: {"vr": "LO", "Value": [message[:64]]}, "message": message}
    return Response(orjson.dumps(body), status=status, mimetype="application/dicom+json")


def _fhir_body(status: int, message: str, code: str) -> Response:
    severity = "error" if status < 500 else "fatal"
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }
    return Response(orjson.dumps(body), status=status, mimetype="application/fhir+json")


def _plain_body(status: int, message: str, code: str) -> Response:
    return Response(orjson.dumps({"error": code, "error_description": message}), status=status,
                    mimetype="application/json")


def oauth_error_code(status: int) -> str:
    """The RFC 6749 §5.2 ``error`` closest to an HTTP status (OAuth2 has no not-found code)."""
    if status in (502, 503, 504):
        return "temporarily_unavailable"
    if status >= 500:
        return "server_error"
    return "invalid_client" if status == 401 else "invalid_request"


def render_error(status: int, message: str, issue_code: str = "exception",
                 headers: dict[str, str] | None = None, oauth_error: str | None = None) -> Response:
    """Render an error in the form of the URL space the request was for.

    ``oauth_error`` replaces ``issue_code`` as the ``error`` of the RFC 6749 JSON form (for the
    RFC 6750 codes ``invalid_token`` and ``insufficient_scope``). Under ``/oauth/`` and
    ``/.well-known/`` (the authorization server and its discovery documents) the ``error`` is
    always an RFC 6749 code, never a FHIR issue code.
    """
    path = request.path
    if path.startswith(("/dicom-web", "/federated/dicom-web", "/wado")):
        response = _dicomweb_body(status, message)
    elif path.startswith("/fhir"):
        response = _fhir_body(status, message, issue_code)
    elif path.startswith(("/oauth/", "/.well-known/")):
        response = _plain_body(status, message, oauth_error or oauth_error_code(status))
    else:
        response = _plain_body(status, message, oauth_error or issue_code)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _handle_drimhub(exc: DrimhubError) -> Response:
    if exc.http_status >= 500:
        log.error("%s: %s", type(exc).__name__, exc.message)
    headers = {"Allow": ", ".join(exc.data["allow"])} if "allow" in exc.data else {}
    if "www_authenticate" in exc.data:  # RFC 6750 §3, on 401 and on 403 insufficient_scope
        headers["WWW-Authenticate"] = exc.data["www_authenticate"]
    if "content_range" in exc.data:  # RFC 9110 §15.5.17, on 416
        headers["Content-Range"] = exc.data["content_range"]
    return render_error(exc.http_status, exc.message, exc.issue_code, headers, exc.data.get("oauth_error"))


_HTTP_ISSUE_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


def _handle_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = render_error(status, exc.description or exc.name, _HTTP_ISSUE_CODES.get(status, "invalid"))
    if exc.response is None:
        for name, value in exc.get_headers():
            if name.lower() in ("allow", "www-authenticate"):
                response.headers[name] = value
    return response


def _handle_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return render_error(500, "internal server error")


def init_app(app: Flask) -> None:
    """Register the one error handler for every exception type."""
    app.register_error_handler(DrimhubError, _handle_drimhub)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_unexpected)
