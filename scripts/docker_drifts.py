#!/usr/bin/env python3
"""The four drifts of a store container, on real Docker, with `flotilla manager --docker`.

    python3 scripts/docker_drifts.py [--bin target/release/flotilla] [--no-build]

Needs a running Docker engine and the `flotilla:local` image (built here with
scripts/docker-image.sh unless --no-build). Every container runs on the host network on a
loopback port with its own named volume; the manager runs on the host. The cluster's
`max-store-down-time` is 10 minutes, so any replacement seen within the script's bounds was
started by the manager, not by the timer.

  (a) new address, same volume: the store keeps its id; no replica is replaced.
  (b) new address, new empty volume (the old volume removed): a new store; the old one's
      replicas are replaced onto it (learner first), the old one ends a tombstone.
  (c) same address, new empty volume: as (b); the new store has a new id.
  queued moves: the three containers move one after another without waiting; each keeps
      its store, nothing is replaced, no region ever has two operators.
  (d) two of three stores lost with their volumes: the PD names every region without
      quorum and starts nothing on them; `admin recover` is the documented way out.

Every acknowledged key is read back after each drift. Exit 0 when every check holds, 1 on
the first that does not (the manager's and the stores' logs are kept and named), 77 when
Docker is not available (a failure instead with FLOTILLA_REQUIRE_DOCKER=1).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

IMAGE = "flotilla:local"
PREFIX = "flotilla-drift"
TEST_LABEL = "flotilla.test=drifts"
BASE_PORT = 7300
KEYS = 60


class Failed(Exception):
    pass


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args, check=True, capture=True, timeout=120):
    result = subprocess.run(args, capture_output=capture, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise Failed(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


class Cluster:
    def __init__(self, binary, work):
        self.bin = binary
        self.work = work
        self.manager = None
        self.manager_log = os.path.join(work, "manager.log")
        self.addresses = {}  # container name -> address

    # ----- containers -------------------------------------------------------------------

    def start(self, name, volume, port, peers):
        address = f"127.0.0.1:{port}"
        run(["docker", "run", "-d", "--name", f"{PREFIX}-{name}", "--network", "host",
             "--label", f"flotilla.store={name}", "--label", TEST_LABEL,
             "-e", f"FLOTILLA_HEALTH_ENDPOINT={address}",
             "-v", f"{PREFIX}-{volume}:/data", IMAGE,
             "server", "--addr", address, "--data-dir", "/data", "--peers", peers,
             "--regions", "4", "--max-store-down-time", "10m", "--pd-heartbeat-ms", "1000",
             "--tick-ms", "50", "--election-timeout-ms", "500"])
        self.addresses[name] = address
        return address

    def remove(self, name, volume=None):
        run(["docker", "rm", "-f", f"{PREFIX}-{name}"])
        self.addresses.pop(name, None)
        if volume is not None:
            run(["docker", "volume", "rm", f"{PREFIX}-{volume}"])

    def endpoints(self):
        return ",".join(self.addresses.values())

    # ----- the flotilla CLI -------------------------------------------------------------

    def cli(self, *args, timeout_ms=5000):
        result = run([self.bin, *args, "--endpoints", self.endpoints(), "--json",
                      "--timeout-ms", str(timeout_ms)], check=False)
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            return {"ok": False, "error": "NoJson", "message": result.stdout + result.stderr}

    def store_id(self, address):
        result = run([self.bin, "health", "--endpoint", address, "--check", "live", "--json"],
                     check=False)
        try:
            message = json.loads(result.stdout).get("message", "")
        except json.JSONDecodeError:
            return None
        words = message.split()
        return words[2] if len(words) >= 3 and words[:2] == ["live:", "store"] else None

    def wait_store(self, address, within=60):
        deadline = time.time() + within
        while time.time() < deadline:
            store = self.store_id(address)
            if store:
                return store
            time.sleep(0.5)
        raise Failed(f"the store at {address} did not answer within {within} s")

    def pd(self):
        status = self.cli("admin", "pd", "status")
        if not status.get("ok"):
            raise Failed(f"admin pd status: {status}")
        return status

    def pd_eventually(self, within=60):
        """The PD's status once it answers: while stores move one after another the meta
        group may be without a majority for a moment (its members restart elsewhere)."""
        deadline = time.time() + within
        while True:
            try:
                return self.pd()
            except Failed:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def regions(self):
        status = self.cli("admin", "status")
        if not status.get("ok"):
            raise Failed(f"admin status: {status}")
        return status["regions"]

    def until(self, what, check, within, sample=None):
        """Polls `check` (answers None when satisfied, else what it saw) for `within` s;
        `sample` is called on every poll with the PD status (invariants)."""
        deadline = time.time() + within
        seen = None
        while time.time() < deadline:
            try:
                if sample:
                    sample(self.pd())
                seen = check()
                if seen is None:
                    return
            except Failed as e:
                seen = str(e)
                if "INVARIANT" in seen:
                    raise
            time.sleep(0.5)
        raise Failed(f"not within {within} s: {what}; last seen: {seen}")

    # ----- the manager ------------------------------------------------------------------

    def start_manager(self):
        handle = open(self.manager_log, "a")
        self.manager = subprocess.Popen(
            [self.bin, "manager", "--docker", "--endpoints", self.endpoints(),
             "--state", os.path.join(self.work, "manager.json")],
            stdout=handle, stderr=subprocess.STDOUT)

    def stop_manager(self):
        if self.manager:
            self.manager.terminate()
            self.manager.wait(timeout=10)
            self.manager = None

    def manager_said(self, *parts):
        """Whether one line of the manager's log holds every one of `parts`."""
        with open(self.manager_log) as f:
            lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in f]
        return any(all(p in line for p in parts) for line in lines)

    # ----- data -------------------------------------------------------------------------

    def write_keys(self, tag):
        for i in range(KEYS):
            answer = self.cli("kv", "put", f"{tag}-{i:03}", f"value-{tag}-{i}", timeout_ms=15000)
            if not answer.get("ok"):
                raise Failed(f"kv put {tag}-{i:03}: {answer}")

    def check_keys(self, tags):
        for tag in tags:
            for i in range(KEYS):
                answer = self.cli("kv", "get", f"{tag}-{i:03}", timeout_ms=15000)
                if not answer.get("ok") or answer.get("value") != f"value-{tag}-{i}":
                    raise Failed(f"acknowledged key {tag}-{i:03} not read back: {answer}")
        log(f"every acknowledged key reads back ({KEYS * len(tags)} keys)")


