//! Assembling and running the daemon: store, rates, acquirer clients (and the in-process sandbox
//! acquirer for endpoints named `sandbox`), the engine, its workers (resolver, webhook delivery)
//! three listeners (partner, acquirer, admin), and the operators' plain-HTTP one ([`crate::ops`])
//! when `[ops] listen` is set. Start resumes whatever the last process left:
//! the workers read their work from the store. Shutdown stops accepting, drains every connection,
//! lets the workers finish what they are doing, then makes a final flush. What a reload may
//! change is made by [`parts`]; [`crate::ops::reload`] makes it again while the daemon runs.

pub mod parts;
mod risk;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qrbridge_adapters::acquirer::sandbox::{Sandbox, SandboxConfig};
use qrbridge_adapters::decode::DecodeLimits;
use qrbridge_adapters::https::{self, ServeLimits};
use qrbridge_config::{Config, Identity, Listeners, Partner};
use qrbridge_fx::{Currency, SpreadPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::clock::Clock;
use crate::cluster::LeasePolicy;
use crate::http::{self as partner_http, HttpLimits};
use crate::ops::reload::{ConfigSource, InForce, Refused, Reloaded, Reloader};
use crate::payments::engine::{CancelPolicy, Engine, EngineParts, ResolverPolicy};
use crate::payments::risk::Blocklists;
use crate::rates::Feeds;
use crate::settlement::{BusinessDays, Settlement};
use crate::store::{AnyStore, Store};
use crate::tls;
use crate::treasury::Treasury;
use crate::webhooks::DeliveryPolicy;
use parts::{ListenerParts, ListenerSlot, Parts, ServiceSlot};

/// How soon after its creation a payment must be sent, or not at all (see
/// [`ResolverPolicy::send_by`]).
const SEND_BY_MS: i64 = 2_000;

/// A worker a node runs while it leads.
type Worker = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("configuration: {0}")]
    Config(String),
}

/// How to start.
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    pub sandbox: SandboxConfig,
}

/// A running daemon.
pub struct Daemon {
    pub partner_addr: SocketAddr,
    pub acquirer_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The ops listener's address (`/healthz`, `/readyz`, `/metrics`); `None` when it is off.
    pub ops_addr: Option<SocketAddr>,
    pub engine: Arc<Engine<AnyStore>>,
    /// Rates, spreads and positions over the engine (what the admin API serves).
    pub treasury: Arc<Treasury<AnyStore>>,
    pub sandbox: Option<Sandbox>,
    shutdown: watch::Sender<bool>,
    /// How long shutdown waits for connections and workers before it drops them.
    shutdown_timeout: Duration,
    /// Makes what can change again from the configuration ([`Daemon::reload`]).
    reloader: Arc<Reloader>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// A listener about to be served.
struct Listen {
    what: &'static str,
    /// The metrics' name for it, and its routes.
    label: &'static str,
    routes: &'static [(&'static str, &'static str)],
    addr: SocketAddr,
    tls: tls::ReloadableTls,
    svc: ServiceSlot,
}

impl Listen {
    /// Binds and serves until shutdown; returns the bound address.
    async fn spawn(
        self,
        limits: ServeLimits,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>, ListenerSlot), StartError> {
        let Listen { what, label, routes, addr, tls, svc } = self;
        let bind = |source| StartError::Bind { what, addr, source };
        let listener = https::listen(addr).map_err(bind)?;
        let bound = listener.local_addr().map_err(bind)?;
        let serving = svc.clone();
        let task = tokio::spawn(https::serve_named(
            label,
            listener,
            tls.source(),
            limits,
            shutdown.clone(),
            move |req, conn| {
                partner_http::serve_counted(label, routes, serving.current(), req, conn)
            },
        ));
        tracing::info!(addr = %bound, "{what} listening");
        Ok((bound, task, ListenerSlot { what, tls, svc }))
    }
}

impl Daemon {
    /// Starts everything `config` describes; a reload reads the same files again.
    pub async fn start(config: Config, opts: StartOptions) -> Result<Daemon, StartError> {
        let same = config.clone();
        Daemon::start_reloadable(config, opts, Arc::new(move || Ok(same.clone()))).await
    }

