"""``POST /api/peers/{peer}/push`` and ``GET /api/jobs/{id}`` (ARCHITECTURE §3).

Access: both need :data:`~drimhub.server.auth.policy.PUSH_SCOPE` (the caller's organisation's
studies and jobs) or :data:`~drimhub.server.auth.policy.ADMIN_SCOPE` (every job).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, request

from drimhub.dicomweb.uids import is_valid_uid
from drimhub.errors import InvalidRequest, NotFound
from drimhub.jobs import queue, rules, state
from drimhub.server import auditctx
from drimhub.server.auth import policy
from drimhub.server.jsonapi import json_response
from drimhub.server.auth.policy import Requirement, current_principal
from drimhub.server.auth.principal import Principal
from drimhub.server.db import get_session, resources
from drimhub.store.access import Access
from drimhub.store.engine import write_session
from drimhub.store.retrieve import locate_study

log = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__, url_prefix="/api")


def _is_admin(principal: Principal) -> bool:
    """True for an administrator (every job), False for a pusher (its organisation's jobs only)."""
    return policy.ADMIN_SCOPE in principal.scopes.other



def push(peer: str) -> Response:
    """Queue a push of the caller's organisation's study to ``peer``: 202 with the job.

    404 for an unknown peer or a study the caller's organisation does not hold; 400 for a relay
    peer (:func:`rules.pushable_peer`); 403 when the patient opposed sharing. A push of the same
    study to the same peer still waiting (queued or retrying) is answered with that job.
    """
    from drimhub.sharing import consent

    principal = current_principal()
    body = request.get_json(silent=True)
    study = body.get("study") if isinstance(body, dict) else None
    if not isinstance(study, str) or not is_valid_uid(study):
        raise InvalidRequest('the body must be {"study": "<Study Instance UID>"}')
    session = get_session()
    found = locate_study(session, study, Access.of_org(principal.org))
    if found is None:
        raise NotFound(f"no study {study} is stored for organisation {principal.org}")
    auditctx.involve(found.patient_id, study, found.issuer_of_patient_id)
    rules.pushable_peer(session, peer)
    consent.check_shareable(session, study)
    session.rollback()  # end the read transaction before the write (SQLite)
    with write_session(resources().sessions) as writer:
        job, created = rules.push_job(writer, principal.org, principal.sub, peer, study)
    if created:
        queue.enqueue(job.id)
    return json_response(state.job_json(job), 202, {"Location": f"/api/jobs/{job.id}"})


def get_job(job_id: str) -> Response:
    """The job ``job_id`` if the caller's organisation owns it (or the caller administers); else 404."""
    principal = current_principal()
    admin = _is_admin(principal)
    job = state.get(get_session(), job_id)
    if job is None or not (admin or job.org == principal.org):
        raise NotFound(f"no job {job_id}")
    return json_response(state.job_json(job))


bp.add_url_rule("/peers/<peer>/push", "push", push, methods=["POST"])
bp.add_url_rule("/jobs/<job_id>", "get_job", get_job, methods=["GET"])


def init_app(app: Flask) -> None:
    """Register the routes and their access rules."""
    app.register_blueprint(bp)
    for endpoint in ("jobs.push", "jobs.get_job"):
        policy.require(endpoint, Requirement(any_of=(policy.ADMIN_SCOPE, policy.PUSH_SCOPE)))
