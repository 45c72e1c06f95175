//! Treasury on the real daemon's admin listener:
//! - rate feeds: an ECB XML file, and a CSV served over real HTTPS, read again on request;
//! - rates and spreads set by hand (within bounds, new quotes only; dual control's steps at their
//!   widest, so each takes effect at once);
//! - positions and revenue from the ledger;
//! - the audit chain, which must catch tampering;
//! - the rate guard (issue 12, item 10): a rate from the future, from a feed or an admin, is
//!   refused and blocks nothing; a rate that moves too far is refused, feeds keep the old one, and
//!   an admin may force it, audited.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use qrbridge::model::{verify_chain, AuditDraft};
use qrbridge::store::SledStore;
use serde_json::{json, Value};
use support::daemon::{assert_error, Setup, TestDaemon};
use support::flows::{code, held_rate, pay, quote, quote_and_pay};

const ECB: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <gesmes:Sender><gesmes:name>European Central Bank</gesmes:name></gesmes:Sender>
  <Cube>
    <Cube time="2026-11-20">
      <Cube currency="USD" rate="1.0512"/>
      <Cube currency="JPY" rate="162.35"/>
      <Cube currency="CNY" rate="7.6123"/>
      <Cube currency="PHP" rate="61.842"/>
      <Cube currency="XDR" rate="0.79"/>
    </Cube>
  </Cube>
</gesmes:Envelope>
"#;

/// A loopback HTTPS server with its own PKI (`<dir>/ca.crt`), answering every GET with the
/// current body.
async fn feed_server(dir: &std::path::Path, body: Arc<Mutex<String>>) -> std::net::SocketAddr {
    qrbridge::pki::write_dev_pki(dir, &qrbridge::pki::Ca::new("feed CA").unwrap()).unwrap();
    // A public feed: server authentication only.
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            qrbridge::tls::load_certs(&dir.join("server.crt")).unwrap(),
            qrbridge::tls::load_key(&dir.join("server.key")).unwrap(),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop); // serves until the test ends
    let limits = qrbridge_adapters::https::ServeLimits {
        connections_max: 16,
        handshake_timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    tokio::spawn(qrbridge_adapters::https::serve(listener, tls, limits, rx, move |_req, _conn| {
        let text = body.lock().unwrap().clone();
        async move {
            Ok(http::Response::builder()
                .header("content-type", "text/csv")
                .body(Full::new(Bytes::from(text)))
                .unwrap())
        }
    }));
    addr
}

/// Dual control at its widest steps (10 000 bps): these tests are about the rate guard and
/// spreads themselves, so every change an admin makes here takes effect at once, as it did
/// before dual control (tests/dual_control.rs tests the proposals).
fn wide_steps() -> qrbridge_config::DualControl {
    qrbridge_config::DualControl {
        spread_step_bps: 10_000,
        rate_step_bps: 10_000,
        ..Default::default()
    }
}

/// `d` with [`wide_steps`] in force (as its configuration says too, for a reload).
fn with_wide_steps(d: TestDaemon) -> TestDaemon {
    d.daemon().treasury.set_dual_control(wide_steps());
    d
}

