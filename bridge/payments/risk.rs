//! Risk rules: the decision made in memory, before a payment's PENDING is written (ARCHITECTURE.md,
//! step 3), and the counters it rests on.
//!
//! - [`RiskRules`]: the rules as configuration (serde, unknown keys refused, every limit optional:
//!   absent means no limit), checked by [`RiskRules::validate`] with each problem's key path.
//!   [`Blocklists`]: merchant ids, MCCs and acquirers refused outright (the caller reads the files;
//!   [`Blocklists::parse_list`] reads their text). [`Policy`]: both, checked and compiled.
//! - [`RiskBook`]: the counters — rolling windows per payer (per partner), merchant and MCC, and
//!   exposure per partner and wallet currency — behind one lock, so that a payment's check and its
//!   reservation are one step: two payments cannot both take the last of a limit.
//! - [`Candidate`] (a payment about to be written), [`PaymentFacts`] (a payment as it stands),
//!   [`Reservation`], [`Refusal`] with its stable [`Reason`] code, [`Flag`].
//!
//! # Semantics
//!
//! - **Limits are inclusive.** A payment that brings a total exactly to its limit passes; one minor
//!   unit (or one payment) more is refused. Minimums likewise: an amount equal to the minimum passes.
//! - **Windows are rolling, closed, to the millisecond.** At `now`, a payment made at `t` counts in
//!   the hour window while `now - 1 h <= t`, in the day window while `now - 24 h <= t`: exactly one
//!   hour later it still counts, one millisecond after that it does not.
//! - **What counts** in the windows: every payment from its reservation until it is `FAILED` or
//!   `CANCELLED` (pending, unknown, succeeded, being cancelled or reversed). A refund gives back no
//!   velocity or merchant allowance.
//! - **Exposure** of partner P in wallet currency W: `owed` (what the ledger's
//!   `partner_receivable:P` holds in W, loaded from the store) + `reserved` (payments decided here
//!   whose outcome is not known) + `booked` (payments that succeeded here since `owed` was last
//!   loaded) + this payment, at most `prefund_minor + credit_line_minor`. A refusal says by how much
//!   ([`Refusal::over_by`], in W).
//! - **Arithmetic is checked**: a total that would overflow refuses the payment (with the reason of
//!   the rule whose total it is); nothing wraps or panics.
//! - Every total a limit is held against includes the payment being decided.
//! - Checks run in a fixed order and the first refusal is returned: blocklists (acquirer, merchant,
//!   MCC), amount bounds, exposure, payer velocity, merchant, MCC.
//!
//! # Lifecycle (what the caller does)
//!
//! 1. Before PENDING is written: [`RiskBook::decide_and_reserve`] with [`Candidate::of`] the new
//!    record and its `created_at` as `now`.
//! 2. The write refused (a replay, the quote used, a conflict): [`RiskBook::release`]. Whether the
//!    write was made unknown: keep the reservation; the payment's end (or a rebuild) settles it,
//!    or [`RiskBook::forget`] once the store still does not hold it long after.
//! 3. After every durable change of a payment: [`RiskBook::settle`] with [`PaymentFacts::of`] the
//!    record. Idempotent; only the ends matter: succeeded moves the reservation to `booked`; failed
//!    or cancelled gives back everything the payment held (exposure and windows).
//! 4. Now and then, and after what moves `partner_receivable` outside a payment's own booking
//!    (refunds, cancels after success, settlements received): `let m = book.mark();` read the
//!    ledger's totals (`Treasury::refresh_owed`), [`RiskBook::reload_owed`]`(owed, m)`. Bookings
//!    made before the mark are in what was read and leave `booked`; later ones stay until the
//!    next reload (a payment is counted twice for a moment rather than not at all).
//! 5. At start (and whenever memory should not be trusted): [`RiskBook::rebuild`] from the store —
//!    every payment created in the last 24 h and every payment not final, then `owed` read *after*
//!    them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use qrbridge_config::risk::{valid_id, valid_mcc, valid_merchant_id};
use qrbridge_config::Problem;
pub use qrbridge_config::{
    CurrencyRules, MccRules, MerchantRules, PartnerRules, RiskRules, VelocityRules,
};
use qrbridge_fx::{Amount, Currency};

use crate::model::{PaymentRecord, PaymentState};

/// The short window, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// The long window, in milliseconds; also how long the book remembers a payment for its windows.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// How long a reservation of this book whose payment a rebuild's read does not hold survives the
/// rebuild: its PENDING write may have come just after that read. A reservation older than this
/// that the store does not hold was never written.
const UNWRITTEN_GRACE_MS: i64 = 60_000;
/// Most basis points in a whole.
const BPS_WHOLE: i64 = 10_000;

// ---------------------------------------------------------------------------------------------
/// What is refused outright. Entries are exact (no patterns). A merchant id is refused at
/// whichever acquirer (compliance lists do not carry our acquirer ids; an id two acquirers share
/// is refused at both — too much, never too little).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocklists {
    pub merchants: HashSet<String>,
    pub mccs: HashSet<String>,
    pub acquirers: HashSet<String>,
}

/// Which blocklist a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Merchants,
    Mccs,
    Acquirers,
}

impl Blocklists {
    /// A list file's text: one entry a line; `#` starts a comment; blank lines are skipped. Every
    /// bad line is reported, at `source:line`. Entries listed twice are kept once.
    pub fn parse_list(
        kind: ListKind,
        source: &str,
        text: &str,
    ) -> Result<HashSet<String>, Vec<Problem>> {
        let mut set = HashSet::new();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let ok = match kind {
                ListKind::Merchants => valid_merchant_id(entry),
                ListKind::Mccs => valid_mcc(entry),
                ListKind::Acquirers => valid_id(entry),
            };
            if ok {
                set.insert(entry.to_owned());
            } else {
                let what = match kind {
                    ListKind::Merchants => "a merchant id (1-64 visible ASCII characters)",
                    ListKind::Mccs => "a merchant category code (4 digits)",
                    ListKind::Acquirers => "an acquirer id (1-64 of a-z 0-9 - _ .)",
                };
                let shown: String = entry.chars().take(70).collect();
                problems.push(Problem::new(
                    format!("{source}:{}", i + 1),
                    format!("{shown:?} is not {what}"),
                ));
            }
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(problems)
        }
    }
}

/// What the configuration gives the risk check: its rules, each partner's old per-payment
/// maximum (`partners[].limits.payment_cny_minor_max`), and the blocklists its files hold.
/// Admins' approved rules and blocklist entries go on top ([`RiskBase::policy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiskBase {
    pub rules: RiskRules,
    pub partner_max: BTreeMap<String, i64>,
    pub lists: Blocklists,
}

impl RiskBase {
    /// The policy in force: `admin_rules` in place of the configuration's where admins approved
    /// some, each partner's old maximum folded in as its `payment_cny_minor_max` (the smaller
    /// of the two where both are set), and the blocklists with `extra` entries added.
    pub fn policy(
        &self,
        admin_rules: Option<&RiskRules>,
        extra: &Blocklists,
    ) -> Result<Policy, Vec<Problem>> {
        let mut rules = admin_rules.unwrap_or(&self.rules).clone();
        for (partner, max) in &self.partner_max {
            let r = rules.partners.entry(partner.clone()).or_default();
            r.payment_cny_minor_max = Some(r.payment_cny_minor_max.map_or(*max, |m| m.min(*max)));
        }
        let mut lists = self.lists.clone();
        lists.merchants.extend(extra.merchants.iter().cloned());
        lists.mccs.extend(extra.mccs.iter().cloned());
        lists.acquirers.extend(extra.acquirers.iter().cloned());
        Policy::new(rules, lists)
    }
}

/// Rules and blocklists, checked, in the form decisions read.
#[derive(Debug, Default)]
pub struct Policy {
    rules: RiskRules,
    blocked: Blocklists,
    partners: HashMap<String, PartnerRules>,
    merchants: HashMap<String, HashMap<String, Option<i64>>>,
    mccs: HashMap<String, Option<i64>>,
}

impl Policy {
    /// Checks `rules` (key paths under `risk`) and compiles them with `blocked`.
    pub fn new(rules: RiskRules, blocked: Blocklists) -> Result<Policy, Vec<Problem>> {
        let problems = rules.validate("risk");
        if !problems.is_empty() {
            return Err(problems);
        }
        let partners = rules.partners.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let merchants = rules
            .merchants
            .iter()
            .map(|(a, ms)| {
                (a.clone(), ms.iter().map(|(m, r)| (m.clone(), r.day_cny_minor_max)).collect())
            })
            .collect();
        let mccs = rules.mccs.iter().map(|(k, v)| (k.clone(), v.day_cny_minor_max)).collect();
        Ok(Policy { rules, blocked, partners, merchants, mccs })
    }

    pub fn rules(&self) -> &RiskRules {
        &self.rules
    }

    pub fn blocklists(&self) -> &Blocklists {
        &self.blocked
    }

    fn merchant_limit(&self, acquirer: &str, merchant: &str) -> Option<i64> {
        match self.merchants.get(acquirer).and_then(|m| m.get(merchant)) {
            Some(own) => *own,
            None => self.rules.merchant_day_cny_minor_max,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions: what goes in, what comes out
// ---------------------------------------------------------------------------------------------

/// A payment about to be written, as the risk check sees it.
#[derive(Clone, Copy)]
pub struct Candidate<'a> {
    /// The bridge's payment id (the key settling and releasing find the payment by).
    pub payment_id: &'a str,
    pub partner: &'a str,
    /// The partner's payer reference: counted, never shown (not in `Debug` either).
    pub payer_id: &'a str,
    pub acquirer: &'a str,
    /// The merchant's id; without one the merchant's rules and blocklist cannot apply.
    pub merchant_id: Option<&'a str>,
    pub mcc: Option<&'a str>,
    /// What the merchant gets: CNY, more than zero.
    pub pay: Amount,
    /// What the partner owes for it, in its wallet currency.
    pub wallet: Amount,
}

impl<'a> Candidate<'a> {
    /// The candidate a payment record is. The same function reads records at a rebuild
    /// ([`PaymentFacts::of`]), so live and rebuilt books key every payment alike.
    pub fn of(p: &'a PaymentRecord) -> Self {
        Candidate {
            payment_id: &p.payment_id,
            partner: &p.partner,
            payer_id: &p.payer_id,
            acquirer: &p.acquirer,
            merchant_id: p.merchant.id.as_deref(),
            mcc: p.merchant.mcc.as_deref(),
            pay: p.pay,
            wallet: p.wallet,
        }
    }
}

impl fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("payment_id", &self.payment_id)
            .field("partner", &self.partner)
            .field("payer_id", &"***")
            .field("acquirer", &self.acquirer)
            .field("merchant_id", &self.merchant_id)
            .field("mcc", &self.mcc)
            .field("pay", &self.pay)
            .field("wallet", &self.wallet)
            .finish()
    }
}

/// Where a payment stands, for the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Not final and not booked: its wallet amount is `reserved`.
    InFlight,
    /// Booked in the ledger (succeeded, or booked and being cancelled or reversed): what it owes
    /// is in `owed` once the ledger is read again.
    Booked,
    /// Failed or cancelled: it holds nothing.
    Void,
}

impl Stage {
    pub fn of(state: PaymentState, booked: bool) -> Stage {
        match state {
            PaymentState::Failed | PaymentState::Cancelled => Stage::Void,
            PaymentState::Succeeded => Stage::Booked,
            PaymentState::Pending
            | PaymentState::Unknown
            | PaymentState::Cancelling
            | PaymentState::Reversing => {
                if booked {
                    Stage::Booked
                } else {
                    Stage::InFlight
                }
            }
        }
    }
}

/// A payment as it stands: what [`RiskBook::settle`] and [`RiskBook::rebuild`] read.
#[derive(Debug, Clone, Copy)]
pub struct PaymentFacts<'a> {
    pub payment: Candidate<'a>,
    /// When it was made (its reservation's `now`).
    pub at: DateTime<Utc>,
    pub stage: Stage,
}

impl<'a> PaymentFacts<'a> {
    pub fn of(p: &'a PaymentRecord) -> Self {
        PaymentFacts {
            payment: Candidate::of(p),
            at: p.created_at,
            stage: Stage::of(p.state, p.booked),
        }
    }
}

