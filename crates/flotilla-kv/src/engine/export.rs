//! The range export format: what [`super::KvEngine::export_range`] writes and
//! [`super::KvEngine::import_range`] reads (the data file of a region snapshot).
//!
//! ```text
//! header:  "FKVX" | version u8 = 1 | start (u32 len + bytes) | end (u32 len + bytes) | crc32c u32
//! record:  0x01 | key len u32 | value len u32 | key | value | crc32c u32 (of the record so far)
//! trailer: 0x02 | record count u64 | crc32c u32 (of the trailer so far)
//! ```
//! Integers are little endian. Keys are strictly increasing and lie in the header's range.
//!
//! Owns: the checks an import relies on — every checksum, the key and value limits
//! (checked before allocating), key order, the range, the record count, no trailing bytes.
//! Must never: hand out a record before its checksum and range are verified.

use std::io::{BufReader, BufWriter, Read, Write};

use bytes::Bytes;

use crate::error::{show, KvError};
use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// First bytes of an export.
pub const EXPORT_MAGIC: [u8; 4] = *b"FKVX";
/// Version of the format.
pub const EXPORT_FORMAT_VERSION: u8 = 1;

const RECORD_PAIR: u8 = 1;
const RECORD_TRAILER: u8 = 2;
const IO_BUFFER_BYTES: usize = 64 * 1024;

fn write_error(e: &std::io::Error) -> KvError {
    KvError::Engine(format!("writing a range export: {e}"))
}

/// Writes an export, one pair at a time.
pub struct ExportWriter<'a> {
    out: BufWriter<&'a mut dyn Write>,
    start: Bytes,
    end: Bytes,
    previous: Option<Bytes>,
    count: u64,
}

impl<'a> ExportWriter<'a> {
    /// Writes the header of an export of `[start, end)`.
    pub fn new(out: &'a mut dyn Write, start: &[u8], end: &[u8]) -> Result<Self, KvError> {
        crate::limits::check_key(start)?;
        crate::limits::check_key(end)?;
        crate::limits::check_range(start, end)?;
        let mut header = Vec::with_capacity(17 + start.len() + end.len());
        header.extend_from_slice(&EXPORT_MAGIC);
        header.push(EXPORT_FORMAT_VERSION);
        put_bytes(&mut header, start);
        put_bytes(&mut header, end);
        let crc = crc32c::crc32c(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, out);
        out.write_all(&header).map_err(|e| write_error(&e))?;
        Ok(ExportWriter {
            out,
            start: Bytes::copy_from_slice(start),
            end: Bytes::copy_from_slice(end),
            previous: None,
            count: 0,
        })
    }

    /// Appends a pair. Keys must come in strictly increasing order inside the range (the
    /// engine's own iteration guarantees it: anything else is a bug and panics); a key or
    /// value over the limits is refused, since no import could read it back.
    pub fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        assert!(
            super::in_range(key, &self.start, &self.end),
            "export of [{}, {}) was handed key {} outside it",
            show(&self.start),
            show(&self.end),
            show(key)
        );
        if let Some(previous) = &self.previous {
            assert!(
                previous.as_ref() < key,
                "export handed key {} after {}: keys must increase",
                show(key),
                show(previous)
            );
        }
        crate::limits::check_key(key)?;
        crate::limits::check_value(value)?;
        let mut record = Vec::with_capacity(13 + key.len() + value.len());
        record.push(RECORD_PAIR);
        // Both fit a u32: checked against the limits above (asserted in `limits`).
        record.extend_from_slice(&(key.len() as u32).to_le_bytes());
        record.extend_from_slice(&(value.len() as u32).to_le_bytes());
        record.extend_from_slice(key);
        record.extend_from_slice(value);
        let crc = crc32c::crc32c(&record);
        record.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&record).map_err(|e| write_error(&e))?;
        self.previous = Some(Bytes::copy_from_slice(key));
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and flushes; returns the number of pairs.
    pub fn finish(mut self) -> Result<u64, KvError> {
        let mut trailer = Vec::with_capacity(13);
        trailer.push(RECORD_TRAILER);
        trailer.extend_from_slice(&self.count.to_le_bytes());
        let crc = crc32c::crc32c(&trailer);
        trailer.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&trailer).map_err(|e| write_error(&e))?;
        self.out.flush().map_err(|e| write_error(&e))?;
        Ok(self.count)
    }
}

