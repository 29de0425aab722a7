#!/usr/bin/env python3
"""Many regions on three stores: time to lead them all, idle CPU and memory, /metrics size,
failover after a store is killed, and a restart.

    cargo build --release -p flotilla
    python3 scripts/regions-scale.py --regions 10000            # the README's figures
    python3 scripts/regions-scale.py --regions 1000 --idle-s 20

Starts three `flotilla server` processes on loopback (fresh data directories under a
temporary directory, removed at the end), each with `--regions N`, and prints one line per
phase as it goes, then a summary (`--json` for one JSON object on stdout instead):

1. start: seconds from spawning the processes until every region has a leader
   (`flotilla admin status --json`, polled every second), and how many regions were led
   in each term (more than one election in a region shows as a higher term);
2. idle: after `--settle-s` more seconds, CPU of the three processes together over
   `--idle-s` seconds (percent of one core, from /proc/PID/stat) and resident memory per
   process (VmRSS) and per region;
3. metrics: size of one store's `GET /metrics` (bytes, lines);
4. failover: SIGKILL the store that leads the most regions; seconds until every region has
   a leader again (the worst region, to the polling resolution);
5. restart: start that store again on its data directory; seconds until it answers and
   reports every region with a leader.

Nothing here is asserted: the figures are measured on a shared, noisy machine.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def log(args, text):
    stream = sys.stderr if args.json else sys.stdout
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=stream, flush=True)


class Cluster:
    def __init__(self, args):
        self.args = args
        self.root = tempfile.mkdtemp(prefix="flotilla-scale-")
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.peers = ",".join(self.addresses)
        self.procs = [None, None, None]

    def start(self, i):
        args = self.args
        command = [
            args.binary, "server", "--addr", self.addresses[i], "--peers", self.peers,
            "--data-dir", os.path.join(self.root, f"s{i}"), "--regions", str(args.regions),
            "--engine", args.engine,
        ]
        logfile = open(os.path.join(self.root, f"s{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile)

    def kill(self, i):
        proc = self.procs[i]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.procs[i] = None

    def stop(self):
        for i in range(3):
            self.kill(i)
        if self.args.keep:
            log(self.args, f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def status(self, endpoints=None):
        """`admin status --json`, or None while it fails."""
        try:
            out = subprocess.run(
                [self.args.binary, "admin", "--endpoints", endpoints or self.peers, "--json",
                 "--timeout-ms", "20000", "status"],
                capture_output=True, timeout=60, check=False)
            value = json.loads(out.stdout.decode() or "null")
            return value if out.returncode == 0 else None
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            return None


def led(status):
    regions = (status or {}).get("regions", [])
    return sum(1 for r in regions if r.get("leader")), len(regions)


def wait_all_led(args, cluster, since, what, endpoints=None, check=None):
    last = -1
    while True:
        status = cluster.status(endpoints)
        n, total = led(status)
        ok = total == args.regions and n == total and (check is None or check(status))
        elapsed = time.monotonic() - since
        if n != last or ok:
            log(args, f"{what}: {n}/{args.regions} regions led after {elapsed:.1f} s")
            last = n
        if ok:
            return elapsed, status
        if elapsed > args.timeout_s:
            raise SystemExit(f"{what}: not every region led within {args.timeout_s} s")
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", type=int, default=10000)
    parser.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "flotilla"))
    parser.add_argument("--engine", default="fjall", choices=["fjall", "memory"])
    parser.add_argument("--settle-s", type=float, default=20.0)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    if not os.access(args.binary, os.X_OK):
        raise SystemExit(f"no flotilla binary at {args.binary} (cargo build --release -p flotilla)")
    cluster = Cluster(args)
    report = {"regions": args.regions, "stores": 3, "engine": args.engine}
    try:
        started = time.monotonic()
        for i in range(3):
            cluster.start(i)
        report["start_all_led_s"], status = wait_all_led(args, cluster, started, "start")
        # How many elections the start took: a region led in term 1 or 2 had no split vote.
        terms = {}
        for region in status["regions"]:
            terms[region.get("term", 0)] = terms.get(region.get("term", 0), 0) + 1
        report["start_terms"] = {str(t): n for t, n in sorted(terms.items())}
        log(args, f"start: regions by the term they were led in: {report['start_terms']}")

        time.sleep(args.settle_s)
        pids = [p.pid for p in cluster.procs]
        before = sum(cpu_ticks(pid) for pid in pids)
        t0 = time.monotonic()
        time.sleep(args.idle_s)
        ticks = sum(cpu_ticks(pid) for pid in pids) - before
        hz = os.sysconf("SC_CLK_TCK")
        report["idle_cpu_percent_of_one_core"] = round(100 * ticks / hz / (time.monotonic() - t0), 2)
        rss = [rss_bytes(pid) for pid in pids]
        report["rss_mib_per_process"] = [round(r / 2**20, 1) for r in rss]
        report["rss_kib_per_region_max"] = round(max(rss) / 1024 / args.regions, 1)
        log(args, f"idle: {report['idle_cpu_percent_of_one_core']} % of one core (3 processes), "
                  f"RSS {report['rss_mib_per_process']} MiB, "
                  f"{report['rss_kib_per_region_max']} KiB per region")

        with urllib.request.urlopen(f"http://{cluster.addresses[0]}/metrics", timeout=60) as r:
            text = r.read()
        report["metrics_bytes"] = len(text)
        report["metrics_lines"] = text.count(b"\n")
        log(args, f"metrics: {len(text)} bytes, {report['metrics_lines']} lines")

        status = cluster.status()
        leaders = {}
        for region in status["regions"]:
            leaders[region.get("leader")] = leaders.get(region.get("leader"), 0) + 1
        victim = max(range(3), key=lambda i: leaders.get(cluster.addresses[i], 0))
        report["killed_store_led"] = leaders.get(cluster.addresses[victim], 0)
        log(args, f"failover: killing {cluster.addresses[victim]}, leader of "
                  f"{report['killed_store_led']} regions")
        survivors = ",".join(a for i, a in enumerate(cluster.addresses) if i != victim)
        killed_at = time.monotonic()
        cluster.kill(victim)
        report["failover_all_led_s"], _ = wait_all_led(
            args, cluster, killed_at, "failover", endpoints=survivors,
            check=lambda s: all(r.get("leader") != cluster.addresses[victim]
                                for r in s["regions"]))

        restarted_at = time.monotonic()
        cluster.start(victim)

        def serves(s):
            return any(st.get("address") == cluster.addresses[victim] and st.get("reachable")
                       and st.get("regions") == args.regions for st in s.get("stores", []))

        report["restart_serving_s"], _ = wait_all_led(
            args, cluster, restarted_at, "restart", check=serves)
    finally:
        cluster.stop()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key} = {value}")


if __name__ == "__main__":
    main()
