//! [`Amount`]: a currency and a whole number of its minor units.
//!
//! Two text forms, both strict: the API form (`{"currency":"PHP","value":"125050"}`, minor units as
//! digits) and major-unit text (`"1250.50"`, as EMVCo tag 54 and people write it). Neither accepts
//! signs, exponents, white space, or more decimals than the currency has.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::currency::{Currency, CurrencyError};

/// Why an amount was refused or an operation on amounts failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("currency mismatch: {left} and {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("amount overflows")]
    Overflow,
    #[error("amount is negative")]
    Negative,
    #[error("amount is above the maximum of {max} minor units")]
    TooLarge { max: i64 },
    #[error("{currency} has {exponent} decimal places; {found} given")]
    TooPrecise { currency: Currency, exponent: u32, found: usize },
    #[error("malformed amount: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Currency(#[from] CurrencyError),
}

/// Money: a currency and an integer count of its minor units. Fields are private; every
/// constructor checks the bounds and every operation is checked.
///
/// The value may be negative only as the result of [`Amount::checked_sub`] or
/// [`Amount::checked_neg`] (ledger postings); every parser refuses signs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount {
    currency: Currency,
    minor: i64,
}

impl Amount {
    /// The largest magnitude any amount may have, in minor units: fifteen nines. Far above any
    /// payment, far below `i64::MAX`, so a product of an amount and a price fits in `i128`.
    pub const MAX_MINOR: i64 = 999_999_999_999_999;
    /// Most digits the API form accepts (the number of digits in [`Self::MAX_MINOR`]).
    const MAX_DIGITS: usize = 15;

    /// An amount from minor units; refuses magnitudes past [`Self::MAX_MINOR`].
    pub fn from_minor(currency: Currency, minor: i64) -> Result<Self, AmountError> {
        if minor.checked_abs().is_none_or(|m| m > Self::MAX_MINOR) {
            return Err(AmountError::TooLarge { max: Self::MAX_MINOR });
        }
        Ok(Amount { currency, minor })
    }

    pub fn zero(currency: Currency) -> Self {
        Amount { currency, minor: 0 }
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn is_zero(&self) -> bool {
        self.minor == 0
    }

    pub fn is_positive(&self) -> bool {
        self.minor > 0
    }

    /// The API form's `value`: minor units as canonical digits (no sign, no leading zeros).
    /// Parses `value` for `currency`.
    pub fn from_api(currency: Currency, value: &str) -> Result<Self, AmountError> {
        if value.is_empty() {
            return Err(AmountError::Malformed("empty value"));
        }
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::Malformed("value must be digits only (minor units)"));
        }
        if value.len() > 1 && value.starts_with('0') {
            return Err(AmountError::Malformed("value has leading zeros"));
        }
        if value.len() > Self::MAX_DIGITS {
            return Err(AmountError::TooLarge { max: Self::MAX_MINOR });
        }
        let minor: i64 =
            value.parse().map_err(|_| AmountError::Malformed("value is not a number"))?;
        Self::from_minor(currency, minor)
    }

    /// Major-unit text: `"1250.50"`, `"1250.5"`, `"1250"` for PHP; `"12500"` for KRW. At least
    /// one digit before the decimal mark, at least one after it if it is present, and no more
    /// decimals than the currency has.
    pub fn from_major_str(currency: Currency, text: &str) -> Result<Self, AmountError> {
        let (int, frac) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::Malformed("expected digits before the decimal mark"));
        }
        let frac = frac.unwrap_or("");
        if text.ends_with('.') {
            return Err(AmountError::Malformed("no digits after the decimal mark"));
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::Malformed("expected digits after the decimal mark"));
        }
        let exp = currency.exponent();
        if frac.len() > exp as usize {
            return Err(AmountError::TooPrecise { currency, exponent: exp, found: frac.len() });
        }
        let int = int.trim_start_matches('0');
        if int.len() + exp as usize > Self::MAX_DIGITS {
            return Err(AmountError::TooLarge { max: Self::MAX_MINOR });
        }
        let mut minor: i64 = 0;
        let pad = exp as usize - frac.len();
        for b in int.bytes().chain(frac.bytes()).chain(std::iter::repeat_n(b'0', pad)) {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(b - b'0')))
                .ok_or(AmountError::Overflow)?;
        }
        Self::from_minor(currency, minor)
    }

    /// Major-unit text with exactly the currency's decimals: `"1250.50"`, `"12500"`, `"-1.250"`.
    pub fn to_major_string(&self) -> String {
        let exp = self.currency.exponent() as usize;
        let digits = self.minor.unsigned_abs().to_string();
        let sign = if self.minor < 0 { "-" } else { "" };
        if exp == 0 {
            return format!("{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = exp + 1);
        let (int, frac) = padded.split_at(padded.len() - exp);
        format!("{sign}{int}.{frac}")
    }

    /// The amount as a `Decimal` in major units (exact: 15 digits fit easily).
    pub fn to_decimal(&self) -> rust_decimal::Decimal {
        rust_decimal::Decimal::new(self.minor, self.currency.exponent())
    }

    fn same_currency(&self, other: &Amount) -> Result<(), AmountError> {
        if self.currency != other.currency {
            return Err(AmountError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            });
        }
        Ok(())
    }

    pub fn checked_add(&self, other: &Amount) -> Result<Amount, AmountError> {
        self.same_currency(other)?;
        let m = self.minor.checked_add(other.minor).ok_or(AmountError::Overflow)?;
        Self::from_minor(self.currency, m)
    }

    pub fn checked_sub(&self, other: &Amount) -> Result<Amount, AmountError> {
        self.same_currency(other)?;
        let m = self.minor.checked_sub(other.minor).ok_or(AmountError::Overflow)?;
        Self::from_minor(self.currency, m)
    }

    pub fn checked_neg(&self) -> Amount {
        // |minor| <= MAX_MINOR, so negation cannot overflow.
        Amount { currency: self.currency, minor: -self.minor }
    }

    /// Compares two amounts of the same currency.
    pub fn checked_cmp(&self, other: &Amount) -> Result<std::cmp::Ordering, AmountError> {
        self.same_currency(other)?;
        Ok(self.minor.cmp(&other.minor))
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency, self.to_major_string())
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency, self.to_major_string())
    }
}

