//! [`PdCommand`], the meta group's log entries, and [`PdOutput`], their results, in a
//! versioned, bounded binary format; also the record encodings the snapshot shares.
//!
//! Owns: the wire format (a format version, a tag, then fields; every length and count
//! bounded by `limits`). Must never: panic or allocate unbounded on any input, or accept
//! an unknown tag, a short input or trailing bytes.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use flotilla_node::StoreId;
use flotilla_storage::fields::{FieldReader, FieldWriter};

use crate::error::PdError;
use crate::limits::{
    ADDRESS_BYTES_MAX, CONFIG_BYTES_MAX, KEY_BYTES_MAX, LABELS_MAX, LABEL_BYTES_MAX, PEERS_MAX,
    REASON_BYTES_MAX, STEPS_MAX,
};
use crate::model::{ConfigSource, RegionRecord, StoreMark, StoreRecord};
use crate::operator::{Operator, OperatorKind, Outcome, Step};

/// The format version every command and output starts with.
const FORMAT_VERSION: u8 = 1;

/// One entry of the meta group's log.
#[derive(Clone, Debug, PartialEq)]
pub enum PdCommand {
    /// Registers a store (as serving, whatever mark the record carries) or updates its
    /// address and labels (its mark is kept).
    PutStore(StoreRecord),
    /// Changes a store's durable mark.
    SetStoreMark {
        /// The store.
        store: StoreId,
        /// Its new mark.
        mark: StoreMark,
    },
    /// Records a region as a region leader reported it.
    PutRegion(RegionRecord),
    /// Forgets a region (merged away).
    RemoveRegion(u64),
    /// Allocates `count` fresh ids (1..=`ALLOC_IDS_MAX`).
    AllocIds {
        /// How many.
        count: u32,
    },
    /// Sets one configuration key.
    SetConfig {
        /// The kebab-case key.
        key: String,
        /// Its value, as `PdConfig::set` accepts it.
        value: String,
        /// Who set it.
        source: ConfigSource,
    },
    /// Records an operator before its first step (its id is assigned on apply).
    StartOperator(Operator),
    /// Records that an operator finished steps `0..step`.
    AdvanceOperator {
        /// The operator's id.
        id: u64,
        /// Steps done.
        step: usize,
    },
    /// Records how an operator ended.
    FinishOperator {
        /// The operator's id.
        id: u64,
        /// How it ended.
        outcome: Outcome,
    },
}

const TAG_PUT_STORE: u8 = 1;
const TAG_SET_STORE_MARK: u8 = 2;
const TAG_PUT_REGION: u8 = 3;
const TAG_REMOVE_REGION: u8 = 4;
const TAG_ALLOC_IDS: u8 = 5;
const TAG_SET_CONFIG: u8 = 6;
const TAG_START_OPERATOR: u8 = 7;
const TAG_ADVANCE_OPERATOR: u8 = 8;
const TAG_FINISH_OPERATOR: u8 = 9;

