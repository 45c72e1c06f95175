//! The partner API over HTTP: the tower stack around the handlers, and the handlers.
//!
//! Outside in: request id, tracing span and the body's deadline ([`RequestId`]) → errors to API
//! answers (the one place, via [`rescue`]) → request timeout → caller authentication → per-caller
//! rate limit → admission: the caller's own share of the concurrency limit, then the listener's
//! ([`Admit`]) → routes. Admission comes after authentication so that one caller's requests can
//! use only its own share; nothing is limited in `poll_ready`, so a refused request holds nothing.
//! Bodies are read where the route needs them, at most `body_bytes_max` bytes and by the body's
//! deadline (`body_read_timeout`), so a slow sender holds its share only briefly.
//!
//! An answer given before the body was read (a refusal, 404…) would leave unread bytes on an
//! HTTP/1.1 connection: the rate limit reads a small body first so the connection stays usable,
//! a body over the size limit is read to its end (and dropped) before its 413, and any other such
//! answer says `connection: close` so the client does not reuse it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use qrbridge_adapters::https::Conn;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tracing::Instrument;

use crate::api::{PaymentAnswer, QuoteAnswer, RefundAnswer, RefundList};
use crate::error::ApiError;
use crate::payments::engine::Engine;
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

pub use crate::api::{json_response, Resp};
pub type Req = Request<Incoming>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Who a request comes from (a partner, an acquirer, an admin), set by the authentication layer.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<str>);

/// Limits of a listener's stack.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub body_bytes_max: u64,
    /// Requests under way at once on the listener; more are shed (503 OVERLOADED).
    pub concurrency_max: usize,
    /// Requests one caller may have under way at once, by caller id; a caller not named here
    /// gets an equal share of `concurrency_max` among the listener's callers.
    pub caller_concurrency_max: HashMap<String, usize>,
    pub request_timeout: Duration,
    /// A request's body must have arrived this long after its head.
    pub body_read_timeout: Duration,
    /// The listener's rate limiters and concurrency permits, kept across the services a reload
    /// makes ([`Admission`]).
    pub admission: Admission,
}

/// One listener's rate limiters (per caller) and concurrency permits (per caller, and the
/// listener's): the service a reload makes takes over each one whose setting did not change, so
/// a reload hands out no fresh burst and no extra permits while requests on the old service are
/// still under way.
#[derive(Clone, Default)]
pub struct Admission(Arc<std::sync::Mutex<AdmissionState>>);

#[derive(Default)]
struct AdmissionState {
    limiters: HashMap<String, ((u32, u32), Arc<DefaultDirectRateLimiter>)>,
    shares: HashMap<String, (usize, Arc<Semaphore>)>,
    listener: Option<(usize, Arc<Semaphore>)>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

impl Admission {
    /// The limiters, shares and listener permits for these settings: the ones held where the
    /// setting is unchanged, new ones otherwise; callers no longer named are forgotten.
    #[allow(clippy::type_complexity)]
    fn take(
        &self,
        rates: &HashMap<String, (u32, u32)>,
        shares: &HashMap<String, usize>,
        listener: usize,
    ) -> (
        HashMap<String, Arc<DefaultDirectRateLimiter>>,
        HashMap<String, Arc<Semaphore>>,
        Arc<Semaphore>,
    ) {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.limiters.retain(|id, (held, _)| rates.get(id) == Some(held));
        st.shares.retain(|id, (held, _)| shares.get(id) == Some(held));
        let mut limiters = HashMap::new();
        for (id, &(per_s, burst)) in rates {
            let (Some(per_s), Some(burst)) =
                (std::num::NonZeroU32::new(per_s), std::num::NonZeroU32::new(burst.max(per_s)))
            else {
                continue;
            };
            let (_, l) = st.limiters.entry(id.clone()).or_insert_with(|| {
                let quota = Quota::per_second(per_s).allow_burst(burst);
                ((per_s.get(), burst.get()), Arc::new(RateLimiter::direct(quota)))
            });
            limiters.insert(id.clone(), l.clone());
        }
        let shares = shares
            .iter()
            .map(|(id, &n)| {
                let (_, s) =
                    st.shares.entry(id.clone()).or_insert_with(|| (n, Arc::new(Semaphore::new(n))));
                (id.clone(), s.clone())
            })
            .collect();
        let listener = match &st.listener {
            Some((n, s)) if *n == listener => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(listener));
                st.listener = Some((listener, s.clone()));
                s
            }
        };
        (limiters, shares, listener)
    }
}

/// Per-partner rate: sustained per second and burst.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_s: u32,
    pub burst: u32,
}

