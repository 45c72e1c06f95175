//! The daily anti-money-laundering monitoring report (issue 15): `suspicious-<partner>.csv`
//! beside each business day's settlement files.
//!
//! **What is looked at.** Every payment made that day ([`super::BusinessDays::day_of`] of its
//! `created_at`), whatever its state: an attempt that was declined, cancelled or is still in doubt
//! says as much about structuring or a burst as one that succeeded, so each line says how many of
//! its payments succeeded. Payments the risk rules refused outright are not payments (nothing of
//! them is in the payment records) and are not looked at here.
//!
//! **The rules** (thresholds from `[risk.monitoring]`, [`Monitoring`]):
//! - `NEAR_LIMIT`: one payer of one partner with at least `near_limit_payments_min` payments
//!   that day each *just under* one of the partner's amount maximums in force
//!   ([`RiskRules`]: the partner's `payment_cny_minor_max`, and per wallet currency its
//!   `payment_cny_minor_max` and `payment_wallet_minor_max`). Just under: `amount <= limit` and
//!   `limit - amount <= limit * near_limit_bps / 10000`, in integers (the monitoring's
//!   `near_limit_bps`, not the rules' own `near_limit_bps`, which flags single payments as they
//!   are made). `limits` names each maximum approached.
//! - `PAYER_BURST`: one payer of one partner paying at least `burst_merchants_min` different
//!   merchants (acquirer and merchant id) within `burst_window_s`.
//! - `MERCHANT_MANY_PARTNERS`: one merchant paid through at least `merchant_partners_min`
//!   different partners within `merchant_window_s`. The line is in the file of each partner
//!   involved and lists only that partner's payments; `partners` is how many there were.
//!
//! **Windows.** Payments are taken in order of `created_at` (then payment id). A window holds
//! payments whose first and last are at most the window's length apart, both ends included: two
//! payments `burst_window_s` seconds apart are in one window, a millisecond more and they are
//! not. Overlapping windows that each qualify are one episode and one line, whose
//! `window_start` and `window_end` are its first and last payment (so an episode may last longer
//! than the window) and whose payments are those of the qualifying windows. A payment whose code
//! named no merchant id cannot be told from another merchant's and is left out of both window
//! rules.
//!
//! **The file**, one per configured partner and per other partner with payments that day,
//! header only when nothing was found (so "nothing found" is written down, not implied):
//!
//! `rule,partner,subject,window_start,window_end,payments,succeeded,cny_total,merchants,partners,limits,payment_ids`
//!
//! `subject` is the payer id (`NEAR_LIMIT`, `PAYER_BURST`) or `<acquirer>/<merchant id>`;
//! times are RFC 3339 UTC; `cny_total` is the CNY amount of all the line's payments (major
//! units); `payment_ids` and `limits` are `;`-separated. Lines are ordered by rule, subject and
//! start. **Payer ids are in this file**: it is an internal compliance file (owner-only like
//! every settlement file) and must not leave the compliance team; payer ids are never logged —
//! [`Finding`]'s `Debug` masks them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use qrbridge_config::{Monitoring, RiskRules};
use qrbridge_fx::{Amount, AmountError, Currency};

use crate::model::{PaymentRecord, PaymentState};

/// A monitoring rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    NearLimit,
    PayerBurst,
    MerchantManyPartners,
}

impl Rule {
    /// The rule's code, as in the file and the metric's `rule` label.
    pub fn code(self) -> &'static str {
        match self {
            Rule::NearLimit => "NEAR_LIMIT",
            Rule::PayerBurst => "PAYER_BURST",
            Rule::MerchantManyPartners => "MERCHANT_MANY_PARTNERS",
        }
    }

    /// Whether the subject is a payer id (masked wherever it could be logged).
    fn about_payer(self) -> bool {
        matches!(self, Rule::NearLimit | Rule::PayerBurst)
    }
}

