//! The risk rules as configuration (`[risk]`): limits per partner, payer, merchant and MCC, the
//! blocklist files, the monitoring thresholds behind `suspicious.csv`, and the dual-control
//! thresholds. The decision itself is the daemon's (bridge/payments/risk.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use qrbridge_fx::{Amount, Currency};
use serde::{Deserialize, Serialize};

use crate::load::Problem;
/// The risk rules. Every limit is optional: absent means no limit. Amounts are minor units of the
/// currency the key names (`cny`: fen; `wallet`: the wallet currency's).
///
/// ```toml
/// near_limit_bps = 500                       # flag payments leaving < 5 % of a limit unused
/// merchant_day_cny_minor_max = 50000000      # any merchant, CNY 500,000 per rolling day
///
/// [partners.gcash]
/// payment_cny_minor_min = 100
/// payment_cny_minor_max = 5000000
/// payer = { hour_count_max = 10, day_cny_minor_max = 2000000 }
///
/// [partners.gcash.currencies.PHP]
/// payment_wallet_minor_max = 5000000
/// prefund_minor = 100000000
/// credit_line_minor = 50000000
///
/// [merchants.acq-a."500034453110001"]        # acquirer, then the merchant's id
/// day_cny_minor_max = 100000000
///
/// [mccs."7995"]
/// day_cny_minor_max = 1000000
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskRules {
    /// Flag (never refuse) a payment that leaves at most this share of a limit unused, in basis
    /// points of the limit: many payments just under a limit are what structuring looks like.
    /// Applies to every maximum. Absent: no flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub near_limit_bps: Option<u32>,
    /// Rules per partner id. A partner not named here has no partner rules.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub partners: BTreeMap<String, PartnerRules>,
    /// Any one merchant's CNY total per rolling day, across partners, unless `merchants` names
    /// the merchant: a merchant suddenly taking far more than merchants do is a fraud signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merchant_day_cny_minor_max: Option<i64>,
    /// Rules for named merchants: acquirer id, then the merchant's id. A merchant's own rules
    /// replace `merchant_day_cny_minor_max` (leaving its limit out exempts it).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub merchants: BTreeMap<String, BTreeMap<String, MerchantRules>>,
    /// Rules per merchant category code (four digits), across partners and merchants.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mccs: BTreeMap<String, MccRules>,
}

/// One partner's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartnerRules {
    /// Smallest CNY amount of one payment, whatever the wallet currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_cny_minor_min: Option<i64>,
    /// Largest CNY amount of one payment, whatever the wallet currency (the old
    /// `partners[].limits.payment_cny_minor_max`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_cny_minor_max: Option<i64>,
    /// Per-payer velocity: the partner's payer reference, counted within this partner only.
    #[serde(skip_serializing_if = "VelocityRules::is_empty")]
    pub payer: VelocityRules,
    /// Rules per wallet currency: amounts in it, and the partner's exposure in it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub currencies: BTreeMap<Currency, CurrencyRules>,
}

/// How much one payer may pay through one partner per rolling window. Each count and total
/// includes the payment being decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VelocityRules {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour_count_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour_cny_minor_max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day_count_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day_cny_minor_max: Option<i64>,
}

impl VelocityRules {
    fn is_empty(&self) -> bool {
        *self == VelocityRules::default()
    }
}

/// A partner's rules in one wallet currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurrencyRules {
    /// Smallest CNY amount of one payment paid in this currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_cny_minor_min: Option<i64>,
    /// Largest CNY amount of one payment paid in this currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_cny_minor_max: Option<i64>,
    /// Smallest wallet amount of one payment, in this currency's minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_wallet_minor_min: Option<i64>,
    /// Largest wallet amount of one payment, in this currency's minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_wallet_minor_max: Option<i64>,
    /// What the partner paid in advance, in this currency's minor units. With
    /// `credit_line_minor`, the most the partner may owe (unsettled plus in flight); absent with
    /// `credit_line_minor` absent too: no exposure limit; absent alone: zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefund_minor: Option<i64>,
    /// What the house lends the partner beyond its prefunding, in this currency's minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_line_minor: Option<i64>,
}