    /// Starts everything `config` describes; a reload takes the configuration `source` gives.
    pub async fn start_reloadable(
        config: Config,
        opts: StartOptions,
        source: ConfigSource,
    ) -> Result<Daemon, StartError> {
        if config.partners.is_empty() {
            return Err(StartError::Config("no partners are configured".into()));
        }
        // Before anything records a metric: what is recorded earlier is lost.
        crate::ops::handle();
        let store = Arc::new(AnyStore::open(&config.storage).await?);
        if let Some(backups) = store.backups() {
            // A backup folder may not be one of the daemon's own: the PKI, settlement files.
            let folders = [&config.tls.server_cert, &config.tls.server_key, &config.tls.admin_ca]
                .into_iter()
                .filter_map(|p| p.parent().map(Path::to_path_buf))
                .chain([config.settlement.dir.clone()]);
            backups.keep_out(folders);
        }
        tracing::info!(store = store.kind(), "store open");
        let rates = crate::rates::book(&config.fx);
        let s = &config.fx.spread;
        let spreads = SpreadPolicy::new(s.default_bps, s.min_bps, s.max_bps)
            .map_err(|e| StartError::Config(format!("fx.spread: {e}")))?;
        let (shutdown, shutdown_rx) = watch::channel(false);

        // The sandbox acquirer first (acquirers named `sandbox` are sent to it), then everything
        // a reload may make again.
        let mut sandbox = None;
        if let Some(a) = config.acquirers.iter().find(|a| a.endpoint == "sandbox") {
            let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
            let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
                what: "sandbox acquirer",
                addr,
                source,
            })?;
            let tls = tls::server_config(
                &config.tls.server_cert,
                &config.tls.server_key,
                tls::roots(&[&a.ca])?,
                true,
            )?;
            let sb = Sandbox::start(listener, tls, opts.sandbox)
                .map_err(|source| StartError::Bind { what: "sandbox acquirer", addr, source })?;
            tracing::info!(addr = %sb.addr(), "sandbox acquirer started in-process");
            sandbox = Some(sb);
        }
        let sandbox_base = sandbox.as_ref().map(|s| format!("https://{}", s.addr()));
        let parts =
            Parts::build(&config, sandbox_base.as_deref(), &[]).map_err(StartError::Config)?;

        let settlement = &config.settlement;
        let tz: chrono_tz::Tz = settlement.time_zone.parse().map_err(|_| {
            StartError::Config(format!("settlement.time_zone {:?}", settlement.time_zone))
        })?;
        let (h, m) = qrbridge_config::validate::parse_hhmm(&settlement.cancel_until)
            .ok_or_else(|| StartError::Config("settlement.cancel_until".into()))?;
        let until = chrono::NaiveTime::from_hms_opt(h, m, 0)
            .ok_or_else(|| StartError::Config("settlement.cancel_until".into()))?;

