//! Purging parked webhook events (`POST /admin/v1/webhooks/parked/purge`), end to end: the real
//! daemon over real mTLS, a webhook endpoint that refuses everything, and a manual clock moved by
//! the test so that events park at known instants (the delivery worker signals each event it
//! parks; no sleeps). A cutoff between two parkings removes the older events only; the audit log
//! records each purge, with the admin's identity and the event and payment ids, before the events
//! go; a partner's certificate is refused; bad bodies are typed 400s that remove nothing; and the
//! CLI drives the same route.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use qrbridge::clock::Clock;
use qrbridge::store::Store;
use serde_json::{json, Value};
use support::daemon::{assert_error, Setup, TestDaemon};
use support::flows::pay_and_park;
use support::webhook::Mode;

/// A safety net for signals, never a wait of its own.
const WAIT: Duration = Duration::from_secs(30);
const PURGE: &str = "/admin/v1/webhooks/parked/purge";
const PARKED: &str = "/admin/v1/webhooks/parked";

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap_or_else(|| panic!("not a time: {v}")).parse().unwrap()
}

/// The parked list as `(event_id, payment_id, parked_at)`.
async fn parked(d: &TestDaemon) -> Vec<(String, String, DateTime<Utc>)> {
    let (s, v) = d.admin_client("admin").get(PARKED).await;
    assert_eq!(s, http::StatusCode::OK, "{v}");
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "payment.succeeded", "{e}");
            (s_of(&e["event_id"]), s_of(&e["payment_id"]), time(&e["parked_at"]))
        })
        .collect()
}

fn s_of(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// The audit records of purges.
async fn purge_records(d: &TestDaemon) -> Vec<Value> {
    let (s, v) = d.admin_client("admin").get("/admin/v1/audit").await;
    assert_eq!(s, http::StatusCode::OK, "{v}");
    assert_eq!(v["chain"]["ok"], true, "{v}");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "webhooks.purge_parked")
        .cloned()
        .collect()
}

