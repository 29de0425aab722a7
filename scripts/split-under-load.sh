#!/usr/bin/env bash
# A split under write load, for the README's figures: starts three stores on loopback
# ports 27201-27203 (fresh data dirs, one region, fjall), preloads KEYS keys, then runs
# `flotilla bench --workload write` three times for DURATION seconds each on the same
# cluster: before (one region), during (the region split at its middle key DELAY seconds
# in, by `admin split` against its leader), and after (two regions). Prints each run's
# throughput and latency (max_ms of the "during" run is the longest any write waited,
# the split included) and how long the split command took, then stops the stores.
#
#   scripts/split-under-load.sh BINARY [CLIENTS] [DURATION_S] [DELAY_S] [KEYS]
#   scripts/split-under-load.sh target/release/flotilla 64 10 3 100000
set -euo pipefail
B=${1:?usage: split-under-load.sh BINARY [CLIENTS] [DURATION_S] [DELAY_S] [KEYS]}
CLIENTS=${2:-64}
DURATION=${3:-10}
DELAY=${4:-3}
KEYS=${5:-100000}
# shellcheck source=scripts/lib-stores.sh
source "$(dirname "$0")/lib-stores.sh"
start_stores "$B" 27201 split-load --regions 1 --engine fjall
# Load-based splits off: the only split is the one this script makes.
until "$B" admin --endpoints "$P" --json pd config-set region-split-load 0 >/dev/null 2>&1; do
    sleep 0.5
done
echo "stores up; preloading $KEYS keys" >&2
"$B" bench --endpoints "$P" --workload write --clients "$CLIENTS" --keys "$KEYS" \
    --ops "$KEYS" --warmup 0 --json >/dev/null
summary() {
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("ops_per_s=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.1f errors=%d" % (r["ops_per_sec"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["errors"]))'
}
bench() {
    "$B" bench --endpoints "$P" --workload write --clients "$CLIENTS" --keys "$KEYS" \
        --duration "$DURATION" --warmup 1 --json
}
echo "before: $(bench | summary)"
(
    sleep "$((DELAY + 1))"
    start=$(date +%s.%N)
    out=$("$B" admin --endpoints "$P" --json --region 1 split 2>&1) || true
    end=$(date +%s.%N)
    echo "split: $(echo "$end - $start" | bc) s: $out" >"$WORK/split.txt"
) &
splitter=$!
echo "during: $(bench | summary)"
wait "$splitter"
cat "$WORK/split.txt"
echo "after: $(bench | summary)"
"$B" admin --endpoints "$P" --json status | python3 -c 'import json,sys; r=json.load(sys.stdin); print("regions:", [(x["id"], x.get("start"), x.get("end")) for x in r["regions"]])'