/// What the stack knows about a request's body: its deadline and size limit, and whether it has
/// been read to its end (set by [`read_body`]).
#[derive(Debug, Clone)]
pub struct BodyState {
    deadline: tokio::time::Instant,
    timeout: Duration,
    read: Arc<AtomicBool>,
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
/// get `refused`), each limited to its `rates` and its share of the concurrency limit.
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
    let rates: HashMap<String, (u32, u32)> =
        rates.into_iter().map(|(id, r)| (id, (r.per_s, r.burst))).collect();
    let callers = directory.ids().count().max(1);
    let share = (limits.concurrency_max / callers).max(1);
    let shares: HashMap<String, usize> = directory
        .ids()
        .map(|id| {
            let n = limits.caller_concurrency_max.get(id).copied().unwrap_or(share).max(1);
            (id.to_owned(), n)
        })
        .collect();
    let (limiters, shares, listener) =
        limits.admission.take(&rates, &shares, limits.concurrency_max.max(1));
    let (limiters, shares) = (Arc::new(limiters), Arc::new(shares));
    let body_max = limits.body_bytes_max;
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
        .timeout(limits.request_timeout)
        .layer(tower::layer::layer_fn(move |inner| {
            let directory = directory.clone();
            let refused = refused.clone();
            Guard {
                inner,
                // The certificate will not change on this connection: no point reading the body.
                drain_max: None,
                check: move |req: &mut Req| authenticate(&directory, &refused, req),
            }
        }))
        .layer(tower::layer::layer_fn(move |inner| {
            let limiters = limiters.clone();
            Guard {
                inner,
                // A client at its rate keeps its connection: a small body is read first.
                drain_max: Some(body_max),
                check: move |req: &mut Req| rate_limit(&limiters, req),
            }
        }))
        .layer(tower::layer::layer_fn(move |inner| Admit {
            inner,
            listener: listener.clone(),
            shares: shares.clone(),
        }))
        .service(routes);
    BoxCloneSyncService::new(RequestId { inner, body_read_timeout: limits.body_read_timeout })
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
/// echoes the id in the answer, and sets the body's deadline. An HTTP/1 answer to a request whose
/// body was not read to its end says `connection: close`: the unread bytes make the connection
/// unusable, and the client must know before it sends another request on it.
#[derive(Clone)]
struct RequestId<S> {
    inner: S,
    body_read_timeout: Duration,
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

    fn call(&mut self, mut req: Req) -> Self::Future {
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| crate::model::new_id("req"));
        let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path(), caller = tracing::field::Empty);
        let body = BodyState {
            deadline: tokio::time::Instant::now() + self.body_read_timeout,
            timeout: self.body_read_timeout,
            read: Arc::new(AtomicBool::new(false)),
        };
        let unread_closes = req.version() < http::Version::HTTP_2 && !req.body().is_end_stream();
        let read = body.read.clone();
        req.extensions_mut().insert(body);
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut resp = fut.await?;
                if unread_closes && !read.load(Ordering::Acquire) {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
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
/// returns `Some(answer)` to refuse, `None` to pass the request on (possibly amended). With
/// `drain_max`, a refused request's body (up to that many bytes, by its deadline) is read before
/// the answer, so an HTTP/1.1 connection stays usable.
#[derive(Clone)]
struct Guard<S, F> {
    inner: S,
    drain_max: Option<u64>,
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
        match ((self.check)(&mut req), self.drain_max) {
            (Some(answer), Some(max)) => Box::pin(async move {
                drain_body(req, max).await;
                Ok(answer)
            }),
            (Some(answer), None) => Box::pin(async { Ok(answer) }),
            (None, _) => Box::pin(self.inner.call(req)),
        }
    }
}

/// Admission: a request goes on only with a place in its caller's share and one in the
/// listener's limit, taken at once or not at all (503 OVERLOADED, `retry-after`), and held until
/// its answer. A caller sending slowly or too much fills only its own share.
struct Admit<S> {
    inner: S,
    listener: Arc<Semaphore>,
    shares: Arc<HashMap<String, Arc<Semaphore>>>,
}

impl<S: Clone> Clone for Admit<S> {
    fn clone(&self) -> Self {
        Admit {
            inner: self.inner.clone(),
            listener: self.listener.clone(),
            shares: self.shares.clone(),
        }
    }
}

impl<S> Service<Req> for Admit<S>
where
    S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFuture<Result<Resp, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let caller = req.extensions().get::<Caller>().map(|c| c.0.clone());
        let own: Option<OwnedSemaphorePermit> =
            match caller.as_deref().and_then(|c| self.shares.get(c)) {
                Some(share) => match share.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        tracing::debug!("the caller's share of concurrent requests is in use");
                        return Box::pin(async { Ok(ApiError::Overloaded.response()) });
                    }
                },
                None => None,
            };
        let Ok(listener) = self.listener.clone().try_acquire_owned() else {
            tracing::debug!("the listener's concurrent requests are all in use");
            return Box::pin(async { Ok(ApiError::Overloaded.response()) });
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let answer = fut.await;
            drop((own, listener));
            answer
        })
    }
}

