//! The rate book: mid rates as feeds give them, resolved for any pair directly, by inverse, or
//! across a pivot currency (feeds usually quote everything against USD or EUR). A rate older than
//! its source's staleness limit is not used: the pair is then unavailable, never priced stale.
//!
//! New rates are offered through [`RateBook::offer`], which holds them to the book's [`RateGuard`]:
//! an `as_of` later than now plus a small skew is refused (it would count as fresh for ever and
//! shadow every later rate), and so is a rate that moves further from the one held than the
//! configured bound, unless the caller forces it (an admin who knows the market moved). A held
//! rate from beyond the skew is never fresh and never shadows a new one.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::currency::{Currency, CurrencyError};
use crate::rounding;

/// A currency pair: a price is units of `quote` per one unit of `base` (`CNY/PHP 7.8123`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    pub base: Currency,
    pub quote: Currency,
}

impl Pair {
    pub fn new(base: Currency, quote: Currency) -> Self {
        Pair { base, quote }
    }

    pub fn inverse(self) -> Self {
        Pair { base: self.quote, quote: self.base }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.quote)
    }
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Pair {
    type Err = CurrencyError;
    /// `"CNY/PHP"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (b, q) = s.split_once('/').ok_or_else(|| CurrencyError::UnknownCode(s.into()))?;
        Ok(Pair { base: b.parse()?, quote: q.parse()? })
    }
}

/// Why a rate was refused or a pair could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("rate for {pair} must be positive")]
    NotPositive { pair: Pair },
    #[error("a rate needs two different currencies, {pair} has one")]
    SameCurrency { pair: Pair },
    #[error("no rate for {pair}")]
    Unavailable { pair: Pair },
    #[error("the rate for {pair} is stale (as of {as_of})")]
    Stale { pair: Pair, as_of: DateTime<Utc> },
    #[error("rate arithmetic overflows for {pair}")]
    Overflow { pair: Pair },
    #[error("the rate for {pair} is as of {as_of}, later than now ({now}) plus the allowed skew of {skew_s} s")]
    FromFuture { pair: Pair, as_of: DateTime<Utc>, now: DateTime<Utc>, skew_s: i64 },
    #[error("the rate for {pair} moves {move_bps} bps (from {held} to {rate}), more than the {max_bps} bps allowed")]
    MoveTooLarge { pair: Pair, held: Decimal, rate: Decimal, move_bps: Decimal, max_bps: u32 },
}

/// What a new rate is held to before the book takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateGuard {
    /// How far past now an `as_of` may lie (the source's clock and ours differ a little).
    pub as_of_skew: Duration,
    /// Largest move from the rate held for the pair, in basis points of the held rate; `None`
    /// takes any move.
    pub move_bps_max: Option<u32>,
}

impl Default for RateGuard {
    fn default() -> Self {
        RateGuard { as_of_skew: Duration::seconds(300), move_bps_max: None }
    }
}

/// A mid rate as a source published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MidRate {
    pub pair: Pair,
    pub rate: Decimal,
    /// The feed or person it came from (`ecb`, `admin:treasury-1`); its staleness limit applies.
    pub source: String,
    pub as_of: DateTime<Utc>,
}

/// A mid rate for the pair asked for, with how it was derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedRate {
    pub pair: Pair,
    pub mid: Decimal,
    /// The oldest `as_of` among the rates used.
    pub as_of: DateTime<Utc>,
    /// The published rates it was derived from, in order (one for direct or inverse, two for a
    /// cross).
    pub legs: Vec<Pair>,
    /// Where it came from: the `source` of each rate in `legs`, in the same order, joined with
    /// `+` (`ecb` for a direct or inverse rate, `builtin+ecb` for a cross whose first leg came
    /// from `builtin` and second from `ecb`; a source is named once per leg, so `ecb+ecb` is a
    /// cross with both legs from `ecb`).
    pub source: String,
}

/// Every mid rate known, by pair as published.
#[derive(Debug, Clone)]
pub struct RateBook {
    rates: BTreeMap<Pair, MidRate>,
    max_age: BTreeMap<String, Duration>,
    default_max_age: Duration,
    pivots: Vec<Currency>,
    guard: RateGuard,
}

impl RateBook {
    /// `default_max_age` applies to sources without their own limit; `pivots` are tried in order
    /// for cross rates.
    pub fn new(default_max_age: Duration, pivots: Vec<Currency>) -> Self {
        RateBook {
            rates: BTreeMap::new(),
            max_age: BTreeMap::new(),
            default_max_age,
            pivots,
            guard: RateGuard::default(),
        }
    }

