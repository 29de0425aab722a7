#!/usr/bin/env bash
# Flotilla and etcd side by side on this machine, in the same run, under the same load.
#
# Starts a 3-member etcd cluster (Debian's etcd-server, installed if missing) and a
# 3-process Flotilla cluster on loopback, both with their default settings (fsync on: etcd
# always fsyncs its WAL, Flotilla fsyncs its shared log before acknowledging), then runs
# `flotilla bench` against each in alternation — the same workload, key space and client
# count — and prints one table with the Flotilla/etcd ratios of throughput and p99 latency.
# Then (unless skipped) RheaKV's mix on a 24-region Flotilla cluster, and resident memory
# per process idle and under load with 1 and 1,000 regions (etcd's beside it).
# Everything it starts, it stops (also on Ctrl-C or an error); data lives in a temporary
# directory, removed at the end unless KEEP=1.
#
# Usage: scripts/bench-vs-etcd.sh [--duration S] [--clients "1 16 64 256"]
#            [--workloads "write mix read lease"] [--skip-rheakv] [--skip-memory]
#            [--json FILE]
# Environment: FLOTILLA_PORT_BASE (27001), ETCD_PORT_BASE (22379), BENCH_DIR (a new
# directory under ${TMPDIR:-/tmp}), KEEP=1 to keep data and logs, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=10
CLIENTS="1 16 64 256"
WORKLOADS="write mix read lease"
RHEAKV=1
MEMORY=1
JSON_OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --skip-rheakv) RHEAKV=0; shift ;;
        --skip-memory) MEMORY=0; shift ;;
        --json) JSON_OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "bench-vs-etcd: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for w in $WORKLOADS; do
    case "$w" in write|mix|read|lease) ;; *)
        echo "bench-vs-etcd: unknown workload $w: expected write, mix, read or lease" >&2; exit 2 ;;
    esac
done

FPORT=${FLOTILLA_PORT_BASE:-27001}
EPORT=${ETCD_PORT_BASE:-22379}
WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-etcd.XXXXXX")}
mkdir -p "$WORK"
RESULTS=$WORK/results.jsonl
: > "$RESULTS"
PIDS=()

log() { printf '==> %s\n' "$*" >&2; }

stop_pids() {
    # SIGTERM, up to 5 s to exit, then SIGKILL; only the processes this script started.
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
    if [ "${KEEP:-0}" = 1 ]; then
        log "data, logs and results kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- prerequisites: etcd from Debian's packages, protoc for the etcd client's build ----
need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]} from Debian's packages"
    if [ "$(id -u)" != 0 ]; then
        echo "bench-vs-etcd: need ${need_apt[*]}; run as root or install them" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v python3 >/dev/null || { echo "bench-vs-etcd: python3 is needed for the table" >&2; exit 1; }

log "building flotilla (release, with the etcd client)"
cargo build --release -q -p flotilla --features etcd
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FLOTILLA=$TARGET_DIR/release/flotilla
[ -x "$FLOTILLA" ] || { echo "bench-vs-etcd: $FLOTILLA was not built" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $FPORT $((FPORT + 1)) $((FPORT + 2)) \
            $EPORT $((EPORT + 1)) $((EPORT + 100)) $((EPORT + 101)) $((EPORT + 200)) $((EPORT + 201)); do
    port_free "$port" || { echo "bench-vs-etcd: port $port is in use (set FLOTILLA_PORT_BASE / ETCD_PORT_BASE)" >&2; exit 1; }
done

# ---- the clusters ----
ETCD_ENDPOINTS=127.0.0.1:$EPORT,127.0.0.1:$((EPORT + 100)),127.0.0.1:$((EPORT + 200))
ETCD_PIDS=()
start_etcd() {
    local initial="" i
    for i in 0 1 2; do
        initial+="${initial:+,}e$i=http://127.0.0.1:$((EPORT + 100 * i + 1))"
    done
    for i in 0 1 2; do
        local client=http://127.0.0.1:$((EPORT + 100 * i)) peer=http://127.0.0.1:$((EPORT + 100 * i + 1))
        etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token bench-vs-etcd --log-level warn \
            >"$WORK/etcd-e$i.log" 2>&1 &
        PIDS+=($!)
        ETCD_PIDS+=($!)
    done
    for _ in $(seq 150); do
        if etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "bench-vs-etcd: etcd did not become healthy within 30 s; see $WORK/etcd-e*.log" >&2
    exit 1
}

FLOTILLA_PIDS=()
# start_flotilla PORT_BASE REGIONS NAME: a 3-process cluster, default settings otherwise.
start_flotilla() {
    local base=$1 regions=$2 name=$3 peers="" i
    for i in 0 1 2; do peers+="${peers:+,}127.0.0.1:$((base + i))"; done
    FLOTILLA_PIDS=()
    for i in 0 1 2; do
        "$FLOTILLA" server --addr "127.0.0.1:$((base + i))" --peers "$peers" \
            --regions "$regions" --data-dir "$WORK/$name/$i" \
            >"$WORK/$name-$i.log" 2>&1 &
        PIDS+=($!)
        FLOTILLA_PIDS+=($!)
    done
    FLOTILLA_ENDPOINTS=$peers
    # Ready when every region has a leader (`flotilla bench` waits too; this is for the
    # memory figures, which read the processes while idle).
    for _ in $(seq 600); do
        if "$FLOTILLA" admin --endpoints "$peers" --json status 2>/dev/null | python3 -c '
import json, sys
status = json.load(sys.stdin)
regions = status.get("regions", [])
sys.exit(0 if status.get("ok") and len(regions) == int(sys.argv[1]) and all(r["leader"] for r in regions) else 1)
' "$regions"; then return 0; fi
        sleep 0.2
    done
    echo "bench-vs-etcd: the $name cluster did not elect its leaders within 120 s; see $WORK/$name-*.log" >&2
    exit 1
}

stop_group() {
    local pid kept=()
    stop_pids "$@"
    for pid in "${PIDS[@]}"; do
        case " $* " in *" $pid "*) ;; *) kept+=("$pid") ;; esac
    done
    PIDS=("${kept[@]}")
}

