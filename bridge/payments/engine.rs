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
use crate::model::*;
use crate::payments::ledger;
use crate::payments::risk::{Candidate, DecideError, Flag, PaymentFacts, Refusal, RiskBook};
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
    /// Explicit refusals of a reversal before the bridge stops reversing
    /// ([`Engine::reversal_refused`]).
    pub reversal_refusals_max: u32,
    /// Resolver steps under way at once against any one acquirer: one acquirer's outage holds at
    /// most this many, and the others' payments go on being resolved.
    pub acquirer_concurrency_max: usize,
    /// Approvals behind the bridge's reversals of one payment before an operator is asked to
    /// look (an ATTENTION task) instead of reversing again.
    pub late_approvals_max: u32,
    /// How long after its creation a payment's instruction may still be on its way (the
    /// acquirers' longest connect plus answer timeout, and a margin). With several nodes on one
    /// store, a cancel on one node waits this out before it reverses a payment another node may
    /// be sending (this node's own sends it waits for directly).
    pub send_window: Duration,
    /// A payment not sent this long after its creation is not sent at all (it fails as
    /// `ACQUIRER_UNAVAILABLE`): the send window is this and the longest call.
    pub send_by: Duration,
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
            reversal_refusals_max: 5,
            acquirer_concurrency_max: 16,
            late_approvals_max: 3,
            send_window: Duration::seconds(9),
            send_by: Duration::seconds(2),
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
    /// The partner contract's window: until `until` (00:30) Asia/Shanghai on the day after the
    /// payment, whatever zone settlement runs in.
    pub fn contract(until: NaiveTime) -> Self {
        CancelPolicy { tz: chrono_tz::Asia::Shanghai, until }
    }

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

/// How often a change refused as stale (another node changed the payment in between) is made
/// again from the payment as it now stands, before the request gives up with `INTERNAL` (the
/// payment itself stays right: the resolver finishes it).
const STALE_TRIES: u32 = 8;

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
    /// The risk rules and blocklists every payment is checked against before it is written.
    pub risk: crate::payments::risk::Policy,
}

/// Payment locks: a payment's state changes one at a time. Striped, so the table never grows.
const LOCK_STRIPES: usize = 256;

/// The engine.
pub struct Engine<S> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    rates: RwLock<RateBook>,
    spreads: RwLock<SpreadPolicy>,
    /// Who the engine deals with; made again on reload ([`Engine::set_parties`]).
    parties: RwLock<Arc<Parties>>,
    quote_ttl: Duration,
    decode_limits: DecodeLimits,
    cancel: CancelPolicy,
    resolver: ResolverPolicy,
    refund_window_days: u32,
    /// The risk decision and its counters ([`RiskBook`]).
    risk: RiskBook,
    /// Payments being paid by this process: replays wait for them to finish.
    inflight: Arc<Claims>,
    /// Resolver tasks being done by this process, by payment and task: the same task of the same
    /// payment is never asked of the acquirer twice at once.
    stepping: Arc<Claims>,
    /// Payments whose PENDING flush failed here: known never sent, so a repeated request may send
    /// them (the only case a PENDING payment is sent again; after a restart nobody knows, and
    /// the resolver asks instead). Left when the payment moves on.
    unsent: Mutex<std::collections::HashSet<String>>,
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

/// Who the engine deals with: the partners and their policies, the acquirers' clients and the
/// routing table. Made again on reload ([`Engine::set_parties`]); a request works with the
/// parties in force when its step began.
pub struct Parties {
    router: Router,
    acquirers: HashMap<String, AcquirerService>,
    partners: HashMap<String, PartnerPolicy>,
    /// Per acquirer, the resolver steps it may have under way ([`ResolverPolicy`]); kept across
    /// reloads, so steps under way still count.
    lanes: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Acquirers no longer configured: no route leads to them, but payments and refunds they
    /// hold are still asked about, reversed and refunded through their last client.
    retired: Vec<String>,
}

impl Parties {
    /// The acquirers configured now (not the retired ones).
    pub fn acquirers(&self) -> impl Iterator<Item = &str> {
        self.acquirers.keys().map(String::as_str).filter(|a| !self.retired.iter().any(|r| r == a))
    }

    /// The partners configured now.
    pub fn partners(&self) -> impl Iterator<Item = &str> {
        self.partners.keys().map(String::as_str)
    }

