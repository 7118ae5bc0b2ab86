"""The committed *_pb2 stubs must match what scripts/gen_protos.py would generate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_protos.py"
API = Path("src") / "quorumkv" / "api"


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_stubs_are_current() -> None:
    result = run_check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def copy_api_tree(dst_root: Path) -> Path:
    dst_api = dst_root / API
    shutil.copytree(ROOT / API, dst_api, ignore=shutil.ignore_patterns("__pycache__"))
    return dst_api


def test_check_fails_when_a_proto_changes(tmp_path: Path) -> None:
    api = copy_api_tree(tmp_path)
    assert run_check(tmp_path).returncode == 0  # the unmodified copy passes

    kv = api / "mvccpb" / "kv.proto"
    text = kv.read_text()
    marker = "  int64 lease = 6;\n"
    assert marker in text
    kv.write_text(text.replace(marker, marker + "  int64 extra_field_for_test = 7;\n"))

    result = run_check(tmp_path)
    assert result.returncode != 0
    assert "kv_pb2.py" in result.stderr
    assert "run python scripts/gen_protos.py" in result.stderr


def test_check_fails_when_a_stub_is_missing(tmp_path: Path) -> None:
    api = copy_api_tree(tmp_path)
    (api / "etcdserverpb" / "rpc_pb2_grpc.py").unlink()
    result = run_check(tmp_path)
    assert result.returncode != 0
    assert "missing" in result.stderr and "rpc_pb2_grpc.py" in result.stderr
