//! The `qrbridge` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// qrbridge: overseas e-wallets paying domestic Chinese merchants by QR code.
#[derive(Debug, Parser)]
#[command(name = "qrbridge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a configuration file: prints each problem with its key path, or `ok`.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Runs a parsed command line; the exit code is 0 on success, 1 on a failure to do the work, 2 on
/// bad input.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match qrbridge_config::from_file(file) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(qrbridge_config::ConfigError::Invalid(problems)) => {
            for p in problems {
                println!("{p}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
