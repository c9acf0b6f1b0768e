"""STOW-RS outcome codes and the HTTP status of a Store Instances response."""

from __future__ import annotations

from enum import IntEnum


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values used in a FailedSOPSequence item.

    PS3.18 §10.5.3 refers to the C-STORE statuses of PS3.4 Annex B (Table B.2-1) and to the
    general statuses of PS3.7 Annex C.
    """

    #: PS3.7 C.4.2: Processing failure (an unexpected error while storing).
    PROCESSING_FAILURE = 0x0110
    #: PS3.7 C.4.4: Duplicate SOP Instance (same UID, different content, policy "reject").
    DUPLICATE_SOP_INSTANCE = 0x0111
    #: PS3.7 C.4.15: SOP Class not supported.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: PS3.7 Annex C (general failure status 0124H "Refused: Not Authorized"): the instance's
    #: study belongs to another organisation, or to another patient than a ``patient/`` scope's.
    NOT_AUTHORIZED = 0x0124
    #: PS3.4 Table B.2-1: Refused, Out of Resources (the storage could not take the instance).
    OUT_OF_RESOURCES = 0xA700
    #: PS3.4 Table B.2-1: Error, Data Set does not match SOP Class; PS3.18 §10.5.3 uses it for
    #: an instance whose Study Instance UID differs from the one in the target URL.
    DATA_SET_DOES_NOT_MATCH = 0xA900
    #: PS3.4 Table B.2-1: Error, Cannot understand (not a DICOM Part 10 file, missing UIDs).
    CANNOT_UNDERSTAND = 0xC000


class WarningReason(IntEnum):
    """Warning Reason (0008,1196) values (PS3.4 Table B.2-1)."""

    #: Coercion of Data Elements.
    COERCION_OF_DATA_ELEMENTS = 0xB000
    #: Data Set does not match SOP Class.
    DATA_SET_DOES_NOT_MATCH = 0xB007
    #: Elements Discarded.
    ELEMENTS_DISCARDED = 0xB006


def is_server_side(reason: int) -> bool:
    """True for a failure that is the server's problem, not the request's: the same request may succeed later.

    0110H processing failure (PS3.7 C.4.2) and A7xxH refused, out of resources (PS3.4 Table B.2-1).
    """
    return reason == FailureReason.PROCESSING_FAILURE or reason & 0xFF00 == 0xA700


def stow_http_status(stored: int, failed: int, warned: int, unreadable: int, server_side: int = 0) -> int:
    """HTTP status of a Store Instances response (PS3.18 Table 10.5.3-1).

    Parameters
    ----------
    stored : int
        Instances stored (or already stored with the same bytes), warnings included.
    failed : int
        Instances that failed.
    warned : int
        Stored instances that carry a warning.
    unreadable : int
        Failed parts that could not be understood at all (not DICOM).
    server_side : int
        Failed instances whose failure is the server's (:func:`is_server_side`).

    Returns
    -------
    int
        200 when everything was stored without warning; 202 when some instances were stored
        but warnings or failures exist; 503 when none was stored and every failure is the
        server's (a transient condition: the client may retry the same request, RFC 9110
        §15.6.4); 409 when none was stored because of a conflict (e.g. Study Instance UID
        mismatch, duplicate); 400 when none was stored because no part could be understood.
    """
    if stored and not failed and not warned:
        return 200
    if stored:
        return 202
    if failed and unreadable == failed:
        return 400
    if failed and server_side == failed:
        return 503
    return 409
