#!/usr/bin/env bash
# The counter example end to end: three servers on loopback, a few increments, the leader
# killed, a new leader serving the same value. Stops everything it started on exit.
# Run from anywhere in the repository: bash crates/flotilla-node/examples/counter/demo.sh
set -euo pipefail

cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
echo "== building (cargo build --release -p flotilla-node --example counter)"
cargo build --release -p flotilla-node --example counter
BIN=target/release/examples/counter

DATA=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-counter.XXXXXX")
PEERS=127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083
SERVERS=127.0.0.1:9081,127.0.0.1:9082,127.0.0.1:9083
declare -A PID

cleanup() {
    for port in "${!PID[@]}"; do
        kill "${PID[$port]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

start() {
    local port=$1
    "$BIN" server --addr "127.0.0.1:$port" --peers "$PEERS" --data-dir "$DATA/$port" \
        >"$DATA/$port.log" 2>&1 &
    PID[$port]=$!
    echo "started server 127.0.0.1:$port (pid ${PID[$port]}, log $DATA/$port.log)"
}

client() {
    echo "\$ counter client --servers $SERVERS $*" >&2
    "$BIN" client --servers "$SERVERS" "$@"
}

# Asks until a leader is known (the client itself retries for a few seconds).
wait_for_leader() {
    local leader
    for _ in $(seq 1 30); do
        if leader=$("$BIN" client --servers "$SERVERS" leader 2>/dev/null); then
            echo "$leader"
            return 0
        fi
        echo "waiting for a leader to answer..." >&2
        sleep 1
    done
    echo "no leader after 30 attempts; server logs in $DATA" >&2
    return 1
}

for port in 8081 8082 8083; do
    start $port
done

echo "== waiting for a leader"
LEADER=$(wait_for_leader)
echo "leader answers on $LEADER"

echo "== increments and a read"
client incr 5
client incr 10
client incr -3
BEFORE=$(client get)
echo "$BEFORE"

# The leader's client port is its raft port + 1000.
LEADER_PORT=$((${LEADER##*:} - 1000))
echo "== killing the leader 127.0.0.1:$LEADER_PORT (pid ${PID[$LEADER_PORT]})"
kill "${PID[$LEADER_PORT]}"
wait "${PID[$LEADER_PORT]}" 2>/dev/null || true
unset "PID[$LEADER_PORT]"

echo "== waiting for a new leader"
NEW_LEADER=$(wait_for_leader)
echo "new leader answers on $NEW_LEADER"
AFTER=$(client get)
echo "$AFTER"
if [ "$AFTER" != "$BEFORE" ]; then
    echo "FAILED: the value was $BEFORE before the kill and is $AFTER after" >&2
    exit 1
fi
client incr 1

echo "== restarting the old leader from its data dir"
start "$LEADER_PORT"
for _ in $(seq 1 20); do
    grep -q "leader is" "$DATA/$LEADER_PORT.log" && break
    echo "waiting for 127.0.0.1:$LEADER_PORT to rejoin..."
    sleep 0.5
done
echo "== its log:"
cat "$DATA/$LEADER_PORT.log"
echo "== a linearizable read on the restarted server alone"
"$BIN" client --servers "127.0.0.1:$((LEADER_PORT + 1000))" get
echo "== demo passed: the value survived the leader's death ($BEFORE)"
