//! A business day of mixed payments, refunds, a cancel, a decline and a payment in doubt, settled
//! through the admin API of the real daemon. The test checks that:
//! - statement totals equal the ledger's;
//! - a rerun is byte-identical;
//! - an empty day still gets its files;
//! - a day cannot close before its cut-off;
//! - the in-doubt payment is listed, not guessed;
//! - reconciling the sandbox acquirer's own books gives a clean report, or names each difference,
//!   both in the API answer and as the CLI's exit code.
//!
//! Then one test per way a day could come out wrong (issue 12, items 8 and 17): payments never
//! sent or perhaps never arrived are not missed at the acquirer; a refund on a later day leaves
//! a closed day as it was; a partner and an acquirer gone from the configuration still get their
//! statements; revenue and statements put every entry on the same business day; and the files are
//! the owner's only, with no cell a spreadsheet would run as a formula.

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use http::{Method, StatusCode};
use qrbridge::store::Store;
use serde_json::{json, Value};
use support::daemon::{assert_error, Setup, TestClient, TestDaemon};
use support::flows::{quote, quote_and_pay};

/// 10:00 on 2026-11-20 in Asia/Shanghai.
fn morning() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 2, 0, 0).unwrap()
}

const DAY: &str = "2026-11-20";

fn refund(refund_id: &str, instruction_id: &str, fen: i64) -> Value {
    json!({
        "refund_id": refund_id,
        "instruction_id": instruction_id,
        "amount": {"currency": "CNY", "value": fen.to_string()},
        "reason": "returned",
    })
}

fn minor(v: &Value) -> i128 {
    v["value"].as_str().unwrap().parse().unwrap()
}

async fn file(admin: &TestClient, day: &str, name: &str) -> Vec<u8> {
    let (s, body) = admin
        .send_raw(Method::GET, &format!("/admin/v1/settlement/{day}/files/{name}"), "", vec![])
        .await;
    assert_eq!(s, StatusCode::OK, "{name}: {}", String::from_utf8_lossy(&body));
    body.to_vec()
}

