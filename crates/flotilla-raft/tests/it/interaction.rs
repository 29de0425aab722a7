//! Scripted interaction tests: text scripts in `tests/testdata/*.txt` drive a
//! [`Cluster`] one command at a time and check, in the file, what each command printed
//! (STYLE.md §9, in the manner of etcd raft's data-driven tests).
//!
//! A script opens with `#` lines saying what it tests. Then come blocks, each an optional
//! run of `#` comment lines, one command line, a `----` line and the expected output up to
//! a blank line. Run with `REWRITE=1` to replace every expected output with what the
//! commands print now (then read the diff: the scripts are the review). `SCRIPT=name` runs
//! only the scripts whose file name contains `name`.
//!
//! Commands (peers are named `n1`, `n2`, ...):
//!
//! | command                          | does                                                       |
//! |----------------------------------|------------------------------------------------------------|
//! | `add-nodes N [hibernate]`        | a cluster of voters `n1..nN` (must come first); with       |
//! |                                  | `hibernate`, they hibernate after 3 quiet ticks            |
//! | `campaign n1`                    | `n1` starts an election now (pre-vote first)               |
//! | `propose n1 data`                | `n1` proposes one entry                                    |
//! | `tick n2 [K]`                    | ticks `n2` K times (default 1); nothing is delivered       |
//! | `tick-all [K]`                   | K rounds of ticking every peer; nothing is delivered       |
//! | `run K`                          | K rounds of: tick every peer, deliver until quiet; prints  |
//! |                                  | a count of messages per kind instead of each message       |
//! | `deliver [K]`                    | delivers up to K queued messages (default all queued now)  |
//! | `stabilize`                      | delivers until no message is queued                        |
//! | `queue`                          | lists queued messages without delivering them              |
//! | `isolate n3` / `heal`            | cuts every link of `n3` / restores every link              |
//! | `cut n1 n2`                      | cuts both directions between `n1` and `n2`                 |
//! | `read n2 7[,8] index\|lease`     | `n2` starts reads 7 (and 8: one batch), ReadIndex or lease |
//! | `transfer n1 n2\|any`            | leader `n1` transfers leadership                           |
//! | `add-peer n1 n4`                 | leader `n1` adds voter `n4` (created empty if new)         |
//! | `remove-peer n1 n3`              | leader `n1` removes `n3`                                   |
//! | `add-learner n1 n4`              | leader `n1` adds learner `n4` (created empty if new)       |
//! | `promote n1 n4`                  | leader `n1` promotes learner `n4` to voter                 |
//! | `snapshot n1`                    | `n1` snapshots its state machine at its applied index      |
//! | `restart n2`                     | `n2` restarts from what is durable                         |
//! | `wake n2`                        | `n2`'s driver wakes it (a request that needs the group)    |
//! | `wake-campaign n2`               | `n2`'s driver judged its leader gone: wake and campaign    |
//! | `hold-persist n2`                | `n2`'s writes wait (and so do its acknowledgements)        |
//! | `release-persist n2`             | `n2` persists what waited                                  |
//! | `status`                         | one state line per peer                                    |
//! | `log n1`                         | `n1`'s durable log, one entry per line                     |
//! | `applied n1`                     | the data `n1`'s state machine applied, in order            |
//! | `events n1` / `reads n1`         | events / read results of `n1` since the last such command  |
//!
//! Every command that changes the cluster prints the messages it delivered (with
//! `(dropped)` on cut links), then the state line of every peer whose line changed, then
//! what the core answered: `-> value` (a proposal's index, a transfer's target, a
//! snapshot) or `error: ...` for an operating error. `ok` means there was nothing to print.
//! A command the runner cannot run prints `bad command: ...`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use flotilla_raft::testkit::{
    describe_entry, describe_message, durable_entries, hibernating_test_config, test_config,
    Cluster,
};
use flotilla_raft::{
    Configuration, Event, LogStore, PeerId, RaftError, ReadMode, ReadResult, ReplicatorChange,
};

/// Messages delivered by one command before it is considered not to stabilize.
const DELIVERIES_PER_COMMAND_MAX: usize = 100_000;

