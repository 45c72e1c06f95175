//! Decoding what a partner's camera read.
//!
//! - [`tlv`]: the EMVCo TLV walk (two-digit ids and lengths counted in characters) and CRC.
//! - [`emvco`]: EMVCo merchant-presented mode, strict where money is at stake and lenient, with
//!   warnings, where real issuers are sloppy (the policy in `shared/testdata/qr/README.md`).
//! - [`url`]: Alipay, WeChat Pay and UnionPay URL codes.
//! - [`code`]: what a decode returns.

pub mod code;
pub mod emvco;
pub mod error;
pub mod tlv;
pub mod url;

pub use code::*;
pub use error::DecodeError;

/// Limits on what the decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Longest input, in characters. EMVCo says 512, but the official SGQR sample has 1,042; past
    /// 512 is a warning, past this an error.
    pub max_chars: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_chars: 2048 }
    }
}

/// Decodes scanned text. Surrounding white space (a camera's trailing newline) is dropped with a
/// warning; anything else that is wrong with the code is an error or a warning per the policy.
pub fn decode<'a>(text: &'a str, limits: &DecodeLimits) -> Result<MerchantCode<'a>, DecodeError> {
    // A cheap bound first, on bytes (>= chars), so a huge input is never walked.
    if text.len() > limits.max_chars.saturating_mul(4) {
        return Err(DecodeError::TooLong { max: limits.max_chars });
    }
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if trimmed.is_empty() {
        return Err(DecodeError::Empty);
    }
    let chars = if trimmed.is_ascii() { trimmed.len() } else { trimmed.chars().count() };
    if chars > limits.max_chars {
        return Err(DecodeError::TooLong { max: limits.max_chars });
    }
    let mut code = if trimmed.as_bytes()[0].is_ascii_digit() {
        emvco::decode(trimmed, chars)?
    } else {
        url::decode(trimmed)?
    };
    if trimmed.len() != text.len() {
        code.warn(
            WarningCode::SurroundingWhitespace,
            None,
            "white space around the code was removed",
        );
    }
    Ok(code)
}
