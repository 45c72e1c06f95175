//! The ops listener on the real daemon: after a known workload (N payments succeed, one is
//! declined, one stays in doubt) `/metrics` parses strictly as Prometheus text exposition and
//! shows exactly those counts and gauges (as deltas: the recorder is the process's); `/healthz`
//! answers; `/readyz` turns 503 naming the rates when the manual clock makes every rate stale, and
//! 200 again once an admin sets a fresh one. On both stores (on PostgreSQL the store probe is a
//! lease).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use qrbridge::model::PaymentState;
use qrbridge::store::Store;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::daemon::{Setup, TestDaemon};
use support::flows::quote_and_pay;

/// Successful payments in the workload.
const N: u64 = 3;

/// A plain-HTTP GET: status, content type and body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("an HTTP answer");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

async fn get_json(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let (s, ctype, body) = get(addr, path).await;
    assert_eq!(ctype, "application/json", "{path}");
    (s, serde_json::from_str(&body).expect("JSON"))
}

/// A sample's key: its name and its labels, sorted.
type Key = (String, BTreeMap<String, String>);

/// Parses Prometheus text exposition (format 0.0.4) strictly: every line is a comment, blank,
/// or a sample of a family whose `# TYPE` came before it, with well-formed labels and a number.
fn parse(text: &str) -> BTreeMap<Key, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().expect("TYPE name").to_owned();
                    let kind = words.next().expect("TYPE kind");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line}"
                    );
                    assert!(types.insert(name, kind.to_owned()).is_none(), "TYPE twice: {line}");
                }
                Some("HELP") => assert!(words.next().is_some(), "{line}"),
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "metric name in {line}"
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let (start, c) = chars.next().expect("labels close");
                if c == '}' {
                    break start + 1;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("label value closes").1 {
                        '"' => break,
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "label twice: {line}");
                match chars.peek().map(|(_, c)| *c) {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {}
                    _ => panic!("labels: {line}"),
                }
                if let Some(&(i, '}')) = chars.peek() {
                    break i + 1;
                }
            };
            rest = &body[end..];
        }
        let mut words = rest.strip_prefix(' ').expect("a space before the value").split(' ');
        let value = words.next().expect("value");
        assert!(
            ["NaN", "+Inf", "-Inf"].contains(&value)
                || Decimal::from_str(value).is_ok()
                || Decimal::from_scientific(value).is_ok(),
            "value in {line}"
        );
        if let Some(ts) = words.next() {
            ts.parse::<i64>().expect("timestamp");
        }
        assert!(words.next().is_none(), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                matches!(types.get(base).map(String::as_str), Some("histogram" | "summary"))
                    .then_some(base)
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "a sample before its TYPE: {line}");
        let key = (name.to_owned(), labels);
        assert!(samples.insert(key, value.to_owned()).is_none(), "sample twice: {line}");
    }
    samples
}

/// The integer value of sample `name{labels}`, 0 when absent.
fn value(m: &BTreeMap<Key, String>, name: &str, labels: &[(&str, &str)]) -> u64 {
    let key = (
        name.to_owned(),
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    );
    m.get(&key).map_or(0, |v| v.parse().unwrap_or_else(|_| panic!("{name}: {v} is no integer")))
}

