"""Environment and YAML sources: etcd 3.4's precedence, naming and config-file rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quorumkv.server.config import ConfigError
from quorumkv.server.config_sources import (
    COMPAT_FLAGS,
    FLAG_SPECS,
    env_names,
    load_config,
    load_config_file,
)


def test_env_names_follow_etcds_rule() -> None:
    assert env_names("listen-client-urls") == ("QUORUMKV_LISTEN_CLIENT_URLS", "ETCD_LISTEN_CLIENT_URLS")


def test_etcd_env_is_used() -> None:
    loaded = load_config({}, {"ETCD_NAME": "infra1", "ETCD_HEARTBEAT_INTERVAL": "50"})
    assert loaded.config.name == "infra1"
    assert loaded.config.heartbeat_interval_ms == 50
    assert loaded.origins["name"] == "ETCD_NAME"


def test_quorumkv_env_beats_etcd_env() -> None:
    loaded = load_config({}, {"ETCD_NAME": "from-etcd", "QUORUMKV_NAME": "from-q"})
    assert loaded.config.name == "from-q"
    assert any("ETCD_NAME" in w and "shadowed by QUORUMKV_NAME" in w for w in loaded.warnings)


def test_flag_beats_both_envs() -> None:
    loaded = load_config({"name": "flag"}, {"ETCD_NAME": "e", "QUORUMKV_NAME": "q"})
    assert loaded.config.name == "flag"
    assert sum("shadowed by corresponding flag" in w for w in loaded.warnings) == 2


def test_empty_env_value_is_ignored_like_etcd() -> None:
    assert load_config({}, {"ETCD_NAME": ""}).config.name == "default"


def test_unrecognized_etcd_env_warns_but_quorumkv_prefix_does_not() -> None:
    loaded = load_config({}, {"ETCD_LISTEN_CLIENT_URL": "x", "QUORUMKV_SLOW": "1", "ETCD_VERSION": "3.4"})
    assert loaded.warnings == ["unrecognized environment variable ETCD_LISTEN_CLIENT_URL=x"]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ETCD_HEARTBEAT_INTERVAL": "abc"}, 'invalid value "abc" for ETCD_HEARTBEAT_INTERVAL'),
        ({"QUORUMKV_CLIENT_CERT_AUTH": "maybe"}, "QUORUMKV_CLIENT_CERT_AUTH (--client-cert-auth)"),
        ({"ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL": "10"}, "ETCD_EXPERIMENTAL_WATCH_PROGRESS"),
        ({"ETCD_LOG_LEVEL": "loud"}, "(value from ETCD_LOG_LEVEL)"),
        ({"ETCD_ENABLE_V2": "true"}, "ETCD_ENABLE_V2 (--enable-v2)=true is not supported"),
    ],
)
def test_bad_env_value_names_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, env)
    assert fragment in str(info.value)


def test_env_value_types() -> None:
    env = {
        "ETCD_LISTEN_PEER_URLS": "http://10.0.0.1:2380, http://10.0.0.2:2380",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": "http://10.0.0.1:2380",
        "ETCD_INITIAL_CLUSTER": "default=http://10.0.0.1:2380",
        "ETCD_PRE_VOTE": "false",
        "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL": "1m30s",
        "ETCD_QUOTA_BACKEND_BYTES": "8589934592",
    }
    config = load_config({}, env).config
    assert config.listen_peer_urls == ["http://10.0.0.1:2380", "http://10.0.0.2:2380"]
    assert config.pre_vote is False
    assert config.watch_progress_notify_interval_ms == 90_000
    assert config.quota_backend_bytes == 8 * 1024**3


def test_listen_client_urls_without_advertise_is_refused_like_etcd() -> None:
    with pytest.raises(ConfigError, match="--advertise-client-urls is required") as info:
        load_config({}, {"ETCD_LISTEN_CLIENT_URLS": "http://0.0.0.0:2379"})
    assert "ETCD_LISTEN_CLIENT_URLS" in str(info.value)
    both = {"ETCD_LISTEN_CLIENT_URLS": "http://0.0.0.0:2379", "ETCD_ADVERTISE_CLIENT_URLS": "http://h:2379"}
    assert load_config({}, both).config.advertise_client_urls == ["http://h:2379"]


def test_ignored_compat_flag_warns_and_default_is_silent() -> None:
    loaded = load_config({"max-wals": "10", "max-snapshots": "5"}, {})
    assert len(loaded.warnings) == 1
    assert "--max-wals" in loaded.warnings[0] and "ignored" in loaded.warnings[0]


@pytest.mark.parametrize("compat", [c for c in COMPAT_FLAGS if c.refuse])
def test_refused_compat_flags_error_when_set(compat: object) -> None:
    flag = compat.flag  # type: ignore[attr-defined]
    value = "true" if compat.is_bool else "something"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="not supported by quorumkv") as info:
        load_config({flag: value}, {})
    assert f"--{flag}" in str(info.value)


FULL_YAML = """
name: infra0
data-dir: /var/lib/q
wal-dir:
snapshot-count: 5000
heartbeat-interval: 50
election-timeout: 500
quota-backend-bytes: 4294967296
max-txn-ops: 256
max-request-bytes: 2097152
listen-peer-urls: "http://10.0.1.10:2380"
listen-client-urls: "https://10.0.1.10:2379,https://127.0.0.1:2379"
advertise-client-urls: https://10.0.1.10:2379
initial-advertise-peer-urls: http://10.0.1.10:2380
initial-cluster: infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380
initial-cluster-token: tkn
initial-cluster-state: existing
strict-reconfig-check: false
pre-vote: false
enable-pprof: false
metrics: extensive
auto-compaction-mode: revision
auto-compaction-retention: 1000
log-level: debug
logger: zap
log-outputs: [stderr]
cipher-suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
force-new-cluster: false
experimental-watch-progress-notify-interval: 5000000000
discovery:
proxy: 'off'
max-snapshots: 5
client-transport-security:
  cert-file: /etc/q/server.crt
  key-file: /etc/q/server.key
  client-cert-auth: true
  trusted-ca-file: /etc/q/ca.crt
  auto-tls: false
