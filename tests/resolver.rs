//! The resolver's schedule, under paused tokio time: a payment whose outcome is unknown is
//! inquired exactly on the configured schedule, reversed at its expiry and ends FAILED / EXPIRED;
//! an approval that lands behind the reversal is found, booked and reversed again. The acquirer
//! is scripted here (real sockets do not mix with paused time); the sandbox-backed fault tests in
//! `recovery.rs` cover the same paths over real mTLS. Each test runs on both stores; on PostgreSQL
//! through [`Blocking`], so that paused time does not move while a query is on the wire.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use qrbridge::api::{PayRequestBody, Payer, QuoteRequestBody, RawAmount};
use qrbridge::clock::{Clock, TokioClock};
use qrbridge::engine::{AcquirerService, Engine, ResolverPolicy};
use qrbridge::model::*;
use qrbridge::store::{AnyStore, PgStore, SledStore, Store};
use qrbridge_adapters::acquirer::wire::{InstructionAnswer, InstructionStatus};
use qrbridge_adapters::acquirer::{AcquirerError, AcquirerRequest, AcquirerResponse};
use support::blocking::Blocking;
use support::both::StoreKind;
use tokio::sync::{mpsc, watch};

/// What the scripted acquirer saw: the call and when (seconds since the test began).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Send(i64),
    Inquire(i64),
    Reverse(i64),
}

/// Answers: the instruction times out; inquiries get `inquiry` until a reversal, after the
/// `n`th reversal `after_reversal[n]`.
struct Script {
    /// When set, a send waits for this signal and then is approved (otherwise it times out).
    send_gate: Option<Arc<tokio::sync::Notify>>,
    inquiry: InstructionStatus,
    after_reversal: Vec<InstructionStatus>,
    reversals: usize,
}

fn scripted(
    clock: Arc<dyn Clock>,
    script: Arc<Mutex<Script>>,
    calls: mpsc::UnboundedSender<Call>,
) -> AcquirerService {
    let t0 = clock.now();
    AcquirerService::new(tower::service_fn(move |req: AcquirerRequest| {
        let at = (clock.now() - t0).num_seconds();
        let script = script.clone();
        let calls = calls.clone();
        async move {
            let answer = |id: String, status| {
                Ok(AcquirerResponse::Instruction(InstructionAnswer {
                    instruction_id: id,
                    status,
                    acquirer_ref: None,
                    reason: None,
                }))
            };
            let gate = script.lock().unwrap().send_gate.clone();
            if let (AcquirerRequest::Send(ins), Some(gate)) = (&req, gate) {
                calls.send(Call::Send(at)).unwrap();
                gate.notified().await;
                return answer(ins.instruction_id.clone(), InstructionStatus::Approved);
            }
            let mut s = script.lock().unwrap();
            match req {
                AcquirerRequest::Send(_) => {
                    calls.send(Call::Send(at)).unwrap();
                    Err(AcquirerError::Unknown("scripted: no answer".into()))
                }
                AcquirerRequest::Inquire(id) => {
                    calls.send(Call::Inquire(at)).unwrap();
                    let status = match s.reversals {
                        0 => s.inquiry,
                        n => s.after_reversal[(n - 1).min(s.after_reversal.len() - 1)],
                    };
                    answer(id, status)
                }
                AcquirerRequest::Reverse(id) => {
                    calls.send(Call::Reverse(at)).unwrap();
                    s.reversals += 1;
                    answer(id, InstructionStatus::Reversed)
                }
                AcquirerRequest::Lookup(_) => Err(AcquirerError::NotSent("scripted".into())),
            }
        }
    }))
}

struct Rig {
    engine: Arc<Engine<Blocking>>,
    calls: mpsc::UnboundedReceiver<Call>,
    _dir: tempfile::TempDir,
    _database: Option<support::pg::PgTest>,
}

