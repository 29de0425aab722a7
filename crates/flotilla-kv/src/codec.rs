//! Little binary reader and writer shared by the command, output and region codecs.
//!
//! Owns: bounds checking of every length read from untrusted bytes. Must never: allocate
//! before checking a length against both the remaining input and the caller's limit.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::KvError;

/// Appends fixed-width little-endian integers and length-prefixed byte strings.
pub(crate) struct Writer {
    buf: BytesMut,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Writer {
        Writer {
            buf: BytesMut::with_capacity(capacity),
        }
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.buf.put_u8(value);
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.buf.put_u64_le(value);
    }

    /// A u32 length then the bytes. Callers pass only data already checked against the
    /// key or value limits, which fit a u32 (asserted at compile time in `limits`).
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        let len = u32::try_from(data.len()).expect("a checked key or value fits a u32 length");
        self.buf.put_u32_le(len);
        self.buf.put_slice(data);
    }

    /// 0 for `None`, 1 then the bytes for `Some`.
    pub(crate) fn option(&mut self, data: Option<&[u8]>) {
        match data {
            None => self.u8(0),
            Some(data) => {
                self.u8(1);
                self.bytes(data);
            }
        }
    }

    pub(crate) fn count(&mut self, count: usize) {
        let count = u32::try_from(count).expect("a checked batch length fits a u32");
        self.buf.put_u32_le(count);
    }

    pub(crate) fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads what [`Writer`] wrote, refusing short input, oversized lengths and trailing
/// bytes with [`KvError::Corrupt`] naming what was being read.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { data, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], KvError> {
        if self.data.len() < len {
            return Err(KvError::Corrupt(format!(
                "{}: {field} needs {len} bytes, {} left",
                self.what,
                self.data.len()
            )));
        }
        let (head, tail) = self.data.split_at(len);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, KvError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, KvError> {
        let raw = self.take(4, field)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, KvError> {
        let raw = self.take(8, field)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(raw);
        Ok(u64::from_le_bytes(array))
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    pub(crate) fn bytes(&mut self, field: &str, limit: usize) -> Result<Bytes, KvError> {
        let len = self.u32(field)? as usize;
        if len > limit {
            return Err(KvError::Corrupt(format!(
                "{}: {field} of {len} bytes exceeds its limit of {limit} bytes",
                self.what
            )));
        }
        Ok(Bytes::copy_from_slice(self.take(len, field)?))
    }

    pub(crate) fn option(&mut self, field: &str, limit: usize) -> Result<Option<Bytes>, KvError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes(field, limit)?)),
            flag => Err(KvError::Corrupt(format!(
                "{}: {field} has presence flag {flag}, expected 0 or 1",
                self.what
            ))),
        }
    }

    /// An element count of at most `limit`, each element taking at least
    /// `element_bytes_min` bytes of what is left (so a count can never make a caller
    /// reserve more than the input could hold).
    pub(crate) fn count(
        &mut self,
        field: &str,
        limit: usize,
        element_bytes_min: usize,
    ) -> Result<usize, KvError> {
        let count = self.u32(field)? as usize;
        if count > limit {
            return Err(KvError::Corrupt(format!(
                "{}: {field} count {count} exceeds its limit of {limit}",
                self.what
            )));
        }
        if count.saturating_mul(element_bytes_min) > self.data.len() {
            return Err(KvError::Corrupt(format!(
                "{}: {field} count {count} cannot fit in the {} bytes left",
                self.what,
                self.data.len()
            )));
        }
        Ok(count)
    }

    /// Refuses trailing bytes.
    pub(crate) fn finish(self) -> Result<(), KvError> {
        if !self.data.is_empty() {
            return Err(KvError::Corrupt(format!(
                "{}: {} trailing bytes",
                self.what,
                self.data.len()
            )));
        }
        Ok(())
    }
}