/// Runs `qrbridge admin --json ops purge <args>` against the daemon: exit code, stdout, stderr.
async fn cli_purge(d: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    let url = format!("https://{}", d.daemon().admin_addr);
    let pki = d.pki();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qrbridge"))
        .args(["admin", "--url", &url, "--pki", pki.to_str().unwrap(), "--json", "ops", "purge"])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn parked_events_are_purged_before_a_cutoff_audited_first() {
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        webhooks: Some(Mode::FailAll),
        ..Setup::default()
    })
    .await;
    let clock = d.clock.clone().unwrap();
    let admin = d.admin_client("admin");

    // Two payments' events park at t1, a third's at t2 = t1 + 4 days (now).
    let old = pay_and_park(&d, &["old-1", "old-2"], 5_000, WAIT).await;
    let t1 = clock.now();
    let new = pay_and_park(&d, &["new-1"], 5_100, WAIT).await;
    let t2 = clock.now();
    let listed = parked(&d).await;
    let payments: Vec<&str> = listed.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(payments, vec![old[0].as_str(), old[1].as_str(), new[0].as_str()]);
    let at: Vec<DateTime<Utc>> = listed.iter().map(|(.., at)| *at).collect();
    assert_eq!(at, vec![t1, t1, t2]);

    // A partner's certificate is refused on the route; nothing goes.
    assert_error(
        &d.admin_client("partner-demo").post(PURGE, &json!({"older_than_s": 0})).await,
        403,
        "FORBIDDEN",
    );

    // Bad bodies: typed 400s, nothing purged, nothing audited.
    let future = (t2 + chrono::Duration::seconds(1)).to_rfc3339();
    let bad = [
        json!({}),
        json!({"parked_before": t1.to_rfc3339(), "older_than_s": 60}),
        json!({"parked_before": null, "older_than_s": null}),
        json!({"older_than_s": 60, "purge_all": true}),
        json!({"parked_before": future}),
        json!({"parked_before": "last tuesday"}),
        json!({"older_than_s": -1}),
        json!({"older_than_s": "60"}),
        json!({"older_than_s": u64::MAX}),
        json!({"older_than_s": 60, "limit": 0}),
        json!({"older_than_s": 60, "limit": 1_001}),
        json!(["older_than_s", 60]),
    ];
    for body in bad {
        let got = admin.post(PURGE, &body).await;
        assert_error(&got, 400, "INVALID_REQUEST");
        assert!(!got.1["error"]["retryable"].as_bool().unwrap(), "{body}: {}", got.1);
    }
    assert_error(&admin.post_raw(PURGE, b"older_than_s=60".to_vec()).await, 400, "INVALID_REQUEST");
    assert_error(&admin.get(PURGE).await, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(parked(&d).await, listed, "a refused purge removes nothing");
    assert!(purge_records(&d).await.is_empty());

    // A cutoff nothing was parked before: nothing changes, nothing is audited.
    let (s, r) = admin.post(PURGE, &json!({"parked_before": "0001-01-01T00:00:00Z"})).await;
    assert_eq!(s, http::StatusCode::OK, "{r}");
    assert_eq!(r["purged"], 0, "{r}");
    assert_eq!((r["event_ids"].clone(), r["audit_seq"].clone()), (json!([]), Value::Null), "{r}");
    assert!(purge_records(&d).await.is_empty());

    // Parked before t2 (now; the cutoff is exclusive, so the event parked at t2 stays), one at
    // a time: the first in outbox order goes, one more is left.
    let (s, first) =
        admin.post(PURGE, &json!({"parked_before": t2.to_rfc3339(), "limit": 1})).await;
    assert_eq!(s, http::StatusCode::OK, "{first}");
    assert_eq!(first["purged"], 1, "{first}");
    assert_eq!(first["event_ids"], json!([listed[0].0]), "{first}");
    assert_eq!(first["remaining"], 1, "{first}");
    assert_eq!(time(&first["parked_before"]), t2);
    assert!(first["audit_seq"].as_u64().is_some(), "{first}");
    assert_eq!(parked(&d).await, listed[1..].to_vec());

    // The CLI: older than a day (cutoff t1 + 3 days) takes the other event parked at t1.
    let (code, out, err) = cli_purge(&d, &["--older-than", "1d"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let second: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(second["purged"], 1, "{second}");
    assert_eq!(second["event_ids"], json!([listed[1].0]), "{second}");
    assert_eq!(second["remaining"], 0, "{second}");
    assert_eq!(time(&second["parked_before"]), t2 - chrono::Duration::days(1));
    // Refused by the daemon (a future cutoff) or by the CLI (no cutoff): exit 2, nothing goes.
    let (code, _, err) = cli_purge(&d, &["--before", &future]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("400 INVALID_REQUEST"), "{err}");
    let (code, _, err) = cli_purge(&d, &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--older-than"), "{err}");

    // Only the newer event is left: in the listing and in the store.
    assert_eq!(parked(&d).await, listed[2..].to_vec());
    let store = d.daemon().store();
    let left: Vec<String> =
        store.parked().await.unwrap().into_iter().map(|(_, p)| p.event.event_id).collect();
    assert_eq!(left, vec![listed[2].0.clone()]);
    // A purged event is gone for good: it cannot be replayed.
    assert_error(
        &admin.post(&format!("/admin/v1/webhooks/parked/{}/replay", listed[0].0), &json!({})).await,
        404,
        "EVENT_NOT_FOUND",
    );

    // The audit log has each purge, by the admin, with the events' and payments' ids, under the
    // sequence number each answer gave.
    let records = purge_records(&d).await;
    assert_eq!(records.len(), 2, "{records:#?}");
    for (record, answer, (event_id, payment_id, parked_at)) in
        [(&records[0], &first, &listed[0]), (&records[1], &second, &listed[1])]
    {
        assert_eq!(record["seq"], answer["audit_seq"], "{record}");
        assert_eq!(record["actor"], "admin", "{record}");
        assert_eq!(record["target"], "webhooks:parked", "{record}");
        let after = &record["after"];
        assert_eq!(after["count"], 1, "{record}");
        assert_eq!(time(&after["parked_before"]), time(&answer["parked_before"]));
        let events = after["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{record}");
        assert_eq!(events[0]["event_id"], event_id.as_str(), "{record}");
        assert_eq!(events[0]["payment_id"], payment_id.as_str(), "{record}");
        assert_eq!(events[0]["partner"], "partner-demo", "{record}");
        assert_eq!(events[0]["type"], "payment.succeeded", "{record}");
        assert_eq!(time(&events[0]["parked_at"]), *parked_at);
    }

    // `older_than_s: 0` is everything parked so far: a second after t2, the last one goes.
    clock.advance(chrono::Duration::seconds(1));
    let (s, r) = admin.post(PURGE, &json!({"older_than_s": 0})).await;
    assert_eq!(s, http::StatusCode::OK, "{r}");
    assert_eq!((r["purged"].clone(), r["event_ids"].clone()), (json!(1), json!([listed[2].0])));
    assert!(parked(&d).await.is_empty());
    assert_eq!(purge_records(&d).await.len(), 3);
    d.finish().await;
}
