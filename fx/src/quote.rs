//! A quote: the binding, immutable price for paying one CNY amount from one wallet currency, and
//! the refund arithmetic at that price.
//!
//! FX is two legs linked together: the partner owes `wallet` (in its currency); the merchant's
//! acquirer is owed `pay` (CNY). The wallet amount splits into `wallet_at_mid` (the FX position
//! at the mid) and `spread_amount` (the house's margin), so rate and margin stay auditable.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountError};
use crate::currency::Currency;
use crate::rate::{Pair, RateBook, RateError, ResolvedRate};
use crate::rounding::{self, Direction};
use crate::spread::{Bps, SpreadError, SpreadPolicy};

/// Why a quote could not be priced, or a refund converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("the pay amount must be in CNY, not {0}")]
    PayNotCny(Currency),
    #[error("the pay amount must be positive")]
    NotPositive,
    #[error("the wallet currency must differ from CNY")]
    SameCurrency,
    #[error("quote time-to-live must be positive")]
    BadTtl,
    #[error(transparent)]
    Rate(#[from] RateError),
    #[error(transparent)]
    Spread(#[from] SpreadError),
    #[error(transparent)]
    Amount(#[from] AmountError),
    #[error("refund of {refund} would take the refunded total past the {paid} paid")]
    RefundExceedsPayment { refund: Amount, paid: Amount },
}

/// What to price.
#[derive(Debug, Clone)]
pub struct QuoteRequest<'a> {
    pub partner: &'a str,
    /// What the merchant receives, in CNY.
    pub pay: Amount,
    pub wallet_currency: Currency,
    pub now: DateTime<Utc>,
    pub ttl: Duration,
}

/// [`Quote::mid_source`] of a quote priced before quotes kept their rate's source.
pub const UNKNOWN_SOURCE: &str = "unknown";

fn unknown_source() -> String {
    UNKNOWN_SOURCE.to_owned()
}

/// A priced quote. Never changed once made: spreads or rates that change later do not touch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// `CNY/<wallet currency>`.
    pub pair: Pair,
    /// The mid rate used, and the published rates it came from.
    pub mid: Decimal,
    pub mid_legs: Vec<Pair>,
    /// The sources of `mid_legs`, joined with `+` (see [`ResolvedRate::source`]): what partners
    /// are shown as the reference's source. [`UNKNOWN_SOURCE`] for a quote priced before it was
    /// kept (records of older releases carry no source; it is not guessed).
    #[serde(default = "unknown_source")]
    pub mid_source: String,
    #[serde(with = "crate::time")]
    pub mid_as_of: DateTime<Utc>,
    pub spread_bps: Bps,
    /// The client price: wallet units per CNY, spread included, rounded up.
    pub price: Decimal,
    /// CNY, what the merchant receives.
    pub pay: Amount,
    /// What the partner owes: `pay × price` rounded up to the wallet currency's minor unit.
    pub wallet: Amount,
    /// `pay × mid` rounded up: the FX leg at the mid.
    pub wallet_at_mid: Amount,
    /// `wallet − wallet_at_mid`: the house's margin, never negative.
    pub spread_amount: Amount,
    #[serde(with = "crate::time")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "crate::time")]
    pub expires_at: DateTime<Utc>,
}

impl Quote {
    /// Prices `req` from the rate book and the spreads in force.
    pub fn price(
        req: &QuoteRequest<'_>,
        rates: &RateBook,
        spreads: &SpreadPolicy,
    ) -> Result<Quote, QuoteError> {
        if req.pay.currency() != Currency::CNY {
            return Err(QuoteError::PayNotCny(req.pay.currency()));
        }
        if !req.pay.is_positive() {
            return Err(QuoteError::NotPositive);
        }
        if req.wallet_currency == Currency::CNY {
            return Err(QuoteError::SameCurrency);
        }
        if req.ttl <= Duration::zero() {
            return Err(QuoteError::BadTtl);
        }
        let pair = Pair::new(Currency::CNY, req.wallet_currency);
        let mid = rates.resolve(pair, req.now)?;
        let spread_bps = spreads.spread_for(req.partner, pair);
        Self::from_mid(req, mid, spread_bps)
    }

