//! The partner API's answer shapes (../shared/API.md), built from engine and adapter types.

use qrbridge_adapters::decode::{CodeType, MerchantCode, Scheme, Warning};
use qrbridge_fx::Amount;
use serde::Serialize;

/// The response type of every listener.
pub type Resp = http::Response<http_body_util::Full<bytes::Bytes>>;

/// A JSON answer.
pub fn json_response<T: Serialize>(status: http::StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).expect("JSON of plain data");
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
        .expect("valid response")
}

pub use crate::model::MerchantAnswer;

impl MerchantAnswer {
    pub fn from_code(code: &MerchantCode<'_>) -> Self {
        let m = &code.merchant;
        let own = |s: Option<&str>| s.map(str::to_owned);
        MerchantAnswer {
            id: own(m.id),
            name: own(m.name),
            city: own(m.city),
            country: own(m.country),
            mcc: own(m.mcc),
        }
    }
}

/// The answer of `POST /v1/codes/decode`.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeAnswer {
    pub scheme: Scheme,
    pub code_type: CodeType,
    pub merchant: MerchantAnswer,
    pub amount: Option<Amount>,
    pub acquirer: Option<String>,
    pub warnings: Vec<Warning>,
}

impl DecodeAnswer {
    pub fn new(code: &MerchantCode<'_>, acquirer: Option<&str>) -> Self {
        DecodeAnswer {
            scheme: code.scheme,
            code_type: code.code_type,
            merchant: MerchantAnswer::from_code(code),
            amount: code.amount,
            acquirer: acquirer.map(str::to_owned),
            warnings: code.warnings.clone(),
        }
    }
}

/// The API's error body: `{"error": {"code", "message", "retryable"}}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: String,
    pub retryable: bool,
    /// A finer, stable code beside `code` (`RISK_DECLINED`'s rule: `EXPOSURE_LIMIT`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// RFC 3339 in UTC with milliseconds: `2026-05-22T08:15:30.123Z`.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

mod rfc3339 {
    pub fn serialize<S: serde::Serializer>(
        t: &chrono::DateTime<chrono::Utc>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::time(t))
    }
}

/// `rate` in answers.
#[derive(Debug, Clone, Serialize)]
pub struct RateView {
    pub pair: String,
    /// The client price, spread included, as a decimal string.
    pub price: String,
}

/// `reference` in answers: the mid rate a price was built from (../shared/API.md, v1.1).
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceView {
    /// The mid rate, as a decimal string (as the quote keeps it: derived mids to 12 places).
    pub rate: String,
    /// The rate source's id (`builtin`, `ecb`, `admin:<identity>`); for a cross rate the sources
    /// of its two legs, in order, joined with `+`; `unknown` for a quote priced before quotes
    /// kept it.
    pub source: String,
    /// The rate's as-of time (a cross: the older leg's).
    #[serde(with = "rfc3339")]
    pub as_of: chrono::DateTime<chrono::Utc>,
}

impl ReferenceView {
    fn new(r: &crate::model::PriceReference) -> Self {
        ReferenceView { rate: r.mid.to_string(), source: r.source.clone(), as_of: r.as_of }
    }
}

