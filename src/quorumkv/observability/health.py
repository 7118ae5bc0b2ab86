"""etcd's HTTP health endpoints: ``/health`` (etcd 3.4/3.5) and ``/livez`` / ``/readyz`` (etcd 3.6).

``/health`` (GET only) answers ``{"health":"true","reason":""}`` (200) or ``{"health":"false","reason":...}``
(503) after, in etcd's order: raised alarms (``?exclude=NOSPACE`` skips an alarm type), the leader, then a
read (``?serializable=true`` makes it a serializable read). etcd 3.4 answers only ``{"health":"true"}``; the
``reason`` field is etcd 3.5's, which 3.4-era clients ignore.

``/livez`` runs ``serializable_read``; ``/readyz`` runs ``data_corruption``, ``serializable_read`` and
``linearizable_read``. Each check also has its own path (``/readyz/linearizable_read``). ``?verbose`` lists
``[+]name ok`` lines, ``?exclude=name`` skips a check. etcd 3.4.23 has neither endpoint (404): these follow the
etcd 3.6 documentation and code layout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.observability.metrics import ServerStats

log = logging.getLogger("quorumkv.health")

Check = Callable[[], str | None]  # None: ok; otherwise the failure text


@dataclass(frozen=True)
class Response:
    """What an HTTP endpoint answers (the API layer writes it out)."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class Request(Protocol):
    """What the health endpoints read of an HTTP request."""

    method: str
    path: str
    query: dict[str, list[str]]


def _alarm_name(alarm: int) -> str:
    try:
        return str(pb.AlarmType.Name(alarm))
    except ValueError:
        return "UNKNOWN"


class Health:
    """The checks, over a running ``QuorumServer``."""

    def __init__(self, server: Any, stats: ServerStats | None = None) -> None:
        self.server = server
        self.stats = stats

    # -- primitive checks ---------------------------------------------------------------------------------

    def _read(self, serializable: bool) -> str | None:
        s = self.server
        if not getattr(s, "started", True):
            return "etcdserver: server stopped"
        try:
            s.range(pb.RangeRequest(key=b"health", serializable=serializable))
        except Exception as exc:
            return str(getattr(exc, "message", exc))
        return None

    def _alarms(self) -> list[str]:
        try:
            return [_alarm_name(a) for _mid, a in self.server.active_alarms()]
        except Exception as exc:  # storage gone: report, do not crash the endpoint
            return [f"UNKNOWN ({exc})"]

    # -- /health ------------------------------------------------------------------------------------------

    def check_health(self, exclude: set[str], serializable: bool) -> tuple[bool, str]:
        for name in self._alarms():
            if name in exclude:
                continue
            return False, f"ALARM {name if name in ('NOSPACE', 'CORRUPT') else 'UNKNOWN'}"
        # A single member is its own leader once started; a Raft member needs a known leader.
        if not serializable and (not getattr(self.server, "started", True)
                                 or not getattr(self.server, "has_leader", True)):
            return False, "RAFT NO LEADER"
        err = self._read(serializable)
        if err is not None:
            return False, f"QGET ERROR:{err}"
        return True, ""

    async def handle_health(self, req: Request) -> Response:
        if req.method != "GET":
            return Response(405, b"Method Not Allowed\n", headers=[("Allow", "GET")])
        exclude = {v for vs in req.query.get("exclude", []) for v in vs.split(",") if v}
        serializable = req.query.get("serializable", ["false"])[-1].lower() == "true"
        ok, reason = self.check_health(exclude, serializable)
        if self.stats is not None:
            if ok:
                self.stats.health_success += 1
            else:
                self.stats.health_failures += 1
                log.warning("serving /health false", extra={"reason": reason})
        body = json.dumps({"health": "true" if ok else "false", "reason": reason}, separators=(",", ":"))
        return Response(200 if ok else 503, body.encode())

    # -- /livez, /readyz ----------------------------------------------------------------------------------

    def _data_corruption(self) -> str | None:
        return "alarm activated: CORRUPT" if "CORRUPT" in self._alarms() else None

    def checks(self, path: str) -> dict[str, Check]:
        if path == "/livez":
            return {"serializable_read": lambda: self._read(True)}
        return {
            "data_corruption": self._data_corruption,
            "serializable_read": lambda: self._read(True),
            "linearizable_read": lambda: self._read(False),
        }

    async def handle_probe(self, req: Request) -> Response:
        """``/livez``, ``/readyz`` and their per-check sub-paths."""
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"Method Not Allowed\n")
        base, _, only = req.path.rstrip("/").partition("/")[2].partition("/")
        path = "/" + base
        checks = self.checks(path)
        if only:
            check = checks.get(only)
            if check is None:
                return Response(404, b"404 page not found\n")
            err = check()
            if err is None:
                return Response(200, b"ok")
            return Response(503, f"[-]{only} failed: {err}\n{path}/{only} check failed\n".encode())
        verbose = "verbose" in req.query
        exclude = {v.strip() for vs in req.query.get("exclude", []) for v in vs.split(",") if v.strip()}
        out: list[str] = []
        failed = False
        for name, check in checks.items():
            if name in exclude:
                out.append(f"[+]{name} excluded: ok")
                exclude.discard(name)
                continue
            err = check()
            if err is None:
                out.append(f"[+]{name} ok")
            else:
                failed = True
                out.append(f"[-]{name} failed: {err}")
        if exclude:
            out.append("warn: some health checks cannot be excluded: no matches for "
                       + ",".join(f"{n!r}" for n in sorted(exclude)))
        if failed:
            log.warning("health check failed", extra={"path": path, "checks": out})
            return Response(503, ("\n".join(out) + f"\n{path} check failed\n").encode())
        if not verbose:
            return Response(200, b"ok")
        return Response(200, ("\n".join(out) + f"\n{path} check passed\n").encode())
