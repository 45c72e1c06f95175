//! The admin API: its own listener, mTLS, admin certificates only (a partner's certificate gets
//! `403 FORBIDDEN`). Operators see what the bridge could not finish on its own; treasury staff
//! tune rates and spreads, read positions and revenue, run settlement and reconcile acquirers.
//! Every change is in the audit log.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /admin/v1/webhooks/parked` | webhook events parked after their maximum age |
//! | `POST /admin/v1/webhooks/parked/{event_id}/replay` | puts the event back in the outbox |
//! | `GET /admin/v1/resolver` | payments the resolver still has work for |
//! | `POST /admin/v1/resolver/{payment_id}/settle` | closes an ATTENTION task an operator settled (audited) |
//! | `GET /admin/v1/rates` | every rate held (source, age, fresh) and every source's last read |
//! | `POST /admin/v1/rates` | sets rates by hand: JSON `{"rates": [...], "force": false}` or CSV `base,quote,rate,as_of` (`?force=true`) |
//! | `POST /admin/v1/rates/sources/{id}/refresh` | reads a rate source now |
//! | `GET /admin/v1/spreads` | default, bounds, overrides |
//! | `PUT /admin/v1/spreads` | sets (or, with `bps: null`, removes) one spread |
//! | `GET /admin/v1/positions` | open position per currency, from the ledger |
//! | `GET /admin/v1/revenue?from=&to=` | spread revenue by business day, partner and pair |
//! | `GET /admin/v1/audit` | the audit log, its hash chain verified |
//! | `POST /admin/v1/settlement/{day}` | closes the day: writes its statements, returns the summary |
//! | `GET /admin/v1/settlement/{day}/files/{name}` | downloads one of the day's files |
//! | `POST /admin/v1/settlement/{day}/reconciliation/{acquirer}` | reconciles the acquirer's CSV for the day |

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tower::util::BoxCloneSyncService;

use crate::error::ApiError;
use crate::http::{
    allow, allow_any, json_response, read_body, read_json, service, HttpLimits, Req, Resp,
};
use crate::model::Task;
use crate::payments::engine::Engine;
use crate::settlement::{parse_day, Settlement};
use crate::store::Store;
use crate::tls::Directory;
use crate::treasury::{RateInput, Treasury};

/// Every route of the admin listener.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/v1/webhooks/parked"),
    ("POST", "/admin/v1/webhooks/parked/{event_id}/replay"),
    ("GET", "/admin/v1/resolver"),
    ("POST", "/admin/v1/resolver/{payment_id}/settle"),
    ("GET", "/admin/v1/rates"),
    ("POST", "/admin/v1/rates"),
    ("POST", "/admin/v1/rates/sources/{source_id}/refresh"),
    ("GET", "/admin/v1/spreads"),
    ("PUT", "/admin/v1/spreads"),
    ("GET", "/admin/v1/positions"),
    ("GET", "/admin/v1/revenue"),
    ("GET", "/admin/v1/audit"),
    ("POST", "/admin/v1/settlement/{day}"),
    ("GET", "/admin/v1/settlement/{day}/files/{name}"),
    ("POST", "/admin/v1/settlement/{day}/reconciliation/{acquirer}"),
];

/// Largest acquirer file or rate CSV taken (admin bodies only).
const ADMIN_FILE_BYTES_MAX: u64 = 32 << 20;

/// What the admin API works on.
pub struct Admin<S> {
    pub engine: Arc<Engine<S>>,
    pub treasury: Arc<Treasury<S>>,
    pub settlement: Arc<Settlement<S>>,
}

/// The admin API service.
pub fn admin_service<S: Store>(
    admin: Arc<Admin<S>>,
    directory: Directory,
    limits: HttpLimits,
) -> BoxCloneSyncService<Req, Resp, Infallible> {
    let body_max = limits.body_bytes_max;
    service(directory, ApiError::Forbidden, HashMap::new(), limits, move |actor, req| {
        route(admin.clone(), body_max, actor, req)
    })
}

