"""KOS manifests (DRIM-M / IHE XDS-I.b) this node publishes, and their MADO DocumentReference.

:func:`publish` builds the Key Object Selection manifest of a study (:mod:`drimhub.mappings.kos`),
keeps its bytes in the ``manifest`` table and writes its DocumentReference
(:mod:`drimhub.mappings.documentreference`) as a stored FHIR resource of the study's
organisation, through the FHIR service (:mod:`drimhub.fhir.resources`), in one transaction.
The DocumentReference's id is the KOS SOP Instance UID (a valid FHIR id: digits and dots, at
most 64 characters). A manifest published again for a study supersedes the previous ones: their
DocumentReferences become ``superseded`` and the new one ``replaces`` them.

:func:`content` serves a manifest (by its SOP Instance UID, else the newest of the study; each
DocumentReference points at its own), :func:`is_published` answers the
``KOS-SOPInstanceUID`` check, :func:`remove_study` deletes a study's manifests (retention).

Rules: only the organisation that owns a study publishes its manifest (another organisation's
study is a 404); a study whose patient opposed sharing is refused (403 with the reason,
:func:`drimhub.sharing.consent.check_shareable`).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
from pydicom.uid import generate_uid
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from drimhub.errors import NotFound
from drimhub.fhir import resources
from drimhub.mappings import documentreference, kos
from drimhub.mappings.dicom import dataset, text
from drimhub.mappings.imagingstudy import body_site
from drimhub.sharing.consent import check_shareable
from drimhub.store import fhir as fhir_rows
from drimhub.store import studyrows
from drimhub.store.access import EVERYTHING, Access
from drimhub.store.blobs import FileBlobStore
from drimhub.store.models import Study
from drimhub.store.network import Manifest

DOCUMENT_REFERENCE = "DocumentReference"


@dataclass(frozen=True)
class Published:
    """A manifest just published: its UID, its study, where it is served and its DocumentReference id."""

    sop_uid: str
    study_uid: str
    url: str
    document_reference: str


def manifest_url(base: str, study_uid: str, sop_uid: str | None = None) -> str:
    """Where a manifest is served: ``GET /api/studies/{uid}/manifests/{sop}``; without ``sop_uid``,
    the latest one of the study (``GET /api/studies/{uid}/manifest``)."""
    study = f"{base.rstrip('/')}/api/studies/{study_uid}"
    return f"{study}/manifests/{sop_uid}" if sop_uid else f"{study}/manifest"


def _facts(rows: studyrows.StudyRows) -> tuple[kos.ManifestStudy, list[str], list[dict[str, str]]]:
    """The study's KOS facts, the modality of each series and the body site codings of the series."""
    series, modalities, sites, requests = [], [], [], []
    for s in rows.series.values():
        attrs = dataset(orjson.loads(s.attrs))
        instances = [kos.ManifestInstance(i.sop_uid, i.sop_class_uid, i.dicom_json is None, i.instance_number)
                     for i in s.instances]
        series.append(kos.ManifestSeries(str(attrs.SeriesInstanceUID), instances))
        modalities.append(text(attrs, "Modality") or "")
        site = body_site(text(attrs, "BodyPartExamined"))
        if site is not None:
            sites.append(site)
        requests += list(attrs.get("RequestAttributesSequence") or [])
    study = kos.ManifestStudy(rows.study_uid, dataset(orjson.loads(rows.attrs)), series, requests)
    return study, modalities, sites


