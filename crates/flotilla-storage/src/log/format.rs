//! The shared log's byte layout: segment file names and headers, record framing, the
//! operations a batch record carries and the checkpoint that opens every segment.
//!
//! Owns: encoding, and validation of every byte read back (checksums first, then lengths,
//! then contents), including the rule that tells a torn tail from corruption
//! ([`classify_bad_tail`]). Must never: trust a length before the checksum covering it has
//! verified, or allocate more than the bytes actually present.
//!
//! ```text
//! segment  := header record*
//! header   := magic "FLTLOG01" (8) · sequence u64 · crc32c(magic·sequence) u32      = 20 bytes
//! record   := magic 0xF7 · kind u8 · reserved u16 (0) · body_len u32
//!             · crc32c(body) u32 · crc32c(first 12 header bytes) u32 · body          = 16 + body
//! kind 1 (batch)      body := op_count u32 · op*
//! kind 2 (checkpoint) body := group_count u32 · (group u64 · prefix_index u64
//!                             · prefix_term u64 · last_index u64)*
//! op := 1 append          group u64 · count u32 · (len u32 · entry(len) · crc32c(entry) u32)*
//!     | 2 truncate-prefix group u64 · index u64 · term u64
//!     | 3 truncate-suffix group u64 · from u64
//!     | 4 reset           group u64 · index u64 · term u64
//! ```
//! Integers are little-endian; `entry` is [`crate::codec::put_entry`]. Each entry carries
//! its own CRC32C so that a read of one entry (one positioned read of `len + 4` bytes) is
//! verified without reading the whole record.

use bytes::BufMut;
use flotilla_raft::{Entry, LogIndex, Term};

use crate::codec::{self, checksum, DecodeError, Reader};
use crate::traits::GroupId;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLTLOG01";
/// Size of a segment header.
pub const SEGMENT_HEADER_BYTES: usize = 20;
/// First byte of every record.
pub const RECORD_MAGIC: u8 = 0xF7;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Record kind: a write batch.
pub const KIND_BATCH: u8 = 1;
/// Record kind: the state of every group when the segment was created.
pub const KIND_CHECKPOINT: u8 = 2;
/// Bytes after each entry's encoding: its CRC32C.
pub const ENTRY_CRC_BYTES: usize = 4;

const OP_APPEND: u8 = 1;
const OP_TRUNCATE_PREFIX: u8 = 2;
const OP_TRUNCATE_SUFFIX: u8 = 3;
const OP_RESET: u8 = 4;

/// File name of segment `sequence` (zero-padded so names sort by sequence).
#[must_use]
pub fn segment_name(sequence: u64) -> String {
    format!("{sequence:020}.log")
}

/// The sequence of a segment file name, or `None` for other files.
#[must_use]
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes the header of segment `sequence`.
#[must_use]
pub fn segment_header(sequence: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    out.put_slice(&SEGMENT_MAGIC);
    out.put_u64_le(sequence);
    let crc = checksum(&out);
    out.put_u32_le(crc);
    debug_assert_eq!(out.len(), SEGMENT_HEADER_BYTES);
    out
}

/// Checks a segment header read from disk against the sequence its file name claims.
pub fn check_segment_header(bytes: &[u8], sequence: u64) -> Result<(), String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!("segment header is {} bytes", bytes.len()));
    }
    let stored = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if checksum(&bytes[..16]) != stored {
        return Err("segment header checksum mismatch".into());
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("not a flotilla log segment (bad magic)".into());
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let found = u64::from_le_bytes(seq);
    if found != sequence {
        return Err(format!(
            "header says segment {found}, file name says {sequence}"
        ));
    }
    Ok(())
}

/// Frames `body` as a record of `kind`.
#[must_use]
pub fn frame_record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
    out.put_u8(RECORD_MAGIC);
    out.put_u8(kind);
    out.put_u16_le(0);
    out.put_u32_le(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_u32_le(checksum(body));
    let header_crc = checksum(&out);
    out.put_u32_le(header_crc);
    out.put_slice(body);
    out
}