async fn admin_cli(d: &TestDaemon, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qrbridge"))
        .arg("admin")
        .arg("--url")
        .arg(format!("https://{}", d.daemon().admin_addr))
        .arg("--pki")
        .arg(d.pki())
        .args(args)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_settles_to_the_ledger_and_reconciles_with_the_acquirer() {
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some(morning()),
        // The in-doubt payment stays in doubt until the test resolves it.
        tweak: Box::new(|c| {
            c.resolver.inquiry_schedule_s = vec![10 * 86_400];
            c.resolver.payment_expiry_s = 20 * 86_400;
        }),
        ..Setup::default()
    })
    .await;
    let c = d.client("partner-demo");
    let acq = d.acquirer_client("acquirer-sandbox");
    let admin = d.admin_client("admin");

    // The day: two payments that stay, one refunded twice; a cancelled one; a declined one; one
    // whose answer never came (in doubt); and one from the other partner in KRW.
    let (_, p1) = quote_and_pay(&c, 12_300, "d-1").await;
    let (_, p2) = quote_and_pay(&c, 45_600, "d-2").await;
    let (_, p3) = quote_and_pay(&c, 7_700, "d-3").await;
    let (_, p4) = quote_and_pay(&c, 9_951, "d-4").await;
    let (_, p5) = quote_and_pay(&c, 3_353, "d-5").await;
    let other = d.client("partner-other");
    let (s, q) = quote(&other, &support::flows::code(None), Some(20_000), "KRW").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let (_, p6) = support::flows::pay(&other, "o-1", q["quote_id"].as_str().unwrap(), "u").await;
    let id = |p: &Value| p["payment_id"].as_str().unwrap().to_owned();
    let (p1, p2, p3, p4, p5, p6) = (id(&p1), id(&p2), id(&p3), id(&p4), id(&p5), id(&p6));
    for (p, want) in [
        (&p1, "SUCCEEDED"),
        (&p2, "SUCCEEDED"),
        (&p3, "SUCCEEDED"),
        (&p4, "FAILED"),
        (&p5, "PROCESSING"),
        (&p6, "SUCCEEDED"),
    ] {
        assert_eq!(c_status(&d, p).await, want, "{p}");
    }
    let (s, _) = acq.post("/acquirer/v1/refunds", &refund("ACQ-R1", &p2, 5_600)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = acq.post("/acquirer/v1/refunds", &refund("ACQ-R2", &p2, 10_000)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, cancel) = c.post(&format!("/v1/payments/{p3}/cancel"), &json!({})).await;
    assert!(s.is_success(), "{cancel}");
    d.resolve_after(Duration::zero()).await;
    assert_eq!(c_status(&d, &p3).await, "CANCELLED");

    // Before the cut-off and the cancel window: refused, with when it closes.
    d.clock.as_ref().unwrap().advance(Duration::hours(13)); // 23:00 local
    let (s, e) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_error(&(s, e.clone()), 409, "DAY_NOT_CLOSED");
    assert!(e["error"]["message"].as_str().unwrap().contains("2026-11-20T16:30:00.000Z"), "{e}");
    d.clock.as_ref().unwrap().advance(Duration::minutes(95)); // 00:35 on the next day

    let (s, summary) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{summary}");
    let partner = |id: &str, cur: &str| {
        summary["partners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["partner"] == id && p["currency"] == cur)
            .unwrap()
            .clone()
    };
    let demo = partner("partner-demo", "PHP");
    assert_eq!((demo["payments"].as_u64(), demo["refunds"].as_u64()), (Some(2), Some(2)), "{demo}");
    let other_krw = partner("partner-other", "KRW");
    assert_eq!(other_krw["payments"], 1);
    assert_eq!(
        partner("partner-demo", "KRW")["payments"],
        0,
        "a currency without payments still has its file"
    );
    let sandbox = &summary["acquirers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["acquirer"] == "sandbox")
        .unwrap()
        .clone();
    assert_eq!((sandbox["instructions"].as_u64(), sandbox["refunds"].as_u64()), (Some(3), Some(2)));
    assert_eq!(minor(&sandbox["instructions_total"]), 12_300 + 45_600 + 20_000);
    assert_eq!(minor(&sandbox["refunds_total"]), 15_600);
    assert_eq!(minor(&sandbox["net_payable"]), 12_300 + 45_600 + 20_000 - 15_600);
    assert_eq!(summary["in_doubt"], json!([p5.clone()]));
    assert_eq!(summary["excluded"], json!({"CANCELLED": 1, "DECLINED": 1}));

    // The ledger's totals for the day equal the statements' totals, per currency.
    let journal = d.daemon().store().journal().await.unwrap();
    let mut ledger: BTreeMap<(String, String), i128> = BTreeMap::new();
    for e in &journal {
        for p in &e.postings {
            let kind = p.account.split(':').next().unwrap().to_owned();
            *ledger.entry((kind, p.currency.code().to_owned())).or_insert(0) += i128::from(p.minor);
        }
    }
    let mut due: BTreeMap<String, i128> = BTreeMap::new();
    for p in summary["partners"].as_array().unwrap() {
        *due.entry(p["currency"].as_str().unwrap().to_owned()).or_insert(0) += minor(&p["net_due"]);
    }
    for (cur, sum) in &due {
        let l = ledger.get(&("partner_receivable".into(), cur.clone())).copied().unwrap_or(0);
        assert_eq!(l, *sum, "partners' net due in {cur}");
    }
    let payable: i128 =
        summary["acquirers"].as_array().unwrap().iter().map(|a| minor(&a["net_payable"])).sum();
    assert_eq!(-ledger[&("acquirer_payable".into(), "CNY".into())], payable);
    for r in summary["spread_revenue"].as_array().unwrap() {
        let cur = r["spread_revenue"]["currency"].as_str().unwrap().to_owned();
        assert_eq!(-ledger[&("spread_revenue".into(), cur)], minor(&r["spread_revenue"]), "{r}");
    }
    for p in summary["positions"].as_array().unwrap() {
        let cur = p["currency"].as_str().unwrap().to_owned();
        assert_eq!(-ledger[&("fx_position".into(), cur)], minor(&p["net_position"]), "{p}");
    }

    // The statements carry each payment and refund with ids, both amounts and the price.
    let csv = String::from_utf8(file(&admin, DAY, "partner-partner-demo-PHP.csv").await).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[1].starts_with(&format!("payment,{p1},,d-1,")) && lines[1].contains(",123.00,"),
        "{csv}"
    );
    assert!(
        lines[3].starts_with(&format!("refund,{p2},ref_"))
            && lines[3].contains(",ACQ-R1,")
            && lines[3].contains(",56.00,"),
        "{csv}"
    );
    assert!(!csv.contains(&p3) && !csv.contains(&p4) && !csv.contains(&p5), "{csv}");
    let doubt = String::from_utf8(file(&admin, DAY, "in-doubt.csv").await).unwrap();
    assert!(doubt.contains(&p5) && doubt.contains(",PROCESSING,"), "{doubt}");

    // A rerun gives the same bytes, file by file.
    let names: Vec<String> = summary["files"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .chain(["summary.json".to_owned()])
        .collect();
    let mut first = BTreeMap::new();
    for n in &names {
        first.insert(n.clone(), file(&admin, DAY, n).await);
    }
    let (s, again) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, summary);
    for n in &names {
        assert_eq!(file(&admin, DAY, n).await, first[n], "{n} changed on a rerun");
    }

    // An empty day: every file, zero counts.
    let (s, empty) = admin.post("/admin/v1/settlement/2026-11-19", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{empty}");
    assert!(empty["partners"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["payments"] == 0 && p["refunds"] == 0));
    assert_eq!(empty["files"].as_object().unwrap().len(), names.len() - 1);
    let header_only = file(&admin, "2026-11-19", "acquirer-sandbox.csv").await;
    assert_eq!(String::from_utf8(header_only).unwrap().lines().count(), 1);

    // The acquirer's own books for the day, from the sandbox, with the refund ids it issued.
    let books = d.daemon().sandbox.as_ref().unwrap().instructions();
    let refunds_of = |id: &str| if id == p2 { "ACQ-R1;ACQ-R2" } else { "" };
    let acquirer_file = |edit: &dyn Fn(&str, String) -> Option<String>| {
        let mut out = String::from("instruction_id,amount,currency,status,refund_ids\n");
        for (id, amount, status) in &books {
            let status = serde_json::to_value(status).unwrap();
            let line = format!(
                "{id},{},CNY,{},{}",
                amount.to_major_string(),
                status.as_str().unwrap(),
                refunds_of(id)
            );
            if let Some(l) = edit(id, line) {
                out += &(l + "\n");
            }
        }
        out
    };
    let path = d.dir.path().join("acquirer.csv");
    std::fs::write(&path, acquirer_file(&|_, l| Some(l))).unwrap();
    let recon = format!("/admin/v1/settlement/{DAY}/reconciliation/sandbox");
    let (s, report) =
        admin.send_raw(Method::POST, &recon, "text/csv", std::fs::read(&path).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let report: Value = serde_json::from_slice(&report).unwrap();
    // Only the payment still in doubt differs: the acquirer approved what the bridge never heard.
    assert_eq!(report["counts"], json!({"MATCHED": 5, "STATUS_DIFFERS": 1}), "{report}");
    let (code, out) = admin_cli(&d, &["reconcile", DAY, "sandbox", path.to_str().unwrap()]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(&p5) && out.contains("in doubt at the bridge"), "{out}");

    // Resolved, the day settles again with it, and the acquirer's books match throughout.
    d.resolve_after(Duration::days(10)).await;
    assert_eq!(c_status(&d, &p5).await, "SUCCEEDED");
    let (_, resettled) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_eq!(resettled["in_doubt"], json!([]));
    assert_eq!(resettled["acquirers"][0]["instructions"], 4, "{resettled}");
    let (code, out) = admin_cli(&d, &["reconcile", DAY, "sandbox", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean (6 instructions matched)"), "{out}");

    // Differences: an amount changed, an instruction missing, one the bridge never sent, a refund
    // id left out.
    std::fs::write(
        &path,
        acquirer_file(&|id, l| {
            if id == p1 {
                Some(l.replace(",123.00,", ",123.01,"))
            } else if id == p6 {
                None
            } else if id == p2 {
                Some(l.replace(";ACQ-R2", ""))
            } else {
                Some(l)
            }
        }) + "pay_unknown,1.00,CNY,APPROVED,\n",
    )
    .unwrap();
    let (s, report) =
        admin.send_raw(Method::POST, &recon, "text/csv", std::fs::read(&path).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let report: Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(
        report["counts"],
        json!({"MATCHED": 3, "AMOUNT_DIFFERS": 1, "MISSING_AT_ACQUIRER": 1, "MISSING_AT_BRIDGE": 1, "REFUNDS_DIFFER": 1}),
        "{report}"
    );
    assert_eq!(report["clean"], false);
    let (code, out) = admin_cli(&d, &["reconcile", DAY, "sandbox", path.to_str().unwrap()]).await;
    assert_eq!(code, 3, "{out}");
    let written = String::from_utf8(file(&admin, DAY, "reconciliation-sandbox.csv").await).unwrap();
    assert!(written.contains(&format!("{p1},AMOUNT_DIFFERS,123.00,123.01,")), "{written}");
    assert!(
        written.contains("pay_unknown,MISSING_AT_BRIDGE,")
            && written.contains("unknown to the bridge"),
        "{written}"
    );

    // A file that is not the acquirer format: a typed refusal with the line, exit code 2.
    std::fs::write(&path, "instruction_id,amount\nx,1\n").unwrap();
    let (code, out) = admin_cli(&d, &["reconcile", DAY, "sandbox", path.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("INVALID_RECONCILIATION_FILE") && out.contains("line 1"), "{out}");

    // Partners get nothing from the admin listener; every run is in the audit log.
    let partner_admin =
        TestClient::new(&d.pki(), Some("partner-demo"), d.daemon().admin_addr, false);
    assert_error(
        &partner_admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await,
        403,
        "FORBIDDEN",
    );
    let (_, audit) = admin.get("/admin/v1/audit").await;
    assert_eq!(audit["chain"]["ok"], true);
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "settlement.run").count(), 4, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| **a == "settlement.reconcile").count(), 5, "{actions:?}");
    d.finish().await;
}
}

/// A daemon on a manual clock at 10:00 on [`DAY`], whose resolver inquires a minute after an
/// unknown outcome and reverses after ten.
async fn day_daemon() -> TestDaemon {
    TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some(morning()),
        tweak: Box::new(|c| {
            c.resolver.inquiry_schedule_s = vec![60];
            c.resolver.payment_expiry_s = 600;
        }),
        ..Setup::default()
    })
    .await
}

/// A static code routed to the acquirer `dead`, which refuses connections.
fn dead_code() -> String {
    use qrbridge_adapters::decode::tlv::field;
    support::flows::code_with(
        None,
        &field(26, &(field(0, "TEST.DEAD.ACQUIRER") + &field(1, "M-1"))),
        "156",
    )
}

/// The sandbox acquirer's own file for everything it processed, with `refund_ids` per id.
fn sandbox_file(d: &TestDaemon, refund_ids: &dyn Fn(&str) -> String) -> Vec<u8> {
    let mut out = String::from("instruction_id,amount,currency,status,refund_ids\n");
    for (id, amount, status) in d.daemon().sandbox.as_ref().unwrap().instructions() {
        let status = serde_json::to_value(status).unwrap();
        out += &format!(
            "{id},{},CNY,{},{}\n",
            amount.to_major_string(),
            status.as_str().unwrap(),
            refund_ids(&id)
        );
    }
    out.into_bytes()
}

async fn reconcile(admin: &TestClient, day: &str, acquirer: &str, file: Vec<u8>) -> Value {
    let path = format!("/admin/v1/settlement/{day}/reconciliation/{acquirer}");
    let (s, report) = admin.send_raw(Method::POST, &path, "text/csv", file).await;
    let report: Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(s, StatusCode::OK, "{report}");
    report
}

on_both_stores! {
// Item 8: a payment that failed with ACQUIRER_UNAVAILABLE never left the bridge, and one reversed
// while its outcome was unknown may never have reached the acquirer: neither is missed when the
// acquirer's file leaves it out. An unsent payment the acquirer lists anyway is a difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_never_sent_or_never_arrived_are_not_missed_at_the_acquirer() {
    let d = day_daemon().await;
    let c = d.client("partner-demo");
    let admin = d.admin_client("admin");
    let (s, q) = quote(&c, &dead_code(), Some(2_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let (_, unsent) = support::flows::pay(&c, "unsent", q["quote_id"].as_str().unwrap(), "u").await;
    assert_eq!(unsent["failure"]["code"], "ACQUIRER_UNAVAILABLE", "{unsent}");
    let unsent = unsent["payment_id"].as_str().unwrap().to_owned();
    // Fen 55: the sandbox resets the connection before it processes anything; the bridge never
    // learns more and reverses the payment at expiry (EXPIRED).
    let (_, lost) = quote_and_pay(&c, 1_055, "lost").await;
    let lost = lost["payment_id"].as_str().unwrap().to_owned();
    let (_, ok) = quote_and_pay(&c, 1_000, "ok").await;
    let ok = ok["payment_id"].as_str().unwrap().to_owned();
    d.resolve_all(Duration::hours(1)).await;
    let p = d.daemon().store().payment(&lost).await.unwrap().unwrap();
    assert_eq!(p.failure.map(|f| f.code).as_deref(), Some("EXPIRED"));
    d.clock.as_ref().unwrap().advance(Duration::hours(15)); // past the day's close

    // The dead acquirer got nothing, and its (empty) file says so.
    let empty = b"instruction_id,amount,currency,status,refund_ids\n".to_vec();
    let report = reconcile(&admin, DAY, "dead", empty).await;
    assert_eq!(
        (report["clean"].as_bool(), report["instructions"].as_u64()),
        (Some(true), Some(0)),
        "{report}"
    );
    // The sandbox's books hold the approved payment only: clean.
    let report = reconcile(&admin, DAY, "sandbox", sandbox_file(&d, &|_| String::new())).await;
    assert_eq!(report["counts"], json!({"MATCHED": 1}), "{report}");
    assert_eq!(report["lines"][0]["instruction_id"], ok.as_str());
    // An acquirer that lists what the bridge never sent: a difference, and why.
    let listed =
        format!("instruction_id,amount,currency,status,refund_ids\n{unsent},20.00,CNY,APPROVED,\n");
    let report = reconcile(&admin, DAY, "dead", listed.into_bytes()).await;
    assert_eq!(report["counts"], json!({"STATUS_DIFFERS": 1}), "{report}");
    assert_eq!(report["lines"][0]["bridge_status"], "NOT_SENT", "{report}");
    assert!(report["lines"][0]["note"].as_str().unwrap().contains("never sent"), "{report}");
    // The reversed payment, when the acquirer does list it, is compared as REVERSED.
    let listed = format!(
        "instruction_id,amount,currency,status,refund_ids\n{ok},10.00,CNY,APPROVED,\n{lost},10.55,CNY,REVERSED,\n"
    );
    let report = reconcile(&admin, DAY, "sandbox", listed.into_bytes()).await;
    assert_eq!(report["counts"], json!({"MATCHED": 2}), "{report}");
    d.finish().await;
}
}

on_both_stores! {
// Item 8: a day is settled and reconciled as of its end. A refund made on a later day belongs to
// that day: it changes neither the earlier day's reconciliation nor its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_on_a_later_day_leaves_a_closed_day_as_it_was() {
    let d = day_daemon().await;
    let c = d.client("partner-demo");
    let acq = d.acquirer_client("acquirer-sandbox");
    let admin = d.admin_client("admin");
    let (_, p) = quote_and_pay(&c, 30_000, "refunded-later").await;
    let p = p["payment_id"].as_str().unwrap().to_owned();
    d.clock.as_ref().unwrap().advance(Duration::hours(15)); // 01:00 on the 21st
    let (s, first) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let as_filed = sandbox_file(&d, &|_| String::new());
    assert_eq!(reconcile(&admin, DAY, "sandbox", as_filed.clone()).await["clean"], true);
    let (_, revenue_before) = admin.get(&format!("/admin/v1/revenue?from={DAY}&to={DAY}")).await;

    // The next day the merchant refunds part of it.
    let (s, r) = acq.post("/acquirer/v1/refunds", &refund("LATER-1", &p, 10_000)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");

    // The 20th's file still matches: the refund is not on the 20th.
    let report = reconcile(&admin, DAY, "sandbox", as_filed).await;
    assert_eq!(report["counts"], json!({"MATCHED": 1}), "{report}");
    let (s, again) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again, first, "the 20th changed after a refund on the 21st");
    let (_, revenue_after) = admin.get(&format!("/admin/v1/revenue?from={DAY}&to={DAY}")).await;
    assert_eq!(revenue_after, revenue_before);
    // It is on the 21st, with its refund id in that day's reconciliation.
    d.clock.as_ref().unwrap().advance(Duration::days(1));
    let (s, next) = admin.post("/admin/v1/settlement/2026-11-21", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{next}");
    let sandbox =
        next["acquirers"].as_array().unwrap().iter().find(|a| a["acquirer"] == "sandbox").unwrap();
    assert_eq!(
        (sandbox["instructions"].as_u64(), sandbox["refunds"].as_u64()),
        (Some(0), Some(1)),
        "{next}"
    );
    d.finish().await;
}
}

on_both_stores! {
// Item 8: statements are for everyone with activity that day, not only those configured today.
// A settlement over the same store whose configuration names no partner and no acquirer (all
// removed since) still writes each one's statement, and still reconciles the acquirer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_and_acquirers_gone_from_the_config_still_get_their_statements() {
    let d = day_daemon().await;
    let (_, p) = quote_and_pay(&d.client("partner-demo"), 12_300, "gone-1").await;
    assert_eq!(p["status"], "SUCCEEDED", "{p}");
    let other = d.client("partner-other");
    let (s, q) = quote(&other, &support::flows::code(None), Some(20_000), "KRW").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    support::flows::pay(&other, "gone-2", q["quote_id"].as_str().unwrap(), "u").await;
    d.clock.as_ref().unwrap().advance(Duration::hours(15));

    let engine = d.daemon().engine.clone();
    let config = qrbridge::daemon::embedded_config(d.dir.path(), support::loopback()).unwrap();
    let clock: std::sync::Arc<dyn qrbridge::clock::Clock> =
        std::sync::Arc::new(d.clock.as_ref().unwrap().clone());
    let feeds = std::sync::Arc::new(qrbridge::rates::Feeds::new(&config.fx, clock).unwrap());
    let shanghai = chrono_tz::Asia::Shanghai;
    let days = qrbridge::settlement::BusinessDays {
        tz: shanghai,
        cutoff: chrono::NaiveTime::MIN,
        cancel: qrbridge::engine::CancelPolicy {
            tz: shanghai,
            until: chrono::NaiveTime::from_hms_opt(0, 30, 0).unwrap(),
        },
    };
    let treasury = std::sync::Arc::new(qrbridge::treasury::Treasury::new(engine, feeds, days));
    let out = tempfile::tempdir().unwrap();
    let settlement = qrbridge::settlement::Settlement::new(
        treasury,
        days,
        out.path().to_owned(),
        Vec::new(),
        Vec::new(),
    );
    let day = DAY.parse().unwrap();
    let summary = settlement.run("admin", day).await.unwrap();
    let partners: Vec<(String, String, u64)> = summary
        .partners
        .iter()
        .map(|p| (p.partner.clone(), p.currency.code().to_owned(), p.payments))
        .collect();
    assert_eq!(
        partners,
        vec![("partner-demo".into(), "PHP".into(), 1), ("partner-other".into(), "KRW".into(), 1)]
    );
    let acquirers: Vec<(&str, u64)> =
        summary.acquirers.iter().map(|a| (a.acquirer.as_str(), a.instructions)).collect();
    assert_eq!(acquirers, vec![("sandbox", 2)]);
    for name in
        ["partner-partner-demo-PHP.csv", "partner-partner-other-KRW.csv", "acquirer-sandbox.csv"]
    {
        assert!(out.path().join(DAY).join(name).exists(), "{name}");
    }
    let report = settlement
        .reconcile("admin", day, "sandbox", &sandbox_file(&d, &|_| String::new()))
        .await
        .unwrap();
    assert_eq!(report["clean"], true, "{report}");
    assert!(matches!(
        settlement.reconcile("admin", day, "never-configured", b"").await,
        Err(qrbridge::error::ApiError::AcquirerNotFound(_))
    ));
    d.finish().await;
}
}

on_both_stores! {
// Item 8: one business day for revenue and settlement. A payment made just before midnight whose
// outcome is learned after it, and one cancelled after midnight within its window, belong to the
// day they were made: that day's revenue equals its treasury report, and the next day has none
// of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_and_statements_put_every_entry_on_the_same_business_day() {
    let d = day_daemon().await;
    let c = d.client("partner-demo");
    let admin = d.admin_client("admin");
    let clock = d.clock.as_ref().unwrap();
    let (_, early) = quote_and_pay(&c, 10_000, "early").await;
    assert_eq!(early["status"], "SUCCEEDED");
    clock.advance(Duration::seconds(13 * 3_600 + 59 * 60 + 30)); // 23:59:30 local
                                                                 // Fen 53: approved, but the answer never comes; the inquiry after midnight learns it.
    let (_, late) = quote_and_pay(&c, 20_053, "late").await;
    assert_eq!(late["status"], "PROCESSING", "{late}");
    let (_, cancelled) = quote_and_pay(&c, 30_000, "cancelled").await;
    assert_eq!(cancelled["status"], "SUCCEEDED");
    d.resolve_after(Duration::minutes(2)).await; // 00:01:30 on the 21st
    let late = late["payment_id"].as_str().unwrap();
    assert_eq!(c_status(&d, late).await, "SUCCEEDED");
    let id = cancelled["payment_id"].as_str().unwrap();
    let (s, r) = c.post(&format!("/v1/payments/{id}/cancel"), &json!({})).await;
    assert_eq!((s, r["status"].as_str()), (StatusCode::OK, Some("CANCELLED")), "{r}");
    // The ledger booked the late payment and the cancel on the 21st.
    let journal = d.daemon().store().journal().await.unwrap();
    assert!(
        journal
            .iter()
            .filter(|e| e.at > Utc.with_ymd_and_hms(2026, 11, 20, 16, 0, 0).unwrap())
            .count()
            >= 2
    );

    clock.advance(Duration::hours(1));
    let (s, summary) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{summary}");
    let demo = summary["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partner"] == "partner-demo" && p["currency"] == "PHP")
        .unwrap();
    assert_eq!(demo["payments"], 2, "{summary}");
    let report: Vec<Value> = summary["spread_revenue"].as_array().unwrap().clone();
    assert_eq!(report.len(), 1, "{summary}");
    assert_eq!(report[0]["payments"], 2, "{summary}");
    let (_, revenue) = admin.get(&format!("/admin/v1/revenue?from={DAY}&to={DAY}")).await;
    let lines = revenue["revenue"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{revenue}");
    assert_eq!(lines[0]["revenue"], report[0]["spread_revenue"], "{revenue} {summary}");
    let (_, next) = admin.get("/admin/v1/revenue?from=2026-11-21&to=2026-11-21").await;
    assert_eq!(next["revenue"], json!([]), "{next}");
    d.finish().await;
}
}

