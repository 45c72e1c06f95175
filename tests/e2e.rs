//! End-to-end: the real daemon in-process with real mTLS on loopback and the real sandbox
//! acquirer, driven over HTTP/2 and HTTP/1.1 by an mTLS client. Proves the whole flow for static,
//! dynamic and URL codes; every error code of ../shared/API.md; replay and conflict; the
//! concurrent duplicate storm (one instruction, identical answers); partner isolation; refused
//! certificates; a timed-out instruction staying PROCESSING; cancel; and, after each test, that
//! the ledger balances in every currency.

mod support;

use http::{Method, StatusCode};
use qrbridge::store::Store;
use qrbridge_adapters::decode::tlv::field;
use serde_json::{json, Value};
use support::daemon::{assert_error, client_config, Setup, TestClient, TestDaemon};
use support::flows::*;

on_both_stores! {
#[tokio::test]
async fn dynamic_code_decode_quote_pay() {
    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");
    let dynamic = code(Some("23.72"));
    let (s, dec) = c.post("/v1/codes/decode", &json!({"code": dynamic})).await;
    assert_eq!(s, StatusCode::OK, "{dec}");
    assert_eq!(dec["scheme"], "EMVCO");
    assert_eq!(dec["code_type"], "DYNAMIC");
    assert_eq!(dec["amount"], cny(2372));
    assert_eq!(dec["acquirer"], "sandbox");
    assert_eq!(dec["merchant"]["id"], "500034453110001");

    let (s, q) = quote(&c, &dynamic, None, "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    assert_eq!(q["pay_amount"], cny(2372));
    assert_eq!(q["rate"]["pair"], "CNY/PHP");
    assert_eq!(q["wallet_amount"]["currency"], "PHP");
    // wallet = pay × price, rounded up to the centavo.
    let price: rust_decimal::Decimal = q["rate"]["price"].as_str().unwrap().parse().unwrap();
    let exact = rust_decimal::Decimal::new(2372, 2) * price;
    let wallet: i64 = q["wallet_amount"]["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        rust_decimal::Decimal::new(wallet, 2),
        exact.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::ToPositiveInfinity)
    );
    assert!(q["expires_at"].as_str().unwrap().ends_with('Z'));

    let (s, p) = pay(&c, "order-1", q["quote_id"].as_str().unwrap(), "traveller-42").await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["status"], "SUCCEEDED");
    assert_eq!(p["wallet_amount"], q["wallet_amount"]);
    assert_eq!(p["failure"], Value::Null);
    let id = p["payment_id"].as_str().unwrap();
    assert_eq!(d.daemon().sandbox.as_ref().unwrap().received(id), 1);

    let (s, got) = c.get(&format!("/v1/payments/{id}")).await;
    assert_eq!((s, &got), (StatusCode::OK, &p));
    let (s, got) = c.get("/v1/payments?request_id=order-1").await;
    assert_eq!((s, &got), (StatusCode::OK, &p));
    let (s, refunds) = c.get(&format!("/v1/payments/{id}/refunds")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(refunds["refunds"], json!([]));
    assert!(!d.daemon().store().journal().await.unwrap().is_empty());
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn static_and_url_codes_over_http1() {
    let d = TestDaemon::start().await;
    let c = TestClient::new(&d.pki(), Some("partner-demo"), d.addr(), true);
    let (s, p) = quote_and_pay(&c, 10_000, "static-1").await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("SUCCEEDED")), "{p}");

    // A URL code: the merchant comes from the acquirer's lookup.
    let alipay = "https://qr.alipay.com/fkx01584it3usfwqchi4tde";
    let (s, dec) = c.post("/v1/codes/decode", &json!({"code": alipay})).await;
    assert_eq!(s, StatusCode::OK, "{dec}");
    assert_eq!(dec["scheme"], "ALIPAY");
    assert_eq!(dec["merchant"]["city"], "Handan");
    let (s, q) = quote(&c, alipay, Some(1_500), "KRW").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    assert_eq!(q["wallet_amount"]["currency"], "KRW");
    let (s, p) = pay(&c, "alipay-1", q["quote_id"].as_str().unwrap(), "u").await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("SUCCEEDED")), "{p}");
    // An order code carries its amount (CNY 88.00 in the sandbox).
    let (s, q) = quote(&c, "https://qr.alipay.com/bax07651xvtprxfkmxyf00a9", None, "THB").await;
    assert_eq!((s, &q["pay_amount"]), (StatusCode::CREATED, &cny(8_800)), "{q}");
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn replay_returns_the_same_payment_and_conflict_is_refused() {
    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");
    let (s, q) = quote(&c, &code(None), Some(4_200), "PHP").await;
    assert_eq!(s, StatusCode::CREATED);
    let qid = q["quote_id"].as_str().unwrap();
    let first = pay(&c, "r-1", qid, "payer").await;
    assert_eq!(first.0, StatusCode::CREATED);
    let again = pay(&c, "r-1", qid, "payer").await;
    assert_eq!(again, (StatusCode::OK, first.1.clone()));
    assert_error(&pay(&c, "r-1", qid, "another-payer").await, 409, "REPEAT_REQ_INCONSISTENT");
    assert_error(&pay(&c, "r-2", qid, "payer").await, 409, "QUOTE_ALREADY_USED");
    let id = first.1["payment_id"].as_str().unwrap();
    assert_eq!(d.daemon().sandbox.as_ref().unwrap().received(id), 1);
    assert_eq!(d.daemon().sandbox.as_ref().unwrap().all_received().len(), 1);
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn a_storm_of_identical_requests_pays_once() {
    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");
    let (_, q) = quote(&c, &code(None), Some(77_700), "KRW").await;
    let qid = q["quote_id"].as_str().unwrap().to_owned();
    let body = json!({"request_id": "storm", "quote_id": qid, "payer": {"id": "p"}});
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let c = c.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move { c.post("/v1/payments", &body).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    let replayed = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(
        (created, replayed),
        (1, 99),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let first = &answers[0].1;
    assert_eq!(first["status"], "SUCCEEDED");
    assert!(answers.iter().all(|(_, b)| b == first), "answers differ");
    let sandbox = d.daemon().sandbox.as_ref().unwrap();
    assert_eq!(sandbox.all_received(), vec![first["payment_id"].as_str().unwrap().to_owned()]);
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn partners_see_only_their_own_payments() {
    let d = TestDaemon::start().await;
    let demo = d.client("partner-demo");
    let other = d.client("partner-other");
    let (_, p) = quote_and_pay(&demo, 1_000, "mine").await;
    let id = p["payment_id"].as_str().unwrap();
    assert_error(&other.get(&format!("/v1/payments/{id}")).await, 404, "PAYMENT_NOT_FOUND");
    assert_error(
        &other.post(&format!("/v1/payments/{id}/cancel"), &json!({})).await,
        404,
        "PAYMENT_NOT_FOUND",
    );
    assert_error(&other.get(&format!("/v1/payments/{id}/refunds")).await, 404, "PAYMENT_NOT_FOUND");
    assert_error(&other.get("/v1/payments?request_id=mine").await, 404, "PAYMENT_NOT_FOUND");
    // Nor pay its quote.
    let (_, q) = quote(&demo, &code(None), Some(500), "KRW").await;
    assert_error(
        &pay(&other, "steal", q["quote_id"].as_str().unwrap(), "x").await,
        404,
        "QUOTE_NOT_FOUND",
    );
    let (s, still) = demo.get(&format!("/v1/payments/{id}")).await;
    assert_eq!((s, still["status"].as_str()), (StatusCode::OK, Some("SUCCEEDED")));
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn certificates_that_do_not_identify_a_partner_are_refused() {
    let d = TestDaemon::start().await;
    // No client certificate at all.
    let none = TestClient::new(&d.pki(), None, d.addr(), false);
    assert!(none.try_send(Method::GET, "/v1/payments/x", None).await.is_err());
    // One from another CA.
    let wrong = qrbridge::pki::Ca::new("wrong CA").unwrap();
    let issued = wrong.issue("partner-demo", qrbridge::pki::Usage::Client, false).unwrap();
    qrbridge::pki::write_issued(&d.pki(), "wrong-ca-demo", &issued).unwrap();
    let c = d.client("wrong-ca-demo");
    assert!(c.try_send(Method::GET, "/v1/payments/x", None).await.is_err());
    // An expired one from the right CA.
    d.issue_client("expired-demo", true);
    assert!(d.client("expired-demo").try_send(Method::GET, "/v1/payments/x", None).await.is_err());
    // A valid one naming nobody we know.
    d.issue_client("partner-unknown", false);
    assert_error(
        &d.client("partner-unknown").get("/v1/payments/x").await,
        403,
        "CLIENT_NOT_RECOGNISED",
    );
    // The partners' own still work.
    assert_error(&d.client("partner-demo").get("/v1/payments/x").await, 404, "PAYMENT_NOT_FOUND");
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn post_quantum_key_exchange_is_negotiated() {
    let d = TestDaemon::start().await;
    let tls = std::sync::Arc::new(client_config(&d.pki(), Some("partner-demo")));
    let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    let group = stream.get_ref().1.negotiated_key_exchange_group().unwrap().name();
    assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn acquirer_outcomes() {
    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");
    let sandbox = || d.daemon().sandbox.as_ref().unwrap();
    // Declined.
    let (s, p) = quote_and_pay(&c, 1_051, "declined").await;
    assert_eq!(
        (s, p["status"].as_str(), p["failure"]["code"].as_str()),
        (StatusCode::CREATED, Some("FAILED"), Some("DECLINED")),
        "{p}"
    );
    // No answer within the timeout: PROCESSING, never FAILED.
    let (s, p) = quote_and_pay(&c, 1_052, "slow").await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("PROCESSING")), "{p}");
    let id = p["payment_id"].as_str().unwrap().to_owned();
    let (_, again) = c.get(&format!("/v1/payments/{id}")).await;
    assert_eq!(again["status"], "PROCESSING");
    assert_eq!(sandbox().received(&id), 1);
    // Approved then hangs; 5xx; reset: all unknown.
    for (fen, rid) in [(1_053, "hang"), (1_054, "5xx"), (1_055, "reset")] {
        let (s, p) = quote_and_pay(&c, fen, rid).await;
        assert_eq!(
            (s, p["status"].as_str()),
            (StatusCode::CREATED, Some("PROCESSING")),
            "{rid}: {p}"
        );
        assert!(sandbox().received(p["payment_id"].as_str().unwrap()) >= 1, "{rid}");
    }
    // Replaying the timed-out request answers its current state without a second instruction.
    let (_, q) = (StatusCode::OK, p_quote(&c, &id).await);
    let (s, p) = pay(&c, "slow", &q, "payer-1").await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::OK, Some("PROCESSING")), "{p}");
    assert_eq!(sandbox().received(&id), 1);
    d.finish().await;
}
}

async fn p_quote(c: &TestClient, payment_id: &str) -> String {
    c.get(&format!("/v1/payments/{payment_id}")).await.1["quote_id"].as_str().unwrap().to_owned()
}

on_both_stores! {
#[tokio::test]
async fn unreachable_acquirer_fails_and_frees_the_quote() {
    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");
    let dead =
        code_with(None, &field(26, &(field(0, "TEST.DEAD.ACQUIRER") + &field(1, "M-1"))), "156");
    let (s, q) = quote(&c, &dead, Some(2_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    assert_eq!(q["acquirer"], "dead");
    let qid = q["quote_id"].as_str().unwrap();
    let (s, p) = pay(&c, "dead-1", qid, "u").await;
    assert_eq!(
        (s, p["status"].as_str(), p["failure"]["code"].as_str()),
        (StatusCode::CREATED, Some("FAILED"), Some("ACQUIRER_UNAVAILABLE")),
        "{p}"
    );
    // The quote may be paid again under a new request id.
    let (s, p2) = pay(&c, "dead-2", qid, "u").await;
    assert_eq!(s, StatusCode::CREATED, "{p2}");
    assert_ne!(p2["payment_id"], p["payment_id"]);
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn cancel_reverses_a_payment_and_is_idempotent() {
    let d = TestDaemon::start_with(Setup { manual_clock: true, ..Setup::default() }).await;
    let c = d.client("partner-demo");
    let (_, p) = quote_and_pay(&c, 3_000, "to-cancel").await;
    let id = p["payment_id"].as_str().unwrap();
    let (s, cancelled) = c.post(&format!("/v1/payments/{id}/cancel"), &json!({})).await;
    assert_eq!(
        (s, cancelled["status"].as_str()),
        (StatusCode::OK, Some("CANCELLED")),
        "{cancelled}"
    );
    let (s, again) = c.post(&format!("/v1/payments/{id}/cancel"), &json!({})).await;
    assert_eq!((s, &again), (StatusCode::OK, &cancelled));
    assert_eq!(d.daemon().sandbox.as_ref().unwrap().reversals(), vec![id.to_owned()]);
    // The booking and its reversal both posted.
    assert_eq!(d.daemon().store().journal().await.unwrap().len(), 2);
    // Past 00:30 Shanghai on the next day: too late.
    let (_, late) = quote_and_pay(&c, 3_100, "too-late").await;
    d.clock.as_ref().unwrap().advance(chrono::Duration::days(2));
    let late_id = late["payment_id"].as_str().unwrap();
    assert_error(
        &c.post(&format!("/v1/payments/{late_id}/cancel"), &json!({})).await,
        409,
        "CANCEL_WINDOW_CLOSED",
    );
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn every_error_code_is_reachable() {
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: None,
        webhooks: None,
        tweak: Box::new(|c| {
            c.limits.body_bytes_max = 2_048;
            c.partners[1].limits.requests_per_s = 1;
            c.partners[1].limits.burst = 3;
        }),
    })
    .await;
    let c = d.client("partner-demo");
    let static_code = code(None);
    // INVALID_REQUEST: not JSON, a missing field, a field of the wrong type.
    assert_error(&c.post_raw("/v1/quotes", b"{not json".to_vec()).await, 400, "INVALID_REQUEST");
    let missing = c.post("/v1/quotes", &json!({"code": static_code})).await;
    assert_error(&missing, 400, "INVALID_REQUEST");
    assert!(
        missing.1["error"]["message"].as_str().unwrap().contains("wallet_currency"),
        "{}",
        missing.1
    );
    let wrong = c
        .post("/v1/payments", &json!({"request_id": 5, "quote_id": "q", "payer": {"id": "p"}}))
        .await;
    assert_error(&wrong, 400, "INVALID_REQUEST");
    assert!(wrong.1["error"]["message"].as_str().unwrap().contains("request_id"), "{}", wrong.1);
    assert_error(
        &c.post(
            "/v1/payments",
            &json!({"request_id": "bad id!", "quote_id": "q", "payer": {"id": "p"}}),
        )
        .await,
        400,
        "INVALID_REQUEST",
    );
    // PAYLOAD_TOO_LARGE.
    let huge = json!({"code": "x".repeat(4_000)});
    assert_error(&c.post("/v1/codes/decode", &huge).await, 413, "PAYLOAD_TOO_LARGE");
    // INVALID_CODE.
    let mut bad_crc = static_code.clone();
    bad_crc.replace_range(bad_crc.len() - 4.., "0000");
    assert_error(&c.post("/v1/codes/decode", &json!({"code": bad_crc})).await, 422, "INVALID_CODE");
    assert_error(&c.post("/v1/codes/decode", &json!({"code": "hello"})).await, 422, "INVALID_CODE");
    // MERCHANT_NOT_SERVICEABLE: a code priced in THB.
    let thb = code_with(
        None,
        &field(29, &(field(0, "A000000677010111") + &field(1, "0066812345678"))),
        "764",
    );
    assert_error(
        &c.post("/v1/codes/decode", &json!({"code": thb})).await,
        422,
        "MERCHANT_NOT_SERVICEABLE",
    );
    // INVALID_AMOUNT: none for a static code, zero, not CNY, malformed, over the limit.
    assert_error(&quote(&c, &static_code, None, "PHP").await, 422, "INVALID_AMOUNT");
    assert_error(&quote(&c, &static_code, Some(0), "PHP").await, 422, "INVALID_AMOUNT");
    assert_error(&quote(&c, &static_code, Some(99_999_999), "PHP").await, 422, "INVALID_AMOUNT");
    let usd = json!({"code": static_code, "wallet_currency": "PHP", "amount": {"currency": "USD", "value": "100"}});
    assert_error(&c.post("/v1/quotes", &usd).await, 422, "INVALID_AMOUNT");
    let neg = json!({"code": static_code, "wallet_currency": "PHP", "amount": {"currency": "CNY", "value": "-5"}});
    assert_error(&c.post("/v1/quotes", &neg).await, 422, "INVALID_AMOUNT");
    // AMOUNT_MISMATCH.
    assert_error(
        &quote(&c, &code(Some("23.72")), Some(2_373), "PHP").await,
        422,
        "AMOUNT_MISMATCH",
    );
    // CURRENCY_NOT_SUPPORTED: unknown, without minor units, not enabled.
    assert_error(&quote(&c, &static_code, Some(100), "PESO").await, 422, "CURRENCY_NOT_SUPPORTED");
    assert_error(&quote(&c, &static_code, Some(100), "XAU").await, 422, "CURRENCY_NOT_SUPPORTED");
    assert_error(
        &quote(&d.client("partner-other"), &static_code, Some(100), "THB").await,
        422,
        "CURRENCY_NOT_SUPPORTED",
    );
    // RATE_UNAVAILABLE: GBP is enabled but no rate is known.
    let r = quote(&c, &static_code, Some(100), "GBP").await;
    assert_error(&r, 503, "RATE_UNAVAILABLE");
    assert_eq!(r.1["error"]["retryable"], true);
    // QUOTE_NOT_FOUND.
    assert_error(&pay(&c, "nf", "quo_nothing", "p").await, 404, "QUOTE_NOT_FOUND");
    // QUOTE_EXPIRED.
    let (_, q) = quote(&c, &static_code, Some(100), "PHP").await;
    d.clock.as_ref().unwrap().advance(chrono::Duration::seconds(121));
    assert_error(
        &pay(&c, "late", q["quote_id"].as_str().unwrap(), "p").await,
        410,
        "QUOTE_EXPIRED",
    );
    // PAYMENT_NOT_FOUND.
    assert_error(&c.get("/v1/payments/pay_nothing").await, 404, "PAYMENT_NOT_FOUND");
    // RATE_LIMITED: partner-other may make 3 requests at once, then 1 a second.
    let other = d.client("partner-other");
    let mut limited = None;
    for _ in 0..10 {
        let r = other.get("/v1/payments/x").await;
        if r.0 == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    assert_error(&limited.expect("rate limited within 10 requests"), 429, "RATE_LIMITED");
    // (REPEAT_REQ_INCONSISTENT, QUOTE_ALREADY_USED, CANCEL_WINDOW_CLOSED: the tests above;
    // INTERNAL: tests/engine_faults.rs.)
    // Unknown routes and methods.
    assert_error(&c.get("/v1/nothing").await, 404, "NOT_FOUND");
    assert_error(&c.get("/v1/quotes").await, 405, "METHOD_NOT_ALLOWED");
    d.finish().await;
}
}

on_both_stores! {
#[tokio::test]
async fn partners_are_known_by_san_uri_or_fingerprint() {
    use sha2::Digest;
    let d = TestDaemon::start_with(Setup {
        manual_clock: false,
        start_at: None,
        webhooks: None,
        tweak: Box::new(|c| {
            let pki = c.partners[1].ca.parent().unwrap().to_owned();
            let der = qrbridge::tls::load_certs(&pki.join("partner-other.crt")).unwrap().remove(0);
            let hex: Vec<String> =
                sha2::Sha256::digest(der.as_ref()).iter().map(|b| format!("{b:02X}")).collect();
            c.partners[0].identity =
                qrbridge_config::Identity::SanUri("spiffe://qrbridge.dev/partner-demo".into());
            c.partners[1].identity = qrbridge_config::Identity::Sha256(hex.join(":"));
        }),
    })
    .await;
    let (_, p) = quote_and_pay(&d.client("partner-demo"), 1_200, "by-uri").await;
    assert_eq!(p["status"], "SUCCEEDED", "{p}");
    let (s, q) = quote(&d.client("partner-other"), &code(None), Some(1_300), "KRW").await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    // A certificate from the same CA with the same name but another key: fingerprint differs.
    d.issue_client("partner-other", false);
    assert_error(
        &d.client("partner-other").get("/v1/payments/x").await,
        403,
        "CLIENT_NOT_RECOGNISED",
    );
    d.finish().await;
}
}