/// A daemon on a manual clock (2026-11-21 09:00 UTC) reading an ECB file holding `ecb` and the
/// CSV feed `served` over HTTPS (polled every `poll_s`), with its folder.
async fn with_feeds(
    ecb: &str,
    served: Arc<Mutex<String>>,
    poll_s: Option<u64>,
) -> (TestDaemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ecb_path = dir.path().join("eurofxref-daily.xml");
    std::fs::write(&ecb_path, ecb).unwrap();
    let feed_pki = dir.path().join("feed-pki");
    let feed = feed_server(&feed_pki, served).await;
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some(
            chrono::DateTime::parse_from_rfc3339("2026-11-21T09:00:00Z").unwrap().into(),
        ),
        tweak: Box::new(move |c| {
            c.risk.dual_control = wide_steps();
            c.fx.sources.push(qrbridge_config::RateSource {
                id: "ecb".into(),
                kind: qrbridge_config::RateSourceKind::EcbXml,
                location: Some(ecb_path.display().to_string()),
                poll_s: None,
                max_age_s: Some(172_800),
                ca: None,
            });
            c.fx.sources.push(qrbridge_config::RateSource {
                id: "treasury-csv".into(),
                kind: qrbridge_config::RateSourceKind::Csv,
                location: Some(format!("https://{feed}/mid.csv")),
                poll_s,
                max_age_s: Some(600),
                ca: Some(feed_pki.join("ca.crt")),
            });
        }),
        ..Setup::default()
    })
    .await;
    (with_wide_steps(d), dir)
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_come_from_feeds_and_admins_and_say_how_fresh_they_are() {
    let served = Arc::new(Mutex::new(
        "base,quote,rate,as_of\nUSD,CHF,0.8812,2026-11-21T08:55:00Z\n".to_owned(),
    ));
    let (d, _dir) = with_feeds(ECB, served.clone(), Some(3_600)).await;
    let admin = d.admin_client("admin");
    let rate = held_rate;

    // The ECB file is read at start.
    let (s, v) = admin.get("/admin/v1/rates").await;
    assert_eq!(s, StatusCode::OK);
    let php = rate(&v, "EUR/PHP");
    assert_eq!(
        (php["rate"].as_str(), php["source"].as_str()),
        (Some("61.842"), Some("ecb")),
        "{v}"
    );
    // Published 16:00 CET on the 20th = 15:00Z; 18 h old at 09:00Z on the 21st; fresh for 48 h.
    assert_eq!(
        (php["as_of"].as_str(), php["age_s"].as_i64(), php["fresh"].as_bool()),
        (Some("2026-11-20T15:00:00Z"), Some(64_800), Some(true))
    );
    let sources = v["sources"].as_array().unwrap();
    let ecb_status = sources.iter().find(|s| s["id"] == "ecb").unwrap();
    assert_eq!(
        (ecb_status["rates"].as_u64(), ecb_status["skipped"].as_u64()),
        (Some(4), Some(1)),
        "{ecb_status}"
    );

    // The CSV over HTTPS, read on request (the worker may have read it at start too).
    let (s, r) = admin.post("/admin/v1/rates/sources/treasury-csv/refresh", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["taken"], 1, "{r}");
    let (_, v) = admin.get("/admin/v1/rates").await;
    let chf = rate(&v, "USD/CHF");
    assert_eq!(
        (chf["rate"].as_str(), chf["source"].as_str(), chf["fresh"].as_bool()),
        (Some("0.8812"), Some("treasury-csv"), Some(true))
    );
    // Ten minutes on, past the source's 600 s limit: still listed, no longer fresh.
    d.clock.as_ref().unwrap().advance(chrono::Duration::minutes(10));
    let (_, v) = admin.get("/admin/v1/rates").await;
    assert_eq!(rate(&v, "USD/CHF")["fresh"], false);
    // A bad feed changes nothing and says which line.
    *served.lock().unwrap() = "base,quote,rate,as_of\nUSD,CHF,0.90,2026-11-21T09:05:00Z\nUSD,CHF,zero,2026-11-21T09:05:00Z\n".into();
    assert_error(
        &admin.post("/admin/v1/rates/sources/treasury-csv/refresh", &json!({})).await,
        502,
        "RATE_SOURCE_FAILED",
    );
    let (_, v) = admin.get("/admin/v1/rates").await;
    assert_eq!(rate(&v, "USD/CHF")["rate"], "0.8812");
    let csv_status = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "treasury-csv")
        .unwrap()
        .clone();
    assert!(csv_status["last_error"].as_str().unwrap().contains("line 3"), "{csv_status}");

    // Rates by hand: all or none, kept as admin:<identity>, in the audit log.
    let (s, e) = admin.post("/admin/v1/rates", &json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "58.00"}, {"base": "USD", "quote": "KRW", "rate": "-1"}]})).await;
    assert_error(&(s, e), 422, "INVALID_RATE");
    let (s, set) = admin
        .post(
            "/admin/v1/rates",
            &json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "58.00"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{set}");
    assert_eq!(set["rates"][0]["taken"], true);
    let (s, set) = admin
        .send_raw(
            Method::POST,
            "/admin/v1/rates",
            "text/csv",
            b"base,quote,rate,as_of\nUSD,KRW,1391.5,2026-11-21T07:59:00Z\n".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&set));
    let (_, v) = admin.get("/admin/v1/rates").await;
    assert_eq!(rate(&v, "USD/PHP")["source"], "admin:admin");
    assert_eq!(rate(&v, "USD/PHP")["rate"], "58.00");
    let (s, bad_csv) = admin
        .send_raw(
            Method::POST,
            "/admin/v1/rates",
            "text/csv",
            b"base,quote,rate,as_of\nUSD,XAU,1,2026-11-21T07:59:00Z\n".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        String::from_utf8_lossy(&bad_csv).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&bad_csv)
    );
    assert_error(
        &admin.post("/admin/v1/rates/sources/nope/refresh", &json!({})).await,
        404,
        "RATE_SOURCE_NOT_FOUND",
    );
    let partner = support::daemon::TestClient::new(
        &d.pki(),
        Some("partner-demo"),
        d.daemon().admin_addr,
        false,
    );
    assert_error(&partner.get("/admin/v1/rates").await, 403, "FORBIDDEN");
    let (_, audit) = admin.get("/admin/v1/audit").await;
    let rec = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "rates.set")
        .unwrap()
        .clone();
    assert_eq!(rec["actor"], "admin");
    assert_eq!(rec["after"][0]["rate"], "58.00");
    assert_eq!(rec["before"][0]["source"], "builtin");
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_from_the_future_or_moving_too_far_are_refused() {
    // The ECB file of a day that has not come yet (a source with a wrong clock).
    let served = Arc::new(Mutex::new(
        "base,quote,rate,as_of\nUSD,CHF,0.8812,2026-11-22T09:00:00Z\n".to_owned(),
    ));
    let (d, _dir) =
        with_feeds(&ECB.replace("2026-11-20", "2026-11-22"), served.clone(), None).await;
    let admin = d.admin_client("admin");
    let rates = || async { admin.get("/admin/v1/rates").await.1 };
    let source = |v: &Value, id: &str| -> Value {
        v["sources"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap().clone()
    };

    // The ECB read at start: every rate from tomorrow refused, none held, and the status says why.
    let v = rates().await;
    assert_eq!(held_rate(&v, "EUR/PHP"), Value::Null, "{v}");
    let ecb_status = source(&v, "ecb");
    assert_eq!(ecb_status["rates"], 0, "{ecb_status}");
    assert_eq!(ecb_status["refused"].as_array().unwrap().len(), 4, "{ecb_status}");
    assert!(ecb_status["refused"][0].as_str().unwrap().contains("later than now"), "{ecb_status}");

    // The CSV feed from tomorrow: refused, and it does not block today's rate.
    let refresh = "/admin/v1/rates/sources/treasury-csv/refresh";
    let (s, r) = admin.post(refresh, &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["taken"], 0, "{r}");
    assert!(r["refused"][0].as_str().unwrap().contains("USD/CHF"), "{r}");
    *served.lock().unwrap() = "base,quote,rate,as_of\nUSD,CHF,0.8812,2026-11-21T08:59:00Z\n".into();
    let (_, r) = admin.post(refresh, &json!({})).await;
    assert_eq!(
        (r["taken"].as_u64(), r["refused"].as_array().map(Vec::len)),
        (Some(1), Some(0)),
        "{r}"
    );
    assert_eq!(held_rate(&rates().await, "USD/CHF")["rate"], "0.8812");

    // A jump of 13.5 % (over the default 1000 bps): refused, the old rate kept, to go stale.
    *served.lock().unwrap() = "base,quote,rate,as_of\nUSD,CHF,1.0000,2026-11-21T09:01:00Z\n".into();
    let (_, r) = admin.post(refresh, &json!({})).await;
    assert_eq!(r["taken"], 0, "{r}");
    assert!(r["refused"][0].as_str().unwrap().contains("moves 1348.16 bps"), "{r}");
    let v = rates().await;
    assert_eq!(held_rate(&v, "USD/CHF")["rate"], "0.8812");
    assert_eq!(source(&v, "treasury-csv")["refused"], r["refused"]);
    d.clock.as_ref().unwrap().advance(chrono::Duration::minutes(10));
    assert_eq!(held_rate(&rates().await, "USD/CHF")["fresh"], false);

    // Admins: a rate from the future is refused; one within the allowed skew is taken.
    let set = |body: Value| {
        let admin = admin.clone();
        async move { admin.post("/admin/v1/rates", &body).await }
    };
    let (s, e) = set(json!({"rates": [{"base": "USD", "quote": "KRW", "rate": "1391", "as_of": "2026-11-21T10:00:00Z"}]})).await;
    assert_error(&(s, e.clone()), 422, "RATE_FROM_FUTURE");
    assert!(e["error"]["message"].as_str().unwrap().contains("rates[0]"), "{e}");
    let (s, ok) = set(json!({"rates": [{"base": "USD", "quote": "KRW", "rate": "1391", "as_of": "2026-11-21T09:12:00Z"}]})).await;
    assert_eq!((s, ok["rates"][0]["taken"].as_bool()), (StatusCode::OK, Some(true)), "{ok}");
    let (s, e) = admin
        .send_raw(
            Method::POST,
            "/admin/v1/rates",
            "text/csv",
            b"base,quote,rate,as_of\nUSD,THB,34.2,2026-11-22T09:00:00Z\n".to_vec(),
        )
        .await
        .into_json();
    assert_error(&(s, e), 422, "RATE_FROM_FUTURE");

    // A move of 20.9 %: refused unless forced; forced, it is taken and audited as such.
    let (s, e) = set(json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "70"}]})).await;
    assert_error(&(s, e.clone()), 422, "RATE_MOVE_TOO_LARGE");
    assert!(e["error"]["message"].as_str().unwrap().contains("force"), "{e}");
    assert_eq!(held_rate(&rates().await, "USD/PHP")["rate"], "57.90");
    let (s, forced) =
        set(json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "70"}], "force": true})).await;
    assert_eq!(
        (s, forced["rates"][0]["taken"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{forced}"
    );
    assert_eq!(held_rate(&rates().await, "USD/PHP")["rate"], "70");
    let (_, audit) = admin.get("/admin/v1/audit").await;
    let rec = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "rates.force")
        .unwrap()
        .clone();
    assert_eq!(rec["after"]["forced"][0]["pair"], "USD/PHP", "{rec}");
    assert_eq!(rec["after"]["forced"][0]["move_bps"], "2089.81", "{rec}");
    assert_eq!(rec["before"][0]["rate"], "57.90", "{rec}");
    // The same for a CSV upload, forced with ?force=true.
    let csv = b"base,quote,rate,as_of\nUSD,PHP,90,2026-11-21T09:10:00Z\n".to_vec();
    let (s, e) =
        admin.send_raw(Method::POST, "/admin/v1/rates", "text/csv", csv.clone()).await.into_json();
    assert_error(&(s, e), 422, "RATE_MOVE_TOO_LARGE");
    let (s, e) = admin
        .send_raw(Method::POST, "/admin/v1/rates?force=yes", "text/csv", csv.clone())
        .await
        .into_json();
    assert_error(&(s, e), 400, "INVALID_REQUEST");
    let (s, ok) = admin
        .send_raw(Method::POST, "/admin/v1/rates?force=true", "text/csv", csv)
        .await
        .into_json();
    assert_eq!((s, ok["rates"][0]["taken"].as_bool()), (StatusCode::OK, Some(true)), "{ok}");
    assert!(audit_chain_ok(&admin).await);
    d.finish().await;
}
}

