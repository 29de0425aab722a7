//! The command line: a non-UTF-8 argument is a usage error naming its position
//! for every subcommand (it was a panic, exit 101), and `kv --encoding base64` writes and
//! reads binary keys and values exactly, through a real three-store cluster.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::support::*;

/// Nothing listens here: commands that must fail before contacting anyone use it.
const NOWHERE: &str = "127.0.0.1:1";

/// `k`, then 0xff 0xfe: not UTF-8.
fn not_utf8() -> OsString {
    OsStr::from_bytes(&[b'k', 0xff, 0xfe]).to_os_string()
}

fn run_os(args: &[OsString]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run flotilla")
}

/// `args` with `"BAD"` replaced by a non-UTF-8 argument.
fn with_bad(args: &[&str]) -> Vec<OsString> {
    args.iter()
        .map(|a| {
            if *a == "BAD" {
                not_utf8()
            } else {
                OsString::from(a)
            }
        })
        .collect()
}

/// The RFC 4648 standard alphabet with padding, written out here so the test checks the
/// binary's codec against an independent one.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_test_encoder_matches_rfc_4648() {
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"f"), "Zg==");
    assert_eq!(b64(b"fo"), "Zm8=");
    assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64(&[0xfb, 0xff]), "+/8=");
}

#[test]
fn a_non_utf8_argument_is_a_usage_error_for_every_subcommand() {
    // (arguments, position of the bad one: 1 is the first after `flotilla`)
    let cases: &[(&[&str], usize)] = &[
        (&["kv", "--endpoints", NOWHERE, "put", "BAD", "v"], 5),
        (&["kv", "--endpoints", NOWHERE, "put", "k", "BAD"], 6),
        (&["kv", "--endpoints", NOWHERE, "get", "BAD"], 5),
        (&["kv", "--endpoints", NOWHERE, "scan", "", "BAD"], 6),
        (&["admin", "--endpoints", "BAD", "status"], 3),
        (&["admin", "--endpoints", NOWHERE, "status", "BAD"], 5),
        (&["server", "--addr", "127.0.0.1:0", "--data-dir", "BAD"], 5),
        (&["server", "--peers", "BAD"], 3),
        (&["bench", "--endpoints", "BAD"], 3),
        (&["demo", "--engine", "BAD"], 3),
        (&["BAD"], 1),
    ];
    for (args, position) in cases {
        let output = run_os(&with_bad(args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "argument {position} (\"k\\xFF\\xFE\") is not valid UTF-8"
            )),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("--encoding base64"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }

    // With --json: the one JSON object of the contract, on stdout.
    let output = run_os(&with_bad(&[
        "kv",
        "--endpoints",
        NOWHERE,
        "--json",
        "get",
        "BAD",
    ]));
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(answer["ok"], json!(false), "{answer}");
    assert_eq!(answer["error"], json!("Usage"), "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("argument 6") && m.contains("not valid UTF-8")),
        "{answer}"
    );
}

#[test]
fn a_bad_base64_argument_is_a_usage_error_naming_it() {
    let cases: &[(&[&str], &str)] = &[
        (&["put", "not base64!", "eA=="], "KEY \"not base64!\""),
        (&["put", "eA==", "eA"], "VALUE \"eA\""),
        (&["get", "eA="], "KEY \"eA=\""),
        (&["delete", "_-8="], "KEY \"_-8=\""),
        (&["cas", "eA==", "eA==", "Zh=="], "NEW \"Zh==\""),
        (&["cas", "eA==", "%", "eA=="], "EXPECTED \"%\""),
        (&["put-if-absent", "eA==", "e A="], "VALUE \"e A=\""),
        (&["scan", "AA==", "AA"], "END \"AA\""),
        (&["scan", "AA", ""], "START \"AA\""),
    ];
    for (op, named) in cases {
        let mut args = vec!["--encoding", "base64"];
        args.extend_from_slice(op);
        let (code, answer) = kv(NOWHERE, &args);
        assert_eq!(code, 2, "{op:?}: {answer}");
        assert_eq!(answer["error"], json!("Usage"), "{op:?}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{named} is not valid base64")),
            "{op:?}: {answer}"
        );
    }

    // Without --json: the message on stderr, nothing on stdout.
    let output = run(&[
        "kv",
        "--endpoints",
        NOWHERE,
        "get",
        "--encoding",
        "base64",
        "eA=",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("KEY \"eA=\" is not valid base64"),
        "{stderr}"
    );

    // An unknown encoding is refused by name.
    let (code, answer) = kv(NOWHERE, &["--encoding", "hex", "get", "k"]);
    assert_eq!((code, &answer["error"]), (2, &json!("Usage")), "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("hex"),
        "{answer}"
    );
}

