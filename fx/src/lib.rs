//! Money and FX for qrbridge. Pure: no I/O, no clock reads (time is passed in), no floats.
//!
//! - [`currency`]: ISO 4217 currencies that have a minor unit, by alpha and numeric code.
//! - [`amount`]: [`Amount`], a currency plus integer minor units, with checked arithmetic and the
//!   API and major-unit text forms.
//! - [`rate`]: the [`RateBook`] of mid rates: direct, inverse and cross through a pivot, with a
//!   staleness limit per source.
//! - [`spread`]: the treasury's spreads in basis points, per partner and pair, clamped to bounds.
//! - [`rounding`]: the one place where money is rounded, always in the house's favour (and the
//!   markup partners are shown, never understated).
//! - [`quote`]: the immutable [`Quote`] (with its mid, the mid's source and the markup over it)
//!   and refund conversion at its price.
#![forbid(unsafe_code)]
#![deny(clippy::float_arithmetic)]

pub mod amount;
pub mod currency;
pub mod quote;
pub mod rate;
pub mod rounding;
pub mod spread;
pub mod time;

pub use amount::{Amount, AmountError};
pub use currency::{Currency, CurrencyError};
pub use quote::{Pricing, Quote, QuoteError, QuoteRequest, RefundSplit};
pub use rate::{MidRate, Pair, RateBook, RateError, RateGuard, ResolvedRate};
pub use rust_decimal::Decimal;
pub use spread::{Bps, SpreadError, SpreadKey, SpreadPolicy};