# bench TARGET ENDPOINTS WORKLOAD CLIENTS [extra flags...]: one JSON line into $RESULTS.
bench() {
    local target=$1 endpoints=$2 workload=$3 clients=$4
    shift 4
    local read=index w=$workload
    if [ "$workload" = lease ]; then read=lease; w=read; fi
    local out
    if ! out=$("$FLOTILLA" bench --target "$target" --endpoints "$endpoints" --workload "$w" \
        --read "$read" --clients "$clients" --duration "$DURATION" --json "$@" \
        2>>"$WORK/bench.log"); then
        echo "bench-vs-etcd: flotilla bench --target $target --workload $workload --clients $clients failed: $out" >&2
        exit 1
    fi
    printf '%s\n' "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
r["cell"] = sys.argv[1]
print(json.dumps(r))
print("    %-8s %-8s %4d clients: %9.0f ops/s  p99 %8.3f ms  errors %d"
      % (r["target"], sys.argv[1], r["clients"], r["ops_per_sec"], r["p99_ms"], r["errors"]),
      file=sys.stderr)
' "$workload" >>"$RESULTS"
}

# rss_mb PID...: resident memory of each, in MiB.
rss_mb() {
    local pid
    for pid in "$@"; do
        awk '/VmRSS/ {printf "%.0f ", $2/1024}' "/proc/$pid/status" 2>/dev/null || printf '? '
    done
}
# peak_rss_during PIDS... -- COMMAND...: runs COMMAND while sampling; prints the peaks.
peak_rss_during() {
    local pids=() pid
    while [ "$1" != -- ]; do pids+=("$1"); shift; done
    shift
    local peaks_file=$WORK/peaks
    ( declare -A peak
      while true; do
          for pid in "${pids[@]}"; do
              kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
              [ "${kb:-0}" -gt "${peak[$pid]:-0}" ] && peak[$pid]=$kb
          done
          out=""
          for pid in "${pids[@]}"; do out+="$(( ${peak[$pid]:-0} / 1024 )) "; done
          echo "$out" > "$peaks_file"
          sleep 0.25
      done ) &
    local sampler=$!
    "$@" >/dev/null
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    cat "$peaks_file"
}

log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
log "$(etcd --version | head -1), $("$FLOTILLA" --version)"
log "starting etcd (3 members) and Flotilla (3 stores, 1 region: the defaults) in $WORK"
start_etcd
start_flotilla "$FPORT" 1 flotilla
MEMORY_LINES=()
if [ "$MEMORY" = 1 ]; then
    sleep 2
    MEMORY_LINES+=("flotilla 1 region      idle: $(rss_mb "${FLOTILLA_PIDS[@]}")MiB (after start)")
    MEMORY_LINES+=("etcd                   idle: $(rss_mb "${ETCD_PIDS[@]}")MiB (after start)")
fi

# ---- the side-by-side table: each cell runs both systems, alternating who goes first ----
log "running each workload for $DURATION s per system and client count"
turn=0
for workload in $WORKLOADS; do
    for clients in $CLIENTS; do
        if [ $((turn % 2)) = 0 ]; then
            bench flotilla "$FLOTILLA_ENDPOINTS" "$workload" "$clients"
            bench etcd "$ETCD_ENDPOINTS" "$workload" "$clients"
        else
            bench etcd "$ETCD_ENDPOINTS" "$workload" "$clients"
            bench flotilla "$FLOTILLA_ENDPOINTS" "$workload" "$clients"
        fi
        turn=$((turn + 1))
    done
done

