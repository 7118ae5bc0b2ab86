"""``check perf``: etcdctl 3.4's write-performance check (same loads, flags, output lines and exit codes).

The load generator is one asyncio event loop driving ``grpc.aio``: ``clients`` worker coroutines (50, 200, 500
or 1000, as etcdctl's goroutines) spread over up to :data:`MAX_CHANNELS` channels, each channel its own HTTP/2
connection (etcdctl opens one per client). Requests are pre-serialised ``PutRequest`` bytes sent through a raw
method handle (no response parsing on success), and a token schedule offers at most ``limit`` writes/s, like
etcdctl's ``rate.NewLimiter(limit, 1)`` feeding a channel of ``clients`` slots.

Statistics follow etcd's ``pkg/report``: throughput = successful requests / (time from the start of the load to
the last answer), slowest = the longest successful request, stddev = population standard deviation of the
successful requests' latencies (NaN when none succeeded, printed as Go prints it). Failed requests count per
error text and fail the check. :func:`verdict` turns those figures into etcdctl's lines and PASS/FAIL.

Differences from etcdctl 3.4 (see docs/quorumkvctl.md): the progress bar is drawn only when stdout is a
terminal; :data:`DURATION_ENV` (undocumented, for tests) shortens the run.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.cli.ctl.app import GoFlag, command, group, root
from quorumkv.cli.ctl.gofmt import go_quote
from quorumkv.cli.ctl.kv import prefix_range_end
from quorumkv.cli.ctl.printers import write_err, write_out
from quorumkv.cli.ctl.session import (
    EXIT_BAD_ARGS,
    EXIT_BAD_FEATURE,
    EXIT_ERROR,
    EXIT_INVALID_INPUT,
    CtlError,
    Settings,
    go_code_name,
    is_secure,
    keepalive_options,
    strip_scheme,
    zap_line,
)

__all__ = [
    "DATASCALE_LIMIT_ENV",
    "DATASCALE_LOADS",
    "DURATION_ENV",
    "LOAD_ALIASES",
    "PERF_LOADS",
    "PerfLoad",
    "PerfResult",
    "ProgressBar",
    "datascale_key",
    "go_float",
    "metrics_url",
    "parse_resident_memory",
    "perf_key",
    "run_load",
    "verdict",
]


@dataclass(frozen=True)
class PerfLoad:
    """One ``--load`` model of etcdctl 3.4 (ctlv3/command/check.go)."""

    limit: int  #: writes/s offered at most
    clients: int  #: concurrent clients (requests in flight at most)
    duration: float  #: seconds of load


PERF_LOADS: dict[str, PerfLoad] = {
    "s": PerfLoad(limit=150, clients=50, duration=60),
    "m": PerfLoad(limit=1000, clients=200, duration=60),
    "l": PerfLoad(limit=8000, clients=500, duration=60),
    "xl": PerfLoad(limit=15000, clients=1000, duration=60),
}
LOAD_ALIASES = {
    "s": "s", "small": "s", "m": "m", "medium": "m", "l": "l", "large": "l", "xl": "xl", "xLarge": "xl",
}
KEY_SIZE = 256
VALUE_SIZE = 1024
#: Hidden override of the load duration in seconds (tests only; not in the usage text).
DURATION_ENV = "QUORUMKVCTL_CHECK_PERF_DURATION"
#: Connections opened at most; workers share them round robin. Past a few dozen connections grpc.aio gets no
#: faster, and hundreds of idle-ish HTTP/2 connections only cost the client (and the server) CPU.
MAX_CHANNELS = 64
#: etcd's thresholds (check.go): throughput must exceed 90 % of the limit, slowest <= 0.5 s, stddev <= 0.1 s.
MIN_THROUGHPUT_FRACTION = 0.9
MAX_SLOWEST_S = 0.5
MAX_STDDEV_S = 0.1
#: Timeouts etcdctl uses for the clean-up delete, the compaction and each defrag.
CLEANUP_TIMEOUT_S = 30.0

PUT_METHOD = "/etcdserverpb.KV/Put"


# ---------------------------------------------------------------------------------------------- statistics


@dataclass
class PerfResult:
    """What one run measured: successful request latencies (seconds), failures by error text, wall time."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    errors: Counter[str] = field(default_factory=Counter)
    total_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Successful requests per second of the run (pkg/report's RPS)."""
        if self.total_s <= 0:
            return math.inf if self.latencies else 0.0
        return len(self.latencies) / self.total_s

    @property
    def slowest(self) -> float:
        return max(self.latencies) if self.latencies else 0.0

    @property
    def stddev(self) -> float:
        """Population standard deviation of the latencies; NaN without any (Go's 0/0)."""
        n = len(self.latencies)
        if n == 0:
            return math.nan
        mean = math.fsum(self.latencies) / n
        return math.sqrt(math.fsum((x - mean) * (x - mean) for x in self.latencies) / n)


def go_float(value: float) -> str:
    """Go's ``%f``: six decimals; NaN and infinities as Go spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6f}"


def _go_int(value: float) -> int:
    """``int(x)`` of a float64 as Go does on amd64 for out-of-range values (the smallest int64)."""
    if math.isnan(value) or math.isinf(value) or abs(value) >= 2**63:
        return -(2**63)
    return int(value)


def verdict(result: PerfResult, limit: int) -> tuple[list[str], bool]:
    """etcdctl 3.4's result lines (without newlines) and whether the check passed."""
    lines: list[str] = []
    ok = True
    if result.errors:
        lines.append("FAIL: too many errors")
        for text, count in result.errors.items():
            lines.append(f"FAIL: ERROR({text}) -> {count}")
        ok = False
    rps = result.rps
    writes = _go_int(rps) + 1
    if rps / limit <= MIN_THROUGHPUT_FRACTION:
        lines.append(f"FAIL: Throughput too low: {writes} writes/s")
        ok = False
    else:
        lines.append(f"PASS: Throughput is {writes} writes/s")
    slowest = result.slowest
    if slowest > MAX_SLOWEST_S:
        lines.append(f"Slowest request took too long: {go_float(slowest)}s")
        ok = False
    else:
        lines.append(f"PASS: Slowest request took {go_float(slowest)}s")
    stddev = result.stddev
    if stddev > MAX_STDDEV_S:  # NaN compares false, as in Go
        lines.append(f"Stddev too high: {go_float(stddev)}s")
        ok = False
    else:
        lines.append(f"PASS: Stddev is {go_float(stddev)}s")
    lines.append("PASS" if ok else "FAIL")
    return lines, ok


def request_error_text(err: grpc.aio.AioRpcError) -> str:
    """clientv3's error for a failed Put without a deadline: etcd's own message, else gRPC's status text."""
    details = err.details() or ""
    if details.startswith("etcdserver: "):
        return details
    return f"rpc error: code = {go_code_name(err.code().name)} desc = {details}"


def _grpc_error_text(err: grpc.aio.AioRpcError) -> str:
    """clientv3's error for a failed unary call with a deadline (see :func:`quorumkv.cli.ctl.session.error_text`)."""
    code: grpc.StatusCode = err.code()
    details = err.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "context deadline exceeded"
    if code == grpc.StatusCode.CANCELLED and details in ("", "Cancelled", "Locally cancelled by application!"):
        return "context canceled"
    if details.startswith("etcdserver: "):
        return details
    return f"rpc error: code = {go_code_name(code.name)} desc = {details}"


# ---------------------------------------------------------------------------------------------- progress bar


def _go_seconds(seconds: int) -> str:
    """``time.Duration.String()`` of a whole number of seconds (``1m0s``, ``59s``, ``1h2m3s``)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class ProgressBar:
    """cheggaaa/pb v1 as etcdctl configures it (``pb.New(duration)``, format ``"Bom !"``), drawn with ``\\r``.

    ``width`` is the terminal's column count; 0 leaves the bar itself out (counters, percent and time only).
    """

    REFRESH_S = 0.2

    def __init__(self, total: int, width: int, write: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.width = width
        self.current = 0
        self.write = write
        self.clock = clock
        self.start_time = clock()
        self.change_time = self.start_time
        self.finished = False

    def add(self, count: int = 1) -> None:
        self.current += count
        self.change_time = self.clock()

    def frame(self) -> str:
        total, current = self.total, self.current
        counters = f" {current} / {total} "
        percent = current / (total / 100) if total > 0 else current / 100
        percent_box = f" {percent:6.2f}%"
        now = self.clock()
        time_box = ""
        if self.finished:
            time_box = " " + _go_seconds(int(now - self.start_time))
        elif current > 0:
            per_entry = (self.change_time - self.start_time) / current
            left = int((total - current) * per_entry - (now - self.change_time))
            if left > 0:
                minutes, secs = divmod(left, 60)
                hours, minutes = divmod(minutes, 60)
                time_box = " " + (f"{hours}h" if hours else "") + f"{minutes:02d}m{secs:02d}s"
        bar = ""
        size = self.width - len(counters + "B!" + percent_box + time_box)
        if size > 0 and total > 0:
            filled = min(math.ceil(current / total * size), size)
            empty = max(size - filled, 0)
            body = "o" * filled if empty <= 0 else ("o" * (filled - 1) + "m" if filled > 0 else "")
            bar = "B" + body + " " * empty + "!"
        out = counters + bar + percent_box + time_box
        return out + " " * max(self.width - len(out), 0)

    def draw(self) -> None:
        if not self.finished:
            self.write("\r" + self.frame())

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.write("\r" + self.frame() + "\n")

    async def run(self, duration: int) -> None:
        """Redraw every 200 ms and count one step per second for ``duration`` seconds, then finish."""
        start = self.clock()
        self.draw()
        while self.current < duration:
            await asyncio.sleep(self.REFRESH_S)
            due = min(int(self.clock() - start), duration)
            if due > self.current:
                self.add(due - self.current)
            self.draw()
        self.finish()


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------- load


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def perf_key(prefix: bytes, number: int) -> bytes:
    """etcdctl's key: the prefix, then 256 bytes holding ``binary.PutVarint(number)`` (zigzag) and zeros."""
    head = _varint(number << 1 if number >= 0 else ~(number << 1))
    return prefix + head + bytes(KEY_SIZE - len(head))


def _channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """TLS credentials from --cacert/--cert/--key; an unreadable file is a bad-arguments error."""

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    try:
        return grpc.ssl_channel_credentials(
            root_certificates=read(settings.cacert), private_key=read(settings.key),
            certificate_chain=read(settings.cert),
        )
    except OSError as exc:
        raise CtlError(EXIT_BAD_ARGS, str(exc)) from None


def _channel(settings: Settings, endpoint: str) -> grpc.aio.Channel:
    """A raw ``grpc.aio`` channel, not :mod:`quorumkv.client`: the load generator sends pre-serialised requests
    through bare method handles on one connection per channel, and the client's per-call decoding, retry loop
    and shared channels would change what ``check perf`` measures (and how many connections it opens)."""
    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one connection per channel, like one clientv3 client each
        *keepalive_options(settings),
        ("grpc.enable_http_proxy", 0),
    ]
    target = strip_scheme(endpoint)
    if is_secure(settings, endpoint):
        return grpc.aio.secure_channel(target, _channel_credentials(settings), options=options)
    return grpc.aio.insecure_channel(target, options=options)


