//! A deliberately broken decoder, to show the fuzzer finds the kind of bug it hunts.
//!
//! The format is a count of records, each a u16 length and that many bytes (the shape of
//! many of Flotilla's own records). The planted bug: the decoder trusts the length field
//! and slices the input with it unchecked, so any input whose length runs past the end
//! panics, exactly as a decoder without bounds checks would on a hostile frame.
//!
//! Owns: nothing real; used by the tests, and by the CLI only with the
//! `planted-decoder-bug` feature. Must never: be part of `--target all`.

use crate::Target;

fn encode(records: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![u8::try_from(records.len()).unwrap_or(u8::MAX)];
    for record in records {
        let len = u16::try_from(record.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// The broken decoder: returns the records, or `None` for a short count or header.
#[must_use]
pub fn decode_unchecked(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (&count, mut rest) = bytes.split_first()?;
    let mut records = Vec::new();
    for _ in 0..count {
        let header: [u8; 2] = rest.get(..2)?.try_into().ok()?;
        let len = usize::from(u16::from_le_bytes(header));
        // THE PLANTED BUG: `len` comes from the input and is not checked against what is
        // left; a correct decoder would use `rest.get(2..2 + len)?`.
        records.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    Some(records)
}

/// `planted`: the broken decoder, seeded with inputs it decodes fine.
#[must_use]
pub fn planted() -> Target {
    Target {
        name: "planted",
        about: "a planted decoder bug (a length field used to slice unchecked); must crash",
        seeds: || {
            vec![
                encode(&[b"alpha", b"beta"]),
                encode(&[b""]),
                encode(&[&[7u8; 40], b"x", b"yz"]),
            ]
        },
        run: |bytes| decode_unchecked(bytes).is_some(),
        fixup: None,
    }
}