impl CurrencyRules {
    /// The most the partner may owe in this currency: prefunding plus credit line.
    pub fn exposure_cap(&self) -> Option<i64> {
        if self.prefund_minor.is_none() && self.credit_line_minor.is_none() {
            return None;
        }
        // Each is at most Amount::MAX_MINOR once validated; saturating keeps an unvalidated
        // value from wrapping.
        Some(self.prefund_minor.unwrap_or(0).saturating_add(self.credit_line_minor.unwrap_or(0)))
    }
}

/// A named merchant's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MerchantRules {
    /// The merchant's CNY total per rolling day, across partners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day_cny_minor_max: Option<i64>,
}

/// One merchant category's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MccRules {
    /// The category's CNY total per rolling day, across partners and merchants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day_cny_minor_max: Option<i64>,
}

/// `at.key`, with the key quoted when it is not a plain word.
pub fn key_path(at: &str, key: &str) -> String {
    let plain =
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{at}.{key}")
    } else {
        format!("{at}.{key:?}")
    }
}

/// Ids appear in records, logs and URLs (as config/src/validate.rs wants them).
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A merchant's id as acquirers write it: 1-64 visible ASCII characters.
pub fn valid_merchant_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// An ISO 18245 merchant category code: four digits.
pub fn valid_mcc(mcc: &str) -> bool {
    mcc.len() == 4 && mcc.bytes().all(|b| b.is_ascii_digit())
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    /// A minor-unit amount within `min..=Amount::MAX_MINOR`.
    fn minor(&mut self, path: &str, value: Option<i64>, min: i64) {
        if let Some(v) = value {
            if v < min || v > Amount::MAX_MINOR {
                self.add(path, format!("{v} is outside {min}..={}", Amount::MAX_MINOR));
            }
        }
    }

    fn count(&mut self, path: &str, value: Option<u32>) {
        if value == Some(0) {
            self.add(path, "must be at least 1 (to refuse everything, use a blocklist)");
        }
    }

    /// `{stem}_min` and `{stem}_max`, each at least 1, the minimum not above the maximum.
    fn bounds(&mut self, at: &str, stem: &str, min: Option<i64>, max: Option<i64>) {
        self.minor(&format!("{at}.{stem}_min"), min, 1);
        self.minor(&format!("{at}.{stem}_max"), max, 1);
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo > hi {
                self.add(format!("{at}.{stem}_min"), format!("{lo} is above {stem}_max {hi}"));
            }
        }
    }

    fn velocity(&mut self, at: &str, v: &VelocityRules) {
        self.count(&format!("{at}.hour_count_max"), v.hour_count_max);
        self.count(&format!("{at}.day_count_max"), v.day_count_max);
        self.minor(&format!("{at}.hour_cny_minor_max"), v.hour_cny_minor_max, 1);
        self.minor(&format!("{at}.day_cny_minor_max"), v.day_cny_minor_max, 1);
    }
}