Put = Callable[[bytes], Awaitable[bytes]]


async def run_load(puts: Sequence[Put], load: PerfLoad, prefix: bytes, *, seed: int | None = None) -> PerfResult:
    """Offer up to ``load.limit`` Puts/s for ``load.duration`` s from ``load.clients`` workers; measure them.

    Workers take requests from a queue of ``load.clients`` slots that a token schedule fills (as etcdctl's
    rate limiter feeds its request channel): when every worker is busy and the queue is full the schedule
    waits, and after such a wait at most one request goes out at once.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    value = bytes(VALUE_SIZE)
    result = PerfResult()
    latencies = result.latencies
    errors = result.errors
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=load.clients)
    perf = time.perf_counter

    async def worker(put: Put) -> None:
        append = latencies.append
        get = queue.get
        while True:
            request = await get()
            if request is None:
                return
            started = perf()
            try:
                await put(request)
            except grpc.aio.AioRpcError as err:
                errors[request_error_text(err)] += 1
            else:
                append(perf() - started)

    async def generate(deadline: float) -> None:
        interval = 1.0 / load.limit
        next_at = loop.time()
        while next_at < deadline:
            now = loop.time()
            if next_at > now:
                await asyncio.sleep(next_at - now)
                continue
            request = rpc_pb2.PutRequest(key=perf_key(prefix, rng.getrandbits(63)), value=value).SerializeToString()
            if queue.full():
                await queue.put(request)
                next_at = max(next_at + interval, loop.time())  # the limiter's burst is 1: no catching up
            else:
                queue.put_nowait(request)
                next_at += interval  # late only because of timer granularity: catch up
        for _ in range(load.clients):
            await queue.put(None)

    started = perf()
    workers = [asyncio.create_task(worker(puts[i % len(puts)])) for i in range(load.clients)]
    try:
        await generate(loop.time() + load.duration)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    result.total_s = perf() - started
    return result


# ---------------------------------------------------------------------------------------------- command

check_group = group(root, "check", short="commands for checking properties of the etcd cluster",
                    usage="check <subcommand>")


def _warn(client_id: uuid.UUID, endpoint: str, text: str) -> None:
    """clientv3's retry-interceptor warning, as etcdctl prints it before a failed unary call's error."""
    write_err(zap_line("warn", "clientv3/retry_interceptor.go:62", "retrying of unary invoker failed",
                       target=f"endpoint://client-{client_id}/{strip_scheme(endpoint)}", attempt=0,
                       error=text) + "\n")


def _raw_error_text(err: grpc.aio.AioRpcError, ever_ready: bool) -> str:
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # gRPC-Go's texts: never connected -> the balancer's error; connected but slow -> the context's.
        desc = "context deadline exceeded" if ever_ready else "latest balancer error: all SubConns are in " \
               "TransientFailure"
        return f"rpc error: code = DeadlineExceeded desc = {desc}"
    return f"rpc error: code = {go_code_name(code.name)} desc = {err.details() or ''}"


class _Session:
    """The channels of one ``check perf`` run; unary helpers fail like etcdctl's ExitWithError."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.endpoints = list(settings.endpoints)
        self.channels = [_channel(settings, self.endpoints[i % len(self.endpoints)]) for i in range(count)]
        self.client_id = uuid.uuid4()
        self.ready = False

    def method(self, index: int, name: str) -> Callable[..., Awaitable[bytes]]:
        call: Callable[..., Awaitable[bytes]] = self.channels[index].unary_unary(name)
        return call

    async def unary(self, index: int, name: str, request: bytes, timeout: float) -> bytes:
        """A call on channel ``index`` that waits for the connection until ``timeout`` (clientv3 does)."""
        try:
            answer: bytes = await self.channels[index].unary_unary(name)(request, timeout=timeout,
                                                                         wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            ready = self.ready or self.channels[index].get_state() == grpc.ChannelConnectivity.READY
            _warn(self.client_id, self.endpoints[index % len(self.endpoints)], _raw_error_text(err, ready))
            raise CtlError(EXIT_ERROR, _grpc_error_text(err)) from None
        self.ready = True
        return answer

    async def connect_all(self) -> None:
        """Open every connection before the load starts (bounded by --dial-timeout; stragglers connect later)."""
        tasks = [asyncio.ensure_future(channel.channel_ready()) for channel in self.channels]
        _, pending = await asyncio.wait(tasks, timeout=self.settings.dial_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels), return_exceptions=True)


