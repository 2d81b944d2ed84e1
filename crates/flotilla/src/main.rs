//! `flotilla`: the node daemon (`flotilla node start`) and the operator CLI in one binary.
//! This crate only parses arguments and wires the library crates together.

mod cli;
mod daemon;
mod db;
mod dev;
mod status;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli.run())
}
