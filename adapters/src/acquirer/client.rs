//! The bridge's client for an acquirer: hyper's pooled client over rustls with the bridge's client
//! certificate, behind a `tower::Service`.
//!
//! What matters most is the difference between the two ways a call can fail:
//! - [`AcquirerError::NotSent`]: no connection (refused, TCP or TLS timeout): the instruction never
//!   left the bridge, so the payment can fail as `ACQUIRER_UNAVAILABLE`.
//! - [`AcquirerError::Unknown`]: anything after the request may have gone out — a timeout, a 5xx,
//!   a reset, an answer we cannot read. The outcome is unknown and only an inquiry resolves it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;

use super::wire::*;

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
    #[error("acquirer refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
}

/// A client for one acquirer.
#[derive(Clone)]
pub struct AcquirerClient {
    id: Arc<str>,
    base: Arc<str>,
    timeout: Duration,
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
    /// call.
    pub fn new(
        id: &str,
        base: &str,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let client = crate::https::client(tls, connect_timeout);
        AcquirerClient { id: id.into(), base: base.trim_end_matches('/').into(), timeout, client }
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
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    AcquirerError::Unknown(format!("{}: reading the answer: {e}", self.id))
                })?
                .to_bytes();
            if status.is_server_error() {
                return Err(AcquirerError::Unknown(format!("{}: answered {status}", self.id)));
            }
            if status != StatusCode::OK {
                return Err(AcquirerError::Rejected {
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                });
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| AcquirerError::Unknown(format!("{}: unreadable answer: {e}", self.id)))
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
