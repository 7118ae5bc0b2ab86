"""Fixtures for the HTTP-side tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from .obskit import Member, start_test_member


@pytest_asyncio.fixture
async def member(tmp_path: Path) -> AsyncIterator[Member]:
    m = await start_test_member(tmp_path / "data")
    try:
        yield m
    finally:
        await m.channel.close()
        await m.running.close()
