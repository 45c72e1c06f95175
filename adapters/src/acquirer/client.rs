//! The bridge's client for an acquirer: hyper's pooled client over rustls with the bridge's client
//! certificate, behind a `tower::Service`.
//!
//! What matters most is telling apart the three ways a call can fail, because the engine acts on
//! them differently (a payment fails, or goes to the resolver):
//! - [`AcquirerError::NotSent`]: no connection (refused, TCP or TLS timeout): the instruction never
//!   left the bridge, so the payment can fail as `ACQUIRER_UNAVAILABLE`.
//! - [`AcquirerError::Rejected`]: an *explicit* refusal by the acquirer's API, nothing processed:
//!   status 400, 401, 403, 404, 405, 413, 415 or 422 **and** the API's own error answer, a JSON
//!   object (`content-type: application/json`) with a non-empty string `error`, as the API (and
//!   the sandbox acquirer) sends it. Its text is the acquirer's, kept for logs and the admin API.
//! - [`AcquirerError::Unknown`]: everything else after the request may have gone out — a timeout,
//!   a reset, any 5xx, any other 1xx–4xx (202, 3xx, 408, 409, 429…), a refusal status without
//!   the API's error body (a proxy's or load balancer's page), a 200 whose body is not the
//!   expected JSON, and any answer longer than `answer_bytes_max` (not read on). The outcome is
//!   unknown and only an inquiry resolves it: guessing "declined" could fail a payment the acquirer
//!   made.
//!
//! Only `200` with the expected JSON is an answer. Every answer is read through a length limit, so
//! a broken or hostile endpoint cannot fill the bridge's memory; the whole call (connection,
//! headers and body) is bounded by the call's timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::wire::*;

/// How many bytes of an answer are read when the configuration does not say.
pub const ANSWER_BYTES_MAX_DEFAULT: usize = 64 * 1024;

/// Statuses that, with the API's error body, are the acquirer refusing the request outright.
/// 408, 409, 429 and the like are absent on purpose: the instruction may exist or be retried.
const REFUSALS: [u16; 8] = [400, 401, 403, 404, 405, 413, 415, 422];

/// A call to an acquirer.
#[derive(Debug, Clone)]
pub enum AcquirerRequest {
    Lookup(LookupRequest),
    Send(Instruction),
    Inquire(String),
    Reverse(String),
}

/// Its answer.
#[derive(Debug, Clone)]
pub enum AcquirerResponse {
    Lookup(LookupAnswer),
    Instruction(InstructionAnswer),
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquirerError {
    #[error("acquirer not reached, nothing sent: {0}")]
    NotSent(String),
    #[error("acquirer outcome unknown: {0}")]
    Unknown(String),
    /// The acquirer's API refused the request explicitly (see the module doc); nothing was
    /// processed. `message` is the acquirer's own text: for logs and the admin API, not partners.
    #[error("acquirer refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
}

/// A client for one acquirer.
#[derive(Clone)]
pub struct AcquirerClient {
    id: Arc<str>,
    base: Arc<str>,
    timeout: Duration,
    /// Longest answer read; see [`AcquirerClient::with_answer_bytes_max`].
    answer_bytes_max: usize,
    client: crate::https::HttpsClient,
}

impl std::fmt::Debug for AcquirerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquirerClient").field("id", &self.id).field("base", &self.base).finish()
    }
}

impl AcquirerClient {
    /// `base` is the API's base URL (`https://host:port/prefix`); `tls` carries the bridge's client
    /// certificate and the acquirer's CA; `connect_timeout` bounds TCP + TLS, `timeout` the whole
    /// call. Answers are read up to [`ANSWER_BYTES_MAX_DEFAULT`] bytes.
    pub fn new(
        id: &str,
        base: &str,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let client = crate::https::client(tls, connect_timeout);
        AcquirerClient {
            id: id.into(),
            base: base.trim_end_matches('/').into(),
            timeout,
            answer_bytes_max: ANSWER_BYTES_MAX_DEFAULT,
            client,
        }
    }

