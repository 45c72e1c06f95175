//! Reload without restart: SIGHUP and `POST /admin/v1/reload` read the configuration again and
//! put in force what can change while the daemon runs — certificates and keys, CRLs, the
//! partners (identities, CAs, currencies, limits, webhook URLs and secrets), the acquirers and
//! the routing table, the admin identities, and the spread bounds and default.
//!
//! All or nothing: the new configuration is validated, every file it names is read and every
//! client, directory, TLS configuration and service is made ([`Parts::build`]) before anything
//! changes; the spreads admins set must fall within the new bounds; a section that only a
//! restart can change (listeners, storage, cluster, ops, log, settlement, resolver, webhook
//! delivery policy, limits, rate feeds, quote lifetime) must be as it was. Any problem refuses
//! the reload whole, with every reason, and the settings in force stay. Then the reload is
//! written to the audit log (durably, before it takes effect: a reload the log does not show
//! never happened), and the new parts are put in force together.
//!
//! Requests under way finish on the settings they began with: each request takes its listener's
//! service, and each engine step its parties, when it begins. New connections meet the new TLS
//! configuration; connections already open keep serving, but every request's certificate is
//! checked against the directory in force, CRLs included, so a certificate revoked by the reload
//! is refused on an old connection too. An acquirer no longer configured keeps its client
//! ([`crate::payments::engine::Engine::set_parties`]): nothing is routed to it, but payments it
//! holds are still resolved, reversed and refunded. Rate limiters and per-partner concurrency
//! shares carry over to the new services where their settings did not change
//! ([`crate::http::Admission`]): a reload hands out no fresh burst and no extra permits.

use std::sync::Arc;

use qrbridge_config::{Acquirer, Config};
use qrbridge_fx::SpreadPolicy;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::admin::Admin;
use crate::daemon::parts::{ListenerSlot, Parts};
use crate::http::HttpLimits;
use crate::payments::engine::Engine;
use crate::settlement::Settlement;
use crate::store::{AnyStore, Store};
use crate::treasury::Treasury;
use crate::webhooks::Senders;

/// Where a reload reads the configuration from: the file the daemon was started with (and the
/// command line's overrides), or the embedded default made again.
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, Vec<String>> + Send + Sync>;

/// Why a reload was refused: every reason found. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reload refused: {}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

/// What a reload put in force.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// The sections that differ from the configuration before (files are read again either
    /// way: a rotated certificate under the same name is taken too).
    pub changed: Vec<&'static str>,
    pub partners: Vec<String>,
    pub acquirers: Vec<String>,
    /// The audit record of this reload.
    pub audit_seq: u64,
}

/// The configuration in force, what the audit log knows of it, and the acquirers reloads removed.
pub struct InForce {
    pub config: Config,
    /// [`summary`] of `config` as it was read (file digests included).
    pub summary: Value,
    /// Acquirers a reload removed: still let in to send refunds until the next restart.
    pub retired: Vec<Acquirer>,
}

impl InForce {
    pub fn new(config: Config, node: &str) -> Self {
        let summary = summary(&config, node);
        InForce { config, summary, retired: Vec::new() }
    }
}

/// What the daemon reloads, and how.
pub struct Reloader {
    pub(crate) source: ConfigSource,
    /// What is in force; held for the whole of a reload (one at a time).
    pub(crate) current: tokio::sync::Mutex<InForce>,
    pub(crate) node: Arc<str>,
    pub(crate) engine: Arc<Engine<AnyStore>>,
    pub(crate) treasury: Arc<Treasury<AnyStore>>,
    pub(crate) settlement: Arc<Settlement<AnyStore>>,
    pub(crate) admin: Arc<Admin<AnyStore>>,
    pub(crate) senders: Senders,
    /// Partner, acquirer, admin: the order of [`Parts::services`].
    pub(crate) listeners: Vec<ListenerSlot>,
    pub(crate) http_limits: HttpLimits,
    /// Each listener's rate limiters and permits, carried from service to service.
    pub(crate) admissions: [crate::http::Admission; 3],
    /// The in-process sandbox acquirer's base URL, when it runs.
    pub(crate) sandbox: Option<String>,
}

/// The sections only a restart changes, by name, as they compare.
fn fixed(c: &Config) -> Vec<(&'static str, Value)> {
    let mut fx = c.fx.clone();
    fx.spread = Default::default();
    vec![
        ("listeners", v(&c.listeners)),
        ("storage", v(&c.storage)),
        ("cluster", v(&c.cluster)),
        ("ops", v(&c.ops)),
        ("log", v(&c.log)),
        ("settlement", v(&c.settlement)),
        ("resolver", v(&c.resolver)),
        ("webhooks", v(&c.webhooks)),
        ("limits", v(&c.limits)),
        ("fx (other than fx.spread)", v(&fx)),
        ("risk.refresh_ms", v(&c.risk.refresh_ms)),
    ]
}

/// The sections a reload changes, as they compare.
fn reloadable(c: &Config) -> Vec<(&'static str, Value)> {
    vec![
        ("tls", v(&c.tls)),
        ("partners", v(&c.partners)),
        ("acquirers", v(&c.acquirers)),
        ("routes", v(&c.routes)),
        ("fx.spread", v(&c.fx.spread)),
        ("risk", v(&c.risk)),
    ]
}

