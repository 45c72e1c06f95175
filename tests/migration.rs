//! A data folder of the first release opens with this build and is migrated.
//!
//! `tests/fixtures/store-v1/data.tar.gz` was written by the first release's own daemon (commit
//! 8e4e4f3: JSON records, one sled tree per purpose; see that folder's README.md), and
//! `manifest.json` beside it holds every fact that release read back from it. Here the folder is
//! unpacked, opened with this build's `SledStore` and checked through the `Store` trait: payments
//! (by id, by request, by creation time), quotes, refunds, the journal and running totals, the
//! webhook outbox, delivered and parked events, resolver work, the audit chain and settings, and
//! every single-use claim (request ids, quotes, orders, acquirer refund ids). A second open must
//! find the same; then the real daemon runs on the folder: old payments read over the partner API
//! and a new payment is made. Another test writes on the migrated store and checks that claims,
//! sequences, running totals and the audit chain carry on from the migrated ones, and that what
//! it wrote survives another open (the migration does not run again over it).

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use http::StatusCode;
use qrbridge::model::*;
use qrbridge::store::{Begin, BeginError, Change, EventSeq, SledStore, Store, StoreError, Work};
use qrbridge_fx::{Amount, Currency};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use support::daemon::{assert_error, Setup, TestDaemon};
use support::flows::*;

const CACHE: u64 = 8 << 20;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

fn manifest() -> Value {
    let path = fixture_dir().join("manifest.json");
    serde_json::from_slice(&std::fs::read(&path).expect("the fixture's manifest")).unwrap()
}

/// The fixture's data folder, unpacked into a folder of its own.
struct Unpacked {
    _dir: tempfile::TempDir,
    db: PathBuf,
}

fn unpack() -> Unpacked {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(fixture_dir().join("data.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar xzf failed: {status}");
    let db = dir.path().join("db");
    assert!(db.join("conf").is_file(), "the archive holds db/");
    Unpacked { _dir: dir, db }
}

/// Runs `work` on a runtime of its own, dropped after it: the store's flusher task (and with it
/// sled's hold on the folder) ends before the next phase opens the folder again.
fn phase<T>(work: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

fn rec<T: DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("manifest record {v}: {e}"))
}

fn list(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn time(v: &Value) -> DateTime<Utc> {
    text(v).parse().unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn payment_entry<'a>(m: &'a Value, label: &str) -> &'a Value {
    list(&m["payments"]).iter().find(|p| p["label"] == label).unwrap_or_else(|| panic!("{label}"))
}

fn ids_by_seq(mut events: Vec<(EventSeq, String)>) -> Vec<String> {
    events.sort();
    events.into_iter().map(|(_, id)| id).collect()
}

fn manifest_totals(m: &Value) -> BTreeMap<(Currency, String), i128> {
    list(&m["account_totals"])
        .iter()
        .map(|t| {
            let c = Currency::from_code(text(&t["currency"])).unwrap();
            ((c, text(&t["account"]).to_owned()), text(&t["total"]).parse().unwrap())
        })
        .collect()
}

/// Everything the store shows, to compare two opens.
fn snapshot(s: &SledStore, m: &Value) -> Value {
    let payments = s.payments().unwrap();
    let refunds: Vec<Vec<RefundRecord>> =
        payments.iter().map(|p| s.refunds_of(&p.payment_id).unwrap()).collect();
    let quotes: Vec<Option<QuoteRecord>> =
        list(&m["quotes"]).iter().map(|q| s.quote(text(&q["quote_id"])).unwrap()).collect();
    let totals: Vec<(String, String, String)> = s
        .account_totals()
        .unwrap()
        .into_iter()
        .map(|((c, a), t)| (c.code().to_owned(), a, t.to_string()))
        .collect();
    json!({
        "payments": payments,
        "refunds": refunds,
        "quotes": quotes,
        "journal": s.journal().unwrap(),
        "totals": totals,
        "outbox": s.outbox().unwrap(),
        "delivered": s.delivered_events().unwrap(),
        "parked": s.parked().unwrap(),
        "work": s.open_work().unwrap(),
        "audit": s.audit_log().unwrap(),
        "settings": s.settings("").unwrap(),
    })
}

