# Shared helpers for the scenario scripts: build, start/stop a local cluster, wait for files.
# Sourced, not run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"

build() {
    echo "building (cargo build --release) ..."
    (cd "$ROOT" && cargo build --release --quiet --workspace --bins)
}

# wait_for_file PATH SECONDS
wait_for_file() {
    local path=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        [[ -s $path ]] && return 0
        sleep 0.1
    done
    echo "timed out after ${secs}s waiting for $path" >&2
    return 1
}

# start_cluster DIR BROKERS: starts `shardq up` in the background; sets ROUTER and UP_PID.
start_cluster() {
    local dir=$1 brokers=$2
    mkdir -p "$dir"
    "$BIN/shardq" up --brokers "$brokers" --data "$dir" --port 0 >"$dir/up.out" 2>"$dir/up.err" &
    UP_PID=$!
    if ! wait_for_file "$dir/cluster.json" 60; then
        cat "$dir/up.out" "$dir/up.err" >&2
        return 1
    fi
    ROUTER=$(sed -n 's/.*"router": *"\([^"]*\)".*/\1/p' "$dir/cluster.json")
    # Every command below proves the cluster's secret, which `shardq up` wrote here.
    export SHARDQ_TOKEN_FILE="$dir/cluster.token"
    echo "local cluster up: router $ROUTER, $brokers broker(s), data in $dir"
}

stop_cluster() {
    if [[ -n ${UP_PID:-} ]] && kill -0 "$UP_PID" 2>/dev/null; then
        kill -TERM "$UP_PID" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            kill -0 "$UP_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$UP_PID" 2>/dev/null || true
    fi
    UP_PID=
}

# verdict NAME STATUS: prints NAME: PASS, or NAME: FAIL and keeps $WORK for a look; exits accordingly.
verdict() {
    local name=$1 status=$2
    if [[ $status -ne 0 ]]; then
        echo "$name: FAIL (logs kept in $WORK)"
        KEEP=1
        exit 1
    fi
    echo "$name: PASS"
}
