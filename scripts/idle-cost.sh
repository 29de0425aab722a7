#!/usr/bin/env bash
# Idle cost of a `flotilla` binary at N regions per store, for side-by-side comparisons
# (the placement driver's cost figures in the README): starts three stores on loopback
# ports 27001-27003 (fresh data directories, fjall), waits SETTLE seconds, prints each
# process's private memory (Anonymous in /proc/PID/smaps_rollup) and resident set (Rss),
# then the CPU the three used together over 30 s (percent of one core), and kills them.
#
#   scripts/idle-cost.sh BINARY TAG [REGIONS]           # SETTLE=75 by default
#   SETTLE=180 scripts/idle-cost.sh target/release/flotilla new 10000
#
# Alternate two binaries a few times in one session: both figures move with the machine.
set -euo pipefail
B=${1:?usage: idle-cost.sh BINARY TAG [REGIONS]}
TAG=${2:?usage: idle-cost.sh BINARY TAG [REGIONS]}
N=${3:-1000}
# shellcheck source=scripts/lib-stores.sh
source "$(dirname "$0")/lib-stores.sh"
start_stores "$B" 27001 idle-cost --regions "$N" --engine fjall
echo "[$TAG] started ${#pids[@]} stores with $N regions; measuring after ${SETTLE:-75} s" >&2
sleep "${SETTLE:-75}"
for p in "${pids[@]}"; do
    kill -0 "$p" || { echo "[$TAG] store $p died:" >&2; tail -3 "$WORK"/s*.log >&2; exit 1; }
done
anon=$(for p in "${pids[@]}"; do awk '/^Anonymous/{printf "%.1f ", $2/1024}' "/proc/$p/smaps_rollup"; done)
rss=$(for p in "${pids[@]}"; do awk '/^Rss/{printf "%.1f ", $2/1024}' "/proc/$p/smaps_rollup"; done)
ticks() { for p in "${pids[@]}"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc; }
t0=$(ticks); sleep 30; t1=$(ticks)
hz=$(getconf CLK_TCK)
echo "$TAG regions=$N private_mib=[ $anon] rss_mib=[ $rss] cpu_percent_of_one_core=$(echo "scale=2; 100 * ($t1 - $t0) / $hz / 30" | bc -l)"
