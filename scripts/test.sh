#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs lint, type checks and the whole suite.
#   bash scripts/test.sh            # the default suite (what CI runs)
#   bash scripts/test.sh -k watch   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# Debian's etcd 3.4 (server and etcdctl) for interop and differential tests.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  echo "== installing Debian's etcd-server and etcd-client (interop tests need them)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
# The Debian package starts a system etcd on :2379; tests use their own ports, but stop it to free the CPU.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check src tests bench scripts
echo "== mypy"
.venv/bin/mypy
echo "== stubs current"
.venv/bin/python scripts/gen_protos.py --check
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; fi
exit "$rc"