/// A record header whose own checksum verified (so its length can be trusted).
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// [`KIND_BATCH`] or [`KIND_CHECKPOINT`].
    pub kind: u8,
    /// Length of the body.
    pub body_len: usize,
    /// CRC32C of the body.
    pub body_crc: u32,
}

/// Decodes a record header; `None` if its checksum, magic or reserved bytes are wrong.
#[must_use]
pub fn parse_record_header(bytes: &[u8; RECORD_HEADER_BYTES]) -> Option<RecordHeader> {
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if checksum(&bytes[..12]) != u32_at(12) {
        return None;
    }
    if bytes[0] != RECORD_MAGIC || bytes[2] != 0 || bytes[3] != 0 {
        return None;
    }
    if bytes[1] != KIND_BATCH && bytes[1] != KIND_CHECKPOINT {
        return None;
    }
    Some(RecordHeader {
        kind: bytes[1],
        body_len: usize::try_from(u32_at(4)).ok()?,
        body_crc: u32_at(8),
    })
}

/// How the bytes from a record that fails to verify up to the end of the file look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadTail {
    /// The shape an interrupted append leaves: cut it off (only at the end of the last
    /// segment).
    Torn,
    /// Anything else: refuse to open.
    Corrupt,
}

/// The torn-tail rule. `tail` holds every byte from the start of the first record that
/// fails to verify to the end of the file.
///
/// A record is appended in one write and fsynced before it is acknowledged, and nothing is
/// written after a record until its fsync returned; so only the last record of the last
/// segment can be incomplete after a crash, and an incomplete record is a *prefix* of what
/// was written, possibly followed by zeroes where the file system extended the size but
/// had not written the data. Hence the tail is torn only if
/// 1. it is shorter than a record header (the header itself was cut), or
/// 2. its header verifies (its own CRC) and the record it announces extends past the end
///    of the file, or
/// 3. it is all zeroes.
///
/// Anything else — in particular a record whose header verifies, that lies wholly inside
/// the file, and whose body checksum fails — is corruption, even at the very end: such a
/// record may have been fsynced and acknowledged, and a flipped byte in it must not be
/// taken for a torn write. No single flipped byte can produce shapes 1–3 out of a fully
/// written record: it changes no length, it cannot turn a record header (whose first byte
/// is a non-zero magic and whose length is non-zero) into zeroes, and a flip in the header
/// fails the header checksum. The price: a power loss that persisted a record's header and
/// length but scrambled (not zeroed) its body refuses to open, naming file and offset, and
/// an operator decides.
#[must_use]
pub fn classify_bad_tail(tail: &[u8]) -> BadTail {
    if tail.len() < RECORD_HEADER_BYTES || tail.iter().all(|&b| b == 0) {
        return BadTail::Torn;
    }
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header.copy_from_slice(&tail[..RECORD_HEADER_BYTES]);
    match parse_record_header(&header) {
        Some(h) if RECORD_HEADER_BYTES + h.body_len > tail.len() => BadTail::Torn,
        _ => BadTail::Corrupt,
    }
}

/// One operation of a write batch, in the order it applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Appends entries (consecutive), first dropping everything at or after the first.
    Append(Vec<Entry>),
    /// Drops entries at or before `index`; the compaction point becomes `(index, term)`.
    TruncatePrefix(LogIndex, Term),
    /// Drops entries at or after the index.
    TruncateSuffix(LogIndex),
    /// Drops everything; the log continues after `(index, term)`.
    Reset(LogIndex, Term),
}

/// Encodes a batch body. Returns the body and, for each appended entry in order, the
/// offset of its encoding within the body and its length.
#[must_use]
pub fn encode_batch(ops: &[(GroupId, Op)]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut body = Vec::new();
    let mut spans = Vec::new();
    body.put_u32_le(u32::try_from(ops.len()).unwrap_or(u32::MAX));
    let mut entry = Vec::new();
    for (group, op) in ops {
        match op {
            Op::Append(entries) => {
                body.put_u8(OP_APPEND);
                body.put_u64_le(*group);
                body.put_u32_le(u32::try_from(entries.len()).unwrap_or(u32::MAX));
                for e in entries {
                    entry.clear();
                    codec::put_entry(&mut entry, e);
                    body.put_u32_le(u32::try_from(entry.len()).unwrap_or(u32::MAX));
                    spans.push((body.len(), entry.len()));
                    body.put_slice(&entry);
                    body.put_u32_le(checksum(&entry));
                }
            }
            Op::TruncatePrefix(index, term) | Op::Reset(index, term) => {
                let kind = if matches!(op, Op::Reset(..)) {
                    OP_RESET
                } else {
                    OP_TRUNCATE_PREFIX
                };
                body.put_u8(kind);
                body.put_u64_le(*group);
                body.put_u64_le(index.get());
                body.put_u64_le(term.get());
            }
            Op::TruncateSuffix(from) => {
                body.put_u8(OP_TRUNCATE_SUFFIX);
                body.put_u64_le(*group);
                body.put_u64_le(from.get());
            }
        }
    }
    (body, spans)
}

