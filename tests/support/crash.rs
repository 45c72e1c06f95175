//! What the crash tests share (`tests/crash.rs`: one daemon on sled; `tests/crash_cluster.rs`:
//! two daemons on one PostgreSQL database): the run's seed, the daemon's config and process, the
//! partners' load and the client's book of it, and the checks made at the end against the
//! sandbox acquirer, the partners' webhook endpoint and the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use qrbridge::clock::{Clock, SystemClock};
use qrbridge::model::{PaymentState, Task};
use qrbridge::store::Store;
use qrbridge_adapters::acquirer::sandbox::Sandbox;
use qrbridge_adapters::acquirer::wire::InstructionStatus;
use qrbridge_config::{Acquirer, Config, Identity};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::daemon::TestClient;
use super::webhook::{Receiver, SECRET};

/// The partners a run may use, in the order the embedded config lists them (each has a client
/// certificate in the development PKI).
pub const PARTNERS: [&str; 2] = ["partner-demo", "partner-other"];

/// The seed (`QRBRIDGE_CRASH_SEED`, else the clock) and the number of kills
/// (`QRBRIDGE_CRASH_KILLS`, else `default_kills`), printed; a failure prints how to replay it.
pub fn seed_and_kills(test: &'static str, default_kills: usize) -> (u64, usize) {
    let seed: u64 = std::env::var("QRBRIDGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemClock.now().timestamp_subsec_nanos().into());
    let kills: usize = std::env::var("QRBRIDGE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_kills);
    println!("{test}: seed {seed}, {kills} kills (replay with QRBRIDGE_CRASH_SEED={seed})");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook(info);
        eprintln!("{test} FAILED with seed {seed}: replay with QRBRIDGE_CRASH_SEED={seed}");
    }));
    (seed, kills)
}

/// The test's folder, kept (with the daemons' logs) when `QRBRIDGE_CRASH_KEEP` is set.
pub struct Dir(Option<PathBuf>, Option<tempfile::TempDir>);

impl Dir {
    pub fn new(test: &str) -> Dir {
        let dir = tempfile::tempdir().unwrap();
        println!("{test} data under {}", dir.path().display());
        if std::env::var_os("QRBRIDGE_CRASH_KEEP").is_some() {
            Dir(Some(dir.keep()), None)
        } else {
            Dir(None, Some(dir))
        }
    }

    pub fn path(&self) -> &Path {
        match (&self.0, &self.1) {
            (Some(kept), _) => kept,
            (None, Some(t)) => t.path(),
            (None, None) => unreachable!("one or the other"),
        }
    }
}

/// A daemon's config on `dir` (its PKI under `dir/pki`), paying through the sandbox at `sandbox`
/// with short timeouts and a quick resolver, serving the first `partners` of [`PARTNERS`], whose
/// webhooks go to `hooks`.
pub fn config(dir: &Path, sandbox: SocketAddr, hooks: &str, partners: usize) -> Config {
    let mut c = qrbridge::daemon::embedded_config(dir, super::loopback()).unwrap();
    c.storage.path = dir.join("db");
    // Several daemons at once: none on the default's 8446.
    c.ops.listen = Some(([127, 0, 0, 1], 0).into());
    c.acquirers = vec![Acquirer {
        id: "sandbox".into(),
        endpoint: format!("https://{sandbox}"),
        ca: dir.join("pki/ca.crt"),
        identity: Some(Identity::SanDns("acquirer-sandbox".into())),
        timeout_ms: 300,
        connect_timeout_ms: 300,
        answer_bytes_max: 64 * 1024,
    }];
    c.partners.truncate(partners);
    for (p, name) in c.partners.iter_mut().zip(PARTNERS) {
        assert_eq!(p.id, name, "the embedded config's partners");
        p.webhook_url = Some(hooks.to_owned());
        p.webhook_secret = Some(SECRET.into());
        p.limits.requests_per_s = 100_000;
        p.limits.burst = 100_000;
    }
    c.resolver.inquiry_schedule_s = vec![1];
    c.resolver.payment_expiry_s = 2;
    c.webhooks.backoff_initial_ms = 50;
    c.webhooks.backoff_max_ms = 200;
    c
}

