//! The admin API: its own listener, mTLS, admin certificates only (a partner's certificate gets
//! `403 FORBIDDEN`). Operators see what the bridge could not finish on its own; treasury staff
//! tune rates and spreads, read positions and revenue, run settlement and reconcile acquirers.
//! Every change is in the audit log.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /admin/v1/webhooks/parked` | webhook events parked after their maximum age |
//! | `POST /admin/v1/webhooks/parked/{event_id}/replay` | puts the event back in the outbox |
//! | `POST /admin/v1/webhooks/parked/purge` | removes events parked before a cutoff (audited) |
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
//! | `GET /admin/v1/proposals?state=&limit=` | changes under dual control, newest first |
//! | `GET /admin/v1/proposals/{proposal_id}` | one of them |
//! | `POST /admin/v1/proposals/{proposal_id}/approve` | a second admin approves it: it takes effect (audited with both names) |
//! | `POST /admin/v1/proposals/{proposal_id}/reject` | another admin rejects it, or its proposer withdraws it (audited) |
//! | `GET /admin/v1/risk` | the risk rules and blocklists in force, exposures, funds received |
//! | `PUT /admin/v1/risk/rules` | proposes rules in place of the configuration's (`202`) |
//! | `DELETE /admin/v1/risk/rules` | proposes the configuration's rules again (`202`) |
//! | `POST /admin/v1/risk/blocklists/{merchants,mccs,acquirers}` | proposes entries to add and remove (`202`) |
//! | `POST /admin/v1/risk/funds` | proposes recording a partner's top-up or settlement received (`202`) |
//! | `GET /admin/v1/risk/decisions?from=&to=&limit=` | the risk decisions kept (refusals, flags) |
//!
//! Dual control ([`crate::treasury::proposals`]): the risk changes above are proposals, as are a
//! spread or a rate set by hand that moves more than its step (`PUT /admin/v1/spreads` and
//! `POST /admin/v1/rates` answer `202` with the proposal then, `200` when the change is in force).
//! | `POST /admin/v1/settlement/{day}` | closes the day: writes its statements, returns the summary |
//! | `GET /admin/v1/settlement/{day}/files/{name}` | downloads one of the day's files |
//! | `POST /admin/v1/settlement/{day}/reconciliation/{acquirer}` | reconciles the acquirer's CSV for the day |
//! | `POST /admin/v1/reload` | reads the configuration again and puts it in force, all or nothing (audited; `422 CONFIG_REFUSED` with every reason) |
//! | `POST /admin/v1/store/backup` | copies the store, consistently, into a folder on the daemon's host (audited) |
//! | `GET /admin/v1/store/backup` | how the last backup went, or that one is running |

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tower::util::BoxCloneSyncService;

use crate::api::{ErrorBody, ErrorDetail};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::http::{
    allow, allow_any, json_response, read_body, read_json, service, HttpLimits, Req, Resp,
};
use crate::model::{ParkedEvent, Task};
use crate::payments::engine::Engine;
use crate::settlement::{parse_day, Settlement};
use crate::store::backup::BackupError;
use crate::store::{EventSeq, Store};
use crate::tls::Directory;
use crate::treasury::proposals::PROPOSALS_LIST_MAX;
use crate::treasury::{BlockList, FundsRecord, Outcome, ProposalState, RateInput, Treasury};

