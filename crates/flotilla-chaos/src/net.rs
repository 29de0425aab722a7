//! Hosts and the network between them. With network namespaces, each server process runs
//! in its own namespace (`ip netns`), wired by a veth pair to one bridge the harness creates,
//! on a private /24 it checked is unused; a partition is a set of packet drops made with
//! `iptables` inside the receiving namespace (real drops: the kernel discards the packets,
//! TCP retransmits into the void). Without namespaces (not root, no `ip`, no `iptables`),
//! every server listens on 127.0.0.1 and only the faults that need no network control run.
//!
//! Traffic between two namespaces crosses the bridge, and where the bridge netfilter module
//! is loaded (Docker loads it, and sets the host's `FORWARD` policy to `DROP`) bridged
//! packets pass the host's `FORWARD` chain: the harness inserts one rule accepting what
//! enters and leaves its own bridge, at the top of that chain, and deletes it at teardown.
//!
//! Owns: creating and removing every namespace, link and rule it uses, and nothing else: it
//! never touches a namespace, link, address or rule it did not create (names, and the
//! comment on its rule, carry this process's id; leftovers of a dead harness are recognised
//! by that id and removed).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Prefix of every namespace the harness creates: `flotilla-chaos-<pid>-<number>`; its
/// links are `fch<pid>b<number>` (bridge) and `fch<pid>v<number>` (veth), `<pid>` taken
/// modulo 100,000 (interface names are at most 15 bytes).
const NETNS_PREFIX: &str = "flotilla-chaos-";
/// The port every server listens on inside its namespace.
const NETNS_PORT: u16 = 7100;
/// Hosts one run may create (addresses .1 to .250 of the /24; .254 is the bridge).
const HOSTS_MAX: u8 = 250;
/// Networks this process created (numbers its bridges).
static NETWORKS_CREATED: AtomicU32 = AtomicU32::new(0);
/// Hosts this process created (numbers its namespaces and veth links).
static HOSTS_CREATED: AtomicU32 = AtomicU32::new(0);

/// Where one server process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The address the server listens on and advertises (where it is; its store id is in
    /// its data dir).
    pub address: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its network namespace (`None` on loopback).
    pub netns: Option<String>,
}

/// The hosts' network.
#[derive(Debug)]
pub enum Network {
    /// One namespace per host on a bridge: partitions are possible.
    Namespaces(Namespaces),
    /// Every host on 127.0.0.1: no partitions.
    Loopback,
}

/// The namespaces, links and addresses one harness process created.
#[derive(Debug)]
pub struct Namespaces {
    tag: String,
    bridge: String,
    subnet: [u8; 3],
    next_host: u8,
    /// Namespaces created and not yet removed.
    live: Vec<String>,
    /// The bridge exists.
    bridge_up: bool,
    /// The host's `FORWARD` rule accepting the bridge's traffic is in place.
    forward_rule: bool,
}

/// The comment on the harness's host `FORWARD` rule: `flotilla-chaos-<pid>`.
fn forward_comment(pid: u32) -> String {
    format!("{NETNS_PREFIX}{pid}")
}

/// The host `FORWARD` rule letting traffic through `bridge` (inserted at the top, or
/// deleted), as `iptables` arguments after `-I FORWARD 1` or `-D FORWARD`.
fn forward_rule_args(bridge: &str, pid: u32) -> Vec<String> {
    [
        "-i",
        bridge,
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        &forward_comment(pid),
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

/// Runs a command to completion; fails with its stderr when it exits non-zero.
async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with_input(program, args, None).await
}

async fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await?;
        drop(stdin);
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `program` can be found on the PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A free TCP port on 127.0.0.1 (bound then released: good enough for a test harness).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(listener.local_addr()?.port())
}

impl Network {
    /// Whether hosts are in namespaces (a store can be cut off from the others).
    pub fn has_namespaces(&self) -> bool {
        matches!(self, Network::Namespaces(_))
    }