impl RiskRules {
    /// Every problem with the rules, each at its key path under `at` (`risk.partners.gcash.
    /// payer.hour_count_max: 0 …`); empty when they are usable. Whether the partners and
    /// acquirers named exist is [`RiskRules::unknown_names`]' question.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut p = Problems(Vec::new());
        if let Some(bps) = self.near_limit_bps {
            if !(1..=10_000).contains(&bps) {
                p.add(format!("{at}.near_limit_bps"), format!("{bps} is outside 1..=10000"));
            }
        }
        p.minor(&format!("{at}.merchant_day_cny_minor_max"), self.merchant_day_cny_minor_max, 1);
        for (id, r) in &self.partners {
            let pat = key_path(&format!("{at}.partners"), id);
            if !valid_id(id) {
                p.add(pat.clone(), format!("{id:?} must be 1-64 of a-z 0-9 - _ ."));
            }
            p.bounds(&pat, "payment_cny_minor", r.payment_cny_minor_min, r.payment_cny_minor_max);
            p.velocity(&format!("{pat}.payer"), &r.payer);
            for (c, cr) in &r.currencies {
                let cat = format!("{pat}.currencies.{c}");
                if *c == Currency::CNY {
                    p.add(cat.clone(), "CNY is the merchant side, not a wallet currency");
                }
                p.bounds(
                    &cat,
                    "payment_cny_minor",
                    cr.payment_cny_minor_min,
                    cr.payment_cny_minor_max,
                );
                p.bounds(
                    &cat,
                    "payment_wallet_minor",
                    cr.payment_wallet_minor_min,
                    cr.payment_wallet_minor_max,
                );
                p.minor(&format!("{cat}.prefund_minor"), cr.prefund_minor, 0);
                p.minor(&format!("{cat}.credit_line_minor"), cr.credit_line_minor, 0);
            }
        }
        for (acquirer, merchants) in &self.merchants {
            let aat = key_path(&format!("{at}.merchants"), acquirer);
            if !valid_id(acquirer) {
                p.add(aat.clone(), format!("{acquirer:?} must be 1-64 of a-z 0-9 - _ ."));
            }
            for (id, m) in merchants {
                let mat = key_path(&aat, id);
                if !valid_merchant_id(id) {
                    p.add(mat.clone(), "a merchant id is 1-64 visible ASCII characters");
                }
                p.minor(&format!("{mat}.day_cny_minor_max"), m.day_cny_minor_max, 1);
            }
        }
        for (mcc, m) in &self.mccs {
            let mat = key_path(&format!("{at}.mccs"), mcc);
            if !valid_mcc(mcc) {
                p.add(mat.clone(), format!("{mcc:?} is not a merchant category code (4 digits)"));
            }
            p.minor(&format!("{mat}.day_cny_minor_max"), m.day_cny_minor_max, 1);
        }
        p.0
    }

    /// Partners and acquirers the rules name that the configuration does not have (a typo would
    /// otherwise leave a partner without its limits, silently).
    pub fn unknown_names(
        &self,
        at: &str,
        is_partner: impl Fn(&str) -> bool,
        is_acquirer: impl Fn(&str) -> bool,
    ) -> Vec<Problem> {
        let mut p = Problems(Vec::new());
        for id in self.partners.keys().filter(|id| !is_partner(id)) {
            p.add(key_path(&format!("{at}.partners"), id), format!("{id:?} is not a partner"));
        }
        for id in self.merchants.keys().filter(|id| !is_acquirer(id)) {
            p.add(key_path(&format!("{at}.merchants"), id), format!("{id:?} is not an acquirer"));
        }
        p.0
    }
}

/// `[risk]`: the risk rules, the blocklist files, monitoring and dual control.
///
/// ```toml
/// [risk]
/// refresh_ms = 5000
/// [risk.rules]
/// near_limit_bps = 500
/// [risk.rules.partners.gcash.currencies.PHP]
/// prefund_minor = 100000000
/// credit_line_minor = 50000000
/// [risk.blocklists]
/// mccs = "blocked-mccs.txt"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Risk {
    /// The rules in force until admins change them through dual control; then the rules they
    /// approved (kept in the store) are in force, on every node, until they reset them.
    pub rules: RiskRules,
    pub blocklists: BlocklistFiles,
    pub monitoring: Monitoring,
    pub dual_control: DualControl,
    /// How often each node reads again what the partners owe (the ledger) and, with a store
    /// several daemons share, the payments the other nodes made, in milliseconds. Applied at
    /// start.
    pub refresh_ms: u64,
}

impl Default for Risk {
    fn default() -> Self {
        Risk {
            rules: RiskRules::default(),
            blocklists: BlocklistFiles::default(),
            monitoring: Monitoring::default(),
            dual_control: DualControl::default(),
            refresh_ms: 5_000,
        }
    }
}

