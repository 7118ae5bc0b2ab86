"""``config_to_args`` round-trips through the ``quorumkv`` CLI parser; ``client_endpoints`` derivation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorumkv.cli.server import main
from quorumkv.embed import ConfigError, ServerConfig, client_endpoints, config_to_args
from quorumkv.security.ciphers import GO_TO_OPENSSL
from quorumkv.server.config import AUTO_COMPACTION_MODES, LOG_FORMATS, LOG_LEVELS, LOGGERS, METRICS_LEVELS
from quorumkv.server.config_sources import FLAG_SPECS


def parse(args: list[str]) -> ServerConfig:
    """What the ``quorumkv`` command would run with ``args`` and an empty environment."""
    seen: list[ServerConfig] = []

    def runner(config: ServerConfig) -> int:
        seen.append(config)
        return 0

    assert main(args, runner=runner, environ={}) == 0, args
    assert len(seen) == 1
    return seen[0]


# Text a command line can carry (no NUL, no lone surrogates), including '=', ',', spaces, leading '-'.
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20)
#: --cipher-suites must be etcd's (Go's) names that this OpenSSL has
_SUITES = sorted(n for n, o in GO_TO_OPENSSL.items() if "RC4" not in o and "DES" not in o)
_item = st.from_regex(r"[A-Za-z0-9_./:-]{1,12}", fullmatch=True)
_host = st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "[::1]", "[::]", "10.1.2.3"])


def _urls(*, listen: bool, min_size: int = 1) -> st.SearchStrategy[list[str]]:
    port = st.integers(0 if listen else 1, 65535)
    url = st.builds(lambda h, p: f"http://{h}:{p}", _host, port)
    return st.lists(url, min_size=min_size, max_size=3, unique=True)


@st.composite
def configs(draw: st.DrawFn) -> ServerConfig:
    heartbeat = draw(st.integers(1, 2000))
    mode = draw(st.sampled_from(AUTO_COMPACTION_MODES))
    retention = draw(
        st.sampled_from(["0", "1", "30m", "1h30m"] if mode == "periodic" else ["0", "10", "1000"])
    )
    peer_urls = draw(_urls(listen=False))
    name = draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True))
    cluster = draw(
        st.sampled_from(
            [
                "",
                ",".join(f"{name}={u}" for u in peer_urls) + ",zz-other=http://10.9.9.9:2380",
            ]
        )
    )
    with_tls = draw(st.booleans())
    logger = draw(st.sampled_from(LOGGERS))
    kwargs: dict[str, Any] = {
        "name": name,
        "data_dir": draw(_text),
        "wal_dir": "",  # refused when set (tests/server/test_flag_effects.py)
        "snapshot_count": draw(st.integers(1, 10**12)),
        "heartbeat_interval_ms": heartbeat,
        "election_timeout_ms": draw(st.integers(5 * heartbeat, 50_000)),
        "listen_peer_urls": draw(_urls(listen=True)),
        "listen_client_urls": draw(_urls(listen=True)),
        "listen_client_http_urls": draw(_urls(listen=True, min_size=0)),
        "listen_metrics_urls": draw(_urls(listen=True, min_size=0)),
        "max_request_bytes": draw(st.integers(1, 2**31)),
        "max_txn_ops": draw(st.integers(1, 10_000)),
        "quota_backend_bytes": draw(st.integers(0, 2**40)),
        "initial_advertise_peer_urls": peer_urls,
        "advertise_client_urls": draw(_urls(listen=False)),
        "initial_cluster": cluster,
        "initial_cluster_state": draw(st.sampled_from(["new", "existing"])),
        "initial_cluster_token": draw(_text),
        "strict_reconfig_check": draw(st.booleans()),
        "pre_vote": draw(st.booleans()),
        "auto_compaction_mode": mode,
        "auto_compaction_retention": retention,
        "force_new_cluster": draw(st.booleans()),
        "cert_file": "/tls/server.crt" if with_tls else "",
        "key_file": "/tls/server.key" if with_tls else "",
        "client_cert_auth": draw(st.booleans()),
        "trusted_ca_file": draw(st.sampled_from(["", "/tls/ca.crt", "dir with space/ca.pem"])),
        "auto_tls": draw(st.booleans()),
        "peer_cert_file": "",
        "peer_key_file": "",
        "peer_client_cert_auth": draw(st.booleans()),
        "peer_trusted_ca_file": draw(_text),
        "peer_auto_tls": draw(st.booleans()),
        "cipher_suites": draw(st.lists(st.sampled_from(_SUITES), max_size=3)),
        "enable_pprof": False,  # refused when set
        "metrics": draw(st.sampled_from(METRICS_LEVELS)),
        "logger": logger,
        "log_outputs": (draw(st.lists(_item, min_size=1, max_size=3)) if logger == "zap"
                        else [draw(st.sampled_from(["default", "stderr", "stdout"]))]),
        "log_level": draw(st.sampled_from(LOG_LEVELS)),
        "log_format": draw(st.sampled_from(LOG_FORMATS)),
        "watch_progress_notify_interval_ms": draw(st.integers(1, 10**9)),
    }
    return ServerConfig(**kwargs)


def test_every_field_has_a_flag() -> None:
    """Round-tripping depends on every ServerConfig field being emitted as a flag."""
    assert {f.name for f in dataclasses.fields(ServerConfig)} == {s.field for s in FLAG_SPECS}
    assert len(config_to_args(ServerConfig())) == len(FLAG_SPECS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_config_to_args_round_trips_through_the_cli(config: ServerConfig) -> None:
    assert parse(config_to_args(config)) == config


@pytest.mark.parametrize(
    "config",
    [
        ServerConfig(),
        ServerConfig(name="-dash", data_dir="--data-dir=x", initial_cluster_token=" spaced ,comma= "),
        ServerConfig(wal_dir="", listen_metrics_urls=[], cipher_suites=[], log_outputs=["stderr", "/tmp/x.log"]),
        ServerConfig(auto_compaction_mode="revision", auto_compaction_retention="1000", pre_vote=False),
        ServerConfig(watch_progress_notify_interval_ms=1, heartbeat_interval_ms=1, election_timeout_ms=5),
    ],
)
def test_config_to_args_table(config: ServerConfig) -> None:
    assert parse(config_to_args(config)) == config


def test_config_to_args_rejects_what_a_command_line_cannot_carry() -> None:
    with pytest.raises(ConfigError, match=r"--log-outputs.*commas"):
        config_to_args(ServerConfig(log_outputs=["a,b"]))
    with pytest.raises(ConfigError, match="--cipher-suites"):
        config_to_args(ServerConfig(cipher_suites=[" TLS_AES "]))
    with pytest.raises(ConfigError, match=r"--initial-cluster-token.*NUL"):
        config_to_args(ServerConfig(initial_cluster_token="a\x00b"))


def test_client_endpoints() -> None:
    cfg = ServerConfig(
        listen_client_urls=["http://0.0.0.0:2379", "http://[::]:2381", "https://10.0.0.1:2382", "http://localhost:1"],
        advertise_client_urls=["http://h:2379"],
        cert_file="c",
        key_file="k",
    )
    assert client_endpoints(cfg) == ["127.0.0.1:2379", "[::1]:2381", "10.0.0.1:2382", "localhost:1"]
    with pytest.raises(ConfigError, match="port 0"):
        client_endpoints(ServerConfig(listen_client_urls=["http://127.0.0.1:0"]))
