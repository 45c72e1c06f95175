//! Proves the payment paths hold under hang-ups, races, refusals and slow disks: a payment whose
//! request is dropped still finishes; a refused reversal ends (the cancel is refused, with a
//! reason and a webhook); no lock is held while the acquirer is asked; a refund retried
//! concurrently gets the same refund; only an explicit decline is a decline (in our words);
//! nothing is answered before it is durable; a failed PENDING flush is finished by the retry; an
//! order code pays once. The engine runs over a store whose flushes the test gates, and an
//! acquirer the test scripts (and holds, where a race must be lined up); the cancel window runs on
//! the real daemon over mTLS.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qrbridge::api::{PayRequestBody, Payer, QuoteRequestBody, RawAmount, RefundRequestBody};
use qrbridge::clock::{Clock, ManualClock, SystemClock};
use qrbridge::engine::{AcquirerService, Engine};
use qrbridge::error::ApiError;
use qrbridge::model::*;
use qrbridge::store::Store;
use qrbridge_adapters::acquirer::wire::{InstructionAnswer, InstructionStatus};
use qrbridge_adapters::acquirer::{AcquirerError, AcquirerRequest, AcquirerResponse};
use support::stores::ControlledStore;
use tokio::sync::{mpsc, watch};

/// How the scripted acquirer answers one kind of call.
#[derive(Debug, Clone)]
enum Reply {
    Status(InstructionStatus),
    /// An answer about some other instruction.
    ForOther(InstructionStatus),
    Fail(AcquirerError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    Inquire,
    Reverse,
}

struct Script {
    send: Reply,
    inquire: Reply,
    reverse: Reply,
}

struct Rig {
    engine: Arc<Engine<ControlledStore>>,
    clock: ManualClock,
    store: Arc<ControlledStore>,
    script: Arc<Mutex<Script>>,
    /// Every call the acquirer saw.
    calls: mpsc::UnboundedReceiver<Kind>,
    /// While false, inquiries wait.
    inquiries_open: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn rig(send: Reply) -> Rig {
    rig_with(send, |_| {})
}

fn rig_with(
    send: Reply,
    tweak: impl FnOnce(&mut qrbridge::engine::EngineParts<ControlledStore>),
) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let store = ControlledStore::open(&dir.path().join("db"));
    let script = Arc::new(Mutex::new(Script {
        send,
        inquire: Reply::Status(InstructionStatus::Processing),
        reverse: Reply::Status(InstructionStatus::Reversed),
    }));
    let (tx, calls) = mpsc::unbounded_channel();
    let (inquiries_open, open_rx) = watch::channel(true);
    let s = script.clone();
    let acquirer = AcquirerService::new(tower::service_fn(move |req: AcquirerRequest| {
        let s = s.clone();
        let tx = tx.clone();
        let mut open = open_rx.clone();
        async move {
            let (kind, id) = match req {
                AcquirerRequest::Send(i) => (Kind::Send, i.instruction_id),
                AcquirerRequest::Inquire(id) => (Kind::Inquire, id),
                AcquirerRequest::Reverse(id) => (Kind::Reverse, id),
                AcquirerRequest::Lookup(_) => {
                    return Err(AcquirerError::NotSent("scripted: no lookups".into()))
                }
            };
            let _ = tx.send(kind);
            if kind == Kind::Inquire {
                let _ = open.wait_for(|o| *o).await;
            }
            let reply = {
                let s = s.lock().unwrap();
                match kind {
                    Kind::Send => s.send.clone(),
                    Kind::Inquire => s.inquire.clone(),
                    Kind::Reverse => s.reverse.clone(),
                }
            };
            let answer = |instruction_id: String, status| {
                Ok(AcquirerResponse::Instruction(InstructionAnswer {
                    instruction_id,
                    status,
                    acquirer_ref: Some("ACQ-REF".into()),
                    reason: Some("ACQ-RAW: card 4111 on hold (internal code 77)".into()),
                }))
            };
            match reply {
                Reply::Status(st) => answer(id, st),
                Reply::ForOther(st) => answer("pay_someone_else".into(), st),
                Reply::Fail(e) => Err(e),
            }
        }
    }));
    let mut parts = support::engine::parts(
        dir.path(),
        store.clone(),
        Arc::new(clock.clone()),
        HashMap::from([("sandbox".to_owned(), acquirer)]),
    );
    tweak(&mut parts);
    let engine = Engine::new(parts);
    Rig { engine, clock, store, script, calls, inquiries_open, _dir: dir }
}

fn quote_body(code: String) -> QuoteRequestBody {
    QuoteRequestBody {
        code,
        amount: Some(RawAmount { currency: "CNY".into(), value: "2372".into() }),
        wallet_currency: "PHP".into(),
    }
}

fn pay_body(request_id: &str, quote_id: &str) -> PayRequestBody {
    PayRequestBody {
        request_id: request_id.into(),
        quote_id: quote_id.into(),
        payer: Payer { id: "payer-1".into() },
    }
}

/// An upper bound for something that must happen (never a speed assertion).
const BOUND: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.unwrap_or_else(|_| panic!("{what}: did not happen"))
}

impl Rig {
    async fn quote(&self, code: String) -> QuoteRecord {
        self.engine.quote("p", quote_body(code)).await.unwrap()
    }

    /// Pays 23.72 CNY to a static code.
    async fn pay(&self, request_id: &str) -> PaymentRecord {
        let q = self.quote(support::flows::code(None)).await;
        let (p, created) = self.engine.pay("p", pay_body(request_id, &q.quote_id)).await.unwrap();
        assert!(created);
        p
    }

    /// Another node on the same store: an engine with in-process locks of its own (and no
    /// acquirer: for refunds, which call none).
    fn other_node(&self) -> Arc<Engine<ControlledStore>> {
        Engine::new(support::engine::parts(
            self._dir.path(),
            self.store.clone(),
            Arc::new(self.clock.clone()),
            HashMap::new(),
        ))
    }

