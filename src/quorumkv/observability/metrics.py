"""Prometheus metrics with etcd's names, counted cheaply on the hot path and exported at scrape time.

The request path only bumps plain Python ints and dict entries (``ServerStats``); the gRPC servicers are
wrapped once at startup (``instrument_servicer``) to count ``grpc_server_started_total`` /
``grpc_server_handled_total`` and etcd's mvcc counters. ``EtcdCollector`` turns those numbers, plus gauges read
from the member (indexes, DB size, watchers, keys), into metric families when Prometheus scrapes; nothing on
the request path touches prometheus-client.

Gauges etcd sets from Raft (``etcd_server_proposals_committed_total`` / ``applied_total``) are the committed and
applied log indexes, as in etcd.

Disk histograms: a member persists each Raft Ready (log entries, hard state, and the entries it applies) in one
SQLite transaction. ``etcd_disk_wal_fsync_duration_seconds`` observes the COMMIT of each transaction that had to
be durable (SQLite's fsync of its write-ahead log, which holds the Raft log: etcd's WAL fsync);
``etcd_disk_backend_commit_duration_seconds`` observes the COMMIT of each transaction that applied committed
entries (etcd's backend commit). A follower's apply-only transactions are not synced and appear only in the
second; a sole voter appends, applies and fsyncs in one COMMIT, which both observe with the same duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from quorumkv import ETCD_CLUSTER_VERSION, ETCD_COMPAT_VERSION
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.api.v3electionpb import v3election_pb2
from quorumkv.api.v3lockpb import v3lock_pb2
from quorumkv.server.apply import ApplyResult
from quorumkv.transport.base import RTT_BUCKETS

log = logging.getLogger("quorumkv.metrics")

#: Prometheus text exposition content type (version 0.0.4), as etcd serves it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: etcd's buckets for WAL fsync and backend commit: prometheus.ExponentialBuckets(0.001, 2, 14).
DISK_BUCKETS = tuple(0.001 * 2**i for i in range(14))

#: etcd 3.4's buckets: etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds (ExponentialBuckets(1, 2, 13)),
#: ..._total_duration_milliseconds (ExponentialBuckets(100, 2, 14)), etcd_disk_backend_defrag_duration_seconds
#: (ExponentialBuckets(.1, 2, 13)).
COMPACTION_PAUSE_MS_BUCKETS = tuple(float(2**i) for i in range(13))
COMPACTION_TOTAL_MS_BUCKETS = tuple(100.0 * 2**i for i in range(14))
DEFRAG_BUCKETS = tuple(0.1 * 2**i for i in range(13))

#: go-grpc-prometheus's buckets for grpc_server_handling_seconds (prometheus.DefBuckets), kept with
#: ``--metrics extensive`` only, as etcd does.
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: etcd's warning threshold for one WAL fsync (wal.warnSyncDuration).
SLOW_FDATASYNC_S = 1.0

#: go-grpc-prometheus code labels (codes.Code.String()).
GRPC_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

#: Methods that become proposals: an Unavailable answer counts in etcd_server_proposals_failed_total.
_WRITE_METHODS = frozenset({"Put", "DeleteRange", "Txn", "Compact", "LeaseGrant", "LeaseRevoke"})


class Histogram:
    """A fixed-bucket histogram owned by one thread (the node's writer thread): plain ints, no locks."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last."""
        buckets: list[tuple[str, float]] = []
        acc = 0
        counts = list(self.counts)  # a consistent-enough copy (the writer may be adding)
        for bound, n in zip(self.bounds, counts, strict=False):
            acc += n
            buckets.append((_float_label(bound), acc))
        buckets.append(("+Inf", acc + counts[-1]))
        return buckets

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc)
        fam.add_metric([], self.buckets(), sum_value=self.total)
        return fam


