//! `flotilla kv`: one read or write through the routing client.
//!
//! Keys, values and range bounds are arguments in the `--encoding` (UTF-8 text, or base64
//! for exact bytes), decoded and checked against the KV limits before anyone is contacted;
//! the output shows them in the same encoding.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use flotilla_kv::client::{ClientOptions, KvClient, ReadConsistency};
use flotilla_kv::limits;
use serde_json::Value;

use crate::config::{self, FileConfig};
use crate::output::{success, Encoding, Failure, EXIT_OK};

/// Flags shared by `kv` and `admin`.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Stores to reach the cluster through (any of them; HOST:PORT,...).
    #[arg(long, value_name = "A,B,C", value_delimiter = ',', global = true)]
    pub endpoints: Option<Vec<String>>,
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Longest the operation may take, retries included [default: 5000].
    #[arg(long, value_name = "MS", global = true)]
    pub timeout_ms: Option<u64>,
    /// CA certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM).
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,
}

/// The client settings `ClientArgs` and the config file give.
pub struct ClientSettings {
    pub endpoints: Vec<String>,
    pub json: bool,
    pub options: ClientOptions,
}

impl ClientArgs {
    pub fn settings(self, file: &FileConfig) -> Result<ClientSettings, Failure> {
        let json = self.json || file.json.unwrap_or(false);
        let endpoints = config::list(
            self.endpoints
                .or_else(|| file.endpoints.clone())
                .ok_or_else(|| Failure::usage("missing --endpoints HOST:PORT,..."))?,
        );
        if endpoints.is_empty() {
            return Err(Failure::usage("--endpoints is empty"));
        }
        let timeout_ms = self.timeout_ms.or(file.timeout_ms).unwrap_or(5000);
        if timeout_ms == 0 {
            return Err(Failure::usage("--timeout-ms must be at least 1"));
        }
        let tls = config::tls(
            self.tls_ca.or_else(|| file.tls_ca.clone()),
            self.tls_cert.or_else(|| file.tls_cert.clone()),
            self.tls_key.or_else(|| file.tls_key.clone()),
        )
        .map_err(Failure::usage)?;
        let options = ClientOptions {
            timeout: Duration::from_millis(timeout_ms),
            connect_timeout: Duration::from_millis(timeout_ms.min(1000)),
            // One command, one operation: nothing to batch.
            batching: false,
            tls,
            ..ClientOptions::default()
        };
        Ok(ClientSettings {
            endpoints,
            json,
            options,
        })
    }
}

/// `flotilla kv` flags.
#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How keys, values and range bounds are written in arguments and shown in the output:
    /// utf8 (output shows invalid UTF-8 as U+FFFD, so not always the stored bytes) or
    /// base64 (standard alphabet with padding, both ways: exact bytes) [default: utf8].
    // An Option, as every flag a config file may also set: the flag wins over the file's
    // `encoding` key, then the default.
    #[arg(long, value_enum, global = true)]
    pub encoding: Option<Encoding>,
    #[command(subcommand)]
    pub op: KvOp,
}

/// One KV operation, as given on the command line.
#[derive(Subcommand, Debug)]
pub enum KvOp {
    /// Prints the value of KEY.
    Get {
        key: String,
        /// index (ReadIndex on the leader), lease (the leader's lease) or follower (any
        /// replica, after a ReadIndex): all linearizable.
        #[arg(long, default_value = "index")]
        read: String,
    },
    /// Sets KEY to VALUE (fenced, with --fence-lock and --fence-token: refused once the
    /// region holding KEY accepted a write fenced by a higher token of that lock).
    Put {
        key: String,
        value: String,
        /// The lock whose token fences this write (`flotilla lock acquire`).
        #[arg(long, value_name = "NAME", requires = "fence_token")]
        fence_lock: Option<String>,
        /// The writer's token of --fence-lock.
        #[arg(long, value_name = "N", requires = "fence_lock")]
        fence_token: Option<u64>,
        /// The lease KEY follows (`flotilla lease grant`): its end deletes KEY.
        #[arg(long, value_name = "ID", conflicts_with = "fence_lock")]
        lease: Option<u64>,
    },
    /// Removes KEY.
    Delete { key: String },
    /// Sets KEY to NEW if it holds EXPECTED.
    Cas {
        key: String,
        expected: String,
        new: String,
    },
    /// Sets KEY to VALUE if KEY is absent.
    PutIfAbsent { key: String, value: String },
    /// Lists the pairs of [START, END) (an empty END: to the last key).
    Scan {
        start: String,
        end: String,
        /// Most pairs printed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// From END down to START.
        #[arg(long)]
        reverse: bool,
        /// index, lease or follower.
        #[arg(long, default_value = "index")]
        read: String,
    },
    /// Streams the changes to the keys starting with PREFIX (empty: every key), one JSON
    /// object per line per event: {"type":"put"|"delete","key","value","token"}. Runs
    /// until Ctrl-C or --until-ms (exit 0); a fatal error prints a last line
    /// {"ok":false,"error","message","resume_from":TOKEN|null} (exit 1).
    Watch {
        prefix: String,
        /// Resume right after the event that carried TOKEN.
        #[arg(long, value_name = "TOKEN")]
        from: Option<String>,
        /// Stop after N ms.
        #[arg(long, value_name = "N")]
        until_ms: Option<u64>,
    },
    /// Sequences named by keys (a key space of their own: `get KEY` does not see them):
    /// `next KEY [--step N]`, `latest KEY`, `reset KEY`.
    #[command(subcommand)]
    Seq(SeqOp),
}