    async fn payment(&self, id: &str) -> PaymentRecord {
        self.store.payment(id).await.unwrap().unwrap()
    }

    async fn event_kinds(&self) -> Vec<String> {
        self.store.outbox().await.unwrap().into_iter().map(|(_, e)| e.kind).collect()
    }

    fn calls_seen(&mut self) -> Vec<Kind> {
        let mut seen = Vec::new();
        while let Ok(k) = self.calls.try_recv() {
            seen.push(k);
        }
        seen
    }
}

// Item 1: the request future dropped while PENDING is being flushed.
#[tokio::test]
async fn a_payment_dropped_while_pending_is_flushed_still_finishes() {
    let mut rig = rig(Reply::Status(InstructionStatus::Approved));
    let q = rig.quote(support::flows::code(None)).await;
    rig.store.close_gate();
    let waiting = rig.store.flush_waiting.notified();
    let engine = rig.engine.clone();
    let quote_id = q.quote_id.clone();
    let request = tokio::spawn(async move { engine.pay("p", pay_body("r-1", &quote_id)).await });
    within("PENDING reaches its flush", waiting).await;
    // The partner hangs up (or the 15 s request timeout fires): the request future is dropped.
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    rig.store.open_gate();

    // The payment is instructed anyway, and a retry sees it finished.
    assert_eq!(within("the instruction", rig.calls.recv()).await, Some(Kind::Send));
    let (p, created) =
        within("the retry", rig.engine.pay("p", pay_body("r-1", &q.quote_id))).await.unwrap();
    assert!(!created);
    assert_eq!(p.state, PaymentState::Succeeded);
    assert!(!rig.engine.is_inflight(&p.payment_id), "nothing left in flight");
    assert!(
        rig.store.work_item(&p.payment_id).await.unwrap().is_none(),
        "the resolver has nothing"
    );
    assert_eq!(rig.calls_seen(), vec![], "one instruction only");
}

// Item 7: a failed PENDING flush answers INTERNAL; the same request repeated finishes the payment.
#[tokio::test]
async fn a_failed_pending_flush_is_finished_by_the_retry() {
    let mut rig = rig(Reply::Status(InstructionStatus::Approved));
    let q = rig.quote(support::flows::code(None)).await;
    rig.store.set_failing(true);
    let err = rig.engine.pay("p", pay_body("r-1", &q.quote_id)).await.unwrap_err();
    assert_eq!(err, ApiError::Internal);
    assert_eq!(rig.calls_seen(), vec![], "nothing is sent before PENDING is durable");
    assert!(!rig.engine.is_inflight("any"), "no bookkeeping left behind");

    rig.store.set_failing(false);
    let (p, created) = rig.engine.pay("p", pay_body("r-1", &q.quote_id)).await.unwrap();
    assert!(!created, "the same payment, not a second one");
    assert_eq!(p.state, PaymentState::Succeeded);
    assert_eq!(rig.calls_seen(), vec![Kind::Send]);
    // And again: a replay, nothing sent.
    let (again, created) = rig.engine.pay("p", pay_body("r-1", &q.quote_id)).await.unwrap();
    assert_eq!((again.payment_id, again.state, created), (p.payment_id, p.state, false));
    assert_eq!(rig.calls_seen(), vec![]);
}

// Item 6: what a read shows has been made durable first; a failed flush shows nothing.
#[tokio::test]
async fn reads_wait_for_durability_and_fail_with_the_flush() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let q = rig.quote(support::flows::code(None)).await;
    rig.store.close_gate();
    let engine = rig.engine.clone();
    let quote_id = q.quote_id.clone();
    let waiting = rig.store.flush_waiting.notified();
    let paying = tokio::spawn(async move { engine.pay("p", pay_body("r-1", &quote_id)).await });
    within("PENDING reaches its flush", waiting).await;
    // PENDING is in the store but not durable: a GET may not show it yet.
    let engine = rig.engine.clone();
    let mut get = tokio::spawn(async move { engine.get_by_request("p", "r-1").await });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut get).await;
    assert!(early.is_err(), "a GET answered before the state was durable: {early:?}");
    // The flush fails: neither the payment nor the GET says anything about it.
    rig.store.set_failing(true);
    rig.store.open_gate();
    assert_eq!(within("pay", paying).await.unwrap().unwrap_err(), ApiError::Internal);
    assert_eq!(within("get", get).await.unwrap().unwrap_err(), ApiError::Internal);
}

// Item 3: a resolver step waiting on the acquirer holds no lock: a cancel goes through.
#[tokio::test]
async fn no_lock_is_held_while_the_acquirer_is_asked() {
    let mut rig = rig(Reply::Fail(AcquirerError::Unknown("timeout".into())));
    let p = rig.pay("r-1").await;
    assert_eq!(p.state, PaymentState::Unknown);
    assert_eq!(rig.calls_seen(), vec![Kind::Send]);

    rig.inquiries_open.send_replace(false);
    let engine = rig.engine.clone();
    let id = p.payment_id.clone();
    let step = tokio::spawn(async move { engine.step(&id, Some(Task::Inquire)).await });
    assert_eq!(within("the inquiry", rig.calls.recv()).await, Some(Kind::Inquire));
    // The inquiry hangs at the acquirer; the partner's cancel does not wait for it.
    let cancelled =
        tokio::time::timeout(Duration::from_secs(10), rig.engine.cancel("p", &p.payment_id))
            .await
            .expect("the cancel waited on the resolver's acquirer call")
            .unwrap();
    assert_eq!(cancelled.state, PaymentState::Cancelled);
    // The inquiry's answer, now stale, changes nothing.
    rig.script.lock().unwrap().inquire = Reply::Status(InstructionStatus::Approved);
    rig.inquiries_open.send_replace(true);
    within("the step", step).await.unwrap().unwrap();
    let now = rig.payment(&p.payment_id).await;
    assert_eq!((now.state, now.booked), (PaymentState::Cancelled, false));
    assert_eq!(rig.store.work_item(&p.payment_id).await.unwrap().unwrap().task, Task::Verify);
}

