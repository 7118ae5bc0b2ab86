"""Managed (K3s-style) cluster lifecycle: ``--cluster-init``, joining with ``--server``/``--token``, automatic
learner promotion and stall eviction, and a removed member's rejoin (docs/ha.md).

Protocol (the ``quorumkv.v1.Join/Join`` gRPC method on every member's client port, JSON in and out):

1. the joiner opens a TLS connection to ``--server`` without trusting it yet and reads the certificate chain
   the member serves (its client certificate file holds the leaf then the cluster CA); the CA's SHA-256 must
   equal the token's hash (``K10<hash>::server:<secret>``) before anything else is sent;
2. it calls ``Join`` over a channel that trusts only that CA, with the secret, its name, URLs, ``--tls-san``
   names and its must-match settings;
3. the member checks the secret, the settings (a mismatch is refused naming the setting), the name and peer
   URLs, that no other learner is catching up (one at a time), adds the joiner as a learner (a follower's
   proposal is forwarded to the leader by Raft), and answers with the member and cluster IDs, the member list,
   the cluster CA (certificate and key) and certificates it issued for the joiner;
4. the joiner stores all of it and starts as an empty member the leader catches up (by a state snapshot);
   the leader promotes it once caught up (:func:`run_promoter`), or removes it if it stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.security import cluster_pki as pki
from quorumkv.server.cluster import LEARNER_READY_FRACTION
from quorumkv.server.config import ServerConfig
from quorumkv.server.identity import compute_member_id
from quorumkv.storage import membership, schema
from quorumkv.storage.backend import Backend
from quorumkv.storage.datadir import DB_FILE, open_data_dir

log = logging.getLogger("quorumkv.join")

JOIN_SERVICE = "quorumkv.v1.Join"
JOIN_METHOD = f"/{JOIN_SERVICE}/Join"
#: How long a joiner keeps retrying while another member is still catching up as a learner.
JOIN_TIMEOUT_S = 120.0
JOIN_RETRY_S = 1.0
#: How often the leader looks at its learners (promotion, stall eviction).
PROMOTE_CHECK_S = 0.5
#: In ``<data-dir>/tls`` while a joiner stores what the cluster sent (removed once its identity is stored).
JOINING_MARK = "joining"


class JoinError(ValueError):
    """Joining failed; the message names the cause and the fix (printed as one line by the command)."""


def must_match(settings: Any) -> dict[str, int]:
    """Settings every member of a cluster must share, by flag (from a ServerConfig or ServerSettings)."""
    return {
        "--heartbeat-interval": int(settings.heartbeat_interval_ms),
        "--election-timeout": int(settings.election_timeout_ms),
        "--snapshot-count": int(settings.snapshot_count),
        "--max-request-bytes": int(settings.max_request_bytes),
        "--max-txn-ops": int(settings.max_txn_ops),
    }


def settings_mismatch(ours: dict[str, int], theirs: dict[str, Any]) -> str | None:
    for flag, value in ours.items():
        if flag not in theirs:
            return f"the joiner did not send {flag}"
        if theirs[flag] != value:
            return (f"{flag} differs: the cluster uses {value}, the joining member {theirs[flag]}; "
                    f"start it with {flag}={value}")
    return None


# -- the member's side -------------------------------------------------------------------------------------


@dataclass
class Managed:
    """A member of a managed cluster: where its certificates and token live, and its stall bound."""

    tls_dir: Path
    token_path: Path
    tls_sans: list[str]
    stall_timeout_s: float
    #: the member was a single member converted by this start (its own peer URLs are updated once started)
    converted: bool = False


class JoinService:
    """Serves ``Join`` on a member of a managed cluster."""

    def __init__(self, server: Any, managed: Managed) -> None:
        self.server = server
        self.managed = managed
        self._lock = asyncio.Lock()

    def _secret(self) -> str:
        """The cluster secret from this member's token file (re-read each time: ``token rotate`` needs no
        restart)."""
        return pki.parse_token(pki.read_token_file(self.managed.token_path)).secret

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Raise EtcdError (its code becomes the gRPC status) or return the answer."""
        s = self.server
        try:
            secret = self._secret()
        except pki.TokenError as exc:
            raise EtcdError("UNAVAILABLE", f"this member cannot serve joins: {exc}") from None
        if not isinstance(request.get("secret"), str) or not pki.secret_matches(request["secret"], secret):
            log.warning("refused a join: wrong token secret", extra={"member-name": request.get("name")})
            raise EtcdError("PERMISSION_DENIED", "join refused: the token's secret is wrong for this cluster")
        name = request.get("name")
        peer_urls = request.get("peer_urls")
        client_urls = request.get("client_urls")
        sans = request.get("tls_san", [])
        if (not isinstance(name, str) or not name or not isinstance(peer_urls, list) or not peer_urls
                or not all(isinstance(u, str) for u in peer_urls) or not isinstance(client_urls, list)
                or not all(isinstance(u, str) for u in client_urls) or not isinstance(sans, list)
                or not all(isinstance(u, str) for u in sans) or not isinstance(request.get("settings"), dict)):
            raise EtcdError("INVALID_ARGUMENT", "join refused: malformed request (name, peer_urls, client_urls, "
                                                "tls_san, settings)")
        if (problem := settings_mismatch(must_match(s.settings), request["settings"])) is not None:
            log.warning("refused a join: settings differ", extra={"member-name": name, "problem": problem})
            raise EtcdError("FAILED_PRECONDITION", f"join refused: {problem}")
        if s.is_learner:
            raise EtcdError("UNAVAILABLE", "join refused: this member is itself still a learner catching up; "
                                           "retry, or join through another member")
        async with self._lock:
            members = s._members()
            stale = [m for m in members.values() if m.name == name and m.is_learner]
            for m in stale:  # an earlier attempt of this joiner that never started: it is replaced
                log.warning("replacing a learner of the same name left by an earlier join attempt",
                            extra={"member-name": name, "member-id": f"{m.id:x}"})
                await s.member_remove(pb.MemberRemoveRequest(ID=m.id))
            members = s._members()
            for m in members.values():
                if m.name == name:
                    raise EtcdError("FAILED_PRECONDITION",
                                    f"join refused: a member named {name!r} (ID {m.id:x}) is already in the "
                                    "cluster; choose another --name, or remove that member first (member remove)")
                if set(m.peer_urls) & set(peer_urls):
                    raise EtcdError("FAILED_PRECONDITION",
                                    f"join refused: peer URL {sorted(set(m.peer_urls) & set(peer_urls))[0]} is "
                                    f"already used by member {m.name or f'{m.id:x}'}")
            learners = [m for m in members.values() if m.is_learner]
            if learners:
                raise EtcdError("UNAVAILABLE",
                                f"join deferred: member {learners[0].name or f'{learners[0].id:x}'} is still "
                                "catching up as a learner (one member joins at a time); retry")
            from quorumkv.raft.messages import ConfChangeType

            new_id = compute_member_id(peer_urls, "", int(time.time()))
            member = membership.Member(new_id, name, list(peer_urls), list(client_urls), True)
            await s._propose_conf_change(ConfChangeType.ADD_LEARNER_NODE, new_id, member)
        log.info("added a joining member as a learner",
                 extra={"member-name": name, "member-id": f"{new_id:x}", "peer-urls": peer_urls})
        ca = pki.load_ca(self.managed.tls_dir)
        certs = pki.issue_member_certs(ca, name, pki.hosts_of(client_urls), pki.hosts_of(peer_urls), sans)
        return {
            "member_id": f"{new_id:x}",
            "cluster_id": f"{s.cluster_id:x}",
            "members": [json.loads(m.to_json()) for m in s._members().values()],
            "ca_cert": ca.pem.decode(),
            "ca_key": ca.key_pem.decode(),
            "certs": {f.name: getattr(certs, f.name).decode() for f in dataclasses.fields(certs)},
        }


