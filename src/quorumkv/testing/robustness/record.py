"""What a robustness run records, and its JSON form (``quorumkv robustness record`` writes it, ``check`` reads it).

A :class:`Recording` holds

- ``history``: every single-key KV request of the traffic (puts, linearizable gets, deletes, the Kubernetes
  style ``mod_revision`` guarded txns, lease-attached puts), a :class:`~quorumkv.testing.history.History` that
  :func:`quorumkv.testing.linearizability.check` decides;
- ``watches``: every watch *stream* the watchers opened, response by response (a watcher whose stream breaks
  opens a new one from the revision after the last event it got, so each resumption is a stream of its own
  with its own ``start_revision``);
- ``lists``: every paginated list (``limit`` pages, all read at the revision of the first page);
- ``counters``: what else the traffic did (lease grants, keepalives, revokes, compactions, defrags, progress
  requests) and how often it failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from quorumkv.testing.history import History

FORMAT = "quorumkv-robustness/1"


@dataclass(frozen=True, slots=True)
class WatchEventRec:
    """One event: ``value`` None is a delete; ``prev`` the previous value a ``prev_kv`` watch reported (None:
    none or not asked)."""

    revision: int
    key: str
    value: str | None
    prev: str | None = None


@dataclass(frozen=True, slots=True)
class WatchResponseRec:
    """One WatchResponse: ``progress`` is a progress notification (no events, not the created/canceled one)."""

    received: int
    header_revision: int
    events: tuple[WatchEventRec, ...] = ()
    progress: bool = False


@dataclass
class WatchStreamRec:
    """One watch stream: created at ``start_revision`` (0: "from now") on ``endpoint``."""

    watcher: int
    stream: int
    start_revision: int
    endpoint: str
    responses: list[WatchResponseRec] = field(default_factory=list)
    #: Why the stream ended ("" while it ran to the end of the recording).
    ended: str = ""

    def events(self) -> list[WatchEventRec]:
        return [e for r in self.responses for e in r.events]


@dataclass(frozen=True, slots=True)
class ListRec:
    """A paginated list of the traffic prefix: every page at ``revision`` (that of the first page)."""

    client: int
    revision: int
    limit: int
    pages: int
    #: key -> (value, mod_revision) as the pages returned them
    items: dict[str, tuple[str, int]]


@dataclass
class Recording:
    history: History
    prefix: str
    profile: str
    watches: list[WatchStreamRec] = field(default_factory=list)
    lists: list[ListRec] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    #: The revision the recording's final linearizable read saw (0: unknown).
    final_revision: int = 0

    def to_obj(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "prefix": self.prefix,
            "profile": self.profile,
            "final_revision": self.final_revision,
            "counters": dict(sorted(self.counters.items())),
            "history": json.loads(self.history.to_json()),
            "watches": [
                {
                    "watcher": w.watcher,
                    "stream": w.stream,
                    "start_revision": w.start_revision,
                    "endpoint": w.endpoint,
                    "ended": w.ended,
                    "responses": [
                        [r.received, r.header_revision, int(r.progress), [[e.revision, e.key, e.value, e.prev]
                                                                         for e in r.events]]
                        for r in w.responses
                    ],
                }
                for w in self.watches
            ],
            "lists": [
                {"client": li.client, "revision": li.revision, "limit": li.limit, "pages": li.pages,
                 "items": {k: list(v) for k, v in sorted(li.items.items())}}
                for li in self.lists
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_obj(), separators=(",", ":"))

    @classmethod
    def from_obj(cls, data: dict[str, Any]) -> Recording:
        if data.get("format") != FORMAT:
            # a bare history (``python -m quorumkv.testing.linearizability`` format)
            if "operations" in data and "initial_revision" in data:
                return cls(History.from_json(json.dumps(data)), prefix="", profile="history")
            raise ValueError(f"not a robustness recording (format {data.get('format')!r}, expected {FORMAT!r}) "
                             "nor a history")
        watches = []
        for w in data["watches"]:
            rec = WatchStreamRec(int(w["watcher"]), int(w["stream"]), int(w["start_revision"]), str(w["endpoint"]),
                                 ended=str(w.get("ended", "")))
            for received, header, progress, events in w["responses"]:
                rec.responses.append(WatchResponseRec(
                    int(received), int(header),
                    tuple(WatchEventRec(int(r), str(k), None if v is None else str(v), None if p is None else str(p))
                          for r, k, v, p in events),
                    bool(progress)))
            watches.append(rec)
        lists = [ListRec(int(li["client"]), int(li["revision"]), int(li["limit"]), int(li["pages"]),
                         {k: (str(v[0]), int(v[1])) for k, v in li["items"].items()}) for li in data["lists"]]
        return cls(
            history=History.from_json(json.dumps(data["history"])),
            prefix=str(data["prefix"]),
            profile=str(data["profile"]),
            watches=watches,
            lists=lists,
            counters={str(k): int(v) for k, v in data.get("counters", {}).items()},
            final_revision=int(data.get("final_revision", 0)),
        )

    @classmethod
    def from_json(cls, text: str) -> Recording:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a recording is a JSON object")
        return cls.from_obj(data)
