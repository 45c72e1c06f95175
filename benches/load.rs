//! Load benchmark: the release daemon as its own process, driven over mTLS by a load generator
//! built on hyper's client, side by side with a **baseline** — a bare hyper + rustls mTLS server
//! (its own process too) answering the same two requests with canned JSON: the ceiling of the
//! HTTP/TLS stack on this machine.
//!
//! ```sh
//! cargo bench --bench load                       # closed loop h2 + h1, then 80 % of peak at a fixed rate
//! cargo bench --bench load -- --conns 32 --secs 10
//! cargo bench --bench load -- --preload 1000000  # then start-up time and steady RSS with 1M payments
//! cargo bench --bench load -- --database-url postgres://postgres@127.0.0.1:5432/test --nodes 2
//! cargo bench --bench load -- --risk             # the same daemon without and with risk rules
//! cargo bench --bench load -- --acquirer-apart   # the sandbox acquirer as its own process
//! ```
//!
//! `--risk` compares two daemons (their own stores), one with no risk rules beyond each
//! partner's per-payment maximum and one with a rule of every kind (amount bounds, payer
//! velocity, merchant and MCC day limits, exposure against prefunding, near-limit flags, the
//! three blocklists), every limit far enough not to refuse: the cost of the checks and their
//! counters. They run in turns (off, on, off, on) so drift in the machine falls on both.
//!
//! With `--database-url` the daemons keep their state in PostgreSQL (a schema of the run's own,
//! dropped after), `--nodes N` daemons side by side on it, the connections spread over them; the
//! database server's CPU (every `postgres` process on this machine) is measured beside theirs.
//!
//! One transaction is `POST /v1/quotes` then `POST /v1/payments`, the pay durable as always. The
//! sandbox acquirer runs in-process in the daemon (its CPU counts against the daemon). The report
//! is a table, then one JSON line with `tps`, `baseline_tps`, `ratio`, `p50_ms`, `p99_ms`,
//! `p999_ms`, `rss_mb`, `cpu_s_per_1k`, `disk_bytes_per_payment` (and more).

// Floats here are statistics of the run (rates, seconds, megabytes), never money; no amount is
// computed in this file.
#![allow(clippy::disallowed_types)]

/// The daemon's allocator (see bridge/main.rs) in this process too: the preload writes with the
/// daemon's store code, and the baseline server (this program, started again) is measured with
/// the same allocator as the daemon it is compared with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use qrbridge_adapters::decode::tlv::{field, with_crc};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

mod common;

const BASELINE_ENV: &str = "QRBRIDGE_BENCH_BASELINE_PKI";

#[derive(Debug, Clone)]
struct Args {
    conns: usize,
    secs: u64,
    warmup: u64,
    preload: Option<u64>,
    database_url: Option<String>,
    nodes: usize,
    risk: bool,
    /// The sandbox acquirer as its own process, not inside each daemon.
    acquirer_apart: bool,
    /// Store settings for every daemon the bench starts (their defaults where not given).
    knobs: Knobs,
}

/// `--flush-every-ms N` and `--cache-bytes N`: the daemons' `storage.flush_every_ms` and
/// `storage.cache_bytes` (the preload's store too), their defaults where not given.
#[derive(Debug, Clone, Copy, Default)]
struct Knobs {
    flush_every_ms: Option<u64>,
    cache_bytes: Option<u64>,
}

impl Knobs {
    fn apply(&self, c: &mut qrbridge_config::Config) {
        if let Some(ms) = self.flush_every_ms {
            c.storage.flush_every_ms = ms;
        }
        if let Some(b) = self.cache_bytes {
            c.storage.cache_bytes = b;
        }
    }

    /// For the run's header line.
    fn describe(&self) -> String {
        let d = qrbridge_config::model::Storage::default();
        format!(
            "storage.flush_every_ms = {}, storage.cache_bytes = {} (the sled store's; none with --database-url)",
            self.flush_every_ms.unwrap_or(d.flush_every_ms),
            self.cache_bytes.unwrap_or(d.cache_bytes)
        )
    }
}

