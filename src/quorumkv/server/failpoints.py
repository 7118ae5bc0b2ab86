"""Named failpoints at the node shell's durability boundaries, in the spirit of etcd's gofail (pure stdlib).

Every failpoint is off unless named in ``QUORUMKV_FAILPOINTS`` (read once, when a member starts) or installed
by a test or the simulator. When none is enabled a hit costs one attribute check (``Failpoints.active``).

Syntax: ``name=terms`` pairs separated by ``;``, e.g. ``QUORUMKV_FAILPOINTS="after_log_save=20*off->crash"``.
``terms`` is one or more ``[N*]action`` joined by ``->``: each term runs for its next N hits (forever without
``N*``), then the next term takes over. Actions:

- ``off``: nothing;
- ``crash``: ``os._exit(CRASH_EXIT_CODE)`` at once (no cleanup, no flush: an abrupt process death);
- ``sleep(MS)``: block the calling thread for MS milliseconds;
- ``error``: raise ``FailpointError`` (the Raft thread stops; the member fails like on a storage error).

The names (``NAMES``) and where the shell hits them are described in docs/raft.md ("Failpoints").
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Mapping

ENV_VAR = "QUORUMKV_FAILPOINTS"
#: The exit status of a process killed by a ``crash`` failpoint.
CRASH_EXIT_CODE = 86

NAMES = frozenset(
    {
        "before_leader_send",
        "before_log_save",
        "before_snapshot_install",
        "before_apply",
        "after_apply",
        "after_log_save",
        "after_snapshot_install",
        "after_compact",
    }
)

Action = Callable[[str], None]

_TERM = re.compile(r"^(?:(\d+)\*)?(off|crash|error|sleep\((\d+)\))$")


class FailpointError(Exception):
    """Raised by an ``error`` failpoint."""


def _off(name: str) -> None:
    return None


def _crash(name: str) -> None:
    sys.stderr.write(f"quorumkv: failpoint {name}: crash\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


def _error(name: str) -> None:
    raise FailpointError(f"failpoint {name}")


def _sleep(ms: int) -> Action:
    def act(name: str) -> None:
        time.sleep(ms / 1000)

    return act


class _Sequence:
    """``[N*]action->...``: each term for its next N hits, the last one (or an unbounded one) for ever."""

    def __init__(self, terms: list[tuple[int | None, Action]]) -> None:
        self.terms = terms
        self.position = 0
        self.used = 0

    def __call__(self, name: str) -> None:
        while True:
            count, action = self.terms[self.position]
            if count is None or self.used < count or self.position == len(self.terms) - 1:
                self.used += 1
                action(name)
                return
            self.position += 1
            self.used = 0


def parse(spec: str) -> dict[str, Action]:
    """``name=terms;name=terms`` (see the module docstring); raises ``ValueError`` on an unknown name or term."""
    actions: dict[str, Action] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in NAMES:
            raise ValueError(f"{ENV_VAR}: unknown failpoint {name!r} (known: {', '.join(sorted(NAMES))})")
        terms: list[tuple[int | None, Action]] = []
        for term in value.split("->"):
            m = _TERM.match(term.strip())
            if m is None:
                raise ValueError(f"{ENV_VAR}: bad action {term.strip()!r} for {name} "
                                 "(want [N*]off|crash|error|sleep(MS))")
            count = int(m.group(1)) if m.group(1) else None
            verb = m.group(2)
            act: Action
            if verb == "off":
                act = _off
            elif verb == "crash":
                act = _crash
            elif verb == "error":
                act = _error
            else:
                act = _sleep(int(m.group(3)))
            terms.append((count, act))
        actions[name] = _Sequence(terms)
    return actions


class Failpoints:
    """The enabled failpoints of one node shell. ``hit(name)`` runs the action installed for ``name``."""

    __slots__ = ("_actions", "active", "hits")

    def __init__(self, actions: Mapping[str, Action] | None = None) -> None:
        unknown = set(actions or {}) - NAMES
        if unknown:
            raise ValueError(f"unknown failpoints: {sorted(unknown)}")
        self._actions = dict(actions or {})
        #: Whether any failpoint is enabled (the shell checks this before calling ``hit``).
        self.active = bool(self._actions)
        #: How many times each enabled failpoint was reached.
        self.hits: dict[str, int] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Failpoints:
        spec = (os.environ if environ is None else environ).get(ENV_VAR, "")
        return cls(parse(spec)) if spec.strip() else cls()

    def hit(self, name: str) -> None:
        action = self._actions.get(name)
        if action is not None:
            self.hits[name] = self.hits.get(name, 0) + 1
            action(name)


#: No failpoint enabled.
DISABLED = Failpoints()