    /// Prices `req` at a given mid (resolved for `CNY/<req.wallet_currency>`) and spread.
    pub fn from_mid(
        req: &QuoteRequest<'_>,
        resolved: ResolvedRate,
        spread_bps: Bps,
    ) -> Result<Quote, QuoteError> {
        let pair = Pair::new(Currency::CNY, req.wallet_currency);
        assert_eq!(resolved.pair, pair, "a mid for another pair");
        let ResolvedRate { mid, as_of: mid_as_of, legs: mid_legs, source: mid_source, .. } =
            resolved;
        let price = spread_bps.apply(mid)?;
        // Every quote can show its markup (see `rounding::markup_bps`: a price at most twice its
        // mid always can); checked here so that `markup_bps` never fails on a quote.
        rounding::markup_bps(mid, price).ok_or(SpreadError::Overflow)?;
        let wallet = rounding::convert(&req.pay, price, req.wallet_currency, Direction::Up)?;
        let wallet_at_mid = rounding::convert(&req.pay, mid, req.wallet_currency, Direction::Up)?;
        // price >= mid, both rounded up from exact products, so the margin cannot be negative.
        let spread_amount = wallet.checked_sub(&wallet_at_mid)?;
        assert!(
            !spread_amount.minor().is_negative(),
            "spread below zero: {wallet} vs {wallet_at_mid}"
        );
        let expires_at = req.now.checked_add_signed(req.ttl).ok_or(QuoteError::BadTtl)?;
        Ok(Quote {
            pair,
            mid,
            mid_legs,
            mid_source,
            mid_as_of,
            spread_bps,
            price,
            pay: req.pay,
            wallet,
            wallet_at_mid,
            spread_amount,
            created_at: req.now,
            expires_at,
        })
    }

    /// How far the price sits above the mid, in basis points, as partners are shown it:
    /// `(price / mid − 1) × 10 000` rounded up to hundredths (see [`rounding::markup_bps`]). It
    /// holds the price's own rounding, so it is at least `spread_bps` and may be a little more.
    pub fn markup_bps(&self) -> Decimal {
        rounding::markup_bps(self.mid, self.price)
            .expect("a quote's price is at most twice its positive mid (checked when priced)")
    }

    /// Whether the quote can no longer be paid at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }

    /// What a refund of this quote's payment is priced from (see [`Pricing`]).
    pub fn pricing(&self) -> Pricing {
        Pricing {
            pay: self.pay,
            wallet: self.wallet,
            price: self.price,
            spread_amount: self.spread_amount,
        }
    }
}

/// The part of a quote its payment's refunds are priced from. A payment keeps these four
/// figures itself, so a refund needs no read of the quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    /// CNY, what the merchant received.
    pub pay: Amount,
    /// What the partner paid.
    pub wallet: Amount,
    /// Wallet units per CNY, spread included.
    pub price: Decimal,
    /// The house's margin in `wallet`.
    pub spread_amount: Amount,
}

impl Pricing {
    /// How a refund of `refund` CNY (after `refunded_before`) splits on the wallet side: what the
    /// partner gets back, and the part of that which was spread. Both are cumulative, so a full
    /// refund gives back exactly the wallet amount and exactly the spread.
    pub fn refund_split(
        &self,
        refunded_before: &Amount,
        refund: &Amount,
    ) -> Result<RefundSplit, QuoteError> {
        let wallet = self.refund_wallet_amount(refunded_before, refund)?;
        let after = refunded_before.checked_add(refund)?;
        let spread_share = |cny: &Amount| -> Result<Amount, QuoteError> {
            Ok(rounding::pro_rata_down(&self.spread_amount, cny.minor(), self.pay.minor())?)
        };
        let spread = spread_share(&after)?.checked_sub(&spread_share(refunded_before)?)?;
        Ok(RefundSplit { wallet, spread })
    }

