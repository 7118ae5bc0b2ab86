"""quorumkvctl's session over quorumkv.client: etcdctl 3.4's error texts from the client's typed errors, and the
dial timeout."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from quorumkv.cli.ctl.app import main
from quorumkv.cli.ctl.session import error_text, raw_error_text
from quorumkv.client._errors import error_for, from_rpc_error


@pytest.mark.parametrize(
    ("code", "details", "text"),
    [
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", "context deadline exceeded"),
        ("DEADLINE_EXCEEDED", "Range: client timeout passed after 0 retries", "context deadline exceeded"),
        ("CANCELLED", "Locally cancelled by application!", "context canceled"),
        ("NOT_FOUND", "etcdserver: requested lease not found", "etcdserver: requested lease not found"),
        ("UNAVAILABLE", "failed to connect to all addresses", "rpc error: code = Unavailable desc = failed to connect "
                                                              "to all addresses"),
        ("CANCELLED", "stream reset", "rpc error: code = Canceled desc = stream reset"),
    ],
)
def test_error_text(code: str, details: str, text: str) -> None:
    assert error_text(error_for(code, details)) == text


class _FakeRpcError(Exception):
    def __init__(self, code: object, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> object:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_status_without_message_keeps_an_empty_desc() -> None:
    err = from_rpc_error(_FakeRpcError(grpc.StatusCode.INTERNAL, ""))
    assert error_text(err) == "rpc error: code = Internal desc = "
    assert raw_error_text(err) == "rpc error: code = Internal desc = "


def test_raw_text_for_a_deadline() -> None:
    assert raw_error_text(error_for("DEADLINE_EXCEEDED", "Deadline Exceeded")) == (
        "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
    )


def test_dial_timeout_is_context_deadline_exceeded(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    code = main([f"--endpoints=127.0.0.1:{port}", "--dial-timeout=400ms", "get", "k"])
    took = time.monotonic() - started
    assert code == 1
    assert capsys.readouterr().err == "Error: context deadline exceeded\n"
    assert 0.3 < took < 3.0


def test_tls_file_errors_are_etcdctls(capsys: pytest.CaptureFixture[str]) -> None:
    """Texts and exit code captured from etcdctl 3.4.23 (before this, --cert alone aborted inside gRPC)."""
    assert main(["--endpoints=127.0.0.1:1", "--cert=/etc/hostname", "get", "k"]) == 128
    assert capsys.readouterr().err == "Error: KeyFile and CertFile must both be present[key: , cert: /etc/hostname]\n"
    assert main(["--endpoints=127.0.0.1:1", "--key=/etc/hostname", "get", "k"]) == 128
    assert capsys.readouterr().err == "Error: KeyFile and CertFile must both be present[key: /etc/hostname, cert: ]\n"
    assert main(["--endpoints=127.0.0.1:1", "--cacert=/nonexistent/ca.pem", "get", "k"]) == 128
    assert capsys.readouterr().err == "Error: open /nonexistent/ca.pem: no such file or directory\n"