// Item 2: a cancel the acquirer refuses ends: the payment stays SUCCEEDED, with a reason and a
// webhook, after a bounded number of tries; a second cancel is refused at once.
#[tokio::test]
async fn a_refused_reversal_ends_in_a_refused_cancel() {
    let mut rig = rig(Reply::Status(InstructionStatus::Approved));
    let p = rig.pay("r-1").await;
    assert_eq!(p.state, PaymentState::Succeeded);
    rig.script.lock().unwrap().reverse = Reply::Status(InstructionStatus::Approved);
    let c = rig.engine.cancel("p", &p.payment_id).await.unwrap();
    assert_eq!(c.state.api_status(), "PROCESSING");
    let w = rig.store.work_item(&p.payment_id).await.unwrap().unwrap();
    assert_eq!((w.task, w.refusals), (Task::Reverse, 1));
    assert_eq!(w.last_error.as_deref(), Some("APPROVED"), "the admin API shows why");
    // A repeated cancel does not hurry the reversal (nor use up its tries).
    let again = rig.engine.cancel("p", &p.payment_id).await.unwrap();
    assert_eq!(again.state, PaymentState::Cancelling);
    assert_eq!(rig.store.work_item(&p.payment_id).await.unwrap().unwrap().refusals, 1);
    // The resolver tries again, four times (reversal_refusals_max = 5), then gives up.
    rig.script.lock().unwrap().reverse =
        Reply::Fail(AcquirerError::Rejected { status: 409, message: "ACQ-RAW: too late".into() });
    for _ in 0..4 {
        rig.engine.step(&p.payment_id, Some(Task::Reverse)).await.unwrap();
    }
    let end = rig.payment(&p.payment_id).await;
    assert_eq!(
        (end.state, end.booked, end.reversal_refused),
        (PaymentState::Succeeded, true, true)
    );
    let refusal = end.cancel_refusal.clone().expect("a reason");
    assert_eq!(refusal.code, "REVERSAL_REFUSED");
    assert!(!refusal.message.contains("ACQ-RAW"), "our words to partners");
    assert!(rig.store.work_item(&p.payment_id).await.unwrap().is_none(), "no endless retries");
    assert_eq!(rig.event_kinds().await, vec!["payment.succeeded", "payment.cancel_refused"]);
    let kinds: Vec<String> =
        rig.store.journal().await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec!["payment"], "the payment stays booked, once");
    assert_eq!(rig.calls_seen(), [vec![Kind::Send], vec![Kind::Reverse; 5]].concat());
    // Cancelling again: refused at once, nothing sent.
    let again = rig.engine.cancel("p", &p.payment_id).await.unwrap_err();
    assert_eq!(again.code(), "CANCEL_NOT_ALLOWED");
    assert_eq!(rig.calls_seen(), vec![]);
}

// Item 2: a cancel of a payment in doubt whose reversal is refused goes back to inquiry, which
// settles it; and a reversal at expiry that the acquirer answers "approved" ends SUCCEEDED.
#[tokio::test]
async fn a_refused_reversal_of_a_payment_in_doubt_is_settled_by_inquiry() {
    let mut rig = rig(Reply::Fail(AcquirerError::Unknown("timeout".into())));
    let p = rig.pay("r-1").await;
    // Refused outright, or "still processing": both count.
    rig.script.lock().unwrap().reverse =
        Reply::Fail(AcquirerError::Rejected { status: 422, message: "ACQ-RAW: no".into() });
    rig.engine.cancel("p", &p.payment_id).await.unwrap();
    rig.script.lock().unwrap().reverse = Reply::Status(InstructionStatus::Processing);
    for _ in 0..4 {
        rig.engine.step(&p.payment_id, Some(Task::Reverse)).await.unwrap();
    }
    let mid = rig.payment(&p.payment_id).await;
    assert_eq!((mid.state, mid.reversal_refused), (PaymentState::Unknown, true));
    assert_eq!(rig.store.work_item(&p.payment_id).await.unwrap().unwrap().task, Task::Inquire);
    rig.script.lock().unwrap().inquire = Reply::Status(InstructionStatus::Approved);
    let end = rig.engine.step(&p.payment_id, Some(Task::Inquire)).await.unwrap().unwrap();
    assert_eq!((end.state, end.booked), (PaymentState::Succeeded, true));
    assert_eq!(end.cancel_refusal.unwrap().code, "REVERSAL_REFUSED");
    assert_eq!(rig.event_kinds().await, vec!["payment.cancel_refused", "payment.succeeded"]);
    assert!(rig.store.work_item(&p.payment_id).await.unwrap().is_none());
    assert_eq!(rig.calls_seen().iter().filter(|k| **k == Kind::Reverse).count(), 5);
}

// Item 4: a refund retried while the first is being recorded gets that refund, not a 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_refund_retry_gets_the_same_refund() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let p = rig.pay("r-1").await;
    let body = || RefundRequestBody {
        refund_id: "acq-ref-1".into(),
        instruction_id: p.payment_id.clone(),
        amount: RawAmount { currency: "CNY".into(), value: "2372".into() },
        reason: "customer returned the noodles".into(),
    };
    // The first request's write waits until three lookups were made: its own two (before the
    // lock, and again under it) and the retry's first, which therefore missed the refund.
    rig.store.hold_refund_write_until(3);
    let (e1, e2) = (rig.engine.clone(), rig.engine.clone());
    let (b1, b2) = (body(), body());
    let first = tokio::spawn(async move { e1.refund("sandbox", b1).await });
    let second = tokio::spawn(async move { e2.refund("sandbox", b2).await });
    let (r1, r2) = (within("first", first).await.unwrap(), within("second", second).await.unwrap());
    let (r1, r2) = (r1.expect("first refund"), r2.expect("the retry gets the refund, not 422"));
    assert_eq!(r1.0.refund_id, r2.0.refund_id);
    assert_eq!(u8::from(r1.1) + u8::from(r2.1), 1, "exactly one made it");
    assert_eq!(rig.payment(&p.payment_id).await.refunded_cny.minor(), 2372);
    assert!(rig.store.ledger_sums().await.unwrap().values().all(|s| *s == 0));
}

