//! The payment lifecycle: decode, quote, pay, inquire, cancel.
//!
//! A payment is written `PENDING` and flushed **before** the acquirer is called; its id is the
//! acquirer's idempotency key; the outcome is written with its ledger entry and webhook event in
//! one transaction and flushed before the partner hears it. The acquirer call runs in its own
//! task, so a partner hanging up (or a request timeout) never leaves a payment half-done.
//!
//! Idempotency: a request id already used with the same content returns that payment as it now
//! stands — waiting for it if it is still being paid by this process — and never pays again; with
//! other content it is a conflict.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use qrbridge_adapters::acquirer::wire::{Instruction, InstructionStatus, LookupRequest};
use qrbridge_adapters::acquirer::{
    AcquirerClient, AcquirerError, AcquirerRequest, AcquirerResponse,
};
use qrbridge_adapters::decode::{self, DecodeLimits, Scheme};
use qrbridge_adapters::routing::Router;
use qrbridge_fx::{Amount, Currency, Quote, QuoteError, QuoteRequest, RateBook, SpreadPolicy};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::api::{DecodeAnswer, MerchantAnswer, PayRequestBody, PaymentAnswer, QuoteRequestBody};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::ledger;
use crate::model::*;
use crate::store::{Begin, BeginError, Change, Store, StoreError};

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
    pub acquirers: HashMap<String, AcquirerClient>,
    pub partners: HashMap<String, PartnerPolicy>,
    pub quote_ttl: Duration,
    pub decode_limits: DecodeLimits,
    pub cancel: CancelPolicy,
}

/// The engine.
pub struct Engine<S> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    rates: RwLock<RateBook>,
    spreads: RwLock<SpreadPolicy>,
    router: Router,
    acquirers: HashMap<String, AcquirerClient>,
    partners: HashMap<String, PartnerPolicy>,
    quote_ttl: Duration,
    decode_limits: DecodeLimits,
    cancel: CancelPolicy,
    /// Payments being paid by this process: replays wait for them to finish.
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
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
            inflight: Mutex::new(HashMap::new()),
        })
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

    fn acquirer(&self, id: &str) -> Result<&AcquirerClient, ApiError> {
        self.acquirers.get(id).ok_or_else(|| {
            tracing::error!(acquirer = id, "routed to an acquirer with no client");
            ApiError::Internal
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
            let client = self.acquirer(routed.acquirer)?;
            let lookup =
                LookupRequest { scheme: code.scheme.as_str().into(), code: trimmed.clone() };
            match client.execute(AcquirerRequest::Lookup(lookup)).await {
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
        let hash = {
            let mut h = Sha256::new();
            for part in [&body.request_id, &body.quote_id, &body.payer.id] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            hex::encode(h.finalize())
        };
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
            created_at: now,
            updated_at: now,
            rev: 0,
        };
        // Registered before the write, so a concurrent replay that sees the record can wait.
        let (done_tx, done_rx) = watch::channel(false);
        self.lock_inflight().insert(record.payment_id.clone(), done_rx);
        let begun = self.store.begin_payment(&record, now);
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
        let engine = self.clone();
        let task = tokio::spawn(async move {
            let result = engine.instruct(record, &q).await;
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

    /// Sends the instruction and records the outcome. The payment is durable as `Pending`.
    async fn instruct(&self, p: PaymentRecord, q: &QuoteRecord) -> Result<PaymentRecord, ApiError> {
        let client = self.acquirer(&p.acquirer)?;
        let instruction = Instruction {
            instruction_id: p.payment_id.clone(),
            merchant_id: q.code.merchant_id.clone(),
            scheme: q.code.scheme.clone(),
            code: q.code.text.clone(),
            amount: p.pay,
        };
        let outcome = client.execute(AcquirerRequest::Send(instruction)).await;
        let now = self.clock.now();
        let mut change = Change {
            payment: p.successor(now),
            journal: None,
            events: vec![],
            release_quote: false,
        };
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
            }
            Err(AcquirerError::Unknown(e)) => {
                tracing::warn!(payment = %p.payment_id, error = %e, "acquirer outcome unknown");
                change.payment.state = PaymentState::Unknown;
            }
        }
        self.event_for(&mut change, now);
        self.commit(change).await
    }

    /// Adds the webhook event a final state calls for.
    fn event_for(&self, change: &mut Change, now: DateTime<Utc>) {
        let kind = match change.payment.state {
            PaymentState::Succeeded => "payment.succeeded",
            PaymentState::Failed => "payment.failed",
            PaymentState::Cancelled => "payment.cancelled",
            _ => return,
        };
        change.events.push(OutboxEvent {
            v: RECORD_VERSION,
            event_id: new_id("evt"),
            partner: change.payment.partner.clone(),
            kind: kind.into(),
            payment_id: change.payment.payment_id.clone(),
            created_at: now,
            data: serde_json::to_value(PaymentAnswer::new(&change.payment))
                .expect("JSON of plain data"),
        });
    }

    async fn commit(&self, change: Change) -> Result<PaymentRecord, ApiError> {
        self.store.apply(&change).map_err(internal)?;
        self.store.flush().await.map_err(internal)?;
        tracing::info!(payment = %change.payment.payment_id, state = ?change.payment.state, "payment updated");
        Ok(change.payment)
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

    /// `POST /v1/payments/{id}/cancel`: reverses the payment in full. Idempotent.
    pub async fn cancel(&self, partner: &str, payment_id: &str) -> Result<PaymentRecord, ApiError> {
        let p = self.get(partner, payment_id).await?;
        let p = self.settled(p).await?;
        match p.state {
            PaymentState::Failed | PaymentState::Cancelled => return Ok(p),
            PaymentState::Pending
            | PaymentState::Unknown
            | PaymentState::Succeeded
            | PaymentState::Cancelling => {}
        }
        let now = self.clock.now();
        if now > self.cancel.deadline(p.created_at) {
            return Err(ApiError::CancelWindowClosed);
        }
        let p = if p.state == PaymentState::Cancelling {
            p
        } else {
            let mut next = p.successor(now);
            next.state = PaymentState::Cancelling;
            self.commit(Change {
                payment: next,
                journal: None,
                events: vec![],
                release_quote: false,
            })
            .await?
        };
        let client = self.acquirer(&p.acquirer)?;
        match client.execute(AcquirerRequest::Reverse(p.payment_id.clone())).await {
            Ok(AcquirerResponse::Instruction(a)) if a.status == InstructionStatus::Reversed => {
                let now = self.clock.now();
                let mut next = p.successor(now);
                next.state = PaymentState::Cancelled;
                let journal = p.booked.then(|| ledger::reversal(&p, now));
                next.booked = false;
                let mut change =
                    Change { payment: next, journal, events: vec![], release_quote: false };
                self.event_for(&mut change, now);
                self.commit(change).await
            }
            other => {
                // The reversal's outcome is not known: the payment stays in doubt (PROCESSING)
                // until a retried reversal confirms it.
                tracing::warn!(payment = %p.payment_id, outcome = ?other, "reversal not confirmed");
                Ok(p)
            }
        }
    }
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
