//! Codec round trips of every command, output and region, and refusals: every truncation,
//! trailing bytes, unknown versions and tags, lengths over the limits, nested batches, and
//! random bytes (never a panic).

use bytes::Bytes;
use flotilla_kv::limits::{BATCH_KEYS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use flotilla_kv::{Epoch, KvCommand, KvError, KvOutput, Region, RegionId};

use crate::util::Rng;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn every_command() -> Vec<KvCommand> {
    let singles = vec![
        KvCommand::Put {
            key: b("k"),
            value: b("v"),
        },
        KvCommand::Put {
            key: Bytes::new(),
            value: Bytes::new(),
        },
        KvCommand::Delete { key: b("k") },
        KvCommand::DeleteRange {
            start: b("a"),
            end: b("z"),
        },
        KvCommand::DeleteRange {
            start: b("a"),
            end: Bytes::new(),
        },
        KvCommand::CompareAndPut {
            key: b("k"),
            expected: None,
            value: b("v"),
        },
        KvCommand::CompareAndPut {
            key: b("k"),
            expected: Some(b("old")),
            value: b("new"),
        },
        KvCommand::PutIfAbsent {
            key: b("k"),
            value: b("v"),
        },
        KvCommand::GetAndPut {
            key: b("k"),
            value: b("v"),
        },
        KvCommand::BatchPut(vec![(b("a"), b("1")), (b("b"), b("2"))]),
        KvCommand::BatchPut(Vec::new()),
        KvCommand::BatchDelete(vec![b("a"), b("b")]),
    ];
    let mut all = singles.clone();
    all.push(KvCommand::Batch(singles));
    all.push(KvCommand::Batch(Vec::new()));
    all
}

fn every_output() -> Vec<KvOutput> {
    let singles = vec![
        KvOutput::Done,
        KvOutput::Swapped(true),
        KvOutput::Swapped(false),
        KvOutput::Previous(None),
        KvOutput::Previous(Some(b("v"))),
        KvOutput::Previous(Some(Bytes::new())),
    ];
    let mut all = singles.clone();
    let mut elements: Vec<Result<KvOutput, String>> = singles.into_iter().map(Ok).collect();
    elements.push(Err("key \"q\" is outside region 1".into()));
    all.push(KvOutput::Batch(elements));
    all
}

#[test]
fn commands_round_trip_and_refuse_every_truncation() {
    for command in every_command() {
        let encoded = command.encode();
        assert_eq!(KvCommand::decode(&encoded), Ok(command.clone()));
        for len in 0..encoded.len() {
            let result = KvCommand::decode(&encoded[..len]);
            assert!(
                matches!(result, Err(KvError::Corrupt(_))),
                "{command:?} cut to {len} bytes decoded: {result:?}"
            );
        }
        let mut trailing = encoded.to_vec();
        trailing.push(0);
        let result = KvCommand::decode(&trailing);
        assert!(
            matches!(&result, Err(KvError::Corrupt(why)) if why.contains("trailing")),
            "{result:?}"
        );
    }
}

#[test]
fn outputs_round_trip_and_refuse_every_truncation() {
    for output in every_output() {
        let encoded = output.encode();
        assert_eq!(KvOutput::decode(&encoded), Ok(output.clone()));
        for len in 0..encoded.len() {
            assert!(
                KvOutput::decode(&encoded[..len]).is_err(),
                "{output:?} cut to {len} bytes decoded"
            );
        }
        let mut trailing = encoded.to_vec();
        trailing.push(0);
        assert!(KvOutput::decode(&trailing).is_err());
    }
}

#[test]
fn long_error_texts_are_cut_at_a_character_boundary() {
    let long = "é".repeat(5000); // 10,000 bytes
    let encoded = KvOutput::Batch(vec![Err(long)]).encode();
    match KvOutput::decode(&encoded).unwrap() {
        KvOutput::Batch(results) => {
            let text = results[0].clone().unwrap_err();
            assert!(text.len() <= flotilla_kv::command::ERROR_TEXT_BYTES_MAX);
            assert!(text.len() >= flotilla_kv::command::ERROR_TEXT_BYTES_MAX - 1);
            assert!(text.chars().all(|c| c == 'é'));
        }
        other => panic!("decoded {other:?}"),
    }
}

#[test]
fn refusals_name_what_was_wrong() {
    let put = KvCommand::Put {
        key: b("k"),
        value: b("v"),
    }
    .encode();
    let mut version = put.to_vec();
    version[0] = 9;
    assert!(
        matches!(KvCommand::decode(&version), Err(KvError::Corrupt(why)) if why.contains("format version 9"))
    );
    let mut tag = put.to_vec();
    tag[1] = 200;
    assert!(
        matches!(KvCommand::decode(&tag), Err(KvError::Corrupt(why)) if why.contains("unknown tag 200"))
    );
    // A key length over the limit is refused before anything is allocated.
    let mut huge = vec![1u8, 1];
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        matches!(KvCommand::decode(&huge), Err(KvError::Corrupt(why)) if why.contains("exceeds its limit"))
    );
    // A batch count the input cannot hold.
    let mut count = vec![1u8, 8];
    count.extend_from_slice(&5000u32.to_le_bytes());
    assert!(
        matches!(KvCommand::decode(&count), Err(KvError::Corrupt(why)) if why.contains("cannot fit"))
    );
    let mut count = vec![1u8, 8];
    count.extend_from_slice(&((BATCH_KEYS_MAX + 1) as u32).to_le_bytes());
    assert!(KvCommand::decode(&count).is_err());
    // A batch inside a batch.
    let nested = KvCommand::Batch(vec![KvCommand::Batch(Vec::new())]);
    assert!(nested.validate().is_err());
    assert!(
        matches!(KvCommand::decode(&nested.encode()), Err(KvError::Corrupt(why)) if why.contains("another batch"))
    );
    // An inverted range decodes as corrupt; validate names the problem.
    let inverted = KvCommand::DeleteRange {
        start: b("z"),
        end: b("a"),
    };
    assert!(matches!(
        inverted.validate(),
        Err(KvError::InvalidRange { .. })
    ));
    assert!(KvCommand::decode(&inverted.encode()).is_err());
}

