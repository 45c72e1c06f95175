//! Money in doubt comes to rest, end to end: the real daemon (real mTLS on loopback, the real
//! sandbox acquirer and its fault knobs, a real webhook endpoint), with a manual clock moved by the
//! test and the resolver's due work run explicitly. For each fault: the payment's final state, how
//! many instructions and reversals the acquirer saw, and the one webhook the partner got. Then
//! cancels in flight, refunds over the acquirer listener, webhook retries and parking, and the admin
//! listener.

mod support;

use std::time::Duration;

use http::StatusCode;
use qrbridge::store::Store;
use serde_json::{json, Value};
use support::daemon::{assert_error, Setup, TestDaemon};
use support::flows::*;
use support::webhook::Mode;

const WAIT: Duration = Duration::from_secs(30);

fn with_hooks(mode: Mode) -> Setup {
    Setup { manual_clock: true, webhooks: Some(mode), ..Setup::default() }
}

/// Waits until every payment in `ids` has had exactly one `payment.*` webhook acknowledged.
async fn final_webhooks(d: &TestDaemon, ids: &[String]) {
    let hooks = d.hooks.as_ref().unwrap();
    hooks
        .wait_until(WAIT, |got| {
            ids.iter().all(|id| {
                got.iter().any(|r| r.acked && &r.payment_id == id && r.kind.starts_with("payment."))
            })
        })
        .await;
}

on_both_stores! {
#[tokio::test]
async fn every_fault_ends_in_a_final_state() {
    let d = TestDaemon::start_with(with_hooks(Mode::Ack)).await;
    let c = d.client("partner-demo");
    // (fen, what the sandbox does, final status, failure code, reversals, late approvals)
    let cases = [
        (52, "answers after the bridge's timeout", "SUCCEEDED", None, 0, 0),
        (53, "hangs after approving", "SUCCEEDED", None, 0, 0),
        (54, "answers 500, nothing processed", "FAILED", Some("EXPIRED"), 1, 0),
        (55, "resets the connection, nothing processed", "FAILED", Some("EXPIRED"), 1, 0),
        (56, "approves behind the first reversal", "FAILED", Some("EXPIRED"), 2, 1),
    ];
    let mut ids = Vec::new();
    for (fen, what, ..) in &cases {
        let (s, p) = quote_and_pay(&c, 1_000 + fen, &format!("fault-{fen}")).await;
        assert_eq!(
            (s, p["status"].as_str()),
            (StatusCode::CREATED, Some("PROCESSING")),
            "{what}: {p}"
        );
        ids.push(p["payment_id"].as_str().unwrap().to_owned());
    }
    // The resolver inquires, reverses at the expiry (900 s), verifies, and is done.
    d.resolve_all(chrono::Duration::minutes(20)).await;
    let sandbox = d.daemon().sandbox.as_ref().unwrap();
    for ((fen, what, status, failure, reversals, late), id) in cases.iter().zip(&ids) {
        let (s, p) = c.get(&format!("/v1/payments/{id}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(p["status"], *status, "{fen} ({what}): {p}");
        assert_eq!(p["failure"]["code"].as_str(), *failure, "{fen} ({what}): {p}");
        assert_eq!(sandbox.received(id), 1, "{fen} ({what}): one instruction, never resent");
        let seen = sandbox.reversals().iter().filter(|r| *r == id).count();
        assert_eq!(seen, *reversals, "{fen} ({what}): reversals");
        let record = d.daemon().store().payment(id).await.unwrap().unwrap();
        assert_eq!(record.late_approvals, *late, "{fen} ({what})");
    }
    // The partner heard each outcome exactly once, signed.
    final_webhooks(&d, &ids).await;
    let hooks = d.hooks.as_ref().unwrap();
    for ((_, what, status, ..), id) in cases.iter().zip(&ids) {
        let got: Vec<_> = hooks.acked().into_iter().filter(|r| &r.payment_id == id).collect();
        assert_eq!(got.len(), 1, "{what}: {got:#?}");
        assert!(got[0].signature_ok && got[0].header_matches_body);
        assert_eq!(got[0].kind, format!("payment.{}", status.to_lowercase()));
        assert_eq!(got[0].body["data"]["status"], *status);
    }
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn cancel_ends_in_a_defined_state_whatever_the_payment_is_doing() {
    let d = TestDaemon::start_with(with_hooks(Mode::Ack)).await;
    let c = d.client("partner-demo");
    let sandbox = || d.daemon().sandbox.as_ref().unwrap();
    let cancel = |id: String| {
        let c = c.clone();
        async move { c.post(&format!("/v1/payments/{id}/cancel"), &json!({})).await }
    };

    // In flight (the instruction hung): reversed at the acquirer, CANCELLED, nothing booked.
    let (_, p) = quote_and_pay(&c, 2_053, "cancel-hung").await;
    let hung = p["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(p["status"], "PROCESSING");
    let (s, p) = cancel(hung.clone()).await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::OK, Some("CANCELLED")), "{p}");
    assert_eq!(
        sandbox().status(&hung),
        Some(qrbridge_adapters::acquirer::wire::InstructionStatus::Reversed)
    );

    // Failed: nothing to do, returned as it is.
    let (_, p) = quote_and_pay(&c, 2_051, "cancel-declined").await;
    assert_eq!(p["status"], "FAILED");
    let declined = p["payment_id"].as_str().unwrap().to_owned();
    let (s, again) = cancel(declined.clone()).await;
    assert_eq!((s, &again), (StatusCode::OK, &p));
    assert_eq!(sandbox().reversals().iter().filter(|r| **r == declined).count(), 0);

    // Undecided at the acquirer, whose approval lands behind the reversal: CANCELLED for the
    // partner; the verifying inquiry finds the approval, books it and reverses it again.
    let (_, p) = quote_and_pay(&c, 2_056, "cancel-racing").await;
    let racing = p["payment_id"].as_str().unwrap().to_owned();
    let (_, p) = cancel(racing.clone()).await;
    assert_eq!(p["status"], "CANCELLED", "{p}");
    d.resolve_all(chrono::Duration::minutes(5)).await;
    let record = d.daemon().store().payment(&racing).await.unwrap().unwrap();
    assert_eq!((record.late_approvals, record.booked), (1, false));
    assert_eq!(c.get(&format!("/v1/payments/{racing}")).await.1["status"], "CANCELLED");
    assert_eq!(sandbox().reversals().iter().filter(|r| **r == racing).count(), 2);

    // Each instruction was sent once; the partner heard one final event per payment.
    for id in [&hung, &declined, &racing] {
        assert_eq!(sandbox().received(id), 1);
    }
    final_webhooks(&d, &[hung.clone(), declined.clone(), racing.clone()]).await;
    let kinds: Vec<String> =
        d.hooks.as_ref().unwrap().acked().into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "payment.cancelled").count(), 2, "{kinds:?}");
    d.finish().await;
}
}

