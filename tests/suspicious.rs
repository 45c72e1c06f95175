//! The daily monitoring report (issue 15), end to end. Payments are made through the real
//! daemon's partner API on one business day: a payer structuring just under a limit (one attempt
//! declined), a payer paying three merchants within ten minutes, a merchant paid through both
//! partners within ten minutes — and, for each, an innocent version one payment or one second
//! short. The day is then settled by a `Settlement` over the daemon's store whose engine (the
//! engine test support) holds the risk limits, with the monitoring thresholds set. The test
//! checks that each partner's `suspicious-<id>.csv` has exactly the expected lines, each with
//! its payments; that the summary lists and digests the files; that a quiet day's files are
//! header only; and that a rerun gives the same bytes.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use http::StatusCode;
use qrbridge::payments::risk::{Blocklists, PartnerRules, Policy, RiskRules};
use qrbridge::settlement::{BusinessDays, Settlement};
use qrbridge::treasury::Treasury;
use qrbridge_adapters::decode::tlv::field;
use qrbridge_config::Monitoring;
use sha2::{Digest, Sha256};
use support::daemon::{Setup, TestClient, TestDaemon};
use support::flows::{code, code_with, pay, quote};

/// Business days in Asia/Shanghai ending at midnight, cancels until 00:30.
fn shanghai() -> BusinessDays {
    let tz = chrono_tz::Asia::Shanghai;
    BusinessDays {
        tz,
        cutoff: NaiveTime::MIN,
        cancel: qrbridge::engine::CancelPolicy {
            tz,
            until: NaiveTime::from_hms_opt(0, 30, 0).unwrap(),
        },
    }
}

/// A static code of merchant `id` at the sandbox acquirer.
fn merchant(id: &str) -> String {
    code_with(None, &field(26, &(field(0, "CN.EXAMPLE.PAY") + &field(1, id))), "156")
}

