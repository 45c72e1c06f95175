//! Every error a partner can get, and the one place that turns it into an HTTP answer:
//! `{"error": {"code", "message", "retryable"}}` with a stable code and a fitting status.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::api::{ErrorBody, ErrorDetail};

/// An error answer of the partner API (../shared/API.md, plus a few additions marked below).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("{0}")]
    InvalidCode(String),
    #[error("{0}")]
    MerchantNotServiceable(String),
    #[error("{0}")]
    InvalidAmount(String),
    #[error("{0}")]
    AmountMismatch(String),
    #[error("{0}")]
    CurrencyNotSupported(String),
    #[error("{0}")]
    RateUnavailable(String),
    #[error("no such quote")]
    QuoteNotFound,
    #[error("the quote has expired; get a new one")]
    QuoteExpired,
    #[error("another request_id already paid this quote")]
    QuoteAlreadyUsed,
    #[error("request_id reused with a different body")]
    RepeatReqInconsistent,
    #[error("no such payment")]
    PaymentNotFound,
    #[error("too late to cancel; ask for a refund")]
    CancelWindowClosed,
    #[error("too many requests; slow down")]
    RateLimited,
    #[error("internal error; retry with the same request_id")]
    Internal,
    // Additions to API.md:
    /// The client certificate verified but names no configured partner.
    #[error("the client certificate does not identify a partner")]
    ClientNotRecognised,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The method is not served on this path; the value is what the path does serve, for the
    /// answer's `allow` header (RFC 9110 §15.5.6), e.g. `GET, POST`.
    #[error("method not allowed; this path allows {0}")]
    MethodNotAllowed(String),
    /// The daemon is at its concurrency limit; retry.
    #[error("overloaded; retry shortly")]
    Overloaded,
    /// The request took longer than the configured limit; retry with the same request_id.
    #[error("the request timed out; retry with the same request_id")]
    Timeout,
    /// The merchant's acquirer could not be asked about the code; retry.
    #[error("{0}")]
    AcquirerUnavailable(String),
    /// A cancel of a payment that already has refunds, or whose reversal the acquirer refused:
    /// only refunds can undo it.
    #[error("{0}")]
    CancelNotAllowed(String),
    /// A dynamic (order) code whose order another payment paid, or is paying.
    #[error("this order is already paid, or being paid, by another payment")]
    OrderAlreadyPaid,
    /// A refund of a payment that did not succeed, or was cancelled.
    #[error("{0}")]
    PaymentNotRefundable(String),
    /// Refunds would come to more than was paid.
    #[error("{0}")]
    RefundExceedsPayment(String),
    /// Refunds are accepted within the configured number of days of the payment.
    #[error("the payment is older than the refund window of {0} days")]
    RefundWindowClosed(u32),
    /// The certificate verified but names no configured acquirer (acquirer listener) or admin
    /// (admin listener).
    #[error("the client certificate is not allowed here")]
    Forbidden,
    /// No such parked webhook event (admin).
    #[error("no such parked event")]
    EventNotFound,
    /// An operator's settle of a payment that has no task waiting for an operator.
    #[error("this payment has no task waiting for an operator")]
    NotAwaitingOperator,
    /// A spread outside the configured bounds (admin).
    #[error("{0}")]
    SpreadOutOfBounds(String),
    /// A rate that cannot be taken: not positive, one currency, bad line (admin).
    #[error("{0}")]
    InvalidRate(String),
    /// A rate whose `as_of` lies beyond now plus `fx.as_of_skew_s` (admin).
    #[error("{0}")]
    RateFromFuture(String),
    /// A rate moving more than `fx.rate_move_bps_max` from the held one, not forced (admin).
    #[error("{0}")]
    RateMoveTooLarge(String),
    /// No such rate source (admin).
    #[error("no rate source {0:?}")]
    RateSourceNotFound(String),
    /// The rate source could not be read; the rates held are unchanged (admin).
    #[error("{0}")]
    RateSourceFailed(String),
    /// The business day's cut-off (and its cancel window) has not passed yet (admin).
    #[error("{0}")]
    DayNotClosed(String),
    /// The day's statements were not produced yet, or the file does not exist (admin).
    #[error("{0}")]
    SettlementNotFound(String),
    /// An acquirer file that cannot be read as `instruction_id,amount,currency,status,refund_ids` (admin).
    #[error("{0}")]
    InvalidReconciliationFile(String),
    /// No configured acquirer by that id (admin).
    #[error("no acquirer {0:?}")]
    AcquirerNotFound(String),
    /// A reload's new configuration was refused whole; the reasons, joined.
    #[error("reload refused: {0}")]
    ConfigRefused(String),
    /// A risk rule refused the payment: `reason` is its stable code (`EXPOSURE_LIMIT`, …);
    /// nothing was stored but the decision's record.
    #[error("{message}")]
    RiskDeclined { reason: &'static str, message: String },
    /// Dual control: the admin who proposed a change cannot approve it (admin).
    #[error("{0}")]
    SameAdmin(String),
    /// No proposal by that id (admin).
    #[error("no proposal {0:?}")]
    ProposalNotFound(String),
    /// The proposal's time to be approved ran out; propose it again (admin).
    #[error("{0}")]
    ProposalExpired(String),
    /// The proposal was approved, rejected or withdrawn already (admin).
    #[error("{0}")]
    ProposalDecided(String),
}

