"""``quorumkvctl make-mirror`` both ways with a real etcd 3.4: mirror keys, write (puts, deletes, a multi-key
txn) during the mirror, stop it, compare; the periodic count lines; etcdctl's argument errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorumkv.client import Client, delete, put
from quorumkv.testing.processes import (
    BackgroundEtcdctl,
    ServerProcess,
    run_etcdctl,
    start_etcd,
    start_etcdctl,
    start_quorumkv,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    import shutil

    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("etcd/etcdctl 3.4 not on PATH (scripts/test.sh installs them)")
    base = tmp_path_factory.mktemp("mirror")
    etcd = start_etcd(base / "etcd")
    try:
        qkv = start_quorumkv(base / "qkv")
    except BaseException:
        etcd.stop()
        raise
    try:
        yield etcd, qkv
    finally:
        qkv.stop()
        etcd.stop()


def _ep(server: ServerProcess) -> str:
    return server.client_url.removeprefix("http://")


def _dump(endpoint: str, prefix: str) -> dict[bytes, bytes]:
    with Client(endpoint) as c:
        return {kv.key: kv.value for kv in c.get_prefix(prefix).kvs}


def _wait_equal(src: str, sp: str, dst: str, dp: str, timeout: float = 30.0) -> dict[bytes, bytes]:
    want: dict[bytes, bytes] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        want = {k.replace(sp.encode(), dp.encode(), 1): v for k, v in _dump(src, sp).items()}
        if _dump(dst, dp) == want:
            return want
        time.sleep(0.1)
    assert _dump(dst, dp) == want
    return want


def _mirror(src: ServerProcess, dst: ServerProcess, *flags: str) -> BackgroundEtcdctl:
    return start_etcdctl(_ep(src), "make-mirror", *flags, _ep(dst), client="quorumkvctl",
                         env={"QUORUMKV_MIRROR_REPORT_INTERVAL": "0.3"})


def _exercise(src: ServerProcess, dst: ServerProcess, sp: str, dp: str, *flags: str) -> None:
    with Client(_ep(src)) as c:
        for i in range(30):
            c.put(f"{sp}{i:03d}", f"v{i}")
        c.put(f"outside{sp}x", "not mirrored")
    mirror = _mirror(src, dst, "--prefix", sp, *flags)
    try:
        _wait_equal(_ep(src), sp, _ep(dst), dp)
        # writes during the mirror: puts, deletes, one txn touching several keys at one revision
        with Client(_ep(src)) as c:
            for i in range(30, 40):
                c.put(f"{sp}{i:03d}", f"v{i}")
            for i in range(5):
                c.delete(f"{sp}{i:03d}")
            c.txn().then(put(f"{sp}t1", "a"), put(f"{sp}t2", "b"), delete(f"{sp}005")).commit()
            c.put(f"{sp}010", "changed")
        mirrored = _wait_equal(_ep(src), sp, _ep(dst), dp)
        assert f"{dp}010".encode() in mirrored and mirrored[f"{dp}010".encode()] == b"changed"
        assert f"{dp}000".encode() not in mirrored and len(mirrored) == 40 - 6 + 2
        expected_total = 30 + 10 + 5 + 3 + 1
        assert mirror.wait_lines(1, 10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not mirror.stdout.splitlines()[-1:] == [str(expected_total)]:
            time.sleep(0.1)
    finally:
        code = mirror.stop()
    counts = [int(line) for line in mirror.stdout.splitlines()]  # etcdctl prints bare numbers
    assert counts == sorted(counts) and counts[-1] == expected_total, (mirror.stdout, mirror.stderr)
    assert code != 0 or mirror.stderr == ""  # stopped by SIGTERM
    assert _dump(_ep(dst), f"outside{sp}") == {}


def test_mirror_from_etcd_to_quorumkv(servers: tuple[ServerProcess, ServerProcess]) -> None:
    etcd, qkv = servers
    _exercise(etcd, qkv, "/a/", "/a/")


def test_mirror_from_quorumkv_to_etcd_with_dest_prefix(servers: tuple[ServerProcess, ServerProcess]) -> None:
    etcd, qkv = servers
    _exercise(qkv, etcd, "/q/", "/b/", "--dest-prefix", "/b/")


def test_argument_errors_match_etcdctl(servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    etcd, _ = servers
    for args in (["make-mirror"], ["make-mirror", "--dest-prefix", "/x", "--no-dest-prefix", "127.0.0.1:1"]):
        theirs = run_etcdctl(_ep(etcd), *args)
        ours = run_etcdctl(_ep(etcd), *args, client="quorumkvctl")
        assert (ours.returncode, ours.stderr.strip()) == (theirs.returncode, theirs.stderr.strip())


def test_real_etcdctl_make_mirror_reads_from_quorumkv(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """The runbook's other tool: etcdctl 3.4's own make-mirror with quorumkv as the source."""
    etcd, qkv = servers
    with Client(_ep(qkv)) as c:
        for i in range(10):
            c.put(f"/e/{i}", f"v{i}")
    mirror = start_etcdctl(_ep(qkv), "make-mirror", "--prefix", "/e/", _ep(etcd))
    try:
        _wait_equal(_ep(qkv), "/e/", _ep(etcd), "/e/")
        with Client(_ep(qkv)) as c:
            c.put("/e/new", "x")
            c.delete("/e/0")
        assert len(_wait_equal(_ep(qkv), "/e/", _ep(etcd), "/e/")) == 10
    finally:
        mirror.stop()