/// An entry as recovery sees it: where its encoding lies in the body, and its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrySpan {
    /// Offset of the entry's encoding within the body.
    pub at: usize,
    /// Length of the encoding (its CRC follows).
    pub len: usize,
    /// Index, as encoded.
    pub index: LogIndex,
    /// Term, as encoded.
    pub term: Term,
}

/// An operation as recovery replays it (entries by location, not decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayOp {
    /// Appended entries.
    Append(Vec<EntrySpan>),
    /// See [`Op::TruncatePrefix`].
    TruncatePrefix(LogIndex, Term),
    /// See [`Op::TruncateSuffix`].
    TruncateSuffix(LogIndex),
    /// See [`Op::Reset`].
    Reset(LogIndex, Term),
}

/// Decodes a batch body (whose record checksum verified) into replayable operations,
/// checking each entry's own checksum and that its index and term decode.
pub fn decode_batch(body: &[u8]) -> Result<Vec<(GroupId, ReplayOp)>, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.u32()? as usize;
    // Each op takes at least 17 bytes: a bogus count cannot make us allocate much.
    if count > r.remaining() / 17 {
        return Err(DecodeError(format!("op count {count} exceeds the record")));
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = r.u8()?;
        let group = r.u64()?;
        let op = match kind {
            OP_APPEND => ReplayOp::Append(decode_entries(&mut r, body.len())?),
            OP_TRUNCATE_PREFIX => ReplayOp::TruncatePrefix(LogIndex(r.u64()?), Term(r.u64()?)),
            OP_TRUNCATE_SUFFIX => ReplayOp::TruncateSuffix(LogIndex(r.u64()?)),
            OP_RESET => ReplayOp::Reset(LogIndex(r.u64()?), Term(r.u64()?)),
            other => return Err(DecodeError(format!("unknown op kind {other}"))),
        };
        ops.push((group, op));
    }
    r.finish()?;
    Ok(ops)
}

fn decode_entries(r: &mut Reader<'_>, body_len: usize) -> Result<Vec<EntrySpan>, DecodeError> {
    let count = r.u32()? as usize;
    if count > r.remaining() / (4 + 17 + ENTRY_CRC_BYTES) {
        return Err(DecodeError(format!(
            "entry count {count} exceeds the record"
        )));
    }
    let mut spans = Vec::with_capacity(count);
    let mut previous: Option<LogIndex> = None;
    for _ in 0..count {
        let len = r.u32()? as usize;
        let at = body_len - r.remaining();
        let bytes = r.bytes(len)?;
        let crc = r.u32()?;
        if checksum(bytes) != crc {
            return Err(DecodeError(format!(
                "entry checksum mismatch at body offset {at}"
            )));
        }
        let mut head = Reader::new(bytes);
        let index = LogIndex(head.u64()?);
        let term = Term(head.u64()?);
        if previous.is_some_and(|p| p.next() != index) {
            return Err(DecodeError(format!(
                "entries not consecutive at index {index}"
            )));
        }
        previous = Some(index);
        spans.push(EntrySpan {
            at,
            len,
            index,
            term,
        });
    }
    Ok(spans)
}

