#!/usr/bin/env bash
# Run the benchmark with a throw-away PostgreSQL (for the recording-to-PostgreSQL
# figures).  Needs wrk; nginx is used when installed (both Debian packages, installed
# here when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    [ -x /usr/sbin/nginx ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null || true
fi
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q ".[test]"; }
. scripts/postgres.sh
trap stop_postgres EXIT
start_postgres
ulimit -n 16384 2>/dev/null || true
.venv/bin/python benchmarks/run.py "$@"