fn args() -> Args {
    let mut a = Args {
        conns: 64,
        secs: 10,
        warmup: 3,
        preload: None,
        database_url: None,
        nodes: 1,
        risk: false,
        acquirer_apart: false,
        knobs: Knobs::default(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let next = || argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match argv[i].as_str() {
            "--conns" => a.conns = next().expect("--conns N") as usize,
            "--secs" => a.secs = next().expect("--secs N"),
            "--warmup" => a.warmup = next().expect("--warmup N"),
            "--preload" => a.preload = Some(next().expect("--preload N")),
            "--nodes" => a.nodes = next().expect("--nodes N").max(1) as usize,
            "--flush-every-ms" => {
                a.knobs.flush_every_ms = Some(next().expect("--flush-every-ms N"))
            }
            "--cache-bytes" => a.knobs.cache_bytes = Some(next().expect("--cache-bytes N")),
            "--risk" => {
                a.risk = true;
                i += 1;
                continue;
            }
            "--acquirer-apart" => {
                a.acquirer_apart = true;
                i += 1;
                continue;
            }
            "--database-url" => {
                a.database_url = Some(argv.get(i + 1).expect("--database-url URL").clone())
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Some(pki) = std::env::var_os(BASELINE_ENV) {
        rt.block_on(baseline_server(PathBuf::from(pki)));
        return;
    }
    let args = args();
    rt.block_on(async move {
        match args.preload {
            Some(n) => preload_run(&args, n).await,
            None if args.risk => risk_run(&args).await,
            None => load_run(&args).await,
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The two servers.

/// The baseline: the daemon's own accept loop and TLS configuration, canned answers, no logic.
async fn baseline_server(pki: PathBuf) {
    let tls = qrbridge::tls::server_config(
        &pki.join("server.crt"),
        &pki.join("server.key"),
        qrbridge::tls::roots(&[&pki.join("ca.crt")]).unwrap(),
        true,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("baseline listening: {}", listener.local_addr().unwrap());
    let quote = Bytes::from(
        json!({"quote_id": "quo_canned", "pay_amount": {"currency": "CNY", "value": "2372"},
               "wallet_amount": {"currency": "PHP", "value": "19420"},
               "rate": {"pair": "CNY/PHP", "price": "8.18716000"},
               "created_at": "2026-05-22T08:15:30.123Z", "expires_at": "2026-05-22T08:17:30.123Z"})
        .to_string(),
    );
    let payment = Bytes::from(
        json!({"payment_id": "pay_canned", "request_id": "r", "quote_id": "quo_canned",
               "status": "SUCCEEDED", "pay_amount": {"currency": "CNY", "value": "2372"},
               "wallet_amount": {"currency": "PHP", "value": "19420"}, "failure": null,
               "created_at": "2026-05-22T08:15:30.123Z", "updated_at": "2026-05-22T08:15:30.123Z"})
        .to_string(),
    );
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let limits = qrbridge_adapters::https::ServeLimits {
        connections_max: 4096,
        connections_per_ip_max: 4096,
        handshakes_max: 4096,
        handshake_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    qrbridge_adapters::https::serve(listener, tls, limits, stopped, move |req, _conn| {
        let (quote, payment) = (quote.clone(), payment.clone());
        async move {
            let path = req.uri().path().to_owned();
            let _ = req.into_body().collect().await;
            let body = if path == "/v1/quotes" { quote } else { payment };
            Ok(http::Response::builder()
                .status(StatusCode::CREATED)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))
                .unwrap())
        }
    })
    .await;
}

/// A server process and where it listens.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// A daemon's ops listener (plain HTTP: `/metrics`), when it has one.
    ops: Option<SocketAddr>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    async fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().await;
        let _ = self.child.wait().await;
    }
}

async fn spawn(cmd: Command, prefix: &str) -> (Server, Duration) {
    let (server, took, _) = spawn_line(cmd, prefix).await;
    (server, took)
}

/// Spawns `cmd` and waits for its line starting with `prefix`: the server, how long it took, and
/// the rest of that line.
async fn spawn_line(mut cmd: Command, prefix: &str) -> (Server, Duration, String) {
    let started = Instant::now();
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix(prefix) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            let took = started.elapsed();
            let rest = rest.to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (Server { child, addr, ops: None }, took, rest);
        }
    }
    panic!("{prefix}: the server exited before listening");
}

/// Starts a daemon (`node` of those sharing `database`, when there is one) with the run's store
/// `knobs` and its configuration changed by `tweak`: the server (its partner address), how long
/// it took to listen, and its admin address.
async fn start_node_with(
    dir: &Path,
    database: Option<&str>,
    node: usize,
    knobs: Knobs,
    tweak: impl FnOnce(&mut qrbridge_config::Config),
) -> (Server, Duration, SocketAddr) {
    let mut c = qrbridge::daemon::embedded_config(dir, loopback()).unwrap();
    c.storage.path = dir.join("db");
    c.storage.url = database.map(str::to_owned);
    c.cluster.node_id = Some(format!("bench-{node}"));
    c.ops.listen = Some(([127, 0, 0, 1], 0).into());
    for p in &mut c.partners {
        p.limits.requests_per_s = 1_000_000;
        p.limits.burst = 1_000_000;
    }
    c.limits.connections_max = 4096;
    c.limits.connections_per_ip_max = 4096;
    c.limits.handshakes_max = 4096;
    c.limits.concurrency_max = 4096;
    knobs.apply(&mut c);
    tweak(&mut c);
    let config = dir.join(format!("qrbridge-{node}.toml"));
    std::fs::write(&config, toml::to_string(&c).unwrap()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qrbridge"));
    cmd.args(["serve", "--config"]).arg(&config).env("RUST_LOG", "error");
    let (mut server, took, rest) = spawn_line(cmd, "qrbridge listening: partner=https://").await;
    let find = |prefix: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(prefix));
    let admin = find("admin=https://").expect("the admin address").parse().unwrap();
    server.ops = find("ops=http://").and_then(|a| a.parse().ok());
    (server, took, admin)
}

/// The sandbox acquirer as its own process (`qrbridge sandbox-acquirer`), with the certificates
/// the in-process one would use: the daemon's CPU is then its own, without the acquirer's
/// server half of each instruction (a real acquirer is another company's machine).
async fn start_sandbox(dir: &Path) -> Server {
    let c = qrbridge::daemon::embedded_config(dir, loopback()).unwrap();
    let a = c.acquirers.iter().find(|a| a.endpoint == "sandbox").expect("the sandbox acquirer");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qrbridge"));
    cmd.args(["sandbox-acquirer", "--addr", "127.0.0.1:0", "--cert"])
        .arg(&c.tls.server_cert)
        .arg("--key")
        .arg(&c.tls.server_key)
        .arg("--client-ca")
        .arg(&a.ca)
        .env("RUST_LOG", "error");
    spawn(cmd, "sandbox acquirer on https://").await.0
}

/// With `apart`, the sandbox acquirer as its own process, and its address for the daemons
/// (`https://…`); else neither, and each daemon keeps the sandbox inside it.
async fn sandbox_apart(dir: &Path, apart: bool) -> (Option<Server>, Option<String>) {
    if !apart {
        return (None, None);
    }
    let sandbox = start_sandbox(dir).await;
    let endpoint = format!("https://{}", sandbox.addr);
    (Some(sandbox), Some(endpoint))
}

/// Points the daemon's sandbox acquirer at `endpoint` (the sandbox as its own process), when
/// there is one; else the sandbox stays inside the daemon.
fn acquirer_at(endpoint: Option<&str>) -> impl FnOnce(&mut qrbridge_config::Config) + '_ {
    move |c| {
        if let Some(e) = endpoint {
            for a in c.acquirers.iter_mut().filter(|a| a.endpoint == "sandbox") {
                a.endpoint = e.to_owned();
            }
        }
    }
}

/// A schema of the run's own in the database at `url`: the URL selecting it, and a client to
/// measure and drop it with.
async fn bench_schema(url: &str) -> (String, tokio_postgres::Client, String) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("--database-url {url}: {e}"));
    tokio::spawn(conn);
    let schema = format!("bench_{}", std::process::id());
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}options=-csearch_path%3D{schema}"), client, schema)
}

