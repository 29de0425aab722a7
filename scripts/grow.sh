#!/usr/bin/env bash
# One region growing into many as data grows, for the README's figures: starts three
# stores on loopback ports 27221-27223 (fresh data dirs, one region, fjall), sets the
# PD's `region-split-keys` to SPLIT_KEYS (small, so that a few minutes of writes on this
# machine make many regions), then runs PHASES phases of `flotilla bench --workload write`
# (CLIENTS clients, DURATION seconds each, uniform over KEYS keys, so the data grows as
# new keys are first written). After each phase it prints the phase's throughput and
# latency, how many regions there are, and how many region leaders each store holds (the
# PD's leader balance spreads them), then stops the stores.
#
#   scripts/grow.sh BINARY [CLIENTS] [DURATION_S] [PHASES] [KEYS] [SPLIT_KEYS]
#   scripts/grow.sh target/release/flotilla 64 10 8 400000 20000
set -euo pipefail
B=${1:?usage: grow.sh BINARY [CLIENTS] [DURATION_S] [PHASES] [KEYS] [SPLIT_KEYS]}
CLIENTS=${2:-64}
DURATION=${3:-10}
PHASES=${4:-8}
KEYS=${5:-400000}
SPLIT_KEYS=${6:-20000}
# shellcheck source=scripts/lib-stores.sh
source "$(dirname "$0")/lib-stores.sh"
start_stores "$B" 27221 grow --regions 1 --engine fjall
until "$B" admin --endpoints "$P" --json pd config-set region-split-keys "$SPLIT_KEYS" \
    >/dev/null 2>&1; do
    sleep 0.5
done
echo "stores up; region-split-keys $SPLIT_KEYS; $PHASES phases of ${DURATION}s" >&2
layout() {
    "$B" admin --endpoints "$P" --json status | python3 -c '
import collections, json, sys
r = json.load(sys.stdin)
leaders = collections.Counter(x.get("leader") or "none" for x in r["regions"])
stores = sorted(a for a in leaders if a != "none")
print("regions=%d leaders_per_store=%s%s" % (
    len(r["regions"]),
    "/".join(str(leaders[a]) for a in stores),
    "" if "none" not in leaders else " leaderless=%d" % leaders["none"]))'
}
echo "phase=0 $(layout)"
for phase in $(seq "$PHASES"); do
    out=$("$B" bench --endpoints "$P" --workload write --clients "$CLIENTS" --keys "$KEYS" \
        --duration "$DURATION" --warmup 0 --seed "$phase" --json)
    perf=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print("ops_per_s=%d p99_ms=%.2f max_ms=%.1f errors=%d" % (r["ops_per_sec"], r["p99_ms"], r["max_ms"], r["errors"]))' <<<"$out")
    echo "phase=$phase $perf $(layout)"
done