/// Every route of the admin listener.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/v1/webhooks/parked"),
    ("POST", "/admin/v1/webhooks/parked/{event_id}/replay"),
    ("POST", "/admin/v1/webhooks/parked/purge"),
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
    ("GET", "/admin/v1/proposals"),
    ("GET", "/admin/v1/proposals/{proposal_id}"),
    ("POST", "/admin/v1/proposals/{proposal_id}/approve"),
    ("POST", "/admin/v1/proposals/{proposal_id}/reject"),
    ("GET", "/admin/v1/risk"),
    ("PUT", "/admin/v1/risk/rules"),
    ("DELETE", "/admin/v1/risk/rules"),
    ("POST", "/admin/v1/risk/blocklists/merchants"),
    ("POST", "/admin/v1/risk/blocklists/mccs"),
    ("POST", "/admin/v1/risk/blocklists/acquirers"),
    ("POST", "/admin/v1/risk/funds"),
    ("GET", "/admin/v1/risk/decisions"),
    ("POST", "/admin/v1/settlement/{day}"),
    ("GET", "/admin/v1/settlement/{day}/files/{name}"),
    ("POST", "/admin/v1/settlement/{day}/reconciliation/{acquirer}"),
    ("POST", "/admin/v1/reload"),
    ("GET", "/admin/v1/store/backup"),
    ("POST", "/admin/v1/store/backup"),
    // The treasury console (bridge/console): web pages for a browser, under /console/; they come
    // last (`console::ROUTES` is this list from the first of them on).
    ("GET", "/console/"),
    ("GET", "/console/assets/{name}"),
    ("GET", "/console/rates"),
    ("POST", "/console/rates"),
    ("POST", "/console/rates/refresh"),
    ("GET", "/console/spreads"),
    ("POST", "/console/spreads/preview"),
    ("POST", "/console/spreads"),
    ("GET", "/console/positions"),
    ("GET", "/console/settlement"),
    ("POST", "/console/settlement/run"),
    ("POST", "/console/settlement/reconcile"),
    ("GET", "/console/settlement/{day}"),
    ("GET", "/console/settlement/{day}/files/{name}"),
    ("GET", "/console/operations"),
    ("POST", "/console/operations/replay"),
    ("POST", "/console/operations/settle"),
    ("GET", "/console/audit"),
    ("GET", "/console/proposals"),
    ("POST", "/console/proposals/approve"),
    ("POST", "/console/proposals/reject"),
    ("GET", "/console/risk"),
];

/// Largest acquirer file or rate CSV taken (admin bodies only).
const ADMIN_FILE_BYTES_MAX: u64 = 32 << 20;

/// Most parked events one purge removes (and lists in its audit record), and its default.
const PURGE_LIMIT_MAX: usize = 1_000;

/// Most risk decisions one request lists.
const DECISIONS_LIMIT_MAX: usize = 1_000;
/// Risk decisions and proposals listed when no `limit` is given.
const LIST_LIMIT_DEFAULT: usize = 100;

