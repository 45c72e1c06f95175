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
//! It runs on sled, then on PostgreSQL (one daemon on its own schema; the same kills and checks),
//! which fails under `CI=true` when no server answers and is skipped loudly otherwise.
//! (The load, the book and the checks are `support::crash`'s, shared with the two-node test.)
//! It prints its seed; `QRBRIDGE_CRASH_SEED=<seed>` replays the same amounts, request ids and kill
//! moments (process scheduling is the machine's own).

mod support;

use std::time::Duration;

use qrbridge::store::{PgStore, SledStore};
use support::crash::{self, Book, Dir, Nodes, Request, Worker, PARTNERS};
use support::webhook::{Mode, Receiver};

const WORKERS: usize = 4;

fn main() {
    let (seed, kills) = crash::seed_and_kills("crash test", 100);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        run(seed, kills, None).await;
        if let Some(db) = support::pg::database().await {
            run(seed, kills, Some(&db.url)).await;
        }
    });
}

/// The test on sled, or (`database`) on PostgreSQL.
async fn run(seed: u64, kills: usize, database: Option<&str>) {
    let started = tokio::time::Instant::now();
    let dir = Dir::new("crash test");
    let pki = dir.path().join("pki");
    // The acquirer and the partner's endpoint outlive every daemon.
    let sandbox = support::pki_and_sandbox(&pki, 1_000).await;
    // Every event's first attempt is refused, so retries straddle kills too.
    let hooks = Receiver::start(&pki, Mode::FailFirst(1)).await;

    let config = dir.path().join("qrbridge.toml");
    let mut c = crash::config(dir.path(), sandbox.addr(), &hooks.url(), 1);
    c.storage.url = database.map(str::to_owned);
    crash::write_config(&config, &c);
    let log = dir.path().join("daemon.log");
    let book = Book::shared();
    let mut rng = fastrand::Rng::with_seed(seed);
    let partner = PARTNERS[0];

    for cycle in 0..kills {
        let daemon = crash::start(&config, &log, "warn").await;
        let nodes = Nodes::new(&pki, 1);
        nodes.up(0, daemon.partner_addr);
        let mut load = Vec::new();
        // Some requests never answered before a kill are sent again, as a wallet would.
        let unanswered = book.lock().unwrap().unanswered();
        let retry: Vec<(Request, serde_json::Value)> =
            unanswered.into_iter().filter(|_| rng.u8(0..4) == 0).take(16).collect();
        load.push(tokio::spawn(crash::replay(
            pki.clone(),
            daemon.partner_addr,
            retry,
            book.clone(),
        )));
        for w in 0..WORKERS {
            let worker = Worker::new(
                &nodes,
                partner,
                format!("c{cycle}w{w}"),
                fastrand::Rng::with_seed(rng.u64(..)),
                &book,
            );
            // The last worker hangs up on some of its pay requests mid-flight, on a connection
            // of its own.
            let worker = if w + 1 == WORKERS { worker.hanging_up(w % 2 == 0) } else { worker };
            load.push(tokio::spawn(worker.run()));
        }
        // The random moment.
        tokio::time::sleep(Duration::from_millis(rng.u64(20..=400))).await;
        crash::kill(daemon).await;
        for l in load {
            l.abort();
            crash::join(l).await;
        }
    }
    let after_kills = started.elapsed();

    // The last daemon: every request sent is replayed, and every payment comes to rest.
    let daemon = crash::start(&config, &log, "warn").await;
    let never_made = crash::replay_all(&pki, daemon.partner_addr, &book).await;
    let book = std::sync::Arc::try_unwrap(book).ok().unwrap().into_inner().unwrap();
    let settled = crash::settle(&hooks, &pki, daemon.partner_addr, daemon.admin_addr, &book).await;
    crash::stop(daemon).await;

    // The store, as the last daemon left it.
    let f = match database {
        None => {
            let store = SledStore::open(&dir.path().join("db"), 64 << 20).unwrap();
            crash::check(&store, &sandbox, &hooks, &book, &settled, &never_made).await
        }
        Some(url) => {
            let store = PgStore::connect(url, 2).await.unwrap();
            crash::check(&store, &sandbox, &hooks, &book, &settled, &never_made).await
        }
    };

    println!(
        "crash test passed on {}: {kills} kills in {:.1} s; {} requests sent, {} payments ({:?}), {} never made; {} instructions, {} reversals; {} webhook events acknowledged, {} of them again after a kill; total {:.1} s",
        if database.is_some() { "PostgreSQL" } else { "sled" },
        after_kills.as_secs_f64(),
        book.sent.len(),
        settled.payments.len(),
        settled.outcomes,
        never_made.len(),
        f.instructions,
        f.reversals,
        f.events,
        f.redelivered,
        started.elapsed().as_secs_f64(),
    );
}
