//! `flotilla admin`: the regions' status and membership, over the KV service (routes,
//! `OpenRegion`) and the CLI service (membership, transfer, snapshot, rebalance).
//!
//! Adding a store to a region is two steps, as in SOFAJRaft (start the new node empty,
//! then `addPeer` on the leader): `OpenRegion` on the new store creates its empty peer,
//! then the leader adds it (catching it up first, by snapshot if needed).
//!
//! Owns: the flags, and the operations that change regions. `cluster.rs` gathers what the
//! stores report and names stores; `status.rs` is `admin status` (summary, filters, output);
//! `health.rs` judges which regions need attention. Must never: print anything but the one
//! JSON object of `output.rs`'s contract on stdout with `--json`.

mod backup;
mod cluster;
mod health;
mod merge;
mod pd;
mod recover;
mod split;
mod status;

pub(crate) use pd::call_pd;

use clap::{Args, Subcommand};
use flotilla_kv::client::KvClient;
use flotilla_kv::service::proto::RegionInfo;
use flotilla_node::grpc::{CliClient, CliOptions};
use flotilla_node::PeerId;
use serde_json::{json, Value};

use self::cluster::{gather, peer_arg, Directory, StoreRef};
use self::status::StatusArgs;
use crate::config::FileConfig;
use crate::kv::ClientArgs;
use crate::output::{cli_failure, success, Failure, EXIT_OK};

/// `flotilla admin` flags.
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this region (default: every region).
    #[arg(long, value_name = "ID", global = true)]
    pub region: Option<u64>,
    /// add-peer, remove-peer, change-peers: skip the check that refuses a change leaving
    /// fewer live voters than a majority (etcd's strict reconfiguration). reset-peers:
    /// required (and still refused while the region has a live leader or quorum).
    #[arg(long, global = true)]
    pub force: bool,
    #[command(subcommand)]
    pub op: AdminOp,
}

