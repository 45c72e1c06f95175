//! Keeps docs/openapi.yaml and the server in step: every path and method in the document is a
//! route the server declares and actually serves (it answers something other than NOT_FOUND or
//! METHOD_NOT_ALLOWED over real mTLS), and every declared route is in the document.

mod support;

use std::collections::BTreeSet;

use http::Method;
use support::daemon::TestDaemon;

/// `(METHOD, path)` pairs under `paths:` in the OpenAPI document.
fn documented() -> BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                out.insert((m.to_uppercase(), path.clone().expect("method under a path")));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_document_and_the_server_agree() {
    let doc = documented();
    let served: BTreeSet<(String, String)> =
        qrbridge::http::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(doc, served, "docs/openapi.yaml and http::ROUTES differ");

    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");
    for (method, path) in &doc {
        let concrete = path.replace("{payment_id}", "pay_none")
            + if path == "/v1/payments" && method == "GET" { "?request_id=x" } else { "" };
        let method: Method = method.parse().unwrap();
        let body = (method == Method::POST).then(|| b"{}".to_vec());
        let (status, json) = c.try_send(method.clone(), &concrete, body).await.unwrap();
        let code = json["error"]["code"].as_str().unwrap_or("");
        assert!(
            !["NOT_FOUND", "METHOD_NOT_ALLOWED"].contains(&code),
            "{method} {concrete}: {status} {json}"
        );
    }
    d.finish().await;
}
