//! Crash test: the `qrbridge` binary, under a load of payments, killed with SIGKILL at random
//! moments and restarted each time (100 kills by default; `QRBRIDGE_CRASH_KILLS` for more), with
//! the sandbox acquirer and the partner's webhook endpoint living in this process so they outlast
//! every kill. Afterwards, with one last daemon running until every payment has come to rest:
//!
//! - every payment the client saw acknowledged exists, exactly once, under the same id;
//! - every request the client sent and never saw answered either made exactly one payment or none
//!   (its replay says which), and no payment exists that no request made;
//! - every payment is final, and agrees with the acquirer (SUCCEEDED ⇔ approved there);
//! - the acquirer saw at most one instruction per payment, and none for anything else;
//! - each payment's outcome reached the partner under exactly one event id (redeliveries of that
//!   id after a kill are counted and printed), and nothing is left undelivered;
//! - the ledger balances, and exactly the succeeded payments are booked.
//!
//! It prints its seed; `QRBRIDGE_CRASH_SEED=<seed>` replays the same amounts, request ids and kill
//! moments (process scheduling is the machine's own).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use qrbridge::clock::{Clock, SystemClock};
use qrbridge::model::PaymentState;
use qrbridge::store::{SledStore, Store};
use qrbridge_adapters::acquirer::wire::InstructionStatus;
use qrbridge_config::{Acquirer, Identity};
use serde_json::{json, Value};
use support::daemon::TestClient;
use support::webhook::{Mode, Receiver, SECRET};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WORKERS: usize = 4;

fn main() {
    let seed: u64 = std::env::var("QRBRIDGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemClock.now().timestamp_subsec_nanos().into());
    let kills: usize =
        std::env::var("QRBRIDGE_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    println!("crash test: seed {seed}, {kills} kills (replay with QRBRIDGE_CRASH_SEED={seed})");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook(info);
        eprintln!("crash test FAILED with seed {seed}: replay with QRBRIDGE_CRASH_SEED={seed}");
    }));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(seed, kills));
}

/// What the client knows.
#[derive(Default)]
struct Book {
    /// Every pay request sent: request id → its body.
    sent: BTreeMap<String, Value>,
    /// Answered 200/201: request id → payment id.
    acked: BTreeMap<String, String>,
}

impl Book {
    fn ack(&mut self, request_id: &str, payment_id: &str) {
        let prev = self.acked.insert(request_id.to_owned(), payment_id.to_owned());
        if let Some(prev) = prev {
            assert_eq!(prev, payment_id, "{request_id} answered with two payments");
        }
    }
}