// Two nodes (two engines, each with its own in-process locks, on one store) record two refunds of
// one payment at once: the one whose payment read is overtaken by the other's write reads it
// again and records its refund on top (it used to answer 500, the change being stale); a
// retry of a refund the other node recorded meanwhile gets that refund, not a 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_on_two_nodes_at_once_are_both_recorded() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let p = rig.pay("r-1").await;
    let other = rig.other_node();
    let body = |id: &str, value: &str| RefundRequestBody {
        refund_id: id.into(),
        instruction_id: p.payment_id.clone(),
        amount: RawAmount { currency: "CNY".into(), value: value.into() },
        reason: "customer returned the noodles".into(),
    };
    rig.store.hold_refund_write_behind_another();
    let held = rig.store.refund_write_held.notified();
    let e = rig.engine.clone();
    let (b1, b2) = (body("acq-ref-1", "1000"), body("acq-ref-2", "1372"));
    let first = tokio::spawn(async move { e.refund("sandbox", b1).await });
    within("the first refund's write held", held).await;
    // The other node records its refund while the first one's write waits, from a payment read
    // that does not count it.
    let (second, made) = other.refund("sandbox", b2).await.expect("the second refund");
    assert!(made);
    let (first, made) = within("first", first).await.unwrap().expect("not a 500: read again");
    assert!(made);
    assert_ne!(first.refund_id, second.refund_id);
    let now = rig.payment(&p.payment_id).await;
    assert_eq!(now.refunded_cny.minor(), 2372, "both refunds counted once each");
    assert!(rig.store.ledger_sums().await.unwrap().values().all(|s| *s == 0));
    // Retried on either node: the same refund each time; and nothing left to refund.
    for e in [&rig.engine, &other] {
        let (again, made) = e.refund("sandbox", body("acq-ref-2", "1372")).await.unwrap();
        assert_eq!((again.refund_id.as_str(), made), (second.refund_id.as_str(), false));
    }
    let over = other.refund("sandbox", body("acq-ref-3", "1")).await;
    assert!(matches!(over, Err(ApiError::RefundExceedsPayment(_))), "{over:?}");
}

// A refund of the whole payment sent to two nodes at once: the one that found no refund, then
// read the payment after the other had recorded it, answers with that refund, not 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_recorded_on_another_node_after_the_lookup_is_answered_not_refused() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let p = rig.pay("r-1").await;
    let other = rig.other_node();
    let body = || RefundRequestBody {
        refund_id: "acq-ref-1".into(),
        instruction_id: p.payment_id.clone(),
        amount: RawAmount { currency: "CNY".into(), value: "2372".into() },
        reason: "customer returned the noodles".into(),
    };
    rig.store.hold_payment_read_behind_a_refund();
    let held = rig.store.payment_read_held.notified();
    let e = rig.engine.clone();
    let b = body();
    let first = tokio::spawn(async move { e.refund("sandbox", b).await });
    within("the first node's payment read held", held).await;
    let (recorded, made) = other.refund("sandbox", body()).await.expect("the other node's");
    assert!(made);
    let (answered, made) =
        within("first", first).await.unwrap().expect("the refund recorded, not a 422");
    assert_eq!((answered.refund_id, made), (recorded.refund_id, false));
    assert_eq!(rig.payment(&p.payment_id).await.refunded_cny.minor(), 2372);
}

// Item 5 (engine side) and 17: only an explicit answer about this instruction decides; a decline
// is told in our words, the acquirer's own kept for admins.
#[tokio::test]
async fn only_an_explicit_answer_decides_and_partners_get_our_words() {
    for (send, state) in [
        (Reply::ForOther(InstructionStatus::Approved), PaymentState::Unknown),
        (Reply::ForOther(InstructionStatus::Declined), PaymentState::Unknown),
        (Reply::Status(InstructionStatus::Processing), PaymentState::Unknown),
        (Reply::Status(InstructionStatus::NotFound), PaymentState::Unknown),
        (
            Reply::Fail(AcquirerError::Unknown("429 Too Many Requests".into())),
            PaymentState::Unknown,
        ),
        (Reply::Status(InstructionStatus::Declined), PaymentState::Failed),
        (
            Reply::Fail(AcquirerError::Rejected {
                status: 422,
                message: "ACQ-RAW: merchant 123 frozen".into(),
            }),
            PaymentState::Failed,
        ),
    ] {
        let rig = rig(send.clone());
        let p = rig.pay("r-1").await;
        assert_eq!(p.state, state, "{send:?}");
        if state == PaymentState::Failed {
            let f = p.failure.clone().unwrap();
            assert_eq!(f.code, "DECLINED");
            assert!(!f.message.contains("ACQ-RAW"), "raw acquirer text reached the partner: {f:?}");
            let body = serde_json::to_string(&qrbridge::api::PaymentAnswer::new(&p)).unwrap();
            assert!(!body.contains("ACQ-RAW"), "{body}");
            assert!(p.acquirer_reason.as_deref().is_some_and(|r| r.contains("ACQ-RAW")));
            let events = rig.store.outbox().await.unwrap();
            assert!(!serde_json::to_string(&events[0].1.data).unwrap().contains("ACQ-RAW"));
        } else {
            assert_eq!(
                rig.store.work_item(&p.payment_id).await.unwrap().unwrap().task,
                Task::Inquire
            );
        }
    }
}

