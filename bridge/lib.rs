//! The qrbridge daemon and CLI.
//!
//! - [`cli`]: the command line (`serve`, `check-config`, `decode`, …).
//! - [`api`]: the partner API's answer and error shapes.
//! - [`routing`]: configuration → the adapters' router.
//! - [`defaults`]: the embedded development configuration.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod defaults;
pub mod routing;
