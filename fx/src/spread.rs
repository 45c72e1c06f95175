//! Treasury's spreads, in basis points: a default, overrides per partner, per pair, and per
//! partner × pair (most specific wins), every one clamped to configured bounds when used. The
//! client price is the mid moved against the wallet by the spread.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::rate::Pair;
use crate::rounding;

/// Why a spread was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpreadError {
    #[error("spread {0:?} is not a number of basis points (0 to 10000, at most 2 decimals)")]
    Malformed(String),
    #[error("spread {bps} bps is outside the bounds {min}..={max} bps")]
    OutOfBounds { bps: Bps, min: Bps, max: Bps },
    #[error("spread bounds are inverted: min {min} > max {max}")]
    InvertedBounds { min: Bps, max: Bps },
    #[error("price arithmetic overflows")]
    Overflow,
}

/// Basis points (1 bps = 0.01 %), 0 to 10,000 with at most two decimals.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bps(Decimal);

impl Bps {
    pub const ZERO: Bps = Bps(Decimal::ZERO);

    pub fn new(value: Decimal) -> Result<Self, SpreadError> {
        if value < Decimal::ZERO || value > Decimal::from(10_000) || value.normalize().scale() > 2 {
            return Err(SpreadError::Malformed(value.to_string()));
        }
        Ok(Bps(value.normalize()))
    }

    pub fn from_int(bps: u32) -> Result<Self, SpreadError> {
        Self::new(Decimal::from(bps))
    }

    pub fn value(self) -> Decimal {
        self.0
    }

    /// The client price: `mid × (1 + bps / 10 000)`, rounded up (see [`rounding::price_up`]).
    pub fn apply(self, mid: Decimal) -> Result<Decimal, SpreadError> {
        let factor = Decimal::ONE
            .checked_add(self.0.checked_div(Decimal::from(10_000)).ok_or(SpreadError::Overflow)?)
            .ok_or(SpreadError::Overflow)?;
        let price = mid.checked_mul(factor).ok_or(SpreadError::Overflow)?;
        Ok(rounding::price_up(price))
    }
}

impl fmt::Display for Bps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Bps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}bps", self.0)
    }
}

impl FromStr for Bps {
    type Err = SpreadError;
    /// Plain decimal text only (`35`, `35.5`): `rust_decimal` alone would also read `+5`, `.5`,
    /// `5.` and `1_0`, which the admin API's document does not allow.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || !digits(frac) {
            return Err(SpreadError::Malformed(s.into()));
        }
        let d = Decimal::from_str_exact(s).map_err(|_| SpreadError::Malformed(s.into()))?;
        Bps::new(d)
    }
}

impl Serialize for Bps {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which quotes an override applies to. `None` means any.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SpreadKey {
    pub partner: Option<String>,
    pub pair: Option<Pair>,
}

/// The spreads in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpreadPolicy {
    default: Bps,
    min: Bps,
    max: Bps,
    overrides: BTreeMap<SpreadKey, Bps>,
}

impl SpreadPolicy {
    pub fn new(default: Bps, min: Bps, max: Bps) -> Result<Self, SpreadError> {
        if min > max {
            return Err(SpreadError::InvertedBounds { min, max });
        }
        let mut p = SpreadPolicy { default: min, min, max, overrides: BTreeMap::new() };
        p.set(SpreadKey { partner: None, pair: None }, default)?;
        Ok(p)
    }

    pub fn bounds(&self) -> (Bps, Bps) {
        (self.min, self.max)
    }

    pub fn default_bps(&self) -> Bps {
        self.default
    }

    pub fn overrides(&self) -> impl Iterator<Item = (&SpreadKey, &Bps)> {
        self.overrides.iter()
    }

    /// Sets a spread (the key with neither partner nor pair is the default); a value outside the
    /// bounds is refused. Returns what it replaced.
    pub fn set(&mut self, key: SpreadKey, bps: Bps) -> Result<Option<Bps>, SpreadError> {
        if bps < self.min || bps > self.max {
            return Err(SpreadError::OutOfBounds { bps, min: self.min, max: self.max });
        }
        if key.partner.is_none() && key.pair.is_none() {
            return Ok(Some(std::mem::replace(&mut self.default, bps)));
        }
        Ok(self.overrides.insert(key, bps))
    }

    /// Removes an override; returns it.
    pub fn remove(&mut self, key: &SpreadKey) -> Option<Bps> {
        self.overrides.remove(key)
    }

    /// The spread for a partner's quote on a pair: partner × pair, then pair, then partner, then
    /// the default; clamped to the bounds.
    pub fn spread_for(&self, partner: &str, pair: Pair) -> Bps {
        let key = |partner: Option<&str>, pair: Option<Pair>| SpreadKey {
            partner: partner.map(str::to_owned),
            pair,
        };
        let found =
            [key(Some(partner), Some(pair)), key(None, Some(pair)), key(Some(partner), None)]
                .iter()
                .find_map(|k| self.overrides.get(k).copied())
                .unwrap_or(self.default);
        found.clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bps(s: &str) -> Bps {
        s.parse().unwrap()
    }

    #[test]
    fn most_specific_wins() {
        let mut p = SpreadPolicy::new(bps("50"), bps("0"), bps("300")).unwrap();
        let php: Pair = "CNY/PHP".parse().unwrap();
        let krw: Pair = "CNY/KRW".parse().unwrap();
        assert_eq!(p.spread_for("gcash", php), bps("50"));
        p.set(SpreadKey { partner: Some("gcash".into()), pair: None }, bps("80")).unwrap();
        p.set(SpreadKey { partner: None, pair: Some(php) }, bps("70")).unwrap();
        p.set(SpreadKey { partner: Some("gcash".into()), pair: Some(php) }, bps("60.5")).unwrap();
        assert_eq!(p.spread_for("gcash", php), bps("60.5"));
        assert_eq!(p.spread_for("kakao", php), bps("70"));
        assert_eq!(p.spread_for("gcash", krw), bps("80"));
        assert_eq!(p.spread_for("kakao", krw), bps("50"));
    }

    #[test]
    fn bounds_hold() {
        let mut p = SpreadPolicy::new(bps("50"), bps("10"), bps("300")).unwrap();
        let k = SpreadKey { partner: Some("x".into()), pair: None };
        assert!(matches!(p.set(k, bps("301")), Err(SpreadError::OutOfBounds { .. })));
        assert!("10000.001".parse::<Bps>().is_err());
        assert!("-1".parse::<Bps>().is_err());
        assert!("1e3".parse::<Bps>().is_err());
        for loose in ["+5", ".5", "5.", "1_0", "-0", " 5", "5 ", ""] {
            assert!(loose.parse::<Bps>().is_err(), "{loose:?}");
        }
        assert_eq!("05.50".parse::<Bps>().unwrap(), bps("5.5"));
        assert!(SpreadPolicy::new(bps("50"), bps("60"), bps("300")).is_err());
        assert!(SpreadPolicy::new(bps("50"), bps("60"), bps("30")).is_err());
    }

    #[test]
    fn price_moves_against_the_wallet() {
        let mid: Decimal = "7.8".parse().unwrap();
        assert_eq!(bps("100").apply(mid).unwrap().to_string(), "7.87800000");
        assert_eq!(bps("0").apply(mid).unwrap().to_string(), "7.80000000");
        assert_eq!(bps("1").apply("0.1234567".parse().unwrap()).unwrap().to_string(), "0.12346905");
    }
}
