//! Why a scanned text is not a code we can read. Every variant is `INVALID_CODE` to a partner; the
//! message says which tag, at which character offset, and what was wrong.

/// A two-digit EMVCo id, kept as text so non-digit ids can be reported as found.
pub type TagText = String;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the code is empty")]
    Empty,
    #[error("the code is longer than {max} characters")]
    TooLong { max: usize },
    #[error("not a payment code we know: {0}")]
    UnknownFormat(&'static str),
    #[error("at offset {offset}: id {found:?} is not two digits")]
    NonDigitId { offset: usize, found: String },
    #[error("at offset {offset}: tag {tag} has length {found:?}, not two digits")]
    NonDigitLength { offset: usize, tag: TagText, found: String },
    #[error(
        "at offset {offset}: tag {tag} declares {declared} characters but only {available} follow"
    )]
    Truncated { offset: usize, tag: TagText, declared: usize, available: usize },
    #[error("at offset {offset}: tag {tag} appears a second time")]
    DuplicateTag { offset: usize, tag: TagText },
    #[error("the payload format indicator (tag 00) must come first")]
    FormatIndicatorNotFirst,
    #[error("at offset {offset}: payload format indicator {found:?} is not 01")]
    FormatIndicator { offset: usize, found: String },
    #[error("no CRC: the code must end with tag 63")]
    CrcMissing,
    #[error("at offset {offset}: tag 63 (CRC) must be the last tag")]
    CrcNotLast { offset: usize },
    #[error("at offset {offset}: CRC {found:?} is not four hex digits")]
    CrcMalformed { offset: usize, found: String },
    #[error("CRC mismatch: the code carries {found}, its content gives {expected:04X}")]
    CrcMismatch { expected: u16, found: String },
    #[error(
        "at offset {offset}: point of initiation {found:?} is neither 11 (static) nor 12 (dynamic)"
    )]
    PointOfInitiation { offset: usize, found: String },
    #[error("at offset {offset}: merchant category code {found:?} is not four digits")]
    Mcc { offset: usize, found: String },
    #[error("at offset {offset}: transaction currency {found:?} is not an ISO 4217 number")]
    Currency { offset: usize, found: String },
    #[error("at offset {offset}: transaction amount {found:?}: {reason}")]
    Amount { offset: usize, found: String, reason: String },
    #[error("the code carries an amount (tag 54) but no currency (tag 53)")]
    AmountWithoutCurrency,
    #[error("{scheme} code: {reason}")]
    Url { scheme: &'static str, reason: &'static str },
}