/// One administrative operation.
#[derive(Subcommand, Debug)]
pub enum AdminOp {
    /// A summary of the stores and regions (leaders held, regions without a leader or
    /// unhealthy, by reason), then each region's range, epoch, leader, term, peers,
    /// learners and indexes: every region when there are at most 50, else only with a
    /// filter (`--region`, `--store`, `--unhealthy`) or `--all`. `--json` always lists every
    /// region matching the filters.
    Status(StatusArgs),
    /// Adds the store PEER (a store id, or the address of a running store) to the regions
    /// (it must run, empty or not).
    AddPeer { peer: String },
    /// Removes the store PEER (a store id or an address) from the regions.
    RemovePeer { peer: String },
    /// Makes the regions' voters exactly A,B,C (store ids or addresses).
    ChangePeers {
        #[arg(value_delimiter = ',')]
        peers: Vec<String>,
    },
    /// Adds the store at PEER as a learner (replicates and serves reads, never votes).
    AddLearner { peer: String },
    /// Makes the learner PEER a voter.
    PromoteLearner { peer: String },
    /// Hands the regions' leadership to PEER, or `any` for the most up-to-date peer.
    TransferLeader { peer: String },
    /// Takes a snapshot of the regions on the store at PEER.
    Snapshot { peer: String },
    /// Spreads region leadership evenly over the stores.
    Rebalance,
    /// Unsafe: on the store at `--store ADDR`, replaces the voters of the regions with
    /// A,B,C without consensus, to recover regions that lost their majority for good
    /// (SOFAJRaft's resetPeers). Needs `--force`; refused while a region has a live leader
    /// or a majority of its voters' stores answer. Run it on every surviving store.
    ResetPeers {
        /// The store whose peers are reset.
        #[arg(long, value_name = "HOST:PORT")]
        store: String,
        #[arg(value_delimiter = ',')]
        peers: Vec<String>,
    },
    /// Unsafe: brings back `--region ID` after it lost a majority of its voters for good,
    /// resetting its voters to those that answer (the most up-to-date log among them wins
    /// the next election). Prints what each survivor holds; needs `--force` (writes only
    /// the lost voters held are lost); refused while a majority answers.
    Recover,
    /// Splits `--region ID` at `--key K` through its leader: the region keeps the keys
    /// before K, a new region (its id from the placement driver) takes K and the keys after
    /// it, on the same stores. Without `--key`, at the key that halves the region's bytes.
    /// Prints both regions.
    Split {
        /// The first key of the new region (UTF-8); must lie strictly inside the region.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Merges `--region SOURCE` into its neighbour `--into TARGET` through the placement
    /// driver (SOURCE's replicas are moved onto TARGET's stores first), and waits for the
    /// merge to end.
    Merge {
        /// The region that absorbs SOURCE's range.
        #[arg(long, value_name = "TARGET")]
        into: u64,
        /// How long to wait for the merge to end (0: print the operator and return).
        #[arg(long, value_name = "MS", default_value_t = 60_000)]
        wait_ms: u64,
    },
    /// Copies every region into DIR (new or empty): per region a snapshot its leader makes
    /// after a linearizable read, so it holds every write acknowledged before the backup
    /// reached it; checksummed, verified as it is written, `backup.meta` written last.
    /// `flotilla server --restore DIR` seeds a new cluster from it.
    Backup {
        /// Where to write the backup.
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// The placement driver: `status`, `config-show`, `config-set KEY VALUE`, `pause`,
    /// `resume`.
    #[command(subcommand)]
    Pd(pd::PdOp),
    /// The stores as the placement driver knows them: `list`, `remove STORE`
    /// (decommission).
    #[command(subcommand)]
    Store(pd::StoreOp),
    /// Removes the peer of `--region ID` from the store at `--store ADDR`, where it was
    /// opened by mistake: refused unless the peer belongs to no configuration (no store
    /// lists it as a member) and holds no data.
    CloseRegion {
        /// The store holding the peer.
        #[arg(long, value_name = "HOST:PORT")]
        store: String,
    },
}

/// A comma-separated list of stores for `command`: at least one, each resolved.
async fn peer_list(
    client: &KvClient,
    directory: &Directory,
    peers: &[String],
    command: &str,
) -> Result<Vec<StoreRef>, Failure> {
    let mut out = Vec::new();
    for text in peers.iter().filter(|p| !p.trim().is_empty()) {
        out.push(peer_arg(client, directory, text).await?);
    }
    if out.is_empty() {
        return Err(Failure::usage(format!("{command} needs at least one peer")));
    }
    Ok(out)
}

fn ids(stores: &[StoreRef]) -> Vec<PeerId> {
    stores.iter().map(|s| s.id.clone()).collect()
}

/// The address of `store`, needed for a call made on it.
fn address_of(store: &StoreRef) -> Result<String, Failure> {
    store.address.clone().ok_or_else(|| {
        Failure::failed(
            "NoAddress",
            format!(
                "no store knows where store {} is: name it by its address instead",
                store.id
            ),
        )
    })
}

/// Runs the operation; returns the exit code.
pub fn run(args: AdminArgs, file: &FileConfig) -> i32 {
    let json_flag = args.client.json || file.json.unwrap_or(false);
    let settings = match args.client.clone().settings(file) {
        Ok(settings) => settings,
        Err(failure) => return failure.report("admin", json_flag),
    };
    let runtime = match crate::output::client_runtime() {
        Ok(runtime) => runtime,
        Err(failure) => return failure.report("admin", settings.json),
    };
    let json = settings.json;
    let result = runtime.block_on(async move {
        let client = KvClient::connect(settings.endpoints, settings.options).await?;
        execute(&client, args.region, args.force, args.op).await
    });
    match result {
        Ok((value, human)) => {
            use std::io::Write as _;
            let text = if json { value.to_string() } else { human };
            // A closed pipe (`admin status | head`) is the reader's choice, not an error.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            EXIT_OK
        }
        Err(failure) => failure.report("admin", json),
    }
}

async fn execute(
    client: &KvClient,
    only: Option<u64>,
    force: bool,
    op: AdminOp,
) -> Result<(Value, String), Failure> {
    let cluster = gather(client).await;
    let directory = &cluster.directory;
    let stores = cluster.addresses();
    match op {
        AdminOp::Pd(op) => return pd::pd(client, &stores, op).await,
        AdminOp::Store(op) => return pd::store(client, &stores, op).await,
        AdminOp::Recover => return recover::recover(client, &cluster, only, force).await,
        AdminOp::Split { key } => {
            return split::split(client, &cluster, only, key.as_deref()).await
        }
        AdminOp::Merge { into, wait_ms } => {
            let wait = std::time::Duration::from_millis(wait_ms);
            return merge::merge(client, &stores, only, into, wait).await;
        }
        AdminOp::Backup { dir } => {
            if only.is_some() {
                return Err(Failure::usage(
                    "backup copies every region: leave out --region",
                ));
            }
            return backup::backup(client, &dir).await;
        }
        _ => {}
    }
    if let AdminOp::CloseRegion { store } = &op {
        return close_region(client, directory, &cluster.regions, only, store).await;
    }
    let regions: Vec<RegionInfo> = cluster
        .regions
        .iter()
        .filter(|r| only.is_none_or(|id| r.id == id))
        .cloned()
        .collect();
    if let Some(id) = only {
        if regions.is_empty() {
            return Err(Failure::failed(
                "NoSuchRegion",
                format!("no store reports region {id}"),
            ));
        }
    }
    if let AdminOp::Status(args) = &op {
        return status::status(client, &cluster, only, args).await;
    }
    let membership = matches!(
        op,
        AdminOp::AddPeer { .. }
            | AdminOp::AddLearner { .. }
            | AdminOp::RemovePeer { .. }
            | AdminOp::ChangePeers { .. }
            | AdminOp::PromoteLearner { .. }
    );
    let held = if membership {
        pd::hold(client, &stores, &regions).await?
    } else {
        Vec::new()
    };
    let result = change_regions(client, directory, &regions, force, op).await;
    pd::release(client, &stores, &held).await;
    result
}

/// Carries out an operation that changes `regions`.
async fn change_regions(
    client: &KvClient,
    directory: &Directory,
    regions: &[RegionInfo],
    force: bool,
    op: AdminOp,
) -> Result<(Value, String), Failure> {
    let mut change = Change::new(client, directory, regions, force);
    match op {
        AdminOp::Status(_)
        | AdminOp::CloseRegion { .. }
        | AdminOp::Pd(_)
        | AdminOp::Store(_)
        | AdminOp::Split { .. }
        | AdminOp::Merge { .. }
        | AdminOp::Backup { .. }
        | AdminOp::Recover => {}
        AdminOp::ResetPeers { store, peers } => change.reset_peers(&store, &peers).await?,
        AdminOp::AddPeer { peer } => change.add(&peer, false).await?,
        AdminOp::AddLearner { peer } => change.add(&peer, true).await?,
        AdminOp::RemovePeer { peer } => change.remove_peer(&peer).await?,
        AdminOp::ChangePeers { peers } => change.change_peers(&peers).await?,
        AdminOp::PromoteLearner { peer } => change.promote_learner(&peer).await?,
        AdminOp::TransferLeader { peer } => change.transfer_leader(&peer).await?,
        AdminOp::Snapshot { peer } => change.snapshot(&peer).await?,
        AdminOp::Rebalance => change.rebalance().await?,
    }
    Ok((
        success(vec![("done", Value::Array(change.done))]),
        change.human.join("\n"),
    ))
}

/// One admin operation that changes regions, carried out region by region through the
/// CLI service: what was done, as JSON objects and as lines for people.
struct Change<'a> {
    client: &'a KvClient,
    directory: &'a Directory,
    regions: &'a [RegionInfo],
    force: bool,
    /// Every store known, by address: the CLI client routes by address.
    endpoints: Vec<PeerId>,
    cli_options: CliOptions,
    done: Vec<Value>,
    human: Vec<String>,
}

impl<'a> Change<'a> {
    fn new(
        client: &'a KvClient,
        directory: &'a Directory,
        regions: &'a [RegionInfo],
        force: bool,
    ) -> Change<'a> {
        let mut endpoints: Vec<PeerId> = Vec::new();
        let members = regions
            .iter()
            .flat_map(|info| info.peers.iter().chain(&info.learners));
        for address in members.chain(directory.values()) {
            let address = PeerId::new(address);
            if !address.as_str().is_empty() && !endpoints.contains(&address) {
                endpoints.push(address);
            }
        }
        let cli_options = CliOptions {
            tls: client.options().tls.clone(),
            force,
            ..CliOptions::default()
        };
        Change {
            client,
            directory,
            regions,
            force,
            endpoints,
            cli_options,
            done: Vec::new(),
            human: Vec::new(),
        }
    }

