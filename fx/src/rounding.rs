//! The one place where money and prices are rounded. Every rounding in qrbridge goes through
//! these functions, and each one rounds in the house's favour:
//!
//! - [`price_up`]: a client price (wallet currency per CNY) is rounded **up** to [`PRICE_DP`]
//!   decimal places: the wallet pays `CNY × price`, so a higher price never under-collects.
//! - [`convert`] with [`Direction::Up`]: what a wallet owes is rounded **up** to its currency's
//!   minor unit (the house never under-collects, and over-collects by less than one minor unit).
//! - [`convert`] with [`Direction::Down`]: what the house gives back (refunds) is rounded **down**;
//!   the refund rules in [`crate::quote`] make a full refund return exactly what was paid.
//! - [`pro_rata_down`]: the share of an amount that a partial refund gives back (the spread part
//!   of a refund) is rounded **down**; a full refund takes the whole amount.
//! - [`mid`]: a derived mid rate (an inverse or a cross) is kept to [`MID_DP`] places, to the
//!   nearest: the mid is the neutral reference and `price_up` rounds after the spread is applied.
//! - [`markup_bps`]: how far a client price sits above its mid, as shown to partners, is rounded
//!   **up** to [`MARKUP_DP`] places of a basis point: the cost of conversion the bridge discloses
//!   is never below the true one, so the house is never caught understating it (and the figure
//!   holds the price's own rounding, so it can sit a little above the spread).
//!
//! Conversions and markups are computed in exact integer arithmetic (`i128`), never through a
//! `Decimal` product or quotient that could silently drop digits.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::amount::{Amount, AmountError};
use crate::currency::Currency;

/// Decimal places of a client price.
pub const PRICE_DP: u32 = 8;
/// Decimal places kept of a derived mid rate.
pub const MID_DP: u32 = 12;
/// Decimal places of a markup in basis points (hundredths of a basis point).
pub const MARKUP_DP: u32 = 2;

/// Which way a conversion rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// What the house collects: round up.
    Up,
    /// What the house pays out: round down.
    Down,
}

/// A client price, rounded up to [`PRICE_DP`] places.
pub fn price_up(price: Decimal) -> Decimal {
    let mut p = price.round_dp_with_strategy(PRICE_DP, RoundingStrategy::ToPositiveInfinity);
    p.rescale(PRICE_DP);
    p
}

/// A derived mid rate, to the nearest [`MID_DP`] places.
pub fn mid(rate: Decimal) -> Decimal {
    rate.round_dp_with_strategy(MID_DP, RoundingStrategy::MidpointNearestEven).normalize()
}

/// How far `price` sits above `mid`, in basis points: `(price / mid − 1) × 10 000`, rounded up
/// (towards +∞) to [`MARKUP_DP`] places and written with exactly that many (`50.00`, `50.01`).
///
/// Exact: both are brought to one scale as integers `p` and `m`, and the result is
/// `⌈(p − m) × 10^(4 + MARKUP_DP) / m⌉` by long division, one digit at a time, so no
/// intermediate exceeds `10 m`. `None` when `mid` is not positive or the integers overflow `i128`,
/// which no quote's price and mid can do: a price at most twice its mid (spreads stop at 10 000
/// bps) keeps both integers below 2^98.
pub fn markup_bps(mid: Decimal, price: Decimal) -> Option<Decimal> {
    if mid <= Decimal::ZERO {
        return None;
    }
    let (mid, price) = (mid.normalize(), price.normalize());
    let scale = mid.scale().max(price.scale());
    let at_scale = |d: Decimal| d.mantissa().checked_mul(10i128.checked_pow(scale - d.scale())?);
    let (m, p) = (at_scale(mid)?, at_scale(price)?);
    let diff = p.checked_sub(m)?;
    // Floor division, then one decimal digit at a time; the remainder stays in [0, m).
    let mut q = diff.div_euclid(m);
    let mut rem = diff.rem_euclid(m);
    for _ in 0..4 + MARKUP_DP {
        rem = rem.checked_mul(10)?;
        q = q.checked_mul(10)?.checked_add(rem / m)?;
        rem %= m;
    }
    if rem != 0 {
        q = q.checked_add(1)?;
    }
    Decimal::try_from_i128_with_scale(q, MARKUP_DP).ok()
}

/// `total × part / whole`, rounded down to `total`'s minor unit: the share of `total` that `part`
/// of `whole` stands for. `0 ≤ part ≤ whole`, `whole > 0`, `total ≥ 0`.
pub fn pro_rata_down(total: &Amount, part: i64, whole: i64) -> Result<Amount, AmountError> {
    if total.minor() < 0 || part < 0 || whole <= 0 || part > whole {
        return Err(AmountError::Malformed("pro rata share out of range"));
    }
    let q = i128::from(total.minor()) * i128::from(part) / i128::from(whole);
    Amount::from_minor(total.currency(), i64::try_from(q).map_err(|_| AmountError::Overflow)?)
}