/// Writes `c` to `path` as TOML.
pub fn write_config(path: &Path, c: &Config) {
    std::fs::write(path, toml::to_string(c).unwrap()).unwrap();
}

/// A `qrbridge serve` process.
pub struct Daemon {
    pub child: Child,
    pub partner_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Starts `qrbridge serve --config <config>`, logging to `log` (appended) at `rust_log`, and
/// waits for it to say where it listens.
pub async fn start(config: &Path, log: &Path, rust_log: &str) -> Daemon {
    start_with_env(config, log, rust_log, &[]).await
}

/// [`start`] with more environment variables.
pub async fn start_with_env(
    config: &Path,
    log: &Path,
    rust_log: &str,
    env: &[(&str, String)],
) -> Daemon {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrbridge"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", rust_log)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("qrbridge listening: partner=https://") {
            let partner_addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            let admin_addr = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin=https://"))
                .expect("the admin address")
                .parse()
                .unwrap();
            // Keep reading stdout so the daemon never blocks on it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Daemon { child, partner_addr, admin_addr };
        }
    }
    panic!("the daemon exited before listening: {:?}", child.wait().await);
}

/// SIGKILL, and waits until the process is gone.
pub async fn kill(mut d: Daemon) {
    d.child.start_kill().unwrap();
    d.child.wait().await.unwrap();
}

/// SIGTERM, then waits for a clean exit.
pub async fn stop(mut d: Daemon) {
    let pid = d.child.id().unwrap().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(status.success());
    let exit = d.child.wait().await.unwrap();
    assert!(exit.success(), "the daemon did not stop cleanly: {exit:?}");
}

/// Waits for a task the test aborted or stopped; a panic in it (a failed check in a pay loop)
/// is the test's.
pub async fn join(task: JoinHandle<()>) {
    if let Err(e) = task.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// `partner`'s client of the daemon at `addr`.
pub fn client(pki: &Path, partner: &str, addr: SocketAddr) -> TestClient {
    TestClient::new(pki, Some(partner), addr, false)
}

/// A partner's request: the partner's own id for it is unique to that partner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Request {
    pub partner: String,
    pub request_id: String,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partner, self.request_id)
    }
}

/// What the client knows.
#[derive(Default)]
pub struct Book {
    /// Every pay request sent, and its body.
    pub sent: BTreeMap<Request, Value>,
    /// Answered 200/201: the payment id.
    pub acked: BTreeMap<Request, String>,
    /// Requests answered by another node than the one first sent to (it died, or the client
    /// gave up on it), and how many of those answers were a payment already begun (200).
    pub moved: usize,
    pub moved_found: usize,
}

impl Book {
    pub fn shared() -> Arc<Mutex<Book>> {
        Arc::new(Mutex::new(Book::default()))
    }

    /// Records an answer; a request answered with two payments fails the test.
    pub fn ack(&mut self, request: &Request, payment_id: &str) {
        let prev = self.acked.insert(request.clone(), payment_id.to_owned());
        if let Some(prev) = prev {
            assert_eq!(prev, payment_id, "{request} answered with two payments");
        }
    }

    /// Sent, never answered.
    pub fn unanswered(&self) -> Vec<(Request, Value)> {
        self.sent
            .iter()
            .filter(|(r, _)| !self.acked.contains_key(*r))
            .map(|(r, v)| (r.clone(), v.clone()))
            .collect()
    }
}

/// The daemons a load may go to: a slot per node, each up (at an address, in a generation of its
/// own) or down. With more than one slot a request whose node failed it goes to another.
#[derive(Clone)]
pub struct Nodes {
    table: Arc<watch::Sender<Table>>,
    pki: PathBuf,
    /// Clients the workers share, by partner and node generation (so most requests share a
    /// connection per node, as a wallet's would).
    shared: Arc<Mutex<HashMap<(&'static str, u64), TestClient>>>,
}

#[derive(Clone)]
struct Table {
    slots: Vec<Option<(SocketAddr, u64)>>,
    generation: u64,
    /// No new payment is started (requests in hand are finished).
    stopping: bool,
}

impl Nodes {
    pub fn new(pki: &Path, slots: usize) -> Nodes {
        let table = Table { slots: vec![None; slots], generation: 0, stopping: false };
        Nodes {
            table: Arc::new(watch::channel(table).0),
            pki: pki.to_owned(),
            shared: Arc::default(),
        }
    }