/// Every fact of the manifest, through the `Store` trait.
fn check_facts(s: &SledStore, m: &Value) {
    let start = time(&m["clock"]["start"]);
    let end = time(&m["clock"]["end"]);

    // Payments: by id and by request, as the release left them.
    let mut all: Vec<PaymentRecord> = Vec::new();
    for e in list(&m["payments"]) {
        let label = &e["label"];
        let want: PaymentRecord = rec(&e["record"]);
        let id = text(&e["payment_id"]);
        let got = s.payment(id).unwrap().unwrap_or_else(|| panic!("payment {label} is missing"));
        assert_eq!(got, want, "payment {label}");
        // Refunds are priced from the payment's own figures: the release's quote's, exactly.
        let quote = s.quote(&got.quote_id).unwrap().unwrap_or_else(|| panic!("{label}'s quote"));
        assert_eq!(got.pricing(), quote.quote.pricing(), "payment {label}");
        assert_eq!(serde_json::to_value(got.state).unwrap(), e["state"], "{label}");
        assert_eq!(got.state.api_status(), text(&e["api_status"]), "{label}");
        assert_eq!(got.partner, text(&e["partner"]), "{label}");
        assert_eq!(got.request_id, text(&e["request_id"]), "{label}");
        assert_eq!(serde_json::to_value(got.pay).unwrap(), e["pay"], "{label}");
        assert_eq!(serde_json::to_value(got.wallet).unwrap(), e["wallet"], "{label}");
        assert_eq!(
            s.payment_by_request(&want.partner, &want.request_id).unwrap().as_ref(),
            Some(&want),
            "payment {label} by its request id"
        );
        all.push(want);
    }
    let order: Vec<&str> = list(&m["payment_order"]).iter().map(text).collect();
    let got: Vec<String> = s.payments().unwrap().into_iter().map(|p| p.payment_id).collect();
    assert_eq!(got, order, "every payment, oldest first");
    assert!(s.payment("pay_nothing").unwrap().is_none());
    // A request id is the partner's own: another partner's is not found.
    assert!(s.payment_by_request("partner-other", "fx-static-1").unwrap().is_none());
    assert!(s.payment_by_request("partner-demo", "fx-other-1").unwrap().is_none());

    // Payments by creation time: the whole history, each half, each payment's own second.
    let mut by_time = all.clone();
    by_time.sort_by(|a, b| (a.created_at, &a.payment_id).cmp(&(b.created_at, &b.payment_id)));
    assert_eq!(s.payments_made(start, end + Duration::seconds(1)).unwrap(), by_time);
    let mid = start + Duration::days(1);
    let (before, after): (Vec<_>, Vec<_>) =
        by_time.iter().cloned().partition(|p| p.created_at < mid);
    assert!(!before.is_empty() && !after.is_empty());
    assert_eq!(s.payments_made(start, mid).unwrap(), before);
    assert_eq!(s.payments_made(mid, end + Duration::seconds(1)).unwrap(), after);
    for p in &by_time {
        let one = s.payments_made(p.created_at, p.created_at + Duration::seconds(1)).unwrap();
        assert_eq!(one, vec![p.clone()], "[created_at, +1 s) of {}", p.payment_id);
    }
    assert!(s
        .payments_made(end + Duration::seconds(1), end + Duration::days(1))
        .unwrap()
        .is_empty());
    assert!(s.payments_made(end, start).unwrap().is_empty());

    // Quotes: every payment's, and the one nobody paid.
    for q in list(&m["quotes"]) {
        let want: QuoteRecord = rec(&q["record"]);
        assert_eq!(s.quote(text(&q["quote_id"])).unwrap(), Some(want), "quote {}", q["quote_id"]);
    }
    assert!(s.quote("quo_nothing").unwrap().is_none());

    // Refunds: per payment (oldest first), by the acquirer's id, by creation time.
    let refunds: Vec<RefundRecord> =
        list(&m["refunds"]).iter().map(|r| rec(&r["record"])).collect();
    assert!(!refunds.is_empty());
    for p in &all {
        let want: Vec<RefundRecord> =
            refunds.iter().filter(|r| r.payment_id == p.payment_id).cloned().collect();
        assert_eq!(s.refunds_of(&p.payment_id).unwrap(), want, "refunds of {}", p.payment_id);
    }
    for r in &refunds {
        assert_eq!(
            s.refund_by_acquirer_id(&r.acquirer, &r.acquirer_refund_id).unwrap().as_ref(),
            Some(r)
        );
        assert!(s.refund_by_acquirer_id("dead", &r.acquirer_refund_id).unwrap().is_none());
    }
    assert!(s.refund_by_acquirer_id("sandbox", "ACQ-NONE").unwrap().is_none());
    let mut refunds_by_time = refunds.clone();
    refunds_by_time.sort_by(|a, b| (a.created_at, &a.refund_id).cmp(&(b.created_at, &b.refund_id)));
    assert_eq!(s.refunds_made(start, end + Duration::seconds(1)).unwrap(), refunds_by_time);
    let (early, late): (Vec<_>, Vec<_>) =
        refunds_by_time.iter().cloned().partition(|r| r.created_at < mid);
    assert_eq!(s.refunds_made(start, mid).unwrap(), early);
    assert_eq!(s.refunds_made(mid, end + Duration::seconds(1)).unwrap(), late);

    // The journal: in order, per payment, balanced; running totals as the release summed them.
    let journal: Vec<JournalEntry> = list(&m["journal"]).iter().map(rec).collect();
    assert_eq!(s.journal().unwrap(), journal);
    for p in &all {
        let want: Vec<JournalEntry> =
            journal.iter().filter(|e| e.payment_id == p.payment_id).cloned().collect();
        assert_eq!(s.journal_of(&p.payment_id).unwrap(), want, "journal of {}", p.payment_id);
    }
    assert!(s.journal_of("pay_nothing").unwrap().is_empty());
    let mut sums = std::collections::BTreeMap::new();
    for e in s.journal().unwrap() {
        for (c, v) in e.sums() {
            *sums.entry(c).or_insert(0i128) += v;
        }
    }
    let currencies: Vec<&str> = sums.keys().map(|c| c.code()).collect();
    let want_currencies: Vec<&str> =
        m["ledger_sums"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(currencies, want_currencies);
    assert!(sums.values().all(|s| *s == 0), "the ledger balances: {sums:?}");
    let totals = s.account_totals().unwrap();
    assert_eq!(totals, manifest_totals(m), "running account totals");
    let mut summed: BTreeMap<(Currency, String), i128> = BTreeMap::new();
    for e in &journal {
        for p in &e.postings {
            *summed.entry((p.currency, p.account.clone())).or_insert(0) += i128::from(p.minor);
        }
    }
    assert_eq!(totals, summed, "running totals are the journal's sums");

    // Webhook events: each where it was, in the same order, once.
    let outbox = s.outbox().unwrap();
    let want_outbox: Vec<OutboxEvent> =
        list(&m["outbox"]).iter().map(|e| rec(&e["record"])).collect();
    assert_eq!(outbox.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), want_outbox, "outbox");
    assert!(want_outbox.iter().any(|e| e.replayed_at.is_some()), "a replayed event is in it");
    let parked = s.parked().unwrap();
    let want_parked: Vec<ParkedEvent> =
        list(&m["parked"]).iter().map(|e| rec(&e["record"])).collect();
    assert_eq!(parked.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), want_parked, "parked");
    let delivered = s.delivered_events().unwrap();
    // The delivered log keeps headers, not bodies.
    let want_delivered: Vec<DeliveredEvent> = list(&m["delivered"])
        .iter()
        .map(|e| {
            let mut d: DeliveredEvent = rec(&e["record"]);
            d.event.data = Value::Null;
            d
        })
        .collect();
    assert_eq!(delivered, want_delivered, "delivered");
    // Sequences keep their relative order across the outbox and the parked list (a parked event
    // put back goes back to its old place).
    let merged = |o: &[(EventSeq, String)], p: &[(EventSeq, String)]| {
        ids_by_seq(o.iter().chain(p).cloned().collect())
    };
    let seq_id = |v: &Value| (v["seq"].as_u64().unwrap(), text(&v["event_id"]).to_owned());
    let want_o: Vec<_> = list(&m["outbox"]).iter().map(seq_id).collect();
    let want_p: Vec<_> = list(&m["parked"]).iter().map(seq_id).collect();
    let got_o: Vec<_> = outbox.iter().map(|(s, e)| (*s, e.event_id.clone())).collect();
    let got_p: Vec<_> = parked.iter().map(|(s, e)| (*s, e.event.event_id.clone())).collect();
    assert_eq!(merged(&got_o, &got_p), merged(&want_o, &want_p), "event order");
    let mut ids: Vec<&str> = outbox.iter().map(|(_, e)| e.event_id.as_str()).collect();
    ids.extend(parked.iter().map(|(_, p)| p.event.event_id.as_str()));
    ids.extend(delivered.iter().map(|d| d.event.event_id.as_str()));
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event is in one place only");
    // Reading the outbox from a cursor.
    assert!(outbox.len() >= 2);
    let first = s.outbox_after(None, 1).unwrap();
    assert_eq!(first.events, outbox[..1].to_vec());
    assert!(first.more);
    let rest = s.outbox_after(first.cursor, 100).unwrap();
    assert_eq!(rest.events, outbox[1..].to_vec());
    assert!(!rest.more);
    let end = s.outbox_after(rest.cursor, 100).unwrap();
    assert!(end.events.is_empty() && end.cursor == rest.cursor);

    // Resolver work: the payments in doubt, and nothing for final ones.
    let work: Vec<WorkItem> = list(&m["open_work"]).iter().map(|w| rec(&w["record"])).collect();
    assert!(!work.is_empty());
    assert_eq!(s.open_work().unwrap(), work);
    for p in &all {
        let want = work.iter().find(|w| w.payment_id == p.payment_id);
        assert_eq!(s.work_item(&p.payment_id).unwrap().as_ref(), want, "work of {}", p.payment_id);
    }

    // The audit chain: the same records, the same head, and it verifies.
    let (records, head) = s.audit_log().unwrap();
    let want_records: Vec<AuditRecord> = list(&m["audit"]["records"]).iter().map(rec).collect();
    assert_eq!(records.len() as u64, m["audit"]["count"].as_u64().unwrap());
    assert_eq!(records, want_records);
    let want_head: AuditHead = rec(&m["audit"]["head"]);
    assert_eq!(head.as_ref(), Some(&want_head));
    let check = verify_chain(&records, head.as_ref());
    assert!(check.ok && check.records == records.len() as u64, "{check:?}");

    // Settings: the same keys; the admin's values byte for byte.
    let settings = s.settings("").unwrap();
    let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = list(&m["settings"]).iter().map(|e| text(&e["key"])).collect();
    assert_eq!(keys, want_keys);
    for e in list(&m["settings"]) {
        let key = text(&e["key"]);
        if key.starts_with("audit/") {
            continue; // the chain head: checked through audit_log
        }
        let got: Vec<(String, Vec<u8>)> = s.settings(key).unwrap();
        assert_eq!(got, vec![(key.to_owned(), unhex(text(&e["value_hex"])))], "setting {key}");
    }
    assert_eq!(
        s.settings("rate/").unwrap().len(),
        keys.iter().filter(|k| k.starts_with("rate/")).count()
    );
    assert!(s.settings("nothing/").unwrap().is_empty());
}

