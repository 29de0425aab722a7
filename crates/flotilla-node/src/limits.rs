//! The size limits of what crosses the network, derived from one another so that whatever a
//! [`crate::Node`] admits can also be replicated.
//!
//! Owns: the frame limit both ends of the raft stream enforce, the largest entry a node
//! accepts, the largest snapshot part a fetch answer carries, and the compile-time checks
//! that tie them together. Must never: let an admitted entry grow, with everything that
//! surrounds it on the wire, past the frame limit a receiver enforces (a 16 MiB entry used to
//! be admitted and then dropped on every retry, 73 bytes over, wedging its region). Every
//! other layer (the KV service's request limit, the CLI's message limit) should derive
//! from these constants instead of repeating a number.
//!
//! How an AppendEntries stays within a frame: the core puts either one entry into a message
//! (of any size up to [`ENTRY_BYTES_MAX`]), or several whose sizes add up to at most its
//! `append_bytes_max` ([`APPEND_BYTES_MAX_LIMIT`] bounds that option), and the sender cuts
//! the messages queued for one destination into as many frames as the limits need.

/// Largest encoded frame either side accepts (16 MiB). A receiver refuses a larger one from
/// its length prefix, without allocating it, and ends the sender's stream; a sender never
/// builds one (it cuts what is queued into several frames).
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most `(group, message)` pairs one frame may carry; a sender cuts its queue for one
/// destination into frames of at most this many.
pub const FRAME_MESSAGES_MAX: usize = 65_536;

/// Longest peer id, in bytes (a store id, or a name a library user chose); longer ones are refused by the
/// decoder.
pub const PEER_ID_BYTES_MAX: usize = 256;

/// Longest address (`host:port`) a frame may announce or an address book hold: a DNS name
/// of 253 bytes, a colon and a port.
pub const ADDRESS_BYTES_MAX: usize = 261;

/// Room kept in every frame for what surrounds one entry's payload (1 MiB): the frame's
/// sender and incarnation, the group id, the message header (two peer ids, term), the
/// AppendEntries fields and the entry's own index, term and length prefix. The bytes this
/// actually takes are at most [`ENTRY_FRAMING_BYTES_MAX`], far less: the rest is spare, so
/// a new field in the protocol cannot push an admitted entry over the frame limit.
pub const FRAMING_RESERVE_BYTES: usize = 1024 * 1024;

/// Largest entry payload (the bytes given to [`crate::Node::apply`]) a node accepts: the
/// frame limit less the framing reserve (15 MiB). Larger ones are refused with
/// `InvalidArgument` naming both sizes, before they reach raft.
pub const ENTRY_BYTES_MAX: usize = FRAME_BYTES_MAX - FRAMING_RESERVE_BYTES;

/// The core's `append_bytes_max` (bytes of entries batched into one AppendEntries) may be at
/// most this: half the entry limit, so that a batch of many small entries, each with its
/// per-entry wire overhead (at most [`ENTRY_WIRE_OVERHEAD_BYTES`] against the core's own
/// estimate of 24), stays below the frame limit too. A manager refuses to open with more.
pub const APPEND_BYTES_MAX_LIMIT: u64 = (ENTRY_BYTES_MAX / 2) as u64;

/// Room kept in a snapshot fetch's answer for its own encoding (the `oneof` tag and the
/// length prefix of the data).
pub const SNAPSHOT_ANSWER_RESERVE_BYTES: usize = 1024;

/// Largest snapshot part (manifest or chunk) one `FetchSnapshot` answer may carry: the
/// frame limit less the answer's reserve. Chunks are far smaller (the storage caps them at
/// 4 MiB); a manifest larger than this is refused by the server with an error.
pub const SNAPSHOT_DATA_BYTES_MAX: usize = FRAME_BYTES_MAX - SNAPSHOT_ANSWER_RESERVE_BYTES;

/// Wire bytes of one protobuf field's key plus a length prefix or varint, at most (a
/// one-byte key, a ten-byte varint).
const FIELD_OVERHEAD_BYTES: usize = 1 + 10;

/// A string or bytes field of at most `len` bytes, on the wire.
const fn field_bytes(len: usize) -> usize {
    FIELD_OVERHEAD_BYTES + len
}

/// Wire bytes one entry adds besides its payload, at most: the field key and length prefix
/// of the entry within its AppendEntries, its index and term, and the key and length prefix
/// of its payload.
pub const ENTRY_WIRE_OVERHEAD_BYTES: usize =
    FIELD_OVERHEAD_BYTES + 2 * FIELD_OVERHEAD_BYTES + FIELD_OVERHEAD_BYTES;

/// Wire bytes around one entry's payload in a frame that carries one AppendEntries with that
/// one entry, at most: the frame (sender, incarnation, the message's field key and length),
/// with its receiver, cluster and announced address, the group message (group id, the
/// message's key and length), the message (from, to, term,
/// the body's key and length), the AppendEntries (previous index and term, commit, the echo
/// of two varints) and the entry ([`ENTRY_WIRE_OVERHEAD_BYTES`]). Checked against real
/// encodings by a test.
pub const ENTRY_FRAMING_BYTES_MAX: usize = {
    let frame = 2 * field_bytes(PEER_ID_BYTES_MAX)
        + field_bytes(ADDRESS_BYTES_MAX)
        + 3 * FIELD_OVERHEAD_BYTES;
    let group_message = FIELD_OVERHEAD_BYTES + FIELD_OVERHEAD_BYTES;
    let message = 2 * field_bytes(PEER_ID_BYTES_MAX) + FIELD_OVERHEAD_BYTES + FIELD_OVERHEAD_BYTES;
    let append_entries = 3 * FIELD_OVERHEAD_BYTES + FIELD_OVERHEAD_BYTES + 2 * FIELD_OVERHEAD_BYTES;
    frame + group_message + message + append_entries + ENTRY_WIRE_OVERHEAD_BYTES
};