        let engine = Engine::new(EngineParts {
            store: store.clone(),
            clock: opts.clock.clone(),
            rates,
            spreads,
            router: parts.router.clone(),
            acquirers: parts.acquirers.clone(),
            partners: parts.partners.clone(),
            quote_ttl: chrono::Duration::seconds(config.fx.quote_ttl_s as i64),
            decode_limits: DecodeLimits { max_chars: config.limits.code_chars_max as usize },
            cancel: CancelPolicy::contract(until),
            resolver: ResolverPolicy {
                schedule: config
                    .resolver
                    .inquiry_schedule_s
                    .iter()
                    .map(|s| chrono::Duration::seconds(*s as i64))
                    .collect(),
                expiry: chrono::Duration::seconds(config.resolver.payment_expiry_s as i64),
                reversal_refusals_max: config.resolver.reversal_refusals_max,
                acquirer_concurrency_max: config.resolver.acquirer_concurrency_max as usize,
                late_approvals_max: config.resolver.late_approvals_max,
                // Sent within `send_by` of its creation, then the longest an instruction can
                // take to any acquirer, and a second more.
                send_window: chrono::Duration::milliseconds(
                    SEND_BY_MS
                        + config
                            .acquirers
                            .iter()
                            .map(|a| (a.connect_timeout_ms + a.timeout_ms) as i64)
                            .max()
                            .unwrap_or(0)
                        + 1_000,
                ),
                send_by: chrono::Duration::milliseconds(SEND_BY_MS),
            },
            refund_window_days: settlement.refund_window_days,
            // Put in force with what admins approved once the treasury has read it (below).
            risk: Default::default(),
        });

