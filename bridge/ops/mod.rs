//! The operators' listener: plain HTTP, on loopback by default (`[ops] listen`), serving
//! `GET /healthz` (the process answers), `GET /readyz` (the store takes writes, the listeners are
//! up, a rate is fresh enough to quote; 503 with the reasons otherwise) and `GET /metrics`
//! (Prometheus text exposition).
//!
//! Metrics are recorded through the `metrics` facade into one Prometheus recorder per process
//! ([`handle`]); their names and labels live here, in the recording functions below, and are
//! listed in docs/metrics.md. Gauges that describe stored state (work in doubt, the outbox, rate
//! ages) are read when `/metrics` is scraped, so they cost nothing between scrapes.

pub mod reload;
pub mod systemd;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::model::Task;
use crate::payments::engine::Engine;
use crate::store::Store;

/// Connections served at once; more wait in the kernel's backlog. Scrapers and probes are few.
const CONNECTIONS_MAX: usize = 64;
/// A client must send its request headers within this (slow-loris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, whatever it is doing: nothing here takes long.
const CONNECTION_MAX_AGE: Duration = Duration::from_secs(10);
/// Each of those reads is given up after this (its gauge keeps its last value).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The store probe of `/readyz` fails when it takes longer than this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// What the lease the probe takes on a shared store is held for.
const PROBE_LEASE_TTL: Duration = Duration::from_secs(5);

/// The process's recorder, installed at the first call: several daemons in one process (tests)
/// share it, so counters add up across them.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        // Latencies in seconds, not money: the float is the exposition format's.
        #[allow(clippy::disallowed_types)]
        let buckets: &[f64] =
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
        let builder = builder.set_buckets(buckets).expect("buckets are not empty");
        // Counts, and flushes that take well under a millisecond, need buckets of their own.
        #[allow(clippy::disallowed_types)]
        let writes: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
        #[allow(clippy::disallowed_types)]
        let flushes: &[f64] = &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        use metrics_exporter_prometheus::Matcher;
        let builder = builder
            .set_buckets_for_metric(Matcher::Full("qrbridge_store_flush_writes".into()), writes)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("qrbridge_store_flush_duration_seconds".into()),
                    flushes,
                )
            })
            .expect("buckets are not empty");
        match builder.install_recorder() {
            Ok(h) => {
                describe();
                h
            }
            Err(e) => {
                // Another recorder is installed (an embedding program's): ours renders nothing.
                tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics stays empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}

const PAYMENTS_TOTAL: &str = "qrbridge_payments_total";
const PAYMENT_DURATION: &str = "qrbridge_payment_duration_seconds";
const ACQUIRER_CALLS_TOTAL: &str = "qrbridge_acquirer_calls_total";
const ACQUIRER_CALL_DURATION: &str = "qrbridge_acquirer_call_duration_seconds";
const WEBHOOK_DELIVERIES_TOTAL: &str = "qrbridge_webhook_deliveries_total";
const PAYMENTS_IN_DOUBT: &str = "qrbridge_payments_in_doubt";
const RESOLVER_BACKLOG: &str = "qrbridge_resolver_backlog";
const OUTBOX_EVENTS: &str = "qrbridge_outbox_events";
const WEBHOOK_PARKED: &str = "qrbridge_webhook_parked";
const RATE_AGE: &str = "qrbridge_rate_age_seconds";
const HTTP_REQUESTS_TOTAL: &str = "qrbridge_http_requests_total";
const HTTP_REQUEST_DURATION: &str = "qrbridge_http_request_duration_seconds";
const RISK_DECISIONS_TOTAL: &str = "qrbridge_risk_decisions_total";
const RISK_FINDINGS_TOTAL: &str = "qrbridge_risk_findings_total";
const RISK_EXPOSURE_USED: &str = "qrbridge_risk_exposure_used_bps";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(PAYMENTS_TOTAL, "Payments reaching a final state");
    describe_histogram!(PAYMENT_DURATION, Unit::Seconds, "Payment creation to final state");
    describe_counter!(ACQUIRER_CALLS_TOTAL, "Calls to acquirers, by how they ended");
    describe_histogram!(ACQUIRER_CALL_DURATION, Unit::Seconds, "Acquirer call latency");
    describe_counter!(WEBHOOK_DELIVERIES_TOTAL, "Webhook delivery attempts, by how they ended");
    describe_gauge!(PAYMENTS_IN_DOUBT, "Payments with resolver work left (read at scrape)");
    describe_gauge!(RESOLVER_BACKLOG, "Resolver work by task (read at scrape)");
    describe_gauge!(OUTBOX_EVENTS, "Webhook events not delivered yet (read at scrape)");
    describe_gauge!(WEBHOOK_PARKED, "Webhook events parked (read at scrape)");
    describe_gauge!(RATE_AGE, Unit::Seconds, "Age of each mid rate held (read at scrape)");
    describe_counter!(HTTP_REQUESTS_TOTAL, "Requests answered, by listener, route and status");
    describe_counter!(
        RISK_DECISIONS_TOTAL,
        "Risk decisions that refused or flagged a payment, by outcome, reason and rule"
    );
    describe_counter!(
        RISK_FINDINGS_TOTAL,
        "Lines written to the daily suspicious.csv files, by monitoring rule"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Request arrival to answer head, by listener and route"
    );
}

