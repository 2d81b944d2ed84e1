//! `flotilla package build`: a package of a Flotilla binary and its engines.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use flotilla_model::EngineVersion;
use flotilla_package::{BuildSpec, Version, VersionReq, DEFAULT_SUPPORTED_OS};

/// `flotilla package` subcommands.
#[derive(Subcommand)]
pub enum PackageCommand {
    /// Build a package folder and its .tar.gz: bin/flotilla, engines/, manifest.toml.
    Build(BuildArgs),
}

/// Arguments of `flotilla package build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The package's version (the software version of nodes that run from it).
    #[arg(long)]
    pub version: Version,
    /// Where the engines are (`<engine>/bin/<server>`); the development engines by default.
    #[arg(long)]
    pub engines: Option<PathBuf>,
    /// The engines to bundle, comma-separated; every engine found by default.
    #[arg(long, value_delimiter = ',')]
    pub engine: Vec<EngineVersion>,
    /// The flotilla binary to package; this one by default (a recorded release is packaged
    /// from `scripts/fetch-release`'s binary).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The installed versions this package may be installed over; by default any from 0.1.0
    /// up to (not including) this version.
    #[arg(long)]
    pub upgrade_from: Option<VersionReq>,
    /// The engine new databases get by default.
    #[arg(long, default_value = "valkey-9.1")]
    pub default_engine: EngineVersion,
    /// Operating systems supported, comma-separated `ID-VERSION_ID` of /etc/os-release.
    #[arg(long, value_delimiter = ',')]
    pub supported_os: Vec<String>,
    /// The handover protocol the binary speaks; this build's by default. A binary from
    /// release 0.1.0 speaks none: pass 0.
    #[arg(long)]
    pub handover_protocol: Option<u32>,
    /// Where to write the package folder and the tarball.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs a package subcommand.
pub fn run(command: PackageCommand) -> Result<()> {
    let PackageCommand::Build(args) = command;
    let upgrade_from = match args.upgrade_from {
        Some(req) => req,
        None => VersionReq::parse(&format!(">=0.1.0, <{}", args.version))
            .context("the default --upgrade-from")?,
    };
    let binary = match args.binary {
        Some(binary) => binary,
        None => std::env::current_exe().context("locating this flotilla binary")?,
    };
    let supported_os = if args.supported_os.is_empty() {
        DEFAULT_SUPPORTED_OS.iter().map(|s| s.to_string()).collect()
    } else {
        args.supported_os
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let spec = BuildSpec {
        binary,
        version: args.version,
        engines_dir: args
            .engines
            .unwrap_or_else(flotilla_engine::dev_engines_dir),
        engines: args.engine,
        upgrade_from,
        default_engine: args.default_engine,
        supported_os,
        handover_protocol: args
            .handover_protocol
            .unwrap_or(flotilla_handover::HANDOVER_PROTOCOL),
        out_dir: args.out,
    };
    let built = flotilla_package::build(&spec)?;
    println!(
        "package {} built: {} and {}",
        built.manifest.version,
        built.dir.display(),
        built.tarball.display()
    );
    Ok(())
}
