"""Global flags: command line (before or after the command) beats ETCDCTL_* beats etcdctl's defaults."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from quorumkv.cli.ctl import kv
from quorumkv.cli.ctl.app import main, parse_go_duration, parse_go_int
from quorumkv.cli.ctl.session import CtlError, Settings


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    seen: list[Settings] = []

    class FakeSession:
        def __init__(self, settings: Settings, endpoint: str | None = None) -> None:
            seen.append(settings)
            raise CtlError(99, "")

    monkeypatch.setattr(kv, "Session", FakeSession)
    for key in list(__import__("os").environ):
        if key.startswith("ETCDCTL_"):
            monkeypatch.delenv(key)
    return seen


def run(*argv: str) -> int:
    return main(list(argv))


def test_defaults(captured: list[Settings]) -> None:
    assert run("get", "foo") == 99
    settings = captured[-1]
    assert settings.endpoints == ["127.0.0.1:2379"]
    assert (settings.dial_timeout, settings.command_timeout) == (2.0, 5.0)
    assert (settings.keepalive_time, settings.keepalive_timeout) == (2.0, 6.0)
    assert settings.write_out == "simple" and not settings.hex and settings.insecure_transport


def test_env_then_flag(captured: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "127.0.0.1:1,127.0.0.1:2")
    monkeypatch.setenv("ETCDCTL_WRITE_OUT", "json")
    monkeypatch.setenv("ETCDCTL_DIAL_TIMEOUT", "750ms")
    monkeypatch.setenv("ETCDCTL_HEX", "true")
    run("get", "foo")
    settings = captured[-1]
    assert settings.endpoints == ["127.0.0.1:1", "127.0.0.1:2"]
    assert settings.write_out == "json" and settings.dial_timeout == 0.75 and settings.hex
    # a flag beats the environment, before or after the command name
    run("--endpoints=127.0.0.1:9", "get", "foo", "-w", "fields", "--hex=false")
    settings = captured[-1]
    assert settings.endpoints == ["127.0.0.1:9"] and settings.write_out == "fields" and not settings.hex
    run("get", "foo", "--dial-timeout", "1m30s", "--command-timeout=250ms")
    assert (captured[-1].dial_timeout, captured[-1].command_timeout) == (90.0, 0.25)


def test_leaf_flag_beats_root_flag(captured: list[Settings]) -> None:
    run("-w", "json", "get", "foo", "-w", "fields")
    assert captured[-1].write_out == "fields"


def test_flag_errors(capfd: pytest.CaptureFixture[str], captured: list[Settings]) -> None:
    assert run("get", "foo", "--rev", "abc") == 1
    out, err = capfd.readouterr()
    message = 'invalid argument "abc" for "--rev" flag: strconv.ParseInt: parsing "abc": invalid syntax'
    assert err == f"Error: {message}\n\nError: {message}\n"
    assert out.startswith("NAME:\n\tget - Gets the key or a range of keys\n")
    assert run("bogus") == 1
    _, err = capfd.readouterr()
    assert err.startswith('Error: unknown command "bogus" for "etcdctl"\n')
    assert run("get") == 128
    _, err = capfd.readouterr()
    assert err == "Error: get command needs one argument as key and an optional argument as range_end\n"


def test_go_parsers() -> None:
    assert parse_go_duration("2s") == 2.0 and parse_go_duration("1h2m") == 3720.0
    with pytest.raises(ValueError, match='time: invalid duration "x"'):
        parse_go_duration("x")
    assert parse_go_int("ff", base=16) == 255
    with pytest.raises(ValueError, match=r'strconv\.ParseInt: parsing "z": invalid syntax'):
        parse_go_int("z")


def _etcdctl(args: list[str]) -> subprocess.CompletedProcess[str]:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        pytest.skip("etcdctl 3.4 is not installed (scripts/test.sh installs it)")
    return subprocess.run([etcdctl, *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "ETCDCTL_API": "3"})


def test_root_help_and_unknown_root_flag_as_etcdctl(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    ours_help, err = capfd.readouterr()
    assert err == ""
    real_help = _etcdctl(["--help"])
    assert real_help.returncode == 0
    # the same header and flag block; our command list is etcdctl's minus what quorumkvctl does not have
    assert ours_help.split("COMMANDS:")[0] == real_help.stdout.split("COMMANDS:")[0]
    assert ours_help.split("OPTIONS:")[1] == real_help.stdout.split("OPTIONS:")[1]

    def listing(text: str) -> dict[str, str]:
        block = text.split("COMMANDS:\n")[1].split("\n\nOPTIONS:")[0]
        return {name: short.strip("\t") for name, short in
                (line.strip("\t").split("\t", 1) for line in block.splitlines())}

    ours, real = listing(ours_help), listing(real_help.stdout)
    assert {"get", "put", "member add", "move-leader", "snapshot save", "check perf"} <= ours.keys()
    assert {name: real.get(name) for name in ours} == ours  # same command names, same one-line help

    assert main(["--no-such-flag"]) == 1
    out, err = capfd.readouterr()
    real_bad = _etcdctl(["--no-such-flag"])
    assert (real_bad.returncode, err) == (1, real_bad.stderr)  # the error line twice, a blank line between
    assert out == ours_help and real_bad.stdout == real_help.stdout  # and the usage on stdout
