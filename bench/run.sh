#!/usr/bin/env bash
# `make bench`: echo servers side by side under the native load generator, and the example
# Redis and HTTP servers under redis-benchmark and wrk (left out when not installed), and a
# 10 MiB static file over HTTP (static10m: sendfile against uvloop).
# Assumes `make build` has set up .venv with hamanet; installs the peer loops it compares
# against (uvloop, rloop when it installs), matplotlib for the chart and trustme for the
# TLS scenarios' certificates (made fresh per run). Arguments go to bench/run.py (--quick,
# --rounds N, --servers ..., --scenarios ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if ! "$PY" -c "import uvloop, matplotlib, trustme" 2>/dev/null; then
    "$PY" -m pip install --quiet uvloop matplotlib trustme
fi
# rloop is optional: the run leaves it out if it is not installable here.
if ! "$PY" -c "import rloop" 2>/dev/null; then
    "$PY" -m pip install --quiet rloop || echo "note: rloop did not install; it is left out"
fi
export BENCH_COMMAND="bench/run.sh${*:+ $*}"
exec "$PY" bench/run.py "$@"
