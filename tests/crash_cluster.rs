//! Two-node crash test: two `qrbridge` daemons on one PostgreSQL database serve the same two
//! partners under load, and one of them, picked at random, is SIGKILLed at a random moment and
//! restarted (as a new node id, so its leases are taken over like a stranger's), 60 times by
//! default (`QRBRIDGE_CRASH_KILLS`). A request whose node died is sent again, unchanged, to the
//! other node, which must answer with the payment the first had begun if it had; a client that
//! hangs up sometimes sends the same request at once to the other node while the first is still
//! under way.
//!
//! Then the node leading the resolver is handed payments whose outcome is in doubt and killed
//! for good: the survivor must take its leases over (after their time to live) and, alone, bring
//! every payment to rest and deliver every event. Afterwards the single-node crash test's checks
//! (`support::crash::check`) hold over both nodes' work: every acknowledged payment exists once
//! per partner and request id, is final and agrees with the acquirer, which saw each instruction
//! at most once; each outcome reached its partner under one event id and none is left; the
//! ledger balances.
//!
//! Needs PostgreSQL (`support::pg`): without one it skips loudly (fails under `CI=true`). It
//! prints its seed; `QRBRIDGE_CRASH_SEED=<seed>` replays the same amounts, request ids, kill
//! moments and victims (process scheduling is the machine's own); `QRBRIDGE_CRASH_KEEP` keeps
//! the nodes' logs.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use qrbridge::model::Task;
use qrbridge::store::{PgStore, Store};
use qrbridge_config::Config;
use serde_json::json;
use support::crash::{self, Book, Daemon, Dir, Nodes, Request, Worker, PARTNERS};
use support::webhook::{Mode, Receiver};
use tokio::time::Instant;

/// Workers per partner; each partner's last one hangs up on some of its requests.
const WORKERS: usize = 2;

/// Short, so a dead node's work changes hands within seconds (1000 is the least allowed).
const LEASE_TTL_MS: u64 = 2_000;

/// Lease changes are logged at info; the rest only when it goes wrong.
const RUST_LOG: &str = "warn,qrbridge::cluster=info";

fn main() {
    let (seed, kills) = crash::seed_and_kills("two-node crash test", 60);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(seed, kills));
}

/// Node `a` (slot 0) and node `b` (slot 1): their config and log, and the process running now.
struct Cluster {
    base: Config,
    nodes: Nodes,
    slots: [Slot; 2],
}

struct Slot {
    name: char,
    /// Restarts so far: each process is a node of its own, `node-<name>-<incarnation>`.
    incarnation: u32,
    id: String,
    config: PathBuf,
    log: PathBuf,
    daemon: Option<Daemon>,
}

impl Cluster {
    fn new(dir: &Path, base: Config, nodes: Nodes) -> Cluster {
        let slot = |name: char| Slot {
            name,
            incarnation: 0,
            id: String::new(),
            config: dir.join(format!("node-{name}.toml")),
            log: dir.join(format!("node-{name}.log")),
            daemon: None,
        };
        Cluster { base, nodes, slots: [slot('a'), slot('b')] }
    }

    async fn start(&mut self, i: usize) {
        let s = &mut self.slots[i];
        assert!(s.daemon.is_none(), "node {} runs already", s.name);
        s.incarnation += 1;
        s.id = format!("node-{}-{}", s.name, s.incarnation);
        let mut c = self.base.clone();
        c.cluster.node_id = Some(s.id.clone());
        crash::write_config(&s.config, &c);
        let d = crash::start(&s.config, &s.log, RUST_LOG).await;
        self.nodes.up(i, d.partner_addr);
        s.daemon = Some(d);
    }

    async fn kill(&mut self, i: usize) {
        self.nodes.down(i);
        crash::kill(self.slots[i].daemon.take().expect("running")).await;
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.slots[i].daemon.as_ref().expect("running").partner_addr
    }

    fn admin_addr(&self, i: usize) -> std::net::SocketAddr {
        self.slots[i].daemon.as_ref().expect("running").admin_addr
    }

    /// The running node that `holder` names.
    fn running(&self, holder: &str) -> Option<usize> {
        (0..2).find(|i| self.slots[*i].daemon.is_some() && names(holder, &self.slots[*i].id))
    }
}

