//! The top level: parse arguments, run a command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::commands::output::{self, out};
use crate::error::{EXIT_BAD_INPUT, exit_code};
use crate::secrets::redact_text;
use crate::{allocator, commands, spec};

/// The binary's whole `main`.
pub fn main() -> ExitCode {
    if let Err(error) = allocator::reexec_with_chosen_allocator() {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let cli = Cli::parse();
    // The worker reports its own exit codes (out of memory, stopped, ...).
    let result = match cli.command {
        Command::Worker(args) => commands::worker::run(&args),
        Command::Run(args) => commands::run::run(&args),
        Command::Attach(args) => commands::run::attach(&args),
        Command::Rerun(args) => commands::rerun::run(&args),
        command => run(Cli { command }).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // The reader stopped reading (`| head`): nothing went wrong here.
        Err(error) if output::closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // Errors quote values (flags, spec lines): none may echo a secret.
            eprintln!("error: {}", redact_text(&render(&error)));
            ExitCode::from(exit_code(&error))
        }
    }
}

/// The error and its causes, skipping a cause whose text the message
/// already quotes (our typed errors often embed their source).
fn render(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Plan(args) => commands::plan::run(args),
        Command::Defaults => {
            out!("{}", spec::DEFAULTS_TOML)?;
            Ok(())
        }
        Command::Fetch(args) => commands::fetch::run(args),
        Command::InitTiny(args) => commands::init_tiny::run(&args),
        Command::InitData(args) => commands::init_data::run(&args),
        Command::Eval(args) => commands::eval::run(&args),
        Command::Predict(args) => commands::predict::run(&args),
        Command::Export(args) => commands::export::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Worker(args) => commands::worker::run(&args).map(|_| ()),
        Command::Run(args) => commands::run::run(&args).map(|_| ()),
        Command::Attach(args) => commands::run::attach(&args).map(|_| ()),
        Command::Status(args) => commands::inspect::status(&args),
        Command::Ls(args) => commands::inspect::ls(&args),
        Command::Show(args) => commands::inspect::show(&args),
        Command::ExportMetrics(args) => commands::inspect::export_metrics(&args),
        Command::Report(args) => commands::inspect::report(&args),
        Command::Simulate(args) => commands::simulate::run(&args),
        Command::Rerun(args) => commands::rerun::run(&args).map(|_| ()),
    }
}
