#!/usr/bin/env bash
# graphile-worker's commit -> handler start on this machine, beside reviews-bench's latency
# phase (docs/PERFORMANCE.md, run Q). A trigger on a table of reviews adds a graphile-worker
# job per insert carrying its transaction's start (now()); pgbench inserts at RATE/s from 8
# clients; the handler records when it began. Same origin as reviews-bench's figure: the
# writer's transaction start.
#
# Usage: bench/graphile-worker/run.sh [RATE] [SECONDS]   (default 200 and 20)
#   CONCURRENCY=N   graphile-worker's concurrency (default 10)
# Needs node and npm (graphile-worker 0.18.0 asks for Node 22.18+; it ran on Debian's 20),
# psql and pgbench. Uses BENCH_SERVER_URL's Postgres (default postgres://postgres@127.0.0.1:5432)
# with a scratch database gwbench, dropped at the end. Not part of scripts/test.
set -euo pipefail
cd "$(dirname "$0")"
rate="${1:-200}"
seconds="${2:-20}"
[[ "$rate" =~ ^[1-9][0-9]*$ && "$seconds" =~ ^[1-9][0-9]*$ ]] || {
    echo "usage: bench/graphile-worker/run.sh [RATE] [SECONDS] (whole numbers, at least 1)" >&2
    exit 2
}
server="${BENCH_SERVER_URL:-postgres://postgres@127.0.0.1:5432}"
url="$server/gwbench"
export PGOPTIONS="-c client_min_messages=warning"
[[ -d node_modules ]] || npm ci --no-audit --no-fund --silent
out="$(mktemp)"
worker=""
cleanup() {
    [[ -n "$worker" ]] && kill "$worker" 2>/dev/null && wait "$worker" 2>/dev/null
    rm -f "$out"
    psql "$server/postgres" -qc "drop database if exists gwbench with (force)"
}
trap cleanup EXIT
psql "$server/postgres" -qc "drop database if exists gwbench with (force)" -c "create database gwbench"
# The worker installs graphile-worker's schema as it starts; then the table and the trigger.
DATABASE_URL="$url" SECONDS_TO_RUN=0 node worker.js >/dev/null
psql "$url" -q -v ON_ERROR_STOP=1 -f setup.sql
DATABASE_URL="$url" SECONDS_TO_RUN=$((seconds + 3)) node worker.js >"$out" &
worker=$!
for _ in $(seq 150); do
    grep -q '^ready' "$out" && break
    kill -0 "$worker" 2>/dev/null || { echo "graphile-worker exited before it was ready" >&2; exit 1; }
    sleep 0.2
done
grep -q '^ready' "$out" || { echo "graphile-worker not ready after 30 s" >&2; exit 1; }
pgbench -n -R "$rate" -c 8 -j 2 -T "$seconds" -f insert.sql "$url" | grep -E '^tps'
wait "$worker"
worker=""
grep -v '^ready' "$out"