def _duration(load: PerfLoad) -> PerfLoad:
    raw = os.environ.get(DURATION_ENV)
    if not raw:
        return load
    try:
        seconds = float(raw)
    except ValueError:
        return load
    return PerfLoad(load.limit, load.clients, seconds) if seconds > 0 else load


async def _check_perf(settings: Settings, load: PerfLoad, prefix: str, auto_compact: bool,
                      auto_defrag: bool) -> bool:
    key = prefix.encode("utf-8", "surrogateescape")
    end = prefix_range_end(key)
    session = _Session(settings, min(load.clients, MAX_CHANNELS))
    try:
        found = rpc_pb2.RangeResponse.FromString(await session.unary(
            0, "/etcdserverpb.KV/Range", rpc_pb2.RangeRequest(key=key, range_end=end, limit=1).SerializeToString(),
            timeout=load.duration))
        if found.kvs:
            raise CtlError(EXIT_INVALID_INPUT, f"prefix {go_quote(key)} has keys. Delete with etcdctl del --prefix "
                                               f"{prefix} first")
        await session.connect_all()
        bar: ProgressBar | None = None
        bar_task: asyncio.Task[None] | None = None
        if sys.stdout.isatty():
            def draw(text: str) -> None:
                write_out(text)
                sys.stdout.flush()

            bar = ProgressBar(math.ceil(load.duration), _terminal_width(), draw)
            bar_task = asyncio.create_task(bar.run(math.ceil(load.duration)))
        puts = [session.method(i, PUT_METHOD) for i in range(len(session.channels))]
        try:
            result = await run_load(puts, load, key)
        finally:
            if bar_task is not None and bar is not None:
                # etcdctl's bar counts its own seconds; let it reach the end (moments away) before the results
                await asyncio.wait([bar_task], timeout=2.0)
                bar_task.cancel()
                if not bar.finished:
                    bar.add(bar.total - bar.current)
                    bar.finish()
        await _clean_up(session, key, end, auto_compact=auto_compact, auto_defrag=auto_defrag,
                        timeout_s=CLEANUP_TIMEOUT_S)
    finally:
        await session.close()
    lines, ok = verdict(result, load.limit)
    write_out("".join(line + "\n" for line in lines))
    return ok