    /// Namespaces if they can be made here (else loopback, with the reason why), unless
    /// `loopback` forces it.
    pub async fn create(loopback: bool) -> (Network, Option<String>) {
        if loopback {
            return (Network::Loopback, Some("--loopback given".into()));
        }
        match Namespaces::create().await {
            Ok(namespaces) => (Network::Namespaces(namespaces), None),
            Err(why) => (Network::Loopback, Some(format!("{why:#}"))),
        }
    }

    /// A new host for one server.
    pub async fn add_host(&mut self) -> anyhow::Result<Host> {
        match self {
            Network::Namespaces(ns) => ns.add_host().await,
            Network::Loopback => {
                let port = free_port()?;
                Ok(Host {
                    address: format!("127.0.0.1:{port}"),
                    ip: Ipv4Addr::LOCALHOST,
                    netns: None,
                })
            }
        }
    }

    /// The same host (namespace, IP) listening on another address, for a store that moves
    /// with its data: back to `home` when it is elsewhere, else to another port (in a
    /// namespace: the next port after the usual one, so partitions by IP still apply;
    /// on loopback: a free port).
    pub fn moved(host: &Host, home: &str) -> anyhow::Result<Host> {
        let address = if host.address != home {
            home.to_string()
        } else if host.netns.is_some() {
            let port = host
                .address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .unwrap_or(NETNS_PORT);
            format!(
                "{}:{}",
                host.ip,
                if port == NETNS_PORT {
                    NETNS_PORT + 1
                } else {
                    NETNS_PORT
                }
            )
        } else {
            let mut port = free_port()?;
            while format!("127.0.0.1:{port}") == host.address {
                port = free_port()?;
            }
            format!("127.0.0.1:{port}")
        };
        Ok(Host {
            address,
            ..host.clone()
        })
    }

    /// Removes a host that is no longer used (its namespace; the server must be stopped).
    pub async fn remove_host(&mut self, host: &Host) -> anyhow::Result<()> {
        match (self, &host.netns) {
            (Network::Namespaces(ns), Some(name)) => ns.remove(name).await,
            _ => Ok(()),
        }
    }

    /// Makes exactly the pairs in `blocked` (from, to) of the numbered `hosts` drop their
    /// packets: `to` discards everything from `from`. Every other pair delivers.
    pub async fn set_blocked(
        &self,
        hosts: &[(usize, &Host)],
        blocked: &BTreeSet<(usize, usize)>,
    ) -> anyhow::Result<()> {
        let Network::Namespaces(_) = self else {
            if blocked.is_empty() {
                return Ok(());
            }
            bail!("partitions need network namespaces");
        };
        for &(to, host) in hosts {
            let Some(netns) = &host.netns else { continue };
            let mut rules = String::from(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
            );
            for &(from, source) in hosts {
                if blocked.contains(&(from, to)) {
                    rules.push_str(&format!("-A INPUT -s {}/32 -j DROP\n", source.ip));
                }
            }
            rules.push_str("COMMIT\n");
            run_with_input(
                "ip",
                &["netns", "exec", netns, "iptables-restore"],
                Some(&rules),
            )
            .await
            .with_context(|| format!("cannot set the packet filter of {}", host.address))?;
        }
        Ok(())
    }

    /// Removes everything the harness created.
    pub async fn teardown(&mut self) {
        if let Network::Namespaces(ns) = self {
            ns.teardown().await;
        }
    }

    /// The command line prefix that runs a program on `host`.
    pub fn exec_prefix(host: &Host) -> Vec<String> {
        match &host.netns {
            Some(netns) => vec!["ip".into(), "netns".into(), "exec".into(), netns.clone()],
            None => Vec::new(),
        }
    }
}

