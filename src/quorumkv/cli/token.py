"""``quorumkv token show|rotate``: the join token of a managed cluster member (docs/ha.md).

``show`` prints ``<data-dir>/token``. ``rotate`` gives the member a new secret (``--new-token``, or a generated
one) and prints the new token: the running member reads its token file for every join, so no restart is needed;
members that already joined keep working (they authenticate with their certificates, never with the token). The
secret is per member: rotate it on every member you will join through (docs/ha.md). A running member re-encrypts
its bootstrap record (the CA in the replicated data, ``/bootstrap/<id>``) with the new secret; a snapshot taken
after that is restored on a new host with the new token. Errors are one
``quorumkv: ...`` line and exit status 1 (2 for bad usage).
"""

from __future__ import annotations

from pathlib import Path

import click

from quorumkv.security import cluster_pki as pki

__all__ = ["main"]

_PROG = "quorumkv token"
_DATA_DIR_HELP = "The member's data dir (default default.quorumkv)."


def _paths(data_dir: str) -> tuple[Path, Path]:
    root = Path(data_dir)
    return root / pki.TOKEN_FILE, root / pki.TLS_DIR / pki.CA_CERT


@click.group(name="token", help="Show or rotate the join token of a managed cluster member.")
def _cli() -> None:
    pass


@_cli.command(help="Print the member's join token (K10<ca hash>::server:<secret>).")
@click.option("--data-dir", default="default.quorumkv", show_default=True, help=_DATA_DIR_HELP)
def show(data_dir: str) -> None:
    token_path, _ = _paths(data_dir)
    if not token_path.exists():
        raise click.ClickException(f"no token in {data_dir} ({token_path} is missing): is it the data dir of a "
                                   "member started with --cluster-init or --server?")
    click.echo(pki.read_token_file(token_path))


@_cli.command(help="Give the member a new join secret; members already in the cluster keep working.")
@click.option("--data-dir", default="default.quorumkv", show_default=True, help=_DATA_DIR_HELP)
@click.option("--new-token", default="", help="The new secret (or a full K10 token); default: generated.")
def rotate(data_dir: str, new_token: str) -> None:
    token_path, ca_path = _paths(data_dir)
    if not ca_path.exists():
        raise click.ClickException(f"{data_dir} has no cluster CA ({ca_path}): it is not a managed cluster member")
    secret = pki.parse_token(new_token).secret if new_token else pki.new_secret()
    token = pki.format_token(ca_path.read_bytes(), secret)
    pki.write_token_file(token_path, token)
    click.echo(token)


def main(argv: list[str]) -> int:
    try:
        _cli.main(argv, prog_name=_PROG, standalone_mode=False)
    except pki.TokenError as exc:
        click.echo(f"quorumkv: {exc}", err=True)
        return 1
    except click.UsageError as exc:
        click.echo(f"quorumkv: {' '.join(exc.format_message().split())}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"quorumkv: {exc.format_message()}", err=True)
        return 1
    except click.Abort:
        return 130
    return 0