        // Rates: local sources now (start-up waits for them), URLs and polls in a worker; then
        // what admins set before the restart.
        let feeds = Arc::new(Feeds::new(&config.fx, opts.clock.clone())?);
        let book = crate::treasury::rate_sink(engine.clone());
        feeds.refresh_local(book.as_ref()).await;
        let (h, m) = qrbridge_config::validate::parse_hhmm(&settlement.cutoff)
            .ok_or_else(|| StartError::Config("settlement.cutoff".into()))?;
        let days = BusinessDays {
            tz,
            cutoff: chrono::NaiveTime::from_hms_opt(h, m, 0)
                .ok_or_else(|| StartError::Config("settlement.cutoff".into()))?,
            cancel: CancelPolicy::contract(until),
        };
        let node = crate::cluster::node_id(config.cluster.node_id.as_deref());
        let lease = LeasePolicy { ttl: Duration::from_millis(config.cluster.lease_ttl_ms) };
        let treasury = Arc::new(
            Treasury::new(engine.clone(), feeds.clone(), days).on_node(node.clone(), lease),
        );
        // The head first: a change another node makes while the settings are read is seen.
        let settings_seen = store.audit_head().await?.map(|h| h.seq);
        let base_policy = parts.risk.policy(None, &Blocklists::default()).map_err(|ps| {
            StartError::Config(ps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })?;
        treasury.put_risk_base(parts.risk.clone(), base_policy);
        treasury.set_dual_control(config.risk.dual_control.clone());
        if config.tls.admin_identities.len() < 2 {
            tracing::warn!(
                admins = config.tls.admin_identities.len(),
                "dual control needs two admin identities (tls.admin_identities): changes that \
                 need a second admin can be proposed but not approved"
            );
        }
        treasury.restore().await?;
        treasury.settings_reached(settings_seen.unwrap_or(0));
        // The risk counters from the store, never from memory: the last day's payments, those
        // not final, what the partners owe.
        let risk = treasury.rebuild_risk().await?;
        tracing::info!(
            payments = risk.recent_payments,
            open = risk.open_payments,
            "risk counters rebuilt"
        );
        let treasury_watch = treasury.clone();
        let treasury_handle = treasury.clone();
        // Other nodes write work, events and settings that wake no one here: look for them.
        let poll = store.shared().then(|| Duration::from_millis(config.cluster.poll_ms));
        if store.shared() {
            tracing::info!(node = %node, "one of several nodes on a shared store");
        }
        let settlement_runs = Arc::new(
            Settlement::new(
                treasury.clone(),
                days,
                settlement.dir.clone(),
                parts.settlement.partners.clone(),
                parts.settlement.acquirers.clone(),
            )
            .with_monitoring(config.risk.monitoring.clone())
            .on_node(node.clone(), lease),
        );

        let l = &config.limits;
        let admissions: [partner_http::Admission; 3] = Default::default();
        let http_limits = HttpLimits {
            body_bytes_max: l.body_bytes_max,
            concurrency_max: l.concurrency_max as usize,
            caller_concurrency_max: HashMap::new(),
            request_timeout: Duration::from_millis(l.request_timeout_ms),
            body_read_timeout: Duration::from_millis(l.body_read_timeout_ms),
            admission: Default::default(),
        };
        let serve_limits = ServeLimits {
            connections_max: l.connections_max as usize,
            connections_per_ip_max: l.connections_per_ip_max as usize,
            handshakes_max: l.handshakes_max as usize,
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            header_read_timeout: Duration::from_millis(l.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            connection_max_age: Duration::from_secs(l.connection_max_age_s),
            http2_keep_alive_interval: Duration::from_millis(l.http2_keep_alive_interval_ms),
            http2_keep_alive_timeout: Duration::from_millis(l.http2_keep_alive_timeout_ms),
            http2_streams_max: l.http2_streams_max,
            shutdown_timeout: Duration::from_millis(l.shutdown_timeout_ms),
            linger: Duration::from_millis(l.linger_ms),
            linger_bytes_max: l.linger_bytes_max,
        };
        let admin_api = Arc::new(Admin {
            engine: engine.clone(),
            treasury: treasury.clone(),
            settlement: settlement_runs.clone(),
            reloader: std::sync::OnceLock::new(),
        });
        let [partner_svc, acquirer_svc, admin_svc] =
            parts.services(&engine, &admin_api, &http_limits, &admissions);
        let listen = |what, label, routes, addr, l: &ListenerParts, svc| Listen {
            what,
            label,
            routes,
            addr,
            tls: tls::ReloadableTls::with(l.files.clone(), l.tls.clone()),
            svc: ServiceSlot::new(svc),
        };
        let ls = &config.listeners;
        let partner = listen(
            "partner API",
            "partner",
            partner_http::ROUTES,
            ls.partner,
            &parts.partner,
            partner_svc,
        );
        let acquirer = listen(
            "acquirer API",
            "acquirer",
            crate::acquirer_api::ROUTES,
            ls.acquirer,
            &parts.acquirer,
            acquirer_svc,
        );
        let admin =
            listen("admin API", "admin", crate::admin::ROUTES, ls.admin, &parts.admin, admin_svc);
        let senders = crate::webhooks::Senders::new(parts.senders.clone());
        let delivering = senders.clone();
        let w = &config.webhooks;
        let delivery = DeliveryPolicy {
            backoff_initial: Duration::from_millis(w.backoff_initial_ms),
            backoff_max: Duration::from_millis(w.backoff_max_ms),
            max_age: chrono::Duration::seconds(w.max_age_s as i64),
            concurrency: w.concurrency as usize,
            partner_concurrency: w.partner_concurrency as usize,
            poll,
        };

        // Workers first, so what the last process left is under way before new requests come.
        // Those whose work is done once are led by one node ([`crate::cluster::lead`]; on a store
        // of one process, that is this one, at once).
        let led = |role, work| {
            tokio::spawn(crate::cluster::lead(
                store.clone(),
                role,
                node.clone(),
                lease,
                shutdown_rx.clone(),
                work,
            ))
        };
        let resolver_concurrency = config.resolver.concurrency as usize;
        let retention = crate::store::retention::QuoteRetention {
            keep_after_expiry: chrono::Duration::seconds(config.storage.quote_retention_s as i64),
            every: Duration::from_secs(config.storage.retention_sweep_s),
            batch: 1_000,
        };
        let mut workers = vec![
            led("resolver", {
                let engine = engine.clone();
                Box::new(move |stop| {
                    Box::pin(crate::payments::resolver::run(
                        engine.clone(),
                        resolver_concurrency,
                        poll,
                        stop,
                    )) as Worker
                }) as Box<dyn Fn(watch::Receiver<bool>) -> Worker + Send>
            }),
            led("webhooks", {
                let engine = engine.clone();
                Box::new(move |stop| {
                    Box::pin(crate::webhooks::run(
                        engine.clone(),
                        delivering.clone(),
                        delivery.clone(),
                        stop,
                    )) as Worker
                })
            }),
            led("quote-retention", {
                let (store, clock) = (store.clone(), opts.clock.clone());
                Box::new(move |stop| {
                    Box::pin(crate::store::retention::run(
                        store.clone(),
                        clock.clone(),
                        retention,
                        stop,
                    )) as Worker
                })
            }),
            tokio::spawn(feeds.run(book, shutdown_rx.clone())),
            tokio::spawn(risk::run(
                treasury.clone(),
                Duration::from_millis(config.risk.refresh_ms),
                shutdown_rx.clone(),
            )),
        ];
        if let Some(every) = poll {
            // Spreads and rates another node set.
            let t = treasury_watch;
            workers.push(tokio::spawn(crate::cluster::watch_settings(
                store.clone(),
                every,
                settings_seen,
                shutdown_rx.clone(),
                move |head| {
                    let t = t.clone();
                    async move {
                        match t.reload().await {
                            Ok(()) => {
                                tracing::info!("settings changed by another node: in force here");
                                t.settings_reached(head.unwrap_or(0));
                                true
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "settings changed elsewhere could not be read");
                                false
                            }
                        }
                    }
                },
            )));
        }
        let open = store.open_work().await?.len();
        let undelivered = store.outbox().await?.len();
        if open + undelivered > 0 {
            tracing::info!(
                open,
                undelivered,
                "resuming payments in doubt and undelivered webhooks"
            );
        }
        // The ops listener first, so a supervisor sees "not ready" rather than nothing.
        let listeners_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut ops_task = None;
        let ops_addr = match config.ops.listen.filter(|_| config.ops.enabled) {
            Some(addr) => {
                let bind = |source| StartError::Bind { what: "ops listener", addr, source };
                let (listener, bound) = crate::ops::bind(addr).await.map_err(bind)?;
                let ops = Arc::new(crate::ops::Ops {
                    engine: engine.clone(),
                    node: node.to_string(),
                    rates_stale_after: chrono::Duration::seconds(
                        i64::try_from(config.ops.rates_stale_after_s).unwrap_or(i64::MAX),
                    ),
                    listeners_up: listeners_up.clone(),
                    rendered: Default::default(),
                });
                ops_task = Some(tokio::spawn(crate::ops::serve(
                    listener,
                    ops,
                    shutdown_rx.clone(),
                    serve_limits.shutdown_timeout,
                )));
                tracing::info!(addr = %bound, "ops listening");
                Some(bound)
            }
            None => None,
        };
        let (acquirer_addr, t1, acquirer_slot) = acquirer.spawn(serve_limits, &shutdown_rx).await?;
        let (admin_addr, t2, admin_slot) = admin.spawn(serve_limits, &shutdown_rx).await?;
        let (partner_addr, t3, partner_slot) = partner.spawn(serve_limits, &shutdown_rx).await?;
        let reloader = Arc::new(Reloader {
            source,
            current: tokio::sync::Mutex::new(InForce::new(config.clone(), &node)),
            node: node.clone(),
            engine: engine.clone(),
            treasury: treasury_handle.clone(),
            settlement: settlement_runs,
            admin: admin_api,
            senders,
            listeners: vec![partner_slot, acquirer_slot, admin_slot],
            http_limits,
            admissions,
            sandbox: sandbox_base,
        });
        let weak: std::sync::Weak<dyn crate::admin::Reload> = Arc::downgrade(&reloader) as _;
        let _ = reloader.admin.reloader.set(weak);
        listeners_up.store(true, std::sync::atomic::Ordering::Release);
        let mut listeners = vec![t1, t2, t3];
        listeners.extend(ops_task);
        Ok(Daemon {
            partner_addr,
            acquirer_addr,
            admin_addr,
            ops_addr,
            engine,
            treasury: treasury_handle,
            sandbox,
            shutdown,
            shutdown_timeout: serve_limits.shutdown_timeout,
            reloader,
            listeners,
            workers,
        })
    }