/// `flotilla kv seq`.
#[derive(Subcommand, Debug)]
pub enum SeqOp {
    /// Hands out the next N values of the sequence KEY: prints [start, end), never handed
    /// out before (also across failovers).
    Next {
        key: String,
        /// How many values (1 to 2^32).
        #[arg(long, default_value_t = 1)]
        step: u64,
    },
    /// Prints the value the sequence KEY hands out next (0 for a new one).
    Latest { key: String },
    /// Resets the sequence KEY to 0.
    Reset { key: String },
}

/// One KV operation with its keys, values and bounds decoded (`--encoding`) and checked
/// against the limits: what is sent.
#[derive(Debug, PartialEq)]
enum Request {
    Get {
        key: Bytes,
        read: ReadConsistency,
    },
    Put {
        key: Bytes,
        value: Bytes,
        fence: Option<(Bytes, u64)>,
        lease: Option<u64>,
    },
    Delete {
        key: Bytes,
    },
    Cas {
        key: Bytes,
        expected: Bytes,
        new: Bytes,
    },
    PutIfAbsent {
        key: Bytes,
        value: Bytes,
    },
    Scan {
        start: Bytes,
        end: Bytes,
        limit: usize,
        reverse: bool,
        read: ReadConsistency,
    },
    SequenceNext {
        key: Bytes,
        step: u64,
    },
    SequenceLatest {
        key: Bytes,
    },
    SequenceReset {
        key: Bytes,
    },
}

/// A key argument (`what` names it in errors: KEY, START, END), decoded and checked.
fn key(encoding: Encoding, what: &str, argument: &str) -> Result<Bytes, Failure> {
    let key = encoding.decode(what, argument)?;
    limits::check_key(&key)
        .map_err(|e| Failure::failed("KeyTooLarge", format!("{}: {e}", what.to_lowercase())))?;
    Ok(key)
}

/// A value argument (VALUE, EXPECTED, NEW), decoded and checked.
fn value(encoding: Encoding, what: &str, argument: &str) -> Result<Bytes, Failure> {
    let value = encoding.decode(what, argument)?;
    limits::check_value(&value)
        .map_err(|e| Failure::failed("ValueTooLarge", format!("value: {e}")))?;
    Ok(value)
}

fn read(read: &str) -> Result<ReadConsistency, Failure> {
    read.parse::<ReadConsistency>().map_err(Failure::usage)
}

/// Decodes and checks what can be checked before contacting anyone (nothing is sent on
/// failure).
fn prepare(op: KvOp, encoding: Encoding) -> Result<Request, Failure> {
    let e = encoding;
    Ok(match op {
        KvOp::Get { key: k, read: r } => Request::Get {
            key: key(e, "KEY", &k)?,
            read: read(&r)?,
        },
        KvOp::Put {
            key: k,
            value: v,
            fence_lock,
            fence_token,
            lease,
        } => Request::Put {
            key: key(e, "KEY", &k)?,
            value: value(e, "VALUE", &v)?,
            fence: match (fence_lock, fence_token) {
                (Some(lock), Some(token)) => Some((key(e, "--fence-lock", &lock)?, token)),
                _ => None,
            },
            lease: match lease {
                Some(0) => return Err(Failure::usage("--lease 0: lease ids start at 1")),
                other => other,
            },
        },
        KvOp::PutIfAbsent { key: k, value: v } => Request::PutIfAbsent {
            key: key(e, "KEY", &k)?,
            value: value(e, "VALUE", &v)?,
        },
        KvOp::Delete { key: k } => Request::Delete {
            key: key(e, "KEY", &k)?,
        },
        KvOp::Cas {
            key: k,
            expected,
            new,
        } => Request::Cas {
            key: key(e, "KEY", &k)?,
            expected: value(e, "EXPECTED", &expected)?,
            new: value(e, "NEW", &new)?,
        },
        KvOp::Scan {
            start: start_argument,
            end: end_argument,
            limit,
            reverse,
            read: r,
        } => {
            let start = key(e, "START", &start_argument)?;
            let end = key(e, "END", &end_argument)?;
            // Bytes compare as the store orders keys (unsigned, lexicographic).
            if !end.is_empty() && start > end {
                return Err(Failure::failed(
                    "InvalidRange",
                    format!("scan start {start_argument:?} is after end {end_argument:?}"),
                ));
            }
            limits::check_scan_limit(limit)
                .map_err(|e| Failure::failed("ScanLimitTooLarge", e.to_string()))?;
            Request::Scan {
                start,
                end,
                limit,
                reverse,
                read: read(&r)?,
            }
        }
        KvOp::Seq(SeqOp::Next { key: k, step }) => {
            if step == 0 || step > flotilla_kv::command::SEQUENCE_STEP_MAX {
                return Err(Failure::usage(format!(
                    "--step {step}: must be 1 to {}",
                    flotilla_kv::command::SEQUENCE_STEP_MAX
                )));
            }
            Request::SequenceNext {
                key: key(e, "KEY", &k)?,
                step,
            }
        }
        KvOp::Watch { .. } => {
            return Err(Failure::usage(
                "a watch is a stream: `flotilla kv watch PREFIX`",
            ))
        }
        KvOp::Seq(SeqOp::Latest { key: k }) => Request::SequenceLatest {
            key: key(e, "KEY", &k)?,
        },
        KvOp::Seq(SeqOp::Reset { key: k }) => Request::SequenceReset {
            key: key(e, "KEY", &k)?,
        },
    })
}

