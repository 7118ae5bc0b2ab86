"""Process isolation: a supervised child that restarts after a crash and keeps serving while the host is busy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, get, loopback_config, port_is_free, put

from quorumkv import embed
from quorumkv.embed import EmbedError
from quorumkv.embed._process import _child_env
from quorumkv.storage.datadir import open_data_dir

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process management")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited child its new parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s}s")


def test_start_put_get_close_then_restart_on_same_dir(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The host's etcd settings must not reach the child (ETCD_CONFIG_FILE would replace every flag).
    monkeypatch.setenv("ETCD_CONFIG_FILE", str(data_dir.parent / "missing.yaml"))
    monkeypatch.setenv("QUORUMKV_NAME", "not-m1")
    config = loopback_config(data_dir)
    handle = embed.start(config, isolation="process")
    with handle:
        pid = handle.pid
        assert pid is not None and pid != os.getpid() and handle.is_running
        assert os.getpgid(pid) == pid  # its own session/process group: host signals do not reach it
        endpoint = handle.client_endpoints[0]
        put(endpoint, b"/k", b"v1")
        assert get(endpoint, b"/k") == b"v1"
        assert handle.log_path == data_dir.parent / "m1.quorumkv.log"
    assert not handle.is_running and handle.pid is None
    assert not _alive(pid)
    assert port_is_free(int(endpoint.rsplit(":", 1)[1]))
    handle.close()  # idempotent
    open_data_dir(data_dir).close()  # the lock is free

    with embed.start(config, isolation="process") as again:
        assert get(again.client_endpoints[0], b"/k") == b"v1"
    assert "serving client requests" in handle.log_path.read_text()


def test_child_environment_drops_only_setting_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_LISTEN_CLIENT_URLS", "http://1.2.3.4:1")
    monkeypatch.setenv("QUORUMKV_DATA_DIR", "/elsewhere")
    monkeypatch.setenv("QUORUMKV_SLOW", "1")
    env = _child_env()
    assert "ETCD_LISTEN_CLIENT_URLS" not in env and "QUORUMKV_DATA_DIR" not in env
    assert env["QUORUMKV_SLOW"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == SRC


def test_kill_9_child_is_restarted_and_acknowledged_writes_survive(data_dir: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "member.log"
    with embed.start(loopback_config(data_dir), isolation="process", log_path=log_path) as handle:
        endpoint = handle.client_endpoints[0]
        revision = put(endpoint, b"/acked", b"before-crash")
        assert revision > 0
        first = handle.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait_until(lambda: handle.restarts == 1, 10)
        handle.wait_ready(20)
        assert handle.pid not in (None, first)
        assert get(endpoint, b"/acked") == b"before-crash"
        put(endpoint, b"/after", b"ok")
    text = log_path.read_text()
    assert f"child pid {first} exited with code -9; restarting in 0.5s" in text
    assert "starting child #2" in text


def test_no_restart_when_disabled(data_dir: Path) -> None:
    with embed.start(loopback_config(data_dir), isolation="process", restart_on_crash=False) as handle:
        pid = handle.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not handle.is_running, 10)
        with pytest.raises(EmbedError, match="restart_on_crash=False"):
            handle.wait_ready(10)
        assert handle.restarts == 0


def test_startup_error_raises_with_the_childs_log_tail(data_dir: Path) -> None:
    held = open_data_dir(data_dir)
    try:
        with pytest.raises(EmbedError) as info:
            embed.start(loopback_config(data_dir), isolation="process", ready_timeout_s=20)
    finally:
        held.close()
    message = str(info.value)
    assert "failed to start: child pid" in message and "exited with code 1" in message
    assert "--- last lines of" in message
    assert "is in use by another quorumkv process" in message  # the child's own stderr line


_HOST_SCRIPT = """
import sys, time
from quorumkv import embed
from quorumkv.server.config import ServerConfig
url, peer, data_dir = sys.argv[1:4]
handle = embed.start(ServerConfig(name="m1", data_dir=data_dir, listen_client_urls=[url], advertise_client_urls=[url],
                                  listen_peer_urls=[peer], initial_advertise_peer_urls=[peer]), isolation="process")
print(handle.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_dies_with_a_host_that_is_killed(data_dir: Path) -> None:
    client, peer = loopback_config(data_dir).listen_client_urls[0], f"http://127.0.0.1:{free_port()}"
    host = subprocess.Popen(
        [sys.executable, "-c", _HOST_SCRIPT, client, peer, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert host.stdout is not None
        child_pid = int(host.stdout.readline())
        assert _alive(child_pid)
        host.kill()  # SIGKILL: no atexit, no close(); only the kernel can tell the child
        host.wait()
        _wait_until(lambda: not _alive(child_pid), 10)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
    open_data_dir(data_dir).close()  # the child released the lock


def test_busy_port_is_refused_rather_than_mistaken_for_the_child(tmp_path: Path) -> None:
    with embed.start(loopback_config(tmp_path / "a")) as other:
        port = int(other.client_endpoints[0].rsplit(":", 1)[1])
        with pytest.raises(EmbedError, match="already accept connections"):
            embed.start(loopback_config(tmp_path / "b", client_port=port), isolation="process")


def test_child_keeps_serving_while_the_host_hogs_the_gil(data_dir: Path) -> None:
    """A client in a third process keeps getting puts acknowledged while this process spins holding the GIL.

    Progress only (count > 0): latency thresholds belong in benchmarks.
    """
    with embed.start(loopback_config(data_dir), isolation="process") as handle:
        client = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("put_client.py")), handle.client_endpoints[0], "3.0"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "started"
            old_interval = sys.getswitchinterval()
            sys.setswitchinterval(1.0)  # other host threads get the GIL at most once a second
            try:
                spin_start = time.monotonic()
                spins = 0
                while time.monotonic() - spin_start < 2.0:
                    spins += 1
                spin_end = time.monotonic()
            finally:
                sys.setswitchinterval(old_interval)
            out, _ = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        report = json.loads(out.strip().splitlines()[-1])
        during = [(t0, t1) for t0, t1 in report["puts"] if spin_start <= t0 and t1 <= spin_end]
        max_latency_ms = max((t1 - t0 for t0, t1 in report["puts"]), default=0.0) * 1000
        print(f"puts during the 2 s spin: {len(during)}; max put latency {max_latency_ms:.1f} ms; spins {spins}")
        assert report["errors"] == 0
        assert len(during) > 0
