//! Opening the shared log: scan every segment in order, verify every byte, rebuild the
//! index, cut a torn tail off the last segment.
//!
//! Owns: the recovery rules. A record that fails to verify is cut only if it is the tail of
//! the last segment and has the shape of an interrupted append
//! ([`super::format::classify_bad_tail`]); anything else stops the open with
//! [`StorageError::Corrupt`] naming the file and offset. Must never: drop a record that
//! verifies, or anything after a bad record, except in that one case.

use std::path::{Path, PathBuf};

use super::format::{
    self, check_segment_header, classify_bad_tail, decode_batch, decode_checkpoint,
    parse_record_header, BadTail, ReplayOp, KIND_BATCH, KIND_CHECKPOINT, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::index::{Location, LogIndexState, Shape};
use crate::codec::checksum;
use crate::error::StorageError;
use crate::fs::FileSystem;

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments_scanned: usize,
    /// Batch records replayed.
    pub records_replayed: u64,
    /// Bytes cut off the end of the last segment (a torn write).
    pub torn_bytes_cut: u64,
    /// The file a torn tail was cut from, if any.
    pub torn_path: Option<PathBuf>,
    /// Trailing segments removed because they held no batch record (a segment created just
    /// before a crash, or one opened by a previous run that wrote nothing).
    pub empty_segments_removed: usize,
}