/// Runs the operation; returns the exit code.
pub fn run(args: KvArgs, file: &FileConfig) -> i32 {
    let json_flag = args.client.json || file.json.unwrap_or(false);
    let settings = match args.client.settings(file) {
        Ok(settings) => settings,
        Err(failure) => return failure.report("kv", json_flag),
    };
    let encoding = args.encoding.or(file.encoding).unwrap_or_default();
    if let KvOp::Watch {
        prefix,
        from,
        until_ms,
    } = args.op
    {
        let client = (settings.endpoints, settings.options, settings.json);
        return crate::watch::run(client, encoding, &prefix, from, until_ms);
    }
    let request = match prepare(args.op, encoding) {
        Ok(request) => request,
        Err(failure) => return failure.report("kv", settings.json),
    };
    let runtime = match crate::output::client_runtime() {
        Ok(runtime) => runtime,
        Err(failure) => return failure.report("kv", settings.json),
    };
    let json = settings.json;
    match runtime.block_on(execute(settings, request, encoding)) {
        Ok((value, human)) => {
            if json {
                println!("{value}");
            } else if let Some(human) = human {
                println!("{human}");
            }
            EXIT_OK
        }
        Err(failure) => failure.report("kv", json),
    }
}

/// Sends the request; returns the `--json` object and the text to print without `--json`.
/// Keys and values in both are shown in `encoding`.
async fn execute(
    settings: ClientSettings,
    request: Request,
    encoding: Encoding,
) -> Result<(Value, Option<String>), Failure> {
    let client = KvClient::connect(settings.endpoints, settings.options).await?;
    let shown = |bytes: Option<&Bytes>| bytes.map_or(Value::Null, |b| encoding.json(b));
    Ok(match request {
        Request::Get { key, read } => {
            let value = client.get(key, read).await?;
            let human = match &value {
                Some(v) => encoding.show(v),
                None => {
                    eprintln!("(not found)");
                    return Ok((success(vec![("value", Value::Null)]), None));
                }
            };
            (success(vec![("value", shown(value.as_ref()))]), Some(human))
        }
        Request::Put {
            key,
            value,
            fence,
            lease,
        } => {
            match (fence, lease) {
                (Some((lock, token)), _) => client.put_fenced(key, value, lock, token).await?,
                (None, Some(lease)) => client.put_with_lease(key, value, lease).await?,
                (None, None) => client.put(key, value).await?,
            }
            (success(vec![]), Some("OK".into()))
        }
        Request::Delete { key } => {
            client.delete(key).await?;
            (success(vec![]), Some("OK".into()))
        }
        Request::SequenceNext { key, step } => {
            let (start, end) = client.sequence_next(key, step).await?;
            (
                success(vec![
                    ("start", Value::from(start)),
                    ("end", Value::from(end)),
                ]),
                Some(format!("[{start}, {end})")),
            )
        }
        Request::SequenceLatest { key } => {
            let next = client.sequence_latest(key).await?;
            (
                success(vec![("value", Value::from(next))]),
                Some(next.to_string()),
            )
        }
        Request::SequenceReset { key } => {
            client.sequence_reset(key).await?;
            (success(vec![]), Some("OK".into()))
        }
        Request::Cas { key, expected, new } => {
            let swapped = client.compare_and_put(key, Some(expected), new).await?;
            (
                success(vec![("swapped", Value::Bool(swapped))]),
                Some(if swapped { "swapped" } else { "not swapped" }.into()),
            )
        }
        Request::PutIfAbsent { key, value } => {
            let previous = client.put_if_absent(key, value).await?;
            let swapped = previous.is_none();
            (
                success(vec![
                    ("swapped", Value::Bool(swapped)),
                    ("previous", shown(previous.as_ref())),
                ]),
                Some(
                    if swapped {
                        "swapped"
                    } else {
                        "not swapped (key present)"
                    }
                    .into(),
                ),
            )
        }
        Request::Scan {
            start,
            end,
            limit,
            reverse,
            read,
        } => {
            let entries = client.scan(start, end, limit, reverse, read).await?;
            let human = entries
                .iter()
                .map(|(k, v)| format!("{}\t{}", encoding.show(k), encoding.show(v)))
                .collect::<Vec<_>>()
                .join("\n");
            let list: Vec<Value> = entries
                .iter()
                .map(|(k, v)| serde_json::json!({"key": encoding.json(k), "value": encoding.json(v)}))
                .collect();
            (
                success(vec![("entries", Value::Array(list))]),
                (!human.is_empty()).then_some(human),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(start: &str, end: &str) -> KvOp {
        KvOp::Scan {
            start: start.into(),
            end: end.into(),
            limit: 10,
            reverse: false,
            read: "index".into(),
        }
    }

    #[test]
    fn base64_arguments_become_their_exact_bytes() {
        let put = KvOp::Put {
            key: "AP/DKA==".into(),
            value: "/wD+".into(),
            fence_lock: None,
            fence_token: None,
            lease: None,
        };
        assert_eq!(
            prepare(put, Encoding::Base64).unwrap(),
            Request::Put {
                key: Bytes::from_static(&[0x00, 0xff, 0xc3, 0x28]),
                value: Bytes::from_static(&[0xff, 0x00, 0xfe]),
                fence: None,
                lease: None,
            }
        );
        // The same argument under utf8 is its text.
        let get = KvOp::Get {
            key: "AP/DKA==".into(),
            read: "lease".into(),
        };
        assert_eq!(
            prepare(get, Encoding::Utf8).unwrap(),
            Request::Get {
                key: Bytes::from_static(b"AP/DKA=="),
                read: ReadConsistency::Lease,
            }
        );
    }

    #[test]
    fn scan_bounds_are_decoded_and_compared_as_bytes() {
        // "/w==" is 0xff, "AA==" is 0x00: decoded, START is after END.
        let failure = prepare(scan("/w==", "AA=="), Encoding::Base64).unwrap_err();
        assert_eq!(failure.kind, "InvalidRange", "{}", failure.message);
        // An empty END is unbounded in either encoding.
        assert!(matches!(
            prepare(scan("/w==", ""), Encoding::Base64).unwrap(),
            Request::Scan { start, end, .. } if start[..] == [0xff] && end.is_empty()
        ));
    }

    #[test]
    fn a_bad_base64_argument_is_a_usage_failure_naming_it() {
        let cases = [
            (
                KvOp::Put {
                    key: "a!".into(),
                    value: "eA==".into(),
                    fence_lock: None,
                    fence_token: None,
                    lease: None,
                },
                "KEY",
            ),
            (
                KvOp::Put {
                    key: "eA==".into(),
                    value: "eA=".into(),
                    fence_lock: None,
                    fence_token: None,
                    lease: None,
                },
                "VALUE",
            ),
            (
                KvOp::Cas {
                    key: "eA==".into(),
                    expected: "eA==".into(),
                    new: "e".into(),
                },
                "NEW",
            ),
            (
                KvOp::Cas {
                    key: "eA==".into(),
                    expected: "%%".into(),
                    new: "eA==".into(),
                },
                "EXPECTED",
            ),
            (scan("x", ""), "START"),
            (scan("", "x"), "END"),
        ];
        for (op, what) in cases {
            let failure = prepare(op, Encoding::Base64).unwrap_err();
            assert!(failure.usage, "{what}: {}", failure.message);
            assert!(
                failure.message.starts_with(&format!("{what} \"")),
                "{what}: {}",
                failure.message
            );
        }
    }

    #[test]
    fn decoded_sizes_are_checked_against_the_limits() {
        use base64::Engine as _;
        let key = vec![0u8; limits::KEY_BYTES_MAX + 1];
        let encoded = base64::engine::general_purpose::STANDARD.encode(&key);
        let failure = prepare(KvOp::Delete { key: encoded }, Encoding::Base64).unwrap_err();
        assert_eq!(failure.kind, "KeyTooLarge", "{}", failure.message);
    }
}