def grpc_handler(service: JoinService) -> Any:
    """The generic gRPC handler serving ``Join`` (bytes in and out: JSON)."""
    import grpc

    async def join(request: bytes, context: Any) -> bytes:
        try:
            payload = json.loads(request)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "join refused: the request is not JSON")
            raise AssertionError("unreachable") from None
        try:
            answer = await service.handle(payload)
        except EtcdError as exc:
            code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, exc.message)
            raise AssertionError("unreachable") from None
        return json.dumps(answer).encode()

    return grpc.method_handlers_generic_handler(
        JOIN_SERVICE, {"Join": grpc.unary_unary_rpc_method_handler(join)})


def _transport_connected(server: Any) -> set[int]:
    transport = server.transport
    if transport is None:
        return set()
    try:
        return {mid for mid, st in transport.stats().items() if st.connected}
    except Exception:
        return set()


async def run_promoter(server: Any, managed: Managed) -> None:
    """On the leader: promote a caught-up learner when the cluster keeps a quorum of connected voters with it;
    remove a learner that has not caught up within ``stall_timeout_s`` (reported in the log). Meanwhile, on
    every member, keep the bootstrap record (:func:`_sync_bootstrap`)."""
    await _update_own_peer_urls(server)
    first_seen: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    keeper = loop.create_task(_keep_bootstrap(server, managed), name="bootstrap-record")
    try:
        await _promote_loop(server, managed, first_seen, loop)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def _keep_bootstrap(server: Any, managed: Managed) -> None:
    """On every member: :func:`_sync_bootstrap` twice a second (a write that waits for a leader does not hold up
    promotions); failures are retried, logged once until the next success."""
    synced: list[str] = []  # the secret whose bootstrap record this member last wrote
    failing = False
    while True:
        await asyncio.sleep(PROMOTE_CHECK_S)
        try:
            await _sync_bootstrap(server, managed, synced)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no leader yet, a quota alarm...: retried on the next round
            if not failing:
                log.info("storing the bootstrap record: %s; retrying", getattr(exc, "message", exc))
            failing = True


