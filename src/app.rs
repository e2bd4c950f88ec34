//! The top level: parse arguments, run a command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::error::exit_code;
use crate::{commands, spec};

/// The binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Plan(args) => commands::plan::run(args),
        Command::Defaults => {
            print!("{}", spec::DEFAULTS_TOML);
            Ok(())
        }
    }
}
