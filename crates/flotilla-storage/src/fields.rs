//! Bounded field codec: a little-endian writer and reader of named fields (u8, u32, u64,
//! length-prefixed byte strings and UTF-8 strings, optional byte strings, element counts)
//! for the small records of the layers above storage — the KV layer's commands, outputs and
//! regions, the placement driver's commands, outputs and state. Those layers map
//! [`DecodeError`] into their own error at their boundary.
//!
//! Owns: bounds checking of every length and count read from untrusted bytes, and error
//! messages that name what was being read and the field. Must never: panic on any input,
//! allocate before checking a length against both the input left and the caller's limit,
//! or accept trailing bytes.
//!
//! Layout (unchanged from the per-crate copies it replaces): integers little-endian; a byte
//! string is a u32 length then the bytes; an option is a u8 flag (0 absent, 1 present)
//! then, when present, a byte string; a count is a u32.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

pub use crate::codec::DecodeError;

/// Appends fixed-width little-endian integers and length-prefixed byte strings, read back
/// by [`FieldReader`].
pub struct FieldWriter {
    buf: BytesMut,
}

impl FieldWriter {
    /// An empty writer with room for `capacity` bytes before it reallocates.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> FieldWriter {
        FieldWriter {
            buf: BytesMut::with_capacity(capacity),
        }
    }

    /// Appends a byte.
    pub fn u8(&mut self, value: u8) {
        self.buf.put_u8(value);
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, value: u32) {
        self.buf.put_u32_le(value);
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, value: u64) {
        self.buf.put_u64_le(value);
    }

    /// A u32 length then the bytes.
    ///
    /// # Panics
    ///
    /// If `data` is 4 GiB or longer: callers pass only data already checked against one of
    /// their limits, all of which fit a u32.
    pub fn bytes(&mut self, data: &[u8]) {
        let len = u32::try_from(data.len()).expect("a bounded byte string fits a u32 length");
        self.buf.put_u32_le(len);
        self.buf.put_slice(data);
    }

    /// 0 for `None`, 1 then the bytes (as [`FieldWriter::bytes`]) for `Some`.
    pub fn option(&mut self, data: Option<&[u8]>) {
        match data {
            None => self.u8(0),
            Some(data) => {
                self.u8(1);
                self.bytes(data);
            }
        }
    }

    /// An element count, as a u32.
    ///
    /// # Panics
    ///
    /// If `count` does not fit a u32: callers pass only counts already checked against one
    /// of their limits, all of which fit.
    pub fn count(&mut self, count: usize) {
        let count = u32::try_from(count).expect("a bounded count fits a u32");
        self.buf.put_u32_le(count);
    }

    /// The bytes written.
    #[must_use]
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads what [`FieldWriter`] wrote, refusing short input, lengths and counts over the
/// caller's limit, and (in [`FieldReader::finish`]) trailing bytes, with a [`DecodeError`]
/// whose message starts with what is being read (`"region: ..."`) and names the field.
pub struct FieldReader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> FieldReader<'a> {
    /// Reads `data`, which holds one `what` (named in every error).
    #[must_use]
    pub fn new(data: &'a [u8], what: &'static str) -> FieldReader<'a> {
        FieldReader { data, what }
    }

    /// Bytes not read yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.data.len()
    }

    /// A [`DecodeError`] saying `why`, prefixed by what is being read: for the checks a
    /// caller makes on the values it read.
    pub fn error(&self, why: impl fmt::Display) -> DecodeError {
        DecodeError(format!("{}: {why}", self.what))
    }

    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], DecodeError> {
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

    /// Reads a byte.
    pub fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        let mut array = [0u8; 4];
        array.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(array))
    }

    /// Reads a little-endian u64.
    pub fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        let mut array = [0u8; 8];
        array.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(array))
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    pub fn bytes(&mut self, field: &str, limit: usize) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > limit {
            return Err(self.error(format_args!(
                "{field} of {len} bytes exceeds its limit of {limit} bytes"
            )));
        }
        Ok(Bytes::copy_from_slice(self.take(len, field)?))
    }

    /// A length-prefixed UTF-8 string of at most `limit` bytes.
    pub fn string(&mut self, field: &str, limit: usize) -> Result<String, DecodeError> {
        let raw = self.bytes(field, limit)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| self.error(format_args!("{field} is not UTF-8")))
    }

    /// What [`FieldWriter::option`] wrote: a presence flag, then a byte string of at most
    /// `limit` bytes when present.
    pub fn option(&mut self, field: &str, limit: usize) -> Result<Option<Bytes>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes(field, limit)?)),
            flag => Err(self.error(format_args!(
                "{field} has presence flag {flag}, expected 0 or 1"
            ))),
        }
    }

    /// An element count of at most `limit`, each element taking at least
    /// `element_bytes_min` bytes of what is left (so a count can never make a caller
    /// reserve more than the input could hold).
    pub fn count(
        &mut self,
        field: &str,
        limit: usize,
        element_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
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
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.error(format_args!("{} trailing bytes", self.data.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FieldReader, FieldWriter};

    #[test]
    fn round_trips_every_field_with_the_same_bytes() {
        let mut w = FieldWriter::with_capacity(8);
        w.u8(7);
        w.u32(0x0102_0304);
        w.u64(0x0102_0304_0506_0708);
        w.bytes(b"ab");
        w.option(None);
        w.option(Some(b"c"));
        w.count(2);
        let bytes = w.finish();
        assert_eq!(
            &bytes[..],
            &[
                7, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1, 2, 0, 0, 0, b'a', b'b', 0, 1, 1, 0, 0, 0,
                b'c', 2, 0, 0, 0
            ][..]
        );
        let mut r = FieldReader::new(&bytes, "thing");
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 0x0102_0304);
        assert_eq!(r.u64("c").unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(r.string("d", 2).unwrap(), "ab");
        assert_eq!(r.option("e", 1).unwrap(), None);
        assert_eq!(r.option("f", 1).unwrap().as_deref(), Some(&b"c"[..]));
        assert_eq!(r.remaining(), 4);
        assert_eq!(r.count("g", 2, 0).unwrap(), 2);
        r.finish().unwrap();
    }

    #[test]
    fn errors_name_what_and_the_field() {
        let err =
            |data: &[u8], read: fn(&mut FieldReader<'_>) -> Result<(), super::DecodeError>| {
                let mut r = FieldReader::new(data, "thing");
                read(&mut r).unwrap_err().0
            };
        assert_eq!(
            err(&[1, 2], |r| r.u32("size").map(drop)),
            "thing: size needs 4 bytes, 2 left"
        );
        assert_eq!(
            err(&[3, 0, 0, 0, 1, 2, 3], |r| r.bytes("key", 2).map(drop)),
            "thing: key of 3 bytes exceeds its limit of 2 bytes"
        );
        assert_eq!(
            err(&[2], |r| r.option("value", 2).map(drop)),
            "thing: value has presence flag 2, expected 0 or 1"
        );
        assert_eq!(
            err(&[1, 0, 0, 0, 0xff], |r| r.string("name", 2).map(drop)),
            "thing: name is not UTF-8"
        );
        assert_eq!(
            err(&[3, 0, 0, 0], |r| r.count("ops", 2, 1).map(drop)),
            "thing: ops count 3 exceeds its limit of 2"
        );
        assert_eq!(
            err(&[2, 0, 0, 0, 9], |r| r.count("ops", 2, 1).map(drop)),
            "thing: ops count 2 cannot fit in the 1 bytes left"
        );
        let mut r = FieldReader::new(&[0, 1], "thing");
        r.u8("a").unwrap();
        assert_eq!(r.finish().unwrap_err().0, "thing: 1 trailing bytes");
    }
}
