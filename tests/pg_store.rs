//! Proves the PostgreSQL store keeps the sled store's promises when many tasks (as many daemons
//! would) share one database: a partner's request id, a quote, an order and an acquirer's refund
//! id are each claimed once, by constraints, under concurrent begins; a change from a stale copy
//! is refused and a refused change leaves nothing; the outbox cursor misses no event whose
//! transaction committed after a later one was read (one transaction is held open on a second
//! connection while another commits); pages never split a transaction; running totals equal the
//! journal after concurrent writes; quotes are purged as sled purges them; the audit log stays one
//! chain; migrations apply once even when raced, and a newer schema is refused; a replay bumps the
//! outbox epoch. Each test runs against the real server in a schema of its own
//! (`support/pg.rs`) and skips loudly when there is none.

#[allow(dead_code)]
#[path = "support/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../benches/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use qrbridge::model::*;
use qrbridge::store::codec::encode;
use qrbridge::store::postgres::migrate;
use qrbridge::store::{
    Backlog, Begin, BeginError, Change, EventSeq, Fence, PgStore, Store, StoreError, Work,
};
use qrbridge_fx::{Amount, Currency};
use serde_json::json;

fn now() -> DateTime<Utc> {
    qrbridge::clock::Clock::now(&qrbridge::clock::SystemClock)
}

/// A quote as the engine prices and stores it (the benches' fixture), made at `at`.
fn quote(at: DateTime<Utc>, ttl: Duration) -> QuoteRecord {
    let config = qrbridge_config::from_str("", &std::env::temp_dir()).unwrap();
    common::quote_record(&config, at, ttl)
}

fn hash(c: char) -> String {
    c.to_string().repeat(64)
}

async fn store(db: &pg::PgTest) -> PgStore {
    PgStore::connect(&db.url, 16).await.unwrap()
}

/// A new PENDING payment of `q` for `request`, as the engine makes it.
fn pending(
    q: &QuoteRecord,
    request: &str,
    order: Option<&str>,
    at: DateTime<Utc>,
) -> PaymentRecord {
    PaymentRecord::pending(q, request, &hash('a'), "payer-1", order.map(str::to_owned), at)
}

async fn begin(s: &PgStore, p: &PaymentRecord, at: DateTime<Utc>) -> Result<Begin, StoreError> {
    s.begin_payment(p, &WorkItem::new(&p.payment_id, Task::Inquire, at, 0), at).await
}

/// A quote stored and a payment begun on it.
async fn begun(s: &PgStore, request: &str, at: DateTime<Utc>) -> PaymentRecord {
    let q = quote(at, Duration::minutes(5));
    s.put_quote(&q).await.unwrap();
    let p = pending(&q, request, None, at);
    assert!(matches!(begin(s, &p, at).await, Ok(Begin::Created)));
    p
}

fn event(p: &PaymentRecord, kind: &str, at: DateTime<Utc>) -> OutboxEvent {
    OutboxEvent {
        v: RECORD_VERSION,
        event_id: new_id("evt"),
        partner: p.partner.clone(),
        kind: kind.into(),
        payment_id: p.payment_id.clone(),
        created_at: at,
        data: json!({"payment_id": p.payment_id, "kind": kind}),
        replayed_at: None,
    }
}

/// `p` succeeding: booked, an event, its work done.
fn succeeded(p: &PaymentRecord, at: DateTime<Utc>) -> Change {
    let mut next = p.successor(at);
    next.state = PaymentState::Succeeded;
    next.booked = true;
    Change {
        journal: Some(qrbridge::ledger::payment(&next, at)),
        events: vec![event(&next, "payment.succeeded", at)],
        work: Work::Done,
        ..Change::of(next)
    }
}

/// `p` failing: released (its quote too when `release_quote`), an event, its work done.
fn failed(p: &PaymentRecord, release_quote: bool, at: DateTime<Utc>) -> Change {
    let mut next = p.successor(at);
    next.state = PaymentState::Failed;
    next.failure = Some(Failure { code: "DECLINED".into(), message: "declined".into() });
    Change {
        events: vec![event(&next, "payment.failed", at)],
        work: Work::Done,
        release_quote,
        ..Change::of(next)
    }
}

fn refund(p: &PaymentRecord, acquirer_refund_id: &str, at: DateTime<Utc>) -> RefundRecord {
    RefundRecord {
        v: RECORD_VERSION,
        refund_id: new_id("ref"),
        payment_id: p.payment_id.clone(),
        partner: p.partner.clone(),
        acquirer: p.acquirer.clone(),
        acquirer_refund_id: acquirer_refund_id.into(),
        request_hash: hash('r'),
        amount: Amount::from_minor(Currency::CNY, 100).unwrap(),
        wallet_amount: Amount::from_minor(p.wallet.currency(), 800).unwrap(),
        reason: "returned".into(),
        created_at: at,
    }
}