/// One line of a partner's `suspicious-<partner>.csv`.
#[derive(Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    /// The partner whose file the line is in (and whose payments it lists).
    pub partner: String,
    /// The payer id, or `<acquirer>/<merchant id>` for [`Rule::MerchantManyPartners`].
    pub subject: String,
    /// The episode's first and last payment (for [`Rule::MerchantManyPartners`], across all the
    /// partners involved).
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// The payments behind the line, in time order.
    pub payment_ids: Vec<String>,
    /// How many of them succeeded.
    pub succeeded: u64,
    /// Their CNY amounts added up, whatever their state.
    pub cny_total: Amount,
    /// Different merchants among them.
    pub merchants: u64,
    /// Different partners the episode involved (1 but for [`Rule::MerchantManyPartners`]).
    pub partners: u64,
    /// For [`Rule::NearLimit`]: the maximums approached, `key=minor units` (`payment_cny_minor_max
    /// =100000`, `currencies.PHP.payment_wallet_minor_max=5000000`).
    pub limits: Vec<String>,
}

impl fmt::Debug for Finding {
    /// Payer ids stay out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = if self.rule.about_payer() { "***" } else { self.subject.as_str() };
        f.debug_struct("Finding")
            .field("rule", &self.rule)
            .field("partner", &self.partner)
            .field("subject", &subject)
            .field("window_start", &self.window_start)
            .field("window_end", &self.window_end)
            .field("payment_ids", &self.payment_ids)
            .field("succeeded", &self.succeeded)
            .field("cny_total", &self.cny_total)
            .field("merchants", &self.merchants)
            .field("partners", &self.partners)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The file's header.
pub const HEADER: [&str; 12] = [
    "rule",
    "partner",
    "subject",
    "window_start",
    "window_end",
    "payments",
    "succeeded",
    "cny_total",
    "merchants",
    "partners",
    "limits",
    "payment_ids",
];

/// The file of one partner's findings (in the order given).
pub fn csv(findings: &[Finding]) -> Vec<u8> {
    let rows = findings
        .iter()
        .map(|f| {
            vec![
                f.rule.code().to_owned(),
                f.partner.clone(),
                f.subject.clone(),
                super::ts(f.window_start),
                super::ts(f.window_end),
                f.payment_ids.len().to_string(),
                f.succeeded.to_string(),
                f.cny_total.to_major_string(),
                f.merchants.to_string(),
                f.partners.to_string(),
                f.limits.join(";"),
                f.payment_ids.join(";"),
            ]
        })
        .collect();
    super::csv_bytes(&HEADER, rows)
}

/// The findings among `payments` (those made on one business day; each once), by partner, each
/// partner's in the file's order. A partner with nothing found is absent. Deterministic: the
/// same payments give the same findings whatever their order. Fails only when a line's CNY
/// total is out of range (or a payment's `pay` is not CNY): a broken invariant.
pub fn report<'a>(
    payments: impl IntoIterator<Item = &'a PaymentRecord>,
    rules: &RiskRules,
    m: &Monitoring,
) -> Result<BTreeMap<String, Vec<Finding>>, AmountError> {
    let mut sorted: Vec<&PaymentRecord> = payments.into_iter().collect();
    sorted.sort_by(|a, b| (a.created_at, &a.payment_id).cmp(&(b.created_at, &b.payment_id)));

    let mut findings = Vec::new();
    near_limit(&sorted, rules, m, &mut findings)?;
    payer_burst(&sorted, m, &mut findings)?;
    merchant_many_partners(&sorted, m, &mut findings)?;

    let mut by_partner: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
    for f in findings {
        by_partner.entry(f.partner.clone()).or_default().push(f);
    }
    for list in by_partner.values_mut() {
        list.sort_by(|a, b| {
            (a.rule, &a.subject, a.window_start, &a.payment_ids).cmp(&(
                b.rule,
                &b.subject,
                b.window_start,
                &b.payment_ids,
            ))
        });
    }
    Ok(by_partner)
}

/// Whether `amount` is at most `limit` and leaves at most `bps` basis points of it unused:
/// `limit - amount <= limit * bps / 10000`, compared as `(limit - amount) * 10000 <= limit * bps`
/// in `i128` (the same for whole numbers, and nothing is lost to the division).
pub fn just_under(amount: i64, limit: i64, bps: u32) -> bool {
    if limit <= 0 || amount < 0 || amount > limit {
        return false;
    }
    let gap = i128::from(limit) - i128::from(amount);
    match (gap.checked_mul(10_000), i128::from(limit).checked_mul(i128::from(bps))) {
        (Some(gap), Some(allowed)) => gap <= allowed,
        _ => false,
    }
}