async fn scrape(addr: SocketAddr) -> BTreeMap<Key, String> {
    let (s, ctype, body) = get(addr, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    parse(&body)
}

/// The recorder is the process's: the two stores' runs of the test take turns, so that each
/// sees only its own workload's deltas and gauges.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

on_both_stores! {
#[tokio::test]
async fn metrics_health_and_readiness_follow_a_known_workload() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let d = TestDaemon::start_with(Setup { manual_clock: true, ..Setup::default() }).await;
    let ops = d.daemon().ops_addr.expect("the ops listener is on");
    let c = d.client("partner-demo");

    let (s, v) = get_json(ops, "/healthz").await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    let (s, v) = get_json(ops, "/readyz").await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"ready": true})), "{v}");
    let (s, _) = get_json(ops, "/nowhere").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let before = scrape(ops).await;
    let settled_before = *d.daemon().engine.events_settled.borrow();

    // The workload: N approved, one declined (fen 51), one with no answer (fen 53).
    for i in 0..N {
        let (s, p) = quote_and_pay(&c, 1_000 + i as i64 * 100, &format!("ok-{i}")).await;
        assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("SUCCEEDED")), "{p}");
    }
    let (_, p) = quote_and_pay(&c, 1_051, "declined").await;
    assert_eq!(p["status"], "FAILED", "{p}");
    let (_, p) = quote_and_pay(&c, 1_053, "in-doubt").await;
    let doubtful = p["payment_id"].as_str().expect("a payment").to_owned();
    let stored = d.daemon().store().payment(&doubtful).await.unwrap().unwrap();
    assert_eq!(stored.state, PaymentState::Unknown);
    // Every final payment's event has left the outbox (no webhook URLs: recorded, not sent).
    let finals = N + 1;
    let mut settled = d.daemon().engine.events_settled.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        settled.wait_for(|n| *n >= settled_before + finals),
    )
    .await
    .expect("the events settle")
    .unwrap();

    let after = scrape(ops).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let partner = [("partner", "partner-demo")];
    let paid = |state| [partner[0], ("state", state)];
    assert_eq!(delta("qrbridge_payments_total", &paid("SUCCEEDED")), N);
    assert_eq!(delta("qrbridge_payments_total", &paid("FAILED")), 1);
    assert_eq!(delta("qrbridge_payments_total", &paid("CANCELLED")), 0);
    assert_eq!(
        delta("qrbridge_payment_duration_seconds_count", &[("state", "SUCCEEDED")]),
        N,
        "one duration per final payment"
    );
    let calls = |outcome| [("acquirer", "sandbox"), ("call", "send"), ("outcome", outcome)];
    assert_eq!(delta("qrbridge_acquirer_calls_total", &calls("answered")), N + 1);
    assert_eq!(delta("qrbridge_acquirer_calls_total", &calls("unknown")), 1);
    assert_eq!(delta("qrbridge_acquirer_calls_total", &calls("rejected")), 0);
    assert_eq!(
        delta(
            "qrbridge_acquirer_call_duration_seconds_count",
            &[("acquirer", "sandbox"), ("call", "send")]
        ),
        N + 2
    );
    // Gauges read from the store at scrape.
    assert_eq!(value(&after, "qrbridge_payments_in_doubt", &[]), 1);
    assert_eq!(value(&after, "qrbridge_resolver_backlog", &[("task", "inquire")]), 1);
    for task in ["reverse", "verify", "attention"] {
        assert_eq!(value(&after, "qrbridge_resolver_backlog", &[("task", task)]), 0, "{task}");
    }
    assert_eq!(value(&after, "qrbridge_outbox_events", &[]), 0);
    assert_eq!(value(&after, "qrbridge_webhook_parked", &[]), 0);
    let ages: Vec<_> =
        after.iter().filter(|((n, _), _)| n == "qrbridge_rate_age_seconds").collect();
    assert!(!ages.is_empty(), "rate ages are shown");
    for ((_, labels), age) in &ages {
        assert!(labels.contains_key("pair") && labels.contains_key("source"), "{labels:?}");
        assert_eq!(*age, "0", "the manual clock has not moved: {labels:?}");
    }

    // Every rate goes stale: not ready, and the reason says so.
    d.clock.as_ref().unwrap().advance(chrono::Duration::seconds(301));
    let (s, v) = get_json(ops, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["ready"], false);
    let reasons = v["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 1, "{v}");
    assert!(reasons[0].as_str().unwrap().starts_with("rates: "), "{v}");
    let stale = scrape(ops).await;
    assert!(
        stale
            .iter()
            .filter(|((n, _), _)| n == "qrbridge_rate_age_seconds")
            .all(|(_, age)| age.parse::<u64>().unwrap() >= 301),
        "rate ages follow the clock"
    );
    // /healthz does not care.
    assert_eq!(get_json(ops, "/healthz").await.0, StatusCode::OK);

    // An admin sets a rate (the one held, again): ready again.
    let admin = d.admin_client("admin");
    let (s, rates) = admin.get("/admin/v1/rates").await;
    assert_eq!(s, StatusCode::OK, "{rates}");
    let r = &rates["rates"][0];
    let (s, set) = admin
        .post(
            "/admin/v1/rates",
            &json!({"rates": [{"base": r["base"], "quote": r["quote"], "rate": r["rate"]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{set}");
    let (s, v) = get_json(ops, "/readyz").await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"ready": true})), "{v}");

    // The store stops taking writes (on PostgreSQL, another session holds the table the probe
    // writes): not ready, saying why; once it lets go, ready again. (sled's probe is a flush: a
    // disk that fails it cannot be made here.)
    if let Some(db) = &d.database {
        let (blocker, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        blocker.batch_execute("BEGIN; LOCK TABLE leases IN ACCESS EXCLUSIVE MODE").await.unwrap();
        let (s, v) = get_json(ops, "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        let reasons = v["reasons"].as_array().expect("reasons");
        assert!(
            reasons.iter().any(|r| r.as_str().unwrap().starts_with("store: not taking writes")),
            "{v}"
        );
        blocker.batch_execute("ROLLBACK").await.unwrap();
        let (s, v) = get_json(ops, "/readyz").await;
        assert_eq!((s, &v), (StatusCode::OK, &json!({"ready": true})), "{v}");
    }

    d.finish().await;
}
}
