"""``quorumkvctl``: an etcdctl 3.4 compatible command-line client (same grammar, flags, output and errors).

Run it as ``quorumkvctl ...`` (console script) or ``python -m quorumkv.cli.ctl ...``; see docs/quorumkvctl.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exits the process with etcdctl's exit status when used as a console script."""
    from quorumkv.cli.ctl.app import main as run

    code = run(argv)
    if argv is None:
        sys.exit(code)
    return code