impl PdCommand {
    /// Checks every field against its limit in `limits`, naming the first one that
    /// exceeds it. Call it on a command built from anything a peer or a person sent
    /// (an address from a store's hello, a region from a heartbeat) before [`encode`].
    ///
    /// [`encode`]: PdCommand::encode
    pub fn validate(&self) -> Result<(), PdError> {
        let over = |what: &str, len: usize, limit: usize| -> Result<(), PdError> {
            if len > limit {
                return Err(PdError::Corrupt(format!(
                    "pd command: {what} of {len} exceeds its limit of {limit}"
                )));
            }
            Ok(())
        };
        match self {
            PdCommand::PutStore(store) => {
                over(
                    "store address bytes",
                    store.address.len(),
                    ADDRESS_BYTES_MAX,
                )?;
                over("store labels", store.labels.len(), LABELS_MAX)?;
                for (key, value) in &store.labels {
                    over("label key bytes", key.len(), LABEL_BYTES_MAX)?;
                    over("label value bytes", value.len(), LABEL_BYTES_MAX)?;
                }
            }
            PdCommand::PutRegion(region) => {
                over("region start bytes", region.start.len(), KEY_BYTES_MAX)?;
                over("region end bytes", region.end.len(), KEY_BYTES_MAX)?;
                let peers = region.voters.len() + region.learners.len();
                over("region peers", peers, PEERS_MAX)?;
            }
            PdCommand::SetConfig { key, value, .. } => {
                over("config key bytes", key.len(), CONFIG_BYTES_MAX)?;
                over("config value bytes", value.len(), CONFIG_BYTES_MAX)?;
            }
            PdCommand::StartOperator(operator) => {
                over("operator steps", operator.steps.len(), STEPS_MAX)?;
                over("operator step done", operator.step, operator.steps.len())?;
            }
            PdCommand::AdvanceOperator { step, .. } => over("operator step", *step, STEPS_MAX)?,
            PdCommand::FinishOperator { outcome, .. } => match outcome {
                Outcome::Done => {}
                Outcome::Cancelled(why) | Outcome::TimedOut(why) => {
                    over("reason bytes", why.len(), REASON_BYTES_MAX)?;
                }
            },
            PdCommand::SetStoreMark { .. }
            | PdCommand::RemoveRegion(_)
            | PdCommand::AllocIds { .. } => {}
        }
        Ok(())
    }

    /// The command's bytes, as proposed to the meta group.
    ///
    /// # Panics
    /// If a field exceeds its limit in `limits`: [`PdCommand::validate`] refuses such a
    /// command, and a decoded command is always within them.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut w = FieldWriter::with_capacity(64);
        w.u8(FORMAT_VERSION);
        match self {
            PdCommand::PutStore(store) => {
                w.u8(TAG_PUT_STORE);
                write_store(&mut w, store);
            }
            PdCommand::SetStoreMark { store, mark } => {
                w.u8(TAG_SET_STORE_MARK);
                w.u64(store.0);
                w.u8(mark.code());
            }
            PdCommand::PutRegion(region) => {
                w.u8(TAG_PUT_REGION);
                write_region(&mut w, region);
            }
            PdCommand::RemoveRegion(id) => {
                w.u8(TAG_REMOVE_REGION);
                w.u64(*id);
            }
            PdCommand::AllocIds { count } => {
                w.u8(TAG_ALLOC_IDS);
                w.u32(*count);
            }
            PdCommand::SetConfig { key, value, source } => {
                w.u8(TAG_SET_CONFIG);
                write_bounded(&mut w, key.as_bytes(), CONFIG_BYTES_MAX, "config key");
                write_bounded(&mut w, value.as_bytes(), CONFIG_BYTES_MAX, "config value");
                w.u8(source.code());
            }
            PdCommand::StartOperator(operator) => {
                w.u8(TAG_START_OPERATOR);
                write_operator(&mut w, operator);
            }
            PdCommand::AdvanceOperator { id, step } => {
                w.u8(TAG_ADVANCE_OPERATOR);
                w.u64(*id);
                w.u64(*step as u64);
            }
            PdCommand::FinishOperator { id, outcome } => {
                w.u8(TAG_FINISH_OPERATOR);
                w.u64(*id);
                write_outcome(&mut w, outcome);
            }
        }
        w.finish()
    }

    /// Decodes a command from a log entry, refusing anything malformed with an error that
    /// names the field.
    pub fn decode(data: &[u8]) -> Result<PdCommand, PdError> {
        let mut r = FieldReader::new(data, "pd command");
        read_version(&mut r)?;
        let command = match r.u8("tag")? {
            TAG_PUT_STORE => PdCommand::PutStore(read_store(&mut r)?),
            TAG_SET_STORE_MARK => PdCommand::SetStoreMark {
                store: read_store_id(&mut r, "store")?,
                mark: read_mark(&mut r)?,
            },
            TAG_PUT_REGION => PdCommand::PutRegion(read_region(&mut r)?),
            TAG_REMOVE_REGION => PdCommand::RemoveRegion(r.u64("region id")?),
            TAG_ALLOC_IDS => PdCommand::AllocIds {
                count: r.u32("id count")?,
            },
            TAG_SET_CONFIG => PdCommand::SetConfig {
                key: r.string("config key", CONFIG_BYTES_MAX)?,
                value: r.string("config value", CONFIG_BYTES_MAX)?,
                source: read_source(&mut r)?,
            },
            TAG_START_OPERATOR => PdCommand::StartOperator(read_operator(&mut r)?),
            TAG_ADVANCE_OPERATOR => PdCommand::AdvanceOperator {
                id: r.u64("operator id")?,
                step: read_step_index(&mut r)?,
            },
            TAG_FINISH_OPERATOR => PdCommand::FinishOperator {
                id: r.u64("operator id")?,
                outcome: read_outcome(&mut r)?,
            },
            tag => return Err(r.error(format_args!("unknown tag {tag}")).into()),
        };
        r.finish()?;
        Ok(command)
    }
}

