#!/usr/bin/env bash
# Run the benchmark with a throw-away PostgreSQL (for the recording-to-PostgreSQL
# figures).  Needs wrk (apt-get install wrk); nginx is used when installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q ".[test]"; }
. scripts/postgres.sh
trap stop_postgres EXIT
start_postgres
ulimit -n 16384 2>/dev/null || true
.venv/bin/python benchmarks/run.py "$@"
