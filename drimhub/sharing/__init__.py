"""Sharing: share grants and capability links, consent, KOS/MADO manifests, retention."""
