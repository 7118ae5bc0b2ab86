"""``quorumkv check certs``: the server's TLS flags inspected offline, one table row per certificate (subject,
SANs, usages, validity, issuer, SHA-256 fingerprint), then every problem with its fix.

Exit status: 0 when nothing is wrong (warnings allowed), 1 when a problem would stop the server, 2 for a usage
error (as the server command).
"""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from quorumkv.security.certs import Inspected, describe
from quorumkv.security.settings import check_config

__all__ = ["run_check_certs"]


def _validity(nb: datetime.datetime, na: datetime.datetime, now: datetime.datetime) -> str:
    span = f"{nb:%Y-%m-%d} .. {na:%Y-%m-%d}"
    if now > na:
        return f"[red]{span} EXPIRED[/red]"
    if now < nb:
        return f"[red]{span} NOT YET VALID[/red]"
    return f"{span} ({(na - now).days} days left)"


def run_check_certs(config: Any, console: Console | None = None) -> int:
    console = console or Console(highlight=False, soft_wrap=False)
    now = datetime.datetime.now(datetime.UTC)
    inspected: list[Inspected] = []
    problems = check_config(config, now, inspected)
    if not inspected and not problems:
        console.print("quorumkv: no TLS files configured (give --cert-file/--key-file, --trusted-ca-file, "
                      "--peer-cert-file/--peer-key-file, --peer-trusted-ca-file, --client-crl-file, ...)")
        return 0
    flags: dict[str, list[str]] = {}
    certs: dict[str, Inspected] = {}
    for item in inspected:  # one table per file, listing every flag that names it
        flags.setdefault(item.file, []).append(item.flag)
        certs.setdefault(item.file, item)
    for file, item in certs.items():
        for n, cert in enumerate(item.certs):
            info = describe(cert)
            usages = "CA" if info.is_ca else ", ".join(info.usages) if info.usages is not None else "any (no EKU)"
            title = f"{file}" + (f" (certificate {n + 1} of {len(item.certs)})" if len(item.certs) > 1 else "")
            table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 1))
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            table.add_row("flags", ", ".join(flags[file]))
            table.add_row("subject", info.subject)
            table.add_row("SANs", ", ".join(info.sans) or "-")
            table.add_row("usages", usages)
            table.add_row("validity", _validity(info.not_before, info.not_after, now))
            table.add_row("issuer", info.issuer)
            table.add_row("serial", f"{info.serial:x}")
            table.add_row("SHA-256", info.fingerprint)
            console.print(table)
            console.print()
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        colour = "red" if p.severity == "error" else "yellow"
        console.print(f"[{colour}]{p.severity.upper()}[/{colour}] {p.line()}", markup=True, soft_wrap=True)
    if not problems:
        console.print("[green]OK[/green]: no problems found")
    return 1 if errors else 0