/// One change to the parked list at a time (a purge, a replay), so what a purge lists in the
/// audit log is what it removes.
static PARKED_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Puts the parked event `event_id` back in the outbox (under [`PARKED_CHANGES`], so a purge
/// never lists an event a replay takes back), makes it durable and wakes the delivery worker:
/// the admin API's replay and the console's.
pub(crate) async fn replay_parked<S: Store>(
    engine: &Engine<S>,
    admin: &str,
    event_id: &str,
) -> Result<(), ApiError> {
    let store = engine.store();
    let _one = PARKED_CHANGES.lock().await;
    if !store.unpark(event_id, engine.now()).await.map_err(internal)? {
        return Err(ApiError::EventNotFound);
    }
    store.flush().await.map_err(internal)?;
    tracing::info!(event = %event_id, admin = %admin, "parked webhook event replayed");
    engine.events_written.notify_one();
    Ok(())
}

/// What the admin API works on.
pub struct Admin<S> {
    pub engine: Arc<Engine<S>>,
    pub treasury: Arc<Treasury<S>>,
    pub settlement: Arc<Settlement<S>>,
    /// What `POST /admin/v1/reload` asks (the daemon's reloader, set once it exists; weak, as
    /// the reloader holds this admin API's service).
    pub reloader: std::sync::OnceLock<std::sync::Weak<dyn Reload>>,
}

/// A reload of the daemon's configuration, as the admin API asks for it: what it put in force,
/// or every reason it was refused ([`crate::ops::reload`]).
pub trait Reload: Send + Sync {
    fn reload<'a>(
        &'a self,
        actor: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<serde_json::Value, Vec<String>>> + Send + 'a>,
    >;
}

/// The admin API service.
pub fn admin_service<S: Store>(
    admin: Arc<Admin<S>>,
    directory: Directory,
    limits: HttpLimits,
) -> BoxCloneSyncService<Req, Resp, Infallible> {
    let body_max = limits.body_bytes_max;
    // A backup request answers within its request's time: done, or still running.
    let backup_wait = limits.request_timeout * 3 / 4;
    service(directory, ApiError::Forbidden, HashMap::new(), limits, move |actor, req| {
        route(admin.clone(), body_max, backup_wait, actor, req)
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

/// `POST /admin/v1/webhooks/parked/purge`: exactly one of `parked_before` and `older_than_s`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    /// Events parked strictly before this instant (RFC 3339).
    parked_before: Option<DateTime<Utc>>,
    /// Events parked more than this many seconds ago (by the daemon's clock).
    older_than_s: Option<u64>,
    /// At most this many events (1 to [`PURGE_LIMIT_MAX`], the default), oldest place first.
    limit: Option<usize>,
}

impl PurgeBody {
    /// The cutoff: events parked before it go. Never after `now`.
    fn cutoff(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
        let cutoff = match (self.parked_before, self.older_than_s) {
            (Some(at), None) => at,
            (None, Some(s)) => i64::try_from(s)
                .ok()
                .and_then(chrono::TimeDelta::try_seconds)
                .and_then(|age| now.checked_sub_signed(age))
                .ok_or_else(|| {
                    ApiError::InvalidRequest(format!("older_than_s: {s} is too large"))
                })?,
            _ => {
                return Err(ApiError::InvalidRequest(
                    "give exactly one of parked_before and older_than_s".into(),
                ))
            }
        };
        if cutoff > now {
            return Err(ApiError::InvalidRequest(format!(
                "parked_before: {} is in the future (now {})",
                cutoff.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                now.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )));
        }
        Ok(cutoff)
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(PURGE_LIMIT_MAX),
            Some(n) if (1..=PURGE_LIMIT_MAX).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::InvalidRequest(format!(
                "limit: {n} is not between 1 and {PURGE_LIMIT_MAX}"
            ))),
        }
    }
}

/// Removes the events parked before the body's cutoff: records them in the audit log first
/// (`webhooks.purge_parked`, durable), then removes them and makes that durable.
async fn purge_parked<S: Store>(
    ctx: &Admin<S>,
    admin: &str,
    body: PurgeBody,
) -> Result<serde_json::Value, ApiError> {
    let store = ctx.engine.store();
    let limit = body.limit()?;
    let _one = PARKED_CHANGES.lock().await;
    let cutoff = body.cutoff(ctx.engine.now())?;
    let due: Vec<(EventSeq, ParkedEvent)> = store
        .parked()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|(_, p)| p.parked_at < cutoff)
        .collect();
    let remaining = due.len().saturating_sub(limit);
    let chosen = &due[..due.len() - remaining];
    let event_ids: Vec<&str> = chosen.iter().map(|(_, p)| p.event.event_id.as_str()).collect();
    if chosen.is_empty() {
        // Nothing changes, so nothing is audited.
        return Ok(serde_json::json!({
            "purged": 0, "event_ids": event_ids, "audit_seq": null,
            "parked_before": cutoff, "remaining": 0,
        }));
    }
    let events: Vec<serde_json::Value> = chosen
        .iter()
        .map(|(_, p)| {
            serde_json::json!({
                "event_id": p.event.event_id, "payment_id": p.event.payment_id,
                "partner": p.event.partner, "type": p.event.kind, "parked_at": p.parked_at,
            })
        })
        .collect();
    let after = serde_json::json!({
        "parked_before": cutoff, "count": chosen.len(), "events": events,
    });
    let record = ctx
        .treasury
        .record(admin, "webhooks.purge_parked", "webhooks:parked".into(), after)
        .await?;
    let seqs: Vec<EventSeq> = chosen.iter().map(|(seq, _)| *seq).collect();
    let purged = store.purge_parked(&seqs).await.map_err(internal)?;
    store.flush().await.map_err(internal)?;
    if purged != seqs.len() {
        // Parked changes are serialized above, so this is a broken invariant; the audit record
        // lists what was meant, the answer what was done.
        tracing::error!(
            audit_seq = record.seq,
            listed = seqs.len(),
            purged,
            "parked purge removed fewer events than it listed"
        );
    }
    // The purged events' payments may have later events waiting: the worker looks again now.
    ctx.engine.events_written.notify_one();
    tracing::info!(admin = %admin, purged, audit_seq = record.seq, parked_before = %cutoff, "parked webhook events purged");
    Ok(serde_json::json!({
        "purged": purged, "event_ids": event_ids, "audit_seq": record.seq,
        "parked_before": cutoff, "remaining": remaining,
    }))
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

/// `POST /admin/v1/store/backup`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// The backup's folder on the daemon's host: absolute, its parent existing, itself new or
    /// empty.
    dir: PathBuf,
}

