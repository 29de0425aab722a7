//! [`PdStateMachine`]: the meta group's state machine over the node runtime, and
//! [`PdHandle`], the read side the PD leader's planner and the admin service share.
//!
//! Owns: decoding each committed entry, applying it to the shared [`PdState`] and
//! answering its proposer, and the snapshot file `pd.state`. Must never: change the state
//! on an entry it cannot decode or on a snapshot it cannot read whole, or hold its lock
//! while doing I/O.

use std::sync::{Arc, PoisonError, RwLock};

use flotilla_node::{ApplyIter, LogIndex, SnapshotReader, SnapshotWriter, StateMachine};

use crate::command::PdCommand;
use crate::limits::STATE_FILE_BYTES_MAX;
use crate::state::PdState;

/// The snapshot's one file.
pub const SNAPSHOT_STATE_FILE: &str = "pd.state";
/// Bytes read per snapshot chunk.
const SNAPSHOT_READ_BYTES: u32 = 1 << 20;

#[derive(Debug, Default)]
struct Shared {
    state: PdState,
    applied: LogIndex,
}

/// The meta group's state machine.
#[derive(Debug, Default)]
pub struct PdStateMachine {
    shared: Arc<RwLock<Shared>>,
}

/// A cheap, cloneable view of the state machine's state.
#[derive(Clone, Debug)]
pub struct PdHandle {
    shared: Arc<RwLock<Shared>>,
}

impl PdHandle {
    /// A copy of the whole state.
    #[must_use]
    pub fn state(&self) -> PdState {
        self.with(Clone::clone)
    }

    /// Runs `f` over the state under the read lock (keep `f` short: apply waits).
    pub fn with<R>(&self, f: impl FnOnce(&PdState) -> R) -> R {
        let shared = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        f(&shared.state)
    }

    /// The index of the last entry applied (or of the snapshot loaded).
    #[must_use]
    pub fn applied_index(&self) -> LogIndex {
        self.shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .applied
    }
}

impl PdStateMachine {
    /// A state machine over the empty state.
    #[must_use]
    pub fn new() -> PdStateMachine {
        PdStateMachine::default()
    }

    /// The read side.
    #[must_use]
    pub fn handle(&self) -> PdHandle {
        PdHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl StateMachine for PdStateMachine {
    fn on_apply(&mut self, iter: &mut ApplyIter) {
        for task in iter.by_ref() {
            let result = match PdCommand::decode(&task.data) {
                Ok(command) => {
                    let mut shared = self.shared.write().unwrap_or_else(PoisonError::into_inner);
                    let output = shared.state.apply(&command);
                    shared.applied = task.index;
                    Ok(output.encode())
                }
                Err(error) => {
                    tracing::warn!(index = %task.index, %error, "meta group entry not applied");
                    let mut shared = self.shared.write().unwrap_or_else(PoisonError::into_inner);
                    shared.applied = task.index;
                    Err(error.to_string())
                }
            };
            if let Some(completion) = task.completion {
                completion.complete(result);
            }
        }
    }

    fn on_snapshot_save(&mut self, writer: &mut SnapshotWriter) -> Result<(), String> {
        // Encode under the read lock, write after releasing it.
        let bytes = self.handle().with(PdState::encode);
        writer
            .append(SNAPSHOT_STATE_FILE, &bytes)
            .map_err(|e| format!("writing snapshot file {SNAPSHOT_STATE_FILE}: {e}"))
    }

    fn on_snapshot_load(&mut self, reader: &SnapshotReader) -> Result<(), String> {
        let data = read_whole(reader)?;
        let state = PdState::decode(&data)
            .map_err(|e| format!("snapshot at {}: {e}", reader.meta().index))?;
        let mut shared = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        shared.state = state;
        shared.applied = reader.meta().index;
        tracing::info!(index = %reader.meta().index, "meta group snapshot loaded");
        Ok(())
    }
}

/// The whole `pd.state` file, refusing one larger than `STATE_FILE_BYTES_MAX`.
fn read_whole(reader: &SnapshotReader) -> Result<Vec<u8>, String> {
    let entry = reader
        .manifest()
        .file(SNAPSHOT_STATE_FILE)
        .ok_or_else(|| format!("snapshot has no file {SNAPSHOT_STATE_FILE}"))?;
    if entry.size > STATE_FILE_BYTES_MAX {
        return Err(format!(
            "snapshot file {SNAPSHOT_STATE_FILE} of {} bytes exceeds its limit of {STATE_FILE_BYTES_MAX} bytes",
            entry.size
        ));
    }
    let mut data = Vec::new();
    while (data.len() as u64) < entry.size {
        let chunk = reader
            .read_chunk(SNAPSHOT_STATE_FILE, data.len() as u64, SNAPSHOT_READ_BYTES)
            .map_err(|e| format!("reading snapshot file {SNAPSHOT_STATE_FILE}: {e}"))?;
        if chunk.is_empty() {
            return Err(format!(
                "snapshot file {SNAPSHOT_STATE_FILE} ended at {} of {} bytes",
                data.len(),
                entry.size
            ));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use flotilla_node::StoreId;
    use flotilla_raft::{Configuration, PeerId, SnapshotMeta, Term};
    use flotilla_storage::SnapshotStore;

    use super::*;
    use crate::command::{PdCommand, PdOutput};
    use crate::model::{StoreMark, StoreRecord};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(2),
            configuration: Configuration::new([PeerId::new("a:1")]),
        }
    }

    fn populated() -> PdStateMachine {
        let machine = PdStateMachine::new();
        machine
            .shared
            .write()
            .unwrap()
            .state
            .apply(&PdCommand::PutStore(StoreRecord {
                id: StoreId(5),
                address: "s5:7000".into(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                state: StoreMark::Serving,
            }));
        let output = machine
            .shared
            .write()
            .unwrap()
            .state
            .apply(&PdCommand::AllocIds { count: 4 });
        assert_eq!(
            output,
            PdOutput::Ids {
                first: 1_000_000,
                count: 4
            }
        );
        machine
    }

    #[test]
    fn a_saved_snapshot_loads_into_another_machine() {
        let store = SnapshotStore::in_memory().unwrap();
        let mut source = populated();
        let mut writer = store.create_writer(meta(12)).unwrap();
        source.on_snapshot_save(&mut writer).unwrap();
        let reader = writer.finish().unwrap();
        let mut target = PdStateMachine::new();
        let handle = target.handle();
        target.on_snapshot_load(&reader).unwrap();
        assert_eq!(handle.state(), source.handle().state());
        assert_eq!(handle.applied_index(), LogIndex(12));
        assert_eq!(handle.with(|s| s.next_id), 1_000_004);
    }

    #[test]
    fn a_corrupt_or_missing_snapshot_file_changes_nothing() {
        let store = SnapshotStore::in_memory().unwrap();
        let mut writer = store.create_writer(meta(3)).unwrap();
        writer.append(SNAPSHOT_STATE_FILE, &[1, 2, 3]).unwrap();
        let corrupt = writer.finish().unwrap();
        let mut machine = populated();
        let before = machine.handle().state();
        let error = machine.on_snapshot_load(&corrupt).unwrap_err();
        assert!(error.contains("pd state"), "{error}");
        assert_eq!(machine.handle().state(), before);

        let mut writer = store.create_writer(meta(4)).unwrap();
        writer.append("other", b"x").unwrap();
        let missing = writer.finish().unwrap();
        let error = machine.on_snapshot_load(&missing).unwrap_err();
        assert!(error.contains(SNAPSHOT_STATE_FILE), "{error}");
        assert_eq!(machine.handle().state(), before);
    }
}
