#!/usr/bin/env bash
# Sets up a virtualenv (first run only) and starts a single quorumkv member on the embedded default
# (SQLite storage in ./default.quorumkv, clients on localhost:2379, as etcd). Extra arguments are etcd-style flags:
#   bash scripts/run.sh --name n1 --data-dir /var/lib/quorumkv --listen-client-urls http://0.0.0.0:2379 ...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/quorumkv ]; then
  echo "== setting up .venv (once)" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e .
fi
exec .venv/bin/quorumkv "$@"