/// A payment to probe the claims with: `template` under new ids.
fn probe(
    template: &PaymentRecord,
    n: u32,
    quote: &QuoteRecord,
    order: Option<String>,
) -> PaymentRecord {
    PaymentRecord {
        payment_id: format!("pay_migrationprobe{n:04}"),
        partner: quote.partner.clone(),
        request_id: format!("migration-probe-{n}"),
        request_hash: format!("{n:064}"),
        quote_id: quote.quote_id.clone(),
        state: PaymentState::Pending,
        failure: None,
        acquirer_ref: None,
        booked: false,
        order,
        rev: 0,
        ..template.clone()
    }
}

/// Every single-use claim the release held is still held (nothing is written: each attempt is
/// refused).
fn check_claims(s: &SledStore, m: &Value) {
    let claims = &m["claims"];
    // Request ids: a replay gives back the payment as it stands; other content is a conflict.
    assert_eq!(list(&claims["requests"]).len(), list(&m["payments"]).len());
    for c in list(&claims["requests"]) {
        let (partner, request_id) = (text(&c["partner"]), text(&c["request_id"]));
        let p = s.payment_by_request(partner, request_id).unwrap().expect("claimed request");
        assert_eq!(p.payment_id, text(&c["payment_id"]));
        let work = WorkItem::new(&p.payment_id, Task::Inquire, p.created_at, 0);
        match s.begin_payment(&p, &work, p.created_at) {
            Ok(Begin::Replay(got)) => assert_eq!(*got, p, "replay of {request_id}"),
            other => panic!("a replay of {request_id} gave {other:?}"),
        }
        let other = PaymentRecord { request_hash: "f".repeat(64), ..p.clone() };
        assert!(
            matches!(
                s.begin_payment(&other, &work, p.created_at),
                Err(StoreError::Begin(BeginError::RequestConflict))
            ),
            "{request_id} with other content"
        );
    }
    let template = s.payments().unwrap().remove(0);
    let mut n = 0;
    // Quotes held by a payment: another request cannot pay them.
    for c in list(&claims["quote_use"]) {
        n += 1;
        let q = s.quote(text(&c["quote_id"])).unwrap().expect("a claimed quote is kept");
        let p = probe(&template, n, &q, None);
        let work = WorkItem::new(&p.payment_id, Task::Inquire, p.created_at, 0);
        let got = s.begin_payment(&p, &work, q.quote.expires_at - Duration::seconds(1));
        assert!(
            matches!(got, Err(StoreError::Begin(BeginError::QuoteUsed))),
            "quote {} held by {}: {got:?}",
            c["quote_id"],
            c["payment_id"]
        );
    }
    // Orders held by a payment: a new payment (on the unused quote) cannot pay them.
    let unused = s.quote(text(&m["unused_quotes"][0])).unwrap().expect("the unused quote");
    for c in list(&claims["orders"]) {
        n += 1;
        let p = probe(&template, n, &unused, Some(text(&c["order"]).to_owned()));
        let work = WorkItem::new(&p.payment_id, Task::Inquire, p.created_at, 0);
        let got = s.begin_payment(&p, &work, unused.quote.expires_at - Duration::seconds(1));
        assert!(
            matches!(got, Err(StoreError::Begin(BeginError::OrderPaid))),
            "order held by {}: {got:?}",
            c["payment_id"]
        );
    }
    // The acquirer's refund ids: a second refund under one is refused, naming the first.
    let refunds: Vec<RefundRecord> =
        list(&m["refunds"]).iter().map(|r| rec(&r["record"])).collect();
    assert_eq!(list(&claims["acquirer_refunds"]).len(), refunds.len());
    for c in list(&claims["acquirer_refunds"]) {
        let r = refunds.iter().find(|r| r.refund_id == text(&c["refund_id"])).unwrap();
        assert_eq!(
            (r.acquirer.as_str(), r.acquirer_refund_id.as_str()),
            (text(&c["acquirer"]), text(&c["acquirer_refund_id"]))
        );
        let p = s.payment(&r.payment_id).unwrap().unwrap();
        let again = RefundRecord { refund_id: "ref_migrationprobe".into(), ..r.clone() };
        let change = Change { refund: Some(again), ..Change::of(p.successor(p.updated_at)) };
        match s.apply(&change) {
            Err(StoreError::RefundExists(existing)) => assert_eq!(*existing, *r),
            other => panic!("refund {} again gave {other:?}", r.acquirer_refund_id),
        }
    }
    // A change from a stale copy is refused.
    let stale = Change::of(template.clone());
    assert!(matches!(s.apply(&stale), Err(StoreError::Stale(_))), "a stale change");
}

