//! `flotilla lease`: etcd-shaped leases from the command line — grant, keep-alive, revoke,
//! time to live — decided by the lease's home region on time carried in the log (see
//! `flotilla_kv::lease`). Keys follow a lease with `flotilla kv put KEY VALUE --lease ID`.
//!
//! Owns: the flags and the `--json` contract: `grant` prints
//! `{"ok":true,"id":N,"ttl_ms":N}`; `keep-alive` prints one
//! `{"ok":true,"id":N,"ttl_ms":N,"remaining_ms":N}` per renewal (every third of the time
//! to live over one keep-alive stream, `--count` times, 0: until interrupted); `revoke` prints
//! `{"ok":true,"deleted":N}`; `ttl` prints
//! `{"ok":true,"id":N,"ttl_ms":N,"remaining_ms":N,"keys":[..]}`. A lease that does not
//! exist or ended: exit 1, `"error":"LeaseNotFound"`.

use std::time::Duration;

use clap::{Args, Subcommand};
use flotilla_kv::client::KvClient;
use flotilla_kv::lease::{LeaseOp, LeaseState, TTL_MS_MAX, TTL_MS_MIN};
use serde_json::Value;

use crate::config::FileConfig;
use crate::kv::ClientArgs;
use crate::output::{success, Failure, EXIT_OK};

/// `flotilla lease` flags.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub op: LeaseCmd,
}

/// One lease operation.
#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Grants a lease of TTL_MS (1000 to 86400000): prints its id.
    Grant {
        #[arg(value_name = "TTL_MS")]
        ttl_ms: u64,
    },
    /// Keeps lease ID alive: renews it every third of its time to live.
    KeepAlive {
        id: u64,
        /// Renewals before stopping (0: until interrupted).
        #[arg(long, value_name = "N", default_value_t = 0)]
        count: u64,
    },
    /// Ends lease ID and deletes every key attached to it.
    Revoke { id: u64 },
    /// What is left of lease ID, and its keys.
    Ttl { id: u64 },
}

fn state_json(id: u64, state: &LeaseState) -> Vec<(&'static str, Value)> {
    vec![
        ("id", Value::from(id)),
        ("ttl_ms", Value::from(state.ttl_ms)),
        ("remaining_ms", Value::from(state.remaining_ms)),
    ]
}

/// Runs the operation; returns the exit code.
pub fn run(args: LeaseArgs, file: &FileConfig) -> i32 {
    let json_flag = args.client.json || file.json.unwrap_or(false);
    let settings = match args.client.settings(file) {
        Ok(settings) => settings,
        Err(failure) => return failure.report("lease", json_flag),
    };
    match &args.op {
        LeaseCmd::Grant { ttl_ms } if !(TTL_MS_MIN..=TTL_MS_MAX).contains(ttl_ms) => {
            return Failure::usage(format!(
                "TTL_MS {ttl_ms}: must be {TTL_MS_MIN} to {TTL_MS_MAX}"
            ))
            .report("lease", settings.json);
        }
        LeaseCmd::KeepAlive { id: 0, .. }
        | LeaseCmd::Revoke { id: 0 }
        | LeaseCmd::Ttl { id: 0 } => {
            return Failure::usage("lease id 0: ids start at 1").report("lease", settings.json);
        }
        _ => {}
    }
    let runtime = match crate::output::client_runtime() {
        Ok(runtime) => runtime,
        Err(failure) => return failure.report("lease", settings.json),
    };
    let json = settings.json;
    let print = move |value: &Value, human: &str| {
        if json {
            println!("{value}");
        } else {
            println!("{human}");
        }
    };
    let result = runtime.block_on(async move {
        let client = KvClient::connect(settings.endpoints, settings.options).await?;
        execute(&client, args.op, &print).await
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(failure) => failure.report("lease", json),
    }
}

async fn execute(
    client: &KvClient,
    op: LeaseCmd,
    print: &dyn Fn(&Value, &str),
) -> Result<(), Failure> {
    match op {
        LeaseCmd::Grant { ttl_ms } => {
            let (id, state) = client.lease_grant(ttl_ms).await?;
            print(
                &success(vec![
                    ("id", Value::from(id)),
                    ("ttl_ms", Value::from(state.ttl_ms)),
                ]),
                &format!("lease {id} granted, {ttl_ms} ms to live"),
            );
        }
        LeaseCmd::KeepAlive { id, count } => {
            let mut renewed = 0;
            let mut stream = client.lease_keep_alive_stream().await?;
            loop {
                let state = match stream.keep_alive(id).await {
                    Ok(state) => state,
                    Err(e) if e.kind == flotilla_kv::lease::NOT_FOUND_KIND => return Err(e.into()),
                    // The store went away or a leader moved: a new stream, one more try.
                    Err(_) => {
                        stream = client.lease_keep_alive_stream().await?;
                        stream.keep_alive(id).await?
                    }
                };
                print(
                    &success(state_json(id, &state)),
                    &format!("lease {id} kept alive, {} ms left", state.remaining_ms),
                );
                renewed += 1;
                if count != 0 && renewed >= count {
                    break;
                }
                let pause = Duration::from_millis((state.ttl_ms / 3).max(1));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        LeaseCmd::Revoke { id } => {
            let deleted = client.lease_revoke(id).await?;
            print(
                &success(vec![("deleted", Value::from(deleted))]),
                &format!("lease {id} revoked, {deleted} keys deleted"),
            );
        }
        LeaseCmd::Ttl { id } => {
            let state = client.lease(id, LeaseOp::Status).await?;
            let keys: Vec<Value> = state
                .keys
                .iter()
                .map(|k| Value::from(String::from_utf8_lossy(k).into_owned()))
                .collect();
            let mut fields = state_json(id, &state);
            fields.push(("keys", Value::Array(keys)));
            print(
                &success(fields),
                &format!(
                    "lease {id}: {} ms left of {} ms, {} keys",
                    state.remaining_ms,
                    state.ttl_ms,
                    state.keys.len()
                ),
            );
        }
    }
    Ok(())
}