if [ "$MEMORY" = 1 ]; then
    log "memory under load: 1 region per process (the table's cluster) and etcd"
    MEMORY_LINES+=("flotilla 1 region      load: $(peak_rss_during "${FLOTILLA_PIDS[@]}" -- \
        "$FLOTILLA" bench --target flotilla --endpoints "$FLOTILLA_ENDPOINTS" --workload write \
        --clients 256 --duration "$DURATION" --json)MiB (peak during write, 256 clients)")
    MEMORY_LINES+=("etcd                   load: $(peak_rss_during "${ETCD_PIDS[@]}" -- \
        "$FLOTILLA" bench --target etcd --endpoints "$ETCD_ENDPOINTS" --workload write \
        --clients 256 --duration "$DURATION" --json)MiB (peak during write, 256 clients)")
fi

# The comparison is over: etcd's members stop here, so they take no CPU from what follows.
stop_group "${ETCD_PIDS[@]}"
stop_group "${FLOTILLA_PIDS[@]}"

RHEAKV_FILE=$WORK/rheakv.jsonl
: >"$RHEAKV_FILE"
if [ "$RHEAKV" = 1 ]; then
    log "RheaKV's mix on 24 regions (3 stores), 256 and 1024 clients"
    start_flotilla $((FPORT + 10)) 24 flotilla24
    for clients in 256 1024; do
        bench flotilla "$FLOTILLA_ENDPOINTS" mix "$clients"
        tail -n 1 "$RESULTS" >>"$RHEAKV_FILE"
        # Not part of the side-by-side table.
        sed -i '$d' "$RESULTS"
    done
    stop_group "${FLOTILLA_PIDS[@]}"
fi

if [ "$MEMORY" = 1 ]; then
    log "memory: 1,000 regions per process"
    start_flotilla $((FPORT + 20)) 1000 flotilla1000
    sleep 5
    MEMORY_LINES+=("flotilla 1,000 regions idle: $(rss_mb "${FLOTILLA_PIDS[@]}")MiB (5 s after every region has a leader)")
    MEMORY_LINES+=("flotilla 1,000 regions load: $(peak_rss_during "${FLOTILLA_PIDS[@]}" -- \
        "$FLOTILLA" bench --target flotilla --endpoints "$FLOTILLA_ENDPOINTS" --workload write \
        --clients 256 --duration "$DURATION" --json)MiB (peak during write, 256 clients)")
    stop_group "${FLOTILLA_PIDS[@]}"
fi

[ -n "$JSON_OUT" ] && cp "$RESULTS" "$JSON_OUT"

# ---- the table ----
python3 - "$RESULTS" "$RHEAKV_FILE" "$(nproc)" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cells = {}
for r in rows:
    cells.setdefault((r["cell"], r["clients"]), {})[r["target"]] = r
names = {"write": "write", "mix": "mix 90/10", "read": "read 95/5",
         "lease": "read 95/5 lease*"}
print()
print("| workload | clients | Flotilla ops/s | etcd ops/s | **ratio** | Flotilla p99 ms | etcd p99 ms | **p99 ratio** | errors F/e |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (cell, clients), pair in cells.items():
    f, e = pair.get("flotilla"), pair.get("etcd")
    if not f or not e:
        continue
    ratio = f["ops_per_sec"] / e["ops_per_sec"] if e["ops_per_sec"] else float("inf")
    p99 = f["p99_ms"] / e["p99_ms"] if e["p99_ms"] else float("inf")
    print(f"| {names.get(cell, cell)} | {clients} | {f['ops_per_sec']:.0f} | {e['ops_per_sec']:.0f} "
          f"| **{ratio:.2f}x** | {f['p99_ms']:.2f} | {e['p99_ms']:.2f} | **{p99:.2f}** "
          f"| {f['errors']}/{e['errors']} |")
print()
print("ratio = Flotilla / etcd throughput (higher is better); p99 ratio = Flotilla / etcd p99")
print("latency (lower is better). *lease: Flotilla's lease reads vs etcd's serializable reads")
print("(etcd has no lease read; serializable reads are local and may be stale).")
rhea = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
cores = int(sys.argv[3])
if rhea:
    print()
    print(f"RheaKV's mix (90% writes, 16-byte keys and values), 24 regions on 3 processes, "
          f"this machine's {cores} cores shared by all three and the client:")
    for r in rhea:
        print(f"  {r['clients']:>5} clients: {r['ops_per_sec']:.0f} ops/s = "
              f"{r['ops_per_sec'] / cores:.0f} ops/s per core, p99 {r['p99_ms']:.2f} ms, "
              f"errors {r['errors']}")
    print("  RheaKV's published figure: 400,000 ops/s on 3 x 16-core servers = "
          "8,333 ops/s per core")
EOF
if [ ${#MEMORY_LINES[@]} -gt 0 ]; then
    echo
    echo "resident memory per process (MiB, the three processes):"
    printf '  %s\n' "${MEMORY_LINES[@]}"
fi