    fn cli(&self, group: u64) -> Result<CliClient, Failure> {
        Ok(CliClient::new(self.endpoints.clone(), group)
            .map_err(cli_failure)?
            .with_options(self.cli_options.clone()))
    }

    async fn store(&self, text: &str) -> Result<StoreRef, Failure> {
        peer_arg(self.client, self.directory, text).await
    }

    fn record(&mut self, human: String, done: Value) {
        self.human.push(human);
        self.done.push(done);
    }

    async fn reset_peers(&mut self, store: &str, peers: &[String]) -> Result<(), Failure> {
        let store = self.store(store).await?;
        let on = PeerId::new(&address_of(&store)?);
        let peers = peer_list(self.client, self.directory, peers, "reset-peers").await?;
        if !self.force {
            return Err(Failure::usage(
                "reset-peers replaces the voters without consensus and can lose \
                 acknowledged writes: add --force if the regions lost their majority for good",
            ));
        }
        for info in self.regions {
            self.cli(info.id)?
                .reset_peers(&on, &ids(&peers))
                .await
                .map_err(cli_failure)?;
            let names: Vec<String> = peers.iter().map(|p| p.id.to_string()).collect();
            self.record(
                format!(
                    "region {}: voters on {store} reset to {}",
                    info.id,
                    names.join(",")
                ),
                json!({"region": info.id, "store": store.id.as_str(), "peers": names}),
            );
        }
        Ok(())
    }