    pub fn up(&self, slot: usize, addr: SocketAddr) {
        self.table.send_modify(|t| {
            t.generation += 1;
            t.slots[slot] = Some((addr, t.generation));
        });
    }

    /// Marked before the node is killed, so that a request it fails finds it down.
    pub fn down(&self, slot: usize) {
        self.table.send_modify(|t| t.slots[slot] = None);
    }

    /// The load stops: each worker finishes the request in hand, then returns.
    pub fn stop(&self) {
        self.table.send_modify(|t| t.stopping = true);
    }

    fn failover(&self) -> bool {
        self.table.borrow().slots.len() > 1
    }

    fn stopping(&self) -> bool {
        self.table.borrow().stopping
    }

    /// A node that is up, at random, other than `avoid` when another is up; waits for one when
    /// none is (never, with a single slot: that load ends with its daemon).
    async fn pick(
        &self,
        rng: &mut fastrand::Rng,
        avoid: Option<usize>,
    ) -> Option<(usize, SocketAddr, u64)> {
        let mut rx = self.table.subscribe();
        loop {
            {
                let t = rx.borrow_and_update();
                let up: Vec<(usize, SocketAddr, u64)> = t
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.map(|(a, g)| (i, a, g)))
                    .collect();
                let others: Vec<_> =
                    up.iter().copied().filter(|(i, ..)| Some(*i) != avoid).collect();
                let from = if others.is_empty() { &up } else { &others };
                if !from.is_empty() {
                    return Some(from[rng.usize(..from.len())]);
                }
                if t.slots.len() == 1 {
                    return None;
                }
            }
            rx.changed().await.ok()?;
        }
    }
}

/// How often one request may fail on every node before the test gives up on the cluster.
const TRIES_MAX: usize = 100;

/// One wallet's load: quotes and pays until its node dies (one node) or the load stops
/// (several, a request whose node failed it being sent again, unchanged, to another).
pub struct Worker {
    nodes: Nodes,
    partner: &'static str,
    prefix: String,
    rng: fastrand::Rng,
    book: Arc<Mutex<Book>>,
    hang_up: bool,
    http1: bool,
    /// A hanging-up worker's own clients, by node generation: its resets and closed connections
    /// are its own.
    own: HashMap<u64, TestClient>,
}

impl Worker {
    pub fn new(
        nodes: &Nodes,
        partner: &'static str,
        prefix: String,
        rng: fastrand::Rng,
        book: &Arc<Mutex<Book>>,
    ) -> Worker {
        Worker {
            nodes: nodes.clone(),
            partner,
            prefix,
            rng,
            book: book.clone(),
            hang_up: false,
            http1: false,
            own: HashMap::new(),
        }
    }

    /// Every other pay request is dropped after 0–20 ms, answered or not: the client went away
    /// (an HTTP/2 reset, or a closed HTTP/1 connection). With several nodes, half of those are
    /// sent again at once to another, while the first may still be under way.
    pub fn hanging_up(mut self, http1: bool) -> Worker {
        self.hang_up = true;
        self.http1 = http1;
        self
    }

    fn client(&mut self, addr: SocketAddr, generation: u64) -> TestClient {
        let (pki, partner, http1) = (&self.nodes.pki, self.partner, self.http1);
        let new = || TestClient::new(pki, Some(partner), addr, http1);
        if self.hang_up {
            return self.own.entry(generation).or_insert_with(new).clone();
        }
        self.nodes.shared.lock().unwrap().entry((partner, generation)).or_insert_with(new).clone()
    }