impl ApiError {
    /// Stable code, HTTP status, and whether retrying can help.
    pub fn parts(&self) -> (&'static str, StatusCode, bool) {
        use ApiError::*;
        match self {
            InvalidRequest(_) => ("INVALID_REQUEST", StatusCode::BAD_REQUEST, false),
            PayloadTooLarge(_) => ("PAYLOAD_TOO_LARGE", StatusCode::PAYLOAD_TOO_LARGE, false),
            InvalidCode(_) => ("INVALID_CODE", StatusCode::UNPROCESSABLE_ENTITY, false),
            MerchantNotServiceable(_) => {
                ("MERCHANT_NOT_SERVICEABLE", StatusCode::UNPROCESSABLE_ENTITY, false)
            }
            InvalidAmount(_) => ("INVALID_AMOUNT", StatusCode::UNPROCESSABLE_ENTITY, false),
            AmountMismatch(_) => ("AMOUNT_MISMATCH", StatusCode::UNPROCESSABLE_ENTITY, false),
            CurrencyNotSupported(_) => {
                ("CURRENCY_NOT_SUPPORTED", StatusCode::UNPROCESSABLE_ENTITY, false)
            }
            RateUnavailable(_) => ("RATE_UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE, true),
            QuoteNotFound => ("QUOTE_NOT_FOUND", StatusCode::NOT_FOUND, false),
            QuoteExpired => ("QUOTE_EXPIRED", StatusCode::GONE, false),
            QuoteAlreadyUsed => ("QUOTE_ALREADY_USED", StatusCode::CONFLICT, false),
            RepeatReqInconsistent => ("REPEAT_REQ_INCONSISTENT", StatusCode::CONFLICT, false),
            PaymentNotFound => ("PAYMENT_NOT_FOUND", StatusCode::NOT_FOUND, false),
            CancelWindowClosed => ("CANCEL_WINDOW_CLOSED", StatusCode::CONFLICT, false),
            RateLimited => ("RATE_LIMITED", StatusCode::TOO_MANY_REQUESTS, true),
            Internal => ("INTERNAL", StatusCode::INTERNAL_SERVER_ERROR, true),
            ClientNotRecognised => ("CLIENT_NOT_RECOGNISED", StatusCode::FORBIDDEN, false),
            NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND, false),
            MethodNotAllowed(_) => ("METHOD_NOT_ALLOWED", StatusCode::METHOD_NOT_ALLOWED, false),
            Overloaded => ("OVERLOADED", StatusCode::SERVICE_UNAVAILABLE, true),
            Timeout => ("TIMEOUT", StatusCode::SERVICE_UNAVAILABLE, true),
            AcquirerUnavailable(_) => {
                ("ACQUIRER_UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE, true)
            }
            CancelNotAllowed(_) => ("CANCEL_NOT_ALLOWED", StatusCode::CONFLICT, false),
            OrderAlreadyPaid => ("ORDER_ALREADY_PAID", StatusCode::CONFLICT, false),
            PaymentNotRefundable(_) => ("PAYMENT_NOT_REFUNDABLE", StatusCode::CONFLICT, false),
            RefundExceedsPayment(_) => {
                ("REFUND_EXCEEDS_PAYMENT", StatusCode::UNPROCESSABLE_ENTITY, false)
            }
            RefundWindowClosed(_) => ("REFUND_WINDOW_CLOSED", StatusCode::CONFLICT, false),
            Forbidden => ("FORBIDDEN", StatusCode::FORBIDDEN, false),
            EventNotFound => ("EVENT_NOT_FOUND", StatusCode::NOT_FOUND, false),
            NotAwaitingOperator => ("NOT_AWAITING_OPERATOR", StatusCode::CONFLICT, false),
            SpreadOutOfBounds(_) => {
                ("SPREAD_OUT_OF_BOUNDS", StatusCode::UNPROCESSABLE_ENTITY, false)
            }
            InvalidRate(_) => ("INVALID_RATE", StatusCode::UNPROCESSABLE_ENTITY, false),
            RateFromFuture(_) => ("RATE_FROM_FUTURE", StatusCode::UNPROCESSABLE_ENTITY, false),
            RateMoveTooLarge(_) => ("RATE_MOVE_TOO_LARGE", StatusCode::UNPROCESSABLE_ENTITY, false),
            RateSourceNotFound(_) => ("RATE_SOURCE_NOT_FOUND", StatusCode::NOT_FOUND, false),
            RateSourceFailed(_) => ("RATE_SOURCE_FAILED", StatusCode::BAD_GATEWAY, true),
            DayNotClosed(_) => ("DAY_NOT_CLOSED", StatusCode::CONFLICT, true),
            SettlementNotFound(_) => ("SETTLEMENT_NOT_FOUND", StatusCode::NOT_FOUND, false),
            ConfigRefused(_) => ("CONFIG_REFUSED", StatusCode::UNPROCESSABLE_ENTITY, false),
            RiskDeclined { .. } => ("RISK_DECLINED", StatusCode::UNPROCESSABLE_ENTITY, false),
            SameAdmin(_) => ("SAME_ADMIN", StatusCode::FORBIDDEN, false),
            ProposalNotFound(_) => ("PROPOSAL_NOT_FOUND", StatusCode::NOT_FOUND, false),
            ProposalExpired(_) => ("PROPOSAL_EXPIRED", StatusCode::CONFLICT, false),
            ProposalDecided(_) => ("PROPOSAL_DECIDED", StatusCode::CONFLICT, false),
            AcquirerNotFound(_) => ("ACQUIRER_NOT_FOUND", StatusCode::NOT_FOUND, false),
            InvalidReconciliationFile(_) => {
                ("INVALID_RECONCILIATION_FILE", StatusCode::UNPROCESSABLE_ENTITY, false)
            }
        }
    }

    pub fn code(&self) -> &'static str {
        self.parts().0
    }

    /// The finer code beside [`ApiError::code`], where there is one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            ApiError::RiskDeclined { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The HTTP answer.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let (code, status, retryable) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                retryable,
                reason: self.reason(),
            },
        };
        let mut r = crate::api::json_response(status, &body);
        if matches!(self, ApiError::RateLimited | ApiError::Overloaded) {
            r.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        if let ApiError::MethodNotAllowed(allow) = self {
            if let Ok(v) = http::HeaderValue::from_str(allow) {
                r.headers_mut().insert(http::header::ALLOW, v);
            }
        }
        r
    }
}
