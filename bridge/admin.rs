//! The admin API: its own listener, mTLS, admin certificates only (a partner's certificate gets
//! `403 FORBIDDEN`). Operators see what the bridge could not finish on its own.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /admin/v1/webhooks/parked` | webhook events parked after their maximum age |
//! | `POST /admin/v1/webhooks/parked/{event_id}/replay` | puts the event back in the outbox |
//! | `GET /admin/v1/resolver` | payments the resolver still has work for |

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Serialize;
use tower::util::BoxCloneSyncService;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::http::{allow, json_response, service, HttpLimits, Req, Resp};
use crate::model::Task;
use crate::store::Store;
use crate::tls::Directory;

/// Every route of the admin listener.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/v1/webhooks/parked"),
    ("POST", "/admin/v1/webhooks/parked/{event_id}/replay"),
    ("GET", "/admin/v1/resolver"),
];

/// The admin API service.
pub fn admin_service<S: Store>(
    engine: Arc<Engine<S>>,
    directory: Directory,
    limits: HttpLimits,
) -> BoxCloneSyncService<Req, Resp, Infallible> {
    service(directory, ApiError::Forbidden, HashMap::new(), limits, move |admin, req| {
        route(engine.clone(), admin, req)
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
    task: Task,
    due: DateTime<Utc>,
    attempt: u32,
}

fn internal(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    ApiError::Internal
}

async fn route<S: Store>(
    engine: Arc<Engine<S>>,
    admin: Arc<str>,
    req: Req,
) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let store = engine.store();
    match segments.as_slice() {
        ["admin", "v1", "webhooks", "parked"] => {
            allow(req.method(), &Method::GET)?;
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
            allow(req.method(), &Method::POST)?;
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
        ["admin", "v1", "resolver"] => {
            allow(req.method(), &Method::GET)?;
            let mut open = Vec::new();
            for w in store.open_work().map_err(internal)? {
                let status = store
                    .payment(&w.payment_id)
                    .map_err(internal)?
                    .map_or("UNKNOWN", |p| p.state.api_status());
                open.push(WorkView {
                    payment_id: w.payment_id,
                    status,
                    task: w.task,
                    due: w.due,
                    attempt: w.attempt,
                });
            }
            Ok(json_response(StatusCode::OK, &serde_json::json!({ "open": open })))
        }
        _ => Err(ApiError::NotFound),
    }
}
