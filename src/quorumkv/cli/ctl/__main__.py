"""``python -m quorumkv.cli.ctl``."""

from __future__ import annotations

import sys

from quorumkv.cli.ctl.app import main

if __name__ == "__main__":
    sys.exit(main())