    /// The wallet amount of a refund of `refund` CNY, given the CNY already refunded.
    ///
    /// Cumulative at the quote's price: after this refund the wallet side has returned
    /// `⌊refunded_cny × price⌋`, or exactly `wallet` once everything is refunded; this refund is the
    /// difference. So partial refunds never sum above what was paid and a full refund returns it
    /// exactly.
    pub fn refund_wallet_amount(
        &self,
        refunded_before: &Amount,
        refund: &Amount,
    ) -> Result<Amount, QuoteError> {
        if !refund.is_positive() {
            return Err(QuoteError::NotPositive);
        }
        if refunded_before.minor() < 0 {
            return Err(QuoteError::Amount(AmountError::Negative));
        }
        let after = refunded_before.checked_add(refund)?;
        if after.checked_cmp(&self.pay)? == std::cmp::Ordering::Greater {
            return Err(QuoteError::RefundExceedsPayment { refund: *refund, paid: self.pay });
        }
        let returned = |cny: &Amount| -> Result<Amount, QuoteError> {
            if cny == &self.pay {
                Ok(self.wallet)
            } else {
                Ok(rounding::convert(cny, self.price, self.wallet.currency(), Direction::Down)?)
            }
        };
        Ok(returned(&after)?.checked_sub(&returned(refunded_before)?)?)
    }
}

