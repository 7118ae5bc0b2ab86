"""Printers against output captured from the real etcdctl 3.4.23 (etcd 3.4.23 server)."""

from __future__ import annotations

import pytest

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.api.mvccpb import kv_pb2
from quorumkv.cli.ctl.gofmt import go_duration, go_quote, humanize_bytes
from quorumkv.cli.ctl.printers import EndpointHealth, EndpointStatus, Printer
from quorumkv.cli.ctl.session import CtlError

CLUSTER, MEMBER = 17774489138828215334, 9489733531999324745
HEADER = rpc_pb2.ResponseHeader(cluster_id=CLUSTER, member_id=MEMBER, revision=2, raft_term=2)
EP = "http://127.0.0.1:50367"


def out(capfd: pytest.CaptureFixture[str]) -> str:
    return capfd.readouterr().out


def status() -> EndpointStatus:
    resp = rpc_pb2.StatusResponse(
        header=HEADER, version="3.4.23", dbSize=20480, leader=MEMBER, raftIndex=5, raftTerm=2,
        raftAppliedIndex=5, dbSizeInUse=16384,
    )  # fmt: skip
    return EndpointStatus(EP, resp)


def test_endpoint_status_all_formats(capfd: pytest.CaptureFixture[str]) -> None:
    Printer("simple").endpoint_status([status()])
    assert out(capfd) == f"{EP}, 83b24e5e5beeca49, 3.4.23, 20 kB, true, false, 2, 5, 5, \n"
    Printer("table").endpoint_status([status()])
    assert out(capfd) == (
        "+------------------------+------------------+---------+---------+-----------+------------+-----------+"
        "------------+--------------------+--------+\n"
        "|        ENDPOINT        |        ID        | VERSION | DB SIZE | IS LEADER | IS LEARNER | RAFT TERM |"
        " RAFT INDEX | RAFT APPLIED INDEX | ERRORS |\n"
        "+------------------------+------------------+---------+---------+-----------+------------+-----------+"
        "------------+--------------------+--------+\n"
        "| http://127.0.0.1:50367 | 83b24e5e5beeca49 |  3.4.23 |   20 kB |      true |      false |         2 |"
        "          5 |                  5 |        |\n"
        "+------------------------+------------------+---------+---------+-----------+------------+-----------+"
        "------------+--------------------+--------+\n"
    )
    Printer("json").endpoint_status([status()])
    assert out(capfd) == (
        '[{"Endpoint":"http://127.0.0.1:50367","Status":{"header":{"cluster_id":17774489138828215334,'
        '"member_id":9489733531999324745,"revision":2,"raft_term":2},"version":"3.4.23","dbSize":20480,'
        '"leader":9489733531999324745,"raftIndex":5,"raftTerm":2,"raftAppliedIndex":5,"dbSizeInUse":16384}}]\n'
    )
    Printer("fields").endpoint_status([status()])
    assert out(capfd) == (
        '"ClusterID" : 17774489138828215334\n"MemberID" : 9489733531999324745\n"Revision" : 2\n"RaftTerm" : 2\n'
        '"Version" : "3.4.23"\n"DBSize" : 20480\n"Leader" : 9489733531999324745\n"IsLearner" : false\n'
        '"RaftIndex" : 5\n"RaftTerm" : 2\n"RaftAppliedIndex" : 5\n"Errors" : []\n'
        '"Endpoint" : "http://127.0.0.1:50367"\n\n'
    )


def member_list() -> rpc_pb2.MemberListResponse:
    header = rpc_pb2.ResponseHeader(cluster_id=CLUSTER, member_id=MEMBER, raft_term=2)
    member = rpc_pb2.Member(ID=MEMBER, name="default", peerURLs=["http://127.0.0.1:59735"], clientURLs=[EP])
    return rpc_pb2.MemberListResponse(header=header, members=[member])


def test_member_list(capfd: pytest.CaptureFixture[str]) -> None:
    Printer("simple").member_list(member_list())
    assert out(capfd) == f"83b24e5e5beeca49, started, default, http://127.0.0.1:59735, {EP}, false\n"
    Printer("table").member_list(member_list())
    assert out(capfd) == (
        "+------------------+---------+---------+------------------------+------------------------+------------+\n"
        "|        ID        | STATUS  |  NAME   |       PEER ADDRS       |      CLIENT ADDRS      | IS LEARNER |\n"
        "+------------------+---------+---------+------------------------+------------------------+------------+\n"
        "| 83b24e5e5beeca49 | started | default | http://127.0.0.1:59735 | http://127.0.0.1:50367 |      false |\n"
        "+------------------+---------+---------+------------------------+------------------------+------------+\n"
    )
    Printer("json").member_list(member_list())
    assert out(capfd) == (
        '{"header":{"cluster_id":17774489138828215334,"member_id":9489733531999324745,"raft_term":2},'
        '"members":[{"ID":9489733531999324745,"name":"default","peerURLs":["http://127.0.0.1:59735"],'
        '"clientURLs":["http://127.0.0.1:50367"]}]}\n'
    )


