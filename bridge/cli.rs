//! The `qrbridge` command line.

use std::path::{Path, PathBuf};

use qrbridge_adapters::decode::{DecodeLimits, WarningCode};

use crate::api::{DecodeAnswer, ErrorBody, ErrorDetail};
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
    /// Decode a scanned code: prints the partner API's decode answer as JSON (exit 0), or
    /// `{"error": {"code": "INVALID_CODE", …}}` (exit 2).
    Decode {
        /// The scanned text.
        code: String,
        /// Route with this configuration's rules instead of the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs a parsed command line; the exit code is 0 on success, 1 on a failure to do the work, 2 on
/// bad input.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Decode { code, config } => decode(&code, config.as_deref()),
    }
}

fn decode(text: &str, config: Option<&Path>) -> ExitCode {
    let config = match config {
        Some(path) => match qrbridge_config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        None => crate::defaults::dev_config(Path::new("var")),
    };
    let limits = DecodeLimits { max_chars: config.limits.code_chars_max as usize };
    match qrbridge_adapters::decode::decode(text, &limits) {
        Ok(mut code) => {
            let router = crate::routing::router(&config);
            let acquirer = match router.route(&code) {
                Ok(r) => Some(r.acquirer.to_owned()),
                Err(e) => {
                    code.warn(WarningCode::NotServiceable, None, e.to_string());
                    None
                }
            };
            let answer = DecodeAnswer::new(&code, acquirer.as_deref());
            out(&serde_json::to_string_pretty(&answer).expect("JSON of plain data"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let body = ErrorBody {
                error: ErrorDetail {
                    code: "INVALID_CODE",
                    message: e.to_string(),
                    retryable: false,
                },
            };
            out(&serde_json::to_string(&body).expect("JSON of plain data"));
            ExitCode::from(2)
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match qrbridge_config::from_file(file) {
        Ok(_) => {
            out("ok");
            ExitCode::SUCCESS
        }
        Err(qrbridge_config::ConfigError::Invalid(problems)) => {
            for p in problems {
                out(&p.to_string());
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Prints a line; a closed pipe (`| head`) is not an error worth a panic.
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
