//! `flotilla kv`: one read or write through the routing client.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use flotilla_kv::client::{ClientOptions, KvClient, ReadConsistency};
use flotilla_kv::limits;
use serde_json::Value;

use crate::config::{self, FileConfig};
use crate::output::{success, text, Failure, EXIT_OK};

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
    #[command(subcommand)]
    pub op: KvOp,
}

/// One KV operation.
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
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
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
}

fn check_key(what: &str, key: &str) -> Result<(), Failure> {
    limits::check_key(key.as_bytes())
        .map_err(|e| Failure::failed("KeyTooLarge", format!("{what}: {e}")))
}

fn check_value(value: &str) -> Result<(), Failure> {
    limits::check_value(value.as_bytes())
        .map_err(|e| Failure::failed("ValueTooLarge", format!("value: {e}")))
}

/// Checks what can be checked before contacting anyone (nothing is sent on failure).
fn validate(op: &KvOp) -> Result<(), Failure> {
    match op {
        KvOp::Get { key, read } => {
            check_key("key", key)?;
            read.parse::<ReadConsistency>().map_err(Failure::usage)?;
        }
        KvOp::Put { key, value } | KvOp::PutIfAbsent { key, value } => {
            check_key("key", key)?;
            check_value(value)?;
        }
        KvOp::Delete { key } => check_key("key", key)?,
        KvOp::Cas { key, expected, new } => {
            check_key("key", key)?;
            check_value(expected)?;
            check_value(new)?;
        }
        KvOp::Scan {
            start,
            end,
            limit,
            read,
            ..
        } => {
            check_key("start", start)?;
            check_key("end", end)?;
            if !end.is_empty() && start > end {
                return Err(Failure::failed(
                    "InvalidRange",
                    format!("scan start {start:?} is after end {end:?}"),
                ));
            }
            limits::check_scan_limit(*limit)
                .map_err(|e| Failure::failed("ScanLimitTooLarge", e.to_string()))?;
            read.parse::<ReadConsistency>().map_err(Failure::usage)?;
        }
    }
    Ok(())
}

/// Runs the operation; returns the exit code.
pub fn run(args: KvArgs, file: &FileConfig) -> i32 {
    let json_flag = args.client.json || file.json.unwrap_or(false);
    let settings = match args.client.settings(file) {
        Ok(settings) => settings,
        Err(failure) => return failure.report("kv", json_flag),
    };
    if let Err(failure) = validate(&args.op) {
        return failure.report("kv", settings.json);
    }
    let runtime = match crate::output::client_runtime() {
        Ok(runtime) => runtime,
        Err(failure) => return failure.report("kv", settings.json),
    };
    let json = settings.json;
    match runtime.block_on(execute(settings, args.op)) {
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

async fn execute(settings: ClientSettings, op: KvOp) -> Result<(Value, Option<String>), Failure> {
    let client = KvClient::connect(settings.endpoints, settings.options).await?;
    let bytes = |s: String| Bytes::from(s.into_bytes());
    Ok(match op {
        KvOp::Get { key, read } => {
            let read = read.parse::<ReadConsistency>().map_err(Failure::usage)?;
            let value = client.get(bytes(key), read).await?;
            let human = match &value {
                Some(v) => String::from_utf8_lossy(v).into_owned(),
                None => {
                    eprintln!("(not found)");
                    return Ok((success(vec![("value", Value::Null)]), None));
                }
            };
            (
                success(vec![("value", value.as_ref().map_or(Value::Null, text))]),
                Some(human),
            )
        }
        KvOp::Put { key, value } => {
            client.put(bytes(key), bytes(value)).await?;
            (success(vec![]), Some("OK".into()))
        }
        KvOp::Delete { key } => {
            client.delete(bytes(key)).await?;
            (success(vec![]), Some("OK".into()))
        }
        KvOp::Cas { key, expected, new } => {
            let swapped = client
                .compare_and_put(bytes(key), Some(bytes(expected)), bytes(new))
                .await?;
            (
                success(vec![("swapped", Value::Bool(swapped))]),
                Some(if swapped { "swapped" } else { "not swapped" }.into()),
            )
        }
        KvOp::PutIfAbsent { key, value } => {
            let previous = client.put_if_absent(bytes(key), bytes(value)).await?;
            let swapped = previous.is_none();
            (
                success(vec![
                    ("swapped", Value::Bool(swapped)),
                    ("previous", previous.as_ref().map_or(Value::Null, text)),
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
        KvOp::Scan {
            start,
            end,
            limit,
            reverse,
            read,
        } => {
            let read = read.parse::<ReadConsistency>().map_err(Failure::usage)?;
            let entries = client
                .scan(bytes(start), bytes(end), limit, reverse, read)
                .await?;
            let human = entries
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}\t{}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let list: Vec<Value> = entries
                .iter()
                .map(|(k, v)| serde_json::json!({"key": text(k), "value": text(v)}))
                .collect();
            (
                success(vec![("entries", Value::Array(list))]),
                (!human.is_empty()).then_some(human),
            )
        }
    })
}
