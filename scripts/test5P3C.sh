#!/usr/bin/env bash
# A 5-producer/3-consumer scenario on generated log files:
#   scripts/test5P3C.sh [ROUTER_ADDR]     (LINES=records per producer, default 2000)
# Topics T1, T2, T3 with 3 partitions each. Producers 1-2 name explicit partitions, producers 3-5
# mostly send to T:* (the partitioner picks); consumer 1 reads everything, consumer 2 reads T2:*
# and T1:P1, consumer 3 reads T3:P2 T3:P3. Verifies and prints PASS or FAIL.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

LINES=${LINES:-2000}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardq-5p3c.XXXXXX")
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
for t in T1 T2 T3; do "$BIN/shardq" topic create "$t" --partitions 3 --broker "$ROUTER"; done
for p in 1 2 3 4 5; do
    awk -v n="$LINES" -v p="$p" 'BEGIN {
        srand(p * 7);
        for (i = 1; i <= n; i++) {
            t = "T" (1 + int(rand() * 3));
            star = (p >= 3 && rand() < 0.8);
            part = star ? "*" : "P" (1 + int(rand() * 3));
            printf "21:%02d:%02d\tP%dMSG%d\t\t%s\t\t%s\n", int(i / 60) % 60, i % 60, p, i, part, t;
        }
    }' >"$LOGS/producer_$p.txt"
done

IDLE=${IDLE_TIMEOUT:-5}
consume() { "$BIN/runconsume" --id "$1" --broker "$ROUTER" --log_loc "$LOGS" --idle-timeout "$IDLE" --topics "${@:2}" & }
consume 1 'T1:*' 'T2:*' 'T3:*'
C1=$!
consume 2 'T2:*' T1:P1
C2=$!
consume 3 T3:P2 T3:P3
C3=$!
PIDS=()
for p in 1 2 3 4 5; do
    "$BIN/runproduce" --id "$p" --topics 'T1:*' 'T2:*' 'T3:*' --broker "$ROUTER" --log_loc "$LOGS" --ack-log &
    PIDS+=($!)
done
status=0
for pid in "${PIDS[@]}" $C1 $C2 $C3; do
    wait "$pid" || status=1
done
echo "--- verify"
if ! "$BIN/shardq" verify --log-dir "$LOGS" --consumer '1=T1:*,T2:*,T3:*' --consumer '2=T2:*,T1:P1' \
    --consumer '3=T3:P2,T3:P3'; then
    status=1
fi
verdict "5P3C" "$status"