/// `payer` of the partner behind `c` pays CNY `fen` on `code` in PHP; the payment's id, once
/// it has the status `want`.
async fn paid(
    c: &TestClient,
    code: &str,
    fen: i64,
    request: &str,
    payer: &str,
    want: &str,
) -> String {
    let (s, q) = quote(c, code, Some(fen), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let (s, p) = pay(c, request, q["quote_id"].as_str().unwrap(), payer).await;
    assert_eq!(p["status"].as_str(), Some(want), "{s} {p}");
    p["payment_id"].as_str().unwrap().to_owned()
}

/// The rows of a CSV without its header, cells split at commas (no cell here has one).
fn rows(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.lines().skip(1).map(|l| l.split(',').map(str::to_owned).collect()).collect()
}

const HEADER: &str = "rule,partner,subject,window_start,window_end,payments,succeeded,cny_total,\
                      merchants,partners,limits,payment_ids";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partners_suspicious_file_lists_the_rule_and_the_payments_behind_each_line() {
    // 10:00 on the 20th in Asia/Shanghai.
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some(Utc.with_ymd_and_hms(2026, 11, 20, 2, 0, 0).unwrap()),
        ..Setup::default()
    })
    .await;
    let demo = d.client("partner-demo");
    let other = d.client("partner-other");
    let clock = d.clock.as_ref().unwrap();
    let tick = |s: i64| clock.advance(Duration::seconds(s));

    // 02:00Z: payer-1 pays three times within 5 % of CNY 1,000.00 (one declined: fen 51) and
    // once far below; payer-2 twice within 5 %, one short of the threshold.
    let n1 = paid(&demo, &code(None), 96_000, "n-1", "payer-1", "SUCCEEDED").await;
    tick(1);
    let n2 = paid(&demo, &code(None), 98_551, "n-2", "payer-1", "FAILED").await;
    tick(1);
    let n3 = paid(&demo, &code(None), 99_900, "n-3", "payer-1", "SUCCEEDED").await;
    tick(1);
    paid(&demo, &code(None), 50_000, "n-4", "payer-1", "SUCCEEDED").await;
    paid(&demo, &code(None), 97_000, "q-1", "payer-2", "SUCCEEDED").await;
    paid(&demo, &code(None), 99_000, "q-2", "payer-2", "SUCCEEDED").await;

    // 03:00Z: payer-b pays three merchants, the third exactly ten minutes after the first.
    tick(3_600 - 3);
    let b1 = paid(&demo, &merchant("M-1"), 1_000, "b-1", "payer-b", "SUCCEEDED").await;
    tick(60);
    let b2 = paid(&demo, &merchant("M-2"), 2_000, "b-2", "payer-b", "SUCCEEDED").await;
    tick(540);
    let b3 = paid(&demo, &merchant("M-3"), 3_000, "b-3", "payer-b", "SUCCEEDED").await;
    // 04:00Z: payer-c does the same, but the third comes ten minutes and a second after the
    // second.
    tick(3_000);
    paid(&demo, &merchant("M-1"), 1_000, "c-1", "payer-c", "SUCCEEDED").await;
    tick(60);
    paid(&demo, &merchant("M-2"), 2_000, "c-2", "payer-c", "SUCCEEDED").await;
    tick(601);
    paid(&demo, &merchant("M-3"), 3_000, "c-3", "payer-c", "SUCCEEDED").await;

    // 05:00Z: merchant M-9 is paid through both partners, ten minutes apart; M-8 ten minutes
    // and a second apart.
    let at_five = Utc.with_ymd_and_hms(2026, 11, 20, 5, 0, 0).unwrap();
    clock.advance(at_five - qrbridge::clock::Clock::now(clock));
    let x1 = paid(&demo, &merchant("M-9"), 4_000, "x-1", "payer-x", "SUCCEEDED").await;
    tick(600);
    let y1 = paid(&other, &merchant("M-9"), 5_000, "y-1", "payer-y", "SUCCEEDED").await;
    tick(3_600);
    paid(&demo, &merchant("M-8"), 4_000, "x-2", "payer-x", "SUCCEEDED").await;
    tick(601);
    paid(&other, &merchant("M-8"), 5_000, "y-2", "payer-y", "SUCCEEDED").await;

    // 01:00 on the 21st: the 20th is closed.
    let closed = Utc.with_ymd_and_hms(2026, 11, 20, 17, 0, 0).unwrap();
    clock.advance(closed - qrbridge::clock::Clock::now(clock));

    // Settlement over the daemon's store; its engine holds partner-demo's CNY 1,000.00 limit.
    let store = d.daemon().store().clone();
    let clock_dyn: Arc<dyn qrbridge::clock::Clock> = Arc::new(clock.clone());
    let config = qrbridge::daemon::embedded_config(d.dir.path(), support::loopback()).unwrap();
    let feeds = Arc::new(qrbridge::rates::Feeds::new(&config.fx, clock_dyn.clone()).unwrap());
    let engine = qrbridge::engine::Engine::new(support::engine::parts(
        d.dir.path(),
        store,
        clock_dyn,
        HashMap::new(),
    ));
    let mut rules = RiskRules::default();
    rules.partners.insert(
        "partner-demo".into(),
        PartnerRules { payment_cny_minor_max: Some(100_000), ..Default::default() },
    );
    engine.risk().set_policy(Policy::new(rules, Blocklists::default()).unwrap());
    let treasury = Arc::new(Treasury::new(engine, feeds, shanghai()));
    let out = tempfile::tempdir().unwrap();
    let php = qrbridge_fx::Currency::from_code("PHP").unwrap();
    let settlement = Settlement::new(
        treasury,
        shanghai(),
        out.path().to_owned(),
        vec![("partner-demo".into(), vec![php]), ("partner-other".into(), vec![php])],
        vec!["sandbox".into()],
    )
    .with_monitoring(Monitoring {
        near_limit_bps: 500,
        near_limit_payments_min: 3,
        burst_merchants_min: 3,
        burst_window_s: 600,
        merchant_partners_min: 2,
        merchant_window_s: 600,
    });

    let day: NaiveDate = "2026-11-20".parse().unwrap();
    let summary = settlement.run("admin", day).await.unwrap();
    let read = |day: &str, name: &str| std::fs::read(out.path().join(day).join(name)).unwrap();
    let demo_file = read("2026-11-20", "suspicious-partner-demo.csv");
    let other_file = read("2026-11-20", "suspicious-partner-other.csv");
    let text = std::str::from_utf8(&demo_file).unwrap();
    assert!(text.starts_with(&format!("{HEADER}\r\n")), "{text}");

    let row = |cells: &[&str]| cells.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        rows(&demo_file),
        vec![
            row(&[
                "NEAR_LIMIT",
                "partner-demo",
                "payer-1",
                "2026-11-20T02:00:00.000Z",
                "2026-11-20T02:00:02.000Z",
                "3",
                "2",
                "2944.51",
                "1",
                "1",
                "payment_cny_minor_max=100000",
                &[n1.as_str(), &n2, &n3].join(";"),
            ]),
            row(&[
                "PAYER_BURST",
                "partner-demo",
                "payer-b",
                "2026-11-20T03:00:00.000Z",
                "2026-11-20T03:10:00.000Z",
                "3",
                "3",
                "60.00",
                "3",
                "1",
                "",
                &[b1.as_str(), &b2, &b3].join(";"),
            ]),
            row(&[
                "MERCHANT_MANY_PARTNERS",
                "partner-demo",
                "sandbox/M-9",
                "2026-11-20T05:00:00.000Z",
                "2026-11-20T05:10:00.000Z",
                "1",
                "1",
                "40.00",
                "1",
                "2",
                "",
                &x1,
            ]),
        ],
        "{text}"
    );
    // The other partner's file has the merchant's line with its own payment only.
    assert_eq!(
        rows(&other_file),
        vec![row(&[
            "MERCHANT_MANY_PARTNERS",
            "partner-other",
            "sandbox/M-9",
            "2026-11-20T05:00:00.000Z",
            "2026-11-20T05:10:00.000Z",
            "1",
            "1",
            "50.00",
            "1",
            "2",
            "",
            &y1,
        ])],
        "{}",
        String::from_utf8_lossy(&other_file)
    );

    // The summary lists each file with its digest, like the statements.
    for (name, bytes) in
        [("suspicious-partner-demo.csv", &demo_file), ("suspicious-partner-other.csv", &other_file)]
    {
        assert_eq!(summary.files.get(name), Some(&hex::encode(Sha256::digest(bytes))), "{name}");
    }

    // A rerun gives the same bytes; a quiet day still gets each partner's file, header only.
    settlement.run("admin", day).await.unwrap();
    assert_eq!(read("2026-11-20", "suspicious-partner-demo.csv"), demo_file);
    assert_eq!(read("2026-11-20", "suspicious-partner-other.csv"), other_file);
    let quiet = settlement.run("admin", "2026-11-19".parse().unwrap()).await.unwrap();
    for name in ["suspicious-partner-demo.csv", "suspicious-partner-other.csv"] {
        let bytes = read("2026-11-19", name);
        assert_eq!(String::from_utf8(bytes).unwrap(), format!("{HEADER}\r\n"), "{name}");
        assert!(quiet.files.contains_key(name), "{name}");
    }
    d.finish().await;
}
