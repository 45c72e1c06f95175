//! Proves the money core's promises over random inputs in 0-, 2- and 3-decimal currencies: text
//! forms round-trip, a conversion never under-collects and never over-collects by a whole minor
//! unit, refunds sum exactly to what was paid, the markup shown is never below the spread and is
//! the exact markup rounded up, and absurd inputs are errors, never panics.

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use qrbridge_fx::{Amount, Bps, Currency, Decimal, Quote, QuoteRequest, ResolvedRate};

const CODES: [&str; 9] = ["JPY", "KRW", "VND", "IDR", "PHP", "USD", "HKD", "BHD", "KWD"];

fn currency() -> impl Strategy<Value = Currency> {
    proptest::sample::select(&CODES[..]).prop_map(|c| Currency::from_code(c).unwrap())
}

fn amount() -> impl Strategy<Value = Amount> {
    (currency(), 0..=Amount::MAX_MINOR).prop_map(|(c, m)| Amount::from_minor(c, m).unwrap())
}

/// A mid rate as feeds give them: 1e-6 to 1e6 with up to 12 decimals.
fn mid() -> impl Strategy<Value = Decimal> {
    (1i64..=1_000_000_000_000, 0u32..=12)
        .prop_map(|(m, s)| Decimal::new(m, s))
        .prop_filter("within feed range", |d| {
            *d >= Decimal::new(1, 6) && *d <= Decimal::from(1_000_000)
        })
}

fn bps() -> impl Strategy<Value = Bps> {
    (0u32..=100_000).prop_map(|b| Bps::new(Decimal::new(i64::from(b), 2)).unwrap())
}

fn quote(
    pay_minor: i64,
    wallet: Currency,
    mid: Decimal,
    bps: Bps,
) -> Result<Quote, qrbridge_fx::QuoteError> {
    let now = Utc.with_ymd_and_hms(2026, 5, 22, 8, 0, 0).unwrap();
    let req = QuoteRequest {
        partner: "p",
        pay: Amount::from_minor(Currency::CNY, pay_minor).unwrap(),
        wallet_currency: wallet,
        now,
        ttl: Duration::seconds(60),
    };
    let pair = req_pair(wallet);
    let resolved = ResolvedRate { pair, mid, as_of: now, legs: vec![pair], source: "test".into() };
    Quote::from_mid(&req, resolved, bps)
}

fn req_pair(wallet: Currency) -> qrbridge_fx::Pair {
    qrbridge_fx::Pair::new(Currency::CNY, wallet)
}