/// The maximums of `p`'s partner that `p` is just under, as `key=minor units`.
fn limits_approached(p: &PaymentRecord, rules: &RiskRules, bps: u32) -> Vec<String> {
    let Some(r) = rules.partners.get(&p.partner) else { return Vec::new() };
    let mut hit = Vec::new();
    let cny = p.pay.currency() == Currency::CNY;
    if let Some(max) = r.payment_cny_minor_max {
        if cny && just_under(p.pay.minor(), max, bps) {
            hit.push(format!("payment_cny_minor_max={max}"));
        }
    }
    let c = p.wallet.currency();
    if let Some(cr) = r.currencies.get(&c) {
        if let Some(max) = cr.payment_cny_minor_max {
            if cny && just_under(p.pay.minor(), max, bps) {
                hit.push(format!("currencies.{}.payment_cny_minor_max={max}", c.code()));
            }
        }
        if let Some(max) = cr.payment_wallet_minor_max {
            if just_under(p.wallet.minor(), max, bps) {
                hit.push(format!("currencies.{}.payment_wallet_minor_max={max}", c.code()));
            }
        }
    }
    hit
}

/// A threshold as a count (a threshold past `usize` is never reached).
fn count(min: u32) -> usize {
    usize::try_from(min).unwrap_or(usize::MAX)
}

/// A window's length (one past any day is as good as endless).
fn window(seconds: u64) -> TimeDelta {
    i64::try_from(seconds).ok().and_then(TimeDelta::try_seconds).unwrap_or(TimeDelta::MAX)
}

/// `acquirer/merchant id`, or `None` when the code named no merchant id.
fn merchant_of(p: &PaymentRecord) -> Option<(&str, &str)> {
    p.merchant.id.as_deref().map(|id| (p.acquirer.as_str(), id))
}

/// A line of `rule` for `partner` behind `payments` (in time order, not empty).
fn finding(
    rule: Rule,
    partner: &str,
    subject: String,
    (window_start, window_end): (DateTime<Utc>, DateTime<Utc>),
    payments: &[&PaymentRecord],
    partners: usize,
    limits: Vec<String>,
) -> Result<Finding, AmountError> {
    let mut cny_total = Amount::zero(Currency::CNY);
    for p in payments {
        cny_total = cny_total.checked_add(&p.pay)?;
    }
    let merchants: BTreeSet<_> = payments.iter().filter_map(|p| merchant_of(p)).collect();
    let succeeded = payments.iter().filter(|p| p.state == PaymentState::Succeeded).count();
    Ok(Finding {
        rule,
        partner: partner.to_owned(),
        subject,
        window_start,
        window_end,
        payment_ids: payments.iter().map(|p| p.payment_id.clone()).collect(),
        succeeded: u64::try_from(succeeded).unwrap_or(u64::MAX),
        cny_total,
        merchants: u64::try_from(merchants.len()).unwrap_or(u64::MAX),
        partners: u64::try_from(partners).unwrap_or(u64::MAX),
        limits,
    })
}

/// Something per partner and payer id (payer ids are the partner's references, not global).
type PerPayer<'a, T> = BTreeMap<(&'a str, &'a str), T>;

/// `NEAR_LIMIT`: per partner and payer, the day's payments just under a limit.
fn near_limit(
    sorted: &[&PaymentRecord],
    rules: &RiskRules,
    m: &Monitoring,
    out: &mut Vec<Finding>,
) -> Result<(), AmountError> {
    let mut near: PerPayer<'_, (Vec<&PaymentRecord>, BTreeSet<String>)> = BTreeMap::new();
    for p in sorted {
        let hit = limits_approached(p, rules, m.near_limit_bps);
        if !hit.is_empty() {
            let e = near.entry((p.partner.as_str(), p.payer_id.as_str())).or_default();
            e.0.push(p);
            e.1.extend(hit);
        }
    }
    for ((partner, payer), (payments, limits)) in near {
        if payments.len() < count(m.near_limit_payments_min).max(1) {
            continue;
        }
        let (first, last) = (payments[0].created_at, payments[payments.len() - 1].created_at);
        let limits = limits.into_iter().collect();
        out.push(finding(
            Rule::NearLimit,
            partner,
            payer.to_owned(),
            (first, last),
            &payments,
            1,
            limits,
        )?);
    }
    Ok(())
}