impl Namespaces {
    async fn create() -> anyhow::Result<Namespaces> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!("network namespaces need root");
        }
        for program in ["ip", "iptables", "iptables-restore"] {
            if !on_path(program) {
                bail!("{program} is not installed (apt-get install iproute2 iptables)");
            }
        }
        remove_leftovers().await;
        let pid = std::process::id();
        // Names are unique within this process too: the kernel removes a deleted
        // namespace's veth pair asynchronously, so a name is never reused.
        let number = NETWORKS_CREATED.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}", pid % 100_000);
        let subnet = free_subnet(pid).await?;
        let bridge = format!("fch{tag}b{}", number % 1000);
        run("ip", &["link", "add", &bridge, "type", "bridge"])
            .await
            .context("cannot create a bridge")?;
        let mut namespaces = Namespaces {
            tag,
            bridge: bridge.clone(),
            subnet,
            next_host: 1,
            live: Vec::new(),
            bridge_up: true,
            forward_rule: false,
        };
        let gateway = format!("{}.{}.{}.254/24", subnet[0], subnet[1], subnet[2]);
        let setup = async {
            // Before any traffic: a host whose FORWARD policy drops (Docker's) would
            // otherwise silence the bridge.
            let mut insert = vec!["-I".to_string(), "FORWARD".into(), "1".into()];
            insert.extend(forward_rule_args(&bridge, pid));
            let insert: Vec<&str> = insert.iter().map(String::as_str).collect();
            run("iptables", &insert)
                .await
                .context("cannot let the bridge's traffic through the host's FORWARD chain")?;
            namespaces.forward_rule = true;
            run("ip", &["addr", "add", &gateway, "dev", &bridge]).await?;
            run("ip", &["link", "set", &bridge, "up"]).await?;
            // Probe one namespace now, so a machine that cannot make them falls back early.
            let probe = namespaces.add_host().await?;
            // (Its number is not reused: the kernel removes the veth pair asynchronously.)
            namespaces
                .remove(probe.netns.as_deref().unwrap_or_default())
                .await?;
            anyhow::Ok(())
        };
        if let Err(why) = setup.await {
            namespaces.teardown().await;
            return Err(why);
        }
        Ok(namespaces)
    }

    async fn add_host(&mut self) -> anyhow::Result<Host> {
        if self.next_host > HOSTS_MAX {
            bail!("more than {HOSTS_MAX} hosts in one run");
        }
        let n = self.next_host;
        self.next_host += 1;
        let id = HOSTS_CREATED.fetch_add(1, Ordering::Relaxed) % 10_000;
        let netns = format!("{NETNS_PREFIX}{}-{id}", std::process::id());
        let veth = format!("fch{}v{id}", self.tag);
        let ip = Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], n);
        run("ip", &["netns", "add", &netns]).await?;
        self.live.push(netns.clone());
        let cidr = format!("{ip}/24");
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )
        .await?;
        run("ip", &["link", "set", &veth, "master", &self.bridge, "up"]).await?;
        run("ip", &["-n", &netns, "addr", "add", &cidr, "dev", "eth0"]).await?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"]).await?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]).await?;
        Ok(Host {
            address: format!("{ip}:{NETNS_PORT}"),
            ip,
            netns: Some(netns),
        })
    }

    async fn remove(&mut self, netns: &str) -> anyhow::Result<()> {
        // Removing the namespace removes its end of the veth pair, and with it ours.
        run("ip", &["netns", "del", netns]).await?;
        self.live.retain(|n| n != netns);
        Ok(())
    }

    async fn teardown(&mut self) {
        for netns in std::mem::take(&mut self.live) {
            if let Err(why) = run("ip", &["netns", "del", &netns]).await {
                eprintln!("flotilla-chaos: cannot remove namespace {netns}: {why:#}");
            }
        }
        if std::mem::take(&mut self.forward_rule) {
            let mut delete = vec!["-D".to_string(), "FORWARD".into()];
            delete.extend(forward_rule_args(&self.bridge, std::process::id()));
            let delete: Vec<&str> = delete.iter().map(String::as_str).collect();
            if let Err(why) = run("iptables", &delete).await {
                eprintln!("flotilla-chaos: cannot remove the host FORWARD rule: {why:#}");
            }
        }
        if !std::mem::take(&mut self.bridge_up) {
            return;
        }
        if let Err(why) = run("ip", &["link", "del", &self.bridge]).await {
            eprintln!(
                "flotilla-chaos: cannot remove bridge {}: {why:#}",
                self.bridge
            );
        }
    }
}