/// The result of applying one command, handed back to the proposer as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PdOutput {
    /// Applied (or already applied: idempotent commands).
    Done,
    /// Ids handed out: `first..first + count` (also an operator's assigned id, count 1).
    Ids {
        /// The first id.
        first: u64,
        /// How many.
        count: u32,
    },
    /// Refused, changing nothing: why.
    Refused(String),
}

const OUTPUT_DONE: u8 = 1;
const OUTPUT_IDS: u8 = 2;
const OUTPUT_REFUSED: u8 = 3;

impl PdOutput {
    /// The output's bytes. A refusal longer than `REASON_BYTES_MAX` is cut (at a
    /// character boundary) so that it always decodes.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut w = FieldWriter::with_capacity(64);
        w.u8(FORMAT_VERSION);
        match self {
            PdOutput::Done => w.u8(OUTPUT_DONE),
            PdOutput::Ids { first, count } => {
                w.u8(OUTPUT_IDS);
                w.u64(*first);
                w.u32(*count);
            }
            PdOutput::Refused(why) => {
                w.u8(OUTPUT_REFUSED);
                w.bytes(truncate(why, REASON_BYTES_MAX).as_bytes());
            }
        }
        w.finish()
    }

    /// Decodes an output, refusing anything malformed.
    pub fn decode(data: &[u8]) -> Result<PdOutput, PdError> {
        let mut r = FieldReader::new(data, "pd output");
        read_version(&mut r)?;
        let output = match r.u8("tag")? {
            OUTPUT_DONE => PdOutput::Done,
            OUTPUT_IDS => PdOutput::Ids {
                first: r.u64("first id")?,
                count: r.u32("id count")?,
            },
            OUTPUT_REFUSED => PdOutput::Refused(r.string("refusal", REASON_BYTES_MAX)?),
            tag => return Err(r.error(format_args!("unknown tag {tag}")).into()),
        };
        r.finish()?;
        Ok(output)
    }
}

/// `text` cut to at most `limit` bytes at a character boundary.
pub(crate) fn truncate(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn write_bounded(w: &mut FieldWriter, data: &[u8], limit: usize, what: &str) {
    assert!(
        data.len() <= limit,
        "{what} of {} bytes exceeds its limit of {limit} bytes",
        data.len()
    );
    w.bytes(data);
}

fn read_version(r: &mut FieldReader<'_>) -> Result<(), PdError> {
    match r.u8("format version")? {
        FORMAT_VERSION => Ok(()),
        version => Err(r
            .error(format_args!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            ))
            .into()),
    }
}

pub(crate) fn read_store_id(r: &mut FieldReader<'_>, field: &str) -> Result<StoreId, PdError> {
    match r.u64(field)? {
        0 => Err(r.error(format_args!("{field} is 0, not a store id")).into()),
        id => Ok(StoreId(id)),
    }
}

fn read_mark(r: &mut FieldReader<'_>) -> Result<StoreMark, PdError> {
    let code = r.u8("store mark")?;
    StoreMark::from_code(code)
        .ok_or_else(|| r.error(format_args!("unknown store mark {code}")).into())
}

