//! A partner's webhook endpoint for tests: HTTPS with mTLS (the bridge's client certificate is
//! required), checks each signature, records every delivery, and answers as told.
//!
//! A request to a path ending in `/stall` is a stalled endpoint instead: it is held unanswered
//! (counted, with a signal) until the test releases it, then answered 503.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use qrbridge::clock::{Clock, SystemClock};
use qrbridge_adapters::https::{self, ServeLimits};
use qrbridge_adapters::webhook::{self, EVENT_ID_HEADER, SIGNATURE_HEADER};
use serde_json::Value;
use tokio::sync::watch;

/// The secret every test partner signs with.
pub const SECRET: &str = "test-webhook-secret-0123456789";

/// How the endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 to everything.
    Ack,
    /// 500 to the first `n` attempts of each event, then 200.
    FailFirst(u32),
    /// 503 to everything.
    FailAll,
}

/// One delivery attempt as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub event_id: String,
    pub kind: String,
    pub payment_id: String,
    pub body: Value,
    pub signature_ok: bool,
    pub header_matches_body: bool,
    pub acked: bool,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    attempts: HashMap<String, u32>,
    received: Vec<Received>,
    stalls: Stalls,
}

/// Requests to the stalling path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stalls {
    /// Held unanswered now.
    pub held: usize,
    /// The most held at once.
    pub held_max: usize,
    /// Received in all.
    pub total: usize,
}

/// One held request; counted out when its handler ends or is dropped (the client gave up).
struct Held {
    state: Arc<Mutex<State>>,
    signal: Arc<watch::Sender<Stalls>>,
}

impl Held {
    fn start(state: &Arc<Mutex<State>>, signal: &Arc<watch::Sender<Stalls>>) -> Held {
        let mut s = state.lock().unwrap();
        s.stalls.held += 1;
        s.stalls.total += 1;
        s.stalls.held_max = s.stalls.held_max.max(s.stalls.held);
        signal.send_replace(s.stalls);
        Held { state: state.clone(), signal: signal.clone() }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.stalls.held -= 1;
        self.signal.send_replace(s.stalls);
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    progress: watch::Sender<usize>,
    stalled: Arc<watch::Sender<Stalls>>,
    release: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
}

impl Receiver {
    /// Serves with `<pki>/server.crt` and accepts clients of `<pki>/ca.crt`.
    pub async fn start(pki: &Path, mode: Mode) -> Receiver {
        let tls = qrbridge::tls::server_config(
            &pki.join("server.crt"),
            &pki.join("server.key"),
            qrbridge::tls::roots(&[&pki.join("ca.crt")]).unwrap(),
            false,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { mode: Some(mode), ..State::default() }));
        let (progress, _) = watch::channel(0usize);
        let stalled = Arc::new(watch::channel(Stalls::default()).0);
        let (release, released) = watch::channel(false);
        let (shutdown, stop) = watch::channel(false);
        let st = state.clone();
        let tx = progress.clone();
        let stalls = stalled.clone();
        let limits = ServeLimits {
            connections_max: 256,
            handshake_timeout: std::time::Duration::from_secs(5),
            ..ServeLimits::default()
        };
        tokio::spawn(https::serve(listener, tls, limits, stop, move |req, _conn| {
            let st = st.clone();
            let tx = tx.clone();
            let stalls = stalls.clone();
            let mut released = released.clone();
            async move {
                if req.uri().path().ends_with("/stall") {
                    let _held = Held::start(&st, &stalls);
                    let _ = released.wait_for(|r| *r).await;
                    return Ok(Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Full::new(Bytes::new()))
                        .unwrap());
                }
                let header = |name: &str| {
                    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
                };
                let (signature, event_header) = (header(SIGNATURE_HEADER), header(EVENT_ID_HEADER));
                let body =
                    req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let now = SystemClock.now().timestamp();
                // Tests move the bridge's clock by days; the freshness check is the partner's
                // own policy, so only the MAC is checked here.
                let signature_ok =
                    webhook::verify(SECRET.as_bytes(), &signature, &body, now, i64::MAX / 4)
                        .is_ok();
                let event_id = json["event_id"].as_str().unwrap_or("").to_owned();
                let mut s = st.lock().unwrap();
                let n = {
                    let n = s.attempts.entry(event_id.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let acked = match s.mode.unwrap_or(Mode::Ack) {
                    Mode::Ack => true,
                    Mode::FailFirst(k) => n > k,
                    Mode::FailAll => false,
                };
                s.received.push(Received {
                    header_matches_body: event_header == event_id,
                    event_id,
                    kind: json["type"].as_str().unwrap_or("").to_owned(),
                    payment_id: json["data"]["payment_id"].as_str().unwrap_or("").to_owned(),
                    body: json,
                    signature_ok,
                    acked,
                });
                let count = s.received.len();
                drop(s);
                tx.send_replace(count);
                let status = if acked { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                Ok(Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
            }
        }));
        Receiver { addr, state, progress, stalled, release, shutdown }
    }

    /// The stalling path's URL: requests to it are held until [`Receiver::release_stalled`].
    pub fn stalling_url(&self) -> String {
        format!("https://{}/hooks/stall", self.addr)
    }

    /// Requests to the stalling path so far.
    pub fn stalls(&self) -> Stalls {
        self.state.lock().unwrap().stalls
    }

    /// Answers every held request (503), and every later one at once.
    pub fn release_stalled(&self) {
        self.release.send_replace(true);
    }

    /// Waits (on the endpoint's signal) until `done` holds of the stalling path's counts; fails
    /// after `limit` as a safety net.
    pub async fn wait_stalls(&self, limit: std::time::Duration, done: impl Fn(Stalls) -> bool) {
        let mut rx = self.stalled.subscribe();
        if tokio::time::timeout(limit, rx.wait_for(|s| done(*s))).await.is_err() {
            panic!("stalled requests not as awaited in {limit:?}: {:?}", self.stalls());
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}/hooks", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Every attempt received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Acknowledged deliveries, in order.
    pub fn acked(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.acked).collect()
    }

    /// Waits (on the endpoint's own signal, never a sleep) until `done` holds of what was
    /// received; fails after `limit` as a safety net.
    pub async fn wait_until(&self, limit: std::time::Duration, done: impl Fn(&[Received]) -> bool) {
        let mut rx = self.progress.subscribe();
        let state = self.state.clone();
        let wait = rx.wait_for(|_| done(&state.lock().unwrap().received));
        if tokio::time::timeout(limit, wait).await.is_err() {
            let got = self.received();
            let acked = got.iter().filter(|r| r.acked).count();
            panic!(
                "webhooks not received in {limit:?}: {} attempts, {acked} acknowledged",
                got.len()
            );
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.release.send_replace(true);
        let _ = self.shutdown.send(true);
    }
}

/// Config for two partners where the first (`partner-demo`) gets the receiver's stalling path:
/// deliveries to it hang (up to a 120 s timeout) until released; 4 deliveries at once in all,
/// 2 per partner.
pub fn stall_first_partner(c: &mut qrbridge_config::Config) {
    let url = c.partners[0].webhook_url.take().expect("a webhook URL");
    c.partners[0].webhook_url = Some(format!("{url}/stall"));
    c.webhooks.timeout_ms = 120_000;
    c.webhooks.concurrency = 4;
    c.webhooks.partner_concurrency = 2;
}
