"""Unit tests of the interop harness itself: normalisation, the scenario parser, and process handling."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quorumkv.testing.processes import (
    ServerNotReady,
    ServerProcess,
    free_port,
    normalize,
    run_etcdctl,
    spawn_server,
    start_etcd,
)
from quorumkv.testing.scenarios import (
    ScenarioError,
    Step,
    StepResult,
    diff_transcripts,
    load_scenario,
    parse_scenario,
    run_scenario,
)

from .conftest import SCENARIO_DIR

pytestmark = pytest.mark.interop

CLUSTER_ID = 15118495548433857066
MEMBER_ID = 13668033151171901709  # hex bdae9bbc11dd390d
LEASE_A = 4111120161318751520  # hex 390da2014c59cd20
LEASE_B = 4111120161318751522  # hex 390da2014c59cd22


def fake_server(
    client_port: int = 23791, peer_port: int = 23801, cluster_id: int = CLUSTER_ID, member_id: int = MEMBER_ID
) -> ServerProcess:
    return ServerProcess(
        kind="etcd",
        pid=0,
        client_url=f"http://127.0.0.1:{client_port}",
        peer_url=f"http://127.0.0.1:{peer_port}",
        data_dir=Path("/nonexistent"),
        log_path=Path("/nonexistent/log"),
        cluster_id=cluster_id,
        member_id=member_id,
    )


def get_json(revision: int, cluster_id: int = CLUSTER_ID, member_id: int = MEMBER_ID, term: int = 2) -> str:
    return (
        f'{{"header":{{"cluster_id":{cluster_id},"member_id":{member_id},"revision":{revision},'
        f'"raft_term":{term}}},"kvs":[{{"key":"Zm9v","create_revision":2,"mod_revision":{revision},'
        '"version":3,"value":"YmF6"}],"count":1}'
    )


# ----------------------------------------------------------------------------------------------- normalize


def test_normalize_replaces_ids_and_term_but_keeps_revisions() -> None:
    out = normalize(get_json(revision=4), fake_server())
    assert str(CLUSTER_ID) not in out and str(MEMBER_ID) not in out
    assert '"cluster_id":<CLUSTER-ID>' in out and '"member_id":<MEMBER-ID>' in out
    assert '"raft_term":<TERM>' in out
    assert '"revision":4' in out and '"mod_revision":4' in out and '"create_revision":2' in out
    assert '"version":3' in out and '"value":"YmF6"' in out and '"count":1' in out


def test_two_servers_with_different_ids_compare_equal() -> None:
    other_cluster, other_member = 1234567890123456789, 9876543210987654321
    a = normalize(get_json(4), fake_server())
    b = normalize(
        get_json(4, other_cluster, other_member, term=7),
        fake_server(40001, 40002, other_cluster, other_member),
    )
    assert a == b


def test_outputs_differing_only_in_a_revision_do_not_compare_equal() -> None:
    """The comparison can fail: a revision is behaviour, not noise."""
    server_a, server_b = fake_server(), fake_server(40001, 40002, 111, 222)
    a = normalize(get_json(4), server_a)
    b = normalize(get_json(5, 111, 222), server_b)
    assert a != b
    step = parse_scenario("$ get foo -w json\n").steps[0]
    report = diff_transcripts(
        [StepResult(step, stdout=a, returncode=0)], [StepResult(step, stdout=b, returncode=0)], "etcd", "qkv"
    )
    assert report is not None
    assert "step 1 differs" in report and '"revision":4' in report and '"revision":5' in report
    assert (
        diff_transcripts([StepResult(step, stdout=a, returncode=0)], [StepResult(step, stdout=a)]) is not None
    )


def test_exit_code_and_stderr_differences_are_reported() -> None:
    step = parse_scenario("$ get foo --rev 1\n").steps[0]
    ok = StepResult(step, stdout="", stderr="", returncode=0)
    compacted = "Error: etcdserver: mvcc: required revision has been compacted"
    failed = StepResult(step, stdout="", stderr=compacted, returncode=1)
    assert diff_transcripts([ok], [ok]) is None
    report = diff_transcripts([ok], [failed])
    assert report is not None and "exit code: 1" in report and "has been compacted" in report


def test_member_ids_in_hex_simple_and_table_output() -> None:
    server = fake_server()
    simple = "bdae9bbc11dd390d, started, default, http://127.0.0.1:23801, http://127.0.0.1:23791, false\n"
    assert normalize(simple, server) == "<MEMBER-ID>, started, default, <PEER-URL>, <CLIENT-URL>, false\n"
    status = "http://127.0.0.1:23791, bdae9bbc11dd390d, 3.4.23, 20 kB, true, false, 2, 4, 4, \n"
    assert normalize(status, server) == (
        "<CLIENT-URL>, <MEMBER-ID>, <VERSION>, <DB-SIZE>, true, false, <TERM>, <RAFT-INDEX>, <RAFT-INDEX>, \n"
    )


def test_endpoint_status_tables_from_different_servers_compare_equal() -> None:
    def table(url: str, member: str, size: str, term: str, index: str) -> str:
        titles = (
            "ENDPOINT,ID,VERSION,DB SIZE,IS LEADER,IS LEARNER,RAFT TERM,RAFT INDEX,RAFT APPLIED INDEX,ERRORS"
        )
        header = titles.split(",")
        row = [url, member, "3.4.23", size, "true", "false", term, index, index, ""]
        widths = [max(len(h), len(r)) for h, r in zip(header, row, strict=True)]
        border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        return "\n".join([border, line(header), border, line(row), border]) + "\n"

    a = normalize(table("http://127.0.0.1:23791", "bdae9bbc11dd390d", "20 kB", "2", "4"), fake_server())
    other = fake_server(5, 6, 77, 0xABC)
    b = normalize(table("http://127.0.0.1:5", "abc", "123 MB", "12", "12345"), other)
    assert a == b
    assert "<DB-SIZE>" in a and "<RAFT-INDEX>" in a and "true" in a and "false" in a


def test_lease_ids_numbered_by_first_appearance_hex_and_decimal() -> None:
    server = fake_server()
    assert normalize("lease 390da2014c59cd22 granted with TTL(60s)\n", server) == (
        "lease <LEASE-1> granted with TTL(60s)\n"
    )
    out = normalize(f'{{"ID":{LEASE_A},"TTL":100,"revision":7}}', server)
    assert out == '{"ID":<LEASE-2>,"TTL":100,"revision":7}'
    # the same leases, later, in other formats keep their numbers
    assert normalize("lease 390da2014c59cd20 revoked\n", server) == "lease <LEASE-2> revoked\n"
    assert (
        normalize(f'"Lease" : {LEASE_B}\n"Revision" : 9\n', server) == '"Lease" : <LEASE-1>\n"Revision" : 9\n'
    )
    assert server.lease_ids == [LEASE_B, LEASE_A]


def test_small_lease_ids_never_swallow_revisions() -> None:
    """A candidate may number leases 1, 2, ...: only lease contexts are rewritten, not every '1'."""
    server = fake_server()
    assert normalize("lease 0000000000000001 granted with TTL(5s)\n", server) == (
        "lease <LEASE-1> granted with TTL(5s)\n"
    )
    out = normalize('{"key":"YQ==","create_revision":1,"mod_revision":1,"version":1,"lease":1}', server)
    assert out == '{"key":"YQ==","create_revision":1,"mod_revision":1,"version":1,"lease":<LEASE-1>}'
    assert normalize('"Lease" : 0\n', server) == '"Lease" : 0\n'


def test_small_server_ids_are_only_replaced_where_etcdctl_prints_ids() -> None:
    """A candidate may call its cluster 1 and its member 2: revisions 1 and 2 must survive."""
    server = fake_server(cluster_id=1, member_id=2)
    out = normalize(get_json(revision=2, cluster_id=1, member_id=2), server)
    assert '"cluster_id":<CLUSTER-ID>,"member_id":<MEMBER-ID>,"revision":2' in out
    assert '"create_revision":2' in out
    members = (
        '{"header":{"cluster_id":1,"member_id":2,"raft_term":2},"members":[{"ID":2,"name":"default",'
        '"peerURLs":["http://127.0.0.1:23801"],"clientURLs":["http://127.0.0.1:23791"]}]}'
    )
    assert normalize(members, server) == (
        '{"header":{"cluster_id":<CLUSTER-ID>,"member_id":<MEMBER-ID>,"raft_term":<TERM>},"members":[{"ID":'
        '<MEMBER-ID>,"name":"default","peerURLs":["<PEER-URL>"],"clientURLs":["<CLIENT-URL>"]}]}'
    )
    assert normalize(
        "2, started, default, http://127.0.0.1:23801, http://127.0.0.1:23791, false\n", server
    ) == ("<MEMBER-ID>, started, default, <PEER-URL>, <CLIENT-URL>, false\n")
    # a lease numbered like the member is still a lease
    lease = normalize(
        '{"cluster_id":1,"member_id":2,"revision":2,"raft_term":2,"ID":2,"TTL":60,"Error":""}', server
    )
    assert lease == (
        '{"cluster_id":<CLUSTER-ID>,"member_id":<MEMBER-ID>,"revision":2,"raft_term":<TERM>,"ID":<LEASE-1>,'
        '"TTL":60,"Error":""}'
    )


def test_lease_list_and_attached_keys_are_sorted() -> None:
    a, b = fake_server(), fake_server()
    for server in (a, b):
        normalize("lease 390da2014c59cd20 revoked\nlease 390da2014c59cd22 revoked\n", server)
    assert normalize("found 2 leases\n390da2014c59cd22\n390da2014c59cd20\n", a) == normalize(
        "found 2 leases\n390da2014c59cd20\n390da2014c59cd22\n", b
    )
    assert normalize(f'{{"leases":[{{"id":{LEASE_B}}},{{"id":{LEASE_A}}}]}}', a) == normalize(
        f'{{"leases":[{{"id":{LEASE_A}}},{{"id":{LEASE_B}}}]}}', b
    )
    ttl = "lease 390da2014c59cd20 granted with TTL(100s), remaining(99s), attached keys([{}])\n"
    assert normalize(ttl.format("k2 k1"), a) == normalize(ttl.format("k1 k2"), b)


def test_remaining_ttl_tolerates_timing_noise_only() -> None:
    server = fake_server()
    line = "lease 390da2014c59cd20 granted with TTL(100s), remaining({}s)\n"
    assert normalize(line.format(99), server) == normalize(line.format(97), server)
    assert normalize(line.format(99), server) != normalize(line.format(50), server)
    assert '"ttl":"<TTL~100>"' in normalize(f'{{"id":{LEASE_A},"ttl":98,"granted-ttl":100}}', server)
    assert '"ttl":-1' in normalize(f'{{"id":{LEASE_A},"ttl":-1,"granted-ttl":0}}', server)


def test_client_log_lines_keep_the_grpc_error() -> None:
    line = (
        '{"level":"warn","ts":"2026-11-22T03:28:36.145Z","caller":"clientv3/retry_interceptor.go:62",'
        '"msg":"retrying of unary invoker failed","target":"endpoint://client-d7146b96/127.0.0.1:23791",'
        '"attempt":0,"error":"rpc error: code = OutOfRange desc = etcdserver: mvcc: required revision is a '
        'future revision"}\nError: etcdserver: mvcc: required revision is a future revision\n'
    )
    out = normalize(line, fake_server())
    record = json.loads(out.splitlines()[0])
    assert record["ts"] == "<TS>" and record["target"] == "<TARGET>"
    assert record["error"].startswith("rpc error: code = OutOfRange")
    assert out.splitlines()[1] == "Error: etcdserver: mvcc: required revision is a future revision"


def test_health_durations_and_versions() -> None:
    server = fake_server()
    out = normalize(
        "http://127.0.0.1:23791 is healthy: successfully committed proposal: took = 1.526152ms\n", server
    )
    assert out == "<CLIENT-URL> is healthy: successfully committed proposal: took = <DURATION>\n"
    assert normalize('[{"endpoint":"http://127.0.0.1:23791","health":true,"took":"1.7ms"}]', server) == (
        '[{"endpoint":"<CLIENT-URL>","health":true,"took":"<DURATION>"}]'
    )
    assert (
        normalize('"Version" : "3.4.23"\n"Version" : 3\n', server)
        == '"Version" : "<VERSION>"\n"Version" : 3\n'
    )


# ------------------------------------------------------------------------------------------------- parser

SAMPLE = """\
# a comment
$ put foo "bar baz"
$ txn
< mod("foo") = "0"
<
< put foo baz
<
<*3 put k{i} v{i}

