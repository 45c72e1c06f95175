//! The records the bridge keeps. Each carries a version `v` so it can evolve. The store keeps them
//! in a compact binary form (see `store::codec`); JSON is their form at the API edge and in the
//! first release's data folders, which the store still reads.
//!
//! Binary records are positional: a field is never skipped when serializing (`Option`s are written
//! as `None`), and a JSON value inside a record is carried as its JSON text ([`json_text`]).

use chrono::{DateTime, Utc};
use qrbridge_fx::{Amount, Currency, Decimal, Quote};
use serde::{Deserialize, Serialize};

/// Record format version written by this build.
pub const RECORD_VERSION: u32 = 1;

/// A JSON value inside a record: itself in JSON (and other human-readable forms), its JSON text in
/// binary forms (which cannot carry a self-describing value).
pub mod json_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            s.serialize_str(&v.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        if d.is_human_readable() {
            Value::deserialize(d)
        } else {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
}

/// A bridge id: a prefix and a time-ordered UUIDv7, so keys sort by creation.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// `merchant` in API answers: fields the code does not carry are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MerchantAnswer {
    pub id: Option<String>,
    pub name: Option<String>,
    pub city: Option<String>,
    pub country: Option<String>,
    pub mcc: Option<String>,
}

/// What the bridge knows of the code a quote pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef {
    pub scheme: String,
    pub code_type: String,
    /// The scanned text as decoded (trimmed).
    pub text: String,
    pub acquirer: String,
    /// The merchant's id as the acquirer knows it.
    pub merchant_id: String,
    pub merchant: MerchantAnswer,
}

/// A stored quote: immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteRecord {
    pub v: u32,
    pub quote_id: String,
    pub partner: String,
    pub code: CodeRef,
    pub quote: Quote,
}

/// Where a payment stands inside the bridge. Partners see `PROCESSING` for `Pending` and
/// `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentState {
    /// Written before the acquirer is called.
    Pending,
    /// The acquirer's answer did not come (timeout, 5xx, reset): resolved by inquiry or reversal.
    Unknown,
    Succeeded,
    Failed,
    /// A cancel was asked; the reversal has not been confirmed yet.
    Cancelling,
    Cancelled,
    /// The outcome stayed unknown past the payment's expiry: the bridge is reversing it, and it
    /// ends `FAILED` / `EXPIRED`.
    Reversing,
}

impl PaymentState {
    /// The partner-facing status.
    pub fn api_status(self) -> &'static str {
        match self {
            PaymentState::Pending
            | PaymentState::Unknown
            | PaymentState::Cancelling
            | PaymentState::Reversing => "PROCESSING",
            PaymentState::Succeeded => "SUCCEEDED",
            PaymentState::Failed => "FAILED",
            PaymentState::Cancelled => "CANCELLED",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, PaymentState::Succeeded | PaymentState::Failed | PaymentState::Cancelled)
    }
}

/// Why a payment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `DECLINED`, `ACQUIRER_UNAVAILABLE` or `EXPIRED`.
    pub code: String,
    pub message: String,
}

/// The rate a payment was made at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateAnswer {
    pub pair: String,
    pub price: Decimal,
}

/// The mid rate a payment's price was built from (partners see it as `reference`), copied from
/// its quote when the payment is made so that the payment answers what its quote answered, with
/// no read of the quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceReference {
    /// The quote's `mid`.
    pub mid: Decimal,
    /// The quote's `mid_source`: the rate source, or the sources of a cross's legs joined with `+`.
    pub source: String,
    /// The quote's `mid_as_of`.
    #[serde(with = "qrbridge_fx::time")]
    pub as_of: DateTime<Utc>,
}

impl PriceReference {
    /// The reference of quote `q`.
    pub fn of(q: &Quote) -> Self {
        PriceReference { mid: q.mid, source: q.mid_source.clone(), as_of: q.mid_as_of }
    }
}

