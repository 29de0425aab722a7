//! Binary encoding of what storage writes: log entries, configurations, snapshot metadata
//! and raft meta. Little-endian, length-prefixed, versioned by the record that holds it.
//!
//! Owns: the byte layout, and validation of bytes read back. Decoding never panics and never
//! allocates more than the input could hold: every length is checked against what remains.
//! Must never: be trusted without the checksum of the record around it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes};
use flotilla_raft::{
    Configuration, Entry, EntryPayload, LogIndex, PeerId, Priority, SnapshotMeta, Term,
};

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cursor over bytes being decoded.
pub struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Starts at the beginning of `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, at: 0 }
    }

    /// Bytes not read yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.data.len() - self.at
    }

    /// Reads `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError(format!(
                "needs {n} bytes at {}, only {} left",
                self.at,
                self.remaining()
            )));
        }
        let out = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    /// Reads a byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads a length-prefixed (u32) byte string.
    pub fn blob(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.blob()?;
        std::str::from_utf8(b).map_err(|_| DecodeError("string is not UTF-8".into()))
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes", self.remaining())))
        }
    }
}

/// Appends a length-prefixed byte string.
pub fn put_blob(out: &mut Vec<u8>, data: &[u8]) {
    out.put_u32_le(u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.put_slice(data);
}

fn put_peers(out: &mut Vec<u8>, peers: &BTreeSet<PeerId>) {
    out.put_u32_le(peers.len() as u32);
    for p in peers {
        put_blob(out, p.as_str().as_bytes());
    }
}

fn get_peers(r: &mut Reader<'_>) -> Result<BTreeSet<PeerId>, DecodeError> {
    let n = r.u32()? as usize;
    // Each peer takes at least 4 bytes: a bogus count cannot make us allocate much.
    if n > r.remaining() / 4 {
        return Err(DecodeError(format!("peer count {n} exceeds the record")));
    }
    let mut set = BTreeSet::new();
    for _ in 0..n {
        set.insert(PeerId::new(r.string()?));
    }
    Ok(set)
}

/// Encodes a configuration.
pub fn put_configuration(out: &mut Vec<u8>, c: &Configuration) {
    put_peers(out, &c.voters);
    put_peers(out, &c.learners);
    match &c.old_voters {
        Some(old) => {
            out.put_u8(1);
            put_peers(out, old);
        }
        None => out.put_u8(0),
    }
    out.put_u32_le(c.priorities.len() as u32);
    for (p, prio) in &c.priorities {
        put_blob(out, p.as_str().as_bytes());
        out.put_i32_le(prio.0);
    }
}

/// Decodes a configuration.
pub fn get_configuration(r: &mut Reader<'_>) -> Result<Configuration, DecodeError> {
    let voters = get_peers(r)?;
    let learners = get_peers(r)?;
    let old_voters = match r.u8()? {
        0 => None,
        1 => Some(get_peers(r)?),
        other => return Err(DecodeError(format!("bad joint flag {other}"))),
    };
    let n = r.u32()? as usize;
    if n > r.remaining() / 8 {
        return Err(DecodeError(format!(
            "priority count {n} exceeds the record"
        )));
    }
    let mut priorities = BTreeMap::new();
    for _ in 0..n {
        let peer = PeerId::new(r.string()?);
        let prio = r.u32()? as i32;
        priorities.insert(peer, Priority(prio));
    }
    Ok(Configuration {
        voters,
        learners,
        old_voters,
        priorities,
    })
}

const PAYLOAD_NOOP: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_CONFIGURATION: u8 = 2;

/// Encodes an entry: index, term, payload kind and payload.
pub fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    out.put_u64_le(e.index.get());
    out.put_u64_le(e.term.get());
    match &e.payload {
        EntryPayload::NoOp => out.put_u8(PAYLOAD_NOOP),
        EntryPayload::Normal(data) => {
            out.put_u8(PAYLOAD_NORMAL);
            put_blob(out, data);
        }
        EntryPayload::Configuration(c) => {
            out.put_u8(PAYLOAD_CONFIGURATION);
            put_configuration(out, c);
        }
    }
}

/// Decodes an entry.
pub fn get_entry(r: &mut Reader<'_>) -> Result<Entry, DecodeError> {
    let index = LogIndex(r.u64()?);
    let term = Term(r.u64()?);
    let payload = match r.u8()? {
        PAYLOAD_NOOP => EntryPayload::NoOp,
        PAYLOAD_NORMAL => EntryPayload::Normal(Bytes::copy_from_slice(r.blob()?)),
        PAYLOAD_CONFIGURATION => EntryPayload::Configuration(get_configuration(r)?),
        other => return Err(DecodeError(format!("unknown payload kind {other}"))),
    };
    Ok(Entry {
        index,
        term,
        payload,
    })
}