#[test]
fn scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let filter = std::env::var("SCRIPT").unwrap_or_default();
    let rewrite = std::env::var("REWRITE").is_ok_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .filter(|p| p.to_string_lossy().contains(&filter))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no script in {}", dir.display());
    let mut failures = String::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let script = parse(&text).unwrap_or_else(|e| panic!("{}:{e}", file.display()));
        let actual = run_script(&script);
        if rewrite {
            std::fs::write(file, render(&script, &actual))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
            continue;
        }
        for (block, output) in script.blocks.iter().zip(&actual) {
            if block.expected != *output {
                let _ = writeln!(
                    failures,
                    "{}:{}: `{}` printed something else (- expected, + actual):\n{}",
                    file.display(),
                    block.line,
                    block.command,
                    diff(&block.expected, output)
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{failures}\nrerun with REWRITE=1 to accept the new output, then review the diff"
    );
}

// ----- script files ----------------------------------------------------------------------

struct Script {
    /// The opening `#` lines: what the script tests.
    header: Vec<String>,
    blocks: Vec<Block>,
}

struct Block {
    /// `#` lines just before the command.
    comments: Vec<String>,
    command: String,
    /// 1-based line of the command in the file.
    line: usize,
    expected: Vec<String>,
}

fn parse(text: &str) -> Result<Script, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    let mut header = Vec::new();
    while at < lines.len() && lines[at].starts_with('#') {
        header.push(lines[at].to_string());
        at += 1;
    }
    if header.is_empty() {
        return Err("1: a script must open with `#` lines saying what it tests".into());
    }
    let mut blocks = Vec::new();
    let mut comments = Vec::new();
    while at < lines.len() {
        let line = lines[at].trim_end();
        at += 1;
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            comments.push(line.to_string());
            continue;
        }
        let command_line = at;
        if lines.get(at).map(|l| l.trim_end()) != Some("----") {
            return Err(format!("{}: expected `----` after `{line}`", at + 1));
        }
        at += 1;
        let mut expected = Vec::new();
        while at < lines.len() && !lines[at].trim_end().is_empty() {
            expected.push(lines[at].trim_end().to_string());
            at += 1;
        }
        blocks.push(Block {
            comments: std::mem::take(&mut comments),
            command: line.to_string(),
            line: command_line,
            expected,
        });
    }
    Ok(Script { header, blocks })
}

fn render(script: &Script, outputs: &[Vec<String>]) -> String {
    let mut out = script.header.join("\n");
    out.push('\n');
    for (block, output) in script.blocks.iter().zip(outputs) {
        out.push('\n');
        for comment in &block.comments {
            let _ = writeln!(out, "{comment}");
        }
        let _ = writeln!(out, "{}\n----", block.command);
        for line in output {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// A line diff by longest common subsequence (outputs are short).
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            let _ = writeln!(out, "  {}", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", expected[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", actual[j]);
            j += 1;
        }
    }
    out
}

// ----- running commands ------------------------------------------------------------------

/// Runs every block of `script` against a fresh cluster; one output per block. A command
/// that cannot run (bad syntax, unknown peer) prints `bad command: ...`, and the script
/// goes on, so that one typo does not hide the rest.
fn run_script(script: &Script) -> Vec<Vec<String>> {
    let mut runner = Runner { cluster: None };
    script
        .blocks
        .iter()
        .map(|block| {
            let mut out = Vec::new();
            if let Err(why) = runner.run(&block.command, &mut out) {
                out.push(format!("bad command: {why}"));
            }
            if out.is_empty() {
                out.push("ok".to_string());
            }
            out
        })
        .collect()
}

struct Runner {
    cluster: Option<Cluster>,
}

type Out = Vec<String>;