/// The wallet side of a refund: see [`Pricing::refund_split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundSplit {
    /// What the partner gets back.
    pub wallet: Amount,
    /// The part of `wallet` that was spread revenue.
    pub spread: Amount,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::MidRate;
    use chrono::TimeZone;

    fn c(s: &str) -> Currency {
        Currency::from_code(s).unwrap()
    }

    fn setup() -> (RateBook, SpreadPolicy, DateTime<Utc>) {
        let now = Utc.with_ymd_and_hms(2026, 5, 22, 8, 15, 30).unwrap();
        let mut book = RateBook::new(Duration::seconds(600), vec![c("USD")]);
        book.upsert(MidRate {
            pair: "CNY/PHP".parse().unwrap(),
            rate: "7.8".parse().unwrap(),
            source: "test".into(),
            as_of: now,
        })
        .unwrap();
        let spreads =
            SpreadPolicy::new("100".parse().unwrap(), Bps::ZERO, "500".parse().unwrap()).unwrap();
        (book, spreads, now)
    }

    #[test]
    fn prices_a_quote() {
        let (book, spreads, now) = setup();
        let req = QuoteRequest {
            partner: "gcash",
            pay: Amount::from_minor(Currency::CNY, 10001).unwrap(),
            wallet_currency: c("PHP"),
            now,
            ttl: Duration::seconds(120),
        };
        let q = Quote::price(&req, &book, &spreads).unwrap();
        assert_eq!(q.price.to_string(), "7.87800000");
        assert_eq!(
            (q.mid_source.as_str(), q.markup_bps().to_string().as_str()),
            ("test", "100.00")
        );
        // 100.01 × 7.878 = 787.87878 -> 787.88
        assert_eq!(q.wallet.minor(), 78788);
        // 100.01 × 7.8 = 780.078 -> 780.08
        assert_eq!(q.wallet_at_mid.minor(), 78008);
        assert_eq!(q.spread_amount.minor(), 780);
        assert_eq!(q.expires_at, now + Duration::seconds(120));
        assert!(!q.is_expired(now + Duration::seconds(119)));
        assert!(q.is_expired(now + Duration::seconds(120)));
        let stale = QuoteRequest { now: now + Duration::seconds(601), ..req.clone() };
        assert!(matches!(Quote::price(&stale, &book, &spreads), Err(QuoteError::Rate(_))));
        let krw = QuoteRequest { wallet_currency: c("KRW"), ..req.clone() };
        assert!(matches!(Quote::price(&krw, &book, &spreads), Err(QuoteError::Rate(_))));
        let cny = QuoteRequest { wallet_currency: Currency::CNY, ..req.clone() };
        assert_eq!(Quote::price(&cny, &book, &spreads), Err(QuoteError::SameCurrency));
        let zero = QuoteRequest { pay: Amount::zero(Currency::CNY), ..req };
        assert_eq!(Quote::price(&zero, &book, &spreads), Err(QuoteError::NotPositive));
    }

    #[test]
    fn the_markup_holds_the_price_rounding_and_the_source_each_leg() {
        let (mut book, spreads, now) = setup();
        for (pair, rate, source) in [("USD/CNY", "7.12", "ecb"), ("USD/KRW", "1390", "feed-b")] {
            book.upsert(MidRate {
                pair: pair.parse().unwrap(),
                rate: rate.parse().unwrap(),
                source: source.into(),
                as_of: now - Duration::seconds(5),
            })
            .unwrap();
        }
        let req = QuoteRequest {
            partner: "gcash",
            pay: Amount::from_minor(Currency::CNY, 2372).unwrap(),
            wallet_currency: c("KRW"),
            now,
            ttl: Duration::seconds(120),
        };
        let q = Quote::price(&req, &book, &spreads).unwrap();
        // 1390 / 7.12 = 195.224719101123… (12 places), × 1.01 rounded up to 8 places.
        assert_eq!(q.mid.to_string(), "195.224719101124");
        assert_eq!(q.price.to_string(), "197.17696630");
        assert_eq!(q.mid_source, "ecb+feed-b");
        assert_eq!(q.mid_as_of, now - Duration::seconds(5));
        // (197.1769663 / 195.224719101124 − 1) × 10 000 = 100.0000004…: rounded up.
        assert_eq!(q.markup_bps().to_string(), "100.01");
        assert!(q.markup_bps() >= q.spread_bps.value());
    }

    #[test]
    fn a_quote_without_a_source_reads_as_unknown() {
        let (book, spreads, now) = setup();
        let req = QuoteRequest {
            partner: "gcash",
            pay: Amount::from_minor(Currency::CNY, 100).unwrap(),
            wallet_currency: c("PHP"),
            now,
            ttl: Duration::seconds(120),
        };
        let q = Quote::price(&req, &book, &spreads).unwrap();
        let mut json = serde_json::to_value(&q).unwrap();
        json.as_object_mut().unwrap().remove("mid_source");
        let old: Quote = serde_json::from_value(json).unwrap();
        assert_eq!(old, Quote { mid_source: UNKNOWN_SOURCE.into(), ..q });
    }

    #[test]
    fn refunds_sum_to_what_was_paid() {
        let (book, spreads, now) = setup();
        let req = QuoteRequest {
            partner: "gcash",
            pay: Amount::from_minor(Currency::CNY, 10001).unwrap(),
            wallet_currency: c("PHP"),
            now,
            ttl: Duration::seconds(120),
        };
        let q = Quote::price(&req, &book, &spreads).unwrap();
        let cny = |m| Amount::from_minor(Currency::CNY, m).unwrap();
        let r1 = q.pricing().refund_wallet_amount(&cny(0), &cny(3333)).unwrap();
        let r2 = q.pricing().refund_wallet_amount(&cny(3333), &cny(3333)).unwrap();
        let r3 = q.pricing().refund_wallet_amount(&cny(6666), &cny(3335)).unwrap();
        assert_eq!(r1.minor() + r2.minor() + r3.minor(), q.wallet.minor());
        assert!(matches!(
            q.pricing().refund_wallet_amount(&cny(6666), &cny(3336)),
            Err(QuoteError::RefundExceedsPayment { .. })
        ));
        assert_eq!(q.pricing().refund_wallet_amount(&cny(0), &cny(10001)).unwrap(), q.wallet);
    }
}
