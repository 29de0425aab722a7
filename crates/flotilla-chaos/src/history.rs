//! What the clients did and saw: one record per operation, with its invocation and
//! completion times (microseconds since the run started, on the harness's monotonic clock)
//! and its outcome. Histories are written as JSON lines next to the server logs, so a
//! failing run can be re-checked (`flotilla-chaos check DIR`) and minimised by hand.
//!
//! Owns: the record types and their conversion to the simulator's checker model. Must
//! never: guess an outcome — an operation whose effect the client cannot know is
//! [`Outcome::Unknown`], never "failed".

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use flotilla_linearizability::{OpKind, OpOutcome, Operation};
use serde::{Deserialize, Serialize};

/// Key ids at and above this are the recovery probes' keys (one per region), not the
/// workload's.
pub const PROBE_KEY_BASE: u64 = 1 << 62;

/// What a register operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterOp {
    /// A read in the named mode (`index`, `lease`, `follower`).
    Read {
        /// The read mode.
        mode: String,
    },
    /// An unconditional write of a value unique to this key.
    Write {
        /// The value.
        value: u64,
    },
    /// Compare-and-set: `new` if the register holds `expected` (`None`: absent).
    Cas {
        /// The value the register must hold.
        expected: Option<u64>,
        /// The value stored if it does.
        new: u64,
    },
}

/// What the client learned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A read answered this value (`None`: absent).
    Read(Option<u64>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-set was answered: swapped or not.
    Cas(bool),
    /// Certainly did not take effect.
    Failed,
    /// May or may not have taken effect (timeout, connection lost after sending).
    Unknown,
}

/// One register operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterEvent {
    /// The client task.
    pub client: u64,
    /// The register (see [`PROBE_KEY_BASE`]).
    pub key: u64,
    /// What was asked.
    pub op: RegisterOp,
    /// Invocation, µs since the run started.
    pub invoke_us: u64,
    /// Completion, µs since the run started.
    pub complete_us: u64,
    /// What the client learned.
    pub outcome: Outcome,
    /// A read made after every fault healed and the workload stopped (the lost-write check
    /// looks at these).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_read: bool,
    /// The error, when the operation failed or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RegisterEvent {
    /// The simulator checker's view of this operation.
    pub fn to_operation(&self) -> Operation {
        let kind = match &self.op {
            RegisterOp::Read { .. } => OpKind::Read,
            RegisterOp::Write { value } => OpKind::Write(*value),
            RegisterOp::Cas { expected, new } => OpKind::Cas {
                expected: *expected,
                new: *new,
            },
        };
        let outcome = match &self.outcome {
            Outcome::Read(value) => OpOutcome::ReadOk(*value),
            Outcome::Written => OpOutcome::WriteOk,
            Outcome::Cas(swapped) => OpOutcome::CasOk(*swapped),
            Outcome::Failed => OpOutcome::Failed,
            Outcome::Unknown => OpOutcome::Indeterminate,
        };
        Operation {
            client: self.client,
            key: self.key,
            kind,
            invoke: self.invoke_us,
            complete: self.complete_us,
            outcome,
        }
    }
}

/// One add of the set workload (a put of a key unique to the element).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAdd {
    /// The client task.
    pub client: u64,
    /// The element (unique).
    pub element: u64,
    /// Invocation, µs since the run started.
    pub invoke_us: u64,
    /// Completion, µs since the run started.
    pub complete_us: u64,
    /// `Written`, `Failed` or `Unknown`.
    pub outcome: Outcome,
    /// The error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The final read of the whole set on one store, after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRead {
    /// The store read (its address).
    pub store: String,
    /// The elements it holds, ascending; `None` when it never answered.
    pub elements: Option<Vec<u64>>,
    /// Why it never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The region read (`None`: the whole set, as runs before the PD read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<u64>,
    /// The first key of the range read, in hex (`None`: from the first key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The end of the range read (exclusive), in hex (`None` or empty: to the last key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

impl SetRead {
    /// Whether `key` lies in the range this read covered.
    pub fn covers(&self, key: &[u8]) -> bool {
        let start = self
            .start
            .as_deref()
            .and_then(key_from_hex)
            .unwrap_or_default();
        let end = self
            .end
            .as_deref()
            .and_then(key_from_hex)
            .unwrap_or_default();
        key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
    }

    /// The store, with the region when the read was of one region.
    pub fn label(&self) -> String {
        match self.region {
            Some(region) => format!("{} (region {region})", self.store),
            None => self.store.clone(),
        }
    }
}

/// A key in lowercase hex.
pub fn key_hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key from [`key_hex`]'s text; `None` when it is not hex.
pub fn key_from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes `items` to `path`, one JSON object per line.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads a JSON-lines file written by [`write_jsonl`]; a missing file reads as empty.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut items = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: not a history record",
                path.display(),
                number + 1
            )
        })?;
        items.push(item);
    }
    Ok(items)
}
