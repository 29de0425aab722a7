//! The mutations: how one input becomes the next, driven by a seeded generator.
//!
//! Owns: the mutation operators (bit flips, interesting bytes and integers, inserted,
//! deleted and duplicated ranges, truncation, splicing two corpus inputs, and bumps of
//! protobuf varints and little-endian length fields, which is where decoders most often
//! trust a number they should check). Must never: grow an input past the caller's
//! `len_max`, or use any randomness but the [`Rng`] it is given (runs replay from the seed).

use flotilla_raft::Rng;

/// Bytes a decoder is most likely to mishandle: zero, one, sign boundaries, all ones.
const INTERESTING_BYTES: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];

/// Values a length, count, term or index field is most likely to be mishandled at.
const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX - 1,
    u64::MAX,
];

/// How many mutations are stacked on one input at most.
const STACKED_MUTATIONS_MAX: u64 = 6;
/// Longest range one insert, delete or duplication touches.
const RANGE_BYTES_MAX: usize = 64;

/// Applies 1 to `STACKED_MUTATIONS_MAX` mutations to `data` (most often one or two),
/// splicing with inputs from `corpus` at times; the result is at most `len_max` bytes.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], len_max: usize) {
    // Geometric: half the inputs get one mutation, a quarter two, ...
    let mut count = 1;
    while count < STACKED_MUTATIONS_MAX && rng.below(2) == 0 {
        count += 1;
    }
    for _ in 0..count {
        mutate_once(rng, data, corpus);
    }
    data.truncate(len_max);
}

fn below(rng: &mut Rng, bound: usize) -> usize {
    // `bound` is a length of an in-memory buffer: it fits a u64, and the result fits back.
    usize::try_from(rng.below(bound as u64)).unwrap_or(0)
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    if data.is_empty() {
        insert_bytes(rng, data);
        return;
    }
    match rng.below(13) {
        0 | 1 => {
            let at = below(rng, data.len());
            data[at] ^= 1 << rng.below(8);
        }
        2 => {
            let at = below(rng, data.len());
            data[at] = INTERESTING_BYTES[below(rng, INTERESTING_BYTES.len())];
        }
        3 => {
            let at = below(rng, data.len());
            data[at] = rng.next_u64() as u8;
        }
        4 => insert_bytes(rng, data),
        5 => {
            let at = below(rng, data.len());
            let len = 1 + below(rng, RANGE_BYTES_MAX.min(data.len() - at));
            data.drain(at..at + len);
        }
        6 => {
            let from = below(rng, data.len());
            let len = 1 + below(rng, RANGE_BYTES_MAX.min(data.len() - from));
            let chunk = data[from..from + len].to_vec();
            let at = below(rng, data.len() + 1);
            data.splice(at..at, chunk);
        }
        7 => {
            let len = below(rng, data.len());
            data.truncate(len);
        }
        8 => splice(rng, data, corpus),
        9 | 10 => bump_varint(rng, data),
        _ => bump_fixed(rng, data),
    }
}

fn insert_bytes(rng: &mut Rng, data: &mut Vec<u8>) {
    let at = below(rng, data.len() + 1);
    let len = 1 + below(rng, 16);
    let bytes: Vec<u8> = if rng.below(2) == 0 {
        vec![INTERESTING_BYTES[below(rng, INTERESTING_BYTES.len())]; len]
    } else {
        (0..len).map(|_| rng.next_u64() as u8).collect()
    };
    data.splice(at..at, bytes);
}

/// Joins a prefix of `data` to a suffix of another corpus input, or drops a chunk of the
/// other input into `data`.
fn splice(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    if corpus.is_empty() {
        return;
    }
    let other = &corpus[below(rng, corpus.len())];
    if other.is_empty() {
        return;
    }
    let from = below(rng, other.len());
    if rng.below(2) == 0 {
        let cut = below(rng, data.len() + 1);
        data.truncate(cut);
        data.extend_from_slice(&other[from..]);
    } else {
        let len = 1 + below(rng, (other.len() - from).min(4 * RANGE_BYTES_MAX));
        let at = below(rng, data.len() + 1);
        data.splice(at..at, other[from..from + len].iter().copied());
    }
}

/// A new value for an integer field that held `value`: off by a little, doubled, or one of
/// the interesting values.
fn bumped(rng: &mut Rng, value: u64) -> u64 {
    match rng.below(6) {
        0 => value.wrapping_add(1 + rng.below(16)),
        1 => value.wrapping_sub(1 + rng.below(16)),
        2 => value.wrapping_mul(2),
        3 => value.wrapping_add(rng.below(1 << 20)),
        _ => INTERESTING_U64[below(rng, INTERESTING_U64.len())],
    }
}

/// Reads the LEB128 varint at `at`: its value and length, if one ends within 10 bytes.
fn read_varint(data: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in data.get(at..)?.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Finds a varint at or after a random position (protobuf tags, lengths and numbers are
/// all varints) and replaces it with a bumped value, re-encoded at its new width.
fn bump_varint(rng: &mut Rng, data: &mut Vec<u8>) {
    let start = below(rng, data.len());
    for at in start..data.len().min(start + 16) {
        if let Some((value, len)) = read_varint(data, at) {
            let mut encoded = Vec::with_capacity(10);
            write_varint(bumped(rng, value), &mut encoded);
            data.splice(at..at + len, encoded);
            return;
        }
    }
}

/// Replaces a little-endian integer of 1, 2, 4 or 8 bytes at a random position (the
/// storage formats' lengths, counts, terms and indexes) with a bumped value.
fn bump_fixed(rng: &mut Rng, data: &mut [u8]) {
    let width = 1usize << rng.below(4);
    if data.len() < width {
        return;
    }
    let at = below(rng, data.len() - width + 1);
    let mut raw = [0u8; 8];
    raw[..width].copy_from_slice(&data[at..at + width]);
    let value = bumped(rng, u64::from_le_bytes(raw));
    data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            write_varint(value, &mut out);
            assert_eq!(read_varint(&out, 0), Some((value, out.len())));
        }
    }

    #[test]
    fn mutations_replay_from_the_seed_and_respect_the_length_cap() {
        let corpus = vec![b"hello world".to_vec(), vec![0u8; 100]];
        let run = |seed: u64| {
            let mut rng = Rng::new(seed);
            let mut data = b"the input".to_vec();
            let mut seen = Vec::new();
            for _ in 0..1000 {
                mutate(&mut rng, &mut data, &corpus, 64);
                assert!(data.len() <= 64);
                seen.push(data.clone());
            }
            seen
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