impl Drop for Namespaces {
    /// A run that ends early (an error, Ctrl-C) still removes what it created; this blocks,
    /// which is fine at the end of a run.
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for netns in std::mem::take(&mut self.live) {
            quiet(&["netns", "del", &netns]);
        }
        if std::mem::take(&mut self.forward_rule) {
            let mut delete = vec!["-D".to_string(), "FORWARD".into()];
            delete.extend(forward_rule_args(&self.bridge, std::process::id()));
            let _ = std::process::Command::new("iptables")
                .args(&delete)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if std::mem::take(&mut self.bridge_up) {
            quiet(&["link", "del", &self.bridge]);
        }
    }
}

/// A 10.x.y.0/24 that no route of this machine overlaps (chosen from the pid so that two
/// harnesses on one machine pick different ones).
async fn free_subnet(pid: u32) -> anyhow::Result<[u8; 3]> {
    let routes = run("ip", &["-4", "route", "show", "table", "all"])
        .await
        .unwrap_or_default();
    let taken = |candidate: [u8; 3]| {
        routes.lines().any(|line| {
            let Some(prefix) = line.split_whitespace().find(|w| w.contains('.')) else {
                return false;
            };
            overlaps(prefix, candidate)
        })
    };
    for attempt in 0..4096u32 {
        let n = pid.wrapping_add(attempt.wrapping_mul(7919));
        let candidate = [10, 200 + (n % 50) as u8, ((n / 50) % 256) as u8];
        if !taken(candidate) {
            return Ok(candidate);
        }
    }
    bail!("no free 10.x.y.0/24 subnet for the bridge")
}

/// Whether the route prefix `text` ("a.b.c.d/len" or "a.b.c.d") overlaps `subnet`.0/24.
fn overlaps(text: &str, subnet: [u8; 3]) -> bool {
    let (address, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().unwrap_or(32)),
        None => (text, 32),
    };
    let Ok(address) = address.parse::<Ipv4Addr>() else {
        return false;
    };
    let ours = u32::from(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 0));
    let theirs = u32::from(address);
    // Two prefixes overlap when they agree on the shorter one's bits.
    let bits = len.min(24);
    if bits == 0 {
        // A default route covers everything but claims nothing.
        return false;
    }
    let mask = u32::MAX << (32 - bits);
    ours & mask == theirs & mask
}

/// Removes the host `FORWARD` rules that harnesses which are no longer running left
/// behind (recognised by their comment, `flotilla-chaos-<pid>`).
async fn remove_leftover_forward_rules() {
    let Ok(rules) = run("iptables", &["-S", "FORWARD"]).await else {
        return;
    };
    for line in rules.lines() {
        // "-A FORWARD -i fch123b0 -o fch123b0 -m comment --comment flotilla-chaos-123 -j ACCEPT"
        let Some(pid) = dead_harness_rule(line) else {
            continue;
        };
        let Some(spec) = line.strip_prefix("-A FORWARD ") else {
            continue;
        };
        let mut args = vec!["-D", "FORWARD"];
        args.extend(spec.split_whitespace());
        if run("iptables", &args).await.is_ok() {
            eprintln!(
                "flotilla-chaos: removed the host FORWARD rule left by harness {pid}, which is gone"
            );
        }
    }
}