    pub fn store(&self) -> &Arc<AnyStore> {
        self.engine.store()
    }

    /// The payment engine (its clock, its risk book).
    pub fn engine(&self) -> &Arc<Engine<AnyStore>> {
        &self.engine
    }

    /// Does a round of the risk book's upkeep now (it runs every `risk.refresh_ms` anyway):
    /// the payments the other nodes made in the last day, what the partners owe.
    pub async fn refresh_risk(&self) {
        risk::refresh(&self.treasury, self.engine.now() - chrono::Duration::hours(24)).await;
    }

    /// Reads the configuration again and puts in force what changed, all or nothing
    /// ([`crate::ops::reload`]); `actor` is who asked, for the audit log.
    pub async fn reload(&self, actor: &str) -> Result<Reloaded, Refused> {
        self.reloader.reload(actor).await
    }

    /// What reloads this daemon (the admin API's `POST /admin/v1/reload` holds it too).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Stops accepting, lets open connections finish and the workers finish their current task,
    /// flushes, and stops the sandbox — all within `limits.shutdown_timeout_ms`: what has not
    /// finished by then is dropped (payments in doubt are the resolver's at the next start).
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let _ = self.shutdown.send(true);
        let tasks: Vec<_> = self.listeners.into_iter().chain(self.workers).collect();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let joined = tokio::time::timeout_at(deadline, async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!("shutdown deadline passed: stopping what is left");
            aborts.iter().for_each(|a| a.abort());
        }
        if let Err(e) = self.engine.store().flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        if let Some(sb) = self.sandbox {
            if tokio::time::timeout_at(deadline, sb.shutdown()).await.is_err() {
                tracing::warn!("the sandbox acquirer did not stop in time");
            }
        }
    }
}

