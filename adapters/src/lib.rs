//! qrbridge's edges: everything that reads or talks to the outside world.
//!
//! - [`decode`]: scanned text → a typed [`decode::MerchantCode`] (EMVCo merchant-presented TLV
//!   codes, Alipay / WeChat Pay / UnionPay URL codes), or a precise [`decode::DecodeError`].
//! - [`routing`]: which configured acquirer owns a decoded code.
#![forbid(unsafe_code)]

pub mod decode;
pub mod routing;
