//! The store's hot paths (`cargo bench --bench store`): the idempotency lookup every payment
//! request starts with (hit and miss, among 20,000 payments), building and checking a ledger entry,
//! and applying a payment's outcome (payment + journal entry + event + resolver work, one sled
//! batch; no flush — group commit shares those, and the load bench measures them).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qrbridge::model::*;
use qrbridge::store::{Change, SledStore, Work};

mod common;

/// `n` quotes and PENDING payments, written as the engine writes them.
fn seed(
    store: &SledStore,
    dir: &std::path::Path,
    n: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<PaymentRecord> {
    let config = qrbridge_config::from_str("", dir).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let q = common::quote_record(&config, now, chrono::Duration::days(1));
        let p =
            PaymentRecord::pending(&q, &format!("req-{i}"), &"0".repeat(64), "payer", None, now);
        store.put_quote(&q).unwrap();
        let work = WorkItem::new(&p.payment_id, Task::Inquire, now, 0);
        store.begin_payment(&p, &work, now).unwrap();
        out.push(p);
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db"), 64 << 20).unwrap();
    let now = qrbridge::clock::Clock::now(&qrbridge::clock::SystemClock);
    let payments = seed(&store, dir.path(), 20_000, now);

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("idempotency lookup, hit", |b| {
        b.iter(|| {
            i = (i + 7919) % payments.len();
            black_box(store.payment_by_request("partner-demo", &payments[i].request_id).unwrap())
        })
    });
    g.bench_function("idempotency lookup, miss", |b| {
        b.iter(|| black_box(store.payment_by_request("partner-demo", "never-seen").unwrap()))
    });
    let p = &payments[0];
    g.bench_function("ledger entry: build and check", |b| {
        b.iter(|| {
            let e = qrbridge::ledger::payment(black_box(p), now);
            assert!(e.is_balanced());
            e
        })
    });
    let mut k = 0usize;
    g.bench_function("apply an outcome (payment, journal, event, work)", |b| {
        b.iter(|| {
            let current = store.payment(&payments[k].payment_id).unwrap().unwrap();
            k = (k + 1) % payments.len();
            let mut next = current.successor(now);
            next.state = PaymentState::Succeeded;
            let mut change = Change::of(next.clone());
            change.journal = Some(qrbridge::ledger::payment(&next, now));
            change.work = Work::Done;
            store.apply(&change).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
