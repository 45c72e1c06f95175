//! Hostile input on the admin and acquirer listeners is answered with a 4xx and a stable code:
//! never a panic (which drops the connection) nor a 5xx (issue 12, item 15). Each case is one
//! that a review of the input paths found or that sits on a boundary of the parsers: days with a
//! sign or five digits (the first of them reached an `expect` in the day's bounds), extreme
//! decimals against a held rate, ragged CSV bodies, overlong and odd ids, and the dual-control
//! and risk routes' (issue 15: what is proposed is approved by a second admin, so that the
//! extreme rates are taken and quoted). The real daemon, real mTLS, one payment made first so
//! that the routes reach past their lookups.

mod support;

use http::{Method, StatusCode};
use qrbridge::store::Store;
use serde_json::{json, Value};
use support::daemon::{Setup, TestClient, TestDaemon};
use support::flows::quote_and_pay;

/// One request and the answer it must get: status and, for errors, the code.
struct Case {
    method: Method,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn case(method: Method, path: &str, status: u16, code: Option<&'static str>) -> Case {
    Case {
        method,
        path: path.to_owned(),
        content_type: "application/json",
        body: Vec::new(),
        status,
        code,
    }
}

fn json_case(path: &str, body: Value, status: u16, code: Option<&'static str>) -> Case {
    Case { body: serde_json::to_vec(&body).unwrap(), ..case(Method::POST, path, status, code) }
}

fn csv_case(path: &str, body: &str, status: u16, code: Option<&'static str>) -> Case {
    Case {
        content_type: "text/csv",
        body: body.as_bytes().to_vec(),
        ..case(Method::POST, path, status, code)
    }
}

async fn check(client: &TestClient, cases: Vec<Case>) {
    for c in cases {
        let what = format!("{} {}", c.method, c.path);
        let (status, body) = send(client, c.method, c.path.clone(), c.content_type, c.body)
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer (a panic drops the connection): {e}"));
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status.as_u16(), c.status, "{what}: {body}");
        if let Some(code) = c.code {
            assert_eq!(body["error"]["code"], code, "{what}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_and_acquirer_input_is_answered_never_panicked() {
    let d = TestDaemon::start_with(Setup {
        manual_clock: true,
        start_at: Some("2026-11-20T02:00:00Z".parse().unwrap()),
        // A second admin, to approve what dual control holds back (the embedded default may
        // list it already).
        tweak: Box::new(support::daemon::second_admin),
        ..Setup::default()
    })
    .await;
    let (_, p) = quote_and_pay(&d.client("partner-demo"), 10_000, "hostile-1").await;
    assert_eq!(p["status"], "SUCCEEDED", "{p}");
    let paid = p["payment_id"].as_str().unwrap().to_owned();
    let day = |d: &str| format!("/admin/v1/settlement/{d}");
    let bad_day = Some("INVALID_REQUEST");
    let file_header = "instruction_id,amount,currency,status,refund_ids\n";
    let admin = vec![
        // Days: RFC 3339 full-date only, years 0001 to 9999.
        case(Method::POST, &day("-262143-01-01"), 400, bad_day),
        case(Method::POST, &day("+262142-12-31"), 400, bad_day),
        case(Method::POST, &day("262142-12-31"), 400, bad_day),
        case(Method::POST, &day("0000-12-31"), 400, bad_day),
        case(Method::POST, &day("2026-2-1"), 400, bad_day),
        case(Method::POST, &day("2026-02-30"), 400, bad_day),
        case(Method::POST, &day("9999-12-31"), 409, Some("DAY_NOT_CLOSED")),
        case(Method::POST, &day("0001-01-01"), 200, None),
        case(Method::GET, &format!("{}/files/summary.json", day("-262143-01-01")), 400, bad_day),
        case(Method::GET, &format!("{}/files/..", day("0001-01-02")), 404, None),
        csv_case(
            &format!("{}/reconciliation/sandbox", day("-262143-01-01")),
            file_header,
            400,
            bad_day,
        ),
        case(Method::GET, "/admin/v1/revenue?from=-262143-01-01", 400, bad_day),
        case(Method::GET, "/admin/v1/revenue?to=%2B262142-12-31", 400, bad_day),
        case(Method::GET, "/admin/v1/revenue?from=0001-01-01&to=9999-12-31", 200, None),
        // Rates: extreme decimals against the held USD/PHP; bad dates; ragged CSV.
        json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "79228162514264337593543950335"}]}),
            422,
            Some("RATE_MOVE_TOO_LARGE"),
        ),
        json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "0.0000000000000000000000000001"}]}),
            422,
            Some("RATE_MOVE_TOO_LARGE"),
        ),
        json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "1e5"}]}),
            422,
            Some("INVALID_RATE"),
        ),
        json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD/EUR", "quote": "PHP", "rate": "1"}]}),
            422,
            Some("INVALID_RATE"),
        ),
        json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "58", "as_of": "9999-12-31T23:59:59Z"}]}),
            422,
            Some("RATE_FROM_FUTURE"),
        ),
        json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "PHP", "rate": "58", "as_of": "+262142-12-31T23:59:59Z"}]}),
            422,
            Some("RATE_FROM_FUTURE"),
        ),
        // The oldest day there is: proposed (nothing held for USD/CHF: dual control), then
        // approved below: taken, never fresh, listed.
        json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "CHF", "rate": "0.9", "as_of": "-262143-01-01T00:00:00Z"}]}),
            202,
            None,
        ),
        case(Method::GET, "/admin/v1/audit", 200, None),
        json_case("/admin/v1/rates", json!({"rates": []}), 422, Some("INVALID_RATE")),
        csv_case("/admin/v1/rates", "base,quote,rate,as_of\nUSD,PHP\n", 422, Some("INVALID_RATE")),
        csv_case("/admin/v1/rates", "", 422, Some("INVALID_RATE")),
        csv_case(
            "/admin/v1/rates",
            "base,quote,rate,as_of\nUSD,PHP,58,-262143-01-01T00:00:00Z\n",
            422,
            Some("INVALID_RATE"),
        ),
        // Spreads.
        Case {
            method: Method::PUT,
            ..json_case(
                "/admin/v1/spreads",
                json!({"bps": "79228162514264337593543950335"}),
                422,
                Some("SPREAD_OUT_OF_BOUNDS"),
            )
        },
        Case {
            method: Method::PUT,
            ..json_case("/admin/v1/spreads", json!({"pair": "CNY/CNY", "bps": "1"}), 400, bad_day)
        },
        // Reconciliation files: ragged, huge amounts, an instruction listed twice.
        csv_case(
            &format!("{}/reconciliation/sandbox", day("0001-01-01")),
            &format!("{file_header}x\n"),
            422,
            Some("INVALID_RECONCILIATION_FILE"),
        ),
        csv_case(
            &format!("{}/reconciliation/sandbox", day("0001-01-01")),
            &format!("{file_header}{paid},99999999999999999999.99,CNY,APPROVED,;;\n"),
            200,
            None,
        ),
        csv_case(
            &format!("{}/reconciliation/sandbox", day("0001-01-01")),
            &format!("{file_header}a,1,CNY,APPROVED,\na,1,CNY,APPROVED,\n"),
            422,
            Some("INVALID_RECONCILIATION_FILE"),
        ),
        csv_case(
            &format!("{}/reconciliation/..", day("0001-01-01")),
            file_header,
            404,
            Some("ACQUIRER_NOT_FOUND"),
        ),
        // Ids in paths.
        case(Method::POST, "/admin/v1/webhooks/parked/%00%FF/replay", 404, None),
        case(Method::POST, "/admin/v1/rates/sources/..%2F/refresh", 404, None),
        case(Method::POST, "/admin/v1/proposals/%00%FF/approve", 404, Some("PROPOSAL_NOT_FOUND")),
        case(Method::GET, &format!("/admin/v1/proposals/{}", "9".repeat(10_000)), 404, None),
        // Risk: extreme instants and amounts, odd bodies.
        case(Method::GET, "/admin/v1/risk/decisions?from=-262143-01-01T00:00:00Z", 400, bad_day),
        case(
            Method::GET,
            "/admin/v1/risk/decisions?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
            200,
            None,
        ),
        case(Method::GET, "/admin/v1/risk/decisions?limit=99999999999999999999999", 400, bad_day),
        json_case(
            "/admin/v1/risk/funds",
            json!({"partner": "partner-demo", "amount": {"currency": "PHP", "value": "99999999999999999999"},
                   "kind": "top_up", "reference": "R"}),
            400,
            bad_day,
        ),
        json_case(
            "/admin/v1/risk/funds",
            json!({"partner": "partner-demo", "amount": {"currency": "XAU", "value": "1"},
                   "kind": "top_up", "reference": "R"}),
            400,
            bad_day,
        ),
        json_case(
            "/admin/v1/risk/blocklists/merchants",
            json!({"add": ["x".repeat(65)]}),
            400,
            bad_day,
        ),
        Case {
            body: br#"{"merchant_day_cny_minor_max": 99999999999999999999}"#.to_vec(),
            ..case(Method::PUT, "/admin/v1/risk/rules", 400, bad_day)
        },
        Case {
            body: ("[".repeat(1_000) + &"]".repeat(1_000)).into_bytes(),
            ..case(Method::PUT, "/admin/v1/risk/rules", 400, bad_day)
        },
    ];
    check(&d.admin_client("admin"), admin).await;
    // A second admin approves what was proposed: taken, listed.
    approve_all(&d).await;
    check(&d.admin_client("admin"), vec![case(Method::GET, "/admin/v1/rates", 200, None)]).await;

    // Extreme rates an admin forces, then quoted: refused with a code, never a panic.
    let partner = d.client("partner-demo");
    for rate in ["79228162514264337593543950335", "0.0000000000000000000000000001"] {
        // Proposed (a move past the dual-control step), then approved by a second admin.
        let forced = vec![json_case(
            "/admin/v1/rates",
            json!({"rates": [{"base": "USD", "quote": "PHP", "rate": rate}], "force": true}),
            202,
            None,
        )];
        check(&d.admin_client("admin"), forced).await;
        approve_all(&d).await;
        let code = support::flows::code(None);
        let body = json!({"code": code, "wallet_currency": "PHP",
                          "amount": {"currency": "CNY", "value": "10000"}});
        let (s, q) = send(
            &partner,
            Method::POST,
            "/v1/quotes".into(),
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("quote at {rate}: no answer: {e}"));
        assert!(s.is_client_error() || s == StatusCode::SERVICE_UNAVAILABLE, "{rate}: {s} {q:?}");
    }

    let refunds = "/acquirer/v1/refunds";
    let refund = |value: &str, currency: &str| {
        json!({"refund_id": "R-1", "instruction_id": paid, "reason": "r",
               "amount": {"currency": currency, "value": value}})
    };
    let acquirer = vec![
        json_case(refunds, refund("999999999999999", "CNY"), 422, Some("REFUND_EXCEEDS_PAYMENT")),
        json_case(refunds, refund("9999999999999999999999", "CNY"), 422, Some("INVALID_AMOUNT")),
        json_case(refunds, refund("-1", "CNY"), 422, Some("INVALID_AMOUNT")),
        json_case(refunds, refund("100", "XAU"), 422, None),
        json_case(
            refunds,
            json!({"refund_id": "R-2", "instruction_id": "x".repeat(10_000), "reason": "r",
                   "amount": {"currency": "CNY", "value": "1"}}),
            400,
            None,
        ),
        json_case(
            refunds,
            json!({"refund_id": "Ω", "instruction_id": paid, "reason": "r",
                   "amount": {"currency": "CNY", "value": "1"}}),
            400,
            None,
        ),
        json_case(refunds, json!({"refund_id": "R-3"}), 400, None),
        Case {
            body: ("[".repeat(1_000) + &"]".repeat(1_000)).into_bytes(),
            ..case(Method::POST, refunds, 400, None)
        },
    ];
    check(&d.acquirer_client("acquirer-sandbox"), acquirer).await;
    let store = d.daemon().store();
    assert!(store.refunds_of(&paid).await.unwrap().is_empty(), "no refund was recorded");
    d.finish().await;
}

/// `admin-2` approves every pending proposal (each made by `admin`): each answered `200`.
async fn approve_all(d: &TestDaemon) {
    let second = d.admin_client("admin-2");
    let (s, v) = second.get("/admin/v1/proposals?state=pending").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let pending = v["proposals"].as_array().unwrap();
    assert!(!pending.is_empty(), "a proposal to approve: {v}");
    for p in pending {
        let path = format!("/admin/v1/proposals/{}/approve", p["proposal_id"].as_str().unwrap());
        let (s, ok) = second.post(&path, &json!({})).await;
        assert_eq!(s, StatusCode::OK, "{path}: {ok}");
    }
}

/// Sends on a task of its own: `send_raw` panics when no answer comes (a handler's panic drops
/// the connection), which this turns into an error naming the request.
async fn send(
    client: &TestClient,
    method: Method,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<(StatusCode, bytes::Bytes), String> {
    let client = client.clone();
    tokio::spawn(async move { client.send_raw(method, &path, content_type, body).await })
        .await
        .map_err(|e| e.to_string())
}