async fn run(seed: u64, kills: usize) {
    let started = tokio::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // The daemon's log and data stay behind for a look when asked.
    println!("crash test data under {}", dir.path().display());
    let dir = if std::env::var_os("QRBRIDGE_CRASH_KEEP").is_some() {
        Dir(Some(dir.keep()), None)
    } else {
        Dir(None, Some(dir))
    };
    let pki = dir.path().join("pki");
    // The acquirer and the partner's endpoint outlive every daemon.
    let sandbox = support::pki_and_sandbox(&pki, 1_000).await;
    // Every event's first attempt is refused, so retries straddle kills too.
    let hooks = Receiver::start(&pki, Mode::FailFirst(1)).await;

    let config_path = write_config(dir.path(), sandbox.addr(), &hooks.url());
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_qrbridge"));
    let log = dir.path().join("daemon.log");
    let book = Arc::new(Mutex::new(Book::default()));
    let mut rng = fastrand::Rng::with_seed(seed);

    for cycle in 0..kills {
        let (mut child, addr) = start(&bin, &config_path, &log).await;
        let client = TestClient::new(&pki, Some("partner-demo"), addr, false);
        let mut load = Vec::new();
        // Some requests never answered before a kill are sent again, as a wallet would.
        let unanswered: Vec<(String, Value)> = {
            let b = book.lock().unwrap();
            b.sent
                .iter()
                .filter(|(r, _)| !b.acked.contains_key(*r))
                .map(|(r, v)| (r.clone(), v.clone()))
                .collect()
        };
        let retry: Vec<(String, Value)> =
            unanswered.into_iter().filter(|_| rng.u8(0..4) == 0).take(16).collect();
        load.push(tokio::spawn(replay(client.clone(), retry, book.clone())));
        for w in 0..WORKERS {
            let rng = fastrand::Rng::with_seed(rng.u64(..));
            // The last worker hangs up on some of its pay requests mid-flight, on a connection
            // of its own (an HTTP/2 reset, or a closed HTTP/1 connection).
            let (client, hang_up) = if w + 1 == WORKERS {
                (TestClient::new(&pki, Some("partner-demo"), addr, w % 2 == 0), true)
            } else {
                (client.clone(), false)
            };
            load.push(tokio::spawn(pay_loop(
                client,
                format!("c{cycle}w{w}"),
                rng,
                book.clone(),
                hang_up,
            )));
        }
        // The random moment.
        tokio::time::sleep(Duration::from_millis(rng.u64(20..=400))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        for l in load {
            l.abort();
            let _ = l.await;
        }
    }
    let after_kills = started.elapsed();

    // The last daemon: every request sent is replayed as it was; its answer says whether it made
    // a payment (the same one as before, if one was acknowledged).
    let (child, addr) = start(&bin, &config_path, &log).await;
    let client = TestClient::new(&pki, Some("partner-demo"), addr, false);
    let sent: Vec<(String, Value)> = book.lock().unwrap().sent.clone().into_iter().collect();
    let mut replays = tokio::task::JoinSet::new();
    for chunk in sent.chunks(sent.len().div_ceil(8).max(1)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        replays.spawn(async move {
            let mut answers = Vec::new();
            for (request_id, body) in chunk {
                let (s, p) = client.post("/v1/payments", &body).await;
                answers.push((request_id, s, p));
            }
            answers
        });
    }
    let mut never_made = HashSet::new();
    while let Some(answers) = replays.join_next().await {
        for (request_id, s, p) in answers.unwrap() {
            match s {
                StatusCode::OK | StatusCode::CREATED => {
                    book.lock().unwrap().ack(&request_id, p["payment_id"].as_str().unwrap())
                }
                StatusCode::GONE | StatusCode::NOT_FOUND => {
                    assert!(
                        !book.lock().unwrap().acked.contains_key(&request_id),
                        "{request_id}: {p}"
                    );
                    never_made.insert(request_id);
                }
                other => panic!("replay of {request_id}: {other} {p}"),
            }
        }
    }
    let book = Arc::try_unwrap(book).ok().unwrap().into_inner().unwrap();
    let payments: HashSet<String> = book.acked.values().cloned().collect();
    assert_eq!(payments.len(), book.acked.len(), "two requests share a payment");

    // Every payment comes to rest, and the partner hears of it.
    hooks
        .wait_until(Duration::from_secs(180), |got| {
            let told: HashSet<&str> = got
                .iter()
                .filter(|r| r.acked && r.kind.starts_with("payment."))
                .map(|r| r.payment_id.as_str())
                .collect();
            payments.iter().all(|p| told.contains(p.as_str()))
        })
        .await;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut api_status = HashMap::new();
    for id in &payments {
        let (s, p) = client.get(&format!("/v1/payments/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{p}");
        let status = p["status"].as_str().unwrap().to_owned();
        assert_ne!(status, "PROCESSING", "{p}");
        let label = match p["failure"]["code"].as_str() {
            Some(code) => format!("{status}/{code}"),
            None => status.clone(),
        };
        *statuses.entry(label).or_default() += 1;
        api_status.insert(id.clone(), status);
    }
    stop(child).await;

    // The store, as the last daemon left it.
    let store = SledStore::open(&dir.path().join("db"), 64 << 20).unwrap();
    let stored = store.payments().unwrap();
    let mut by_request = HashMap::new();
    for p in &stored {
        assert!(
            by_request.insert(p.request_id.clone(), p.payment_id.clone()).is_none(),
            "{} paid twice",
            p.request_id
        );
        assert!(p.state.is_final(), "{} is {:?}", p.payment_id, p.state);
        assert!(payments.contains(&p.payment_id), "{} was made by no request", p.payment_id);
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
    for (request_id, payment_id) in &book.acked {
        assert_eq!(
            by_request.get(request_id),
            Some(payment_id),
            "acknowledged {request_id} is not stored as {payment_id}"
        );
    }
    for request_id in &never_made {
        assert!(
            !by_request.contains_key(request_id),
            "{request_id} said no payment, but one exists"
        );
    }
    let known: HashSet<&str> = stored.iter().map(|p| p.payment_id.as_str()).collect();
    let instructed = sandbox.all_received();
    assert!(
        instructed.iter().all(|i| known.contains(i.as_str())),
        "the acquirer was instructed for a payment the bridge does not have"
    );
    for w in store.open_work().unwrap() {
        assert_eq!(w.task, qrbridge::model::Task::Verify, "{w:?} left undone");
    }

    // Webhooks: one event id per outcome, matching the final status; nothing left behind.
    let acked = hooks.acked();
    let mut outcome_events: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in acked.iter().filter(|r| r.kind.starts_with("payment.")) {
        assert!(r.signature_ok && r.header_matches_body);
        assert_eq!(r.kind, format!("payment.{}", api_status[&r.payment_id].to_lowercase()));
        outcome_events.entry(&r.payment_id).or_default().insert(&r.event_id);
    }
    for id in &payments {
        assert_eq!(
            outcome_events.get(id.as_str()).map(HashSet::len),
            Some(1),
            "{id}: {:?}",
            outcome_events.get(id.as_str())
        );
    }
    assert!(store.outbox().unwrap().is_empty(), "undelivered events left");
    assert!(store.parked().unwrap().is_empty());
    let delivered = store.delivered_events().unwrap();
    let distinct: HashSet<&str> = delivered.iter().map(|d| d.event.event_id.as_str()).collect();
    assert_eq!(distinct.len(), delivered.len(), "an event recorded delivered twice");
    let acked_ids: HashSet<&str> = acked.iter().map(|r| r.event_id.as_str()).collect();
    let redelivered = acked.len() - acked_ids.len();
    assert!(delivered.iter().all(|d| acked_ids.contains(d.event.event_id.as_str())));

    let sums = store.ledger_sums().await.unwrap();
    assert!(sums.values().all(|s| *s == 0), "ledger does not balance: {sums:?}");
    // The running totals the store keeps (positions) are the journal's, kill after kill.
    let mut from_journal = std::collections::BTreeMap::new();
    for e in store.journal().unwrap() {
        for p in e.postings {
            *from_journal.entry((p.currency, p.account)).or_insert(0i128) += i128::from(p.minor);
        }
    }
    assert_eq!(store.account_totals().unwrap(), from_journal, "running totals drifted");

    println!(
        "crash test passed: {kills} kills in {:.1} s; {} requests sent, {} payments ({statuses:?}), {} never made; {} instructions, {} reversals; {} webhook events acknowledged, {redelivered} of them again after a kill; total {:.1} s",
        after_kills.as_secs_f64(),
        book.sent.len(),
        payments.len(),
        never_made.len(),
        instructed.len(),
        sandbox.reversals().len(),
        acked_ids.len(),
        started.elapsed().as_secs_f64(),
    );
}

/// The test's folder, kept when `QRBRIDGE_CRASH_KEEP` is set.
struct Dir(Option<PathBuf>, Option<tempfile::TempDir>);

impl Dir {
    fn path(&self) -> &Path {
        match (&self.0, &self.1) {
            (Some(kept), _) => kept,
            (None, Some(t)) => t.path(),
            (None, None) => unreachable!("one or the other"),
        }
    }
}

fn write_config(dir: &Path, sandbox: SocketAddr, hooks: &str) -> PathBuf {
    let mut c = qrbridge::daemon::embedded_config(dir, support::loopback()).unwrap();
    c.storage.path = dir.join("db");
    c.acquirers = vec![Acquirer {
        id: "sandbox".into(),
        endpoint: format!("https://{sandbox}"),
        ca: dir.join("pki/ca.crt"),
        identity: Some(Identity::SanDns("acquirer-sandbox".into())),
        timeout_ms: 300,
        connect_timeout_ms: 300,
        answer_bytes_max: 64 * 1024,
    }];
    c.partners.truncate(1);
    c.partners[0].webhook_url = Some(hooks.to_owned());
    c.partners[0].webhook_secret = Some(SECRET.into());
    c.partners[0].limits.requests_per_s = 100_000;
    c.partners[0].limits.burst = 100_000;
    c.resolver.inquiry_schedule_s = vec![1];
    c.resolver.payment_expiry_s = 2;
    c.webhooks.backoff_initial_ms = 50;
    c.webhooks.backoff_max_ms = 200;
    let path = dir.join("qrbridge.toml");
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    path
}

/// Starts the daemon and waits for it to say where it listens.
async fn start(bin: &Path, config: &Path, log: &Path) -> (Child, SocketAddr) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("qrbridge listening: partner=https://") {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            // Keep reading stdout so the daemon never blocks on it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, addr);
        }
    }
    panic!("the daemon exited before listening: {:?}", child.wait().await);
}

/// SIGTERM, then waits for a clean exit.
async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(status.success());
    let exit = child.wait().await.unwrap();
    assert!(exit.success(), "the daemon did not stop cleanly: {exit:?}");
}