    /// `add-peer` (a voter) or `add-learner`: the store gets the region's empty peer first.
    async fn add(&mut self, peer: &str, learner: bool) -> Result<(), Failure> {
        let peer = self.store(peer).await?;
        for info in self.regions {
            open_on(self.client, self.directory, &peer, info).await?;
            let cli = self.cli(info.id)?;
            if learner {
                cli.add_learners(std::slice::from_ref(&peer.id))
                    .await
                    .map_err(cli_failure)?;
                self.record(
                    format!("region {}: added learner {peer}", info.id),
                    json!({"region": info.id, "learner": peer.id.as_str()}),
                );
            } else {
                cli.add_peer(&peer.id).await.map_err(cli_failure)?;
                self.record(
                    format!("region {}: added {peer}", info.id),
                    json!({"region": info.id, "added": peer.id.as_str()}),
                );
            }
        }
        Ok(())
    }

    async fn remove_peer(&mut self, peer: &str) -> Result<(), Failure> {
        let peer = self.store(peer).await?;
        for info in self.regions {
            self.cli(info.id)?
                .remove_peer(&peer.id)
                .await
                .map_err(cli_failure)?;
            self.record(
                format!("region {}: removed {peer}", info.id),
                json!({"region": info.id, "removed": peer.id.as_str()}),
            );
        }
        Ok(())
    }

    async fn change_peers(&mut self, peers: &[String]) -> Result<(), Failure> {
        let peers = peer_list(self.client, self.directory, peers, "change-peers").await?;
        for info in self.regions {
            for peer in &peers {
                if !info.peer_ids.iter().any(|p| p == peer.id.as_str()) {
                    open_on(self.client, self.directory, peer, info).await?;
                }
            }
            self.cli(info.id)?
                .change_peers(&ids(&peers))
                .await
                .map_err(cli_failure)?;
            let names: Vec<String> = peers.iter().map(|p| p.id.to_string()).collect();
            self.record(
                format!("region {}: peers are now {}", info.id, names.join(",")),
                json!({"region": info.id, "peers": names}),
            );
        }
        Ok(())
    }

    async fn promote_learner(&mut self, peer: &str) -> Result<(), Failure> {
        let peer = self.store(peer).await?;
        for info in self.regions {
            self.cli(info.id)?
                .promote_learner(&peer.id)
                .await
                .map_err(cli_failure)?;
            self.record(
                format!("region {}: promoted {peer}", info.id),
                json!({"region": info.id, "promoted": peer.id.as_str()}),
            );
        }
        Ok(())
    }

