//! The qrbridge daemon and CLI.
//!
//! - [`cli`]: the command line (`serve`, `check-config`, `decode`, …).
#![forbid(unsafe_code)]

pub mod cli;