/// The API wire form, before validation.
#[derive(Serialize, Deserialize)]
struct ApiAmount<'a> {
    currency: std::borrow::Cow<'a, str>,
    value: std::borrow::Cow<'a, str>,
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ApiAmount { currency: self.currency.code().into(), value: self.minor.to_string().into() }
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = ApiAmount::deserialize(d)?;
        let currency = Currency::from_code(&raw.currency).map_err(serde::de::Error::custom)?;
        Amount::from_api(currency, &raw.value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str) -> Currency {
        Currency::from_code(code).unwrap()
    }

    #[test]
    fn api_form_examples() {
        let php = Amount::from_api(c("PHP"), "125050").unwrap();
        assert_eq!(php.to_major_string(), "1250.50");
        assert_eq!(Amount::from_api(c("KRW"), "12500").unwrap().to_major_string(), "12500");
        assert_eq!(Amount::from_api(c("BHD"), "1250").unwrap().to_major_string(), "1.250");
        let json = serde_json::to_string(&php).unwrap();
        assert_eq!(json, r#"{"currency":"PHP","value":"125050"}"#);
        assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), php);
    }

    #[test]
    fn api_form_refusals() {
        for bad in ["", "-1", "+1", "1.0", "1e3", " 1", "1 ", "01", "٣", "1000000000000000"] {
            assert!(Amount::from_api(c("PHP"), bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<Amount>(r#"{"currency":"XAU","value":"1"}"#).is_err());
        assert!(serde_json::from_str::<Amount>(r#"{"currency":"PHP","value":1}"#).is_err());
    }

    #[test]
    fn major_text() {
        assert_eq!(Amount::from_major_str(c("PHP"), "1250.5").unwrap().minor(), 125050);
        assert_eq!(Amount::from_major_str(c("CNY"), "23.72").unwrap().minor(), 2372);
        assert_eq!(Amount::from_major_str(c("KHR"), "5000.0").unwrap().minor(), 500000);
        assert_eq!(Amount::from_major_str(c("BHD"), "0.001").unwrap().minor(), 1);
        assert_eq!(Amount::from_major_str(c("KRW"), "007").unwrap().minor(), 7);
        for bad in ["", ".5", "5.", "1.234", "-1", "+1", "1e2", " 1", "1,00", "1.2.3"] {
            assert!(Amount::from_major_str(c("PHP"), bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            Amount::from_major_str(c("KRW"), "1.0"),
            Err(AmountError::TooPrecise { found: 1, exponent: 0, .. })
        ));
        assert!(Amount::from_major_str(c("PHP"), "99999999999999999999999").is_err());
        assert_eq!(Amount::from_minor(c("BHD"), -1250).unwrap().to_major_string(), "-1.250");
        assert_eq!(Amount::from_minor(c("PHP"), 5).unwrap().to_major_string(), "0.05");
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Amount::from_minor(c("PHP"), Amount::MAX_MINOR).unwrap();
        let one = Amount::from_minor(c("PHP"), 1).unwrap();
        assert_eq!(a.checked_add(&one), Err(AmountError::TooLarge { max: Amount::MAX_MINOR }));
        let k = Amount::from_minor(c("KRW"), 1).unwrap();
        assert!(matches!(one.checked_add(&k), Err(AmountError::CurrencyMismatch { .. })));
        assert_eq!(one.checked_sub(&one).unwrap(), Amount::zero(c("PHP")));
        assert!(Amount::from_minor(c("PHP"), i64::MIN).is_err());
    }
}