// Item 9: an order code is paid at most once; a static code any number of times; an order whose
// payment failed may be paid again.
#[tokio::test]
async fn an_order_code_is_paid_once() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let order = support::flows::code(Some("23.72"));
    let q1 = rig.quote(order.clone()).await;
    assert_eq!(q1.code.code_type, "DYNAMIC");
    let (p1, _) = rig.engine.pay("p", pay_body("r-1", &q1.quote_id)).await.unwrap();
    assert_eq!(p1.state, PaymentState::Succeeded);
    let q2 = rig.quote(order.clone()).await;
    let err = rig.engine.pay("p", pay_body("r-2", &q2.quote_id)).await.unwrap_err();
    assert_eq!(err, ApiError::OrderAlreadyPaid);
    assert_eq!(err.response().status().as_u16(), 409);
    // The refused request left nothing: its request id is free, the quote unused.
    assert!(rig.store.payment_by_request("p", "r-2").await.unwrap().is_none());

    // Static codes pay again and again.
    for i in 0..3 {
        rig.pay(&format!("s-{i}")).await;
    }

    // A declined order may be paid again.
    let rig = self::rig(Reply::Status(InstructionStatus::Declined));
    let q1 = rig.quote(order.clone()).await;
    let (p1, _) = rig.engine.pay("p", pay_body("r-1", &q1.quote_id)).await.unwrap();
    assert_eq!(p1.state, PaymentState::Failed);
    rig.script.lock().unwrap().send = Reply::Status(InstructionStatus::Approved);
    let q2 = rig.quote(order).await;
    let (p2, _) = rig.engine.pay("p", pay_body("r-2", &q2.quote_id)).await.unwrap();
    assert_eq!(p2.state, PaymentState::Succeeded);
}

// Item 11: the cancel window is the contract's (00:30 Asia/Shanghai, T+1), whatever zone
// settlement runs in. Over the real daemon and mTLS.
#[tokio::test]
async fn the_cancel_window_ends_0030_shanghai_whatever_the_settlement_zone() {
    use support::daemon::{assert_error, Setup, TestDaemon};
    use support::flows::quote_and_pay;
    // 23:00 in Shanghai (15:00 UTC, 11:00 in New York).
    let start = chrono::DateTime::parse_from_rfc3339("2026-05-22T15:00:00Z").unwrap().into();
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some(start),
        tweak: Box::new(|c| c.settlement.time_zone = "America/New_York".into()),
        ..Setup::default()
    })
    .await;
    let c = d.client("partner-demo");
    let (_, p) = quote_and_pay(&c, 3_000, "late-evening").await;
    let id = p["payment_id"].as_str().unwrap().to_owned();
    // 00:40 in Shanghai the next day (16:40 UTC; still the same day in New York): too late.
    d.clock.as_ref().unwrap().advance(chrono::Duration::minutes(100));
    let late = c.post(&format!("/v1/payments/{id}/cancel"), &serde_json::json!({})).await;
    assert_error(&late, 409, "CANCEL_WINDOW_CLOSED");
    d.finish().await;
}

// Item 6: a webhook event goes out only once a flush covers it: an event whose change's flush
// failed waits in the outbox until a flush succeeds.
#[tokio::test]
async fn a_webhook_waits_until_its_change_is_durable() {
    use qrbridge::webhooks::DeliveryPolicy;
    use qrbridge_adapters::webhook::WebhookSender;
    use support::webhook::{Mode, Receiver, SECRET};
    let rig = rig(Reply::Fail(AcquirerError::Unknown("timeout".into())));
    let p = rig.pay("r-1").await;
    assert_eq!(p.state, PaymentState::Unknown);
    // The inquiry finds it approved, but the outcome's flush fails (the one before the inquiry
    // passes): the event sits in the outbox, not durable.
    rig.store.fail_after(1);
    rig.script.lock().unwrap().inquire = Reply::Status(InstructionStatus::Approved);
    let err = rig.engine.step(&p.payment_id, Some(Task::Inquire)).await.unwrap_err();
    assert_eq!(err, ApiError::Internal);
    assert_eq!(rig.event_kinds().await, vec!["payment.succeeded"]);

    let pki = rig._dir.path().join("pki");
    let hooks = Receiver::start(&pki, Mode::Ack).await;
    let sender = WebhookSender::new(
        &hooks.url(),
        SECRET.as_bytes(),
        support::daemon::client_config(&pki, Some("bridge-client")),
        Duration::from_secs(2),
        Duration::from_secs(5),
    );
    let policy = DeliveryPolicy {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        max_age: chrono::Duration::hours(1),
        concurrency: 4,
        partner_concurrency: 2,
        poll: None,
    };
    rig.store.close_gate();
    let waiting = rig.store.flush_waiting.notified();
    let (stop, stopped) = watch::channel(false);
    let worker = tokio::spawn(qrbridge::webhooks::run(
        rig.engine.clone(),
        qrbridge::webhooks::Senders::new(HashMap::from([("p".to_owned(), sender)])),
        policy,
        stopped,
    ));
    // The worker found the event and waits for a flush before sending it.
    within("the worker's flush", waiting).await;
    assert!(hooks.received().is_empty(), "an event went out before it was durable");
    rig.store.set_failing(false);
    rig.store.open_gate();
    hooks.wait_until(BOUND, |r| !r.is_empty()).await;
    assert_eq!(
        hooks.received()[0].event_id,
        match rig.store.outbox().await.unwrap().first() {
            Some((_, e)) => e.event_id.clone(),
            None => rig.store.delivered_events().await.unwrap()[0].event.event_id.clone(),
        }
    );
    stop.send(true).unwrap();
    within("the worker stops", worker).await.unwrap();
}

