//! `flotilla`: the node daemon (`flotilla node start`) and the operator CLI in one binary.
//! This crate only parses arguments and wires the library crates together.

mod action;
mod check;
mod cli;
mod crdb;
mod daemon;
mod db;
mod dev;
mod os_upgrade;
mod output;
mod package;
mod private;
mod status;
mod upgrade;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    flotilla_client::install_crypto_provider();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error chain names the object and the fix; a backtrace would bury it.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
