//! Keeps the API documents and the server in step, for each listener — `docs/openapi.yaml`
//! (partners), `docs/acquirer-api.yaml`, `docs/admin-api.yaml`: every path and method in a
//! document is a route that listener declares and actually serves (it answers something other
//! than NOT_FOUND or METHOD_NOT_ALLOWED over real mTLS, to that listener's kind of certificate),
//! and every declared route is in the document.

mod support;

use std::collections::BTreeSet;

use http::Method;
use support::daemon::TestDaemon;

/// `(METHOD, path)` pairs under `paths:` in an OpenAPI document under `docs/`.
fn documented(file: &str) -> BTreeSet<(String, String)> {
    let path = format!("{}/docs/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
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

fn declared(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect()
}

on_both_stores! {
#[tokio::test]
async fn the_documents_and_the_server_agree() {
    let d = TestDaemon::start().await;
    let listeners = [
        ("openapi.yaml", qrbridge::http::ROUTES, d.client("partner-demo")),
        (
            "acquirer-api.yaml",
            qrbridge::acquirer_api::ROUTES,
            d.acquirer_client("acquirer-sandbox"),
        ),
        ("admin-api.yaml", qrbridge::admin::ROUTES, d.admin_client("admin")),
    ];
    for (file, routes, c) in listeners {
        let doc = documented(file);
        assert_eq!(doc, declared(routes), "docs/{file} and the listener's ROUTES differ");
        for (method, path) in &doc {
            let concrete = path
                .replace("{payment_id}", "pay_none")
                .replace("{event_id}", "evt_none")
                .replace("{source_id}", "builtin")
                .replace("{day}", "2000-01-01")
                .replace("{name}", "summary.json")
                .replace("{acquirer}", "sandbox")
                + if path == "/v1/payments" && method == "GET" { "?request_id=x" } else { "" };
            let method: Method = method.parse().unwrap();
            let body = (method == Method::POST).then(|| b"{}".to_vec());
            let (status, json) = c.try_send(method.clone(), &concrete, body).await.unwrap();
            let code = json["error"]["code"].as_str().unwrap_or("");
            assert!(
                !["NOT_FOUND", "METHOD_NOT_ALLOWED", "FORBIDDEN"].contains(&code),
                "{file}: {method} {concrete}: {status} {json}"
            );
        }
    }
    d.finish().await;
}
}