/// A payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub v: u32,
    /// Also the acquirer's idempotency key (the instruction id).
    pub payment_id: String,
    pub partner: String,
    pub request_id: String,
    /// SHA-256 of the request's content, to tell a replay from a reuse.
    pub request_hash: String,
    pub quote_id: String,
    /// The partner's payer reference. Kept for settlement; never logged.
    pub payer_id: String,
    pub state: PaymentState,
    pub failure: Option<Failure>,
    pub pay: Amount,
    pub wallet: Amount,
    pub wallet_at_mid: Amount,
    pub spread: Amount,
    pub rate: RateAnswer,
    /// The mid `rate.price` was built from. `None` only for a payment made before payments kept
    /// it (store format 3 and the first release's JSON): partners then see `null`.
    #[serde(default)]
    pub reference: Option<PriceReference>,
    pub merchant: MerchantAnswer,
    pub acquirer: String,
    pub acquirer_ref: Option<String>,
    /// Whether the payment's journal entry is posted (and a cancel must reverse it).
    pub booked: bool,
    pub refunded_cny: Amount,
    pub refunded_wallet: Amount,
    /// Approvals the acquirer reported after the bridge had reversed the instruction; each was
    /// booked and reversed again.
    #[serde(default)]
    pub late_approvals: u32,
    /// For a dynamic (order) code: the order's key (SHA-256 of acquirer, merchant and code
    /// text). An order is paid by at most one payment at a time.
    #[serde(default)]
    pub order: Option<String>,
    /// What the acquirer itself said when it declined or refused (its raw text): for logs and the
    /// admin API only, never for partners.
    #[serde(default)]
    pub acquirer_reason: Option<String>,
    /// A cancel the acquirer would not carry out: the payment stayed as it was.
    #[serde(default)]
    pub cancel_refusal: Option<Failure>,
    /// The acquirer refused to reverse this payment as many times as the policy allows: the
    /// bridge stops reversing and only inquires until the acquirer says how it ended.
    #[serde(default)]
    pub reversal_refused: bool,
    #[serde(with = "qrbridge_fx::time")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "qrbridge_fx::time")]
    pub updated_at: DateTime<Utc>,
    /// Bumped on every change; the store refuses a change made from a stale copy.
    pub rev: u64,
}

/// The merchant a payment of `code` pays: the code's merchant, under the id its acquirer is sent
/// (the template the route matched — a code carrying several networks may show another id
/// first). Risk rules, blocklists and monitoring key the merchant by this id.
fn paid_merchant(code: &CodeRef) -> MerchantAnswer {
    let mut m = code.merchant.clone();
    if !code.merchant_id.is_empty() {
        m.id = Some(code.merchant_id.clone());
    }
    m
}

impl PaymentRecord {
    /// What its refunds are priced from: its quote's figures, copied into it when it was made.
    pub fn pricing(&self) -> qrbridge_fx::Pricing {
        qrbridge_fx::Pricing {
            pay: self.pay,
            wallet: self.wallet,
            price: self.rate.price,
            spread_amount: self.spread,
        }
    }

    /// A new payment of quote `q`, `PENDING`, as a partner's request makes it (`partner` is the
    /// quote's): the one place a payment record is born.
    pub fn pending(
        q: &QuoteRecord,
        request_id: &str,
        request_hash: &str,
        payer_id: &str,
        order: Option<String>,
        now: DateTime<Utc>,
    ) -> PaymentRecord {
        PaymentRecord {
            v: RECORD_VERSION,
            payment_id: new_id("pay"),
            partner: q.partner.clone(),
            request_id: request_id.to_owned(),
            request_hash: request_hash.to_owned(),
            quote_id: q.quote_id.clone(),
            payer_id: payer_id.to_owned(),
            state: PaymentState::Pending,
            failure: None,
            pay: q.quote.pay,
            wallet: q.quote.wallet,
            wallet_at_mid: q.quote.wallet_at_mid,
            spread: q.quote.spread_amount,
            rate: RateAnswer { pair: q.quote.pair.to_string(), price: q.quote.price },
            reference: Some(PriceReference::of(&q.quote)),
            merchant: paid_merchant(&q.code),
            acquirer: q.code.acquirer.clone(),
            acquirer_ref: None,
            booked: false,
            refunded_cny: Amount::zero(Currency::CNY),
            refunded_wallet: Amount::zero(q.quote.wallet.currency()),
            late_approvals: 0,
            order,
            acquirer_reason: None,
            cancel_refusal: None,
            reversal_refused: false,
            created_at: now,
            updated_at: now,
            rev: 0,
        }
    }