on_both_stores! {
// Item 17: settlement folders are `0700` and files `0600`, even where an older build left them
// readable to others; and no CSV cell starts a formula: a merchant id and a request id that
// would (`=…`, `-…`) come out quoted with `'`, while plain negative numbers stay numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_files_are_private_and_carry_no_formulas() {
    use qrbridge_adapters::decode::tlv::field;
    use std::os::unix::fs::PermissionsExt;
    let d = day_daemon().await;
    let c = d.client("partner-demo");
    let admin = d.admin_client("admin");
    let hostile = support::flows::code_with(
        None,
        &field(26, &(field(0, "CN.EXAMPLE.PAY") + &field(1, "=1+2"))),
        "156",
    );
    let (s, q) = quote(&c, &hostile, Some(4_200), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let (s, p) = support::flows::pay(&c, "-2-3", q["quote_id"].as_str().unwrap(), "u").await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let id = p["payment_id"].as_str().unwrap().to_owned();
    // An older build's folder, readable to all.
    let root = d.dir.path().join("settlement");
    std::fs::create_dir_all(root.join("2026-11-19")).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.clock.as_ref().unwrap().advance(Duration::hours(15));
    let (s, summary) = admin.post(&format!("/admin/v1/settlement/{DAY}"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{summary}");
    reconcile(&admin, DAY, "sandbox", sandbox_file(&d, &|_| String::new())).await;

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700, "the settlement root");
    let day_dir = root.join(DAY);
    assert_eq!(mode(&day_dir), 0o700);
    let mut names = Vec::new();
    for f in std::fs::read_dir(&day_dir).unwrap() {
        let f = f.unwrap();
        assert_eq!(mode(&f.path()), 0o600, "{:?}", f.file_name());
        names.push(f.file_name().into_string().unwrap());
    }
    assert!(names.len() >= 8, "{names:?}");

    let acquirer = String::from_utf8(file(&admin, DAY, "acquirer-sandbox.csv").await).unwrap();
    assert!(acquirer.contains(",'=1+2\r\n"), "{acquirer}");
    let partner =
        String::from_utf8(file(&admin, DAY, "partner-partner-demo-PHP.csv").await).unwrap();
    assert!(partner.contains(&format!("payment,{id},,'-2-3,")), "{partner}");
    let positions = String::from_utf8(file(&admin, DAY, "treasury-positions.csv").await).unwrap();
    assert!(positions.contains(",-42.00\r\n") || positions.contains(",-42.00,"), "{positions}");
    d.finish().await;
}
}

async fn c_status(d: &TestDaemon, id: &str) -> String {
    let p = d.daemon().store().payment(id).await.unwrap().unwrap();
    p.state.api_status().to_owned()
}