/// Quotes and pays until the daemon dies. Amounts pick the sandbox's behaviours: mostly approved
/// at once, some declined, late, hung, failing with 500, reset, or racing a reversal. With
/// `hang_up`, every other pay request is dropped after 0–20 ms, answered or not: the client went
/// away (its request stays in the book as sent and unanswered).
async fn pay_loop(
    client: TestClient,
    prefix: String,
    mut rng: fastrand::Rng,
    book: Arc<Mutex<Book>>,
    hang_up: bool,
) {
    for n in 0.. {
        let fen = match rng.u8(0..20) {
            0 => 51,
            1 => 52,
            2 => 53,
            3 => 54,
            4 => 55,
            5 => 56,
            _ => rng.i64(0..50),
        };
        let amount = rng.i64(1..200) * 100 + fen;
        let quote = json!({
            "code": support::flows::code(None),
            "amount": {"currency": "CNY", "value": amount.to_string()},
            "wallet_currency": "PHP",
        });
        let Ok((s, q)) =
            client.try_send(Method::POST, "/v1/quotes", Some(quote.to_string().into_bytes())).await
        else {
            return;
        };
        assert_eq!(s, StatusCode::CREATED, "{q}");
        let request_id = format!("{prefix}-{n}");
        let body = json!({
            "request_id": request_id,
            "quote_id": q["quote_id"],
            "payer": {"id": format!("payer-{}", rng.u32(..1000))},
        });
        book.lock().unwrap().sent.insert(request_id.clone(), body.clone());
        let send =
            client.try_send(Method::POST, "/v1/payments", Some(body.to_string().into_bytes()));
        if hang_up && rng.bool() {
            // Whatever came back within the patience is not read either.
            let patience = Duration::from_millis(rng.u64(0..=20));
            let _ = tokio::time::timeout(patience, send).await;
            continue;
        }
        let Ok((s, p)) = send.await else {
            return;
        };
        assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{s}: {p}");
        book.lock().unwrap().ack(&request_id, p["payment_id"].as_str().unwrap());
    }
}

/// Sends earlier requests again, exactly as they were.
async fn replay(client: TestClient, requests: Vec<(String, Value)>, book: Arc<Mutex<Book>>) {
    for (request_id, body) in requests {
        let Ok((s, p)) = client
            .try_send(Method::POST, "/v1/payments", Some(body.to_string().into_bytes()))
            .await
        else {
            return;
        };
        match s {
            StatusCode::OK | StatusCode::CREATED => {
                book.lock().unwrap().ack(&request_id, p["payment_id"].as_str().unwrap())
            }
            // The quote ran out, or was lost in a kill before any payment used it (a quote has no
            // flush of its own): no payment was made; the final replay checks.
            StatusCode::GONE | StatusCode::NOT_FOUND => {}
            other => panic!("replay of {request_id}: {other} {p}"),
        }
    }
}
