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
            let others = [Method::DELETE, Method::PATCH, Method::TRACE, Method::OPTIONS];
            // Each method the path does not serve.
            for method in others.into_iter().filter(|m| !served.contains(m.as_str())) {
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

/// Sends one HTTP/1.1 request on `stream` and reads its answer: the status line's code, and
/// whether the server said `connection: close`.
async fn exchange<S>(stream: &mut S, head: &str, body: &[u8]) -> std::io::Result<(u16, bool)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while got.len() < end + length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    let status = head[9..12].parse().unwrap();
    Ok((status, head.contains("connection: close")))
}

#[tokio::test]
async fn an_oversized_body_gets_its_413_not_a_reset() {
    let d = TestDaemon::start().await;
    let tls = std::sync::Arc::new(client_config(&d.pki(), Some("partner-demo")));
    // Well past the 16 KiB limit, and past what socket buffers absorb: a server that closes
    // without reading it resets the connection under the client's feet.
    let body = vec![b' '; 4 << 20];
    for round in 0..3 {
        let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.unwrap();
        let head = format!(
            "POST /v1/codes/decode HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let answer = exchange(&mut s, &head, &body).await;
        let (status, close) = answer.unwrap_or_else(|e| panic!("round {round}: no answer: {e}"));
        assert_eq!(status, 413, "round {round}");
        // The body was read to its end: the connection goes on.
        assert!(!close, "round {round}: the connection should stay usable");
        let head = "GET /v1/payments/pay_none HTTP/1.1\r\nhost: localhost\r\n\r\n";
        let (status, _) = exchange(&mut s, head, b"").await.expect("a second answer");
        assert_eq!(status, 404, "round {round}");
    }
    d.finish().await;
}

/// Item 19's class, beyond the 413: an answer given without reading a large body (404, 405, 403
/// from a certificate naming no partner) reaches the client instead of being lost to the reset
/// a close with unread bytes causes — the server lingers, reading and dropping the rest.
#[tokio::test]
async fn early_answers_to_large_bodies_arrive_not_reset() {
    let d = TestDaemon::start().await;
    d.issue_client("stranger", false);
    let body = vec![b' '; 4 << 20];
    for (cert, path, want) in [
        ("partner-demo", "/v1/nowhere", 404),
        ("partner-demo", "/v1/payments/pay_x", 405),
        ("stranger", "/v1/codes/decode", 403),
    ] {
        let tls = std::sync::Arc::new(client_config(&d.pki(), Some(cert)));
        for round in 0..3 {
            let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut s =
                tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.unwrap();
            let head = format!(
                "PUT {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let answer = exchange(&mut s, &head, &body).await;
            let (status, _) =
                answer.unwrap_or_else(|e| panic!("{path} round {round}: no answer: {e}"));
            assert_eq!(status, want, "{path} round {round}");
        }
    }
    d.finish().await;
}