/// The engine's clock, for a backup's manifest.
struct EngineClock<S>(Arc<Engine<S>>);

impl<S: Store> Clock for EngineClock<S> {
    fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
}

/// A backup's refusal or failure, answered in the shape of every error (the codes are the admin
/// API's own: docs/admin-api.yaml).
fn backup_error(e: &BackupError) -> Result<Resp, ApiError> {
    let (status, retryable) = match e {
        BackupError::Refused(m) => return Err(ApiError::InvalidRequest(m.clone())),
        BackupError::InProgress(_) => (StatusCode::CONFLICT, true),
        BackupError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, false),
        BackupError::TooManyWrites(_) | BackupError::Cancelled => {
            (StatusCode::SERVICE_UNAVAILABLE, true)
        }
        // Asking again changes nothing until space is freed.
        BackupError::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, false),
        BackupError::Io(_) | BackupError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, true),
    };
    let body = ErrorBody {
        error: ErrorDetail { code: e.code(), message: e.to_string(), retryable, reason: None },
    };
    Ok(json_response(status, &body))
}

/// Tells the store's backup under way to give up when dropped still holding the store.
struct AbandonOnDrop<S: Store>(Option<Arc<S>>);

impl<S: Store> Drop for AbandonOnDrop<S> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take().as_deref().and_then(Store::backups) {
            b.cancel();
        }
    }
}