    /// Sets what [`RateBook::offer`] holds new rates to.
    pub fn set_guard(&mut self, guard: RateGuard) {
        self.guard = guard;
    }

    pub fn guard(&self) -> RateGuard {
        self.guard
    }

    /// Whether `as_of` lies beyond `now` plus the allowed skew.
    fn beyond_skew(&self, as_of: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now.checked_add_signed(self.guard.as_of_skew).is_some_and(|latest| as_of > latest)
    }

    /// The rate held for `pair` as published or as the inverse of the held one (a held rate from
    /// beyond the skew does not count).
    fn held_price(&self, pair: Pair, now: DateTime<Utc>) -> Option<(&MidRate, Decimal)> {
        if let Some(r) = self.rates.get(&pair).filter(|r| !self.beyond_skew(r.as_of, now)) {
            return Some((r, r.rate));
        }
        let r = self.rates.get(&pair.inverse()).filter(|r| !self.beyond_skew(r.as_of, now))?;
        Some((r, Decimal::ONE.checked_div(r.rate)?))
    }

    /// How far `rate` moves from the rate held for its pair, in basis points of the held rate
    /// (`None` when none is held, or when the move is too large to compute).
    pub fn move_bps(&self, rate: &MidRate, now: DateTime<Utc>) -> Option<Decimal> {
        let (_, held) = self.held_price(rate.pair, now)?;
        let diff = rate.rate.checked_sub(held)?.abs();
        diff.checked_mul(Decimal::from(10_000))?.checked_div(held)
    }