async fn run(seed: u64, kills: usize) {
    let Some(db) = support::pg::database().await else {
        // Skipped loudly by `database`; not a failure outside CI.
        return;
    };
    let started = Instant::now();
    let dir = Dir::new("two-node crash test");
    let pki = dir.path().join("pki");
    // The acquirer and the partners' endpoint outlive every node.
    let sandbox = support::pki_and_sandbox(&pki, 1_000).await;
    // Every event's first attempt is refused, so retries straddle kills and takeovers too.
    let hooks = Receiver::start(&pki, Mode::FailFirst(1)).await;

    // One config but for the node id; the data folder (PKI, settlement files) is shared.
    let mut base = crash::config(dir.path(), sandbox.addr(), &hooks.url(), PARTNERS.len());
    base.storage.url = Some(db.url.clone());
    base.storage.pool_size = 8;
    base.cluster.lease_ttl_ms = LEASE_TTL_MS;
    base.cluster.poll_ms = 100;
    let nodes = Nodes::new(&pki, 2);
    let mut cluster = Cluster::new(dir.path(), base, nodes.clone());
    cluster.start(0).await;
    cluster.start(1).await;

    let book = Book::shared();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut load = Vec::new();
    for partner in PARTNERS {
        for w in 0..WORKERS {
            let worker = Worker::new(
                &nodes,
                partner,
                format!("w{w}"),
                fastrand::Rng::with_seed(rng.u64(..)),
                &book,
            );
            let worker =
                if w + 1 == WORKERS { worker.hanging_up(partner == PARTNERS[1]) } else { worker };
            load.push(tokio::spawn(worker.run()));
        }
    }
    let mut killed = [0usize; 2];
    for _ in 0..kills {
        // The random moment, and the random victim; the other node serves meanwhile. Now and
        // then a longer one, so that a node that took the leases over gets to work under them
        // before it dies in turn.
        let moment = if rng.u8(..5) == 0 { rng.u64(500..=2_500) } else { rng.u64(20..=400) };
        tokio::time::sleep(Duration::from_millis(moment)).await;
        let victim = rng.usize(..2);
        cluster.kill(victim).await;
        killed[victim] += 1;
        cluster.start(victim).await;
    }
    // The load stops; every request in hand is finished (on the other node if need be).
    nodes.stop();
    for l in load {
        let finished = tokio::time::timeout(Duration::from_secs(30), crash::join(l)).await;
        finished.expect("a worker never got an answer to its request in hand");
    }
    let after_kills = started.elapsed();

    // The takeover: the node leading the resolver gets payments whose outcome stays in doubt
    // (late, hung, undecided at the acquirer) and some approved at once, and dies for good with
    // their events undelivered (the partners' endpoint refuses everything until then).
    hooks.set_mode(Mode::FailAll);
    let pg = db.raw().await;
    let leader = poll(Duration::from_secs(10), "a running node leading the resolver", || async {
        cluster.running(&holder(&pg, "resolver").await?)
    })
    .await;
    let survivor = 1 - leader;
    let mut doubtful = tokio::task::JoinSet::new();
    for (n, fen) in [52, 53, 56, 10, 52, 53, 56, 20].into_iter().enumerate() {
        let partner = PARTNERS[n % PARTNERS.len()];
        let client = crash::client(&pki, partner, cluster.addr(leader));
        let book = book.clone();
        doubtful.spawn(async move {
            let amount = 100 * (n as i64 + 1) + fen;
            let (s, q) =
                support::flows::quote(&client, &support::flows::code(None), Some(amount), "PHP")
                    .await;
            assert_eq!(s, StatusCode::CREATED, "{q}");
            let request =
                Request { partner: partner.to_owned(), request_id: format!("in-doubt-{n}") };
            let body = json!({
                "request_id": request.request_id,
                "quote_id": q["quote_id"],
                "payer": {"id": "payer-in-doubt"},
            });
            book.lock().unwrap().sent.insert(request.clone(), body.clone());
            let (s, p) = client.post("/v1/payments", &body).await;
            assert_eq!(s, StatusCode::CREATED, "{p}");
            let payment_id = p["payment_id"].as_str().unwrap().to_owned();
            book.lock().unwrap().ack(&request, &payment_id);
            payment_id
        });
    }
    let mut begun_by_leader = HashSet::new();
    while let Some(done) = doubtful.join_next().await {
        begun_by_leader.insert(done.unwrap());
    }
    let survivor_log_from = std::fs::metadata(&cluster.slots[survivor].log).unwrap().len();
    let leader_id = cluster.slots[leader].id.clone();
    cluster.kill(leader).await;
    let killed_at = Instant::now();
    // What the dead node left: payments in doubt, events undelivered. (A commit it sent just
    // before dying may still land; it could only make these sets smaller.)
    let store = PgStore::connect(&db.url, 2).await.unwrap();
    let in_doubt: HashSet<String> = Store::open_work(&store)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.task != Task::Verify)
        .map(|w| w.payment_id)
        .collect();
    let undelivered: Vec<String> =
        Store::outbox(&store).await.unwrap().into_iter().map(|(_, e)| e.event_id).collect();
    assert!(
        in_doubt.intersection(&begun_by_leader).next().is_some(),
        "none of the payments {leader_id} began was in doubt when it died: {in_doubt:?}"
    );
    assert!(!undelivered.is_empty(), "no event undelivered when {leader_id} died");
    hooks.set_mode(Mode::FailFirst(1));

    // The survivor takes the leases over once they run out, and alone finishes everything.
    let survivor_id = cluster.slots[survivor].id.clone();
    for role in ["resolver", "webhooks"] {
        poll(Duration::from_millis(5 * LEASE_TTL_MS), "the survivor leading", || async {
            names(&holder(&pg, role).await?, &survivor_id).then_some(())
        })
        .await;
    }
    let takeover = killed_at.elapsed();
    let survivor_addr = cluster.addr(survivor);
    let unanswered = book.lock().unwrap().unanswered().len();
    let never_made = crash::replay_all(&pki, survivor_addr, &book).await;
    let book = std::sync::Arc::try_unwrap(book).ok().unwrap().into_inner().unwrap();
    let settled =
        crash::settle(&hooks, &pki, survivor_addr, cluster.admin_addr(survivor), &book).await;
    for id in &in_doubt {
        let p = Store::payment(&store, id).await.unwrap().unwrap();
        assert!(p.state.is_final(), "{id}, in doubt when {leader_id} died, is {:?}", p.state);
    }
    let acked: HashSet<String> = hooks.acked().into_iter().map(|r| r.event_id).collect();
    for event in &undelivered {
        assert!(acked.contains(event), "{event}, undelivered when {leader_id} died, was lost");
    }
    let settled_after = killed_at.elapsed();
    let log = std::fs::read(&cluster.slots[survivor].log).unwrap();
    let log = String::from_utf8_lossy(&log[survivor_log_from as usize..]).into_owned();
    assert!(
        log.lines().any(|l| l.contains("this node leads")
            && l.contains("role=\"resolver\"")
            && l.split_whitespace().any(|f| f
                .strip_prefix("node=")
                .is_some_and(|holder| names(holder, &survivor_id)))),
        "{survivor_id}'s log does not show it taking the resolver over:\n{log}"
    );
    crash::stop(cluster.slots[survivor].daemon.take().expect("running")).await;

    // The database, as the nodes left it.
    let f = crash::check(&store, &sandbox, &hooks, &book, &settled, &never_made).await;
    let led = leadership(&cluster);

    println!(
        "two-node crash test passed: {kills} kills (a {}, b {}) in {:.1} s; {} requests sent ({} never answered), {} payments ({:?}), {} never made; {} answered by the other node ({} of them a payment the first had begun); {} instructions, {} reversals; {} webhook events acknowledged, {} of them again; leadership changes {led:?}; {leader_id} killed for good with {} payments in doubt and {} events undelivered: {survivor_id} led in {:.1} s, all at rest in {:.1} s; total {:.1} s",
        killed[0],
        killed[1],
        after_kills.as_secs_f64(),
        book.sent.len(),
        unanswered,
        settled.payments.len(),
        settled.outcomes,
        never_made.len(),
        book.moved,
        book.moved_found,
        f.instructions,
        f.reversals,
        f.events,
        f.redelivered,
        in_doubt.len(),
        undelivered.len(),
        takeover.as_secs_f64(),
        settled_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}

/// Whether the lease holder `holder` is the node configured as `id` (the daemon may add its
/// process id and a random suffix to the configured name).
fn names(holder: &str, id: &str) -> bool {
    holder.strip_prefix(id).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// Who holds the lease `role` now, if anyone does.
async fn holder(pg: &tokio_postgres::Client, role: &str) -> Option<String> {
    pg.query_opt(
        "SELECT holder FROM leases WHERE name = $1 AND until > clock_timestamp()",
        &[&role],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// Looks every 50 ms until `f` gives something; fails after `limit`.
async fn poll<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + limit;
    let mut every = tokio::time::interval(Duration::from_millis(50));
    loop {
        every.tick().await;
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < until, "no {what} after {limit:?}");
    }
}

/// How often each role started being led, per node (from the nodes' logs).
fn leadership(cluster: &Cluster) -> BTreeMap<String, BTreeMap<char, usize>> {
    let mut led: BTreeMap<String, BTreeMap<char, usize>> = BTreeMap::new();
    for s in &cluster.slots {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("this node leads")) {
            let role = l
                .split("role=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?")
                .to_owned();
            *led.entry(role).or_default().entry(s.name).or_default() += 1;
        }
    }
    led
}