/// Starts a backup of the store into the body's folder, audited (`store.backup`) before it
/// starts, so the record is in the copy. The copy runs on a task of its own — a request that
/// goes away does not stop it — and the answer comes when it ends (`200`, the manifest) or after
/// `wait` (`202`, running: `GET` says how it went).
async fn start_backup<S: Store>(
    ctx: &Admin<S>,
    admin: &str,
    body: BackupBody,
    wait: Duration,
) -> Result<Resp, ApiError> {
    let engine = ctx.engine.clone();
    let store = engine.store().clone();
    let Some(backups) = store.backups() else {
        return backup_error(&BackupError::Unsupported(
            "this daemon's store has no backup of its own".into(),
        ));
    };
    let dir = body.dir;
    if let Err(e) = backups.check_dir(&dir) {
        return backup_error(&e);
    }
    if let Err(e) = backups.begin(&dir, admin, engine.now()) {
        return backup_error(&e);
    }
    let after = serde_json::json!({ "dir": dir });
    let record = match ctx
        .treasury
        .record(admin, "store.backup", format!("store:{}", dir.display()), after)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let why = BackupError::Io(format!("the audit record could not be written: {e}"));
            backups.finish(&Err(why), engine.now());
            return Err(e);
        }
    };
    let (done, ended) = tokio::sync::oneshot::channel();
    let admin_name = admin.to_owned();
    // The task's own handles (`backups` borrows this function's).
    let (store, engine) = (store.clone(), engine.clone());
    tokio::spawn(async move {
        // This task is dropped, unfinished, only when the runtime stops — the daemon shutting
        // down: the copy, on a thread of its own, is told to give up and empty its folder
        // rather than hold the process until it ends.
        let mut abandon = AbandonOnDrop(Some(store.clone()));
        let (s, e, d) = (store.clone(), engine.clone(), dir.clone());
        let runtime = tokio::runtime::Handle::current();
        // The copy blocks its thread (sled), so it runs on one of its own.
        let result =
            tokio::task::spawn_blocking(move || runtime.block_on(s.backup(&d, &EngineClock(e))))
                .await
                .unwrap_or_else(|e| Err(BackupError::Io(format!("the backup stopped: {e}"))));
        abandon.0 = None;
        if let Some(b) = store.backups() {
            b.finish(&result, engine.now());
        }
        match &result {
            Ok(m) => {
                tracing::info!(admin = %admin_name, dir = %dir.display(), pause_us = m.pause_us, "store backed up")
            }
            Err(e) => {
                tracing::error!(admin = %admin_name, dir = %dir.display(), error = %e, "store backup failed")
            }
        }
        let _ = done.send(result);
    });
    match tokio::time::timeout(wait, ended).await {
        Ok(Ok(Ok(_))) => {
            let mut v = serde_json::to_value(backups.state()).expect("JSON of plain data");
            v["audit_seq"] = serde_json::json!(record.seq);
            Ok(json_response(StatusCode::OK, &v))
        }
        Ok(Ok(Err(e))) => backup_error(&e),
        // Still copying (or the task ended without a word: `GET` tells).
        Err(_) | Ok(Err(_)) => {
            let mut v = serde_json::to_value(backups.state()).expect("JSON of plain data");
            v["audit_seq"] = serde_json::json!(record.seq);
            Ok(json_response(StatusCode::ACCEPTED, &v))
        }
    }
}

/// A change made (`200`) or proposed for a second admin's approval (`202`).
fn outcome(o: Outcome) -> Resp {
    match o {
        Outcome::Applied(v) => json_response(StatusCode::OK, &v),
        Outcome::Proposed(v) => json_response(StatusCode::ACCEPTED, &v),
    }
}

/// A proposal answered `202`: made, waiting for a second admin.
fn proposed(v: serde_json::Value) -> Resp {
    json_response(StatusCode::ACCEPTED, &v)
}

/// `POST /admin/v1/proposals/{id}/approve` and `/reject`: the body is optional.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Why, for the proposal and the audit log (at most 512 characters).
    note: Option<String>,
}

/// `POST /admin/v1/risk/blocklists/{list}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockedBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// A JSON object body (serde would also read a struct from an array of its fields).
async fn object_json<T: serde::de::DeserializeOwned>(req: Req, max: u64) -> Result<T, ApiError> {
    let bytes = read_body(req, max).await?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest("the body is not a JSON object".into()));
    }
    crate::http::json_body(&bytes)
}

/// A JSON body that may be absent (no bytes, or blanks only).
async fn optional_json<T: Default + serde::de::DeserializeOwned>(
    req: Req,
    max: u64,
) -> Result<T, ApiError> {
    let bytes = read_body(req, max).await?;
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Ok(T::default()),
        Some(b'{') => crate::http::json_body(&bytes),
        Some(_) => Err(ApiError::InvalidRequest("the body is not a JSON object".into())),
    }
}

/// `?limit=`: 1 to `max`, `LIST_LIMIT_DEFAULT` when absent.
fn limit_param(q: &HashMap<String, String>, max: usize) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(LIST_LIMIT_DEFAULT.min(max)),
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::InvalidRequest(format!("limit {t:?} is not 1 to {max}"))),
    }
}

