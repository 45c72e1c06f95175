//! The acquirer-facing API: acquirers call the bridge over mTLS with their own certificates (and
//! nothing else is let in) to report refunds.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /acquirer/v1/refunds` | [`RefundRequestBody`](crate::api::RefundRequestBody) | 201 new, 200 replay: [`RefundAnswer`] |
//!
//! A refund is idempotent on the acquirer's `refund_id`: the same content gets the same refund,
//! other content `409 REPEAT_REQ_INCONSISTENT`. Only the acquirer that was instructed can refund a
//! payment; to any other it does not exist (`404 PAYMENT_NOT_FOUND`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, StatusCode};
use tower::util::BoxCloneSyncService;

use crate::api::RefundAnswer;
use crate::error::ApiError;
use crate::http::{allow, json_response, read_json, service, HttpLimits, Rate, Req, Resp};
use crate::payments::engine::Engine;
use crate::store::Store;
use crate::tls::Directory;

/// Every route of the acquirer listener.
pub const ROUTES: &[(&str, &str)] = &[("POST", "/acquirer/v1/refunds")];

/// The acquirer API service, with the same stack as the partner API.
pub fn acquirer_service<S: Store>(
    engine: Arc<Engine<S>>,
    directory: Directory,
    rates: HashMap<String, Rate>,
    limits: HttpLimits,
) -> BoxCloneSyncService<Req, Resp, Infallible> {
    let body_max = limits.body_bytes_max;
    service(directory, ApiError::Forbidden, rates, limits, move |caller, req| {
        route(engine.clone(), body_max, caller, req)
    })
}

async fn route<S: Store>(
    engine: Arc<Engine<S>>,
    body_max: u64,
    acquirer: Arc<str>,
    req: Req,
) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["acquirer", "v1", "refunds"] => {
            allow(req.method(), &Method::POST)?;
            let body = read_json(req, body_max).await?;
            let (refund, created) = engine.refund(&acquirer, body).await?;
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json_response(status, &RefundAnswer::new(&refund)))
        }
        _ => Err(ApiError::NotFound),
    }
}
