#!/usr/bin/env python3
"""The four drifts of a store container, on real Docker, with `flotilla manager --docker`.

    python3 scripts/docker_drifts.py [--bin target/release/flotilla] [--no-build]
                                     [--manager docker|host]

Needs a running Docker engine and the `flotilla:local` image (built here with
scripts/docker-image.sh unless --no-build). Every container runs on the host network on a
loopback port with its own named volume; the manager runs in a container of the same image
with Docker's socket mounted (`--manager host`: as a process on this host). The cluster's
`max-store-down-time` is 10 minutes, so any replacement seen within the script's bounds was
started by the manager, not by the timer.

Two workloads run through the whole run: a writer puts keys one after another (a set:
every acknowledged key must be there at the end), and a register is read and moved on by
compare-and-set (its reads must never go back, and it must end at or past the last value
acknowledged). Then ten drifts in turn (a, b, c, a, b, c, ...), with the manager's
container removed and run again half way:
  (a) new address, same volume: the store keeps its id; no replica is replaced.
  (b) new address, new empty volume (the old volume removed): a new store; the old one's
      replicas are replaced onto it (learner first).
  (c) same address, new empty volume: as (b); the new store has a new id.
  queued moves: the three containers move one after another without waiting; each keeps
      its store, nothing is replaced, no region ever has two operators.
  (d) with five stores, two of a region's three voters lost with their volumes: the PD
      names it without quorum and starts nothing on it; `admin recover --force` brings it
      back on its surviving voter.
Per drift it prints the longest time no write was acknowledged, for (b) and (c) the time
from the removal to the new store being a voter of every region, and the bytes the new (or
moved) store fetched from leaders by snapshot (`flotilla_snapshot_fetched_bytes_total`);
at the end, how many acknowledged writes were lost (must be 0).

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
import threading
import time
import urllib.request
from collections import Counter

IMAGE = "flotilla:local"
PREFIX = "flotilla-drift"
TEST_LABEL = "flotilla.test=drifts"
BASE_PORT = 7300
KEYS = 60
BULK_KEYS = 20000


class Failed(Exception):
    pass


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args, check=True, capture=True, timeout=120):
    result = subprocess.run(args, capture_output=capture, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise Failed(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


MANAGER = f"{PREFIX}-manager"


class Cluster:
    def __init__(self, binary, work, manager_in="docker"):
        self.bin = binary
        self.work = work
        self.manager = None
        self.manager_in = manager_in
        self.manager_log = os.path.join(work, "manager.log")
        self.addresses = {}  # container name -> address
        self.lock = threading.Lock()  # the writer thread reads `addresses`

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
        with self.lock:
            self.addresses[name] = address
        return address

    def remove(self, name, volume=None):
        run(["docker", "rm", "-f", f"{PREFIX}-{name}"])
        with self.lock:
            self.addresses.pop(name, None)
        if volume is not None:
            run(["docker", "volume", "rm", f"{PREFIX}-{volume}"])

    def endpoints(self):
        with self.lock:
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
        if self.manager_in == "docker":
            # What the README shows: the image's `manager`, Docker's socket mounted, its
            # state on a volume of its own (kept when the container is removed).
            run(["docker", "run", "-d", "--name", MANAGER, "--network", "host",
                 "--label", TEST_LABEL, "--no-healthcheck",
                 "-v", "/var/run/docker.sock:/var/run/docker.sock",
                 "-v", f"{PREFIX}-manager-state:/state", IMAGE,
                 "manager", "--docker", "--endpoints", self.endpoints(),
                 "--state", "/state/flotilla-manager.json"])
            self.manager = MANAGER
            return
        handle = open(self.manager_log, "a")
        self.manager = subprocess.Popen(
            [self.bin, "manager", "--docker", "--endpoints", self.endpoints(),
             "--state", os.path.join(self.work, "manager.json")],
            stdout=handle, stderr=subprocess.STDOUT)

    def stop_manager(self):
        """Stops the manager; a container is removed (its log kept in `manager.log`)."""
        if self.manager is None:
            return
        if self.manager_in == "docker":
            if os.path.isdir(self.work):  # gone once a passing run removed it
                logs = run(["docker", "logs", MANAGER], check=False)
                with open(self.manager_log, "a") as f:
                    f.write(logs.stdout + logs.stderr)
            run(["docker", "rm", "-f", MANAGER], check=False)
        else:
            self.manager.terminate()
            self.manager.wait(timeout=10)
        self.manager = None

    def manager_lines(self):
        lines = []
        if os.path.exists(self.manager_log):
            with open(self.manager_log) as f:
                lines = f.read().splitlines()
        if self.manager_in == "docker" and self.manager is not None:
            logs = run(["docker", "logs", MANAGER], check=False)
            lines += (logs.stdout + logs.stderr).splitlines()
        return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]

    def manager_said(self, *parts):
        """Whether one line of the manager's log holds every one of `parts`."""
        return any(all(p in line for p in parts) for line in self.manager_lines())

    def fetched_bytes(self, address):
        """Bytes the store at `address` fetched from leaders by snapshot so far."""
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError as e:
            raise Failed(f"GET {address}/metrics: {e}")
        for line in text.splitlines():
            if line.startswith("flotilla_snapshot_fetched_bytes_total "):
                return int(float(line.split()[1]))
        raise Failed(f"{address}/metrics has no flotilla_snapshot_fetched_bytes_total")

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


