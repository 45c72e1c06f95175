//! The payment lifecycle: decode, quote, pay, resolve, cancel, refund.
//!
//! A payment is written `PENDING` and flushed **before** the acquirer is called; its id is the
//! acquirer's idempotency key; the outcome is written with its ledger entry and webhook event in
//! one transaction and flushed before the partner hears it. The acquirer call runs in its own
//! task, so a partner hanging up (or a request timeout) never leaves a payment half-done.
//!
//! Idempotency: a request id already used with the same content returns that payment as it now
//! stands — waiting for it if it is still being paid by this process — and never pays again; with
//! other content it is a conflict.
//!
//! Money in doubt: every payment is born with resolver work ([`WorkItem`]) in the same
//! transaction, and keeps some until nothing about it is in doubt any more. [`Engine::step`] does
//! one payment's due task — inquire (on the configured schedule, until the payment's expiry),
//! reverse (after expiry, on cancel, or after an approval that came behind a reversal), verify (one
//! inquiry after a confirmed reversal, so an approval that raced it is found, booked and reversed
//! again). Every step holds the payment's lock, reads the payment afresh, and commits before it
//! returns; a restart finds the work where it was left.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use qrbridge_adapters::acquirer::wire::{
    Instruction, InstructionAnswer, InstructionStatus, LookupRequest,
};
use qrbridge_adapters::acquirer::{AcquirerError, AcquirerRequest, AcquirerResponse};
use qrbridge_adapters::decode::{self, DecodeLimits, Scheme};
use qrbridge_adapters::routing::Router;
use qrbridge_fx::{Amount, Currency, Quote, QuoteError, QuoteRequest, RateBook, SpreadPolicy};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::api::{
    DecodeAnswer, MerchantAnswer, PayRequestBody, PaymentAnswer, QuoteRequestBody, RefundAnswer,
    RefundRequestBody,
};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::ledger;
use crate::model::*;
use crate::store::{Begin, BeginError, Change, Store, StoreError, Work};

/// How the engine reaches an acquirer: the real client ([`qrbridge_adapters::acquirer::AcquirerClient`])
/// or, in schedule tests under paused time, a scripted one.
pub type AcquirerService =
    tower::util::BoxCloneSyncService<AcquirerRequest, AcquirerResponse, AcquirerError>;

/// How payments in doubt are resolved.
#[derive(Debug, Clone)]
pub struct ResolverPolicy {
    /// Delays between inquiries: the first after the payment is made, then after each inquiry;
    /// the last repeats.
    pub schedule: Vec<Duration>,
    /// After this long (from the payment's creation) with the outcome unknown, the payment is
    /// reversed and ends `FAILED` / `EXPIRED`.
    pub expiry: Duration,
}

impl ResolverPolicy {
    /// The delay before attempt `attempt` (0 is the first inquiry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let i = (attempt as usize).min(self.schedule.len().saturating_sub(1));
        self.schedule.get(i).copied().unwrap_or(Duration::seconds(60))
    }
}

impl Default for ResolverPolicy {
    fn default() -> Self {
        ResolverPolicy {
            schedule: [4, 4, 30, 60, 60, 60, 300, 300].map(Duration::seconds).to_vec(),
            expiry: Duration::seconds(900),
        }
    }
}

/// What a partner may do, from configuration.
#[derive(Debug, Clone)]
pub struct PartnerPolicy {
    pub wallet_currencies: Vec<Currency>,
    pub payment_cny_minor_max: i64,
}

/// When cancels stop: `until` local time in `tz`, on the day after the payment.
#[derive(Debug, Clone, Copy)]
pub struct CancelPolicy {
    pub tz: chrono_tz::Tz,
    pub until: NaiveTime,
}

impl CancelPolicy {
    /// The last moment a payment made at `at` can be cancelled.
    pub fn deadline(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let local_day = at.with_timezone(&self.tz).date_naive();
        let next = local_day.succ_opt().unwrap_or(local_day).and_time(self.until);
        self.tz
            .from_local_datetime(&next)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            // A local time that does not exist (a DST gap) — not in Asia/Shanghai; be generous.
            .unwrap_or(at + Duration::days(2))
    }
}

/// Everything the engine is made of.
pub struct EngineParts<S> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub rates: RateBook,
    pub spreads: SpreadPolicy,
    pub router: Router,
    pub acquirers: HashMap<String, AcquirerService>,
    pub partners: HashMap<String, PartnerPolicy>,
    pub quote_ttl: Duration,
    pub decode_limits: DecodeLimits,
    pub cancel: CancelPolicy,
    pub resolver: ResolverPolicy,
    /// Refunds are accepted this many days after the payment.
    pub refund_window_days: u32,
}

/// Payment locks: a payment's state changes one at a time. Striped, so the table never grows.
const LOCK_STRIPES: usize = 256;