def _cumulative(bounds: tuple[float, ...], counts: Iterable[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one past the largest bound) as cumulative ``(le, count)`` pairs."""
    out: list[tuple[str, float]] = []
    acc = 0
    labels = [_float_label(b) for b in bounds] + ["+Inf"]
    for label, n in zip(labels, counts, strict=False):
        acc += n
        out.append((label, acc))
    return out


def _float_label(v: float) -> str:
    """A bucket bound as Go's Prometheus client prints it: ``0.005``, ``1``, ``2.5``, ``10``."""
    v = round(v, 6)
    return str(int(v)) if v == int(v) else repr(v)


class ServerStats:
    """Counters the request path bumps. Event-loop owned except the disk histograms (writer thread).

    ``extensive`` (``--metrics extensive``) adds ``grpc_server_handling_seconds`` histograms per method.
    """

    def __init__(self, extensive: bool = False) -> None:
        self.extensive = extensive
        self.put = 0
        self.range = 0
        self.delete = 0
        self.txn = 0
        self.lease_granted = 0
        self.lease_revoked = 0
        self.lease_renewed = 0
        self.proposals_failed = 0
        self.slow_apply = 0
        self.health_success = 0
        self.health_failures = 0
        self.slow_fsyncs = 0
        #: etcd-snapshot (quorumkv.backup): snapshots saved/failed, S3 uploads done/failed (each attempt that
        #: gave up counts once)
        self.snapshots_saved = 0
        self.snapshots_failed = 0
        self.snapshot_uploads = 0
        self.snapshot_uploads_failed = 0
        #: (grpc_type, grpc_service, grpc_method) -> started calls
        self.started: dict[tuple[str, str, str], int] = {}
        #: (grpc_type, grpc_service, grpc_method, grpc_code) -> finished calls
        self.handled: dict[tuple[str, str, str, str], int] = {}
        #: stream methods only (a unary call receives one message per start and sends one per OK answer):
        #: (grpc_type, grpc_service, grpc_method) -> messages received / sent
        self.stream_received: dict[tuple[str, str, str], int] = {}
        self.stream_sent: dict[tuple[str, str, str], int] = {}
        #: with ``extensive``: (grpc_type, grpc_service, grpc_method) -> handling time histogram
        self.handling: dict[tuple[str, str, str], Histogram] = {}
        self.wal_fsync = Histogram(DISK_BUCKETS)
        self.backend_commit = Histogram(DISK_BUCKETS)
        #: compactions applied here: how long the writer was busy with the batch that compacted (quorumkv
        #: compacts in one statement, so the pause is the whole compaction), and revisions (rows) removed
        self.compaction_pause_ms = Histogram(COMPACTION_PAUSE_MS_BUCKETS)
        self.compaction_total_ms = Histogram(COMPACTION_TOTAL_MS_BUCKETS)
        self.compaction_keys = 0
        #: Defragment RPCs that succeeded, start to end
        self.defrag = Histogram(DEFRAG_BUCKETS)
        #: encoded size of every message received from / sent to gRPC clients (as etcd counts them); bumped by the
        #: method table's (de)serializers
        self.client_received_bytes = 0
        self.client_sent_bytes = 0
        self.slow_fdatasync_s = SLOW_FDATASYNC_S

    # -- hooks the member calls --------------------------------------------------------------------------

    def on_applied(self, result: ApplyResult) -> None:
        """After each durable batch (event loop)."""
        if result.leases_granted:
            self.lease_granted += len(result.leases_granted)
        if result.leases_revoked:
            self.lease_revoked += len(result.leases_revoked)
        if result.compacted_to:
            took_ms = result.compaction_s * 1000
            self.compaction_pause_ms.observe(took_ms)
            self.compaction_total_ms.observe(took_ms)
            self.compaction_keys += result.compacted_keys

    def observe_commit(self, seconds: float, *, synced: bool = True, applied: bool = True) -> None:
        """The node's commit observer (writer thread): one COMMIT of a Ready's transaction; ``synced``: it was
        fsynced (the WAL fsync), ``applied``: it applied committed entries (the backend commit)."""
        if applied:
            self.backend_commit.observe(seconds)
        if not synced:
            return
        self.wal_fsync.observe(seconds)
        if seconds > self.slow_fdatasync_s:
            self.slow_fsyncs += 1
            log.warning("slow fdatasync", extra={"took": format_duration(seconds),
                                                 "expected-duration": format_duration(self.slow_fdatasync_s)})

    def count_received_bytes(self, n: int) -> None:
        """A request message from a gRPC client was decoded (its encoded size)."""
        self.client_received_bytes += n

    def count_sent_bytes(self, n: int) -> None:
        """A response message to a gRPC client was encoded."""
        self.client_sent_bytes += n

    # -- per-request counting (called by the servicer wrappers) ------------------------------------------

    def count_put(self, req: Any, resp: Any) -> None:
        self.put += 1

    def count_range(self, req: Any, resp: Any) -> None:
        self.range += 1

    def count_delete(self, req: Any, resp: Any) -> None:
        self.delete += 1

    def count_txn(self, req: Any, resp: Any) -> None:
        """etcd's metricsTxnWrite: compares read ranges; the executed branch's ops count; a txn is counted
        when it did more than one operation."""
        counts = [len(req.compare), 0, 0]
        _count_ops(req.success if resp.succeeded else req.failure,
                   list(resp.responses), counts)
        self.range += counts[0]
        self.put += counts[1]
        self.delete += counts[2]
        if sum(counts) > 1:
            self.txn += 1


def _count_ops(ops: Iterable[pb.RequestOp], responses: list[pb.ResponseOp], counts: list[int]) -> None:
    for i, op in enumerate(ops):
        which = op.WhichOneof("request")
        if which == "request_range":
            counts[0] += 1
        elif which == "request_put":
            counts[1] += 1
        elif which == "request_delete_range":
            counts[2] += 1
        elif which == "request_txn" and i < len(responses):
            sub = op.request_txn
            sub_resp = responses[i].response_txn
            counts[0] += len(sub.compare)
            _count_ops(sub.success if sub_resp.succeeded else sub.failure, list(sub_resp.responses), counts)


def format_duration(seconds: float) -> str:
    """Go's time.Duration.String() closely enough for logs: 1.234567s, 123.456ms, 12.3µs, 0s."""
    if seconds <= 0:
        return "0s"
    if seconds >= 1:
        return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.6f}".rstrip("0").rstrip(".") + "ms"
    return f"{seconds * 1e6:.3f}".rstrip("0").rstrip(".") + "µs"


