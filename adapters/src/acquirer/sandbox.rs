//! The sandbox acquirer: a real HTTPS server (mTLS) for the acquirer API in [`super::wire`], with
//! deterministic behaviours so tests and demos reach every branch. It records the instructions it
//! receives (the newest [`SandboxConfig::remember`], in shards with a lock each, so that no
//! payment waits while its books grow), so tests can prove "exactly one instruction".
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

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// About how many instructions the sandbox remembers (their outcomes for repeats and
    /// inquiries, their amounts for its books); past that the oldest are forgotten, as an
    /// acquirer's sandbox purges old test data, and an inquiry about a forgotten one is answered
    /// `NOT_FOUND`. The bound is kept per shard (a 64th each, at least [`MIN_PER_SHARD`]), so it
    /// is approximate; instructions left undecided or answering late on purpose (`52`, `53`,
    /// `56`) are forgotten last. [`Sandbox::forgotten`] says how many were.
    pub remember: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { slow_ms: 30_000, remember: DEFAULT_REMEMBER }
    }
}

/// What the sandbox remembers by default: at 100 instructions a second, the last 16 minutes
/// (past the bridge's default payment expiry of 15), in a few tens of MiB.
pub const DEFAULT_REMEMBER: usize = 100_000;

/// The sandbox's books are split by instruction id over this many shards, each under its own
/// lock. One table behind one lock stopped every instruction while it grew: a hash map of
/// 100,000 instructions that doubles rehashes every entry into a new table of tens of MiB
/// (≈ 100 ms here), and every payment waited for the sandbox's answer meanwhile.
const SHARDS: usize = 64;

/// The fewest instructions a shard remembers, whatever `remember` says.
pub const MIN_PER_SHARD: usize = 16;

/// The longest instruction id the sandbox takes (the bridge's are payment ids, far shorter).
const ID_MAX: usize = 128;

/// Receipts kept per instruction id (repeats beyond are counted, not listed).
const RECEIPTS_MAX: usize = 64;

/// What the sandbox knows of one instruction id.
#[derive(Debug, Default)]
struct Entry {
    /// When it was received (the books' receipt numbers), repeats included, the first
    /// [`RECEIPTS_MAX`] of them.
    receipts: Vec<u64>,
    /// How many times it was received.
    received: usize,
    /// Its amount, as first processed (none when it was never processed: `54`, `55`).
    amount: Option<Amount>,
    /// Its standing (none when it was never processed).
    outcome: Option<InstructionAnswer>,
    /// A `56` instruction whose approval will land behind its first reversal.
    racing: bool,
    /// Undecided or answering late on purpose (`52`, `53`, `56`): forgotten last.
    held: bool,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Arc<str>, Entry>,
    /// The ids in the order first seen, oldest first: the first forgotten.
    order: VecDeque<Arc<str>>,
}

#[derive(Debug)]
struct Books {
    shards: Box<[Mutex<Shard>]>,
    /// Per shard, how many ids are remembered.
    per_shard: usize,
    /// Receipt numbers: the order instructions arrived in, across shards.
    receipts: AtomicU64,
    /// Approvals so far: the acquirer's references.
    approvals: AtomicU64,
    /// Ids reversed, in order (as many of the newest as the books hold).
    reversals: Mutex<VecDeque<String>>,
    /// Instructions forgotten to keep within the bound.
    forgotten: AtomicU64,
}

impl Books {
    fn new(remember: usize) -> Books {
        Books {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: remember.div_ceil(SHARDS).max(MIN_PER_SHARD),
            receipts: AtomicU64::new(0),
            approvals: AtomicU64::new(0),
            reversals: Mutex::new(VecDeque::new()),
            forgotten: AtomicU64::new(0),
        }
    }

