//! Dual control (maker-checker, issue 15) on the real daemon's admin listener, real mTLS, two
//! admin certificates of the development PKI (`admin`, `admin-2`): a change that moves money is a
//! proposal that changes nothing — spreads, rates, rules, blocklists and funds read back the same
//! and a quote is priced the same — until a different admin approves it; its proposer cannot; an
//! expired proposal cannot be approved (the daemon's manual clock moved past its expiry, no
//! sleeping); the audit log names proposer and approver and its chain verifies; a small spread or
//! rate change applies at once; bad proposals are refused with nothing stored; a partner's
//! certificate is refused; and the CLI drives it with `--as`.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::daemon::{assert_error, Setup, TestClient, TestDaemon};
use support::flows::{code, held_rate, quote};

/// A daemon with two admins, on a manual clock; `ttl_s` proposals' lifetime.
async fn start(ttl_s: u64) -> TestDaemon {
    let dual = qrbridge_config::DualControl { proposal_ttl_s: ttl_s, ..Default::default() };
    let put = dual.clone();
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some("2026-11-20T02:00:00Z".parse().unwrap()),
        tweak: Box::new(move |c| {
            // `admin-2` too (until the embedded default lists both admins).
            support::daemon::second_admin(c);
            c.risk.dual_control = put;
        }),
        ..Setup::default()
    })
    .await;
    // As the daemon does at start with the configuration's (said here too, so this test does
    // not depend on where that happens).
    d.daemon().treasury.set_dual_control(dual);
    d
}

async fn put(c: &TestClient, path: &str, body: &Value) -> (StatusCode, Value) {
    c.try_send(Method::PUT, path, Some(serde_json::to_vec(body).unwrap())).await.unwrap()
}

async fn delete(c: &TestClient, path: &str) -> (StatusCode, Value) {
    c.try_send(Method::DELETE, path, None).await.unwrap()
}

/// The proposal of a `202` answer, checked pending, by `by`.
fn proposed(got: &(StatusCode, Value), kind: &str, by: &str) -> String {
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    let p = &got.1["proposal"];
    assert_eq!((p["kind"].as_str(), p["state"].as_str()), (Some(kind), Some("pending")), "{p}");
    assert_eq!(p["proposed_by"], by, "{p}");
    assert!(got.1["audit_seq"].is_u64(), "{}", got.1);
    p["proposal_id"].as_str().unwrap().to_owned()
}

fn approve_path(id: &str) -> String {
    format!("/admin/v1/proposals/{id}/approve")
}

fn reject_path(id: &str) -> String {
    format!("/admin/v1/proposals/{id}/reject")
}

async fn audit(admin: &TestClient) -> Value {
    let (s, v) = admin.get("/admin/v1/audit").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["chain"]["ok"], true, "the audit chain verifies: {}", v["chain"]);
    v
}

/// The audit records of `action`.
fn records(audit: &Value, action: &str) -> Vec<Value> {
    audit["records"].as_array().unwrap().iter().filter(|r| r["action"] == action).cloned().collect()
}

/// The one record of `action` whose `after.approval` names `proposal`; checks it names both
/// people, the approver as its actor.
fn approved_record(audit: &Value, action: &str, proposal: &str) -> Value {
    let found: Vec<Value> = records(audit, action)
        .into_iter()
        .filter(|r| r["after"]["approval"]["proposal_id"] == proposal)
        .collect();
    assert_eq!(found.len(), 1, "one {action} record for {proposal}: {audit}");
    let r = found[0].clone();
    assert_eq!(r["actor"], "admin-2", "{r}");
    assert_eq!(
        r["after"]["approval"],
        json!({"proposal_id": proposal, "proposed_by": "admin", "approved_by": "admin-2"}),
        "{r}"
    );
    r
}

