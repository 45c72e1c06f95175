//! The qrbridge daemon and CLI.
//!
//! - [`cli`]: the command line (`serve`, `check-config`, `decode`, `sandbox-acquirer`).
//! - [`daemon`]: assembling and running everything; shutdown.
//! - [`engine`]: the payment lifecycle (decode, quote, pay, resolve, cancel, refund).
//! - [`resolver`]: the worker that brings payments in doubt to rest; [`webhooks`]: the outbox
//!   delivery worker.
//! - [`store`]: durable state in sled, group commit.
//! - [`ledger`]: double-entry postings.
//! - [`model`]: the stored records.
//! - [`http`]: the tower stack every listener uses, and the partner API's handlers;
//!   [`acquirer_api`]: the acquirer listener (refunds); [`admin`]: the admin listener;
//!   [`error`]: the errors, in one place.
//! - [`api`]: the partner API's answer shapes.
//! - [`tls`]: mTLS material and client identities; [`pki`]: the development PKI.
//! - [`rates`]: rate sources loaded at start; [`routing`]: configuration → the router.
//! - [`clock`]: time, passed in; [`defaults`]: the embedded development configuration.
#![forbid(unsafe_code)]

pub mod acquirer_api;
pub mod admin;
pub mod admin_cli;
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
pub mod resolver;
pub mod routing;
pub mod settlement;
pub mod store;
pub mod tls;
pub mod treasury;
pub mod webhooks;
