"""What a member needs from its configuration (a subset of ``ServerConfig``, units last)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: etcd's default --max-request-bytes (1.5 MiB).
DEFAULT_MAX_REQUEST_BYTES = 1572864


@dataclass
class ServerSettings:
    """What the member needs from its configuration (a subset of ServerConfig, units last)."""

    name: str = "default"
    data_dir: str = "default.quorumkv"
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://localhost:2379"])
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    initial_cluster: str = ""
    initial_cluster_token: str = "etcd-cluster"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = 128
    election_timeout_ms: int = 1000
    heartbeat_interval_ms: int = 100
    watch_progress_notify_interval_ms: int = 600_000
    #: etcd's --quota-backend-bytes after defaulting (0 on the command line means 2 GiB).
    quota_backend_bytes: int = 2 * 1024 * 1024 * 1024
    auto_compaction_mode: str = "periodic"
    #: Seconds (periodic) or revisions (revision); 0 disables auto-compaction.
    auto_compaction_retention: int = 0
    initial_cluster_state: str = "new"
    listen_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    snapshot_count: int = 10_000
    #: How long a write or linearizable read waits for the cluster; 0: etcd's 5 s plus two election timeouts.
    request_timeout_ms: int = 0
    #: Peer TLS (etcd's --peer-* flags): the peer service serves and dials TLS when cert and key are given.
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    #: Test-only: ``advertised peer URL -> URL to dial`` (``quorumkv.testing.cluster`` routes links through fault
    #: proxies; the composition root reads it from ``QUORUMKV_TEST_PEER_DIAL_MAP``).
    peer_dial_map: dict[str, str] = field(default_factory=dict)
    #: --client-cert-auth: with auth enabled, a verified client certificate's common name is the user.
    client_cert_auth: bool = False
    #: etcd's --auth-token ("simple", or "jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...").
    auth_token: str = "simple"
    #: --auth-token-ttl (seconds a simple token lives after its last use).
    auth_token_ttl_s: float = 300.0
    #: --bcrypt-cost for passwords hashed by this member.
    bcrypt_cost: int = 10
    peer_cert_allowed_cn: str = ""
    peer_crl_file: str = ""
    #: --cipher-suites (etcd's names): TLS 1.2 suites the peer listener accepts
    cipher_suites: list[str] = field(default_factory=list)
    #: Recovery from quorum loss (server/reset.py): etcd's --force-new-cluster, K3s's --cluster-reset[-restore-path].
    force_new_cluster: bool = False
    cluster_reset: bool = False
    cluster_reset_restore_path: str = ""
    #: --experimental-enable-lease-checkpoint and --experimental-lease-checkpoint-interval (seconds).
    lease_checkpoint: bool = False
    lease_checkpoint_interval_s: float = 300.0
    #: --pre-vote: a member that lost its leader asks for votes without raising its term first.
    pre_vote: bool = True
    #: --strict-reconfig-check: refuse member add/remove that would leave too few started/connected voters.
    strict_reconfig_check: bool = True

    @property
    def request_timeout_s(self) -> float:
        if self.request_timeout_ms > 0:
            return self.request_timeout_ms / 1000
        return 5.0 + 2 * self.election_timeout_ms / 1000

    @classmethod
    def from_config(cls, cfg: Any) -> ServerSettings:
        return cls(
            name=cfg.name,
            data_dir=str(cfg.data_dir),
            advertise_client_urls=list(cfg.advertise_client_urls),
            initial_advertise_peer_urls=list(cfg.initial_advertise_peer_urls),
            initial_cluster=cfg.initial_cluster,
            initial_cluster_token=cfg.initial_cluster_token,
            max_request_bytes=cfg.max_request_bytes,
            max_txn_ops=cfg.max_txn_ops,
            election_timeout_ms=cfg.election_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            watch_progress_notify_interval_ms=getattr(cfg, "watch_progress_notify_interval_ms", 600_000),
            quota_backend_bytes=cfg.effective_quota_backend_bytes,
            auto_compaction_mode=cfg.auto_compaction_mode,
            auto_compaction_retention=cfg.auto_compaction_retention_parsed(),
            initial_cluster_state=getattr(cfg, "initial_cluster_state", "new"),
            listen_peer_urls=list(getattr(cfg, "listen_peer_urls", ["http://localhost:2380"])),
            snapshot_count=int(getattr(cfg, "snapshot_count", 10_000)),
            peer_cert_file=str(getattr(cfg, "peer_cert_file", "") or ""),
            peer_key_file=str(getattr(cfg, "peer_key_file", "") or ""),
            peer_trusted_ca_file=str(getattr(cfg, "peer_trusted_ca_file", "") or ""),
            peer_client_cert_auth=bool(getattr(cfg, "peer_client_cert_auth", False)),
            client_cert_auth=bool(getattr(cfg, "client_cert_auth", False)),
            auth_token=str(getattr(cfg, "auth_token", "simple") or "simple"),
            auth_token_ttl_s=float(getattr(cfg, "auth_token_ttl", 300)),
            bcrypt_cost=int(getattr(cfg, "bcrypt_cost", 10)),
            peer_cert_allowed_cn=str(getattr(cfg, "peer_cert_allowed_cn", "") or ""),
            peer_crl_file=str(getattr(cfg, "peer_crl_file", "") or ""),
            cipher_suites=list(getattr(cfg, "cipher_suites", []) or []),
            force_new_cluster=bool(getattr(cfg, "force_new_cluster", False)),
            cluster_reset=bool(getattr(cfg, "cluster_reset", False)),
            cluster_reset_restore_path=str(getattr(cfg, "cluster_reset_restore_path", "") or ""),
            lease_checkpoint=bool(getattr(cfg, "experimental_enable_lease_checkpoint", False)),
            lease_checkpoint_interval_s=int(getattr(cfg, "lease_checkpoint_interval_ms", 300_000)) / 1000,
            pre_vote=bool(getattr(cfg, "pre_vote", True)),
            strict_reconfig_check=bool(getattr(cfg, "strict_reconfig_check", True)),
        )

    @property
    def min_lease_ttl_seconds(self) -> int:
        """etcd: ceil(1.5 x election timeout), in whole seconds."""
        election_ticks = max(1, self.election_timeout_ms // max(1, self.heartbeat_interval_ms))
        return max(1, math.ceil((3 * election_ticks // 2) * self.heartbeat_interval_ms / 1000))