&w1 $ watch foo --prefix --rev 2
wait &w1 lines=6 timeout=2.5
wait &w1 exit
sleep 0.25
stop &w1 quiet=0.1
"""


def test_parser_reads_every_step_kind() -> None:
    steps = parse_scenario(SAMPLE, "sample.txt").steps
    assert [s.kind for s in steps] == ["run", "run", "start", "wait", "wait", "sleep", "stop"]
    put, txn, start, wait_lines, wait_exit, sleep, stop = steps
    assert put.args == ("put", "foo", "bar baz") and put.stdin_lines is None and put.line_no == 2
    assert txn.args == ("txn",)
    assert txn.stdin_text == 'mod("foo") = "0"\n\nput foo baz\n\nput k0 v0\nput k1 v1\nput k2 v2\n'
    assert start.name == "w1" and start.args == ("watch", "foo", "--prefix", "--rev", "2")
    assert wait_lines.lines == 6 and wait_lines.timeout_s == 2.5 and not wait_lines.until_exit
    assert wait_exit.until_exit and wait_exit.lines is None
    assert sleep.seconds == 0.25
    assert stop.name == "w1" and stop.quiet_s == 0.1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("< orphan stdin\n", "stdin line without"),
        ("$ get a\n\n< detached by a blank line\n", "stdin line without"),
        ("frobnicate\n", "unrecognised line"),
        ("wait &nope lines=1\n", "never started"),
        ("&w $ watch a\n", "never stopped"),
        ("&w $ watch a\n&w $ watch b\nstop &w\n", "already started"),
        ("&w $ watch a\nwait &w\nstop &w\n", "exactly one of"),
        ("&w $ watch a\nwait &w lines=x\nstop &w\n", "not a number"),
        ("&w $ watch a\nwait &w colour=red\nstop &w\n", "unexpected option"),
        ("&w watch a\n", "expected '&NAME $"),
        ("$\n", "empty etcdctl command"),
        ('$ put "unterminated\n', "cannot split"),
        ("sleep\n", "expected 'sleep SECONDS'"),
    ],
)
def test_parser_rejects_malformed_scenarios(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=r"bad\.txt:") as info:
        parse_scenario(text, "bad.txt")
    assert message in str(info.value)


def test_every_scenario_file_parses() -> None:
    files = sorted(SCENARIO_DIR.glob("*.txt"))
    assert len(files) >= 8
    for path in files:
        scenario = load_scenario(path)
        assert scenario.steps, path
        assert any(step.kind == "run" for step in scenario.steps)


def test_step_result_render_shows_stdin_and_outputs() -> None:
    step = Step("run", 3, "$ txn", args=("txn",), stdin_lines=("", "put a b", ""))
    text = StepResult(step, stdout="SUCCESS\n\nOK\n", stderr="", returncode=0).render()
    assert "line 3: $ txn" in text and "put a b" in text and "exit code: 0" in text and "(empty)" in text


# ---------------------------------------------------------------------------------------------- processes


def _sleeper(tmp_path: Path, name: str, ignore_term: bool = False) -> ServerProcess:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(120)\n"
    server = spawn_server(
        "dummy",
        [sys.executable, "-c", code],
        client_url="http://127.0.0.1:1",
        peer_url="http://127.0.0.1:2",
        data_dir=tmp_path / name,
        log_path=tmp_path / f"{name}.log",
    )
    deadline = time.monotonic() + 10
    while "ready" not in server.log_tail() and time.monotonic() < deadline:
        time.sleep(0.02)
    return server


def _pid_running(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False)
    return state.returncode == 0 and not state.stdout.strip().startswith("Z")


def test_stop_kills_only_its_own_pid(tmp_path: Path) -> None:
    mine, bystander = _sleeper(tmp_path, "mine"), _sleeper(tmp_path, "bystander")
    try:
        assert mine.alive() and bystander.alive()
        assert mine.stop() == -signal.SIGTERM
        assert not mine.alive() and not _pid_running(mine.pid)
        assert bystander.alive() and _pid_running(bystander.pid)
        assert mine.stop() == -signal.SIGTERM  # idempotent
    finally:
        bystander.stop()
    assert not bystander.alive()


def test_stop_escalates_to_sigkill_after_a_bounded_wait(tmp_path: Path) -> None:
    stubborn = _sleeper(tmp_path, "stubborn", ignore_term=True)
    started = time.monotonic()
    assert stubborn.stop(timeout_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert not stubborn.alive()


def test_kill9(tmp_path: Path) -> None:
    server = _sleeper(tmp_path, "victim")
    assert server.kill9() == -signal.SIGKILL


def test_wait_ready_reports_the_log_tail_when_the_server_dies(tmp_path: Path) -> None:
    server = spawn_server(
        "dummy",
        [sys.executable, "-c", "print('boom: cannot bind'); raise SystemExit(3)"],
        client_url=f"http://127.0.0.1:{free_port()}",
        peer_url=f"http://127.0.0.1:{free_port()}",
        data_dir=tmp_path / "d",
        log_path=tmp_path / "dead.log",
    )
    with pytest.raises(ServerNotReady, match="boom: cannot bind") as info:
        server.wait_ready(timeout_s=10)
    assert "exited with code 3" in str(info.value)
    server.stop()


def test_wait_ready_times_out_with_the_log_tail(tmp_path: Path) -> None:
    server = _sleeper(tmp_path, "silent")
    server.client_url = f"http://127.0.0.1:{free_port()}"
    try:
        with pytest.raises(ServerNotReady, match=r"not ready .* after 0\.3s") as info:
            server.wait_ready(timeout_s=0.3)
        assert "ready" in str(info.value)
    finally:
        server.stop()


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_etcdctl_refuses_non_loopback_endpoints() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        run_etcdctl("http://10.0.0.1:2379", "get", "foo")
    with pytest.raises(ValueError, match="non-loopback"):
        run_etcdctl("127.0.0.1:2379,example.com:2379", "get", "foo")


def test_differential_run_detects_a_real_difference(tmp_path: Path, require_etcd_binaries: None) -> None:
    """End to end on two real etcds: one extra write on the 'candidate' must make the comparison fail."""
    scenario = parse_scenario("$ put foo bar\n$ get foo -w json\n$ lease grant 60\n", "extra-write.txt")
    reference, candidate = start_etcd(tmp_path / "ref"), start_etcd(tmp_path / "cand")
    try:
        same = diff_transcripts(run_scenario(scenario, reference), run_scenario(scenario, candidate))
        assert same is None, same
        assert candidate.etcdctl("put", "extra", "write").returncode == 0
        report = diff_transcripts(run_scenario(scenario, reference), run_scenario(scenario, candidate))
    finally:
        reference.stop()
        candidate.stop()
    assert report is not None
    # put foo is revision 3 on the reference and 4 on the candidate; "OK" from the put itself is equal
    assert "step 1 differs" not in report and "step 2 differs" in report
    assert '"revision":3' in report and '"revision":4' in report


def test_real_etcd_identity_and_clean_stop(tmp_path: Path, require_etcd_binaries: None) -> None:
    server = start_etcd(tmp_path)
    try:
        status = server.etcdctl("endpoint", "status", write_out="json")
        assert status.returncode == 0, status.stderr
        header = json.loads(status.stdout)[0]["Status"]["header"]
        assert (server.cluster_id, server.member_id) == (header["cluster_id"], header["member_id"])
        assert header["revision"] == 1  # the readiness probe is a read: it must not change the revision
        assert server.log_path.exists() and server.data_dir.exists()
    finally:
        code = server.stop()
    assert code is not None and not server.alive() and not _pid_running(server.pid)


def test_unknown_lease_placeholder_becomes_a_step_note_not_a_crash() -> None:
    scenario = parse_scenario(
        "$ put k v --lease={LEASE-1}\n&w $ watch k --rev {LEASE-2}\nwait &w lines=1\nstop &w\n"
    )
    results = run_scenario(scenario, fake_server())
    assert [bool(r.note) for r in results] == [True, True, True, True]
    assert "{LEASE-1} used but only 0 lease(s)" in results[0].note
    assert "not running" in results[2].note and "not running" in results[3].note