pub(crate) fn read_source(r: &mut FieldReader<'_>) -> Result<ConfigSource, PdError> {
    let code = r.u8("config source")?;
    ConfigSource::from_code(code)
        .ok_or_else(|| r.error(format_args!("unknown config source {code}")).into())
}

fn read_step_index(r: &mut FieldReader<'_>) -> Result<usize, PdError> {
    let step = r.u64("operator step")?;
    match usize::try_from(step) {
        Ok(step) if step <= STEPS_MAX => Ok(step),
        _ => Err(r
            .error(format_args!(
                "operator step {step} exceeds the step limit {STEPS_MAX}"
            ))
            .into()),
    }
}

pub(crate) fn write_store(w: &mut FieldWriter, store: &StoreRecord) {
    w.u64(store.id.0);
    write_bounded(
        w,
        store.address.as_bytes(),
        ADDRESS_BYTES_MAX,
        "store address",
    );
    assert!(
        store.labels.len() <= LABELS_MAX,
        "store {} has {} labels",
        store.id,
        store.labels.len()
    );
    w.count(store.labels.len());
    for (key, value) in &store.labels {
        write_bounded(w, key.as_bytes(), LABEL_BYTES_MAX, "label key");
        write_bounded(w, value.as_bytes(), LABEL_BYTES_MAX, "label value");
    }
    w.u8(store.state.code());
}

pub(crate) fn read_store(r: &mut FieldReader<'_>) -> Result<StoreRecord, PdError> {
    let id = read_store_id(r, "store id")?;
    let address = r.string("store address", ADDRESS_BYTES_MAX)?;
    let count = r.count("labels", LABELS_MAX, 8)?;
    let mut labels = BTreeMap::new();
    for _ in 0..count {
        let key = r.string("label key", LABEL_BYTES_MAX)?;
        let value = r.string("label value", LABEL_BYTES_MAX)?;
        if labels.insert(key.clone(), value).is_some() {
            return Err(r
                .error(format_args!("store {id}: label {key:?} twice"))
                .into());
        }
    }
    let state = read_mark(r)?;
    Ok(StoreRecord {
        id,
        address,
        labels,
        state,
    })
}

pub(crate) fn write_region(w: &mut FieldWriter, region: &RegionRecord) {
    w.u64(region.id);
    write_bounded(w, &region.start, KEY_BYTES_MAX, "region start");
    write_bounded(w, &region.end, KEY_BYTES_MAX, "region end");
    w.u64(region.conf_version);
    w.u64(region.version);
    for set in [&region.voters, &region.learners] {
        assert!(
            set.len() <= PEERS_MAX,
            "region {} has {} peers of a kind",
            region.id,
            set.len()
        );
        w.count(set.len());
        for store in set {
            w.u64(store.0);
        }
    }
}

fn read_peers(r: &mut FieldReader<'_>, field: &str) -> Result<BTreeSet<StoreId>, PdError> {
    let count = r.count(field, PEERS_MAX, 8)?;
    let mut peers = BTreeSet::new();
    for _ in 0..count {
        let store = read_store_id(r, field)?;
        if !peers.insert(store) {
            return Err(r.error(format_args!("{field}: store {store} twice")).into());
        }
    }
    Ok(peers)
}

pub(crate) fn read_region(r: &mut FieldReader<'_>) -> Result<RegionRecord, PdError> {
    let id = r.u64("region id")?;
    let start = r.bytes("region start", KEY_BYTES_MAX)?;
    let end = r.bytes("region end", KEY_BYTES_MAX)?;
    let conf_version = r.u64("conf version")?;
    let version = r.u64("version")?;
    let voters = read_peers(r, "voters")?;
    let learners = read_peers(r, "learners")?;
    if voters.len() + learners.len() > PEERS_MAX {
        return Err(r
            .error(format_args!(
                "region {id} has {} peers, the limit is {PEERS_MAX}",
                voters.len() + learners.len()
            ))
            .into());
    }
    if let Some(both) = voters.intersection(&learners).next() {
        return Err(r
            .error(format_args!(
                "region {id}: store {both} is both voter and learner"
            ))
            .into());
    }
    if !end.is_empty() && end <= start {
        return Err(r
            .error(format_args!("region {id}: end key not after start key"))
            .into());
    }
    if id == 0 && !(start.is_empty() && end.is_empty()) {
        return Err(r.error("region 0 (the meta group) has a key range").into());
    }
    Ok(RegionRecord {
        id,
        start,
        end,
        conf_version,
        version,
        voters,
        learners,
    })
}

