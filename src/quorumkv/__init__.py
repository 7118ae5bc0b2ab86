"""quorumkv: an etcd-compatible, embeddable key-value store."""

__version__ = "0.1.0"
#: The etcd server version quorumkv reports on the wire; etcd 3.4 clients accept it.
ETCD_COMPAT_VERSION = "3.4.34"
#: The etcd cluster version quorumkv reports.
ETCD_CLUSTER_VERSION = "3.4.0"