async fn rig(script: Script, policy: ResolverPolicy) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-05-22T08:00:00Z").unwrap().into(),
    ));
    let (tx, calls) = mpsc::unbounded_channel();
    let acquirer = scripted(clock.clone(), Arc::new(Mutex::new(script)), tx);
    let database = match support::both::kind() {
        StoreKind::Sled => None,
        StoreKind::Postgres => Some(support::pg::database().await.expect("checked before")),
    };
    let (path, url) = (dir.path().join("db"), database.as_ref().map(|d| d.url.clone()));
    let store = Arc::new(Blocking::open(|| async move {
        match url {
            None => AnyStore::Sled(SledStore::open(&path, 8 << 20).unwrap()),
            Some(url) => AnyStore::Postgres(PgStore::connect(&url, 4).await.unwrap()),
        }
    }));
    let mut parts = support::engine::parts(
        dir.path(),
        store,
        clock,
        HashMap::from([("sandbox".to_owned(), acquirer)]),
    );
    // One process, a scripted acquirer: no other node's send to wait out, on either store, so
    // the schedule is the same on both (the send window is the cluster tests' concern).
    parts.resolver = ResolverPolicy { send_window: chrono::Duration::zero(), ..policy };
    Rig { engine: Engine::new(parts), calls, _dir: dir, _database: database }
}

async fn pay(engine: &Arc<Engine<Blocking>>) -> PaymentRecord {
    let q = engine
        .quote(
            "p",
            QuoteRequestBody {
                code: qrbridge::defaults::demo_code(),
                amount: Some(RawAmount { currency: "CNY".into(), value: "2372".into() }),
                wallet_currency: "PHP".into(),
            },
        )
        .await
        .unwrap();
    let (p, created) = engine
        .pay(
            "p",
            PayRequestBody {
                request_id: "r-1".into(),
                quote_id: q.quote_id,
                payer: Payer { id: "u".into() },
            },
        )
        .await
        .unwrap();
    assert!(created);
    p
}

/// Runs the resolver until the acquirer has seen `n` more calls, then stops it (letting the
/// step under way commit) and returns them.
async fn run_for(rig: &mut Rig, n: usize) -> Vec<Call> {
    let (stop, stopped) = watch::channel(false);
    let worker = tokio::spawn(qrbridge::resolver::run(rig.engine.clone(), 4, None, stopped));
    let mut seen = Vec::new();
    while seen.len() < n {
        seen.push(rig.calls.recv().await.unwrap());
    }
    stop.send(true).unwrap();
    worker.await.unwrap();
    seen
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn inquiries_follow_the_schedule_then_expiry_reverses() {
    let script = Script {
        send_gate: None,
        inquiry: InstructionStatus::NotFound,
        after_reversal: vec![InstructionStatus::Reversed],
        reversals: 0,
    };
    let mut rig = rig(script, ResolverPolicy::default()).await;
    let p = pay(&rig.engine).await;
    assert_eq!(p.state, PaymentState::Unknown);
    assert_eq!(rig.calls.recv().await, Some(Call::Send(0)));

    // 4 s, 4 s, 30 s, 60 s, 60 s, 60 s, 5 min, 5 min → inquiries at these seconds; the next would
    // be at 1118 s, past the 900 s expiry, so the last inquiry is at the expiry, and the reversal
    // follows at once; one verifying inquiry comes 4 s after the reversal.
    let calls = run_for(&mut rig, 11).await;
    let inquiries = [4, 8, 38, 98, 158, 218, 518, 818, 900].map(Call::Inquire);
    assert_eq!(&calls[..9], &inquiries);
    assert_eq!(&calls[9..], &[Call::Reverse(900), Call::Inquire(904)]);

    let p = rig.engine.store().payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(p.state, PaymentState::Failed);
    assert_eq!(p.failure.unwrap().code, "EXPIRED");
    assert_eq!(p.updated_at - p.created_at, chrono::Duration::seconds(900));
    assert!(rig.engine.store().work_item(&p.payment_id).await.unwrap().is_none(), "nothing left to do");
    // Never booked, so nothing to reverse in the ledger; the partner is told once.
    assert!(rig.engine.store().journal().await.unwrap().is_empty());
    let events: Vec<String> =
        rig.engine.store().outbox().await.unwrap().into_iter().map(|(_, e)| e.kind).collect();
    assert_eq!(events, vec!["payment.failed"]);
}
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn an_inquiry_that_finds_an_approval_books_it() {
    let script = Script {
        send_gate: None,
        inquiry: InstructionStatus::Approved,
        after_reversal: vec![InstructionStatus::Reversed],
        reversals: 0,
    };
    let mut rig = rig(script, ResolverPolicy::default()).await;
    let p = pay(&rig.engine).await;
    assert_eq!(rig.calls.recv().await, Some(Call::Send(0)));
    assert_eq!(run_for(&mut rig, 1).await, vec![Call::Inquire(4)]);
    let p = rig.engine.store().payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!((p.state, p.booked), (PaymentState::Succeeded, true));
    assert!(rig.engine.store().work_item(&p.payment_id).await.unwrap().is_none());
    assert_eq!(
        rig.engine.store().ledger_sums().await.unwrap().values().filter(|s| **s != 0).count(),
        0
    );
    assert_eq!(rig.engine.store().journal().await.unwrap().len(), 1);
}
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn an_approval_behind_the_reversal_is_booked_and_reversed_again() {
    // Undecided until expiry; the first reversal is acknowledged but the approval lands behind it;
    // the second reversal sticks.
    let script = Script {
        send_gate: None,
        inquiry: InstructionStatus::Processing,
        after_reversal: vec![InstructionStatus::Approved, InstructionStatus::Reversed],
        reversals: 0,
    };
    let policy = ResolverPolicy {
        schedule: vec![chrono::Duration::seconds(2)],
        expiry: chrono::Duration::seconds(5),
        ..ResolverPolicy::default()
    };
    let mut rig = rig(script, policy).await;
    let p = pay(&rig.engine).await;
    assert_eq!(rig.calls.recv().await, Some(Call::Send(0)));
    let calls = run_for(&mut rig, 7).await;
    assert_eq!(
        calls,
        vec![
            Call::Inquire(2),
            Call::Inquire(4),
            Call::Inquire(5),
            Call::Reverse(5),
            // Verify: approved behind the reversal → booked and reversed again at once.
            Call::Inquire(7),
            Call::Reverse(7),
            // Verify again: reversed for good.
            Call::Inquire(9),
        ]
    );
    let store = rig.engine.store();
    let p = store.payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!((p.state, p.booked, p.late_approvals), (PaymentState::Failed, false, 1));
    assert!(store.work_item(&p.payment_id).await.unwrap().is_none());
    let kinds: Vec<String> = store.journal().await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["late_approval", "reversal"]);
    assert!(store.ledger_sums().await.unwrap().values().all(|s| *s == 0));
    // The partner was told FAILED once; the late approval changed nothing it sees.
    assert_eq!(store.outbox().await.unwrap().len(), 1);
}
}