pub(crate) fn write_operator(w: &mut FieldWriter, operator: &Operator) {
    w.u64(operator.id);
    w.u64(operator.region);
    w.u8(operator.kind.code());
    w.u64(operator.planned_on.0);
    w.u64(operator.planned_on.1);
    assert!(
        operator.steps.len() <= STEPS_MAX,
        "operator has {} steps",
        operator.steps.len()
    );
    assert!(
        operator.step <= operator.steps.len(),
        "operator step past its steps"
    );
    w.count(operator.steps.len());
    for step in &operator.steps {
        w.u8(step.code());
        w.u64(step.argument());
    }
    w.u64(operator.step as u64);
}

pub(crate) fn read_operator(r: &mut FieldReader<'_>) -> Result<Operator, PdError> {
    let id = r.u64("operator id")?;
    let region = r.u64("operator region")?;
    let code = r.u8("operator kind")?;
    let kind = OperatorKind::from_code(code)
        .ok_or_else(|| r.error(format_args!("unknown operator kind {code}")))?;
    let planned_on = (r.u64("planned conf version")?, r.u64("planned version")?);
    let count = r.count("steps", STEPS_MAX, 9)?;
    let mut steps = Vec::with_capacity(count);
    for _ in 0..count {
        let code = r.u8("step kind")?;
        let store = read_store_id(r, "step store")?;
        steps.push(
            Step::from_code(code, store)
                .ok_or_else(|| r.error(format_args!("unknown step kind {code}")))?,
        );
    }
    let step = read_step_index(r)?;
    if step > steps.len() {
        return Err(r
            .error(format_args!(
                "operator {id}: step {step} is past its {} steps",
                steps.len()
            ))
            .into());
    }
    Ok(Operator {
        id,
        region,
        kind,
        planned_on,
        steps,
        step,
    })
}

pub(crate) fn write_outcome(w: &mut FieldWriter, outcome: &Outcome) {
    match outcome {
        Outcome::Done => w.u8(0),
        Outcome::Cancelled(why) => {
            w.u8(1);
            write_bounded(w, why.as_bytes(), REASON_BYTES_MAX, "cancel reason");
        }
        Outcome::TimedOut(why) => {
            w.u8(2);
            write_bounded(w, why.as_bytes(), REASON_BYTES_MAX, "timeout reason");
        }
    }
}