def one_operator_per_region(pd):
    regions = Counter(op.get("region") for op in pd.get("operators", []))
    crowded = [r for r, n in regions.items() if n > 1]
    if crowded:
        raise Failed(f"INVARIANT: regions {crowded} have more than one operator: {pd['operators']}")


def voters_are(cluster, wanted):
    wanted = set(wanted)
    regions = cluster.regions()
    wrong = [(r["id"], sorted(r["peer_ids"])) for r in regions if set(r["peer_ids"]) != wanted]
    return None if not wrong else f"regions not on {sorted(wanted)}: {wrong}"


def settled(cluster, wanted):
    def check():
        pd = cluster.pd()
        if pd.get("operators"):
            return f"operators in flight: {pd['operators']}"
        return voters_are(cluster, wanted)
    return check


def replaced_stores(pd):
    """Stores any finished operator replaced (down, offline or failed peer)."""
    out = set()
    for op in pd.get("finished", []):
        if str(op.get("kind", "")).startswith("replace-"):
            out.add(str(op.get("region")))
    return out


def drift_a(c, ids):
    log("(a) new address, same volume: s1 moves from :7301 to :7311 on volume v1")
    before = {op.get("id") for op in c.pd().get("finished", [])}
    c.remove("s1")
    c.start("s1b", "v1", BASE_PORT + 11, c.endpoints() + f",127.0.0.1:{BASE_PORT + 11}")
    store = c.wait_store(c.addresses["s1b"])
    if store != ids["s1"]:
        raise Failed(f"(a) the moved container runs store {store}, not {ids['s1']}")
    ids["s1b"] = store
    c.until("the PD sees s1's store at its new address, up",
            lambda: None if any(s["id"] == store and s["address"] == c.addresses["s1b"]
                                and s["state"] == "up" for s in c.pd()["stores"])
            else "not yet", 60)
    c.until("every region on s1b,s2,s3", settled(c, [ids["s1b"], ids["s2"], ids["s3"]]), 60,
            one_operator_per_region)
    new = [op for op in c.pd().get("finished", []) if op.get("id") not in before
           and str(op.get("kind", "")).startswith(("replace-", "add-replica"))]
    if new:
        raise Failed(f"(a) a moved store's replicas were replaced: {new}")
    c.until("the manager logged the move", lambda: None if c.manager_said("same store, nothing copied") else "no", 30)
    log(f"(a) ok: store {store} kept its id at {c.addresses['s1b']}; nothing replaced or copied")