# -- gRPC instrumentation -----------------------------------------------------------------------------------


def _code_name(context: Any, default: str) -> str:
    try:
        code = context.code()
    except Exception:  # pragma: no cover - contexts without code()
        code = None
    if isinstance(code, grpc.StatusCode):
        return GRPC_CODE_NAMES.get(code, default)
    if isinstance(code, int):  # grpc.aio may hand back the raw integer
        for sc in grpc.StatusCode:
            if sc.value[0] == code:
                return GRPC_CODE_NAMES.get(sc, default)
    return default


def _grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming and server_streaming:
        return "bidi_stream"
    if client_streaming:
        return "client_stream"
    if server_streaming:
        return "server_stream"
    return "unary"


#: Where the services the member registers are described: etcdserverpb's, v3lockpb.Lock, v3electionpb.Election.
_SERVICE_FILES = (pb.DESCRIPTOR, v3lock_pb2.DESCRIPTOR, v3election_pb2.DESCRIPTOR)


def instrument_servicer(servicer: Any, service: str, stats: ServerStats) -> None:
    """Replace the servicer's RPC methods (on the instance) by counting wrappers. Call before registering.

    ``service`` is the short name in rpc.proto ("KV", "Watch", ...), or "Lock" / "Election". Unary wrappers add
    one coroutine frame and two dict increments per call.
    """
    desc = next(fd.services_by_name[service] for fd in _SERVICE_FILES if service in fd.services_by_name)
    full = desc.full_name
    on_ok_by_method: dict[str, Callable[[Any, Any], None]] = {
        "Put": stats.count_put, "Range": stats.count_range, "DeleteRange": stats.count_delete,
        "Txn": stats.count_txn,
    } if service == "KV" else {}
    for m in desc.methods:
        fn = getattr(servicer, m.name, None)
        if fn is None:
            continue
        gtype = _grpc_type(m.client_streaming, m.server_streaming)
        base = (gtype, full, m.name)
        stats.started.setdefault(base, 0)
        for code in GRPC_CODE_NAMES.values():
            stats.handled.setdefault((*base, code), 0)
        if stats.extensive:
            stats.handling.setdefault(base, Histogram(HANDLING_BUCKETS))
        if m.server_streaming or m.client_streaming:
            stats.stream_received.setdefault(base, 0)
            stats.stream_sent.setdefault(base, 0)
            on_msg = _renewed_counter(stats) if m.name == "LeaseKeepAlive" else None
            setattr(servicer, m.name, _wrap_stream(fn, base, stats, on_msg, m.client_streaming))
            continue
        if service == "Maintenance" and m.name == "Defragment":
            fn = _timed_defrag(fn, stats)
        if stats.extensive:
            setattr(servicer, m.name, _wrap_unary_timed(fn, base, stats, on_ok_by_method.get(m.name),
                                                        m.name in _WRITE_METHODS))
        else:
            setattr(servicer, m.name, _wrap_unary(fn, base, stats, on_ok_by_method.get(m.name),
                                                  m.name in _WRITE_METHODS))