    /// How far `rate.price` sits above the reference mid, in basis points, as partners are shown
    /// it (`qrbridge_fx::rounding::markup_bps`; the same figure as the quote's); `None` without a
    /// reference.
    pub fn markup_bps(&self) -> Option<Decimal> {
        let r = self.reference.as_ref()?;
        qrbridge_fx::rounding::markup_bps(r.mid, self.rate.price)
    }

    /// The record's next revision, changed at `now`: what every state change starts from (the
    /// store accepts a change only when its `rev` is one past the stored one).
    pub fn successor(&self, now: DateTime<Utc>) -> PaymentRecord {
        PaymentRecord { rev: self.rev + 1, updated_at: now, ..self.clone() }
    }
}

/// A risk decision kept: a payment the rules refused (nothing else of it is stored), or one they
/// let through with flags. Compliance reads them; the partner sees only `RISK_DECLINED` and the
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskDecisionRecord {
    /// The payment id the payment was given (refused: never used again).
    pub decision_id: String,
    pub at: DateTime<Utc>,
    pub partner: String,
    pub request_id: String,
    pub quote_id: String,
    /// The partner's payer reference (kept for compliance; never logged).
    pub payer_id: String,
    pub acquirer: String,
    pub merchant_id: Option<String>,
    pub mcc: Option<String>,
    pub pay: Amount,
    pub wallet: Amount,
    /// `REFUSED` or `FLAGGED`.
    pub outcome: String,
    /// The refusal's reason code (`EXPOSURE_LIMIT`, …) or the flag's (`NEAR_LIMIT`).
    pub reasons: Vec<String>,
    /// The rules that fired, by key (`payer.day_cny_minor_max`, …).
    pub rules: Vec<String>,
    /// What each rule saw (may describe other partners' totals).
    pub detail: String,
    /// By how much a refused payment would have passed its limit, in the limit's currency.
    pub over_by: Option<Amount>,
}

/// One line of a journal entry: positive debits, negative credits (signed minor units; the
/// API's amount form has no sign, so postings keep their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: String,
    pub currency: Currency,
    pub minor: i64,
}

impl Posting {
    pub fn new(account: String, amount: Amount) -> Self {
        Posting { account, currency: amount.currency(), minor: amount.minor() }
    }

    /// The posting with the opposite sign.
    pub fn negated(&self) -> Self {
        Posting { account: self.account.clone(), currency: self.currency, minor: -self.minor }
    }
}

/// A balanced set of postings for one money movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub v: u32,
    pub payment_id: String,
    /// `payment`, `cancel`, `refund`.
    pub kind: String,
    #[serde(with = "qrbridge_fx::time")]
    pub at: DateTime<Utc>,
    pub postings: Vec<Posting>,
}

impl JournalEntry {
    /// Sum of the postings per currency; every one is zero in a balanced entry.
    pub fn sums(&self) -> std::collections::BTreeMap<Currency, i128> {
        let mut sums = std::collections::BTreeMap::new();
        for p in &self.postings {
            *sums.entry(p.currency).or_insert(0i128) += i128::from(p.minor);
        }
        sums
    }

    pub fn is_balanced(&self) -> bool {
        self.sums().values().all(|s| *s == 0)
    }
}