fn put_bytes(buf: &mut Vec<u8>, data: &[u8]) {
    // Callers checked `data` against the key limit, which fits a u32.
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(data);
}

/// Reads and verifies an export of exactly `[start, end)`, one pair at a time.
pub struct ExportReader<'a> {
    input: BufReader<&'a mut dyn Read>,
    start: Bytes,
    end: Bytes,
    previous: Option<Bytes>,
    count: u64,
    offset: u64,
    finished: bool,
}

impl<'a> ExportReader<'a> {
    /// Reads and checks the header: magic, version, checksum, and a range equal to
    /// `[start, end)`.
    pub fn new(input: &'a mut dyn Read, start: &[u8], end: &[u8]) -> Result<Self, KvError> {
        let mut reader = ExportReader {
            input: BufReader::with_capacity(IO_BUFFER_BYTES, input),
            start: Bytes::copy_from_slice(start),
            end: Bytes::copy_from_slice(end),
            previous: None,
            count: 0,
            offset: 0,
            finished: false,
        };
        let mut header = Vec::with_capacity(32);
        reader.read_into(&mut header, 5, "header")?;
        if header[..4] != EXPORT_MAGIC {
            return Err(KvError::Corrupt(format!(
                "range export: magic {:?}, expected {:?}",
                show(&header[..4]),
                show(&EXPORT_MAGIC)
            )));
        }
        if header[4] != EXPORT_FORMAT_VERSION {
            return Err(KvError::Corrupt(format!(
                "range export: format version {}, expected {EXPORT_FORMAT_VERSION}",
                header[4]
            )));
        }
        let header_start = reader.read_bytes(&mut header, KEY_BYTES_MAX, "header start key")?;
        let header_end = reader.read_bytes(&mut header, KEY_BYTES_MAX, "header end key")?;
        reader.check_crc(&header, "header")?;
        if header[header_start.clone()] != *start || header[header_end.clone()] != *end {
            return Err(KvError::Corrupt(format!(
                "range export covers [{:?}, {:?}), expected [{:?}, {:?})",
                show(&header[header_start]),
                show(&header[header_end]),
                show(start),
                show(end)
            )));
        }
        Ok(reader)
    }

    /// Pairs read so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The next verified pair, or `None` after a verified trailer at the end of the input.
    pub fn next_pair(&mut self) -> Result<Option<(Bytes, Bytes)>, KvError> {
        if self.finished {
            return Ok(None);
        }
        let record_offset = self.offset;
        let mut record = Vec::with_capacity(64);
        self.read_into(&mut record, 1, "record tag")?;
        match record[0] {
            RECORD_PAIR => {}
            RECORD_TRAILER => {
                self.read_trailer(record)?;
                return Ok(None);
            }
            tag => {
                return Err(KvError::Corrupt(format!(
                    "range export: unknown record tag {tag} at offset {record_offset}"
                )))
            }
        }
        self.read_into(&mut record, 8, "record lengths")?;
        let key_len = u32::from_le_bytes([record[1], record[2], record[3], record[4]]) as usize;
        let value_len = u32::from_le_bytes([record[5], record[6], record[7], record[8]]) as usize;
        if key_len == 0 {
            // No engine stores an empty key (fjall asserts on one): an import must not
            // reach it (found by flotilla-fuzz).
            return Err(KvError::Corrupt(format!(
                "range export: record at offset {record_offset} has an empty key"
            )));
        }
        if key_len > KEY_BYTES_MAX || value_len > VALUE_BYTES_MAX {
            return Err(KvError::Corrupt(format!(
                "range export: record at offset {record_offset} claims a {key_len}-byte key \
                 and a {value_len}-byte value (limits {KEY_BYTES_MAX} and {VALUE_BYTES_MAX})"
            )));
        }
        self.read_into(&mut record, key_len + value_len, "record data")?;
        self.check_crc(&record, "record")?;
        let key = Bytes::copy_from_slice(&record[9..9 + key_len]);
        let value = Bytes::copy_from_slice(&record[9 + key_len..]);
        if !super::in_range(&key, &self.start, &self.end) {
            return Err(KvError::KeyOutOfRegion {
                region: crate::ids::RegionId(0),
                key: show(&key),
                start: show(&self.start),
                end: show(&self.end),
            });
        }
        if let Some(previous) = &self.previous {
            if *previous >= key {
                return Err(KvError::Corrupt(format!(
                    "range export: key {} at offset {record_offset} does not follow {}",
                    show(&key),
                    show(previous)
                )));
            }
        }
        self.previous = Some(key.clone());
        self.count += 1;
        Ok(Some((key, value)))
    }

