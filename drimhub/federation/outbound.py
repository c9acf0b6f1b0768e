"""Every outbound call to a peer: exact-origin token sending, no cross-origin redirects, SSRF checks."""

from __future__ import annotations

from dicomweb_client import DICOMwebClient
from joserfc.jwk import RSAKey

from drimhub.federation.peers import PeerInfo


def dicomweb_client(peer: PeerInfo, signing_key: RSAKey, *, relay_token: str | None = None,
                    timeout: float | None = None) -> DICOMwebClient:
    """A dicomweb-client for ``peer``'s DICOMweb root, authenticated as the peer's ``auth`` says.

    ``smart-backend``: a token obtained from the peer's token endpoint with a client assertion
    signed by ``signing_key`` (cached until shortly before it expires); ``relay``: ``relay_token``
    (the caller's own). The token is sent only to the peer's exact origin.
    """
    raise NotImplementedError