    /// Sends `body` to `path` on a node that is up, other than `avoid` if it can; on several
    /// nodes, again elsewhere until one answers. `None` when the only node died, or the load
    /// stopped with no node left. Also says which node answered.
    async fn send(
        &mut self,
        path: &str,
        body: &Value,
        mut avoid: Option<usize>,
    ) -> Option<(usize, StatusCode, Value)> {
        for _ in 0..TRIES_MAX {
            let (slot, addr, generation) = self.nodes.pick(&mut self.rng, avoid).await?;
            let client = self.client(addr, generation);
            match client.try_send(Method::POST, path, Some(body.to_string().into_bytes())).await {
                Ok((s, v)) => return Some((slot, s, v)),
                Err(_) if self.nodes.failover() => avoid = Some(slot),
                Err(_) => return None,
            }
        }
        panic!("{path} failed on every node {TRIES_MAX} times: {body}");
    }

    /// The pay loop. Amounts pick the sandbox's behaviours: mostly approved at once, some
    /// declined, late, hung, failing with 500, reset, or racing a reversal.
    pub async fn run(mut self) {
        for n in 0.. {
            if self.nodes.stopping() {
                return;
            }
            let quote = json!({
                "code": super::flows::code(None),
                "amount": {"currency": "CNY", "value": amount(&mut self.rng).to_string()},
                "wallet_currency": "PHP",
            });
            let Some((_, s, q)) = self.send("/v1/quotes", &quote, None).await else { return };
            assert_eq!(s, StatusCode::CREATED, "{q}");
            let request = Request {
                partner: self.partner.to_owned(),
                request_id: format!("{}-{n}", self.prefix),
            };
            let body = json!({
                "request_id": request.request_id,
                "quote_id": q["quote_id"],
                "payer": {"id": format!("payer-{}", self.rng.u32(..1000))},
            });
            self.book.lock().unwrap().sent.insert(request.clone(), body.clone());
            let Some((first, addr, generation)) = self.nodes.pick(&mut self.rng, None).await else {
                return;
            };
            let client = self.client(addr, generation);
            let send =
                client.try_send(Method::POST, "/v1/payments", Some(body.to_string().into_bytes()));
            let answered = if self.hang_up && self.rng.bool() {
                // Whatever came back within the patience is not read either.
                let patience = Duration::from_millis(self.rng.u64(0..=20));
                let _ = tokio::time::timeout(patience, send).await;
                if !self.nodes.failover() || self.rng.bool() {
                    // Sent, never answered: the final replay says what it made.
                    continue;
                }
                None
            } else {
                send.await.ok()
            };
            let (s, p) = match answered {
                Some(answer) => answer,
                None if self.nodes.failover() => {
                    let Some((_, s, p)) = self.send("/v1/payments", &body, Some(first)).await
                    else {
                        return;
                    };
                    let mut b = self.book.lock().unwrap();
                    b.moved += 1;
                    b.moved_found += usize::from(s == StatusCode::OK);
                    (s, p)
                }
                None => return,
            };
            assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{request}: {s}: {p}");
            self.book.lock().unwrap().ack(&request, p["payment_id"].as_str().unwrap());
        }
    }
}

/// A CNY amount in fen whose fen part picks the sandbox's behaviour: 51 declined, 52 late, 53
/// hung, 54 a 500, 55 a reset, 56 racing a reversal; mostly (70 %) approved at once.
pub fn amount(rng: &mut fastrand::Rng) -> i64 {
    let fen = match rng.u8(0..20) {
        n @ 0..=5 => 51 + i64::from(n),
        _ => rng.i64(0..50),
    };
    rng.i64(1..200) * 100 + fen
}