/// The stable reason code of a refusal: `error.reason` beside `RISK_DECLINED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    AmountLimit,
    VelocityLimit,
    MerchantLimit,
    MccLimit,
    MerchantBlocked,
    MccBlocked,
    AcquirerBlocked,
    ExposureLimit,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::AmountLimit => "AMOUNT_LIMIT",
            Reason::VelocityLimit => "VELOCITY_LIMIT",
            Reason::MerchantLimit => "MERCHANT_LIMIT",
            Reason::MccLimit => "MCC_LIMIT",
            Reason::MerchantBlocked => "MERCHANT_BLOCKED",
            Reason::MccBlocked => "MCC_BLOCKED",
            Reason::AcquirerBlocked => "ACQUIRER_BLOCKED",
            Reason::ExposureLimit => "EXPOSURE_LIMIT",
        }
    }
}

/// Which rule fired: a small, fixed set (fit for a metrics label), each named by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    AcquirerBlocked,
    MerchantBlocked,
    MccBlocked,
    PaymentCnyMin,
    PaymentCnyMax,
    PaymentWalletMin,
    PaymentWalletMax,
    Exposure,
    PayerHourCount,
    PayerHourAmount,
    PayerDayCount,
    PayerDayAmount,
    MerchantDayAmount,
    MccDayAmount,
}

impl Rule {
    /// The rule's key (as in [`RiskRules`], without the partner or currency it was under).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::AcquirerBlocked => "blocklist.acquirers",
            Rule::MerchantBlocked => "blocklist.merchants",
            Rule::MccBlocked => "blocklist.mccs",
            Rule::PaymentCnyMin => "payment_cny_minor_min",
            Rule::PaymentCnyMax => "payment_cny_minor_max",
            Rule::PaymentWalletMin => "payment_wallet_minor_min",
            Rule::PaymentWalletMax => "payment_wallet_minor_max",
            Rule::Exposure => "exposure",
            Rule::PayerHourCount => "payer.hour_count_max",
            Rule::PayerHourAmount => "payer.hour_cny_minor_max",
            Rule::PayerDayCount => "payer.day_count_max",
            Rule::PayerDayAmount => "payer.day_cny_minor_max",
            Rule::MerchantDayAmount => "merchant.day_cny_minor_max",
            Rule::MccDayAmount => "mcc.day_cny_minor_max",
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            Rule::AcquirerBlocked => Reason::AcquirerBlocked,
            Rule::MerchantBlocked => Reason::MerchantBlocked,
            Rule::MccBlocked => Reason::MccBlocked,
            Rule::PaymentCnyMin
            | Rule::PaymentCnyMax
            | Rule::PaymentWalletMin
            | Rule::PaymentWalletMax => Reason::AmountLimit,
            Rule::Exposure => Reason::ExposureLimit,
            Rule::PayerHourCount
            | Rule::PayerHourAmount
            | Rule::PayerDayCount
            | Rule::PayerDayAmount => Reason::VelocityLimit,
            Rule::MerchantDayAmount => Reason::MerchantLimit,
            Rule::MccDayAmount => Reason::MccLimit,
        }
    }
}

/// A payment the rules refuse.
///
/// `message` may go to the partner. `detail` and `over_by` are for the decision's record, logs
/// and admins: for `MERCHANT_LIMIT` and `MCC_LIMIT` they reflect other partners' payments too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {detail}", reason.code(), rule.as_str())]
pub struct Refusal {
    pub reason: Reason,
    pub rule: Rule,
    pub message: String,
    pub detail: String,
    /// By how much the payment would pass the limit, in the limit's currency (CNY, or the wallet
    /// currency for exposure and wallet bounds); `None` for counts, minimums, blocklists, and a
    /// total too large to be an [`Amount`].
    pub over_by: Option<Amount>,
}

/// What a flag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlagKind {
    /// The payment leaves at most `near_limit_bps` of a limit unused.
    NearLimit,
}

impl FlagKind {
    pub fn code(self) -> &'static str {
        match self {
            FlagKind::NearLimit => "NEAR_LIMIT",
        }
    }
}

/// Something worth recording about a payment the rules let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub kind: FlagKind,
    pub rule: Rule,
    /// For logs and admins (may describe other partners' payments).
    pub detail: String,
}

/// Why a payment was not reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// A rule refused it: `422 RISK_DECLINED` with [`Reason::code`].
    #[error("risk declined: {0}")]
    Refused(Refusal),
    /// The caller passed what no payment is (a non-CNY or non-positive amount, an id already
    /// reserved): a bug, `INTERNAL`.
    #[error("not a payment the risk check decides: {0}")]
    Invalid(&'static str),
}

/// A payment's hold on the book, from [`RiskBook::decide_and_reserve`]. Plain data: dropping it
/// changes nothing. Give it back with [`RiskBook::release`] if the payment was not written.
#[derive(Debug)]
#[must_use = "a reservation whose payment is not written must be released"]
pub struct Reservation {
    payment_id: String,
    flags: Vec<Flag>,
}

impl Reservation {
    pub fn payment_id(&self) -> &str {
        &self.payment_id
    }

    /// Flags raised by the decision (to record and count).
    pub fn flags(&self) -> &[Flag] {
        &self.flags
    }
}

/// What [`RiskBook::settle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The reservation moved to `booked`.
    Booked,
    /// What the payment held was given back.
    Released,
    /// Nothing to do (already done, still in flight, or never held here).
    Unchanged,
}

/// A point in the book's history: bookings after it are not in a ledger read made after it was
/// taken ([`RiskBook::reload_owed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(u64);

/// A rebuild that could not use the store's payments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    /// A total overflows: the store holds what no payment can be (a broken invariant).
    #[error("the totals overflow at payment {payment_id}")]
    Overflow { payment_id: String },
    #[error("payment {payment_id}: {problem}")]
    Invalid { payment_id: String, problem: &'static str },
}

/// One partner's exposure in one currency, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposureView {
    pub partner: String,
    pub currency: Currency,
    pub owed_minor: i64,
    pub reserved_minor: i64,
    pub booked_minor: i64,
    /// Prefunding plus credit line; `None`: no limit.
    pub cap_minor: Option<i64>,
}

/// How big the book is (memory is bounded by the last day's payments plus those in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BookStats {
    pub payers: usize,
    pub merchants: usize,
    pub mccs: usize,
    /// Payments the windows remember (the last day's, about).
    pub recent_payments: usize,
    /// Payments reserved or booked since the last reload of `owed`.
    pub open_payments: usize,
}

// ---------------------------------------------------------------------------------------------
// Rolling windows
// ---------------------------------------------------------------------------------------------

/// A count and a CNY total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    count: u64,
    minor: i64,
}

impl Totals {
    fn plus(self, minor: i64) -> Option<Totals> {
        Some(Totals { count: self.count.checked_add(1)?, minor: self.minor.checked_add(minor)? })
    }

    /// Takes out an entry the totals hold (so nothing can go below zero; saturating only
    /// guards against a bug turning into a wrap).
    fn minus(self, minor: i64) -> Totals {
        Totals { count: self.count.saturating_sub(1), minor: self.minor.saturating_sub(minor) }
    }
}

/// One payment in a window.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at_ms: i64,
    minor: i64,
    /// The payment id's hash: finds the entry again when the payment fails.
    tag: u64,
}

/// The payments of one key within the last day, oldest first, with running totals over the
/// day and over the hour (`entries[hour_from..]`).
#[derive(Debug)]
struct Window {
    entries: VecDeque<Entry>,
    hour_from: usize,
    hour: Totals,
    day: Totals,
    /// The latest time the window was moved to: time never goes back inside a window (two
    /// threads' clocks a few microseconds apart see the later one's window).
    seen_ms: i64,
}

impl Window {
    fn new() -> Self {
        Window {
            entries: VecDeque::new(),
            hour_from: 0,
            hour: Totals::default(),
            day: Totals::default(),
            seen_ms: i64::MIN,
        }
    }

    /// Moves the window to `now_ms`: payments older than an hour leave the hour's totals, older
    /// than a day leave the window.
    fn advance(&mut self, now_ms: i64) {
        let now = now_ms.max(self.seen_ms);
        self.seen_ms = now;
        let hour_cut = now.saturating_sub(HOUR_MS);
        let day_cut = now.saturating_sub(DAY_MS);
        while let Some(e) = self.entries.get(self.hour_from) {
            if e.at_ms >= hour_cut {
                break;
            }
            self.hour = self.hour.minus(e.minor);
            self.hour_from += 1;
        }
        while let Some(e) = self.entries.front() {
            if e.at_ms >= day_cut {
                break;
            }
            self.day = self.day.minus(e.minor);
            self.entries.pop_front();
            // Older than the day is older than the hour: it sat before `hour_from`.
            self.hour_from = self.hour_from.saturating_sub(1);
        }
    }

    /// The totals with one more payment of `minor` now; `None` when one would overflow.
    fn after(&self, minor: i64) -> Option<(Totals, Totals)> {
        Some((self.hour.plus(minor)?, self.day.plus(minor)?))
    }

    fn in_hour(&self, at_ms: i64) -> bool {
        at_ms >= self.seen_ms.saturating_sub(HOUR_MS)
    }

    /// Puts `e` in its place by time (at the back, unless clocks disagree or a rebuild).
    fn place(&mut self, e: Entry, in_hour: bool) {
        let pos = if self.entries.back().is_none_or(|b| b.at_ms <= e.at_ms) {
            self.entries.len()
        } else {
            self.entries.partition_point(|x| x.at_ms <= e.at_ms)
        };
        self.entries.insert(pos, e);
        if !in_hour {
            // Every entry from `hour_from` on is within the hour, so `pos <= hour_from`.
            self.hour_from += 1;
        }
    }

    /// Adds `e`, whose totals [`Window::after`] computed as `after` at the same time.
    fn push_checked(&mut self, e: Entry, after: (Totals, Totals)) {
        let in_hour = self.in_hour(e.at_ms);
        if in_hour {
            self.hour = after.0;
        }
        self.day = after.1;
        self.place(e, in_hour);
    }

    /// Adds `e` (a rebuild), unless it is already out of the window; `None` on overflow, with
    /// nothing changed.
    fn insert(&mut self, e: Entry) -> Option<()> {
        if e.at_ms < self.seen_ms.saturating_sub(DAY_MS) {
            return Some(());
        }
        let in_hour = self.in_hour(e.at_ms);
        let day = self.day.plus(e.minor)?;
        let hour = if in_hour { self.hour.plus(e.minor)? } else { self.hour };
        self.day = day;
        self.hour = hour;
        self.place(e, in_hour);
        Some(())
    }

    /// Whether the window holds the entry made at `at_ms` with `tag`.
    fn holds(&self, at_ms: i64, tag: u64) -> bool {
        let start = self.entries.partition_point(|x| x.at_ms < at_ms);
        self.entries.range(start..).take_while(|x| x.at_ms == at_ms).any(|x| x.tag == tag)
    }

    /// Takes out the payment made at `at_ms` with `tag`; false when it is not here.
    fn remove(&mut self, at_ms: i64, tag: u64) -> bool {
        let start = self.entries.partition_point(|x| x.at_ms < at_ms);
        let found = self
            .entries
            .range(start..)
            .take_while(|x| x.at_ms == at_ms)
            .position(|x| x.tag == tag)
            .map(|i| start + i);
        let Some((i, e)) = found.and_then(|i| self.entries.remove(i).map(|e| (i, e))) else {
            return false;
        };
        self.day = self.day.minus(e.minor);
        if i < self.hour_from {
            self.hour_from -= 1;
        } else {
            self.hour = self.hour.minus(e.minor);
        }
        true
    }
}

/// No window (a payment without a merchant id or an MCC).
const NONE: u32 = u32::MAX;

struct Slot {
    key: Box<str>,
    window: Window,
    live: bool,
}