def drift_b(c, ids):
    log("(b) new address, new empty volume: s2 and volume v2 removed, s4 starts on v4 at :7314")
    c.remove("s2", volume="v2")
    gone = ids["s2"]
    address = c.start("s4", "v4", BASE_PORT + 14, c.endpoints() + f",127.0.0.1:{BASE_PORT + 14}")
    ids["s4"] = c.wait_store(address)
    if ids["s4"] == gone:
        raise Failed("(b) the new store took the old store's id")
    started = time.time()
    c.until("s2's replicas replaced onto s4 (max-store-down-time is 10 min: the manager's doing)",
            settled(c, [ids["s1b"], ids["s3"], ids["s4"]]), 120, one_operator_per_region)
    took = time.time() - started
    if not c.manager_said("marked offline", gone):
        raise Failed(f"(b) the manager's log never marks store {gone} offline")
    state = next((s["state"] for s in c.pd()["stores"] if s["id"] == gone), "forgotten")
    log(f"(b) ok: store {gone} ({state}) replaced by new store {ids['s4']} in {took:.1f} s")


def drift_c(c, ids):
    log("(c) same address, new empty volume: s3 and v3 removed, s5 starts on v5 at s3's :7303")
    old_address = c.addresses["s3"]
    c.remove("s3", volume="v3")
    gone = ids["s3"]
    c.start("s5", "v5", BASE_PORT + 3, c.endpoints() + f",{old_address}")
    ids["s5"] = c.wait_store(old_address)
    if ids["s5"] == gone:
        raise Failed("(c) the new store at the old address took the old store's id")
    started = time.time()
    c.until("s3's replicas replaced onto s5",
            settled(c, [ids["s1b"], ids["s4"], ids["s5"]]), 120, one_operator_per_region)
    log(f"(c) ok: new store {ids['s5']} at {old_address}, never mistaken for {gone}; "
        f"replaced in {time.time() - started:.1f} s")


def queued_moves(c, ids):
    log("queued moves: s1b, s4 and s5 move to new ports one after another, without waiting")
    before = {op.get("id") for op in c.pd_eventually().get("finished", [])}
    moves = [("s1b", "s1c", "v1", 21), ("s4", "s4b", "v4", 24), ("s5", "s5b", "v5", 25)]
    for old, new, volume, port in moves:
        one_operator_per_region(c.pd_eventually())
        c.remove(old)
        c.start(new, volume, BASE_PORT + port, c.endpoints() + f",127.0.0.1:{BASE_PORT + port}")
        ids[new] = ids[old]
    for old, new, _, _ in moves:
        store = c.wait_store(c.addresses[new])
        if store != ids[old]:
            raise Failed(f"queued moves: {new} runs store {store}, not {ids[old]}")
    c.until("every region back on the three moved stores",
            settled(c, [ids["s1c"], ids["s4b"], ids["s5b"]]), 90, one_operator_per_region)
    new = [op for op in c.pd_eventually().get("finished", []) if op.get("id") not in before
           and str(op.get("kind", "")).startswith(("replace-", "add-replica"))]
    if new:
        raise Failed(f"queued moves: replicas were replaced: {new}")
    log("queued moves ok: every store kept its id; nothing replaced; never two operators on a region")


