"""DELETE of a study, a series or an instance (not part of PS3.18; the dcm4chee/Orthanc usage).

Rows go in one write transaction (a series or study left without children goes with them,
unless a concurrent STOW has just stored into it: the foreign keys do not cascade, so that
store is never undone, see :func:`drimhub.store.retrieve.delete_instances`);
blobs are deleted after the commit, so a crash in between leaves orphan blobs, which the sweep
removes, never a row pointing at a missing blob. The DiagnosticReports derived from deleted SR or
encapsulated PDF instances are deleted in the same transaction (:func:`drimhub.fhir.derive.instances_deleted`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from drimhub.errors import NotFound
from drimhub.fhir import derive
from drimhub.store import retrieve
from drimhub.store.access import Access
from drimhub.store.blobs import FileBlobStore
from drimhub.store.engine import write_session

log = logging.getLogger(__name__)


def delete(sessions: sessionmaker[Session], blobs: FileBlobStore, access: Access, study: str,
           series: str | None = None, sop: str | None = None,
           before: Callable[[Session], None] | None = None) -> int:
    """Delete every instance in scope; return how many were deleted.

    Parameters
    ----------
    sessions : sessionmaker
        The session factory (the delete runs in its own write transaction).
    blobs : FileBlobStore
        Where the instances' blobs are.
    access : Access
        The caller's access: instances of studies it may not see are never deleted.
    study, series, sop : str
        The scope: a study, one of its series, or one instance of that series.
    before : callable, optional
        Called with the write session before the rows go, in their transaction (an audit event,
        rows that go with the study): nothing it writes stays when nothing is deleted.

    Raises
    ------
    NotFound
        Nothing visible in scope (unknown UID, a series of another study, a study of another
        organisation).
    """
    with write_session(sessions) as session:
        if before is not None:
            before(session)
        deleted = retrieve.delete_instances(session, access, study, series, sop)
        derive.instances_deleted(session, deleted)
        if not deleted:  # raised inside: what ``before`` wrote is rolled back
            raise NotFound(f"nothing to delete at study {study}" + (f" series {series}" if series else "")
                           + (f" instance {sop}" if sop else ""))
    keys = [instance.blob_key for instance in deleted]
    for key in keys:
        try:
            blobs.delete(key)
        except OSError:  # the rows are gone: the sweep removes what is left
            log.warning("could not delete blob %s", key, exc_info=True)
    log.info("deleted %d instance(s) of study %s", len(keys), study)
    return len(keys)