#[derive(Debug, Serialize)]
struct ParkedView {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    partner: String,
    payment_id: String,
    created_at: DateTime<Utc>,
    parked_at: DateTime<Utc>,
    attempts: u32,
    last_error: String,
}

#[derive(Debug, Serialize)]
struct WorkView {
    payment_id: String,
    status: &'static str,
    /// The bridge's own state (`UNKNOWN`, `CANCELLING`, `REVERSING`, …).
    state: Option<crate::model::PaymentState>,
    task: Task,
    due: DateTime<Utc>,
    attempt: u32,
    /// Reversals the acquirer refused so far (the bridge gives up at the configured maximum).
    refusals: u32,
    /// What the last attempt got: the acquirer's answer or error, for operators.
    last_error: Option<String>,
    /// The bridge stopped reversing this payment (the acquirer refused): it inquires until the
    /// acquirer says how it ended.
    reversal_refused: bool,
}

use crate::treasury::internal;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    /// What the operator did, for the audit log.
    note: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatesBody {
    rates: Vec<RateInput>,
    /// Take rates that move more than `fx.rate_move_bps_max` from the held ones (audited).
    #[serde(default)]
    force: bool,
}

/// `?force=true` (CSV uploads): `true` or `false`, nothing else.
fn force_param(req: &Req) -> Result<bool, ApiError> {
    match query(req).get("force").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => {
            Err(ApiError::InvalidRequest(format!("force {other:?} is neither true nor false")))
        }
    }
}

/// Rates in the plain CSV form, as an admin uploads them.
fn rates_from_csv(bytes: &[u8]) -> Result<Vec<RateInput>, ApiError> {
    let rates = crate::rates::parse_csv(bytes, "admin")
        .map_err(|e| ApiError::InvalidRate(e.to_string()))?;
    Ok(rates
        .into_iter()
        .map(|r| RateInput {
            base: r.pair.base.code().into(),
            quote: r.pair.quote.code().into(),
            rate: r.rate.to_string(),
            as_of: Some(r.as_of),
        })
        .collect())
}

fn is_csv(req: &Req) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"))
}