@command(
    check_group,
    "perf",
    short="Check the performance of the etcd cluster",
    usage="check perf [options]",
    flags=(
        GoFlag("auto-compact", "bool", False, "Compact storage with last revision after test is finished."),
        GoFlag("auto-defrag", "bool", False, "Defragment storage after test is finished."),
        GoFlag("load", "string", "s", "The performance check's workload model. Accepted workloads: s(small), "
               "m(medium), l(large), xl(xLarge)"),
        GoFlag("prefix", "string", "/etcdctl-check-perf/", "The prefix for writing the performance check's keys."),
    ),
)
def check_perf_cmd(settings: Settings, args: list[str], auto_compact: bool, auto_defrag: bool, load: str,
                   prefix: str) -> None:
    model = LOAD_ALIASES.get(load)
    if model is None:
        raise CtlError(EXIT_BAD_FEATURE, f"unknown load option {load}")
    cfg = _duration(PERF_LOADS[model])
    if not asyncio.run(_check_perf(settings, cfg, prefix, auto_compact, auto_defrag)):
        raise CtlError(EXIT_ERROR, "")


# ---------------------------------------------------------------------------------------------- datascale


@dataclass(frozen=True)
class DatascaleLoad:
    """One ``check datascale --load`` model of etcdctl 3.4."""

    limit: int  #: key-value pairs written
    kv_size: int  #: bytes per pair (as printed; the key and the value are 512 bytes each)
    clients: int  #: concurrent clients