async fn audit_chain_ok(admin: &support::daemon::TestClient) -> bool {
    admin.get("/admin/v1/audit").await.1["chain"]["ok"] == true
}

on_both_stores! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_change_prices_new_quotes_only_within_bounds() {
    let d = with_wide_steps(
        TestDaemon::start_with(Setup {
            tweak: Box::new(|c| c.risk.dual_control = wide_steps()),
            ..Setup::default()
        })
        .await,
    );
    let c = d.client("partner-demo");
    let admin = d.admin_client("admin");
    let (s, before) = quote(&c, &code(None), Some(10_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{before}");

    assert_error(
        &admin
            .send_raw(
                Method::PUT,
                "/admin/v1/spreads",
                "application/json",
                br#"{"bps": "501"}"#.to_vec(),
            )
            .await
            .into_json(),
        422,
        "SPREAD_OUT_OF_BOUNDS",
    );
    let (s, set) = admin
        .send_raw(
            Method::PUT,
            "/admin/v1/spreads",
            "application/json",
            br#"{"partner": "partner-demo", "pair": "CNY/PHP", "bps": "300"}"#.to_vec(),
        )
        .await
        .into_json();
    assert_eq!(s, StatusCode::OK, "{set}");
    assert_eq!(
        set["overrides"],
        json!([{"partner": "partner-demo", "pair": "CNY/PHP", "bps": "300"}])
    );

    let (_, after) = quote(&c, &code(None), Some(10_000), "PHP").await;
    let wallet = |q: &Value| q["wallet_amount"]["value"].as_str().unwrap().parse::<i64>().unwrap();
    assert!(wallet(&after) > wallet(&before), "{before} {after}");
    // The quote issued before the change keeps its price when paid.
    let (s, p) = pay(&c, "spread-old", before["quote_id"].as_str().unwrap(), "u").await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["wallet_amount"], before["wallet_amount"]);
    // Another partner is not affected.
    let (_, other) = quote(&d.client("partner-other"), &code(None), Some(10_000), "PHP").await;
    assert_eq!(other["rate"]["price"], before["rate"]["price"]);

    // Removing the override brings the default back; the audit log has both changes.
    let (s, _) = admin
        .send_raw(
            Method::PUT,
            "/admin/v1/spreads",
            "application/json",
            br#"{"partner": "partner-demo", "pair": "CNY/PHP", "bps": null}"#.to_vec(),
        )
        .await
        .into_json();
    assert_eq!(s, StatusCode::OK);
    let (_, again) = quote(&c, &code(None), Some(10_000), "PHP").await;
    assert_eq!(again["rate"]["price"], before["rate"]["price"]);
    let (_, audit) = admin.get("/admin/v1/audit").await;
    let spreads: Vec<(Value, Value)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "spreads.set")
        .map(|r| (r["before"].clone(), r["after"].clone()))
        .collect();
    assert_eq!(spreads, vec![(Value::Null, json!("300")), (json!("300"), Value::Null)]);
    assert_eq!(audit["chain"], json!({"ok": true, "records": 2}));

    // Positions and revenue come from the ledger: one payment so far.
    let (_, p2) = quote_and_pay(&c, 20_000, "pos-2").await;
    let (_, pos) = admin.get("/admin/v1/positions").await;
    let line = |cur: &str| {
        pos["positions"].as_array().unwrap().iter().find(|p| p["currency"] == cur).unwrap().clone()
    };
    let php = line("PHP");
    let paid = |p: &Value| p["wallet_amount"]["value"].as_str().unwrap().parse::<i64>().unwrap();
    assert_eq!(
        php["partners_owe"]["value"].as_str().unwrap().parse::<i64>().unwrap(),
        paid(&p) + paid(&p2)
    );
    assert_eq!(line("CNY")["we_owe_acquirers"]["value"], "30000");
    assert_eq!(line("CNY")["net_position"]["value"], "-30000");
    let (_, rev) = admin.get("/admin/v1/revenue").await;
    let lines = rev["revenue"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{rev}");
    assert_eq!(
        (lines[0]["partner"].as_str(), lines[0]["pair"].as_str(), lines[0]["entries"].as_u64()),
        (Some("partner-demo"), Some("CNY/PHP"), Some(2))
    );
    assert_eq!(lines[0]["revenue"], php["spread_revenue"]);
    d.finish().await;
}
}

