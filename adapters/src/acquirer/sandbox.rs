//! The sandbox acquirer: a real HTTPS server (mTLS) for the acquirer API in [`super::wire`], with
//! deterministic behaviours so tests and demos reach every branch. It records every instruction it
//! receives, so tests can prove "exactly one instruction".
//!
//! Behaviour is picked by the fen part of the instruction's CNY amount (`amount % 100`):
//!
//! | fen | behaviour |
//! |---|---|
//! | `51` | declined |
//! | `52` | approved, but the answer comes only after `slow_ms` (past the bridge's timeout) |
//! | `53` | approved, then the connection hangs with no answer |
//! | `54` | `500 Internal Server Error`, nothing processed |
//! | `55` | connection reset before anything is processed |
//! | `56` | answered `PROCESSING` and left undecided; the first reversal is acknowledged, but the approval completes behind it (an approval that races a reversal); a second reversal sticks |
//! | anything else | approved at once |
//!
//! A `POST /v1/instructions` repeated with the same `instruction_id` gets the recorded outcome
//! (idempotency), but is still counted as received. Lookups answer a deterministic merchant for
//! any URL code; order codes (`bax…`, `pr=…`) carry CNY 88.00.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use qrbridge_fx::{Amount, Currency};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::wire::*;
use crate::https::{self, Conn, Reset, ServeLimits};

/// Tunables of the sandbox.
#[derive(Debug, Clone, Copy)]
pub struct SandboxConfig {
    /// How late the `52` behaviour answers.
    pub slow_ms: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { slow_ms: 30_000 }
    }
}

#[derive(Debug, Default)]
struct State {
    outcomes: HashMap<String, InstructionAnswer>,
    /// Every instruction id received, in order, repeats included.
    received: Vec<String>,
    reversals: Vec<String>,
    /// `56` instructions whose approval will land behind their first reversal.
    racing: std::collections::HashSet<String>,
    /// The amount of each instruction processed, as first received.
    amounts: HashMap<String, Amount>,
}

