"""A traffic client facing a member that refuses every call backs off instead of spinning."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from quorumkv.testing.processes import free_port
from quorumkv.testing.robustness import traffic


@pytest.mark.timeout(60)
@pytest.mark.parametrize("profile", ["kubernetes", "etcd", "lease-heavy"])
async def test_a_client_backs_off_while_its_member_refuses(profile: str) -> None:
    """Nothing listens on the endpoint: every call fails at once. Over 2 s a client makes a few calls per pause
    (20 ms doubling to 500 ms: about eight steps), not thousands (a spinning client made 100,000+ in 40 s). The
    bound only fails if the client calls far more often than the pauses allow; a slow machine makes fewer."""
    config = traffic.TrafficConfig(endpoints=[f"127.0.0.1:{free_port()}"], profile=profile, clients=1,
                                   op_timeout_s=1.0, prefix="/t/")
    shared = traffic._Shared(config, "/t/")
    client = traffic._Client(0, shared, random.Random(1), time.monotonic() + 2.0)
    await asyncio.wait_for(client.run(), timeout=30)
    failed = sum(1 for op in shared.operations if op.error is not None) + sum(
        n for name, n in shared.counters.items() if name.endswith("_failed"))
    assert failed >= 3, (shared.counters, len(shared.operations))  # it did try, and kept trying
    assert failed <= 40, (shared.counters, len(shared.operations))
    assert client.failed_steps >= 3
