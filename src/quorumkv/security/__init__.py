"""TLS for quorumkv: certificate inspection and diagnostics (``certs``), etcd's cipher-suite names
(``ciphers``), auto-TLS self-signed certificates (``autotls``), the server flags as endpoints and the start-up
check (``settings``), credentials that re-read rotated files (``reload``) and the diagnosis of a failed
handshake (``diagnose``). Imports nothing of the project: every layer above may use it.
"""

from quorumkv.security.certs import CertInfo, Endpoint, Problem, TLSFileError, check_endpoint, describe
from quorumkv.security.settings import check_config, endpoints

__all__ = ["CertInfo", "Endpoint", "Problem", "TLSFileError", "check_config", "check_endpoint", "describe",
           "endpoints"]
