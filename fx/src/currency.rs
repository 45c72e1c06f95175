//! ISO 4217 currencies that money can be held in: every [`Currency`] has a minor unit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("{0:?} is not an ISO 4217 alphabetic code")]
    UnknownCode(String),
    #[error("{0:?} is not an ISO 4217 numeric code")]
    UnknownNumeric(String),
    #[error("{0:?} has no minor unit")]
    NoMinorUnit(&'static str),
    #[error("{0:?} is a fund code, not a currency money is paid in")]
    Fund(&'static str),
}

/// An ISO 4217 currency with a defined minor unit (XAU, XXX and the like are refused at
/// construction, so `exponent()` cannot fail later).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Chinese yuan: what every merchant is paid in.
    pub const CNY: Currency = Currency(iso_currency::Currency::CNY);

    fn checked(c: iso_currency::Currency) -> Result<Self, CurrencyError> {
        if c.exponent().is_none() {
            return Err(CurrencyError::NoMinorUnit(c.code()));
        }
        if c.is_fund() {
            return Err(CurrencyError::Fund(c.code()));
        }
        Ok(Currency(c))
    }

    /// By alphabetic code, exactly as ISO writes it (upper case, three letters).
    pub fn from_code(code: &str) -> Result<Self, CurrencyError> {
        let c = iso_currency::Currency::from_code(code)
            .ok_or_else(|| CurrencyError::UnknownCode(code.chars().take(8).collect()))?;
        Self::checked(c)
    }

    /// By numeric code, as EMVCo tag 53 carries it (`"156"` for CNY): exactly three digits.
    pub fn from_numeric_str(code: &str) -> Result<Self, CurrencyError> {
        let unknown = || CurrencyError::UnknownNumeric(code.chars().take(8).collect());
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unknown());
        }
        let n: u16 = code.parse().map_err(|_| unknown())?;
        Self::from_numeric(n).map_err(|e| match e {
            CurrencyError::UnknownNumeric(_) => unknown(),
            other => other,
        })
    }

    /// By numeric code.
    pub fn from_numeric(n: u16) -> Result<Self, CurrencyError> {
        let c = iso_currency::Currency::from_numeric(n)
            .ok_or_else(|| CurrencyError::UnknownNumeric(n.to_string()))?;
        Self::checked(c)
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    pub fn numeric(self) -> u16 {
        self.0.numeric()
    }

    /// Decimal places of the minor unit (0 for KRW, 2 for PHP, 3 for BHD).
    pub fn exponent(self) -> u32 {
        // Construction refuses currencies without an exponent.
        u32::from(self.0.exponent().unwrap_or(0))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_code(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::from_code(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_numbers() {
        assert_eq!(Currency::from_numeric_str("156").unwrap(), Currency::CNY);
        assert_eq!(Currency::from_code("KRW").unwrap().exponent(), 0);
        assert_eq!(Currency::from_code("BHD").unwrap().exponent(), 3);
        assert_eq!(Currency::from_code("PHP").unwrap().numeric(), 608);
    }

    #[test]
    fn refuses_what_money_is_not_held_in() {
        assert_eq!(Currency::from_code("XAU"), Err(CurrencyError::NoMinorUnit("XAU")));
        assert_eq!(Currency::from_code("XXX"), Err(CurrencyError::NoMinorUnit("XXX")));
        assert_eq!(Currency::from_code("CLF"), Err(CurrencyError::Fund("CLF")));
        assert!(matches!(Currency::from_code("php"), Err(CurrencyError::UnknownCode(_))));
        assert!(matches!(Currency::from_code("ZZZ"), Err(CurrencyError::UnknownCode(_))));
        assert!(matches!(Currency::from_numeric_str("15"), Err(CurrencyError::UnknownNumeric(_))));
        assert!(matches!(Currency::from_numeric_str("+56"), Err(CurrencyError::UnknownNumeric(_))));
        assert!(matches!(Currency::from_numeric_str("999"), Err(CurrencyError::NoMinorUnit(_))));
        assert!(matches!(Currency::from_numeric_str("000"), Err(CurrencyError::UnknownNumeric(_))));
    }
}