async def _promote_loop(server: Any, managed: Managed, first_seen: dict[int, float],
                        loop: asyncio.AbstractEventLoop) -> None:
    while True:
        await asyncio.sleep(PROMOTE_CHECK_S)
        try:
            await _promote_once(server, managed, first_seen, loop.time())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("learner promotion check failed")


async def _promote_once(server: Any, managed: Managed, first_seen: dict[int, float], now: float) -> None:
    if server._node is None or not server.is_leader:
        first_seen.clear()
        return
    learners = [m for m in server._members().values() if m.is_learner]
    for gone in set(first_seen) - {m.id for m in learners}:
        del first_seen[gone]
    node = server.node
    for m in learners:
        since = first_seen.setdefault(m.id, now)
        match = node.progress_match.get(m.id)
        ready = match is not None and match >= node.last_index * LEARNER_READY_FRACTION
        connected = _transport_connected(server)
        voters = list(node.conf_state.voters)
        live = 1 + sum(1 for v in voters if v != server.member_id and v in connected)
        safe = m.id in connected and live + 1 >= (len(voters) + 1) // 2 + 1
        if ready and safe:
            try:
                await server.member_promote(pb.MemberPromoteRequest(ID=m.id))
            except EtcdError as exc:
                log.info("promoting learner %s: %s", m.name or f"{m.id:x}", exc.message)
                continue
            log.info("promoted a caught-up learner to voter", extra={"member-name": m.name, "member-id": f"{m.id:x}"})
            return  # one change at a time
        if now - since > managed.stall_timeout_s:
            log.error("removing a learner that did not catch up in time (stall eviction)",
                      extra={"member-name": m.name, "member-id": f"{m.id:x}", "match": match,
                             "leader-index": node.last_index, "timeout-s": managed.stall_timeout_s})
            try:
                await server.member_remove(pb.MemberRemoveRequest(ID=m.id))
            except EtcdError as exc:
                log.warning("could not remove the stalled learner: %s", exc.message)
            return


