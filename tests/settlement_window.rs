//! A business day is settled from that day's records alone, and gives what reading the whole
//! history gave. Payments on the 19th, 20th and 21st, and on the 21st a refund of a payment of
//! the 20th: each day's files hold exactly that day's payments and refunds (the refund priced
//! from its payment of the day before), are byte for byte what `build` makes of the whole
//! history, and were made without reading the history — only the day's creation-time window,
//! and the refunds a day either side of it. Revenue between two days and positions read no
//! history either; a reconciliation still says on which day the bridge has a payment the
//! acquirer files under another. The store is read off the async runtime's threads, and the
//! window a day is read over holds every instant of the day, even where daylight saving moves
//! the clock.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use http::StatusCode;
use qrbridge::model::*;
use qrbridge::settlement::{build, BusinessDays, DayInput, Settlement};
use qrbridge::store::Store;
use qrbridge::treasury::Treasury;
use qrbridge_fx::Currency;
use serde_json::{json, Value};
use support::daemon::{Setup, TestDaemon};
use support::flows::quote_and_pay;
use support::stores::ControlledStore;

fn php() -> Currency {
    Currency::from_code("PHP").unwrap()
}

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

/// A treasury and settlement over `store`, configured with the partner `partner-demo` (PHP) and
/// the acquirer `sandbox`, writing under `out`.
fn settlement_over<S: Store>(
    dir: &std::path::Path,
    store: Arc<S>,
    clock: Arc<dyn qrbridge::clock::Clock>,
    out: &std::path::Path,
) -> (Arc<Treasury<S>>, Arc<Settlement<S>>) {
    let config = qrbridge::daemon::embedded_config(dir, support::loopback()).unwrap();
    let feeds = Arc::new(qrbridge::rates::Feeds::new(&config.fx, clock.clone()).unwrap());
    let engine =
        qrbridge::engine::Engine::new(support::engine::parts(dir, store, clock, HashMap::new()));
    let treasury = Arc::new(Treasury::new(engine, feeds, shanghai()));
    let settlement = Arc::new(Settlement::new(
        treasury.clone(),
        shanghai(),
        out.to_owned(),
        vec![("partner-demo".to_owned(), vec![php()])],
        vec!["sandbox".to_owned()],
    ));
    (treasury, settlement)
}

fn day(text: &str) -> NaiveDate {
    text.parse().unwrap()
}