    async fn transfer_leader(&mut self, peer: &str) -> Result<(), Failure> {
        let target = if peer == "any" {
            None
        } else {
            Some(self.store(peer).await?.id)
        };
        for info in self.regions {
            let leader = self
                .cli(info.id)?
                .transfer_leader(target.as_ref())
                .await
                .map_err(cli_failure)?;
            self.record(
                format!("region {}: leader is {leader}", info.id),
                json!({"region": info.id, "leader": leader.as_str()}),
            );
        }
        Ok(())
    }

    async fn snapshot(&mut self, peer: &str) -> Result<(), Failure> {
        let peer = self.store(peer).await?;
        let on = PeerId::new(&address_of(&peer)?);
        for info in self.regions {
            let index = self
                .cli(info.id)?
                .snapshot(&on)
                .await
                .map_err(cli_failure)?;
            self.record(
                format!("region {}: snapshot on {peer} at index {index}", info.id),
                json!({"region": info.id, "peer": peer.id.as_str(), "index": index}),
            );
        }
        Ok(())
    }

    async fn rebalance(&mut self) -> Result<(), Failure> {
        let groups: Vec<u64> = self.regions.iter().map(|r| r.id).collect();
        let Some(first) = groups.first() else {
            return Err(Failure::failed("NoSuchRegion", "no regions to rebalance"));
        };
        let leaders = self
            .cli(*first)?
            .rebalance(&groups)
            .await
            .map_err(cli_failure)?;
        for (group, leader) in &leaders {
            self.record(
                format!("region {group}: leader is {leader}"),
                json!({"region": group, "leader": leader.as_str()}),
            );
        }
        Ok(())
    }
}

/// `admin close-region`: the store refuses a peer that belongs to a configuration or holds
/// data; this side refuses first when the region's best-known view (its leader's) lists the
/// store as a member, e.g. one being added whose own peer has not heard of it yet.
async fn close_region(
    client: &KvClient,
    directory: &Directory,
    regions: &[RegionInfo],
    only: Option<u64>,
    store: &str,
) -> Result<(Value, String), Failure> {
    let id = only.ok_or_else(|| Failure::usage("close-region needs --region ID"))?;
    let store = peer_arg(client, directory, store).await?;
    let at = address_of(&store)?;
    if let Some(info) = regions.iter().find(|r| r.id == id) {
        let member = info
            .peer_ids
            .iter()
            .chain(&info.learner_ids)
            .any(|p| p == store.id.as_str());
        if member {
            return Err(Failure::failed(
                "RegionRefused",
                format!(
                    "region {id} lists {store} as a member (peers {}, learners {}): remove it \
                     with `admin remove-peer` instead",
                    info.peers.join(","),
                    info.learners.join(",")
                ),
            ));
        }
    }
    client
        .close_region_expecting(&at, Some(store.id.as_str()), id)
        .await
        .map_err(Failure::from)?;
    Ok((
        success(vec![(
            "done",
            json!([{"region": id, "closed_on": store.id.as_str()}]),
        )]),
        format!("region {id}: closed on {store}"),
    ))
}

/// Creates the empty peer of `info` on the store at `peer` (idempotent).
async fn open_on(
    client: &KvClient,
    directory: &Directory,
    peer: &StoreRef,
    info: &RegionInfo,
) -> Result<(), Failure> {
    let at = address_of(peer)?;
    let opened = client
        .open_region_expecting(&at, Some(peer.id.as_str()), info.clone())
        .await
        .map(|_| ())
        .map_err(|e| {
            let mut failure = Failure::from(e);
            failure.message = format!(
                "cannot open region {} on {peer} (is `flotilla server --addr {at}` running?): {}",
                info.id, failure.message
            );
            failure
        });
    opened?;
    // The store is reached by id: tell every store where it is (one that started without
    // --peers has told no one).
    for address in directory.values().filter(|a| **a != at) {
        if let Err(e) = client
            .announce(address, peer.id.as_str(), &at, client.cluster())
            .await
        {
            eprintln!(
                "admin: could not tell {address} where store {} is: {e}",
                peer.id
            );
        }
    }
    Ok(())
}