/// Files of entries refused outright, one a line (`#` starts a comment), read at start and at
/// every reload. Admins may add entries on top through dual control.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlocklistFiles {
    /// Merchant ids, refused at whichever acquirer.
    pub merchants: Option<PathBuf>,
    /// Merchant category codes (four digits), e.g. 7995 (gambling).
    pub mccs: Option<PathBuf>,
    /// Acquirer ids no payment is sent to.
    pub acquirers: Option<PathBuf>,
}

/// What the daily `suspicious.csv` (beside each day's settlement files) looks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    /// A payment is "just under a limit" when it leaves at most this share of one of its
    /// partner's amount maximums unused, in basis points of the limit.
    pub near_limit_bps: u32,
    /// Reported: a payer with at least this many payments just under a limit in one day.
    pub near_limit_payments_min: u32,
    /// Reported: a payer paying at least this many different merchants within
    /// `burst_window_s`.
    pub burst_merchants_min: u32,
    pub burst_window_s: u64,
    /// Reported: a merchant paid through at least this many partners within
    /// `merchant_window_s`.
    pub merchant_partners_min: u32,
    pub merchant_window_s: u64,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            near_limit_bps: 500,
            near_limit_payments_min: 3,
            burst_merchants_min: 5,
            burst_window_s: 600,
            merchant_partners_min: 3,
            merchant_window_s: 600,
        }
    }
}

/// Which admin changes need a second admin (maker-checker). Changes to risk limits, prefunding,
/// credit lines and blocklists always do; spreads and manual rates above these steps do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DualControl {
    /// A spread change moving it more than this many basis points needs approval.
    pub spread_step_bps: u32,
    /// A rate set by hand moving more than this many basis points from the rate held (or with
    /// no rate held) needs approval.
    pub rate_step_bps: u32,
    /// How long a proposal may wait for its approval, in seconds.
    pub proposal_ttl_s: u64,
}

impl Default for DualControl {
    fn default() -> Self {
        DualControl { spread_step_bps: 50, rate_step_bps: 100, proposal_ttl_s: 86_400 }
    }
}

impl Risk {
    /// Every problem with the section (names checked against the partners and acquirers).
    pub fn validate(
        &self,
        is_partner: impl Fn(&str) -> bool,
        is_acquirer: impl Fn(&str) -> bool,
    ) -> Vec<Problem> {
        let mut p = self.rules.validate("risk.rules");
        p.extend(self.rules.unknown_names("risk.rules", is_partner, is_acquirer));
        let mut q = Problems(p);
        let m = &self.monitoring;
        let range = |q: &mut Problems, path: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                q.add(path, format!("{v} is outside {lo}..={hi}"));
            }
        };
        range(&mut q, "risk.monitoring.near_limit_bps", m.near_limit_bps.into(), 1, 10_000);
        range(
            &mut q,
            "risk.monitoring.near_limit_payments_min",
            m.near_limit_payments_min.into(),
            2,
            1_000_000,
        );
        range(
            &mut q,
            "risk.monitoring.burst_merchants_min",
            m.burst_merchants_min.into(),
            2,
            1_000_000,
        );
        range(&mut q, "risk.monitoring.burst_window_s", m.burst_window_s, 1, 86_400);
        range(
            &mut q,
            "risk.monitoring.merchant_partners_min",
            m.merchant_partners_min.into(),
            2,
            1_000_000,
        );
        range(&mut q, "risk.monitoring.merchant_window_s", m.merchant_window_s, 1, 86_400);
        let d = &self.dual_control;
        range(&mut q, "risk.dual_control.spread_step_bps", d.spread_step_bps.into(), 0, 10_000);
        range(&mut q, "risk.dual_control.rate_step_bps", d.rate_step_bps.into(), 0, 10_000);
        range(&mut q, "risk.dual_control.proposal_ttl_s", d.proposal_ttl_s, 60, 30 * 86_400);
        range(&mut q, "risk.refresh_ms", self.refresh_ms, 100, 600_000);
        q.0
    }
}
