//! Operators: what the planners decide and the executor carries out, step by step.
//!
//! Owns: [`Operator`], its [`Step`]s, its [`OperatorKind`] and how it ended
//! ([`Outcome`]). Must never: order a replacement other than add learner, promote it,
//! then remove the old voter (add before remove).

use flotilla_node::StoreId;

use crate::model::RegionRecord;

/// Why an operator exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperatorKind {
    /// A voter on a down (or tombstone) store is replaced.
    ReplaceDownPeer,
    /// A voter on an offline (decommissioning) store is replaced.
    ReplaceOfflinePeer,
    /// The region has fewer voters than `max-replicas`.
    AddReplica,
    /// The region has more voters than `max-replicas`.
    RemoveExtraReplica,
    /// A learner left behind by a cancelled operator is removed.
    RemoveStrayLearner,
    /// A replica moves from a loaded store to a lighter one.
    BalanceReplica,
    /// Leadership moves from a store leading many regions to one leading few.
    BalanceLeader,
    /// A region grown past `region-split-bytes` or `region-split-keys` is split in two.
    SplitRegion,
    /// A region written faster than `region-split-load` is split where its writes divide.
    SplitHotRegion,
    /// A region small enough (`region-merge-bytes`, `region-merge-keys`) merges into a small
    /// neighbour, after its replicas were moved onto the neighbour's stores.
    MergeRegion,
    /// A voter whose replica stopped on its store (its KV engine failed under it, or a
    /// merge's commit it could not apply) is replaced: it still votes, so the region has
    /// quorum, but it serves nothing and never catches up.
    ReplaceFailedPeer,
}

impl OperatorKind {
    /// Every kind, in code order.
    pub const ALL: [OperatorKind; 11] = [
        OperatorKind::ReplaceDownPeer,
        OperatorKind::ReplaceOfflinePeer,
        OperatorKind::AddReplica,
        OperatorKind::RemoveExtraReplica,
        OperatorKind::RemoveStrayLearner,
        OperatorKind::BalanceReplica,
        OperatorKind::BalanceLeader,
        OperatorKind::SplitRegion,
        OperatorKind::SplitHotRegion,
        OperatorKind::MergeRegion,
        OperatorKind::ReplaceFailedPeer,
    ];

