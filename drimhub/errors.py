"""Typed exceptions of drimhub: what a service raises, with the HTTP status and FHIR issue code it maps to.

No web framework here: services, the store and the CLI raise these; the app-level handler in
:mod:`drimhub.server.errors` renders them in each protocol's own form.

::

    DrimhubError                 500
    ├── InvalidRequest           400
    │   └── InvalidQuery         400  (QIDO / FHIR search parameter)
    ├── Unauthorized             401
    ├── Forbidden                403
    ├── NotFound                 404
    ├── MethodNotAllowed         405
    ├── NotAcceptable            406
    ├── Conflict                 409
    ├── Gone                     410
    ├── PreconditionFailed       412
    ├── PayloadTooLarge          413
    ├── UnsupportedMediaType     415
    ├── RangeNotSatisfiable      416
    ├── Unprocessable            422
    └── PeerUnavailable          502
"""

from __future__ import annotations

from typing import Any


class DrimhubError(Exception):
    """Base of every error drimhub turns into an HTTP answer."""

    http_status = 500
    #: FHIR ``OperationOutcome.issue.code`` for this kind of error.
    issue_code = "exception"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidRequest(DrimhubError):
    """The request is malformed (bad header, bad body, bad identifier)."""

    http_status = 400
    issue_code = "invalid"


class InvalidQuery(InvalidRequest):
    """A search parameter is unknown or its value cannot be understood."""


class Unauthorized(DrimhubError):
    """No valid credentials."""

    http_status = 401
    issue_code = "login"


class Forbidden(DrimhubError):
    """Credentials are valid but do not cover the request."""

    http_status = 403
    issue_code = "forbidden"


class NotFound(DrimhubError):
    """The resource does not exist (or is not visible to the caller)."""

    http_status = 404
    issue_code = "not-found"


class MethodNotAllowed(DrimhubError):
    """The resource exists but does not support this method."""

    http_status = 405
    issue_code = "not-supported"


class NotAcceptable(DrimhubError):
    """Nothing the client accepts can be produced."""

    http_status = 406
    issue_code = "not-supported"


class Conflict(DrimhubError):
    """The request conflicts with the stored state."""

    http_status = 409
    issue_code = "conflict"


class Gone(DrimhubError):
    """The resource existed and was deleted (FHIR read of a deleted resource)."""

    http_status = 410
    issue_code = "deleted"


class PreconditionFailed(DrimhubError):
    """A condition of the request does not hold (stale ``If-Match``; a conditional write matching
    more than one resource)."""

    http_status = 412
    issue_code = "conflict"


class PayloadTooLarge(DrimhubError):
    """The request or the result is larger than the server accepts."""

    http_status = 413
    issue_code = "too-costly"


class UnsupportedMediaType(DrimhubError):
    """The request body is of a media type the resource does not take."""

    http_status = 415
    issue_code = "not-supported"


class Unprocessable(DrimhubError):
    """The body is well-formed but not a valid resource (FHIR 422: fails validation or a business rule)."""

    http_status = 422
    issue_code = "processing"


class RangeNotSatisfiable(DrimhubError):
    """A byte range lies outside the representation (RFC 9110 §15.5.17); ``content_range`` says its size."""

    http_status = 416
    issue_code = "invalid"


class PeerUnavailable(DrimhubError):
    """A peer node did not answer."""

    http_status = 502
    issue_code = "transient"
