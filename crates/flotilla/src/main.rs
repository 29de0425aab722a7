//! `flotilla`: the multi-raft KV server and the commands to use and operate it.
//!
//! - `flotilla server`: one store (process) of a cluster; see `--help`.
//! - `flotilla kv`: reads and writes through the routing client.
//! - `flotilla admin`: status and membership of the regions (the CLI service).
//! - `flotilla bench`: a load generator, against Flotilla or etcd (side-by-side figures).
//! - `flotilla demo`: a three-process cluster on loopback, a workload, a leader kill.
//! - `flotilla health`: a store's readiness, for Docker's `HEALTHCHECK`.
//! - `flotilla manager --docker`: tells the placement driver when a store's volume is gone.
//!
//! Every flag can also be set in a TOML file given by `--config` (keys are the flag names
//! without the leading dashes, e.g. `data-dir = "/var/lib/flotilla"`); a flag on the command
//! line wins over the file.
//!
//! Exit status: 0 ok; 1 the operation certainly did not take effect; 2 usage error; 3 the
//! outcome is unknown (a write that timed out or lost its connection after sending).

mod admin;
mod bench;
mod config;
mod demo;
mod health;
mod kv;
mod lease;
mod lock;
mod manager;
mod output;
mod server;
mod trim;
mod watch;

use clap::{Parser, Subcommand};

use config::FileConfig;
use output::{Failure, EXIT_USAGE};

/// The Flotilla multi-raft KV store.
#[derive(Parser, Debug)]
#[command(name = "flotilla", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// TOML file setting any flag (keys are flag names without dashes, e.g. `addr = "..."`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs one store of a cluster.
    Server(Box<server::ServerArgs>),
    /// Reads and writes keys.
    Kv(kv::KvArgs),
    /// A distributed lock: acquire (lease, fencing token), renew, release, status.
    Lock(lock::LockArgs),
    /// Leases (etcd's): grant, keep-alive, revoke, ttl; keys follow one with `kv put --lease`.
    Lease(lease::LeaseArgs),
    /// Shows and changes the cluster's regions and their members.
    Admin(admin::AdminArgs),
    /// Starts a three-process cluster on loopback, runs a workload, kills the leader
    /// half way and checks that every acknowledged write survived.
    Demo(demo::DemoArgs),
    /// Measures throughput and latency of a Flotilla (or etcd) cluster under a workload.
    Bench(bench::BenchArgs),
    /// Asks one store whether it is ready (`GET /ready`): exit 0 when it is, 1 when not
    /// (Docker's HEALTHCHECK).
    Health(health::HealthArgs),
    /// Watches Docker for store containers and the volumes holding their data, and tells
    /// the placement driver when a store's data is gone for good (its volume removed), so
    /// that its replicas are replaced at once. Never changes membership itself.
    Manager(manager::ManagerArgs),
}

fn main() {
    let args_os: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let wants_json = args_os.iter().any(|a| a == "--json");
    let args = match utf8_arguments(args_os) {
        Ok(args) => args,
        Err(failure) => {
            if wants_json {
                failure.print_json();
            } else {
                eprintln!("flotilla: {}", failure.message);
            }
            std::process::exit(EXIT_USAGE);
        }
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                std::process::exit(0);
            }
            if wants_json {
                Failure::usage(error.to_string().trim().to_string()).print_json();
                std::process::exit(EXIT_USAGE);
            }
            let _ = error.print();
            std::process::exit(EXIT_USAGE);
        }
    };
    let file = match cli.config.as_deref().map(FileConfig::load).transpose() {
        Ok(file) => file.unwrap_or_default(),
        Err(why) => {
            let failure = Failure::usage(why);
            if wants_json {
                failure.print_json();
            } else {
                eprintln!("flotilla: {}", failure.message);
            }
            std::process::exit(EXIT_USAGE);
        }
    };
    let code = match cli.command {
        Command::Server(args) => server::run(*args, &file),
        Command::Kv(args) => kv::run(args, &file),
        Command::Lock(args) => lock::run(args, &file),
        Command::Lease(args) => lease::run(args, &file),
        Command::Admin(args) => admin::run(args, &file),
        Command::Demo(args) => demo::run(args, &file),
        Command::Bench(args) => bench::run(args, &file),
        Command::Health(args) => health::run(args, &file),
        Command::Manager(args) => manager::run(args, &file),
    };
    std::process::exit(code);
}

/// The command line as UTF-8 text, or a usage failure naming the first argument that is not.
///
/// `std::env::args` panics on such an argument (exit 101 with a backtrace hint), and every
/// flag and key here is text: binary keys and values go through `kv --encoding base64`.
/// Position 1 is the first argument after the program name (`flotilla kv put K V`: `K` is 3).
fn utf8_arguments(args: Vec<std::ffi::OsString>) -> Result<Vec<String>, Failure> {
    args.into_iter()
        .enumerate()
        .map(|(position, arg)| {
            arg.into_string().map_err(|arg| {
                Failure::usage(format!(
                    "argument {position} ({arg:?}) is not valid UTF-8; arguments must be UTF-8 text \
                     (for binary keys and values use `flotilla kv --encoding base64`)"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    #[test]
    fn a_non_utf8_argument_is_a_usage_failure_naming_its_position() {
        let args = vec![
            OsString::from("flotilla"),
            OsString::from("kv"),
            OsString::from("put"),
            OsString::from_vec(vec![b'k', 0xff, 0xfe]),
            OsString::from("v"),
        ];
        let failure = utf8_arguments(args).unwrap_err();
        assert!(failure.usage);
        assert_eq!(failure.exit_code(), EXIT_USAGE);
        assert!(
            failure
                .message
                .starts_with("argument 3 (\"k\\xFF\\xFE\") is not valid UTF-8"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn utf8_arguments_pass_unchanged() {
        let args = ["flotilla", "kv", "get", "ключ"]
            .map(OsString::from)
            .to_vec();
        assert_eq!(
            utf8_arguments(args).unwrap(),
            ["flotilla", "kv", "get", "ключ"]
        );
    }
}
