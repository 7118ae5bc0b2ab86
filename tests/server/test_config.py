"""ServerConfig: etcd 3.4 defaults, derived fields and every validation error path."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from quorumkv.server.config import DEFAULT_QUOTA_BACKEND_BYTES, ConfigError, ServerConfig

ETCD_34_DEFAULTS: dict[str, Any] = {
    "name": "default",
    "wal_dir": "",
    "snapshot_count": 100000,
    "heartbeat_interval_ms": 100,
    "election_timeout_ms": 1000,
    "listen_peer_urls": ["http://localhost:2380"],
    "listen_client_urls": ["http://localhost:2379"],
    "listen_client_http_urls": [],
    "listen_metrics_urls": [],
    "initial_advertise_peer_urls": ["http://localhost:2380"],
    "advertise_client_urls": ["http://localhost:2379"],
    "initial_cluster": "default=http://localhost:2380",
    "initial_cluster_state": "new",
    "initial_cluster_token": "etcd-cluster",
    "max_request_bytes": 1572864,
    "max_txn_ops": 128,
    "quota_backend_bytes": 0,
    "auto_compaction_mode": "periodic",
    "auto_compaction_retention": "0",
    "strict_reconfig_check": True,
    "force_new_cluster": False,
    "auth_token": "simple",
    "bcrypt_cost": 10,
    "auth_token_ttl": 300,
    "cert_file": "",
    "key_file": "",
    "client_cert_auth": False,
    "trusted_ca_file": "",
    "auto_tls": False,
    "peer_cert_file": "",
    "peer_key_file": "",
    "peer_client_cert_auth": False,
    "peer_trusted_ca_file": "",
    "peer_auto_tls": False,
    "cipher_suites": [],
    "peer_cert_allowed_cn": "",
    "client_crl_file": "",
    "peer_crl_file": "",
    "enable_pprof": False,
    "metrics": "basic",
    "log_outputs": ["default"],
    "log_level": "info",
    "watch_progress_notify_interval_ms": 600_000,
    "experimental_enable_lease_checkpoint": False,
    "lease_checkpoint_interval_ms": 300_000,  # not a flag in etcd 3.4, whose lessor fixes it at 5m
}
# Where quorumkv deliberately differs from etcd 3.4 (documented in docs/configuration.md).
QUORUMKV_DIFFERENCES: dict[str, Any] = {
    "data_dir": "default.quorumkv",  # etcd: default.etcd
    "pre_vote": True,  # etcd 3.4: false
    "logger": "zap",  # etcd 3.4: capnslog (deprecated)
    "log_format": "json",  # not an etcd 3.4 flag
}
# K3s's snapshot and S3 flags (not etcd's): K3s's defaults, the snapshot dir under the data dir.
#: K3s's cluster reset flags (server/reset.py).
CLUSTER_RESET_DEFAULTS: dict[str, Any] = {"cluster_reset": False, "cluster_reset_restore_path": ""}

K3S_SNAPSHOT_DEFAULTS: dict[str, Any] = {
    "etcd_snapshot_schedule_cron": "0 */12 * * *",
    "etcd_snapshot_retention": 5,
    "etcd_snapshot_dir": "default.quorumkv/snapshots",
    "etcd_snapshot_compress": False,
    "etcd_disable_snapshots": False,
    "etcd_snapshot_name": "etcd-snapshot",
    "etcd_s3": False,
    "etcd_s3_endpoint": "s3.amazonaws.com",
    "etcd_s3_bucket": "",
    "etcd_s3_folder": "",
    "etcd_s3_access_key": "",
    "etcd_s3_secret_key": "",
    "etcd_s3_region": "us-east-1",
    "etcd_s3_insecure": False,
    "etcd_s3_timeout_ms": 300_000,
    "etcd_s3_retention": 5,
}
# K3s's cluster lifecycle flags (docs/ha.md).
K3S_CLUSTER_DEFAULTS: dict[str, Any] = {
    "cluster_init": False,
    "server": "",
    "token": "",
    "token_file": "",
    "tls_san": [],
    "learner_stall_timeout_ms": 600_000,
}


def test_auth_flags_are_checked() -> None:
    for field_name, value, words in (("bcrypt_cost", 3, "--bcrypt-cost must be between 4 and 31"),
                                     ("auth_token_ttl", 0, "--auth-token-ttl must be > 0"),
                                     ("auth_token", "jwt,sign-method=RS256", "pub-key=PATH is required"),
                                     ("auth_token", "tls", "unknown token type 'tls'")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            ServerConfig(**{field_name: value}).validate()


def test_defaults_are_etcds() -> None:
    config = ServerConfig()
    actual = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    assert actual == {**ETCD_34_DEFAULTS, **QUORUMKV_DIFFERENCES, **K3S_SNAPSHOT_DEFAULTS, **CLUSTER_RESET_DEFAULTS,
                      **K3S_CLUSTER_DEFAULTS}


def test_derived_fields_follow_name() -> None:
    config = ServerConfig(name="infra0")
    assert config.data_dir == "infra0.quorumkv"
    assert config.initial_cluster == "infra0=http://localhost:2380"
    assert config.initial_cluster_members() == {"infra0": ["http://localhost:2380"]}


def test_initial_cluster_derives_one_entry_per_advertised_peer_url() -> None:
    urls = ["http://10.0.0.1:2380", "http://10.0.0.2:2380"]
    config = ServerConfig(name="a", initial_advertise_peer_urls=urls)
    assert config.initial_cluster == "a=http://10.0.0.1:2380,a=http://10.0.0.2:2380"


def test_explicit_data_dir_is_kept() -> None:
    assert ServerConfig(name="x", data_dir="/var/lib/q").data_dir == "/var/lib/q"


def test_frozen_and_lists_copied() -> None:
    urls = ["http://localhost:2379"]
    config = ServerConfig(advertise_client_urls=urls)
    urls.append("http://evil:1")
    assert config.advertise_client_urls == ["http://localhost:2379"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]


def test_effective_quota() -> None:
    assert ServerConfig().effective_quota_backend_bytes == DEFAULT_QUOTA_BACKEND_BYTES == 2 * 1024**3
    assert ServerConfig(quota_backend_bytes=8 * 1024**3).effective_quota_backend_bytes == 8 * 1024**3


def test_three_member_cluster_is_valid() -> None:
    cluster = "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380"
    config = ServerConfig(
        name="b", initial_cluster=cluster, initial_advertise_peer_urls=["http://10.0.0.2:2380"]
    )
    assert list(config.initial_cluster_members()) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("mode", "retention", "parsed"),
    [
        ("periodic", "0", 0),
        ("periodic", "1", 3600),
        ("periodic", "12", 12 * 3600),
        ("periodic", "30m", 1800),
        ("periodic", "1h30m", 5400),
        ("periodic", "90s", 90),
        ("revision", "0", 0),
        ("revision", "1000", 1000),
    ],
)
def test_auto_compaction_retention_parsed(mode: str, retention: str, parsed: int) -> None:
    config = ServerConfig(auto_compaction_mode=mode, auto_compaction_retention=retention)
    assert config.auto_compaction_retention_parsed() == parsed


@pytest.mark.parametrize(
    ("kwargs", "flag", "fragment"),
    [
        ({"name": ""}, "--name", "must not be empty"),
        ({"snapshot_count": 0}, "--snapshot-count", "must be > 0"),
        ({"max_request_bytes": 0}, "--max-request-bytes", "must be > 0"),
        ({"max_request_bytes": -1}, "--max-request-bytes", "must be > 0"),
        ({"max_txn_ops": 0}, "--max-txn-ops", "must be > 0"),
        ({"quota_backend_bytes": -1}, "--quota-backend-bytes", "must be >= 0"),
        ({"heartbeat_interval_ms": 0}, "--heartbeat-interval", r"must be > 0 \(set to 0ms\)"),
        ({"election_timeout_ms": -5}, "--election-timeout", "must be > 0"),
        ({"watch_progress_notify_interval_ms": 0}, "--experimental-watch-progress-notify-interval", "> 0"),
        ({"lease_checkpoint_interval_ms": 0}, "--experimental-lease-checkpoint-interval", "> 0"),
        (
            {"election_timeout_ms": 400},
            "--election-timeout",
            r"--election-timeout\[400ms\] should be at least 5 times --heartbeat-interval\[100ms\]",
        ),
        ({"election_timeout_ms": 50001}, "--election-timeout", "should be set less than 50000ms"),
        ({"listen_client_urls": ["localhost:2379"]}, "--listen-client-urls", "must start with http://"),
        ({"listen_client_urls": ["ftp://127.0.0.1:2379"]}, "--listen-client-urls", "http:// or https://"),
        ({"listen_client_urls": ["unix://sock:1"]}, "--listen-client-urls", "unix socket URL"),
        ({"listen_peer_urls": ["http://127.0.0.1"]}, "--listen-peer-urls", "scheme://host:port"),
        ({"listen_peer_urls": ["http://127.0.0.1:99999"]}, "--listen-peer-urls", "invalid URL"),
        ({"listen_peer_urls": ["http://127.0.0.1:2380/x"]}, "--listen-peer-urls", "must not contain a path"),
        ({"listen_peer_urls": ["http://example.com:2380"]}, "--listen-peer-urls", "expected IP in URL"),
        ({"listen_peer_urls": []}, "--listen-peer-urls", "at least one URL"),
        ({"listen_metrics_urls": ["http:/x"]}, "--listen-metrics-urls", "must not contain a path"),
        ({"advertise_client_urls": ["http://localhost:0"]}, "--advertise-client-urls", "1..65535"),
        ({"advertise_client_urls": []}, "--advertise-client-urls", "at least one URL"),
        ({"initial_cluster_state": "old"}, "--initial-cluster-state", '"new", "existing"'),
        ({"initial_cluster": "other=http://localhost:2380"}, "--initial-cluster", 'local name "default"'),
        ({"initial_cluster": "default"}, "--initial-cluster", "not of the form name=url"),
        ({"initial_cluster": "default=localhost:2380"}, "--initial-cluster", "http:// or https://"),
        (
            {"initial_cluster": "default=http://localhost:2381"},
            "--initial-cluster",
            "has default=http://localhost:2381 but missing from "
            "--initial-advertise-peer-urls=http://localhost:2380",
        ),
        (
            {"initial_cluster": "default=http://localhost:2380,b=http://localhost:2380"},
            "--initial-cluster",
            "duplicate url",
        ),
        ({"log_level": "loud"}, "--log-level", "debug, info, warn, error, panic, fatal"),
        ({"logger": "log4j"}, "--logger", "zap, capnslog"),
        ({"log_format": "xml"}, "--log-format", "json, console"),
        ({"log_outputs": []}, "--log-outputs", "at least one output"),
        ({"metrics": "all"}, "--metrics", "basic, extensive"),
        ({"auto_compaction_mode": "hourly"}, "--auto-compaction-mode", "periodic, revision"),
        ({"auto_compaction_retention": "abc"}, "--auto-compaction-retention", "Go duration"),
        ({"auto_compaction_retention": "-1h"}, "--auto-compaction-retention", "at least 1s"),
        ({"auto_compaction_retention": "500ms"}, "--auto-compaction-retention", "at least 1s"),
        (
            {"auto_compaction_mode": "revision", "auto_compaction_retention": "1h"},
            "--auto-compaction-retention",
            "non-negative integer",
        ),
        ({"cert_file": "c.pem"}, "--key-file", "must be given together"),
        ({"peer_key_file": "k.pem"}, "--peer-cert-file", "must be given together"),
        ({"listen_client_urls": ["https://127.0.0.1:2379"]}, "--listen-client-urls", "TLS key/cert"),
        ({"listen_peer_urls": ["https://127.0.0.1:2380"]}, "--listen-peer-urls", "--peer-cert-file"),
        ({"cipher_suites": [""]}, "--cipher-suites", "empty"),
        ({"heartbeat_interval_ms": "100"}, "--heartbeat-interval", "must be an integer"),
        ({"pre_vote": "yes"}, "--pre-vote", "true or false"),
        ({"listen_client_urls": "http://localhost:2379"}, "--listen-client-urls", "list of strings"),
    ],
)
def test_validation_errors_name_the_flag(kwargs: dict[str, Any], flag: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        ServerConfig(**kwargs)
    assert info.value.flag == flag
    assert flag in str(info.value)


def test_https_is_fine_with_certs_or_auto_tls() -> None:
    https = ["https://127.0.0.1:2379"]
    ServerConfig(listen_client_urls=https, cert_file="c.pem", key_file="k.pem")
    ServerConfig(listen_client_urls=https, auto_tls=True)
    ServerConfig(listen_peer_urls=["https://127.0.0.1:2380"], peer_auto_tls=True)


def test_ipv6_and_port_zero_listen_urls() -> None:
    config = ServerConfig(listen_client_urls=["http://[::1]:0"], listen_peer_urls=["http://0.0.0.0:2380"])
    assert config.listen_client_urls == ["http://[::1]:0"]


def test_existing_cluster_does_not_require_advertise_match() -> None:
    ServerConfig(initial_cluster_state="existing", initial_cluster="default=http://10.0.0.9:2380")
