"""The cluster side of a member: the peer transport, joining, leadership, and the membership API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

from quorumkv import errors
from quorumkv.api.etcdserverpb import rpc_pb2 as pb
from quorumkv.errors import EtcdError
from quorumkv.server.entries import EntryKind
from quorumkv.server.identity import IdGenerator, compute_member_id
from quorumkv.server.member import MemberCore
from quorumkv.storage import membership, schema
from quorumkv.storage.backend import read_txn

log = logging.getLogger("quorumkv.server")

#: etcd promotes a learner once its match index is at least this fraction of the leader's last index.
LEARNER_READY_FRACTION = 0.9
#: Publishing this member's attributes is retried after this long (after a failure; as a learner).
PUBLISH_RETRY_S = 0.5
PUBLISH_RETRY_LEARNER_S = 1.0


class MemberCluster(MemberCore):
    """Peers, leadership and MemberAdd/Remove/Update/Promote/List."""

    @property
    def removed_event(self) -> asyncio.Event:
        """Set once this member has applied its own removal from the cluster."""
        return self._removed

    @property
    def has_leader(self) -> bool:
        node = self._node
        return node is not None and node.lead != 0

    @property
    def no_leader_check_s(self) -> float:
        return self.settings.election_timeout_ms / 1000

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    @property
    def is_learner(self) -> bool:
        return self._node is not None and self._node.is_learner

    @property
    def leader_changes_seen(self) -> int:
        return self.leader_changes

    async def _start_transport(self) -> None:
        """Serve the peer service on --listen-peer-urls and connect to every other member."""
        factory: Any = self.transport_factory
        if factory is None:
            from quorumkv.transport import PeerTransport as factory
        self.transport = factory(
            self.member_id, self.cluster_id, **self._peer_credentials(), on_messages=self._on_peer_messages,
            on_unreachable=self._on_peer_unreachable, rng=random.Random(self.member_id ^ time.time_ns()),
            on_snapshot_status=self._on_snapshot_status)
        self._peer_tls_checks(self.transport)
        self.transport.register_handler("lease_renew", self._handle_lease_renew)
        self.transport.register_handler("lease_ttl", self._handle_lease_ttl)
        self.transport.register_handler("member_promote", self._handle_member_promote)
        self.transport.register_handler("cluster_info", self._handle_cluster_info)
        self.transport.open_methods.add("cluster_info")
        self.transport.on_removed = self._on_refused_as_removed
        with read_txn(self.reader):  # members removed before this start are refused too (they may come back)
            removed = membership.removed_ids(self.reader)
        for mid in removed:
            if mid != self.member_id:
                self.transport.remove_peer(mid)
        await self.transport.start(list(self.settings.listen_peer_urls))
        if self.joining:
            await self._join()
        self._sync_peers()

    def _has_other_members(self) -> bool:
        """Whether the configuration (or the one being bootstrapped) has a member besides this one."""
        if self.bootstrap_members is not None and len(self.bootstrap_members) > 1:
            return True
        with read_txn(self.reader):
            return any(mid != self.member_id for mid in membership.load_members(self.reader))

    def _has_removed_members(self) -> bool:
        """Whether some member was removed (a member reset to a cluster of one listens, to refuse the others)."""
        with read_txn(self.reader):
            return bool(membership.removed_ids(self.reader))

    async def _start_transport_logged(self) -> None:
        try:
            await self._start_transport()
        except Exception:
            log.exception("could not open the peer listener on %s", ",".join(self.settings.listen_peer_urls))
            self._transport_starting = None

    def _peer_credentials(self) -> dict[str, Any]:
        """gRPC credentials for the peer service from the --peer-* TLS flags (none: plaintext peers); they re-read
        rotated files (security/peer.py)."""
        s = self.settings
        if not s.peer_cert_file:
            self._peer_tls: Any = None
            return {}
        from quorumkv.security.ciphers import openssl_names
        from quorumkv.security.peer import peer_tls

        self._peer_tls = peer_tls(s.peer_cert_file, s.peer_key_file, s.peer_trusted_ca_file,
                                  client_cert_auth=s.peer_client_cert_auth, allowed_cn=s.peer_cert_allowed_cn,
                                  crl_file=s.peer_crl_file, ciphers=":".join(openssl_names(s.cipher_suites)))
        # the listener's TLS is terminated by a front that logs each refused handshake (security/tls_front.py)
        return {"server_credentials": self._peer_tls.server_credentials,
                "channel_credentials": self._peer_tls.channel_credentials,
                "server_front": self._peer_tls.server_front}

    def _peer_tls_checks(self, transport: Any) -> None:
        """--peer-cert-allowed-cn/--peer-crl-file on incoming peers; diagnosis of failed dials."""
        if getattr(self, "_peer_tls", None) is not None:
            transport.check_peer_cert = self._peer_tls.check_peer_cert
            transport.diagnose_tls = self._peer_tls.diagnose_tls

    async def _join(self) -> None:
        """A new member of a running cluster: learn the cluster ID and members from a live member, check that
        this member was added (``member add``), then start an empty node that the leader will catch up."""
        assert self.transport is not None
        s = self.settings
        my_urls = sorted(s.initial_advertise_peer_urls)
        errors_seen: list[str] = []
        for name, urls in self.join_peers.items():
            probe = compute_member_id(urls, s.initial_cluster_token)
            self.transport.add_peer(probe, self._dial_urls(urls))
            try:
                data = await self.transport.call(probe, "cluster_info", b"", 5.0)
            except Exception as exc:  # try the next member
                errors_seen.append(f"{name} ({','.join(urls)}): {exc}")
                continue
            finally:
                self.transport.remove_peer(probe)
            info = json.loads(data)
            members = [membership.Member.from_json(json.dumps(m).encode()) for m in info["members"]]
            mine = [m for m in members if sorted(m.peer_urls) == my_urls]
            if not mine:
                raise EtcdError("FAILED_PRECONDITION",
                                f"this member (peer URLs {','.join(my_urls)}) has not been added to the cluster "
                                f"{int(info['cluster_id'], 16):x}: run 'member add {s.name} "
                                f"--peer-urls={','.join(my_urls)}' on the cluster first")
            self.member_id = mine[0].id
            self.cluster_id = int(info["cluster_id"], 16)
            self.transport.member_id = self.member_id
            self.transport.cluster_id = self.cluster_id
            with self.backend.write_txn() as c:
                schema.save_identity(c, self.member_id, self.cluster_id)
                for m in members:
                    membership.upsert_member(c, m)
            self.ids = IdGenerator(self.member_id, int(time.time() * 1000))
            self.joining = False
            self._node = self._make_node(self._fsync_observer)
            return
        raise EtcdError("UNAVAILABLE", "cannot join: no member of --initial-cluster answered: "
                        + "; ".join(errors_seen))

    def _dial_urls(self, urls: list[str]) -> list[str]:
        """Peer URLs to dial: as advertised, unless the test-only ``settings.peer_dial_map`` (from
        ``QUORUMKV_TEST_PEER_DIAL_MAP``
        (``advertisedURL=dialURL,...``, set by ``quorumkv.testing.cluster`` to route links through fault proxies)
        says otherwise."""
        return [self.settings.peer_dial_map.get(u, u) for u in urls]

    def _sync_peers(self) -> None:
        """Point the transport at the current member list (after start and after each membership change)."""
        if self.transport is None:
            return
        with read_txn(self.reader):
            members = membership.load_members(self.reader)
        known = set(self._peer_urls)
        for mid, m in members.items():
            if mid == self.member_id:
                continue
            if mid not in known:
                self.transport.add_peer(mid, self._dial_urls(m.peer_urls))
            elif self._peer_urls[mid] != m.peer_urls:
                self.transport.update_peer(mid, self._dial_urls(m.peer_urls))
            self._peer_urls[mid] = list(m.peer_urls)
        for mid in known - set(members):
            self.transport.remove_peer(mid)
            del self._peer_urls[mid]

    def _send_raft_messages(self, messages: list[Any]) -> None:
        self._heartbeats.observe(messages)
        if self.transport is not None:
            self.transport.send(messages)

    def _on_peer_messages(self, messages: list[Any]) -> None:
        if self._node is not None:
            self._node.step(messages)

    def _on_peer_unreachable(self, peer: int) -> None:
        if self._node is not None:
            self._node.report_unreachable(peer)

    def _on_snapshot_status(self, peer: int, ok: bool) -> None:
        if self._node is not None:
            self._node.report_snapshot(peer, ok)

    def _on_leader_change(self, lead: int, is_leader: bool) -> None:
        if lead:
            self.leader_changes += 1
        if self._read_index_batcher is not None:
            self._read_index_batcher.leader_changed(lead)
        if is_leader and not self._is_leader:
            # a new leader restarts every lease clock (from its checkpointed remaining TTL, with checkpointing),
            # extended by an election timeout (as etcd's Promote):
            # no lease expires early because leadership moved
            self.lessor.promote(dict(self.applier.leases), extend_s=self.settings.election_timeout_ms / 1000,
                                remaining=self.applier.lease_remaining if self.settings.lease_checkpoint else None)
            self._heartbeats.reset()
            log.info("became leader", extra={"member-id": f"{self.member_id:x}", "term": self.node.term})
        elif not is_leader and self._is_leader:
            self.lessor.promote({})
        self._is_leader = is_leader

    def _on_conf_applied(self, cc: Any) -> None:
        from quorumkv.raft.messages import ConfChangeType

        if self.transport is None:
            if self._has_other_members() and self._transport_starting is None:
                # a cluster of one grew: open the peer listener and dial the new member
                self._transport_starting = asyncio.get_running_loop().create_task(
                    self._start_transport_logged(), name="peer-transport")
        else:
            self._sync_peers()
        if cc.type == ConfChangeType.REMOVE_NODE and cc.node_id == self.member_id:
            log.warning("this member was removed from the cluster; stopping",
                        extra={"member-id": f"{self.member_id:x}"})
            self._removed.set()

    def _on_refused_as_removed(self, peer: int) -> None:
        """A peer refused us as a removed member: we missed applying our own removal (it was committed after
        the leader stopped talking to us). Record it, so a restart on this data dir is refused too."""
        if self._removed.is_set():
            return
        log.warning("a peer says this member was removed from the cluster (member remove, or a cluster reset on "
                    "that peer); stopping: delete this data dir, 'member add' this member on the cluster and start it "
                    "with --initial-cluster-state existing",
                    extra={"member-id": f"{self.member_id:x}", "peer": f"{peer:x}"})
        try:
            with self.backend.write_txn() as c:
                membership.mark_removed(c, self.member_id)
        except Exception as exc:  # the refusal on restart is a convenience; stopping is what matters
            log.warning("could not record the removal: %r", exc)
        self._removed.set()

    async def _publish_attributes(self) -> None:
        """Tell the cluster this member's name and client URLs (etcd's publish), retrying until it lands."""
        m = membership.Member(self.member_id, self.settings.name, [], list(self.settings.advertise_client_urls))
        while True:
            try:
                await self._propose(EntryKind.MEMBER_ATTRS, m.to_json())
                return
            except EtcdError as exc:
                if exc is errors.NOT_SUPPORTED_FOR_LEARNER or exc.message == errors.NOT_SUPPORTED_FOR_LEARNER.message:
                    await asyncio.sleep(PUBLISH_RETRY_LEARNER_S)  # a learner cannot propose; wait for promotion
                    continue
                log.info("publishing member attributes failed, retrying: %s", exc.message)
                await asyncio.sleep(PUBLISH_RETRY_S)

    async def _call_leader(self, method: str, payload: bytes) -> bytes:
        """Run ``method`` on the leader (lease clocks live there) and return its answer."""
        node = self.node
        lead = node.lead
        if lead == 0:
            raise errors.NO_LEADER
        if lead == self.member_id:
            raise errors.LEADER_CHANGED  # leadership is moving to us right now: the client retries
        if self.transport is None:  # another member leads, so the peer listener is opening right now
            raise errors.LEADER_CHANGED
        try:
            data: bytes = await self.transport.call(lead, method, payload, self.settings.request_timeout_s)
        except Exception as exc:
            log.info("forwarding %s to the leader failed: %r", method, exc)
            raise errors.TIMEOUT from exc
        return unwrap_answer(data)

    async def _handle_member_promote(self, payload: bytes) -> bytes:
        try:
            resp = await self.member_promote(pb.MemberPromoteRequest.FromString(payload))
        except EtcdError as exc:
            return wrap_error(exc)
        return b"\x00" + resp.SerializeToString()

    async def _handle_cluster_info(self, payload: bytes) -> bytes:
        with read_txn(self.reader):
            members = membership.load_members(self.reader)
        return json.dumps({"cluster_id": f"{self.cluster_id:x}",
                           "members": [json.loads(m.to_json()) for m in members.values()]}).encode()

    def _members(self) -> dict[int, membership.Member]:
        with read_txn(self.reader):
            return membership.load_members(self.reader)

    def _member_pbs(self) -> list[pb.Member]:
        out = []
        members = self._members()
        for mid in sorted(members):
            m = members[mid]
            out.append(pb.Member(ID=mid, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls,
                                 isLearner=m.is_learner))
        return out

    async def _propose_conf_change(self, cc_type: Any, node_id: int, member: membership.Member | None) -> None:
        node = self.node
        request_id = self.ids.next()
        fut = self.waits.register(request_id)
        node.propose_conf_change(cc_type, node_id, member, request_id)
        await self._wait_applied(fut, request_id)

    async def member_add(self, req: pb.MemberAddRequest) -> pb.MemberAddResponse:
        from quorumkv.raft.messages import ConfChangeType

        urls = list(req.peerURLs)
        if not urls or not all(_valid_peer_url(u) for u in urls):
            raise errors.MEMBER_BAD_URLS
        members = self._members()
        taken = {u for m in members.values() for u in m.peer_urls}
        if taken & set(urls):
            raise errors.PEER_URL_EXIST
        if req.isLearner and sum(m.is_learner for m in members.values()) >= 1:
            raise errors.TOO_MANY_LEARNERS
        new_id = compute_member_id(urls, "", int(time.time()))
        if new_id in members:
            raise errors.MEMBER_EXIST
        if not req.isLearner:
            self._strict_reconfig_check(members, adding=True)
        m = membership.Member(new_id, "", urls, [], bool(req.isLearner))
        await self._propose_conf_change(
            ConfChangeType.ADD_LEARNER_NODE if req.isLearner else ConfChangeType.ADD_NODE, new_id, m)
        resp = pb.MemberAddResponse(member=pb.Member(ID=new_id, peerURLs=urls, isLearner=bool(req.isLearner)))
        resp.members.extend(self._member_pbs())
        resp.header.revision = self.current_revision
        return resp

    async def member_remove(self, req: pb.MemberRemoveRequest) -> pb.MemberRemoveResponse:
        from quorumkv.raft.messages import ConfChangeType

        members = self._members()
        if req.ID not in members:
            raise errors.MEMBER_NOT_FOUND
        if not members[req.ID].is_learner:
            self._strict_reconfig_check(members, removing=req.ID)
        change = asyncio.ensure_future(self._propose_conf_change(ConfChangeType.REMOVE_NODE, req.ID, None))
        if req.ID == self.member_id:
            # Removing ourselves: the leader may stop talking to us before we apply it; a peer refusing us as
            # removed (or applying it) proves the removal committed.
            removed = asyncio.ensure_future(self._removed.wait())
            await asyncio.wait([change, removed], return_when=asyncio.FIRST_COMPLETED)
            removed.cancel()
            if not change.done():
                change.cancel()
            elif change.exception() is not None:
                raise change.exception()  # type: ignore[misc]
        else:
            await change
        resp = pb.MemberRemoveResponse()
        resp.members.extend(m for m in self._member_pbs() if m.ID != req.ID)
        resp.header.revision = self.current_revision
        return resp

    async def member_update(self, req: pb.MemberUpdateRequest) -> pb.MemberUpdateResponse:
        members = self._members()
        if req.ID not in members:
            raise errors.MEMBER_NOT_FOUND
        urls = list(req.peerURLs)
        if not urls or not all(_valid_peer_url(u) for u in urls):
            raise errors.MEMBER_BAD_URLS
        taken = {u for mid, m in members.items() if mid != req.ID for u in m.peer_urls}
        if taken & set(urls):
            raise errors.PEER_URL_EXIST
        m = membership.Member(req.ID, members[req.ID].name, urls, members[req.ID].client_urls)
        await self._propose(EntryKind.MEMBER_UPDATE, m.to_json())
        resp = pb.MemberUpdateResponse()
        resp.members.extend(self._member_pbs())
        resp.header.revision = self.current_revision
        return resp

    async def member_promote(self, req: pb.MemberPromoteRequest) -> pb.MemberPromoteResponse:
        """Only the leader knows how far a learner got: a follower forwards the request to it."""
        from quorumkv.raft.messages import ConfChangeType

        node = self.node
        members = self._members()
        if req.ID not in members:
            raise errors.MEMBER_NOT_FOUND
        if not members[req.ID].is_learner:
            raise errors.MEMBER_NOT_LEARNER
        self._strict_reconfig_check(members, promoting=req.ID)
        if not node.is_leader:
            data = await self._call_leader("member_promote", req.SerializeToString())
            return pb.MemberPromoteResponse.FromString(data)
        match = node.progress_match.get(req.ID)
        last = node.last_index
        # etcd: a learner is ready once its match index is at least 90 % of the leader's
        if match is None or match < last * LEARNER_READY_FRACTION:
            raise errors.LEARNER_NOT_READY
        m = members[req.ID]
        m.is_learner = False
        await self._propose_conf_change(ConfChangeType.ADD_NODE, req.ID, m)
        resp = pb.MemberPromoteResponse()
        resp.members.extend(self._member_pbs())
        resp.header.revision = self.current_revision
        return resp

    def _strict_reconfig_check(self, members: dict[int, membership.Member], *, adding: bool = False,
                               removing: int = 0, promoting: int = 0) -> None:
        """--strict-reconfig-check (etcd's mayAddMember/mayRemoveMember/mayPromoteMember): refuse a change of the
        voters that would leave fewer started members (ones that published their name) than the new quorum, or
        that this member cannot vouch for (it is not connected to the voters the change relies on)."""
        if not self.settings.strict_reconfig_check:
            return
        voters = [m for m in members.values() if not m.is_learner]
        started = [m for m in voters if m.name and m.id != removing]
        count = len([m for m in voters if m.id != removing]) + (1 if adding or promoting else 0)
        nstarted = len(started) + (1 if promoting else 0)
        if not (adding and nstarted == 1 and count == 2) and nstarted < count // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED
        connected = self._connected_voters(voters)
        if adding and connected < len(voters):
            raise errors.UNHEALTHY  # etcd: not connected to every voter, the new quorum may be unreachable
        if removing:
            if removing != self.member_id and removing not in self._connected_ids():
                return  # a member that is down is safe to remove: it is not part of the active quorum
            if connected - 1 < 1 + (len(voters) - 1) // 2:
                raise errors.UNHEALTHY

    def _connected_ids(self) -> set[int]:
        if self.transport is None:
            return set()
        stats = getattr(self.transport, "stats", None)
        if stats is None:  # a transport that cannot tell (test doubles): every known peer counts as reachable
            return set(self._peer_urls)
        return {pid for pid, st in stats().items() if st.connected}

    def _connected_voters(self, voters: list[membership.Member]) -> int:
        """Voters this member reaches now (itself included), as etcd's numConnectedSince counts them."""
        ids = self._connected_ids()
        return sum(1 for m in voters if m.id == self.member_id or m.id in ids)

    def member_list(self) -> pb.MemberListResponse:
        resp = pb.MemberListResponse()
        resp.members.extend(self._member_pbs())
        return resp

    async def _hand_over_leadership(self) -> None:
        """Graceful stop of a leader: hand leadership to the most caught-up voter first (as etcd on SIGTERM),
        so the cluster does not wait an election timeout. Best effort, bounded by an election timeout."""
        node = self.node
        progress = node.progress_match
        voters = [v for v in node.conf_state.voters if v != self.member_id and v in progress]
        if not voters:
            return
        target = max(voters, key=lambda v: progress[v])
        try:
            await self._transfer_leadership(target, max(1.0, 2 * self.settings.election_timeout_ms / 1000))
            log.info("handed leadership over before stopping", extra={"new-leader": f"{target:x}"})
        except EtcdError as exc:
            log.warning("could not hand leadership over before stopping: %s", exc.message)

    async def _transfer_leadership(self, target: int, timeout_s: float) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        node.transfer_leadership(target)
        while node.lead != target:
            if loop.time() > deadline:
                raise errors.TIMEOUT_LEADER_TRANSFER
            await asyncio.sleep(0.02)


def _valid_peer_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port is not None
    except ValueError:
        return False


def wrap_error(err: EtcdError) -> bytes:
    return b"\x01" + json.dumps({"code": err.code, "message": err.message}).encode()


def unwrap_answer(data: bytes) -> bytes:
    """A forwarded call's answer: ``0x00`` + payload, or ``0x01`` + an etcd error as JSON."""
    if data[:1] == b"\x00":
        return data[1:]
    if data[:1] == b"\x01":
        d = json.loads(data[1:])
        raise EtcdError(str(d["code"]), str(d["message"]))
    raise EtcdError("INTERNAL", "quorumkv: malformed answer from the leader")
