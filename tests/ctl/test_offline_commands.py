"""quorumkvctl's commands that need no server: ``defrag --data-dir`` (a stopped member's data dir, rewritten
through ``storage/offline.py``), ``migrate`` (etcdctl 3.4's answer for a data dir without v2 keys) and
``completion bash|zsh|fish`` (click's scripts, exercised through bash itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from quorumkv.client import Client
from quorumkv.storage.datadir import DB_FILE, open_data_dir
from quorumkv.testing.processes import start_etcd, start_quorumkv

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def ctl(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """quorumkvctl run in this process (a subprocess costs seconds of imports on a busy machine)."""
    from quorumkv.cli.ctl.app import main

    for name in list(os.environ):
        if name.startswith(("ETCDCTL", "ETCD_", "_QUORUMKVCTL")):
            monkeypatch.delenv(name)

    def run(*args: str) -> Ran:
        capfd.readouterr()
        code = main(list(args))
        out = capfd.readouterr()
        return Ran(code, out.out, out.err)

    return run


def db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.iterdir() if p.name.startswith(DB_FILE))


def everything(client: Client) -> list[tuple[bytes, bytes, int, int]]:
    return [(kv.key, kv.value, kv.mod_revision, kv.version) for kv in client.get_range(b"\x00", b"\x00").kvs]


# ---------------------------------------------------------------------------------------------- defrag --data-dir


def test_offline_defrag_shrinks_and_the_member_restarts_with_the_same_data(tmp_path: Path,
                                                                          ctl: Callable[..., Ran]) -> None:
    server = start_quorumkv(tmp_path)
    data_dir = server.data_dir
    try:
        with Client([server.client_url]) as client:
            for i in range(150):
                client.put(f"big/{i % 5}", os.urandom(8192))
            for i in range(50):
                client.put(f"keep/{i}", f"value {i}")
            rev = client.put("last", "x").header.revision
            client.compact(rev, physical=True)
            hash_before = client.hash_kv().hash
            kvs_before = everything(client)
        running = ctl("defrag", "--data-dir", str(data_dir))  # the member holds the lock: refused, untouched
        assert running.returncode == 1 and running.stdout == ""
        assert running.stderr == (f"Failed to defragment etcd data[{data_dir}] (data dir {data_dir} is in use by a "
                                  f"running member (lock {data_dir}/LOCK is held); stop the member first, or "
                                  "defragment it online with quorumkvctl defrag)\n")
    finally:
        server.kill9()  # no clean shutdown: committed frames stay in the WAL, and must be in the rewritten file
    size_before = db_bytes(data_dir)
    out = ctl("defrag", "--data-dir", str(data_dir))
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")  # etcdctl 3.4 prints nothing either
    size_after = db_bytes(data_dir)
    assert size_after < size_before / 2, (size_before, size_after)  # 150 values of 8 KiB were compacted away
    assert sorted(p.name for p in data_dir.iterdir()) == ["FORMAT", "LOCK", DB_FILE]
    restarted = start_quorumkv(tmp_path, data_dir=data_dir)
    try:
        with Client([restarted.client_url]) as client:
            assert client.hash_kv().hash == hash_before
            assert everything(client) == kvs_before
            assert client.put("after", "y").header.revision == rev + 1
    finally:
        restarted.stop()


def test_offline_defrag_refuses_what_is_not_a_stopped_quorumkv_data_dir(tmp_path: Path,
                                                                        ctl: Callable[..., Ran]) -> None:
    missing = tmp_path / "missing"
    out = ctl("defrag", "--data-dir", str(missing))
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"Failed to defragment etcd data[{missing}] (open {missing}: no such file or directory)\n"
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("hello")
    out = ctl("defrag", "--data-dir", str(stranger))
    assert out.returncode == 1 and "is not a quorumkv data dir (no FORMAT marker)" in out.stderr
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]  # nothing created or locked there


@pytest.mark.interop
def test_offline_defrag_and_migrate_name_an_etcd_data_dir(tmp_path: Path, ctl: Callable[..., Ran]) -> None:
    etcd = start_etcd(tmp_path)
    etcd.stop()
    out = ctl("defrag", "--data-dir", str(etcd.data_dir))
    assert out.returncode == 1 and "is an etcd data dir (member/snap/db), not a quorumkv one" in out.stderr
    out = ctl("migrate", "--data-dir", str(etcd.data_dir))
    assert out.returncode == 1 and out.stdout == "using default transformer\n"
    assert out.stderr == (f"Error: {etcd.data_dir} is an etcd data dir: migrate its v2 keys with etcdctl 3.4, then "
                          "snapshot save / quorumkvctl snapshot restore the result\n")


# ---------------------------------------------------------------------------------------------- migrate


def test_migrate_a_quorumkv_data_dir_has_no_v2_keys(tmp_path: Path, ctl: Callable[..., Ran]) -> None:
    open_data_dir(tmp_path / "member").close()
    # etcdctl 3.4 on a data dir without v2 keys: these two lines, exit 0 (its member-replay log lines aside)
    out = ctl("migrate", "--data-dir", str(tmp_path / "member"))
    assert (out.returncode, out.stdout, out.stderr) == (0, "using default transformer\nno v2 keys to migrate\n", "")
    out = ctl("migrate", "--data-dir", str(tmp_path / "member"), "--no-ttl", "--transformer", "/bin/false")
    assert (out.returncode, out.stdout, out.stderr) == (0, "no v2 keys to migrate\n", "")
    out = ctl("migrate", "--data-dir", str(tmp_path / "member"), "--wal-dir", str(tmp_path))
    assert out.returncode == 1 and "--wal-dir: a quorumkv member keeps its log inside its data dir" in out.stderr
    out = ctl("migrate", "--data-dir", str(tmp_path / "nothing"))
    assert out.returncode == 1 and out.stdout == "using default transformer\n"
    assert out.stderr.startswith(f"Error: open {tmp_path / 'nothing'}/FORMAT: no such file or directory")


# ---------------------------------------------------------------------------------------------- completion


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_script_completes_commands_and_flags(tmp_path: Path, ctl: Callable[..., Ran]) -> None:
    script = ctl("completion", "bash")
    assert script.returncode == 0 and script.stderr == ""
    assert "complete -o nosort -F _quorumkvctl_completion quorumkvctl" in script.stdout
    (tmp_path / "quorumkvctl.bash").write_text(script.stdout)
    # the script calls `quorumkvctl` back: a stand-in on PATH runs this checkout's module
    shim = tmp_path / "bin" / "quorumkvctl"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={SRC} exec {sys.executable} -m quorumkv.cli.ctl "$@"\n')
    shim.chmod(0o755)

    def complete(*words: str) -> list[str]:
        body = (f"source {tmp_path / 'quorumkvctl.bash'}\nCOMP_WORDS=(quorumkvctl {' '.join(words)})\n"
                f"COMP_CWORD={len(words)}\n_quorumkvctl_completion quorumkvctl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("_QUORUMKVCTL")}
        env["PATH"] = f"{shim.parent}{os.pathsep}{env.get('PATH', '')}"
        done = subprocess.run(["bash", "--norc", "--noprofile", "-c", body], capture_output=True, text=True,
                              timeout=60, env=env, check=False)
        assert done.returncode == 0, done
        return [line for line in done.stdout.splitlines() if line]

    assert complete("che") == ["check"]
    assert complete("check", "datascale", "--lo") == ["--load"]
    assert complete("nosuch", "") == []  # no usage text offered as completions


def test_zsh_fish_and_powershell_scripts(ctl: Callable[..., Ran]) -> None:
    zsh = ctl("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef quorumkvctl\n")
    fish = ctl("completion", "fish")
    assert fish.returncode == 0 and "_QUORUMKVCTL_COMPLETE=fish_complete" in fish.stdout
    ps = ctl("completion", "powershell")
    if ps.returncode == 0:  # click >= 8.2
        assert ps.stdout.startswith("Register-ArgumentCompleter -Native -CommandName quorumkvctl")
    else:
        assert (ps.returncode, ps.stdout) == (4, "")
        assert ps.stderr == "Error: completion for powershell is not available in quorumkvctl (bash, fish, zsh)\n"
    bare = ctl("completion")  # as etcdctl: the group's usage, listing the shells
    assert bare.returncode == 0 and "\tbash\t\tGenerate the autocompletion script for bash\n" in bare.stdout