/// The daemon's store flushes so far, from its `/metrics` (the group commit's histograms): how
/// many, the writes they carried, and how many took longer than 10 ms and than 50 ms.
#[derive(Debug, Clone, Copy)]
struct Flushes {
    count: f64,
    writes: f64,
    over_10ms: f64,
    over_50ms: f64,
}

/// `None` when the page cannot be read or lacks a figure: nothing is reported rather than a
/// count that silently includes every flush since the start.
async fn flushes(ops: SocketAddr) -> Option<Flushes> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(ops).await.ok()?;
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await.ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).await.ok()?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return None;
    }
    // A sample of `metric` (whatever its other labels: the store's name), with `le` when given.
    let value = |metric: &str, le: Option<&str>| -> Option<f64> {
        let found: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(metric)?;
                let (labels, v) = match rest.strip_prefix('{') {
                    Some(r) => r.split_once('}')?,
                    None => ("", rest),
                };
                let wanted =
                    le.is_none_or(|le| labels.split(',').any(|p| p == format!("le=\"{le}\"")));
                wanted.then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .collect();
        (!found.is_empty()).then(|| found.iter().sum())
    };
    let duration = qrbridge::store::FLUSH_DURATION;
    let bucket = format!("{duration}_bucket");
    let count = value(&format!("{duration}_count"), None)?;
    Some(Flushes {
        count,
        writes: value(&format!("{}_sum", qrbridge::store::FLUSH_WRITES), None)?,
        over_10ms: count - value(&bucket, Some("0.01"))?,
        over_50ms: count - value(&bucket, Some("0.05"))?,
    })
}

/// CPU seconds of every `postgres` process on this machine (the database server's whole cost).
fn postgres_cpu_seconds() -> f64 {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "postgres")
                })
                .map(cpu_seconds)
                .sum()
        })
        .unwrap_or(0.0)
}
async fn start_baseline(pki: &Path) -> Server {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(BASELINE_ENV, pki);
    spawn(cmd, "baseline listening: ").await.0
}

fn loopback() -> qrbridge_config::Listeners {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    qrbridge_config::Listeners { partner: any, admin: any, acquirer: any }
}

// ---------------------------------------------------------------------------------------------
// The load generator.

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect(addr: SocketAddr, pki: &Path, h2: bool) -> Sender {
        Self::connect_as(addr, pki, h2, "partner-demo").await
    }

    /// Connects presenting the development certificate `who` (`partner-demo`, `admin`).
    async fn connect_as(addr: SocketAddr, pki: &Path, h2: bool, who: &str) -> Sender {
        let roots = qrbridge::tls::roots(&[&pki.join("ca.crt")]).unwrap();
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                qrbridge::tls::load_certs(&pki.join(format!("{who}.crt"))).unwrap(),
                qrbridge::tls::load_key(&pki.join(format!("{who}.key"))).unwrap(),
            )
            .unwrap();
        tls.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream =
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap();
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(send)
        }
    }

    async fn get(&mut self, path: &str) -> (StatusCode, Bytes) {
        self.send(Request::get(path), String::new()).await
    }

    async fn post(&mut self, path: &str, body: String) -> (StatusCode, Bytes) {
        self.send(Request::post(path), body).await
    }

    async fn send(&mut self, req: http::request::Builder, body: String) -> (StatusCode, Bytes) {
        let req = req
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Each connection sends its next transaction as soon as the last one is answered.
    Closed,
    /// Transactions arrive at this many per second in all, spread over the connections; a late
    /// start counts against the latency (no coordinated omission).
    Rate(u64),
}

