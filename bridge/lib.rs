//! The qrbridge daemon and CLI.
//!
//! - [`cli`]: the command line (`serve`, `check-config`, `decode`, `sandbox-acquirer`).
//! - [`daemon`]: assembling and running everything; shutdown.
//! - [`payments`]: the payment lifecycle ([`payments::engine`]: decode, quote, pay, resolve,
//!   cancel, refund), the resolver that brings payments in doubt to rest, the ledger's
//!   double-entry postings, the risk rules decided before a payment is written.
//!   [`webhooks`]: the outbox delivery worker.
//! - [`store`]: durable state (the `Store` trait; sled, group commit).
//! - [`model`]: the stored records.
//! - [`http`]: the tower stack every listener uses, and the partner API's handlers;
//!   [`acquirer_api`]: the acquirer listener (refunds); [`admin`]: the admin listener;
//!   [`error`]: the errors, in one place. [`console`]: the treasury console, web pages on the
//!   admin listener.
//! - [`treasury`]: rates, spreads, positions, the audit log, risk settings and dual control
//!   (proposals); [`settlement`]: business days' statements, reconciliation, `suspicious.csv`.
//! - [`api`]: the partner API's answer shapes.
//! - [`tls`]: mTLS material and client identities; [`pki`]: the development PKI.
//! - [`rates`]: rate sources loaded at start; [`routing`]: configuration → the router.
//! - [`ops`]: the operators' listener (health, readiness, Prometheus metrics), reload, systemd.
//! - [`clock`]: time, passed in; [`defaults`]: the embedded development configuration.
#![forbid(unsafe_code)]

pub mod acquirer_api;
pub mod admin;
pub mod admin_cli;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod console;
pub mod daemon;
pub mod days;
pub mod defaults;
pub mod error;
pub mod http;
pub mod model;
pub mod ops;
pub mod payments;
pub mod pki;
pub mod rates;
pub mod routing;
pub mod settlement;
pub mod store;
pub mod tls;
pub mod treasury;
pub mod webhooks;

// The payment modules by their old paths, for the binaries, tests and benches.
pub use payments::{engine, ledger, resolver};
