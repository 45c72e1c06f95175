use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    qrbridge::cli::run(qrbridge::cli::Cli::parse())
}