def test_get_json_fields_and_binary(capfd: pytest.CaptureFixture[str]) -> None:
    kv = kv_pb2.KeyValue(
        key="ключ".encode(), create_revision=8, mod_revision=8, version=1, value="значение 🚀 ü".encode()
    )
    resp = rpc_pb2.RangeResponse(header=HEADER, kvs=[kv], count=1)
    Printer("json").get(resp)
    assert out(capfd).endswith(
        '"kvs":[{"key":"0LrQu9GO0Yc=","create_revision":8,"mod_revision":8,"version":1,'
        '"value":"0LfQvdCw0YfQtdC90LjQtSDwn5qAIMO8"}],"count":1}\n'
    )
    Printer("fields").get(resp)
    assert '"Key" : "ключ"\n' in out(capfd)
    Printer("simple", is_hex=True).get(rpc_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(key=b"foo", value=b"bar")]))
    assert out(capfd) == "\\x66\\x6f\\x6f\n\\x62\\x61\\x72\n"


def test_lease_and_watch_json(capfd: pytest.CaptureFixture[str]) -> None:
    Printer("json").grant(rpc_pb2.LeaseGrantResponse(header=HEADER, ID=1866977097759752, TTL=300))
    assert out(capfd) == (
        '{"cluster_id":17774489138828215334,"member_id":9489733531999324745,"revision":2,"raft_term":2,'
        '"ID":1866977097759752,"TTL":300,"Error":""}\n'
    )
    expired = rpc_pb2.LeaseTimeToLiveResponse(header=HEADER, ID=5, TTL=-1)
    Printer("json").timetolive(expired, True)
    assert out(capfd).endswith('"id":5,"ttl":-1,"granted-ttl":0,"keys":null}\n')
    Printer("simple").timetolive(expired, False)
    assert out(capfd) == "lease 0000000000000005 already expired\n"
    canceled = rpc_pb2.WatchResponse(
        header=rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, raft_term=2), canceled=True, compact_revision=5
    )
    Printer("json").watch(canceled)
    assert out(capfd) == (
        '{"Header":{"cluster_id":1,"member_id":2,"raft_term":2},"Events":[],"CompactRevision":5,'
        '"Canceled":true,"Created":false}\n'
    )
    delete = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"bar", mod_revision=10))
    Printer("json").watch(rpc_pb2.WatchResponse(header=HEADER, events=[delete]))
    assert '"Events":[{"type":1,"kv":{"key":"YmFy","mod_revision":10}}]' in out(capfd)


def test_txn_json_oneof(capfd: pytest.CaptureFixture[str]) -> None:
    op = rpc_pb2.ResponseOp(response_range=rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=6)))
    Printer("json").txn(rpc_pb2.TxnResponse(header=HEADER, succeeded=True, responses=[op]))
    assert out(capfd).endswith(
        '"succeeded":true,"responses":[{"Response":{"ResponseRange":{"header":{"revision":6}}}}]}\n'
    )


def test_health_and_unsupported(capfd: pytest.CaptureFixture[str]) -> None:
    Printer("table").endpoint_health([EndpointHealth(EP, True, 0.001829863)])
    assert out(capfd).splitlines()[3] == f"| {EP} |   true | 1.829863ms |       |"
    with pytest.raises(CtlError, match="table not supported as output format") as info:
        Printer("table").get(rpc_pb2.RangeResponse())
    assert info.value.code == 4
    with pytest.raises(CtlError, match="unsupported output format"):
        Printer("yaml")


def test_go_primitives() -> None:
    assert go_quote(b'a\x01\xfe"\\\n') == '"a\\x01\\xfe\\"\\\\\\n"'
    assert go_quote("значение 🚀") == '"значение 🚀"'
    assert go_duration(0.001498824) == "1.498824ms"
    assert go_duration(27.964887e-3) == "27.964887ms"
    assert go_duration(90.5) == "1m30.5s"
    assert go_duration(2e-6) == "2µs"
    assert humanize_bytes(20480) == "20 kB" and humanize_bytes(5) == "5 B" and humanize_bytes(1_234_567) == "1.2 MB"
