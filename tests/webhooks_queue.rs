//! The webhook worker's in-memory queue, against the real daemon over mTLS on loopback: a large
//! backlog of a partner whose endpoint stalls ages out into the parked list (its deliveries under
//! way are not parked) while the other partner's events keep flowing; a replay (a new outbox
//! epoch) rebuilds the queue without losing what is under way; and a replayed event still waits
//! for an earlier event of its payment that is parked. Waits are on signals, never on sleeps.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::daemon::{Setup, TestClient, TestDaemon};
use support::flows::quote_and_pay;
use support::webhook::{Mode, Stalls};

/// Safety net for waits on signals; far below A's two-minute delivery timeout.
const WAIT: Duration = Duration::from_secs(60);

/// The parked events, as the admin API lists them.
async fn parked(admin: &TestClient) -> Vec<Value> {
    let (s, list) = admin.get("/admin/v1/webhooks/parked").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["events"].as_array().unwrap().clone()
}

async fn replay(admin: &TestClient, event_id: &str) {
    let (s, r) =
        admin.post(&format!("/admin/v1/webhooks/parked/{event_id}/replay"), &json!({})).await;
    assert_eq!((s, r["replayed"].as_bool()), (StatusCode::OK, Some(true)), "{r}");
}

/// Pays `fen` as `c` and waits until its `payment.succeeded` event is acknowledged.
async fn pay_and_deliver(d: &TestDaemon, c: &TestClient, fen: i64, request_id: &str) -> String {
    let (s, p) = quote_and_pay(c, fen, request_id).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let id = p["payment_id"].as_str().unwrap().to_owned();
    let hooks = d.hooks.as_ref().unwrap();
    hooks.wait_until(WAIT, |got| got.iter().any(|r| r.acked && r.payment_id == id)).await;
    id
}

#[tokio::test]
async fn a_stalled_backlog_ages_out_while_others_flow_and_a_replay_keeps_what_is_under_way() {
    const BACKLOG: i64 = 40;
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        webhooks: Some(Mode::Ack),
        tweak: Box::new(|c| {
            // Partner A (`partner-demo`) gets the endpoint's stalling path.
            support::webhook::stall_first_partner(c);
            c.webhooks.max_age_s = 3_600;
        }),
        ..Setup::default()
    })
    .await;
    let hooks = d.hooks.as_ref().unwrap();
    let (a, b) = (d.client("partner-demo"), d.client("partner-other"));
    let admin = d.admin_client("admin");
    let engine = &d.daemon().engine;

    // A: a backlog far beyond every delivery slot; two of it are held by A's endpoint.
    for i in 0..BACKLOG {
        let (s, p) = quote_and_pay(&a, 1_000 + i, &format!("a-{i}")).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
    }
    hooks.wait_stalls(WAIT, |s| s.held >= 2).await;
    // B's events flow past it, one after another.
    for i in 0..5 {
        pay_and_deliver(&d, &b, 1_000 + i, &format!("b-{i}")).await;
    }
    assert_eq!(hooks.stalls(), Stalls { held: 2, held_max: 2, total: 2 });

    // An hour later A's waiting backlog is parked ("too old"); its two held deliveries are not.
    let mut settled = engine.events_settled.subscribe();
    let before = *settled.borrow_and_update();
    d.clock.as_ref().unwrap().advance(chrono::Duration::minutes(61));
    engine.events_written.notify_one();
    let waiting = (BACKLOG - 2) as u64;
    let wait = settled.wait_for(|n| *n >= before + waiting);
    tokio::time::timeout(WAIT, wait).await.expect("A's backlog parked").unwrap();
    let list = parked(&admin).await;
    assert_eq!(list.len() as u64, waiting, "{list:?}");
    assert!(list.iter().all(|e| e["partner"] == "partner-demo" && e["last_error"] == "too old"));
    assert!(list.iter().all(|e| e["attempts"] == 0), "{list:?}");

    // A replay (a new epoch: the queue is read again) of one of A's: A's lane is still full, and
    // the deliveries under way stay under way, so neither is parked though both are too old.
    replay(&admin, list[0]["event_id"].as_str().unwrap()).await;
    // B still flows; its delivery shows the worker has read the outbox since the replay.
    pay_and_deliver(&d, &b, 2_000, "b-after-replay").await;
    let list = parked(&admin).await;
    assert_eq!(list.len() as u64, waiting - 1, "{list:?}");
    assert_eq!(hooks.stalls(), Stalls { held: 2, held_max: 2, total: 2 });

    // A's endpoint answers (503) at last: the two that were held back off, then are parked with
    // that error as too old; the replayed one (its age counts from the replay) is tried.
    let before = *settled.borrow_and_update();
    hooks.release_stalled();
    let wait = settled.wait_for(|n| *n >= before + 2);
    tokio::time::timeout(WAIT, wait).await.expect("the held two parked").unwrap();
    let list = parked(&admin).await;
    assert_eq!(list.len() as u64, waiting + 1, "{list:?}");
    let errored: Vec<&Value> = list.iter().filter(|e| e["last_error"] != "too old").collect();
    assert_eq!(errored.len(), 2, "{list:?}");
    assert!(errored.iter().all(|e| e["attempts"] == 1 && e["partner"] == "partner-demo"));
    hooks.wait_stalls(WAIT, |s| s.total >= 3).await;
    d.finish().await;
}