DATASCALE_LOADS: dict[str, DatascaleLoad] = {
    "s": DatascaleLoad(limit=10_000, kv_size=1024, clients=50),
    "m": DatascaleLoad(limit=100_000, kv_size=1024, clients=200),
    "l": DatascaleLoad(limit=1_000_000, kv_size=1024, clients=500),
    "xl": DatascaleLoad(limit=3_000_000, kv_size=1024, clients=1000),
}
DATASCALE_KEY_SIZE = 512
DATASCALE_VALUE_SIZE = 512
#: Hidden override of the number of pairs written (tests only; not in the usage text).
DATASCALE_LIMIT_ENV = "QUORUMKVCTL_CHECK_DATASCALE_LIMIT"
RESIDENT_MEMORY_METRIC = "process_resident_memory_bytes"
#: etcdctl waits without a deadline for its first read (for ever when the endpoint is down), the metrics and the
#: clean-up; quorumkvctl bounds the first read by --dial-timeout + --command-timeout, the others by these.
DATASCALE_CALL_TIMEOUT_S = 600.0
METRICS_TIMEOUT_S = 30.0


def datascale_key(prefix: bytes, number: int) -> bytes:
    """etcdctl's datascale key: the prefix, then 512 bytes starting with ``binary.PutVarint(number)``."""
    head = _varint(number << 1 if number >= 0 else ~(number << 1))
    return prefix + head + bytes(DATASCALE_KEY_SIZE - len(head))


def metrics_url(endpoint: str) -> str:
    """Where etcdctl reads the member's memory: ``http://`` + the endpoint (prefixed unless it starts with
    ``http://``) + ``/metrics``: the client port itself, where etcd serves HTTP beside gRPC."""
    host = endpoint if endpoint.startswith("http://") else "http://" + endpoint
    return host + "/metrics"


def parse_resident_memory(text: str) -> float | str:
    """The first ``process_resident_memory_bytes`` sample of a Prometheus text page, or etcdctl's complaint."""
    value = ""
    for line in text.split("\n"):
        if line.startswith(RESIDENT_MEMORY_METRIC):
            value = line[len(RESIDENT_MEMORY_METRIC):].strip()
            break
    if not value:
        return f"could not find: {RESIDENT_MEMORY_METRIC}"
    try:
        return float(value)
    except ValueError:
        return f'parse error: strconv.ParseFloat: parsing "{value}": invalid syntax'