/// Sends earlier requests again, exactly as they were, to one daemon, until it dies.
pub async fn replay(
    pki: PathBuf,
    addr: SocketAddr,
    requests: Vec<(Request, Value)>,
    book: Arc<Mutex<Book>>,
) {
    let mut clients = HashMap::new();
    for (request, body) in requests {
        let client = clients
            .entry(request.partner.clone())
            .or_insert_with(|| client(&pki, &request.partner, addr));
        let Ok((s, p)) = client
            .try_send(Method::POST, "/v1/payments", Some(body.to_string().into_bytes()))
            .await
        else {
            return;
        };
        match s {
            StatusCode::OK | StatusCode::CREATED => {
                book.lock().unwrap().ack(&request, p["payment_id"].as_str().unwrap())
            }
            // The quote ran out, or was lost in a kill before any payment used it (a quote has no
            // flush of its own): no payment was made; the final replay checks.
            StatusCode::GONE | StatusCode::NOT_FOUND => {}
            other => panic!("replay of {request}: {other} {p}"),
        }
    }
}

/// Every request ever sent, replayed as it was on the last daemon standing: its answer says
/// whether it made a payment (the same one as before, if one was acknowledged). Returns those
/// that made none.
pub async fn replay_all(pki: &Path, addr: SocketAddr, book: &Mutex<Book>) -> HashSet<Request> {
    let sent: Vec<(Request, Value)> = book.lock().unwrap().sent.clone().into_iter().collect();
    let mut replays = tokio::task::JoinSet::new();
    for chunk in sent.chunks(sent.len().div_ceil(8).max(1)) {
        let chunk = chunk.to_vec();
        let clients: HashMap<&str, TestClient> =
            PARTNERS.iter().map(|p| (*p, client(pki, p, addr))).collect();
        replays.spawn(async move {
            let mut answers = Vec::new();
            for (request, body) in chunk {
                let (s, p) = clients[request.partner.as_str()].post("/v1/payments", &body).await;
                answers.push((request, s, p));
            }
            answers
        });
    }
    let mut never_made = HashSet::new();
    while let Some(answers) = replays.join_next().await {
        for (request, s, p) in answers.unwrap() {
            match s {
                StatusCode::OK | StatusCode::CREATED => {
                    book.lock().unwrap().ack(&request, p["payment_id"].as_str().unwrap())
                }
                StatusCode::GONE | StatusCode::NOT_FOUND => {
                    assert!(!book.lock().unwrap().acked.contains_key(&request), "{request}: {p}");
                    never_made.insert(request);
                }
                other => panic!("replay of {request}: {other} {p}"),
            }
        }
    }
    never_made
}

/// Every payment at rest, as the partners' API shows it.
pub struct Settled {
    /// Payment id → the request that made it.
    pub payments: HashMap<String, Request>,
    /// Payment id → its status.
    pub status: HashMap<String, String>,
    /// How many payments ended how (`STATUS` or `STATUS/failure code`).
    pub outcomes: BTreeMap<String, usize>,
}

