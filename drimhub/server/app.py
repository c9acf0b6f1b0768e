"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pydicom.config
from flask import Flask
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from drimhub.server import audit, config, converters, db, errors, ops
from drimhub.server.auth import policy


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build a drimhub WSGI app.

    Parameters
    ----------
    test_config : Mapping, optional
        Settings that override the defaults and the ``DRIMHUB_*`` environment
        (see :mod:`drimhub.server.config`).
    """
    app = Flask("drimhub", static_folder=None)
    config.load(app, test_config)
    if app.config["PROXY_HOPS"]:
        # behind a TLS-terminating proxy: the client's address, scheme and host (Authlib's https
        # check, the base URL when BASE_URL is unset, the audit's network addresses)
        hops = app.config["PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    _configure_libraries()
    errors.init_app(app)
    converters.init_app(app)
    db.init_app(app)
    ops.init_app(app)
    policy.init_app(app)  # bearer tokens and SMART scopes on every route but the public ones
    audit.init_app(app)
    CORS(app, resources={r"/(dicom-web|fhir|federated|wado)(/.*)?": {"origins": app.config["CORS_ORIGINS"]}},
         expose_headers=["ETag", "Warning", "Content-Location", "Location", "X-Request-Id"], max_age=600)

    from drimhub.conformance import routes as conformance_routes
    from drimhub.dicomweb import routes as dicomweb_routes
    from drimhub.dicomweb import uri_routes as wado_uri_routes
    from drimhub.fhir import audit_routes
    from drimhub.federation import routes as federation_routes
    from drimhub.fhir import routes as fhir_routes
    from drimhub.jobs import queue as job_queue
    from drimhub.jobs import routes as job_routes
    from drimhub.server.auth import routes as auth_routes
    from drimhub.sharing import routes as sharing_routes

    dicomweb_routes.init_app(app)
    wado_uri_routes.init_app(app)
    audit_routes.init_app(app)
    fhir_routes.init_app(app)
    conformance_routes.init_app(app)
    auth_routes.init_app(app)
    job_queue.init_app(app)
    federation_routes.init_app(app)
    job_routes.init_app(app)
    sharing_routes.init_app(app)
    return app


def _configure_libraries() -> None:
    """Process-global library settings, set once here and never per request."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # Read what real modalities send; a value that does not fit its VR is kept, not fatal.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