#[test]
fn a_first_release_folder_migrates_reopens_and_serves() {
    let m = manifest();
    let f = unpack();
    // First open: the migration, then every fact and claim.
    let first = phase(async {
        let s = SledStore::open(&f.db, CACHE).expect("the first release's folder opens");
        check_facts(&s, &m);
        check_claims(&s, &m);
        let snap = snapshot(&s, &m);
        s.flush().await.unwrap();
        snap
    });
    // Second open: the same, nothing migrated twice.
    phase(async {
        let s = SledStore::open(&f.db, CACHE).expect("the migrated folder opens again");
        check_facts(&s, &m);
        check_claims(&s, &m);
        assert_eq!(snapshot(&s, &m), first, "a second open finds what the first left");
    });

    // The daemon on the migrated folder: old payments over the partner API, a new one made.
    let db = f.db.clone();
    let end = time(&m["clock"]["end"]);
    phase(async move {
        let d = TestDaemon::start_with(Setup {
            manual_clock: true,
            start_at: Some(end + Duration::seconds(60)),
            webhooks: None,
            tweak: Box::new(move |c| c.storage.path = db),
        })
        .await;
        let demo = d.client("partner-demo");
        let other = d.client("partner-other");
        for e in list(&m["payments"]) {
            let c = if e["partner"] == "partner-demo" { &demo } else { &other };
            let id = text(&e["payment_id"]);
            let (s, got) = c.get(&format!("/v1/payments/{id}")).await;
            assert_eq!(s, StatusCode::OK, "{}: {got}", e["label"]);
            if e["api_status"] == "PROCESSING" {
                // The resolver may have settled it since the daemon started.
                assert_eq!(got["payment_id"], id);
                continue;
            }
            // Every field the release answered is answered the same.
            for (k, v) in e["api"].as_object().unwrap() {
                assert_eq!(&got[k], v, "{} over the API: {k}", e["label"]);
            }
            let (s, by_request) =
                c.get(&format!("/v1/payments?request_id={}", text(&e["request_id"]))).await;
            assert_eq!((s, &by_request), (StatusCode::OK, &got), "{} by request id", e["label"]);
            let (s, refunds) = c.get(&format!("/v1/payments/{id}/refunds")).await;
            assert_eq!(s, StatusCode::OK);
            for (k, v) in e["api_refunds"].as_object().unwrap() {
                assert_eq!(&refunds[k], v, "{} refunds over the API: {k}", e["label"]);
            }
        }
        // Partners still see only their own.
        let theirs = text(&payment_entry(&m, "succeeded_static")["payment_id"]);
        assert_error(&other.get(&format!("/v1/payments/{theirs}")).await, 404, "PAYMENT_NOT_FOUND");
        // A replayed request answers the old payment without paying again.
        let old = payment_entry(&m, "succeeded_static");
        let (s, again) =
            pay(&demo, text(&old["request_id"]), text(&old["quote_id"]), "payer-fixture").await;
        assert_eq!(s, StatusCode::OK, "{again}");
        assert_eq!(again["payment_id"], old["payment_id"]);
        // A new payment.
        let (s, p) = quote_and_pay(&demo, 12_300, "after-migration-1").await;
        assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("SUCCEEDED")), "{p}");
        let new_id = text(&p["payment_id"]).to_owned();
        let (s, got) = demo.get(&format!("/v1/payments/{new_id}")).await;
        assert_eq!((s, got["status"].as_str()), (StatusCode::OK, Some("SUCCEEDED")));
        assert!(d.daemon().store().payments().await.unwrap().len() > list(&m["payments"]).len());
        // The admin's audit chain still verifies, with the release's records in it.
        let (s, audit) = d.admin_client("admin").get("/admin/v1/audit").await;
        assert_eq!(s, StatusCode::OK, "{audit}");
        assert_eq!(audit["chain"]["ok"], true, "{audit}");
        assert_eq!(audit["chain"]["records"], m["audit"]["count"], "{audit}");
        d.finish().await;
    });
}