// An admitted entry plus everything around it fits in a frame, with the reserve to spare
// (at least 64 times what the framing takes today).
const _: () = assert!(ENTRY_BYTES_MAX + ENTRY_FRAMING_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(ENTRY_FRAMING_BYTES_MAX * 64 <= FRAMING_RESERVE_BYTES);
// A batch of small entries within `append_bytes_max` fits too: the core counts each entry
// as at least `ENTRY_OVERHEAD_BYTES` plus its payload, the wire takes at most
// `ENTRY_WIRE_OVERHEAD_BYTES` plus its payload, which is at most twice the core's count.
const _: () = assert!(ENTRY_WIRE_OVERHEAD_BYTES as u64 <= 2 * flotilla_raft::ENTRY_OVERHEAD_BYTES);
const _: () =
    assert!(2 * APPEND_BYTES_MAX_LIMIT as usize + ENTRY_FRAMING_BYTES_MAX < FRAME_BYTES_MAX);
// A snapshot part plus its answer's encoding fits in a frame.
const _: () = assert!(SNAPSHOT_DATA_BYTES_MAX + field_bytes(0) <= FRAME_BYTES_MAX);
// Every message of a full frame could carry something: the per-message count limit does
// not make the byte limit unreachable, nor the other way round.
const _: () = assert!(FRAME_MESSAGES_MAX * 16 <= FRAME_BYTES_MAX);

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flotilla_raft::{Echo, Entry, EntryPayload, LogIndex, Message, MessageBody, PeerId, Term};
    use prost::Message as _;

    use super::*;
    use crate::grpc::codec;
    use crate::transport::Frame;

    /// The longest peer id the decoder accepts.
    fn longest_peer(c: char) -> PeerId {
        PeerId::new(&c.to_string().repeat(PEER_ID_BYTES_MAX))
    }

    #[test]
    fn the_largest_entry_fits_a_frame_with_the_longest_names_and_largest_numbers() {
        let (from, to) = (longest_peer('a'), longest_peer('b'));
        let frame = Frame {
            from: from.clone(),
            to: to.clone(),
            cluster: u64::MAX,
            from_address: format!("{}:65535", "h".repeat(ADDRESS_BYTES_MAX - 6)),
            incarnation: u64::MAX,
            messages: vec![(
                u64::MAX,
                Message {
                    from,
                    to,
                    term: Term(u64::MAX),
                    body: MessageBody::AppendEntries {
                        prev_log_index: LogIndex(u64::MAX),
                        prev_log_term: Term(u64::MAX),
                        entries: vec![Entry {
                            index: LogIndex(u64::MAX),
                            term: Term(u64::MAX),
                            payload: EntryPayload::Normal(Bytes::from(vec![0u8; ENTRY_BYTES_MAX])),
                        }],
                        leader_commit: LogIndex(u64::MAX),
                        echo: Echo {
                            tick: u64::MAX,
                            read_seq: u64::MAX,
                        },
                    },
                },
            )],
        };
        let size = codec::encode_frame(&frame).encoded_len();
        assert!(size <= ENTRY_BYTES_MAX + ENTRY_FRAMING_BYTES_MAX, "{size}");
        assert!(size < FRAME_BYTES_MAX);
        let cut = codec::encode_frames(&frame, FRAME_BYTES_MAX, FRAME_MESSAGES_MAX);
        assert_eq!(cut.frames.len(), 1);
        assert!(cut.oversized.is_empty());
    }

    #[test]
    fn frames_are_cut_at_the_count_and_byte_limits_in_order() {
        let me = PeerId::new("a:1");
        let heartbeat = |seq: u64| Message {
            from: me.clone(),
            to: PeerId::new("b:1"),
            term: Term(1),
            body: MessageBody::Heartbeat {
                commit: LogIndex(seq),
                echo: Echo::default(),
                hibernate: false,
                transfer_target: None,
            },
        };
        let frame = Frame {
            from: me.clone(),
            to: PeerId::new("them"),
            cluster: 9,
            from_address: String::new(),
            incarnation: 3,
            messages: (0..10).map(|seq| (seq, heartbeat(seq))).collect(),
        };
        let by_count = codec::encode_frames(&frame, FRAME_BYTES_MAX, 4);
        let counts: Vec<usize> = by_count.frames.iter().map(|f| f.messages.len()).collect();
        assert_eq!(counts, vec![4, 4, 2]);
        let one = codec::encode_frame(&frame).encoded_len();
        let by_bytes = codec::encode_frames(&frame, one / 3, FRAME_MESSAGES_MAX);
        assert!(by_bytes.frames.len() >= 3);
        let mut groups = Vec::new();
        for wire in &by_bytes.frames {
            assert!(wire.encoded_len() <= one / 3);
            assert_eq!(wire.incarnation, 3);
            groups.extend(wire.messages.iter().map(|m| m.group));
        }
        assert_eq!(groups, (0..10).collect::<Vec<_>>(), "order kept");
        let beacon = Frame {
            from: me,
            to: PeerId::new("them"),
            cluster: 9,
            from_address: String::new(),
            incarnation: 3,
            messages: Vec::new(),
        };
        assert_eq!(codec::encode_frames(&beacon, 64, 1).frames.len(), 1);
    }

    #[test]
    fn the_core_default_batch_is_within_the_limit() {
        let config = flotilla_raft::Config::new(flotilla_raft::PeerId::new("a:1"));
        assert!(config.append_bytes_max <= APPEND_BYTES_MAX_LIMIT);
    }
}
