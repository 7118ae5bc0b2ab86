"""``quorumkv`` server entry point: etcd 3.4's command line, so operators can swap the binary and keep flags.

Invariants: every flag in :data:`~quorumkv.server.config_sources.FLAG_SPECS` (and the etcd 3.4 flags in
``COMPAT_FLAGS``) is accepted as ``--flag value``, ``--flag=value`` and Go's single-dash ``-flag``; a usage or
configuration error prints exactly one ``quorumkv: ...`` line on stderr and returns 2, never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import click

import quorumkv
from quorumkv.server.config import ConfigError, ServerConfig
from quorumkv.server.config_sources import COMPAT_FLAGS, FLAG_SPECS, load_config

__all__ = ["EXIT_USAGE", "Runner", "main", "version_text"]

Runner = Callable[[ServerConfig], int]

#: Exit status for an unknown flag, a bad value or an invalid configuration.
EXIT_USAGE = 2

_PROG = "quorumkv"
_BOOL_FLAGS = frozenset(
    [s.flag for s in FLAG_SPECS if s.kind == "bool"] + [c.flag for c in COMPAT_FLAGS if c.is_bool]
)
_VALUE_FLAGS = frozenset(
    [s.flag for s in FLAG_SPECS if s.kind != "bool"]
    + [c.flag for c in COMPAT_FLAGS if not c.is_bool]
    + ["config-file"]
)
_ALL_FLAGS = sorted(_BOOL_FLAGS | _VALUE_FLAGS | {"version", "help"})


def version_text() -> str:
    """The ``--version`` output, modelled on ``etcd --version`` (one ``Key: value`` per line)."""
    return "\n".join(
        [
            f"quorumkv Version: {quorumkv.__version__}",
            f"etcd API Version: {quorumkv.ETCD_COMPAT_VERSION}",
            f"Python Version: {platform.python_version()}",
            f"Python OS/Arch: {sys.platform}/{platform.machine()}",
        ]
    )


def _option(flag: str, *, is_bool: bool, help_: str, hidden: bool = False) -> click.Option:
    """A string-valued option; a boolean may be bare (``--auto-tls``) or valued (``--auto-tls=false``)."""
    if is_bool:
        return click.Option(
            ["--" + flag], type=str, is_flag=False, flag_value="true", default=None, help=help_, hidden=hidden
        )
    return click.Option(["--" + flag], type=str, default=None, help=help_, hidden=hidden, metavar="VALUE")


def _build_command() -> click.Command:
    params: list[click.Parameter] = [
        click.Option(["--version"], is_flag=True, default=False, help="Print the version and exit."),
        click.Option(
            ["--config-file"],
            type=str,
            default=None,
            metavar="FILE",
            help="Path to the server configuration file. Note that if a configuration file is provided, "
            "other command line flags and environment variables will be ignored.",
        ),
    ]
    for spec in FLAG_SPECS:
        default = spec.default_text or "''"
        params.append(
            _option(spec.flag, is_bool=spec.kind == "bool", help_=f"{spec.help} [default: {default}]")
        )
    for compat in COMPAT_FLAGS:
        params.append(_option(compat.flag, is_bool=compat.is_bool, help_="etcd 3.4 flag", hidden=True))
    params.append(click.Argument(["extra_args"], nargs=-1, type=click.UNPROCESSED))

    def callback(**values: Any) -> dict[str, Any]:
        return values

    return click.Command(
        _PROG,
        params=params,
        callback=callback,
        help="Start a quorumkv server (etcd 3.4 compatible flags). "
        "Snapshots: 'quorumkv etcd-snapshot --help' (save, ls, delete, prune). "
        "Join tokens: 'quorumkv token --help' (show, rotate).",
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    )


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite Go-style ``-flag[=v]`` to ``--flag[=v]`` where ``flag`` is known, leaving flag values alone."""
    out: list[str] = []
    expect_value = False
    for i, arg in enumerate(argv):
        if expect_value:
            out.append(arg)
            expect_value = False
            continue
        if arg == "--":
            out.extend(argv[i:])
            break
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and not arg.startswith("--") and name in _ALL_FLAGS:
            arg = "-" + arg
        if arg.startswith("--") and "=" not in arg:
            if name in _VALUE_FLAGS:
                expect_value = True
            elif name in _BOOL_FLAGS and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                expect_value = True  # click reads `--auto-tls false` as a value, so must we
        out.append(arg)
    return out


#: Flags earlier releases accepted, with what to do instead.
REMOVED_FLAGS = {
    "--experimental-apply-process": "removed in quorumkv 0.2 (it did not pay, docs/performance.md); for isolation "
                                    "from a busy host embed quorumkv in child-process mode (docs/embedding.md)",
}