/// `?from=` or `?to=`: an RFC 3339 instant.
fn instant_param(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    q.get(name)
        .map(|t| {
            DateTime::parse_from_rfc3339(t).map(|d| d.with_timezone(&Utc)).map_err(|e| {
                ApiError::InvalidRequest(format!("{name} {t:?} is not an RFC 3339 instant: {e}"))
            })
        })
        .transpose()
}

/// `GET /admin/v1/risk/decisions`: decisions made in `[from, to)` (default: the 24 hours before
/// now), oldest first, at most `limit`; `next_from` continues a listing cut at `limit`.
async fn risk_decisions<S: Store>(
    engine: &Engine<S>,
    q: &HashMap<String, String>,
) -> Result<serde_json::Value, ApiError> {
    let limit = limit_param(q, DECISIONS_LIMIT_MAX)?;
    let to = instant_param(q, "to")?.unwrap_or_else(|| engine.now());
    let from = match instant_param(q, "from")? {
        Some(f) => f,
        None => to.checked_sub_signed(chrono::TimeDelta::hours(24)).unwrap_or(to),
    };
    if from >= to {
        return Err(ApiError::InvalidRequest("from must be before to".into()));
    }
    let mut decisions =
        engine.store().risk_decisions(from, to, limit + 1).await.map_err(internal)?;
    let more = decisions.len() > limit;
    decisions.truncate(limit);
    // Decisions at the same instant as the last one listed may be listed again from there:
    // listed twice rather than missed.
    let next_from = more.then(|| decisions.last().map(|d| d.at)).flatten();
    Ok(serde_json::json!({
        "from": from, "to": to, "decisions": decisions, "more": more, "next_from": next_from,
    }))
}