#[tokio::test]
async fn a_replayed_event_waits_for_an_earlier_parked_one_of_its_payment() {
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        webhooks: Some(Mode::Ack),
        tweak: Box::new(|c| c.webhooks.max_age_s = 3_600),
        ..Setup::default()
    })
    .await;
    let hooks = d.hooks.as_ref().unwrap();
    let (a, b) = (d.client("partner-demo"), d.client("partner-other"));
    let admin = d.admin_client("admin");
    let engine = &d.daemon().engine;

    // A's endpoint is down: a payment and its refund, both parked once too old.
    hooks.set_mode(Mode::FailAll);
    let (s, p) = quote_and_pay(&a, 4_100, "parked").await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let id = p["payment_id"].as_str().unwrap().to_owned();
    let refund = json!({
        "refund_id": "ACQ-Q1",
        "instruction_id": id,
        "amount": {"currency": "CNY", "value": "100"},
        "reason": "customer returned the goods",
    });
    let (s, r) = d.acquirer_client("acquirer-sandbox").post("/acquirer/v1/refunds", &refund).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    hooks.wait_until(WAIT, |got| got.iter().any(|r| r.payment_id == id)).await;
    let mut settled = engine.events_settled.subscribe();
    let before = *settled.borrow_and_update();
    d.clock.as_ref().unwrap().advance(chrono::Duration::minutes(61));
    engine.events_written.notify_one();
    let wait = settled.wait_for(|n| *n >= before + 2);
    tokio::time::timeout(WAIT, wait).await.expect("both events parked").unwrap();
    let list = parked(&admin).await;
    let kinds: Vec<&str> = list.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["payment.succeeded", "refund.succeeded"]);

    // The endpoint is back. The refund's event is replayed first: it waits, as its payment's
    // first event is still parked, while B's events go out.
    hooks.set_mode(Mode::Ack);
    replay(&admin, list[1]["event_id"].as_str().unwrap()).await;
    pay_and_deliver(&d, &b, 1_000, "b-0").await;
    assert!(
        !hooks.received().iter().any(|r| r.kind == "refund.succeeded"),
        "the refund's event went out before its payment's"
    );
    assert_eq!(parked(&admin).await.len(), 1);

    // The payment's event replayed: both go out, in order.
    replay(&admin, list[0]["event_id"].as_str().unwrap()).await;
    hooks
        .wait_until(WAIT, |got| got.iter().filter(|r| r.acked && r.payment_id == id).count() == 2)
        .await;
    let order: Vec<String> =
        hooks.acked().into_iter().filter(|r| r.payment_id == id).map(|r| r.kind).collect();
    assert_eq!(order, vec!["payment.succeeded", "refund.succeeded"]);
    assert!(parked(&admin).await.is_empty());
    d.finish().await;
}