#[test]
fn limits_are_checked_with_sizes_named() {
    let key = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
    let command = KvCommand::Delete { key };
    let error = command.validate().unwrap_err();
    assert_eq!(
        error,
        KvError::KeyTooLarge {
            size: KEY_BYTES_MAX + 1,
            limit: KEY_BYTES_MAX
        }
    );
    assert!(error
        .to_string()
        .contains(&format!("{}", KEY_BYTES_MAX + 1)));
    assert!(KvCommand::decode(&command.encode()).is_err());
    let value = Bytes::from(vec![0u8; VALUE_BYTES_MAX + 1]);
    let command = KvCommand::Put { key: b("k"), value };
    assert!(matches!(
        command.validate(),
        Err(KvError::ValueTooLarge { .. })
    ));
    assert!(KvCommand::decode(&command.encode()).is_err());
    // Keys counted across the elements of a batch.
    let half = BATCH_KEYS_MAX / 2 + 1;
    let many = KvCommand::Batch(vec![
        KvCommand::BatchDelete(vec![b("k"); half]),
        KvCommand::BatchDelete(vec![b("k"); half]),
    ]);
    assert_eq!(
        many.validate(),
        Err(KvError::BatchTooLarge {
            size: 2 * half,
            limit: BATCH_KEYS_MAX
        })
    );
    assert!(KvCommand::decode(&many.encode()).is_err());
}

