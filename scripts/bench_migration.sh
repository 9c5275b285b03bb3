#!/usr/bin/env bash
# Migration benchmark on a real local cluster: one broker holds 4 shards of ~210 MB each (1 KiB
# records), a light producer keeps writing to them, then brokers 2 and 3 join and shards migrate.
# Prints every move with its copy rate (bytes over the move's duration, fence and flip included)
# and the write pause (fence to activate), with the median and max.
#   scripts/bench_migration.sh        (MB_PER_SHARD=210 by default)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
MB_PER_SHARD=${MB_PER_SHARD:-210}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardq-migbench.XXXXXX")
cleanup() {
    [[ -n ${LOAD:-} ]] && kill -TERM "$LOAD" 2>/dev/null || true
    stop_cluster
    rm -rf "$WORK"
}
trap cleanup EXIT
build
DATA="$WORK/cluster"
start_cluster "$DATA" 1
SQ() { "$BIN/shardq" "$@" --broker "$ROUTER"; }
SQ topic create H --partitions 4
count=$((MB_PER_SHARD * 4 * 1000000 / 1024))
echo "loading $count records of 1 KiB ($((MB_PER_SHARD * 4)) MB) into H:P1..P4 ..."
"$BIN/runproduce" --id 1 --topics H:P1 H:P2 H:P3 H:P4 --broker "$ROUTER" --count "$count" --size 1024
# Light live traffic during the moves, so the write pause is measured under writes.
"$BIN/runproduce" --id 2 --topics 'H:*' --broker "$ROUTER" --count 200000 --size 100 --rate 2000 --timeout-secs 120 2>"$WORK/load.err" &
LOAD=$!
for id in 2 3; do
    echo "--- adding broker $id"
    "$BIN/shardq" broker add --data "$DATA"
    SQ wait-balanced --owner "$id" --timeout-secs 600
done
echo "--- moves"
SQ moves
