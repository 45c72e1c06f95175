//! A business day of mixed payments, refunds, a cancel, a decline and a payment in doubt, settled
//! through the admin API of the real daemon. The test checks that:
//! - statement totals equal the ledger's;
//! - a rerun is byte-identical;
//! - an empty day still gets its files;
//! - a day cannot close before its cut-off;
//! - the in-doubt payment is listed, not guessed;
//! - reconciling the sandbox acquirer's own books gives a clean report, or names each difference,
//!   both in the API answer and as the CLI's exit code.

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
    let journal = d.daemon().store().journal().unwrap();
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

async fn c_status(d: &TestDaemon, id: &str) -> String {
    let p = d.daemon().store().payment(id).unwrap().unwrap();
    p.state.api_status().to_owned()
}
