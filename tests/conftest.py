"""Suite-wide hooks."""

from __future__ import annotations

import os

import pytest

SLOW_ENV = "QUORUMKV_SLOW"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run only with ``QUORUMKV_SLOW=1``; otherwise they are reported as skipped."""
    if os.environ.get(SLOW_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow test: set {SLOW_ENV}=1 to run it")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