class Writer(threading.Thread):
    """Writes `w-NNNNNN` keys one after another through the whole run, recording when
    each was acknowledged."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.acks = []  # (time, key)
        self.unacknowledged = 0
        self.stopping = threading.Event()

    def run(self):
        n = 0
        while not self.stopping.is_set():
            key = f"w-{n:06}"
            answer = self.cluster.cli("kv", "put", key, "x", timeout_ms=3000)
            if answer.get("ok"):
                self.acks.append((time.time(), key))
            else:
                self.unacknowledged += 1
            n += 1

    def longest_gap(self, start, end):
        """The longest time in [start, end] with no write acknowledged."""
        times = [start] + [t for t, _ in self.acks if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def lost(self):
        """Acknowledged keys the cluster no longer has."""
        present = set()
        start = "w-"
        while True:
            answer = self.cluster.cli("kv", "scan", start, "w.", "--limit", "10000",
                                      timeout_ms=30000)
            if not answer.get("ok"):
                raise Failed(f"kv scan of the workload's keys: {answer}")
            keys = [e["key"] for e in answer["entries"]]
            present.update(keys)
            if len(keys) < 10000:
                break
            start = keys[-1] + "!"  # just past the last key (keys are w-NNNNNN)
        return [key for _, key in self.acks if key not in present]


class Register(threading.Thread):
    """A register moved on by compare-and-set through the whole run: read its value v,
    then `cas v v+1`. A single client, so with linearizable reads every value it reads is at
    least every value read or acknowledged before; at the end it must hold at least the last
    value acknowledged. A CAS whose outcome is unknown (a timeout) is resolved by the next
    read."""

    KEY = "register"

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stopping = threading.Event()
        self.floor = 0  # the highest value read or acknowledged so far
        self.reads = 0
        self.swapped = 0
        self.violation = None

    def run(self):
        while not self.stopping.is_set() and self.violation is None:
            answer = self.cluster.cli("kv", "get", self.KEY, timeout_ms=3000)
            if not answer.get("ok"):
                continue
            value = int(answer.get("value") or 0)
            self.reads += 1
            if value < self.floor:
                self.violation = f"register read {value} after {self.floor} was read or acknowledged"
                return
            self.floor = value
            cas = self.cluster.cli("kv", "cas", self.KEY, str(value), str(value + 1),
                                   timeout_ms=3000)
            if cas.get("ok") and cas.get("swapped"):
                self.swapped += 1
                self.floor = value + 1

    def check(self):
        if self.violation:
            raise Failed(f"INVARIANT: {self.violation}")
        answer = self.cluster.cli("kv", "get", self.KEY, timeout_ms=15000)
        if not answer.get("ok"):
            raise Failed(f"kv get {self.KEY}: {answer}")
        final = int(answer.get("value") or 0)
        if final < self.floor:
            raise Failed(f"the register holds {final}, below {self.floor}, which was "
                         "acknowledged or read: an acknowledged write was lost")
        return final


FIGURES = []  # (drift, longest write gap s, to replacement s or None, bytes fetched by snapshot)


def volume_bytes(volume):
    """Bytes in a volume's directory on this host (what the new store received)."""
    inspect = run(["docker", "volume", "inspect", f"{PREFIX}-{volume}"], check=False)
    try:
        mountpoint = json.loads(inspect.stdout)[0]["Mountpoint"]
    except (json.JSONDecodeError, IndexError, KeyError):
        return None
    total = 0
    for root, _, files in os.walk(mountpoint):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


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


