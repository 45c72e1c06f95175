//! qrbridge's edges: everything that reads or talks to the outside world.
//!
//! - [`decode`]: scanned text → a typed [`decode::MerchantCode`] (EMVCo merchant-presented TLV
//!   codes, Alipay / WeChat Pay / UnionPay URL codes), or a precise [`decode::DecodeError`].
//! - [`routing`]: which configured acquirer owns a decoded code.
//! - [`acquirer`]: the acquirer API, the bridge's client for it, and the sandbox acquirer.
//! - [`https`]: the mTLS accept loop every listener uses, and the pooled mTLS client.
//! - [`webhook`]: delivering signed webhook events to partners, and checking the signature.
#![forbid(unsafe_code)]

pub mod acquirer;
pub mod decode;
pub mod https;
pub mod routing;
pub mod webhook;