async def _sync_bootstrap(server: Any, managed: Managed, synced: list[str]) -> None:
    """Keep the bootstrap record (the CA encrypted with this member's token secret, ``/bootstrap/<id>``) in the
    replicated data, so snapshots carry the CA (docs/ha.md). Written once per secret; after ``token rotate`` the
    record of the new secret is written and the one of the old secret deleted."""
    if server._node is None or server.is_learner:
        return
    try:
        secret = pki.parse_token(pki.read_token_file(managed.token_path)).secret
    except pki.TokenError:
        return
    if synced and synced[0] == secret:
        return
    key = pki.bootstrap_key(secret)
    ca_cert = (managed.tls_dir / pki.CA_CERT).read_bytes()
    have = server.range(pb.RangeRequest(key=key)).kvs
    current = False
    if have:
        try:
            # PBKDF2 takes a while: off the event loop (heartbeats)
            current = (await asyncio.to_thread(pki.open_bootstrap, secret, have[0].value))[0] == ca_cert
        except pki.BootstrapError:
            current = False
    if not current:
        record = await asyncio.to_thread(pki.seal_bootstrap, secret, ca_cert,
                                         (managed.tls_dir / pki.CA_KEY).read_bytes())
        await server.put(pb.PutRequest(key=key, value=record))
        log.info("stored the cluster CA's bootstrap record (encrypted with the token)", extra={"key": key.decode()})
    if synced and pki.bootstrap_key(synced[0]) != key:  # token rotate: the old secret no longer opens the CA
        await server.delete_range(pb.DeleteRangeRequest(key=pki.bootstrap_key(synced[0])))
    synced[:] = [secret]


def adopt_bootstrap(data_dir: Path, token_text: str) -> bool:
    """A restore on a new host (``--cluster-reset-restore-path`` with ``--token``): find the bootstrap record in
    the restored ``data_dir`` that the token opens and write the CA (``tls/ca.*``) and the token file there.
    Returns False when the data holds no bootstrap record; raises JoinError when none opens with the token."""
    from quorumkv.mvcc import store

    token = pki.parse_token(token_text)
    dd = open_data_dir(str(data_dir))
    try:
        backend = Backend(dd.db_path)
        try:
            end = pki.BOOTSTRAP_PREFIX[:-1] + bytes([pki.BOOTSTRAP_PREFIX[-1] + 1])
            records = [kv.value for kv in store.range_at(backend.writer, pki.BOOTSTRAP_PREFIX, end, 0).kvs]
        finally:
            backend.close()
    finally:
        dd.close()
    if not records:
        return False
    found: tuple[bytes, bytes] | None = None
    for record in records:
        try:
            found = pki.open_bootstrap(token.secret, record)
            break
        except pki.BootstrapError:
            continue
    if found is None:
        raise JoinError("the snapshot's cluster CA cannot be decrypted with this token: give the token that was "
                        "current when the snapshot was taken (nothing was changed)")
    ca_cert, ca_key = found
    if token.pinned and pki.ca_hash(ca_cert) != token.ca_hash:
        raise JoinError(f"the snapshot's cluster CA (sha256 {pki.ca_hash(ca_cert)}) is not the one the token names "
                        f"({token.ca_hash}): wrong snapshot or wrong token (nothing was changed)")
    pki.ca_from_pem(ca_cert, ca_key)  # a record that opens holds a usable CA
    tls_dir = data_dir / pki.TLS_DIR
    pki.store_ca(tls_dir, ca_cert, ca_key)
    pki.write_token_file(data_dir / pki.TOKEN_FILE, pki.format_token(ca_cert, token.secret))
    log.warning("recovered the cluster CA from the snapshot's bootstrap record with the token",
                extra={"ca-hash": pki.ca_hash(ca_cert)})
    return True


def token_text(config: ServerConfig) -> str:
    """The token given on the command line (``--token``, ``--token-file``), or ""."""
    if config.token:
        return config.token
    if config.token_file:
        return pki.read_token_file(config.token_file)
    return ""


async def _update_own_peer_urls(server: Any) -> None:
    """A single member converted to a managed cluster serves its peer URLs over TLS now: its member record
    (written with http:// URLs) is updated, so joiners dial the right scheme (checked at every start, so a
    conversion interrupted before the update finishes it next time)."""
    want = list(server.settings.initial_advertise_peer_urls)
    for _ in range(100):  # bounded: retried while there is no leader yet
        me = server._members().get(server.member_id)
        # only the scheme may differ (a member's recorded http:// URLs, served over TLS now): other URL changes
        # stay the operator's (member update)
        if me is None or sorted(me.peer_urls) == sorted(want) or sorted(_https(me.peer_urls)) != sorted(want):
            return
        try:
            await server.member_update(pb.MemberUpdateRequest(ID=server.member_id, peerURLs=want))
            log.info("updated this member's peer URLs for the managed cluster", extra={"peer-urls": want})
            return
        except EtcdError as exc:
            log.info("updating this member's peer URLs: %s; retrying", exc.message)
            await asyncio.sleep(0.2)


