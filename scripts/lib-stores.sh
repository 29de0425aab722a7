# Sourced by the figure scripts: three `flotilla server` processes on loopback, each with a
# fresh data dir under one temporary directory, killed and removed when the script exits.
#
#   source "$(dirname "$0")/lib-stores.sh"
#   start_stores BINARY BASE_PORT NAME [SERVER FLAGS...]
#
# Sets P (the three addresses, comma-separated), WORK (the temporary directory; store i
# logs to $WORK/s$i.log) and pids (the server processes).

stop_stores() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
    rm -rf "$WORK"
}

start_stores() {
    local bin=$1 base=$2 name=$3 i
    shift 3
    P="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
    WORK=$(mktemp -d "/tmp/flotilla-$name.XXXXXX")
    pids=()
    trap stop_stores EXIT
    for i in 0 1 2; do
        "$bin" server --addr "127.0.0.1:$((base + i))" --peers "$P" --data-dir "$WORK/s$i" \
            "$@" >"$WORK/s$i.log" 2>&1 &
        pids+=($!)
    done
}