// Item 2 (and its review): an acquirer that approves behind every reversal is not reversed for
// ever: after three late approvals an operator is asked (the admin API lists the task).
#[tokio::test]
async fn approvals_behind_every_reversal_go_to_an_operator() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let p = rig.pay("r-1").await;
    assert_eq!(rig.engine.cancel("p", &p.payment_id).await.unwrap().state, PaymentState::Cancelled);
    // Every verifying inquiry finds it approved again; every reversal is acknowledged.
    rig.script.lock().unwrap().inquire = Reply::Status(InstructionStatus::Approved);
    for _ in 0..3 {
        rig.engine.step(&p.payment_id, Some(Task::Verify)).await.unwrap();
    }
    let end = rig.payment(&p.payment_id).await;
    assert_eq!((end.state, end.late_approvals, end.booked), (PaymentState::Cancelled, 3, true));
    let w = rig.store.work_item(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(w.task, Task::Attention);
    assert!(w.last_error.unwrap().contains("3 times"));
    // The resolver leaves it to the operator.
    rig.clock.advance(chrono::Duration::days(1));
    assert_eq!(rig.engine.run_due_work().await.unwrap(), 0);
    assert!(rig.store.ledger_sums().await.unwrap().values().all(|s| *s == 0));
    // The operator settles it (audited first); the payment stays as it was.
    let err = rig.engine.settle_attention(&p.payment_id, "admin", "  ").await.unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    let settled = rig
        .engine
        .settle_attention(&p.payment_id, "admin", "merchant refunded by the acquirer, ticket 42")
        .await
        .unwrap();
    assert_eq!((settled.state, settled.booked), (PaymentState::Cancelled, true));
    assert!(rig.store.work_item(&p.payment_id).await.unwrap().is_none());
    let (audit, _) = rig.store.audit_log().await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!((last.action.as_str(), last.actor.as_str()), ("resolver.settle", "admin"));
    assert_eq!(last.before["task"], "ATTENTION");
    assert_eq!(last.after["note"], "merchant refunded by the acquirer, ticket 42");
    // Nothing left to settle: a conflict; an unknown payment: not found.
    let again = rig.engine.settle_attention(&p.payment_id, "admin", "again").await.unwrap_err();
    assert_eq!(again.code(), "NOT_AWAITING_OPERATOR");
    let none = rig.engine.settle_attention("pay_none", "admin", "x").await.unwrap_err();
    assert_eq!(none, ApiError::PaymentNotFound);
}

// Review: a payment known never sent is not inquired about; it waits for the partner's retry
// while its quote is valid, then fails as never sent, its quote free again.
#[tokio::test]
async fn a_payment_known_never_sent_waits_for_its_retry_then_fails_as_never_sent() {
    let mut rig = rig(Reply::Status(InstructionStatus::Approved));
    let q = rig.quote(support::flows::code(None)).await;
    rig.store.set_failing(true);
    rig.engine.pay("p", pay_body("r-1", &q.quote_id)).await.unwrap_err();
    rig.store.set_failing(false);
    let p = rig.store.payment_by_request("p", "r-1").await.unwrap().unwrap();
    // The resolver's turn comes first: no acquirer call, the payment waits till the quote ends.
    let waited = rig.engine.step(&p.payment_id, Some(Task::Inquire)).await.unwrap().unwrap();
    assert_eq!(waited.state, PaymentState::Pending);
    assert_eq!(rig.store.work_item(&p.payment_id).await.unwrap().unwrap().due, q.quote.expires_at);
    assert_eq!(rig.calls_seen(), vec![]);
    // Past the quote: failed as never sent.
    rig.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(rig.engine.run_due_work().await.unwrap(), 1);
    let end = rig.payment(&p.payment_id).await;
    assert_eq!(end.state, PaymentState::Failed);
    assert_eq!(end.failure.unwrap().code, "ACQUIRER_UNAVAILABLE");
    assert_eq!(rig.calls_seen(), vec![], "nothing was ever sent");
    // The retry now tells where it stands; the quote is expired anyway.
    let (again, created) = rig.engine.pay("p", pay_body("r-1", &q.quote_id)).await.unwrap();
    assert_eq!((again.state, created), (PaymentState::Failed, false));
}

// Review: a payment whose acquirer has no client any more backs off and says why.
#[tokio::test]
async fn a_payment_whose_acquirer_is_gone_backs_off_and_says_why() {
    let rig = rig(Reply::Fail(AcquirerError::Unknown("timeout".into())));
    let p = rig.pay("r-1").await;
    let engine = Engine::new({
        let mut parts = support::engine::parts(
            rig._dir.path(),
            rig.store.clone(),
            Arc::new(rig.clock.clone()),
            HashMap::new(),
        );
        parts.resolver = qrbridge::engine::ResolverPolicy::default();
        parts
    });
    let after = engine.step(&p.payment_id, Some(Task::Inquire)).await.unwrap().unwrap();
    assert_eq!(after.state, PaymentState::Unknown);
    let w = rig.store.work_item(&p.payment_id).await.unwrap().unwrap();
    assert_eq!((w.task, w.attempt), (Task::Inquire, 1));
    assert_eq!(w.last_error.as_deref(), Some("no client for acquirer sandbox"));
}

