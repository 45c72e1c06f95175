//! The partner calls most tests make: codes, quotes, payments.

use http::StatusCode;
use qrbridge_adapters::decode::tlv::{field, with_crc};
use serde_json::{json, Value};

use super::daemon::TestClient;

pub const UNIONPAY_ID: &str = "2504034400010344500034453110001";

/// An EMVCo code in CNY; dynamic when it carries an amount.
pub fn code(amount: Option<&str>) -> String {
    code_with(amount, &field(15, UNIONPAY_ID), "156")
}

pub fn code_with(amount: Option<&str>, account: &str, currency: &str) -> String {
    let mut body = field(0, "01") + &field(1, if amount.is_some() { "12" } else { "11" }) + account;
    body += &(field(52, "5812") + &field(53, currency));
    if let Some(a) = amount {
        body += &field(54, a);
    }
    body += &(field(58, "CN") + &field(59, "HANDAN NOODLE HOUSE") + &field(60, "HANDAN"));
    with_crc(&body)
}

pub fn cny(fen: i64) -> Value {
    json!({"currency": "CNY", "value": fen.to_string()})
}

pub async fn quote(
    c: &TestClient,
    code: &str,
    amount: Option<i64>,
    wallet: &str,
) -> (StatusCode, Value) {
    let mut body = json!({"code": code, "wallet_currency": wallet});
    if let Some(a) = amount {
        body["amount"] = cny(a);
    }
    c.post("/v1/quotes", &body).await
}

pub async fn pay(
    c: &TestClient,
    request_id: &str,
    quote_id: &str,
    payer: &str,
) -> (StatusCode, Value) {
    c.post(
        "/v1/payments",
        &json!({"request_id": request_id, "quote_id": quote_id, "payer": {"id": payer}}),
    )
    .await
}

/// Quotes CNY `fen` on a static code and pays it.
pub async fn quote_and_pay(c: &TestClient, fen: i64, request_id: &str) -> (StatusCode, Value) {
    let (s, q) = quote(c, &code(None), Some(fen), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    pay(c, request_id, q["quote_id"].as_str().unwrap(), "payer-1").await
}

/// The rate held for `pair` (`BASE/QUOTE`) in an admin rates answer (`GET /admin/v1/rates`), or
/// null.
pub fn held_rate(rates: &Value, pair: &str) -> Value {
    rates["rates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            format!("{}/{}", r["base"].as_str().unwrap(), r["quote"].as_str().unwrap()) == pair
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// Pays once per request id (CNY `fen`, `fen + 1`, …) on a daemon whose webhook endpoint
/// refuses each event at least once, waits until the endpoint has seen every payment, then moves
/// the manual clock past `webhooks.max_age_s` (three days) and waits, at most `wait`, until the
/// worker has parked them all. Returns the payment ids.
pub async fn pay_and_park(
    d: &super::daemon::TestDaemon,
    request_ids: &[&str],
    fen: i64,
    wait: std::time::Duration,
) -> Vec<String> {
    let c = d.client("partner-demo");
    let mut ids = Vec::new();
    for (i, request_id) in request_ids.iter().enumerate() {
        let (s, p) = quote_and_pay(&c, fen + i as i64, request_id).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        ids.push(p["payment_id"].as_str().unwrap().to_owned());
    }
    let hooks = d.hooks.as_ref().unwrap();
    hooks
        .wait_until(wait, |got| ids.iter().all(|id| got.iter().any(|r| &r.payment_id == id)))
        .await;
    let mut settled = d.daemon().engine.events_settled.subscribe();
    let before = *settled.borrow_and_update();
    d.clock.as_ref().unwrap().advance(chrono::Duration::days(4));
    d.daemon().engine.events_written.notify_one();
    let parked = settled.wait_for(|n| *n >= before + ids.len() as u64);
    tokio::time::timeout(wait, parked).await.expect("events parked").unwrap();
    ids
}
