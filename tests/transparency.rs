//! Price transparency (../shared/API.md, v1.1), end to end on the real daemon: a quote carries
//! `markup_bps` = `(price / mid − 1) × 10 000` rounded up to two places and `reference` = the mid
//! the price was built from, its source and its as-of time, for a direct pair (a rate an admin
//! set) and a cross pair (the built-in USD rates); the mid and source are the ones the admin API
//! lists; the payment made from the quote carries the same values in its answer, in `GET` and in
//! its webhook; and every answer holds the fields `docs/openapi.yaml` marks required.

mod support;

use std::time::Duration;

use http::StatusCode;
use qrbridge_fx::Decimal;
use rust_decimal::RoundingStrategy;
use serde_json::{json, Value};
use support::daemon::{Setup, TestClient, TestDaemon};
use support::flows::*;
use support::webhook::Mode;

/// A safety net for webhook delivery (the wait itself is on the endpoint's signal).
const WAIT: Duration = Duration::from_secs(30);

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).parse().unwrap()
}

fn millis(v: &Value) -> i64 {
    let text = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
}

/// The `required` list of schema `name` in `docs/openapi.yaml`.
fn required(name: &str) -> Vec<String> {
    let path = format!("{}/docs/openapi.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find(&format!("\n    {name}:\n")).unwrap_or_else(|| panic!("schema {name}"));
    let rest = &text[start..];
    let list = &rest[rest.find("      required: [").expect("a required list") + 17..];
    list[..list.find(']').unwrap()]
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect()
}

fn has_required(schema: &str, answer: &Value) {
    for field in required(schema) {
        assert!(answer.get(&field).is_some(), "{schema} answer without {field}: {answer}");
    }
}

/// The admin API's rate for `base/quote`: `(rate, source, as_of)`.
async fn listed(admin: &TestClient, base: &str, quote: &str) -> (Decimal, String, i64) {
    let (s, rates) = admin.get("/admin/v1/rates").await;
    assert_eq!(s, StatusCode::OK, "{rates}");
    let r = rates["rates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["base"] == base && r["quote"] == quote)
        .unwrap_or_else(|| panic!("{base}/{quote} not listed: {rates}"));
    (dec(&r["rate"]), r["source"].as_str().unwrap().to_owned(), millis(&r["as_of"]))
}

/// Checks the quote's markup against its price and mid as documented (`(price / mid − 1) ×
/// 10 000`, rounded up to two places); returns the markup and the unrounded value.
fn documented_markup(q: &Value) -> (Decimal, Decimal) {
    let (price, mid) = (dec(&q["rate"]["price"]), dec(&q["reference"]["rate"]));
    let exact = (price / mid - Decimal::ONE) * Decimal::from(10_000);
    let markup = exact.round_dp_with_strategy(2, RoundingStrategy::ToPositiveInfinity);
    assert_eq!(q["markup_bps"], json!(format!("{markup:.2}")), "{q}");
    assert_eq!(Some(markup), qrbridge_fx::rounding::markup_bps(mid, price));
    // The price is the mid plus a spread: never below it, nor above the 500 bps maximum by more
    // than the price's rounding.
    assert!(markup >= Decimal::ZERO && markup <= Decimal::new(50_001, 2), "{q}");
    (markup, exact)
}

/// Pays `q` and checks that the answer, `GET` and the list by request id carry its markup and
/// reference; returns the payment.
async fn pay_and_compare(c: &TestClient, q: &Value, request_id: &str) -> Value {
    let (s, p) = pay(c, request_id, q["quote_id"].as_str().unwrap(), "traveller-7").await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("SUCCEEDED")), "{p}");
    assert_eq!((&p["markup_bps"], &p["reference"]), (&q["markup_bps"], &q["reference"]), "{p}");
    has_required("Payment", &p);
    let id = p["payment_id"].as_str().unwrap();
    let (s, got) = c.get(&format!("/v1/payments/{id}")).await;
    assert_eq!((s, &got), (StatusCode::OK, &p));
    let (s, got) = c.get(&format!("/v1/payments?request_id={request_id}")).await;
    assert_eq!((s, &got), (StatusCode::OK, &p));
    p
}