peer-transport-security:
  cert-file: /etc/q/peer.crt
  key-file: /etc/q/peer.key
  client-cert-auth: true
  trusted-ca-file: /etc/q/ca.crt
  auto-tls: false
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "quorumkv.conf.yml"
    path.write_text(text)
    return str(path)


def test_yaml_file_keys_and_tls_sections(tmp_path: Path) -> None:
    loaded = load_config_file(write(tmp_path, FULL_YAML))
    c = loaded.config
    assert (c.name, c.data_dir, c.wal_dir, c.snapshot_count) == ("infra0", "/var/lib/q", "", 5000)
    assert (c.heartbeat_interval_ms, c.election_timeout_ms) == (50, 500)
    assert (c.quota_backend_bytes, c.max_txn_ops, c.max_request_bytes) == (4 * 1024**3, 256, 2097152)
    assert c.listen_client_urls == ["https://10.0.1.10:2379", "https://127.0.0.1:2379"]
    assert c.initial_cluster_members()["infra1"] == ["http://10.0.1.11:2380"]
    assert (c.initial_cluster_state, c.initial_cluster_token) == ("existing", "tkn")
    assert (c.strict_reconfig_check, c.pre_vote, c.enable_pprof, c.metrics) == (
        False,
        False,
        False,
        "extensive",
    )
    assert c.auto_compaction_retention_parsed() == 1000 and c.auto_compaction_mode == "revision"
    assert (c.log_level, c.log_outputs) == ("debug", ["stderr"])
    assert c.cipher_suites == ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
    assert c.watch_progress_notify_interval_ms == 5000
    assert (c.cert_file, c.key_file, c.client_cert_auth, c.trusted_ca_file) == (
        "/etc/q/server.crt",
        "/etc/q/server.key",
        True,
        "/etc/q/ca.crt",
    )
    assert (c.peer_cert_file, c.peer_key_file, c.peer_client_cert_auth) == (
        "/etc/q/peer.crt",
        "/etc/q/peer.key",
        True,
    )
    assert loaded.warnings == []


def test_yaml_duration_may_be_a_go_duration_string(tmp_path: Path) -> None:
    path = write(tmp_path, "experimental-watch-progress-notify-interval: 2s\n")
    assert load_config_file(path).config.watch_progress_notify_interval_ms == 2000


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, "")).config.name == "default"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nmae: x\n", "unknown key 'nmae' in --config-file .* \\(did you mean name\\?\\)"),
        ("cert-file: /x\n", "unknown key 'cert-file'"),
        ("client-transport-security:\n  cert-fle: /x\n", "unknown key 'client-transport-security.cert-fle'"),
        ("client-transport-security: yes\n", "client-transport-security .* must be a mapping"),
        ("heartbeat-interval: fast\n", "invalid value \"fast\" for config file key 'heartbeat-interval'"),
        ("pre-vote: 3\n", "config file key 'pre-vote'"),
        ("peer-transport-security:\n  auto-tls: maybe\n", "'peer-transport-security.auto-tls'"),
        ("log-level: loud\n", "--log-level must be one of.*value from config file key 'log-level'"),
        ("- a\n- b\n", "must contain a YAML mapping"),
        ("name: [unclosed\n", "is not valid YAML"),
        ("enable-v2: true\n", "config file key 'enable-v2'.* is not supported"),
    ],
)
def test_yaml_errors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config_file(write(tmp_path, text))


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match=re.escape("cannot read --config-file '/nonexistent/q.yml'")):
        load_config_file("/nonexistent/q.yml")


def test_config_file_takes_over_flags_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, "name: from-file\n")
    loaded = load_config(
        {"config-file": path, "name": "from-flag", "heartbeat-interval": "999"},
        {"ETCD_NAME": "from-env", "ETCD_SNAPSHOT_COUNT": "7"},
    )
    assert loaded.config.name == "from-file"
    assert loaded.config.heartbeat_interval_ms == 100
    assert loaded.config.snapshot_count == 100000
    assert "ignored" in loaded.warnings[0]
    for name in ("--name", "--heartbeat-interval", "ETCD_NAME", "ETCD_SNAPSHOT_COUNT"):
        assert name in loaded.warnings[0]


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, "name: via-env\n")
    assert load_config({}, {"ETCD_CONFIG_FILE": path}).config.name == "via-env"
    assert (
        load_config({}, {"QUORUMKV_CONFIG_FILE": path, "ETCD_CONFIG_FILE": "/nope"}).config.name == "via-env"
    )


def test_every_spec_field_exists_and_yaml_paths_unique() -> None:
    from quorumkv.server.config import ServerConfig, flag_for_field

    fields = {f for f in ServerConfig.__dataclass_fields__}
    assert {s.field for s in FLAG_SPECS} == fields
    assert all(flag_for_field(s.field) == s.option for s in FLAG_SPECS)
    assert len({s.yaml_path for s in FLAG_SPECS}) == len(FLAG_SPECS)