async fn route<S: Store>(
    ctx: Arc<Admin<S>>,
    body_max: u64,
    backup_wait: Duration,
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
                .await
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
        ["admin", "v1", "webhooks", "parked", "purge"] => {
            allow(&method, &Method::POST)?;
            let body: PurgeBody = read_json(req, body_max).await?;
            Ok(json_response(StatusCode::OK, &purge_parked(&ctx, &admin, body).await?))
        }
        ["admin", "v1", "webhooks", "parked", event_id, "replay"] => {
            allow(&method, &Method::POST)?;
            replay_parked(engine, &admin, event_id).await?;
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
            for w in store.open_work().await.map_err(internal)? {
                let p = store.payment(&w.payment_id).await.map_err(internal)?;
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
            Ok(outcome(treasury.change_rates(&admin, rates, force).await?))
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
            Ok(outcome(treasury.change_spread(&admin, change).await?))
        }
        ["admin", "v1", "spreads"] => {
            allow_any(&method, &[Method::GET, Method::PUT])?;
            Ok(json_response(StatusCode::OK, &treasury.spreads()))
        }
        ["admin", "v1", "positions"] => {
            allow(&method, &Method::GET)?;
            let positions = treasury.positions().await?;
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
            let lines = treasury.revenue_async(from, to).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({ "revenue": lines })))
        }
        ["admin", "v1", "reload"] => {
            allow(&method, &Method::POST)?;
            // Any body is ignored: the configuration is read from where the daemon reads it.
            let reloader = ctx.reloader.get().and_then(std::sync::Weak::upgrade);
            let Some(reloader) = reloader else {
                return Err(ApiError::ConfigRefused("this daemon cannot reload".into()));
            };
            match reloader.reload(&admin).await {
                Ok(done) => Ok(json_response(StatusCode::OK, &done)),
                Err(reasons) => Err(ApiError::ConfigRefused(reasons.join("; "))),
            }
        }
        ["admin", "v1", "audit"] => {
            allow(&method, &Method::GET)?;
            let (records, chain) = treasury.audit().await?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "chain": chain, "records": records }),
            ))
        }
        ["admin", "v1", "proposals"] => {
            allow(&method, &Method::GET)?;
            let q = query(&req);
            let state = q
                .get("state")
                .map(|s| {
                    ProposalState::from_name(s).ok_or_else(|| {
                        ApiError::InvalidRequest(format!(
                            "state {s:?} is not pending, approved, rejected, withdrawn or expired"
                        ))
                    })
                })
                .transpose()?;
            let limit = limit_param(&q, PROPOSALS_LIST_MAX)?;
            let proposals = treasury.proposals(state, limit).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({ "proposals": proposals })))
        }
        ["admin", "v1", "proposals", id] => {
            allow(&method, &Method::GET)?;
            Ok(json_response(StatusCode::OK, &treasury.proposal(id).await?))
        }
        ["admin", "v1", "proposals", id, "approve"] => {
            allow(&method, &Method::POST)?;
            let body: DecisionBody = optional_json(req, body_max).await?;
            Ok(json_response(StatusCode::OK, &treasury.approve(&admin, id, body.note).await?))
        }
        ["admin", "v1", "proposals", id, "reject"] => {
            allow(&method, &Method::POST)?;
            let body: DecisionBody = optional_json(req, body_max).await?;
            Ok(json_response(StatusCode::OK, &treasury.reject(&admin, id, body.note).await?))
        }
        ["admin", "v1", "risk"] => {
            allow(&method, &Method::GET)?;
            Ok(json_response(StatusCode::OK, &treasury.risk_view().await?))
        }
        ["admin", "v1", "risk", "rules"] if method == Method::PUT => {
            let rules = object_json(req, body_max).await?;
            Ok(proposed(treasury.propose_risk_rules(&admin, rules).await?))
        }
        ["admin", "v1", "risk", "rules"] => {
            allow_any(&method, &[Method::PUT, Method::DELETE])?;
            Ok(proposed(treasury.propose_risk_reset(&admin).await?))
        }
        ["admin", "v1", "risk", "blocklists", list] => {
            let list = BlockList::from_name(list).ok_or(ApiError::NotFound)?;
            allow(&method, &Method::POST)?;
            let body: BlockedBody = object_json(req, body_max).await?;
            Ok(proposed(treasury.propose_blocked(&admin, list, body.add, body.remove).await?))
        }
        ["admin", "v1", "risk", "funds"] => {
            allow(&method, &Method::POST)?;
            let funds: FundsRecord = object_json(req, body_max).await?;
            Ok(proposed(treasury.propose_funds(&admin, funds).await?))
        }
        ["admin", "v1", "risk", "decisions"] => {
            allow(&method, &Method::GET)?;
            Ok(json_response(StatusCode::OK, &risk_decisions(engine, &query(&req)).await?))
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
        ["admin", "v1", "store", "backup"] if method == Method::POST => {
            let body: BackupBody = read_json(req, body_max).await?;
            start_backup(&ctx, &admin, body, backup_wait).await
        }
        ["admin", "v1", "store", "backup"] => {
            allow_any(&method, &[Method::GET, Method::POST])?;
            match store.backups() {
                Some(b) => Ok(json_response(StatusCode::OK, &b.state())),
                None => backup_error(&BackupError::Unsupported(
                    "this daemon's store has no backup of its own".into(),
                )),
            }
        }
        ["console", ..] => Ok(crate::console::serve(&ctx, &admin, req).await),
        _ => Err(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: &BackupError) -> (StatusCode, serde_json::Value) {
        use http_body_util::BodyExt;
        let resp = backup_error(e).unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_backup_that_does_not_fit_is_507_and_not_retried_as_it_is() {
        let e = BackupError::NoSpace { dir: "/b".into(), needed: 2 << 30, available: 1 << 30 };
        let (status, v) = answer(&e).await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(v["error"]["code"], "BACKUP_NO_SPACE");
        assert_eq!(v["error"]["retryable"], false);
        assert!(v["error"]["message"].as_str().unwrap().contains("1073741824 bytes free"), "{v}");
        // Abandoned at shutdown: as abandoned for too many writes.
        let (status, v) = answer(&BackupError::Cancelled).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (&v["error"]["code"], &v["error"]["retryable"]),
            (&"BACKUP_ABANDONED".into(), &true.into())
        );
    }
}