/// The episodes among `items` (in time order): index ranges `first..=last`, each the union of
/// overlapping windows (first to last payment at most `span` apart) holding at least `min`
/// different keys. For each start the window reaching furthest is taken: every qualifying window
/// lies inside one of those.
fn episodes<K: Ord>(
    items: &[(DateTime<Utc>, K)],
    span: TimeDelta,
    min: usize,
) -> Vec<(usize, usize)> {
    let min = min.max(1);
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut keys: BTreeMap<&K, usize> = BTreeMap::new();
    let mut end = 0; // one past the window's last item
    for start in 0..items.len() {
        while end < items.len() && items[end].0 - items[start].0 <= span {
            *keys.entry(&items[end].1).or_insert(0) += 1;
            end += 1;
        }
        if keys.len() >= min {
            match out.last_mut() {
                Some((_, last)) if start <= *last => *last = end - 1,
                _ => out.push((start, end - 1)),
            }
        }
        let k = &items[start].1;
        if let Some(n) = keys.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                keys.remove(k);
            }
        }
    }
    out
}

/// `PAYER_BURST`: per partner and payer, many merchants within the window.
fn payer_burst(
    sorted: &[&PaymentRecord],
    m: &Monitoring,
    out: &mut Vec<Finding>,
) -> Result<(), AmountError> {
    let mut by_payer: PerPayer<'_, Vec<&PaymentRecord>> = BTreeMap::new();
    for p in sorted.iter().filter(|p| merchant_of(p).is_some()) {
        by_payer.entry((p.partner.as_str(), p.payer_id.as_str())).or_default().push(p);
    }
    let span = window(m.burst_window_s);
    for ((partner, payer), payments) in by_payer {
        let items: Vec<_> = payments.iter().map(|p| (p.created_at, merchant_of(p))).collect();
        for (first, last) in episodes(&items, span, count(m.burst_merchants_min)) {
            let these = &payments[first..=last];
            let window = (these[0].created_at, these[these.len() - 1].created_at);
            out.push(finding(
                Rule::PayerBurst,
                partner,
                payer.to_owned(),
                window,
                these,
                1,
                Vec::new(),
            )?);
        }
    }
    Ok(())
}

