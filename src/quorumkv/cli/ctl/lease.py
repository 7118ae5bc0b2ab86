"""``lease grant|revoke|timetolive|list|keep-alive``."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator

from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.cli.ctl.app import GoFlag, bad_args, command, group, parse_go_int, printer, root
from quorumkv.cli.ctl.printers import write_out
from quorumkv.cli.ctl.session import EXIT_BAD_CONNECTION, EXIT_ERROR, CtlError, Session, Settings, error_text
from quorumkv.client import EtcdError

__all__ = ["lease_group"]

LEASE_NOT_FOUND = "etcdserver: requested lease not found"

lease_group = group(root, "lease", short="Lease related commands", usage="lease <subcommand>")


def lease_from_arg(arg: str) -> int:
    try:
        return parse_go_int(arg, base=16)
    except ValueError as exc:
        bad_args(f"bad lease ID arg ({exc}), expecting ID in Hex")


@command(lease_group, "grant", short="Creates leases", usage="lease grant <ttl>")
def grant_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        bad_args("lease grant command needs TTL argument")
    try:
        ttl = parse_go_int(args[0])
    except ValueError as exc:
        bad_args(f"bad TTL ({exc})")
    with Session(settings) as session:
        try:
            resp = session.call("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl))
        except CtlError as exc:
            raise CtlError(EXIT_ERROR, f"failed to grant lease ({exc.message})") from None
    printer(settings).grant(resp)


@command(lease_group, "revoke", short="Revokes leases", usage="lease revoke <leaseID>")
def revoke_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        bad_args("lease revoke command needs 1 argument")
    lease_id = lease_from_arg(args[0])
    with Session(settings) as session:
        try:
            resp = session.call("Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        except CtlError as exc:
            raise CtlError(EXIT_ERROR, f"failed to revoke lease ({exc.message})") from None
    printer(settings).revoke(lease_id, resp)


@command(
    lease_group,
    "timetolive",
    short="Get lease information",
    usage="lease timetolive <leaseID> [options]",
    flags=(GoFlag("keys", "bool", False, "Get keys attached to this lease"),),
)
def timetolive_cmd(settings: Settings, args: list[str], keys: bool) -> None:
    if len(args) != 1:
        bad_args("lease timetolive command needs lease ID as argument")
    lease_id = lease_from_arg(args[0])
    with Session(settings) as session:
        try:
            resp = session.call("Lease", "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys),
                                idempotent=True)
        except CtlError as exc:
            raise CtlError(EXIT_BAD_CONNECTION, exc.message) from None
    printer(settings).timetolive(resp, keys)


@command(lease_group, "list", short="List all active leases", usage="lease list")
def list_cmd(settings: Settings, args: list[str]) -> None:
    with Session(settings) as session:
        try:
            resp = session.call("Lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest(), idempotent=True)
        except CtlError as exc:
            raise CtlError(EXIT_BAD_CONNECTION, exc.message) from None
    printer(settings).leases(resp)


class _Requests:
    """The request side of a LeaseKeepAlive stream: one request now, then one every TTL/3."""

    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        self.queue: queue.Queue[rpc_pb2.LeaseKeepAliveRequest | None] = queue.Queue()
        self.queue.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))

    def __iter__(self) -> Iterator[rpc_pb2.LeaseKeepAliveRequest]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            yield item

    def schedule(self, delay: float) -> None:
        timer = threading.Timer(delay, self.queue.put, args=(rpc_pb2.LeaseKeepAliveRequest(ID=self.lease_id),))
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        self.queue.put(None)


@command(
    lease_group,
    "keep-alive",
    short="Keeps leases alive (renew)",
    usage="lease keep-alive [options] <leaseID>",
    flags=(GoFlag("once", "bool", False, "Resets the keep-alive time to its original value and exits immediately"),),
)
def keepalive_cmd(settings: Settings, args: list[str], once: bool) -> None:
    if len(args) != 1:
        bad_args("lease keep-alive command needs lease ID as argument")
    lease_id = lease_from_arg(args[0])
    show = printer(settings)
    requests = _Requests(lease_id)
    with Session(settings) as session:
        timeout = settings.command_timeout if once else None
        try:
            stream = session.stream("Lease", "LeaseKeepAlive", iter(requests), timeout=timeout)
            for resp in stream:
                if resp.TTL <= 0:
                    if once:
                        raise CtlError(EXIT_BAD_CONNECTION, LEASE_NOT_FOUND)
                    break
                show.keepalive(resp)
                sys.stdout.flush()
                if once:
                    requests.close()
                    return
                requests.schedule(max(resp.TTL / 3.0, 0.5))
        except EtcdError as err:
            if once:
                raise CtlError(EXIT_BAD_CONNECTION, error_text(err)) from None
        finally:
            requests.close()
    if settings.write_out == "simple":
        write_out(f"lease {lease_id:016x} expired or revoked.\n")