def _timed_defrag(fn: Callable[[Any, Any], Awaitable[Any]],
                  stats: ServerStats) -> Callable[[Any, Any], Awaitable[Any]]:
    """etcd_disk_backend_defrag_duration_seconds: each Defragment that succeeded, start to end."""

    async def defragment(request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        resp = await fn(request, context)
        stats.defrag.observe(time.perf_counter() - t0)
        return resp

    return defragment


def _renewed_counter(stats: ServerStats) -> Callable[[Any], None]:
    def on_msg(resp: Any) -> None:
        if resp.TTL > 0:
            stats.lease_renewed += 1
    return on_msg


def _wrap_unary(fn: Callable[[Any, Any], Awaitable[Any]], base: tuple[str, str, str], stats: ServerStats,
                on_ok: Callable[[Any, Any], None] | None, is_write: bool) -> Callable[[Any, Any], Awaitable[Any]]:
    started = stats.started
    handled = stats.handled
    ok_key = (*base, "OK")

    async def unary(request: Any, context: Any) -> Any:
        started[base] += 1
        try:
            resp = await fn(request, context)
        except asyncio.CancelledError:
            handled[(*base, "Canceled")] += 1
            raise
        except BaseException:
            code = _code_name(context, "Unknown")
            handled[(*base, code)] += 1
            if is_write and code == "Unavailable":
                stats.proposals_failed += 1
            raise
        handled[ok_key] += 1
        if on_ok is not None:
            on_ok(request, resp)
        return resp

    return unary


def _wrap_unary_timed(fn: Callable[[Any, Any], Awaitable[Any]], base: tuple[str, str, str], stats: ServerStats,
                      on_ok: Callable[[Any, Any], None] | None,
                      is_write: bool) -> Callable[[Any, Any], Awaitable[Any]]:
    """:func:`_wrap_unary` plus the handling-time histogram (``--metrics extensive``)."""
    inner = _wrap_unary(fn, base, stats, on_ok, is_write)
    observe = stats.handling[base].observe
    clock = time.perf_counter

    async def unary(request: Any, context: Any) -> Any:
        t0 = clock()
        try:
            return await inner(request, context)
        finally:
            observe(clock() - t0)

    return unary


def _wrap_stream(fn: Callable[[Any, Any], AsyncIterator[Any]], base: tuple[str, str, str], stats: ServerStats,
                 on_msg: Callable[[Any], None] | None,
                 client_streaming: bool = False) -> Callable[[Any, Any], AsyncIterator[Any]]:
    started = stats.started
    handled = stats.handled
    received = stats.stream_received
    sent = stats.stream_sent
    histogram = stats.handling.get(base)

    async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for req in requests:
            received[base] += 1
            yield req

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        started[base] += 1
        t0 = time.perf_counter()
        code = "OK"
        if client_streaming:
            request = counted(request)
        else:
            received[base] += 1  # the one request message of a server stream
        try:
            async for resp in fn(request, context):
                if on_msg is not None:
                    on_msg(resp)
                sent[base] += 1
                yield resp
        except (asyncio.CancelledError, GeneratorExit):
            code = "Canceled"
            raise
        except BaseException:
            code = _code_name(context, "Unknown")
            raise
        finally:
            # A client that cancels may let the handler end normally (e.g. the watch stream sees its requests
            # end first): the RPC is still a cancelled one.
            if code == "OK" and _is_cancelled(context):
                code = "Canceled"
            handled[(*base, code)] += 1
            if histogram is not None:
                histogram.observe(time.perf_counter() - t0)

    return stream


def _is_cancelled(context: Any) -> bool:
    try:
        return bool(context.cancelled())
    except Exception:  # pragma: no cover - contexts without cancelled()
        return False


# -- export -------------------------------------------------------------------------------------------------


class EtcdCollector(Collector):
    """Reads ``ServerStats`` and the member's state when scraped (on the event loop thread)."""

    def __init__(self, server: Any, stats: ServerStats, *, quota_backend_bytes: int) -> None:
        self.server = server
        self.stats = stats
        self.quota_backend_bytes = quota_backend_bytes

    def collect(self) -> Iterator[Metric]:
        s, st = self.server, self.stats
        yield _gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                     int(s.has_leader))
        yield _gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                     int(s.is_leader))
        yield _gauge("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                     int(s.is_learner))
        yield _counter("etcd_server_leader_changes_seen", "The number of leader changes seen.",
                       s.leader_changes_seen)
        node = s.node
        yield _gauge("etcd_server_proposals_committed_total",
                     "The total number of consensus proposals committed.", node.last_index)
        yield _gauge("etcd_server_proposals_applied_total",
                     "The total number of consensus proposals applied.", s.applier.applied_index)
        yield _gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                     node.pending_proposals)
        yield _counter("etcd_server_proposals_failed", "The total number of failed proposals seen.",
                       st.proposals_failed)
        yield _counter("etcd_server_slow_apply", "The total number of slow apply requests (likely overloaded "
                       "from slow disk).", st.slow_apply)
        yield _gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                     self.quota_backend_bytes)
        yield _counter("etcd_server_health_success", "The total number of successful health checks",
                       st.health_success, total=False)
        yield _counter("etcd_server_health_failures", "The total number of failed health checks",
                       st.health_failures, total=False)
        yield _counter("quorumkv_snapshots_saved", "Snapshots (etcd-snapshot) saved and verified.", st.snapshots_saved)
        yield _counter("quorumkv_snapshots_failed", "Snapshots (etcd-snapshot) that failed.", st.snapshots_failed)
        yield _counter("quorumkv_snapshot_uploads", "Snapshots uploaded to S3 and verified.", st.snapshot_uploads)
        yield _counter("quorumkv_snapshot_uploads_failed",
                       "Snapshot uploads to S3 that failed after every retry.", st.snapshot_uploads_failed)
        v = GaugeMetricFamily("etcd_server_version",
                              "Which version is running. 1 for 'server_version' label with current version.",
                              labels=["server_version"])
        v.add_metric([ETCD_COMPAT_VERSION], 1)
        yield v
        cv = GaugeMetricFamily("etcd_cluster_version",
                               "Which version is running. 1 for 'cluster_version' label with current cluster "
                               "version", labels=["cluster_version"])
        cv.add_metric([".".join(ETCD_CLUSTER_VERSION.split(".")[:2])], 1)
        yield cv
        sid = GaugeMetricFamily("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' "
                                "label with current ID.", labels=["server_id"])
        sid.add_metric([f"{s.member_id:x}"], 1)
        yield sid

        yield st.wal_fsync.family("etcd_disk_wal_fsync_duration_seconds",
                                  "The latency distributions of fsync called by WAL.")
        yield st.backend_commit.family("etcd_disk_backend_commit_duration_seconds",
                                       "The latency distributions of commit called by backend.")
        yield st.defrag.family("etcd_disk_backend_defrag_duration_seconds",
                               "The latency distribution of backend defragmentation.")
        yield st.compaction_pause_ms.family("etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds",
                                            "Bucketed histogram of db compaction pause duration.")
        yield st.compaction_total_ms.family("etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
                                            "Bucketed histogram of db compaction total duration.")
        yield _counter("etcd_debugging_mvcc_db_compaction_keys", "Total number of db keys compacted.",
                       st.compaction_keys)
        yield _counter("etcd_network_client_grpc_received_bytes", "The total number of bytes received from grpc "
                       "clients.", st.client_received_bytes)
        yield _counter("etcd_network_client_grpc_sent_bytes", "The total number of bytes sent to grpc clients.",
                       st.client_sent_bytes)
        yield _counter("etcd_server_heartbeat_send_failures", "The total number of leader heartbeat send failures "
                       "(likely overloaded from slow disk).", getattr(s, "heartbeat_send_failures", 0))
        yield _counter("etcd_server_slow_read_indexes", "The total number of pending read indexes not in sync with "
                       "leader's or timed out read index requests.", getattr(s, "slow_read_indexes", 0))
        yield _counter("quorumkv_server_read_index_rounds", "ReadIndex rounds this member started for its "
                       "linearizable reads (one round confirms every read queued before it).",
                       getattr(s, "read_index_rounds", 0))

        yield _gauge("etcd_mvcc_db_total_size_in_bytes",
                     "Total size of the underlying database physically allocated in bytes.", s.backend.size_bytes())
        try:
            in_use = s.backend.size_in_use_bytes(s.reader)
        except Exception:  # pragma: no cover - storage closing
            in_use = 0
        yield _gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                     "Total size of the underlying database logically in use in bytes.", in_use)
        yield _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", _live_keys(s))
        hub = s.hub
        yield _gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.",
                     hub.watcher_count if hub is not None else 0)
        yield _gauge("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.",
                     hub.slow_watcher_count if hub is not None else 0)
        yield _gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", s.current_revision)
        for prefix in ("etcd_mvcc", "etcd_debugging_mvcc"):
            yield _counter(f"{prefix}_put", "Total number of puts seen by this member.", st.put)
            yield _counter(f"{prefix}_range", "Total number of ranges seen by this member.", st.range)
            yield _counter(f"{prefix}_delete", "Total number of deletes seen by this member.", st.delete)
            yield _counter(f"{prefix}_txn", "Total number of txns seen by this member.", st.txn)
        yield _counter("etcd_debugging_lease_granted", "The total number of granted leases.", st.lease_granted)
        yield _counter("etcd_debugging_lease_revoked", "The total number of revoked leases.", st.lease_revoked)
        yield _counter("etcd_debugging_lease_renewed", "The number of renewed leases seen by the leader.",
                       st.lease_renewed)

        started = CounterMetricFamily("grpc_server_started", "Total number of RPCs started on the server.",
                                      labels=["grpc_method", "grpc_service", "grpc_type"])
        for (gtype, service, method), n in sorted(st.started.items()):
            started.add_metric([method, service, gtype], n)
        yield started
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=["grpc_code", "grpc_method", "grpc_service", "grpc_type"])
        for (gtype, service, method, code), n in sorted(st.handled.items()):
            handled.add_metric([code, method, service, gtype], n)
        yield handled
        yield from _message_families(st)
        if st.extensive:
            handling = HistogramMetricFamily(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the "
                "server.", labels=["grpc_method", "grpc_service", "grpc_type"])
            for (gtype, service, method), hist in sorted(st.handling.items()):
                handling.add_metric([method, service, gtype], hist.buckets(), sum_value=hist.total)
            yield handling