/// A risk decision that refused (`outcome="refused"`, `reason` its code) or flagged a payment.
pub fn risk_decision(outcome: &'static str, reason: &'static str, rule: &'static str) {
    metrics::counter!(RISK_DECISIONS_TOTAL, "outcome" => outcome, "reason" => reason, "rule" => rule)
        .increment(1);
}

/// One request answered on `listener` (`partner`, `acquirer`, `admin`): `route` is its template
/// (`/v1/payments/{payment_id}`; `other` for a path no route has), never an id.
pub fn http_request(listener: &'static str, route: &'static str, status: u16, took: Duration) {
    let status = status.to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "listener" => listener, "route" => route, "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "listener" => listener, "route" => route)
        .record(took);
}

/// A payment reached a final state (`SUCCEEDED`, `FAILED`, `CANCELLED`) `took` after its
/// creation.
pub fn payment_final(partner: &str, state: &'static str, took: Duration) {
    metrics::counter!(PAYMENTS_TOTAL, "partner" => partner.to_owned(), "state" => state)
        .increment(1);
    metrics::histogram!(PAYMENT_DURATION, "state" => state).record(took);
}

/// One call to an acquirer: `call` is its kind (`lookup`, `send`, `inquire`, `reverse`),
/// `outcome` how it ended (`answered`, `rejected`, `not_sent`, `unknown`).
pub fn acquirer_call(acquirer: &str, call: &'static str, outcome: &'static str, took: Duration) {
    let acquirer = acquirer.to_owned();
    metrics::counter!(ACQUIRER_CALLS_TOTAL, "acquirer" => acquirer.clone(), "call" => call, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(ACQUIRER_CALL_DURATION, "acquirer" => acquirer, "call" => call)
        .record(took);
}

/// One webhook delivery attempt: `outcome` is `delivered` or `failed` (retried later).
pub fn webhook_delivery(partner: &str, outcome: &'static str) {
    metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "partner" => partner.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// What the ops listener reads.
pub struct Ops<S> {
    pub engine: Arc<Engine<S>>,
    /// This node's id: the store probe's lease is named after it.
    pub node: String,
    /// `/readyz` wants a rate younger than this.
    pub rates_stale_after: chrono::Duration,
    /// Set once the partner, acquirer and admin listeners are bound and serving.
    pub listeners_up: Arc<AtomicBool>,
    /// The last rendering of `/metrics` and when it was finished; one rendering at a time.
    pub rendered: tokio::sync::Mutex<Option<(tokio::time::Instant, String)>>,
}

/// `/readyz`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Each starts with what it is about (`store:`, `listeners:`, `rates:`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl<S: Store> Ops<S> {
    /// Checks what readiness needs; the store with a real write (a lease on a shared store, a
    /// flush otherwise) bounded by [`PROBE_TIMEOUT`].
    pub async fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if !self.listeners_up.load(Ordering::Acquire) {
            reasons.push("listeners: not up yet".to_owned());
        }
        let store = self.engine.store();
        let probe = async {
            if store.shared() {
                // A real write, then its row removed again (nothing accumulates).
                let name = format!("ops-probe/{}", self.node);
                if !store.lease(&name, &self.node, PROBE_LEASE_TTL).await? {
                    return Err(crate::store::StoreError::Database(
                        "the probe's lease was refused".into(),
                    ));
                }
                store.release_lease(&name, &self.node).await
            } else {
                store.flush().await
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => reasons.push(format!("store: not taking writes: {e}")),
            Err(_) => reasons.push(format!(
                "store: not taking writes: no answer within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
        let now = self.engine.now();
        let newest = self.engine.with_rates(|book| {
            book.rates().filter(|r| book.is_fresh(r, now)).map(|r| now - r.as_of).min()
        });
        match newest {
            Some(age) if age <= self.rates_stale_after => {}
            Some(age) => reasons.push(format!(
                "rates: none fresh enough to quote (the newest is {} s old, the limit {} s)",
                age.num_seconds(),
                self.rates_stale_after.num_seconds()
            )),
            None => reasons.push("rates: none fresh enough to quote (no fresh rate held)".into()),
        }
        Readiness { ready: reasons.is_empty(), reasons }
    }

    /// Every metric. One rendering at a time: scrapes that arrive while one is under way get
    /// its result, so however many there are, the store serves one set of reads at a time.
    pub async fn render(&self) -> String {
        let asked = tokio::time::Instant::now();
        let mut last = self.rendered.lock().await;
        if let Some((at, text)) = last.as_ref() {
            if *at >= asked {
                return text.clone();
            }
        }
        let text = self.render_now().await;
        *last = Some((tokio::time::Instant::now(), text.clone()));
        text
    }

    /// Sets the gauges read from stored state, then renders every metric.
    async fn render_now(&self) -> String {
        let store = self.engine.store();
        let bounded = |what: &'static str| {
            move |e: tokio::time::error::Elapsed| {
                crate::store::StoreError::Database(format!("{what}: {e}").into())
            }
        };
        // Counts (and the open work's tasks), not records; PostgreSQL reads them in one statement
        // bounded on the server too.
        let backlog = tokio::time::timeout(READ_TIMEOUT, store.backlog())
            .await
            .map_err(bounded("backlog"))
            .and_then(|r| r);
        match backlog {
            Ok(backlog) => {
                let mut by_task = [0u32; 4];
                for task in &backlog.work {
                    by_task[task_index(*task)] += 1;
                }
                // One work item per payment: the payments the bridge is not done with.
                metrics::gauge!(PAYMENTS_IN_DOUBT).set(clamp(backlog.work.len()));
                for task in [Task::Inquire, Task::Reverse, Task::Verify, Task::Attention] {
                    metrics::gauge!(RESOLVER_BACKLOG, "task" => task_label(task))
                        .set(by_task[task_index(task)]);
                }
                metrics::gauge!(OUTBOX_EVENTS).set(clamp(backlog.outbox));
                metrics::gauge!(WEBHOOK_PARKED).set(clamp(backlog.parked));
            }
            Err(e) => tracing::error!(error = %e, "metrics: the backlog could not be read"),
        }
        let h = handle();
        h.run_upkeep();
        let mut text = h.render();
        // Rate ages are written from the book as it is now, not kept as gauges: a rate replaced
        // by another source's must not leave a series behind that looks fresh. A rate set by an
        // admin is `source="admin"` (names stay out of labels).
        let now = self.engine.now();
        let ages: Vec<String> = self.engine.with_rates(|book| {
            book.rates()
                .map(|r| {
                    let age = (now - r.as_of).num_seconds().max(0);
                    let source = if r.source.starts_with("admin:") { "admin" } else { &r.source };
                    format!("{RATE_AGE}{{pair=\"{}\",source=\"{}\"}} {age}\n", r.pair, source)
                })
                .collect()
        });
        text.push_str(&format!(
            "# HELP {RATE_AGE} How old each rate held is, by pair and source.\n# TYPE {RATE_AGE} gauge\n"
        ));
        for line in ages {
            text.push_str(&line);
        }
        // Each partner's exposure against its cap (prefunding, funds received and credit line),
        // in basis points of the cap: written from the risk book as it is now.
        text.push_str(&format!(
            "# HELP {RISK_EXPOSURE_USED} Share of each partner's exposure cap in use (owed, in flight and booked), in basis points.\n# TYPE {RISK_EXPOSURE_USED} gauge\n"
        ));
        for e in self.engine.risk().exposures() {
            let Some(cap) = e.cap_minor else { continue };
            let used = i128::from(e.owed_minor)
                + i128::from(e.reserved_minor)
                + i128::from(e.booked_minor);
            let bps = if cap > 0 {
                used.max(0) * 10_000 / i128::from(cap)
            } else if used > 0 {
                1_000_000
            } else {
                0
            };
            text.push_str(&format!(
                "{RISK_EXPOSURE_USED}{{partner=\"{}\",currency=\"{}\"}} {bps}\n",
                e.partner,
                e.currency.code()
            ));
        }
        text
    }
}

fn clamp(n: impl TryInto<u32>) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
}

fn task_index(t: Task) -> usize {
    match t {
        Task::Inquire => 0,
        Task::Reverse => 1,
        Task::Verify => 2,
        Task::Attention => 3,
    }
}

fn task_label(t: Task) -> &'static str {
    match t {
        Task::Inquire => "inquire",
        Task::Reverse => "reverse",
        Task::Verify => "verify",
        Task::Attention => "attention",
    }
}

type Body = Full<Bytes>;

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("JSON of plain data");
    answer(status, "application/json", body)
}

async fn route<S: Store>(ops: &Ops<S>, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method not allowed"}),
        );
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let r = ops.readiness().await;
            let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json(status, &r)
        }
        "/metrics" => {
            answer(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", ops.render().await)
        }
        _ => json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not found"})),
    }
}

/// Binds `addr`; the caller serves it with [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves `listener` until `shutdown` turns true, then lets open connections finish for at most
/// `shutdown_timeout`.
pub async fn serve<S: Store>(
    listener: TcpListener,
    ops: Arc<Ops<S>>,
    mut shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        // A permit before accepting: at the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: pass, and try the next one.
                    tracing::warn!(error = %e, "ops listener: accept failed");
                    continue;
                }
            },
        };
        let ops = ops.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let ops = ops.clone();
            async move { Ok::<_, Infallible>(route(&ops, &req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            // Past its age the connection is dropped: scrapes and probes take milliseconds.
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_MAX_AGE, conn).await {
                tracing::debug!(error = %e, "ops connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("ops listener: connections still open at the shutdown deadline");
    }
}
