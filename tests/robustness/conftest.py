"""Local hook: tests in this directory marked ``slow`` run only when QUORUMKV_SLOW=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("QUORUMKV_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set QUORUMKV_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords and _HERE in Path(item.path).parents:
            item.add_marker(skip)
