"""Operations endpoints: /healthz (alive), /readyz (database and storage reachable), /metrics.

Metrics use prometheus-client; under gunicorn (``drimhub serve``) every worker writes to
``PROMETHEUS_MULTIPROC_DIR`` and /metrics aggregates them.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)
from sqlalchemy import text

from drimhub.server.db import resources

bp = Blueprint("ops", __name__)

REQUESTS = Counter("drimhub_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("drimhub_http_request_duration_seconds", "Time to answer (headers ready)", ["route"])
STOW_INSTANCES = Counter("drimhub_stow_instances_total", "Instances received by STOW-RS or import", ["outcome"])


@bp.get("/healthz")
def healthz() -> Response:
    return Response('{"status":"ok"}', mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    problems = []
    try:
        with resources().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # the point is to report any failure
        problems.append(f"database: {type(exc).__name__}")
    if not resources().blobs.ready():
        problems.append("storage: not writable")
    if problems:
        return Response('{"status":"unavailable","problems":%s}' % _json_list(problems), status=503,
                        mimetype="application/json")
    return Response('{"status":"ready"}', mimetype="application/json")


def _json_list(items: list[str]) -> str:
    import orjson
    return orjson.dumps(items).decode()


@bp.get("/metrics")
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        data = generate_latest(registry)
    else:
        data = generate_latest()
    return Response(data, mimetype=CONTENT_TYPE_LATEST)


def _start() -> None:
    g.started = time.perf_counter()


def _finish(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule else "unmatched"
    REQUESTS.labels(request.method, rule, str(response.status_code)).inc()
    if "started" in g:
        LATENCY.labels(rule).observe(time.perf_counter() - g.started)
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(_start)
    app.after_request(_finish)