struct Outcome {
    tps: f64,
    pay: Histogram<u64>,
    errors: u64,
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// Payers the transactions come from, in turn (each pays every `PAYERS`-th transaction).
const PAYERS: u64 = 10_000;

/// One transaction; returns the pay's latency from `intended` (its scheduled start).
async fn transaction(s: &mut Sender, code: &str, intended: Instant) -> Option<Duration> {
    let fen = REQUEST_SEQ.load(Ordering::Relaxed) % 50;
    let quote = json!({"code": code, "wallet_currency": "PHP",
                       "amount": {"currency": "CNY", "value": (2_300 + fen).to_string()}});
    let (st, body) = s.post("/v1/quotes", quote.to_string()).await;
    if st != StatusCode::CREATED {
        return None;
    }
    let q: Value = serde_json::from_slice(&body).ok()?;
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    let pay = json!({"request_id": format!("bench-{}-{n}", std::process::id()),
                     "quote_id": q["quote_id"], "payer": {"id": format!("bench-payer-{}", n % PAYERS)}});
    let started = Instant::now();
    let lateness = started.saturating_duration_since(intended);
    let (st, _) = s.post("/v1/payments", pay.to_string()).await;
    (st == StatusCode::CREATED).then(|| started.elapsed() + lateness)
}

/// Drives `conns` connections, connection `i` to `addrs[i % len]`.
async fn drive(
    addrs: &[SocketAddr],
    pki: &Path,
    h2: bool,
    conns: usize,
    mode: Mode,
    secs: u64,
) -> Outcome {
    let code = with_crc(
        &[
            field(0, "01"),
            field(1, "11"),
            field(15, "2504034400010344500034453110001"),
            field(52, "5812"),
            field(53, "156"),
            field(58, "CN"),
            field(59, "HANDAN NOODLE HOUSE"),
            field(60, "HANDAN"),
        ]
        .concat(),
    );
    // Every connection is made (its mTLS handshake done) before the clock starts: the run
    // measures transactions, not 64 handshakes at once at its start. A connection that fails
    // fails the run here.
    let connecting: Vec<_> = (0..conns)
        .map(|i| {
            let (pki, addr) = (pki.to_owned(), addrs[i % addrs.len()]);
            tokio::spawn(async move { Sender::connect(addr, &pki, h2).await })
        })
        .collect();
    let mut senders = Vec::with_capacity(conns);
    for c in connecting {
        senders.push(c.await.expect("a connection of the run"));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut s) in senders.into_iter().enumerate() {
        let code = code.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = started + Duration::from_secs(secs);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut done, mut errors) = (0u64, 0u64);
            let mut ticks = match mode {
                Mode::Closed => None,
                Mode::Rate(r) => {
                    let period = Duration::from_secs_f64(conns as f64 / r as f64);
                    let first = started + period.mul_f64(i as f64 / conns as f64);
                    let mut t = tokio::time::interval_at(first, period);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    Some(t)
                }
            };
            while Instant::now() < deadline {
                let intended = match &mut ticks {
                    Some(t) => t.tick().await,
                    None => Instant::now(),
                };
                match transaction(&mut s, &code, intended).await {
                    Some(l) => {
                        hist.saturating_record(l.as_micros() as u64);
                        done += 1;
                    }
                    None => errors += 1,
                }
            }
            (hist, done, errors)
        }));
    }
    let mut pay = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut done, mut errors) = (0, 0);
    for t in tasks {
        let (h, d, e) = t.await.unwrap();
        pay.add(h).unwrap();
        done += d;
        errors += e;
    }
    Outcome { tps: done as f64 / started.elapsed().as_secs_f64(), pay, errors }
}

