//! `flotilla lock`: RheaKV's distributed lock from the command line — acquire (with a
//! lease, optionally waiting), renew, release, status — decided by the region holding the
//! lock's name, on time carried in the log (see `flotilla_kv::lock`).
//!
//! Owns: the flags and the `--json` contract: `acquire` prints
//! `{"ok":true,"acquired":true,"token":N,"lease_ms":N}`, or (exit 0)
//! `{"ok":true,"acquired":false,"token":null,"holder":ID}` while another owner holds it;
//! `renew` and `release` print `{"ok":true}` (by a non-owner: exit 1, `"error":"NotOwner"`);
//! `status` prints `{"ok":true,"held":BOOL,"owner":..,"token":N,"expires_in_ms":N}`.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use flotilla_kv::client::KvClient;
use flotilla_kv::lock::{LockOp, LockState, LEASE_MS_DEFAULT, LEASE_MS_MAX};
use serde_json::Value;

use crate::config::FileConfig;
use crate::kv::ClientArgs;
use crate::output::{success, Failure, EXIT_OK};

/// `flotilla lock` flags.
#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub op: LockCmd,
}

/// One lock operation.
#[derive(Subcommand, Debug)]
pub enum LockCmd {
    /// Takes lock NAME for owner ID (again, if ID holds it: same token, the count grows).
    Acquire {
        name: String,
        /// Who takes it.
        #[arg(long, value_name = "ID")]
        owner: String,
        /// The lease, 1 to 3600000 ms.
        #[arg(long, value_name = "MS", default_value_t = LEASE_MS_DEFAULT)]
        lease_ms: u64,
        /// How long to keep trying while another owner holds it (0: answer at once).
        #[arg(long, value_name = "MS", default_value_t = 0)]
        wait_ms: u64,
    },
    /// Restarts the lease of lock NAME, held by ID.
    Renew {
        name: String,
        #[arg(long, value_name = "ID")]
        owner: String,
    },
    /// Releases one acquire of lock NAME by ID (the last one frees it).
    Release {
        name: String,
        #[arg(long, value_name = "ID")]
        owner: String,
    },
    /// Who holds lock NAME, its token and what is left of the lease.
    Status { name: String },
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the operation; returns the exit code.
pub fn run(args: LockArgs, file: &FileConfig) -> i32 {
    let json_flag = args.client.json || file.json.unwrap_or(false);
    let settings = match args.client.settings(file) {
        Ok(settings) => settings,
        Err(failure) => return failure.report("lock", json_flag),
    };
    if let LockCmd::Acquire { lease_ms, .. } = &args.op {
        if *lease_ms == 0 || *lease_ms > LEASE_MS_MAX {
            return Failure::usage(format!(
                "--lease-ms {lease_ms}: must be 1 to {LEASE_MS_MAX}"
            ))
            .report("lock", settings.json);
        }
    }
    let runtime = match crate::output::client_runtime() {
        Ok(runtime) => runtime,
        Err(failure) => return failure.report("lock", settings.json),
    };
    let json = settings.json;
    let result = runtime.block_on(async move {
        let client = KvClient::connect(settings.endpoints, settings.options).await?;
        execute(&client, args.op).await
    });
    match result {
        Ok((value, human)) => {
            if json {
                println!("{value}");
            } else {
                println!("{human}");
            }
            EXIT_OK
        }
        Err(failure) => failure.report("lock", json),
    }
}

async fn execute(client: &KvClient, op: LockCmd) -> Result<(Value, String), Failure> {
    Ok(match op {
        LockCmd::Acquire {
            name,
            owner,
            lease_ms,
            wait_ms,
        } => {
            let state = client
                .lock_acquire(
                    name.clone(),
                    owner,
                    lease_ms,
                    Duration::from_millis(wait_ms),
                )
                .await?;
            acquired(&name, &state)
        }
        LockCmd::Renew { name, owner } => {
            let state = client
                .lock(
                    name.clone(),
                    LockOp::Renew {
                        owner: owner.into(),
                    },
                )
                .await?;
            (
                success(vec![]),
                format!("{name}: renewed, {} ms left", state.remaining_ms),
            )
        }
        LockCmd::Release { name, owner } => {
            let state = client
                .lock(
                    name.clone(),
                    LockOp::Release {
                        owner: owner.into(),
                    },
                )
                .await?;
            let human = if state.held {
                format!("{name}: released once, still held ({} more)", state.count)
            } else {
                format!("{name}: released")
            };
            (success(vec![]), human)
        }
        LockCmd::Status { name } => {
            let state = client.lock(name.clone(), LockOp::Status).await?;
            let owner = if state.held {
                Value::from(text(&state.owner))
            } else {
                Value::Null
            };
            let human = if state.held {
                format!(
                    "{name}: held by {} with token {}, {} ms left",
                    text(&state.owner),
                    state.token,
                    state.remaining_ms
                )
            } else {
                format!("{name}: free (last token {})", state.token)
            };
            (
                success(vec![
                    ("held", Value::Bool(state.held)),
                    ("owner", owner),
                    ("token", Value::from(state.token)),
                    ("expires_in_ms", Value::from(state.remaining_ms)),
                ]),
                human,
            )
        }
    })
}

fn acquired(name: &str, state: &LockState) -> (Value, String) {
    if state.acquired {
        (
            success(vec![
                ("acquired", Value::Bool(true)),
                ("token", Value::from(state.token)),
                ("lease_ms", Value::from(state.lease_ms)),
            ]),
            format!(
                "{name}: acquired, token {} ({} ms lease)",
                state.token, state.lease_ms
            ),
        )
    } else {
        (
            success(vec![
                ("acquired", Value::Bool(false)),
                ("token", Value::Null),
                ("holder", Value::from(text(&state.owner))),
            ]),
            format!(
                "{name}: held by {} ({} ms left)",
                text(&state.owner),
                state.remaining_ms
            ),
        )
    }
}