/// `MERCHANT_MANY_PARTNERS`: per merchant, many partners within the window; a line for each
/// partner involved, with its own payments.
fn merchant_many_partners(
    sorted: &[&PaymentRecord],
    m: &Monitoring,
    out: &mut Vec<Finding>,
) -> Result<(), AmountError> {
    let mut by_merchant: BTreeMap<(&str, &str), Vec<&PaymentRecord>> = BTreeMap::new();
    for p in sorted {
        if let Some(merchant) = merchant_of(p) {
            by_merchant.entry(merchant).or_default().push(p);
        }
    }
    let span = window(m.merchant_window_s);
    for ((acquirer, merchant), payments) in by_merchant {
        let items: Vec<_> = payments.iter().map(|p| (p.created_at, p.partner.as_str())).collect();
        for (first, last) in episodes(&items, span, count(m.merchant_partners_min)) {
            let these = &payments[first..=last];
            let window = (these[0].created_at, these[these.len() - 1].created_at);
            let partners: BTreeSet<&str> = these.iter().map(|p| p.partner.as_str()).collect();
            for partner in &partners {
                let own: Vec<&PaymentRecord> =
                    these.iter().copied().filter(|p| p.partner == *partner).collect();
                out.push(finding(
                    Rule::MerchantManyPartners,
                    partner,
                    format!("{acquirer}/{merchant}"),
                    window,
                    &own,
                    partners.len(),
                    Vec::new(),
                )?);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Failure, MerchantAnswer, RateAnswer};
    use chrono::TimeZone;
    use qrbridge_config::{CurrencyRules, PartnerRules};

    fn php() -> Currency {
        Currency::from_code("PHP").unwrap()
    }

    /// 10:00:00 UTC plus `s` seconds.
    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap() + TimeDelta::seconds(s)
    }

    /// A succeeded payment `id` of `partner`'s `payer` to `merchant` at acquirer `acq`, CNY `fen`
    /// (PHP 8 per CNY), `s` seconds after 10:00.
    fn pay(
        id: &str,
        partner: &str,
        payer: &str,
        merchant: &str,
        fen: i64,
        s: i64,
    ) -> PaymentRecord {
        let cny = |minor| Amount::from_minor(Currency::CNY, minor).unwrap();
        let peso = |minor| Amount::from_minor(php(), minor).unwrap();
        PaymentRecord {
            v: crate::model::RECORD_VERSION,
            payment_id: id.into(),
            partner: partner.into(),
            request_id: format!("r-{id}"),
            request_hash: String::new(),
            quote_id: format!("q-{id}"),
            payer_id: payer.into(),
            state: PaymentState::Succeeded,
            failure: None,
            pay: cny(fen),
            wallet: peso(fen * 8),
            wallet_at_mid: peso(fen * 8),
            spread: peso(0),
            rate: RateAnswer { pair: "CNY/PHP".into(), price: "8".parse().unwrap() },
            reference: None,
            merchant: MerchantAnswer {
                id: Some(merchant.into()),
                name: None,
                city: None,
                country: None,
                mcc: None,
            },
            acquirer: "acq".into(),
            acquirer_ref: None,
            booked: true,
            refunded_cny: cny(0),
            refunded_wallet: peso(0),
            late_approvals: 0,
            order: None,
            acquirer_reason: None,
            cancel_refusal: None,
            reversal_refused: false,
            created_at: at(s),
            updated_at: at(s),
            rev: 0,
        }
    }

    fn monitoring() -> Monitoring {
        Monitoring {
            near_limit_bps: 500,
            near_limit_payments_min: 3,
            burst_merchants_min: 3,
            burst_window_s: 600,
            merchant_partners_min: 3,
            merchant_window_s: 600,
        }
    }

    /// Partner `a`: CNY 1,000.00 per payment; in PHP, PHP 4,000.00 per payment.
    fn rules() -> RiskRules {
        let mut r = RiskRules::default();
        r.partners.insert(
            "a".into(),
            PartnerRules {
                payment_cny_minor_max: Some(100_000),
                currencies: BTreeMap::from([(
                    php(),
                    CurrencyRules { payment_wallet_minor_max: Some(400_000), ..Default::default() },
                )]),
                ..Default::default()
            },
        );
        r
    }

    fn ids(f: &Finding) -> Vec<&str> {
        f.payment_ids.iter().map(String::as_str).collect()
    }

    #[test]
    fn just_under_is_inclusive_at_both_ends_and_exact() {
        // 5 % of 100000 is 5000: 95000 is just under, 94999 is not; the limit itself is.
        assert!(just_under(95_000, 100_000, 500));
        assert!(!just_under(94_999, 100_000, 500));
        assert!(just_under(100_000, 100_000, 500));
        assert!(!just_under(100_001, 100_000, 500));
        // 5 % of 99 is 4.95: a gap of 4 is under it, 5 is not (no rounding up).
        assert!(just_under(95, 99, 500));
        assert!(!just_under(94, 99, 500));
        // No overflow at the extremes.
        assert!(just_under(i64::MAX, i64::MAX, 10_000));
        assert!(just_under(0, i64::MAX, 10_000));
        assert!(!just_under(1, 0, 10_000));
    }

    #[test]
    fn near_limit_needs_the_threshold_of_payments_from_one_payer() {
        let m = monitoring();
        // Two just under the CNY limit, one far below: one fewer than the threshold.
        let mut day = vec![
            pay("p1", "a", "u1", "m1", 96_000, 0),
            pay("p2", "a", "u1", "m1", 99_999, 3_600),
            pay("p3", "a", "u1", "m1", 30_000, 7_200),
            // Another payer's and another partner's just-under payments are not u1's.
            pay("p4", "a", "u2", "m1", 99_000, 100),
            pay("p5", "b", "u1", "m1", 99_000, 200),
        ];
        assert_eq!(report(&day, &rules(), &m).unwrap(), BTreeMap::new());

        // A third, declined: just under the wallet limit only (PHP 3,900.00 of 4,000.00).
        let mut declined = pay("p6", "a", "u1", "m1", 48_750, 9_000);
        declined.state = PaymentState::Failed;
        declined.failure = Some(Failure { code: "DECLINED".into(), message: String::new() });
        day.push(declined);
        let found = report(&day, &rules(), &m).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["a"]);
        let f = &found["a"][0];
        assert_eq!((f.rule, f.subject.as_str()), (Rule::NearLimit, "u1"));
        assert_eq!(ids(f), ["p1", "p2", "p6"]);
        assert_eq!((f.window_start, f.window_end), (at(0), at(9_000)));
        assert_eq!((f.succeeded, f.merchants, f.partners), (2, 1, 1));
        assert_eq!(
            f.cny_total,
            Amount::from_minor(Currency::CNY, 96_000 + 99_999 + 48_750).unwrap()
        );
        assert_eq!(
            f.limits,
            ["currencies.PHP.payment_wallet_minor_max=400000", "payment_cny_minor_max=100000"]
        );
        // A partner without limits has nothing to be under.
        assert_eq!(report(&day, &RiskRules::default(), &m).unwrap(), BTreeMap::new());
    }

    #[test]
    fn payer_burst_needs_the_merchants_within_the_window_to_the_second() {
        // Thresholds: 3 merchants within 600 s.
        let m = monitoring();
        // Two merchants (one paid twice) within the window: one fewer than the threshold.
        let two = vec![
            pay("p1", "a", "u1", "m1", 100, 0),
            pay("p2", "a", "u1", "m2", 100, 10),
            pay("p3", "a", "u1", "m1", 100, 20),
        ];
        assert_eq!(report(&two, &rules(), &m).unwrap(), BTreeMap::new());

        // A third merchant exactly 600 s after the first: one window.
        let mut edge = two.clone();
        edge.push(pay("p4", "a", "u1", "m3", 100, 600));
        let found = report(&edge, &rules(), &m).unwrap();
        let f = &found["a"][0];
        assert_eq!((f.rule, f.subject.as_str()), (Rule::PayerBurst, "u1"));
        assert_eq!(ids(f), ["p1", "p2", "p3", "p4"]);
        assert_eq!((f.window_start, f.window_end), (at(0), at(600)));
        assert_eq!((f.merchants, f.succeeded), (3, 4));
        assert_eq!(found["a"].len(), 1);

        // 601 s after the first: the window from the second payment holds m2, m1 and m3.
        let mut late = two.clone();
        late.push(pay("p4", "a", "u1", "m3", 100, 601));
        let found = report(&late, &rules(), &m).unwrap();
        assert_eq!(ids(&found["a"][0]), ["p2", "p3", "p4"]);
        assert_eq!(found["a"][0].window_start, at(10));

        // 601 s after the second: too late for any window, nothing.
        let mut later = two.clone();
        later.push(pay("p4", "a", "u1", "m3", 100, 611));
        assert_eq!(report(&later, &rules(), &m).unwrap(), BTreeMap::new());

        // The same merchant id at another acquirer is another merchant; a payment without a
        // merchant id is left out.
        let mut other_acquirer = two.clone();
        let mut p = pay("p4", "a", "u1", "m1", 100, 30);
        p.acquirer = "acq-2".into();
        other_acquirer.push(p);
        assert_eq!(report(&other_acquirer, &rules(), &m).unwrap()["a"][0].merchants, 3);
        let mut anonymous = two;
        let mut p = pay("p4", "a", "u1", "m3", 100, 30);
        p.merchant = MerchantAnswer { id: None, name: None, city: None, country: None, mcc: None };
        anonymous.push(p);
        assert_eq!(report(&anonymous, &rules(), &m).unwrap(), BTreeMap::new());
    }

    #[test]
    fn overlapping_bursts_are_one_line_and_separate_ones_two() {
        let m = monitoring();
        // m1 m2 m3 then m4 within 600 s of m2: windows overlap, one episode of four payments.
        // Then, an hour on, m5 m6 m7: a second line.
        let day = vec![
            pay("p1", "a", "u1", "m1", 100, 0),
            pay("p2", "a", "u1", "m2", 100, 300),
            pay("p3", "a", "u1", "m3", 100, 500),
            pay("p4", "a", "u1", "m4", 100, 900),
            pay("p5", "a", "u1", "m5", 100, 4_000),
            pay("p6", "a", "u1", "m6", 100, 4_001),
            pay("p7", "a", "u1", "m7", 100, 4_002),
        ];
        let found = report(&day, &rules(), &m).unwrap();
        let lines: Vec<Vec<&str>> = found["a"].iter().map(ids).collect();
        assert_eq!(lines, [vec!["p1", "p2", "p3", "p4"], vec!["p5", "p6", "p7"]]);
        assert_eq!((found["a"][0].window_start, found["a"][0].window_end), (at(0), at(900)));
        // The input's order does not matter.
        let mut reversed = day.clone();
        reversed.reverse();
        assert_eq!(report(&reversed, &rules(), &m).unwrap(), found);
    }

    #[test]
    fn a_merchant_paid_through_many_partners_is_in_each_partners_file() {
        // Thresholds: 3 partners within 600 s.
        let m = monitoring();
        // Two partners within the window: one fewer than the threshold.
        let two = vec![
            pay("a1", "a", "u1", "m1", 1_000, 0),
            pay("b1", "b", "v1", "m1", 2_000, 100),
            pay("a2", "a", "u2", "m1", 3_000, 200),
            // Another merchant.
            pay("c0", "c", "w0", "m2", 4_000, 300),
        ];
        assert_eq!(report(&two, &rules(), &m).unwrap(), BTreeMap::new());

        // A third partner exactly 600 s after the first payment.
        let mut edge = two.clone();
        edge.push(pay("c1", "c", "w1", "m1", 5_000, 600));
        let found = report(&edge, &rules(), &m).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        for (partner, want) in [("a", vec!["a1", "a2"]), ("b", vec!["b1"]), ("c", vec!["c1"])] {
            let f = &found[partner][0];
            assert_eq!((f.rule, f.subject.as_str()), (Rule::MerchantManyPartners, "acq/m1"));
            assert_eq!(ids(f), want, "{partner}");
            assert_eq!((f.window_start, f.window_end, f.partners), (at(0), at(600), 3));
        }
        assert_eq!(found["a"][0].cny_total, Amount::from_minor(Currency::CNY, 4_000).unwrap());

        // A second too late (601 s after a1, 501 s after b1): the window from b1 holds b, a, c.
        let mut late = two.clone();
        late.push(pay("c1", "c", "w1", "m1", 5_000, 601));
        let found = report(&late, &rules(), &m).unwrap();
        assert_eq!(ids(&found["a"][0]), ["a2"]);
        assert_eq!(found["a"][0].window_start, at(100));
        // 601 s after b1, past the last window that could hold three partners: nothing.
        let mut later = two;
        later.push(pay("c1", "c", "w1", "m1", 5_000, 701));
        assert_eq!(report(&later, &rules(), &m).unwrap(), BTreeMap::new());
    }

    #[test]
    fn the_file_lists_each_line_with_its_payments_and_logs_never_show_the_payer() {
        let m = monitoring();
        let day = vec![
            pay("p1", "a", "=cmd", "m1", 96_000, 0),
            pay("p2", "a", "=cmd", "m1", 97_000, 1),
            pay("p3", "a", "=cmd", "m1", 98_000, 2),
        ];
        let found = report(&day, &rules(), &m).unwrap();
        let text = String::from_utf8(csv(&found["a"])).unwrap();
        assert_eq!(
            text,
            "rule,partner,subject,window_start,window_end,payments,succeeded,cny_total,merchants,\
             partners,limits,payment_ids\r\n\
             NEAR_LIMIT,a,'=cmd,2026-11-20T10:00:00.000Z,2026-11-20T10:00:02.000Z,3,3,2910.00,1,1,\
             payment_cny_minor_max=100000,p1;p2;p3\r\n"
        );
        assert_eq!(String::from_utf8(csv(&[])).unwrap().lines().count(), 1);
        // The payer id never reaches a log through Debug.
        assert!(!format!("{:?}", found["a"][0]).contains("=cmd"));
    }
}
