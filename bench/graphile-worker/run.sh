#!/usr/bin/env bash
# graphile-worker's commit -> handler start on this machine, beside reviews-bench's latency
# phase (docs/PERFORMANCE.md, run Q). A trigger on a table of reviews adds a graphile-worker
# job per insert carrying its transaction's start (now()); pgbench inserts at RATE/s from 8
# clients; the handler records when it began. Same origin as reviews-bench's figure: the
# writer's transaction start.
#
# Usage: bench/graphile-worker/run.sh [RATE] [SECONDS]   (default 200 and 20)
# Needs node and npm (graphile-worker 0.18.0 asks for Node 22.18+; it ran on Debian's 20),
# psql and pgbench. Uses BENCH_SERVER_URL's Postgres (default postgres://postgres@127.0.0.1:5432)
# with a scratch database gwbench, dropped at the end. Not part of scripts/test.
set -euo pipefail
cd "$(dirname "$0")"
rate="${1:-200}"
seconds="${2:-20}"
server="${BENCH_SERVER_URL:-postgres://postgres@127.0.0.1:5432}"
url="$server/gwbench"
[[ -d node_modules ]] || npm ci --no-audit --no-fund --silent
out="$(mktemp)"
trap 'rm -f "$out"; PGOPTIONS="-c client_min_messages=warning" psql "$server/postgres" -qc "drop database if exists gwbench"' EXIT
PGOPTIONS="-c client_min_messages=warning" psql "$server/postgres" -qc "drop database if exists gwbench" -c "create database gwbench"
# The worker installs graphile-worker's schema as it starts; then the table and the trigger.
DATABASE_URL="$url" SECONDS_TO_RUN=0 node worker.js >/dev/null
psql "$url" -q -f setup.sql
DATABASE_URL="$url" SECONDS_TO_RUN=$((seconds + 3)) node worker.js >"$out" &
worker=$!
until grep -q '^ready' "$out"; do sleep 0.2; done
pgbench -n -R "$rate" -c 8 -j 2 -T "$seconds" -f insert.sql "$url" 2>&1 | grep -E '^tps'
wait "$worker"
grep -v '^ready' "$out"
