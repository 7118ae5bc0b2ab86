"""Logs like etcd's zap output: JSON keys, console format, slow apply and slow fdatasync warnings."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.app import ConsoleLogFormatter, JsonLogFormatter
from quorumkv.observability.metrics import ServerStats, request_summary

from .obskit import scrape, start_test_member

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _record(msg: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("quorumkv.test")
    rec = logger.makeRecord("quorumkv.test", level, "/x/src/quorumkv/server/node.py", 42, msg, (), None,
                            extra=extra)
    return rec


def test_json_lines_have_zap_keys_first() -> None:
    line = JsonLogFormatter().format(_record("apply request took too long", took="150ms"))
    obj = json.loads(line)
    assert list(obj)[:4] == ["level", "ts", "caller", "msg"]
    assert obj["level"] == "warn" and obj["caller"] == "server/node.py:42" and obj["took"] == "150ms"
    assert re.fullmatch(TS, obj["ts"])
    assert line.startswith('{"level":"warn","ts":"')  # compact, as zap


def test_console_format_is_tab_separated_like_zap() -> None:
    line = ConsoleLogFormatter().format(_record("serving client requests", logging.INFO, **{"member-id": "ab"}))
    ts, level, caller, msg, fields = line.split("\t")
    assert re.fullmatch(TS, ts) and level == "INFO" and caller == "server/node.py:42"
    assert msg == "serving client requests" and json.loads(fields) == {"member-id": "ab"}


def test_request_summary_hides_values() -> None:
    from quorumkv.server.entries import EntryKind, encode_entry

    data = encode_entry(EntryKind.PUT, 7, pb.PutRequest(key=b"foo", value=b"secret").SerializeToString())
    text = request_summary(data)
    assert text.startswith("header:<ID:7 > put:<")
    assert 'key: "foo"' in text and "value_size:6" in text and "secret" not in text


def test_slow_fdatasync_warning(caplog: pytest.LogCaptureFixture) -> None:
    stats = ServerStats()
    stats.slow_fdatasync_s = 0.01
    with caplog.at_level(logging.WARNING, logger="quorumkv.metrics"):
        stats.observe_commit(0.002)
        stats.observe_commit(0.05)
    recs = [r for r in caplog.records if r.getMessage() == "slow fdatasync"]
    assert len(recs) == 1
    assert recs[0].__dict__["took"] == "50ms" and recs[0].__dict__["expected-duration"] == "10ms"


async def test_slow_apply_warning_with_injected_threshold(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = await start_test_member(tmp_path / "data", slow_apply_s=0.0)  # every apply is "slow"
    try:
        with caplog.at_level(logging.WARNING, logger="quorumkv.metrics"):
            await m.kv.Put(pb.PutRequest(key=b"slow", value=b"abc"))
            metrics = await scrape(m.metrics_url)
    finally:
        await m.channel.close()
        await m.running.close()
    recs = [r for r in caplog.records if r.getMessage() == "apply request took too long"]
    assert recs, caplog.text
    rec = recs[-1].__dict__
    assert rec["expected-duration"] == "0s"
    assert 'key: "slow"' in rec["request"] and "value_size:3" in rec["request"]
    assert re.fullmatch(r"[\d.]+(µs|ms|s)", rec["took"])
    assert metrics["etcd_server_slow_apply_total"] >= 1
    line = json.loads(JsonLogFormatter().format(recs[-1]))
    assert line["msg"] == "apply request took too long" and line["level"] == "warn"