#[test]
fn regions_round_trip_and_check_ranges() {
    let region = Region::new(RegionId(7), b("b"), b("m"), Epoch::new(3, 4)).unwrap();
    assert_eq!(Region::decode(&region.encode()), Ok(region.clone()));
    let whole = Region::whole(RegionId(1), Epoch::default());
    assert_eq!(Region::decode(&whole.encode()), Ok(whole.clone()));
    assert!(region.contains(b"b") && region.contains(b"lzz"));
    assert!(!region.contains(b"a") && !region.contains(b"m"));
    assert!(whole.contains(b"") && whole.contains(&[0xff; 10]));
    assert!(region.contains_range(b"b", b"m"));
    assert!(region.contains_range(b"c", b"d"));
    assert!(!region.contains_range(b"a", b"d"));
    assert!(!region.contains_range(b"c", b"n"));
    assert!(
        !region.contains_range(b"c", b""),
        "unbounded end in a bounded region"
    );
    assert!(whole.contains_range(b"x", b""));
    assert!(Region::new(RegionId(1), b("m"), b("b"), Epoch::default()).is_err());
    assert!(Region::new(RegionId(1), b("m"), b("m"), Epoch::default()).is_err());
    let encoded = region.encode();
    for len in 0..encoded.len() {
        assert!(Region::decode(&encoded[..len]).is_err());
    }
    // Epochs order by configuration version, then version.
    assert!(Epoch::new(1, 9) < Epoch::new(2, 0));
    assert!(Epoch::new(2, 1) < Epoch::new(2, 2));
    assert_eq!(Epoch::new(2, 3).to_string(), "(conf 2, version 3)");
    assert_eq!(RegionId(5).to_string(), "5");
}

/// A command with an empty key (which an older store let into its log) decodes, and
/// validation refuses it as `KeyEmpty`: the state machine answers it as a refused
/// operation, not as a corrupt entry.
#[test]
fn an_empty_key_decodes_and_is_refused_by_validation() {
    let commands = [
        KvCommand::Put {
            key: Bytes::new(),
            value: Bytes::from_static(b"x"),
        },
        KvCommand::Delete { key: Bytes::new() },
        KvCommand::BatchDelete(vec![Bytes::from_static(b"a"), Bytes::new()]),
        KvCommand::Batch(vec![KvCommand::Delete { key: Bytes::new() }]),
    ];
    for command in commands {
        let decoded = KvCommand::decode(&command.encode()).expect("decodes");
        assert_eq!(decoded, command);
        assert_eq!(decoded.validate(), Err(KvError::KeyEmpty));
    }
    // Empty range bounds are "unbounded", not keys.
    let range = KvCommand::DeleteRange {
        start: Bytes::new(),
        end: Bytes::new(),
    };
    assert_eq!(range.validate(), Ok(()));
}

/// Random bytes and randomly damaged encodings never panic a decoder.
#[test]
fn random_input_never_panics() {
    let mut rng = Rng::new(0x5eed);
    let valid: Vec<Bytes> = every_command().iter().map(KvCommand::encode).collect();
    for round in 0..20_000 {
        let input = if round % 2 == 0 {
            let len = rng.below(64) as usize;
            rng.bytes(len)
        } else {
            let mut damaged = valid[rng.below(valid.len() as u64) as usize].to_vec();
            for _ in 0..=rng.below(3) {
                let at = rng.below(damaged.len() as u64) as usize;
                damaged[at] = rng.next() as u8;
            }
            damaged
        };
        if let Ok(command) = KvCommand::decode(&input) {
            // Whatever decodes is valid — but for an empty key, which decodes so that the
            // state machine refuses it as KeyEmpty — and re-encodes to the same bytes.
            assert!(
                matches!(command.validate(), Ok(()) | Err(KvError::KeyEmpty)),
                "{command:?}"
            );
            assert_eq!(command.encode().as_ref(), input.as_slice());
        }
        let _ = KvOutput::decode(&input);
        let _ = Region::decode(&input);
    }
}

/// The prefix the state machine marks unknown outcomes with is `KvError::Unknown`'s, and
/// `completion_error` tells it from a refusal.
#[test]
fn completion_errors_keep_unknown_apart_from_refused() {
    use flotilla_kv::state_machine::{completion_error, UNKNOWN_OUTCOME_PREFIX};
    assert!(KvError::Unknown("x".into())
        .to_string()
        .starts_with(UNKNOWN_OUTCOME_PREFIX));
    assert_eq!(
        completion_error(format!("{UNKNOWN_OUTCOME_PREFIX}disk gone")),
        KvError::Unknown("disk gone".into())
    );
    assert_eq!(
        completion_error("batch too large".into()),
        KvError::Refused("batch too large".into())
    );
    // A key that left its region (a split applied first) keeps the kind a client routes
    // again on.
    assert_eq!(
        completion_error("key \"z\" is outside region 3".into()),
        KvError::Node {
            kind: "KeyOutOfRegion".into(),
            message: "key \"z\" is outside region 3".into()
        }
    );
}