/// A webhook event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub v: u32,
    pub event_id: String,
    pub partner: String,
    /// `payment.succeeded`, `payment.failed`, `payment.cancelled`, `refund.succeeded`.
    pub kind: String,
    pub payment_id: String,
    #[serde(with = "qrbridge_fx::time")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "json_text")]
    pub data: serde_json::Value,
    /// When an operator replayed it after parking: its maximum age counts from here.
    #[serde(default, with = "qrbridge_fx::time::option")]
    pub replayed_at: Option<DateTime<Utc>>,
}

/// What the resolver still has to do for a payment. Kept in its own tree, written in the same
/// transaction as the payment, so a restart resumes exactly where the last process stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    pub v: u32,
    pub payment_id: String,
    pub task: Task,
    /// When to do it next.
    #[serde(with = "qrbridge_fx::time")]
    pub due: DateTime<Utc>,
    /// Attempts of this task so far (indexes the schedule).
    pub attempt: u32,
    /// Explicit refusals of a reversal so far (bounded by the policy).
    #[serde(default)]
    pub refusals: u32,
    /// What the last attempt got, for the admin API (our words, or the acquirer's for admins).
    #[serde(default)]
    pub last_error: Option<String>,
}

impl WorkItem {
    /// Task `task` for `payment_id`, due at `due`, its `attempt`th try, nothing refused yet.
    pub fn new(payment_id: &str, task: Task, due: DateTime<Utc>, attempt: u32) -> Self {
        WorkItem {
            v: RECORD_VERSION,
            payment_id: payment_id.to_owned(),
            task,
            due,
            attempt,
            refusals: 0,
            last_error: None,
        }
    }
}

/// The resolver's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Task {
    /// Ask the acquirer where the instruction stands (outcome unknown).
    Inquire,
    /// Reverse the instruction (expiry, cancel, or an approval after a reversal).
    Reverse,
    /// After a confirmed reversal, ask once more that nothing was approved behind it.
    Verify,
    /// An operator must look (the acquirer approved behind the bridge's reversal and will not
    /// reverse again, or keeps approving behind reversals): the resolver never runs it; the admin
    /// API lists it with its `last_error`.
    Attention,
}

/// A refund, made by the acquirer and passed on to the partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub v: u32,
    /// The bridge's id.
    pub refund_id: String,
    pub payment_id: String,
    pub partner: String,
    pub acquirer: String,
    /// The acquirer's own id (its idempotency key).
    pub acquirer_refund_id: String,
    /// SHA-256 of the acquirer's request content, to tell a replay from a reuse.
    pub request_hash: String,
    /// CNY, what the merchant gives back.
    pub amount: Amount,
    /// What the partner gets back, at the original quote's price.
    pub wallet_amount: Amount,
    pub reason: String,
    #[serde(with = "qrbridge_fx::time")]
    pub created_at: DateTime<Utc>,
}

/// An event the partner acknowledged (or that had nowhere to go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredEvent {
    pub v: u32,
    pub event: OutboxEvent,
    #[serde(with = "qrbridge_fx::time")]
    pub delivered_at: DateTime<Utc>,
    pub attempts: u32,
    /// No webhook URL is configured for the partner: nothing was sent.
    #[serde(default)]
    pub skipped: bool,
}

impl OutboxEvent {
    /// The event without its body (`data` null): what the delivered log keeps. The body was the
    /// partner's copy; the payment is the record.
    pub fn header(&self) -> OutboxEvent {
        OutboxEvent {
            v: self.v,
            event_id: self.event_id.clone(),
            partner: self.partner.clone(),
            kind: self.kind.clone(),
            payment_id: self.payment_id.clone(),
            created_at: self.created_at,
            data: serde_json::Value::Null,
            replayed_at: self.replayed_at,
        }
    }
}

impl DeliveredEvent {
    /// What the delivered log keeps of it: the event's [`OutboxEvent::header`].
    pub fn kept(&self) -> DeliveredEvent {
        DeliveredEvent {
            v: self.v,
            event: self.event.header(),
            delivered_at: self.delivered_at,
            attempts: self.attempts,
            skipped: self.skipped,
        }
    }
}

