#!/usr/bin/env bash
# A merge under write load, for the README's figures: starts three stores on loopback
# ports 27211-27213 (fresh data dirs, one region, fjall), preloads KEYS keys, splits the
# region at its middle key, then runs `flotilla bench --workload write` three times for
# DURATION seconds each on the same cluster: before (two regions), during (the right half
# merged back into the left, DELAY seconds in, by `admin merge`, which waits for the
# placement driver's operator to end), and after (one region). Prints each run's throughput
# and latency (max_ms of the "during" run is the longest any write waited, the merge
# included) and how long the merge command took, then stops the stores.
#
#   scripts/merge-under-load.sh BINARY [CLIENTS] [DURATION_S] [DELAY_S] [KEYS]
#   scripts/merge-under-load.sh target/release/flotilla 64 10 3 100000
set -euo pipefail
B=${1:?usage: merge-under-load.sh BINARY [CLIENTS] [DURATION_S] [DELAY_S] [KEYS]}
CLIENTS=${2:-64}
DURATION=${3:-10}
DELAY=${4:-3}
KEYS=${5:-100000}
# shellcheck source=scripts/lib-stores.sh
source "$(dirname "$0")/lib-stores.sh"
start_stores "$B" 27211 merge-load --regions 1 --engine fjall
# Load-based splits off, and no merge but the one this script asks for.
until "$B" admin --endpoints "$P" --json pd config-set region-split-load 0 >/dev/null 2>&1; do
    sleep 0.5
done
"$B" admin --endpoints "$P" --json pd config-set split-merge-interval 24h >/dev/null
echo "stores up; preloading $KEYS keys" >&2
"$B" bench --endpoints "$P" --workload write --clients "$CLIENTS" --keys "$KEYS" \
    --ops "$KEYS" --warmup 0 --json >/dev/null
child=""
until [ -n "$child" ]; do
    child=$("$B" admin --endpoints "$P" --json --region 1 split 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["child"]["id"] if r.get("ok") else "")' ||
        true)
    [ -n "$child" ] || sleep 0.5
done
echo "split region 1; its right half is region $child" >&2
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
    out=$("$B" admin --endpoints "$P" --json --region "$child" merge --into 1 2>&1) || true
    end=$(date +%s.%N)
    echo "merge: $(echo "$end - $start" | bc) s: $out" >"$WORK/merge.txt"
) &
merger=$!
echo "during: $(bench | summary)"
wait "$merger"
cat "$WORK/merge.txt"
echo "after: $(bench | summary)"
"$B" admin --endpoints "$P" --json status | python3 -c 'import json,sys; r=json.load(sys.stdin); print("regions:", [(x["id"], x.get("start"), x.get("end")) for x in r["regions"]])'