def _message_families(st: ServerStats) -> Iterator[Metric]:
    """go-grpc-prometheus's message counters. A unary call receives one message when it starts and sends one
    when it succeeds, so those come from the started/handled counters; streams count every message."""
    labels = ["grpc_method", "grpc_service", "grpc_type"]
    received = CounterMetricFamily("grpc_server_msg_received",
                                   "Total number of RPC stream messages received on the server.", labels=labels)
    sent = CounterMetricFamily("grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
                               labels=labels)
    for base in sorted(st.started):
        gtype, service, method = base
        if gtype == "unary":
            received.add_metric([method, service, gtype], st.started[base])
            sent.add_metric([method, service, gtype], st.handled.get((*base, "OK"), 0))
        else:
            received.add_metric([method, service, gtype], st.stream_received.get(base, 0))
            sent.add_metric([method, service, gtype], st.stream_sent.get(base, 0))
    yield received
    yield sent


def _live_keys(server: Any) -> int:
    from quorumkv.mvcc import store
    from quorumkv.storage.backend import read_txn

    try:
        with read_txn(server.reader):
            return store.live_key_count(server.reader)
    except Exception:  # pragma: no cover - storage closing
        return 0


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float, *, total: bool = True) -> Metric:
    if total:
        return CounterMetricFamily(name, doc, value=value)
    # etcd_server_health_success has no _total suffix: export it as an untyped-looking gauge name-for-name.
    return GaugeMetricFamily(name, doc, value=value)