/// The engine.
pub struct Engine<S> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    rates: RwLock<RateBook>,
    spreads: RwLock<SpreadPolicy>,
    router: Router,
    acquirers: HashMap<String, AcquirerService>,
    partners: HashMap<String, PartnerPolicy>,
    quote_ttl: Duration,
    decode_limits: DecodeLimits,
    cancel: CancelPolicy,
    resolver: ResolverPolicy,
    refund_window_days: u32,
    /// Payments being paid by this process: replays wait for them to finish.
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Signalled when resolver work is written that is due before the resolver means to wake.
    pub work_written: Notify,
    /// When the resolver means to wake (ms since the epoch, engine clock); `i64::MAX` while it
    /// is scanning or has nothing planned, so that every new item wakes it then.
    resolver_wake_ms: std::sync::atomic::AtomicI64,
    /// Signalled when webhook events are written (the delivery worker wakes).
    pub events_written: Notify,
    /// Counts events leaving the outbox (delivered, skipped, parked): something to wait on.
    pub events_settled: watch::Sender<u64>,
}

/// A code resolved to a merchant and an acquirer.
struct Resolved {
    answer: DecodeAnswer,
    text: String,
    merchant_id: String,
}

fn internal(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    ApiError::Internal
}

/// SHA-256 of a request's content (length-prefixed parts), to tell a replay from a reuse.
fn content_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

fn valid_request_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

impl<S: Store> Engine<S> {
    pub fn new(p: EngineParts<S>) -> Arc<Self> {
        Arc::new(Engine {
            store: p.store,
            clock: p.clock,
            rates: RwLock::new(p.rates),
            spreads: RwLock::new(p.spreads),
            router: p.router,
            acquirers: p.acquirers,
            partners: p.partners,
            quote_ttl: p.quote_ttl,
            decode_limits: p.decode_limits,
            cancel: p.cancel,
            resolver: p.resolver,
            refund_window_days: p.refund_window_days,
            inflight: Mutex::new(HashMap::new()),
            locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            work_written: Notify::new(),
            resolver_wake_ms: std::sync::atomic::AtomicI64::new(i64::MAX),
            events_written: Notify::new(),
            events_settled: watch::channel(0).0,
        })
    }

    /// The resolver's policy.
    pub fn resolver_policy(&self) -> &ResolverPolicy {
        &self.resolver
    }

    /// Resolver work due at `due` was written: wakes the resolver only if it means to sleep past
    /// it (so a busy daemon does not rescan the open work for every payment).
    fn work_due(&self, due: DateTime<Utc>) {
        use std::sync::atomic::Ordering;
        if due.timestamp_millis() < self.resolver_wake_ms.load(Ordering::Acquire) {
            self.work_written.notify_one();
        }
    }

    /// The resolver says when it means to wake next (`None`: it is scanning, or has nothing
    /// planned — then any new work wakes it).
    pub fn resolver_sleeps_until(&self, at: Option<DateTime<Utc>>) {
        let ms = at.map_or(i64::MAX, |t| t.timestamp_millis());
        self.resolver_wake_ms.store(ms, std::sync::atomic::Ordering::Release);
    }

    /// Holds the payment's lock.
    async fn lock_payment(&self, payment_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        payment_id.hash(&mut h);
        self.locks[(h.finish() as usize) % LOCK_STRIPES].lock().await
    }