/// Resolves the client certificate to a caller (once per connection) and marks the request with
/// it, or refuses the request with `refused`.
fn authenticate(directory: &Directory, refused: &ApiError, req: &mut Req) -> Option<Resp> {
    let partner = req.extensions().get::<Arc<Conn>>().and_then(|conn| {
        let known = conn.identity.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match known {
            Some((generation, id)) if generation == directory.generation() => id,
            // First request of the connection, or the directory changed (a reload): resolved
            // again, with the CRLs in force now (outside the lock: streams of the connection
            // do not wait on each other's verification).
            _ => {
                let id = PeerCert::from_chain(&conn.peer_certs)
                    .and_then(|peer| directory.resolve(&peer).map(str::to_owned));
                *conn.identity.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((directory.generation(), id.clone()));
                id
            }
        }
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
fn rate_limit(
    limiters: &HashMap<String, Arc<DefaultDirectRateLimiter>>,
    req: &mut Req,
) -> Option<Resp> {
    let limited = req
        .extensions()
        .get::<Caller>()
        .and_then(|p| limiters.get(&*p.0))
        .is_some_and(|l| l.check().is_err());
    limited.then(|| ApiError::RateLimited.response())
}

/// Reads and drops a body of at most `max` bytes by the request's body deadline; a larger or
/// slower one is left unread (and the answer will say `connection: close`).
async fn drain_body(req: Req, max: u64) {
    let state = req.extensions().get::<BodyState>().cloned();
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return;
    }
    let body = Limited::new(req.into_body(), usize::try_from(max).unwrap_or(usize::MAX));
    let read = match &state {
        Some(s) => tokio::time::timeout_at(s.deadline, body.collect()).await.ok(),
        None => Some(body.collect().await),
    };
    if let (Some(Ok(_)), Some(s)) = (read, state) {
        s.read.store(true, Ordering::Release);
    }
}

/// The whole body, at most `max` bytes (`PAYLOAD_TOO_LARGE` beyond), by the request's body
/// deadline (`INVALID_REQUEST` after it).
///
/// A body over `max` is still read to its end (and dropped) by that deadline before the 413 is
/// answered: closing a connection with unread bytes makes the kernel reset it, and the client
/// then gets the reset instead of the answer. Read to its end, the body leaves the connection
/// usable; a longer one gets `connection: close` (see [`RequestId`]).
pub async fn read_body(req: Req, max: u64) -> Result<Bytes, ApiError> {
    let state = req.extensions().get::<BodyState>().cloned();
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    let mut kept = Vec::new();
    let mut over = declared.is_some_and(|n| n > max);
    let read = read_frames(&mut body, max, &mut kept, &mut over);
    let ended = match &state {
        Some(s) => tokio::time::timeout_at(s.deadline, read).await.ok(),
        None => Some(read.await),
    };
    match ended {
        Some(Ok(())) => {
            if let Some(s) = state {
                s.read.store(true, Ordering::Release);
            }
            if over {
                Err(ApiError::PayloadTooLarge(max))
            } else {
                Ok(Bytes::from(kept))
            }
        }
        Some(Err(e)) => Err(ApiError::InvalidRequest(format!("the body could not be read: {e}"))),
        None if over => Err(ApiError::PayloadTooLarge(max)),
        None => Err(ApiError::InvalidRequest(format!(
            "the body did not arrive within {} ms",
            state.map_or(0, |s| s.timeout.as_millis())
        ))),
    }
}

/// Reads `body` to its end, keeping it in `kept` while it fits in `max` bytes; past that, sets
/// `over` and drops what comes.
async fn read_frames(
    body: &mut Incoming,
    max: u64,
    kept: &mut Vec<u8>,
    over: &mut bool,
) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        if !*over && (kept.len() + data.len()) as u64 <= max {
            kept.extend_from_slice(&data);
        } else if !*over {
            *over = true;
            *kept = Vec::new();
        }
    }
    Ok(())
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
            allow_any(&method, &[Method::GET, Method::POST])?;
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

/// The path serves `want` only: any other method is 405, `allow: <want>`.
pub fn allow(method: &Method, want: &Method) -> Result<(), ApiError> {
    allow_any(method, std::slice::from_ref(want))
}

/// The path serves the methods `wants`: any other method is 405 with an `allow` header naming
/// them all (RFC 9110 §15.5.6).
pub fn allow_any(method: &Method, wants: &[Method]) -> Result<(), ApiError> {
    if wants.contains(method) {
        Ok(())
    } else {
        let names: Vec<&str> = wants.iter().map(Method::as_str).collect();
        Err(ApiError::MethodNotAllowed(names.join(", ")))
    }
}

/// The template among `routes` that `path` matches (`{name}` stands for one segment), whatever
/// the method; `other` when none does. A metric's label: a path's ids never become labels.
pub fn route_template(routes: &[(&str, &'static str)], path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').collect();
    routes
        .iter()
        .map(|(_, template)| *template)
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
        })
        .unwrap_or("other")
}

/// [`serve_request`], counted in the metrics by `listener` and route template.
pub async fn serve_counted(
    listener: &'static str,
    routes: &'static [(&'static str, &'static str)],
    svc: BoxCloneSyncService<Req, Resp, Infallible>,
    req: Req,
    conn: Arc<Conn>,
) -> Result<Resp, qrbridge_adapters::https::Reset> {
    let route = route_template(routes, req.uri().path());
    let started = tokio::time::Instant::now();
    let answer = serve_request(svc, req, conn).await;
    if let Ok(resp) = &answer {
        crate::ops::http_request(listener, route, resp.status().as_u16(), started.elapsed());
    }
    answer
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