# -- the joiner's side and start-up -------------------------------------------------------------------------


def _https(urls: list[str]) -> list[str]:
    return ["https://" + u[len("http://"):] if u.startswith("http://") else u for u in urls]


def managed_config(config: ServerConfig, tls_dir: Path) -> ServerConfig:
    """The member's configuration in a managed cluster: http:// client and peer URLs served over TLS with the
    generated certificates (URLs with your own --cert-file/--peer-cert-file are left as they are)."""
    changes: dict[str, Any] = {}
    if not config.cert_file:
        changes.update(listen_client_urls=_https(config.listen_client_urls),
                       advertise_client_urls=_https(config.advertise_client_urls),
                       cert_file=str(tls_dir / pki.SERVER_CERT), key_file=str(tls_dir / pki.SERVER_KEY),
                       trusted_ca_file=config.trusted_ca_file or str(tls_dir / pki.CA_CERT))
    if not config.peer_cert_file:
        derived = ",".join(f"{config.name}={u}" for u in config.initial_advertise_peer_urls)
        changes.update(listen_peer_urls=_https(config.listen_peer_urls),
                       initial_advertise_peer_urls=_https(config.initial_advertise_peer_urls),
                       peer_cert_file=str(tls_dir / pki.PEER_CERT), peer_key_file=str(tls_dir / pki.PEER_KEY),
                       peer_trusted_ca_file=str(tls_dir / pki.CA_CERT), peer_client_cert_auth=True)
        if config.initial_cluster == derived:
            changes["initial_cluster"] = ""
    return dataclasses.replace(config, **changes)


def _token_text(config: ServerConfig, token_path: Path) -> str:
    if config.token:
        return config.token
    if config.token_file:
        return pki.read_token_file(config.token_file)
    if token_path.exists():
        return pki.read_token_file(token_path)
    return ""


@dataclass
class _Stored:
    member_id: int | None
    removed: bool
    members: dict[int, membership.Member]


def _read_stored(data_dir: str) -> _Stored:
    dd = open_data_dir(data_dir)  # formats a new data dir before certificates are written into it
    try:
        if not (Path(data_dir) / DB_FILE).exists():
            return _Stored(None, False, {})
        backend = Backend(dd.db_path)
        try:
            conn = backend.writer
            mid = schema.member_id(conn)
            return _Stored(mid, mid is not None and membership.is_removed(conn, mid), membership.load_members(conn))
        finally:
            backend.close()
    finally:
        dd.close()


def prepare_member(config: ServerConfig) -> tuple[ServerConfig, Managed | None]:
    """Before the member starts: set up (or keep) its managed-cluster state, joining through ``--server`` when
    it is new. Returns the configuration to run and the managed state (None: not a managed cluster).
    Raises JoinError / TokenError (ValueError) with one line naming the problem."""
    data_dir = Path(config.data_dir)
    tls_dir = data_dir / pki.TLS_DIR
    token_path = data_dir / pki.TOKEN_FILE
    has_ca = (tls_dir / pki.CA_CERT).exists() and (tls_dir / pki.CA_KEY).exists()
    if not (config.cluster_init or config.server or has_ca):
        return config, None
    stored = _read_stored(config.data_dir)
    managed = Managed(tls_dir, token_path, list(config.tls_san), config.learner_stall_timeout_ms / 1000)
    if stored.removed and has_ca:
        return _rejoin_after_removal(config, stored, managed)
    if stored.member_id is None and config.server:
        # a new member (or one whose earlier join stopped before it stored its identity: joined again)
        return _join(config, managed, config.server, _token_text(config, token_path))
    if stored.member_id is None and (tls_dir / JOINING_MARK).exists():
        raise JoinError(f"data dir {data_dir} has cluster certificates but no member identity (a join that did not "
                        "finish): start it again with --server https://<member>:<client port> --token ...")
    if not has_ca:
        if not config.cluster_init:
            raise JoinError(f"data dir {data_dir} already holds member {stored.member_id or 0:x} of a cluster made "
                            "without --cluster-init, so --server cannot join it to another cluster: use a new "
                            "--data-dir, or restart it with --cluster-init to make it a managed cluster's first server")
        text = _token_text(config, token_path)
        secret = pki.parse_token(text).secret if text else pki.new_secret()
        ca = pki.make_ca(tls_dir)
        pki.write_token_file(token_path, pki.format_token(ca.pem, secret))
        managed.converted = stored.member_id is not None
        log.warning("initialized a managed cluster: CA and certificates in %s, join token in %s", tls_dir,
                    token_path, extra={"converted-single-member": managed.converted})
        print(f"quorumkv: cluster initialized; join token written to {token_path} "
              f"(admin client certificate: {tls_dir / pki.CLIENT_CERT})", flush=True)
    elif config.server and stored.member_id is not None:
        log.info("this member already belongs to a cluster; --server is ignored on restart")
    out = managed_config(config, tls_dir)
    pki.ensure_member_certs(tls_dir, config.name, pki.hosts_of(out.advertise_client_urls + out.listen_client_urls),
                            pki.hosts_of(out.initial_advertise_peer_urls + out.listen_peer_urls), config.tls_san)
    if not token_path.exists():  # a member that lost its token file: the one it was given, or none
        if text := _token_text(config, token_path):
            pki.write_token_file(token_path, pki.format_token(
                (tls_dir / pki.CA_CERT).read_bytes(), pki.parse_token(text).secret))
    return out, managed