/// The pid of the harness whose rule `line` (`iptables -S` output) is, if that harness is
/// no longer running.
fn dead_harness_rule(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    let comment = words
        .find(|w| *w == "--comment")
        .and_then(|_| words.next())?;
    let pid: u32 = comment
        .trim_matches('"')
        .strip_prefix(NETNS_PREFIX)?
        .parse()
        .ok()?;
    (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Removes namespaces (and the servers in them), bridges and host rules that a harness
/// which is no longer running left behind. Only names this harness makes are considered.
async fn remove_leftovers() {
    remove_leftover_forward_rules().await;
    let Ok(list) = run("ip", &["netns", "list"]).await else {
        return;
    };
    let mut dead_tags = BTreeSet::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = run("ip", &["netns", "pids", name]).await {
            for server in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(server, libc::SIGKILL) };
            }
        }
        let _ = run("ip", &["netns", "del", name]).await;
        dead_tags.insert(pid % 100_000);
        eprintln!("flotilla-chaos: removed namespace {name} left by a harness that is gone");
    }
    if dead_tags.is_empty() {
        return;
    }
    let Ok(links) = run("ip", &["-o", "link", "show", "type", "bridge"]).await else {
        return;
    };
    for line in links.lines() {
        // "7: fch123b0: <BROADCAST,...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let dead = dead_tags.iter().any(|tag| {
            name.strip_prefix(&format!("fch{tag}b"))
                .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
        });
        if dead {
            let _ = run("ip", &["link", "del", name]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rules_of_harnesses_that_are_gone_are_leftovers() {
        let ours = format!(
            "-A FORWARD -i fch1b0 -o fch1b0 -m comment --comment {} -j ACCEPT",
            forward_comment(std::process::id())
        );
        assert_eq!(dead_harness_rule(&ours), None, "this harness runs");
        // Pids are below 2^22 on Linux: this one cannot run.
        let gone = "-A FORWARD -i fch9b0 -o fch9b0 -m comment --comment \"flotilla-chaos-99999999\" -j ACCEPT";
        assert_eq!(dead_harness_rule(gone), Some(99_999_999));
        assert_eq!(dead_harness_rule("-A FORWARD -j DOCKER-USER"), None);
        assert_eq!(
            dead_harness_rule("-A FORWARD -m comment --comment other-tool-5 -j ACCEPT"),
            None
        );
        let args = forward_rule_args("fch1b0", 42);
        assert_eq!(
            args.join(" "),
            "-i fch1b0 -o fch1b0 -m comment --comment flotilla-chaos-42 -j ACCEPT"
        );
    }

    #[test]
    fn subnet_overlap() {
        assert!(overlaps("10.200.3.0/24", [10, 200, 3]));
        assert!(overlaps("10.0.0.0/8", [10, 200, 3]));
        assert!(overlaps("10.200.3.7", [10, 200, 3]));
        assert!(!overlaps("10.200.4.0/24", [10, 200, 3]));
        assert!(!overlaps("192.168.0.0/16", [10, 200, 3]));
        assert!(!overlaps("0.0.0.0/0", [10, 200, 3]));
        assert!(!overlaps("default", [10, 200, 3]));
    }

    #[test]
    fn a_moved_host_keeps_its_ip_and_comes_back_home() {
        let home = Host {
            address: "10.200.3.2:7100".into(),
            ip: Ipv4Addr::new(10, 200, 3, 2),
            netns: Some("ns".into()),
        };
        let away = Network::moved(&home, &home.address).unwrap();
        assert_eq!(away.address, "10.200.3.2:7101");
        assert_eq!((away.ip, &away.netns), (home.ip, &home.netns));
        assert_eq!(Network::moved(&away, &home.address).unwrap(), home);
        let local = Host {
            address: "127.0.0.1:40000".into(),
            ip: Ipv4Addr::LOCALHOST,
            netns: None,
        };
        let moved = Network::moved(&local, &local.address).unwrap();
        assert_ne!(moved.address, local.address);
        assert!(moved.address.starts_with("127.0.0.1:"));
    }
}