/// The data rows of a CSV (the header left out).
fn rows(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    text.lines().skip(1).map(|l| l.split(',').map(str::to_owned).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_is_settled_from_that_day_alone_as_from_the_whole_history() {
    // 10:00 on the 19th in Asia/Shanghai.
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some(Utc.with_ymd_and_hms(2026, 11, 19, 2, 0, 0).unwrap()),
        tweak: Box::new(|c| {
            c.resolver.inquiry_schedule_s = vec![60];
            c.resolver.payment_expiry_s = 600;
        }),
        ..Setup::default()
    })
    .await;
    let c = d.client("partner-demo");
    let acq = d.acquirer_client("acquirer-sandbox");
    let clock = d.clock.as_ref().unwrap();
    let pay = |fen: i64, request: &'static str| {
        let c = c.clone();
        async move {
            let (s, p) = quote_and_pay(&c, fen, request).await;
            assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("SUCCEEDED")), "{p}");
            p["payment_id"].as_str().unwrap().to_owned()
        }
    };
    let before = pay(11_100, "before").await; // the 19th
    clock.advance(Duration::days(1));
    let kept = pay(22_200, "kept").await; // the 20th
    let refunded = pay(33_300, "refunded").await; // the 20th, refunded on the 21st
    clock.advance(Duration::days(1));
    let after = pay(44_400, "after").await; // the 21st
    let (s, r) = acq
        .post(
            "/acquirer/v1/refunds",
            &json!({
                "refund_id": "LATER-1", "instruction_id": refunded,
                "amount": {"currency": "CNY", "value": "3000"}, "reason": "returned",
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    clock.advance(Duration::hours(15)); // 01:00 on the 22nd: the 21st is closed

    let sled = d.daemon().store().clone();
    let guard = ControlledStore::new(sled.clone());
    let out = tempfile::tempdir().unwrap();
    let clock_dyn: Arc<dyn qrbridge::clock::Clock> = Arc::new(clock.clone());
    let (treasury, settlement) =
        settlement_over(d.dir.path(), guard.clone(), clock_dyn, out.path());

    // What `build` makes of the whole history, read straight from the store: the files before.
    let all_payments = sled.payments().await.unwrap();
    let mut all_refunds = Vec::new();
    for p in &all_payments {
        all_refunds.extend(sled.refunds_of(&p.payment_id).await.unwrap());
    }
    let all_journal = sled.journal().await.unwrap();
    let days = shanghai();
    let partners = vec![("partner-demo".to_owned(), vec![php()])];
    let acquirers = vec!["sandbox".to_owned()];

    let mut files_of = BTreeMap::new();
    for name in ["2026-11-19", "2026-11-20", "2026-11-21"] {
        let summary = settlement.run("admin", day(name)).await.unwrap();
        let (expected, expected_files) = build(&DayInput {
            day: day(name),
            days: &days,
            partners: &partners,
            acquirers: &acquirers,
            payments: &all_payments,
            refunds: &all_refunds,
            journal: &all_journal,
        })
        .unwrap();
        assert_eq!(json!(summary), json!(expected), "{name}");
        let mut written = BTreeMap::new();
        for f in std::fs::read_dir(out.path().join(name)).unwrap() {
            let f = f.unwrap();
            written.insert(f.file_name().into_string().unwrap(), std::fs::read(f.path()).unwrap());
        }
        assert_eq!(written, expected_files, "{name}: the files differ from the history's");
        // Read: that day's payments, the refunds from a day before it to a day after it.
        let (start, end) = days.bounds(day(name));
        assert_eq!(
            guard.take_windows(),
            vec![
                ("payments", start, end),
                ("refunds", start - Duration::days(1), end + Duration::days(1))
            ],
            "{name}"
        );
        files_of.insert(name, written);
    }
    assert_eq!(guard.history_reads(), 0, "a settlement read the whole history");

    // Each day holds exactly its own payments, and the refund is on the 21st only.
    let statement = |name: &str, file: &str| rows(&files_of[name][file]);
    let kinds_and_ids = |rows: Vec<Vec<String>>| -> Vec<(String, String)> {
        rows.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect()
    };
    let payment = |id: &String| ("payment".to_owned(), id.clone());
    let partner_file = "partner-partner-demo-PHP.csv";
    assert_eq!(kinds_and_ids(statement("2026-11-19", partner_file)), vec![payment(&before)]);
    assert_eq!(
        kinds_and_ids(statement("2026-11-20", partner_file)),
        vec![payment(&kept), payment(&refunded)]
    );
    assert_eq!(
        kinds_and_ids(statement("2026-11-21", partner_file)),
        vec![payment(&after), ("refund".to_owned(), refunded.clone())]
    );
    let instructions = |name: &str| -> Vec<String> {
        statement(name, "acquirer-sandbox.csv").into_iter().map(|r| r[1].clone()).collect()
    };
    assert_eq!(instructions("2026-11-19"), vec![before.clone()]);
    assert_eq!(instructions("2026-11-20"), vec![kept.clone(), refunded.clone()]);
    assert_eq!(instructions("2026-11-21"), vec![after.clone(), refunded.clone()]);
    // The refund is priced, and its merchant named, from its payment of the day before.
    let paid = sled.payment(&refunded).await.unwrap().unwrap();
    let refund_row = &statement("2026-11-21", partner_file)[1];
    assert_eq!(refund_row[8], paid.rate.price.to_string(), "{refund_row:?}");
    assert!(!refund_row[8].is_empty());
    let acquirer_refund = &statement("2026-11-21", "acquirer-sandbox.csv")[1];
    assert_eq!(acquirer_refund[7], paid.merchant.id.clone().unwrap(), "{acquirer_refund:?}");
    let revenue = |name: &str| -> Vec<(String, String)> {
        statement(name, "treasury-revenue.csv")
            .into_iter()
            .map(|r| (r[2].clone(), r[3].clone()))
            .collect()
    };
    assert_eq!(revenue("2026-11-20"), vec![("2".to_owned(), "0".to_owned())]);
    assert_eq!(revenue("2026-11-21"), vec![("1".to_owned(), "1".to_owned())]);

    // Revenue between two days reads those days; positions come from the running totals; both
    // equal what the whole journal says.
    let made = qrbridge::settlement::made_at(&all_payments);
    let day_of = |e: &JournalEntry| days.day_of_entry(e, made.get(e.payment_id.as_str()).copied());
    for (from, to) in
        [("2026-11-19", "2026-11-21"), ("2026-11-20", "2026-11-20"), ("2026-11-21", "2026-11-21")]
    {
        let (from, to) = (Some(day(from)), Some(day(to)));
        let whole = qrbridge::treasury::revenue(&all_journal, day_of, from, to).unwrap();
        assert!(!whole.is_empty());
        assert_eq!(treasury.revenue(from, to).await.unwrap(), whole);
        assert_eq!(treasury.revenue_async(from, to).await.unwrap(), whole);
    }
    assert_eq!(
        treasury.positions().await.unwrap(),
        qrbridge::treasury::positions(&all_journal).unwrap()
    );
    assert_eq!(guard.history_reads(), 0, "revenue or positions read the history");
    // Without a bound, revenue is asked of the whole history, and reads it.
    let whole = qrbridge::treasury::revenue(&all_journal, day_of, None, None).unwrap();
    assert_eq!(treasury.revenue_async(None, None).await.unwrap(), whole);
    assert!(guard.history_reads() > 0);
    guard.reset_history_reads();

    // Reconciling the 21st: its payment matches; the 20th's payment filed under the 21st is not
    // the 21st's, and the report says on which day the bridge has it (looked up by id).
    let file = format!(
        "instruction_id,amount,currency,status,refund_ids\n{after},444.00,CNY,APPROVED,\n\
         {refunded},333.00,CNY,APPROVED,LATER-1\n"
    );
    let report: Value =
        settlement.reconcile("admin", day("2026-11-21"), "sandbox", file.as_bytes()).await.unwrap();
    assert_eq!(report["counts"], json!({"MATCHED": 1, "MISSING_AT_BRIDGE": 1}), "{report}");
    let missing = report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["instruction_id"] == refunded.as_str());
    assert_eq!(missing.unwrap()["note"], "the bridge has it on 2026-11-20", "{report}");
    // The 20th as its acquirer filed it: clean, the refund of the 21st not expected there.
    let file = format!(
        "instruction_id,amount,currency,status,refund_ids\n{kept},222.00,CNY,APPROVED,\n\
         {refunded},333.00,CNY,APPROVED,\n"
    );
    let report = settlement.reconcile("admin", day("2026-11-20"), "sandbox", file.as_bytes()).await;
    assert_eq!(report.unwrap()["clean"], true);
    assert_eq!(guard.history_reads(), 0, "a reconciliation read the history");
    d.finish().await;
}

/// One thread runs everything here: were the day read on it, the test could not release the
/// read it holds, and the read would give up (and the run fail).
#[tokio::test(flavor = "current_thread")]
async fn a_day_is_read_off_the_runtime_threads() {
    let dir = tempfile::tempdir().unwrap();
    let guard = ControlledStore::open(&dir.path().join("db"));
    let clock: Arc<dyn qrbridge::clock::Clock> = Arc::new(qrbridge::clock::ManualClock::new(
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
    ));
    let out = dir.path().join("settlement");
    let (_, settlement) = settlement_over(dir.path(), guard.clone(), clock, &out);
    guard.hold_window_reads();
    let run = tokio::spawn(async move { settlement.run("admin", day("2026-11-20")).await });
    guard.window_read_held.notified().await;
    guard.release_window_reads();
    let summary = run.await.expect("the run finished").expect("the run succeeded");
    assert_eq!(summary.day, day("2026-11-20"));
    assert!(summary.partners.iter().all(|p| p.payments == 0));
}

/// Every instant whose business day is D lies in the window D is read over: in a zone with
/// daylight saving, around both changes, for cut-offs before noon, at noon and after, and in
/// one and the gap or fold of the change. In Asia/Shanghai the window is the day's bounds.
#[test]
fn the_window_of_a_day_holds_every_instant_of_it() {
    let cancel = shanghai().cancel;
    for cutoff in ["00:00", "01:30", "02:30", "12:00", "22:00"] {
        let cutoff = NaiveTime::parse_from_str(cutoff, "%H:%M").unwrap();
        let days = BusinessDays { tz: chrono_tz::America::New_York, cutoff, cancel };
        for (first, last) in [("2026-03-05", "2026-03-11"), ("2026-10-29", "2026-11-04")] {
            let mut d = day(first);
            while d <= day(last) {
                let (start, end) = days.window(d, d);
                let (b_start, b_end) = days.bounds(d);
                assert!(start <= b_start && b_end <= end, "{d} {cutoff}");
                let mut t = b_start - Duration::days(2);
                while t < b_end + Duration::days(2) {
                    if days.day_of(t) == d {
                        assert!(start <= t && t < end, "{t} is on {d} ({cutoff}) but outside");
                    }
                    t += Duration::minutes(10);
                }
                d = d.succ_opt().unwrap();
            }
        }
        // A range of days: from the first day's start to the last day's end.
        let (start, end) = days.window(day("2026-03-01"), day("2026-03-31"));
        assert!(
            start <= days.bounds(day("2026-03-01")).0 && days.bounds(day("2026-03-31")).1 <= end
        );
    }
    let days = shanghai();
    for d in ["2026-03-08", "2026-11-01", "0001-01-01", "9999-12-31"] {
        assert_eq!(days.window(day(d), day(d)), days.bounds(day(d)), "{d}");
    }
    let (start, end) = days.window(day("2026-11-21"), day("2026-11-20"));
    assert_eq!(start, end, "no day from the 21st to the 20th");
}