/// `amount × price` in currency `to`, rounded to `to`'s minor unit in `direction`.
///
/// `price` is units of `to` per one unit of `amount`'s currency and must be positive; `amount`
/// must not be negative. Exact: `minor_to = amount_minor × mantissa × 10^exp_to /
/// 10^(scale + exp_from)` in `i128`, with overflow an error.
pub fn convert(
    amount: &Amount,
    price: Decimal,
    to: Currency,
    direction: Direction,
) -> Result<Amount, AmountError> {
    if amount.minor() < 0 {
        return Err(AmountError::Negative);
    }
    if price <= Decimal::ZERO {
        return Err(AmountError::Malformed("conversion price must be positive"));
    }
    let pow = |e: u32| 10i128.checked_pow(e).ok_or(AmountError::Overflow);
    let num = i128::from(amount.minor())
        .checked_mul(price.mantissa())
        .and_then(|n| n.checked_mul(pow(to.exponent()).ok()?))
        .ok_or(AmountError::Overflow)?;
    let den = pow(price.scale() + amount.currency().exponent())?;
    let q = num / den;
    let q = match direction {
        Direction::Down => q,
        Direction::Up if num % den != 0 => q + 1,
        Direction::Up => q,
    };
    let minor = i64::try_from(q).map_err(|_| AmountError::Overflow)?;
    Amount::from_minor(to, minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn prices_round_up() {
        assert_eq!(price_up(d("7.812300001")).to_string(), "7.81230001");
        assert_eq!(price_up(d("7.8123")).to_string(), "7.81230000");
    }

    #[test]
    fn conversions_round_in_the_house_favour() {
        let cny = Currency::CNY;
        let php = Currency::from_code("PHP").unwrap();
        let krw = Currency::from_code("KRW").unwrap();
        let pay = Amount::from_minor(cny, 10001).unwrap(); // CNY 100.01
        let up = convert(&pay, d("7.8123"), php, Direction::Up).unwrap();
        assert_eq!(up.minor(), 78131); // 781.308123 -> 781.31
        let down = convert(&pay, d("7.8123"), php, Direction::Down).unwrap();
        assert_eq!(down.minor(), 78130);
        let won = convert(&pay, d("190.5"), krw, Direction::Up).unwrap();
        assert_eq!(won.minor(), 19052); // 19051.905 -> 19052
        let exact = convert(&Amount::from_minor(cny, 100).unwrap(), d("2"), php, Direction::Up);
        assert_eq!(exact.unwrap().minor(), 200);
    }

    #[test]
    fn markups_round_up_to_hundredths_of_a_basis_point() {
        let m = |mid: &str, price: &str| markup_bps(d(mid), d(price)).map(|b| b.to_string());
        // Exact: 190.25 × 1.005 = 191.20125.
        assert_eq!(m("190.25", "191.20125000").as_deref(), Some("50.00"));
        assert_eq!(m("7.8", "7.878").as_deref(), Some("100.00"));
        // 8.13202247191 × 1.005 = 8.1726825842695…, the price 8.17268259 (8 places, up): its
        // rounding adds 0.000007 bps, and the markup rounds up to 50.01.
        assert_eq!(m("8.13202247191", "8.17268259").as_deref(), Some("50.01"));
        // Up, never to the nearest: 1/3 bps above.
        assert_eq!(m("3", "3.0001").as_deref(), Some("0.34"));
        // Price equal to the mid; a price below it (a negative markup, rounded towards +∞).
        assert_eq!(m("7.12", "7.12000000").as_deref(), Some("0.00"));
        assert_eq!(m("3", "2.9999").as_deref(), Some("-0.33"));
        // Whole multiples and tiny or large mids.
        assert_eq!(m("0.000001", "0.000002").as_deref(), Some("10000.00"));
        assert_eq!(m("1000000", "1000000.01").as_deref(), Some("0.01"));
        assert_eq!(m("0.140845070423", "0.14155930").as_deref(), Some("50.72"));
        // Nonsense is None, never a panic.
        assert_eq!(m("0", "1"), None);
        assert_eq!(m("-1", "1"), None);
        assert_eq!(markup_bps(Decimal::new(1, 28), Decimal::MAX), None);
    }

    #[test]
    fn conversion_refuses_nonsense() {
        let pay = Amount::from_minor(Currency::CNY, 1).unwrap();
        assert!(convert(&pay, Decimal::ZERO, Currency::CNY, Direction::Up).is_err());
        assert!(convert(&pay.checked_neg(), d("1"), Currency::CNY, Direction::Up).is_err());
        let big = Amount::from_minor(Currency::CNY, Amount::MAX_MINOR).unwrap();
        assert!(convert(&big, Decimal::MAX, Currency::CNY, Direction::Up).is_err());
        assert!(convert(&big, d("1000"), Currency::CNY, Direction::Up).is_err());
    }
}