/// The answer of `POST /v1/quotes`.
#[derive(Debug, Clone, Serialize)]
pub struct QuoteAnswer {
    pub quote_id: String,
    pub merchant: MerchantAnswer,
    pub acquirer: String,
    pub pay_amount: Amount,
    pub wallet_amount: Amount,
    pub rate: RateView,
    /// How far `rate.price` sits above `reference.rate`, in basis points (the spread and the
    /// price's rounding): `(price / mid − 1) × 10 000` rounded up to exactly two places
    /// (`qrbridge_fx::rounding::markup_bps`).
    pub markup_bps: String,
    pub reference: ReferenceView,
    #[serde(with = "rfc3339")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(with = "rfc3339")]
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl QuoteAnswer {
    pub fn new(q: &crate::model::QuoteRecord) -> Self {
        QuoteAnswer {
            quote_id: q.quote_id.clone(),
            merchant: q.code.merchant.clone(),
            acquirer: q.code.acquirer.clone(),
            pay_amount: q.quote.pay,
            wallet_amount: q.quote.wallet,
            rate: RateView { pair: q.quote.pair.to_string(), price: q.quote.price.to_string() },
            markup_bps: q.quote.markup_bps().to_string(),
            reference: ReferenceView::new(&crate::model::PriceReference::of(&q.quote)),
            created_at: q.quote.created_at,
            expires_at: q.quote.expires_at,
        }
    }
}

/// `failure` in payment answers.
#[derive(Debug, Clone, Serialize)]
pub struct FailureView {
    pub code: String,
    pub message: String,
}

/// A payment as partners see it (`GET /v1/payments/{id}` and the pay answer).
#[derive(Debug, Clone, Serialize)]
pub struct PaymentAnswer {
    pub payment_id: String,
    pub request_id: String,
    pub quote_id: String,
    pub status: &'static str,
    pub pay_amount: Amount,
    pub wallet_amount: Amount,
    pub rate: RateView,
    /// As the quote's. `null` (with `reference`) only for a payment made before payments kept
    /// the reference.
    pub markup_bps: Option<String>,
    pub reference: Option<ReferenceView>,
    pub merchant: MerchantAnswer,
    /// What has been refunded to the partner, in the wallet currency.
    pub refunded_amount: Amount,
    pub failure: Option<FailureView>,
    /// A cancel the acquirer would not carry out (`REVERSAL_REFUSED`): the payment stands as it
    /// is; ask the merchant for a refund. Absent when no cancel was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_refusal: Option<FailureView>,
    #[serde(with = "rfc3339")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl PaymentAnswer {
    pub fn new(p: &crate::model::PaymentRecord) -> Self {
        PaymentAnswer {
            payment_id: p.payment_id.clone(),
            request_id: p.request_id.clone(),
            quote_id: p.quote_id.clone(),
            status: p.state.api_status(),
            pay_amount: p.pay,
            wallet_amount: p.wallet,
            rate: RateView { pair: p.rate.pair.clone(), price: p.rate.price.to_string() },
            markup_bps: p.markup_bps().map(|b| b.to_string()),
            reference: p.reference.as_ref().map(ReferenceView::new),
            merchant: p.merchant.clone(),
            refunded_amount: p.refunded_wallet,
            failure: p
                .failure
                .as_ref()
                .map(|f| FailureView { code: f.code.clone(), message: f.message.clone() }),
            cancel_refusal: p
                .cancel_refusal
                .as_ref()
                .map(|f| FailureView { code: f.code.clone(), message: f.message.clone() }),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Body of `POST /v1/codes/decode`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DecodeRequest {
    pub code: String,
}

/// Body of `POST /v1/quotes`. `amount` and `wallet_currency` are taken raw so that their errors
/// get their own codes (`INVALID_AMOUNT`, `CURRENCY_NOT_SUPPORTED`) rather than `INVALID_REQUEST`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct QuoteRequestBody {
    pub code: String,
    #[serde(default)]
    pub amount: Option<RawAmount>,
    pub wallet_currency: String,
}

/// An amount as sent, before validation.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RawAmount {
    pub currency: String,
    pub value: String,
}

/// Body of `POST /v1/payments`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PayRequestBody {
    pub request_id: String,
    pub quote_id: String,
    pub payer: Payer,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Payer {
    pub id: String,
}

/// Body of the acquirer's `POST /acquirer/v1/refunds`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequestBody {
    /// The acquirer's own id for the refund: its idempotency key.
    pub refund_id: String,
    /// The payment's instruction id (the bridge's payment id).
    pub instruction_id: String,
    /// In CNY.
    pub amount: RawAmount,
    pub reason: String,
}

/// A refund, as partners (`GET /v1/payments/{id}/refunds`, `refund.succeeded` webhooks) and
/// acquirers see it.
#[derive(Debug, Clone, Serialize)]
pub struct RefundAnswer {
    pub refund_id: String,
    pub payment_id: String,
    pub acquirer_refund_id: String,
    pub status: &'static str,
    /// CNY, what the merchant gave back.
    pub amount: Amount,
    /// What the partner gets back, at the payment's price.
    pub wallet_amount: Amount,
    pub reason: String,
    #[serde(with = "rfc3339")]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl RefundAnswer {
    pub fn new(r: &crate::model::RefundRecord) -> Self {
        RefundAnswer {
            refund_id: r.refund_id.clone(),
            payment_id: r.payment_id.clone(),
            acquirer_refund_id: r.acquirer_refund_id.clone(),
            status: "SUCCEEDED",
            amount: r.amount,
            wallet_amount: r.wallet_amount,
            reason: r.reason.clone(),
            created_at: r.created_at,
        }
    }
}

/// `GET /v1/payments/{id}/refunds`.
#[derive(Debug, Clone, Serialize)]
pub struct RefundList {
    pub payment_id: String,
    /// Total refunded to the partner, in the wallet currency.
    pub refunded_amount: Amount,
    pub refunds: Vec<RefundAnswer>,
}

/// A webhook as partners receive it.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookBody<'a> {
    pub event_id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(with = "rfc3339")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub data: &'a serde_json::Value,
}

impl<'a> WebhookBody<'a> {
    pub fn new(e: &'a crate::model::OutboxEvent) -> Self {
        WebhookBody {
            event_id: &e.event_id,
            kind: &e.kind,
            created_at: e.created_at,
            data: &e.data,
        }
    }
}
