"""``/api/studies/{uid}/manifest`` and the ``KOS-SOPInstanceUID`` check of DRIMbox consumers.

``POST /api/studies/{uid}/manifest`` (scope :data:`~drimhub.server.auth.policy.SHARE_SCOPE`; the
caller's organisation owns the study; the patient did not oppose sharing) publishes the KOS
manifest of the study and its MADO DocumentReference: 201 ``{"sopInstanceUID", "study", "url",
"documentReference"}`` with ``Location`` = ``url``, the manifest's own URL
``/api/studies/{uid}/manifests/{sop}`` (its DocumentReference's attachment.url).
``GET /api/studies/{uid}/manifests/{sop}`` serves that manifest, ``GET /api/studies/{uid}/manifest``
the latest one, as ``application/dicom`` (ImagingStudy ``r``, the study visible as on WADO-RS);
404 when no such manifest was published.

``KOS-SOPInstanceUID`` (DRIM-M: a consumer DRIMbox sends the UID of the KOS it found in the DMP
with each WADO-RS request): a request under ``/dicom-web`` or ``/federated/dicom-web`` carrying
it is served only when this node published that KOS for the study the URL names; otherwise
404 (also when the URL names no study). One ``before_request`` hook, registered after the
authentication hook, so that an anonymous caller still gets its 401 first.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request

from drimhub.errors import NotFound
from drimhub.server import auditctx
from drimhub.server.auth import policy
from drimhub.server.jsonapi import json_response
from drimhub.server.auth.policy import Requirement
from drimhub.server.db import get_session, resources
from drimhub.server.urls import base_url
from drimhub.sharing import manifests
from drimhub.store.engine import with_retries

bp = Blueprint("manifests", __name__, url_prefix="/api/studies")

#: The request header of DRIMbox consumers naming the KOS they retrieve through.
KOS_HEADER = "KOS-SOPInstanceUID"
#: URL roots whose requests the header restricts.
KOS_ROOTS = ("/dicom-web/", "/federated/dicom-web/")


@bp.post("/<uid:study>/manifest")
def publish(study: str) -> Response:
    org = policy.current_principal().org
    base = base_url()
    res = resources()
    node_uid = current_app.config.get("NODE_UID")
    published = with_retries(res.sessions, lambda s: manifests.publish(s, res.blobs, study, org, base, node_uid),
                             f"manifest of {study}")
    _involve(study)
    body = {"sopInstanceUID": published.sop_uid, "study": published.study_uid, "url": published.url,
            "documentReference": published.document_reference}
    return json_response(body, 201, {"Location": published.url})


@bp.get("/<uid:study>/manifest")
def read(study: str) -> Response:
    return _kos(study, None)


@bp.get("/<uid:study>/manifests/<uid:sop>")
def read_one(study: str, sop: str) -> Response:
    return _kos(study, sop)


def _kos(study: str, sop: str | None) -> Response:
    content = manifests.content(get_session(), study, policy.current_access(), sop)
    _involve(study)
    name = f"{study}-manifest.dcm" if sop is None else f"{sop}.dcm"
    return Response(content, mimetype="application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _involve(study_uid: str) -> None:
    """Note the study's patient for the audit (the KOS names the patient)."""
    patient = manifests.patient_of(get_session(), study_uid)
    if patient is not None:
        auditctx.involve(patient[0], study_uid, patient[1])


def check_kos_header() -> None:
    """``before_request``: 404 unless the ``KOS-SOPInstanceUID`` names a KOS published for the URL's study."""
    sop_uid = request.headers.get(KOS_HEADER)
    if sop_uid is None or request.method == "OPTIONS" or not request.path.startswith(KOS_ROOTS):
        return
    study_uid = (request.view_args or {}).get("study")
    sop_uid = sop_uid.strip()
    if not study_uid or not manifests.is_published(get_session(), sop_uid, str(study_uid)):
        raise NotFound(f"{KOS_HEADER} {sop_uid[:64]!r} names no manifest this node published for this study")


def init_app(app: Flask) -> None:
    """Register the routes, their access rules and the ``KOS-SOPInstanceUID`` hook."""
    app.register_blueprint(bp)
    policy.require("manifests.publish", Requirement(scope=policy.SHARE_SCOPE))
    policy.require("manifests.read", Requirement("ImagingStudy", "r"))
    policy.require("manifests.read_one", Requirement("ImagingStudy", "r"))
    app.before_request(check_kos_header)