// Review of item 3: one acquirer's outage holds at most its own lane of resolver steps.
#[tokio::test]
async fn one_acquirers_outage_holds_at_most_its_lane() {
    let mut rig = rig_with(Reply::Fail(AcquirerError::Unknown("timeout".into())), |parts| {
        parts.resolver.acquirer_concurrency_max = 1;
    });
    let a = rig.pay("r-a").await;
    let b = rig.pay("r-b").await;
    rig.calls_seen();
    rig.inquiries_open.send_replace(false);
    let engine = rig.engine.clone();
    let id = a.payment_id.clone();
    let held = tokio::spawn(async move { engine.step(&id, Some(Task::Inquire)).await });
    assert_eq!(within("the hung inquiry", rig.calls.recv()).await, Some(Kind::Inquire));
    // The lane is full: b's step does not wait for it, and asks nothing.
    let (b_now, acted) =
        within("b's step", rig.engine.step_counted(&b.payment_id, Some(Task::Inquire)))
            .await
            .unwrap();
    assert_eq!((b_now.unwrap().state, acted), (PaymentState::Unknown, false));
    assert_eq!(rig.calls_seen(), vec![]);
    rig.inquiries_open.send_replace(true);
    within("a's step", held).await.unwrap().unwrap();
}

// Item 2 ("show what is left on the admin API"): a payment in doubt is listed with its state,
// task, attempts, refusals and what the last attempt got. Over the real daemon and mTLS.
#[tokio::test]
async fn the_admin_api_shows_what_the_resolver_has_left() {
    use support::daemon::{Setup, TestDaemon};
    use support::flows::quote_and_pay;
    let d = TestDaemon::start_with(Setup { manual_clock: true, ..Setup::default() }).await;
    let c = d.client("partner-demo");
    // The sandbox answers PROCESSING to amounts ending in 56 (until a reversal races it).
    let (_, p) = quote_and_pay(&c, 3_056, "in-doubt").await;
    assert_eq!(p["status"], "PROCESSING", "{p}");
    let id = p["payment_id"].as_str().unwrap().to_owned();
    d.resolve_after(chrono::Duration::seconds(5)).await;
    let (status, open) = d.admin_client("admin").get("/admin/v1/resolver").await;
    assert_eq!(status, http::StatusCode::OK, "{open}");
    let item = open["open"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["payment_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{open}"))
        .clone();
    assert_eq!(
        (&item["status"], &item["state"], &item["task"]),
        (
            &serde_json::json!("PROCESSING"),
            &serde_json::json!("UNKNOWN"),
            &serde_json::json!("INQUIRE")
        )
    );
    assert_eq!(
        (&item["attempt"], &item["refusals"]),
        (&serde_json::json!(1), &serde_json::json!(0))
    );
    assert_eq!(item["reversal_refused"], false);
    assert!(item["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{item}");
    d.finish().await;
}

// Review: a cancel whose reversals all got "still processing" is refused like any other, but an
// operator is asked to make sure the reversal did not go through after all.
#[tokio::test]
async fn a_cancel_answered_processing_to_the_end_is_refused_and_watched() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let p = rig.pay("r-1").await;
    rig.script.lock().unwrap().reverse = Reply::Status(InstructionStatus::Processing);
    rig.engine.cancel("p", &p.payment_id).await.unwrap();
    for _ in 0..4 {
        rig.engine.step(&p.payment_id, Some(Task::Reverse)).await.unwrap();
    }
    let end = rig.payment(&p.payment_id).await;
    assert_eq!((end.state, end.booked), (PaymentState::Succeeded, true));
    assert_eq!(end.cancel_refusal.unwrap().code, "REVERSAL_REFUSED");
    let w = rig.store.work_item(&p.payment_id).await.unwrap().unwrap();
    assert_eq!(w.task, Task::Attention);
    assert!(w.last_error.unwrap().contains("PROCESSING"));
    assert_eq!(rig.event_kinds().await, vec!["payment.succeeded", "payment.cancel_refused"]);
}

// Issue 13 (retention): quotes no payment used are removed after their expiry plus the
// retention, in creation order from a cursor; a used quote stays; a purged quote is
// QUOTE_NOT_FOUND.
#[tokio::test]
async fn expired_unused_quotes_are_purged_used_ones_stay() {
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let unused = rig.quote(support::flows::code(None)).await;
    let paid = rig.pay("r-1").await;
    let fresh_later = {
        rig.clock.advance(chrono::Duration::seconds(30));
        rig.quote(support::flows::code(None)).await
    };
    // 61 s after the first two were made they have expired; the third has not.
    rig.clock.advance(chrono::Duration::seconds(31));
    let cutoff = rig.clock.now();
    let first = rig.store.purge_quotes(None, cutoff, 100).await.unwrap();
    assert_eq!((first.removed, first.caught_up), (1, true), "{first:?}");
    assert!(rig.store.quote(&unused.quote_id).await.unwrap().is_none());
    let kept = rig.store.quote(&paid.quote_id).await.unwrap().expect("a used quote stays");
    // What refunds are priced from: the payment's copy is the quote's, figure for figure.
    assert_eq!(paid.pricing(), kept.quote.pricing());
    assert!(rig.store.quote(&fresh_later.quote_id).await.unwrap().is_some(), "not expired yet");
    // The cursor stopped before the unexpired quote; the next sweep starts there.
    let cursor = first.cursor.clone().unwrap();
    assert!(cursor.as_str() < fresh_later.quote_id.as_str());
    let again = rig.store.purge_quotes(Some(&cursor), cutoff, 100).await.unwrap();
    assert_eq!((again.removed, again.cursor), (0, first.cursor));
    // Paying a purged quote: not found.
    let err = rig.engine.pay("p", pay_body("r-2", &unused.quote_id)).await.unwrap_err();
    assert_eq!(err, ApiError::QuoteNotFound);
    // A batch limit stops early without losing its place.
    let (q4, q5) =
        (rig.quote(support::flows::code(None)).await, rig.quote(support::flows::code(None)).await);
    rig.clock.advance(chrono::Duration::seconds(61));
    let limited = rig.store.purge_quotes(Some(&cursor), rig.clock.now(), 1).await.unwrap();
    assert_eq!((limited.removed, limited.caught_up), (1, false));
    assert_eq!(limited.cursor.as_deref(), Some(fresh_later.quote_id.as_str()));
    let rest =
        rig.store.purge_quotes(limited.cursor.as_deref(), rig.clock.now(), 10).await.unwrap();
    assert_eq!((rest.removed, rest.caught_up), (2, true));
    assert!(rig.store.quote(&q4.quote_id).await.unwrap().is_none());
    assert!(rig.store.quote(&q5.quote_id).await.unwrap().is_none());
}