def endpoint_memory(endpoint: str) -> float:
    """etcdctl's ``endpointMemoryMetrics``: resident bytes from the endpoint's ``/metrics``; 0 (after printing
    why, on stdout, as etcdctl does) when they cannot be read."""
    import http.client
    import urllib.error
    import urllib.request

    url = metrics_url(endpoint)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=METRICS_TIMEOUT_S) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # Go's http.Get returns the body of any status
        body = exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ConnectionRefusedError):
            hostport = url.removeprefix("http://").split("/", 1)[0]
            text = f"dial tcp {hostport}: connect: connection refused"
        elif isinstance(exc, http.client.BadStatusLine):  # e.g. a gRPC-only port answering with HTTP/2 frames
            line = str(exc.args[0] if exc.args else "").rstrip("\r\n").encode("latin-1", "replace")
            text = f"net/http: HTTP/1.x transport connection broken: malformed HTTP response {go_quote(line)}"
        elif isinstance(exc, http.client.HTTPException | ValueError):
            text = f"net/http: HTTP/1.x transport connection broken: {exc}"
        else:
            text = str(reason)
        write_out(f'fetch error: Get "{url}": {text}\n')
        return 0.0
    parsed = parse_resident_memory(body.decode("utf-8", "replace"))
    if isinstance(parsed, str):
        write_out(parsed + "\n")
        return 0.0
    return parsed


def _go_fixed2(value: float) -> str:
    """``strconv.FormatFloat(v, 'f', 2, 64)``."""
    text = f"{value:.2f}"
    return "-0.00" if text == "-0.00" else text


def _datascale_limit(load: DatascaleLoad) -> DatascaleLoad:
    raw = os.environ.get(DATASCALE_LIMIT_ENV)
    if not raw:
        return load
    try:
        limit = int(raw)
    except ValueError:
        return load
    return DatascaleLoad(limit, load.kv_size, load.clients) if limit > 0 else load


async def run_datascale_puts(puts: Sequence[Put], load: DatascaleLoad, prefix: bytes,
                             on_done: Callable[[], None] | None = None, *, seed: int | None = None) -> PerfResult:
    """Write ``load.limit`` pairs from ``load.clients`` workers as fast as they go; measure each Put."""
    rng = random.Random(seed)
    value = bytes(DATASCALE_VALUE_SIZE)
    result = PerfResult()
    latencies, errors = result.latencies, result.errors
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=load.clients)
    perf = time.perf_counter

    async def worker(put: Put) -> None:
        while True:
            request = await queue.get()
            if request is None:
                return
            started = perf()
            try:
                await put(request)
            except grpc.aio.AioRpcError as err:
                errors[request_error_text(err)] += 1
            else:
                latencies.append(perf() - started)
            if on_done is not None:
                on_done()

    async def generate() -> None:
        for _ in range(load.limit):
            key = datascale_key(prefix, rng.getrandbits(63))
            await queue.put(rpc_pb2.PutRequest(key=key, value=value).SerializeToString())
        for _ in range(load.clients):
            await queue.put(None)

    started = perf()
    workers = [asyncio.create_task(worker(puts[i % len(puts)])) for i in range(load.clients)]
    try:
        await generate()
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    result.total_s = perf() - started
    return result