/// An event that could not be delivered within the maximum age, waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    pub v: u32,
    pub event: OutboxEvent,
    #[serde(with = "qrbridge_fx::time")]
    pub parked_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: String,
}

/// One admin change in the append-only audit log. `hash` is SHA-256 over the record's other
/// fields (canonical JSON), `prev_hash` the previous record's hash: editing, removing or
/// reordering a record breaks the chain at that record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub v: u32,
    /// 1, 2, 3, … with no gaps.
    pub seq: u64,
    #[serde(with = "qrbridge_fx::time")]
    pub at: DateTime<Utc>,
    /// The admin certificate's identity.
    pub actor: String,
    /// What was done: `spreads.set`, `rates.set`, `settlement.run`, …
    pub action: String,
    /// What it was done to: `spread:partner-demo:USD/PHP`, `rates`, `settlement:2026-11-20`, …
    pub target: String,
    #[serde(with = "json_text")]
    pub before: serde_json::Value,
    #[serde(with = "json_text")]
    pub after: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The `prev_hash` of the first record.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditRecord {
    /// The record `draft` makes after `head` (the chain's start when there is none), hashed.
    pub fn next(draft: &AuditDraft, head: Option<AuditHead>) -> AuditRecord {
        let head = head.unwrap_or_else(|| AuditHead { seq: 0, hash: AUDIT_GENESIS.into() });
        let mut record = AuditRecord {
            v: RECORD_VERSION,
            seq: head.seq + 1,
            at: draft.at,
            actor: draft.actor.clone(),
            action: draft.action.clone(),
            target: draft.target.clone(),
            before: draft.before.clone(),
            after: draft.after.clone(),
            prev_hash: head.hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        record
    }

    /// The chain's head once this record is its last.
    pub fn head(&self) -> AuditHead {
        AuditHead { seq: self.seq, hash: self.hash.clone() }
    }

    /// The hash this record should carry: SHA-256 of its fields other than `hash`, as JSON with
    /// sorted keys.
    pub fn compute_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let body = serde_json::json!({
            "v": self.v, "seq": self.seq, "at": self.at, "actor": self.actor,
            "action": self.action, "target": self.target, "before": self.before,
            "after": self.after, "prev_hash": self.prev_hash,
        });
        hex::encode(Sha256::digest(serde_json::to_vec(&body).expect("JSON of plain data")))
    }
}

/// Where the audit chain stands: the last record's number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// An admin change to record: the audit fields the caller knows.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// Where the chain breaks, if it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainCheck {
    pub ok: bool,
    pub records: u64,
    /// The first record that does not verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Verifies a chain read in key order; `head` is where the store says it ends.
pub fn verify_chain(records: &[AuditRecord], head: Option<&AuditHead>) -> ChainCheck {
    let mut prev = AUDIT_GENESIS.to_owned();
    let broken = |seq: u64, reason: String| ChainCheck {
        ok: false,
        records: records.len() as u64,
        broken_at: Some(seq),
        reason: Some(reason),
    };
    for (i, r) in records.iter().enumerate() {
        let expected = i as u64 + 1;
        if r.seq != expected {
            return broken(expected, format!("record {expected} is missing (found {})", r.seq));
        }
        if r.prev_hash != prev {
            return broken(r.seq, "does not follow the record before it".into());
        }
        if r.compute_hash() != r.hash {
            return broken(r.seq, "content does not match its hash".into());
        }
        prev = r.hash.clone();
    }
    let last = records.last().map_or(0, |r| r.seq);
    match head {
        Some(h) if h.seq != last || (last > 0 && h.hash != prev) => {
            broken(last + 1, format!("the log ends at {last} but the chain head says {}", h.seq))
        }
        None if last > 0 => broken(last, "the chain head is missing".into()),
        _ => ChainCheck { ok: true, records: last, broken_at: None, reason: None },
    }
}
