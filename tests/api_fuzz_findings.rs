//! What the property-based run of the three API documents (scripts/api-fuzz, schemathesis) found
//! on the listeners, kept as tests over the real daemon and real mTLS: a 405 names the methods
//! its path serves (`allow`, RFC 9110), and the server validates what the documents say it
//! validates — `request_id` on `GET /v1/payments`, bridge ids counted in characters (not bytes),
//! a refund's `reason` counted as sent.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::daemon::{assert_error, client_config, TestDaemon};

/// Sends `method path` with an mTLS client certificate `cert`; the status and the `allow` header.
async fn allow_of(
    d: &TestDaemon,
    addr: std::net::SocketAddr,
    cert: &str,
    method: Method,
    path: &str,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&d.pki(), Some(cert)))
        .https_only()
        .enable_http1()
        .wrap_connector({
            let mut h = HttpConnector::new();
            h.enforce_http(false);
            h
        });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.expect("an HTTP answer");
    let status = res.status();
    let allow = res.headers().get(http::header::ALLOW).map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, allow, serde_json::from_slice(&body).unwrap_or_default())
}

/// A concrete path for a route template.
fn concrete(template: &str) -> String {
    template
        .replace("{payment_id}", "pay_none")
        .replace("{event_id}", "evt_none")
        .replace("{source_id}", "builtin")
        .replace("{day}", "2000-01-01")
        .replace("{name}", "summary.json")
        .replace("{acquirer}", "sandbox")
}

#[tokio::test]
async fn a_method_a_path_does_not_serve_is_405_naming_the_methods_it_does() {
    let d = TestDaemon::start().await;
    let daemon = d.daemon();
    let listeners = [
        (daemon.partner_addr, "partner-demo", qrbridge::http::ROUTES),
        (daemon.acquirer_addr, "acquirer-sandbox", qrbridge::acquirer_api::ROUTES),
        (daemon.admin_addr, "admin", qrbridge::admin::ROUTES),
    ];
    for (addr, cert, routes) in listeners {
        let mut methods: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (m, path) in routes {
            methods.entry(path).or_default().insert(m.to_string());
        }
        for (path, served) in methods {
            for method in [Method::DELETE, Method::PATCH, Method::TRACE, Method::OPTIONS] {
                let (status, allow, body) =
                    allow_of(&d, addr, cert, method.clone(), &concrete(path)).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {body}");
                assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED", "{method} {path}");
                let named: BTreeSet<String> = allow
                    .unwrap_or_else(|| panic!("{method} {path}: a 405 without `allow`"))
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .collect();
                assert_eq!(named, served, "{method} {path}: `allow` names what the path serves");
            }
        }
    }
    d.finish().await;
}

#[tokio::test]
async fn a_malformed_request_id_in_the_query_is_invalid_request() {
    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");
    for query in ["request_id=", "request_id=two%20words", "request_id=%C3%A9"] {
        let got = c.get(&format!("/v1/payments?{query}")).await;
        assert_error(&got, 400, "INVALID_REQUEST");
    }
    let long = "a".repeat(65);
    assert_error(&c.get(&format!("/v1/payments?request_id={long}")).await, 400, "INVALID_REQUEST");
    // Well formed and unknown: not found.
    let got = c.get(&format!("/v1/payments?request_id={}", "a".repeat(64))).await;
    assert_error(&got, 404, "PAYMENT_NOT_FOUND");
    d.finish().await;
}

#[tokio::test]
async fn bridge_ids_are_counted_in_characters() {
    let d = TestDaemon::start().await;
    let partner = d.client("partner-demo");
    let acquirer = d.acquirer_client("acquirer-sandbox");
    // 64 characters, 128 bytes: within the documented 64 characters; no such quote or payment.
    let id = "é".repeat(64);
    let pay = |quote_id: &str| json!({"request_id": "fuzz-1", "quote_id": quote_id, "payer": {"id": "p"}});
    let refund = |instruction_id: &str| {
        json!({"refund_id": "r-1", "instruction_id": instruction_id,
               "amount": {"currency": "CNY", "value": "100"}, "reason": "returned"})
    };
    assert_error(&partner.post("/v1/payments", &pay(&id)).await, 404, "QUOTE_NOT_FOUND");
    assert_error(
        &acquirer.post("/acquirer/v1/refunds", &refund(&id)).await,
        404,
        "PAYMENT_NOT_FOUND",
    );
    let long = "é".repeat(65);
    assert_error(&partner.post("/v1/payments", &pay(&long)).await, 400, "INVALID_REQUEST");
    assert_error(
        &acquirer.post("/acquirer/v1/refunds", &refund(&long)).await,
        400,
        "INVALID_REQUEST",
    );
    d.finish().await;
}

#[tokio::test]
async fn a_refund_reason_is_counted_as_sent() {
    let d = TestDaemon::start().await;
    let acquirer = d.acquirer_client("acquirer-sandbox");
    let refund = |reason: String| {
        json!({"refund_id": "r-1", "instruction_id": "pay_none",
               "amount": {"currency": "CNY", "value": "100"}, "reason": reason})
    };
    // 257 characters with a blank: over the documented 256, whatever trimming would leave.
    let got = acquirer.post("/acquirer/v1/refunds", &refund(format!(" {}", "x".repeat(256)))).await;
    assert_error(&got, 400, "INVALID_REQUEST");
    let got = acquirer.post("/acquirer/v1/refunds", &refund("   ".into())).await;
    assert_error(&got, 400, "INVALID_REQUEST");
    // 256 characters: valid, and the instruction is unknown.
    let got = acquirer.post("/acquirer/v1/refunds", &refund("x".repeat(256))).await;
    assert_error(&got, 404, "PAYMENT_NOT_FOUND");
    d.finish().await;
}