/// The price of a fresh quote of CNY 100 in PHP for partner-demo.
async fn price(d: &TestDaemon) -> Value {
    let (s, q) = quote(&d.client("partner-demo"), &code(None), Some(10_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    q["rate"]["price"].clone()
}
on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_changes_until_another_admin_approves() {
    let d = start(86_400).await;
    let admin = d.admin_client("admin");
    let second = d.admin_client("admin-2");
    let spreads_before = admin.get("/admin/v1/spreads").await.1;
    let price_before = price(&d).await;

    // A spread moving 250 bps from the default in force (50) is over the 50 bps step.
    let spread = json!({"partner": "partner-demo", "pair": "CNY/PHP", "bps": "300"});
    let got = put(&admin, "/admin/v1/spreads", &spread).await;
    let spread_id = proposed(&got, "spread", "admin");
    assert!(got.1["proposal"]["why"].as_str().unwrap().contains("250"), "{}", got.1);
    assert_eq!(got.1["proposal"]["change"], spread);
    // Nothing changed: the spreads read back the same, and a quote is priced the same.
    assert_eq!(admin.get("/admin/v1/spreads").await.1, spreads_before);
    assert_eq!(price(&d).await, price_before);

    // The proposer cannot approve its own proposal; it stays pending.
    assert_error(&admin.post(&approve_path(&spread_id), &json!({})).await, 403, "SAME_ADMIN");
    let (s, p) = admin.get(&format!("/admin/v1/proposals/{spread_id}")).await;
    assert_eq!((s, p["state"].as_str()), (StatusCode::OK, Some("pending")), "{p}");
    assert_eq!(admin.get("/admin/v1/spreads").await.1, spreads_before);

    // Risk rules (prefunding and a credit line), funds received, a blocklist entry, a rate set
    // by hand moving 3.6 %: all proposals, none in force.
    let rules = json!({"partners": {"partner-demo": {"currencies": {"PHP": {
        "prefund_minor": 50_000_000, "credit_line_minor": 10_000_000}}}}});
    let rules_id = proposed(&put(&admin, "/admin/v1/risk/rules", &rules).await, "risk_rules", "admin");
    let funds = json!({"partner": "partner-demo", "amount": {"currency": "PHP", "value": "100000"},
                       "kind": "top_up", "reference": "BANK-2026-11-20-1"});
    let funds_id =
        proposed(&admin.post("/admin/v1/risk/funds", &funds).await, "funds", "admin");
    let block = json!({"add": ["7995"]});
    let block_id = proposed(
        &admin.post("/admin/v1/risk/blocklists/mccs", &block).await,
        "blocklist",
        "admin",
    );
    let rate = json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "60.00"}]});
    let rate_id = proposed(&admin.post("/admin/v1/rates", &rate).await, "rates", "admin");
    let (_, risk) = admin.get("/admin/v1/risk").await;
    assert_eq!(risk["rules_source"], "config", "{risk}");
    assert_eq!(risk["rules"]["partners"]["partner-demo"].get("currencies"), None, "{risk}");
    assert_eq!(risk["funds"], json!([]), "{risk}");
    assert_eq!(risk["blocklists"]["admin"]["mccs"], json!([]), "{risk}");
    assert_eq!(held_rate(&admin.get("/admin/v1/rates").await.1, "USD/PHP")["rate"], "57.90");
    assert_eq!(price(&d).await, price_before);
    let (_, pending) = admin.get("/admin/v1/proposals?state=pending").await;
    let ids: Vec<&str> =
        pending["proposals"].as_array().unwrap().iter().map(|p| p["proposal_id"].as_str().unwrap()).collect();
    // Newest first.
    assert_eq!(ids, vec![&*rate_id, &*block_id, &*funds_id, &*rules_id, &*spread_id]);

    // Another admin approves each: now in force.
    let (s, ok) = second.post(&approve_path(&spread_id), &json!({"note": "checked with treasury"})).await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    assert_eq!(ok["proposal"]["state"], "approved");
    assert_eq!(ok["proposal"]["decided_by"], "admin-2");
    assert_eq!(
        ok["result"]["overrides"],
        json!([{"partner": "partner-demo", "pair": "CNY/PHP", "bps": "300"}])
    );
    let price_after = price(&d).await;
    assert_ne!(price_after, price_before, "the approved spread prices new quotes");
    // Approved once: a second approval is refused, and changes nothing more.
    assert_error(&second.post(&approve_path(&spread_id), &json!({})).await, 409, "PROPOSAL_DECIDED");
    assert_error(&admin.post(&reject_path(&spread_id), &json!({})).await, 409, "PROPOSAL_DECIDED");

    for id in [&rules_id, &funds_id, &block_id, &rate_id] {
        let (s, ok) = second.post(&approve_path(id), &json!({})).await;
        assert_eq!(s, StatusCode::OK, "{id}: {ok}");
        assert!(ok["result"]["audit_seq"].is_u64(), "{ok}");
    }
    let (_, risk) = admin.get("/admin/v1/risk").await;
    assert_eq!(risk["rules_source"], "admin", "{risk}");
    assert_eq!(
        risk["rules"]["partners"]["partner-demo"]["currencies"]["PHP"],
        json!({"prefund_minor": 50_000_000, "credit_line_minor": 10_000_000}),
        "{risk}"
    );
    assert_eq!(
        risk["funds"],
        json!([{"partner": "partner-demo", "currency": "PHP", "received": "PHP 1000.00"}])
    );
    assert_eq!(risk["blocklists"]["admin"]["mccs"], json!(["7995"]), "{risk}");
    let usd_php = held_rate(&admin.get("/admin/v1/rates").await.1, "USD/PHP");
    assert_eq!((usd_php["rate"].as_str(), usd_php["source"].as_str()), (Some("60.00"), Some("admin:admin")));

    // The audit log: each proposal made by admin, each change made by admin-2 naming both.
    let log = audit(&admin).await;
    let created: Vec<String> = records(&log, "proposal.create")
        .iter()
        .map(|r| {
            assert_eq!(r["actor"], "admin", "{r}");
            r["target"].as_str().unwrap().strip_prefix("proposal:").unwrap().to_owned()
        })
        .collect();
    assert_eq!(created, [&spread_id, &rules_id, &funds_id, &block_id, &rate_id].map(String::clone));
    let spread_rec = approved_record(&log, "spreads.set", &spread_id);
    assert_eq!(spread_rec["after"]["bps"], "300", "{spread_rec}");
    assert_eq!(spread_rec["before"], Value::Null, "{spread_rec}");
    approved_record(&log, "risk.rules.set", &rules_id);
    let funds_rec = approved_record(&log, "risk.funds", &funds_id);
    assert_eq!(funds_rec["after"]["total"], "PHP 1000.00", "{funds_rec}");
    approved_record(&log, "risk.blocklist", &block_id);
    approved_record(&log, "rates.set", &rate_id);

    // A reset is a proposal too; approved, the configuration's rules are back.
    let reset_id = proposed(&delete(&admin, "/admin/v1/risk/rules").await, "risk_rules_reset", "admin");
    assert_eq!(admin.get("/admin/v1/risk").await.1["rules_source"], "admin");
    let (s, ok) = second.post(&approve_path(&reset_id), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    assert_eq!(admin.get("/admin/v1/risk").await.1["rules_source"], "config");
    approved_record(&audit(&admin).await, "risk.rules.reset", &reset_id);
    d.finish().await;
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_proposal_cannot_be_approved() {
    let d = start(3_600).await;
    let clock = d.clock.clone().unwrap();
    let admin = d.admin_client("admin");
    let second = d.admin_client("admin-2");
    let funds = |reference: &str| {
        json!({"partner": "partner-demo", "amount": {"currency": "PHP", "value": "5000"},
               "kind": "settlement_received", "reference": reference})
    };
    let late =
        proposed(&admin.post("/admin/v1/risk/funds", &funds("SETTLE-1")).await, "funds", "admin");
    let (_, p) = admin.get(&format!("/admin/v1/proposals/{late}")).await;
    let made: chrono::DateTime<chrono::Utc> = p["created_at"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = p["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires - made, chrono::Duration::hours(1), "{p}");

    // One second before its expiry another proposal may still be approved …
    let in_time =
        proposed(&admin.post("/admin/v1/risk/funds", &funds("SETTLE-2")).await, "funds", "admin");
    clock.advance(chrono::Duration::seconds(3_599));
    let (s, ok) = second.post(&approve_path(&in_time), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    // … the first, made a moment earlier, at its expiry no longer: not approved, not rejected,
    // and nothing recorded.
    clock.advance(chrono::Duration::seconds(1));
    let (_, p) = admin.get(&format!("/admin/v1/proposals/{late}")).await;
    assert_eq!(p["state"], "expired", "{p}");
    assert_error(&second.post(&approve_path(&late), &json!({})).await, 409, "PROPOSAL_EXPIRED");
    assert_error(&second.post(&reject_path(&late), &json!({})).await, 409, "PROPOSAL_EXPIRED");
    let (_, risk) = admin.get("/admin/v1/risk").await;
    assert_eq!(
        risk["funds"],
        json!([{"partner": "partner-demo", "currency": "PHP", "received": "PHP 50.00"}]),
        "only the proposal approved in time counts: {risk}"
    );
    let (_, expired) = admin.get("/admin/v1/proposals?state=expired").await;
    let ids: Vec<&Value> =
        expired["proposals"].as_array().unwrap().iter().map(|p| &p["proposal_id"]).collect();
    assert_eq!(ids, vec![&json!(late)]);
    let log = audit(&admin).await;
    assert_eq!(records(&log, "risk.funds").len(), 1, "{log}");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_changes_apply_at_once_and_proposals_can_be_rejected_or_withdrawn() {
    let d = start(86_400).await;
    let admin = d.admin_client("admin");
    let second = d.admin_client("admin-2");
    let price_before = price(&d).await;

    // 50 → 80 bps is within the 50 bps step: in force at once, audited as before.
    let (s, set) = put(
        &admin,
        "/admin/v1/spreads",
        &json!({"partner": "partner-demo", "pair": "CNY/PHP", "bps": "80"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{set}");
    assert_eq!(
        set["overrides"],
        json!([{"partner": "partner-demo", "pair": "CNY/PHP", "bps": "80"}])
    );
    assert_ne!(price(&d).await, price_before);
    // 80 → 130 is the step exactly: at once too; removing it (130 → the default 50) is not.
    let (s, set) = put(
        &admin,
        "/admin/v1/spreads",
        &json!({"partner": "partner-demo", "pair": "CNY/PHP", "bps": "130"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{set}");
    let removal = put(
        &admin,
        "/admin/v1/spreads",
        &json!({"partner": "partner-demo", "pair": "CNY/PHP", "bps": null}),
    )
    .await;
    let removal_id = proposed(&removal, "spread", "admin");
    // A rate moving 17 bps: at once.
    let (s, r) = admin
        .post(
            "/admin/v1/rates",
            &json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "58.00"}]}),
        )
        .await;
    assert_eq!((s, r["rates"][0]["taken"].as_bool()), (StatusCode::OK, Some(true)), "{r}");
    // A rate for a pair with none held: a proposal, whatever its size.
    let (s, r) = admin
        .post(
            "/admin/v1/rates",
            &json!({"rates": [{"base": "USD", "quote": "CHF", "rate": "0.88"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    assert!(r["proposal"]["why"].as_str().unwrap().contains("no rate held"), "{r}");
    let chf_id = r["proposal"]["proposal_id"].as_str().unwrap().to_owned();

    // Another admin rejects one (with a note); its proposer withdraws the other. Both final.
    let (s, rejected) =
        second.post(&reject_path(&removal_id), &json!({"note": "keep 130 for now"})).await;
    assert_eq!(s, StatusCode::OK, "{rejected}");
    assert_eq!(
        (rejected["proposal"]["state"].as_str(), rejected["proposal"]["note"].as_str()),
        (Some("rejected"), Some("keep 130 for now"))
    );
    let (s, withdrawn) = admin.post(&reject_path(&chf_id), &json!({})).await;
    assert_eq!(
        (s, withdrawn["proposal"]["state"].as_str()),
        (StatusCode::OK, Some("withdrawn")),
        "{withdrawn}"
    );
    assert_error(
        &second.post(&approve_path(&removal_id), &json!({})).await,
        409,
        "PROPOSAL_DECIDED",
    );
    assert_error(&second.post(&approve_path(&chf_id), &json!({})).await, 409, "PROPOSAL_DECIDED");
    let (_, spreads) = admin.get("/admin/v1/spreads").await;
    assert_eq!(
        spreads["overrides"],
        json!([{"partner": "partner-demo", "pair": "CNY/PHP", "bps": "130"}])
    );
    assert_eq!(held_rate(&admin.get("/admin/v1/rates").await.1, "USD/CHF"), Value::Null);

    let log = audit(&admin).await;
    let direct = records(&log, "spreads.set");
    assert_eq!(direct.len(), 2, "{log}");
    assert!(direct.iter().all(|r| r["actor"] == "admin" && r["after"].is_string()), "{log}");
    let reject = records(&log, "proposal.reject");
    assert_eq!((reject.len(), reject[0]["actor"].as_str()), (1, Some("admin-2")), "{log}");
    assert_eq!(reject[0]["after"]["proposed_by"], "admin");
    let withdraw = records(&log, "proposal.withdraw");
    assert_eq!((withdraw.len(), withdraw[0]["actor"].as_str()), (1, Some("admin")), "{log}");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proposals_are_refused_with_nothing_stored_and_partners_are_refused() {
    let d = start(86_400).await;
    let admin = d.admin_client("admin");
    let funds = |f: Value| {
        let mut base = json!({"partner": "partner-demo", "amount": {"currency": "PHP", "value": "100"},
                              "kind": "top_up", "reference": "R-1"});
        base.as_object_mut().unwrap().extend(f.as_object().unwrap().clone());
        base
    };
    let cases: Vec<(Method, &str, Value, u16, &str)> = vec![
        // Rules: a partner not configured, a limit of zero, an unknown key, not JSON rules.
        (
            Method::PUT,
            "/admin/v1/risk/rules",
            json!({"partners": {"gcash": {}}}),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::PUT,
            "/admin/v1/risk/rules",
            json!({"partners": {"partner-demo": {"payer": {"hour_count_max": 0}}}}),
            400,
            "INVALID_REQUEST",
        ),
        (Method::PUT, "/admin/v1/risk/rules", json!({"near_limit": 5}), 400, "INVALID_REQUEST"),
        (Method::PUT, "/admin/v1/risk/rules", json!([1]), 400, "INVALID_REQUEST"),
        // Blocklists: not an MCC, nothing to do, both added and removed, a line break.
        (
            Method::POST,
            "/admin/v1/risk/blocklists/mccs",
            json!({"add": ["79x5"]}),
            400,
            "INVALID_REQUEST",
        ),
        (Method::POST, "/admin/v1/risk/blocklists/mccs", json!({}), 400, "INVALID_REQUEST"),
        (
            Method::POST,
            "/admin/v1/risk/blocklists/merchants",
            json!({"add": ["M1"], "remove": ["M1"]}),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            "/admin/v1/risk/blocklists/acquirers",
            json!({"add": ["a\nb"]}),
            400,
            "INVALID_REQUEST",
        ),
        (Method::POST, "/admin/v1/risk/blocklists/payers", json!({"add": ["x"]}), 404, "NOT_FOUND"),
        // Funds: CNY, zero, an unknown partner, no reference, an unknown kind.
        (
            Method::POST,
            "/admin/v1/risk/funds",
            funds(json!({"amount": {"currency": "CNY", "value": "100"}})),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            "/admin/v1/risk/funds",
            funds(json!({"amount": {"currency": "PHP", "value": "0"}})),
            422,
            "INVALID_AMOUNT",
        ),
        (
            Method::POST,
            "/admin/v1/risk/funds",
            funds(json!({"partner": "gcash"})),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            "/admin/v1/risk/funds",
            funds(json!({"reference": ""})),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            "/admin/v1/risk/funds",
            funds(json!({"kind": "gift"})),
            400,
            "INVALID_REQUEST",
        ),
        // Nothing to reset: the configuration's rules are in force.
        (Method::DELETE, "/admin/v1/risk/rules", Value::Null, 400, "INVALID_REQUEST"),
        // Spreads and rates past their steps are checked as direct changes are.
        (Method::PUT, "/admin/v1/spreads", json!({"bps": "501"}), 422, "SPREAD_OUT_OF_BOUNDS"),
        (
            Method::PUT,
            "/admin/v1/spreads",
            json!({"pair": "CNY/CNY", "bps": "300"}),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "70"}]}),
            422,
            "RATE_MOVE_TOO_LARGE",
        ),
        // Proposals: unknown, malformed, a bad note; listings with bad parameters.
        (
            Method::POST,
            "/admin/v1/proposals/prop_1795140000000_0a1b2c3d/approve",
            json!({}),
            404,
            "PROPOSAL_NOT_FOUND",
        ),
        (
            Method::POST,
            "/admin/v1/proposals/..%2F..%2Fspreads/approve",
            json!({}),
            404,
            "PROPOSAL_NOT_FOUND",
        ),
        (Method::GET, "/admin/v1/proposals/nope", Value::Null, 404, "PROPOSAL_NOT_FOUND"),
        (
            Method::POST,
            "/admin/v1/proposals/prop_1795140000000_0a1b2c3d/reject",
            json!({"note": "x".repeat(513)}),
            400,
            "INVALID_REQUEST",
        ),
        (Method::GET, "/admin/v1/proposals?state=open", Value::Null, 400, "INVALID_REQUEST"),
        (Method::GET, "/admin/v1/proposals?limit=0", Value::Null, 400, "INVALID_REQUEST"),
        (
            Method::GET,
            "/admin/v1/risk/decisions?from=yesterday",
            Value::Null,
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::GET,
            "/admin/v1/risk/decisions?from=2026-11-20T02:00:00Z&to=2026-11-20T01:00:00Z",
            Value::Null,
            400,
            "INVALID_REQUEST",
        ),
        (Method::GET, "/admin/v1/risk/decisions?limit=1001", Value::Null, 400, "INVALID_REQUEST"),
        (Method::PATCH, "/admin/v1/risk/rules", Value::Null, 405, "METHOD_NOT_ALLOWED"),
    ];
    for (method, path, body, status, code) in cases {
        let body = (!body.is_null()).then(|| serde_json::to_vec(&body).unwrap());
        let got = admin.try_send(method.clone(), path, body).await.unwrap();
        assert_error(&got, status, code);
    }
    // Nothing was stored, nothing audited.
    let (_, all) = admin.get("/admin/v1/proposals").await;
    assert_eq!(all["proposals"], json!([]), "{all}");
    let log = audit(&admin).await;
    assert_eq!(log["records"], json!([]), "{log}");
    let (s, decisions) = admin.get("/admin/v1/risk/decisions").await;
    assert_eq!(
        (s, &decisions["decisions"], &decisions["more"]),
        (StatusCode::OK, &json!([]), &json!(false))
    );

    // A partner's certificate is refused on every route, reading or changing.
    let partner = d.admin_client("partner-demo");
    let id = "prop_1795140000000_0a1b2c3d";
    for (method, path) in [
        (Method::GET, "/admin/v1/proposals".to_owned()),
        (Method::GET, format!("/admin/v1/proposals/{id}")),
        (Method::POST, approve_path(id)),
        (Method::POST, reject_path(id)),
        (Method::GET, "/admin/v1/risk".to_owned()),
        (Method::PUT, "/admin/v1/risk/rules".to_owned()),
        (Method::DELETE, "/admin/v1/risk/rules".to_owned()),
        (Method::POST, "/admin/v1/risk/blocklists/mccs".to_owned()),
        (Method::POST, "/admin/v1/risk/funds".to_owned()),
        (Method::GET, "/admin/v1/risk/decisions".to_owned()),
    ] {
        let got = partner.try_send(method, &path, Some(b"{}".to_vec())).await.unwrap();
        assert_error(&got, 403, "FORBIDDEN");
    }
    assert_eq!(admin.get("/admin/v1/proposals").await.1["proposals"], json!([]));
    d.finish().await;
}

/// Runs `qrbridge admin --json <args>` against the daemon: exit code and stdout.
async fn cli(d: &TestDaemon, args: &[&str]) -> (i32, String) {
    let url = format!("https://{}", d.daemon().admin_addr);
    let pki = d.pki();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qrbridge"))
        .args(["admin", "--url", &url, "--pki", pki.to_str().unwrap(), "--json"])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_proposes_and_a_second_admin_approves_with_as() {
    let d = start(86_400).await;
    let (code, out) = cli(&d, &["risk", "block", "mccs", "7995", "4829"]).await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let id = v["proposal"]["proposal_id"].as_str().unwrap().to_owned();
    assert_eq!(
        v["proposal"]["change"],
        json!({"list": "mccs", "add": ["4829", "7995"], "remove": []})
    );
    // The proposer's own approval: refused, exit 2 with the code.
    let (code, out) = cli(&d, &["proposals", "approve", &id]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("SAME_ADMIN"), "{out}");
    let (code, out) = cli(&d, &["--as", "admin-2", "proposals", "approve", &id]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&d, &["risk", "show"]).await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["blocklists"]["admin"]["mccs"], json!(["4829", "7995"]), "{v}");
    // Funds in major units, and the listing.
    let (code, out) = cli(
        &d,
        &[
            "risk",
            "funds",
            "partner-demo",
            "250.50",
            "PHP",
            "--kind",
            "top_up",
            "--reference",
            "B-9",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["proposal"]["change"]["amount"], json!({"currency": "PHP", "value": "25050"}));
    let (code, out) = cli(&d, &["proposals", "list", "--state", "pending"]).await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["proposals"].as_array().unwrap().len(), 1, "{v}");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_is_measured_on_the_spread_a_quote_would_get() {
    let d = start(86_400).await;
    let admin = d.admin_client("admin");
    // An approved override for every pair of partner-demo: 300 bps.
    let broad = json!({"partner": "partner-demo", "bps": "300"});
    let got = put(&admin, "/admin/v1/spreads", &broad).await;
    proposed(&got, "spread", "admin");
    support::daemon::approve_proposed(&d.pki(), d.daemon().admin_addr, &got.1).await;
    let priced_at_300 = price(&d).await;
    // An override for one of its pairs at 50 bps is 0 bps from the default, but moves what the
    // partner's CNY/PHP quotes get by 250: a proposal, not a change.
    let narrow = json!({"partner": "partner-demo", "pair": "CNY/PHP", "bps": "50"});
    let got = put(&admin, "/admin/v1/spreads", &narrow).await;
    proposed(&got, "spread", "admin");
    assert_eq!(price(&d).await, priced_at_300, "the narrow override took effect unapproved");
    // Removing the broad override uncovers the default for every pair: 250 bps too.
    let remove = json!({"partner": "partner-demo"});
    let got = put(&admin, "/admin/v1/spreads", &remove).await;
    proposed(&got, "spread", "admin");
    assert_eq!(price(&d).await, priced_at_300);
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transfer_is_recorded_once_however_often_it_is_proposed() {
    let d = start(86_400).await;
    let admin = d.admin_client("admin");
    let second = d.admin_client("admin-2");
    let funds = json!({
        "partner": "partner-demo",
        "amount": {"currency": "PHP", "value": "100000"},
        "kind": "settlement_received",
        "reference": "BANK-REF-42",
    });
    // The same transfer proposed twice (a retried request): approved twice, counted once.
    let first = proposed(&admin.post("/admin/v1/risk/funds", &funds).await, "funds", "admin");
    let again = proposed(&admin.post("/admin/v1/risk/funds", &funds).await, "funds", "admin");
    let (s, v) = second.post(&approve_path(&first), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = second.post(&approve_path(&again), &json!({})).await;
    assert_error(&got, 400, "INVALID_REQUEST");
    assert!(got.1["error"]["message"].as_str().unwrap().contains("already recorded"), "{}", got.1);
    let (_, view) = admin.get("/admin/v1/risk").await;
    let received: Vec<&Value> = view["funds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["partner"] == "partner-demo")
        .collect();
    assert_eq!(received.len(), 1, "{view}");
    assert!(received[0].to_string().contains("1000.00"), "{view}");
    // Funds in a currency the partner does not pay in (CHF) are refused at once.
    let mut chf = funds.clone();
    chf["amount"] = json!({"currency": "CHF", "value": "100"});
    chf["reference"] = json!("BANK-REF-43");
    let got = admin.post("/admin/v1/risk/funds", &chf).await;
    assert_error(&got, 400, "INVALID_REQUEST");
    d.finish().await;
}