/// Encodes snapshot metadata.
pub fn put_snapshot_meta(out: &mut Vec<u8>, m: &SnapshotMeta) {
    out.put_u64_le(m.index.get());
    out.put_u64_le(m.term.get());
    put_configuration(out, &m.configuration);
}

/// Decodes snapshot metadata.
pub fn get_snapshot_meta(r: &mut Reader<'_>) -> Result<SnapshotMeta, DecodeError> {
    Ok(SnapshotMeta {
        index: LogIndex(r.u64()?),
        term: Term(r.u64()?),
        configuration: get_configuration(r)?,
    })
}

/// Bytes before a framed body: magic (4), version (1), body length (4).
pub const FRAME_HEADER_BYTES: usize = 9;
/// Bytes after a framed body: the CRC32C of everything before it.
pub const FRAME_CHECKSUM_BYTES: usize = 4;

/// Frames `body` as a small self-checking file: magic, version, body length, body, and a
/// CRC32C of all of that (the meta files and snapshot manifests use it).
#[must_use]
pub fn frame(magic: &[u8; 4], version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len() + FRAME_CHECKSUM_BYTES);
    out.put_slice(magic);
    out.put_u8(version);
    out.put_u32_le(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(body);
    let crc = checksum(&out);
    out.put_u32_le(crc);
    out
}

/// Checks a [`frame`]d file read from `path` — size bound, checksum, magic, version, body
/// length — and returns its body (which starts at offset [`FRAME_HEADER_BYTES`]). Errors
/// name `path` and the offset of what was wrong.
pub fn unframe<'a>(
    path: &std::path::Path,
    bytes: &'a [u8],
    magic: &[u8; 4],
    version: u8,
    bytes_max: usize,
) -> Result<&'a [u8], crate::StorageError> {
    let corrupt = |offset: usize, reason: String| crate::StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() > bytes_max {
        return Err(corrupt(0, format!("{} bytes is too large", bytes.len())));
    }
    if bytes.len() < FRAME_HEADER_BYTES + FRAME_CHECKSUM_BYTES {
        return Err(corrupt(0, format!("{} bytes is too short", bytes.len())));
    }
    let crc_at = bytes.len() - FRAME_CHECKSUM_BYTES;
    let stored = Reader::new(&bytes[crc_at..])
        .u32()
        .map_err(|e| corrupt(crc_at, e.0))?;
    let computed = checksum(&bytes[..crc_at]);
    if stored != computed {
        return Err(corrupt(
            crc_at,
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let mut r = Reader::new(&bytes[..crc_at]);
    if r.bytes(4).map_err(|e| corrupt(0, e.0))? != magic {
        return Err(corrupt(0, "bad magic".into()));
    }
    let found = r.u8().map_err(|e| corrupt(4, e.0))?;
    if found != version {
        return Err(corrupt(4, format!("unknown version {found}")));
    }
    let body_len = r.u32().map_err(|e| corrupt(5, e.0))? as usize;
    if body_len != r.remaining() {
        return Err(corrupt(
            5,
            format!("body length {body_len}, {} bytes present", r.remaining()),
        ));
    }
    r.bytes(body_len)
        .map_err(|e| corrupt(FRAME_HEADER_BYTES, e.0))
}

/// CRC32C (Castagnoli) of `data`, as every record and file on disk carries.
#[must_use]
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_configuration() -> Configuration {
        let mut c = Configuration::new(["a", "b"].map(PeerId::new));
        c.learners.insert(PeerId::new("l"));
        c.old_voters = Some(["a", "c"].map(PeerId::new).into_iter().collect());
        c.priorities.insert(PeerId::new("a"), Priority(5));
        c
    }

    #[test]
    fn entries_round_trip() {
        let entries = [
            Entry {
                index: LogIndex(1),
                term: Term(1),
                payload: EntryPayload::NoOp,
            },
            Entry {
                index: LogIndex(2),
                term: Term(1),
                payload: EntryPayload::Normal(Bytes::from_static(b"hello")),
            },
            Entry {
                index: LogIndex(3),
                term: Term(2),
                payload: EntryPayload::Configuration(sample_configuration()),
            },
        ];
        for e in &entries {
            let mut buf = Vec::new();
            put_entry(&mut buf, e);
            let mut r = Reader::new(&buf);
            assert_eq!(&get_entry(&mut r).unwrap(), e);
            r.finish().unwrap();
        }
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        put_entry(
            &mut buf,
            &Entry {
                index: LogIndex(3),
                term: Term(2),
                payload: EntryPayload::Configuration(sample_configuration()),
            },
        );
        for cut in 0..buf.len() {
            assert!(
                get_entry(&mut Reader::new(&buf[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        // A huge claimed count must not allocate: it is refused.
        let mut bogus = vec![0u8; 17];
        bogus[16] = PAYLOAD_CONFIGURATION;
        bogus.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(get_entry(&mut Reader::new(&bogus)).is_err());
    }
}