async def _check_datascale(settings: Settings, load: DatascaleLoad, prefix: str, auto_compact: bool,
                           auto_defrag: bool) -> None:
    key = prefix.encode("utf-8", "surrogateescape")
    end = prefix_range_end(key)
    session = _Session(settings, min(load.clients, MAX_CHANNELS))
    loop = asyncio.get_running_loop()
    try:
        found = rpc_pb2.RangeResponse.FromString(await session.unary(
            0, "/etcdserverpb.KV/Range", rpc_pb2.RangeRequest(key=key, range_end=end, limit=1).SerializeToString(),
            timeout=settings.dial_timeout + settings.command_timeout))
        if found.kvs:
            raise CtlError(EXIT_INVALID_INPUT, f"prefix {go_quote(key)} has keys. Delete with etcdctl del --prefix "
                                               f"{prefix} first")
        endpoint = session.endpoints[0]
        before = await loop.run_in_executor(None, endpoint_memory, endpoint)
        if before == 0:
            write_out("FAIL: Could not read process_resident_memory_bytes before the put operations.\n")
            raise CtlError(EXIT_ERROR, "")
        write_out(f"Start data scale check for work load [{load.limit} key-value pairs, {load.kv_size} bytes per "
                  f"key-value, {load.clients} concurrent clients].\n")
        sys.stdout.flush()
        await session.connect_all()
        bar: ProgressBar | None = None
        redraw: asyncio.Task[None] | None = None
        if sys.stdout.isatty():
            def draw(text: str) -> None:
                write_out(text)
                sys.stdout.flush()

            bar = ProgressBar(load.limit, _terminal_width(), draw)

            async def refresh(progress: ProgressBar) -> None:
                while True:
                    progress.draw()
                    await asyncio.sleep(ProgressBar.REFRESH_S)

            redraw = asyncio.create_task(refresh(bar))
        puts = [session.method(i, PUT_METHOD) for i in range(len(session.channels))]
        try:
            result = await run_datascale_puts(puts, load, key, bar.add if bar is not None else None)
        finally:
            if redraw is not None:
                redraw.cancel()
            if bar is not None:
                bar.finish()
        after = await loop.run_in_executor(None, endpoint_memory, endpoint)
        if after == 0:
            write_out("FAIL: Could not read process_resident_memory_bytes after the put operations.\n")
            raise CtlError(EXIT_ERROR, "")
        await _clean_up(session, key, end, auto_compact=auto_compact, auto_defrag=auto_defrag,
                        timeout_s=DATASCALE_CALL_TIMEOUT_S)
    finally:
        await session.close()
    if result.errors:
        write_out("FAIL: too many errors\n")
        for text, count in result.errors.items():
            write_out(f"FAIL: ERROR({text}) -> {count}\n")
        raise CtlError(EXIT_ERROR, "")
    write_out(f"PASS: Approximate system memory used : {_go_fixed2((after - before) / (1024 * 1024))} MB.\n")


@command(
    check_group,
    "datascale",
    short="Check the memory usage of holding data for different workloads on a given server endpoint.",
    long="If no endpoint is provided, localhost will be used. If multiple endpoints are provided, first endpoint "
         "will be used.",
    usage="check datascale [options]",
    flags=(
        GoFlag("auto-compact", "bool", False, "Compact storage with last revision after test is finished."),
        GoFlag("auto-defrag", "bool", False, "Defragment storage after test is finished."),
        GoFlag("load", "string", "s", "The datascale check's workload model. Accepted workloads: s(small), "
               "m(medium), l(large), xl(xLarge)"),
        GoFlag("prefix", "string", "/etcdctl-check-datascale/", "The prefix for writing the datascale check's "
               "keys."),
    ),
)
def check_datascale_cmd(settings: Settings, args: list[str], auto_compact: bool, auto_defrag: bool, load: str,
                        prefix: str) -> None:
    model = LOAD_ALIASES.get(load)
    if model is None:
        raise CtlError(EXIT_BAD_FEATURE, f"unknown load option {load}")
    asyncio.run(_check_datascale(settings, _datascale_limit(DATASCALE_LOADS[model]), prefix, auto_compact,
                                 auto_defrag))


async def _clean_up(session: _Session, key: bytes, end: bytes, *, auto_compact: bool, auto_defrag: bool,
                    timeout_s: float) -> None:
    """What etcdctl's check perf and check datascale do after their load: delete the check's keys, then
    (``--auto-compact``) compact at the delete's revision and (``--auto-defrag``) defragment every endpoint."""
    deleted = rpc_pb2.DeleteRangeResponse.FromString(await session.unary(
        0, "/etcdserverpb.KV/DeleteRange", rpc_pb2.DeleteRangeRequest(key=key, range_end=end).SerializeToString(),
        timeout=timeout_s))
    if auto_compact:
        revision = deleted.header.revision
        write_out(f"Compacting with revision {revision}\n")
        sys.stdout.flush()
        await session.unary(0, "/etcdserverpb.KV/Compact", rpc_pb2.CompactionRequest(
            revision=revision, physical=True).SerializeToString(), timeout=timeout_s)
        write_out(f"Compacted with revision {revision}\n")
    if auto_defrag:
        for index, endpoint in enumerate(session.endpoints):
            write_out(f"Defragmenting {go_quote(endpoint)}\n")
            sys.stdout.flush()
            await session.unary(index, "/etcdserverpb.Maintenance/Defragment",
                                rpc_pb2.DefragmentRequest().SerializeToString(), timeout=timeout_s)
            write_out(f"Defragmented {go_quote(endpoint)}\n")