pub(crate) fn read_outcome(r: &mut FieldReader<'_>) -> Result<Outcome, PdError> {
    match r.u8("outcome")? {
        0 => Ok(Outcome::Done),
        1 => Ok(Outcome::Cancelled(
            r.string("cancel reason", REASON_BYTES_MAX)?,
        )),
        2 => Ok(Outcome::TimedOut(
            r.string("timeout reason", REASON_BYTES_MAX)?,
        )),
        code => Err(r.error(format_args!("unknown outcome {code}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_commands() -> Vec<PdCommand> {
        let region = RegionRecord {
            id: 7,
            start: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"m"),
            conf_version: 3,
            version: 2,
            voters: [StoreId(1), StoreId(2), StoreId(3)].into(),
            learners: [StoreId(4)].into(),
        };
        vec![
            PdCommand::PutStore(StoreRecord {
                id: StoreId(9),
                address: "10.0.0.9:7000".into(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                state: StoreMark::Serving,
            }),
            PdCommand::SetStoreMark {
                store: StoreId(9),
                mark: StoreMark::Offline,
            },
            PdCommand::PutRegion(region.clone()),
            PdCommand::RemoveRegion(7),
            PdCommand::AllocIds { count: 10 },
            PdCommand::SetConfig {
                key: "max-replicas".into(),
                value: "5".into(),
                source: ConfigSource::Set,
            },
            PdCommand::StartOperator(Operator::planned(
                &region,
                OperatorKind::ReplaceDownPeer,
                vec![
                    Step::AddLearner(StoreId(5)),
                    Step::PromoteLearner(StoreId(5)),
                    Step::RemoveVoter(StoreId(3)),
                ],
            )),
            PdCommand::StartOperator(Operator::planned(
                &region,
                OperatorKind::SplitRegion,
                vec![Step::Split(StoreId(2))],
            )),
            PdCommand::SetConfig {
                key: "region-split-bytes".into(),
                value: "64KiB".into(),
                source: ConfigSource::Set,
            },
            PdCommand::AdvanceOperator { id: 4, step: 2 },
            PdCommand::FinishOperator {
                id: 4,
                outcome: Outcome::Cancelled("epoch moved".into()),
            },
        ]
    }

    #[test]
    fn every_command_round_trips_and_every_cut_is_refused() {
        for command in sample_commands() {
            let bytes = command.encode();
            assert_eq!(PdCommand::decode(&bytes).unwrap(), command);
            for len in 0..bytes.len() {
                assert!(
                    PdCommand::decode(&bytes[..len]).is_err(),
                    "{command:?} cut at {len}"
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            let error = PdCommand::decode(&longer).unwrap_err().to_string();
            assert!(error.contains("trailing"), "{error}");
        }
    }

    #[test]
    fn unknown_tags_versions_and_oversized_fields_are_named() {
        let error = PdCommand::decode(&[FORMAT_VERSION, 99])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown tag 99"), "{error}");
        let error = PdCommand::decode(&[2, TAG_ALLOC_IDS])
            .unwrap_err()
            .to_string();
        assert!(error.contains("format version 2"), "{error}");
        let mut w = FieldWriter::with_capacity(64);
        w.u8(FORMAT_VERSION);
        w.u8(TAG_PUT_STORE);
        w.u64(1);
        w.bytes(&[b'x'; ADDRESS_BYTES_MAX + 1]);
        let error = PdCommand::decode(&w.finish()).unwrap_err().to_string();
        assert!(error.contains("store address of 257 bytes"), "{error}");
    }

    #[test]
    fn validate_names_the_field_over_its_limit() {
        for command in sample_commands() {
            assert_eq!(command.validate(), Ok(()), "{command:?}");
        }
        let long = PdCommand::PutStore(StoreRecord {
            id: StoreId(1),
            address: "x".repeat(ADDRESS_BYTES_MAX + 1),
            labels: BTreeMap::new(),
            state: StoreMark::Serving,
        });
        let error = long.validate().unwrap_err().to_string();
        assert!(error.contains("store address bytes of 257"), "{error}");
        let finish = PdCommand::FinishOperator {
            id: 1,
            outcome: Outcome::Cancelled("y".repeat(REASON_BYTES_MAX + 1)),
        };
        assert!(finish.validate().is_err());
    }

    #[test]
    fn outputs_round_trip_and_long_refusals_are_cut() {
        for output in [
            PdOutput::Done,
            PdOutput::Ids {
                first: 1_000_000,
                count: 5,
            },
            PdOutput::Refused("stale epoch".into()),
        ] {
            assert_eq!(PdOutput::decode(&output.encode()).unwrap(), output);
        }
        let long = PdOutput::Refused("é".repeat(REASON_BYTES_MAX));
        let PdOutput::Refused(cut) = PdOutput::decode(&long.encode()).unwrap() else {
            panic!("a refusal decodes as a refusal");
        };
        assert!(cut.len() <= REASON_BYTES_MAX && cut.starts_with('é'));
        assert!(PdOutput::decode(&[FORMAT_VERSION, OUTPUT_DONE, 0]).is_err());
    }
}