/// The embedded default's configuration under `data_dir`, with the development PKI made if
/// missing, listening on `listeners`.
pub fn embedded_config(data_dir: &Path, listeners: Listeners) -> Result<Config, StartError> {
    let pki = data_dir.join("pki");
    crate::pki::ensure_dev_pki(&pki)?;
    let mut c = crate::defaults::dev_config(data_dir);
    c.listeners = listeners;
    c.storage.path = data_dir.join("db");
    c.settlement.dir = data_dir.join("settlement");
    c.tls.server_cert = pki.join("server.crt");
    c.tls.server_key = pki.join("server.key");
    c.tls.client_cert = pki.join("bridge-client.crt");
    c.tls.client_key = pki.join("bridge-client.key");
    c.tls.admin_ca = pki.join("ca.crt");
    // Two admins, so changes under dual control can be proposed by one and approved by the other.
    c.tls.admin_identities = vec!["admin".into(), "admin-2".into()];
    let all: Vec<Currency> =
        ["PHP", "KRW", "THB", "MYR", "SGD", "IDR", "VND", "HKD", "JPY", "USD", "EUR", "KHR"]
            .iter()
            .map(|c| Currency::from_code(c).expect("ISO 4217"))
            .collect();
    let partner = |id: &str, currencies: Vec<Currency>| Partner {
        id: id.into(),
        identity: Identity::SanDns(id.into()),
        ca: pki.join("ca.crt"),
        wallet_currencies: currencies,
        webhook_url: None,
        webhook_secret: None,
        webhook_ca: None,
        limits: Default::default(),
    };
    c.partners = vec![
        partner("partner-demo", all),
        partner(
            "partner-other",
            vec![
                Currency::from_code("KRW").expect("KRW"),
                Currency::from_code("PHP").expect("PHP"),
            ],
        ),
    ];
    let problems = qrbridge_config::validate::check(&c);
    if !problems.is_empty() {
        return Err(StartError::Config(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        ));
    }
    Ok(c)
}

/// Where the embedded default keeps its data unless told otherwise.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("var")
}
