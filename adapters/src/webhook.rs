//! Webhooks to partners: a POST over mTLS, signed so partners can check the event outside TLS too.
//!
//! The signature header is `qrbridge-signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, the MAC
//! taken with the partner's secret over `"<t>.<body>"`. The event id also goes in
//! `qrbridge-event-id`, the same on every attempt. [`verify`] is the check a partner makes (and
//! the tests make).
//!
//! Only the answer's status counts (any 2xx acknowledges). Its body is read only when it is short
//! (`answer_bytes_max`), so the connection can be reused; a longer one is not read at all (the
//! connection is dropped), and nothing is read past the delivery's timeout.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use sha2::Sha256;

use crate::https::HttpsClient;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "qrbridge-signature";
/// The header carrying the event id.
pub const EVENT_ID_HEADER: &str = "qrbridge-event-id";

type HmacSha256 = Hmac<Sha256>;

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a signature does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the signature's timestamp is {0} s away from now")]
    Stale(i64),
}

/// Checks a signature header against `body`, accepting timestamps within `tolerance_s` of `now`
/// (unix seconds). Returns the timestamp. The comparison is constant-time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<i64, SignatureError> {
    let mut timestamp = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => v1 = hex::decode(s).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(sig)) = (timestamp, v1) else { return Err(SignatureError::Malformed) };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| SignatureError::Mismatch)?;
    let skew = now.saturating_sub(t);
    if skew.abs() > tolerance_s {
        return Err(SignatureError::Stale(skew));
    }
    Ok(t)
}

/// Why a delivery did not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("could not send: {0}")]
    Send(String),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("answered {0}")]
    Status(u16),
}

/// Sends webhook events to one partner's endpoint.
#[derive(Clone)]
pub struct WebhookSender {
    client: HttpsClient,
    url: String,
    secret: Vec<u8>,
    timeout: Duration,
    /// Longest answer body read; see [`WebhookSender::with_answer_bytes_max`].
    answer_bytes_max: usize,
}

/// How much of an endpoint's answer is read when the configuration does not say.
pub const ANSWER_BYTES_MAX_DEFAULT: usize = 4 * 1024;

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("WebhookSender").field("url", &self.url).finish()
    }
}

impl WebhookSender {
    /// `tls` carries the bridge's client certificate and the CA of the partner's endpoint.
    pub fn new(
        url: &str,
        secret: &[u8],
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        WebhookSender {
            client: crate::https::client(tls, connect_timeout),
            url: url.to_owned(),
            secret: secret.to_vec(),
            timeout,
            answer_bytes_max: ANSWER_BYTES_MAX_DEFAULT,
        }
    }

    /// Reads at most `bytes` of an answer's body (which means nothing: only its status counts).
    pub fn with_answer_bytes_max(mut self, bytes: usize) -> Self {
        self.answer_bytes_max = bytes;
        self
    }

    /// POSTs `body` (the event's JSON) signed at `now` (unix seconds); any 2xx acknowledges.
    pub async fn deliver(
        &self,
        event_id: &str,
        body: Bytes,
        now: i64,
    ) -> Result<(), DeliveryError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event_id)
            .header(SIGNATURE_HEADER, sign(&self.secret, now, &body))
            .body(Full::new(body))
            .map_err(|e| DeliveryError::Send(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Ok(r) => r.map_err(|e| DeliveryError::Send(e.to_string()))?,
            Err(_) => return Err(DeliveryError::Timeout(self.timeout.as_millis())),
        };
        let status = resp.status();
        // The status is the answer. A short body is drained so the connection goes back to the
        // pool; a long or endless one is dropped unread, and so is whatever is not in by the
        // deadline (dropping an unfinished body closes the connection).
        let body = resp.into_body();
        let max = u64::try_from(self.answer_bytes_max).unwrap_or(u64::MAX);
        if !body.is_end_stream() && body.size_hint().lower() <= max {
            let drain = Limited::new(body, self.answer_bytes_max).collect();
            let _ = tokio::time::timeout_at(deadline, drain).await;
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_check_out_and_tampering_does_not() {
        let secret = b"a-partner-secret-of-some-length";
        let body = br#"{"event_id":"evt_1","type":"payment.succeeded"}"#;
        let header = sign(secret, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify(secret, &header, body, 1_700_000_010, 300), Ok(1_700_000_000));
        let mut other = body.to_vec();
        other[3] ^= 1;
        assert_eq!(
            verify(secret, &header, &other, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret-entirely", &header, body, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(secret, &header, body, 1_700_001_000, 300),
            Err(SignatureError::Stale(1000))
        );
        assert_eq!(verify(secret, "v1=abcd", body, 0, 300), Err(SignatureError::Malformed));
    }
}
