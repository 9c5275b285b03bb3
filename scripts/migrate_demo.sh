#!/usr/bin/env bash
# Live migration demo: a 3-broker local cluster, 3 topics x 8 partitions at the default
# replication factor (3), 3 producers at a steady rate and 2 consumers; a 4th broker joins, then
# broker 1 leaves gracefully, then broker 2 is SIGKILLed and kept down (its machine is "gone": the
# shards it led fail over to their in-sync replicas), all while traffic flows. Prints what moved
# at each step, then stops the load, verifies (every acknowledged record consumed exactly once per
# subscribed consumer, in per-producer order) and that the replicas left agree, and prints
# PASS/FAIL with the counts and the per-move statistics.
#   scripts/migrate_demo.sh            (RATE=records/s per producer, SECS=length of the load)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-400}
SECS=${SECS:-30}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shardq-migrate.XXXXXX")
cleanup() {
    for pid in ${LOAD_PIDS:-}; do kill -TERM "$pid" 2>/dev/null || true; done
    stop_cluster
    [[ -n ${KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

build
DATA="$WORK/cluster"
start_cluster "$DATA" 3
SQ() { "$BIN/shardq" "$@" --broker "$ROUTER"; }
for t in D1 D2 D3; do SQ topic create "$t" --partitions 8; done

LOGS="$WORK/logs"
mkdir -p "$LOGS"
lines=$((RATE * SECS))
for p in 1 2 3; do
    # `<time> <message> <partition|*> <topic>`: mostly T:* (partitioner picks), some explicit.
    awk -v n="$lines" -v p="$p" 'BEGIN {
        srand(p);
        for (i = 1; i <= n; i++) {
            t = "D" (1 + int(rand() * 3));
            part = (rand() < 0.75) ? "*" : "P" (1 + int(rand() * 8));
            printf "12:00:%02d\tp%d-m%d\t%s\t%s\n", i % 60, p, i, part, t;
        }
    }' >"$LOGS/producer_$p.txt"
done

"$BIN/runconsume" --id 1 --topics 'D1:*' 'D2:*' 'D3:*' --broker "$ROUTER" --log_loc "$LOGS" --idle-timeout 10 2>"$LOGS/c1.err" &
C1=$!
"$BIN/runconsume" --id 2 --topics 'D2:*' D3:P1 D3:P5 --broker "$ROUTER" --log_loc "$LOGS" --idle-timeout 10 2>"$LOGS/c2.err" &
C2=$!
PIDS=()
for p in 1 2 3; do
    "$BIN/runproduce" --id "$p" --topics 'D1:*' 'D2:*' 'D3:*' --broker "$ROUTER" --log_loc "$LOGS" \
        --ack-log --rate "$RATE" --timeout-secs 60 2>"$LOGS/p$p.err" &
    PIDS+=($!)
done
LOAD_PIDS="$C1 $C2 ${PIDS[*]}"
echo "load: 3 producers x $RATE records/s for ${SECS}s; 2 consumers"

START=$SECONDS
step() { echo "--- [$((SECONDS - START))s into the load] $*"; }
sleep 3
step "adding broker 4"
"$BIN/shardq" broker add --data "$DATA"
SQ wait-balanced --owner 4
step "removing broker 1 (graceful drain)"
SQ broker remove 1
SQ wait-balanced
# `shardq up` restarts a broker that dies unless DATA/control/hold-broker-N exists: with the
# file, a SIGKILLed broker stays down, as if its machine were gone.
step "SIGKILL broker 2, held down by $DATA/control/hold-broker-2"
touch "$DATA/control/hold-broker-2"
pid2=$(tr -d ' \n' <"$DATA/cluster.json" | grep -o '"broker_pids":\[.*\]' | grep -o '\[2,[0-9]*\]' | tr -dc '0-9,' | cut -d, -f2)
[[ -n $pid2 ]] || { echo "no pid for broker 2 in $DATA/cluster.json" >&2; exit 1; }
kill -KILL "$pid2"
alive=0
for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
echo "    $alive of 3 producers still sending when broker 2 died"
status=0
for pid in "${PIDS[@]}"; do
    wait "$pid" || status=1
done
for p in 1 2 3; do echo "producer $p: $(tail -n 1 "$LOGS/p$p.err")"; done
wait "$C1" || status=1
wait "$C2" || status=1
for c in 1 2; do echo "consumer $c: $(tail -n 1 "$LOGS/c$c.err")"; done
LOAD_PIDS=

echo "--- moves"
SQ moves
echo "--- cluster"
SQ status | sed -n '1,/^topics/p'
echo "--- replica checksums (the two replicas left of every shard must agree)"
for t in D1 D2 D3; do
    for p in $(seq 1 8); do
        SQ shard checksum "$t:$p" >"$LOGS/checksum-$t-$p.txt" 2>&1 || {
            status=1
            echo "$t:$p: replicas disagree or could not be read:"
            cat "$LOGS/checksum-$t-$p.txt"
        }
    done
done
[[ $status -ne 0 ]] || echo "all 24 shards: replicas agree"
echo "--- verify"
if ! "$BIN/shardq" verify --log-dir "$LOGS" --consumer '1=D1:*,D2:*,D3:*' --consumer '2=D2:*,D3:P1,D3:P5'; then
    status=1
fi
verdict "migrate demo" "$status"