fn refund(refund_id: &str, instruction_id: &str, fen: i64) -> Value {
    json!({
        "refund_id": refund_id,
        "instruction_id": instruction_id,
        "amount": {"currency": "CNY", "value": fen.to_string()},
        "reason": "customer returned the goods",
    })
}

on_both_stores! {
#[tokio::test]
async fn refunds_come_from_the_acquirer_partial_repeated_never_more_than_paid() {
    let d = TestDaemon::start_with(with_hooks(Mode::Ack)).await;
    let c = d.client("partner-demo");
    let acq = d.acquirer_client("acquirer-sandbox");
    let (_, p) = quote_and_pay(&c, 3_000, "to-refund").await;
    assert_eq!(p["status"], "SUCCEEDED");
    let id = p["payment_id"].as_str().unwrap().to_owned();
    let wallet: i64 = p["wallet_amount"]["value"].as_str().unwrap().parse().unwrap();

    // A partial refund; the same request again is the same refund; other content is a conflict.
    let (s, r1) = acq.post("/acquirer/v1/refunds", &refund("ACQ-R1", &id, 1_000)).await;
    assert_eq!(s, StatusCode::CREATED, "{r1}");
    assert_eq!(
        (r1["status"].as_str(), r1["payment_id"].as_str()),
        (Some("SUCCEEDED"), Some(id.as_str()))
    );
    let w1: i64 = r1["wallet_amount"]["value"].as_str().unwrap().parse().unwrap();
    assert!(w1 > 0 && w1 < wallet);
    let (s, again) = acq.post("/acquirer/v1/refunds", &refund("ACQ-R1", &id, 1_000)).await;
    assert_eq!((s, &again), (StatusCode::OK, &r1));
    assert_error(
        &acq.post("/acquirer/v1/refunds", &refund("ACQ-R1", &id, 900)).await,
        409,
        "REPEAT_REQ_INCONSISTENT",
    );

    // The rest: the two give back exactly the wallet amount paid.
    let (s, r2) = acq.post("/acquirer/v1/refunds", &refund("ACQ-R2", &id, 2_000)).await;
    assert_eq!(s, StatusCode::CREATED, "{r2}");
    let w2: i64 = r2["wallet_amount"]["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(w1 + w2, wallet);
    assert_error(
        &acq.post("/acquirer/v1/refunds", &refund("ACQ-R3", &id, 1)).await,
        422,
        "REFUND_EXCEEDS_PAYMENT",
    );

    // The partner sees both, and the total; another partner sees nothing.
    let (s, list) = c.get(&format!("/v1/payments/{id}/refunds")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["refunds"].as_array().unwrap().len(), 2);
    assert_eq!(list["refunded_amount"]["value"], wallet.to_string());
    assert_eq!(
        c.get(&format!("/v1/payments/{id}")).await.1["refunded_amount"]["value"],
        wallet.to_string()
    );
    assert_error(
        &d.client("partner-other").get(&format!("/v1/payments/{id}/refunds")).await,
        404,
        "PAYMENT_NOT_FOUND",
    );
    // A refunded payment can no longer be cancelled.
    assert_error(
        &c.post(&format!("/v1/payments/{id}/cancel"), &json!({})).await,
        409,
        "CANCEL_NOT_ALLOWED",
    );

    // What cannot be refunded.
    let (_, failed) = quote_and_pay(&c, 3_051, "declined").await;
    let failed = failed["payment_id"].as_str().unwrap();
    assert_error(
        &acq.post("/acquirer/v1/refunds", &refund("ACQ-F", failed, 100)).await,
        409,
        "PAYMENT_NOT_REFUNDABLE",
    );
    assert_error(
        &acq.post("/acquirer/v1/refunds", &refund("ACQ-X", "pay_nothing", 100)).await,
        404,
        "PAYMENT_NOT_FOUND",
    );
    assert_error(
        &acq.post("/acquirer/v1/refunds", &refund("ACQ-Z", &id, 0)).await,
        422,
        "INVALID_AMOUNT",
    );
    let mut bad = refund("ACQ-B", &id, 100);
    bad["amount"]["currency"] = json!("PHP");
    assert_error(&acq.post("/acquirer/v1/refunds", &bad).await, 422, "INVALID_AMOUNT");
    assert_error(
        &acq.post_raw("/acquirer/v1/refunds", b"{not json".to_vec()).await,
        400,
        "INVALID_REQUEST",
    );
    // Only acquirer certificates: a partner's certificate is refused.
    assert_error(
        &d.acquirer_client("partner-demo").post("/acquirer/v1/refunds", &refund("P", &id, 1)).await,
        403,
        "FORBIDDEN",
    );
    // Past 366 days.
    let (_, old) = quote_and_pay(&c, 3_100, "old").await;
    d.clock.as_ref().unwrap().advance(chrono::Duration::days(367));
    let old = old["payment_id"].as_str().unwrap();
    assert_error(
        &acq.post("/acquirer/v1/refunds", &refund("ACQ-OLD", old, 100)).await,
        409,
        "REFUND_WINDOW_CLOSED",
    );

    // The partner was told of each refund, after the payment, in order.
    let hooks = d.hooks.as_ref().unwrap();
    hooks
        .wait_until(WAIT, |got| {
            got.iter().filter(|r| r.acked && r.kind == "refund.succeeded").count() == 2
        })
        .await;
    let for_payment: Vec<String> =
        hooks.acked().into_iter().filter(|r| r.payment_id == id).map(|r| r.kind).collect();
    assert_eq!(for_payment, vec!["payment.succeeded", "refund.succeeded", "refund.succeeded"]);
    // Booked: payment, then two refunds; balanced (checked by finish) and netting to zero.
    let kinds: Vec<String> = d
        .daemon()
        .store()
        .journal()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.payment_id == id)
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec!["payment", "refund", "refund"]);
    let mut net = std::collections::BTreeMap::new();
    for e in d.daemon().store().journal().await.unwrap().into_iter().filter(|e| e.payment_id == id)
    {
        for p in e.postings {
            *net.entry(p.account).or_insert(0i64) += p.minor;
        }
    }
    assert!(net.values().all(|v| *v == 0), "a full refund undoes the payment exactly: {net:?}");
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn webhooks_retry_under_one_event_id_then_park_and_replay() {
    let d = TestDaemon::start_with(with_hooks(Mode::FailFirst(2))).await;
    let c = d.client("partner-demo");
    let hooks = d.hooks.as_ref().unwrap();

    // Refused twice, then acknowledged: three attempts, one event id, identical bodies.
    let (_, p) = quote_and_pay(&c, 4_000, "retried").await;
    let id = p["payment_id"].as_str().unwrap().to_owned();
    hooks.wait_until(WAIT, |got| got.iter().any(|r| r.acked && r.payment_id == id)).await;
    let attempts: Vec<_> = hooks.received().into_iter().filter(|r| r.payment_id == id).collect();
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|a| a.event_id == attempts[0].event_id && a.body == attempts[0].body));
    assert!(attempts.iter().all(|a| a.signature_ok));
    // The acknowledgement is recorded (the worker signals each event that leaves the outbox).
    let store = d.daemon().store().clone();
    let recorded = |id: String| {
        let store = store.clone();
        async move {
            store.delivered_events().await.unwrap().into_iter().find(|e| e.event.payment_id == id)
        }
    };
    let mut settled = d.daemon().engine.events_settled.subscribe();
    let wait = async {
        loop {
            if let Some(r) = recorded(id.clone()).await {
                return r;
            }
            settled.changed().await.unwrap();
        }
    };
    let record = tokio::time::timeout(WAIT, wait).await.expect("delivery recorded");
    assert_eq!((record.attempts, record.skipped), (3, false));

    // An endpoint that stays down: the event is parked once older than the maximum age, and the
    // next event of the same payment waits behind it.
    hooks.set_mode(Mode::FailAll);
    let (_, p) = quote_and_pay(&c, 4_100, "parked").await;
    let parked_id = p["payment_id"].as_str().unwrap().to_owned();
    let acq = d.acquirer_client("acquirer-sandbox");
    let (s, _) = acq.post("/acquirer/v1/refunds", &refund("ACQ-P1", &parked_id, 100)).await;
    assert_eq!(s, StatusCode::CREATED);
    hooks.wait_until(WAIT, |got| got.iter().any(|r| r.payment_id == parked_id)).await;
    let before = *settled.borrow_and_update();
    d.clock.as_ref().unwrap().advance(chrono::Duration::days(4));
    d.daemon().engine.events_written.notify_one();
    let wait = settled.wait_for(|n| *n >= before + 2);
    tokio::time::timeout(WAIT, wait).await.expect("both events parked").unwrap();

    // The admin sees them (partners do not), and replays them once the endpoint is back.
    assert_error(
        &d.admin_client("partner-demo").get("/admin/v1/webhooks/parked").await,
        403,
        "FORBIDDEN",
    );
    let admin = d.admin_client("admin");
    let (s, list) = admin.get("/admin/v1/webhooks/parked").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let events = list["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["payment.succeeded", "refund.succeeded"]);
    assert!(events.iter().all(|e| e["payment_id"] == parked_id.as_str()));
    hooks.set_mode(Mode::Ack);
    for e in events {
        let event_id = e["event_id"].as_str().unwrap();
        let (s, r) =
            admin.post(&format!("/admin/v1/webhooks/parked/{event_id}/replay"), &json!({})).await;
        assert_eq!((s, r["replayed"].as_bool()), (StatusCode::OK, Some(true)), "{r}");
    }
    assert_error(
        &admin.post("/admin/v1/webhooks/parked/evt_none/replay", &json!({})).await,
        404,
        "EVENT_NOT_FOUND",
    );
    hooks
        .wait_until(WAIT, |got| {
            got.iter().filter(|r| r.acked && r.payment_id == parked_id).count() == 2
        })
        .await;
    let order: Vec<String> =
        hooks.acked().into_iter().filter(|r| r.payment_id == parked_id).map(|r| r.kind).collect();
    assert_eq!(order, vec!["payment.succeeded", "refund.succeeded"], "per-payment order kept");
    assert!(admin.get("/admin/v1/webhooks/parked").await.1["events"]
        .as_array()
        .unwrap()
        .is_empty());
    d.finish().await;
}
}