/// Each phase on a runtime of its own, so that the store's flusher (and sled's lock on the
/// folder) is gone before the next opens it.
fn phase<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(work)
}

/// The chain as the store at `path` holds it, verified.
fn chain(path: &std::path::Path) -> qrbridge::model::ChainCheck {
    phase(async {
        let store = SledStore::open(path, 1 << 20).unwrap();
        let (records, head) = store.audit_log().unwrap();
        verify_chain(&records, head.as_ref())
    })
}

#[test]
fn the_audit_chain_catches_an_edited_or_missing_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    phase(async {
        let store = SledStore::open(&path, 1 << 20).unwrap();
        for i in 1..=3 {
            let draft = AuditDraft {
                at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(20_000 + i),
                actor: "admin".into(),
                action: "spreads.set".into(),
                target: "spread:*:*".into(),
                before: json!(i - 1),
                after: json!(i),
            };
            store.admin_commit(&draft, &[("spreads".into(), Some(b"[]".to_vec()))]).unwrap();
        }
        store.flush().await.unwrap();
        let (records, head) = store.audit_log().unwrap();
        assert!(verify_chain(&records, head.as_ref()).ok);
    });
    // Edit record 2 behind the store's back.
    {
        let db = sled::open(&path).unwrap();
        let audit = db.open_tree("audit").unwrap();
        let stored = audit.get(2u64.to_be_bytes()).unwrap().unwrap();
        let mut v: qrbridge::model::AuditRecord =
            qrbridge::store::codec::decode("audit", &stored).unwrap();
        v.after = json!(20);
        audit.insert(2u64.to_be_bytes(), qrbridge::store::codec::encode(&v)).unwrap();
        db.flush().unwrap();
    }
    let check = chain(&path);
    assert_eq!((check.ok, check.broken_at), (false, Some(2)), "{check:?}");
    // Remove the last record: the chain head no longer matches.
    {
        let db = sled::open(&path).unwrap();
        let audit = db.open_tree("audit").unwrap();
        audit.remove(3u64.to_be_bytes()).unwrap();
        audit.remove(2u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let check = chain(&path);
    assert_eq!((check.ok, check.broken_at), (false, Some(2)), "{check:?}");
    assert!(check.reason.unwrap().contains("chain head"));
}

trait IntoJson {
    fn into_json(self) -> (StatusCode, Value);
}

impl IntoJson for (StatusCode, Bytes) {
    fn into_json(self) -> (StatusCode, Value) {
        (self.0, serde_json::from_slice(&self.1).unwrap_or(Value::Null))
    }
}