#[test]
fn base64_writes_and_reads_binary_keys_and_values_exactly() {
    // Two regions (split at 0x80): the keys below live in both.
    let cluster = three_nodes("cli-base64", 2);
    let e = cluster.endpoints.as_str();
    let b = |op: &[&str]| {
        let mut args = vec!["--encoding", "base64"];
        args.extend_from_slice(op);
        kv(e, &args)
    };
    // 0x00, 0xff and invalid UTF-8 (0xc3 0x28; 0xed 0xa0 0x80, a surrogate).
    let k1: &[u8] = &[0x00, 0xff, 0xc3, 0x28, b'k'];
    let v1: &[u8] = &[0xff, 0x00, 0xfe, 0x80, 0x00, b'v'];
    let k2: &[u8] = &[0xff, 0x00, 0xed, 0xa0, 0x80];
    let v2: &[u8] = &[0x00];
    let k3: &[u8] = &[0x00, 0xff, 0xc3]; // a prefix of k1: sorts before it
    let v3: &[u8] = &[0xc0, 0xff];
    for (k, v) in [(k1, v1), (k2, v2), (k3, v3)] {
        assert_eq!(b(&["put", &b64(k), &b64(v)]), (0, json!({"ok": true})));
    }

    // Exact bytes back from get, in --json and in text.
    assert_eq!(
        b(&["get", &b64(k1)]),
        (0, json!({"ok": true, "value": b64(v1)}))
    );
    let output = run(&[
        "kv",
        "--endpoints",
        e,
        "--encoding",
        "base64",
        "get",
        &b64(k2),
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), b64(v2) + "\n");

    // Scan: keys and values exact, in byte order, bounds decoded, both directions.
    let all = json!([
        {"key": b64(k3), "value": b64(v3)},
        {"key": b64(k1), "value": b64(v1)},
        {"key": b64(k2), "value": b64(v2)},
    ]);
    assert_eq!(
        b(&["scan", &b64(&[0x00]), ""]),
        (0, json!({"ok": true, "entries": all}))
    );
    let mut reversed = all.as_array().cloned().unwrap_or_default();
    reversed.reverse();
    assert_eq!(
        b(&["scan", &b64(&[0x00]), "", "--reverse"]),
        (0, json!({"ok": true, "entries": reversed}))
    );
    // [k3, k1): k1 is the exclusive end.
    assert_eq!(
        b(&["scan", &b64(k3), &b64(k1)]),
        (
            0,
            json!({"ok": true, "entries": [{"key": b64(k3), "value": b64(v3)}]})
        )
    );
    let output = run(&[
        "kv",
        "--endpoints",
        e,
        "--encoding",
        "base64",
        "scan",
        &b64(&[0xff]),
        "",
    ]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}\t{}\n", b64(k2), b64(v2))
    );

    // The conditional writes take and give base64 too.
    assert_eq!(
        b(&["cas", &b64(k2), &b64(v2), &b64(v1)]),
        (0, json!({"ok": true, "swapped": true}))
    );
    assert_eq!(
        b(&["put-if-absent", &b64(k2), &b64(v3)]),
        (
            0,
            json!({"ok": true, "swapped": false, "previous": b64(v1)})
        )
    );

    // Without --encoding nothing changed: text, with invalid bytes shown as U+FFFD (which
    // is why exact bytes need base64); a key written as text reads back as its bytes.
    assert_eq!(kv(e, &["put", "plain", "text"]), (0, json!({"ok": true})));
    assert_eq!(
        b(&["get", &b64(b"plain")]),
        (0, json!({"ok": true, "value": b64(b"text")}))
    );
    let (code, lossy) = kv(e, &["scan", "", ""]);
    assert_eq!(code, 0, "{lossy}");
    assert_eq!(
        lossy["entries"][0]["key"],
        json!(String::from_utf8_lossy(k3)),
        "{lossy}"
    );
    assert!(lossy.to_string().contains('\u{fffd}'), "{lossy}");

    // A bad argument writes nothing.
    let (code, refused) = b(&["put", &b64(k1), "AP8"]);
    assert_eq!((code, &refused["error"]), (2, &json!("Usage")), "{refused}");
    assert_eq!(
        b(&["get", &b64(k1)]),
        (0, json!({"ok": true, "value": b64(v1)}))
    );

    // Delete by a binary key.
    assert_eq!(b(&["delete", &b64(k1)]), (0, json!({"ok": true})));
    assert_eq!(
        b(&["get", &b64(k1)]),
        (0, json!({"ok": true, "value": null}))
    );
}
