//! `flotilla`: the multi-raft KV server and the commands to use and operate it.
//!
//! - `flotilla server`: one store (process) of a cluster; see `--help`.
//! - `flotilla kv`: reads and writes through the routing client.
//! - `flotilla admin`: status and membership of the regions (the CLI service).
//! - `flotilla bench`: a load generator, against Flotilla or etcd (side-by-side figures).
//! - `flotilla demo`: a three-process cluster on loopback, a workload, a leader kill.
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
mod kv;
mod output;
mod server;

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
    Server(server::ServerArgs),
    /// Reads and writes keys.
    Kv(kv::KvArgs),
    /// Shows and changes the cluster's regions and their members.
    Admin(admin::AdminArgs),
    /// Starts a three-process cluster on loopback, runs a workload, kills the leader
    /// half way and checks that every acknowledged write survived.
    Demo(demo::DemoArgs),
    /// Measures throughput and latency of a Flotilla (or etcd) cluster under a workload.
    Bench(bench::BenchArgs),
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let wants_json = args.iter().any(|a| a == "--json");
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
        Command::Server(args) => server::run(args, &file),
        Command::Kv(args) => kv::run(args, &file),
        Command::Admin(args) => admin::run(args, &file),
        Command::Demo(args) => demo::run(args, &file),
        Command::Bench(args) => bench::run(args, &file),
    };
    std::process::exit(code);
}