class Members:
    """The store containers running now: name -> (volume, store id)."""

    def __init__(self):
        self.now = {}
        self.next_port = BASE_PORT + 10
        self.serial = 3

    def fresh(self):
        self.serial += 1
        return f"s{self.serial}", f"v{self.serial}"

    def port(self):
        self.next_port += 1
        return self.next_port

    def ids(self):
        return [store for _, store in self.now.values()]


def drift_a(c, m, writer):
    """New address, same volume: the store keeps its id; nothing replaced or copied."""
    old = sorted(m.now)[0]
    volume, store = m.now.pop(old)
    new, _ = m.fresh()
    port = m.port()
    log(f"(a) {old} moves to :{port} on its volume {volume}")
    before = {op.get("id") for op in c.pd_eventually().get("finished", [])}
    started = time.time()
    c.remove(old)
    address = c.start(new, volume, port, c.endpoints() + f",127.0.0.1:{port}")
    got = c.wait_store(address)
    if got != store:
        raise Failed(f"(a) the moved container runs store {got}, not {store}")
    m.now[new] = (volume, store)
    c.until("the PD sees the store at its new address, up",
            lambda: None if any(s["id"] == store and s["address"] == address and s["state"] == "up"
                                for s in c.pd()["stores"]) else "not yet", 60)
    c.until("every region on the three stores", settled(c, m.ids()), 60, one_operator_per_region)
    done = time.time()
    new_ops = [op for op in c.pd_eventually().get("finished", []) if op.get("id") not in before
               and str(op.get("kind", "")).startswith(("replace-", "add-replica"))]
    if new_ops:
        raise Failed(f"(a) a moved store's replicas were replaced: {new_ops}")
    # The manager learns the moved container once its store answers (its own poll).
    c.until("the manager logged the move",
            lambda: None if c.manager_said("same store, nothing copied", f"store={store}",
                                           f"address={address}") else "not yet", 60)
    gap = writer.longest_gap(started, done)
    fetched = c.fetched_bytes(address)
    FIGURES.append(("a", gap, None, fetched))
    log(f"(a) ok: store {store} kept its id at {address}; nothing replaced; longest write gap "
        f"{gap:.2f} s; {fetched} bytes fetched by snapshot")


def drift_bc(c, m, writer, same_address):
    """A new, empty volume (the old one removed): a new store, the old one's replicas
    replaced onto it; at a new address (b) or at the old one (c)."""
    kind = "c" if same_address else "b"
    old = sorted(m.now)[0]
    volume, gone = m.now.pop(old)
    old_address = c.addresses[old]
    new, new_volume = m.fresh()
    port = int(old_address.rsplit(":", 1)[1]) if same_address else m.port()
    log(f"({kind}) {old} and its volume {volume} removed; {new} starts on a new volume "
        f"{new_volume} at :{port}")
    started = time.time()
    c.remove(old, volume=volume)
    address = c.start(new, new_volume, port, c.endpoints() + f",127.0.0.1:{port}")
    store = c.wait_store(address)
    if store == gone:
        raise Failed(f"({kind}) the new store took the old store's id {gone}")
    m.now[new] = (new_volume, store)
    c.until(f"{gone}'s replicas replaced onto {store} (max-store-down-time is 10 min)",
            settled(c, m.ids()), 120, one_operator_per_region)
    done = time.time()
    c.until(f"the manager's log marks store {gone} offline",
            lambda: None if c.manager_said("marked offline", gone) else "not yet", 60)
    gap = writer.longest_gap(started, done)
    fetched = c.fetched_bytes(address)
    FIGURES.append((kind, gap, done - started, fetched))
    log(f"({kind}) ok: new store {store} at {address}, never mistaken for {gone}; a voter of "
        f"every region {done - started:.1f} s after the removal; longest write gap {gap:.2f} s; "
        f"{fetched} bytes fetched by snapshot ({volume_bytes(new_volume)} bytes on its volume)")


