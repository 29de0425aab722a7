//! The executor of leader rebalancing ([`CliClient::rebalance`]): gathers each group's
//! leader and voters through the CLI service, asks the pure planner
//! ([`crate::rebalance::plan`]) for the transfers, and carries them out in order. When a
//! transfer does not end as planned (it failed, or another peer took over), it reads the
//! leader again and plans anew from what it observed. The seed of the placement driver's
//! executor (docs/DESIGN.md, "Where the coming work sits").
//!
//! Owns: the order and retries of the transfers. Must never: retry a transfer whose outcome
//! is unknown, or decide a move itself (the planner does).

use std::collections::BTreeMap;

use flotilla_raft::PeerId;
use flotilla_storage::GroupId;
use tonic::Code;

use super::client::CliClient;
use super::error::CliError;
use crate::rebalance;

impl CliClient {
    /// Moves leaders of `groups` so that no process leads more than
    /// `ceil(groups / processes)` of them (processes: every voter of those groups). Driven
    /// from this client; answers with each group's leader afterwards.
    pub async fn rebalance(
        &self,
        groups: &[GroupId],
    ) -> Result<BTreeMap<GroupId, PeerId>, CliError> {
        let mut leaders = BTreeMap::new();
        let mut voters: BTreeMap<GroupId, Vec<PeerId>> = BTreeMap::new();
        let clients: BTreeMap<GroupId, CliClient> =
            groups.iter().map(|g| (*g, self.for_group(*g))).collect();
        for (group, client) in &clients {
            let peers = client.get_peers().await?;
            let leader = client.get_leader().await?;
            leaders.insert(*group, leader);
            voters.insert(*group, peers);
        }
        let mut failures = 0usize;
        while failures <= self.options.attempts_max {
            let plan = rebalance::plan(&leaders, &voters);
            let mut replan = false;
            for step in &plan.moves {
                let client = &clients[&step.group];
                match client.transfer_leader(Some(&step.to)).await {
                    Ok(new) => {
                        // Another peer than the planned one took over: plan from there.
                        replan = new != step.to;
                        leaders.insert(step.group, new);
                    }
                    Err(e @ CliError::Unknown(_)) => return Err(e),
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(self.backoff(failures)).await;
                        if let Ok(leader) = client.get_leader().await {
                            leaders.insert(step.group, leader);
                        }
                        replan = true;
                    }
                }
                if replan {
                    break;
                }
            }
            if replan {
                continue;
            }
            return match plan.stuck {
                None => Ok(leaders),
                Some(busiest) => Err(CliError::Refused {
                    code: Code::FailedPrecondition,
                    kind: "Unbalanceable".into(),
                    message: format!("no voter of {busiest}'s groups can take a leader"),
                    leader: None,
                }),
            };
        }
        Err(CliError::Unreachable(format!(
            "leaders still unbalanced after {failures} failed transfers"
        )))
    }
}