class PeerNetworkCollector(Collector):
    """etcd's peer network series, from the peer transport's per-peer counters (Raft members only)."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        transport = getattr(self.server, "transport", None)
        if transport is None or not hasattr(transport, "stats"):
            return
        peers = transport.stats()
        sent = CounterMetricFamily("etcd_network_peer_sent_bytes", "The total number of bytes sent to peers.",
                                   labels=["To"])
        received = CounterMetricFamily("etcd_network_peer_received_bytes",
                                       "The total number of bytes received from peers.", labels=["From"])
        failures = CounterMetricFamily("etcd_network_peer_sent_failures",
                                       "The total number of send failures from peers.", labels=["To"])
        rtt = HistogramMetricFamily("etcd_network_peer_round_trip_time_seconds",
                                    "Round-Trip-Time histogram between peers", labels=["To"])
        for mid, p in sorted(peers.items()):
            sent.add_metric([f"{mid:x}"], p.sent_bytes)
            received.add_metric([f"{mid:x}"], p.received_bytes)
            failures.add_metric([f"{mid:x}"], p.dropped)
            if p.rtt_counts and sum(p.rtt_counts):  # as etcd: a peer appears once it has a sample
                rtt.add_metric([f"{mid:x}"], _cumulative(RTT_BUCKETS, p.rtt_counts), sum_value=p.rtt_sum_s)
        yield sent
        yield received
        yield failures
        yield rtt
        yield GaugeMetricFamily("etcd_network_active_peers", "The current number of active peer connections.",
                                value=sum(1 for p in peers.values() if p.connected))


def build_registry(server: Any, stats: ServerStats, *, quota_backend_bytes: int) -> CollectorRegistry:
    """A registry with etcd's member metrics and the standard process/platform/GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EtcdCollector(server, stats, quota_backend_bytes=quota_backend_bytes))
    registry.register(PeerNetworkCollector(server))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry`` (called on the event loop; takes ~1 ms)."""
    return generate_latest(registry)


__all__ = [
    "CONTENT_TYPE", "HANDLING_BUCKETS", "EtcdCollector", "Histogram", "ServerStats", "build_registry",
    "format_duration",
    "instrument_servicer", "render",
]


# -- etcd's "apply request took too long" ---------------------------------------------------------------------

_ENTRY_REQUESTS: dict[int, tuple[str, type[Any]]] = {
    1: ("put", pb.PutRequest),
    2: ("delete_range", pb.DeleteRangeRequest),
    3: ("txn", pb.TxnRequest),
    4: ("compaction", pb.CompactionRequest),
    5: ("lease_grant", pb.LeaseGrantRequest),
    6: ("lease_revoke", pb.LeaseRevokeRequest),
    7: ("alarm", pb.AlarmRequest),
}


def _summarize(msg: Any) -> str:
    """Protobuf text of ``msg`` on one line, with put values replaced by their size (etcd's request summary)."""
    from google.protobuf import text_format

    if isinstance(msg, pb.PutRequest):
        red = pb.PutRequest()
        red.CopyFrom(msg)
        red.ClearField("value")
        text = text_format.MessageToString(red, as_one_line=True)
        return f"{text} value_size:{len(msg.value)}".strip()
    if isinstance(msg, pb.TxnRequest):
        red_txn = pb.TxnRequest()
        red_txn.CopyFrom(msg)
        for ops in (red_txn.success, red_txn.failure):
            for op in ops:
                if op.HasField("request_put"):
                    op.request_put.value = f"<value_size:{len(op.request_put.value)}>".encode()
        return text_format.MessageToString(red_txn, as_one_line=True)
    return text_format.MessageToString(msg, as_one_line=True)


def request_summary(data: bytes) -> str:
    """``header:<ID:...> put:<key:"foo" value_size:3>`` for a log entry's bytes (best effort)."""
    from quorumkv.server.entries import EntryKind, decode_entry, unwrap_authed

    try:
        kind, request_id, payload = decode_entry(data)
        user = ""
        if kind == EntryKind.AUTHED:  # etcd's header shows who asked
            authed = unwrap_authed(payload)
            kind, payload = authed.kind, authed.payload
            user = f'username:"{authed.username}" auth_revision:{authed.auth_revision} '
        name, cls = _ENTRY_REQUESTS.get(kind, ("", None))
        if cls is None:
            return f"header:<ID:{request_id} {user}> kind:{kind} size:{len(payload)}"
        return f"header:<ID:{request_id} {user}> {name}:<{_summarize(cls.FromString(payload))} >"
    except Exception as exc:  # pragma: no cover - a summary must never fail the report
        return f"<unreadable entry: {exc!r}>"


def slow_apply_logger(stats: ServerStats, expected_s: float) -> Callable[[int, bytes, float], None]:
    """The node's slow-apply observer: counts ``etcd_server_slow_apply_total`` and logs etcd's warning.

    Runs on the writer thread after the batch committed (never inside the apply loop)."""

    def report(index: int, data: bytes, took: float) -> None:
        stats.slow_apply += 1
        log.warning("apply request took too long", extra={
            "took": format_duration(took), "expected-duration": format_duration(expected_s), "prefix": "",
            "index": index, "request": request_summary(data)})

    return report