def _rejoin_after_removal(config: ServerConfig, stored: _Stored, managed: Managed) -> tuple[ServerConfig, Managed]:
    """K3s's behaviour: a member removed from its cluster moves its old data aside and joins again as a new
    member with the same name (through --server, else through the members it knew)."""
    text = _token_text(config, managed.token_path)
    if not text:
        raise JoinError(f"member {stored.member_id:x} was removed from the cluster and has no token to rejoin "
                        f"with: give --token, or remove {config.data_dir}")
    servers = [config.server] if config.server else [
        u for m in stored.members.values() if m.id != stored.member_id for u in m.client_urls
        if u.startswith("https://")]
    if not servers:
        raise JoinError(f"member {stored.member_id:x} was removed and knows no other member to rejoin through; "
                        "give --server https://<member>:<client port>")
    aside = Path(f"{config.data_dir}.removed-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    os.rename(config.data_dir, aside)
    log.warning("this member was removed from the cluster: moved its old data aside and rejoining as a new member",
                extra={"old-member-id": f"{stored.member_id:x}", "moved-to": str(aside)})
    print(f"quorumkv: removed from the cluster; old data moved to {aside}, rejoining", flush=True)
    last: ValueError | None = None
    for url in servers:
        try:
            return _join(config, managed, url, text)
        except ValueError as exc:  # JoinError, TokenError
            last = exc
            log.warning("rejoining through %s failed: %s", url, exc)
            shutil.rmtree(config.data_dir, ignore_errors=True)
    # the old data goes back: the next start tries again (never a fresh cluster on this member's URLs)
    os.rename(aside, config.data_dir)
    assert last is not None
    raise JoinError(f"{last} (the old data is back in {config.data_dir}; the next start retries the rejoin)")


def fetch_ca(host: str, port: int, timeout_s: float = 5.0) -> bytes:
    """The CA (PEM) at the end of the chain the TLS server at host:port presents, read without trusting it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout_s) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        sslobj: Any = tls._sslobj  # type: ignore[attr-defined]
        chain = sslobj.get_unverified_chain() or []
        ders = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    return pki.ca_from_chain(ders)


def _tls_name_problem(details: str) -> bool:
    text = details.lower()
    return "peer name" in text or "not in peer certificate" in text or "hostname" in text


def _call_join(url: str, ca_pem: bytes, request: dict[str, Any], deadline: float) -> dict[str, Any]:
    import grpc

    parts = urlsplit(url)
    target = f"{parts.hostname}:{parts.port}"
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    payload = json.dumps(request).encode()
    with grpc.secure_channel(target, creds) as channel:
        join = channel.unary_unary(JOIN_METHOD)
        while True:
            try:
                answer = join(payload, timeout=max(5.0, min(30.0, deadline - time.monotonic())))
                break
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and _tls_name_problem(details):
                    raise JoinError(f"cannot join through {url}: its certificate does not name "
                                    f"{parts.hostname} ({details}); add --tls-san {parts.hostname} to the members "
                                    "(they re-issue their certificates at restart), or join through a URL they "
                                    "advertise") from None
                if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                    log.info("join through %s: %s; retrying", url, details)
                    time.sleep(JOIN_RETRY_S)
                    continue
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    details = f"{url} does not serve joins (is it a member of a managed cluster?)"
                raise JoinError(f"cannot join through {url}: {details or code.name}") from None
    result = json.loads(answer)
    if not isinstance(result, dict):
        raise JoinError(f"cannot join through {url}: malformed answer")
    return result


def _join(config: ServerConfig, managed: Managed, url: str, token_text: str) -> tuple[ServerConfig, Managed]:
    token = pki.parse_token(token_text)
    open_data_dir(config.data_dir).close()  # format the (new) data dir before anything is written into it
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 0
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:  # the member may still be starting (or itself joining): retry, bounded
        try:
            ca_pem = fetch_ca(host, port)
            break
        except ssl.SSLError as exc:  # something answers, but not a managed member's TLS port: no point waiting
            raise JoinError(f"cannot join through {url}: no TLS there ({exc.reason or exc}); give the client URL "
                            "of a member of a managed cluster (started with --cluster-init or --server)") from None
        except (OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise JoinError(f"cannot join through {url}: cannot read its TLS certificate chain ({exc})"
                                ) from None
            log.info("join through %s: %s; retrying", url, exc)
            time.sleep(JOIN_RETRY_S)
    if token.pinned:
        got = pki.ca_hash(ca_pem)
        if got != token.ca_hash:
            raise JoinError(f"refusing to join through {url}: its CA (sha256 {got}) is not the one the token "
                            f"names ({token.ca_hash}); wrong --server or wrong token. Nothing was sent.")
    else:
        log.warning("the token is a bare secret: the cluster CA is not verified (use the full K10... token)")
    out = managed_config(config, managed.tls_dir)
    request = {
        "secret": token.secret, "name": config.name,
        "peer_urls": list(out.initial_advertise_peer_urls), "client_urls": list(out.advertise_client_urls),
        "tls_san": list(config.tls_san), "settings": must_match(config),
    }
    answer = _call_join(url, ca_pem, request, deadline)
    try:
        member_id = int(answer["member_id"], 16)
        cluster_id = int(answer["cluster_id"], 16)
        members = [membership.Member.from_json(json.dumps(m).encode()) for m in answer["members"]]
        certs = pki.MemberCerts(**{k: str(v).encode() for k, v in answer["certs"].items()})
        ca_cert, ca_key = str(answer["ca_cert"]).encode(), str(answer["ca_key"]).encode()
    except (KeyError, ValueError, TypeError) as exc:
        raise JoinError(f"cannot join through {url}: malformed answer ({exc})") from None
    if ca_cert != ca_pem:
        raise JoinError(f"cannot join through {url}: it answered with another CA than it serves")
    # certificates and token first, identity last: a data dir with an identity is always a complete member; the
    # mark tells an interrupted join (certificates, no identity) from an interrupted --cluster-init
    managed.tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (managed.tls_dir / JOINING_MARK).touch()
    pki.store_ca(managed.tls_dir, ca_cert, ca_key)
    pki.store_member_certs(managed.tls_dir, certs)
    pki.write_token_file(managed.token_path, pki.format_token(ca_cert, token.secret))
    dd = open_data_dir(config.data_dir)
    try:
        backend = Backend(dd.db_path)
        try:
            with backend.write_txn() as c:
                for m in members:
                    membership.upsert_member(c, m)
                schema.save_identity(c, member_id, cluster_id)
        finally:
            backend.close()
    finally:
        dd.close()
    (managed.tls_dir / JOINING_MARK).unlink(missing_ok=True)
    log.warning("joined the cluster as a learner", extra={"server": url, "member-id": f"{member_id:x}",
                                                          "cluster-id": f"{cluster_id:x}"})
    return out, managed


__all__ = ["JOIN_METHOD", "JOIN_SERVICE", "JoinError", "JoinService", "Managed", "adopt_bootstrap", "fetch_ca",
           "grpc_handler", "managed_config", "must_match", "prepare_member", "run_promoter", "settings_mismatch",
           "token_text"]