/// Reads the outbox on from `cursor` until every event of `want` came out; returns what came
/// out, in order, and the cursor. Another test's transaction open at the moment holds events
/// back (that is the design): polled, within a bound.
async fn read_until(
    s: &PgStore,
    mut cursor: Option<u64>,
    want: &[EventSeq],
) -> (Vec<EventSeq>, Option<u64>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut got = Vec::new();
    loop {
        let page = s.outbox_after(cursor, 1000).await.unwrap();
        cursor = page.cursor;
        got.extend(page.events.iter().map(|(seq, _)| *seq));
        if want.iter().all(|w| got.contains(w)) {
            return (got, cursor);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events {want:?} never came out after the cursor; got {got:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Waits until a reader from the start sees every event the outbox holds (no transaction older
/// than theirs still running anywhere on the server).
async fn settled(s: &PgStore) {
    let all: Vec<EventSeq> = s.outbox().await.unwrap().iter().map(|(seq, _)| *seq).collect();
    read_until(s, None, &all).await;
}

#[tokio::test]
async fn begin_claims_the_request_the_quote_and_the_order_once() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let q = quote(t, Duration::minutes(5));
    s.put_quote(&q).await.unwrap();
    assert_eq!(s.quote(&q.quote_id).await.unwrap(), Some(q.clone()));
    let p = pending(&q, "req-1", Some("order-1"), t);
    assert!(matches!(begin(&s, &p, t).await, Ok(Begin::Created)));
    assert_eq!(s.payment_by_request(&p.partner, "req-1").await.unwrap(), Some(p.clone()));
    assert_eq!(
        s.work_item(&p.payment_id).await.unwrap(),
        Some(WorkItem::new(&p.payment_id, Task::Inquire, t, 0))
    );

    // A replay (a retry makes a new payment id) answers with the payment as it now stands.
    let moved = p.successor(t);
    s.apply(&Change::of(moved.clone())).await.unwrap();
    let retry = pending(&q, "req-1", Some("order-1"), t);
    match begin(&s, &retry, t).await {
        Ok(Begin::Replay(got)) => assert_eq!(*got, moved),
        other => panic!("a replay gave {other:?}"),
    }
    // Even once the quote has expired.
    match begin(&s, &retry, t + Duration::hours(1)).await {
        Ok(Begin::Replay(got)) => assert_eq!(got.payment_id, p.payment_id),
        other => panic!("a replay after expiry gave {other:?}"),
    }
    let reuse = PaymentRecord { request_hash: hash('b'), ..pending(&q, "req-1", None, t) };
    assert!(matches!(
        begin(&s, &reuse, t).await,
        Err(StoreError::Begin(BeginError::RequestConflict))
    ));

    let q2 = quote(t, Duration::minutes(5));
    s.put_quote(&q2).await.unwrap();
    let refused = [
        (pending(&q, "req-2", None, t), t, BeginError::QuoteUsed),
        (pending(&q2, "req-3", Some("order-1"), t), t, BeginError::OrderPaid),
        (pending(&quote(t, Duration::minutes(5)), "req-4", None, t), t, BeginError::QuoteNotFound),
        (pending(&q2, "req-5", None, t), q2.quote.expires_at, BeginError::QuoteExpired),
    ];
    for (p, at, want) in refused {
        match begin(&s, &p, at).await {
            Err(StoreError::Begin(got)) => assert_eq!(got, want, "{}", p.request_id),
            other => panic!("{} gave {other:?}, not {want:?}", p.request_id),
        }
        assert_eq!(s.payment(&p.payment_id).await.unwrap(), None);
        assert_eq!(s.work_item(&p.payment_id).await.unwrap(), None);
    }
    // Another partner's quote is no quote of this one's.
    let theirs =
        QuoteRecord { quote_id: new_id("quo"), partner: "partner-other".into(), ..q2.clone() };
    s.put_quote(&theirs).await.unwrap();
    let p6 = PaymentRecord { quote_id: theirs.quote_id.clone(), ..pending(&q2, "req-6", None, t) };
    assert!(matches!(begin(&s, &p6, t).await, Err(StoreError::Begin(BeginError::QuoteNotFound))));

    // A payment that failed lets its order go; its quote only when the change releases it.
    let p7 = pending(&q2, "req-7", Some("order-2"), t);
    assert!(matches!(begin(&s, &p7, t).await, Ok(Begin::Created)));
    s.apply(&failed(&p7, false, t)).await.unwrap();
    assert!(matches!(
        begin(&s, &pending(&q2, "req-8", None, t), t).await,
        Err(StoreError::Begin(BeginError::QuoteUsed))
    ));
    let q3 = quote(t, Duration::minutes(5));
    s.put_quote(&q3).await.unwrap();
    assert!(matches!(
        begin(&s, &pending(&q3, "req-9", Some("order-2"), t), t).await,
        Ok(Begin::Created)
    ));
    s.apply(&failed(&moved, true, t)).await.unwrap();
    assert!(matches!(
        begin(&s, &pending(&q, "req-10", Some("order-1"), t), t).await,
        Ok(Begin::Created)
    ));
}

#[tokio::test]
async fn a_change_from_a_stale_copy_is_refused_and_leaves_nothing() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let p = begun(&s, "req-1", t).await;
    let change = succeeded(&p, t);
    let stale =
        |r: Result<(), StoreError>| matches!(r, Err(StoreError::Stale(id)) if id == p.payment_id);
    // Skipping a revision, the stored revision again, a payment never begun.
    let mut skipped = change.clone();
    skipped.payment.rev += 1;
    assert!(stale(s.apply(&skipped).await));
    assert!(stale(s.apply(&Change::of(p.clone())).await));
    let ghost = PaymentRecord { payment_id: new_id("pay"), ..change.payment.clone() };
    assert!(matches!(s.apply(&Change::of(ghost)).await, Err(StoreError::Stale(_))));
    assert_eq!(s.payment(&p.payment_id).await.unwrap(), Some(p.clone()));
    assert!(s.journal().await.unwrap().is_empty());
    assert!(s.outbox().await.unwrap().is_empty());

    s.apply(&change).await.unwrap();
    assert!(stale(s.apply(&change).await), "the same change twice");
    assert_eq!(s.payment(&p.payment_id).await.unwrap(), Some(change.payment.clone()));
    assert_eq!(s.journal_of(&p.payment_id).await.unwrap(), vec![change.journal.clone().unwrap()]);
    assert_eq!(s.work_item(&p.payment_id).await.unwrap(), None);
    assert!(s.open_work().await.unwrap().is_empty());
    let outbox = s.outbox().await.unwrap();
    assert_eq!(outbox.iter().map(|(_, e)| e).collect::<Vec<_>>(), vec![&change.events[0]]);
    s.flush().await.unwrap();
}

#[tokio::test]
async fn an_acquirer_refund_id_is_recorded_once() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let p = begun(&s, "req-1", t).await;
    let paid = succeeded(&p, t);
    s.apply(&paid).await.unwrap();
    let r = refund(&paid.payment, "ACQ-R-1", t);
    let spread = Amount::zero(p.wallet.currency());
    let refunded = Change {
        refund: Some(r.clone()),
        journal: Some(qrbridge::ledger::refund(&paid.payment, &r, spread, t)),
        events: vec![event(&paid.payment, "refund.succeeded", t)],
        ..Change::of(paid.payment.successor(t))
    };
    s.apply(&refunded).await.unwrap();

    // The same acquirer id again (a new bridge id, as a retry makes): refused, naming the first,
    // and nothing of the change is kept.
    let again = RefundRecord { refund_id: new_id("ref"), ..r.clone() };
    let twice = Change {
        refund: Some(again),
        journal: Some(qrbridge::ledger::refund(&refunded.payment, &r, spread, t)),
        events: vec![event(&refunded.payment, "refund.succeeded", t)],
        ..Change::of(refunded.payment.successor(t))
    };
    match s.apply(&twice).await {
        Err(StoreError::RefundExists(existing)) => assert_eq!(*existing, r),
        other => panic!("a second refund under ACQ-R-1 gave {other:?}"),
    }
    assert_eq!(s.payment(&p.payment_id).await.unwrap(), Some(refunded.payment.clone()));
    assert_eq!(s.refunds_of(&p.payment_id).await.unwrap(), vec![r.clone()]);
    assert_eq!(s.journal_of(&p.payment_id).await.unwrap().len(), 2);
    assert_eq!(s.outbox().await.unwrap().len(), 2);
    assert_eq!(s.refund_by_acquirer_id(&r.acquirer, "ACQ-R-1").await.unwrap(), Some(r.clone()));
    assert_eq!(s.refund_by_acquirer_id(&r.acquirer, "ACQ-R-2").await.unwrap(), None);

    // Another acquirer id on the same payment is another refund, oldest first.
    let r2 = refund(&refunded.payment, "ACQ-R-2", t + Duration::seconds(1));
    s.apply(&Change { refund: Some(r2.clone()), ..Change::of(refunded.payment.successor(t)) })
        .await
        .unwrap();
    assert_eq!(s.refunds_of(&p.payment_id).await.unwrap(), vec![r.clone(), r2.clone()]);
    assert_eq!(s.refunds_made(t, t + Duration::seconds(1)).await.unwrap(), vec![r.clone()]);
    assert_eq!(s.refunds_made(t, t + Duration::seconds(2)).await.unwrap(), vec![r, r2]);
    assert!(s
        .refunds_made(t + Duration::seconds(2), t + Duration::hours(1))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn payments_are_found_by_the_time_they_were_made() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let mut made = Vec::new();
    for (i, at) in [t - Duration::hours(2), t - Duration::hours(1), t].into_iter().enumerate() {
        made.push(begun(&s, &format!("req-{i}"), at).await);
    }
    assert_eq!(made_in(&s, t - Duration::minutes(90), t).await, vec!["req-1"]);
    assert_eq!(
        made_in(&s, t - Duration::hours(2), t + Duration::seconds(1)).await,
        vec!["req-0", "req-1", "req-2"]
    );
    assert!(made_in(&s, t, t).await.is_empty());
    assert!(made_in(&s, t, t - Duration::hours(3)).await.is_empty());
    assert_eq!(s.payments().await.unwrap(), made);
}

/// The request ids of the payments made in `[from, to)`, in order.
async fn made_in(s: &PgStore, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    s.payments_made(from, to).await.unwrap().into_iter().map(|p| p.request_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_begins_claim_once() {
    let Some(db) = pg::database().await else { return };
    let s = Arc::new(store(&db).await);
    let t = now();
    let q = quote(t, Duration::minutes(5));
    s.put_quote(&q).await.unwrap();

    // One request, 32 tries at once (each a new payment id, as retries make).
    let tries: Vec<PaymentRecord> =
        (0..32).map(|_| pending(&q, "req-same", Some("order-1"), t)).collect();
    let answers = race(&s, tries, t).await;
    let created: Vec<&String> =
        answers.iter().filter(|(_, a)| matches!(a, Ok(Begin::Created))).map(|(id, _)| id).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (_, a) in &answers {
        match a {
            Ok(Begin::Created) => {}
            Ok(Begin::Replay(p)) => assert_eq!(&p.payment_id, created[0]),
            other => panic!("a try of the same request gave {other:?}"),
        }
    }
    assert_eq!(s.payments().await.unwrap().len(), 1);

    // 16 requests for one quote; 16 quotes paying one order.
    let q2 = quote(t, Duration::minutes(5));
    s.put_quote(&q2).await.unwrap();
    let tries = (0..16).map(|i| pending(&q2, &format!("req-q{i}"), None, t)).collect();
    expect_one(race(&s, tries, t).await, BeginError::QuoteUsed);
    let mut tries = Vec::new();
    for i in 0..16 {
        let q = quote(t, Duration::minutes(5));
        s.put_quote(&q).await.unwrap();
        tries.push(pending(&q, &format!("req-o{i}"), Some("order-2"), t));
    }
    expect_one(race(&s, tries, t).await, BeginError::OrderPaid);
    assert_eq!(s.payments().await.unwrap().len(), 3);
    assert_eq!(s.open_work().await.unwrap().len(), 3);
}

/// Begins all of `tries` at once; each payment id with its answer.
async fn race(
    s: &Arc<PgStore>,
    tries: Vec<PaymentRecord>,
    t: DateTime<Utc>,
) -> Vec<(String, Result<Begin, StoreError>)> {
    let start = Arc::new(tokio::sync::Barrier::new(tries.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for p in tries {
        let (s, start) = (s.clone(), start.clone());
        tasks.spawn(async move {
            start.wait().await;
            let answer = begin(&s, &p, t).await;
            (p.payment_id, answer)
        });
    }
    tasks.join_all().await
}

fn expect_one(answers: Vec<(String, Result<Begin, StoreError>)>, others: BeginError) {
    let created = answers.iter().filter(|(_, a)| matches!(a, Ok(Begin::Created))).count();
    assert_eq!(created, 1, "{answers:?}");
    for (_, a) in &answers {
        match a {
            Ok(Begin::Created) => {}
            Err(StoreError::Begin(e)) => assert_eq!(*e, others),
            other => panic!("expected {others:?}, got {other:?}"),
        }
    }
}

/// `p` inserted as `begin_payment` inserts it, on `raw`'s open transaction (another node's
/// begin, not committed yet).
async fn insert_uncommitted(raw: &tokio_postgres::Transaction<'_>, p: &PaymentRecord) {
    raw.execute(
        "INSERT INTO payments (id, partner, request_id, request_hash, quote_id, quote_claim,
                               state, rev, created_at, record)
         VALUES ($1, $2, $3, $4, $5, $5, 'PENDING', $6, $7, $8)",
        &[
            &p.payment_id,
            &p.partner,
            &p.request_id,
            &p.request_hash,
            &p.quote_id,
            &i64::try_from(p.rev).unwrap(),
            &p.created_at,
            &encode(p),
        ],
    )
    .await
    .unwrap();
}

/// Waits until a session of this test waits for a lock (the database says so: no waiting on the
/// wall clock), checking meanwhile that `task` has not ended. This test's sessions are told
/// apart from other tests' by their `application_name` (the test's schema).
async fn until_blocked<T>(raw: &tokio_postgres::Client, task: &tokio::task::JoinHandle<T>) {
    loop {
        let waiting: i64 = raw
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = current_setting('application_name')
                   AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(!task.is_finished(), "ended without waiting for the other node's transaction");
        tokio::task::yield_now().await;
    }
}

/// A request refused (its quote expired) while another node is committing a payment of the
/// same request gets that payment, not the refusal: the refusal waits for the other node's
/// transaction. So does the read the engine makes before any other refusal. A refusal with no
/// such payment leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_waits_for_the_same_request_being_made_on_another_node() {
    let Some(db) = pg::database().await else { return };
    let s = Arc::new(store(&db).await);
    let t = now();
    let q = quote(t, Duration::minutes(5));
    s.put_quote(&q).await.unwrap();
    let later = t + Duration::minutes(10);
    let (raw, mut other) = (db.raw().await, db.raw().await);

    // The quote has expired for this copy of the request; the other node's copy, made in time,
    // is being committed.
    let made = pending(&q, "req-1", None, t);
    let tx = other.transaction().await.unwrap();
    insert_uncommitted(&tx, &made).await;
    let (s2, copy) = (s.clone(), pending(&q, "req-1", None, later));
    let refused = tokio::spawn(async move { begin(&s2, &copy, later).await });
    until_blocked(&raw, &refused).await;
    tx.commit().await.unwrap();
    match refused.await.unwrap() {
        Ok(Begin::Replay(p)) => assert_eq!(p.payment_id, made.payment_id),
        other => panic!("not the other node's payment: {other:?}"),
    }

    // The engine's read before a refusal of its own (a risk rule, a quote gone).
    let q2 = quote(t, Duration::minutes(5));
    s.put_quote(&q2).await.unwrap();
    let made = pending(&q2, "req-2", None, t);
    let tx = other.transaction().await.unwrap();
    insert_uncommitted(&tx, &made).await;
    let s2 = s.clone();
    let read = tokio::spawn(async move { s2.request_settled("partner-demo", "req-2").await });
    until_blocked(&raw, &read).await;
    tx.commit().await.unwrap();
    let found = read.await.unwrap().unwrap().expect("the other node's payment");
    assert_eq!(found.payment_id, made.payment_id);
    assert_eq!(s.payment_by_request("partner-demo", "req-2").await.unwrap().unwrap(), found);

    // Nothing in the way: refused at once, and the wait leaves no row.
    let alone = pending(&q2, "req-3", None, later);
    assert!(matches!(
        begin(&s, &alone, later).await,
        Err(StoreError::Begin(BeginError::QuoteExpired))
    ));
    assert_eq!(s.request_settled("partner-demo", "req-3").await.unwrap(), None);
    let rows: i64 = raw.query_one("SELECT count(*) FROM payments", &[]).await.unwrap().get(0);
    assert_eq!(rows, 2);
}

/// The metrics' counts: each open work item's task, the outbox, the parked events. A count the
/// database cannot finish in time is ended by the database (a lock held on the table here), and
/// the connection it ran on serves the next call at once: the only connection of this store's
/// pool, used again while the lock is still held.
#[tokio::test]
async fn the_backlog_is_counted_in_the_database_and_bounded_there() {
    let Some(db) = pg::database().await else { return };
    let s = PgStore::connect(&db.url, 1).await.unwrap();
    let t = now();
    begun(&s, "req-1", t).await;
    for r in ["req-2", "req-3"] {
        let p = begun(&s, r, t).await;
        s.apply(&succeeded(&p, t)).await.unwrap();
    }
    let (seq, e) = s.outbox().await.unwrap().remove(0);
    let parked = ParkedEvent {
        v: RECORD_VERSION,
        event: e,
        parked_at: t,
        attempts: 9,
        last_error: "HTTP 500".into(),
    };
    s.park(seq, &parked).await.unwrap();
    let backlog = s.backlog().await.unwrap();
    assert_eq!(backlog, Backlog { work: vec![Task::Inquire], outbox: 1, parked: 1 });

    let mut raw = db.raw().await;
    let tx = raw.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE parked IN ACCESS EXCLUSIVE MODE").await.unwrap();
    // Bounded here too, only so that a count the database does not end fails this test.
    let held_up = tokio::time::timeout(std::time::Duration::from_secs(30), s.backlog()).await;
    match held_up.expect("the database did not end the count") {
        Err(StoreError::Database(e)) => assert!(e.contains("statement timeout"), "{e}"),
        other => panic!("a count held up by a lock was not ended by the database: {other:?}"),
    }
    assert!(s.payment("nothing").await.unwrap().is_none(), "the connection is free");
    tx.rollback().await.unwrap();
    assert_eq!(s.backlog().await.unwrap(), backlog);
}

#[tokio::test]
async fn the_outbox_cursor_keeps_an_event_whose_transaction_committed_late() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let (p1, p2) = (begun(&s, "req-1", t).await, begun(&s, "req-2", t).await);

    // A: an event written on a connection of its own, its transaction held open (a slow apply).
    let raw = db.raw().await;
    raw.batch_execute("BEGIN").await.unwrap();
    let late = event(&p1, "payment.succeeded", t);
    let a = raw
        .query_one(
            "INSERT INTO outbox (event_id, payment_id, record) VALUES ($1, $2, $3) RETURNING seq",
            &[&late.event_id, &late.payment_id, &encode(&late)],
        )
        .await
        .unwrap();
    let seq_a = u64::try_from(a.get::<_, i64>(0)).unwrap();

    // B: taken after A's, committed before it.
    let b = succeeded(&p2, t);
    s.apply(&b).await.unwrap();
    let outbox = s.outbox().await.unwrap();
    let seq_b = outbox.iter().find(|(_, e)| e.event_id == b.events[0].event_id).unwrap().0;
    assert!(seq_a < seq_b, "A took its sequence first");
    assert!(outbox.iter().all(|(seq, _)| *seq != seq_a), "A is not committed");

    // A reader now must not pass B while A may still commit below it.
    let page = s.outbox_after(None, 1000).await.unwrap();
    assert!(page.events.iter().all(|(seq, _)| *seq != seq_b), "B came out ahead of A: {page:?}");
    let cursor = page.cursor;

    raw.batch_execute("COMMIT").await.unwrap();
    // From the cursor it kept, the reader gets both: A (committed late) first, as it began first.
    let (got, cursor) = read_until(&s, cursor, &[seq_a, seq_b]).await;
    assert_eq!(got, vec![seq_a, seq_b]);
    // And nothing again after that.
    let page = s.outbox_after(cursor, 1000).await.unwrap();
    assert!(page.events.is_empty() && !page.more, "{page:?}");
}

#[tokio::test]
async fn outbox_pages_never_split_a_transaction() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let (p1, p2) = (begun(&s, "req-1", t).await, begun(&s, "req-2", t).await);
    // Three events in one change, in the order given; two in the next.
    let mut one = succeeded(&p1, t);
    one.events.push(event(&one.payment, "payment.noted", t));
    one.events.push(event(&one.payment, "payment.noted.again", t));
    s.apply(&one).await.unwrap();
    let mut two = succeeded(&p2, t);
    two.events.push(event(&two.payment, "payment.noted", t));
    s.apply(&two).await.unwrap();
    settled(&s).await;
    let ids = |page: &qrbridge::store::OutboxPage| -> Vec<String> {
        page.events.iter().map(|(_, e)| e.event_id.clone()).collect()
    };
    let first: Vec<String> = one.events.iter().map(|e| e.event_id.clone()).collect();
    let second: Vec<String> = two.events.iter().map(|e| e.event_id.clone()).collect();

    // Cut inside the second transaction: the page ends before it.
    let page = s.outbox_after(None, 4).await.unwrap();
    assert_eq!((ids(&page), page.more), (first.clone(), true));
    let rest = s.outbox_after(page.cursor, 4).await.unwrap();
    assert_eq!((ids(&rest), rest.more), (second.clone(), false));
    // A transaction larger than a page is a page of its own.
    let page = s.outbox_after(None, 2).await.unwrap();
    assert_eq!((ids(&page), page.more), (first.clone(), true));
    let page = s.outbox_after(None, 0).await.unwrap();
    assert_eq!((ids(&page), page.more), (first, true));
    // The sequence follows the order given, within a change and across changes.
    let seqs: Vec<EventSeq> = s.outbox().await.unwrap().iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let all = s.outbox_after(None, 100).await.unwrap();
    assert_eq!(all.events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), seqs);
    assert!(!all.more);
}

#[tokio::test]
async fn the_cursor_orders_transactions_as_numbers() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let p = begun(&s, "req-1", t).await;
    // Transaction ids 9 and 10 (long over: below any running one), written by hand: as text,
    // "10" sorts before "9".
    let raw = db.raw().await;
    let mut events = Vec::new();
    for tx in ["10", "9"] {
        let e = event(&p, "payment.noted", t);
        raw.execute(
            "INSERT INTO outbox (tx, event_id, payment_id, record)
             VALUES ($1::text::xid8, $2, $3, $4)",
            &[&tx, &e.event_id, &e.payment_id, &encode(&e)],
        )
        .await
        .unwrap();
        events.push(e.event_id);
    }
    let first = s.outbox_after(None, 1).await.unwrap();
    assert_eq!(first.cursor, Some(9));
    assert_eq!(first.events[0].1.event_id, events[1]);
    let second = s.outbox_after(first.cursor, 1).await.unwrap();
    assert_eq!(
        (second.cursor, second.events[0].1.event_id.as_str()),
        (Some(10), events[0].as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_totals_equal_the_journal_after_concurrent_changes() {
    let Some(db) = pg::database().await else { return };
    let s = Arc::new(store(&db).await);
    let t = now();
    let mut payments = Vec::new();
    for i in 0..48 {
        payments.push(begun(&s, &format!("req-{i}"), t).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, p) in payments.into_iter().enumerate() {
        let s = s.clone();
        tasks.spawn(async move {
            let paid = succeeded(&p, t);
            s.apply(&paid).await.unwrap();
            // Every third is cancelled again: the reversing entry.
            if i % 3 == 0 {
                let mut next = paid.payment.successor(t);
                next.state = PaymentState::Cancelled;
                let change = Change {
                    journal: Some(qrbridge::ledger::reversal(&next, "cancel", t)),
                    ..Change::of(next)
                };
                s.apply(&change).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    let journal = s.journal().await.unwrap();
    assert_eq!(journal.len(), 48 + 16);
    let mut sums: BTreeMap<(Currency, String), i128> = BTreeMap::new();
    for p in journal.iter().flat_map(|e| &e.postings) {
        *sums.entry((p.currency, p.account.clone())).or_insert(0) += i128::from(p.minor);
    }
    assert_eq!(s.account_totals().await.unwrap(), sums);
    assert!(s.ledger_sums().await.unwrap().values().all(|v| *v == 0));
    // Spread over shard rows, not one row per account.
    let raw = db.raw().await;
    let shards: i64 = raw
        .query_one("SELECT count(DISTINCT shard) FROM account_totals", &[])
        .await
        .unwrap()
        .get(0);
    assert!(shards > 1, "every write went to one shard");
}

#[tokio::test]
async fn purging_quotes_keeps_the_used_and_walks_on_from_its_cursor() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let old = t - Duration::hours(1);
    // Made in this order (ids are time-ordered): three expired long ago, the second used; one
    // still good.
    let quotes: Vec<QuoteRecord> = (0..3).map(|_| quote(old, Duration::minutes(1))).collect();
    for q in &quotes {
        s.put_quote(q).await.unwrap();
    }
    let good = quote(t, Duration::minutes(5));
    s.put_quote(&good).await.unwrap();
    assert!(matches!(
        begin(&s, &pending(&quotes[1], "req-1", None, old), old).await,
        Ok(Begin::Created)
    ));

    let first = s.purge_quotes(None, t, 2).await.unwrap();
    assert_eq!(
        (first.removed, first.cursor.as_deref(), first.caught_up),
        (1, Some(quotes[1].quote_id.as_str()), false)
    );
    let second = s.purge_quotes(first.cursor.as_deref(), t, 10).await.unwrap();
    assert_eq!(
        (second.removed, second.cursor.as_deref(), second.caught_up),
        (1, Some(quotes[2].quote_id.as_str()), true)
    );
    let third = s.purge_quotes(second.cursor.as_deref(), t, 10).await.unwrap();
    assert_eq!((third.removed, third.cursor, third.caught_up), (0, second.cursor, true));
    assert_eq!(s.quote(&quotes[0].quote_id).await.unwrap(), None);
    assert_eq!(s.quote(&quotes[1].quote_id).await.unwrap(), Some(quotes[1].clone()));
    assert_eq!(s.quote(&quotes[2].quote_id).await.unwrap(), None);
    assert_eq!(s.quote(&good.quote_id).await.unwrap(), Some(good));
    // Past the good one's expiry too, from the start: only it goes; the used one stays.
    let all = s.purge_quotes(None, t + Duration::hours(1), 10).await.unwrap();
    assert_eq!((all.removed, all.caught_up), (1, true));
    assert_eq!(s.quote(&quotes[1].quote_id).await.unwrap(), Some(quotes[1].clone()));
}

#[tokio::test]
async fn marks_are_kept_and_overwritten() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    assert_eq!(s.mark("quote-retention").await.unwrap(), None);
    s.set_mark("quote-retention", "quo_1").await.unwrap();
    s.set_mark("quote-retention", "quo_2").await.unwrap();
    s.set_mark("other", "x").await.unwrap();
    assert_eq!(s.mark("quote-retention").await.unwrap().as_deref(), Some("quo_2"));
    assert_eq!(s.mark("other").await.unwrap().as_deref(), Some("x"));
}

#[tokio::test]
async fn delivered_events_keep_their_header_and_lose_their_body() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let p = begun(&s, "req-1", t).await;
    s.apply(&succeeded(&p, t)).await.unwrap();
    let (seq, e) = s.outbox().await.unwrap().remove(0);
    let d = DeliveredEvent {
        v: RECORD_VERSION,
        event: e.clone(),
        delivered_at: t,
        attempts: 2,
        skipped: false,
    };
    s.delivered(seq, &d).await.unwrap();
    assert!(s.outbox().await.unwrap().is_empty());
    let header = OutboxEvent { data: serde_json::Value::Null, ..e };
    assert_eq!(s.delivered_events().await.unwrap(), vec![DeliveredEvent { event: header, ..d }]);
}

#[tokio::test]
async fn a_replay_puts_the_event_back_in_its_place_and_bumps_the_epoch() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let t = now();
    let p = begun(&s, "req-1", t).await;
    let paid = succeeded(&p, t);
    s.apply(&paid).await.unwrap();
    let (seq, e) = s.outbox().await.unwrap().remove(0);
    let parked = ParkedEvent {
        v: RECORD_VERSION,
        event: e.clone(),
        parked_at: t,
        attempts: 9,
        last_error: "HTTP 500".into(),
    };
    s.park(seq, &parked).await.unwrap();
    assert!(s.outbox().await.unwrap().is_empty());
    assert_eq!(s.parked().await.unwrap(), vec![(seq, parked.clone())]);
    // The payment's next event waits behind it.
    let mut next = paid.payment.successor(t);
    next.refunded_cny = Amount::from_minor(Currency::CNY, 1).unwrap();
    let later = event(&next, "refund.succeeded", t);
    s.apply(&Change { events: vec![later.clone()], ..Change::of(next) }).await.unwrap();
    settled(&s).await;
    let cursor = s.outbox_after(None, 100).await.unwrap().cursor;

    let epoch = s.outbox_epoch().await.unwrap();
    let replayed_at = t + Duration::minutes(3);
    assert!(s.unpark(&e.event_id, replayed_at).await.unwrap());
    assert_eq!(s.outbox_epoch().await.unwrap(), epoch + 1);
    assert!(!s.unpark(&e.event_id, replayed_at).await.unwrap(), "no longer parked");
    assert_eq!(s.outbox_epoch().await.unwrap(), epoch + 1);
    assert!(s.parked().await.unwrap().is_empty());
    let back = OutboxEvent { replayed_at: Some(replayed_at), ..e };
    // At its old place: below the cursor (hence the epoch), and ahead of its payment's later
    // event for a reader starting again.
    let outbox = s.outbox().await.unwrap();
    assert_eq!(outbox[0], (seq, back.clone()));
    assert!(s.outbox_after(cursor, 100).await.unwrap().events.is_empty());
    let again = s.outbox_after(None, 100).await.unwrap();
    assert_eq!(
        again.events.iter().map(|(_, e)| e.event_id.as_str()).collect::<Vec<_>>(),
        vec![back.event_id.as_str(), later.event_id.as_str()]
    );

    // Purging parked events bumps it too (when there was one to purge).
    s.park(seq, &ParkedEvent { event: back, ..parked }).await.unwrap();
    assert_eq!(s.purge_parked(&[seq + 1000]).await.unwrap(), 0);
    assert_eq!(s.outbox_epoch().await.unwrap(), epoch + 1);
    assert_eq!(s.purge_parked(&[seq]).await.unwrap(), 1);
    assert_eq!(s.outbox_epoch().await.unwrap(), epoch + 2);
    assert!(s.parked().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_commits_make_one_chain_with_their_settings() {
    let Some(db) = pg::database().await else { return };
    let s = Arc::new(store(&db).await);
    let t = now();
    let draft = |i: usize| AuditDraft {
        at: t,
        actor: "admin-1".into(),
        action: "spreads.set".into(),
        target: format!("spread:partner-demo:{i}"),
        before: serde_json::Value::Null,
        after: json!({"bps": i}),
    };
    let first = s
        .admin_commit(
            &draft(0),
            &[
                ("spread/b".into(), Some(b"50".to_vec())),
                ("spread/a".into(), Some(b"40".to_vec())),
                ("rate/x".into(), Some(b"7.1".to_vec())),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!((first.seq, first.prev_hash.as_str()), (1, AUDIT_GENESIS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=12 {
        let (s, d) = (s.clone(), draft(i));
        tasks.spawn(async move { s.admin_commit(&d, &[], None).await.unwrap() });
    }
    tasks.join_all().await;
    s.admin_commit(&draft(13), &[("spread/b".into(), None)], None).await.unwrap();
    let (log, head) = s.audit_log().await.unwrap();
    assert_eq!(log.len(), 14);
    assert_eq!(log[0], first);
    let check = verify_chain(&log, head.as_ref());
    assert!(check.ok, "{check:?}");
    assert_eq!(s.settings("spread/").await.unwrap(), vec![("spread/a".to_owned(), b"40".to_vec())]);
    assert_eq!(s.settings("rate/").await.unwrap().len(), 1);
    assert!(s.settings("nothing/").await.unwrap().is_empty());
}

#[tokio::test]
async fn migrations_apply_once_even_when_raced_and_a_newer_schema_is_refused() {
    let Some(db) = pg::database().await else { return };
    let (a, b) = tokio::join!(migrate(&db.url), migrate(&db.url));
    let mut applied = [a.unwrap(), b.unwrap()].concat();
    applied.sort();
    assert_eq!(applied, vec![1, 2, 3], "each version once, by one of them");
    assert_eq!(migrate(&db.url).await.unwrap(), Vec::<u32>::new());
    let s = store(&db).await;
    assert_eq!(s.outbox_epoch().await.unwrap(), 0);
    drop(s);

    let raw = db.raw().await;
    raw.execute("INSERT INTO qrbridge_migrations (version) VALUES (9999)", &[]).await.unwrap();
    for refused in [migrate(&db.url).await.map(drop), PgStore::connect(&db.url, 1).await.map(drop)]
    {
        match refused {
            Err(StoreError::Database(m)) => assert!(m.contains("9999"), "{m}"),
            other => panic!("a newer schema was not refused: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_database_is_a_database_error() {
    // A port nothing listens on; and no URL at all.
    let url = "postgres://postgres@127.0.0.1:1/test?connect_timeout=5";
    match PgStore::connect(url, 1).await {
        Err(StoreError::Database(m)) => assert!(!m.is_empty()),
        other => panic!("connecting to nothing gave {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        PgStore::connect("postgres://[nonsense", 1).await,
        Err(StoreError::Database(_))
    ));
}

/// A change decided under a lease is written only while its holder still holds the lease: not
/// after the lease ran out and another node took it (and may have read the same state), and not
/// under a lease never taken. Nothing of a refused change is written, its audit record included.
/// And while a fenced change's transaction holds the lease's row, another node cannot take the
/// lease: it waits for the commit, then reads what the change wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_under_a_lease_is_not_written_once_another_node_took_it() {
    let Some(db) = pg::database().await else { return };
    let s = Arc::new(store(&db).await);
    let long = std::time::Duration::from_secs(60);
    let draft = |i: u32| AuditDraft {
        at: now(),
        actor: "admin-1".into(),
        action: "risk.funds".into(),
        target: "risk:funds:partner-demo:PHP".into(),
        before: serde_json::Value::Null,
        after: json!({ "total": i }),
    };
    let total = |i: u32| vec![("risk/funds/x".to_owned(), Some(i.to_string().into_bytes()))];
    let (a, b) = (
        Fence { lease: "settings", holder: "node-a/1" },
        Fence { lease: "settings", holder: "node-b/1" },
    );
    assert!(s.lease("settings", "node-a/1", long).await.unwrap());
    s.admin_commit(&draft(1), &total(1), Some(a)).await.unwrap();
    // a's lease runs out (by the database's clock) and b takes it: a's change is refused.
    let raw = db.raw().await;
    raw.execute("UPDATE leases SET until = clock_timestamp() - interval '1 second'", &[])
        .await
        .unwrap();
    assert!(s.lease("settings", "node-b/1", long).await.unwrap());
    let refused = s.admin_commit(&draft(2), &total(2), Some(a)).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost(ref l)) if l == "settings"), "{refused:?}");
    // Never taken at all: refused too.
    let never = Fence { lease: "rates", holder: "node-a/1" };
    assert!(matches!(
        s.admin_commit(&draft(2), &total(2), Some(never)).await,
        Err(StoreError::LeaseLost(_))
    ));
    let (log, head) = s.audit_log().await.unwrap();
    assert_eq!(log.len(), 1, "a refused change leaves no audit record");
    assert!(verify_chain(&log, head.as_ref()).ok);
    assert_eq!(
        s.settings("risk/funds/").await.unwrap(),
        vec![("risk/funds/x".to_owned(), b"1".to_vec())]
    );
    s.admin_commit(&draft(3), &total(3), Some(b)).await.unwrap();

    // The lease's row held by a fenced change's transaction (here, by hand, as `admin_commit`
    // holds it until its commit): run out or not, no other node takes it meanwhile.
    raw.execute("UPDATE leases SET until = clock_timestamp() - interval '1 second'", &[])
        .await
        .unwrap();
    let mut held = db.raw().await;
    let tx = held.transaction().await.unwrap();
    tx.query_one(
        "SELECT 1 FROM leases WHERE name = 'settings' AND holder = 'node-b/1' FOR SHARE",
        &[],
    )
    .await
    .unwrap();
    let s2 = s.clone();
    let take = tokio::spawn(async move { s2.lease("settings", "node-a/2", long).await });
    // The taker is blocked on the row.
    until_blocked(&raw, &take).await;
    tx.commit().await.unwrap();
    assert!(take.await.unwrap().unwrap(), "taken once the change's transaction ended");
}

/// A renewal extends a lease only while its holder still holds it: never once it ran out or was
/// given up, even with no other node holding it now (another may have held it meanwhile).
#[tokio::test]
async fn a_renewal_never_takes_a_lost_lease_again() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let long = std::time::Duration::from_secs(60);
    assert!(!s.renew_lease("settings", "a/1", long).await.unwrap(), "never taken");
    assert!(s.lease("settings", "a/1", long).await.unwrap());
    assert!(s.renew_lease("settings", "a/1", long).await.unwrap(), "held: renewed");
    assert!(!s.renew_lease("settings", "b/1", long).await.unwrap(), "not b's");
    // Run out (by the database's clock): not renewed, though no one else holds it.
    let raw = db.raw().await;
    let run_out = "UPDATE leases SET until = clock_timestamp() - interval '1 second'";
    raw.execute(run_out, &[]).await.unwrap();
    assert!(!s.renew_lease("settings", "a/1", long).await.unwrap(), "ran out");
    // Taken by b and given up: a's renewal does not bring it back.
    assert!(s.lease("settings", "b/1", long).await.unwrap());
    s.release_lease("settings", "b/1").await.unwrap();
    assert!(!s.renew_lease("settings", "a/1", long).await.unwrap(), "given up by the next holder");
    let rows: i64 = raw.query_one("SELECT count(*) FROM leases", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "a renewal inserts nothing");
}

#[tokio::test]
async fn a_lease_is_held_by_one_node_renewed_by_it_and_taken_over_once_it_runs_out() {
    let Some(db) = pg::database().await else { return };
    let s = store(&db).await;
    let long = std::time::Duration::from_secs(60);
    assert!(s.lease("resolver", "node-a", long).await.unwrap());
    assert!(!s.lease("resolver", "node-b", long).await.unwrap(), "held by a");
    assert!(s.lease("resolver", "node-a", long).await.unwrap(), "renewed by its holder");
    assert!(s.lease("webhooks", "node-b", long).await.unwrap(), "another lease is free");
    // Given up: taken at once.
    s.release_lease("resolver", "node-a").await.unwrap();
    assert!(s.lease("resolver", "node-b", long).await.unwrap());
    // Run out (a node that died): taken over. The lease is made to have run out by the
    // database's own clock, not by waiting.
    let raw = db.raw().await;
    raw.execute("UPDATE leases SET until = clock_timestamp() - interval '1 second'", &[])
        .await
        .unwrap();
    assert!(s.lease("resolver", "node-a", long).await.unwrap(), "taken over once run out");
    assert!(!s.lease("resolver", "node-b", long).await.unwrap());
    // Only the holder gives a lease up.
    s.release_lease("resolver", "node-b").await.unwrap();
    assert!(!s.lease("resolver", "node-b", long).await.unwrap());
    assert!(s.shared());
}
