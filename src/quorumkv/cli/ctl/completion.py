"""``completion bash|zsh|fish|powershell``: shell completion scripts (click's), as etcdctl 3.4's ``completion``
prints cobra's.

The script calls ``quorumkvctl`` back with :data:`COMPLETE_VAR` set (``bash_complete``, ``zsh_complete``, ...);
:func:`complete` answers those calls with the command names and flags that fit the words typed so far.
PowerShell needs click 8.2 or later; with an older click, ``completion powershell`` is refused with one line.
"""

from __future__ import annotations

import contextlib
import io
import os

import click
from click.shell_completion import get_completion_class, shell_complete

from quorumkv.cli.ctl.app import bad_args, command, group, root
from quorumkv.cli.ctl.printers import write_out
from quorumkv.cli.ctl.session import EXIT_BAD_FEATURE, CtlError, Settings

__all__ = ["COMPLETE_VAR", "PROG_NAME", "complete", "completion_script"]

#: The command the scripts complete and call back (the console script's name).
PROG_NAME = "quorumkvctl"
#: The environment variable that turns a call into a completion request.
COMPLETE_VAR = "_QUORUMKVCTL_COMPLETE"

completion_group = group(root, "completion", short="Generate the autocompletion script for the specified shell",
                         usage="completion",
                         long="Generate the autocompletion script for quorumkvctl for the specified shell.\n"
                              "See each sub-command's help for details on how to use the generated script.")


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    cls = get_completion_class(shell)
    if cls is None:
        raise CtlError(EXIT_BAD_FEATURE, f"completion for {shell} is not available in quorumkvctl (bash, fish, zsh)")
    return cls(root, {}, PROG_NAME, COMPLETE_VAR).source()


def complete(instruction: str) -> int:
    """Answer one completion call from a script (``instruction`` is the value of :data:`COMPLETE_VAR`).

    Words that name no command complete to nothing: the usage and error lines the commands print for them are
    kept out of the answer (the shell would offer them as completions)."""
    shell, _, action = instruction.partition("_")
    cls = get_completion_class(shell)
    if cls is None or action != "complete":
        return shell_complete(root, {}, PROG_NAME, COMPLETE_VAR, instruction)
    quiet = io.TextIOWrapper(io.BytesIO())
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            answer = cls(root, {}, PROG_NAME, COMPLETE_VAR).complete()
    except (CtlError, click.ClickException):
        return 1
    write_out(answer)
    return 0


def _long(shell: str, load: str, persist: str) -> str:
    return (f"Generate the autocompletion script for the {shell} shell.\n\nTo load completions in your current "
            f"shell session:\n\n\t{load}\n\nTo load completions for every new session, execute once:\n\n"
            f"\t{persist}\n\nYou will need to start a new shell for this setup to take effect.")


def _emit(shell: str, args: list[str]) -> None:
    if args:
        bad_args(f"completion {shell} takes no arguments")
    script = completion_script(shell)
    write_out(script if script.endswith("\n") else script + "\n")


@command(completion_group, "bash", short="Generate the autocompletion script for bash", usage="completion bash",
         long=_long("bash", "source <(quorumkvctl completion bash)",
                    "quorumkvctl completion bash > /etc/bash_completion.d/quorumkvctl"))
def completion_bash_cmd(settings: Settings, args: list[str]) -> None:
    _emit("bash", args)


@command(completion_group, "zsh", short="Generate the autocompletion script for zsh", usage="completion zsh",
         long=_long("zsh", "source <(quorumkvctl completion zsh)",
                    'quorumkvctl completion zsh > "${fpath[1]}/_quorumkvctl"'))
def completion_zsh_cmd(settings: Settings, args: list[str]) -> None:
    _emit("zsh", args)


@command(completion_group, "fish", short="Generate the autocompletion script for fish", usage="completion fish",
         long=_long("fish", "quorumkvctl completion fish | source",
                    "quorumkvctl completion fish > ~/.config/fish/completions/quorumkvctl.fish"))
def completion_fish_cmd(settings: Settings, args: list[str]) -> None:
    _emit("fish", args)


@command(completion_group, "powershell", short="Generate the autocompletion script for powershell",
         usage="completion powershell")
def completion_powershell_cmd(settings: Settings, args: list[str]) -> None:
    _emit("powershell", args)


def requested() -> str | None:
    """The completion instruction of this call, if the shell's script made it."""
    value = os.environ.get(COMPLETE_VAR)
    return value or None
