//! The engine conformance suite, run against both engines: every operation, scans both
//! ways with limits and unbounded ends, delete-range, atomic ordered batches, the meta key
//! space, export/import round trips and imports refusing damaged or out-of-range input
//! without changing the data already there.

use bytes::Bytes;
use flotilla_kv::engine::export::verify_export;
use flotilla_kv::engine::FjallOptions;
use flotilla_kv::limits::{KEY_BYTES_MAX, SCAN_LIMIT_MAX, VALUE_BYTES_MAX};
use flotilla_kv::{FjallEngine, KvEngine, KvError, MemoryEngine, WriteBatch};

use crate::util::{craft_export, TempDir};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
    list.iter().map(|(k, v)| (b(k), b(v))).collect()
}

fn keys(found: &[(Bytes, Bytes)]) -> Vec<String> {
    found
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn fill(engine: &dyn KvEngine, list: &[&str]) {
    let mut batch = WriteBatch::new();
    for key in list {
        batch.put(b(key), b(&format!("v-{key}")));
    }
    engine.write(batch).unwrap();
}

fn everything(engine: &dyn KvEngine) -> Vec<(Bytes, Bytes)> {
    engine.scan(b"", b"", SCAN_LIMIT_MAX, false).unwrap()
}

fn put_get_delete(engine: &dyn KvEngine) {
    assert_eq!(engine.get(b"a").unwrap(), None);
    engine.put(b("a"), b("1")).unwrap();
    assert_eq!(engine.get(b"a").unwrap(), Some(b("1")));
    engine.put(b("a"), b("2")).unwrap();
    assert_eq!(engine.get(b"a").unwrap(), Some(b("2")));
    // An empty value is a value, not an absence.
    engine.put(b("empty"), Bytes::new()).unwrap();
    assert_eq!(engine.get(b"empty").unwrap(), Some(Bytes::new()));
    engine.delete(b("a")).unwrap();
    assert_eq!(engine.get(b"a").unwrap(), None);
    // Deleting an absent key is fine.
    engine.delete(b("never")).unwrap();
    assert_eq!(
        engine.multi_get(&[b("empty"), b("a"), b("x")]).unwrap(),
        vec![Some(Bytes::new()), None, None]
    );
}

fn scans(engine: &dyn KvEngine) {
    fill(engine, &["a", "b", "c", "d", "e"]);
    let forward = |s: &str, e: &str, limit| {
        keys(
            &engine
                .scan(s.as_bytes(), e.as_bytes(), limit, false)
                .unwrap(),
        )
    };
    let reverse = |s: &str, e: &str, limit| {
        keys(
            &engine
                .scan(s.as_bytes(), e.as_bytes(), limit, true)
                .unwrap(),
        )
    };
    assert_eq!(forward("", "", 100), ["a", "b", "c", "d", "e"]);
    assert_eq!(forward("b", "d", 100), ["b", "c"]);
    assert_eq!(forward("b", "", 2), ["b", "c"]);
    assert_eq!(forward("bb", "dd", 100), ["c", "d"]);
    assert_eq!(forward("", "c", 100), ["a", "b"]);
    assert_eq!(forward("c", "c", 100), Vec::<String>::new());
    assert_eq!(forward("a", "z", 0), Vec::<String>::new());
    assert_eq!(reverse("", "", 100), ["e", "d", "c", "b", "a"]);
    assert_eq!(reverse("", "", 2), ["e", "d"]);
    assert_eq!(reverse("b", "d", 100), ["c", "b"]);
    assert_eq!(reverse("", "c", 1), ["b"]);
    assert_eq!(reverse("d", "", 100), ["e", "d"]);
    // Values come with their keys.
    assert_eq!(
        engine.scan(b"c", b"d", 1, false).unwrap(),
        pairs(&[("c", "v-c")])
    );
    // Refusals.
    assert!(matches!(
        engine.scan(b"d", b"b", 10, false),
        Err(KvError::InvalidRange { .. })
    ));
    assert_eq!(
        engine.scan(b"", b"", SCAN_LIMIT_MAX + 1, false),
        Err(KvError::ScanLimitTooLarge {
            size: SCAN_LIMIT_MAX + 1,
            limit: SCAN_LIMIT_MAX
        })
    );
    let size = engine.approximate_size(b"b", b"").unwrap();
    let stored: u64 = engine
        .scan(b"b", b"", 100, false)
        .unwrap()
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    assert_eq!(size.keys, 4);
    assert!(stored > 0);
    assert_eq!(size.bytes, stored);
    assert_eq!(engine.approximate_size(b"", b"c").unwrap().keys, 2);
}

/// Keys-only scans give the keys of `scan`, in its order, with its limits and refusals;
/// both stop at a byte budget (after one pair at least) and say so.
fn keys_only_scans(engine: &dyn KvEngine) {
    fill(engine, &["a", "b", "c", "d", "e"]);
    let key_names = |found: Vec<Bytes>| -> Vec<String> {
        found
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    for (start, end, limit, reverse) in [
        ("", "", 100, false),
        ("b", "d", 100, false),
        ("b", "", 2, false),
        ("", "", 2, true),
        ("b", "d", 100, true),
        ("c", "c", 100, false),
    ] {
        let (s, e) = (start.as_bytes(), end.as_bytes());
        let pairs = engine.scan(s, e, limit, reverse).unwrap();
        let (only, more) = engine.scan_keys(s, e, limit, reverse, usize::MAX).unwrap();
        assert!(!more);
        assert_eq!(
            key_names(only),
            keys(&pairs),
            "{start:?}..{end:?} {limit} {reverse}"
        );
        let (within, more) = engine
            .scan_within(s, e, limit, reverse, usize::MAX)
            .unwrap();
        assert!(!more);
        assert_eq!(within, pairs);
    }
    // Budgets: each pair is 1 + 4 bytes ("a", "v-a"), each key 1.
    let (within, more) = engine.scan_within(b"", b"", 100, false, 10).unwrap();
    assert_eq!(
        (keys(&within), more),
        (vec!["a".to_string(), "b".into()], true)
    );
    let (within, more) = engine.scan_within(b"", b"", 100, true, 1).unwrap();
    assert_eq!(
        (keys(&within), more),
        (vec!["e".to_string()], true),
        "one pair at least"
    );
    let (within, more) = engine.scan_within(b"", b"", 2, false, 10).unwrap();
    assert_eq!(
        (within.len(), more),
        (2, false),
        "the limit, not the budget, stopped it"
    );
    let (only, more) = engine.scan_keys(b"b", b"", 100, false, 3).unwrap();
    assert_eq!(
        (key_names(only), more),
        (vec!["b".to_string(), "c".into(), "d".into()], true)
    );
    assert!(matches!(
        engine.scan_keys(b"d", b"b", 10, false, usize::MAX),
        Err(KvError::InvalidRange { .. })
    ));
    assert!(matches!(
        engine.scan_within(b"", b"", SCAN_LIMIT_MAX + 1, false, usize::MAX),
        Err(KvError::ScanLimitTooLarge { .. })
    ));
}

/// An empty key in a write is refused with `KeyEmpty` before anything is
/// written — fjall asserts on one (a panic of the thread applying the batch).
fn empty_keys_are_refused(engine: &dyn KvEngine) {
    fill(engine, &["a"]);
    assert_eq!(engine.put(Bytes::new(), b("x")), Err(KvError::KeyEmpty));
    assert_eq!(engine.delete(Bytes::new()), Err(KvError::KeyEmpty));
    assert_eq!(
        engine.meta_put(Bytes::new(), b("x")),
        Err(KvError::KeyEmpty)
    );
    let mut batch = WriteBatch::new();
    batch.put(b("b"), b("1"));
    batch.delete(Bytes::new());
    assert_eq!(engine.write(batch), Err(KvError::KeyEmpty));
    assert_eq!(keys(&everything(engine)), ["a"]);
    // An empty range bound is "unbounded", not a key: still fine.
    engine.delete_range(Bytes::new(), Bytes::new()).unwrap();
    assert!(everything(engine).is_empty());
    assert_eq!(engine.get(b"").unwrap(), None);
}

fn delete_range(engine: &dyn KvEngine) {
    fill(engine, &["a", "b", "c", "d", "e"]);
    engine.delete_range(b("b"), b("d")).unwrap();
    assert_eq!(keys(&everything(engine)), ["a", "d", "e"]);
    engine.delete_range(b("d"), Bytes::new()).unwrap();
    assert_eq!(keys(&everything(engine)), ["a"]);
    // An empty range removes nothing.
    engine.delete_range(b("a"), b("a")).unwrap();
    assert_eq!(keys(&everything(engine)), ["a"]);
    assert!(matches!(
        engine.delete_range(b("z"), b("a")),
        Err(KvError::InvalidRange { .. })
    ));
}

fn batches_apply_in_order(engine: &dyn KvEngine) {
    fill(engine, &["a", "b", "c", "d"]);
    let mut batch = WriteBatch::new();
    batch.put(b("b"), b("first"));
    batch.delete_range(b("a"), b("c")); // removes a and the b just put
    batch.put(b("b"), b("after-range")); // survives the earlier range delete
    batch.put(b("x"), b("1"));
    batch.delete(b("x")); // a later delete wins
    batch.put(b("y"), b("1"));
    batch.put(b("y"), b("2")); // the last put wins
    batch.meta_put(b("m"), b("meta"));
    engine.write(batch).unwrap();
    assert_eq!(
        everything(engine),
        pairs(&[("b", "after-range"), ("c", "v-c"), ("d", "v-d"), ("y", "2")])
    );
    assert_eq!(engine.meta_get(b"m").unwrap(), Some(b("meta")));
    // A batch with one bad operation writes nothing.
    let mut bad = WriteBatch::new();
    bad.put(b("z"), b("1"));
    bad.put(Bytes::from(vec![0u8; KEY_BYTES_MAX + 1]), b("v"));
    assert_eq!(
        engine.write(bad),
        Err(KvError::KeyTooLarge {
            size: KEY_BYTES_MAX + 1,
            limit: KEY_BYTES_MAX
        })
    );
    let mut bad = WriteBatch::new();
    bad.put(b("z"), Bytes::from(vec![0u8; VALUE_BYTES_MAX + 1]));
    assert!(matches!(
        engine.write(bad),
        Err(KvError::ValueTooLarge { .. })
    ));
    assert_eq!(engine.get(b"z").unwrap(), None);
}

fn meta_space_is_separate(engine: &dyn KvEngine) {
    engine.put(b("k"), b("data")).unwrap();
    engine.meta_put(b("k"), b("meta")).unwrap();
    engine.meta_put(b("region/1"), b("r1")).unwrap();
    engine.meta_put(b("region/2"), b("r2")).unwrap();
    assert_eq!(engine.get(b"k").unwrap(), Some(b("data")));
    assert_eq!(engine.meta_get(b"k").unwrap(), Some(b("meta")));
    assert_eq!(keys(&everything(engine)), ["k"]);
    assert_eq!(
        keys(&engine.meta_scan(b"region/", b"region0", 10).unwrap()),
        ["region/1", "region/2"]
    );
    // Data deletes and exports never touch meta keys.
    engine.delete_range(Bytes::new(), Bytes::new()).unwrap();
    assert_eq!(engine.meta_get(b"k").unwrap(), Some(b("meta")));
    engine.meta_delete(b("k")).unwrap();
    assert_eq!(engine.meta_get(b"k").unwrap(), None);
    engine.flush().unwrap();
}

fn export(engine: &dyn KvEngine, start: &str, end: &str) -> Vec<u8> {
    let mut out = Vec::new();
    engine
        .export_range(start.as_bytes(), end.as_bytes(), &mut out)
        .unwrap();
    out
}

/// Exports `[b, e)` from a source and imports it into a target holding other data in the
/// same range (replaced) and outside it (untouched).
fn export_import_round_trip(source: &dyn KvEngine, target: &dyn KvEngine) {
    fill(source, &["a", "b", "c", "d", "e"]);
    source.put(b("c"), Bytes::from(vec![7u8; 100_000])).unwrap();
    let file = export(source, "b", "e");
    assert_eq!(verify_export(&mut file.as_slice(), b"b", b"e"), Ok(3));
    fill(target, &["a", "bb", "c", "zz"]);
    target.put(b("c"), b("old")).unwrap();
    let count = target
        .import_range(b"b", b"e", &mut file.as_slice())
        .unwrap();
    assert_eq!(count, 3);
    assert_eq!(keys(&everything(target)), ["a", "b", "c", "d", "zz"]);
    assert_eq!(target.get(b"c").unwrap(), source.get(b"c").unwrap());
    assert_eq!(target.get(b"a").unwrap(), Some(b("v-a")));
    // Unbounded ends and an empty range export and import too.
    let all = export(source, "", "");
    target.import_range(b"", b"", &mut all.as_slice()).unwrap();
    assert_eq!(everything(target), everything(source));
    let empty = export(source, "x", "y");
    assert_eq!(
        target.import_range(b"x", b"y", &mut empty.as_slice()),
        Ok(0)
    );
    // The engine writes exactly the documented format.
    let small = export(source, "a", "b");
    assert_eq!(small, craft_export(b"a", b"b", &[(b"a", b"v-a")]));
}

/// Every damaged import is refused and leaves the target as it was.
fn import_refuses_damage(engine: &dyn KvEngine) {
    let file = craft_export(b"b", b"e", &[(b"b", b"1"), (b"c", b"2"), (b"d", b"3")]);
    fill(engine, &["a", "b", "bb", "f"]);
    let before = everything(engine);
    let refuse = |input: &[u8], what: &str| {
        let result = engine.import_range(b"b", b"e", &mut &input[..]);
        assert!(result.is_err(), "{what}: import accepted: {result:?}");
        assert_eq!(everything(engine), before, "{what}: data changed");
    };
    for at in 0..file.len() {
        let mut flipped = file.clone();
        flipped[at] ^= 0x01;
        refuse(&flipped, &format!("bit flipped at byte {at}"));
    }
    for len in 0..file.len() {
        refuse(&file[..len], &format!("truncated to {len} bytes"));
    }
    let mut trailing = file.clone();
    trailing.push(0);
    refuse(&trailing, "a trailing byte");
    // A key outside the range, with valid checksums.
    let outside = craft_export(b"b", b"e", &[(b"b", b"1"), (b"q", b"2")]);
    let result = engine.import_range(b"b", b"e", &mut outside.as_slice());
    assert!(
        matches!(&result, Err(KvError::KeyOutOfRegion { key, .. }) if key == "q"),
        "{result:?}"
    );
    assert_eq!(everything(engine), before);
    // Keys out of order, duplicated, a header for another range.
    refuse(
        &craft_export(b"b", b"e", &[(b"c", b"1"), (b"b", b"2")]),
        "keys out of order",
    );
    refuse(
        &craft_export(b"b", b"e", &[(b"c", b"1"), (b"c", b"2")]),
        "a duplicated key",
    );
    refuse(&craft_export(b"b", b"f", &[(b"c", b"1")]), "another range");
    // The intact file imports.
    assert_eq!(engine.import_range(b"b", b"e", &mut file.as_slice()), Ok(3));
    assert_eq!(keys(&everything(engine)), ["a", "b", "c", "d", "f"]);
}

/// The middle key by size: half the bytes before it, never the range's first key, none
/// for fewer than two keys; ranges bound it.
fn middle_keys(engine: &dyn KvEngine) {
    assert_eq!(engine.middle_key(b"", b"").unwrap(), None, "empty");
    engine.put(b("k00"), b("x")).unwrap();
    assert_eq!(engine.middle_key(b"", b"").unwrap(), None, "one key");
    for i in 1..10 {
        engine.put(b(&format!("k{i:02}")), b("x")).unwrap();
    }
    // Ten pairs of 4 bytes: the fifth key brings the total to half.
    assert_eq!(engine.middle_key(b"", b"").unwrap(), Some(b("k04")));
    assert_eq!(engine.middle_key(b"k05", b"").unwrap(), Some(b("k07")));
    assert_eq!(engine.middle_key(b"k05", b"k07").unwrap(), Some(b("k06")));
    // One heavy pair at the front: never the first key.
    engine.put(b("k00"), Bytes::from(vec![0u8; 1000])).unwrap();
    assert_eq!(engine.middle_key(b"", b"").unwrap(), Some(b("k01")));
    // One heavy pair at the back: the split leaves it on its own.
    engine.put(b("k00"), b("x")).unwrap();
    engine.put(b("k09"), Bytes::from(vec![0u8; 1000])).unwrap();
    assert_eq!(engine.middle_key(b"", b"").unwrap(), Some(b("k09")));
    assert!(engine.middle_key(b"z", b"a").is_err(), "an inverted range");
}

fn memory() -> MemoryEngine {
    MemoryEngine::new()
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory_engine {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::memory());
                }
            )*

            #[test]
            fn export_import_round_trip() {
                super::export_import_round_trip(&super::memory(), &super::memory());
            }
        }

        mod fjall_engine {
            use flotilla_kv::FjallEngine;

            use crate::util::TempDir;

            $(
                #[test]
                fn $name() {
                    let dir = TempDir::new(stringify!($name));
                    super::$name(&FjallEngine::open(dir.path()).unwrap());
                }
            )*

            #[test]
            fn export_import_round_trip() {
                let dir = TempDir::new("round-trip");
                let source = FjallEngine::open(dir.path().join("source")).unwrap();
                let target = FjallEngine::open(dir.path().join("target")).unwrap();
                super::export_import_round_trip(&source, &target);
                // And across engine kinds.
                super::export_import_round_trip(&super::memory(), &FjallEngine::open(dir.path().join("third")).unwrap());
            }
        }
    };
}