/// A running sandbox acquirer.
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Starts serving on `listener` with `tls` (which should require client certificates).
    pub fn start(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        config: SandboxConfig,
    ) -> std::io::Result<Sandbox> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = watch::channel(false);
        let st = state.clone();
        // The bridge is its only client: one address may use every slot. Idle connections are
        // kept longer than the bridge's pool keeps them, so the pool never reuses one that the
        // sandbox is closing.
        let limits = ServeLimits {
            connections_max: 1024,
            connections_per_ip_max: 1024,
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..ServeLimits::default()
        };
        let task = tokio::spawn(https::serve(listener, tls, limits, rx, move |req, conn| {
            handle(req, conn, st.clone(), config)
        }));
        Ok(Sandbox { addr, state, shutdown: tx, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many times the instruction with this id was received.
    pub fn received(&self, instruction_id: &str) -> usize {
        self.lock().received.iter().filter(|r| *r == instruction_id).count()
    }

    /// Every instruction id received, repeats included.
    pub fn all_received(&self) -> Vec<String> {
        self.lock().received.clone()
    }

    /// Ids reversed, in order.
    pub fn reversals(&self) -> Vec<String> {
        self.lock().reversals.clone()
    }

    /// The instruction's standing, as the sandbox records it.
    pub fn status(&self, instruction_id: &str) -> Option<InstructionStatus> {
        self.lock().outcomes.get(instruction_id).map(|o| o.status)
    }

    /// The sandbox's own books: every instruction it processed, with its amount and standing,
    /// by id. What an acquirer's daily file is made from.
    pub fn instructions(&self) -> Vec<(String, Amount, InstructionStatus)> {
        let st = self.lock();
        let mut out: Vec<_> = st
            .amounts
            .iter()
            .filter_map(|(id, a)| st.outcomes.get(id).map(|o| (id.clone(), *a, o.status)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops accepting and waits for open connections to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Result<Response<Full<Bytes>>, Reset> {
    let bytes = serde_json::to_vec(body).expect("JSON of plain data");
    Ok(Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response"))
}

fn error(status: StatusCode, message: &str) -> Result<Response<Full<Bytes>>, Reset> {
    json(status, &serde_json::json!({ "error": message }))
}

async fn handle(
    req: hyper::Request<Incoming>,
    _conn: Arc<Conn>,
    state: Arc<Mutex<State>>,
    config: SandboxConfig,
) -> Result<Response<Full<Bytes>>, Reset> {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, 64 * 1024).collect().await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large or unreadable");
    };
    let body = body.to_bytes();
    let path = parts.uri.path().to_owned();
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["v1", "codes", "lookup"]) => {
            let Ok(l) = serde_json::from_slice::<LookupRequest>(&body) else {
                return error(StatusCode::BAD_REQUEST, "bad lookup");
            };
            json(StatusCode::OK, &lookup(&l))
        }
        (&Method::POST, ["v1", "instructions"]) => {
            let Ok(ins) = serde_json::from_slice::<Instruction>(&body) else {
                return error(StatusCode::BAD_REQUEST, "bad instruction");
            };
            instruct(ins, &state, config).await
        }
        (&Method::GET, ["v1", "instructions", id]) => {
            let answer = lock().outcomes.get(*id).cloned().unwrap_or(InstructionAnswer {
                instruction_id: (*id).to_owned(),
                status: InstructionStatus::NotFound,
                acquirer_ref: None,
                reason: None,
            });
            json(StatusCode::OK, &answer)
        }
        (&Method::POST, ["v1", "instructions", id, "reversal"]) => {
            let mut st = lock();
            st.reversals.push((*id).to_owned());
            if st.racing.remove(*id) {
                // The reversal is acknowledged, and the approval lands right behind it.
                let n = st.outcomes.len() + 1;
                st.outcomes.insert(
                    (*id).to_owned(),
                    InstructionAnswer {
                        instruction_id: (*id).to_owned(),
                        status: InstructionStatus::Approved,
                        acquirer_ref: Some(format!("SBX{n:08}")),
                        reason: None,
                    },
                );
                return json(
                    StatusCode::OK,
                    &InstructionAnswer {
                        instruction_id: (*id).to_owned(),
                        status: InstructionStatus::Reversed,
                        acquirer_ref: None,
                        reason: None,
                    },
                );
            }
            let entry = st.outcomes.entry((*id).to_owned()).or_insert_with(|| InstructionAnswer {
                instruction_id: (*id).to_owned(),
                status: InstructionStatus::Reversed,
                acquirer_ref: None,
                reason: None,
            });
            entry.status = InstructionStatus::Reversed;
            let answer = entry.clone();
            drop(st);
            json(StatusCode::OK, &answer)
        }
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    }
}

async fn instruct(
    ins: Instruction,
    state: &Arc<Mutex<State>>,
    config: SandboxConfig,
) -> Result<Response<Full<Bytes>>, Reset> {
    let fen = ins.amount.minor() % 100;
    let answer = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.received.push(ins.instruction_id.clone());
        if let Some(done) = st.outcomes.get(&ins.instruction_id) {
            // Idempotent: the recorded outcome, whatever the behaviour.
            let done = done.clone();
            drop(st);
            return json(StatusCode::OK, &done);
        }
        match fen {
            54 => return error(StatusCode::INTERNAL_SERVER_ERROR, "sandbox: simulated failure"),
            55 => return Err(Reset),
            _ => {}
        }
        st.amounts.insert(ins.instruction_id.clone(), ins.amount);
        let answer = if fen == 56 {
            st.racing.insert(ins.instruction_id.clone());
            InstructionAnswer {
                instruction_id: ins.instruction_id.clone(),
                status: InstructionStatus::Processing,
                acquirer_ref: None,
                reason: None,
            }
        } else if fen == 51 {
            InstructionAnswer {
                instruction_id: ins.instruction_id.clone(),
                status: InstructionStatus::Declined,
                acquirer_ref: None,
                reason: Some("sandbox: declined by rule (amount ends in .51)".into()),
            }
        } else {
            InstructionAnswer {
                instruction_id: ins.instruction_id.clone(),
                status: InstructionStatus::Approved,
                acquirer_ref: Some(format!("SBX{:08}", st.outcomes.len() + 1)),
                reason: None,
            }
        };
        st.outcomes.insert(ins.instruction_id.clone(), answer.clone());
        answer
    };
    match fen {
        52 => tokio::time::sleep(Duration::from_millis(config.slow_ms)).await,
        53 => std::future::pending::<()>().await,
        _ => {}
    }
    json(StatusCode::OK, &answer)
}

fn lookup(l: &LookupRequest) -> LookupAnswer {
    let token: String = l.code.rsplit(['/', '=']).next().unwrap_or("").chars().take(12).collect();
    let lower = l.code.to_ascii_lowercase();
    let order = lower.contains("qr.alipay.com/bax") || lower.contains("pr=");
    LookupAnswer {
        merchant_id: format!("SBX-{}", token.to_ascii_uppercase()),
        name: Some(format!("Sandbox Merchant {}", token.to_ascii_uppercase())),
        city: Some("Handan".into()),
        mcc: Some("5812".into()),
        amount: order.then(|| Amount::from_minor(Currency::CNY, 8_800).expect("in range")),
    }
}