    /// Whether this process is paying `payment_id` right now (its instruction is on the wire).
    pub fn is_inflight(&self, payment_id: &str) -> bool {
        self.lock_inflight().contains_key(payment_id)
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Replaces the rate book (rate feeds, admin).
    pub fn with_rates<R>(&self, f: impl FnOnce(&mut RateBook) -> R) -> R {
        f(&mut self.rates.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// The spreads in force.
    pub fn spreads(&self) -> SpreadPolicy {
        self.spreads.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `policy` in force for quotes priced from now on; issued quotes keep their price.
    pub fn set_spreads(&self, policy: SpreadPolicy) {
        *self.spreads.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// One call to acquirer `id`.
    async fn call(
        &self,
        id: &str,
        req: AcquirerRequest,
    ) -> Result<Result<AcquirerResponse, AcquirerError>, ApiError> {
        let svc = self.acquirers.get(id).ok_or_else(|| {
            tracing::error!(acquirer = id, "routed to an acquirer with no client");
            ApiError::Internal
        })?;
        Ok(svc.clone().oneshot(req).await)
    }

    /// The acquirer's answer about an instruction, or `None` when it gave none we can use.
    async fn ask(
        &self,
        p: &PaymentRecord,
        req: AcquirerRequest,
    ) -> Result<Option<InstructionAnswer>, ApiError> {
        Ok(match self.call(&p.acquirer, req).await? {
            Ok(AcquirerResponse::Instruction(a)) if a.instruction_id == p.payment_id => Some(a),
            other => {
                tracing::warn!(payment = %p.payment_id, answer = ?other, "no usable acquirer answer");
                None
            }
        })
    }

    async fn resolve(&self, text: &str) -> Result<Resolved, ApiError> {
        let code = decode::decode(text, &self.decode_limits)
            .map_err(|e| ApiError::InvalidCode(e.to_string()))?;
        let routed = self
            .router
            .route(&code)
            .map_err(|e| ApiError::MerchantNotServiceable(e.to_string()))?;
        let mut answer = DecodeAnswer::new(&code, Some(routed.acquirer));
        let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace()).to_owned();
        // The merchant's id within the template the route matched, else the code's own.
        let template_id = routed.template.and_then(|t| {
            code.emvco.as_ref()?.accounts.iter().find(|a| a.tag == t).and_then(|a| {
                a.fields
                    .iter()
                    .find(|f| f.tag != 0)
                    .map(|f| f.value)
                    .or((a.tag <= 25).then_some(a.raw))
            })
        });
        let mut merchant_id = template_id.or(code.merchant.id).map(str::to_owned);
        if code.scheme != Scheme::Emvco {
            // URL codes carry no merchant details: the acquirer's lookup gives them.
            let lookup =
                LookupRequest { scheme: code.scheme.as_str().into(), code: trimmed.clone() };
            match self.call(routed.acquirer, AcquirerRequest::Lookup(lookup)).await? {
                Ok(AcquirerResponse::Lookup(l)) => {
                    answer.merchant = MerchantAnswer {
                        id: Some(l.merchant_id.clone()),
                        name: l.name,
                        city: l.city,
                        country: Some("CN".into()),
                        mcc: l.mcc,
                    };
                    answer.amount = l.amount.filter(|a| a.currency() == Currency::CNY);
                    merchant_id = Some(l.merchant_id);
                }
                Ok(_) | Err(AcquirerError::Rejected { .. }) => {
                    return Err(ApiError::InvalidCode(
                        "the acquirer does not know this code".into(),
                    ))
                }
                Err(e) => {
                    tracing::warn!(acquirer = routed.acquirer, error = %e, "code lookup failed");
                    return Err(ApiError::AcquirerUnavailable(
                        "the merchant's acquirer could not be reached; retry".into(),
                    ));
                }
            }
        }
        let merchant_id = merchant_id.ok_or_else(|| {
            ApiError::MerchantNotServiceable("the code carries no merchant id".into())
        })?;
        Ok(Resolved { answer, text: trimmed, merchant_id })
    }

    /// `POST /v1/codes/decode`.
    pub async fn decode(&self, text: &str) -> Result<DecodeAnswer, ApiError> {
        Ok(self.resolve(text).await?.answer)
    }

    /// `POST /v1/quotes`.
    pub async fn quote(
        &self,
        partner: &str,
        body: QuoteRequestBody,
    ) -> Result<QuoteRecord, ApiError> {
        let policy = self.partners.get(partner).ok_or(ApiError::ClientNotRecognised)?;
        let wallet = Currency::from_code(&body.wallet_currency)
            .map_err(|e| ApiError::CurrencyNotSupported(format!("wallet_currency: {e}")))?;
        if !policy.wallet_currencies.contains(&wallet) {
            return Err(ApiError::CurrencyNotSupported(format!(
                "wallet_currency: {wallet} is not enabled for this partner"
            )));
        }
        let asked = body
            .amount
            .map(|raw| {
                let c = Currency::from_code(&raw.currency)
                    .map_err(|e| ApiError::InvalidAmount(format!("amount.currency: {e}")))?;
                if c != Currency::CNY {
                    return Err(ApiError::InvalidAmount(format!(
                        "amount: must be in CNY, not {c}"
                    )));
                }
                Amount::from_api(c, &raw.value)
                    .map_err(|e| ApiError::InvalidAmount(format!("amount.value: {e}")))
            })
            .transpose()?;
        let resolved = self.resolve(&body.code).await?;
        let pay = match (asked, resolved.answer.amount) {
            (Some(a), Some(c)) if a != c => {
                return Err(ApiError::AmountMismatch(format!(
                    "amount {a} differs from the code's {c}"
                )))
            }
            (Some(a), _) => a,
            (None, Some(c)) => c,
            (None, None) => {
                return Err(ApiError::InvalidAmount(
                    "amount: required, the code carries none".into(),
                ))
            }
        };
        if !pay.is_positive() {
            return Err(ApiError::InvalidAmount("amount: must be more than zero".into()));
        }
        if pay.minor() > policy.payment_cny_minor_max {
            let max = Amount::from_minor(Currency::CNY, policy.payment_cny_minor_max)
                .map_err(|_| ApiError::Internal)?;
            return Err(ApiError::InvalidAmount(format!(
                "amount: over this partner's limit of {max}"
            )));
        }
        let now = self.clock.now();
        let req = QuoteRequest { partner, pay, wallet_currency: wallet, now, ttl: self.quote_ttl };
        let quote = {
            let rates = self.rates.read().unwrap_or_else(|p| p.into_inner());
            let spreads = self.spreads.read().unwrap_or_else(|p| p.into_inner());
            Quote::price(&req, &rates, &spreads)
        }
        .map_err(|e| match e {
            QuoteError::Rate(r) => ApiError::RateUnavailable(r.to_string()),
            QuoteError::SameCurrency => {
                ApiError::CurrencyNotSupported("wallet_currency: CNY is the merchant side".into())
            }
            QuoteError::Amount(a) => ApiError::InvalidAmount(format!("amount: {a}")),
            other => ApiError::InvalidAmount(other.to_string()),
        })?;
        let a = &resolved.answer;
        let record = QuoteRecord {
            v: RECORD_VERSION,
            quote_id: new_id("quo"),
            partner: partner.to_owned(),
            code: CodeRef {
                scheme: a.scheme.as_str().into(),
                code_type: format!("{:?}", a.code_type).to_uppercase(),
                text: resolved.text,
                acquirer: a.acquirer.clone().unwrap_or_default(),
                merchant_id: resolved.merchant_id,
                merchant: a.merchant.clone(),
            },
            quote,
        };
        self.store.put_quote(&record).map_err(internal)?;
        self.store.flush().await.map_err(internal)?;
        Ok(record)
    }

    /// `POST /v1/payments`: the payment and whether this request created it.
    pub async fn pay(
        self: &Arc<Self>,
        partner: &str,
        body: PayRequestBody,
    ) -> Result<(PaymentRecord, bool), ApiError> {
        if !valid_request_id(&body.request_id) {
            return Err(ApiError::InvalidRequest(
                "request_id: 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
            ));
        }
        if body.quote_id.is_empty() || body.quote_id.len() > 64 {
            return Err(ApiError::InvalidRequest("quote_id: 1-64 characters".into()));
        }
        if body.payer.id.is_empty() || body.payer.id.chars().count() > 128 {
            return Err(ApiError::InvalidRequest("payer.id: 1-128 characters".into()));
        }
        let hash = content_hash(&[&body.request_id, &body.quote_id, &body.payer.id]);
        if let Some(p) =
            self.store.payment_by_request(partner, &body.request_id).map_err(internal)?
        {
            return self.replay(p, &hash).await.map(|p| (p, false));
        }
        let q = match self.store.quote(&body.quote_id).map_err(internal)? {
            Some(q) if q.partner == partner => q,
            _ => return Err(ApiError::QuoteNotFound),
        };
        let now = self.clock.now();
        let record = PaymentRecord {
            v: RECORD_VERSION,
            payment_id: new_id("pay"),
            partner: partner.to_owned(),
            request_id: body.request_id.clone(),
            request_hash: hash.clone(),
            quote_id: q.quote_id.clone(),
            payer_id: body.payer.id.clone(),
            state: PaymentState::Pending,
            failure: None,
            pay: q.quote.pay,
            wallet: q.quote.wallet,
            wallet_at_mid: q.quote.wallet_at_mid,
            spread: q.quote.spread_amount,
            rate: RateAnswer { pair: q.quote.pair.to_string(), price: q.quote.price },
            merchant: q.code.merchant.clone(),
            acquirer: q.code.acquirer.clone(),
            acquirer_ref: None,
            booked: false,
            refunded_cny: Amount::zero(Currency::CNY),
            refunded_wallet: Amount::zero(q.quote.wallet.currency()),
            late_approvals: 0,
            created_at: now,
            updated_at: now,
            rev: 0,
        };
        // If this process dies before the outcome is written, the resolver asks the acquirer.
        let work = WorkItem {
            v: RECORD_VERSION,
            payment_id: record.payment_id.clone(),
            task: Task::Inquire,
            due: self.inquiry_due(&record, now, 0),
            attempt: 0,
        };
        // Registered before the write, so a concurrent replay that sees the record can wait.
        let (done_tx, done_rx) = watch::channel(false);
        self.lock_inflight().insert(record.payment_id.clone(), done_rx);
        let begun = self.store.begin_payment(&record, &work, now);
        let begun = match begun {
            Ok(b) => b,
            Err(e) => {
                self.lock_inflight().remove(&record.payment_id);
                return Err(match e {
                    StoreError::Begin(BeginError::RequestConflict) => {
                        ApiError::RepeatReqInconsistent
                    }
                    StoreError::Begin(BeginError::QuoteNotFound) => ApiError::QuoteNotFound,
                    StoreError::Begin(BeginError::QuoteExpired) => ApiError::QuoteExpired,
                    StoreError::Begin(BeginError::QuoteUsed) => ApiError::QuoteAlreadyUsed,
                    other => internal(other),
                });
            }
        };
        if let Begin::Replay(existing) = begun {
            self.lock_inflight().remove(&record.payment_id);
            return self.replay(*existing, &hash).await.map(|p| (p, false));
        }
        tracing::info!(payment = %record.payment_id, partner, quote = %record.quote_id, "payment pending");
        // The acquirer is called only once PENDING is durable.
        if let Err(e) = self.store.flush().await {
            self.lock_inflight().remove(&record.payment_id);
            return Err(internal(e));
        }
        // The resolver learns of the payment, in case its outcome stays unknown.
        self.work_due(work.due);
        let engine = self.clone();
        let task = tokio::spawn(async move {
            let id = record.payment_id.clone();
            let result = engine.instruct(record, &q).await;
            // Done: off the in-flight list, then tell whoever waits.
            engine.lock_inflight().remove(&id);
            let _ = done_tx.send(true);
            result
        });
        let result = task.await.map_err(|e| {
            tracing::error!(error = %e, "payment task failed");
            ApiError::Internal
        })?;
        result.map(|p| (p, true))
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A repeated request: the same content gets the payment as it now stands.
    async fn replay(&self, p: PaymentRecord, hash: &str) -> Result<PaymentRecord, ApiError> {
        if p.request_hash != hash {
            return Err(ApiError::RepeatReqInconsistent);
        }
        self.settled(p).await
    }

    /// `p` once this process has finished paying it (at once when it is not paying it).
    async fn settled(&self, p: PaymentRecord) -> Result<PaymentRecord, ApiError> {
        let waiting = self.lock_inflight().get(&p.payment_id).cloned();
        let Some(mut rx) = waiting else { return Ok(p) };
        let _ = rx.wait_for(|done| *done).await;
        self.store.payment(&p.payment_id).map_err(internal)?.ok_or(ApiError::Internal)
    }

    /// When inquiry `attempt` of `p` is due, counting from `from`: never past the payment's
    /// expiry, so the last inquiry and the reversal happen on time.
    fn inquiry_due(&self, p: &PaymentRecord, from: DateTime<Utc>, attempt: u32) -> DateTime<Utc> {
        (from + self.resolver.delay(attempt)).min(p.created_at + self.resolver.expiry)
    }

    fn work(&self, p: &PaymentRecord, task: Task, due: DateTime<Utc>, attempt: u32) -> Work {
        Work::Set(WorkItem {
            v: RECORD_VERSION,
            payment_id: p.payment_id.clone(),
            task,
            due,
            attempt,
        })
    }

    /// Sends the instruction and records the outcome. The payment is durable as `Pending`.
    async fn instruct(&self, p: PaymentRecord, q: &QuoteRecord) -> Result<PaymentRecord, ApiError> {
        let instruction = Instruction {
            instruction_id: p.payment_id.clone(),
            merchant_id: q.code.merchant_id.clone(),
            scheme: q.code.scheme.clone(),
            code: q.code.text.clone(),
            amount: p.pay,
        };
        let outcome = self.call(&p.acquirer, AcquirerRequest::Send(instruction)).await?;
        let _guard = self.lock_payment(&p.payment_id).await;
        let now = self.clock.now();
        let mut change = Change::of(p.successor(now));
        change.work = Work::Done;
        match outcome {
            Ok(AcquirerResponse::Instruction(a)) if a.status == InstructionStatus::Approved => {
                change.payment.state = PaymentState::Succeeded;
                change.payment.acquirer_ref = a.acquirer_ref;
                change.payment.booked = true;
                change.journal = Some(ledger::payment(&change.payment, now));
            }
            Ok(AcquirerResponse::Instruction(a)) if a.status == InstructionStatus::Declined => {
                change.payment.state = PaymentState::Failed;
                change.payment.failure = Some(Failure {
                    code: "DECLINED".into(),
                    message: a.reason.unwrap_or_else(|| "the acquirer declined the payment".into()),
                });
            }
            Err(AcquirerError::Rejected { status, message }) => {
                change.payment.state = PaymentState::Failed;
                change.payment.failure = Some(Failure {
                    code: "DECLINED".into(),
                    message: format!("the acquirer refused the instruction ({status}): {message}"),
                });
            }
            Err(AcquirerError::NotSent(e)) => {
                tracing::warn!(payment = %p.payment_id, error = %e, "acquirer unavailable, nothing sent");
                change.payment.state = PaymentState::Failed;
                change.payment.failure = Some(Failure {
                    code: "ACQUIRER_UNAVAILABLE".into(),
                    message: "the acquirer could not be reached; nothing was sent".into(),
                });
                change.release_quote = true;
            }
            Ok(other) => {
                tracing::warn!(payment = %p.payment_id, answer = ?other, "unexpected acquirer answer; outcome unknown");
                change.payment.state = PaymentState::Unknown;
                change.work = Work::Keep;
            }
            Err(AcquirerError::Unknown(e)) => {
                tracing::warn!(payment = %p.payment_id, error = %e, "acquirer outcome unknown");
                change.payment.state = PaymentState::Unknown;
                change.work = Work::Keep;
            }
        }
        self.event_for(&mut change, now);
        self.commit(change).await
    }

    /// Adds the webhook event a new final state calls for.
    fn event_for(&self, change: &mut Change, now: DateTime<Utc>) {
        let kind = match change.payment.state {
            PaymentState::Succeeded => "payment.succeeded",
            PaymentState::Failed => "payment.failed",
            PaymentState::Cancelled => "payment.cancelled",
            _ => return,
        };
        let data =
            serde_json::to_value(PaymentAnswer::new(&change.payment)).expect("JSON of plain data");
        change.events.push(self.event(&change.payment, kind, data, now));
    }

    fn event(
        &self,
        p: &PaymentRecord,
        kind: &str,
        data: serde_json::Value,
        now: DateTime<Utc>,
    ) -> OutboxEvent {
        OutboxEvent {
            v: RECORD_VERSION,
            event_id: new_id("evt"),
            partner: p.partner.clone(),
            kind: kind.into(),
            payment_id: p.payment_id.clone(),
            created_at: now,
            data,
            replayed_at: None,
        }
    }

    /// Applies `change` and makes it durable; wakes the workers it gives work to.
    async fn commit(&self, change: Change) -> Result<PaymentRecord, ApiError> {
        self.store.apply(&change).map_err(internal)?;
        self.durable(change).await
    }

    /// Makes an applied change durable, then wakes the workers it gives work to.
    async fn durable(&self, change: Change) -> Result<PaymentRecord, ApiError> {
        self.store.flush().await.map_err(internal)?;
        tracing::info!(payment = %change.payment.payment_id, state = ?change.payment.state, "payment updated");
        if let Work::Set(w) = &change.work {
            self.work_due(w.due);
        }
        if !change.events.is_empty() {
            self.events_written.notify_one();
        }
        Ok(change.payment)
    }

    /// Does `payment_id`'s resolver task if it is due (or, with `only`, if it is that task, due
    /// or not), and any task that follows from it at once. Returns the payment as it then stands.
    pub async fn step(
        &self,
        payment_id: &str,
        only: Option<Task>,
    ) -> Result<Option<PaymentRecord>, ApiError> {
        Ok(self.step_counted(payment_id, only).await?.0)
    }

    /// [`Engine::step`], also saying whether a task was done.
    pub async fn step_counted(
        &self,
        payment_id: &str,
        only: Option<Task>,
    ) -> Result<(Option<PaymentRecord>, bool), ApiError> {
        let _guard = self.lock_payment(payment_id).await;
        let mut only = only;
        let mut acted = false;
        loop {
            let p = self.store.payment(payment_id).map_err(internal)?;
            let Some(p) = p else { return Ok((None, acted)) };
            let Some(item) = self.store.work_item(payment_id).map_err(internal)? else {
                return Ok((Some(p), acted));
            };
            let now = self.clock.now();
            let go = match only {
                Some(task) => task == item.task,
                None => item.due <= now,
            };
            if !go || self.is_inflight(payment_id) {
                return Ok((Some(p), acted));
            }
            acted = true;
            let change = match item.task {
                Task::Inquire => self.inquire(&p, &item).await?,
                Task::Reverse => self.reverse(&p, &item).await?,
                Task::Verify => self.verify(&p, &item).await?,
            };
            // A reversal due at once follows at once: at expiry, and after a late approval.
            let follow = matches!(&change.work, Work::Set(w)
                if w.task == Task::Reverse && item.task != Task::Reverse && w.due <= self.clock.now());
            let p = self.commit(change).await?;
            if !follow {
                return Ok((Some(p), acted));
            }
            only = Some(Task::Reverse);
        }
    }

    /// A change that leaves the payment as it is (its partner-visible `updated_at` too) and
    /// sets its work.
    fn unchanged(p: &PaymentRecord, now: DateTime<Utc>, work: Work) -> Change {
        let mut c = Change::of(p.successor(now));
        c.payment.updated_at = p.updated_at;
        c.work = work;
        c
    }

    /// Asks the acquirer about a payment whose outcome is unknown.
    async fn inquire(&self, p: &PaymentRecord, item: &WorkItem) -> Result<Change, ApiError> {
        let answer = self.ask(p, AcquirerRequest::Inquire(p.payment_id.clone())).await?;
        let now = self.clock.now();
        let mut change = Change::of(p.successor(now));
        change.work = Work::Done;
        match answer.as_ref().map(|a| a.status) {
            Some(InstructionStatus::Approved) => {
                change.payment.state = PaymentState::Succeeded;
                change.payment.acquirer_ref = answer.and_then(|a| a.acquirer_ref);
                change.payment.booked = true;
                change.journal = Some(ledger::payment(&change.payment, now));
            }
            Some(InstructionStatus::Declined) => {
                change.payment.state = PaymentState::Failed;
                change.payment.failure = Some(Failure {
                    code: "DECLINED".into(),
                    message: answer
                        .and_then(|a| a.reason)
                        .unwrap_or_else(|| "the acquirer declined the payment".into()),
                });
            }
            Some(InstructionStatus::Reversed) => {
                change.payment.state = PaymentState::Failed;
                change.payment.failure =
                    Some(expired("the acquirer reports the instruction reversed"));
            }
            Some(InstructionStatus::NotFound | InstructionStatus::Processing) | None => {
                if now >= p.created_at + self.resolver.expiry {
                    tracing::warn!(payment = %p.payment_id, "outcome still unknown at expiry; reversing");
                    change.payment.state = PaymentState::Reversing;
                    change.work = self.work(p, Task::Reverse, now, 0);
                } else {
                    let attempt = item.attempt + 1;
                    let due = self.inquiry_due(p, item.due.max(now), attempt);
                    if p.state == PaymentState::Pending {
                        change.payment.state = PaymentState::Unknown;
                    } else {
                        change = Self::unchanged(p, now, Work::Keep);
                    }
                    change.work = self.work(p, Task::Inquire, due, attempt);
                }
                return Ok(change);
            }
        }
        tracing::info!(payment = %p.payment_id, state = ?change.payment.state, "resolved by inquiry");
        self.event_for(&mut change, now);
        Ok(change)
    }

    /// Reverses the instruction (expiry, cancel, or a late approval).
    async fn reverse(&self, p: &PaymentRecord, item: &WorkItem) -> Result<Change, ApiError> {
        let answer = self.ask(p, AcquirerRequest::Reverse(p.payment_id.clone())).await?;
        let now = self.clock.now();
        let confirmed = matches!(
            answer.as_ref().map(|a| a.status),
            // Nothing to reverse is as good as reversed; what comes after is verified.
            Some(
                InstructionStatus::Reversed
                    | InstructionStatus::NotFound
                    | InstructionStatus::Declined
            )
        );
        if !confirmed {
            let attempt = item.attempt + 1;
            let due = item.due.max(now) + self.resolver.delay(attempt);
            return Ok(Self::unchanged(p, now, self.work(p, Task::Reverse, due, attempt)));
        }
        let mut change = Change::of(p.successor(now));
        match p.state {
            PaymentState::Reversing => {
                change.payment.state = PaymentState::Failed;
                change.payment.failure =
                    Some(expired("the outcome stayed unknown; the bridge reversed the payment"));
            }
            PaymentState::Cancelling => change.payment.state = PaymentState::Cancelled,
            // A late approval on a payment already final: its state stays.
            _ => change.payment.updated_at = p.updated_at,
        }
        if p.booked {
            let kind = if p.state == PaymentState::Cancelling { "cancel" } else { "reversal" };
            change.journal = Some(ledger::reversal(p, kind, now));
            change.payment.booked = false;
        }
        let due = now + self.resolver.delay(0);
        change.work = self.work(p, Task::Verify, due, 0);
        if change.payment.state != p.state {
            tracing::info!(payment = %p.payment_id, state = ?change.payment.state, "reversal confirmed");
            self.event_for(&mut change, now);
        }
        Ok(change)
    }

    /// After a confirmed reversal: was anything approved behind it?
    async fn verify(&self, p: &PaymentRecord, item: &WorkItem) -> Result<Change, ApiError> {
        let answer = self.ask(p, AcquirerRequest::Inquire(p.payment_id.clone())).await?;
        let now = self.clock.now();
        match answer.as_ref().map(|a| a.status) {
            Some(InstructionStatus::Approved) => {
                // An approval that arrived after the reversal: book it, never lose it, and
                // reverse it again.
                tracing::warn!(payment = %p.payment_id, "approved after its reversal; reversing again");
                let mut change = Self::unchanged(p, now, self.work(p, Task::Reverse, now, 0));
                change.payment.late_approvals += 1;
                change.payment.booked = true;
                let mut entry = ledger::payment(&change.payment, now);
                entry.kind = "late_approval".into();
                change.journal = Some(entry);
                Ok(change)
            }
            Some(_) => Ok(Self::unchanged(p, now, Work::Done)),
            None => {
                let attempt = item.attempt + 1;
                let due = item.due.max(now) + self.resolver.delay(attempt);
                Ok(Self::unchanged(p, now, self.work(p, Task::Verify, due, attempt)))
            }
        }
    }

    /// Does every resolver task that is due now; returns how many it did.
    pub async fn run_due_work(&self) -> Result<usize, ApiError> {
        let now = self.clock.now();
        let due: Vec<WorkItem> = self
            .store
            .open_work()
            .map_err(internal)?
            .into_iter()
            .filter(|w| w.due <= now && !self.is_inflight(&w.payment_id))
            .collect();
        let mut done = 0;
        for w in &due {
            done += usize::from(self.step_counted(&w.payment_id, None).await?.1);
        }
        Ok(done)
    }

    /// A partner's own payment, by id.
    pub async fn get(&self, partner: &str, payment_id: &str) -> Result<PaymentRecord, ApiError> {
        match self.store.payment(payment_id).map_err(internal)? {
            Some(p) if p.partner == partner => Ok(p),
            _ => Err(ApiError::PaymentNotFound),
        }
    }

    /// A partner's own payment, by its request id.
    pub async fn get_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<PaymentRecord, ApiError> {
        self.store
            .payment_by_request(partner, request_id)
            .map_err(internal)?
            .ok_or(ApiError::PaymentNotFound)
    }

    /// `POST /v1/payments/{id}/cancel`: reverses the payment in full. Idempotent: a cancelled or
    /// failed payment is returned as it is; one whose reversal is not confirmed yet is tried again.
    pub async fn cancel(&self, partner: &str, payment_id: &str) -> Result<PaymentRecord, ApiError> {
        let p = self.get(partner, payment_id).await?;
        self.settled(p).await?;
        {
            let _guard = self.lock_payment(payment_id).await;
            let p = self.get(partner, payment_id).await?;
            match p.state {
                PaymentState::Failed | PaymentState::Cancelled | PaymentState::Reversing => {
                    return Ok(p)
                }
                PaymentState::Cancelling => {}
                PaymentState::Pending | PaymentState::Unknown | PaymentState::Succeeded => {
                    if p.refunded_cny.is_positive() {
                        return Err(ApiError::CancelNotAllowed);
                    }
                    let now = self.clock.now();
                    if now > self.cancel.deadline(p.created_at) {
                        return Err(ApiError::CancelWindowClosed);
                    }
                    let mut change = Change::of(p.successor(now));
                    change.payment.state = PaymentState::Cancelling;
                    change.work = self.work(&p, Task::Reverse, now, 0);
                    self.commit(change).await?;
                }
            }
        }
        // The reversal; when it is not confirmed the resolver keeps trying, and the payment shows
        // PROCESSING until it is.
        self.step(payment_id, Some(Task::Reverse)).await?.ok_or(ApiError::PaymentNotFound)
    }

    /// `GET /v1/payments/{id}/refunds`: a partner's own payment's refunds.
    pub async fn refunds(
        &self,
        partner: &str,
        payment_id: &str,
    ) -> Result<(PaymentRecord, Vec<RefundRecord>), ApiError> {
        let p = self.get(partner, payment_id).await?;
        let refunds = self.store.refunds_of(payment_id).map_err(internal)?;
        Ok((p, refunds))
    }

    /// `POST /acquirer/v1/refunds`: acquirer `acquirer` refunded (part of) a payment it was
    /// instructed. Returns the refund and whether this request made it.
    pub async fn refund(
        &self,
        acquirer: &str,
        body: RefundRequestBody,
    ) -> Result<(RefundRecord, bool), ApiError> {
        if !valid_request_id(&body.refund_id) {
            return Err(ApiError::InvalidRequest(
                "refund_id: 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
            ));
        }
        if body.instruction_id.is_empty() || body.instruction_id.len() > 64 {
            return Err(ApiError::InvalidRequest("instruction_id: 1-64 characters".into()));
        }
        let reason = body.reason.trim();
        if reason.is_empty() || reason.chars().count() > 256 {
            return Err(ApiError::InvalidRequest("reason: 1-256 characters".into()));
        }
        let c = Currency::from_code(&body.amount.currency)
            .map_err(|e| ApiError::InvalidAmount(format!("amount.currency: {e}")))?;
        if c != Currency::CNY {
            return Err(ApiError::InvalidAmount(format!("amount: must be in CNY, not {c}")));
        }
        let amount = Amount::from_api(c, &body.amount.value)
            .map_err(|e| ApiError::InvalidAmount(format!("amount.value: {e}")))?;
        if !amount.is_positive() {
            return Err(ApiError::InvalidAmount("amount: must be more than zero".into()));
        }
        let hash =
            content_hash(&[&body.refund_id, &body.instruction_id, &body.amount.value, reason]);
        let replay = |r: RefundRecord| {
            if r.request_hash == hash {
                Ok((r, false))
            } else {
                Err(ApiError::RepeatReqInconsistent)
            }
        };
        if let Some(r) =
            self.store.refund_by_acquirer_id(acquirer, &body.refund_id).map_err(internal)?
        {
            return replay(r);
        }
        let _guard = self.lock_payment(&body.instruction_id).await;
        let p = match self.store.payment(&body.instruction_id).map_err(internal)? {
            Some(p) if p.acquirer == acquirer => p,
            _ => return Err(ApiError::PaymentNotFound),
        };
        if p.state != PaymentState::Succeeded || !p.booked {
            return Err(ApiError::PaymentNotRefundable(format!(
                "the payment is {}, not SUCCEEDED",
                p.state.api_status()
            )));
        }
        let now = self.clock.now();
        if now > p.created_at + Duration::days(i64::from(self.refund_window_days)) {
            return Err(ApiError::RefundWindowClosed(self.refund_window_days));
        }
        let q = self.store.quote(&p.quote_id).map_err(internal)?.ok_or_else(|| {
            tracing::error!(payment = %p.payment_id, "the payment's quote is missing");
            ApiError::Internal
        })?;
        let split = q.quote.refund_split(&p.refunded_cny, &amount).map_err(|e| match e {
            QuoteError::RefundExceedsPayment { .. } => ApiError::RefundExceedsPayment(format!(
                "{amount} would bring refunds to more than the {} paid ({} refunded so far)",
                p.pay, p.refunded_cny
            )),
            other => ApiError::InvalidAmount(format!("amount: {other}")),
        })?;
        let record = RefundRecord {
            v: RECORD_VERSION,
            refund_id: new_id("ref"),
            payment_id: p.payment_id.clone(),
            partner: p.partner.clone(),
            acquirer: acquirer.to_owned(),
            acquirer_refund_id: body.refund_id.clone(),
            request_hash: hash.clone(),
            amount,
            wallet_amount: split.wallet,
            reason: reason.to_owned(),
            created_at: now,
        };
        let mut change = Change::of(p.successor(now));
        let total = |a: &Amount, b: &Amount| a.checked_add(b).map_err(|_| ApiError::Internal);
        change.payment.refunded_cny = total(&p.refunded_cny, &amount)?;
        change.payment.refunded_wallet = total(&p.refunded_wallet, &split.wallet)?;
        change.journal = Some(ledger::refund(&p, &record, split.spread, now));
        let data = serde_json::to_value(RefundAnswer::new(&record)).expect("JSON of plain data");
        change.events.push(self.event(&p, "refund.succeeded", data, now));
        change.refund = Some(record.clone());
        match self.store.apply(&change) {
            Ok(()) => {}
            // Taken meanwhile (by a request for another payment, under another lock).
            Err(StoreError::RefundExists(existing)) => return replay(*existing),
            Err(e) => return Err(internal(e)),
        }
        self.durable(change).await?;
        tracing::info!(payment = %p.payment_id, refund = %record.refund_id, "refund recorded");
        Ok((record, true))
    }
}

fn expired(message: &str) -> Failure {
    Failure { code: "EXPIRED".into(), message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_window_ends_0030_shanghai_next_day() {
        let policy = CancelPolicy {
            tz: chrono_tz::Asia::Shanghai,
            until: NaiveTime::from_hms_opt(0, 30, 0).unwrap(),
        };
        // 2026-05-22 23:50 Shanghai = 15:50 UTC.
        let at = Utc.with_ymd_and_hms(2026, 5, 22, 15, 50, 0).unwrap();
        // Deadline 2026-05-23 00:30 Shanghai = 2026-05-22 16:30 UTC.
        assert_eq!(policy.deadline(at), Utc.with_ymd_and_hms(2026, 5, 22, 16, 30, 0).unwrap());
        // 2026-05-22 00:10 Shanghai = 2026-05-21 16:10 UTC → deadline 2026-05-23 00:30 Shanghai.
        let early = Utc.with_ymd_and_hms(2026, 5, 21, 16, 10, 0).unwrap();
        assert_eq!(policy.deadline(early), Utc.with_ymd_and_hms(2026, 5, 22, 16, 30, 0).unwrap());
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id("order-2026.05:22_a"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id(&"a".repeat(65)));
    }
}