conformance!(
    put_get_delete,
    scans,
    keys_only_scans,
    empty_keys_are_refused,
    delete_range,
    batches_apply_in_order,
    meta_space_is_separate,
    import_refuses_damage,
    middle_keys,
);

/// fjall keeps its data across a reopen.
#[test]
fn fjall_reopens_with_its_data() {
    let dir = TempDir::new("reopen");
    {
        let engine = FjallEngine::open(dir.path()).unwrap();
        fill(&engine, &["a", "b"]);
        engine.meta_put(b("m"), b("1")).unwrap();
        engine.delete(b("a")).unwrap();
    }
    let engine = FjallEngine::open(dir.path()).unwrap();
    assert_eq!(everything(&engine), pairs(&[("b", "v-b")]));
    assert_eq!(engine.meta_get(b"m").unwrap(), Some(b("1")));
}

/// An import larger than the staging limit is committed in chunks: it still replaces the
/// range, and damage found after the first chunk is reported as an inconsistent range.
#[test]
fn fjall_chunked_import() {
    let dir = TempDir::new("chunked");
    let options = FjallOptions {
        import_stage_bytes_max: 64,
        ..FjallOptions::default()
    };
    let engine = FjallEngine::open_with(dir.path(), options).unwrap();
    let source = MemoryEngine::new();
    let names: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    fill(&source, &names);
    fill(&engine, &["k000x", "k999", "z"]);
    let file = export(&source, "k", "l");
    assert_eq!(
        engine.import_range(b"k", b"l", &mut file.as_slice()),
        Ok(100)
    );
    let mut expected = everything(&source);
    expected.push((b("z"), b("v-z")));
    assert_eq!(everything(&engine), expected);
    // Damage near the end: detected after chunks were committed.
    let mut damaged = file.clone();
    let at = damaged.len() - 20;
    damaged[at] ^= 0xff;
    let result = engine.import_range(b"k", b"l", &mut damaged.as_slice());
    assert!(
        matches!(result, Err(KvError::RangeInconsistent { .. })),
        "{result:?}"
    );
    // Damage in the first chunk is found before anything is written.
    let mut early = file.clone();
    early[40] ^= 0xff;
    engine
        .import_range(b"k", b"l", &mut file.as_slice())
        .unwrap();
    let result = engine.import_range(b"k", b"l", &mut early.as_slice());
    assert!(matches!(result, Err(KvError::Corrupt(_))), "{result:?}");
    assert_eq!(everything(&engine), expected);
}