def queued_moves(c, m):
    log("queued moves: the three stores move to new ports one after another, without waiting")
    before = {op.get("id") for op in c.pd_eventually().get("finished", [])}
    for old in sorted(m.now):
        one_operator_per_region(c.pd_eventually())
        volume, store = m.now.pop(old)
        new, _ = m.fresh()
        port = m.port()
        c.remove(old)
        c.start(new, volume, port, c.endpoints() + f",127.0.0.1:{port}")
        m.now[new] = (volume, store)
    for name, (_, store) in m.now.items():
        got = c.wait_store(c.addresses[name])
        if got != store:
            raise Failed(f"queued moves: {name} runs store {got}, not {store}")
    c.until("every region back on the three moved stores", settled(c, m.ids()), 90,
            one_operator_per_region)
    new_ops = [op for op in c.pd_eventually().get("finished", []) if op.get("id") not in before
               and str(op.get("kind", "")).startswith(("replace-", "add-replica"))]
    if new_ops:
        raise Failed(f"queued moves: replicas were replaced: {new_ops}")
    log("queued moves ok: every store kept its id; nothing replaced; never two operators on a region")


def printable_region(regions, meta, _leader_of):
    """A region to break and two of its three voters to lose: at most one of them a meta
    group voter (the PD keeps its majority and keeps running), and no other region with
    both as voters (only this one loses its majority); its two followers if they qualify;
    its start printable (a key in it is written after the recovery)."""
    for region in regions:
        start = region.get("start", "")
        voters = region["peer_ids"]
        if "\\" in start or len(voters) != 3:
            continue
        leader = region.get("leader_id")
        followers = [v for v in voters if v != leader]
        pairs = [followers] if len(followers) == 2 else []
        pairs += [[a, b] for i, a in enumerate(voters) for b in voters[i + 1:]]
        for pair in pairs:
            shared = [r["id"] for r in regions if r["id"] != region["id"]
                      and set(pair) <= set(r["peer_ids"])]
            if sum(v in meta for v in pair) <= 1 and not shared:
                return region, pair
    return None, None


