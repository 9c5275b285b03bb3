#!/usr/bin/env bash
# The 2-producer/2-consumer scenario.
#   scripts/test2P2C.sh              build, start a local 3-broker cluster in a temp dir, run, stop it
#   scripts/test2P2C.sh ROUTER_ADDR  run against a cluster that is already running
# Creates T1 and T2 with partitions P1 and P2; consumer 1 reads T1:P1 T2:P1 T1:P2 T2:P2, consumer 2
# reads T1:* T2:*; producer 1 sends scripts/logs/producer_1.txt to T1:P1 T2:P1 T1:P2 T2:P2, producer 2
# sends scripts/logs/producer_2.txt to T1:* T2:*. Then verifies (every consumer got every record of
# its shards exactly once, in per-producer order) and prints PASS or FAIL.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardq-2p2c.XXXXXX")
cleanup() { stop_cluster; [[ -n ${KEEP:-} ]] || rm -rf "$WORK"; }
trap cleanup EXIT

build
if [[ $# -ge 1 ]]; then
    ROUTER=$1
else
    start_cluster "$WORK/cluster" 3
fi
LOGS="$WORK/logs"
mkdir -p "$LOGS"
cp "$ROOT/scripts/logs/producer_1.txt" "$ROOT/scripts/logs/producer_2.txt" "$LOGS/"

"$BIN/shardq" topic create T1 --partitions 2 --broker "$ROUTER"
"$BIN/shardq" topic create T2 --partitions 2 --broker "$ROUTER"

IDLE=${IDLE_TIMEOUT:-5}
"$BIN/runconsume" --id 1 --topics T1:P1 T2:P1 T1:P2 T2:P2 --broker "$ROUTER" --log_loc "$LOGS" --idle-timeout "$IDLE" &
C1=$!
"$BIN/runconsume" --id 2 --topics 'T1:*' 'T2:*' --broker "$ROUTER" --log_loc "$LOGS" --idle-timeout "$IDLE" &
C2=$!
"$BIN/runproduce" --id 1 --topics T1:P1 T2:P1 T1:P2 T2:P2 --broker "$ROUTER" --log_loc "$LOGS" --ack-log &
P1=$!
"$BIN/runproduce" --id 2 --topics 'T1:*' 'T2:*' --broker "$ROUTER" --log_loc "$LOGS" --ack-log &
P2=$!

status=0
wait $P1 || { echo "producer 1 failed" >&2; status=1; }
wait $P2 || { echo "producer 2 failed" >&2; status=1; }
wait $C1 || { echo "consumer 1 failed" >&2; status=1; }
wait $C2 || { echo "consumer 2 failed" >&2; status=1; }

echo "--- verify"
if ! "$BIN/shardq" verify --log-dir "$LOGS" --consumer '1=T1:P1,T2:P1,T1:P2,T2:P2' --consumer '2=T1:*,T2:*'; then
    status=1
fi
verdict "2P2C" "$status"