// ---------------------------------------------------------------------------------------------
// Measuring the daemon from outside.

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of `pid` (/proc/<pid>/stat, in USER_HZ = 100 ticks per second).
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // After the command: state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt,
    // majflt, cmajflt, utime, stime. Counted by position: tpgid is -1 for a process without a
    // terminal, so dropping what does not parse as unsigned would shift utime out of place.
    let field = |i: usize| -> u64 {
        after.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (field(11) + field(12)) as f64 / 100.0
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

async fn load_run(args: &Args) {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    qrbridge::pki::ensure_dev_pki(&pki).unwrap();
    let database = match &args.database_url {
        Some(url) => Some(bench_schema(url).await),
        None => None,
    };
    let url = database.as_ref().map(|(u, ..)| u.as_str());
    let (sandbox, endpoint) = sandbox_apart(dir.path(), args.acquirer_apart).await;
    let mut nodes = Vec::new();
    for n in 0..args.nodes {
        let at = acquirer_at(endpoint.as_deref());
        nodes.push(start_node_with(dir.path(), url, n, args.knobs, at).await.0);
    }
    let acquirer_cpu = || sandbox.as_ref().map(|s| cpu_seconds(s.pid())).unwrap_or(0.0);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|s| s.addr).collect();
    let node_cpu = |nodes: &[Server]| nodes.iter().map(|s| cpu_seconds(s.pid())).sum::<f64>();
    let db_cpu = || if url.is_some() { postgres_cpu_seconds() } else { 0.0 };
    let baseline = start_baseline(&pki).await;
    let store = match url {
        Some(_) => format!("PostgreSQL ({} node(s) on it)", args.nodes),
        None => "sled".into(),
    };
    println!(
        "machine: {}; generator in this process, daemon(s) and baseline as their own processes; store: {store}",
        machine()
    );
    let where_acquirer = match &sandbox {
        Some(_) => "its own process",
        None => "in-process in each daemon",
    };
    println!(
        "sandbox acquirer: {where_acquirer}; {} connections, {} s per run after {} s warm-up; {}",
        args.conns,
        args.secs,
        args.warmup,
        args.knobs.describe()
    );

    let mut rows = Vec::new();
    let mut paid = 0u64;
    let mut daemon_h2 = None;
    let mut baseline_h2 = None;
    let (mut cpu_per_1k, mut db_per_1k, mut acquirer_per_1k) = (0.0, 0.0, 0.0);
    for h2 in [true, false] {
        let proto = if h2 { "HTTP/2" } else { "HTTP/1.1" };
        for who in ["daemon", "baseline"] {
            let (targets, procs) = match who {
                "daemon" => (addrs.clone(), &nodes[..]),
                _ => (vec![baseline.addr], std::slice::from_ref(&baseline)),
            };
            drive(&targets, &pki, h2, args.conns, Mode::Closed, args.warmup).await;
            let (cpu0, db0, acq0) = (node_cpu(procs), db_cpu(), acquirer_cpu());
            let o = drive(&targets, &pki, h2, args.conns, Mode::Closed, args.secs).await;
            let (cpu, db, acq) = (node_cpu(procs) - cpu0, db_cpu() - db0, acquirer_cpu() - acq0);
            let done = o.pay.len() as f64;
            if who == "daemon" {
                paid += o.pay.len();
                if h2 {
                    cpu_per_1k = cpu / done * 1000.0;
                    db_per_1k = db / done * 1000.0;
                    acquirer_per_1k = acq / done * 1000.0;
                }
            }
            let db_col = if who == "daemon" && url.is_some() {
                format!("{:.3}", db / done * 1000.0)
            } else {
                String::new()
            };
            rows.push(format!(
                "| {who} | {proto} | closed loop | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {db_col} | {} |",
                o.tps,
                ms(&o.pay, 0.5),
                ms(&o.pay, 0.99),
                ms(&o.pay, 0.999),
                cpu / done * 1000.0,
                o.errors
            ));
            match (who, h2) {
                ("daemon", true) => daemon_h2 = Some(o),
                ("baseline", true) => baseline_h2 = Some(o),
                _ => {}
            }
        }
    }
    let (d, b) = (daemon_h2.unwrap(), baseline_h2.unwrap());
    // The latency target is taken at 80 % of the daemon's peak, arrivals at a fixed rate.
    let rate = (d.tps * 0.8).max(1.0) as u64;
    drive(&addrs, &pki, true, args.conns, Mode::Rate(rate), args.warmup).await;
    let first_ops = nodes.first().and_then(|n| n.ops);
    let before = match first_ops {
        Some(ops) => flushes(ops).await,
        None => None,
    };
    let fixed_cpu0 = node_cpu(&nodes);
    let fixed = drive(&addrs, &pki, true, args.conns, Mode::Rate(rate), args.secs).await;
    let fixed_cpu_per_1k =
        (node_cpu(&nodes) - fixed_cpu0) / (fixed.pay.len().max(1) as f64) * 1000.0;
    let after = match first_ops {
        Some(ops) => flushes(ops).await,
        None => None,
    };
    paid += fixed.pay.len();
    rows.push(format!(
        "| daemon | HTTP/2 | fixed rate {rate}/s | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | | {} |",
        fixed.tps,
        ms(&fixed.pay, 0.5),
        ms(&fixed.pay, 0.99),
        ms(&fixed.pay, 0.999),
        fixed_cpu_per_1k,
        fixed.errors
    ));
    let rss_mb =
        nodes.iter().map(|s| proc_status_kb(s.pid(), "VmHWM:")).max().unwrap_or(0) as f64 / 1024.0;
    for n in nodes {
        n.stop().await;
    }
    if let Some(s) = sandbox {
        s.stop().await;
    }
    baseline.stop().await;
    let disk_bytes = match &database {
        Some((_, client, schema)) => {
            let total: i64 = client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
                    &[schema],
                )
                .await
                .unwrap()
                .get(0);
            client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
            total as u64
        }
        None => dir_bytes(&dir.path().join("db")),
    };
    let disk = disk_bytes as f64 / paid.max(1) as f64;

    println!();
    println!("| server | protocol | mode | tx/s | pay p50 ms | pay p99 ms | pay p99.9 ms | CPU s / 1k tx | database CPU s / 1k tx | errors |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "daemon / baseline (HTTP/2, closed loop): {:.3}; daemon peak RSS {rss_mb:.1} MiB; {store}: {disk:.0} bytes on disk per payment ({paid} payments)",
        d.tps / b.tps
    );
    if args.acquirer_apart {
        println!("sandbox acquirer (its own process), HTTP/2 closed loop: {acquirer_per_1k:.3} CPU s / 1k tx, not in the daemon's figure");
    }
    if let Some((before, after, n)) =
        before.zip(after).map(|(b, a)| (b, a, a.count - b.count)).filter(|(.., n)| *n > 0.0)
    {
        println!(
            "fixed rate, the first daemon's store flushes (its /metrics): {n:.0}, {:.1} writes each, {:.0} over 10 ms, {:.0} over 50 ms",
            (after.writes - before.writes) / n,
            after.over_10ms - before.over_10ms,
            after.over_50ms - before.over_50ms
        );
    } else if first_ops.is_some() {
        println!("fixed rate, the first daemon's store flushes: its /metrics could not be read");
    }
    println!(
        "{}",
        json!({
            "store": if url.is_some() { "postgres" } else { "sled" }, "nodes": args.nodes,
            "tps": d.tps.round(), "baseline_tps": b.tps.round(), "ratio": d.tps / b.tps,
            "p50_ms": ms(&d.pay, 0.5), "p99_ms": ms(&d.pay, 0.99), "p999_ms": ms(&d.pay, 0.999),
            "fixed_rate_tps": rate, "fixed_rate_p99_ms": ms(&fixed.pay, 0.99),
            "fixed_rate_p999_ms": ms(&fixed.pay, 0.999),
            "fixed_rate_cpu_s_per_1k": fixed_cpu_per_1k,
            "rss_mb": rss_mb, "cpu_s_per_1k": cpu_per_1k, "database_cpu_s_per_1k": db_per_1k,
            "acquirer_apart": args.acquirer_apart, "acquirer_cpu_s_per_1k": acquirer_per_1k,
            "disk_bytes_per_payment": disk.round(),
            "connections": args.conns, "payments": paid,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Risk rules: the same daemon without and with them.

/// A rule of every kind, none of them close to refusing the bench's payments.
fn every_rule(c: &mut qrbridge_config::Config, dir: &Path) {
    let r = &mut c.risk.rules;
    r.near_limit_bps = Some(500);
    r.merchant_day_cny_minor_max = Some(900_000_000_000_000);
    r.mccs.entry("5812".into()).or_default().day_cny_minor_max = Some(900_000_000_000_000);
    r.merchants
        .entry("sandbox".into())
        .or_default()
        .entry("500034453110001".into())
        .or_default()
        .day_cny_minor_max = Some(900_000_000_000_000);
    for p in &c.partners {
        let pr = r.partners.entry(p.id.clone()).or_default();
        pr.payment_cny_minor_min = Some(1);
        pr.payer.hour_count_max = Some(1_000_000);
        pr.payer.day_count_max = Some(1_000_000);
        pr.payer.hour_cny_minor_max = Some(900_000_000_000_000);
        pr.payer.day_cny_minor_max = Some(900_000_000_000_000);
        for cur in &p.wallet_currencies {
            let cr = pr.currencies.entry(*cur).or_default();
            cr.payment_wallet_minor_max = Some(900_000_000_000_000);
            cr.prefund_minor = Some(900_000_000_000_000);
            cr.credit_line_minor = Some(0);
        }
    }
    let lists = dir.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    for (name, body) in [
        ("merchants", "M-BLOCKED-1\nM-BLOCKED-2\n"),
        ("mccs", "7995\n"),
        ("acquirers", "gone-acquirer\n"),
    ] {
        std::fs::write(lists.join(name), body).unwrap();
    }
    c.risk.blocklists.merchants = Some(lists.join("merchants"));
    c.risk.blocklists.mccs = Some(lists.join("mccs"));
    c.risk.blocklists.acquirers = Some(lists.join("acquirers"));
}

async fn risk_run(args: &Args) {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    qrbridge::pki::ensure_dev_pki(&pki).unwrap();
    let (off_dir, on_dir) = (dir.path().join("off"), dir.path().join("on"));
    for d in [&off_dir, &on_dir] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::create_dir_all(d.join("pki")).unwrap();
        for f in std::fs::read_dir(&pki).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), d.join("pki").join(f.file_name())).unwrap();
        }
    }
    println!("machine: {}; sled; {} connections, HTTP/2 closed loop, {} s per turn after {} s warm-up, turns off/on/off/on", machine(), args.conns, args.secs, args.warmup);
    let mut results: Vec<(bool, f64, f64, f64)> = Vec::new();
    for on in [false, true, false, true] {
        let d = if on { &on_dir } else { &off_dir };
        let on_dir = d.clone();
        let (node, _, admin) = start_node_with(d, None, 0, args.knobs, move |c| {
            if on {
                every_rule(c, &on_dir);
            }
        })
        .await;
        let addrs = [node.addr];
        drive(&addrs, &pki, true, args.conns, Mode::Closed, args.warmup).await;
        let cpu0 = cpu_seconds(node.pid());
        let o = drive(&addrs, &pki, true, args.conns, Mode::Closed, args.secs).await;
        let cpu = cpu_seconds(node.pid()) - cpu0;
        let done = o.pay.len() as f64;
        println!(
            "rules {}: {:.0} tx/s, pay p99 {:.2} ms, {:.3} CPU s / 1k tx, {} errors",
            if on { "on " } else { "off" },
            o.tps,
            ms(&o.pay, 0.99),
            cpu / done * 1000.0,
            o.errors
        );
        results.push((on, o.tps, ms(&o.pay, 0.99), cpu / done * 1000.0));
        // What the rules decided besides letting payments through (refusals, flags): none is
        // expected, every limit being far away; a decision kept costs a write.
        let mut a = Sender::connect_as(admin, &pki, true, "admin").await;
        let (status, body) = a.get("/admin/v1/risk/decisions?limit=1000").await;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let kept = v["decisions"].as_array().map_or(0, Vec::len);
        println!("  risk decisions kept (refused or flagged): {kept} ({status})");
        node.stop().await;
    }
    let mean = |on: bool, f: fn(&(bool, f64, f64, f64)) -> f64| {
        let v: Vec<f64> = results.iter().filter(|r| r.0 == on).map(f).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (off_tps, on_tps) = (mean(false, |r| r.1), mean(true, |r| r.1));
    let drop_pct = (1.0 - on_tps / off_tps) * 100.0;
    println!(
        "with every rule on: {drop_pct:.1} % fewer transactions a second (the target: at most 5 %)"
    );
    println!(
        "{}",
        json!({
            "tps_off": off_tps.round(), "tps_on": on_tps.round(), "drop_pct": drop_pct,
            "p99_ms_off": mean(false, |r| r.2), "p99_ms_on": mean(true, |r| r.2),
            "cpu_s_per_1k_off": mean(false, |r| r.3), "cpu_s_per_1k_on": mean(true, |r| r.3),
            "connections": args.conns,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Preload: 1M payments, then start-up time and steady RSS.

/// Threads writing the preload at once: two, as this project's machines have two cores (with
/// sled's log no longer written per state change a second writer gains; 8 wrote no faster and
/// left more bytes).
const WRITERS: u64 = 2;

/// Marks every event in the outbox delivered (one writer at a time: a mark written twice is
/// harmless but would count twice).
fn deliver_all(store: &qrbridge::store::SledStore, at: chrono::DateTime<chrono::Utc>) {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap();
    let mut after = None;
    loop {
        let page = store.outbox_after(after, 4096).unwrap();
        if page.events.is_empty() {
            return;
        }
        after = page.cursor;
        for (seq, e) in page.events {
            let d = qrbridge::model::DeliveredEvent {
                v: 1,
                event: e,
                delivered_at: at,
                attempts: 1,
                skipped: false,
            };
            store.delivered(seq, &d).unwrap();
        }
    }
}

/// Preloaded payments per business day, and a day in milliseconds.
const PER_DAY: u64 = 10_000;
const DAY_MS: u64 = 86_400_000;

async fn preload_run(args: &Args, n: u64) {
    use qrbridge::model::*;
    use qrbridge::store::{Change, SledStore, Work};

    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    qrbridge::pki::ensure_dev_pki(&pki).unwrap();
    let mut config = qrbridge::daemon::embedded_config(dir.path(), loopback()).unwrap();
    args.knobs.apply(&mut config);
    let began = Instant::now();
    // On a runtime of its own, so that the store (and sled's lock on the folder) is gone when
    // the daemon starts.
    let db = dir.path().join("db");
    let cache = config.storage.cache_bytes;
    let config2 = config.clone();
    // On a runtime of its own (dropped before the daemon starts, with sled's lock on the folder),
    // written by WRITERS threads at once, as the daemon's requests would.
    let ((reads, batches, keys), counted, footprint, swept) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store =
            std::sync::Arc::new(rt.block_on(async { SledStore::open(&db, cache).unwrap() }));
        let template = sample(&config2);
        // History as it builds up: PER_DAY payments a day, the last made a day ago.
        let end = template.0.quote.created_at - chrono::Duration::days(1);
        let handle = rt.handle().clone();
        let done = std::sync::atomic::AtomicU64::new(0);
        let ttl = chrono::Duration::seconds(config2.fx.quote_ttl_s as i64);
        std::thread::scope(|scope| {
            for w in 0..WRITERS {
                let (store, template, handle, done) = (&store, &template, &handle, &done);
                scope.spawn(move || {
                    for i in (w..n).step_by(WRITERS as usize) {
                        let now = end
                            - chrono::Duration::milliseconds(
                                ((n - 1 - i) * DAY_MS / PER_DAY) as i64,
                            );
                        let mut q = template.0.clone();
                        q.quote_id = new_id("quo");
                        // Quoted just before it is paid, valid for the configured time.
                        q.quote.created_at = now;
                        q.quote.expires_at = now + ttl;
                        store.put_quote(&q).unwrap();
                        let mut p = template.1.clone();
                        p.payment_id = new_id("pay");
                        p.quote_id = q.quote_id.clone();
                        p.request_id = format!("preload-{i}");
                        p.created_at = now;
                        p.updated_at = now;
                        let work = WorkItem::new(&p.payment_id, Task::Inquire, now, 0);
                        store.begin_payment(&p, &work, now).unwrap();
                        let mut next = p.successor(now);
                        next.state = PaymentState::Succeeded;
                        next.booked = true;
                        let mut change = Change::of(next.clone());
                        change.work = Work::Done;
                        change.journal = Some(qrbridge::ledger::payment(&next, now));
                        change.events = vec![OutboxEvent {
                            v: 1,
                            event_id: new_id("evt"),
                            partner: next.partner.clone(),
                            kind: "payment.succeeded".into(),
                            payment_id: next.payment_id.clone(),
                            created_at: now,
                            data: serde_json::to_value(qrbridge::api::PaymentAnswer::new(&next))
                                .unwrap(),
                            replayed_at: None,
                        }];
                        store.apply(&change).unwrap();
                        let total = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if total % 10_000 == 0 {
                            // The events of the last 10,000 delivered, as the webhook worker would.
                            deliver_all(store, now);
                            handle.block_on(store.flush()).unwrap();
                        }
                        if total % 100_000 == 0 {
                            eprintln!(
                                "preloaded {total} payments in {:.0} s",
                                began.elapsed().as_secs_f64()
                            );
                        }
                    }
                });
            }
        });
        deliver_all(&store, end);
        rt.block_on(store.flush()).unwrap();
        let ops = store.ops();
        // Not part of the writing: timed apart, and taken off below. First the daemon's quote
        // retention over the history, as its sweep would have gone over it day by day (every
        // quote here is used, so none goes): its place is kept in the store, so the daemon's
        // first sweep starts there, as a restarted daemon's would.
        // The daemon's own sweep, once (told to stop before it starts), at the history's end.
        let sweeping = Instant::now();
        let policy = qrbridge::store::retention::QuoteRetention {
            keep_after_expiry: chrono::Duration::seconds(config2.storage.quote_retention_s as i64),
            every: Duration::from_secs(config2.storage.retention_sweep_s),
            batch: 4096,
        };
        let clock: std::sync::Arc<dyn qrbridge::clock::Clock> =
            std::sync::Arc::new(qrbridge::clock::ManualClock::new(end));
        let (_stop, stopped) = tokio::sync::watch::channel(true);
        rt.block_on(qrbridge::store::retention::run(store.clone(), clock, policy, stopped));
        rt.block_on(store.flush()).unwrap();
        let swept = sweeping.elapsed();
        let counting = Instant::now();
        let footprint = store.footprint().unwrap();
        let counted = counting.elapsed() + swept;
        drop(store);
        drop(rt);
        (ops, counted, footprint, swept)
    })
    .join()
    .unwrap();
    let load_s = (began.elapsed() - counted).as_secs_f64();
    let per = |x: u64| x as f64 / n as f64;
    let disk = dir_bytes(&dir.path().join("db")) as f64 / n as f64;
    // With --acquirer-apart the daemon's RSS and CPU are its own, without the sandbox's books.
    let (sandbox, endpoint) = sandbox_apart(dir.path(), args.acquirer_apart).await;
    let at = acquirer_at(endpoint.as_deref());
    let (daemon, startup, admin) = start_node_with(dir.path(), None, 0, args.knobs, at).await;
    let rss_idle = proc_status_kb(daemon.pid(), "VmRSS:") as f64 / 1024.0;
    // One business day's settlement inside that history (the last full day: PER_DAY payments,
    // whatever the history's length).
    let day = qrbridge::days::business_day(
        qrbridge::clock::Clock::now(&qrbridge::clock::SystemClock) - chrono::Duration::days(2),
        config.settlement.time_zone.parse().unwrap(),
        chrono::NaiveTime::parse_from_str(&config.settlement.cutoff, "%H:%M").unwrap(),
    );
    let mut a = Sender::connect_as(admin, &pki, true, "admin").await;
    let t0 = Instant::now();
    let (status, body) = a.post(&format!("/admin/v1/settlement/{day}"), String::new()).await;
    let settle_s = t0.elapsed().as_secs_f64();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let summary: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let o = drive(&[daemon.addr], &pki, true, args.conns, Mode::Closed, args.secs).await;
    let rss_steady = proc_status_kb(daemon.pid(), "VmRSS:") as f64 / 1024.0;
    let rss_peak = proc_status_kb(daemon.pid(), "VmHWM:") as f64 / 1024.0;
    daemon.stop().await;
    if let Some(s) = sandbox {
        s.stop().await;
    }
    println!("machine: {}", machine());
    println!("{}", args.knobs.describe());
    println!(
        "sandbox acquirer: {}",
        if args.acquirer_apart { "its own process" } else { "in-process in the daemon" }
    );
    println!("preloaded {n} payments in {load_s:.0} s; sled {disk:.0} bytes per payment");
    println!(
        "quote retention's sweep over that history (apart from the writing): {:.1} s",
        swept.as_secs_f64()
    );
    // What is left live per payment, by kind of record (the key's prefix: see
    // bridge/store/sled_store.rs, `key`).
    let live: u64 = footprint.values().map(|(_, k, v)| k + v).sum();
    println!("live records: {:.0} bytes per payment", per(live));
    for (kind, (count, kb, vb)) in &footprint {
        println!(
            "  '{kind}': {:.2} per payment, {:.0} key + {:.0} value bytes",
            per(*count),
            per(*kb),
            per(*vb)
        );
    }
    println!(
        "store operations per payment (quote, PENDING, outcome, delivered mark): {:.2} point reads, {:.2} atomic multi-key writes (each behind an intent record), {:.2} keys written (intents included)",
        per(reads),
        per(batches),
        per(keys)
    );
    println!(
        "settlement of {day} ({} payments that day, {n} in the store): {settle_s:.3} s",
        summary["acquirers"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t["instructions"].as_u64()).sum::<u64>())
            .unwrap_or(0)
    );
    println!("start-up with them: {:.3} s (spawn to listening); RSS idle {rss_idle:.1} MiB, after {} s of load at {:.0} tx/s {rss_steady:.1} MiB (peak {rss_peak:.1} MiB)", startup.as_secs_f64(), args.secs, o.tps);
    println!(
        "{}",
        json!({"preloaded": n, "acquirer_apart": args.acquirer_apart, "startup_s": startup.as_secs_f64(), "load_s": load_s, "settle_s": settle_s,
               "reads_per_payment": per(reads), "batches_per_payment": per(batches), "keys_per_payment": per(keys), "rss_mb": rss_steady, "rss_idle_mb": rss_idle,
               "rss_peak_mb": rss_peak, "tps": o.tps.round(), "p99_ms": ms(&o.pay, 0.99),
               "disk_bytes_per_payment": disk.round()})
    );
}

/// A quote and its PENDING payment as the engine makes them, priced now.
fn sample(
    config: &qrbridge_config::Config,
) -> (qrbridge::model::QuoteRecord, qrbridge::model::PaymentRecord) {
    let now = qrbridge::clock::Clock::now(&qrbridge::clock::SystemClock);
    let q = common::quote_record(config, now, chrono::Duration::days(3650));
    let mut p =
        qrbridge::model::PaymentRecord::pending(&q, "", &"0".repeat(64), "bench-payer", None, now);
    p.acquirer_ref = Some("SBX00000001".into());
    (q, p)
}
