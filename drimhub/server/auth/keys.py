"""The node's signing key: loaded from ``DRIMHUB_SIGNING_KEY`` or generated once in DATA_DIR.

The key signs the access tokens this node issues and the client assertions it sends to peers;
its public half is served at ``/oauth/jwks``.
"""

from __future__ import annotations

import os
from pathlib import Path

from joserfc.jwk import KeySet, RSAKey

from drimhub.errors import DrimhubError

#: JWS algorithm of the node's tokens (RSASSA-PKCS1-v1_5 with SHA-384, which SMART Backend
#: Services names among the algorithms every party supports).
ALGORITHM = "RS384"
KEY_FILE = "signing-key.pem"


class SigningKeyUnavailable(DrimhubError):
    """No signing key could be loaded or created."""


def load_signing_key(setting: str | None, data_dir: Path) -> RSAKey:
    """The private signing key.

    Parameters
    ----------
    setting : str or None
        ``DRIMHUB_SIGNING_KEY``: a PEM private key, or the path of a PEM file.
    data_dir : Path
        Where the generated key is kept (``signing-key.pem``, mode 0600) when ``setting`` is empty.

    Raises
    ------
    SigningKeyUnavailable
        The key cannot be read, parsed or written.
    """
    try:
        if setting:
            pem = setting.encode() if "-----BEGIN" in setting else Path(setting).read_bytes()
            return _with_kid(RSAKey.import_key(pem))
        path = data_dir / KEY_FILE
        if path.exists():
            return _with_kid(RSAKey.import_key(path.read_bytes()))
        key = RSAKey.generate_key(3072, private=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.as_pem(private=True))
        return _with_kid(key)
    except FileExistsError:  # another worker created it first
        return load_signing_key(None, data_dir)
    except (OSError, ValueError) as exc:
        raise SigningKeyUnavailable(f"no signing key: {exc}") from exc


def _with_kid(key: RSAKey) -> RSAKey:
    key.ensure_kid()  # RFC 7638 thumbprint: the same key always has the same kid
    return key


def public_jwks(key: RSAKey) -> dict[str, object]:
    """The JWKS document of the public key (``/oauth/jwks``)."""
    public: dict[str, object] = {**key.as_dict(private=False), "use": "sig", "alg": ALGORITHM, "kid": key.kid}
    return {"keys": [public]}


def key_set(key: RSAKey) -> KeySet:
    return KeySet([key])
