//! The `scaleout` binary: parses the command line and runs it (`scaleout::cli`).

use std::process::ExitCode;

use clap::Parser;
use scaleout::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // openraft narrates every vote and replication step at info, and logs each failed retry of
    // an unreachable peer at warn and error; what an operator needs of that is logged once per
    // change by this crate (`raft::peer_links`, leadership in `master::replica`); its engine
    // logs an ERROR when replicas starting together both try to initialize the cluster, which
    // `master::bootstrap` expects. Its errors that mean action (storage) stop the replica with
    // an error of its own.
    let default_filter = if cli.command.is_process() {
        "info,openraft=error,openraft::replication=off,openraft::engine::handler::replication_handler=off,openraft::engine::engine_impl=off"
    } else {
        "warn"
    };
    scaleout::telemetry::init(cli.log_format, default_filter);
    scaleout::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {:#}", error.error);
            ExitCode::from(error.code)
        }
    }
}
