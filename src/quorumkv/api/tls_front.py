"""The client port's TLS front lives in ``security/tls_front.py`` (the peer listener uses it too); this name is
kept for the API layer's imports."""

from quorumkv.security.tls_front import TLSFront, verified_common_name

__all__ = ["TLSFront", "verified_common_name"]
