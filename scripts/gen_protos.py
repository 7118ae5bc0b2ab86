#!/usr/bin/env python3
"""Regenerate (or check) the Python stubs for quorumkv's .proto files.

Every ``*.proto`` under ``src/quorumkv/api`` is compiled with ``grpc_tools.protoc`` using ``-I src``,
producing ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` next to the proto: etcd's client API
(``etcdserverpb``, ``mvccpb``, ``authpb``) and quorumkv's own member-to-member protocol (``quorumkvpb/peer.proto``).

    python scripts/gen_protos.py            # rewrite the committed stubs
    python scripts/gen_protos.py --check    # exit 1 if the committed stubs are stale or missing
    python scripts/gen_protos.py --root DIR # operate on another checkout (used by the tests)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
API_DIR = Path("quorumkv") / "api"
FIX_HINT = "run python scripts/gen_protos.py"


def find_protos(src: Path) -> list[Path]:
    """All .proto files below src/quorumkv/api, relative to ``src``, sorted."""
    return sorted(p.relative_to(src) for p in (src / API_DIR).rglob("*.proto"))


def expected_outputs(protos: Sequence[Path]) -> list[Path]:
    """Generated file paths (relative to ``src``) for the given protos."""
    outs: list[Path] = []
    for proto in protos:
        stem = proto.with_suffix("")
        outs.extend(stem.parent / (stem.name + suffix) for suffix in GENERATED_SUFFIXES)
    return outs


def generate(src: Path, protos: Sequence[Path], out_dir: Path) -> None:
    """Run protoc for ``protos`` (relative to ``src``), writing into ``out_dir``."""
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos),
    ]
    # protoc resolves the file arguments relative to the include path, so run from src.
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def stale_outputs(src: Path, protos: Sequence[Path]) -> list[Path]:
    """Generated-looking files in the tree whose .proto no longer exists."""
    wanted = set(expected_outputs(protos))
    stale: list[Path] = []
    for suffix in GENERATED_SUFFIXES:
        for path in (src / API_DIR).rglob("*" + suffix):
            rel = path.relative_to(src)
            if rel not in wanted:
                stale.append(rel)
    return sorted(stale)


def check(src: Path, protos: Sequence[Path]) -> int:
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="quorumkv-protos-") as tmp:
        out = Path(tmp)
        generate(src, protos, out)
        for rel in expected_outputs(protos):
            fresh = out / rel
            committed = src / rel
            if not fresh.is_file():
                problems.append(f"protoc did not produce {rel}")
            elif not committed.is_file():
                problems.append(f"missing: src/{rel}")
            elif committed.read_bytes() != fresh.read_bytes():
                problems.append(f"out of date: src/{rel}")
    problems.extend(f"stale (no matching .proto): src/{rel}" for rel in stale_outputs(src, protos))
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"generated protobuf stubs are not current; {FIX_HINT}", file=sys.stderr)
        return 1
    print(f"protobuf stubs are current ({len(protos)} protos)")
    return 0


def write(src: Path, protos: Sequence[Path]) -> int:
    with tempfile.TemporaryDirectory(prefix="quorumkv-protos-") as tmp:
        out = Path(tmp)
        generate(src, protos, out)
        for rel in expected_outputs(protos):
            shutil.copyfile(out / rel, src / rel)
            print(f"wrote src/{rel}")
    for rel in stale_outputs(src, protos):
        (src / rel).unlink()
        print(f"removed stale src/{rel}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="verify the committed stubs instead of writing")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="repository root containing src/ (default: this script's checkout)",
    )
    args = parser.parse_args(argv)
    src = (args.root / "src").resolve()
    protos = find_protos(src)
    if not protos:
        print(f"no .proto files found under {src / API_DIR}", file=sys.stderr)
        return 2
    return check(src, protos) if args.check else write(src, protos)


if __name__ == "__main__":
    sys.exit(main())