    /// Checks a new rate against the guard without taking it: `Ok(false)` when it is older than
    /// the rate held (not an error: feeds arrive out of order); `force` lets a move past the bound
    /// through, never a rate from the future.
    pub fn check(
        &self,
        rate: &MidRate,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<bool, RateError> {
        let pair = rate.pair;
        if pair.base == pair.quote {
            return Err(RateError::SameCurrency { pair });
        }
        if rate.rate <= Decimal::ZERO {
            return Err(RateError::NotPositive { pair });
        }
        if self.beyond_skew(rate.as_of, now) {
            return Err(RateError::FromFuture {
                pair,
                as_of: rate.as_of,
                now,
                skew_s: self.guard.as_of_skew.num_seconds(),
            });
        }
        if let Some(held) = self.rates.get(&pair) {
            if held.as_of > rate.as_of && !self.beyond_skew(held.as_of, now) {
                return Ok(false);
            }
        }
        if let (Some(max_bps), false) = (self.guard.move_bps_max, force) {
            if let Some((_, held)) = self.held_price(pair, now) {
                // A move too large to compute is too large.
                let move_bps = self.move_bps(rate, now).unwrap_or(Decimal::MAX);
                if move_bps > Decimal::from(max_bps) {
                    return Err(RateError::MoveTooLarge {
                        pair,
                        held: held.round_dp(12).normalize(),
                        rate: rate.rate,
                        move_bps: move_bps.round_dp(2),
                        max_bps,
                    });
                }
            }
        }
        Ok(true)
    }

    /// Takes a new rate if it passes [`RateBook::check`]; returns whether it was taken.
    pub fn offer(
        &mut self,
        rate: MidRate,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<bool, RateError> {
        if !self.check(&rate, now, force)? {
            return Ok(false);
        }
        self.rates.insert(rate.pair, rate);
        Ok(true)
    }

    /// Sets the staleness limit of one source.
    pub fn set_max_age(&mut self, source: &str, max_age: Duration) {
        self.max_age.insert(source.to_owned(), max_age);
    }

    /// Records a rate without the guard (rates already taken once, snapshots). A rate older than
    /// the one held for the pair is ignored (feeds can arrive out of order); returns whether it was
    /// taken. New rates from outside go through [`RateBook::offer`].
    pub fn upsert(&mut self, rate: MidRate) -> Result<bool, RateError> {
        if rate.pair.base == rate.pair.quote {
            return Err(RateError::SameCurrency { pair: rate.pair });
        }
        if rate.rate <= Decimal::ZERO {
            return Err(RateError::NotPositive { pair: rate.pair });
        }
        if let Some(held) = self.rates.get(&rate.pair) {
            if held.as_of > rate.as_of {
                return Ok(false);
            }
        }
        self.rates.insert(rate.pair, rate);
        Ok(true)
    }

    /// Every rate held, in pair order.
    pub fn rates(&self) -> impl Iterator<Item = &MidRate> {
        self.rates.values()
    }

    /// Whether a held rate is within its source's limit at `now`. A rate from beyond the allowed
    /// skew is not: it would otherwise stay fresh for ever.
    pub fn is_fresh(&self, rate: &MidRate, now: DateTime<Utc>) -> bool {
        let limit = self.max_age.get(&rate.source).copied().unwrap_or(self.default_max_age);
        now.signed_duration_since(rate.as_of) <= limit && !self.beyond_skew(rate.as_of, now)
    }

    /// A fresh mid for `pair` published directly or as its inverse. `Err(Some(stale))` when only a
    /// stale one exists.
    fn leg(&self, pair: Pair, now: DateTime<Utc>) -> Result<(Decimal, &MidRate), Option<MidRate>> {
        let mut stale = None;
        if let Some(r) = self.rates.get(&pair) {
            if self.is_fresh(r, now) {
                return Ok((r.rate, r));
            }
            stale = Some(r.clone());
        }
        if let Some(r) = self.rates.get(&pair.inverse()) {
            if self.is_fresh(r, now) {
                let inv = Decimal::ONE.checked_div(r.rate).ok_or(None)?;
                return Ok((inv, r));
            }
            stale = stale.or_else(|| Some(r.clone()));
        }
        Err(stale)
    }

    /// The mid rate for `pair` at `now`: direct, inverse, or across the first pivot that has two
    /// fresh legs.
    pub fn resolve(&self, pair: Pair, now: DateTime<Utc>) -> Result<ResolvedRate, RateError> {
        if pair.base == pair.quote {
            return Err(RateError::SameCurrency { pair });
        }
        let mut stale: Option<MidRate> = None;
        match self.leg(pair, now) {
            Ok((mid, r)) => {
                return Ok(ResolvedRate {
                    pair,
                    mid: rounding::mid(mid),
                    as_of: r.as_of,
                    legs: vec![pair],
                    source: r.source.clone(),
                })
            }
            Err(s) => stale = stale.or(s),
        }
        for &pivot in &self.pivots {
            if pivot == pair.base || pivot == pair.quote {
                continue;
            }
            let first = Pair::new(pair.base, pivot);
            let second = Pair::new(pivot, pair.quote);
            match (self.leg(first, now), self.leg(second, now)) {
                (Ok((a, ra)), Ok((b, rb))) => {
                    let mid = a.checked_mul(b).ok_or(RateError::Overflow { pair })?;
                    if mid <= Decimal::ZERO {
                        // Both legs positive but the product underflowed to zero: unusable.
                        return Err(RateError::Overflow { pair });
                    }
                    return Ok(ResolvedRate {
                        pair,
                        mid: rounding::mid(mid),
                        as_of: ra.as_of.min(rb.as_of),
                        legs: vec![first, second],
                        source: format!("{}+{}", ra.source, rb.source),
                    });
                }
                (a, b) => {
                    stale = stale.or(a.err().flatten()).or(b.err().flatten());
                }
            }
        }
        Err(match stale {
            Some(r) => RateError::Stale { pair, as_of: r.as_of },
            None => RateError::Unavailable { pair },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn c(s: &str) -> Currency {
        Currency::from_code(s).unwrap()
    }
    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }
    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_780_000_000 + secs, 0).unwrap()
    }
    fn rate(pair: &str, r: &str, at: i64) -> MidRate {
        MidRate { pair: pair.parse().unwrap(), rate: d(r), source: "ecb".into(), as_of: t(at) }
    }

    fn book() -> RateBook {
        let mut b = RateBook::new(Duration::seconds(600), vec![c("USD"), c("EUR")]);
        b.upsert(rate("USD/CNY", "7.1", 0)).unwrap();
        b.upsert(rate("USD/PHP", "56.8", 0)).unwrap();
        b.upsert(rate("CNY/KRW", "190.25", 0)).unwrap();
        b
    }

    #[test]
    fn direct_inverse_and_cross() {
        let b = book();
        let direct = b.resolve("CNY/KRW".parse().unwrap(), t(10)).unwrap();
        assert_eq!(direct.mid, d("190.25"));
        let inverse = b.resolve("CNY/USD".parse().unwrap(), t(10)).unwrap();
        assert_eq!(inverse.mid, d("0.140845070423"));
        let cross = b.resolve("CNY/PHP".parse().unwrap(), t(10)).unwrap();
        assert_eq!(cross.mid, d("8")); // 56.8 / 7.1
        assert_eq!(cross.legs.len(), 2);
        assert_eq!((direct.source.as_str(), inverse.source.as_str()), ("ecb", "ecb"));
        assert_eq!(cross.source, "ecb+ecb");
    }

    #[test]
    fn a_cross_names_the_source_of_each_leg_in_order() {
        let mut b = book();
        let admin = |pair: &str, r: &str, at: i64| MidRate {
            source: "admin:treasury-1".into(),
            ..rate(pair, r, at)
        };
        b.upsert(admin("USD/PHP", "57", 5)).unwrap();
        let cross = b.resolve("CNY/PHP".parse().unwrap(), t(10)).unwrap();
        // CNY/USD (the inverse of ecb's USD/CNY), then USD/PHP (the admin's).
        assert_eq!(cross.legs, vec!["CNY/USD".parse().unwrap(), "USD/PHP".parse().unwrap()]);
        assert_eq!(cross.source, "ecb+admin:treasury-1");
        // The older leg's time.
        assert_eq!(cross.as_of, t(0));
    }

    #[test]
    fn stale_and_missing_are_unavailable() {
        let mut b = book();
        let pair: Pair = "CNY/KRW".parse().unwrap();
        assert!(matches!(b.resolve(pair, t(601)), Err(RateError::Stale { .. })));
        b.set_max_age("ecb", Duration::seconds(3600));
        assert!(b.resolve(pair, t(601)).is_ok());
        assert!(matches!(
            b.resolve("CNY/THB".parse().unwrap(), t(1)),
            Err(RateError::Unavailable { .. })
        ));
        assert!(matches!(b.upsert(rate("CNY/THB", "0", 0)), Err(RateError::NotPositive { .. })));
        assert!(matches!(b.upsert(rate("CNY/CNY", "1", 0)), Err(RateError::SameCurrency { .. })));
    }

    #[test]
    fn a_rate_from_the_future_is_refused_and_never_fresh() {
        let mut b = book();
        let pair: Pair = "CNY/KRW".parse().unwrap();
        // 300 s of skew is allowed; 301 s is not.
        assert!(b.offer(rate("CNY/KRW", "190.3", 310), t(10), false).unwrap());
        let err = b.offer(rate("CNY/KRW", "190.4", 10 + 301 + 300), t(10), false).unwrap_err();
        assert!(matches!(err, RateError::FromFuture { .. }), "{err}");
        assert!(err.to_string().contains("later than now"), "{err}");
        // One that got in unguarded (an older build) is not fresh and does not shadow new ones.
        b.upsert(rate("CNY/KRW", "999", 86_400)).unwrap();
        assert!(matches!(b.resolve(pair, t(20)), Err(RateError::Stale { .. })));
        assert!(b.offer(rate("CNY/KRW", "190.5", 20), t(20), false).unwrap());
        assert_eq!(b.resolve(pair, t(21)).unwrap().mid, d("190.5"));
    }

    #[test]
    fn an_outsized_move_is_refused_unless_forced() {
        let mut b = book();
        b.set_guard(RateGuard { move_bps_max: Some(500), ..RateGuard::default() });
        let pair: Pair = "CNY/KRW".parse().unwrap();
        // 190.25 → 199.76 is 499.87 bps: taken.
        assert!(b.offer(rate("CNY/KRW", "199.76", 1), t(1), false).unwrap());
        // 199.76 → 210 is 512.6 bps: refused, the held rate stays.
        let err = b.offer(rate("CNY/KRW", "210", 2), t(2), false).unwrap_err();
        assert!(
            matches!(&err, RateError::MoveTooLarge { move_bps, max_bps: 500, .. } if *move_bps == d("512.62")),
            "{err}"
        );
        assert_eq!(b.resolve(pair, t(3)).unwrap().mid, d("199.76"));
        // Against the inverse too: KRW/CNY held as 1/199.76.
        assert!(matches!(
            b.check(&rate("KRW/CNY", "0.01", 3), t(3), false),
            Err(RateError::MoveTooLarge { .. })
        ));
        // Forced, it is taken; a rate from the future cannot be forced.
        assert!(b.offer(rate("CNY/KRW", "210", 2), t(2), true).unwrap());
        assert_eq!(b.resolve(pair, t(3)).unwrap().mid, d("210"));
        assert!(matches!(
            b.offer(rate("CNY/KRW", "210", 4_000), t(3), true),
            Err(RateError::FromFuture { .. })
        ));
        // A pair with nothing held takes any first rate; an older rate is not taken, not refused.
        assert!(b.offer(rate("CNY/THB", "4.9", 1), t(1), false).unwrap());
        assert!(!b.offer(rate("CNY/KRW", "1", 0), t(3), false).unwrap());
    }

    #[test]
    fn older_rates_do_not_replace_newer() {
        let mut b = book();
        assert!(!b.upsert(rate("CNY/KRW", "1", -5)).unwrap());
        assert!(b.upsert(rate("CNY/KRW", "191", 5)).unwrap());
        assert_eq!(b.resolve("CNY/KRW".parse().unwrap(), t(6)).unwrap().mid, d("191"));
    }
}
