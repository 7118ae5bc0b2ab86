"""The packages point one way: raft, storage -> mvcc -> server -> api -> app/embed -> cli (docs/architecture.md).

Every ``import`` in ``src/quorumkv`` (function-level ones included) is mapped to the layer of its package; an
import may only reach a lower tier, and a few layers are narrower still (the Raft core imports nothing of the
project; the client only the wire types and the error catalogue). Tiers make a cycle between packages
impossible, and a second check says so directly. The generated wire stubs (``api/*pb``) and the version
constants (``quorumkv/__init__``) sit below everything.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "quorumkv"
WIRE_PACKAGES = ("etcdserverpb", "mvccpb", "authpb", "quorumkvpb", "v3lockpb", "v3electionpb")

#: Lower tiers may be imported by higher ones, never the other way round; one tier's packages don't import
#: each other.
TIERS: list[set[str]] = [
    {"base", "wire", "errors", "raft", "lease", "security"},
    {"storage"},
    {"mvcc", "transport"},
    {"server"},
    {"observability"},
    {"api"},
    {"client"},
    {"backup"},
    {"app"},
    {"embed"},
    {"testing"},
    {"sim"},
    # the command line sits on top: ``quorumkv robustness`` ships the test harness as a command
    {"cli"},
]
#: Layers allowed less than their tier would allow.
NARROWER: dict[str, set[str]] = {
    "raft": set(),
    "lease": set(),
    "errors": set(),
    "security": {"security"},
    "wire": {"base", "wire"},
    "client": {"base", "wire", "errors"},
}


def layer_of(module: str) -> str | None:
    """The layer of a ``quorumkv`` module name, or None for a module outside the project."""
    parts = module.split(".")
    if parts[0] != "quorumkv":
        return None
    if len(parts) == 1:
        return "base"
    if parts[1] == "api" and len(parts) > 2 and parts[2] in WIRE_PACKAGES:
        return "wire"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def tier_of(layer: str) -> int:
    for n, tier in enumerate(TIERS):
        if layer in tier:
            return n
    raise AssertionError(f"layer {layer!r} is in no tier: add it to TIERS in {__file__}")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base))
            # "from quorumkv.api import etcdserverpb" names a wire package
            out.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names
                       if f"{base}.{alias.name}".startswith("quorumkv.api.") and alias.name in WIRE_PACKAGES)
    return out


def source_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "_pb2" not in p.name)


def violations(edges: list[tuple[str, int, str, str]]) -> list[str]:
    """``edges``: (file, line, importing layer, imported layer)."""
    bad = []
    for where, line, src, dst in edges:
        if src == dst:
            continue
        allowed = NARROWER.get(src)
        ok = dst in allowed if allowed is not None else tier_of(dst) < tier_of(src)
        if not ok:
            bad.append(f"{where}:{line}: {src} imports {dst}")
    return bad


def project_edges() -> list[tuple[str, int, str, str]]:
    edges = []
    for path in source_files():
        src = layer_of(module_name(path))
        assert src is not None
        for line, target in imports_of(path):
            dst = layer_of(target)
            if dst is not None and not (dst == "api" and target in ("quorumkv.api", "quorumkv.api.__init__")
                                        and src != "api"):
                edges.append((str(path.relative_to(SRC.parent)), line, src, dst))
    return edges


def test_every_import_points_down_the_layers() -> None:
    bad = violations(project_edges())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_package_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for _, _, src, dst in project_edges():
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


#: Statement texts that only SQL starts with, in capitals as this code writes SQL (a bare "DELETE" is also an
#: etcd event type, so more is asked).
SQL_TEXT = re.compile(r"^\s*(SELECT\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|"
                      r"CREATE\s+(TABLE|INDEX|UNIQUE)\b|DROP\s+\w+|PRAGMA\b|VACUUM\b|SAVEPOINT\b|RELEASE\s+\w+$|"
                      r"BEGIN(\s+IMMEDIATE)?$|COMMIT$|ROLLBACK\b)")


def sql_sites(path: Path) -> list[int]:
    """Lines of ``path`` that run a statement (``execute*`` calls) or spell one out (a string that starts as SQL)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany", "executescript")):
            lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_TEXT.match(node.value):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_no_sql_outside_storage_and_mvcc() -> None:
    """Storage owns the schema: SQL statements are written only in ``storage/`` and ``mvcc/``."""
    bad = []
    for path in source_files():
        name = str(path.relative_to(SRC.parent))
        if layer_of(module_name(path)) in ("storage", "mvcc"):
            continue
        bad.extend(f"{name}:{line}" for line in sql_sites(path))
    assert not bad, "SQL outside storage/ and mvcc/:\n" + "\n".join(bad)


def test_the_sql_finder_sees_statements(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text('conn.execute(q)\nQ = "SELECT id FROM kv"\nKIND = "DELETE"\nS = "DELETE FROM kv WHERE 1"\n')
    assert sql_sites(planted) == [1, 2, 4]


@pytest.mark.parametrize(("edge", "caught"), [
    (("server/x.py", 1, "server", "api"), True),       # the server reaching up into the RPC layer
    (("mvcc/x.py", 1, "mvcc", "transport"), True),     # two packages of one tier
    (("raft/x.py", 1, "raft", "wire"), True),          # the Raft core imports nothing of the project
    (("client/x.py", 1, "client", "server"), True),    # the client talks to a server only over the wire
    (("api/x.py", 1, "api", "server"), False),
    (("server/x.py", 1, "server", "wire"), False),
])
def test_the_checker_catches_a_planted_wrong_way_import(edge: tuple[str, int, str, str], caught: bool) -> None:
    assert bool(violations([edge])) is caught
