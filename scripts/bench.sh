#!/usr/bin/env bash
# The benchmark matrix quoted in the README: local clusters of 1 and 3 brokers, 100 B and 1 KiB
# records, the default fsync policy and `always`; throughput (produce and end-to-end) and latency at
# a fixed 10,000 msgs/s. Each configuration runs RUNS times (default 3); the table shows medians.
#   scripts/bench.sh [RUNS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${1:-3}
build
OUT=$(mktemp -d "${TMPDIR:-/tmp}/shardq-bench.XXXXXX")
for brokers in 1 3; do
    for fsync in interval=100 always; do
        for size in 100 1024; do
            count=$([[ $size -eq 100 ]] && echo 1000000 || echo 300000)
            for ((r = 1; r <= RUNS; r++)); do
                "$BIN/shardq" bench --json --brokers "$brokers" --fsync "$fsync" --size "$size" \
                    --count "$count" --partitions 4 --producers 2 --consumers 2 --latency-secs 5 \
                    >>"$OUT/b${brokers}_${fsync}_${size}.jsonl"
            done
            echo "done: $brokers broker(s), fsync $fsync, $size B" >&2
        done
    done
done
"$BIN/shardq" bench-report "$OUT"/*.jsonl