on_both_stores! {
#[tokio::test]
async fn quotes_and_payments_show_the_markup_over_the_mid_they_came_from() {
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        webhooks: Some(Mode::Ack),
        tweak: Box::new(support::daemon::second_admin),
        ..Setup::default()
    })
    .await;
    let c = d.client("partner-demo");
    let admin = d.admin_client("admin");

    // A direct pair: CNY/KRW set by an admin (the built-in rates are all against USD). With no
    // rate held for the pair it is a proposal (dual control), approved by a second admin.
    let (s, set) = admin
        .post("/admin/v1/rates", &json!({"rates": [{"base": "CNY", "quote": "KRW", "rate": "195.5"}]}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{set}");
    support::daemon::approve_proposed(&d.pki(), d.daemon().admin_addr, &set).await;
    let (krw_rate, krw_source, krw_as_of) = listed(&admin, "CNY", "KRW").await;
    assert!(krw_source.starts_with("admin:"), "{krw_source}");
    let (s, direct) = quote(&c, &code(None), Some(2_372), "KRW").await;
    assert_eq!(s, StatusCode::CREATED, "{direct}");
    has_required("Quote", &direct);
    assert_eq!(dec(&direct["reference"]["rate"]), krw_rate, "{direct}");
    assert_eq!(direct["reference"]["source"], json!(krw_source), "{direct}");
    assert_eq!(millis(&direct["reference"]["as_of"]), krw_as_of, "{direct}");
    // 195.5 × (1 + spread / 10 000) needs no rounding at 8 places (spreads are whole hundredths
    // of a basis point): the markup is exactly the spread, nothing rounded.
    let (markup, exact) = documented_markup(&direct);
    assert_eq!(markup, exact, "{direct}");

    // A cross pair: CNY/PHP through USD, from the built-in USD/CNY and USD/PHP.
    let (usd_cny, cny_source, cny_as_of) = listed(&admin, "USD", "CNY").await;
    let (usd_php, php_source, php_as_of) = listed(&admin, "USD", "PHP").await;
    let (s, cross) = quote(&c, &code(None), Some(2_372), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{cross}");
    has_required("Quote", &cross);
    // The mid as the rate book derives it: 1 / (USD/CNY) × (USD/PHP), kept to 12 places.
    let mid = qrbridge_fx::rounding::mid((Decimal::ONE / usd_cny) * usd_php);
    assert_eq!(dec(&cross["reference"]["rate"]), mid, "{cross}");
    assert_eq!(cross["reference"]["source"], json!(format!("{cny_source}+{php_source}")));
    assert_eq!(cross["reference"]["source"], "builtin+builtin");
    assert_eq!(millis(&cross["reference"]["as_of"]), cny_as_of.min(php_as_of), "{cross}");
    // Here the price was rounded up: the markup sits a little above the exact spread.
    let (markup, exact) = documented_markup(&cross);
    assert!(markup > exact, "{cross}");

    // The payments made from them carry the same, and so do their webhooks.
    let paid = [
        pay_and_compare(&c, &direct, "transparency-direct").await,
        pay_and_compare(&c, &cross, "transparency-cross").await,
    ];
    let hooks = d.hooks.as_ref().unwrap();
    let ids: Vec<&str> = paid.iter().map(|p| p["payment_id"].as_str().unwrap()).collect();
    hooks
        .wait_until(WAIT, |got| {
            ids.iter().all(|id| got.iter().any(|r| r.acked && r.payment_id == *id))
        })
        .await;
    for p in &paid {
        let hook = hooks
            .acked()
            .into_iter()
            .find(|r| r.payment_id == p["payment_id"] && r.kind == "payment.succeeded")
            .expect("the payment's webhook");
        let data = &hook.body["data"];
        assert_eq!((&data["markup_bps"], &data["reference"]), (&p["markup_bps"], &p["reference"]));
        has_required("Payment", data);
    }
    d.finish().await;
}
}
