"""The join service's checks, in process (server/join.py): bad input never reaches the cluster."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from quorumkv.errors import EtcdError
from quorumkv.security import cluster_pki as pki
from quorumkv.server.join import JoinService, Managed, must_match
from quorumkv.server.settings import ServerSettings
from quorumkv.storage import membership


class FakeMember:
    """Just what the join service reads before it changes anything; proposing fails the test."""

    def __init__(self, members: dict[int, membership.Member]) -> None:
        self.settings = ServerSettings()
        self.is_learner = False
        self.members = members

    def _members(self) -> dict[int, membership.Member]:
        return self.members

    async def _propose_conf_change(self, *args: Any) -> None:
        raise AssertionError("the cluster must not change")


def _service(tmp_path: Path, members: dict[int, membership.Member] | None = None) -> JoinService:
    ca = pki.make_ca(tmp_path / "tls")
    pki.write_token_file(tmp_path / "token", pki.format_token(ca.pem, "right"))
    managed = Managed(tmp_path / "tls", tmp_path / "token", [], 600.0)
    return JoinService(FakeMember(members or {}), managed)


def _request(**changes: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"secret": "right", "name": "n2", "peer_urls": ["https://127.0.0.2:2380"],
                           "client_urls": ["https://127.0.0.2:2379"], "tls_san": [],
                           "settings": must_match(ServerSettings())}
    req.update(changes)
    return req


@pytest.mark.parametrize(("changes", "code", "words"), [
    ({"secret": "wrong"}, "PERMISSION_DENIED", "secret is wrong"),
    ({"secret": 5}, "PERMISSION_DENIED", "secret is wrong"),
    ({"name": ""}, "INVALID_ARGUMENT", "malformed request"),
    ({"peer_urls": "https://x:1"}, "INVALID_ARGUMENT", "malformed request"),
    ({"settings": None}, "INVALID_ARGUMENT", "malformed request"),
    ({"settings": {**must_match(ServerSettings()), "--max-txn-ops": 64}}, "FAILED_PRECONDITION",
     "--max-txn-ops differs: the cluster uses 128, the joining member 64"),
    ({"settings": {}}, "FAILED_PRECONDITION", "did not send --heartbeat-interval"),
])
def test_refusals(tmp_path: Path, changes: dict[str, Any], code: str, words: str) -> None:
    with pytest.raises(EtcdError) as err:
        asyncio.run(_service(tmp_path).handle(_request(**changes)))
    assert err.value.code == code and words in err.value.message


def test_name_and_peer_url_in_use_and_one_learner_at_a_time(tmp_path: Path) -> None:
    voter = membership.Member(1, "n2", ["https://127.0.0.9:2380"], [])
    with pytest.raises(EtcdError, match="a member named 'n2'"):
        asyncio.run(_service(tmp_path, {1: voter}).handle(_request()))
    other = membership.Member(1, "n1", ["https://127.0.0.2:2380"], [])
    with pytest.raises(EtcdError, match=re.escape("peer URL https://127.0.0.2:2380 is already used by member n1")):
        asyncio.run(_service(tmp_path, {1: other}).handle(_request()))
    learner = membership.Member(3, "n3", ["https://127.0.0.3:2380"], [], is_learner=True)
    with pytest.raises(EtcdError, match="one member joins at a time") as err:
        asyncio.run(_service(tmp_path, {3: learner}).handle(_request()))
    assert err.value.code == "UNAVAILABLE"