    /// Reads at most `bytes` of any answer; a longer one makes the outcome unknown.
    pub fn with_answer_bytes_max(mut self, bytes: usize) -> Self {
        self.answer_bytes_max = bytes;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AcquirerError> {
        let uri = format!("{}{}", self.base, path);
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| AcquirerError::NotSent(format!("bad request {uri}: {e}")))?;
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    AcquirerError::NotSent(format!("{}: {e}", self.id))
                } else {
                    AcquirerError::Unknown(format!("{}: {e}", self.id))
                }
            })?;
            let status = resp.status();
            let json = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
            let bytes =
                read_limited(resp.into_body(), self.answer_bytes_max).await.map_err(|e| {
                    AcquirerError::Unknown(format!("{}: answered {status}; {e}", self.id))
                })?;
            classify(&self.id, status, json, &bytes)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(AcquirerError::Unknown(format!(
                "{}: no answer within {} ms",
                self.id,
                self.timeout.as_millis()
            ))),
        }
    }

    /// Performs one call.
    pub async fn execute(&self, req: AcquirerRequest) -> Result<AcquirerResponse, AcquirerError> {
        let json = |v: &dyn erased::Json| v.to_vec();
        match req {
            AcquirerRequest::Lookup(l) => self
                .call(Method::POST, "/v1/codes/lookup", Some(json(&l)))
                .await
                .map(AcquirerResponse::Lookup),
            AcquirerRequest::Send(i) => self
                .call(Method::POST, "/v1/instructions", Some(json(&i)))
                .await
                .map(AcquirerResponse::Instruction),
            AcquirerRequest::Inquire(id) => self
                .call(Method::GET, &format!("/v1/instructions/{id}"), None)
                .await
                .map(AcquirerResponse::Instruction),
            AcquirerRequest::Reverse(id) => self
                .call(Method::POST, &format!("/v1/instructions/{id}/reversal"), None)
                .await
                .map(AcquirerResponse::Instruction),
        }
    }
}

/// Why an answer's body was not read to its end.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("answer longer than {0} bytes, not read")]
    TooLong(usize),
    #[error("reading the answer: {0}")]
    Broken(String),
}

/// Reads `body` whole, unless it is (or says it is) longer than `max` bytes: then it stops there.
async fn read_limited<B>(body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A declared length over the limit is refused before a byte is read.
    if body.size_hint().lower() > u64::try_from(max).unwrap_or(u64::MAX) {
        return Err(ReadError::TooLong(max));
    }
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ReadError::TooLong(max)),
        Err(e) => Err(ReadError::Broken(e.to_string())),
    }
}

/// The API's error answer: `{"error": "<why>"}` (other members are allowed and ignored).
#[derive(serde::Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// Turns a read answer into the call's result; see the module doc for the rules.
fn classify<T: DeserializeOwned>(
    id: &str,
    status: StatusCode,
    json: bool,
    body: &[u8],
) -> Result<T, AcquirerError> {
    if status == StatusCode::OK {
        return serde_json::from_slice(body)
            .map_err(|e| AcquirerError::Unknown(format!("{id}: unreadable answer: {e}")));
    }
    if REFUSALS.contains(&status.as_u16()) && json {
        if let Ok(ErrorAnswer { error }) = serde_json::from_slice(body) {
            if !error.trim().is_empty() {
                return Err(AcquirerError::Rejected {
                    status: status.as_u16(),
                    message: error.chars().take(200).collect(),
                });
            }
        }
    }
    Err(AcquirerError::Unknown(format!("{id}: answered {status}, not an explicit refusal")))
}

mod erased {
    /// Serializes a request body; JSON of plain data cannot fail.
    pub trait Json {
        fn to_vec(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("JSON of plain data")
        }
    }
}

impl tower::Service<AcquirerRequest> for AcquirerClient {
    type Response = AcquirerResponse;
    type Error = AcquirerError;
    type Future = Pin<Box<dyn Future<Output = Result<AcquirerResponse, AcquirerError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: AcquirerRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.execute(req).await })
    }
}