    /// The kebab-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorKind::ReplaceDownPeer => "replace-down-peer",
            OperatorKind::ReplaceOfflinePeer => "replace-offline-peer",
            OperatorKind::AddReplica => "add-replica",
            OperatorKind::RemoveExtraReplica => "remove-extra-replica",
            OperatorKind::RemoveStrayLearner => "remove-stray-learner",
            OperatorKind::BalanceReplica => "balance-replica",
            OperatorKind::BalanceLeader => "balance-leader",
            OperatorKind::SplitRegion => "split-region",
            OperatorKind::SplitHotRegion => "split-hot-region",
            OperatorKind::MergeRegion => "merge-region",
            OperatorKind::ReplaceFailedPeer => "replace-failed-peer",
        }
    }

    /// The kind called `name` (its [`OperatorKind::as_str`]).
    #[must_use]
    pub fn parse(name: &str) -> Option<OperatorKind> {
        OperatorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            OperatorKind::ReplaceDownPeer => 0,
            OperatorKind::ReplaceOfflinePeer => 1,
            OperatorKind::AddReplica => 2,
            OperatorKind::RemoveExtraReplica => 3,
            OperatorKind::RemoveStrayLearner => 4,
            OperatorKind::BalanceReplica => 5,
            OperatorKind::BalanceLeader => 6,
            OperatorKind::SplitRegion => 7,
            OperatorKind::SplitHotRegion => 8,
            OperatorKind::MergeRegion => 9,
            OperatorKind::ReplaceFailedPeer => 10,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<OperatorKind> {
        OperatorKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Whether the operator changes membership (counted against
    /// `replica-schedule-limit`) rather than moving leadership or splitting.
    #[must_use]
    pub fn changes_replicas(self) -> bool {
        !matches!(
            self,
            OperatorKind::BalanceLeader | OperatorKind::SplitRegion | OperatorKind::SplitHotRegion
        )
    }

    /// Whether the operator only moves leadership (counted against
    /// `leader-schedule-limit`).
    #[must_use]
    pub fn moves_leadership_only(self) -> bool {
        self == OperatorKind::BalanceLeader
    }
}

impl std::fmt::Display for OperatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One idempotent step of an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Add a learner on the store (it catches up from the leader, by snapshot if need be).
    AddLearner(StoreId),
    /// Promote the store's caught-up learner to voter.
    PromoteLearner(StoreId),
    /// Remove the store's voter.
    RemoveVoter(StoreId),
    /// Remove the store's learner.
    RemoveLearner(StoreId),
    /// Move leadership to the store's voter.
    TransferLeader(StoreId),
    /// Split the region at its middle key by size, through its leader (the store it led
    /// on when planned; the executor asks whichever store leads it by then). Done once the
    /// region's version moved past the one the operator was planned on.
    Split(StoreId),
    /// Split the region at the key that divides the writes its leader proposed lately
    /// (load-based split); done as [`Step::Split`] is.
    SplitByLoad(StoreId),
    /// Freeze the region as the source of a merge into region `target` (its PrepareMerge,
    /// through its leader). Done once the region is frozen for that target.
    PrepareMerge {
        /// The region it merges into.
        target: u64,
    },
    /// Extend region `target` over the frozen region (its CommitMerge, through the target's
    /// leader), once every replica of the region applied the prepare. Done once the target
    /// covers the region's range.
    CommitMerge {
        /// The region it merges into.
        target: u64,
    },
}

impl Step {
    /// The store the step acts on (`None` for a merge step: it acts on two regions
    /// through their leaders).
    #[must_use]
    pub fn store(self) -> Option<StoreId> {
        match self {
            Step::AddLearner(s)
            | Step::PromoteLearner(s)
            | Step::RemoveVoter(s)
            | Step::RemoveLearner(s)
            | Step::TransferLeader(s)
            | Step::Split(s)
            | Step::SplitByLoad(s) => Some(s),
            Step::PrepareMerge { .. } | Step::CommitMerge { .. } => None,
        }
    }

    /// The step's argument as recorded: its store's id, or a merge step's target region.
    #[must_use]
    pub fn argument(self) -> u64 {
        match self {
            Step::PrepareMerge { target } | Step::CommitMerge { target } => target,
            other => other.store().map_or(0, |s| s.0),
        }
    }

    /// The kebab-case name of the action.
    #[must_use]
    pub fn action(self) -> &'static str {
        match self {
            Step::AddLearner(_) => "add-learner",
            Step::PromoteLearner(_) => "promote-learner",
            Step::RemoveVoter(_) => "remove-voter",
            Step::RemoveLearner(_) => "remove-learner",
            Step::TransferLeader(_) => "transfer-leader",
            Step::Split(_) => "split",
            Step::SplitByLoad(_) => "split-by-load",
            Step::PrepareMerge { .. } => "prepare-merge",
            Step::CommitMerge { .. } => "commit-merge",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Step::AddLearner(_) => 0,
            Step::PromoteLearner(_) => 1,
            Step::RemoveVoter(_) => 2,
            Step::RemoveLearner(_) => 3,
            Step::TransferLeader(_) => 4,
            Step::Split(_) => 5,
            Step::SplitByLoad(_) => 6,
            Step::PrepareMerge { .. } => 7,
            Step::CommitMerge { .. } => 8,
        }
    }

    pub(crate) fn from_code(code: u8, store: StoreId) -> Option<Step> {
        Some(match code {
            0 => Step::AddLearner(store),
            1 => Step::PromoteLearner(store),
            2 => Step::RemoveVoter(store),
            3 => Step::RemoveLearner(store),
            4 => Step::TransferLeader(store),
            5 => Step::Split(store),
            6 => Step::SplitByLoad(store),
            7 => Step::PrepareMerge { target: store.0 },
            8 => Step::CommitMerge { target: store.0 },
            _ => return None,
        })
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self, self.store()) {
            (_, Some(store)) => write!(f, "{} {store}", self.action()),
            (Step::PrepareMerge { target } | Step::CommitMerge { target }, None) => {
                write!(f, "{} into region {target}", self.action())
            }
            (_, None) => write!(f, "{} {}", self.action(), self.argument()),
        }
    }
}

/// A planned change to one region, recorded in the meta group before its first step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// Assigned by the meta group when it is started (0 while only planned).
    pub id: u64,
    /// The region it changes.
    pub region: u64,
    /// Why.
    pub kind: OperatorKind,
    /// The region's `(conf_version, version)` it was planned on: the executor cancels it
    /// if the region's epoch moved otherwise.
    pub planned_on: (u64, u64),
    /// The steps, in order (at most `STEPS_MAX`).
    pub steps: Vec<Step>,
    /// Steps already done (`0..=steps.len()`).
    pub step: usize,
}

impl Operator {
    /// A planned operator on `region` (id 0, no step done).
    #[must_use]
    pub fn planned(region: &RegionRecord, kind: OperatorKind, steps: Vec<Step>) -> Operator {
        Operator {
            id: 0,
            region: region.id,
            kind,
            planned_on: region.epoch(),
            steps,
            step: 0,
        }
    }

    /// The next step to carry out, if any.
    #[must_use]
    pub fn current_step(&self) -> Option<Step> {
        self.steps.get(self.step).copied()
    }
}

impl std::fmt::Display for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "operator {} region {} {}:",
            self.id, self.region, self.kind
        )?;
        for (i, step) in self.steps.iter().enumerate() {
            let separator = if i == 0 { " " } else { ", " };
            write!(f, "{separator}{step}")?;
        }
        write!(f, " (step {}/{})", self.step, self.steps.len())
    }
}

/// How an operator ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step finished.
    Done,
    /// Cancelled (a safety check failed, the epoch moved, people intervened): why.
    Cancelled(String),
    /// A step did not finish within `operator-step-timeout`: which.
    TimedOut(String),
}

/// An operator that ended, kept for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedOperator {
    /// The operator as it stood when it ended.
    pub operator: Operator,
    /// How it ended.
    pub outcome: Outcome,
}
