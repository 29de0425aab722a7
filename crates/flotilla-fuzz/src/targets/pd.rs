//! Targets on what flotilla-pd decodes: `pd-command` (a meta group log entry, applied by
//! every replica of the placement driver) and `pd-state` (the meta group's snapshot file
//! `pd.state`, from disk or a peer).
//!
//! Owns: seeds from the crate's own encoders. Must never: touch the real file system.

use std::collections::BTreeSet;

use bytes::Bytes;
use flotilla_node::StoreId;
use flotilla_pd::{
    ConfigSource, Operator, OperatorKind, Outcome, PdCommand, PdState, RegionRecord, Step,
    StoreMark, StoreRecord,
};

use crate::Target;

fn region() -> RegionRecord {
    RegionRecord {
        id: 7,
        start: Bytes::from_static(b"a"),
        end: Bytes::from_static(b"m"),
        conf_version: 3,
        version: 2,
        voters: [StoreId(1), StoreId(2), StoreId(3)].into(),
        learners: [StoreId(4)].into(),
    }
}

fn operator() -> Operator {
    Operator::planned(
        &region(),
        OperatorKind::ReplaceDownPeer,
        vec![
            Step::AddLearner(StoreId(5)),
            Step::PromoteLearner(StoreId(5)),
            Step::TransferLeader(StoreId(5)),
            Step::RemoveVoter(StoreId(3)),
            Step::RemoveLearner(StoreId(4)),
        ],
    )
}

fn commands() -> Vec<PdCommand> {
    vec![
        PdCommand::PutStore(StoreRecord {
            id: StoreId(9),
            address: "10.0.0.9:7000".into(),
            labels: [
                ("zone".to_string(), "a".to_string()),
                ("rack".to_string(), "r1".to_string()),
            ]
            .into(),
            state: StoreMark::Serving,
        }),
        PdCommand::SetStoreMark {
            store: StoreId(9),
            mark: StoreMark::Offline,
        },
        PdCommand::PutRegion(region()),
        PdCommand::PutRegion(RegionRecord {
            id: 0,
            start: Bytes::new(),
            end: Bytes::new(),
            conf_version: 1,
            version: 1,
            voters: [StoreId(1)].into(),
            learners: BTreeSet::new(),
        }),
        PdCommand::RemoveRegion(7),
        PdCommand::AllocIds { count: 10 },
        PdCommand::SetConfig {
            key: "max-store-down-time".into(),
            value: "10m".into(),
            source: ConfigSource::Set,
        },
        PdCommand::StartOperator(operator()),
        PdCommand::AdvanceOperator { id: 1, step: 2 },
        PdCommand::FinishOperator {
            id: 1,
            outcome: Outcome::TimedOut("add-learner 0000000000000005".into()),
        },
        PdCommand::FinishOperator {
            id: 2,
            outcome: Outcome::Cancelled("epoch moved".into()),
        },
    ]
}

/// A state with something of everything, built by applying the seed commands.
fn state() -> PdState {
    let mut state = PdState::default();
    for command in commands() {
        state.apply(&command);
    }
    state.apply(&PdCommand::StartOperator(operator()));
    state
}

/// Decodes a command as the state machine does on apply, checks the round trip, and
/// applies it to a populated state (apply must never panic either).
fn run_command(bytes: &[u8]) -> bool {
    let Ok(command) = PdCommand::decode(bytes) else {
        return false;
    };
    let again = PdCommand::decode(&command.encode())
        .unwrap_or_else(|e| panic!("an accepted command, re-encoded, is refused: {e}"));
    assert_eq!(again, command, "command changed in a round trip");
    let mut state = state();
    let output = state.apply(&command);
    let _ = flotilla_pd::PdOutput::decode(&output.encode())
        .unwrap_or_else(|e| panic!("an apply output does not decode: {e}"));
    true
}

/// `pd-command`: a placement-driver command from a meta group log entry.
pub(crate) fn pd_command() -> Target {
    Target {
        name: "pd-command",
        about: "meta group entry data -> PdCommand::decode (round trip checked, then applied)",
        seeds: || commands().iter().map(|c| c.encode().to_vec()).collect(),
        run: run_command,
        fixup: None,
    }
}

fn run_state(bytes: &[u8]) -> bool {
    let Ok(state) = PdState::decode(bytes) else {
        return false;
    };
    let again = PdState::decode(&state.encode())
        .unwrap_or_else(|e| panic!("an accepted state, re-encoded, is refused: {e}"));
    assert_eq!(again, state, "state changed in a round trip");
    true
}

/// `pd-state`: the meta group's snapshot file.
pub(crate) fn pd_state() -> Target {
    Target {
        name: "pd-state",
        about: "snapshot file pd.state -> PdState::decode (round trip checked)",
        seeds: || {
            vec![
                PdState::default().encode().to_vec(),
                state().encode().to_vec(),
            ]
        },
        run: run_state,
        fixup: None,
    }
}
