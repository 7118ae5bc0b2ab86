"""Every flag works or is refused (issue 22, item 4).

:data:`EFFECTS` maps each flag of ``quorumkv.server.config_sources`` to the test that shows its effect; a flag
quorumkv does not implement is refused at start-up with one line naming it and the alternative
(:data:`REFUSED_AT_START`, plus ``COMPAT_FLAGS`` with ``refuse=True`` and ``config.REFUSED_FIELDS``); the etcd
3.4 tuning flags that have nothing to tune in quorumkv are accepted with a warning (:data:`IGNORED`, each with
its reason). ``test_every_flag_is_tested_refused_or_ignored`` walks the flag table and fails on a flag that is in
none of these, or on a registry entry whose test does not exist.

The effect tests for flags no other module exercises live here: request limits, metrics, the HTTP listeners and
progress notifications in one real member; the logging flags; ``--strict-reconfig-check`` against etcd 3.4.
``--pre-vote`` and ``hasleader`` need three members: ``tests/server/test_cluster_flags.py``.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from quorumkv.app import setup_logging
from quorumkv.cli.server import main
from quorumkv.server.config import REFUSED_FIELDS, ConfigError, ServerConfig, flag_for_field
from quorumkv.server.config_sources import COMPAT_FLAGS, FLAG_SPECS, load_config
from quorumkv.testing.processes import (
    ETCD_BIN,
    ETCDCTL_BIN,
    free_port,
    quorumkv_env,
    run_etcdctl,
    start_etcd,
    start_quorumkv,
)

REPO = Path(__file__).resolve().parents[2]
HERE = "tests/server/test_flag_effects.py"
CLUSTER = "tests/server/test_cluster_flags.py"
SNAP = "tests/backup/test_snapshot_flags.py"
TLS = "tests/security/test_tls_cluster.py"
PROCS = "tests/server/test_cluster_processes.py"

#: flag -> the test (``path::function``) that shows what the flag does.
EFFECTS: dict[str, str] = {
    "name": f"{PROCS}::test_member_add_learner_promote_remove_with_etcdctl",
    "data-dir": "tests/server/test_crash_durability.py::test_kill9_under_load_keeps_every_acknowledged_write",
    "snapshot-count": "tests/server/test_cluster_faults.py::test_follower_blackholed_until_it_needs_a_snapshot",
    "heartbeat-interval": "tests/server/test_cluster_faults.py::test_partitioned_leader_is_replaced_and_nothing_"
                          "acknowledged_is_lost",
    "election-timeout": f"{CLUSTER}::test_pre_vote_hasleader_and_reconfig_with_members_down",
    "listen-peer-urls": f"{PROCS}::test_member_add_learner_promote_remove_with_etcdctl",
    "listen-client-urls": "tests/cli/test_readme_commands.py::test_run_script_starts_a_node_etcdctl_can_use",
    "listen-client-http-urls": f"{HERE}::test_limits_metrics_http_and_progress_flags_in_a_real_member",
    "listen-metrics-urls": f"{HERE}::test_limits_metrics_http_and_progress_flags_in_a_real_member",
    "quota-backend-bytes": "tests/server/test_maintenance.py::test_nospace_lifecycle_end_to_end_with_etcdctl",
    "max-txn-ops": f"{HERE}::test_limits_metrics_http_and_progress_flags_in_a_real_member",
    "max-request-bytes": f"{HERE}::test_limits_metrics_http_and_progress_flags_in_a_real_member",
    "initial-advertise-peer-urls": f"{PROCS}::test_member_add_learner_promote_remove_with_etcdctl",
    "initial-cluster": f"{PROCS}::test_etcdctl_cluster_commands_on_quorumkv_as_on_etcd",
    "initial-cluster-state": f"{PROCS}::test_member_add_learner_promote_remove_with_etcdctl",
    "initial-cluster-token": f"{PROCS}::test_member_of_another_cluster_is_refused_with_both_ids",
    "advertise-client-urls": f"{PROCS}::test_etcdctl_cluster_commands_on_quorumkv_as_on_etcd",
    "strict-reconfig-check": f"{HERE}::test_strict_reconfig_check_refuses_as_etcd_does",
    "pre-vote": f"{CLUSTER}::test_pre_vote_hasleader_and_reconfig_with_members_down",
    "auto-compaction-retention": "tests/server/test_maintenance.py::test_auto_compaction_runs_through_the_log",
    "auto-compaction-mode": "tests/server/test_maintenance.py::test_auto_compaction_runs_through_the_log",
    "auth-token": "tests/server/test_auth_tokens.py::test_auth_token_values",
    "bcrypt-cost": "tests/server/test_auth_client.py::test_passwords_longer_than_bcrypts_72_bytes_work_as_on_etcd",
    "auth-token-ttl": "tests/server/test_auth_tokens.py::test_simple_tokens_expire_renew_on_use_and_drop_per_user",
    "cert-file": "tests/client/test_tls_auth.py::test_mutual_tls",
    "key-file": "tests/client/test_tls_auth.py::test_mutual_tls",
    "client-cert-auth": "tests/interop/test_auth_cert_cn.py::test_the_client_certificate_common_name_is_the_user",
    "trusted-ca-file": "tests/client/test_tls_auth.py::test_mutual_tls",
    "auto-tls": f"{TLS}::test_auto_tls_serves_a_self_signed_certificate",
    "peer-cert-file": f"{TLS}::test_three_members_with_client_and_peer_mtls",
    "peer-key-file": f"{TLS}::test_three_members_with_client_and_peer_mtls",
    "peer-client-cert-auth": f"{TLS}::test_three_members_with_client_and_peer_mtls",
    "peer-trusted-ca-file": f"{TLS}::test_three_members_with_client_and_peer_mtls",
    "peer-cert-allowed-cn": "tests/transport/test_peer_tls.py::test_refused_cn_is_logged_by_the_refusing_member",
    "client-crl-file": f"{TLS}::test_revoked_client_certificate_is_refused",
    "peer-crl-file": "tests/transport/test_peer_tls.py::test_revoked_peer_is_refused_only_with_peer_crl_file",
    "cipher-suites": f"{TLS}::test_cipher_suites_limit_tls12",
    "metrics": f"{HERE}::test_limits_metrics_http_and_progress_flags_in_a_real_member",
    "logger": f"{HERE}::test_logger_capnslog_writes_capnslog_lines",
    "log-outputs": f"{HERE}::test_log_outputs_file_and_stdout_from_the_command_line",
    "log-level": f"{HERE}::test_log_level_and_format_shape_the_lines",
    "log-format": f"{HERE}::test_log_level_and_format_shape_the_lines",
    "experimental-watch-progress-notify-interval":
        f"{HERE}::test_limits_metrics_http_and_progress_flags_in_a_real_member",
    "etcd-snapshot-schedule-cron": f"{SNAP}::test_local_snapshot_flags_at_work_in_a_real_member",
    "etcd-snapshot-retention": f"{SNAP}::test_local_snapshot_flags_at_work_in_a_real_member",
    "etcd-snapshot-dir": f"{SNAP}::test_local_snapshot_flags_at_work_in_a_real_member",
    "etcd-snapshot-compress": f"{SNAP}::test_local_snapshot_flags_at_work_in_a_real_member",
    "etcd-disable-snapshots": f"{SNAP}::test_local_snapshot_flags_at_work_in_a_real_member",
    "etcd-snapshot-name": f"{SNAP}::test_local_snapshot_flags_at_work_in_a_real_member",
    "etcd-s3": "tests/backup/test_s3.py::test_scheduled_upload_with_separate_s3_retention",
    "etcd-s3-endpoint": "tests/backup/test_s3.py::test_scheduled_upload_with_separate_s3_retention",
    "etcd-s3-bucket": "tests/backup/test_s3.py::test_scheduled_upload_with_separate_s3_retention",
    "etcd-s3-folder": "tests/backup/test_s3.py::test_scheduled_upload_with_separate_s3_retention",
    "etcd-s3-access-key": "tests/backup/test_s3.py::test_scheduled_upload_with_separate_s3_retention",
    "etcd-s3-secret-key": "tests/backup/test_s3.py::test_scheduled_upload_with_separate_s3_retention",
    "etcd-s3-region": f"{SNAP}::test_s3_flags_shape_the_client",
    "etcd-s3-insecure": f"{SNAP}::test_s3_flags_shape_the_client",
    "etcd-s3-timeout": f"{SNAP}::test_s3_flags_shape_the_client",
    "etcd-s3-retention": "tests/backup/test_s3.py::test_scheduled_upload_with_separate_s3_retention",
}

#: Flags whose effect is shown by a test elsewhere (added with the work that made them real).
JOIN = "tests/server/test_cluster_join.py::"
RESET = "tests/server/test_cluster_reset.py::"
CONVERSION = JOIN + "test_single_member_becomes_a_cluster_keeping_history_and_a_stalled_learner_is_evicted"
EFFECTS.update({
    "force-new-cluster":
        "tests/server/test_reset_unit.py::test_force_new_cluster_resets_on_every_start_without_a_guard",
    "cluster-reset": RESET + "test_cluster_reset_after_quorum_loss",
    "cluster-reset-restore-path": RESET + "test_cluster_reset_restore_path",
    "experimental-enable-lease-checkpoint":
        "tests/lease/test_lease_checkpoint_processes.py::test_cluster_leader_kill9_keeps_the_remaining_ttl",
    "experimental-lease-checkpoint-interval":
        "tests/lease/test_lease_checkpoint_processes.py::test_cluster_leader_kill9_keeps_the_remaining_ttl",
    "cluster-init": CONVERSION,
    "server": CONVERSION,
    "token": CONVERSION,
    "token-file": JOIN + "test_init_two_joins_through_different_members_and_follower_join_reconnect",
    "tls-san": JOIN + "test_init_two_joins_through_different_members_and_follower_join_reconnect",
    "learner-stall-timeout": CONVERSION,
})

#: Flags made real by work in progress (flag -> the test file that will show the effect); none today.
PENDING: dict[str, str] = {}

#: Refused at start-up by a check outside ServerConfig (cli/server.py), with the reason in the line.
REFUSED_AT_START = {"peer-auto-tls": "--peer-auto-tls is not supported"}

#: etcd 3.4 flags accepted with a warning that the value is ignored: what each would tune does not exist in
#: quorumkv (or is not configurable in grpcio), and ignoring it changes no answer a client sees.
IGNORED: dict[str, str] = {
    "experimental-enable-lease-checkpoint-persist": "checkpoints always survive a restart (etcd 3.4.23 kept them "
                                                    "without it too, observed)",
    "initial-election-tick-advance": "quorumkv's first election timer is not fast-forwarded either way",
    "max-snapshots": "quorumkv keeps no .snap files (the state lives in SQLite)",
    "max-wals": "quorumkv keeps no WAL segment files (the log lives in SQLite)",
    "backend-batch-interval": "SQLite commits per apply batch, not on a timer",
    "backend-batch-limit": "SQLite commits per apply batch, not by count",
    "max-concurrent-streams": "quorumkv's gRPC servers allow unlimited streams, etcd's default",
    "grpc-keepalive-min-time": "grpcio keeps its own keepalive policy (5 s minimum ping interval, as etcd's default)",
    "grpc-keepalive-interval": "grpcio keepalive pings are not configurable per server here",
    "grpc-keepalive-timeout": "grpcio keepalive pings are not configurable per server here",
    "discovery-fallback": "discovery itself is refused; the fallback has nothing to fall back from",
    "enable-grpc-gateway": "the gateway is served on --listen-client-http-urls only when that is set",
    "proxy-failure-wait": "proxy mode is refused; its timings have nothing to time",
    "proxy-refresh-interval": "proxy mode is refused; its timings have nothing to time",
    "proxy-dial-timeout": "proxy mode is refused; its timings have nothing to time",
    "proxy-write-timeout": "proxy mode is refused; its timings have nothing to time",
    "proxy-read-timeout": "proxy mode is refused; its timings have nothing to time",
    "debug": "use --log-level=debug",
    "log-package-levels": "quorumkv has one level for all packages: --log-level",
    "experimental-initial-corrupt-check": "K3s sets it; quorumkv has no start-up hash comparison (yet)",
    "experimental-backend-bbolt-freelist-type": "there is no bbolt freelist in SQLite",
    "experimental-compaction-batch-limit": "compaction deletes in one SQLite transaction",
    "experimental-peer-skip-client-san-verification": "peer certificates are verified as configured; the SAN "
                                                      "check is not skipped",
    "experimental-warning-apply-duration": "the slow-apply warning threshold is etcd's 100 ms",
}

_FUNCS_BY_FILE: dict[str, set[str]] = {}


def _functions(path: str) -> set[str]:
    if path not in _FUNCS_BY_FILE:
        tree = ast.parse((REPO / path).read_text())
        _FUNCS_BY_FILE[path] = {n.name for n in ast.walk(tree)
                                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return _FUNCS_BY_FILE[path]


def _refused_compat() -> set[str]:
    return {c.flag for c in COMPAT_FLAGS if c.refuse}


def _refused_fields() -> set[str]:
    return {flag_for_field(f)[2:] for f in REFUSED_FIELDS}


def test_every_flag_is_tested_refused_or_ignored() -> None:
    table = {s.flag for s in FLAG_SPECS} | {c.flag for c in COMPAT_FLAGS}
    refused = _refused_compat() | _refused_fields() | set(REFUSED_AT_START)
    ignored = {c.flag for c in COMPAT_FLAGS if not c.refuse}
    accounted = set(EFFECTS) | refused | set(IGNORED) | set(PENDING)
    assert sorted(table - accounted) == [], "flags with neither a test of their effect nor a refusal"
    assert sorted(ignored - set(IGNORED) - set(PENDING)) == [], "ignored flags need a reason in IGNORED"
    assert sorted(set(IGNORED) - ignored) == [], "IGNORED names a flag that is not accepted-and-ignored"
    assert sorted(set(EFFECTS) - table) == [], "EFFECTS names a flag that is not in the table"
    assert not set(EFFECTS) & refused, "a flag cannot both work and be refused"
    for flag, test_id in EFFECTS.items():
        path, _, func = test_id.partition("::")
        assert (REPO / path).is_file(), f"{flag}: {path} does not exist"
        assert func in _functions(path), f"{flag}: no test {func} in {path}"


@pytest.mark.parametrize("flag", sorted(_refused_compat() | _refused_fields()))
def test_refused_flags_get_one_line_naming_the_flag(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    is_bool = flag in {"enable-pprof"} or any(c.flag == flag and c.is_bool for c in COMPAT_FLAGS)
    value = "true" if is_bool else "/somewhere"
    with pytest.raises(ConfigError) as info:
        load_config({flag: value}, {})
    assert f"--{flag}" in info.value.message and "\n" not in info.value.message
    assert main([f"--{flag}={value}"], runner=lambda _c: 0, environ={}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quorumkv: ") and f"--{flag}" in err[0]


def test_wal_dir_and_pprof_refusals_name_the_alternative() -> None:
    with pytest.raises(ConfigError, match=r"--wal-dir is not supported.*--data-dir"):
        ServerConfig(wal_dir="/fast/wal")
    with pytest.raises(ConfigError, match=r"--enable-pprof is not supported.*py-spy"):
        ServerConfig(enable_pprof=True)
    assert ServerConfig(wal_dir="", enable_pprof=False).wal_dir == ""  # the defaults stay accepted


def test_a_refused_flag_stops_the_real_command_before_it_listens(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "quorumkv", "--data-dir", str(tmp_path / "d"),
                           "--wal-dir", str(tmp_path / "w")], capture_output=True, text=True, timeout=60,
                          env=quorumkv_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quorumkv: --wal-dir is not supported"), proc.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag", sorted(REFUSED_AT_START))
def test_flags_refused_at_start(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"--{flag}"], environ={}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and REFUSED_AT_START[flag] in err[0]


@pytest.mark.parametrize("flag", sorted(IGNORED))
def test_ignored_flags_say_so(flag: str) -> None:
    compat = next(c for c in COMPAT_FLAGS if c.flag == flag)
    value = ("false" if compat.default_text == "true" else "true") if compat.is_bool else "7"
    loaded = load_config({flag: value}, {})
    assert any(f"--{flag}" in w and "ignored" in w for w in loaded.warnings), loaded.warnings


# ------------------------------------------------------------------------------------------------ logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_level_and_format_shape_the_lines(tmp_path: Path, restore_logging: None) -> None:
    out = tmp_path / "q.log"
    setup_logging("warn", "console", [str(out)])
    log = logging.getLogger("quorumkv.test")
    log.info("an info line")
    log.warning("a warning line", extra={"k": 1})
    lines = out.read_text().splitlines()
    assert len(lines) == 1, lines  # --log-level=warn drops the info line
    fields = lines[0].split("\t")
    assert fields[1] == "WARN" and fields[3] == "a warning line" and json.loads(fields[4]) == {"k": 1}
    setup_logging("debug", "json", [str(out)])
    log.debug("a debug line")
    last = json.loads(out.read_text().splitlines()[-1])  # appended, as zap opens a file
    assert (last["level"], last["msg"]) == ("debug", "a debug line")


def test_logger_capnslog_writes_capnslog_lines(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    setup_logging("info", "json", ["stdout"], logger="capnslog")
    logging.getLogger("quorumkv.server").info("published member attributes")
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} I \| quorumkv\.server: published member attributes",
                        out[-1]), out
    # etcd 3.4's rules for its old logger: one output, and no files
    with pytest.raises(ConfigError, match="supports only 1 value"):
        ServerConfig(logger="capnslog", log_outputs=["stderr", "stdout"])
    with pytest.raises(ConfigError, match='unknown log-output "/var/log/x"'):
        ServerConfig(logger="capnslog", log_outputs=["/var/log/x"])


def test_log_outputs_file_and_stdout_from_the_command_line(tmp_path: Path) -> None:
    log_file = tmp_path / "member.log"
    server = start_quorumkv(tmp_path / "q", extra_args=["--log-outputs", f"{log_file},stdout"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "serving client requests" not in _text(log_file):
            time.sleep(0.2)
        in_file = [json.loads(line) for line in _text(log_file).splitlines()]
        assert any(r["msg"] == "serving client requests" for r in in_file)
        assert "serving client requests" in server.log_tail(400)  # stdout goes to the captured log too
    finally:
        server.stop()
    bad = subprocess.run([sys.executable, "-m", "quorumkv", "--data-dir", str(tmp_path / "d2"),
                          "--log-outputs", str(tmp_path / "missing" / "x.log")],
                         capture_output=True, text=True, timeout=60, env=quorumkv_env())
    assert bad.returncode == 1 and "cannot open --log-outputs file" in bad.stderr, bad.stderr


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# ------------------------------------------------------------------------------- one member, several flags


def test_limits_metrics_http_and_progress_flags_in_a_real_member(tmp_path: Path) -> None:
    metrics_port, http_port = free_port(), free_port()
    server = start_quorumkv(tmp_path / "q", extra_args=[
        "--max-txn-ops", "2", "--max-request-bytes", "4096", "--metrics", "extensive",
        "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}",
        "--listen-client-http-urls", f"http://127.0.0.1:{http_port}",
        "--experimental-watch-progress-notify-interval", "500ms",
    ])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.client_port}") as channel:
            kv = pb_grpc.KVStub(channel)

            def txn(n: int) -> pb.TxnResponse:
                ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"k%d" % i, value=b"v")) for i in range(n)]
                return kv.Txn(pb.TxnRequest(success=ops), timeout=20)

            assert txn(2).succeeded  # --max-txn-ops=2
            with pytest.raises(grpc.RpcError) as info:
                txn(3)
            assert info.value.details() == "etcdserver: too many operations in txn request"
            kv.Put(pb.PutRequest(key=b"small", value=b"x" * 1000), timeout=20)  # --max-request-bytes=4096
            with pytest.raises(grpc.RpcError) as info:
                kv.Put(pb.PutRequest(key=b"big", value=b"x" * 5000), timeout=20)
            assert info.value.details() == "etcdserver: request is too large"

            # --experimental-watch-progress-notify-interval=500ms: a quiet progress_notify watch hears progress
            watch = pb_grpc.WatchStub(channel)
            create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"quiet", progress_notify=True))
            stream = watch.Watch(iter([create]), timeout=30)
            assert next(stream).created
            started = time.monotonic()
            progress = next(stream)  # bounded by the call's timeout
            assert not progress.events and progress.header.revision >= 1
            assert time.monotonic() - started < 25  # the default (10m) would hit the call timeout instead
            stream.cancel()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=20).read().decode()
        assert "grpc_server_handling_seconds_bucket" in metrics  # --metrics=extensive
        version = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/version", timeout=20).read())
        assert version["etcdserver"] == "3.4.34"  # --listen-client-http-urls serves the HTTP side
    finally:
        server.stop()


# --------------------------------------------------------------------------------- --strict-reconfig-check

_needs_etcd = pytest.mark.skipif(shutil.which(ETCD_BIN) is None or shutil.which(ETCDCTL_BIN) is None,
                                 reason="etcd/etcdctl 3.4 not on PATH")


def etcdctl_answer(proc: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """(exit code, the gRPC code etcdctl's retry warning names or "", the last line of stderr)."""
    code = re.search(r"code = (\w+) desc", proc.stderr)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, code.group(1) if code else "", lines[-1] if lines else ""


def _add_two_unstarted_members(endpoint: str) -> tuple[subprocess.CompletedProcess[str],
                                                        subprocess.CompletedProcess[str]]:
    first = run_etcdctl(endpoint, "--command-timeout=20s", "member", "add", "b",
                        f"--peer-urls=http://127.0.0.1:{free_port()}", timeout_s=60)
    second = run_etcdctl(endpoint, "--command-timeout=3s", "member", "add", "c",
                         f"--peer-urls=http://127.0.0.1:{free_port()}", timeout_s=60)
    return first, second


@_needs_etcd
@pytest.mark.interop
def test_strict_reconfig_check_refuses_as_etcd_does(tmp_path: Path) -> None:
    """A member that never started counts against the quorum: with one started member of two, adding a third
    voter is refused before anything is proposed (etcd's ErrNotEnoughStartedMembers, FailedPrecondition)."""
    answers = {}
    for kind, start, extra in (("etcd", start_etcd, []), ("quorumkv", start_quorumkv, []),
                               ("lax", start_quorumkv, ["--strict-reconfig-check=false"])):
        server = start(tmp_path / kind, extra_args=extra)
        try:
            first, second = _add_two_unstarted_members(server.client_url)
            assert first.returncode == 0, (kind, first.stderr)
            answers[kind] = etcdctl_answer(second)
        finally:
            server.stop()
    expected = "Error: etcdserver: re-configuration failed due to not enough started members"
    assert answers["etcd"] == (1, "Unknown", expected)  # etcd 3.4 does not map this error to a gRPC code
    assert answers["quorumkv"] == answers["etcd"]
    # without the check the change is proposed, and a cluster of one started member in three cannot commit it
    assert answers["lax"][0] != 0 and "not enough started members" not in answers["lax"][2], answers["lax"]