    /// The entry for `id` in `shard`, made when new (the shard's oldest forgotten past its bound).
    fn entry<'s>(&self, shard: &'s mut Shard, id: &str) -> &'s mut Entry {
        if !shard.entries.contains_key(id) {
            while shard.order.len() >= self.per_shard {
                // The oldest that is not held; the oldest of all when every one is.
                let i = shard
                    .order
                    .iter()
                    .position(|old| shard.entries.get(old).is_none_or(|e| !e.held))
                    .unwrap_or(0);
                match shard.order.remove(i) {
                    Some(old) => {
                        shard.entries.remove(&old);
                        self.forgotten.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
            let id: Arc<str> = Arc::from(id);
            shard.order.push_back(id.clone());
            shard.entries.insert(id, Entry::default());
        }
        shard.entries.get_mut(id).expect("made above")
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, Shard> {
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        let i = (h.finish() % SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shards(&self) -> impl Iterator<Item = MutexGuard<'_, Shard>> {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn next_ref(&self) -> String {
        format!("SBX{:08}", self.approvals.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn reversed(&self, id: &str) {
        let mut r = self.reversals.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= self.per_shard * SHARDS {
            r.pop_front();
            self.forgotten.fetch_add(1, Ordering::Relaxed);
        }
        r.push_back(id.to_owned());
    }
}

/// A running sandbox acquirer.
pub struct Sandbox {
    addr: SocketAddr,
    books: Arc<Books>,
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
        let books = Arc::new(Books::new(config.remember));
        let (tx, rx) = watch::channel(false);
        let st = books.clone();
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
        Ok(Sandbox { addr, books, shutdown: tx, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many times the instruction with this id was received (while remembered).
    pub fn received(&self, instruction_id: &str) -> usize {
        self.books.shard(instruction_id).entries.get(instruction_id).map_or(0, |e| e.received)
    }

    /// How many instructions (and reversals) were forgotten to keep within
    /// [`SandboxConfig::remember`]: a test that counts instructions per payment asserts none was.
    pub fn forgotten(&self) -> u64 {
        self.books.forgotten.load(Ordering::Relaxed)
    }

    /// Every instruction id received (of those remembered), in order, repeats included (up to
    /// 64 of one id).
    pub fn all_received(&self) -> Vec<String> {
        let mut all: Vec<(u64, String)> = Vec::new();
        for s in self.books.shards() {
            for (id, e) in &s.entries {
                all.extend(e.receipts.iter().map(|n| (*n, id.to_string())));
            }
        }
        all.sort_unstable_by_key(|(n, _)| *n);
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// Ids reversed, in order.
    pub fn reversals(&self) -> Vec<String> {
        self.books.reversals.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// The instruction's standing, as the sandbox records it.
    pub fn status(&self, instruction_id: &str) -> Option<InstructionStatus> {
        let s = self.books.shard(instruction_id);
        s.entries.get(instruction_id).and_then(|e| e.outcome.as_ref()).map(|o| o.status)
    }

    /// The sandbox's own books: every instruction it processed (of those remembered), with its
    /// amount and standing, by id. What an acquirer's daily file is made from.
    pub fn instructions(&self) -> Vec<(String, Amount, InstructionStatus)> {
        let mut out = Vec::new();
        for s in self.books.shards() {
            for (id, e) in &s.entries {
                if let (Some(a), Some(o)) = (e.amount, &e.outcome) {
                    out.push((id.to_string(), a, o.status));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
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
    books: Arc<Books>,
    config: SandboxConfig,
) -> Result<Response<Full<Bytes>>, Reset> {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, 64 * 1024).collect().await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large or unreadable");
    };
    let body = body.to_bytes();
    let path = parts.uri.path().to_owned();
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
            if ins.instruction_id.is_empty() || ins.instruction_id.len() > ID_MAX {
                return error(StatusCode::BAD_REQUEST, "instruction id empty or too long");
            }
            instruct(ins, &books, config).await
        }
        (_, ["v1", "instructions", id, ..]) if id.is_empty() || id.len() > ID_MAX => {
            error(StatusCode::BAD_REQUEST, "instruction id empty or too long")
        }
        (&Method::GET, ["v1", "instructions", id]) => {
            let known = books.shard(id).entries.get(*id).and_then(|e| e.outcome.clone());
            let answer = known.unwrap_or(InstructionAnswer {
                instruction_id: (*id).to_owned(),
                status: InstructionStatus::NotFound,
                acquirer_ref: None,
                reason: None,
            });
            json(StatusCode::OK, &answer)
        }
        (&Method::POST, ["v1", "instructions", id, "reversal"]) => {
            books.reversed(id);
            let answer = reverse(&books, id);
            json(StatusCode::OK, &answer)
        }
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    }
}

/// A reversal of `id`: it sticks, except the first one of a racing `56` instruction, which is
/// acknowledged while the approval lands right behind it.
fn reverse(books: &Books, id: &str) -> InstructionAnswer {
    let mut shard = books.shard(id);
    let entry = books.entry(&mut shard, id);
    let reversed = InstructionAnswer {
        instruction_id: id.to_owned(),
        status: InstructionStatus::Reversed,
        acquirer_ref: None,
        reason: None,
    };
    if std::mem::take(&mut entry.racing) {
        entry.outcome = Some(InstructionAnswer {
            instruction_id: id.to_owned(),
            status: InstructionStatus::Approved,
            acquirer_ref: Some(books.next_ref()),
            reason: None,
        });
        return reversed;
    }
    match &mut entry.outcome {
        Some(o) => {
            o.status = InstructionStatus::Reversed;
            o.clone()
        }
        None => {
            entry.outcome = Some(reversed.clone());
            reversed
        }
    }
}

async fn instruct(
    ins: Instruction,
    books: &Books,
    config: SandboxConfig,
) -> Result<Response<Full<Bytes>>, Reset> {
    let fen = ins.amount.minor() % 100;
    let answer = {
        let mut shard = books.shard(&ins.instruction_id);
        let entry = books.entry(&mut shard, &ins.instruction_id);
        entry.received += 1;
        if entry.receipts.len() < RECEIPTS_MAX {
            entry.receipts.push(books.receipts.fetch_add(1, Ordering::Relaxed));
        }
        if let Some(done) = &entry.outcome {
            // Idempotent: the recorded outcome, whatever the behaviour.
            let done = done.clone();
            drop(shard);
            return json(StatusCode::OK, &done);
        }
        match fen {
            54 => return error(StatusCode::INTERNAL_SERVER_ERROR, "sandbox: simulated failure"),
            55 => return Err(Reset),
            _ => {}
        }
        entry.amount = Some(ins.amount);
        entry.held = matches!(fen, 52 | 53 | 56);
        let answer = if fen == 56 {
            entry.racing = true;
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
                acquirer_ref: Some(books.next_ref()),
                reason: None,
            }
        };
        entry.outcome = Some(answer.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instruction(id: &str, minor: i64) -> Instruction {
        Instruction {
            instruction_id: id.to_owned(),
            merchant_id: "SBX-M".into(),
            scheme: "alipay".into(),
            code: "https://qr.alipay.com/x".into(),
            amount: Amount::from_minor(Currency::CNY, minor).unwrap(),
        }
    }

    fn remembered(books: &Books) -> usize {
        books.shards().map(|s| s.entries.len()).sum()
    }

    #[tokio::test]
    async fn the_books_forget_the_oldest_past_their_bound_and_keep_the_newest() {
        let books = Books::new(1);
        let config = SandboxConfig { slow_ms: 0, remember: 1 };
        let bound = SHARDS * MIN_PER_SHARD;
        // Undecided on purpose, received first: forgotten last.
        instruct(instruction("race", 2_356), &books, config).await.unwrap();
        for i in 0..5_000 {
            instruct(instruction(&format!("ins-{i}"), 2_300), &books, config).await.unwrap();
        }
        let kept = remembered(&books);
        assert!(kept <= bound, "{kept} remembered, bound {bound}");
        assert_eq!(books.forgotten.load(Ordering::Relaxed), 5_001 - kept as u64);
        assert!(books.shard("race").entries["race"].racing, "the racing one is still held");
        // The newest is remembered with its outcome; a repeat of it gets the same answer.
        let last = "ins-4999";
        let before = books.shard(last).entries.get(last).and_then(|e| e.outcome.clone()).unwrap();
        assert_eq!(before.status, InstructionStatus::Approved);
        for _ in 0..100 {
            instruct(instruction(last, 2_300), &books, config).await.unwrap();
        }
        let e = books.shard(last);
        let entry = e.entries.get(last).unwrap();
        assert_eq!(entry.received, 101);
        assert_eq!(entry.receipts.len(), RECEIPTS_MAX, "repeats are counted, not all listed");
        assert_eq!(entry.outcome.as_ref(), Some(&before));
        drop(e);
        // The first ones are gone, and each shard's order agrees with its entries.
        assert!(!books.shard("ins-0").entries.contains_key("ins-0"));
        for s in books.shards() {
            assert_eq!(s.order.len(), s.entries.len());
        }
    }

    #[tokio::test]
    async fn a_racing_instruction_is_approved_behind_its_first_reversal_only() {
        let books = Books::new(DEFAULT_REMEMBER);
        let config = SandboxConfig::default();
        instruct(instruction("race", 2_356), &books, config).await.unwrap();
        assert_eq!(reverse(&books, "race").status, InstructionStatus::Reversed);
        let now = books.shard("race").entries["race"].outcome.clone().unwrap();
        assert_eq!(now.status, InstructionStatus::Approved, "the approval lands behind it");
        assert_eq!(reverse(&books, "race").status, InstructionStatus::Reversed);
        let now = books.shard("race").entries["race"].outcome.clone().unwrap();
        assert_eq!(now.status, InstructionStatus::Reversed, "a second reversal sticks");
        // A reversal of an instruction never received is acknowledged and remembered.
        assert_eq!(reverse(&books, "never").status, InstructionStatus::Reversed);
        assert_eq!(books.shard("never").entries["never"].amount, None);
    }
}