impl Runner {
    fn run(&mut self, command: &str, out: &mut Out) -> Result<(), String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let (name, args) = words.split_first().ok_or("empty command")?;
        if *name == "add-nodes" {
            let n: usize = number(args.first().copied(), "add-nodes N [hibernate]")?;
            if self.cluster.is_some() {
                return Err("add-nodes must come once, first".into());
            }
            let make = match args.get(1).copied() {
                None => test_config,
                Some("hibernate") => hibernating_test_config,
                Some(other) => return Err(format!("unknown option `{other}` of add-nodes")),
            };
            let mut cluster = Cluster::with_config(n, make);
            cluster.tracing = true;
            out.extend(cluster.describe_states().lines().map(str::to_string));
            self.cluster = Some(cluster);
            return Ok(());
        }
        if self.cluster.is_none() {
            return Err("add-nodes must come first".into());
        }
        match *name {
            "status" => {
                let states = self.cluster().describe_states();
                out.extend(states.lines().map(str::to_string));
                Ok(())
            }
            "queue" => {
                let queue: Vec<String> =
                    self.cluster().queue.iter().map(describe_message).collect();
                out.extend(queue);
                Ok(())
            }
            "log" => self.log(args, out),
            "applied" => {
                let id = self.peer(args.first().copied())?;
                let data = self.cluster().applied_data(&id);
                let words: Vec<String> = data
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect();
                out.push(format!("[{}]", words.join(",")));
                Ok(())
            }
            "events" => {
                let id = self.peer(args.first().copied())?;
                let events = std::mem::take(&mut self.cluster_mut().node_mut(&id).events);
                out.extend(events.iter().map(describe_event));
                Ok(())
            }
            "reads" => {
                let id = self.peer(args.first().copied())?;
                let reads = std::mem::take(&mut self.cluster_mut().node_mut(&id).reads);
                out.extend(reads.iter().map(describe_read));
                Ok(())
            }
            _ => {
                let (name, args) = (*name, args.to_vec());
                self.with_changes(out, |runner| runner.act(name, &args))
            }
        }
    }

    /// Runs a command that changes the cluster, then prints what it delivered, whose state
    /// changed, and what it returned.
    fn with_changes(
        &mut self,
        out: &mut Out,
        act: impl FnOnce(&mut Runner) -> Result<Vec<String>, String>,
    ) -> Result<(), String> {
        let before = state_lines(self.cluster());
        let results = act(self)?;
        let cluster = self.cluster_mut();
        // Cause, then effect, then what the core answered.
        out.append(&mut cluster.trace);
        let after = state_lines(cluster);
        out.extend(
            after
                .iter()
                .filter(|(id, line)| before.get(*id) != Some(*line))
                .map(|(_, line)| line.clone()),
        );
        out.extend(results);
        Ok(())
    }

    /// Performs a command that changes the cluster. Returns its result lines: `-> ...` for
    /// a value the core returned, `error: ...` for an operating error.
    fn act(&mut self, name: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let arg = |i: usize| args.get(i).copied();
        let mut result = Vec::new();
        match name {
            "campaign" => {
                let id = self.peer(arg(0))?;
                self.cluster_mut().raft(&id).campaign_now();
                self.cluster_mut().process(&id);
            }
            "propose" => {
                let id = self.peer(arg(0))?;
                let data = arg(1).ok_or("usage: propose n1 data")?;
                let proposed = self
                    .cluster_mut()
                    .raft(&id)
                    .propose(Bytes::copy_from_slice(data.as_bytes()), None);
                self.cluster_mut().process(&id);
                result.push(answer(proposed.map(|(i, t)| format!("-> {i}@{t}"))));
            }
            "tick" => {
                let id = self.peer(arg(0))?;
                for _ in 0..number(arg(1).or(Some("1")), "tick n1 [K]")? {
                    self.cluster_mut().tick(&id);
                }
            }
            "tick-all" => {
                for _ in 0..number(arg(0).or(Some("1")), "tick-all [K]")? {
                    self.cluster_mut().tick_all();
                }
            }
            "run" => self.run_rounds(number(arg(0), "run K")?)?,
            "deliver" => {
                let queued = self.cluster().queue.len();
                let count = match arg(0) {
                    Some(_) => number(arg(0), "deliver [K]")?,
                    None => queued,
                };
                for _ in 0..count {
                    if self.cluster_mut().deliver_one().is_none() {
                        break;
                    }
                }
            }
            "stabilize" => self.stabilize()?,
            "isolate" => {
                let id = self.peer(arg(0))?;
                self.cluster_mut().isolate(&id);
            }
            "heal" => self.cluster_mut().heal(),
            "cut" => {
                let (a, b) = (self.peer(arg(0))?, self.peer(arg(1))?);
                self.cluster_mut().cut_both(&a, &b);
            }
            "read" => {
                let usage = "read n1 ID[,ID...] index|lease";
                let id = self.peer(arg(0))?;
                let read_ids = arg(1).ok_or(format!("usage: {usage}"))?.split(',');
                let mode = match arg(2) {
                    Some("index") => ReadMode::ReadIndex,
                    Some("lease") => ReadMode::Lease,
                    _ => return Err(format!("usage: {usage}")),
                };
                // Reads started before the driver collects the next `Ready` form one batch.
                for read_id in read_ids {
                    let read_id = number(Some(read_id), usage)? as u64;
                    let started = self.cluster_mut().raft(&id).read(read_id, mode);
                    if let Err(e) = started {
                        result.push(format!("error: read {read_id}: {e}"));
                    }
                }
                self.cluster_mut().process(&id);
            }
            "snapshot" => {
                let id = self.peer(arg(0))?;
                let meta = self.cluster_mut().snapshot(&id);
                result.push(format!("-> snapshot {}@{}", meta.index, meta.term));
            }
            "restart" => {
                let id = self.peer(arg(0))?;
                self.cluster_mut().restart(&id);
            }
            "wake" => {
                let id = self.peer(arg(0))?;
                self.cluster_mut().raft(&id).wake();
                self.cluster_mut().process(&id);
            }
            "wake-campaign" => {
                let id = self.peer(arg(0))?;
                self.cluster_mut().raft(&id).wake_and_campaign();
                self.cluster_mut().process(&id);
            }
            "hold-persist" => {
                let id = self.peer(arg(0))?;
                self.cluster_mut().node_mut(&id).hold_persist = true;
            }
            "release-persist" => {
                let id = self.peer(arg(0))?;
                self.cluster_mut().release_persist(&id);
            }
            _ => result = self.act_on_leader(name, args)?,
        }
        result.retain(|l| !l.is_empty());
        Ok(result)
    }

    /// Leader requests: transfer and membership changes (`command leader peer`).
    fn act_on_leader(&mut self, name: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let leader = self.peer(args.first().copied())?;
        let target = args.get(1).copied().ok_or(format!("usage: {name} n1 n2"))?;
        let peer = PeerId::new(target);
        let cluster = self.cluster_mut();
        if matches!(name, "add-peer" | "add-learner") && !cluster.nodes.contains_key(&peer) {
            // A new peer starts empty and waits for the leader to send it the log.
            cluster.add_node(peer.clone(), Configuration::default());
        }
        let raft = cluster.raft(&leader);
        let done = match name {
            "transfer" => {
                let target = (target != "any").then_some(peer);
                raft.transfer_leadership(target).map(|t| format!("-> {t}"))
            }
            "add-peer" => raft.add_peer(peer).map(|()| String::new()),
            "remove-peer" => raft.remove_peer(&peer).map(|()| String::new()),
            "add-learner" => raft.add_learners(&[peer]).map(|()| String::new()),
            "promote" => raft.promote_learner(&peer).map(|()| String::new()),
            _ => return Err(format!("unknown command `{name}`")),
        };
        cluster.process(&leader);
        Ok(vec![answer(done)])
    }

    fn stabilize(&mut self) -> Result<(), String> {
        let mut delivered = 0;
        while self.cluster_mut().deliver_one().is_some() {
            delivered += 1;
            if delivered > DELIVERIES_PER_COMMAND_MAX {
                return Err(format!("no quiet after {delivered} messages"));
            }
        }
        Ok(())
    }

    /// `run K`: K rounds of tick-all then stabilize; prints delivered messages by kind.
    fn run_rounds(&mut self, rounds: usize) -> Result<(), String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..rounds {
            self.cluster_mut().tick_all();
            self.stabilize()?;
            for line in std::mem::take(&mut self.cluster_mut().trace) {
                let kind = line.split_whitespace().nth(1).unwrap_or("?").to_string();
                let dropped = if line.ends_with("(dropped)") {
                    " (dropped)"
                } else {
                    ""
                };
                *counts.entry(format!("{kind}{dropped}")).or_default() += 1;
            }
        }
        // Printed where the delivered messages would be.
        self.cluster_mut().trace = counts
            .into_iter()
            .map(|(kind, n)| format!("{kind} x{n}"))
            .collect();
        Ok(())
    }

    fn log(&mut self, args: &[&str], out: &mut Out) -> Result<(), String> {
        let id = self.peer(args.first().copied())?;
        let node = self.cluster().node(&id);
        let snapshot = node.storage.snapshot_meta();
        if snapshot.index.get() > 0 {
            out.push(format!("snapshot {}@{}", snapshot.index, snapshot.term));
        }
        let first = node.storage.first_index();
        if first.get() > 1 {
            out.push(format!("first index {first}"));
        }
        let entries = durable_entries(&node.storage);
        if entries.is_empty() {
            out.push("no entries".to_string());
        }
        out.extend(entries.iter().map(describe_entry));
        Ok(())
    }

    fn peer(&self, name: Option<&str>) -> Result<PeerId, String> {
        let name = name.ok_or("missing peer")?;
        let id = PeerId::new(name);
        if self.cluster().nodes.contains_key(&id) {
            Ok(id)
        } else {
            Err(format!("no peer {name}"))
        }
    }

    fn cluster(&self) -> &Cluster {
        self.cluster
            .as_ref()
            .expect("checked: add-nodes came first")
    }

    fn cluster_mut(&mut self) -> &mut Cluster {
        self.cluster
            .as_mut()
            .expect("checked: add-nodes came first")
    }
}