    /// The wallet currencies `partner` pays in (none for a partner not configured).
    pub fn wallet_currencies(&self, partner: &str) -> &[Currency] {
        self.partners.get(partner).map_or(&[], |p| &p.wallet_currencies)
    }
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
        let lane = p.resolver.acquirer_concurrency_max.max(1);
        let lanes = p
            .acquirers
            .keys()
            .map(|id| (id.clone(), Arc::new(tokio::sync::Semaphore::new(lane))))
            .collect();
        let parties = Parties {
            router: p.router,
            acquirers: p.acquirers,
            partners: p.partners,
            lanes,
            retired: Vec::new(),
        };
        Arc::new(Engine {
            store: p.store,
            clock: p.clock,
            rates: RwLock::new(p.rates),
            spreads: RwLock::new(p.spreads),
            parties: RwLock::new(Arc::new(parties)),
            quote_ttl: p.quote_ttl,
            decode_limits: p.decode_limits,
            cancel: p.cancel,
            resolver: p.resolver,
            refund_window_days: p.refund_window_days,
            risk: RiskBook::new(p.risk),
            inflight: Arc::default(),
            stepping: Arc::default(),
            unsent: Mutex::default(),
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
        self.inflight.waiter(payment_id).is_some()
    }

    /// The risk book: its policy, counters and exposures.
    pub fn risk(&self) -> &RiskBook {
        &self.risk
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

    /// The parties in force.
    pub fn parties(&self) -> Arc<Parties> {
        self.parties.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts new parties in force for the steps that begin from now on (steps under way finish
    /// with the parties they began with). An acquirer missing from `acquirers` keeps its
    /// client, retired: nothing is routed to it, but what it holds can still be resolved,
    /// reversed and refunded. The resolver's per-acquirer lanes carry over.
    pub fn set_parties(
        &self,
        router: Router,
        mut acquirers: HashMap<String, AcquirerService>,
        partners: HashMap<String, PartnerPolicy>,
    ) {
        let mut slot = self.parties.write().unwrap_or_else(|p| p.into_inner());
        let old = slot.clone();
        let mut retired = Vec::new();
        for (id, client) in &old.acquirers {
            if !acquirers.contains_key(id) {
                acquirers.insert(id.clone(), client.clone());
                retired.push(id.clone());
            }
        }
        retired.sort();
        let lane = self.resolver.acquirer_concurrency_max.max(1);
        let lanes = acquirers
            .keys()
            .map(|id| {
                let l = old.lanes.get(id).cloned();
                (id.clone(), l.unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(lane))))
            })
            .collect();
        *slot = Arc::new(Parties { router, acquirers, partners, lanes, retired });
    }

    /// A quote issued before a reload is paid only if the parties in force now would issue it:
    /// its acquirer still configured (a retired one gets no new instruction), its currency
    /// still the partner's, its amount within the partner's limit. Nothing is stored otherwise.
    fn still_payable(&self, partner: &str, q: &QuoteRecord) -> Result<(), ApiError> {
        let parties = self.parties();
        let policy = parties.partners.get(partner).ok_or(ApiError::ClientNotRecognised)?;
        if parties.retired.contains(&q.code.acquirer)
            || !parties.acquirers.contains_key(&q.code.acquirer)
        {
            return Err(ApiError::MerchantNotServiceable(
                "the merchant's acquirer is no longer served; decode the code again".into(),
            ));
        }
        let wallet = q.quote.wallet.currency();
        if !policy.wallet_currencies.contains(&wallet) {
            return Err(ApiError::CurrencyNotSupported(format!(
                "wallet_currency: {wallet} is no longer enabled for this partner"
            )));
        }
        if q.quote.pay.minor() > policy.payment_cny_minor_max {
            return Err(ApiError::InvalidAmount(
                "amount: over this partner's limit (lowered since the quote)".into(),
            ));
        }
        Ok(())
    }

    /// One call to acquirer `id`.
    async fn call(
        &self,
        id: &str,
        req: AcquirerRequest,
    ) -> Result<Result<AcquirerResponse, AcquirerError>, ApiError> {
        let svc = self.parties().acquirers.get(id).cloned().ok_or_else(|| {
            tracing::error!(acquirer = id, "routed to an acquirer with no client");
            ApiError::Internal
        })?;
        let call = match &req {
            AcquirerRequest::Lookup(_) => "lookup",
            AcquirerRequest::Send(_) => "send",
            AcquirerRequest::Inquire(_) => "inquire",
            AcquirerRequest::Reverse(_) => "reverse",
        };
        let started = tokio::time::Instant::now();
        let answer = svc.oneshot(req).await;
        let outcome = match &answer {
            Ok(_) => "answered",
            Err(AcquirerError::Rejected { .. }) => "rejected",
            Err(AcquirerError::NotSent(_)) => "not_sent",
            Err(AcquirerError::Unknown(_)) => "unknown",
        };
        crate::ops::acquirer_call(id, call, outcome, started.elapsed());
        Ok(answer)
    }

    /// What the acquirer says about `p`'s instruction.
    /// A payment whose acquirer has no client (removed from the configuration) gets no answer,
    /// backs off and says why on the admin API, like any other.
    async fn ask(&self, p: &PaymentRecord, req: AcquirerRequest) -> Asked {
        let Ok(answer) = self.call(&p.acquirer, req).await else {
            return Asked::NoAnswer(format!("no client for acquirer {}", p.acquirer));
        };
        match answer {
            Ok(AcquirerResponse::Instruction(a)) if a.instruction_id == p.payment_id => {
                Asked::Answer(a)
            }
            Ok(other) => {
                tracing::warn!(payment = %p.payment_id, answer = ?other, "no usable acquirer answer");
                Asked::NoAnswer("an answer about another instruction".into())
            }
            Err(e @ AcquirerError::Rejected { .. }) => {
                tracing::warn!(payment = %p.payment_id, error = %e, "acquirer refused the request");
                Asked::Refused(e.to_string())
            }
            Err(e) => {
                tracing::warn!(payment = %p.payment_id, error = %e, "no acquirer answer");
                Asked::NoAnswer(e.to_string())
            }
        }
    }

    async fn resolve(&self, text: &str, parties: &Parties) -> Result<Resolved, ApiError> {
        let code = decode::decode(text, &self.decode_limits)
            .map_err(|e| ApiError::InvalidCode(e.to_string()))?;
        let routed = parties
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
        Ok(self.resolve(text, &self.parties()).await?.answer)
    }

    /// `POST /v1/quotes`.
    pub async fn quote(
        &self,
        partner: &str,
        body: QuoteRequestBody,
    ) -> Result<QuoteRecord, ApiError> {
        let parties = self.parties();
        let policy = parties.partners.get(partner).ok_or(ApiError::ClientNotRecognised)?;
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
        let resolved = self.resolve(&body.code, &parties).await?;
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
        // No flush of its own: a quote lost in a crash is QUOTE_NOT_FOUND when paid (honest,
        // and documented); the PENDING flush of the payment that uses it covers it.
        self.store.put_quote(&record).await.map_err(internal)?;
        Ok(record)
    }

    /// `refusal` of a partner's payment request, unless the request made a payment after all
    /// (another node writing it at this moment): then that payment, as a replay. Answering the
    /// refusal beside it would tell the partner two things. (A copy not yet writing is not
    /// waited for: see [`Store::request_settled`].)
    async fn refused(
        self: &Arc<Self>,
        partner: &str,
        request_id: &str,
        hash: &str,
        refusal: ApiError,
    ) -> Result<(PaymentRecord, bool), ApiError> {
        match self.store.request_settled(partner, request_id).await.map_err(internal)? {
            Some(p) => self.replay(p, hash).await.map(|p| (p, false)),
            None => Err(refusal),
        }
    }

    /// `POST /v1/payments`: the payment and whether this request created it.
    ///
    /// Once PENDING is written, the rest (its flush, the instruction, the outcome) runs in a task
    /// of its own: a partner hanging up, an HTTP/2 reset or the request timeout drops only the
    /// wait for it, never the payment.
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
        if body.quote_id.is_empty() || body.quote_id.chars().count() > 64 {
            return Err(ApiError::InvalidRequest("quote_id: 1-64 characters".into()));
        }
        if body.payer.id.is_empty() || body.payer.id.chars().count() > 128 {
            return Err(ApiError::InvalidRequest("payer.id: 1-128 characters".into()));
        }
        let hash = content_hash(&[&body.request_id, &body.quote_id, &body.payer.id]);
        // One copy of a request at a time in this process: a repeat sent while the first is
        // being decided and written waits for it, then finds its payment (so a repeat is never
        // refused by the hold the first one put on a limit).
        let request_key = format!("request\0{partner}\0{}", body.request_id);
        let request = loop {
            match self.inflight.claim(&request_key) {
                Ok(claim) => break claim,
                Err(mut held) => {
                    let _ = held.wait_for(|done| *done).await;
                }
            }
        };
        if let Some(p) =
            self.store.payment_by_request(partner, &body.request_id).await.map_err(internal)?
        {
            drop(request);
            return self.replay(p, &hash).await.map(|p| (p, false));
        }
        let q = match self.store.quote(&body.quote_id).await.map_err(internal)? {
            Some(q) if q.partner == partner => q,
            // Refused at once: no copy of this request can be paying with a quote that is not
            // there (a quote is stored before it is answered, and one in use is kept), so there
            // is no write to wait for, and an unknown quote id stays a cheap request.
            _ => return Err(ApiError::QuoteNotFound),
        };
        if let Err(refusal) = self.still_payable(partner, &q) {
            return self.refused(partner, &body.request_id, &hash, refusal).await;
        }
        let now = self.clock.now();
        // An order code pays one order: its key is the order (acquirer, merchant, code).
        let order = (q.code.code_type == "DYNAMIC")
            .then(|| content_hash(&[&q.code.acquirer, &q.code.merchant_id, &q.code.text]));
        let record =
            PaymentRecord::pending(&q, &body.request_id, &hash, &body.payer.id, order, now);
        // If this process dies before the outcome is written, the resolver asks the acquirer.
        let work =
            WorkItem::new(&record.payment_id, Task::Inquire, self.inquiry_due(&record, now, 0), 0);
        // Claimed before the write, so a concurrent replay that sees the record can wait.
        let Ok(inflight) = self.inflight.claim(&record.payment_id) else {
            tracing::error!(payment = %record.payment_id, "a new payment id is already in flight");
            return Err(ApiError::Internal);
        };
        // The write and the send run in a task of their own: a request dropped (a hang-up, its
        // timeout) once the write is under way cannot leave a payment written and never sent.
        let this = self.clone();
        let partner = partner.to_owned();
        let task = tokio::spawn(async move {
            this.begin_and_drive(&partner, record, work, q, hash, (inflight, request), now).await
        });
        task.await.map_err(|e| {
            tracing::error!(error = %e, "payment task failed");
            ApiError::Internal
        })?
    }

    /// Writes the new payment `record` (PENDING, with its first resolver `work`), unless the
    /// partner's request or the quote says otherwise, then sends it.
    #[allow(clippy::too_many_arguments)]
    async fn begin_and_drive(
        self: Arc<Self>,
        partner: &str,
        record: PaymentRecord,
        work: WorkItem,
        q: QuoteRecord,
        hash: String,
        (inflight, request): (Claim, Claim),
        now: DateTime<Utc>,
    ) -> Result<(PaymentRecord, bool), ApiError> {
        // The risk decision, and the payment's hold on the limits, before anything is written.
        let reservation = match self.risk.decide_and_reserve(&Candidate::of(&record), now) {
            Ok(r) => r,
            Err(DecideError::Refused(refusal)) => {
                drop(inflight);
                drop(request);
                // The same request, made at the same time (here or on another node), may have
                // made the payment that took the limit: that payment is the answer.
                if let Some(p) = self
                    .store
                    .request_settled(partner, &record.request_id)
                    .await
                    .map_err(internal)?
                {
                    return self.replay(p, &hash).await.map(|p| (p, false));
                }
                return Err(self.risk_refused(&record, refusal).await);
            }
            Err(DecideError::Invalid(why)) => {
                tracing::error!(payment = %record.payment_id, why, "risk check given what no payment is");
                return Err(ApiError::Internal);
            }
        };
        let begun = self.store.begin_payment(&record, &work, now).await;
        // Written (or refused, or unknown): a repeat of the request finds what there is.
        drop(request);
        match &begun {
            Ok(Begin::Created) => {
                if !reservation.flags().is_empty() {
                    self.risk_flagged(&record, reservation.flags());
                }
            }
            // Whether the write was made is not known: the payment keeps its hold until it ends
            // (or a rebuild from the store says it was never written).
            Err(StoreError::Database(_) | StoreError::Sled(_)) => drop(reservation),
            Ok(Begin::Replay(_)) | Err(_) => {
                self.risk.release(reservation);
            }
        }
        match begun {
            Ok(Begin::Created) => {}
            Ok(Begin::Replay(existing)) => {
                drop(inflight);
                return self.replay(*existing, &hash).await.map(|p| (p, false));
            }
            Err(e @ (StoreError::Database(_) | StoreError::Sled(_))) => {
                // The write may have been made before the error came back (a commit whose answer
                // was lost): read it again. Written: it goes on, sent now. Not written: nothing
                // to do. Unknown: nothing was sent, and the same request repeated here sends it
                // (see `replay`), or the resolver ends it.
                match self.store.payment(&record.payment_id).await {
                    Ok(Some(stored)) if stored.rev == record.rev => {
                        tracing::warn!(payment = %record.payment_id, error = %e, "the write was made after all");
                    }
                    // Not there, or not known: the commit may still land (a backend can finish
                    // it after the connection broke). Nothing was sent: a repeat here sends it,
                    // or the resolver ends it.
                    _ => {
                        self.unsent_set().insert(record.payment_id.clone());
                        self.work_due(self.inquiry_due(&record, now, 0));
                        return Err(internal(e));
                    }
                }
            }
            Err(e) => {
                // A conflict may rest on another request's write: say it once that is durable.
                self.visible(()).await?;
                return Err(match e {
                    StoreError::Begin(BeginError::RequestConflict) => {
                        ApiError::RepeatReqInconsistent
                    }
                    StoreError::Begin(BeginError::QuoteNotFound) => ApiError::QuoteNotFound,
                    StoreError::Begin(BeginError::QuoteExpired) => ApiError::QuoteExpired,
                    StoreError::Begin(BeginError::QuoteUsed) => ApiError::QuoteAlreadyUsed,
                    StoreError::Begin(BeginError::OrderPaid) => ApiError::OrderAlreadyPaid,
                    other => internal(other),
                });
            }
        }
        tracing::info!(payment = %record.payment_id, partner, quote = %record.quote_id, "payment pending");
        self.drive(record, q, inflight).await.map(|p| (p, true))
    }

    /// A payment the risk rules refused: its decision kept, counted, logged (never the payer),
    /// and the partner's answer.
    async fn risk_refused(&self, record: &PaymentRecord, refusal: Refusal) -> ApiError {
        let reason = refusal.reason.code();
        let rule = refusal.rule.as_str();
        crate::ops::risk_decision("refused", reason, rule);
        tracing::info!(payment = %record.payment_id, partner = %record.partner, reason, rule, detail = %refusal.detail, "payment refused by risk rules");
        let d = decision_record(
            record,
            "REFUSED",
            vec![reason.to_owned()],
            vec![rule.to_owned()],
            refusal.detail,
            refusal.over_by,
        );
        if let Err(e) = self.store.put_risk_decision(&d).await {
            tracing::error!(payment = %record.payment_id, error = %e, "risk decision not kept");
        }
        ApiError::RiskDeclined { reason, message: refusal.message }
    }

    /// A payment the rules let through with flags: its decision kept (in a task of its own: the
    /// payment does not wait for it) and counted.
    fn risk_flagged(&self, record: &PaymentRecord, flags: &[Flag]) {
        for f in flags {
            crate::ops::risk_decision("flagged", f.kind.code(), f.rule.as_str());
        }
        let detail = flags.iter().map(|f| f.detail.as_str()).collect::<Vec<_>>().join("; ");
        let d = decision_record(
            record,
            "FLAGGED",
            flags.iter().map(|f| f.kind.code().to_owned()).collect(),
            flags.iter().map(|f| f.rule.as_str().to_owned()).collect(),
            detail,
            None,
        );
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.put_risk_decision(&d).await {
                tracing::error!(payment = %d.decision_id, error = %e, "risk decision not kept");
            }
        });
    }

    /// Runs [`Engine::drive`] in a task of its own and waits for it.
    async fn spawn_drive(
        self: &Arc<Self>,
        p: PaymentRecord,
        q: QuoteRecord,
        inflight: Claim,
    ) -> Result<PaymentRecord, ApiError> {
        let task = tokio::spawn(self.clone().drive(p, q, inflight));
        task.await.map_err(|e| {
            tracing::error!(error = %e, "payment task failed");
            ApiError::Internal
        })?
    }

    /// Makes PENDING durable, then sends the instruction and records the outcome. `_inflight`
    /// is released however this ends (an error, a panic), so nothing waits on it for ever.
    async fn drive(
        self: Arc<Self>,
        p: PaymentRecord,
        q: QuoteRecord,
        _inflight: Claim,
    ) -> Result<PaymentRecord, ApiError> {
        // The acquirer is called only once PENDING is durable. When this flush fails the partner
        // hears INTERNAL, and the same request repeated finishes the payment (see `replay`).
        if let Err(e) = self.store.flush().await {
            self.unsent_set().insert(p.payment_id.clone());
            // The resolver finishes it if the partner does not repeat the request.
            self.work_due(self.inquiry_due(&p, p.created_at, 0));
            return Err(internal(e));
        }
        // On a store other nodes share, sent only soon after its creation (a store slow to take
        // the write can make it late):
        // the send window other nodes wait out before reversing ([`ResolverPolicy::send_window`])
        // counts from the creation, so a late send could land behind their reversal. Nothing
        // was sent: the resolver ends it ACQUIRER_UNAVAILABLE.
        if self.store.shared() && self.clock.now() > p.created_at + self.resolver.send_by {
            tracing::warn!(payment = %p.payment_id, "too late to send; not sent");
            let guard = self.lock_payment(&p.payment_id).await;
            let current = self.store.payment(&p.payment_id).await.map_err(internal)?;
            let Some(current) = current.filter(|c| c.rev == p.rev) else {
                // Another node acted on it meanwhile: as it stands.
                drop(guard);
                let now_p = self.store.payment(&p.payment_id).await.map_err(internal)?;
                return self.visible(now_p.ok_or(ApiError::Internal)?).await;
            };
            let change = self.never_sent(&current, self.clock.now());
            self.store.apply(&change).await.map_err(internal)?;
            drop(guard);
            return self.durable(change).await;
        }
        self.unsent_set().remove(&p.payment_id);
        // The resolver learns of the payment, in case its outcome stays unknown.
        self.work_due(self.inquiry_due(&p, p.created_at, 0));
        self.instruct(p, &q).await
    }

    fn unsent_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.unsent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A repeated request: the same content gets the payment as it now stands. A payment still
    /// PENDING whose PENDING flush failed in this process (so it was never sent) is finished by
    /// this request, under the same payment id, so "retry with the same request_id" is true. One
    /// written by a process that stopped is not sent again (it may have been): the resolver asks.
    async fn replay(
        self: &Arc<Self>,
        p: PaymentRecord,
        hash: &str,
    ) -> Result<PaymentRecord, ApiError> {
        if p.request_hash != hash {
            self.visible(()).await?;
            return Err(ApiError::RepeatReqInconsistent);
        }
        let p = self.settled(p).await?;
        let unsent = self.unsent_set().contains(&p.payment_id);
        if unsent && p.state == PaymentState::Pending {
            // Claimed and read again under the payment's lock, so that the resolver, which fails
            // an unsent payment under the same lock, either sees the claim or has already
            // failed it (then nothing is sent).
            let guard = self.lock_payment(&p.payment_id).await;
            let claimed = self.inflight.claim(&p.payment_id);
            let now_p = self.store.payment(&p.payment_id).await.map_err(internal)?;
            let q = self.store.quote(&p.quote_id).await.map_err(internal)?;
            drop(guard);
            let now = self.clock.now();
            match (claimed, now_p, q) {
                (Ok(inflight), Some(p), Some(q))
                    if p.state == PaymentState::Pending && !q.quote.is_expired(now) =>
                {
                    tracing::info!(payment = %p.payment_id, "repeated request finishes a pending payment");
                    return self.spawn_drive(p, q, inflight).await;
                }
                (claim, now_p, _) => {
                    drop(claim);
                    let p = self.settled(now_p.unwrap_or(p)).await?;
                    return self.visible(p).await;
                }
            }
        }
        self.visible(p).await
    }

    /// `p` once this process has finished paying it (at once when it is not paying it).
    async fn settled(&self, p: PaymentRecord) -> Result<PaymentRecord, ApiError> {
        let waiting = self.inflight.waiter(&p.payment_id);
        let Some(mut rx) = waiting else {
            return self.sent_elsewhere(p).await;
        };
        // Err: the payer's task ended without saying so (a panic); its guard still cleared it.
        let _ = rx.wait_for(|done| *done).await;
        self.store.payment(&p.payment_id).await.map_err(internal)?.ok_or(ApiError::Internal)
    }

    /// `p` as it stands once no other node can still be sending it: a PENDING payment younger
    /// than the send window, on a store other nodes share, may be on its way from one of them,
    /// and a reversal that overtook it would be confirmed before the approval lands. Waits out
    /// the window (at most its length), then reads the payment again.
    async fn sent_elsewhere(&self, p: PaymentRecord) -> Result<PaymentRecord, ApiError> {
        let maybe_on_its_way =
            p.state == PaymentState::Pending || (p.state == PaymentState::Unknown && !p.booked);
        if !self.store.shared() || !maybe_on_its_way {
            return Ok(p);
        }
        let left = (p.created_at + self.resolver.send_window - self.clock.now())
            .to_std()
            .unwrap_or_default()
            .min(self.resolver.send_window.to_std().unwrap_or_default());
        if left.is_zero() {
            return Ok(p);
        }
        tracing::info!(payment = %p.payment_id, wait_ms = left.as_millis() as u64, "waiting out another node's send");
        tokio::time::sleep(left).await;
        self.store.payment(&p.payment_id).await.map_err(internal)?.ok_or(ApiError::Internal)
    }

    /// Applies `change`: true when done; false when another node changed the payment since it
    /// was read (at most [`STALE_TRIES`] times, counted in `tries`), for the caller to read it
    /// again and decide anew; `INTERNAL` for anything else.
    async fn applied_unless_stale(
        &self,
        change: &Change,
        tries: &mut u32,
    ) -> Result<bool, ApiError> {
        match self.store.apply(change).await {
            Ok(()) => Ok(true),
            Err(StoreError::Stale(_)) if *tries < STALE_TRIES => {
                *tries += 1;
                Ok(false)
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// [`Engine::visible`] of a payment that may not be there.
    async fn visible_opt(
        &self,
        p: Option<PaymentRecord>,
    ) -> Result<Option<PaymentRecord>, ApiError> {
        match p {
            Some(p) => Ok(Some(self.visible(p).await?)),
            None => Ok(None),
        }
    }

    /// `p`, once everything read so far is durable: nothing leaves the process (an answer, a
    /// webhook, an acquirer call) that a crash could take back.
    async fn visible<T>(&self, value: T) -> Result<T, ApiError> {
        self.store.flush().await.map_err(internal)?;
        Ok(value)
    }

    /// When inquiry `attempt` of `p` is due, counting from `from`: never past the payment's
    /// expiry, so the last inquiry and the reversal happen on time.
    fn inquiry_due(&self, p: &PaymentRecord, from: DateTime<Utc>, attempt: u32) -> DateTime<Utc> {
        (from + self.resolver.delay(attempt)).min(p.created_at + self.resolver.expiry)
    }

    /// When to verify a reversal: after the first delay, and (several nodes on one store) not
    /// before another node's send of the payment could have landed, so that an approval behind
    /// the reversal is found.
    fn verify_due(&self, p: &PaymentRecord, now: DateTime<Utc>) -> DateTime<Utc> {
        let due = now + self.resolver.delay(0);
        if self.store.shared() {
            due.max(p.created_at + self.resolver.send_window)
        } else {
            due
        }
    }

    fn work(&self, p: &PaymentRecord, task: Task, due: DateTime<Utc>, attempt: u32) -> Work {
        Work::Set(WorkItem::new(&p.payment_id, task, due, attempt))
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
        // The lock keeps this process's own steps out; another node's resolver (several nodes on
        // one database) is kept out by the revision check only, so a change it made in between
        // is read and the outcome applied over it.
        let mut tries = 0;
        loop {
            let guard = self.lock_payment(&p.payment_id).await;
            let current =
                self.store.payment(&p.payment_id).await.map_err(internal)?.ok_or_else(|| {
                    tracing::error!(payment = %p.payment_id, "an instructed payment vanished");
                    ApiError::Internal
                })?;
            // Changed while the instruction was out (another node's resolver): the outcome still
            // applies while nothing is known; otherwise the resolver reconciles what it says.
            if current.rev != p.rev
                && !matches!(current.state, PaymentState::Pending | PaymentState::Unknown)
            {
                let approved = matches!(
                    &outcome,
                    Ok(AcquirerResponse::Instruction(a)) if a.status == InstructionStatus::Approved
                );
                if approved && !current.booked {
                    // Approved behind a reversal (a cancel on another node overtook the send):
                    // never dropped. A reversal still under way (CANCELLING, REVERSING) goes on
                    // and books its own undoing: the approval is booked now, its task kept. A
                    // payment already final gets a verification now, which books the approval
                    // and reverses it again.
                    tracing::warn!(payment = %p.payment_id, state = ?current.state, "approved after the payment moved on");
                    let now = self.clock.now();
                    let reversing =
                        matches!(current.state, PaymentState::Cancelling | PaymentState::Reversing);
                    let change = if reversing {
                        let mut change = Self::unchanged(&current, now, Work::Keep);
                        change.payment.late_approvals += 1;
                        change.payment.booked = true;
                        let mut entry = ledger::payment(&change.payment, now);
                        entry.kind = "late_approval".into();
                        change.journal = Some(entry);
                        change
                    } else {
                        Self::unchanged(&current, now, self.work(&current, Task::Verify, now, 0))
                    };
                    if !self.applied_unless_stale(&change, &mut tries).await? {
                        continue;
                    }
                    drop(guard);
                    self.work_due(now);
                    let _ = self.durable(change).await?;
                    return self.visible(current).await;
                }
                drop(guard);
                tracing::info!(payment = %p.payment_id, "the payment moved on while it was instructed");
                return self.visible(current).await;
            }
            let change = self.instruct_outcome(&current, outcome.clone(), self.clock.now());
            if self.applied_unless_stale(&change, &mut tries).await? {
                drop(guard);
                return self.durable(change).await;
            }
        }
    }

    /// The change an instruction's outcome makes. Only an explicit answer decides: an approval,
    /// a decline, a refusal of the request, or no connection at all (nothing sent); anything else
    /// leaves the outcome unknown, for the resolver.
    fn instruct_outcome(
        &self,
        p: &PaymentRecord,
        outcome: Result<AcquirerResponse, AcquirerError>,
        now: DateTime<Utc>,
    ) -> Change {
        let mut change = Change::of(p.successor(now));
        change.work = Work::Done;
        let ours = |a: &InstructionAnswer| a.instruction_id == p.payment_id;
        match outcome {
            Ok(AcquirerResponse::Instruction(a))
                if ours(&a) && a.status == InstructionStatus::Approved =>
            {
                change.payment.state = PaymentState::Succeeded;
                change.payment.acquirer_ref = a.acquirer_ref;
                change.payment.booked = true;
                change.journal = Some(ledger::payment(&change.payment, now));
            }
            Ok(AcquirerResponse::Instruction(a))
                if ours(&a) && a.status == InstructionStatus::Declined =>
            {
                tracing::info!(payment = %p.payment_id, reason = ?a.reason, "acquirer declined");
                declined(&mut change.payment, a.reason);
            }
            Err(e @ AcquirerError::Rejected { .. }) => {
                tracing::warn!(payment = %p.payment_id, error = %e, "acquirer refused the instruction");
                declined(&mut change.payment, Some(e.to_string()));
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
                tracing::warn!(payment = %p.payment_id, answer = ?other, "no usable acquirer answer; outcome unknown");
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
        change
    }

    /// Adds the webhook event a new final state calls for.
    fn event_for(&self, change: &mut Change, now: DateTime<Utc>) {
        let kind = match change.payment.state {
            PaymentState::Succeeded => "payment.succeeded",
            PaymentState::Failed => "payment.failed",
            PaymentState::Cancelled => "payment.cancelled",
            _ => return,
        };
        self.payment_event(change, kind, now);
    }

    /// Adds a `kind` event carrying the payment as it becomes.
    fn payment_event(&self, change: &mut Change, kind: &str, now: DateTime<Utc>) {
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

    /// Makes an applied change durable, then wakes the workers it gives work to. Called after
    /// the payment's lock is released: a flush is I/O.
    async fn durable(&self, change: Change) -> Result<PaymentRecord, ApiError> {
        // The risk book follows the payment as applied (booked, or its hold given back) before
        // the flush: a ledger read for the book taken after this sees the booking, so it leaves
        // the book's own count at the next read (see `RiskBook::reload_owed`).
        self.risk.settle(&PaymentFacts::of(&change.payment));
        self.store.flush().await.map_err(internal)?;
        tracing::info!(payment = %change.payment.payment_id, state = ?change.payment.state, "payment updated");
        // A final state is announced by its event ([`Engine::event_for`]): counted once, here.
        let p = &change.payment;
        for e in &change.events {
            let state = match e.kind.as_str() {
                "payment.succeeded" => "SUCCEEDED",
                "payment.failed" => "FAILED",
                "payment.cancelled" => "CANCELLED",
                _ => continue,
            };
            let took = (self.clock.now() - p.created_at).to_std().unwrap_or_default();
            crate::ops::payment_final(&p.partner, state, took);
        }
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
    ///
    /// No lock is held while the acquirer is asked: the payment and its task are read, made
    /// durable, the acquirer asked; then, under the lock, read again — if either changed
    /// meanwhile (a cancel, a refund, another step) the answer is dropped and the task stays for
    /// the next round (acquirer calls are idempotent by instruction id).
    pub async fn step_counted(
        &self,
        payment_id: &str,
        only: Option<Task>,
    ) -> Result<(Option<PaymentRecord>, bool), ApiError> {
        let mut only = only;
        let mut acted = false;
        loop {
            let p = self.store.payment(payment_id).await.map_err(internal)?;
            let Some(p) = p else { return Ok((None, acted)) };
            let Some(item) = self.store.work_item(payment_id).await.map_err(internal)? else {
                return Ok((Some(self.visible(p).await?), acted));
            };
            let go = match only {
                Some(task) => task == item.task,
                None => item.due <= self.clock.now(),
            };
            if !go || item.task == Task::Attention || self.is_inflight(payment_id) {
                return Ok((Some(self.visible(p).await?), acted));
            }
            let _stepping = match self.stepping.claim(&format!("{payment_id}/{:?}", item.task)) {
                Ok(claim) => claim,
                // Another step of this process is doing this very task: a caller that wants its
                // result (a cancel) waits for it and looks again — then only at a task that is
                // due (the other step has rescheduled it); the resolver leaves it.
                Err(mut rx) if only.is_some() => {
                    let _ = rx.wait_for(|done| *done).await;
                    only = None;
                    continue;
                }
                Err(_) => return Ok((Some(self.visible(p).await?), acted)),
            };
            if p.state == PaymentState::Pending && self.unsent_set().contains(payment_id) {
                return self.unsent_step(p, item).await.map(|p| (Some(p), true));
            }
            // One acquirer's outage holds at most its own lane; a full lane is left for later.
            let lanes = &self.parties().lanes;
            let lane = lanes.get(&p.acquirer).and_then(|l| l.clone().try_acquire_owned().ok());
            if lane.is_none() && lanes.contains_key(&p.acquirer) {
                return Ok((Some(self.visible(p).await?), acted));
            }
            // What the acquirer is about to hear of must survive a crash.
            self.store.flush().await.map_err(internal)?;
            let request = match item.task {
                Task::Inquire | Task::Verify | Task::Attention => {
                    AcquirerRequest::Inquire(p.payment_id.clone())
                }
                Task::Reverse => AcquirerRequest::Reverse(p.payment_id.clone()),
            };
            let asked = self.ask(&p, request).await;
            drop(lane);
            let guard = self.lock_payment(payment_id).await;
            let now_p = self.store.payment(payment_id).await.map_err(internal)?;
            let now_item = self.store.work_item(payment_id).await.map_err(internal)?;
            if now_p.as_ref().map(|c| c.rev) != Some(p.rev) || now_item.as_ref() != Some(&item) {
                drop(guard);
                tracing::debug!(payment = %payment_id, "changed while the acquirer was asked; answer dropped");
                return Ok((self.visible_opt(now_p).await?, acted));
            }
            acted = true;
            let now = self.clock.now();
            let change = match item.task {
                Task::Inquire => self.inquired(&p, &item, asked, now),
                Task::Reverse => self.reversed(&p, &item, asked, now),
                Task::Verify => self.verified(&p, &item, asked, now),
                // Never stepped (checked above, and the task is re-read under the lock).
                Task::Attention => Self::unchanged(&p, now, Work::Keep),
            };
            // A reversal due at once follows at once: at expiry, and after a late approval.
            let follow = matches!(&change.work, Work::Set(w)
                if w.task == Task::Reverse && item.task != Task::Reverse && w.due <= now);
            match self.store.apply(&change).await {
                Ok(()) => {}
                // Another node's step of the same work got there first (its resolver, while a
                // cancel here reversed): its change stands, and this answer is dropped.
                Err(StoreError::Stale(_)) => {
                    drop(guard);
                    tracing::debug!(payment = %payment_id, "changed elsewhere while the acquirer was asked; answer dropped");
                    let now_p = self.store.payment(payment_id).await.map_err(internal)?;
                    return Ok((self.visible_opt(now_p).await?, acted));
                }
                Err(e) => return Err(internal(e)),
            }
            drop(guard);
            if p.state == PaymentState::Pending {
                self.unsent_set().remove(payment_id);
            }
            let p = self.durable(change).await?;
            if !follow {
                return Ok((Some(p), acted));
            }
            only = Some(Task::Reverse);
        }
    }

    /// A payment this process knows it never sent (its PENDING flush failed): no acquirer is
    /// asked. It waits, while its quote is valid, for the partner to repeat the request (which
    /// sends it); then it fails as never sent (`ACQUIRER_UNAVAILABLE`: nothing left the bridge,
    /// and the quote may be paid again).
    async fn unsent_step(
        &self,
        p: PaymentRecord,
        item: WorkItem,
    ) -> Result<PaymentRecord, ApiError> {
        let q = self.store.quote(&p.quote_id).await.map_err(internal)?;
        let guard = self.lock_payment(&p.payment_id).await;
        let now_p = self.store.payment(&p.payment_id).await.map_err(internal)?;
        let now_item = self.store.work_item(&p.payment_id).await.map_err(internal)?;
        // A repeated request claims it under this lock before it sends: then it is not ours.
        if now_p.as_ref().map(|c| c.rev) != Some(p.rev)
            || now_item.as_ref() != Some(&item)
            || self.is_inflight(&p.payment_id)
        {
            drop(guard);
            return self.visible(now_p.unwrap_or(p)).await;
        }
        let now = self.clock.now();
        let wait_until = q.map(|q| q.quote.expires_at).filter(|at| *at > now);
        let change = match wait_until {
            Some(at) => Self::unchanged(&p, now, Work::Set(WorkItem { due: at, ..item })),
            None => self.never_sent(&p, now),
        };
        self.store.apply(&change).await.map_err(internal)?;
        drop(guard);
        if change.payment.state != PaymentState::Pending {
            self.unsent_set().remove(&p.payment_id);
        }
        self.durable(change).await
    }

    /// A PENDING payment that was never sent ends `FAILED` / `ACQUIRER_UNAVAILABLE`, its quote
    /// free again; one inquiry later makes sure nothing arrived.
    fn never_sent(&self, p: &PaymentRecord, now: DateTime<Utc>) -> Change {
        let mut change = Change::of(p.successor(now));
        change.payment.state = PaymentState::Failed;
        change.payment.failure = Some(Failure {
            code: "ACQUIRER_UNAVAILABLE".into(),
            message: "the payment could not be recorded in time; nothing was sent".into(),
        });
        change.release_quote = true;
        change.work = self.work(p, Task::Verify, self.verify_due(p, now), 0);
        self.event_for(&mut change, now);
        change
    }

    /// A change that leaves the payment as it is (its partner-visible `updated_at` too) and
    /// sets its work.
    fn unchanged(p: &PaymentRecord, now: DateTime<Utc>, work: Work) -> Change {
        let mut c = Change::of(p.successor(now));
        c.payment.updated_at = p.updated_at;
        c.work = work;
        c
    }

    /// The same task again after `delay(attempt)`, saying what the last attempt got.
    fn again(
        &self,
        item: &WorkItem,
        due: DateTime<Utc>,
        refusals: u32,
        last_error: Option<String>,
    ) -> Work {
        let attempt = item.attempt + 1;
        Work::Set(WorkItem { due, attempt, refusals, last_error, ..item.clone() })
    }

    /// The payment unchanged and its task again on the schedule (the next attempt's delay from
    /// when it was due), with `refusals` and what the last attempt got.
    fn retry(
        &self,
        p: &PaymentRecord,
        item: &WorkItem,
        refusals: u32,
        last_error: Option<String>,
        now: DateTime<Utc>,
    ) -> Change {
        let due = item.due.max(now) + self.resolver.delay(item.attempt + 1);
        Self::unchanged(p, now, self.again(item, due, refusals, last_error))
    }

    /// What an inquiry about a payment whose outcome is unknown says.
    fn inquired(
        &self,
        p: &PaymentRecord,
        item: &WorkItem,
        asked: Asked,
        now: DateTime<Utc>,
    ) -> Change {
        let mut change = Change::of(p.successor(now));
        change.work = Work::Done;
        let (status, last_error) = asked.status();
        match status {
            Some(InstructionStatus::Approved) => {
                change.payment.state = PaymentState::Succeeded;
                change.payment.acquirer_ref = asked.acquirer_ref();
                if !p.booked {
                    change.payment.booked = true;
                    change.journal = Some(ledger::payment(&change.payment, now));
                }
            }
            Some(InstructionStatus::Declined) => declined(&mut change.payment, asked.reason()),
            Some(InstructionStatus::Reversed) => {
                change.payment.state = PaymentState::Failed;
                change.payment.failure =
                    Some(expired("the acquirer reports the instruction reversed"));
            }
            Some(InstructionStatus::NotFound) if p.reversal_refused => {
                // Nothing to pay and nothing the acquirer will reverse: failed, verified later.
                change.payment.state = PaymentState::Failed;
                change.payment.failure =
                    Some(expired("the outcome stayed unknown; the acquirer holds no such payment"));
                change.work = self.work(p, Task::Verify, self.verify_due(p, now), 0);
            }
            Some(InstructionStatus::NotFound | InstructionStatus::Processing) | None => {
                if p.reversal_refused {
                    // The acquirer will not reverse it: ask until it says how it ended.
                    return self.retry(p, item, item.refusals, last_error, now);
                }
                if now >= p.created_at + self.resolver.expiry {
                    tracing::warn!(payment = %p.payment_id, "outcome still unknown at expiry; reversing");
                    change.payment.state = PaymentState::Reversing;
                    change.work = self.work(p, Task::Reverse, now, 0);
                    return change;
                }
                let due = self.inquiry_due(p, item.due.max(now), item.attempt + 1);
                let work = self.again(item, due, item.refusals, last_error);
                if p.state == PaymentState::Pending {
                    change.payment.state = PaymentState::Unknown;
                    change.work = work;
                    return change;
                }
                return Self::unchanged(p, now, work);
            }
        }
        tracing::info!(payment = %p.payment_id, state = ?change.payment.state, "resolved by inquiry");
        self.event_for(&mut change, now);
        change
    }

    /// What a reversal (expiry, cancel, or a late approval) got. A reversal the acquirer refuses
    /// (an explicit refusal, or an answer that the payment is approved or still processing) is
    /// tried `reversal_refusals_max` times; then the bridge gives up reversing (see
    /// [`Engine::reversal_refused`]). No answer at all is unknown, and is tried again on the
    /// schedule.
    fn reversed(
        &self,
        p: &PaymentRecord,
        item: &WorkItem,
        asked: Asked,
        now: DateTime<Utc>,
    ) -> Change {
        let (status, last_error) = asked.status();
        let confirmed = matches!(
            status,
            // Nothing to reverse is as good as reversed; what comes after is verified.
            Some(
                InstructionStatus::Reversed
                    | InstructionStatus::NotFound
                    | InstructionStatus::Declined
            )
        );
        if !confirmed {
            // A reversal answered "approved" or "still processing" is refused, like an explicit no.
            let refused = matches!(asked, Asked::Refused(_))
                || matches!(
                    status,
                    Some(InstructionStatus::Approved | InstructionStatus::Processing)
                );
            let refusals = item.refusals + u32::from(refused);
            if refused && refusals >= self.resolver.reversal_refusals_max {
                let approved = matches!(status, Some(InstructionStatus::Approved));
                return self.reversal_refused(p, &asked, approved, now);
            }
            return self.retry(p, item, refusals, last_error, now);
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
        change.work = self.work(p, Task::Verify, self.verify_due(p, now), 0);
        if change.payment.state != p.state {
            tracing::info!(payment = %p.payment_id, state = ?change.payment.state, "reversal confirmed");
            self.event_for(&mut change, now);
        }
        change
    }

    /// The acquirer refused the reversal as often as the policy allows: the bridge stops
    /// reversing and the payment ends as the acquirer has it.
    /// - A cancel: refused (`cancel_refusal`, a `payment.cancel_refused` event); the payment
    ///   stays SUCCEEDED when it was, or the acquirer says it is approved; otherwise its outcome
    ///   is found by inquiry.
    /// - A reversal at expiry: an approval the acquirer will not reverse is a success; otherwise
    ///   the bridge inquires until the acquirer says how it ended (never guessed).
    /// - A late approval on a final payment: it stays booked, and an operator is asked (an
    ///   ATTENTION task on the admin API). So is a refused cancel whose last answer was "still
    ///   processing" (the reversal may yet go through).
    fn reversal_refused(
        &self,
        p: &PaymentRecord,
        asked: &Asked,
        approved: bool,
        now: DateTime<Utc>,
    ) -> Change {
        tracing::warn!(payment = %p.payment_id, answer = ?asked, "the acquirer refuses to reverse; giving up reversing");
        let processing = asked.status().0 == Some(InstructionStatus::Processing);
        let mut change = Change::of(p.successor(now));
        change.payment.reversal_refused = true;
        change.work = Work::Done;
        let succeed = |change: &mut Change| {
            change.payment.state = PaymentState::Succeeded;
            if !p.booked {
                change.payment.booked = true;
                change.journal = Some(ledger::payment(&change.payment, now));
            }
        };
        let inquire = self.work(p, Task::Inquire, now + self.resolver.delay(0), 0);
        match p.state {
            PaymentState::Cancelling => {
                change.payment.cancel_refusal = Some(Failure {
                    code: "REVERSAL_REFUSED".into(),
                    message: "the acquirer would not reverse the payment; ask for a refund".into(),
                });
                if approved || p.booked {
                    succeed(&mut change);
                    self.payment_event(&mut change, "payment.cancel_refused", now);
                    // Announce the success unless the partner heard it before the cancel (an
                    // approval booked behind the cancel's reversal was never announced).
                    if !p.booked || p.late_approvals > 0 {
                        self.event_for(&mut change, now);
                    }
                    // "Still processing" to the last reversal: the reversal may yet go through
                    // at the acquirer; an operator makes sure it does not.
                    if processing {
                        change.work = attention(
                            p,
                            now,
                            "the cancel was refused, but the acquirer answered PROCESSING to \
                                 the last reversal: make sure it did not go through",
                        );
                    }
                } else {
                    change.payment.state = PaymentState::Unknown;
                    change.work = inquire;
                    self.payment_event(&mut change, "payment.cancel_refused", now);
                }
            }
            PaymentState::Reversing => {
                // Booked: an approval that landed behind the reversal, which the acquirer will
                // not undo — the payment stands.
                if approved || p.booked {
                    succeed(&mut change);
                    self.event_for(&mut change, now);
                } else {
                    change.payment.state = PaymentState::Unknown;
                    change.work = inquire;
                }
            }
            _ => {
                // A late approval the acquirer will not reverse: the payment is final for the
                // partner but booked; an operator settles it.
                tracing::error!(payment = %p.payment_id, "late approval the acquirer will not reverse; needs an operator");
                change.payment.updated_at = p.updated_at;
                change.work = attention(
                    p,
                    now,
                    "approved behind the bridge's reversal; the acquirer refuses to reverse it",
                );
            }
        }
        change
    }

    /// After a confirmed reversal: was anything approved behind it?
    fn verified(
        &self,
        p: &PaymentRecord,
        item: &WorkItem,
        asked: Asked,
        now: DateTime<Utc>,
    ) -> Change {
        let (status, last_error) = asked.status();
        match status {
            Some(InstructionStatus::Approved) => {
                // An approval that arrived after the reversal: book it, never lose it, and
                // reverse it again.
                tracing::warn!(payment = %p.payment_id, "approved after its reversal; reversing again");
                let mut change = Self::unchanged(p, now, self.work(p, Task::Reverse, now, 0));
                change.payment.late_approvals += 1;
                if change.payment.late_approvals >= self.resolver.late_approvals_max {
                    tracing::error!(payment = %p.payment_id, "approved behind every reversal; needs an operator");
                    change.work = attention(
                        p,
                        now,
                        format!(
                            "approved behind the bridge's reversal {} times",
                            change.payment.late_approvals
                        ),
                    );
                }
                change.payment.booked = true;
                let mut entry = ledger::payment(&change.payment, now);
                entry.kind = "late_approval".into();
                change.journal = Some(entry);
                change
            }
            // Not settled at the acquirer yet: ask again rather than take a reversal on trust.
            Some(InstructionStatus::Processing) | None => {
                self.retry(p, item, item.refusals, last_error, now)
            }
            Some(_) => Self::unchanged(p, now, Work::Done),
        }
    }

    /// Does every resolver task that is due now; returns how many it did.
    pub async fn run_due_work(&self) -> Result<usize, ApiError> {
        let now = self.clock.now();
        let due: Vec<WorkItem> = self
            .store
            .open_work()
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|w| {
                w.due <= now && w.task != Task::Attention && !self.is_inflight(&w.payment_id)
            })
            .collect();
        let mut done = 0;
        for w in &due {
            done += usize::from(self.step_counted(&w.payment_id, None).await?.1);
        }
        Ok(done)
    }

    /// An operator settled a payment's ATTENTION task out of band (with the acquirer, the
    /// partner): the task is closed, and the audit log says who, when and why — written first,
    /// so a crash between the two leaves the task open (settle it again), never a settle
    /// unaccounted for.
    pub async fn settle_attention(
        &self,
        payment_id: &str,
        actor: &str,
        note: &str,
    ) -> Result<PaymentRecord, ApiError> {
        let note = note.trim();
        if note.is_empty() || note.chars().count() > 512 {
            return Err(ApiError::InvalidRequest("note: 1-512 characters".into()));
        }
        let guard = self.lock_payment(payment_id).await;
        let p = self.store.payment(payment_id).await.map_err(internal)?;
        let item = self.store.work_item(payment_id).await.map_err(internal)?;
        let (Some(p), Some(item)) = (p, item.filter(|w| w.task == Task::Attention)) else {
            drop(guard);
            self.visible(()).await?;
            return Err(match self.store.payment(payment_id).await.map_err(internal)? {
                Some(_) => ApiError::NotAwaitingOperator,
                None => ApiError::PaymentNotFound,
            });
        };
        let now = self.clock.now();
        let draft = AuditDraft {
            at: now,
            actor: actor.to_owned(),
            action: "resolver.settle".into(),
            target: format!("payment:{payment_id}"),
            before: serde_json::to_value(&item).expect("JSON of plain data"),
            after: serde_json::json!({ "note": note }),
        };
        self.store.admin_commit(&draft, &[], None).await.map_err(internal)?;
        let change = Self::unchanged(&p, now, Work::Done);
        self.store.apply(&change).await.map_err(internal)?;
        drop(guard);
        tracing::info!(payment = %payment_id, admin = actor, "operator settled an ATTENTION task");
        self.durable(change).await
    }

    /// A partner's own payment, by id, as stored (maybe not durable yet).
    async fn own(&self, partner: &str, payment_id: &str) -> Result<PaymentRecord, ApiError> {
        match self.store.payment(payment_id).await.map_err(internal)? {
            Some(p) if p.partner == partner => Ok(p),
            _ => Err(ApiError::PaymentNotFound),
        }
    }

    /// A partner's own payment, by id.
    pub async fn get(&self, partner: &str, payment_id: &str) -> Result<PaymentRecord, ApiError> {
        let p = self.own(partner, payment_id).await?;
        self.visible(p).await
    }

    /// A partner's own payment, by its request id.
    pub async fn get_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<PaymentRecord, ApiError> {
        if !valid_request_id(request_id) {
            return Err(ApiError::InvalidRequest(
                "request_id: 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
            ));
        }
        let p = self
            .store
            .payment_by_request(partner, request_id)
            .await
            .map_err(internal)?
            .ok_or(ApiError::PaymentNotFound)?;
        self.visible(p).await
    }

    /// `POST /v1/payments/{id}/cancel`: reverses the payment in full. Idempotent: a cancelled or
    /// failed payment is returned as it is, and so is one being cancelled (the resolver goes on
    /// reversing it).
    /// A payment whose reversal the acquirer refused is not cancelled again (ask for a refund).
    pub async fn cancel(&self, partner: &str, payment_id: &str) -> Result<PaymentRecord, ApiError> {
        let answer = self.cancel_now(partner, payment_id).await;
        self.refusal_durable(answer).await
    }

    async fn cancel_now(&self, partner: &str, payment_id: &str) -> Result<PaymentRecord, ApiError> {
        let p = self.own(partner, payment_id).await?;
        self.settled(p).await?;
        let mut tries = 0;
        loop {
            let guard = self.lock_payment(payment_id).await;
            let p = self.own(partner, payment_id).await?;
            match p.state {
                // Being cancelled already: the resolver reverses it on its schedule (a repeated
                // cancel does not hurry it, so refusals count attempts spread in time).
                PaymentState::Failed
                | PaymentState::Cancelled
                | PaymentState::Reversing
                | PaymentState::Cancelling => {
                    drop(guard);
                    return self.visible(p).await;
                }
                PaymentState::Pending | PaymentState::Unknown | PaymentState::Succeeded => {
                    if p.refunded_cny.is_positive() {
                        return Err(ApiError::CancelNotAllowed(
                            "the payment has refunds; it can no longer be cancelled".into(),
                        ));
                    }
                    if p.reversal_refused {
                        return Err(ApiError::CancelNotAllowed(
                            "the acquirer would not reverse this payment; ask for a refund".into(),
                        ));
                    }
                    let now = self.clock.now();
                    if now > self.cancel.deadline(p.created_at) {
                        return Err(ApiError::CancelWindowClosed);
                    }
                    let mut change = Change::of(p.successor(now));
                    change.payment.state = PaymentState::Cancelling;
                    change.work = self.work(&p, Task::Reverse, now, 0);
                    // Another node may have changed it meanwhile (its send's outcome, its
                    // resolver): then decide again on the payment as it now stands.
                    if !self.applied_unless_stale(&change, &mut tries).await? {
                        continue;
                    }
                    drop(guard);
                    self.unsent_set().remove(payment_id);
                    self.durable(change).await?;
                    break;
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
        let p = self.own(partner, payment_id).await?;
        let refunds = self.store.refunds_of(payment_id).await.map_err(internal)?;
        self.visible((p, refunds)).await
    }

    /// `POST /acquirer/v1/refunds`: acquirer `acquirer` refunded (part of) a payment it was
    /// instructed. Returns the refund and whether this request made it.
    pub async fn refund(
        &self,
        acquirer: &str,
        body: RefundRequestBody,
    ) -> Result<(RefundRecord, bool), ApiError> {
        let answer = self.refund_now(acquirer, body).await;
        self.refusal_durable(answer).await
    }

    /// A refusal that rests on a payment's state (another request's write, maybe not durable
    /// yet) is said only once that state is durable.
    async fn refusal_durable<T>(&self, answer: Result<T, ApiError>) -> Result<T, ApiError> {
        match answer {
            Err(
                e @ (ApiError::CancelNotAllowed(_)
                | ApiError::CancelWindowClosed
                | ApiError::PaymentNotRefundable(_)
                | ApiError::RefundExceedsPayment(_)
                | ApiError::RefundWindowClosed(_)),
            ) => {
                self.visible(()).await?;
                Err(e)
            }
            other => other,
        }
    }

    async fn refund_now(
        &self,
        acquirer: &str,
        body: RefundRequestBody,
    ) -> Result<(RefundRecord, bool), ApiError> {
        if !valid_request_id(&body.refund_id) {
            return Err(ApiError::InvalidRequest(
                "refund_id: 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
            ));
        }
        if body.instruction_id.is_empty() || body.instruction_id.chars().count() > 64 {
            return Err(ApiError::InvalidRequest("instruction_id: 1-64 characters".into()));
        }
        // Counted as sent (docs/acquirer-api.yaml), kept without surrounding blanks.
        let reason = body.reason.trim();
        if reason.is_empty() || body.reason.chars().count() > 256 {
            return Err(ApiError::InvalidRequest(
                "reason: 1-256 characters, not only blanks".into(),
            ));
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
        let replay = |r: RefundRecord| async {
            self.visible(()).await?;
            if r.request_hash != hash {
                return Err(ApiError::RepeatReqInconsistent);
            }
            Ok((r, false))
        };
        let recorded = || self.store.refund_by_acquirer_id(acquirer, &body.refund_id);
        if let Some(r) = recorded().await.map_err(internal)? {
            return replay(r).await;
        }
        let guard = self.lock_payment(&body.instruction_id).await;
        // The lock is this process's: another node may record this refund, or another refund of
        // the payment, at any moment. So a change made stale by one is made again from the
        // payment as it now is, and a refusal is given only once this refund is still not
        // recorded after the payment was read (a payment read that counts it would refuse it).
        let mut stale = 0u32;
        let (record, change) = loop {
            // Again under the lock: a concurrent retry of this refund may have recorded it
            // meanwhile (then the payment already counts it, and checking the amount would
            // refuse it).
            if let Some(r) = recorded().await.map_err(internal)? {
                drop(guard);
                return replay(r).await;
            }
            let p = match self.store.payment(&body.instruction_id).await.map_err(internal)? {
                Some(p) if p.acquirer == acquirer => p,
                _ => return Err(ApiError::PaymentNotFound),
            };
            let (record, change) =
                match self.refund_change(&p, acquirer, &body, reason, amount, &hash) {
                    Ok(made) => made,
                    Err(refusal) => {
                        if let Some(r) = recorded().await.map_err(internal)? {
                            drop(guard);
                            return replay(r).await;
                        }
                        return Err(refusal);
                    }
                };
            match self.store.apply(&change).await {
                Ok(()) => break (record, change),
                // Taken meanwhile (by a request for another payment, under another lock, or on
                // another node).
                Err(StoreError::RefundExists(existing)) => {
                    drop(guard);
                    return replay(*existing).await;
                }
                // The payment changed on another node since it was read: read it again.
                Err(StoreError::Stale(_)) if stale < STALE_TRIES => stale += 1,
                Err(e) => return Err(internal(e)),
            }
        };
        drop(guard);
        self.durable(change).await?;
        tracing::info!(payment = %record.payment_id, refund = %record.refund_id, "refund recorded");
        Ok((record, true))
    }

    /// The refund `body` asks for of `p`, and the change that records it; or why it is refused.
    fn refund_change(
        &self,
        p: &PaymentRecord,
        acquirer: &str,
        body: &RefundRequestBody,
        reason: &str,
        amount: Amount,
        hash: &str,
    ) -> Result<(RefundRecord, Change), ApiError> {
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
        // Priced from the payment's own copy of its quote's figures (`PaymentRecord::pricing`):
        // a refund reads no quote.
        let split = p.pricing().refund_split(&p.refunded_cny, &amount).map_err(|e| match e {
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
            request_hash: hash.to_owned(),
            amount,
            wallet_amount: split.wallet,
            reason: reason.to_owned(),
            created_at: now,
        };
        let mut change = Change::of(p.successor(now));
        let total = |a: &Amount, b: &Amount| a.checked_add(b).map_err(|_| ApiError::Internal);
        change.payment.refunded_cny = total(&p.refunded_cny, &amount)?;
        change.payment.refunded_wallet = total(&p.refunded_wallet, &split.wallet)?;
        change.journal = Some(ledger::refund(p, &record, split.spread, now));
        let data = serde_json::to_value(RefundAnswer::new(&record)).expect("JSON of plain data");
        change.events.push(self.event(p, "refund.succeeded", data, now));
        change.refund = Some(record.clone());
        Ok((record, change))
    }
}

/// The record of a risk decision about `p`.
fn decision_record(
    p: &PaymentRecord,
    outcome: &str,
    reasons: Vec<String>,
    rules: Vec<String>,
    detail: String,
    over_by: Option<Amount>,
) -> RiskDecisionRecord {
    RiskDecisionRecord {
        decision_id: p.payment_id.clone(),
        at: p.created_at,
        partner: p.partner.clone(),
        request_id: p.request_id.clone(),
        quote_id: p.quote_id.clone(),
        payer_id: p.payer_id.clone(),
        acquirer: p.acquirer.clone(),
        merchant_id: p.merchant.id.clone(),
        mcc: p.merchant.mcc.clone(),
        pay: p.pay,
        wallet: p.wallet,
        outcome: outcome.to_owned(),
        reasons,
        rules,
        detail,
        over_by,
    }
}

/// An ATTENTION task for `p`: an operator must look, for the reason `why` (shown on the admin API).
fn attention(p: &PaymentRecord, now: DateTime<Utc>, why: impl Into<String>) -> Work {
    Work::Set(WorkItem {
        last_error: Some(why.into()),
        ..WorkItem::new(&p.payment_id, Task::Attention, now, 0)
    })
}

/// A payment the acquirer declined: our words for the partner, its own for logs and admins.
fn declined(p: &mut PaymentRecord, acquirer_reason: Option<String>) {
    p.state = PaymentState::Failed;
    p.failure = Some(Failure {
        code: "DECLINED".into(),
        message: "the acquirer declined the payment".into(),
    });
    p.acquirer_reason = acquirer_reason;
}

/// Work this process is doing, by key: who else wants it waits, or leaves it.
#[derive(Default)]
struct Claims(Mutex<HashMap<String, watch::Receiver<bool>>>);

impl Claims {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `key`, or says who holds it (wait on it).
    fn claim(self: &Arc<Self>, key: &str) -> Result<Claim, watch::Receiver<bool>> {
        let mut map = self.map();
        if let Some(rx) = map.get(key) {
            return Err(rx.clone());
        }
        let (done, rx) = watch::channel(false);
        map.insert(key.to_owned(), rx);
        Ok(Claim { claims: self.clone(), key: key.to_owned(), done })
    }

    /// Whom to wait on for `key`, if anyone holds it.
    fn waiter(&self, key: &str) -> Option<watch::Receiver<bool>> {
        self.map().get(key).cloned()
    }
}

/// A key held for as long as this lives; dropping it (however its holder ends: done, an error,
/// a panic) frees the key and wakes whoever waits.
struct Claim {
    claims: Arc<Claims>,
    key: String,
    done: watch::Sender<bool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.map().remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// What the acquirer said about an instruction.
#[derive(Debug)]
enum Asked {
    /// An answer about this instruction.
    Answer(InstructionAnswer),
    /// The acquirer refused the request outright (its own words, for logs and admins).
    Refused(String),
    /// No usable answer: the outcome is as unknown as before.
    NoAnswer(String),
}

impl Asked {
    /// The instruction's status, if the answer gave one, and what to show admins otherwise.
    fn status(&self) -> (Option<InstructionStatus>, Option<String>) {
        match self {
            Asked::Answer(a) => (Some(a.status), Some(format!("{:?}", a.status).to_uppercase())),
            Asked::Refused(e) | Asked::NoAnswer(e) => (None, Some(e.clone())),
        }
    }

    fn acquirer_ref(&self) -> Option<String> {
        match self {
            Asked::Answer(a) => a.acquirer_ref.clone(),
            _ => None,
        }
    }

    fn reason(&self) -> Option<String> {
        match self {
            Asked::Answer(a) => a.reason.clone(),
            _ => None,
        }
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
