//! A bounded little-endian binary reader and writer for commands, outputs and snapshots.
//!
//! Owns: bounds checking of every length and count read from untrusted bytes. Must never:
//! allocate before checking a length against both the input left and the caller's limit,
//! or accept trailing bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::PdError;

/// Appends fixed-width integers and length-prefixed byte strings.
pub(crate) struct Writer {
    buf: BytesMut,
}

impl Writer {
    pub(crate) fn new() -> Writer {
        Writer {
            buf: BytesMut::with_capacity(64),
        }
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.buf.put_u8(value);
    }

    pub(crate) fn u32(&mut self, value: u32) {
        self.buf.put_u32_le(value);
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.buf.put_u64_le(value);
    }

    /// A u32 length then the bytes. Callers pass only data bounded by a limit of
    /// `limits`, all of which fit a u32.
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        let len = u32::try_from(data.len()).expect("a bounded byte string fits a u32 length");
        self.buf.put_u32_le(len);
        self.buf.put_slice(data);
    }

    pub(crate) fn count(&mut self, count: usize) {
        let count = u32::try_from(count).expect("a bounded count fits a u32");
        self.buf.put_u32_le(count);
    }

    pub(crate) fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads what [`Writer`] wrote, refusing short input, oversized lengths and (in
/// [`Reader::finish`]) trailing bytes with [`PdError::Corrupt`] naming the field.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { data, what }
    }

    /// A [`PdError::Corrupt`] naming what is being read.
    pub(crate) fn error(&self, why: impl std::fmt::Display) -> PdError {
        PdError::Corrupt(format!("{}: {why}", self.what))
    }

    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], PdError> {
        if self.data.len() < len {
            return Err(self.error(format_args!(
                "{field} needs {len} bytes, {} left",
                self.data.len()
            )));
        }
        let (head, tail) = self.data.split_at(len);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, PdError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, PdError> {
        let mut array = [0u8; 4];
        array.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(array))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, PdError> {
        let mut array = [0u8; 8];
        array.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(array))
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    pub(crate) fn bytes(&mut self, field: &str, limit: usize) -> Result<Bytes, PdError> {
        let len = self.u32(field)? as usize;
        if len > limit {
            return Err(self.error(format_args!(
                "{field} of {len} bytes exceeds its limit of {limit} bytes"
            )));
        }
        Ok(Bytes::copy_from_slice(self.take(len, field)?))
    }

    /// A length-prefixed UTF-8 string of at most `limit` bytes.
    pub(crate) fn string(&mut self, field: &str, limit: usize) -> Result<String, PdError> {
        let raw = self.bytes(field, limit)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| self.error(format_args!("{field} is not UTF-8")))
    }

    /// An element count of at most `limit`, each element taking at least
    /// `element_bytes_min` bytes of what is left (so a count never makes a caller reserve
    /// more than the input could hold).
    pub(crate) fn count(
        &mut self,
        field: &str,
        limit: usize,
        element_bytes_min: usize,
    ) -> Result<usize, PdError> {
        let count = self.u32(field)? as usize;
        if count > limit {
            return Err(self.error(format_args!(
                "{field} count {count} exceeds its limit of {limit}"
            )));
        }
        if count.saturating_mul(element_bytes_min) > self.data.len() {
            return Err(self.error(format_args!(
                "{field} count {count} cannot fit in the {} bytes left",
                self.data.len()
            )));
        }
        Ok(count)
    }

    /// Ends the read: any byte left is an error.
    pub(crate) fn finish(self) -> Result<(), PdError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.error(format_args!("{} trailing bytes", self.data.len())))
        }
    }
}
