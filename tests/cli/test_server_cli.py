"""The ``quorumkv`` command line: etcd 3.4 flag spellings, errors, --version, env and config-file rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import quorumkv
from quorumkv.cli.server import EXIT_USAGE, main
from quorumkv.server.config import REFUSED_FIELDS, ServerConfig
from quorumkv.server.config_sources import COMPAT_FLAGS, FLAG_SPECS

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Capture:
    """A runner that records the config it was given and returns a sentinel exit code."""

    def __init__(self) -> None:
        self.configs: list[ServerConfig] = []

    def __call__(self, config: ServerConfig) -> int:
        self.configs.append(config)
        return 7


def run(argv: list[str], env: dict[str, str] | None = None) -> ServerConfig:
    capture = Capture()
    assert main(argv, runner=capture, environ=env or {}) == 7
    assert len(capture.configs) == 1
    return capture.configs[0]


# (argv, field, expected) — every flag, both with a separate value and with "=".
FLAG_CASES: list[tuple[list[str], str, Any]] = [
    (["--name", "infra0", "--initial-cluster", "infra0=http://localhost:2380"], "name", "infra0"),
    (["--data-dir", "/d"], "data_dir", "/d"),
    (["--auth-token", "jwt,pub-key=/k.pub,sign-method=RS256"], "auth_token", "jwt,pub-key=/k.pub,sign-method=RS256"),
    (["--bcrypt-cost", "4"], "bcrypt_cost", 4),
    (["--auth-token-ttl", "60"], "auth_token_ttl", 60),
    (["--snapshot-count", "10"], "snapshot_count", 10),
    (["--heartbeat-interval", "50"], "heartbeat_interval_ms", 50),
    (["--election-timeout", "2000"], "election_timeout_ms", 2000),
    (
        ["--listen-peer-urls", "http://10.0.0.1:2380,http://127.0.0.1:2380"],
        "listen_peer_urls",
        ["http://10.0.0.1:2380", "http://127.0.0.1:2380"],
    ),
    (
        ["--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://h:2379"],
        "listen_client_urls",
        ["http://0.0.0.0:2379"],
    ),
    (
        ["--listen-client-http-urls", "http://127.0.0.1:8080"],
        "listen_client_http_urls",
        ["http://127.0.0.1:8080"],
    ),
    (["--listen-metrics-urls", "http://127.0.0.1:2381"], "listen_metrics_urls", ["http://127.0.0.1:2381"]),
    (
        ["--advertise-client-urls", "http://h:2379,http://g:2379"],
        "advertise_client_urls",
        ["http://h:2379", "http://g:2379"],
    ),
    (
        ["--initial-advertise-peer-urls", "http://h:2380", "--initial-cluster", "default=http://h:2380"],
        "initial_advertise_peer_urls",
        ["http://h:2380"],
    ),
    (
        ["--initial-cluster", "default=http://localhost:2380,b=http://b:2380"],
        "initial_cluster",
        "default=http://localhost:2380,b=http://b:2380",
    ),
    (["--initial-cluster-state", "existing"], "initial_cluster_state", "existing"),
    (["--initial-cluster-token", "tok"], "initial_cluster_token", "tok"),
    (["--max-request-bytes", "10485760"], "max_request_bytes", 10485760),
    (["--max-txn-ops", "1024"], "max_txn_ops", 1024),
    (["--quota-backend-bytes", "8589934592"], "quota_backend_bytes", 8589934592),
    (["--auto-compaction-mode", "revision"], "auto_compaction_mode", "revision"),
    (["--auto-compaction-retention", "1h30m"], "auto_compaction_retention", "1h30m"),
    (["--log-level", "debug"], "log_level", "debug"),
    (["--logger", "capnslog"], "logger", "capnslog"),
    (["--log-outputs", "stderr,/var/log/q.log"], "log_outputs", ["stderr", "/var/log/q.log"]),
    (["--log-format", "console"], "log_format", "console"),
    (["--cert-file", "c", "--key-file", "k"], "cert_file", "c"),
    (["--cert-file", "c", "--key-file", "k"], "key_file", "k"),
    (["--trusted-ca-file", "ca"], "trusted_ca_file", "ca"),
    (["--peer-cert-file", "c", "--peer-key-file", "k"], "peer_cert_file", "c"),
    (["--peer-cert-file", "c", "--peer-key-file", "k"], "peer_key_file", "k"),
    (["--peer-trusted-ca-file", "ca"], "peer_trusted_ca_file", "ca"),
    (["--peer-cert-file", "c", "--peer-key-file", "k", "--peer-cert-allowed-cn", "m"], "peer_cert_allowed_cn", "m"),
    (["--cert-file", "c", "--key-file", "k", "--client-crl-file", "r"], "client_crl_file", "r"),
    (["--peer-cert-file", "c", "--peer-key-file", "k", "--peer-crl-file", "r"], "peer_crl_file", "r"),
    (["--cipher-suites", "TLS_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], "cipher_suites",
     ["TLS_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
    (["--metrics", "extensive"], "metrics", "extensive"),
    (["--experimental-watch-progress-notify-interval", "10s"], "watch_progress_notify_interval_ms", 10_000),
    (["--experimental-enable-lease-checkpoint"], "experimental_enable_lease_checkpoint", True),
    (["--experimental-lease-checkpoint-interval", "2s"], "lease_checkpoint_interval_ms", 2_000),
    (["--client-cert-auth"], "client_cert_auth", True),
    (["--auto-tls"], "auto_tls", True),
    (["--peer-client-cert-auth"], "peer_client_cert_auth", True),
    (["--peer-auto-tls"], "peer_auto_tls", True),
    (["--force-new-cluster"], "force_new_cluster", True),
    (["--cluster-reset"], "cluster_reset", True),
    (["--cluster-reset", "--cluster-reset-restore-path", "/s/n.db"], "cluster_reset_restore_path", "/s/n.db"),
    (["--pre-vote=false"], "pre_vote", False),
    (["--strict-reconfig-check=false"], "strict_reconfig_check", False),
    (["--etcd-snapshot-schedule-cron", "0 */5 * * *"], "etcd_snapshot_schedule_cron", "0 */5 * * *"),
    (["--etcd-snapshot-retention", "9"], "etcd_snapshot_retention", 9),
    (["--etcd-snapshot-dir", "/snaps"], "etcd_snapshot_dir", "/snaps"),
    (["--etcd-snapshot-compress"], "etcd_snapshot_compress", True),
    (["--etcd-disable-snapshots"], "etcd_disable_snapshots", True),
    (["--etcd-snapshot-name", "nightly"], "etcd_snapshot_name", "nightly"),
    (["--etcd-s3", "--etcd-s3-bucket", "b"], "etcd_s3", True),
    (["--etcd-s3-endpoint", "127.0.0.1:9000"], "etcd_s3_endpoint", "127.0.0.1:9000"),
    (["--etcd-s3-bucket", "backups"], "etcd_s3_bucket", "backups"),
    (["--etcd-s3-folder", "k3s"], "etcd_s3_folder", "k3s"),
    (["--etcd-s3-access-key", "AK"], "etcd_s3_access_key", "AK"),
    (["--etcd-s3-secret-key", "SK"], "etcd_s3_secret_key", "SK"),
    (["--etcd-s3-region", "eu-west-1"], "etcd_s3_region", "eu-west-1"),
    (["--etcd-s3-insecure"], "etcd_s3_insecure", True),
    (["--etcd-s3-timeout", "30s"], "etcd_s3_timeout_ms", 30_000),
    (["--etcd-s3-retention", "12"], "etcd_s3_retention", 12),
    (["--cluster-init"], "cluster_init", True),
    (["--server", "https://127.0.0.1:2379", "--token", "t"], "server", "https://127.0.0.1:2379"),
    (["--token", "s3cret"], "token", "s3cret"),
    (["--token-file", "/etc/quorumkv/token"], "token_file", "/etc/quorumkv/token"),
    (["--tls-san", "kv.example.com,10.0.0.9"], "tls_san", ["kv.example.com", "10.0.0.9"]),
    (["--learner-stall-timeout", "90s"], "learner_stall_timeout_ms", 90_000),
]


def _with_equals(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


@pytest.mark.parametrize(("argv", "field", "expected"), FLAG_CASES)
def test_flag_space_form(argv: list[str], field: str, expected: Any) -> None:
    assert getattr(run(argv), field) == expected
    assert getattr(ServerConfig(), field) != expected  # the case really changes something


@pytest.mark.parametrize(("argv", "field", "expected"), FLAG_CASES)
def test_flag_equals_form(argv: list[str], field: str, expected: Any) -> None:
    assert getattr(run(_with_equals(argv)), field) == expected


def test_every_flag_has_a_case() -> None:
    covered = {field for _, field, _ in FLAG_CASES}
    refused = set(REFUSED_FIELDS)  # any non-default value is refused (tests/server/test_flag_effects.py)
    assert covered | refused == {s.field for s in FLAG_SPECS} and not covered & refused


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--client-cert-auth"], True),
        (["--client-cert-auth=true"], True),
        (["--client-cert-auth=1"], True),
        (["--client-cert-auth=false"], False),
        (["--client-cert-auth=F"], False),
        (["--client-cert-auth", "--name", "default"], True),
        ([], False),
    ],
)
def test_boolean_forms(argv: list[str], expected: bool) -> None:
    assert run(argv).client_cert_auth is expected


def test_go_single_dash_spelling() -> None:
    config = run(["-name", "n1", "-initial-cluster=n1=http://localhost:2380", "-auto-tls"])
    assert (config.name, config.auto_tls) == ("n1", True)


def test_value_that_looks_like_a_flag_is_kept() -> None:
    assert run(["--data-dir", "-name"]).data_dir == "-name"


def test_last_occurrence_wins_like_go() -> None:
    assert run(["--snapshot-count=1", "--snapshot-count=2"]).snapshot_count == 2


def test_defaults_when_no_flags() -> None:
    assert run([]) == ServerConfig()


def test_hidden_compat_flags_are_accepted() -> None:
    for compat in COMPAT_FLAGS:
        value = compat.default_text or ""
        argv = [f"--{compat.flag}={value}"]
        if compat.flag == "cors" or compat.flag == "host-whitelist":
            argv = [f"--{compat.flag}=*"]
        assert run(argv) == ServerConfig(), compat.flag


def test_env_and_flag_precedence_through_main() -> None:
    env = {"ETCD_NAME": "e", "QUORUMKV_NAME": "q", "ETCD_SNAPSHOT_COUNT": "5", "ETCD_INITIAL_CLUSTER": ""}
    assert run(["--initial-cluster=q=http://localhost:2380"], env).name == "q"
    assert run(["--initial-cluster=q=http://localhost:2380"], env).snapshot_count == 5
    assert run(["--name=f", "--initial-cluster=f=http://localhost:2380"], env).name == "f"


def test_config_file_over_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yml"
    path.write_text("name: filed\nheartbeat-interval: 20\nelection-timeout: 200\n")
    config = run([f"--config-file={path}", "--name=flagged", "--snapshot-count=3"], {"ETCD_MAX_TXN_OPS": "9"})
    assert (config.name, config.heartbeat_interval_ms, config.snapshot_count, config.max_txn_ops) == (
        "filed",
        20,
        100000,
        128,
    )
    err = capsys.readouterr().err
    assert "quorumkv: warning:" in err and "--name" in err and "ETCD_MAX_TXN_OPS" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    capture = Capture()
    assert main(["--version"], runner=capture, environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"quorumkv Version: {quorumkv.__version__}"
    assert lines[1] == f"etcd API Version: {quorumkv.ETCD_COMPAT_VERSION}"
    assert lines[2].startswith("Python Version: 3.11")
    assert capture.configs == []


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], runner=Capture(), environ={}) == 0
    out = capsys.readouterr().out
    assert "--listen-client-urls" in out and "--max-snapshots" not in out


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (
            ["--lisen-client-urls=x"],
            {},
            "quorumkv: unknown flag: --lisen-client-urls (did you mean --listen-client-urls?)",
        ),
        (["--heartbeat-intervall", "5"], {}, "did you mean --heartbeat-interval?"),
        (["--bogus"], {}, "quorumkv: unknown flag: --bogus (run 'quorumkv --help' to list flags)"),
        (["--name"], {}, "quorumkv: flag needs an argument: --name"),
        (["--heartbeat-interval=fast"], {}, 'invalid value "fast" for --heartbeat-interval'),
        (["--client-cert-auth=maybe"], {}, 'invalid value "maybe" for --client-cert-auth'),
        (["--election-timeout=100"], {}, "--election-timeout[100ms] should be at least 5 times"),
        (["--initial-cluster-state=old"], {}, "--initial-cluster-state"),
        (["--listen-peer-urls=localhost:2380"], {}, "--listen-peer-urls"),
        (["--log-level=loud"], {}, "--log-level"),
        (["--auto-compaction-retention=abc"], {}, "--auto-compaction-retention"),
        (["--experimental-watch-progress-notify-interval=10"], {}, "--experimental-watch-progress"),
        (["stray"], {}, "quorumkv: 'stray' is not a valid flag"),
        ([], {"ETCD_MAX_TXN_OPS": "lots"}, 'invalid value "lots" for ETCD_MAX_TXN_OPS'),
        ([], {"QUORUMKV_ELECTION_TIMEOUT": "99999"}, "(value from QUORUMKV_ELECTION_TIMEOUT)"),
        (["--config-file=/nonexistent.yml"], {}, "cannot read --config-file"),
    ],
)
def test_errors_are_one_line_exit_2(
    argv: list[str], env: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = Capture()
    assert main(argv, runner=capture, environ=env) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("quorumkv: ")
    assert expected in lines[0]
    assert capture.configs == []


def test_main_passes_runner_exit_code() -> None:
    assert main([], runner=lambda config: 42, environ={}) == 42


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "QUORUMKV_"))}
    env["PYTHONPATH"] = SRC
    return subprocess.run(
        [sys.executable, "-m", "quorumkv", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_subprocess_unknown_flag_has_no_traceback() -> None:
    proc = _subprocess("--bogus")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "quorumkv: unknown flag: --bogus (run 'quorumkv --help' to list flags)"


def test_removed_flag_names_the_alternative() -> None:
    proc = _subprocess("--experimental-apply-process")
    assert (proc.returncode, "Traceback" in proc.stderr) == (2, False)
    line = proc.stderr.strip()
    assert line.startswith("quorumkv: unknown flag: --experimental-apply-process (removed in quorumkv 0.2"), line
    assert "child-process mode" in line and "\n" not in line


def test_subprocess_did_you_mean_and_version() -> None:
    proc = _subprocess("--lisen-client-urls", "http://127.0.0.1:1")
    assert (proc.returncode, "Traceback" in proc.stderr) == (2, False)
    assert "did you mean --listen-client-urls?" in proc.stderr
    version = _subprocess("--version")
    assert version.returncode == 0
    assert version.stdout.startswith(f"quorumkv Version: {quorumkv.__version__}\n")


def test_docs_list_every_flag_and_env_var() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for spec in FLAG_SPECS:
        assert f"| `{spec.option}` | `{spec.field}` |" in doc, spec.flag
        assert f"`ETCD_{spec.flag.upper().replace('-', '_')}`" in doc
    for compat in COMPAT_FLAGS:
        assert f"| `{compat.option}` |" in doc, compat.flag
