"""HTTP routes of this package: ``/api/shares`` (ARCHITECTURE §3 "Sharing API"), scope ``drimhub/share``.

``POST /api/shares`` → 201 with the grant (and a link's capability ``token``, shown this once);
``GET /api/shares[?study=UID]`` → the caller's organisation's grants; ``GET /api/shares/{id}``;
``DELETE /api/shares/{id}`` → 204, effective at the next request of the grantee. The rules live
in :mod:`drimhub.sharing.grants`; errors are ``{"error", "error_description"}`` JSON. Creating and
revoking a grant is audited (:mod:`drimhub.server.audit`) with the study and its patient.
"""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import select

from drimhub.dicomweb.uids import is_valid_uid
from drimhub.server import auditctx, urls
from drimhub.server.auth import policy
from drimhub.server.auth.policy import Requirement, current_principal
from drimhub.server.auth.tokens import sign
from drimhub.server.db import get_session, resources
from drimhub.server.jsonapi import json_response
from drimhub.sharing import grants
from drimhub.store.models import Study

bp = Blueprint("sharing", __name__, url_prefix="/api/shares")


def _involve(study_uid: str) -> None:
    """Note the granted study and its patient for the audit (a grant discloses that patient's study)."""
    row = get_session().execute(select(Study.patient_id, Study.issuer_of_patient_id)
                                .where(Study.study_uid == study_uid)).first()
    auditctx.involve(row[0] if row else None, study_uid, row[1] if row else None)


def create() -> Response:
    principal = current_principal()
    now = datetime.now(timezone.utc)
    req = grants.parse_request(request.get_json(silent=True), now, int(current_app.config["SHARE_MAX_DAYS"]))
    share = grants.create(resources().sessions, req, org=principal.org, created_by=principal.sub,
                          node_issuer=urls.issuer())
    token = None
    if share.link:
        claims = grants.capability_claims(share, issuer=urls.issuer(), audience=urls.base_url())
        token = sign(claims, resources().signing_key)
    _involve(share.study_uid)
    # the capability is a bearer credential: never cached (RFC 6749 §5.1)
    return json_response(grants.grant_json(share, token), 201,
                         {"Location": f"{urls.base_url()}/api/shares/{share.id}", "Cache-Control": "no-store"})


def list_shares() -> Response:
    study = request.args.get("study")
    if study is not None and not is_valid_uid(study):
        raise grants.invalid("study is a Study Instance UID")
    found = grants.list_grants(get_session(), current_principal().org, study)
    return json_response([grants.grant_json(s) for s in found])


def get_share(share_id: str) -> Response:
    return json_response(grants.grant_json(grants.get_grant(get_session(), current_principal().org, share_id)))


def revoke_share(share_id: str) -> Response:
    share = grants.revoke(resources().sessions, current_principal().org, share_id)
    _involve(share.study_uid)
    return Response(status=204)


bp.add_url_rule("", "create", create, methods=["POST"])
bp.add_url_rule("", "list", list_shares, methods=["GET"])
bp.add_url_rule("/<string(maxlength=32):share_id>", "get", get_share, methods=["GET"])
bp.add_url_rule("/<string(maxlength=32):share_id>", "revoke", revoke_share, methods=["DELETE"])


def init_app(app: Flask) -> None:
    """Register the routes and their access rules."""
    for endpoint in ("create", "list", "get", "revoke"):
        policy.require(f"{bp.name}.{endpoint}", Requirement(scope=policy.SHARE_SCOPE))
    app.register_blueprint(bp)
    from drimhub.sharing import manifest_routes
    manifest_routes.init_app(app)