/// `pay × price` exactly, as numerator/denominator in the wallet currency's minor units.
fn exact(pay_minor: i64, price: Decimal, wallet: Currency) -> (i128, i128) {
    let num = i128::from(pay_minor) * price.mantissa() * 10i128.pow(wallet.exponent());
    let den = 10i128.pow(price.scale() + Currency::CNY.exponent());
    (num, den)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn api_form_round_trips(a in amount()) {
        let again = Amount::from_api(a.currency(), &a.minor().to_string()).unwrap();
        prop_assert_eq!(again, a);
        let json = serde_json::to_string(&a).unwrap();
        prop_assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), a);
    }

    #[test]
    fn major_text_round_trips(a in amount()) {
        let text = a.to_major_string();
        prop_assert_eq!(text.split('.').nth(1).map_or(0, str::len), a.currency().exponent() as usize);
        prop_assert_eq!(Amount::from_major_str(a.currency(), &text).unwrap(), a);
    }

    #[test]
    fn conversion_never_under_or_over_collects(
        pay in 1i64..=10_000_000_000_000, wallet in currency(), mid in mid(), bps in bps(),
    ) {
        match quote(pay, wallet, mid, bps) {
            Ok(q) => {
                let (num, den) = exact(pay, q.price, wallet);
                let w = i128::from(q.wallet.minor());
                prop_assert!(w * den >= num, "under-collects: {} < {}/{}", w, num, den);
                prop_assert!((w - 1) * den < num, "over-collects a whole unit: {} for {}/{}", w, num, den);
                prop_assert!(q.price >= q.mid);
                prop_assert!(q.spread_amount.minor() >= 0);
                prop_assert_eq!(q.wallet_at_mid.checked_add(&q.spread_amount).unwrap(), q.wallet);
            }
            // Huge pay × price past the maximum amount: an error is the right answer.
            Err(e) => prop_assert!(matches!(e, qrbridge_fx::QuoteError::Amount(_)), "{e:?}"),
        }
    }

    #[test]
    fn the_markup_is_never_below_the_spread_and_is_exact(
        pay in 1i64..=100_000_000, wallet in currency(), mid in mid(), bps in bps(),
    ) {
        let q = quote(pay, wallet, mid, bps);
        prop_assume!(!matches!(q, Err(qrbridge_fx::QuoteError::Amount(_))));
        let q = q.unwrap();
        let markup = q.markup_bps();
        let spread = q.spread_bps.value();
        prop_assert_eq!(markup.scale(), 2);
        // The price is rounded up after the spread, and the markup up again: never below.
        prop_assert!(markup >= spread, "{} below the spread {}", markup, spread);
        // Above it by no more than the price's rounding (under 10^-8 of a price, 10^-4 / mid
        // bps) and the markup's own (under 0.01 bps).
        let slack = Decimal::new(1, 4).checked_div(q.mid).unwrap() + Decimal::new(1, 2);
        prop_assert!(markup - spread <= slack, "{} over {} by more than {}", markup, spread, slack);
        // Exact: the least hundredth of a basis point whose share of the mid reaches the gap
        // (these products are exact at these sizes).
        let gap = (q.price - q.mid) * Decimal::from(10_000);
        prop_assert!(markup * q.mid >= gap, "{} × {} < {}", markup, q.mid, gap);
        prop_assert!((markup - Decimal::new(1, 2)) * q.mid < gap, "{} is not the least", markup);
    }

    #[test]
    fn refunds_sum_exactly(
        pay in 1i64..=100_000_000, wallet in currency(), mid in mid(), bps in bps(),
        cuts in proptest::collection::vec(1i64..=100_000_000, 0..6),
    ) {
        // A quote past the largest amount is refused (the property above checks that); refunds
        // are about the quotes that exist.
        let q = quote(pay, wallet, mid, bps);
        prop_assume!(!matches!(q, Err(qrbridge_fx::QuoteError::Amount(_))));
        let q = q.unwrap();
        // Split `pay` into partial refunds at the cut points.
        let mut points: Vec<i64> = cuts.into_iter().map(|c| c % pay).filter(|c| *c > 0).collect();
        points.push(pay);
        points.sort_unstable();
        points.dedup();
        let cny = |m| Amount::from_minor(Currency::CNY, m).unwrap();
        let mut before = 0;
        let mut total = Amount::zero(wallet);
        let mut spread = Amount::zero(wallet);
        for p in points {
            let r = q.pricing().refund_wallet_amount(&cny(before), &cny(p - before)).unwrap();
            let split = q.pricing().refund_split(&cny(before), &cny(p - before)).unwrap();
            prop_assert_eq!(split.wallet, r);
            prop_assert!(r.minor() >= 0 && split.spread.minor() >= 0);
            total = total.checked_add(&r).unwrap();
            spread = spread.checked_add(&split.spread).unwrap();
            prop_assert!(total.minor() <= q.wallet.minor());
            prop_assert!(spread.minor() <= q.spread_amount.minor());
            before = p;
        }
        prop_assert_eq!(total, q.wallet);
        prop_assert_eq!(spread, q.spread_amount);
        prop_assert!(q.pricing().refund_wallet_amount(&cny(pay), &cny(1)).is_err());
    }

    #[test]
    fn absurd_text_is_an_error_not_a_panic(c in currency(), s in "\\PC{0,40}") {
        let _ = Amount::from_api(c, &s);
        let _ = Amount::from_major_str(c, &s);
        let _ = Currency::from_code(&s);
        let _ = Currency::from_numeric_str(&s);
        let _ = s.parse::<Bps>();
    }

    #[test]
    fn numeric_text_is_validated(c in currency(), s in "[0-9.+-]{0,25}") {
        if let Ok(a) = Amount::from_major_str(c, &s) {
            prop_assert!(a.minor() >= 0 && a.minor() <= Amount::MAX_MINOR);
            prop_assert!(!s.contains(['+', '-']));
        }
        if let Ok(a) = Amount::from_api(c, &s) {
            prop_assert_eq!(a.minor().to_string(), s);
        }
    }

    #[test]
    fn extreme_prices_are_errors(pay in 1i64..=Amount::MAX_MINOR, m in any::<i64>(), s in 0u32..=28, wallet in currency(), bps in bps()) {
        let mid = Decimal::new(m.saturating_abs().max(1), s);
        let _ = quote(pay, wallet, mid, bps);
        let _ = quote(pay, wallet, Decimal::MAX, bps);
    }
}