#[test]
fn the_migrated_store_carries_on_from_where_the_release_stopped() {
    let m = manifest();
    let f = unpack();
    let end = time(&m["clock"]["end"]);
    let written = phase(async {
        let s = SledStore::open(&f.db, CACHE).unwrap();
        let now = end + Duration::seconds(10);

        // Quote retention: an expired quote no payment holds (released after ACQUIRER_UNAVAILABLE)
        // goes; every held one stays; the sweep stops at the quote not expired yet.
        let unused = s.quote(text(&m["unused_quotes"][0])).unwrap().unwrap();
        let held: Vec<&str> =
            list(&m["claims"]["quote_use"]).iter().map(|c| text(&c["quote_id"])).collect();
        let loose: Vec<&str> = list(&m["quotes"])
            .iter()
            .map(|q| text(&q["quote_id"]))
            .filter(|q| !held.contains(q) && *q != unused.quote_id)
            .collect();
        assert!(!loose.is_empty(), "the fixture has a released quote");
        let purge = s.purge_quotes(None, unused.quote.expires_at, 1_000).unwrap();
        assert_eq!((purge.removed, purge.caught_up), (loose.len(), true), "{purge:?}");
        for q in &loose {
            assert!(s.quote(q).unwrap().is_none(), "{q} purged");
        }
        for q in &held {
            assert!(s.quote(q).unwrap().is_some(), "{q} kept");
        }
        assert!(s.quote(&unused.quote_id).unwrap().is_some());

        // An order released by a cancel may be paid again: a new payment on the unused quote.
        let released = text(&payment_entry(&m, "cancelled_order")["record"]["order"]).to_owned();
        let template = s.payments().unwrap().remove(0);
        let mut p = probe(&template, 1, &unused, Some(released.clone()));
        p.created_at = now;
        p.updated_at = now;
        let work = WorkItem::new(&p.payment_id, Task::Inquire, now, 0);
        let began = s.begin_payment(&p, &work, now).unwrap();
        assert!(matches!(began, Begin::Created), "{began:?}");
        // Now the quote and the order are held.
        let q2 = probe(&template, 2, &unused, None);
        assert!(matches!(
            s.begin_payment(&q2, &work, now),
            Err(StoreError::Begin(BeginError::QuoteUsed))
        ));
        assert_eq!(s.payment_by_request("partner-demo", &p.request_id).unwrap().as_ref(), Some(&p));
        assert_eq!(s.payments_made(now, now + Duration::seconds(1)).unwrap(), vec![p.clone()]);

        // A change with a journal entry and an event: sequenced after every migrated event,
        // running totals carried on from the migrated ones.
        let cny = |minor| Amount::from_minor(Currency::CNY, minor).unwrap();
        let entry = JournalEntry {
            v: RECORD_VERSION,
            payment_id: p.payment_id.clone(),
            kind: "payment".into(),
            at: now,
            postings: vec![
                Posting::new("fx_position:CNY".into(), cny(100)),
                Posting::new("acquirer_payable:sandbox".into(), cny(-100)),
            ],
        };
        let event = OutboxEvent {
            v: RECORD_VERSION,
            event_id: "evt_migrationprobe".into(),
            partner: p.partner.clone(),
            kind: "payment.succeeded".into(),
            payment_id: p.payment_id.clone(),
            created_at: now,
            data: json!({"probe": true, "amount": {"currency": "CNY", "value": "100"}}),
            replayed_at: None,
        };
        let done =
            PaymentRecord { state: PaymentState::Succeeded, booked: true, ..p.successor(now) };
        s.apply(&Change {
            payment: done.clone(),
            journal: Some(entry.clone()),
            events: vec![event.clone()],
            release_quote: false,
            work: Work::Done,
            refund: None,
        })
        .unwrap();
        assert_eq!(s.payment(&p.payment_id).unwrap().as_ref(), Some(&done));
        assert!(s.work_item(&p.payment_id).unwrap().is_none());
        let outbox = s.outbox().unwrap();
        let (last_seq, last) = outbox.last().unwrap().clone();
        assert_eq!(last, event);
        let migrated_max = list(&m["outbox"])
            .iter()
            .chain(list(&m["parked"]))
            .map(|e| e["seq"].as_u64().unwrap())
            .max()
            .unwrap();
        assert!(last_seq > migrated_max, "{last_seq} after {migrated_max}");
        assert_eq!(s.journal().unwrap().last(), Some(&entry));
        assert_eq!(s.journal_of(&p.payment_id).unwrap(), vec![entry.clone()]);
        let mut totals = manifest_totals(&m);
        *totals.get_mut(&(Currency::CNY, "fx_position:CNY".into())).unwrap() += 100;
        *totals.get_mut(&(Currency::CNY, "acquirer_payable:sandbox".into())).unwrap() -= 100;
        assert_eq!(s.account_totals().unwrap(), totals);
        assert!(s.ledger_sums().await.unwrap().values().all(|v| *v == 0));

        // Webhooks: a migrated event delivered, a migrated parked one put back in its old place,
        // the other parked one purged.
        let (seq0, first) = outbox[0].clone();
        let mark = DeliveredEvent {
            v: RECORD_VERSION,
            event: first.clone(),
            delivered_at: now,
            attempts: 4,
            skipped: false,
        };
        s.delivered(seq0, &mark).unwrap();
        let header = DeliveredEvent {
            event: OutboxEvent { data: Value::Null, ..mark.event.clone() },
            ..mark.clone()
        };
        assert_eq!(s.delivered_events().unwrap().last(), Some(&header));
        assert!(s.outbox().unwrap().iter().all(|(_, e)| e.event_id != first.event_id));
        let parked = s.parked().unwrap();
        assert_eq!(parked.len(), 2);
        let epoch = s.outbox_epoch();
        assert!(s.unpark(&parked[0].1.event.event_id, now).unwrap());
        assert_ne!(s.outbox_epoch(), epoch, "a replay changes the epoch");
        let outbox = s.outbox().unwrap();
        let back = OutboxEvent { replayed_at: Some(now), ..parked[0].1.event.clone() };
        assert_eq!(outbox[0], (parked[0].0, back), "back at its old place, first");
        assert_eq!(s.purge_parked(&[parked[0].0, parked[1].0]).unwrap(), 1);
        assert!(s.parked().unwrap().is_empty());
        assert!(!s.unpark(&parked[1].1.event.event_id, now).unwrap());

        // The audit chain goes on from the release's head.
        let (records, head) = s.audit_log().unwrap();
        let head = head.unwrap();
        let r = s
            .admin_commit(
                &AuditDraft {
                    at: now,
                    actor: "admin".into(),
                    action: "spreads.set".into(),
                    target: "spread:migration-probe".into(),
                    before: Value::Null,
                    after: json!("42"),
                },
                &[("probe/migration".into(), Some(b"probe".to_vec()))],
            )
            .unwrap();
        assert_eq!((r.seq, r.prev_hash.as_str()), (head.seq + 1, head.hash.as_str()));
        let (after, new_head) = s.audit_log().unwrap();
        assert_eq!(after.len(), records.len() + 1);
        assert_eq!(after[..records.len()], records[..]);
        let check = verify_chain(&after, new_head.as_ref());
        assert!(check.ok && check.records == after.len() as u64, "{check:?}");
        assert_eq!(
            s.settings("probe/").unwrap(),
            vec![("probe/migration".into(), b"probe".to_vec())]
        );

        s.flush().await.unwrap();
        snapshot(&s, &m)
    });
    // Another open finds all of it: the migration does not run again over what was written.
    phase(async {
        let s = SledStore::open(&f.db, CACHE).unwrap();
        assert_eq!(snapshot(&s, &m), written);
        assert!(s.parked().unwrap().is_empty());
        assert!(s.payment("pay_migrationprobe0001").unwrap().is_some());
    });
}

#[test]
fn the_first_release_writing_again_after_the_migration_is_refused_not_merged() {
    let u = unpack();
    let before = phase(async {
        let s = SledStore::open(&u.db, CACHE).unwrap();
        s.account_totals().unwrap()
    });
    // A rollback: the first release opens the folder and writes into its own trees again.
    {
        let db = sled::open(&u.db).unwrap();
        db.open_tree("payments").unwrap().insert(b"pay_rollback", &b"{}"[..]).unwrap();
        db.flush().unwrap();
    }
    let err = phase(async { SledStore::open(&u.db, CACHE).err() }).expect("refused");
    assert!(err.to_string().contains("rollback"), "{err}");
    // Nothing was merged: without the stray tree, the store reads as it did.
    {
        let db = sled::open(&u.db).unwrap();
        db.drop_tree("payments").unwrap();
        db.flush().unwrap();
    }
    let after = phase(async { SledStore::open(&u.db, CACHE).unwrap().account_totals().unwrap() });
    assert_eq!(after, before);
}
