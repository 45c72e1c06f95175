//! The partner API over HTTP: the tower stack around the handlers, and the handlers.
//!
//! Outside in: request id and tracing span → errors to API answers (the one place, via
//! [`rescue`]) → load shedding → concurrency limit → request timeout → partner authentication →
//! per-partner rate limit → routes. The body size limit applies where bodies are read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use qrbridge_adapters::https::Conn;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tracing::Instrument;

use crate::api::{PaymentAnswer, QuoteAnswer, RefundAnswer, RefundList};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::store::Store;
use crate::tls::{Directory, PeerCert};

/// Every route the partner API serves, as `(method, path template)`; `docs/openapi.yaml` lists
/// exactly these (a test keeps them in step).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/codes/decode"),
    ("POST", "/v1/quotes"),
    ("POST", "/v1/payments"),
    ("GET", "/v1/payments"),
    ("GET", "/v1/payments/{payment_id}"),
    ("POST", "/v1/payments/{payment_id}/cancel"),
    ("GET", "/v1/payments/{payment_id}/refunds"),
];

/// The response type of every listener.
pub type Resp = Response<Full<Bytes>>;
pub type Req = Request<Incoming>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A JSON answer.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).expect("JSON of plain data");
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

/// Who a request comes from (a partner, an acquirer, an admin), set by the authentication layer.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<str>);

/// Limits of the partner API's stack.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub body_bytes_max: u64,
    pub concurrency_max: usize,
    pub request_timeout: Duration,
}

/// Per-partner rate: sustained per second and burst.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_s: u32,
    pub burst: u32,
}

/// The one place errors become answers: what escaped the handlers (shedding, timeouts, faults)
/// becomes an API error body.
pub fn rescue(e: BoxError) -> Resp {
    let api = if e.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded
    } else if e.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else if let Some(api) = e.downcast_ref::<ApiError>() {
        api.clone()
    } else {
        tracing::error!(error = %e, "request failed");
        ApiError::Internal
    };
    api.response()
}

/// The partner API service, with its whole stack.
pub fn partner_service<S: Store>(
    engine: Arc<Engine<S>>,
    directory: Directory,
    rates: HashMap<String, Rate>,
    limits: HttpLimits,
) -> BoxCloneSyncService<Req, Resp, Infallible> {
    let body_max = limits.body_bytes_max;
    service(directory, ApiError::ClientNotRecognised, rates, limits, move |caller, req| {
        route(engine.clone(), body_max, caller, req)
    })
}

/// A listener's service: `routes` behind the whole stack, callers known by `directory` (others
/// get `refused`), each limited to its `rates`.
pub fn service<R, F>(
    directory: Directory,
    refused: ApiError,
    rates: HashMap<String, Rate>,
    limits: HttpLimits,
    routes: R,
) -> BoxCloneSyncService<Req, Resp, Infallible>
where
    R: Fn(Arc<str>, Req) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Resp, ApiError>> + Send + 'static,
{
    let limiters: Arc<HashMap<String, DefaultDirectRateLimiter>> = Arc::new(
        rates
            .into_iter()
            .filter_map(|(id, r)| {
                let per_s = std::num::NonZeroU32::new(r.per_s)?;
                let burst = std::num::NonZeroU32::new(r.burst.max(r.per_s))?;
                Some((id, RateLimiter::direct(Quota::per_second(per_s).allow_burst(burst))))
            })
            .collect(),
    );
    let routes = tower::service_fn(move |req: Req| {
        let routes = routes.clone();
        async move {
            let answer = match req.extensions().get::<Caller>().map(|c| c.0.clone()) {
                Some(caller) => routes(caller, req).await,
                None => Err(ApiError::Forbidden),
            };
            Ok::<_, BoxError>(answer.unwrap_or_else(|e| e.response()))
        }
    });
    let inner = ServiceBuilder::new()
        .layer(tower::layer::layer_fn(|inner| Rescue { inner, failed: None }))
        .load_shed()
        .concurrency_limit(limits.concurrency_max)
        .timeout(limits.request_timeout)
        .layer(tower::layer::layer_fn(move |inner| {
            let directory = directory.clone();
            let refused = refused.clone();
            Guard { inner, check: move |req: &mut Req| authenticate(&directory, &refused, req) }
        }))
        .layer(tower::layer::layer_fn(move |inner| {
            let limiters = limiters.clone();
            Guard { inner, check: move |req: &mut Req| rate_limit(&limiters, req) }
        }))
        .service(routes);
    BoxCloneSyncService::new(RequestId { inner })
}

/// Turns every error of the stack below into an API answer ([`rescue`]).
struct Rescue<S> {
    inner: S,
    /// An error the inner service's readiness reported, answered on the next call.
    failed: Option<BoxError>,
}

impl<S: Clone> Clone for Rescue<S> {
    fn clone(&self) -> Self {
        Rescue { inner: self.inner.clone(), failed: None }
    }
}

impl<S> Service<Req> for Rescue<S>
where
    S: Service<Req, Response = Resp, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                self.failed = Some(e);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(e) = self.failed.take() {
            return Box::pin(async move { Ok(rescue(e)) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(fut.await.unwrap_or_else(rescue)) })
    }
}

/// Gives each request an id (the caller's `x-request-id` when it is sane) and a tracing span,
/// and echoes the id in the answer.
#[derive(Clone)]
struct RequestId<S> {
    inner: S,
}