on_both_stores! {
#[tokio::test(start_paused = true)]
async fn an_approval_that_lands_behind_another_nodes_cancel_is_booked_then_reversed() {
    // Another node's cancel overtook this node's send (a stalled node, skewed clocks): the
    // approval that comes back must be booked, not dropped, and the reversal under way undoes it.
    let gate = Arc::new(tokio::sync::Notify::new());
    let script = Script {
        send_gate: Some(gate.clone()),
        inquiry: InstructionStatus::Processing,
        after_reversal: vec![InstructionStatus::Reversed],
        reversals: 0,
    };
    let mut rig = rig(script, ResolverPolicy::default()).await;
    let engine = rig.engine.clone();
    let paying = tokio::spawn(async move { pay(&engine).await });
    assert_eq!(rig.calls.recv().await, Some(Call::Send(0)));
    // The other node: CANCELLING, its reversal due now.
    let store = rig.engine.store().clone();
    let pending = store.payments().await.unwrap().remove(0);
    assert_eq!(pending.state, PaymentState::Pending);
    let now = rig.engine.now();
    let mut cancel = qrbridge::store::Change::of(pending.successor(now));
    cancel.payment.state = PaymentState::Cancelling;
    cancel.work = qrbridge::store::Work::Set(WorkItem::new(&pending.payment_id, Task::Reverse, now, 0));
    store.apply(&cancel).await.unwrap();
    // The approval lands.
    gate.notify_one();
    let answered = paying.await.unwrap();
    assert_eq!(answered.state, PaymentState::Cancelling);
    let p = store.payment(&pending.payment_id).await.unwrap().unwrap();
    assert!(p.booked, "the approval is booked");
    let kinds = |j: Vec<JournalEntry>| j.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    assert_eq!(kinds(store.journal_of(&p.payment_id).await.unwrap()), vec!["late_approval"]);
    assert_eq!(store.work_item(&p.payment_id).await.unwrap().map(|w| w.task), Some(Task::Reverse));
    // The reversal goes on and books its undoing.
    let calls = run_for(&mut rig, 1).await;
    assert!(matches!(calls[..], [Call::Reverse(_)]), "{calls:?}");
    let p = store.payment(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(p.state, PaymentState::Cancelled);
    assert_eq!(kinds(store.journal_of(&p.payment_id).await.unwrap()).len(), 2);
    assert!(store.ledger_sums().await.unwrap().values().all(|s| *s == 0));
}
}