// Issue 13 (retention): the sweep keeps its place in the store, so a restart (or a new leader)
// goes on from there instead of walking every quote a payment used since the first.
#[tokio::test]
async fn the_retention_sweep_goes_on_from_where_it_stopped() {
    use qrbridge::store::retention::{run, QuoteRetention, CURSOR};
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let paid = rig.pay("r-1").await;
    let unused = rig.quote(support::flows::code(None)).await;
    rig.clock.advance(chrono::Duration::seconds(121));
    let policy = QuoteRetention {
        keep_after_expiry: chrono::Duration::zero(),
        every: Duration::from_secs(3600),
        batch: 1,
    };
    // Already told to stop: each run is one sweep, then returns.
    let (_stop, stopped) = watch::channel(true);
    let sweep = || {
        let clock: Arc<dyn Clock> = Arc::new(rig.clock.clone());
        run(rig.store.clone(), clock, policy, stopped.clone())
    };
    assert_eq!(rig.store.mark(CURSOR).await.unwrap(), None);
    sweep().await;
    assert!(rig.store.quote(&unused.quote_id).await.unwrap().is_none());
    assert!(rig.store.quote(&paid.quote_id).await.unwrap().is_some(), "used: kept");
    let last = paid.quote_id.as_str().max(unused.quote_id.as_str()).to_owned();
    assert_eq!(rig.store.mark(CURSOR).await.unwrap().as_deref(), Some(last.as_str()));
    // An expired quote behind the mark is not looked at again (a sweep from the start would
    // remove it); one made after the mark is.
    let behind = QuoteRecord { quote_id: "quo_0".into(), ..unused.clone() };
    rig.store.put_quote(&behind).await.unwrap();
    let later = rig.quote(support::flows::code(None)).await;
    rig.clock.advance(chrono::Duration::seconds(121));
    sweep().await;
    assert!(rig.store.quote(&later.quote_id).await.unwrap().is_none());
    assert!(rig.store.quote("quo_0").await.unwrap().is_some(), "behind the mark");
    assert_eq!(rig.store.mark(CURSOR).await.unwrap(), Some(later.quote_id));
}

/// sled keeps a prefix of its log in a crash. A begin writes its claims, resolver work and index
/// first and the payment last, so a crash inside it can leave the former without the latter:
/// none of them may block, answer for or resurrect a payment that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_crash_inside_a_begin_leaves_blocks_nothing() {
    use qrbridge::store::{Begin, SledStore};
    let rig = rig(Reply::Status(InstructionStatus::Approved));
    let q = rig.quote(support::flows::code(None)).await;
    let (made, _) = rig.engine.pay("p", pay_body("r-crash", &q.quote_id)).await.unwrap();
    // The same payment as it was at PENDING, begun in a store of its own.
    let pending = PaymentRecord {
        state: PaymentState::Pending,
        rev: 0,
        booked: false,
        acquirer_ref: None,
        updated_at: made.created_at,
        ..made.clone()
    };
    let now = made.created_at;
    let work = WorkItem::new(&pending.payment_id, Task::Inquire, now, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let quote = rig.store.quote(&q.quote_id).await.unwrap().unwrap();
    let day = (now - chrono::Duration::hours(1), now + chrono::Duration::hours(1));
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let store = SledStore::open(&path, 8 << 20).unwrap();
                store.put_quote(&quote).unwrap();
                assert!(matches!(
                    store.begin_payment(&pending, &work, now).unwrap(),
                    Begin::Created
                ));
                store.flush().await.unwrap();
            })
        });
    });
    // The crash kept everything but the payment itself.
    {
        let db = sled::open(&path).unwrap();
        let records = db.open_tree("records").unwrap();
        let mut k = b"p".to_vec();
        k.extend_from_slice(pending.payment_id.as_bytes());
        assert!(records.remove(k).unwrap().is_some());
        db.flush().unwrap();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let store = SledStore::open(&path, 8 << 20).unwrap();
                assert_eq!(store.payment_by_request("p", "r-crash").unwrap(), None);
                assert!(store.open_work().unwrap().is_empty(), "no work for a payment not made");
                assert!(store.payments_made(day.0, day.1).unwrap().is_empty());
                // Another request may pay the quote (its claim holds no payment)...
                let other = PaymentRecord {
                    payment_id: new_id("pay"),
                    request_id: "r-other".into(),
                    ..pending.clone()
                };
                let work = WorkItem::new(&other.payment_id, Task::Inquire, now, 0);
                assert!(matches!(store.begin_payment(&other, &work, now).unwrap(), Begin::Created));
                // ... and the crashed request, repeated, is a new payment, not a conflict.
                let again = PaymentRecord {
                    payment_id: new_id("pay"),
                    quote_id: "quo_other".into(),
                    ..pending.clone()
                };
                let q2 = QuoteRecord { quote_id: "quo_other".into(), ..quote.clone() };
                store.put_quote(&q2).unwrap();
                let work = WorkItem::new(&again.payment_id, Task::Inquire, now, 0);
                assert!(matches!(store.begin_payment(&again, &work, now).unwrap(), Begin::Created));
                assert_eq!(
                    store.payment_by_request("p", "r-crash").unwrap().map(|p| p.payment_id),
                    Some(again.payment_id.clone())
                );
                let open: Vec<String> =
                    store.open_work().unwrap().into_iter().map(|w| w.payment_id).collect();
                assert_eq!(open.len(), 2);
                assert!(!open.contains(&pending.payment_id));
            })
        });
    });
}
