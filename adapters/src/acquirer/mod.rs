//! The acquirer side: a generic acquirer API (JSON over HTTPS with mTLS), the bridge's client for
//! it, and a sandbox acquirer that serves it.
//!
//! - [`wire`]: the API's requests and answers.
//! - [`client`]: [`client::AcquirerClient`], a `tower::Service` for lookups, instructions,
//!   inquiries and reversals, with per-acquirer timeouts, that tells "nothing was sent" apart
//!   from "the outcome is unknown".
//! - [`sandbox`]: a real HTTPS server for the API with deterministic behaviours, runnable alone or
//!   in-process, recording what it received.

pub mod client;
pub mod sandbox;
pub mod wire;

pub use client::{AcquirerClient, AcquirerError, AcquirerRequest, AcquirerResponse};
