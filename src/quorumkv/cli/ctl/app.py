"""Command framework: etcdctl's (cobra/pflag) grammar, usage texts and error conventions on top of click.

* Global flags are accepted before and after the command name (every leaf command carries them too);
  a flag given on the command line beats ``ETCDCTL_<FLAG>`` which beats the default.
* Bool flags take ``--flag``, ``--flag=true`` and ``--flag=false`` like pflag.
* Flag errors print ``Error: ...`` (twice, like etcdctl), the command's usage on stdout, and exit 1;
  argument errors exit 128, server errors 1 (see :mod:`quorumkv.cli.ctl.session`).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import click

from quorumkv.cli.ctl.gofmt import tabwrite
from quorumkv.cli.ctl.printers import Printer, write_err, write_out
from quorumkv.cli.ctl.session import EXIT_BAD_ARGS, EXIT_ERROR, CtlError, Settings

__all__ = [
    "CtlCommand",
    "CtlGroup",
    "GoFlag",
    "bad_args",
    "command",
    "parse_go_duration",
    "parse_go_int",
    "resolve_settings",
    "root",
]

PROG = "etcdctl"
API_VERSION = "3.4"
VERSION = "3.4.23"


class FlagError(Exception):
    """A pflag parse error (unknown flag, bad value): usage on stdout, exit 1."""


def bad_args(message: str) -> NoReturn:
    raise CtlError(EXIT_BAD_ARGS, message)


# ---------------------------------------------------------------------------------------------- values

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """``time.ParseDuration`` in seconds; raises ValueError with Go's message."""
    body = text
    sign = 1.0
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_RE.match(body, pos)
        if match is None:
            if re.match(r"(\d+(?:\.\d*)?|\.\d+)$", body[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def parse_go_int(text: str, base: int = 10, bits: int = 64, unsigned: bool = False) -> int:
    """``strconv.ParseInt/ParseUint``; raises ValueError with Go's message."""
    func = "strconv.ParseUint" if unsigned else "strconv.ParseInt"
    body = text
    if base == 0:
        raise ValueError("base 0 unsupported")
    valid = re.fullmatch(r"[0-9a-fA-F]+" if base == 16 else r"[0-9]+", body.lstrip("+-") if not unsigned else body)
    if not text or valid is None or (unsigned and text[:1] in "+-"):
        raise ValueError(f'{func}: parsing "{text}": invalid syntax')
    value = int(body, base)
    limit = (1 << bits) - 1 if unsigned else (1 << (bits - 1)) - 1
    if value > limit or (not unsigned and value < -(1 << (bits - 1))):
        raise ValueError(f'{func}: parsing "{text}": value out of range')
    return value


# ---------------------------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class GoFlag:
    """One pflag-style flag: how it parses and how etcdctl's usage text shows it."""

    name: str
    kind: str  # bool | string | int | uint | duration | strings
    default: Any
    help: str
    short: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def display(self) -> str:
        if self.kind == "bool":
            value = f"[={'true' if self.default else 'false'}]"
        elif self.kind == "string":
            value = f'="{self.default}"'
        elif self.kind == "strings":
            value = "=[" + ",".join(self.default) + "]"
        elif self.kind == "duration":
            value = f"={self.default}"
        else:
            value = f"={self.default}"
        prefix = f"  -{self.short}, " if self.short else "      "
        return f"{prefix}--{self.name}{value}"

    def to_option(self, *, for_leaf_global: bool = False) -> click.Option:
        decls = [f"--{self.name}"]
        if self.short:
            decls.append(f"-{self.short}")
        if self.kind == "bool":
            decls = [f"--{self.name}/--no-{self.name}"] + ([f"-{self.short}"] if self.short else [])
            return click.Option([self.dest, *decls], default=None, help=self.help, is_flag=True)
        return click.Option([self.dest, *decls], default=None, help=self.help, type=GoValue(self), multiple=True)

    def convert(self, raw: str) -> Any:
        try:
            if self.kind in ("string", "strings"):
                return raw
            if self.kind == "int":
                return parse_go_int(raw)
            if self.kind == "uint":
                return parse_go_int(raw, unsigned=True)
            if self.kind == "duration":
                return parse_go_duration(raw)
        except ValueError as exc:
            raise FlagError(f'invalid argument "{raw}" for "--{self.name}" flag: {exc}') from None
        raise AssertionError(self.kind)


class GoValue(click.ParamType):  # type: ignore[type-arg]
    name = "value"

    def __init__(self, flag: GoFlag) -> None:
        self.flag = flag

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.flag.convert(value)
        except FlagError as exc:
            raise click.BadParameter(str(exc)) from None


GLOBAL_FLAGS: tuple[GoFlag, ...] = (
    GoFlag("cacert", "string", "", "verify certificates of TLS-enabled secure servers using this CA bundle"),
    GoFlag("cert", "string", "", "identify secure client using this TLS certificate file"),
    GoFlag("command-timeout", "duration", "5s", "timeout for short running command (excluding dial timeout)"),
    GoFlag("debug", "bool", False, "enable client-side debug logging"),
    GoFlag("dial-timeout", "duration", "2s", "dial timeout for client connections"),
    GoFlag(
        "discovery-srv", "string", "", "domain name to query for SRV records describing cluster endpoints", short="d"
    ),
    GoFlag("discovery-srv-name", "string", "", "service name to query when using DNS discovery"),
    GoFlag("endpoints", "strings", ["127.0.0.1:2379"], "gRPC endpoints"),
    GoFlag("hex", "bool", False, "print byte strings as hex encoded strings"),
    GoFlag("insecure-discovery", "bool", True, "accept insecure SRV records describing cluster endpoints"),
    GoFlag(
        "insecure-skip-tls-verify",
        "bool",
        False,
        "skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)",
    ),
    GoFlag("insecure-transport", "bool", True, "disable transport security for client connections"),
    GoFlag("keepalive-time", "duration", "2s", "keepalive time for client connections"),
    GoFlag("keepalive-timeout", "duration", "6s", "keepalive timeout for client connections"),
    GoFlag("key", "string", "", "identify secure client using this TLS key file"),
    GoFlag(
        "password",
        "string",
        "",
        "password for authentication (if this option is used, --user option shouldn't include password)",
    ),
    GoFlag("user", "string", "", "username[:password] for authentication (prompt if password is not supplied)"),
    GoFlag("write-out", "string", "simple", "set the output format (fields, json, protobuf, simple, table)", short="w"),
)
CLUSTER_FLAG = GoFlag("cluster", "bool", False, "use all endpoints from the cluster member list")
_GLOBAL_BY_DEST = {flag.dest: flag for flag in (*GLOBAL_FLAGS, CLUSTER_FLAG)}
#: Every bool flag name of every command (for the ``--flag=true|false`` rewrite).
BOOL_FLAGS: set[str] = {flag.name for flag in GLOBAL_FLAGS if flag.kind == "bool"} | {"cluster", "help"}


def _flag_block(flags: Sequence[GoFlag]) -> str:
    rows = [(flag.display(), flag.help) for flag in sorted(flags, key=lambda f: f.name)]
    return "".join(line + "\n" for line in tabwrite(rows))


# ---------------------------------------------------------------------------------------------- commands


class CtlCommand(click.Command):
    """A leaf command: its own flags plus every global flag, etcdctl usage text and flag errors."""

    def __init__(
        self,
        name: str,
        *,
        path: str,
        short: str,
        usage: str,
        long: str = "",
        flags: Sequence[GoFlag] = (),
        inherited: Sequence[GoFlag] = (),
        **kwargs: Any,
    ) -> None:
        self.go_flags = list(flags)
        self.inherited = list(inherited)
        self.path = path
        self.short = short
        self.usage_line = usage
        self.long = long
        params: list[click.Parameter] = [flag.to_option() for flag in self.go_flags]
        params += [flag.to_option() for flag in (*GLOBAL_FLAGS, *self.inherited)]
        params.append(click.Option(["show_help", "--help", "-h"], is_flag=True, default=False))
        params.append(click.Argument(["args"], nargs=-1, type=click.UNPROCESSED))
        super().__init__(name, params=params, add_help_option=False, short_help=short, **kwargs)
        for flag in self.go_flags:
            if flag.kind == "bool":
                BOOL_FLAGS.add(flag.name)

    def usage_text(self) -> str:
        help_flag = GoFlag("help", "bool", False, f"help for {self.name}", short="h")
        parts = [f"NAME:\n\t{self.path} - {self.short}\n\nUSAGE:\n\t{PROG} {self.usage_line} [flags]\n\n"]
        if self.long:
            parts.append("DESCRIPTION:\n" + "".join(f"\t{line}\n" for line in self.long.split("\n")) + "\n")
        parts.append("OPTIONS:\n" + _flag_block([*self.go_flags, help_flag]) + "\n")
        parts.append("GLOBAL OPTIONS:\n" + _flag_block([*GLOBAL_FLAGS, *self.inherited]) + "\n")
        return "".join(parts)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            name = exc.option_name
            if name.startswith("--"):
                message = f"unknown flag: {name}"
            else:
                message = f"unknown shorthand flag: '{name[1:2]}' in {name}"
            self.flag_failure(message)
        except click.BadParameter as exc:
            self.flag_failure(exc.message)
        except click.BadOptionUsage as exc:
            opt = exc.option_name
            self.flag_failure(f"flag needs an argument: {opt}")
        except click.UsageError as exc:
            self.flag_failure(exc.message)

    def flag_failure(self, message: str) -> NoReturn:
        write_err(f"Error: {message}\n")
        write_out(self.usage_text())
        write_err("\n")
        raise CtlError(EXIT_ERROR, message)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.params.get("show_help"):
            write_out(self.usage_text())
            return None
        return super().invoke(ctx)


class PrefixGroup(click.Group):
    """cobra.EnablePrefixMatching, as etcdctl sets it: a unique prefix names a command (``compact``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or not cmd_name:
            return found
        matches = [name for name in self.list_commands(ctx) if name.startswith(cmd_name)]
        return super().get_command(ctx, matches[0]) if len(matches) == 1 else None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd is not None else name), cmd, rest


class CtlGroup(PrefixGroup):
    """A command group (``lease``, ``member``, ...): unknown subcommands and bare use print like cobra."""

    def __init__(self, name: str, *, path: str, short: str, usage: str, long: str = "", **kwargs: Any) -> None:
        self.path = path
        self.short = short
        self.usage_line = usage
        self.long = long
        super().__init__(name, add_help_option=False, invoke_without_command=True, no_args_is_help=False, **kwargs)

    def usage_text(self) -> str:
        commands = [(name, cmd.short_help or "") for name, cmd in sorted(self.commands.items()) if not cmd.hidden]
        # tabwriter: the names' column is the longest name plus one, rounded up to a tab stop
        width = (max((len(name) for name, _ in commands), default=0) + 1 + 7) // 8 * 8
        listing = "".join(f"\t{name}{chr(9) * max(1, -(-(width - len(name)) // 8))}{text}\n" for name, text in commands)
        help_flag = GoFlag("help", "bool", False, f"help for {self.name}", short="h")
        description = ("DESCRIPTION:\n" + "".join(f"\t{line}\n" for line in self.long.split("\n")) + "\n"
                       if self.long else "")
        return (
            f"NAME:\n\t{self.path} - {self.short}\n\nUSAGE:\n\t{PROG} {self.usage_line} [flags]\n\n"
            f"API VERSION:\n\t{API_VERSION}\n\n\nCOMMANDS:\n{listing}\n{description}"
            f"OPTIONS:\n{_flag_block([help_flag])}\nGLOBAL OPTIONS:\n{_flag_block(GLOBAL_FLAGS)}\n"
        )

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in ("-h", "--help"):  # cobra: a group's own help
            write_out(self.usage_text())
            raise CtlError(-1, "")
        return super().parse_args(ctx, args)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and self.get_command(ctx, name) is None and not name.startswith("-"):
            write_out(self.usage_text())
            raise CtlError(-1, "")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        if not ctx.protected_args and not ctx.args:
            write_out(self.usage_text())
            return None
        return super().invoke(ctx)


def _command_listing(rows: Sequence[tuple[str, str]]) -> str:
    """cobra's command list: a tab, the name, tabs up to a common tab stop, the short help."""
    # the leading tab is a column of its own: the names' column is the longest name plus one, rounded up to a
    # tab stop, and each name is padded to it with tabs
    width = max((len(name) for name, _ in rows), default=0) + 1
    width = (width + 7) // 8 * 8
    return "".join(f"\t{name}{chr(9) * max(1, -(-(width - len(name)) // 8))}{text}\n" for name, text in rows)


class RootGroup(PrefixGroup):
    def usage_text(self, ctx: click.Context) -> str:
        """``etcdctl --help``: every command (a group's subcommands as "group sub") and the global flags."""
        rows: list[tuple[str, str]] = []
        for name, cmd in self.commands.items():
            if isinstance(cmd, click.Group):
                rows.extend((f"{name} {sub}", sub_cmd.short_help or "") for sub, sub_cmd in cmd.commands.items()
                            if not sub_cmd.hidden)
            else:
                rows.append((name, cmd.short_help or ""))
        help_flag = GoFlag("help", "bool", False, f"help for {PROG}", short="h")
        return (
            f"NAME:\n\t{PROG} - A simple command line client for etcd3.\n\nUSAGE:\n\t{PROG} [flags]\n\n"
            f"VERSION:\n\t{VERSION}\n\nAPI VERSION:\n\t{API_VERSION}\n\n\nCOMMANDS:\n{_command_listing(sorted(rows))}\n"
            f"OPTIONS:\n{_flag_block([*GLOBAL_FLAGS, help_flag])}\n"
        )

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and self.get_command(ctx, name) is None:
            message = f'unknown command "{name}" for "{PROG}"'
            write_err(f"Error: {message}\nRun '{PROG} --help' for usage.\n")
            raise CtlError(EXIT_ERROR, message)
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if exc.option_name in ("-h", "--help"):
                write_out(self.usage_text(ctx))
                raise CtlError(-1, "") from None
            # as etcdctl 3.4: cobra's error line and a blank line, the usage on stdout, then etcdctl's own line
            message = f"unknown flag: {exc.option_name}"
            write_err(f"Error: {message}\n\n")
            write_out(self.usage_text(ctx))
            raise CtlError(EXIT_ERROR, message) from None
        except click.BadParameter as exc:
            write_err(f"Error: {exc.message}\n")
            raise CtlError(EXIT_ERROR, exc.message) from None


root = RootGroup(
    "etcdctl",
    params=[flag.to_option() for flag in GLOBAL_FLAGS],
    add_help_option=False,
    context_settings={"allow_interspersed_args": False},
)


def command(
    parent: click.Group,
    name: str,
    *,
    short: str,
    usage: str,
    long: str = "",
    flags: Sequence[GoFlag] = (),
    inherited: Sequence[GoFlag] = (),
) -> Callable[[Callable[..., None]], CtlCommand]:
    """Register ``func(settings, args, **flags)`` as an etcdctl command under ``parent``."""

    def decorate(func: Callable[..., None]) -> CtlCommand:
        path = name if parent is root else f"{parent.name} {name}"

        def callback(**params: Any) -> None:
            ctx = click.get_current_context()
            settings = resolve_settings(ctx)
            local: dict[str, Any] = {}
            for flag in flags:
                value = params.get(flag.dest)
                if flag.kind == "bool":
                    local[flag.dest] = flag.default if value is None else value
                else:
                    given = list(value or ())
                    local[flag.dest] = given[-1] if given else _default_value(flag)
            func(settings, list(params.get("args") or ()), **local)

        cmd = CtlCommand(
            name,
            path=path,
            short=short,
            usage=usage,
            long=long,
            flags=flags,
            inherited=inherited,
            callback=callback,
        )
        parent.add_command(cmd)
        return cmd

    return decorate


def group(parent: click.Group, name: str, *, short: str, usage: str, long: str = "") -> CtlGroup:
    grp = CtlGroup(name, path=name, short=short, usage=usage, long=long)
    parent.add_command(grp)
    return grp


def _default_value(flag: GoFlag) -> Any:
    if flag.kind in ("string", "strings", "bool"):
        return flag.default
    return flag.convert(str(flag.default))


# ---------------------------------------------------------------------------------------------- settings

_KNOWN_ENV = {f"ETCDCTL_{flag.dest.upper()}" for flag in GLOBAL_FLAGS} | {"ETCDCTL_API"}


def _env_value(flag: GoFlag, raw: str) -> Any:
    if flag.kind == "bool":
        return raw.strip().lower() in ("1", "t", "true")
    if flag.kind == "strings":
        return [item for item in raw.split(",") if item]
    try:
        return flag.convert(raw)
    except FlagError as exc:
        raise CtlError(EXIT_ERROR, f"invalid value {raw!r} for ETCDCTL_{flag.dest.upper()}: {exc}") from None


def warn_unknown_env() -> None:
    for key, value in sorted(os.environ.items()):
        if key.startswith("ETCDCTL_") and key not in _KNOWN_ENV:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S") + f".{int(time.time() % 1 * 1e6):06d}"
            write_err(f"{stamp} W | pkg/flags: unrecognized environment variable {key}={value}\n")


def _given(ctx: click.Context | None, dest: str) -> Any:
    """The value of global flag ``dest`` if it was given on the command line at ``ctx``'s level."""
    if ctx is None or dest not in ctx.params:
        return None
    if ctx.get_parameter_source(dest) != click.core.ParameterSource.COMMANDLINE:
        return None
    value = ctx.params[dest]
    flag = _GLOBAL_BY_DEST[dest]
    if flag.kind == "bool":
        return value
    values = list(value or ())
    if not values:
        return None
    if flag.kind == "strings":
        items: list[str] = []
        for raw in values:
            items.extend(item for item in raw.split(",") if item)
        return items
    return values[-1]


def resolve_settings(ctx: click.Context) -> Settings:
    """Command line (leaf, then root) beats ``ETCDCTL_*`` beats etcdctl's default."""
    contexts = []
    walk: click.Context | None = ctx
    while walk is not None:
        contexts.append(walk)
        walk = walk.parent
    settings = Settings()
    for flag in (*GLOBAL_FLAGS, CLUSTER_FLAG):
        value: Any = None
        for level in contexts:
            value = _given(level, flag.dest)
            if value is not None:
                break
        if value is None:
            raw = os.environ.get(f"ETCDCTL_{flag.dest.upper()}")
            if raw is not None and flag is not CLUSTER_FLAG:
                value = _env_value(flag, raw)
        if value is None:
            value = _default_value(flag)
        if hasattr(settings, flag.dest):
            setattr(settings, flag.dest, value)
    if settings.user and ":" not in settings.user and not settings.password:
        pass
    return settings


def printer(settings: Settings, value_only: bool = False) -> Printer:
    return Printer(settings.write_out, settings.hex, value_only)


# ---------------------------------------------------------------------------------------------- main

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


def _rewrite_bools(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[index:])
            break
        name, sep, value = arg.partition("=")
        if sep and name.startswith("--") and name[2:] in BOOL_FLAGS:
            if value in _TRUE:
                out.append(name)
                continue
            if value in _FALSE:
                out.append(f"--no-{name[2:]}")
                continue
        out.append(arg)
    return out


class Registry:
    """Imports the command modules once (they register themselves on :data:`root`)."""

    loaded: ClassVar[bool] = False

    @classmethod
    def load(cls) -> None:
        if cls.loaded:
            return
        from quorumkv.cli.ctl import (  # noqa: F401
            auth,
            check,
            cluster,
            completion,
            kv,
            lease,
            lock,
            maintenance,
            mirror,
            watch,
        )

        cls.loaded = True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``quorumkvctl``; returns the exit status (``sys.exit`` it)."""
    Registry.load()
    from quorumkv.cli.ctl.completion import complete, requested

    instruction = requested()
    if instruction is not None:  # a call from a completion script (``completion bash|zsh|fish``)
        return complete(instruction)
    args = list(sys.argv[1:] if argv is None else argv)
    warn_unknown_env()
    try:
        root.main(args=_rewrite_bools(args), prog_name=PROG, standalone_mode=False)
    except CtlError as exc:
        sys.stdout.flush()
        if exc.code == -1:
            return 0
        if exc.message:
            write_err(f"Error: {exc.message}\n")
        return exc.code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        write_err(f"Error: {exc.format_message()}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            pass
    return 0