/// The windows of one kind of key, in a slab: the expiry queue names a window by its slot.
#[derive(Default)]
struct Windows {
    index: HashMap<Box<str>, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl Windows {
    fn find(&self, key: &str) -> Option<u32> {
        self.index.get(key).copied()
    }

    fn get_or_insert(&mut self, key: &str) -> u32 {
        if let Some(s) = self.index.get(key) {
            return *s;
        }
        let slot = Slot { key: key.into(), window: Window::new(), live: true };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                self.slots.push(slot);
                // Slots are at most the payments of a day: far below u32::MAX.
                u32::try_from(self.slots.len() - 1).unwrap_or(NONE)
            }
        };
        self.index.insert(key.into(), s);
        s
    }

    fn window(&mut self, s: u32) -> Option<&mut Window> {
        self.slots.get_mut(s as usize).filter(|sl| sl.live).map(|sl| &mut sl.window)
    }

    fn key(&self, s: u32) -> Option<&str> {
        self.slots.get(s as usize).filter(|sl| sl.live).map(|sl| &*sl.key)
    }

    /// Moves slot `s`'s window to `now_ms` and frees the slot if nothing is left in it.
    fn tidy(&mut self, s: u32, now_ms: i64) {
        let Some(slot) = self.slots.get_mut(s as usize).filter(|sl| sl.live) else {
            return;
        };
        slot.window.advance(now_ms);
        if slot.window.entries.is_empty() {
            slot.live = false;
            let key = std::mem::take(&mut slot.key);
            slot.window = Window::new();
            self.index.remove(&key);
            self.free.push(s);
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// A payment's place in the windows, queued by time so windows are tidied as the day passes.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    at_ms: i64,
    partner: u32,
    payer: u32,
    acquirer: u32,
    merchant: u32,
    mcc: u32,
}

/// A partner's exposure in one currency, in its minor units.
#[derive(Debug, Clone, Copy, Default)]
struct Exposure {
    owed: i64,
    reserved: i64,
    booked: i64,
}

struct PartnerState {
    id: Box<str>,
    payers: Windows,
    exposure: Vec<(Currency, Exposure)>,
}

impl PartnerState {
    fn exposure(&self, c: Currency) -> Exposure {
        self.exposure.iter().find(|(k, _)| *k == c).map(|(_, e)| *e).unwrap_or_default()
    }

    fn exposure_mut(&mut self, c: Currency) -> &mut Exposure {
        let i = match self.exposure.iter().position(|(k, _)| *k == c) {
            Some(i) => i,
            None => {
                self.exposure.push((c, Exposure::default()));
                self.exposure.len() - 1
            }
        };
        &mut self.exposure[i].1
    }
}

struct AcquirerState {
    id: Box<str>,
    merchants: Windows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Reserved,
    /// Booked as the book's sequence stood at `seq`.
    Booked {
        seq: u64,
    },
}

/// A payment the book holds exposure for.
#[derive(Debug, Clone, Copy)]
struct Open {
    partner: u32,
    currency: Currency,
    wallet: i64,
    /// The CNY amount (a kept reservation is added again at a rebuild).
    pay: i64,
    at_ms: i64,
    payer: u32,
    acquirer: u32,
    merchant: u32,
    mcc: u32,
    hold: Hold,
}

fn tag_of(payment_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payment_id.hash(&mut h);
    h.finish()
}

/// `minor` of `currency` as people read it.
fn money(currency: Currency, minor: i64) -> String {
    match Amount::from_minor(currency, minor) {
        Ok(a) => a.to_string(),
        Err(_) => format!("{currency} {minor} minor units"),
    }
}

#[derive(Clone, Copy)]
enum Unit {
    Count,
    Money(Currency),
}

impl Unit {
    fn show(self, v: i64) -> String {
        match self {
            Unit::Count => format!("{v} payments"),
            Unit::Money(c) => money(c, v),
        }
    }
}

fn refusal(rule: Rule, message: impl Into<String>, detail: String) -> DecideError {
    DecideError::Refused(Refusal {
        reason: rule.reason(),
        rule,
        message: message.into(),
        detail,
        over_by: None,
    })
}

fn overflow(rule: Rule, what: &str) -> DecideError {
    refusal(rule, format!("{what} cannot be counted"), format!("{what} overflows"))
}

/// Judges totals against limits, collecting flags.
struct Judge {
    near_bps: Option<u32>,
    flags: Vec<Flag>,
}

impl Judge {
    /// `used` (with this payment) against `max`; `what` names the total for messages, `public`
    /// says whether the partner may see its figures.
    fn at_most(
        &mut self,
        rule: Rule,
        used: i64,
        max: Option<i64>,
        unit: Unit,
        what: &str,
        public: bool,
    ) -> Result<(), DecideError> {
        let Some(max) = max else {
            return Ok(());
        };
        if used > max {
            let (u, m) = (unit.show(used), unit.show(max));
            let over = i128::from(used) - i128::from(max);
            let over_by = match unit {
                Unit::Money(c) => {
                    i64::try_from(over).ok().and_then(|o| Amount::from_minor(c, o).ok())
                }
                Unit::Count => None,
            };
            let detail = match over_by {
                Some(o) => format!("{what}: {u}, over the limit of {m} by {o}"),
                None => format!("{what}: {u}, over the limit of {m}"),
            };
            let message = if public { detail.clone() } else { format!("{what} is over its limit") };
            return Err(DecideError::Refused(Refusal {
                reason: rule.reason(),
                rule,
                message,
                detail,
                over_by,
            }));
        }
        if let Some(bps) = self.near_bps {
            let headroom = i128::from(max) - i128::from(used);
            if headroom * i128::from(BPS_WHOLE) <= i128::from(max) * i128::from(bps) {
                let (u, m) = (unit.show(used), unit.show(max));
                self.flags.push(Flag {
                    kind: FlagKind::NearLimit,
                    rule,
                    detail: format!("{what}: {u}, within {bps} bps of the limit of {m}"),
                });
            }
        }
        Ok(())
    }

    fn at_least(
        rule: Rule,
        value: i64,
        min: Option<i64>,
        unit: Unit,
        what: &str,
    ) -> Result<(), DecideError> {
        match min {
            Some(min) if value < min => {
                let text = format!(
                    "{what} {} is under the minimum of {}",
                    unit.show(value),
                    unit.show(min)
                );
                Err(refusal(rule, text.clone(), text))
            }
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The book
// ---------------------------------------------------------------------------------------------

struct State {
    policy: Arc<Policy>,
    /// Counts reservations and bookings: [`Mark`]s are taken from it.
    seq: u64,
    partners: Vec<PartnerState>,
    partner_index: HashMap<Box<str>, u32>,
    acquirers: Vec<AcquirerState>,
    acquirer_index: HashMap<Box<str>, u32>,
    mccs: Windows,
    expiry: VecDeque<Expiry>,
    open: HashMap<Box<str>, Open>,
}

/// What a decision found, for the reservation that follows it.
struct Found {
    partner: Option<u32>,
    payer: Option<(u32, (Totals, Totals))>,
    acquirer: Option<u32>,
    merchant: Option<(u32, (Totals, Totals))>,
    mcc: Option<(u32, (Totals, Totals))>,
    reserved_after: i64,
}

impl State {
    fn new(policy: Arc<Policy>) -> Self {
        State {
            policy,
            seq: 0,
            partners: Vec::new(),
            partner_index: HashMap::new(),
            acquirers: Vec::new(),
            acquirer_index: HashMap::new(),
            mccs: Windows::default(),
            expiry: VecDeque::new(),
            open: HashMap::new(),
        }
    }

    fn partner(&mut self, id: &str) -> u32 {
        if let Some(i) = self.partner_index.get(id) {
            return *i;
        }
        self.partners.push(PartnerState {
            id: id.into(),
            payers: Windows::default(),
            exposure: Vec::new(),
        });
        let i = u32::try_from(self.partners.len() - 1).unwrap_or(NONE);
        self.partner_index.insert(id.into(), i);
        i
    }

    fn acquirer(&mut self, id: &str) -> u32 {
        if let Some(i) = self.acquirer_index.get(id) {
            return *i;
        }
        self.acquirers.push(AcquirerState { id: id.into(), merchants: Windows::default() });
        let i = u32::try_from(self.acquirers.len() - 1).unwrap_or(NONE);
        self.acquirer_index.insert(id.into(), i);
        i
    }

    /// Tidies the windows of payments that left the day.
    fn expire(&mut self, now_ms: i64) {
        let cut = now_ms.saturating_sub(DAY_MS);
        while let Some(x) = self.expiry.front().copied() {
            if x.at_ms >= cut {
                break;
            }
            self.expiry.pop_front();
            if let Some(p) = self.partners.get_mut(x.partner as usize) {
                p.payers.tidy(x.payer, now_ms);
            }
            if x.merchant != NONE {
                if let Some(a) = self.acquirers.get_mut(x.acquirer as usize) {
                    a.merchants.tidy(x.merchant, now_ms);
                }
            }
            if x.mcc != NONE {
                self.mccs.tidy(x.mcc, now_ms);
            }
        }
    }

    /// The checks; with `reserve`, the reservation too, in the same step.
    fn decide(
        &mut self,
        c: &Candidate<'_>,
        now_ms: i64,
        reserve: bool,
    ) -> Result<Vec<Flag>, DecideError> {
        if c.payment_id.is_empty() {
            return Err(DecideError::Invalid("the payment has no id"));
        }
        if c.pay.currency() != Currency::CNY || !c.pay.is_positive() {
            return Err(DecideError::Invalid("the merchant's amount is not a positive CNY amount"));
        }
        if c.wallet.currency() == Currency::CNY || !c.wallet.is_positive() {
            return Err(DecideError::Invalid("the wallet amount is not a positive wallet amount"));
        }
        if reserve && self.open.contains_key(c.payment_id) {
            return Err(DecideError::Invalid("the payment id already holds a reservation"));
        }
        let policy = Arc::clone(&self.policy);
        let blocked = &policy.blocked;
        if blocked.acquirers.contains(c.acquirer) {
            let d = format!("acquirer {} is blocked", c.acquirer);
            return Err(refusal(Rule::AcquirerBlocked, "the merchant's acquirer is blocked", d));
        }
        if let Some(m) = c.merchant_id.filter(|m| blocked.merchants.contains(*m)) {
            let d = format!("merchant {m} (acquirer {}) is blocked", c.acquirer);
            return Err(refusal(Rule::MerchantBlocked, "the merchant is blocked", d));
        }
        if let Some(mcc) = c.mcc.filter(|m| blocked.mccs.contains(*m)) {
            let d = format!("merchant category {mcc} is blocked");
            return Err(refusal(Rule::MccBlocked, d.clone(), d));
        }

        let (pay, wallet, cur) = (c.pay.minor(), c.wallet.minor(), c.wallet.currency());
        let mut judge = Judge { near_bps: policy.rules.near_limit_bps, flags: Vec::new() };
        let pr = policy.partners.get(c.partner);
        let cr = pr.and_then(|p| p.currencies.get(&cur));
        let cny = Unit::Money(Currency::CNY);
        if let Some(pr) = pr {
            let what = "the payment's CNY amount";
            Judge::at_least(Rule::PaymentCnyMin, pay, pr.payment_cny_minor_min, cny, what)?;
            judge.at_most(Rule::PaymentCnyMax, pay, pr.payment_cny_minor_max, cny, what, true)?;
        }
        if let Some(cr) = cr {
            let what = "the payment's CNY amount (the wallet currency's bound)";
            Judge::at_least(Rule::PaymentCnyMin, pay, cr.payment_cny_minor_min, cny, what)?;
            judge.at_most(Rule::PaymentCnyMax, pay, cr.payment_cny_minor_max, cny, what, true)?;
            let (w, what) = (Unit::Money(cur), "the payment's wallet amount");
            Judge::at_least(Rule::PaymentWalletMin, wallet, cr.payment_wallet_minor_min, w, what)?;
            judge.at_most(
                Rule::PaymentWalletMax,
                wallet,
                cr.payment_wallet_minor_max,
                w,
                what,
                true,
            )?;
        }

        self.expire(now_ms);
        let partner = self.partner_index.get(c.partner).copied();

        // Exposure.
        let ex = partner.map(|i| self.partners[i as usize].exposure(cur)).unwrap_or_default();
        let what = "the partner's exposure with this payment";
        let reserved_after =
            ex.reserved.checked_add(wallet).ok_or_else(|| overflow(Rule::Exposure, what))?;
        let total = ex
            .owed
            .checked_add(ex.booked)
            .and_then(|t| t.checked_add(reserved_after))
            .ok_or_else(|| overflow(Rule::Exposure, what))?;
        let cap = cr.and_then(CurrencyRules::exposure_cap);
        judge.at_most(Rule::Exposure, total, cap, Unit::Money(cur), what, true)?;

        // Payer velocity.
        let payer = match partner {
            Some(i) => {
                let payers = &mut self.partners[i as usize].payers;
                payers.find(c.payer_id).and_then(|s| payers.window(s).map(|w| (s, w)))
            }
            None => None,
        };
        let payer = match payer {
            Some((s, w)) => {
                w.advance(now_ms);
                let after = w.after(pay);
                Some((s, after.ok_or_else(|| overflow(Rule::PayerDayAmount, "the payer's total"))?))
            }
            None => None,
        };
        let (ph, pd) = payer.map(|(_, a)| a).unwrap_or_else(|| first(pay));
        if let Some(v) = pr.map(|p| &p.payer) {
            let (count, hour, day) = (
                |t: Totals| i64::try_from(t.count).unwrap_or(i64::MAX),
                "the payer's payments in the last hour, this one included",
                "the payer's payments in the last 24 hours, this one included",
            );
            let max = |m: Option<u32>| m.map(i64::from);
            judge.at_most(
                Rule::PayerHourCount,
                count(ph),
                max(v.hour_count_max),
                Unit::Count,
                hour,
                true,
            )?;
            judge.at_most(
                Rule::PayerHourAmount,
                ph.minor,
                v.hour_cny_minor_max,
                cny,
                hour,
                true,
            )?;
            judge.at_most(
                Rule::PayerDayCount,
                count(pd),
                max(v.day_count_max),
                Unit::Count,
                day,
                true,
            )?;
            judge.at_most(Rule::PayerDayAmount, pd.minor, v.day_cny_minor_max, cny, day, true)?;
        }

        // Merchant.
        let acquirer = self.acquirer_index.get(c.acquirer).copied();
        let mut merchant = None;
        if let Some(m) = c.merchant_id {
            let found = match acquirer {
                Some(a) => {
                    let ws = &mut self.acquirers[a as usize].merchants;
                    ws.find(m).and_then(|s| ws.window(s).map(|w| (s, w)))
                }
                None => None,
            };
            let what = "the merchant's CNY total in the last 24 hours";
            let after = match found {
                Some((s, w)) => {
                    w.advance(now_ms);
                    let after =
                        w.after(pay).ok_or_else(|| overflow(Rule::MerchantDayAmount, what))?;
                    merchant = Some((s, after));
                    after
                }
                None => first(pay),
            };
            let limit = policy.merchant_limit(c.acquirer, m);
            judge.at_most(Rule::MerchantDayAmount, after.1.minor, limit, cny, what, false)?;
        }

        // Merchant category.
        let mut mcc = None;
        if let Some(code) = c.mcc {
            let what = "the merchant category's CNY total in the last 24 hours";
            let found = self.mccs.find(code);
            let after = match found.and_then(|s| self.mccs.window(s).map(|w| (s, w))) {
                Some((s, w)) => {
                    w.advance(now_ms);
                    let after = w.after(pay).ok_or_else(|| overflow(Rule::MccDayAmount, what))?;
                    mcc = Some((s, after));
                    after
                }
                None => first(pay),
            };
            let limit = policy.mccs.get(code).copied().flatten();
            judge.at_most(Rule::MccDayAmount, after.1.minor, limit, cny, what, false)?;
        }

        if reserve {
            let found = Found { partner, payer, acquirer, merchant, mcc, reserved_after };
            self.reserve(c, now_ms, found);
        }
        Ok(judge.flags)
    }

    /// Records the payment the checks let through: nothing here can fail (every total was
    /// computed, checked, by the checks).
    fn reserve(&mut self, c: &Candidate<'_>, now_ms: i64, f: Found) {
        self.seq += 1;
        let tag = tag_of(c.payment_id);
        let e = Entry { at_ms: now_ms, minor: c.pay.minor(), tag };
        let pi = f.partner.unwrap_or_else(|| self.partner(c.partner));
        let p = &mut self.partners[pi as usize];
        let payer = match f.payer {
            Some((s, after)) => {
                if let Some(w) = p.payers.window(s) {
                    w.push_checked(e, after);
                }
                s
            }
            None => new_window(&mut p.payers, c.payer_id, e),
        };
        p.exposure_mut(c.wallet.currency()).reserved = f.reserved_after;
        let ai = f.acquirer.unwrap_or_else(|| self.acquirer(c.acquirer));
        let merchant = match (c.merchant_id, f.merchant) {
            (None, _) => NONE,
            (Some(_), Some((s, after))) => {
                if let Some(w) = self.acquirers[ai as usize].merchants.window(s) {
                    w.push_checked(e, after);
                }
                s
            }
            (Some(m), None) => new_window(&mut self.acquirers[ai as usize].merchants, m, e),
        };
        let mcc = match (c.mcc, f.mcc) {
            (None, _) => NONE,
            (Some(_), Some((s, after))) => {
                if let Some(w) = self.mccs.window(s) {
                    w.push_checked(e, after);
                }
                s
            }
            (Some(code), None) => new_window(&mut self.mccs, code, e),
        };
        self.expiry.push_back(Expiry {
            at_ms: now_ms,
            partner: pi,
            payer,
            acquirer: ai,
            merchant,
            mcc,
        });
        self.open.insert(
            c.payment_id.into(),
            Open {
                partner: pi,
                currency: c.wallet.currency(),
                wallet: c.wallet.minor(),
                pay: c.pay.minor(),
                at_ms: now_ms,
                payer,
                acquirer: ai,
                merchant,
                mcc,
                hold: Hold::Reserved,
            },
        );
    }

    /// Takes the payment out of the windows and gives back its exposure; whether anything was
    /// held.
    fn void(&mut self, payment_id: &str, facts: Option<&PaymentFacts<'_>>) -> bool {
        let tag = tag_of(payment_id);
        let mut changed = false;
        if let Some(o) = self.open.remove(payment_id) {
            changed = true;
            let ex = self.partners[o.partner as usize].exposure_mut(o.currency);
            match o.hold {
                Hold::Reserved => ex.reserved = ex.reserved.saturating_sub(o.wallet),
                Hold::Booked { .. } => ex.booked = ex.booked.saturating_sub(o.wallet),
            }
            let p = &mut self.partners[o.partner as usize];
            changed |= p.payers.window(o.payer).is_some_and(|w| w.remove(o.at_ms, tag));
            if o.merchant != NONE {
                let a = &mut self.acquirers[o.acquirer as usize];
                changed |= a.merchants.window(o.merchant).is_some_and(|w| w.remove(o.at_ms, tag));
            }
            if o.mcc != NONE {
                changed |= self.mccs.window(o.mcc).is_some_and(|w| w.remove(o.at_ms, tag));
            }
            return changed;
        }
        // Not held for exposure (booked and reloaded, or rebuilt as booked): its windows only.
        let Some(f) = facts else {
            return false;
        };
        let (c, at_ms) = (&f.payment, f.at.timestamp_millis());
        if let Some(&pi) = self.partner_index.get(c.partner) {
            let ws = &mut self.partners[pi as usize].payers;
            if let Some(w) = ws.find(c.payer_id).and_then(|s| ws.window(s)) {
                changed |= w.remove(at_ms, tag);
            }
        }
        if let (Some(m), Some(&ai)) = (c.merchant_id, self.acquirer_index.get(c.acquirer)) {
            let ws = &mut self.acquirers[ai as usize].merchants;
            if let Some(w) = ws.find(m).and_then(|s| ws.window(s)) {
                changed |= w.remove(at_ms, tag);
            }
        }
        if let Some(code) = c.mcc {
            if let Some(w) = self.mccs.find(code).and_then(|s| self.mccs.window(s)) {
                changed |= w.remove(at_ms, tag);
            }
        }
        changed
    }

    /// Adds a payment read from the store (a rebuild): into the windows when it is of the last
    /// day, into `reserved` when it is in flight.
    fn add_fact(&mut self, f: &PaymentFacts<'_>, now_ms: i64) -> Result<(), RebuildError> {
        let c = &f.payment;
        let invalid = |problem| RebuildError::Invalid { payment_id: c.payment_id.into(), problem };
        let overflowed = || RebuildError::Overflow { payment_id: c.payment_id.into() };
        if c.pay.currency() != Currency::CNY || c.pay.is_zero() {
            return Err(invalid("the merchant's amount is not a CNY amount"));
        }
        if f.stage == Stage::Void {
            return Ok(());
        }
        let at_ms = f.at.timestamp_millis();
        let tag = tag_of(c.payment_id);
        let pi = self.partner(c.partner);
        let (mut payer, mut acquirer, mut merchant, mut mcc) = (NONE, NONE, NONE, NONE);
        if at_ms >= now_ms.saturating_sub(DAY_MS) {
            let e = Entry { at_ms, minor: c.pay.minor(), tag };
            let ai = self.acquirer(c.acquirer);
            acquirer = ai;
            // Checked before anything changes, so an overflow leaves no half-added payment.
            let payers = &mut self.partners[pi as usize].payers;
            let ok_payer = fits(payers, c.payer_id, e.minor);
            let ok_merchant = c
                .merchant_id
                .is_none_or(|m| fits(&mut self.acquirers[ai as usize].merchants, m, e.minor));
            let ok_mcc = c.mcc.is_none_or(|code| fits(&mut self.mccs, code, e.minor));
            if !(ok_payer && ok_merchant && ok_mcc) {
                return Err(overflowed());
            }
            payer = insert_into(&mut self.partners[pi as usize].payers, c.payer_id, e);
            if let Some(m) = c.merchant_id {
                merchant = insert_into(&mut self.acquirers[ai as usize].merchants, m, e);
            }
            if let Some(code) = c.mcc {
                mcc = insert_into(&mut self.mccs, code, e);
            }
            self.expiry.push_back(Expiry { at_ms, partner: pi, payer, acquirer, merchant, mcc });
        }
        if f.stage == Stage::InFlight {
            let ex = self.partners[pi as usize].exposure_mut(c.wallet.currency());
            ex.reserved = ex.reserved.checked_add(c.wallet.minor()).ok_or_else(overflowed)?;
            self.open.insert(
                c.payment_id.into(),
                Open {
                    partner: pi,
                    currency: c.wallet.currency(),
                    wallet: c.wallet.minor(),
                    pay: c.pay.minor(),
                    at_ms,
                    payer,
                    acquirer,
                    merchant,
                    mcc,
                    hold: Hold::Reserved,
                },
            );
        }
        Ok(())
    }

    fn set_owed<P: AsRef<str>>(&mut self, owed: impl IntoIterator<Item = (P, Amount)>) {
        for p in &mut self.partners {
            for (_, e) in &mut p.exposure {
                e.owed = 0;
            }
        }
        for (partner, amount) in owed {
            let pi = self.partner(partner.as_ref());
            self.partners[pi as usize].exposure_mut(amount.currency()).owed = amount.minor();
        }
    }
}

/// The totals of a window holding only a payment of `minor`.
fn first(minor: i64) -> (Totals, Totals) {
    let t = Totals { count: 1, minor };
    (t, t)
}

fn new_window(ws: &mut Windows, key: &str, e: Entry) -> u32 {
    let s = ws.get_or_insert(key);
    if let Some(w) = ws.window(s) {
        w.advance(e.at_ms);
        w.push_checked(e, first(e.minor));
    }
    s
}

/// Whether a payment of `minor` fits in `key`'s window without overflowing.
fn fits(ws: &mut Windows, key: &str, minor: i64) -> bool {
    match ws.find(key).and_then(|s| ws.window(s)) {
        Some(w) => w.after(minor).is_some(),
        None => true,
    }
}

/// Inserts `e` (already known to fit) into `key`'s window; its slot.
fn insert_into(ws: &mut Windows, key: &str, e: Entry) -> u32 {
    let s = ws.get_or_insert(key);
    if let Some(w) = ws.window(s) {
        // `fits` said it does: the insert cannot overflow.
        let _ = w.insert(e);
    }
    s
}

/// The risk counters and the decision. One lock guards them all: a decision holds it for a few
/// microseconds, so a node's payments per second keep it free almost always, and a check and its
/// reservation can never interleave with another payment's (merchant and MCC limits span
/// partners).
pub struct RiskBook {
    state: Mutex<State>,
}

impl RiskBook {
    pub fn new(policy: Policy) -> Self {
        RiskBook { state: Mutex::new(State::new(Arc::new(policy))) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics; should something, the counters are whole between
        // statements that change them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.lock().policy)
    }

    /// Puts `policy` in force for the next decision. The counters stay: a new limit applies to
    /// the payments already counted.
    pub fn set_policy(&self, policy: Policy) {
        self.lock().policy = Arc::new(policy);
    }

    /// Checks `c` made at `now` (its `created_at`) against every rule and, if they let it through,
    /// reserves it — in one step, so concurrent payments cannot together pass a limit.
    pub fn decide_and_reserve(
        &self,
        c: &Candidate<'_>,
        now: DateTime<Utc>,
    ) -> Result<Reservation, DecideError> {
        let flags = self.lock().decide(c, now.timestamp_millis(), true)?;
        Ok(Reservation { payment_id: c.payment_id.to_owned(), flags })
    }

    /// The decision alone, reserving nothing (what-if for the admin API; tests).
    pub fn check(&self, c: &Candidate<'_>, now: DateTime<Utc>) -> Result<Vec<Flag>, DecideError> {
        self.lock().decide(c, now.timestamp_millis(), false)
    }

    /// Gives back everything `r` holds: its payment was not written. False when it held nothing
    /// any more.
    pub fn release(&self, r: Reservation) -> bool {
        self.lock().void(&r.payment_id, None)
    }

    /// Tells the book where a payment now stands (after its change is durable). Idempotent; a
    /// payment still in flight changes nothing. Succeeded: its reservation moves to `booked`
    /// (still counted until a ledger read taken after this shows it). Failed or cancelled: the
    /// payment leaves the windows and its exposure is given back.
    pub fn settle(&self, p: &PaymentFacts<'_>) -> Settled {
        self.lock().settle(p)
    }

    /// Takes in payments the store holds that this book may not know — made by other nodes
    /// sharing the store — and follows those it holds to where they now stand: a payment it
    /// does not count yet is counted (its windows, and its exposure while in flight); one it
    /// holds is settled ([`RiskBook::settle`]). Read what the partners owe *after* this
    /// ([`RiskBook::reload_owed`]) so that a booked payment taken in here is in it. Returns how
    /// many payments it began to count.
    pub fn absorb<'a>(
        &self,
        payments: impl IntoIterator<Item = PaymentFacts<'a>>,
        now: DateTime<Utc>,
    ) -> Result<usize, RebuildError> {
        let now_ms = now.timestamp_millis();
        let mut s = self.lock();
        let mut added = 0;
        for f in payments {
            if s.open.contains_key(f.payment.payment_id) || s.counts(&f) {
                s.settle(&f);
            } else if f.stage != Stage::Void {
                s.add_fact(&f, now_ms)?;
                added += 1;
            }
        }
        Ok(added)
    }

    /// The payments this book holds in flight (reserved, outcome not known here): the ones
    /// whose end another node may have written.
    pub fn in_flight(&self) -> Vec<(String, DateTime<Utc>)> {
        let s = self.lock();
        s.open
            .iter()
            .filter(|(_, o)| o.hold == Hold::Reserved)
            .map(|(id, o)| {
                let at = DateTime::<Utc>::from_timestamp_millis(o.at_ms).unwrap_or_default();
                (id.to_string(), at)
            })
            .collect()
    }

    /// Gives back what `payment_id` holds: a reservation whose payment the store does not hold
    /// long after it was made (its write failed, unknown, and never landed). False when it held
    /// nothing.
    pub fn forget(&self, payment_id: &str) -> bool {
        self.lock().void(payment_id, None)
    }
}

impl State {
    /// [`RiskBook::settle`], under the lock.
    fn settle(&mut self, p: &PaymentFacts<'_>) -> Settled {
        let s = self;
        match p.stage {
            Stage::InFlight => Settled::Unchanged,
            Stage::Booked => {
                let seq = s.seq + 1;
                let Some(o) = s.open.get_mut(p.payment.payment_id) else {
                    return Settled::Unchanged;
                };
                if o.hold != Hold::Reserved {
                    return Settled::Unchanged;
                }
                o.hold = Hold::Booked { seq };
                let o = *o;
                s.seq = seq;
                let ex = s.partners[o.partner as usize].exposure_mut(o.currency);
                ex.reserved = ex.reserved.saturating_sub(o.wallet);
                // `reserved` held it, so `booked` (never above what was reserved) cannot overflow.
                ex.booked = ex.booked.saturating_add(o.wallet);
                Settled::Booked
            }
            Stage::Void => {
                if s.void(p.payment.payment_id, Some(p)) {
                    Settled::Released
                } else {
                    Settled::Unchanged
                }
            }
        }
    }

    /// Whether the windows count `f` (a payment of the last day, not open: booked and read
    /// into `owed`).
    fn counts(&self, f: &PaymentFacts<'_>) -> bool {
        let c = &f.payment;
        let Some(&pi) = self.partner_index.get(c.partner) else {
            return false;
        };
        let ws = &self.partners[pi as usize].payers;
        ws.find(c.payer_id).and_then(|slot| ws.slots.get(slot as usize)).is_some_and(|slot| {
            slot.live && slot.window.holds(f.at.timestamp_millis(), tag_of(c.payment_id))
        })
    }
}

impl RiskBook {
    /// The book's position now: take it before reading the ledger for [`RiskBook::reload_owed`].
    pub fn mark(&self) -> Mark {
        Mark(self.lock().seq)
    }

    /// Replaces what the partners owe with `owed` (per partner, in each currency: what
    /// `Treasury::refresh_owed` reads from the ledger; a partner or currency not in it owes nothing),
    /// read after `since` was taken: payments booked before `since` are in it and leave `booked`.
    pub fn reload_owed<P: AsRef<str>>(
        &self,
        owed: impl IntoIterator<Item = (P, Amount)>,
        since: Mark,
    ) {
        let mut s = self.lock();
        s.set_owed(owed);
        let loaded: Vec<(Box<str>, Open)> = s
            .open
            .iter()
            .filter(|(_, o)| matches!(o.hold, Hold::Booked { seq } if seq <= since.0))
            .map(|(k, o)| (k.clone(), *o))
            .collect();
        for (id, o) in loaded {
            s.open.remove(&id);
            let ex = s.partners[o.partner as usize].exposure_mut(o.currency);
            ex.booked = ex.booked.saturating_sub(o.wallet);
        }
    }

    /// Rebuilds every counter from the store: `payments` must hold every payment created in the
    /// 24 hours before `now` and every payment not final (others are ignored, as are repeats);
    /// `owed` is what the ledger says the partners owe, read *after* the payments (a payment
    /// booked in between then counts twice for a moment, never not at all).
    ///
    /// This book's own reservations from the last minute that `payments` does not hold are kept
    /// (their PENDING write may have come after the read); everything else is replaced.
    pub fn rebuild<'a, P: AsRef<str>>(
        &self,
        payments: impl IntoIterator<Item = PaymentFacts<'a>>,
        owed: impl IntoIterator<Item = (P, Amount)>,
        now: DateTime<Utc>,
    ) -> Result<BookStats, RebuildError> {
        let now_ms = now.timestamp_millis();
        let mut facts: Vec<PaymentFacts<'a>> = payments.into_iter().collect();
        facts.sort_by_key(|f| f.at);
        let mut seen: HashSet<&'a str> = HashSet::with_capacity(facts.len());
        let mut fresh = State::new(Arc::new(Policy::default()));
        for f in &facts {
            if seen.insert(f.payment.payment_id) {
                fresh.add_fact(f, now_ms)?;
            }
        }
        fresh.set_owed(owed);
        fresh.expire(now_ms);
        for p in &mut fresh.partners {
            for s in 0..p.payers.slots.len() {
                p.payers.tidy(u32::try_from(s).unwrap_or(NONE), now_ms);
            }
        }
        for a in &mut fresh.acquirers {
            for s in 0..a.merchants.slots.len() {
                a.merchants.tidy(u32::try_from(s).unwrap_or(NONE), now_ms);
            }
        }
        for s in 0..fresh.mccs.slots.len() {
            fresh.mccs.tidy(u32::try_from(s).unwrap_or(NONE), now_ms);
        }

        let mut old = self.lock();
        let keep: Vec<(Box<str>, Open)> = old
            .open
            .iter()
            .filter(|(id, o)| {
                o.hold == Hold::Reserved
                    && o.at_ms >= now_ms.saturating_sub(UNWRITTEN_GRACE_MS)
                    && !seen.contains(&***id)
            })
            .map(|(id, o)| (id.clone(), *o))
            .collect();
        for (id, o) in keep {
            let partner = old.partners[o.partner as usize].id.clone();
            let p = &old.partners[o.partner as usize];
            let payer = p.payers.key(o.payer).map(str::to_owned).unwrap_or_default();
            let acquirer = old.acquirers.get(o.acquirer as usize).map(|a| a.id.clone());
            let merchant = acquirer.as_ref().and_then(|_| {
                old.acquirers[o.acquirer as usize].merchants.key(o.merchant).map(str::to_owned)
            });
            let mcc = old.mccs.key(o.mcc).map(str::to_owned);
            let (Ok(pay), Ok(wallet)) = (
                Amount::from_minor(Currency::CNY, o.pay),
                Amount::from_minor(o.currency, o.wallet),
            ) else {
                continue;
            };
            let c = Candidate {
                payment_id: &id,
                partner: &partner,
                payer_id: &payer,
                acquirer: acquirer.as_deref().unwrap_or(""),
                merchant_id: merchant.as_deref(),
                mcc: mcc.as_deref(),
                pay,
                wallet,
            };
            let at = DateTime::<Utc>::from_timestamp_millis(o.at_ms).unwrap_or(now);
            fresh.add_fact(&PaymentFacts { payment: c, at, stage: Stage::InFlight }, now_ms)?;
        }
        fresh.policy = Arc::clone(&old.policy);
        fresh.seq = old.seq;
        *old = fresh;
        Ok(stats_of(&old))
    }

    /// Tidies the windows of payments that left the day (decisions do it as they go; call this
    /// on a timer so memory shrinks when payments stop).
    pub fn prune(&self, now: DateTime<Utc>) {
        self.lock().expire(now.timestamp_millis());
    }

    /// Every partner's exposure per currency.
    pub fn exposures(&self) -> Vec<ExposureView> {
        let s = self.lock();
        let mut out = Vec::new();
        for p in &s.partners {
            let rules = s.policy.partners.get(&*p.id);
            for (c, e) in &p.exposure {
                out.push(ExposureView {
                    partner: p.id.to_string(),
                    currency: *c,
                    owed_minor: e.owed,
                    reserved_minor: e.reserved,
                    booked_minor: e.booked,
                    cap_minor: rules
                        .and_then(|r| r.currencies.get(c))
                        .and_then(CurrencyRules::exposure_cap),
                });
            }
        }
        out.sort_by(|a, b| (&a.partner, a.currency).cmp(&(&b.partner, b.currency)));
        out
    }

    pub fn stats(&self) -> BookStats {
        stats_of(&self.lock())
    }
}

fn stats_of(s: &State) -> BookStats {
    BookStats {
        payers: s.partners.iter().map(|p| p.payers.len()).sum(),
        merchants: s.acquirers.iter().map(|a| a.merchants.len()).sum(),
        mccs: s.mccs.len(),
        recent_payments: s.expiry.len(),
        open_payments: s.open.len(),
    }
}

impl fmt::Debug for RiskBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RiskBook").field("stats", &self.stats()).finish()
    }
}

#[cfg(test)]
mod tests {
    //! Each rule at its boundary (one under, at, one over), the windows to the millisecond, the
    //! lifecycle (settle, release, reload), rebuild against the live book, exposure under real
    //! concurrent threads, and overflow — all with time passed in.

    use super::*;
    use chrono::{Duration, TimeZone};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 22, 8, 0, 0).unwrap()
    }

    fn at(ms: i64) -> DateTime<Utc> {
        t0() + Duration::milliseconds(ms)
    }

    fn php() -> Currency {
        Currency::from_code("PHP").unwrap()
    }

    fn rules(text: &str) -> RiskRules {
        toml::from_str(text).unwrap()
    }

    fn book(text: &str) -> RiskBook {
        RiskBook::new(Policy::new(rules(text), Blocklists::default()).unwrap())
    }

    /// An owned payment to make candidates and facts from.
    #[derive(Clone)]
    struct Pay {
        id: String,
        partner: String,
        payer: String,
        acquirer: String,
        merchant: Option<String>,
        mcc: Option<String>,
        pay: i64,
        wallet: i64,
        currency: Currency,
    }

    impl Pay {
        fn new(id: impl Into<String>) -> Pay {
            Pay {
                id: id.into(),
                partner: "gcash".into(),
                payer: "payer-1".into(),
                acquirer: "acq-a".into(),
                merchant: Some("m-1".into()),
                mcc: Some("5812".into()),
                pay: 10_000,
                wallet: 80_000,
                currency: php(),
            }
        }
        fn payer(mut self, p: &str) -> Self {
            self.payer = p.into();
            self
        }
        fn partner(mut self, p: &str) -> Self {
            self.partner = p.into();
            self
        }
        fn merchant(mut self, acquirer: &str, m: Option<&str>) -> Self {
            self.acquirer = acquirer.into();
            self.merchant = m.map(Into::into);
            self
        }
        fn mcc(mut self, m: Option<&str>) -> Self {
            self.mcc = m.map(Into::into);
            self
        }
        fn cny(mut self, minor: i64) -> Self {
            self.pay = minor;
            self
        }
        fn wallet(mut self, minor: i64) -> Self {
            self.wallet = minor;
            self
        }
        fn c(&self) -> Candidate<'_> {
            Candidate {
                payment_id: &self.id,
                partner: &self.partner,
                payer_id: &self.payer,
                acquirer: &self.acquirer,
                merchant_id: self.merchant.as_deref(),
                mcc: self.mcc.as_deref(),
                pay: Amount::from_minor(Currency::CNY, self.pay).unwrap(),
                wallet: Amount::from_minor(self.currency, self.wallet).unwrap(),
            }
        }
        fn facts(&self, at: DateTime<Utc>, stage: Stage) -> PaymentFacts<'_> {
            PaymentFacts { payment: self.c(), at, stage }
        }
    }

    #[track_caller]
    fn refused<T: fmt::Debug>(r: Result<T, DecideError>) -> Refusal {
        match r {
            Err(DecideError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[track_caller]
    fn passes(b: &RiskBook, p: &Pay, now: DateTime<Utc>) {
        if let Err(e) = b.check(&p.c(), now) {
            panic!("{} refused: {e}", p.id);
        }
    }

    #[track_caller]
    fn fails(b: &RiskBook, p: &Pay, now: DateTime<Utc>, rule: Rule) -> Refusal {
        let r = refused(b.check(&p.c(), now));
        assert_eq!(r.rule, rule, "{}: {}", p.id, r.detail);
        assert_eq!(r.reason, rule.reason());
        r
    }

    fn cny(minor: i64) -> Amount {
        Amount::from_minor(Currency::CNY, minor).unwrap()
    }

    const EXAMPLE: &str = r#"
        near_limit_bps = 500
        merchant_day_cny_minor_max = 50000000

        [partners.gcash]
        payment_cny_minor_min = 100
        payment_cny_minor_max = 5000000
        payer = { hour_count_max = 10, day_cny_minor_max = 2000000 }

        [partners.gcash.currencies.PHP]
        payment_wallet_minor_max = 5000000
        prefund_minor = 100000000
        credit_line_minor = 50000000

        [merchants.acq-a."500034453110001"]
        day_cny_minor_max = 100000000

        [mccs."7995"]
        day_cny_minor_max = 1000000
    "#;

    /// Another node's payments, taken in by `absorb`: counted once however often they are
    /// read, followed to their ends, and never counted again once booked and read into `owed`.
    #[test]
    fn absorbed_payments_count_once_and_follow_their_ends() {
        let b = book(
            "[partners.gcash]\npayer = { hour_count_max = 2 }\n\
             [partners.gcash.currencies.PHP]\nprefund_minor = 300000",
        );
        let (a, other) = (Pay::new("pay-a"), Pay::new("pay-b"));
        let ours = Pay::new("pay-ours");
        let _r = b.decide_and_reserve(&ours.c(), at(0)).unwrap();
        // Read twice (overlapping reads): counted once. Our own reservation is not counted again.
        for _ in 0..2 {
            let facts = [a.facts(at(1), Stage::InFlight), ours.facts(at(0), Stage::InFlight)];
            b.absorb(facts, at(2)).unwrap();
        }
        let ex = &b.exposures()[0];
        assert_eq!((ex.reserved_minor, ex.booked_minor), (160_000, 0));
        assert_eq!(b.in_flight().len(), 2);
        // payer-1 has two payments in the hour: a third is refused.
        fails(&b, &other, at(3), Rule::PayerHourCount);
        // The other node's payment failed: its hold and its place in the window are given back.
        b.absorb([a.facts(at(1), Stage::Void)], at(4)).unwrap();
        assert_eq!(b.exposures()[0].reserved_minor, 80_000);
        passes(&b, &other, at(5));
        // Ours succeeded and was read into owed: read again, it is not added back.
        b.settle(&ours.facts(at(0), Stage::Booked));
        let m = b.mark();
        b.reload_owed([("gcash", Amount::from_minor(php(), 80_000).unwrap())], m);
        b.absorb([ours.facts(at(0), Stage::Booked)], at(6)).unwrap();
        let ex = &b.exposures()[0];
        assert_eq!((ex.owed_minor, ex.reserved_minor, ex.booked_minor), (80_000, 0, 0));
        // Counted once in payer-1's hour: one more still fits.
        passes(&b, &other, at(6));
        // A void payment never seen is not counted at all.
        assert_eq!(b.absorb([other.facts(at(7), Stage::Void)], at(7)).unwrap(), 0);
        assert!(b.in_flight().is_empty());
    }

    #[test]
    fn rules_read_from_toml_and_every_problem_has_its_path() {
        let r = rules(EXAMPLE);
        assert!(r.validate("risk").is_empty(), "{:?}", r.validate("risk"));
        let g = &r.partners["gcash"];
        assert_eq!(g.payer.hour_count_max, Some(10));
        assert_eq!(g.currencies[&php()].exposure_cap(), Some(150_000_000));
        assert_eq!(r.merchants["acq-a"]["500034453110001"].day_cny_minor_max, Some(100_000_000));
        // Written back out, it reads the same.
        assert_eq!(rules(&toml::to_string(&r).unwrap()), r);
        // Nothing configured: no limits at all.
        assert_eq!(rules(""), RiskRules::default());
        assert!(RiskRules::default().validate("risk").is_empty());

        for unknown in [
            "nearlimit_bps = 1",
            "[partners.gcash]\npayment_max = 1",
            "[mccs.\"7995\"]\nday_max = 1",
        ] {
            assert!(toml::from_str::<RiskRules>(unknown).is_err(), "{unknown}");
        }
        assert!(toml::from_str::<RiskRules>("[partners.gcash.currencies.XAU]").is_err());

        let bad = rules(
            r#"
            near_limit_bps = 0
            merchant_day_cny_minor_max = 1000000000000000
            [partners."G Cash"]
            payment_cny_minor_min = 500
            payment_cny_minor_max = 400
            payer = { hour_count_max = 0, day_cny_minor_max = -1 }
            [partners.gcash.currencies.CNY]
            [partners.gcash.currencies.PHP]
            prefund_minor = -5
            [merchants.acq-a." "]
            day_cny_minor_max = 0
            [mccs.79]
            "#,
        );
        let problems: Vec<String> = bad.validate("risk").iter().map(|p| p.path.clone()).collect();
        assert_eq!(
            problems,
            [
                "risk.near_limit_bps",
                "risk.merchant_day_cny_minor_max",
                "risk.partners.\"G Cash\"",
                "risk.partners.\"G Cash\".payment_cny_minor_min",
                "risk.partners.\"G Cash\".payer.hour_count_max",
                "risk.partners.\"G Cash\".payer.day_cny_minor_max",
                "risk.partners.gcash.currencies.CNY",
                "risk.partners.gcash.currencies.PHP.prefund_minor",
                "risk.merchants.acq-a.\" \"",
                "risk.merchants.acq-a.\" \".day_cny_minor_max",
                "risk.mccs.79",
            ]
        );
        assert!(Policy::new(bad, Blocklists::default()).is_err());

        let named = rules("[partners.gcash]\n[partners.kakao]\n[merchants.acq-z.m1]");
        let unknown = named.unknown_names("risk", |p| p == "gcash", |a| a == "acq-a");
        let paths: Vec<&str> = unknown.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["risk.partners.kakao", "risk.merchants.acq-z"]);
    }

    #[test]
    fn no_rules_let_everything_through() {
        let b = RiskBook::new(Policy::default());
        for i in 0..50 {
            let p = Pay::new(format!("p{i}")).cny(Amount::MAX_MINOR).wallet(Amount::MAX_MINOR / 2);
            let r = b.decide_and_reserve(&p.c(), t0()).unwrap();
            assert!(r.flags().is_empty());
        }
    }

    #[test]
    fn amount_bounds_are_inclusive() {
        let b = book(
            r#"
            [partners.gcash]
            payment_cny_minor_min = 100
            payment_cny_minor_max = 5000
            [partners.gcash.currencies.PHP]
            payment_cny_minor_max = 4000
            payment_wallet_minor_min = 50
            payment_wallet_minor_max = 30000
            "#,
        );
        let p = |cny: i64, wallet: i64| Pay::new("p").cny(cny).wallet(wallet);
        // CNY minimum (partner): at and above pass, one under fails.
        passes(&b, &p(100, 1000), t0());
        passes(&b, &p(101, 1000), t0());
        let r = fails(&b, &p(99, 1000), t0(), Rule::PaymentCnyMin);
        assert_eq!(r.over_by, None);
        // CNY maximum: the currency's 4000 is the lower of the two.
        passes(&b, &p(3999, 1000), t0());
        passes(&b, &p(4000, 1000), t0());
        let r = fails(&b, &p(4001, 1000), t0(), Rule::PaymentCnyMax);
        assert_eq!(r.over_by, Some(cny(1)));
        assert_eq!(
            r.message,
            "the payment's CNY amount (the wallet currency's bound): CNY 40.01, over the limit of \
             CNY 40.00 by CNY 0.01"
        );
        // Another wallet currency has only the partner's 5000.
        let krw = Currency::from_code("KRW").unwrap();
        let mut k = p(5000, 1000);
        k.currency = krw;
        passes(&b, &k, t0());
        k.pay = 5001;
        assert_eq!(fails(&b, &k, t0(), Rule::PaymentCnyMax).over_by, Some(cny(1)));
        // Wallet bounds, in the wallet currency.
        passes(&b, &p(1000, 50), t0());
        fails(&b, &p(1000, 49), t0(), Rule::PaymentWalletMin);
        passes(&b, &p(1000, 29_999), t0());
        passes(&b, &p(1000, 30_000), t0());
        let r = fails(&b, &p(1000, 30_001), t0(), Rule::PaymentWalletMax);
        assert_eq!(r.over_by, Some(Amount::from_minor(php(), 1).unwrap()));
        // Another partner has no rules.
        passes(&b, &p(1, 1).partner("kakao"), t0());
    }

    #[test]
    fn exposure_is_owed_plus_in_flight_plus_booked_against_prefund_and_credit() {
        let b = book(
            r#"
            [partners.gcash.currencies.PHP]
            prefund_minor = 1000
            credit_line_minor = 500
            "#,
        );
        b.reload_owed([("gcash", Amount::from_minor(php(), 600).unwrap())], b.mark());
        let one = Pay::new("one").wallet(200);
        let _ = b.decide_and_reserve(&one.c(), t0()).unwrap(); // in flight
        let two = Pay::new("two").wallet(300).payer("payer-2");
        let _ = b.decide_and_reserve(&two.c(), t0()).unwrap();
        assert_eq!(b.settle(&two.facts(t0(), Stage::Booked)), Settled::Booked);
        // 600 owed + 200 in flight + 300 booked = 1100 of 1500: 399 under, 400 at, 401 over.
        let p = |w: i64| Pay::new("new").payer("payer-3").wallet(w);
        passes(&b, &p(399), t0());
        passes(&b, &p(400), t0());
        let r = fails(&b, &p(401), t0(), Rule::Exposure);
        assert_eq!(r.over_by, Some(Amount::from_minor(php(), 1).unwrap()));
        assert_eq!(r.reason.code(), "EXPOSURE_LIMIT");
        assert_eq!(
            r.message,
            "the partner's exposure with this payment: PHP 15.01, over the limit of PHP 15.00 by \
             PHP 0.01"
        );
        // Another currency of the partner has no cap.
        let mut k = p(1_000_000);
        k.currency = Currency::from_code("KRW").unwrap();
        passes(&b, &k, t0());
        // A failed payment gives its exposure back.
        assert_eq!(b.settle(&one.facts(t0(), Stage::Void)), Settled::Released);
        passes(&b, &p(600), t0());
        fails(&b, &p(601), t0(), Rule::Exposure);
        let view = &b.exposures()[0];
        assert_eq!(
            (view.owed_minor, view.reserved_minor, view.booked_minor, view.cap_minor),
            (600, 0, 300, Some(1500))
        );
    }

    #[test]
    fn payer_velocity_counts_and_amounts_at_their_limits() {
        let b = book(
            r#"
            [partners.gcash.payer]
            hour_count_max = 3
            hour_cny_minor_max = 1000
            day_count_max = 5
            day_cny_minor_max = 1500
            "#,
        );
        // Two payments of 300 in the hour: a third of 400 (one under: 399) reaches 1000.
        for i in 0..2 {
            let _ = b.decide_and_reserve(&Pay::new(format!("a{i}")).cny(300).c(), t0()).unwrap();
        }
        passes(&b, &Pay::new("x").cny(399), t0());
        passes(&b, &Pay::new("x").cny(400), t0());
        let r = fails(&b, &Pay::new("x").cny(401), t0(), Rule::PayerHourAmount);
        assert_eq!(r.over_by, Some(cny(1)));
        assert_eq!(r.reason.code(), "VELOCITY_LIMIT");
        // The third payment is the hour's last; the fourth is one too many.
        let _ = b.decide_and_reserve(&Pay::new("a2").cny(100).c(), t0()).unwrap();
        let r = fails(&b, &Pay::new("x").cny(1), t0(), Rule::PayerHourCount);
        assert_eq!(r.over_by, None);
        assert!(r.message.contains("4 payments, over the limit of 3 payments"), "{}", r.message);
        // Another payer, or the same payer id at another partner, is not counted with it.
        passes(&b, &Pay::new("x").cny(1000).payer("payer-2"), t0());
        passes(&b, &Pay::new("x").cny(1000).partner("kakao"), t0());
        // Two hours on: the hour is free, the day holds 700 in 3 payments.
        let later = at(2 * HOUR_MS);
        passes(&b, &Pay::new("x").cny(800), later);
        fails(&b, &Pay::new("x").cny(801), later, Rule::PayerDayAmount);
        let _ = b.decide_and_reserve(&Pay::new("a3").cny(1).c(), later).unwrap();
        let _ = b.decide_and_reserve(&Pay::new("a4").cny(1).c(), later).unwrap();
        fails(&b, &Pay::new("x").cny(1), later, Rule::PayerDayCount);
    }

    #[test]
    fn merchant_and_mcc_day_limits_span_partners() {
        let b = book(
            r#"
            merchant_day_cny_minor_max = 1000
            [merchants.acq-a.big]
            day_cny_minor_max = 5000
            [merchants.acq-a.exempt]
            [mccs."7995"]
            day_cny_minor_max = 700
            "#,
        );
        let m = |id: &str, merchant: &str, cny: i64| {
            Pay::new(id).merchant("acq-a", Some(merchant)).mcc(None).cny(cny)
        };
        let _ = b.decide_and_reserve(&m("a", "m-1", 600).c(), t0()).unwrap();
        let _ = b.decide_and_reserve(&m("b", "m-1", 300).partner("kakao").c(), t0()).unwrap();
        passes(&b, &m("x", "m-1", 99), t0());
        passes(&b, &m("x", "m-1", 100), t0());
        let r = fails(&b, &m("x", "m-1", 101), t0(), Rule::MerchantDayAmount);
        assert_eq!(r.over_by, Some(cny(1)));
        assert_eq!(r.reason.code(), "MERCHANT_LIMIT");
        // What the partner hears does not show other partners' payments; the record does.
        assert_eq!(r.message, "the merchant's CNY total in the last 24 hours is over its limit");
        assert!(r.detail.contains("CNY 10.01"), "{}", r.detail);
        // The same merchant id at another acquirer is another merchant.
        passes(&b, &m("x", "m-1", 1000).merchant("acq-b", Some("m-1")), t0());
        // A named merchant's own limit replaces the default; one named without a limit is exempt.
        passes(&b, &m("x", "big", 5000), t0());
        fails(&b, &m("x", "big", 5001), t0(), Rule::MerchantDayAmount);
        passes(&b, &m("x", "exempt", 900_000), t0());
        // No merchant id: no merchant rule applies.
        passes(&b, &m("x", "m-1", 5000).merchant("acq-a", None), t0());

        let g = |id: &str, merchant: &str, cny: i64| m(id, merchant, cny).mcc(Some("7995"));
        let _ = b.decide_and_reserve(&g("c", "casino-1", 500).c(), t0()).unwrap();
        let _ = b.decide_and_reserve(&g("d", "casino-2", 100).partner("kakao").c(), t0()).unwrap();
        passes(&b, &g("x", "casino-3", 99), t0());
        passes(&b, &g("x", "casino-3", 100), t0());
        let r = fails(&b, &g("x", "casino-3", 101), t0(), Rule::MccDayAmount);
        assert_eq!((r.reason.code(), r.over_by), ("MCC_LIMIT", Some(cny(1))));
        passes(&b, &g("x", "casino-3", 101).mcc(Some("5812")), t0());
    }

    #[test]
    fn blocklists_refuse_outright() {
        let lists = Blocklists {
            merchants: Blocklists::parse_list(ListKind::Merchants, "m.txt", "# x\nbad-1 # why\n\n")
                .unwrap(),
            mccs: Blocklists::parse_list(ListKind::Mccs, "mcc.txt", "7995\n7801\n7995").unwrap(),
            acquirers: Blocklists::parse_list(ListKind::Acquirers, "a.txt", "acq-x").unwrap(),
        };
        assert_eq!(lists.mccs.len(), 2);
        let b = RiskBook::new(Policy::new(RiskRules::default(), lists).unwrap());
        let r =
            fails(&b, &Pay::new("x").merchant("acq-x", Some("m-1")), t0(), Rule::AcquirerBlocked);
        assert_eq!(r.reason.code(), "ACQUIRER_BLOCKED");
        let r =
            fails(&b, &Pay::new("x").merchant("acq-b", Some("bad-1")), t0(), Rule::MerchantBlocked);
        assert_eq!(r.reason.code(), "MERCHANT_BLOCKED");
        let r = fails(&b, &Pay::new("x").mcc(Some("7801")), t0(), Rule::MccBlocked);
        assert_eq!(r.reason.code(), "MCC_BLOCKED");
        passes(&b, &Pay::new("x").merchant("acq-b", Some("bad-2")).mcc(Some("5812")), t0());
        passes(&b, &Pay::new("x").mcc(None), t0());

        let e =
            Blocklists::parse_list(ListKind::Mccs, "mcc.txt", "7995\n79 95\nabcd\n").unwrap_err();
        let at: Vec<&str> = e.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(at, ["mcc.txt:2", "mcc.txt:3"]);
        assert!(Blocklists::parse_list(ListKind::Acquirers, "a", "ACQ").is_err());
        assert!(Blocklists::parse_list(ListKind::Merchants, "m", "a b").is_err());
    }

    #[test]
    fn windows_roll_to_the_millisecond() {
        let b = book("[partners.gcash.payer]\nhour_count_max = 1\nday_count_max = 2");
        let _ = b.decide_and_reserve(&Pay::new("first").c(), t0()).unwrap();
        // Exactly an hour later the first payment still counts; a millisecond later it does not.
        fails(&b, &Pay::new("x"), at(HOUR_MS - 1), Rule::PayerHourCount);
        fails(&b, &Pay::new("x"), at(HOUR_MS), Rule::PayerHourCount);
        passes(&b, &Pay::new("x"), at(HOUR_MS + 1));
        let _ = b.decide_and_reserve(&Pay::new("second").c(), at(HOUR_MS + 1)).unwrap();
        // The day holds both until the first is 24 h + 1 ms old.
        fails(&b, &Pay::new("x"), at(DAY_MS), Rule::PayerDayCount);
        passes(&b, &Pay::new("x"), at(DAY_MS + 1));
    }

    #[test]
    fn failed_payments_give_back_what_they_held_and_settling_is_idempotent() {
        let b = book(
            r#"
            [partners.gcash.payer]
            day_count_max = 1
            [partners.gcash.currencies.PHP]
            credit_line_minor = 1000
            "#,
        );
        let p = Pay::new("p").wallet(1000);
        let r = b.decide_and_reserve(&p.c(), t0()).unwrap();
        fails(&b, &Pay::new("x").payer("payer-2").wallet(1), t0(), Rule::Exposure);
        fails(&b, &Pay::new("x").wallet(1).payer("payer-1"), t0(), Rule::Exposure);
        // Reserving the same id twice is the caller's bug.
        assert!(matches!(b.decide_and_reserve(&p.c(), t0()), Err(DecideError::Invalid(_))));
        // Still in flight: nothing changes.
        assert_eq!(b.settle(&p.facts(t0(), Stage::InFlight)), Settled::Unchanged);
        // Not written (the store refused it): everything comes back.
        assert!(b.release(r));
        passes(&b, &Pay::new("x").wallet(1000), t0());

        let r = b.decide_and_reserve(&p.c(), at(5)).unwrap();
        assert_eq!(r.payment_id(), "p");
        assert_eq!(b.settle(&p.facts(at(5), Stage::Booked)), Settled::Booked);
        assert_eq!(b.settle(&p.facts(at(5), Stage::Booked)), Settled::Unchanged);
        fails(&b, &Pay::new("x").payer("payer-2").wallet(1), at(10), Rule::Exposure);
        fails(&b, &Pay::new("x").payer("payer-1").wallet(1), at(10), Rule::Exposure);
        // Cancelled after it succeeded: its window place and booked exposure are given back.
        assert_eq!(b.settle(&p.facts(at(5), Stage::Void)), Settled::Released);
        assert_eq!(b.settle(&p.facts(at(5), Stage::Void)), Settled::Unchanged);
        passes(&b, &Pay::new("x").wallet(1000), at(10));
        assert!(!b.release(r));
        // A payment this book never held changes nothing.
        let other = Pay::new("elsewhere");
        assert_eq!(b.settle(&other.facts(t0(), Stage::Booked)), Settled::Unchanged);
        assert_eq!(b.settle(&other.facts(t0(), Stage::Void)), Settled::Unchanged);
        // Bad input is not a refusal.
        let mut bad = Pay::new("bad");
        bad.currency = Currency::CNY;
        assert!(matches!(b.check(&bad.c(), t0()), Err(DecideError::Invalid(_))));
        assert!(matches!(b.check(&Pay::new("").c(), t0()), Err(DecideError::Invalid(_))));
    }

    #[test]
    fn reload_takes_bookings_before_the_mark_from_the_ledger() {
        let b = book("[partners.gcash.currencies.PHP]\ncredit_line_minor = 1000");
        let (p1, p2) = (Pay::new("p1").wallet(300), Pay::new("p2").wallet(200));
        let _ = b.decide_and_reserve(&p1.c(), t0()).unwrap();
        let _ = b.decide_and_reserve(&p2.c(), t0()).unwrap();
        b.settle(&p1.facts(t0(), Stage::Booked));
        let mark = b.mark();
        // Booked after the mark: the ledger read may not hold it yet.
        b.settle(&p2.facts(t0(), Stage::Booked));
        // The ledger read after the mark holds p1 only (and an earlier 100).
        b.reload_owed([("gcash", Amount::from_minor(php(), 400).unwrap())], mark);
        let v = &b.exposures()[0];
        assert_eq!((v.owed_minor, v.reserved_minor, v.booked_minor), (400, 0, 200));
        passes(&b, &Pay::new("x").wallet(400), t0());
        fails(&b, &Pay::new("x").wallet(401), t0(), Rule::Exposure);
        // The next read holds both; a settlement received took 500 off.
        b.reload_owed([("gcash", Amount::from_minor(php(), 100).unwrap())], b.mark());
        assert_eq!(b.stats().open_payments, 0);
        passes(&b, &Pay::new("x").wallet(900), t0());
        fails(&b, &Pay::new("x").wallet(901), t0(), Rule::Exposure);
        // A partner missing from the read owes nothing.
        b.reload_owed(Vec::<(String, Amount)>::new(), b.mark());
        passes(&b, &Pay::new("x").wallet(1000), t0());
    }

    #[test]
    fn exactly_forty_of_a_hundred_concurrent_payments_fit_the_exposure() {
        let b =
            book("[partners.gcash.currencies.PHP]\nprefund_minor = 1000\ncredit_line_minor = 3000");
        let pays: Vec<Pay> = (0..100)
            .map(|i| Pay::new(format!("p{i}")).payer(&format!("payer-{i}")).wallet(100))
            .collect();
        let start = std::sync::Barrier::new(pays.len());
        let results: Vec<Result<Reservation, DecideError>> = std::thread::scope(|s| {
            let (b, start) = (&b, &start);
            let threads: Vec<_> = pays
                .iter()
                .map(|p| {
                    s.spawn(move || {
                        start.wait();
                        b.decide_and_reserve(&p.c(), t0())
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 40);
        for r in results.into_iter().filter_map(Result::err) {
            let r = refused::<()>(Err(r));
            assert_eq!(r.rule, Rule::Exposure);
            assert_eq!(r.over_by, Some(Amount::from_minor(php(), 100).unwrap()));
        }
        assert_eq!(b.exposures()[0].reserved_minor, 4000);
    }

    #[test]
    fn exactly_forty_concurrent_payments_of_two_partners_fit_a_merchant_limit() {
        let b = book("[merchants.acq-a.m-1]\nday_cny_minor_max = 4000");
        let pays: Vec<Pay> = (0..100)
            .map(|i| {
                let partner = if i % 2 == 0 { "gcash" } else { "kakao" };
                Pay::new(format!("p{i}")).partner(partner).payer(&format!("payer-{i}")).cny(100)
            })
            .collect();
        let start = std::sync::Barrier::new(pays.len());
        let ok = std::thread::scope(|s| {
            let (b, start) = (&b, &start);
            let threads: Vec<_> = pays
                .iter()
                .map(|p| {
                    s.spawn(move || {
                        start.wait();
                        b.decide_and_reserve(&p.c(), t0()).is_ok()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count()
        });
        assert_eq!(ok, 40);
    }

    /// A day and a half of payments on a live book; then the same payments, as the store would
    /// hold them, rebuilt into a new book: both decide alike.
    #[test]
    fn a_rebuilt_book_decides_as_the_live_one() {
        let text = r#"
            near_limit_bps = 2000
            merchant_day_cny_minor_max = 60000
            [partners.gcash.payer]
            hour_count_max = 2
            hour_cny_minor_max = 6000
            day_count_max = 30
            day_cny_minor_max = 80000
            [partners.gcash.currencies.PHP]
            credit_line_minor = 2500000
            [partners.kakao.currencies.PHP]
            prefund_minor = 400000
            [mccs."5812"]
            day_cny_minor_max = 100000
        "#;
        let live = book(text);
        let mut made: Vec<(Pay, DateTime<Utc>, Stage)> = Vec::new();
        let mut owed: HashMap<&str, i64> = HashMap::new();
        let mut refusals = Vec::new();
        for i in 0..320i64 {
            let now = at(i * 7 * 60_000 + i % 13);
            let p = Pay::new(format!("pay{i}"))
                .partner(if i % 3 == 0 { "kakao" } else { "gcash" })
                .payer(&format!("payer-{}", i % 3))
                .merchant("acq-a", Some(&format!("m-{}", i % 4)))
                .mcc(Some(if i % 2 == 0 { "5812" } else { "5411" }))
                .cny(1000 + (i * 797) % 4000)
                .wallet(8000 + (i * 313) % 9000);
            if let Err(e) = live.decide_and_reserve(&p.c(), now) {
                refusals.push(refused::<()>(Err(e)).rule);
                continue;
            }
            let stage = match i % 5 {
                0 => Stage::Void,
                1 => Stage::InFlight,
                _ => Stage::Booked,
            };
            live.settle(&p.facts(now, stage));
            if stage == Stage::Booked {
                *owed.entry(if i % 3 == 0 { "kakao" } else { "gcash" }).or_default() += p.wallet;
            }
            made.push((p, now, stage));
        }
        assert!(made.len() > 100, "{} payments made; refused: {refusals:?}", made.len());
        // Every kind of limit refused some of them.
        for rule in
            [Rule::Exposure, Rule::PayerHourCount, Rule::MerchantDayAmount, Rule::MccDayAmount]
        {
            assert!(refusals.contains(&rule), "{rule:?} never refused: {refusals:?}");
        }
        let end = at(320 * 7 * 60_000);
        let rebuilt = book(text);
        let owed: Vec<(&str, Amount)> =
            owed.into_iter().map(|(k, v)| (k, Amount::from_minor(php(), v).unwrap())).collect();
        rebuilt.rebuild(made.iter().map(|(p, t, s)| p.facts(*t, *s)), owed.clone(), end).unwrap();

        let total = |b: &RiskBook| -> Vec<(String, i64)> {
            b.exposures()
                .into_iter()
                .map(|v| (v.partner, v.owed_minor + v.reserved_minor + v.booked_minor))
                .collect()
        };
        assert_eq!(total(&live), total(&rebuilt));
        live.prune(end);
        let (ls, rs) = (live.stats(), rebuilt.stats());
        assert_eq!((ls.payers, ls.merchants, ls.mccs), (rs.payers, rs.merchants, rs.mccs));

        let mut decisions = 0;
        // Let through, let through with a flag, refused.
        let mut outcomes = [0; 3];
        for offset in [0, 1, 20 * 60_000, HOUR_MS, 3 * HOUR_MS, 20 * HOUR_MS] {
            let now = end + Duration::milliseconds(offset);
            for partner in ["gcash", "kakao"] {
                for payer in 0..5 {
                    for merchant in 0..4 {
                        for cny in [1, 2500, 9000, 30000] {
                            let p = Pay::new("probe")
                                .partner(partner)
                                .payer(&format!("payer-{payer}"))
                                .merchant("acq-a", Some(&format!("m-{merchant}")))
                                .cny(cny)
                                .wallet(cny * 40);
                            let d = live.check(&p.c(), now);
                            assert_eq!(d, rebuilt.check(&p.c(), now));
                            match d {
                                Ok(flags) if flags.is_empty() => outcomes[0] += 1,
                                Ok(_) => outcomes[1] += 1,
                                Err(_) => outcomes[2] += 1,
                            }
                            decisions += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(decisions, 6 * 2 * 5 * 4 * 4);
        assert!(outcomes.iter().all(|n| *n > 20), "{outcomes:?}");
        // And a payment made on both books after the rebuild is refused or let through alike.
        let p = Pay::new("after").payer("payer-1").cny(3000).wallet(9000);
        let now = end + Duration::milliseconds(5);
        assert_eq!(
            live.decide_and_reserve(&p.c(), now).map(|r| r.flags),
            rebuilt.decide_and_reserve(&p.c(), now).map(|r| r.flags)
        );
    }

    #[test]
    fn a_rebuild_keeps_the_last_minutes_unwritten_reservations_only() {
        let b = book("[partners.gcash.currencies.PHP]\ncredit_line_minor = 1000");
        let old = Pay::new("old").wallet(300);
        let _ = b.decide_and_reserve(&old.c(), t0()).unwrap();
        let young = Pay::new("young").wallet(200).payer("payer-2");
        let _ = b.decide_and_reserve(&young.c(), at(2 * 60_000)).unwrap();
        let written = Pay::new("written").wallet(100).payer("payer-3");
        let _ = b.decide_and_reserve(&written.c(), at(2 * 60_000)).unwrap();
        // The store holds `written` (as failed); `old` was never written; `young` may still be.
        let now = at(2 * 60_000 + 30_000);
        b.rebuild(
            [written.facts(at(2 * 60_000), Stage::Void)],
            [("gcash", Amount::zero(php()))],
            now,
        )
        .unwrap();
        assert_eq!(b.exposures()[0].reserved_minor, 200);
        assert_eq!(b.stats().open_payments, 1);
        assert_eq!(b.stats().payers, 1);
        // The kept reservation settles as any other.
        assert_eq!(b.settle(&young.facts(at(2 * 60_000), Stage::Void)), Settled::Released);
        passes(&b, &Pay::new("x").wallet(1000), now);
    }

    #[test]
    fn overflow_refuses_and_never_wraps() {
        let max = Amount::MAX_MINOR;
        let fits = (i64::MAX / max) as usize; // 9223 payments of the largest amount fit in an i64
                                              // A payer's day total.
        let pays: Vec<Pay> = (0..fits)
            .map(|i| Pay::new(format!("p{i}")).cny(max).mcc(None).merchant("acq-a", None))
            .collect();
        let b = RiskBook::new(Policy::default());
        b.rebuild(
            pays.iter().map(|p| p.facts(t0(), Stage::Booked)),
            [("gcash", Amount::zero(php()))],
            t0(),
        )
        .unwrap();
        let next = Pay::new("next").cny(max).mcc(None).merchant("acq-a", None);
        let r = refused(b.decide_and_reserve(&next.c(), t0()));
        assert_eq!(
            (r.rule, r.reason.code(), r.over_by),
            (Rule::PayerDayAmount, "VELOCITY_LIMIT", None)
        );
        // One more in the store is a broken invariant, not a wrapped total.
        let mut more = pays.clone();
        more.push(next.clone());
        let e = b.rebuild(
            more.iter().map(|p| p.facts(t0(), Stage::Booked)),
            [("gcash", Amount::zero(php()))],
            t0(),
        );
        assert_eq!(e.unwrap_err(), RebuildError::Overflow { payment_id: "next".into() });

        // Exposure: payments in flight.
        let b = RiskBook::new(Policy::default());
        let pays: Vec<Pay> = (0..fits)
            .map(|i| Pay::new(format!("p{i}")).payer(&format!("payer-{i}")).cny(1).wallet(max))
            .collect();
        for p in &pays {
            let _ = b.decide_and_reserve(&p.c(), t0()).unwrap();
        }
        let r = refused(
            b.decide_and_reserve(&Pay::new("next").payer("new").cny(1).wallet(max).c(), t0()),
        );
        assert_eq!((r.rule, r.reason.code(), r.over_by), (Rule::Exposure, "EXPOSURE_LIMIT", None));
        // What owes less fits again.
        let _ = b
            .decide_and_reserve(&Pay::new("small").payer("new").cny(1).wallet(1).c(), t0())
            .unwrap();
    }

    #[test]
    fn near_limit_payments_are_flagged_not_refused() {
        let b = book(
            r#"
            near_limit_bps = 1000
            [partners.gcash]
            payment_cny_minor_max = 10000
            "#,
        );
        // 10 % of 10000 is 1000: 9000 and up leave at most 10 % unused.
        assert!(b.check(&Pay::new("x").cny(8999).c(), t0()).unwrap().is_empty());
        let flags = b.check(&Pay::new("x").cny(9000).c(), t0()).unwrap();
        assert_eq!(flags.len(), 1);
        assert_eq!((flags[0].kind.code(), flags[0].rule), ("NEAR_LIMIT", Rule::PaymentCnyMax));
        let r = b.decide_and_reserve(&Pay::new("y").cny(10000).c(), t0()).unwrap();
        assert_eq!(r.flags().len(), 1);
    }

    #[test]
    fn memory_holds_the_last_day_only() {
        let b = RiskBook::new(Policy::default());
        for i in 0..1000i64 {
            let p = Pay::new(format!("p{i}"))
                .payer(&format!("payer-{i}"))
                .merchant("acq-a", Some(&format!("m-{}", i % 100)))
                .mcc(Some(&format!("{:04}", i % 10)));
            let _ = b.decide_and_reserve(&p.c(), at(i * 60_000)).unwrap();
            b.settle(&p.facts(at(i * 60_000), Stage::Booked));
        }
        b.reload_owed([("gcash", Amount::zero(php()))], b.mark());
        let s = b.stats();
        assert_eq!((s.payers, s.merchants, s.mccs, s.open_payments), (1000, 100, 10, 0));
        // 1000 minutes is under a day; a day after the last payment, nothing is left.
        b.prune(at(999 * 60_000 + DAY_MS + 1));
        assert_eq!(b.stats(), BookStats::default());
        // And decisions keep working on the freed slots.
        let p = Pay::new("again");
        let _ = b.decide_and_reserve(&p.c(), at(3 * DAY_MS)).unwrap();
        assert_eq!(b.stats().payers, 1);
    }

    #[test]
    fn stages_of_payment_states() {
        use PaymentState::*;
        assert_eq!(Stage::of(Pending, false), Stage::InFlight);
        assert_eq!(Stage::of(Unknown, false), Stage::InFlight);
        assert_eq!(Stage::of(Reversing, false), Stage::InFlight);
        assert_eq!(Stage::of(Cancelling, false), Stage::InFlight);
        assert_eq!(Stage::of(Cancelling, true), Stage::Booked);
        assert_eq!(Stage::of(Succeeded, true), Stage::Booked);
        assert_eq!(Stage::of(Failed, false), Stage::Void);
        assert_eq!(Stage::of(Cancelled, true), Stage::Void);
    }

    #[test]
    fn payer_ids_stay_out_of_debug_output() {
        let p = Pay::new("x").payer("+63-917-555-0100");
        assert!(!format!("{:?}", p.c()).contains("555"));
    }
}