    fn read_trailer(&mut self, mut trailer: Vec<u8>) -> Result<(), KvError> {
        self.read_into(&mut trailer, 8, "trailer")?;
        self.check_crc(&trailer, "trailer")?;
        let mut count = [0u8; 8];
        count.copy_from_slice(&trailer[1..9]);
        let count = u64::from_le_bytes(count);
        if count != self.count {
            return Err(KvError::Corrupt(format!(
                "range export: trailer counts {count} records, {} were read",
                self.count
            )));
        }
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(KvError::Corrupt(format!(
                    "range export: trailing bytes after the trailer at offset {}",
                    self.offset
                )))
            }
            Err(e) => return Err(read_error(&e, self.offset)),
        }
        self.finished = true;
        Ok(())
    }

    /// Appends exactly `len` bytes to `buf`; a short input is a truncated export.
    fn read_into(&mut self, buf: &mut Vec<u8>, len: usize, what: &str) -> Result<(), KvError> {
        let at = buf.len();
        buf.resize(at + len, 0);
        self.input.read_exact(&mut buf[at..]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                KvError::Corrupt(format!(
                    "range export truncated: {what} at offset {} needs {len} bytes \
                     ({} records read)",
                    self.offset, self.count
                ))
            } else {
                read_error(&e, self.offset)
            }
        })?;
        self.offset += len as u64;
        Ok(())
    }

    /// Reads a u32-prefixed byte string into `buf`; returns where it lies in `buf`.
    fn read_bytes(
        &mut self,
        buf: &mut Vec<u8>,
        limit: usize,
        what: &str,
    ) -> Result<std::ops::Range<usize>, KvError> {
        let at = buf.len();
        self.read_into(buf, 4, what)?;
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len > limit {
            return Err(KvError::Corrupt(format!(
                "range export: {what} of {len} bytes exceeds its limit of {limit}"
            )));
        }
        self.read_into(buf, len, what)?;
        Ok(at + 4..at + 4 + len)
    }

    /// Reads the u32 checksum following `data` and compares it with `data`'s.
    fn check_crc(&mut self, data: &[u8], what: &str) -> Result<(), KvError> {
        let at = self.offset;
        let mut stored = Vec::with_capacity(4);
        self.read_into(&mut stored, 4, "checksum")?;
        let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
        let computed = crc32c::crc32c(data);
        if stored != computed {
            return Err(KvError::Corrupt(format!(
                "range export: {what} checksum mismatch at offset {at} \
                 (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        Ok(())
    }
}

fn read_error(e: &std::io::Error, offset: u64) -> KvError {
    KvError::Engine(format!("reading a range export at offset {offset}: {e}"))
}

/// Reads a whole export of `[start, end)` and verifies it without importing anything;
/// returns the number of pairs.
pub fn verify_export(input: &mut dyn Read, start: &[u8], end: &[u8]) -> Result<u64, KvError> {
    let mut reader = ExportReader::new(input, start, end)?;
    while reader.next_pair()?.is_some() {}
    Ok(reader.count())
}