def printable_region(regions, meta, leader_of):
    """A region to break and its two followers to lose: at most one of them a meta group
    voter (the PD keeps its majority and keeps running), its start printable."""
    for region in regions:
        start = region.get("start", "")
        if "\\" in start:
            continue
        leader = region.get("leader_id")
        followers = [v for v in region["peer_ids"] if v != leader]
        if leader in region["peer_ids"] and len(followers) == 2 \
                and sum(f in meta for f in followers) <= 1:
            return region, followers
    return None, None


def drift_d(c, ids):
    log("(d) more than half of a region's voters lost at once: two stores join, then two of "
        "one region's voters go with their volumes")
    peers = c.endpoints()
    for name, volume, port in (("s6", "v6", 26), ("s7", "v7", 27)):
        address = c.start(name, volume, BASE_PORT + port, peers + f",127.0.0.1:{BASE_PORT + port}")
        ids[name] = c.wait_store(address)

    quiet = []

    def spread():
        pd = c.pd()
        if pd.get("operators"):
            quiet.clear()
            return f"operators in flight: {pd['operators']}"
        used = {v for r in c.regions() for v in r["peer_ids"]}
        if not {ids["s6"], ids["s7"]} <= used:
            return f"the new stores hold nothing yet ({sorted(used)})"
        # Balanced: nothing started for three seconds in a row.
        quiet.append(time.time())
        return None if quiet[-1] - quiet[0] >= 3 else "settling"
    c.until("replicas balanced onto the two new stores", spread, 180, one_operator_per_region)
    pd = c.pd_eventually()
    region, victims = printable_region(c.regions(), set(pd.get("meta_voters", [])), None)
    if region is None:
        raise Failed("(d) no region whose two followers the PD can lose")
    by_id = {ids[name]: name for name in c.addresses if name in ids}
    names = [by_id[v] for v in victims]
    log(f"(d) losing {names} ({victims}): region {region['id']} keeps only its leader")
    for name in names:
        volume = {"s1c": "v1", "s4b": "v4", "s5b": "v5", "s6": "v6", "s7": "v7"}[name]
        c.remove(name, volume=volume)

    def without_quorum():
        lost = set(c.pd().get("regions_without_quorum", []))
        return None if region["id"] in lost else f"without quorum: {sorted(lost)}"
    c.until(f"the PD names region {region['id']} without quorum", without_quorum, 60)
    c.until("the manager marked both lost stores offline",
            lambda: None if all(c.manager_said("marked offline", f"store={v}") for v in victims)
            else "not yet", 60)
    # An operator planned in the moment before the PD knew both stores were gone is
    # cancelled at its next step; then twenty seconds of watching: none may start on the
    # region without quorum (the others, which kept their majority, are repaired).
    c.until(f"no operator left on region {region['id']}",
            lambda: None if not [op for op in c.pd().get("operators", [])
                                 if op.get("region") == region["id"]] else "one in flight", 90)
    deadline = time.time() + 20
    while time.time() < deadline:
        touched = [op for op in c.pd().get("operators", []) if op.get("region") == region["id"]]
        if touched:
            raise Failed(f"(d) an operator on a region without quorum: {touched}")
        time.sleep(0.5)
    log(f"(d) region {region['id']} left alone without quorum for 20 s; the PD names it "
        f"(`admin pd status`: regions_without_quorum); recovering it by hand")
    recovered = c.cli("admin", "--region", str(region["id"]), "recover", "--force",
                      timeout_ms=30000)
    if not recovered.get("ok"):
        raise Failed(f"(d) admin recover: {recovered}")
    start = region.get("start", "")
    key = (start or "") + "!recovered"
    c.until(f"region {region['id']} takes writes again after `admin recover`",
            lambda: None if c.cli("kv", "put", key, "yes", timeout_ms=5000).get("ok") else "not yet", 60)
    c.until(f"region {region['id']} back on three voters (the PD adds them)",
            lambda: None if any(r["id"] == region["id"] and len(r["peer_ids"]) == 3
                                for r in c.regions()) else "not yet", 120)
    c.check_keys(["k0", "k1"])
    log(f"(d) ok: `admin recover --force` brought region {region['id']} back on its "
        "survivor (its leader, which held every acknowledged write); the PD restored its "
        "replicas")