/// Decodes one entry read back from disk (its encoding followed by its CRC32C).
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let Some(split) = bytes.len().checked_sub(ENTRY_CRC_BYTES) else {
        return Err(DecodeError(format!("entry read is {} bytes", bytes.len())));
    };
    let (data, crc) = bytes.split_at(split);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if checksum(data) != stored {
        return Err(DecodeError("entry checksum mismatch".into()));
    }
    let mut r = Reader::new(data);
    let entry = codec::get_entry(&mut r)?;
    r.finish()?;
    Ok(entry)
}

/// One group's state in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCheckpoint {
    /// Compaction point index.
    pub prefix_index: LogIndex,
    /// Compaction point term.
    pub prefix_term: Term,
    /// Last index.
    pub last_index: LogIndex,
}

/// Encodes a checkpoint body.
#[must_use]
pub fn encode_checkpoint(groups: &[(GroupId, GroupCheckpoint)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + groups.len() * 32);
    body.put_u32_le(u32::try_from(groups.len()).unwrap_or(u32::MAX));
    for (group, c) in groups {
        body.put_u64_le(*group);
        body.put_u64_le(c.prefix_index.get());
        body.put_u64_le(c.prefix_term.get());
        body.put_u64_le(c.last_index.get());
    }
    body
}

/// Decodes a checkpoint body.
pub fn decode_checkpoint(body: &[u8]) -> Result<Vec<(GroupId, GroupCheckpoint)>, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.u32()? as usize;
    if count > r.remaining() / 32 {
        return Err(DecodeError(format!(
            "group count {count} exceeds the record"
        )));
    }
    let mut groups = Vec::with_capacity(count);
    for _ in 0..count {
        let group = r.u64()?;
        let c = GroupCheckpoint {
            prefix_index: LogIndex(r.u64()?),
            prefix_term: Term(r.u64()?),
            last_index: LogIndex(r.u64()?),
        };
        if c.last_index < c.prefix_index {
            return Err(DecodeError(format!(
                "group {group}: last index {} before compaction point {}",
                c.last_index, c.prefix_index
            )));
        }
        groups.push((group, c));
    }
    r.finish()?;
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use flotilla_raft::EntryPayload;

    #[test]
    fn batch_round_trip_and_spans_point_at_entries() {
        let entries: Vec<Entry> = (5..8)
            .map(|i| Entry {
                index: LogIndex(i),
                term: Term(2),
                payload: EntryPayload::Normal(Bytes::from(vec![i as u8; 10])),
            })
            .collect();
        let ops = vec![
            (7, Op::Append(entries.clone())),
            (8, Op::TruncatePrefix(LogIndex(3), Term(1))),
            (7, Op::TruncateSuffix(LogIndex(6))),
            (9, Op::Reset(LogIndex(10), Term(4))),
        ];
        let (body, spans) = encode_batch(&ops);
        let decoded = decode_batch(&body).unwrap();
        assert_eq!(decoded.len(), 4);
        let ReplayOp::Append(found) = &decoded[0].1 else {
            panic!("not an append")
        };
        for ((e, span), (at, len)) in entries.iter().zip(found).zip(&spans) {
            assert_eq!((span.at, span.len), (*at, *len));
            let read = decode_entry(&body[*at..*at + *len + ENTRY_CRC_BYTES]).unwrap();
            assert_eq!(&read, e);
        }
        assert_eq!(decoded[3], (9, ReplayOp::Reset(LogIndex(10), Term(4))));
    }

    #[test]
    fn torn_shapes_are_told_from_corruption() {
        let record = frame_record(
            KIND_BATCH,
            &encode_batch(&[(1, Op::TruncateSuffix(LogIndex(3)))]).0,
        );
        for cut in 1..record.len() {
            assert_eq!(
                classify_bad_tail(&record[..cut]),
                BadTail::Torn,
                "cut at {cut}"
            );
        }
        assert_eq!(classify_bad_tail(&[0u8; 100]), BadTail::Torn);
        for at in 0..record.len() {
            let mut flipped = record.clone();
            flipped[at] ^= 0x5a;
            assert_eq!(
                classify_bad_tail(&flipped),
                BadTail::Corrupt,
                "flip at {at}"
            );
        }
    }

    #[test]
    fn segment_names_and_headers() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        check_segment_header(&segment_header(7), 7).unwrap();
        assert!(check_segment_header(&segment_header(7), 8).is_err());
    }
}