fn file_response(name: &str, bytes: Vec<u8>) -> Resp {
    let kind = if name.ends_with(".json") { "application/json" } else { "text/csv; charset=utf-8" };
    http::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, kind)
        .header(http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

fn query(req: &Req) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

async fn route<S: Store>(
    ctx: Arc<Admin<S>>,
    body_max: u64,
    admin: Arc<str>,
    req: Req,
) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let engine = &ctx.engine;
    let treasury = &ctx.treasury;
    let store = engine.store();
    let method = req.method().clone();
    match segments.as_slice() {
        ["admin", "v1", "webhooks", "parked"] => {
            allow(&method, &Method::GET)?;
            let events: Vec<ParkedView> = store
                .parked()
                .map_err(internal)?
                .into_iter()
                .map(|(_, p)| ParkedView {
                    event_id: p.event.event_id,
                    kind: p.event.kind,
                    partner: p.event.partner,
                    payment_id: p.event.payment_id,
                    created_at: p.event.created_at,
                    parked_at: p.parked_at,
                    attempts: p.attempts,
                    last_error: p.last_error,
                })
                .collect();
            Ok(json_response(StatusCode::OK, &serde_json::json!({ "events": events })))
        }
        ["admin", "v1", "webhooks", "parked", event_id, "replay"] => {
            allow(&method, &Method::POST)?;
            if !store.unpark(event_id, engine.now()).map_err(internal)? {
                return Err(ApiError::EventNotFound);
            }
            store.flush().await.map_err(internal)?;
            tracing::info!(event = %event_id, admin = %admin, "parked webhook event replayed");
            engine.events_written.notify_one();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "event_id": event_id, "replayed": true }),
            ))
        }
        ["admin", "v1", "resolver", payment_id, "settle"] => {
            allow(&method, &Method::POST)?;
            let body: SettleBody = read_json(req, body_max).await?;
            let p = engine.settle_attention(payment_id, &admin, &body.note).await?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "payment_id": p.payment_id, "settled": true }),
            ))
        }
        ["admin", "v1", "resolver"] => {
            allow(&method, &Method::GET)?;
            let mut open = Vec::new();
            for w in store.open_work().map_err(internal)? {
                let p = store.payment(&w.payment_id).map_err(internal)?;
                open.push(WorkView {
                    payment_id: w.payment_id,
                    status: p.as_ref().map_or("UNKNOWN", |p| p.state.api_status()),
                    state: p.as_ref().map(|p| p.state),
                    task: w.task,
                    due: w.due,
                    attempt: w.attempt,
                    refusals: w.refusals,
                    last_error: w.last_error,
                    reversal_refused: p.as_ref().is_some_and(|p| p.reversal_refused),
                });
            }
            Ok(json_response(StatusCode::OK, &serde_json::json!({ "open": open })))
        }
        ["admin", "v1", "rates"] if method == Method::POST => {
            let (rates, force) = if is_csv(&req) {
                let force = force_param(&req)?;
                (rates_from_csv(&read_body(req, ADMIN_FILE_BYTES_MAX).await?)?, force)
            } else {
                let body = read_json::<RatesBody>(req, body_max).await?;
                (body.rates, body.force)
            };
            Ok(json_response(StatusCode::OK, &treasury.set_rates(&admin, rates, force).await?))
        }
        ["admin", "v1", "rates"] => {
            allow_any(&method, &[Method::GET, Method::POST])?;
            let (rates, sources) = treasury.rates();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "rates": rates, "sources": sources }),
            ))
        }
        ["admin", "v1", "rates", "sources", id, "refresh"] => {
            allow(&method, &Method::POST)?;
            Ok(json_response(StatusCode::OK, &treasury.refresh(&admin, id).await?))
        }
        ["admin", "v1", "spreads"] if method == Method::PUT => {
            let change = read_json(req, body_max).await?;
            Ok(json_response(StatusCode::OK, &treasury.set_spread(&admin, change).await?))
        }
        ["admin", "v1", "spreads"] => {
            allow_any(&method, &[Method::GET, Method::PUT])?;
            Ok(json_response(StatusCode::OK, &treasury.spreads()))
        }
        ["admin", "v1", "positions"] => {
            allow(&method, &Method::GET)?;
            let positions = treasury.positions()?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "as_of": engine.now(), "positions": positions }),
            ))
        }
        ["admin", "v1", "revenue"] => {
            allow(&method, &Method::GET)?;
            let q = query(&req);
            let from = q.get("from").map(|d| parse_day(d)).transpose()?;
            let to = q.get("to").map(|d| parse_day(d)).transpose()?;
            let lines = treasury.revenue(from, to)?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({ "revenue": lines })))
        }
        ["admin", "v1", "audit"] => {
            allow(&method, &Method::GET)?;
            let (records, chain) = treasury.audit()?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "chain": chain, "records": records }),
            ))
        }
        ["admin", "v1", "settlement", day] => {
            allow(&method, &Method::POST)?;
            let summary = ctx.settlement.run(&admin, parse_day(day)?).await?;
            Ok(json_response(StatusCode::OK, &summary))
        }
        ["admin", "v1", "settlement", day, "files", name] => {
            allow(&method, &Method::GET)?;
            let bytes = ctx.settlement.file(parse_day(day)?, name).await?;
            Ok(file_response(name, bytes))
        }
        ["admin", "v1", "settlement", day, "reconciliation", acquirer] => {
            allow(&method, &Method::POST)?;
            let day = parse_day(day)?;
            let file = read_body(req, ADMIN_FILE_BYTES_MAX).await?;
            let report = ctx.settlement.reconcile(&admin, day, acquirer, &file).await?;
            Ok(json_response(StatusCode::OK, &report))
        }
        _ => Err(ApiError::NotFound),
    }
}
