"""``python -m quorumkv``: the same entry point as the ``quorumkv`` console script."""

from quorumkv.cli.server import main

if __name__ == "__main__":
    raise SystemExit(main())