fn number(word: Option<&str>, usage: &str) -> Result<usize, String> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("usage: {usage}"))
}

fn answer(result: Result<String, RaftError>) -> String {
    match result {
        Ok(value) => value,
        Err(e) => format!("error: {e}"),
    }
}

fn state_lines(cluster: &Cluster) -> BTreeMap<String, String> {
    cluster
        .describe_states()
        .lines()
        .map(|line| {
            let id = line.split(':').next().unwrap_or_default().to_string();
            (id, line.to_string())
        })
        .collect()
}

fn describe_read(read: &ReadResult) -> String {
    match &read.result {
        Ok(index) => format!("read {}: index {index}", read.id),
        Err(e) => format!("read {}: error: {e}", read.id),
    }
}

fn describe_configuration(c: &Configuration) -> String {
    let names = |set: &std::collections::BTreeSet<PeerId>| {
        let list: Vec<&str> = set.iter().map(PeerId::as_str).collect();
        format!("[{}]", list.join(","))
    };
    let mut s = format!("voters={}", names(&c.voters));
    if let Some(old) = &c.old_voters {
        let _ = write!(s, " old={}", names(old));
    }
    if !c.learners.is_empty() {
        let _ = write!(s, " learners={}", names(&c.learners));
    }
    s
}

fn describe_event(event: &Event) -> String {
    match event {
        Event::LeaderStart { term } => format!("leader start term={term}"),
        Event::LeaderStop { term } => format!("leader stop term={term}"),
        Event::StartFollowing { leader, term } => format!("start following {leader} term={term}"),
        Event::StopFollowing { leader, term } => format!("stop following {leader} term={term}"),
        Event::ConfigurationCommitted {
            index,
            configuration,
        } => format!(
            "configuration committed at {index}: {}",
            describe_configuration(configuration)
        ),
        Event::MembershipChangeFinished { result } => match result {
            Ok(c) => format!("membership change done: {}", describe_configuration(c)),
            Err(e) => format!("membership change failed: {e}"),
        },
        Event::TransferFinished { target, result } => match result {
            Ok(()) => format!("transfer to {target} done"),
            Err(e) => format!("transfer to {target} failed: {e}"),
        },
        Event::SnapshotDue => "snapshot due".to_string(),
        Event::Replicator { peer, change } => {
            let change = match change {
                ReplicatorChange::Created => "created",
                ReplicatorChange::Online => "online",
                ReplicatorChange::Offline => "offline",
                ReplicatorChange::Destroyed => "destroyed",
                ReplicatorChange::LostEntries => "lost-entries",
            };
            format!("replicator {peer} {change}")
        }
    }
}