/// The result of scanning the log directory.
pub struct Recovered {
    /// The rebuilt index.
    pub index: LogIndexState,
    /// Sequences of the segments kept, ascending and contiguous.
    pub sequences: Vec<u64>,
    /// What was done.
    pub report: RecoveryReport,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Scans `dir` (which exists) and rebuilds the index.
pub fn recover(fs: &dyn FileSystem, dir: &Path) -> Result<Recovered, StorageError> {
    let names = fs.list(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut sequences: Vec<u64> = names
        .iter()
        .filter_map(|n| format::parse_segment_name(n))
        .collect();
    sequences.sort_unstable();
    for pair in sequences.windows(2) {
        if pair[1] != pair[0] + 1 {
            // Segments are only ever removed oldest first, each removal made durable
            // before the next: a hole means a file was lost.
            let missing = dir.join(format::segment_name(pair[0] + 1));
            return Err(corrupt(
                &missing,
                0,
                "segment missing from the middle of the log",
            ));
        }
    }
    let mut index = LogIndexState::default();
    let mut report = RecoveryReport::default();
    let mut kept = Vec::new();
    let count = sequences.len();
    for (i, &sequence) in sequences.iter().enumerate() {
        let path = dir.join(format::segment_name(sequence));
        let is_last = i + 1 == count;
        let bytes = fs
            .read_all(&path)
            .map_err(|e| StorageError::io("read", &path, e))?;
        report.segments_scanned += 1;
        let scan = scan_segment(
            &path,
            sequence,
            &bytes,
            is_last,
            kept.is_empty(),
            &mut index,
        )?;
        report.records_replayed += scan.batches;
        if let Some(cut) = scan.cut_at {
            report.torn_bytes_cut = bytes.len() as u64 - cut;
            report.torn_path = Some(path.clone());
        }
        if is_last && scan.batches == 0 {
            // Nothing in it but (at most) a checkpoint equal to the state replayed so far.
            fs.remove_file(&path)
                .map_err(|e| StorageError::io("remove", &path, e))?;
            fs.sync_dir(dir)
                .map_err(|e| StorageError::io("fsync dir", dir, e))?;
            report.empty_segments_removed += 1;
            continue;
        }
        if let Some(cut) = scan.cut_at {
            fs.truncate(&path, cut)
                .map_err(|e| StorageError::io("truncate", &path, e))?;
            fs.sync_file(&path)
                .map_err(|e| StorageError::io("fsync", &path, e))?;
        }
        kept.push(sequence);
    }
    if let Some((group, at)) = index.first_reclaimed_entry() {
        let first = kept
            .first()
            .map_or_else(|| dir.to_path_buf(), |s| dir.join(format::segment_name(*s)));
        return Err(corrupt(
            &first,
            0,
            format!(
                "group {group} entry {at} lies before this segment (its checkpoint says so), \
                 and its segment is gone"
            ),
        ));
    }
    Ok(Recovered {
        index,
        sequences: kept,
        report,
    })
}

struct Scan {
    batches: u64,
    /// Offset to cut the file at (a torn tail).
    cut_at: Option<u64>,
}

/// Replays one segment into `index`. `first_kept` says this is the oldest segment kept, whose
/// checkpoint starts the replay (later checkpoints must agree with the replayed state).
fn scan_segment(
    path: &Path,
    sequence: u64,
    bytes: &[u8],
    is_last: bool,
    first_kept: bool,
    index: &mut LogIndexState,
) -> Result<Scan, StorageError> {
    let header_torn = bytes.len() < SEGMENT_HEADER_BYTES || bytes.iter().all(|&b| b == 0);
    if header_torn && is_last {
        // Created just before a crash: the name survived, the header did not.
        return Ok(Scan {
            batches: 0,
            cut_at: Some(0),
        });
    }
    check_segment_header(bytes, sequence).map_err(|why| corrupt(path, 0, why))?;
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut batches = 0;
    let mut seen_checkpoint = false;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let Some((kind, body)) = verified_record(rest) else {
            if is_last && classify_bad_tail(rest) == BadTail::Torn {
                return Ok(Scan {
                    batches,
                    cut_at: Some(offset as u64),
                });
            }
            return Err(corrupt(path, offset as u64, "record fails its checksum"));
        };
        let body_offset = (offset + RECORD_HEADER_BYTES) as u64;
        match (kind, seen_checkpoint) {
            (KIND_CHECKPOINT, false) => {
                let checkpoint = decode_checkpoint(body)
                    .map_err(|e| corrupt(path, offset as u64, format!("checkpoint: {e}")))?;
                if first_kept {
                    index.start_from(&checkpoint);
                } else if checkpoint != index.checkpoint() {
                    return Err(corrupt(
                        path,
                        offset as u64,
                        "checkpoint disagrees with the log replayed before it",
                    ));
                }
                seen_checkpoint = true;
            }
            (KIND_BATCH, true) => {
                replay_batch(sequence, body_offset, body, index)
                    .map_err(|why| corrupt(path, offset as u64, why))?;
                batches += 1;
            }
            _ => {
                return Err(corrupt(
                    path,
                    offset as u64,
                    format!(
                        "record kind {kind} out of place (a segment opens with one checkpoint)"
                    ),
                ))
            }
        }
        offset += RECORD_HEADER_BYTES + body.len();
    }
    if !seen_checkpoint && !is_last {
        return Err(corrupt(
            path,
            SEGMENT_HEADER_BYTES as u64,
            "segment has no checkpoint",
        ));
    }
    Ok(Scan {
        batches,
        cut_at: None,
    })
}

/// The kind and body of the record at the start of `rest`, if it verifies completely.
fn verified_record(rest: &[u8]) -> Option<(u8, &[u8])> {
    let header: &[u8; RECORD_HEADER_BYTES] = rest.get(..RECORD_HEADER_BYTES)?.try_into().ok()?;
    let h = parse_record_header(header)?;
    let body = rest.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES.checked_add(h.body_len)?)?;
    (checksum(body) == h.body_crc).then_some((h.kind, body))
}

fn replay_batch(
    sequence: u64,
    body_offset: u64,
    body: &[u8],
    index: &mut LogIndexState,
) -> Result<(), String> {
    let ops = decode_batch(body).map_err(|e| format!("batch: {e}"))?;
    let mut locations = Vec::new();
    for (group, op) in ops {
        locations.clear();
        let shape = match op {
            ReplayOp::Append(spans) => {
                let Some(first) = spans.first() else {
                    continue;
                };
                let first = first.index;
                for span in &spans {
                    locations.push(Location {
                        segment: sequence,
                        offset: body_offset + span.at as u64,
                        len: u32::try_from(span.len).map_err(|_| "entry too long".to_string())?,
                        term: span.term,
                    });
                }
                Shape::Append {
                    first,
                    count: spans.len() as u64,
                }
            }
            ReplayOp::TruncatePrefix(i, t) => Shape::TruncatePrefix(i, t),
            ReplayOp::TruncateSuffix(i) => Shape::TruncateSuffix(i),
            ReplayOp::Reset(i, t) => Shape::Reset(i, t),
        };
        index
            .apply(group, shape, &locations)
            .map_err(|why| format!("group {group}: {why}"))?;
    }
    Ok(())
}