impl<S> Service<Req> for RequestId<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| crate::model::new_id("req"));
        let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path(), caller = tracing::field::Empty);
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut resp = fut.await?;
                tracing::info!(status = resp.status().as_u16(), "answered");
                if let Ok(v) = HeaderValue::from_str(&id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

/// A layer that looks at a request before the service below and may answer it itself: `check`
/// returns `Some(answer)` to refuse, `None` to pass the request on (possibly amended).
#[derive(Clone)]
struct Guard<S, F> {
    inner: S,
    check: F,
}

impl<S, F> Service<Req> for Guard<S, F>
where
    S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    F: Fn(&mut Req) -> Option<Resp>,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFuture<Result<Resp, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        match (self.check)(&mut req) {
            Some(answer) => Box::pin(async { Ok(answer) }),
            None => Box::pin(self.inner.call(req)),
        }
    }
}

/// Resolves the client certificate to a caller (once per connection) and marks the request with
/// it, or refuses the request with `refused`.
fn authenticate(directory: &Directory, refused: &ApiError, req: &mut Req) -> Option<Resp> {
    let partner = req.extensions().get::<Arc<Conn>>().and_then(|conn| {
        conn.identity
            .get_or_init(|| {
                let peer = PeerCert::from_chain(&conn.peer_certs)?;
                directory.resolve(&peer).map(str::to_owned)
            })
            .clone()
    });
    let Some(partner) = partner else {
        tracing::warn!("client certificate names no one this listener knows");
        return Some(refused.response());
    };
    tracing::Span::current().record("caller", partner.as_str());
    req.extensions_mut().insert(Caller(partner.into()));
    None
}

/// Refuses a partner's requests past its configured rate.
fn rate_limit(limiters: &HashMap<String, DefaultDirectRateLimiter>, req: &mut Req) -> Option<Resp> {
    let limited = req
        .extensions()
        .get::<Caller>()
        .and_then(|p| limiters.get(&*p.0))
        .is_some_and(|l| l.check().is_err());
    limited.then(|| ApiError::RateLimited.response())
}

/// Reads a JSON body of at most `max` bytes into `T`, naming the field that is wrong.
/// The whole body, at most `max` bytes (`PAYLOAD_TOO_LARGE` beyond).
pub async fn read_body(req: Req, max: u64) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    let body = Limited::new(req.into_body(), usize::try_from(max).unwrap_or(usize::MAX));
    match body.collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge(max)),
        Err(e) => Err(ApiError::InvalidRequest(format!("the body could not be read: {e}"))),
    }
}

/// The body as JSON of type `T`; errors name the field.
pub async fn read_json<T: DeserializeOwned>(req: Req, max: u64) -> Result<T, ApiError> {
    let bytes = read_body(req, max).await?;
    json_body(&bytes)
}

/// `bytes` as JSON of type `T`; errors name the field.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not JSON: {inner}")
        } else if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::InvalidRequest(message)
    })
}

async fn route<S: Store>(
    engine: Arc<Engine<S>>,
    body_max: u64,
    partner: Arc<str>,
    req: Req,
) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match segments.as_slice() {
        ["v1", "codes", "decode"] => {
            allow(&method, &Method::POST)?;
            let body: crate::api::DecodeRequest = read_json(req, body_max).await?;
            Ok(json_response(StatusCode::OK, &engine.decode(&body.code).await?))
        }
        ["v1", "quotes"] => {
            allow(&method, &Method::POST)?;
            let body = read_json(req, body_max).await?;
            let q = engine.quote(&partner, body).await?;
            Ok(json_response(StatusCode::CREATED, &QuoteAnswer::new(&q)))
        }
        ["v1", "payments"] if method == Method::POST => {
            let body = read_json(req, body_max).await?;
            let (p, created) = engine.pay(&partner, body).await?;
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json_response(status, &PaymentAnswer::new(&p)))
        }
        ["v1", "payments"] => {
            allow(&method, &Method::GET)?;
            let query = req.uri().query().unwrap_or("");
            let request_id = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "request_id")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| {
                    ApiError::InvalidRequest("request_id: required query parameter".into())
                })?;
            let p = engine.get_by_request(&partner, &request_id).await?;
            Ok(json_response(StatusCode::OK, &PaymentAnswer::new(&p)))
        }
        ["v1", "payments", id] => {
            allow(&method, &Method::GET)?;
            let p = engine.get(&partner, id).await?;
            Ok(json_response(StatusCode::OK, &PaymentAnswer::new(&p)))
        }
        ["v1", "payments", id, "cancel"] => {
            allow(&method, &Method::POST)?;
            let p = engine.cancel(&partner, id).await?;
            Ok(json_response(StatusCode::OK, &PaymentAnswer::new(&p)))
        }
        ["v1", "payments", id, "refunds"] => {
            allow(&method, &Method::GET)?;
            let (p, refunds) = engine.refunds(&partner, id).await?;
            let list = RefundList {
                payment_id: p.payment_id,
                refunded_amount: p.refunded_wallet,
                refunds: refunds.iter().map(RefundAnswer::new).collect(),
            };
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => Err(ApiError::NotFound),
    }
}

pub fn allow(method: &Method, want: &Method) -> Result<(), ApiError> {
    if method == want {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}

/// Serves one request on the partner listener: the connection goes in as an extension.
pub async fn serve_request(
    svc: BoxCloneSyncService<Req, Resp, Infallible>,
    mut req: Req,
    conn: Arc<Conn>,
) -> Result<Resp, qrbridge_adapters::https::Reset> {
    req.extensions_mut().insert(conn);
    Ok(match svc.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    })
}