def publish(session: Session, blobs: FileBlobStore, study_uid: str, org: str, base: str,
            node_uid: str | None = None) -> Published:
    """Build, store and register the KOS manifest of ``study_uid`` (in the caller's write transaction).

    Parameters
    ----------
    session : Session
        An open write transaction (the caller commits).
    blobs : FileBlobStore
        The blob store (the FHIR writer's argument; a DocumentReference has no blob).
    study_uid : str
        The study.
    org : str
        The caller's organisation: it must own the study.
    base : str
        This node's public base URL (Retrieve URLs ``{base}/dicom-web/...``, the manifest's URL).
    node_uid : str, optional
        ``DRIMHUB_NODE_UID``, the Retrieve Location UID; without it one derived from ``base``
        (:func:`drimhub.mappings.kos.retrieve_location_uid`).

    Raises
    ------
    NotFound
        No such study, or another organisation's.
    Forbidden
        The study's patient opposed sharing.
    """
    owned = session.scalar(select(Study.study_uid).where(Study.study_uid == study_uid, Study.org == org))
    found = studyrows.load(session, [owned]) if owned is not None else {}
    if study_uid not in found:
        raise NotFound(f"study {study_uid} is not known")
    check_shareable(session, study_uid)
    rows = found[study_uid]
    study, modalities, sites = _facts(rows)
    now = datetime.now(timezone.utc)
    sop_uid = generate_uid(prefix=None)  # 2.25 form (PS3.5 B.2)
    ds = kos.manifest(study, dicomweb_base=f"{base.rstrip('/')}/dicom-web", sop_uid=sop_uid,
                      series_uid=generate_uid(prefix=None), created=now, software_version=_version(),
                      location_uid=kos.retrieve_location_uid(node_uid, base))
    content = kos.encode(ds)
    previous = list(session.scalars(select(Manifest.sop_uid).where(Manifest.study_uid == study_uid)))
    session.add(Manifest(sop_uid=sop_uid, study_uid=study_uid, org=rows.org, content=content))
    url = manifest_url(base, study_uid, sop_uid)  # its own URL: a superseded reference keeps its KOS
    resource = documentreference.document_reference(documentreference.PublishedManifest(
        sop_uid=sop_uid, study_uid=study_uid, attrs=study.attrs, modalities=modalities, body_sites=sites,
        patient_ref=rows.patient_ref,
        url=url, size=len(content), sha1=base64.b64encode(hashlib.sha1(content).digest()).decode(),
        created=resources.instant(now)))
    replaced = _supersede(session, blobs, previous, rows.org)
    if replaced:
        resource["relatesTo"] = [{"code": "replaces", "target": {"reference": f"{DOCUMENT_REFERENCE}/{i}"}}
                                 for i in replaced]
    stored = resources.create(session, blobs, resource, rows.org, id_=sop_uid)
    return Published(sop_uid, study_uid, url, f"{DOCUMENT_REFERENCE}/{stored.id}")


def _supersede(session: Session, blobs: FileBlobStore, sop_uids: list[str], org: str) -> list[str]:
    """Mark the current DocumentReferences of earlier manifests ``superseded``; their ids."""
    replaced = []
    for sop_uid in sop_uids:
        row = fhir_rows.get(session, DOCUMENT_REFERENCE, sop_uid)
        if row is None or row.deleted:
            continue
        current = resources.Stored.of(row).content
        if current.get("status") != "current":
            continue
        resources.update(session, blobs, DOCUMENT_REFERENCE, sop_uid, {**current, "status": "superseded"}, org,
                         EVERYTHING)
        replaced.append(sop_uid)
    return replaced


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drimhub")
    except PackageNotFoundError:
        return ""


def content(session: Session, study_uid: str, access: Access, sop_uid: str | None = None) -> bytes:
    """The KOS bytes of manifest ``sop_uid`` of a study ``access`` sees; without ``sop_uid``, the newest.

    Raises
    ------
    NotFound
        The study is not visible, or no such manifest was published for it.
    """
    visible = session.scalar(select(Study.study_uid).where(Study.study_uid == study_uid, *access.study_filter()))
    query = select(Manifest.content).where(Manifest.study_uid == study_uid)
    query = query.where(Manifest.sop_uid == sop_uid) if sop_uid else query.order_by(Manifest.pk.desc()).limit(1)
    found = session.scalar(query) if visible is not None else None
    if found is None:
        raise NotFound(f"no manifest {sop_uid} was published for study {study_uid}" if sop_uid
                       else f"no manifest was published for study {study_uid}")
    return found


def is_published(session: Session, sop_uid: str, study_uid: str) -> bool:
    """True when this node published the KOS ``sop_uid`` for study ``study_uid``."""
    return session.scalar(select(Manifest.pk).where(Manifest.sop_uid == sop_uid, Manifest.study_uid == study_uid)
                          .limit(1)) is not None


def patient_of(session: Session, study_uid: str) -> tuple[str | None, str | None] | None:
    """(Patient ID, Issuer of Patient ID) of a study, None when the study is unknown."""
    row = session.execute(select(Study.patient_id, Study.issuer_of_patient_id)
                          .where(Study.study_uid == study_uid)).first()
    return (row[0], row[1]) if row is not None else None


def remove_study(session: Session, study_uid: str) -> list[str]:
    """Delete the manifests of a study and their DocumentReferences (FHIR deletes), in the caller's
    transaction; the deleted manifests' SOP Instance UIDs (their DocumentReference ids)."""
    sop_uids = list(session.scalars(select(Manifest.sop_uid).where(Manifest.study_uid == study_uid)
                                    .order_by(Manifest.pk)))
    for sop_uid in sop_uids:
        resources.delete(session, DOCUMENT_REFERENCE, sop_uid, EVERYTHING)
    session.execute(delete(Manifest).where(Manifest.study_uid == study_uid))
    return sop_uids
