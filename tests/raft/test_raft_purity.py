"""``quorumkv.raft`` must stay pure: no I/O, clocks, threads or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import quorumkv.raft

FORBIDDEN_MODULES = frozenset(
    {
        "asyncio",
        "concurrent",
        "datetime",
        "grpc",
        "io",
        "multiprocessing",
        "os",
        "pathlib",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "sqlite3",
        "subprocess",
        "sys",
        "threading",
        "time",
    }
)


def impurities(source: str, filename: str = "<string>") -> list[str]:
    """Forbidden imports, and any use of the ``random`` module other than the ``random.Random`` type
    (module-level functions such as ``random.random()`` share hidden global state)."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    random_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.split(".")[0]
                if root in FORBIDDEN_MODULES:
                    found.append(f"{filename}:{node.lineno}: import {a.name}")
                if root == "random":
                    random_aliases.add(a.asname or "random")
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if node.level == 0 and root in FORBIDDEN_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            if node.level == 0 and root == "random":
                for a in node.names:
                    if a.name != "Random":
                        found.append(f"{filename}:{node.lineno}: from random import {a.name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found.append(f"{filename}:{node.lineno}: __import__()")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in random_aliases
            and node.attr != "Random"
        ):
            found.append(f"{filename}:{node.lineno}: random.{node.attr}")
    return found


def _raft_sources() -> list[Path]:
    pkg = Path(quorumkv.raft.__file__).parent
    files = sorted(pkg.rglob("*.py"))
    assert len(files) >= 10, files
    return files


def test_raft_package_imports_no_io_modules() -> None:
    problems = []
    for f in _raft_sources():
        problems += impurities(f.read_text(), str(f))
    assert problems == []


def test_checker_flags_import_time() -> None:
    assert impurities("import time\n") == ["<string>:1: import time"]


def test_checker_flags_from_imports_and_submodules() -> None:
    src = "from os.path import join\nimport concurrent.futures\nfrom asyncio import sleep\n"
    assert len(impurities(src)) == 3


def test_checker_flags_module_level_random_usage() -> None:
    assert impurities("import random\nx = random.random()\n") == ["<string>:2: random.random"]
    assert impurities("from random import choice\n") == ["<string>:1: from random import choice"]
    assert impurities("import random as r\nr.seed(1)\n") == ["<string>:2: random.seed"]


def test_checker_allows_injected_random_instance_type() -> None:
    assert impurities("import random\ndef f(rng: random.Random) -> int:\n    return rng.randrange(3)\n") == []