def cleanup(c):
    c.stop_manager()
    listed = run(["docker", "ps", "-aq", "--filter", f"label={TEST_LABEL}"], check=False)
    for container in listed.stdout.split():
        run(["docker", "rm", "-f", container], check=False)
    volumes = run(["docker", "volume", "ls", "-q", "--filter", f"name={PREFIX}-"], check=False)
    for volume in volumes.stdout.split():
        run(["docker", "volume", "rm", "-f", volume], check=False)


def docker_available():
    if shutil.which("docker") is None:
        return "no docker command"
    result = run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False)
    return None if result.returncode == 0 else f"docker info: {result.stderr.strip()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    parser.add_argument("--bin", default=os.path.join(target, "release", "flotilla"))
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    missing = docker_available()
    if missing:
        if os.environ.get("FLOTILLA_REQUIRE_DOCKER") == "1":
            print(f"docker_drifts: Docker is required and not available: {missing}")
            return 1
        print(f"docker_drifts: SKIPPED: Docker is not available: {missing}")
        return 77
    if not args.no_build:
        run(["bash", os.path.join(root, "scripts", "docker-image.sh")], capture=False, timeout=3600)
    work = tempfile.mkdtemp(prefix="flotilla-drifts.")
    c = Cluster(args.bin, work)
    cleanup(c)
    started = time.time()
    try:
        peers = ",".join(f"127.0.0.1:{BASE_PORT + i}" for i in (1, 2, 3))
        for i in (1, 2, 3):
            c.start(f"s{i}", f"v{i}", BASE_PORT + i, peers)
        ids = {f"s{i}": c.wait_store(f"127.0.0.1:{BASE_PORT + i}") for i in (1, 2, 3)}
        log(f"three store containers up: {ids}")
        c.until("the cluster settled", settled(c, ids.values()), 90)
        set_ = c.cli("admin", "pd", "config-set", "store-disconnected-time", "3s")
        if not set_.get("ok"):
            raise Failed(f"config-set: {set_}")
        c.start_manager()
        c.until("the manager learned the three volumes",
                lambda: None if all(c.manager_said(f"{PREFIX}-v{i}") for i in (1, 2, 3)) else "not yet", 60)
        c.write_keys("k0")
        drift_a(c, ids)
        c.check_keys(["k0"])
        c.write_keys("k1")
        drift_b(c, ids)
        c.check_keys(["k0", "k1"])
        # The manager restarts between drifts: what it learned is in its state file.
        c.stop_manager()
        c.start_manager()
        drift_c(c, ids)
        c.check_keys(["k0", "k1"])
        queued_moves(c, ids)
        c.check_keys(["k0", "k1"])
        drift_d(c, ids)
        log(f"every drift correct in {time.time() - started:.0f} s")
        shutil.rmtree(work, ignore_errors=True)
        return 0
    except (Failed, subprocess.TimeoutExpired) as e:
        print(f"docker_drifts: FAILED: {e}", flush=True)
        for name in list(c.addresses):
            logs = run(["docker", "logs", f"{PREFIX}-{name}"], check=False)
            with open(os.path.join(work, f"{name}.log"), "w") as f:
                f.write(logs.stdout + logs.stderr)
        print(f"docker_drifts: the manager's and the stores' logs are in {work}", flush=True)
        return 1
    finally:
        cleanup(c)


if __name__ == "__main__":
    sys.exit(main())