/// Waits until the partner has heard of every payment's outcome (on the webhook endpoint's own
/// signal), then reads each payment through the daemon at `addr`: none may be in doubt. Then
/// waits (bounded) until the daemon, at its admin address `admin`, has no resolver work left: a
/// verification after a reversal (an approval landing behind it) is part of coming to rest.
pub async fn settle(
    hooks: &Receiver,
    pki: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
    book: &Book,
) -> Settled {
    let payments: HashMap<String, Request> =
        book.acked.iter().map(|(r, p)| (p.clone(), r.clone())).collect();
    assert_eq!(payments.len(), book.acked.len(), "two requests share a payment");
    hooks
        .wait_until(Duration::from_secs(180), |got| {
            let told: HashSet<&str> = got
                .iter()
                .filter(|r| r.acked && r.kind.starts_with("payment."))
                .map(|r| r.payment_id.as_str())
                .collect();
            payments.keys().all(|p| told.contains(p.as_str()))
        })
        .await;
    let clients: HashMap<&str, TestClient> =
        PARTNERS.iter().map(|p| (*p, client(pki, p, addr))).collect();
    let mut outcomes = BTreeMap::new();
    let mut status = HashMap::new();
    for (id, request) in &payments {
        let (s, p) = clients[request.partner.as_str()].get(&format!("/v1/payments/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{p}");
        let st = p["status"].as_str().unwrap().to_owned();
        assert_ne!(st, "PROCESSING", "{p}");
        let label = match p["failure"]["code"].as_str() {
            Some(code) => format!("{st}/{code}"),
            None => st.clone(),
        };
        *outcomes.entry(label).or_default() += 1;
        status.insert(id.clone(), st);
    }
    let admin = client(pki, "admin", admin);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (s, work) = admin.get("/admin/v1/resolver").await;
        assert_eq!(s, StatusCode::OK, "{work}");
        if work["open"].as_array().is_some_and(|o| o.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "resolver work never ended: {work}");
        // The resolver's schedule is the daemon's own timers: polled, with a bound.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Settled { payments, status, outcomes }
}

/// What the final checks counted.
pub struct Figures {
    pub instructions: usize,
    pub reversals: usize,
    /// Distinct events the partners acknowledged.
    pub events: usize,
    /// Acknowledgements of an event already acknowledged (delivered again after a kill).
    pub redelivered: usize,
}

/// The checks on what the daemons left, read from `store` once none runs:
///
/// - every acknowledged request's payment is stored, exactly once per request, under the same
///   id; a request whose replay made nothing has none; no payment exists that no request made;
/// - every payment is final, booked exactly when it succeeded, and agrees with the acquirer
///   (SUCCEEDED ⇔ approved there), which saw at most one instruction for it and none for
///   anything else; no resolver work is left but verifications;
/// - each payment's outcome reached its partner under exactly one event id, matching its final
///   status; nothing is left in the outbox or parked; no event is recorded delivered twice, and
///   each recorded one was acknowledged;
/// - the ledger balances, and the running totals are the journal's.
///
/// Each part is a function of its own (`check_payments`, `check_requests`, …), so that a test
/// of a store that holds part of the history (a restored backup) can make the checks that apply.
pub async fn check(
    store: &impl Store,
    sandbox: &Sandbox,
    hooks: &Receiver,
    book: &Book,
    settled: &Settled,
    never_made: &HashSet<Request>,
) -> Figures {
    let by_request = check_payments(store, sandbox, settled).await;
    check_requests(&by_request, book, never_made);
    let instructed = check_instructions_known(&by_request, sandbox);
    check_work(store).await;
    let acked_ids = check_outcome_events(hooks, settled);
    check_outbox(store, hooks).await;
    check_ledger(store).await;
    let acked = hooks.acked();
    Figures {
        instructions: instructed.len(),
        reversals: sandbox.reversals().len(),
        events: acked_ids.len(),
        redelivered: acked.len() - acked_ids.len(),
    }
}

/// Every stored payment: one per request, final, made by a request `settled` knows, booked
/// exactly when it succeeded, agreeing with the acquirer, which saw at most one instruction for
/// it. Returns the stored payments by request.
pub async fn check_payments(
    store: &impl Store,
    sandbox: &Sandbox,
    settled: &Settled,
) -> HashMap<Request, String> {
    assert_eq!(sandbox.forgotten(), 0, "the sandbox forgot instructions: counts would be short");
    let stored = store.payments().await.unwrap();
    let mut by_request = HashMap::new();
    for p in &stored {
        let request = Request { partner: p.partner.clone(), request_id: p.request_id.clone() };
        assert!(
            by_request.insert(request, p.payment_id.clone()).is_none(),
            "{} paid twice",
            p.request_id
        );
        assert!(p.state.is_final(), "{} is {:?}", p.payment_id, p.state);
        assert!(
            settled.payments.contains_key(&p.payment_id),
            "{} was made by no request",
            p.payment_id
        );
        assert_eq!(
            p.booked,
            p.state == PaymentState::Succeeded,
            "{} booked {}",
            p.payment_id,
            p.booked
        );
        let at_acquirer = sandbox.status(&p.payment_id);
        match p.state {
            PaymentState::Succeeded => {
                assert_eq!(at_acquirer, Some(InstructionStatus::Approved), "{}", p.payment_id)
            }
            _ => assert_ne!(
                at_acquirer,
                Some(InstructionStatus::Approved),
                "{} {:?}",
                p.payment_id,
                p.state
            ),
        }
        assert!(
            sandbox.received(&p.payment_id) <= 1,
            "{} instructed {} times",
            p.payment_id,
            sandbox.received(&p.payment_id)
        );
    }
    by_request
}

/// Every request `book` saw acknowledged is stored (`by_request`) as the payment it was
/// answered with; none of `never_made` is.
pub fn check_requests(
    by_request: &HashMap<Request, String>,
    book: &Book,
    never_made: &HashSet<Request>,
) {
    for (request, payment_id) in &book.acked {
        assert_eq!(
            by_request.get(request),
            Some(payment_id),
            "acknowledged {request} is not stored as {payment_id}"
        );
    }
    for request in never_made {
        assert!(!by_request.contains_key(request), "{request} said no payment, but one exists");
    }
}

/// The acquirer was instructed only for stored payments; returns what it was instructed for.
pub fn check_instructions_known(
    by_request: &HashMap<Request, String>,
    sandbox: &Sandbox,
) -> Vec<String> {
    let known: HashSet<&str> = by_request.values().map(String::as_str).collect();
    let instructed = sandbox.all_received();
    assert!(
        instructed.iter().all(|i| known.contains(i.as_str())),
        "the acquirer was instructed for a payment the bridge does not have"
    );
    instructed
}

/// No resolver work is left but verifications.
pub async fn check_work(store: &impl Store) {
    for w in store.open_work().await.unwrap() {
        assert_eq!(w.task, Task::Verify, "{w:?} left undone");
    }
}

/// Each settled payment's outcome reached its partner under exactly one event id, matching its
/// final status. Returns the distinct event ids acknowledged.
pub fn check_outcome_events(hooks: &Receiver, settled: &Settled) -> HashSet<String> {
    let acked = hooks.acked();
    let mut outcome_events: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in acked.iter().filter(|r| r.kind.starts_with("payment.")) {
        assert!(r.signature_ok && r.header_matches_body, "{r:?}");
        assert_eq!(
            r.kind,
            format!("payment.{}", settled.status[&r.payment_id].to_lowercase()),
            "{r:?}"
        );
        outcome_events.entry(&r.payment_id).or_default().insert(&r.event_id);
    }
    for id in settled.payments.keys() {
        assert_eq!(
            outcome_events.get(id.as_str()).map(HashSet::len),
            Some(1),
            "{id}: {:?}",
            outcome_events.get(id.as_str())
        );
    }
    acked.iter().map(|r| r.event_id.clone()).collect()
}

/// Nothing is left in the outbox or parked; no event is recorded delivered twice, and each
/// recorded one was acknowledged.
pub async fn check_outbox(store: &impl Store, hooks: &Receiver) {
    assert!(store.outbox().await.unwrap().is_empty(), "undelivered events left");
    assert!(store.parked().await.unwrap().is_empty(), "events parked");
    let delivered = store.delivered_events().await.unwrap();
    let distinct: HashSet<&str> = delivered.iter().map(|d| d.event.event_id.as_str()).collect();
    assert_eq!(distinct.len(), delivered.len(), "an event recorded delivered twice");
    let acked = hooks.acked();
    let acked_ids: HashSet<&str> = acked.iter().map(|r| r.event_id.as_str()).collect();
    assert!(
        delivered.iter().all(|d| acked_ids.contains(d.event.event_id.as_str())),
        "an event recorded delivered that the partner never acknowledged"
    );
}

/// The ledger balances, and the running totals the store keeps (positions) are the journal's.
pub async fn check_ledger(store: &impl Store) {
    let sums = store.ledger_sums().await.unwrap();
    assert!(sums.values().all(|s| *s == 0), "ledger does not balance: {sums:?}");
    let mut from_journal = BTreeMap::new();
    for e in store.journal().await.unwrap() {
        for p in e.postings {
            *from_journal.entry((p.currency, p.account)).or_insert(0i128) += i128::from(p.minor);
        }
    }
    assert_eq!(store.account_totals().await.unwrap(), from_journal, "running totals drifted");
}
