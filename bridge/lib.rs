//! The qrbridge daemon and CLI.
//!
//! - [`cli`]: the command line (`serve`, `check-config`, `decode`, `sandbox-acquirer`).
//! - [`daemon`]: assembling and running everything; shutdown.
//! - [`engine`]: the payment lifecycle (decode, quote, pay, inquire, cancel).
//! - [`store`]: durable state in sled, group commit.
//! - [`ledger`]: double-entry postings.
//! - [`model`]: the stored records.
//! - [`http`]: the partner API's tower stack and handlers; [`error`]: its errors, in one place.
//! - [`api`]: the partner API's answer shapes.
//! - [`tls`]: mTLS material and client identities; [`pki`]: the development PKI.
//! - [`rates`]: rate sources loaded at start; [`routing`]: configuration → the router.
//! - [`clock`]: time, passed in; [`defaults`]: the embedded development configuration.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod defaults;
pub mod engine;
pub mod error;
pub mod http;
pub mod ledger;
pub mod model;
pub mod pki;
pub mod rates;
pub mod routing;
pub mod store;
pub mod tls;
