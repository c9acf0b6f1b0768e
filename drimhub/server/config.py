"""Configuration: defaults, then ``DRIMHUB_*`` environment variables, then the caller's mapping.

The keys and their meaning are the interface contract of ARCHITECTURE.md §3; every key is
optional. Values derived from ``DATA_DIR`` are filled in last, so that setting only
``DRIMHUB_DATA_DIR`` moves the database and the blobs with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from drimhub.errors import DrimhubError

#: Defaults of every setting (without the ``DRIMHUB_`` prefix).
DEFAULTS: dict[str, Any] = {
    "DATA_DIR": "./var",
    "DATABASE_URL": None,            # sqlite:///<DATA_DIR>/drimhub.db
    "STORAGE_URL": None,             # file://<DATA_DIR>/blobs
    "BASE_URL": None,                # derived from the request
    "ISSUER": None,                  # OAuth2 issuer; the base URL by default
    "SIGNING_KEY": None,             # PEM or path; generated in DATA_DIR on first start
    # Extra token issuers accepted, "ISSUER=JWKS_URL" pairs separated by spaces or commas;
    # "ISSUER=introspect:URL" for issuers whose tokens are validated by RFC 7662 introspection.
    # Either may end with ";org=ORG" (the issuer's tokens all act for ORG) or ";org-claim=CLAIM"
    # (their organisation is in claim CLAIM, not "org"). See drimhub.server.auth.protect.
    "TRUSTED_ISSUERS": "",
    # What STOW does with a known SOP Instance UID whose bytes differ: "reject" keeps the stored
    # instance and reports failure 0x0111 (Duplicate SOP Instance); "overwrite" replaces it.
    "STOW_DUPLICATE_POLICY": "reject",
    # QIDO-RS: answers are capped at this many matches; a truncated answer carries Warning 299.
    "QIDO_MAX_RESULTS": 1000,
    # FHIR: largest JSON (or POST _search form) body read, in bytes; larger is a 413 before it
    # is read whole. Raw Binary uploads have their own cap (drimhub.fhir.binary.MAX_RAW_BYTES).
    "FHIR_MAX_BODY": 64 * 1024 * 1024,
    # `drimhub serve` removes temporary files and orphan blobs older than this many seconds
    # before it starts serving (a crash leaves at most those behind).
    "SWEEP_MIN_AGE": 60,
    # Origins allowed to call the APIs from a browser (a viewer such as OHIF): "*" or a list.
    # Tokens travel in the Authorization header, never in cookies, so "*" exposes nothing.
    "CORS_ORIGINS": "*",
    # Audit events older than this many days are removed by `drimhub audit purge` (the only
    # deletion of the audit trail; CNIL recommends 6 to 12 months).
    "AUDIT_RETENTION_DAYS": 365,
    # Reverse proxies in front of the node that set X-Forwarded-For/-Proto/-Host (werkzeug's
    # ProxyFix trusts that many hops). 0: the headers are ignored. Behind one TLS-terminating
    # proxy, 1: the client's address, https and the public host then reach the application.
    "PROXY_HOPS": 0,
    # --- sharing node (drimhub.federation, drimhub.jobs, drimhub.sharing) ---
    # Seconds a federated request waits for each peer before answering without it (Warning).
    "PEER_TIMEOUT": 10.0,
    # Job queue (huey): "sqlite:///PATH" (default: <DATA_DIR>/jobs.db, one machine) or
    # "redis://HOST:PORT/DB" (several machines).
    "JOBS_URL": None,
    # Retention policies, "KIND=DAYS" items separated by spaces or commas: "cached=30" (copies of
    # peers' studies, counted from their retrieval; 30 days without it), "org:ORG=90" (studies of organisation ORG,
    # counted from their final report). See drimhub.sharing.retention.
    "RETENTION": "",
    # The node's OID (a DICOM UID): Retrieve Location UID of its KOS manifests (IHE XDS-I.b's
    # Imaging Document Source). Unset: a 2.25 UID derived from the base URL (drimhub.mappings.kos).
    "NODE_UID": None,
    # Longest lifetime of a share grant, in days.
    "SHARE_MAX_DAYS": 365,
    # Apply migrations when the app starts (the CLI's serve does it before forking workers).
    "AUTO_MIGRATE": True,
}

_POLICIES = ("reject", "overwrite")


def load(app: Flask, overrides: Mapping[str, Any] | None) -> None:
    """Fill ``app.config`` from the defaults, the environment and ``overrides``."""
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("DRIMHUB")
    if overrides:
        app.config.update(overrides)
    data_dir = Path(str(app.config["DATA_DIR"])).resolve()
    app.config["DATA_DIR"] = str(data_dir)
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = f"sqlite:///{data_dir / 'drimhub.db'}"
    if not app.config["STORAGE_URL"]:
        app.config["STORAGE_URL"] = f"file://{data_dir / 'blobs'}"
    hops = app.config["PROXY_HOPS"]
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        raise DrimhubError(f"DRIMHUB_PROXY_HOPS must be a whole number of proxies (0 or more), not {hops!r}")
    cap = app.config["FHIR_MAX_BODY"]
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise DrimhubError(f"DRIMHUB_FHIR_MAX_BODY must be a number of bytes (1 or more), not {cap!r}")
    if not app.config["JOBS_URL"]:
        app.config["JOBS_URL"] = f"sqlite:///{data_dir / 'jobs.db'}"
    if app.config["STOW_DUPLICATE_POLICY"] not in _POLICIES:
        raise DrimhubError(f"DRIMHUB_STOW_DUPLICATE_POLICY must be one of {', '.join(_POLICIES)}")
    from drimhub.sharing.retention import parse_rules

    parse_rules(str(app.config["RETENTION"] or ""))  # a bad policy stops the start (DrimhubError)
    from drimhub.mappings.kos import is_uid

    if app.config["NODE_UID"] and not is_uid(str(app.config["NODE_UID"])):
        raise DrimhubError(f"DRIMHUB_NODE_UID must be a DICOM UID (digits and dots), not {app.config['NODE_UID']!r}")
