//! qrbridge's whole configuration: TOML in, a typed and validated [`Config`] out.
//!
//! - [`model`]: the configuration's shape, every field documented with why it exists; limits are
//!   named with their unit last (`body_bytes_max`, `acquirer_timeout_ms`).
//! - [`load`]: parsing, relative paths resolved against the file's folder.
//! - [`validate`]: every semantic check, each problem reported with the key path it concerns
//!   (`partners[2].wallet_currencies[0]: "XAU" has no minor unit`).
#![forbid(unsafe_code)]

pub mod load;
pub mod model;
pub mod risk;
pub mod validate;

pub use load::{from_file, from_str, ConfigError, Problem};
pub use model::*;
pub use risk::{
    BlocklistFiles, CurrencyRules, DualControl, MccRules, MerchantRules, Monitoring, PartnerRules,
    Risk, RiskRules, VelocityRules,
};