def _usage_message(exc: click.ClickException) -> str:
    """One line for a click parse error, in etcd's vocabulary ("unknown flag", "flag needs an argument")."""
    if isinstance(exc, click.NoSuchOption):
        name = exc.option_name
        if name in REMOVED_FLAGS:
            return f"unknown flag: {name} ({REMOVED_FLAGS[name]})"
        close = difflib.get_close_matches(name.lstrip("-"), _ALL_FLAGS, n=1, cutoff=0.7)
        hint = f"did you mean --{close[0]}?" if close else f"run '{_PROG} --help' to list flags"
        return f"unknown flag: {name} ({hint})"
    if isinstance(exc, click.BadOptionUsage) and "requires an argument" in exc.format_message():
        return f"flag needs an argument: {exc.option_name} (use {exc.option_name}=VALUE)"
    return " ".join(exc.format_message().split())


def _tls_file_error(config: ServerConfig) -> str | None:
    """The first problem that stops the server among the configured TLS files (warnings are printed)."""
    from quorumkv.security.settings import check_config

    if config.peer_auto_tls and not config.peer_cert_file:
        return ("--peer-auto-tls is not supported: etcd's peers then dial without verifying each other, which "
                "grpcio cannot do; make a CA and peer certificates (docs/security.md) and give --peer-cert-file, "
                "--peer-key-file and --peer-trusted-ca-file")
    problems = check_config(config)
    for p in problems:
        if p.severity == "warning":
            click.echo(f"{_PROG}: warning: {p.line()}", err=True)
    errors = [p for p in problems if p.severity == "error"]
    return f"{errors[0].line()} (run '{_PROG} check certs' with the same flags for details)" if errors else None


def _default_runner(config: ServerConfig) -> int:
    """Start the real server; imported lazily because the runtime is heavy and owned by another module."""
    module = importlib.import_module("quorumkv.app")
    run_server = cast(Runner, module.run_server)
    return run_server(config)


def main(
    argv: list[str] | None = None,
    *,
    runner: Runner | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and the environment, validate, return ``runner(config)``.

    Returns 0 after ``--version``/``--help``, :data:`EXIT_USAGE` on any flag or configuration error.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "etcd-snapshot":  # K3s's subcommand; the server's own flags are untouched
        from quorumkv.cli.etcd_snapshot import main as etcd_snapshot_main

        return etcd_snapshot_main(args[1:])
    if args and args[0] == "token":  # K3s's ``token show|rotate``
        from quorumkv.cli.token import main as token_main

        return token_main(args[1:])
    if args and args[0] == "robustness":  # ``quorumkv robustness run|check|record`` (docs/reliability.md)
        from quorumkv.cli.robustness import main as robustness_main

        return robustness_main(args[1:])
    check_certs = args[:2] == ["check", "certs"]  # ``quorumkv check certs [server TLS flags]``
    if check_certs:
        args = args[2:]
    command = _build_command()
    try:
        result = command.main(_normalize_argv(args), prog_name=_PROG, standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"{_PROG}: {_usage_message(exc)}", err=True)
        return EXIT_USAGE
    except click.Abort:
        return 130
    if not isinstance(result, dict):  # --help (click already printed it) or click's own exit
        return result if isinstance(result, int) else 0
    if result.pop("version"):
        click.echo(version_text())
        return 0
    extra: tuple[str, ...] = result.pop("extra_args")
    if extra:
        click.echo(
            f"{_PROG}: '{extra[0]}' is not a valid flag (flags look like --name=value; "
            f"booleans take --flag or --flag=false)",
            err=True,
        )
        return EXIT_USAGE
    flags = {name.replace("_", "-"): value for name, value in result.items() if value is not None}
    try:
        loaded = load_config(flags, os.environ if environ is None else environ)
    except ConfigError as exc:
        click.echo(f"{_PROG}: {exc.message}", err=True)
        return EXIT_USAGE
    for warning in loaded.warnings:
        click.echo(f"{_PROG}: warning: {warning}", err=True)
    if check_certs:
        from quorumkv.cli.check_certs import run_check_certs
        return run_check_certs(loaded.config)
    if runner is None and (tls_error := _tls_file_error(loaded.config)):
        click.echo(f"{_PROG}: {tls_error}", err=True)
        return EXIT_USAGE
    if runner is not None:
        return runner(loaded.config)
    if loaded.config.cipher_suites:  # gRPC reads its cipher list once, when first imported: set it before
        from quorumkv.security.ciphers import openssl_names

        os.environ["GRPC_SSL_CIPHER_SUITES"] = ":".join(openssl_names(loaded.config.cipher_suites))
    try:
        return _default_runner(loaded.config)
    except ModuleNotFoundError as exc:
        if exc.name != "quorumkv.app":
            raise
        click.echo(f"{_PROG}: the server runtime (quorumkv.app) is not part of this build", err=True)
        return 1