/// A section as JSON, to be compared and recorded.
fn v(section: &impl serde::Serialize) -> Value {
    serde_json::to_value(section).unwrap_or(Value::Null)
}

/// The SHA-256 of a file's bytes, or why it could not be read.
fn file_digest(path: &std::path::Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// `url` without what may be a credential: user information, query and fragment.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit('@').next().unwrap_or_default();
    let path = if path.is_empty() { String::new() } else { format!("/{path}") };
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// What the audit log keeps of a configuration on node `node`: who is configured and how
/// (routes, limits, currencies), the spread bounds, and the digest of each certificate, CA and
/// CRL file as read now (never a key or a secret: a webhook secret is only said to be set, and
/// URLs lose their user information and query).
fn summary(c: &Config, node: &str) -> Value {
    let mut files: Vec<&std::path::Path> =
        vec![&c.tls.server_cert, &c.tls.client_cert, &c.tls.admin_ca];
    files.extend(c.tls.crls.iter().map(|p| p.as_path()));
    files.extend(c.partners.iter().map(|p| p.ca.as_path()));
    files.extend(c.partners.iter().filter_map(|p| p.webhook_ca.as_deref()));
    files.extend(c.acquirers.iter().map(|a| a.ca.as_path()));
    let lists = &c.risk.blocklists;
    files.extend(
        [&lists.merchants, &lists.mccs, &lists.acquirers]
            .into_iter()
            .flatten()
            .map(|p| p.as_path()),
    );
    files.sort();
    files.dedup();
    json!({
        "node": node,
        "partners": c.partners.iter().map(|p| json!({
            "id": p.id,
            "identity": p.identity,
            "ca": p.ca,
            "wallet_currencies": p.wallet_currencies,
            "limits": p.limits,
            "webhook_url": p.webhook_url.as_deref().map(redact),
            "webhook_secret_set": p.webhook_secret.is_some(),
        })).collect::<Vec<_>>(),
        "acquirers": c.acquirers.iter().map(|a| json!({
            "id": a.id,
            "endpoint": redact(&a.endpoint),
            "identity": a.identity,
            "ca": a.ca,
            "timeout_ms": a.timeout_ms,
            "connect_timeout_ms": a.connect_timeout_ms,
        })).collect::<Vec<_>>(),
        "routes": c.routes,
        "admin_identities": c.tls.admin_identities,
        "allow_tls12": c.tls.allow_tls12,
        "spread": c.fx.spread,
        "risk": c.risk,
        "files": files
            .iter()
            .map(|p| (p.display().to_string(), Value::String(file_digest(p))))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// Counts a reload by how it ended (`done`, `refused`).
fn counted(outcome: &'static str) {
    metrics::counter!("qrbridge_config_reloads_total", "outcome" => outcome).increment(1);
}

impl Reloader {
    /// Reads the configuration again and puts it in force, all or nothing (see the module docs);
    /// `actor` is who asked (an admin's identity, or `sighup`).
    pub async fn reload(&self, actor: &str) -> Result<Reloaded, Refused> {
        let answer = self.reload_once(actor).await;
        counted(if answer.is_ok() { "done" } else { "refused" });
        answer
    }

    async fn reload_once(&self, actor: &str) -> Result<Reloaded, Refused> {
        let mut current = self.current.lock().await;
        let new = (self.source)().map_err(Refused)?;
        let mut reasons: Vec<String> =
            qrbridge_config::validate::check(&new).iter().map(ToString::to_string).collect();
        for ((name, was), (_, now)) in fixed(&current.config).into_iter().zip(fixed(&new)) {
            if was != now {
                reasons.push(format!("{name} changed: only a restart applies it"));
            }
        }
        // The send window (how long another node waits before deciding a payment was never
        // sent) was set at start from the longest acquirer call: no acquirer may take longer.
        let longest = |c: &Config| {
            c.acquirers.iter().map(|a| a.connect_timeout_ms + a.timeout_ms).max().unwrap_or(0)
        };
        if self.engine.store().shared() && longest(&new) > self.longest_at_start() {
            reasons.push(format!(
                "acquirers: the longest call (connect_timeout_ms + timeout_ms = {} ms) would be \
                 longer than the {} ms the send window was set for at start: only a restart \
                 applies it",
                longest(&new),
                self.longest_at_start()
            ));
        }
        // An acquirer leaves only once nothing of it is in doubt: its routes can go first.
        let leaving: Vec<Acquirer> = current
            .config
            .acquirers
            .iter()
            .filter(|a| !new.acquirers.iter().any(|n| n.id == a.id))
            .cloned()
            .collect();
        if !leaving.is_empty() {
            reasons.extend(self.in_doubt_with(&leaving).await);
        }
        if !reasons.is_empty() {
            return Err(Refused(reasons));
        }
        let mut retired: Vec<Acquirer> = current
            .retired
            .iter()
            .filter(|r| !new.acquirers.iter().any(|a| a.id == r.id))
            .cloned()
            .collect();
        retired.extend(leaving);
        let new_summary = summary(&new, &self.node);
        let mut parts =
            Parts::build(&new, self.sandbox.as_deref(), &retired).map_err(|e| Refused(vec![e]))?;
        let s = &new.fx.spread;
        let base = SpreadPolicy::new(s.default_bps, s.min_bps, s.max_bps)
            .map_err(|e| Refused(vec![format!("fx.spread: {e}")]))?;
        let held = self.treasury.settings_held().await.map_err(|e| {
            Refused(vec![format!("the settings are being changed elsewhere; try again ({e})")])
        })?;
        let spreads = self.treasury.spreads_within(base).await.map_err(Refused)?;
        let risk = self.treasury.risk_policy_for(&parts.risk).await.map_err(Refused)?;

        let mut changed: Vec<&'static str> = reloadable(&current.config)
            .into_iter()
            .zip(reloadable(&new))
            .filter(|((_, was), (_, now))| was != now)
            .map(|((name, _), _)| name)
            .collect();
        if current.summary["files"] != new_summary["files"] {
            changed.push("files");
        }
        if held.lost() {
            return Err(Refused(vec!["the settings' turn was lost; try again".into()]));
        }
        let record = self
            .treasury
            .record_held(
                &held,
                actor,
                "config.reload",
                "config".into(),
                current.summary.clone(),
                json!({ "changed": changed, "config": new_summary }),
            )
            .await
            .map_err(|e| Refused(vec![format!("the audit log could not record it: {e}")]))?;

        // In force, together. A partner no longer configured keeps its webhook sender, so what
        // it is owed is still delivered (one configured without a webhook gets none).
        let old_senders = self.senders.current();
        for (partner, sender) in old_senders.iter() {
            if !new.partners.iter().any(|p| &p.id == partner) {
                parts.senders.entry(partner.clone()).or_insert_with(|| sender.clone());
            }
        }
        let services =
            parts.services(&self.engine, &self.admin, &self.http_limits, &self.admissions);
        self.engine.set_parties(parts.router, parts.acquirers, parts.partners);
        self.engine.set_spreads(spreads);
        self.treasury.put_risk_base(parts.risk, risk);
        self.treasury.set_dual_control(new.risk.dual_control.clone());
        self.settlement.set_parties(parts.settlement);
        self.settlement.set_monitoring(new.risk.monitoring.clone());
        self.senders.replace(parts.senders);
        self.engine.events_written.notify_one();
        let listening = [parts.partner, parts.acquirer, parts.admin];
        for ((slot, l), svc) in self.listeners.iter().zip(listening).zip(services) {
            slot.svc.put(svc);
            slot.tls.put(l.files, l.tls);
        }
        held.release().await;
        let reloaded = Reloaded {
            changed,
            partners: new.partners.iter().map(|p| p.id.clone()).collect(),
            acquirers: new.acquirers.iter().map(|a| a.id.clone()).collect(),
            audit_seq: record.seq,
        };
        *current = InForce { config: new, summary: record.after["config"].clone(), retired };
        tracing::info!(
            actor,
            changed = ?reloaded.changed,
            audit_seq = reloaded.audit_seq,
            "configuration reloaded"
        );
        Ok(reloaded)
    }

    /// The configuration in force (waits for a reload under way).
    pub async fn config_in_force(&self) -> Config {
        self.current.lock().await.config.clone()
    }

    /// Why `leaving` may not leave yet: each one's payments still in doubt.
    async fn in_doubt_with(&self, leaving: &[Acquirer]) -> Vec<String> {
        let store = self.engine.store();
        let open = match store.open_work().await {
            Ok(o) => o,
            Err(e) => return vec![format!("acquirers: the open work could not be read: {e}")],
        };
        let mut held: std::collections::BTreeMap<&str, usize> = Default::default();
        for item in open {
            match store.payment(&item.payment_id).await {
                Ok(Some(p)) => {
                    if let Some(a) = leaving.iter().find(|a| a.id == p.acquirer) {
                        *held.entry(a.id.as_str()).or_default() += 1;
                    }
                }
                Ok(None) => {}
                Err(e) => return vec![format!("acquirers: the open work could not be read: {e}")],
            }
        }
        held.into_iter()
            .map(|(id, n)| {
                format!(
                    "acquirers: {id} still has {n} payment(s) in doubt; remove its routes first, \
                     and the acquirer once they are resolved"
                )
            })
            .collect()
    }

    fn longest_at_start(&self) -> u64 {
        let window = self.engine.resolver_policy().send_window.num_milliseconds();
        let margin = self.engine.resolver_policy().send_by.num_milliseconds() + 1_000;
        u64::try_from(window - margin).unwrap_or(0)
    }
}

impl crate::admin::Reload for Reloader {
    fn reload<'a>(
        &'a self,
        actor: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Vec<String>>> + Send + 'a>>
    {
        Box::pin(async move {
            match Reloader::reload(self, actor).await {
                Ok(done) => Ok(serde_json::to_value(done).unwrap_or(Value::Null)),
                Err(Refused(reasons)) => Err(reasons),
            }
        })
    }
}