def drift_d(c, m):
    log("(d) more than half of a region's voters lost at once: two stores join, then two of "
        "one region's voters go with their volumes")
    peers = c.endpoints()
    joined = []
    for _ in range(2):
        name, volume = m.fresh()
        port = m.port()
        address = c.start(name, volume, port, peers + f",127.0.0.1:{port}")
        m.now[name] = (volume, c.wait_store(address))
        joined.append(m.now[name][1])

    quiet = []

    def spread():
        pd = c.pd()
        if pd.get("operators"):
            quiet.clear()
            return f"operators in flight: {pd['operators']}"
        used = {v for r in c.regions() for v in r["peer_ids"]}
        if not set(joined) <= used:
            return f"the new stores hold nothing yet ({sorted(used)})"
        # Balanced: nothing started for three seconds in a row.
        quiet.append(time.time())
        return None if quiet[-1] - quiet[0] >= 3 else "settling"
    c.until("replicas balanced onto the two new stores", spread, 180, one_operator_per_region)
    pd = c.pd_eventually()
    region, victims = printable_region(c.regions(), set(pd.get("meta_voters", [])), None)
    if region is None:
        raise Failed("(d) no region whose two followers the PD can lose")
    by_id = {store: name for name, (_, store) in m.now.items()}
    names = [by_id[v] for v in victims]
    log(f"(d) losing {names} ({victims}): region {region['id']} keeps one voter of three")
    for name in names:
        volume, _ = m.now.pop(name)
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
    c.check_keys(["k0"])
    log(f"(d) ok: `admin recover --force` brought region {region['id']} back on its "
        "survivor; the PD restored its replicas")


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
    parser.add_argument("--manager", choices=["docker", "host"], default="docker",
                        help="run the manager in a container (default) or on this host")
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
    c = Cluster(args.bin, work, args.manager)
    cleanup(c)
    started = time.time()
    try:
        peers = ",".join(f"127.0.0.1:{BASE_PORT + i}" for i in (1, 2, 3))
        m = Members()
        for i in (1, 2, 3):
            c.start(f"s{i}", f"v{i}", BASE_PORT + i, peers)
        for i in (1, 2, 3):
            m.now[f"s{i}"] = (f"v{i}", c.wait_store(f"127.0.0.1:{BASE_PORT + i}"))
        log(f"three store containers up: {m.ids()}")
        c.until("the cluster settled", settled(c, m.ids()), 90)
        set_ = c.cli("admin", "pd", "config-set", "store-disconnected-time", "3s")
        if not set_.get("ok"):
            raise Failed(f"config-set: {set_}")
        c.start_manager()
        c.until("the manager learned the three volumes",
                lambda: None if all(c.manager_said(f"{PREFIX}-v{i}") for i in (1, 2, 3))
                else "not yet", 60)
        c.write_keys("k0")
        # Some bulk, so that what a replacement copies is worth measuring: 20,000 values
        # of 1,000 bytes spread over the four regions.
        run([args.bin, "bench", "--endpoints", c.endpoints(), "--workload", "write",
             "--keys", str(BULK_KEYS), "--value-size", "1000", "--preload", "true",
             "--clients", "64", "--duration", "1", "--warmup", "0"], timeout=300)
        log(f"{BULK_KEYS} keys of 1,000 bytes written (flotilla bench --preload)")
        writer = Writer(c)
        writer.start()
        initial = c.cli("kv", "put", Register.KEY, "0", timeout_ms=15000)
        if not initial.get("ok"):
            raise Failed(f"kv put {Register.KEY} 0: {initial}")
        register = Register(c)
        register.start()
        # Ten drifts in turn, a-b-c, with a manager restart half way (what it learned is
        # in its state file; the work in flight is the PD's).
        for i, kind in enumerate("abcabcabca"):
            if i == 5:
                c.stop_manager()
                c.start_manager()
                log(f"the manager restarted ({args.manager})")
            if kind == "a":
                drift_a(c, m, writer)
            else:
                drift_bc(c, m, writer, same_address=kind == "c")
            c.check_keys(["k0"])
        queued_moves(c, m)
        writer.stopping.set()
        register.stopping.set()
        writer.join(timeout=30)
        register.join(timeout=30)
        final = register.check()
        log(f"the register: {register.reads} reads, {register.swapped} compare-and-sets "
            f"acknowledged, never read going back; it holds {final} (at least {register.floor})")
        lost = writer.lost()
        log(f"the workload: {len(writer.acks)} writes acknowledged, "
            f"{writer.unacknowledged} not; acknowledged writes lost: {len(lost)}")
        if lost:
            raise Failed(f"acknowledged writes lost: {lost[:10]}")
        c.check_keys(["k0"])
        for kind in "abc":
            rows = [f for f in FIGURES if f[0] == kind]
            gaps = ", ".join(f"{f[1]:.2f}" for f in rows)
            line = f"({kind}) x{len(rows)}: longest write gap per drift (s): {gaps}"
            if kind != "a":
                line += "; removal to replacement voter (s): " + ", ".join(
                    f"{f[2]:.1f}" for f in rows)
            line += "; bytes fetched by snapshot: " + ", ".join(str(f[3]) for f in rows)
            log(line)
        drift_d(c, m)
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
