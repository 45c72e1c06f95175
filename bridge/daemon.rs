//! Assembling and running the daemon: store, rates, acquirer clients (and the in-process sandbox
//! acquirer for endpoints named `sandbox`), the engine, its workers (resolver, webhook delivery)
//! and three listeners (partner, acquirer, admin). Start resumes whatever the last process left:
//! the workers read their work from the store. Shutdown stops accepting, drains every connection,
//! lets the workers finish what they are doing, then makes a final flush.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qrbridge_adapters::acquirer::sandbox::{Sandbox, SandboxConfig};
use qrbridge_adapters::acquirer::AcquirerClient;
use qrbridge_adapters::decode::DecodeLimits;
use qrbridge_adapters::https::{self, ServeLimits};
use qrbridge_adapters::webhook::WebhookSender;
use qrbridge_config::{Config, Identity, Listeners, Partner};
use qrbridge_fx::{Currency, SpreadPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::clock::Clock;
use crate::engine::{
    AcquirerService, CancelPolicy, Engine, EngineParts, PartnerPolicy, ResolverPolicy,
};
use crate::http::{self as partner_http, HttpLimits, Rate, Req, Resp};
use crate::rates::Feeds;
use crate::settlement::{BusinessDays, Settlement};
use crate::store::{SledStore, Store};
use crate::tls::{self, Directory};
use crate::treasury::Treasury;
use crate::webhooks::DeliveryPolicy;

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
    pub engine: Arc<Engine<SledStore>>,
    pub sandbox: Option<Sandbox>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// A listener about to be served.
struct Listen {
    what: &'static str,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    svc: tower::util::BoxCloneSyncService<Req, Resp, std::convert::Infallible>,
}

impl Listen {
    /// Binds and serves until shutdown; returns the bound address.
    async fn spawn(
        self,
        limits: ServeLimits,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
        let Listen { what, addr, tls, svc } = self;
        let bind = |source| StartError::Bind { what, addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind)?;
        let bound = listener.local_addr().map_err(bind)?;
        let task = tokio::spawn(https::serve(
            listener,
            tls,
            limits,
            shutdown.clone(),
            move |req, conn| partner_http::serve_request(svc.clone(), req, conn),
        ));
        tracing::info!(addr = %bound, "{what} listening");
        Ok((bound, task))
    }
}

fn client_tls(config: &Config, ca: &Path) -> Result<rustls::ClientConfig, tls::TlsError> {
    let roots = tls::roots(&[ca])?;
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(
        tls::load_certs(&config.tls.client_cert)?,
        tls::load_key(&config.tls.client_key)?,
    )?)
}

impl Daemon {
    /// Starts everything `config` describes.
    pub async fn start(config: Config, opts: StartOptions) -> Result<Daemon, StartError> {
        if config.partners.is_empty() {
            return Err(StartError::Config("no partners are configured".into()));
        }
        let store = Arc::new(SledStore::open(&config.storage.path, config.storage.cache_bytes)?);
        let rates = crate::rates::book(&config.fx);
        let s = &config.fx.spread;
        let spreads = SpreadPolicy::new(s.default_bps, s.min_bps, s.max_bps)
            .map_err(|e| StartError::Config(format!("fx.spread: {e}")))?;
        let (shutdown, shutdown_rx) = watch::channel(false);

        let mut sandbox = None;
        let mut acquirers = HashMap::new();
        for a in &config.acquirers {
            let base = if a.endpoint == "sandbox" {
                if sandbox.is_none() {
                    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
                    let listener = TcpListener::bind(addr).await.map_err(|source| {
                        StartError::Bind { what: "sandbox acquirer", addr, source }
                    })?;
                    let tls = tls::server_config(
                        &config.tls.server_cert,
                        &config.tls.server_key,
                        tls::roots(&[&a.ca])?,
                        true,
                    )?;
                    let sb = Sandbox::start(listener, tls, opts.sandbox).map_err(|source| {
                        StartError::Bind { what: "sandbox acquirer", addr, source }
                    })?;
                    tracing::info!(addr = %sb.addr(), "sandbox acquirer started in-process");
                    sandbox = Some(sb);
                }
                format!("https://{}", sandbox.as_ref().map(|s| s.addr()).expect("started above"))
            } else {
                a.endpoint.clone()
            };
            let client = AcquirerClient::new(
                &a.id,
                &base,
                client_tls(&config, &a.ca)?,
                Duration::from_millis(a.connect_timeout_ms),
                Duration::from_millis(a.timeout_ms),
            );
            acquirers.insert(a.id.clone(), AcquirerService::new(client));
        }

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
            router: crate::routing::router(&config),
            acquirers,
            partners: config
                .partners
                .iter()
                .map(|p| {
                    (
                        p.id.clone(),
                        PartnerPolicy {
                            wallet_currencies: p.wallet_currencies.clone(),
                            payment_cny_minor_max: p.limits.payment_cny_minor_max,
                        },
                    )
                })
                .collect(),
            quote_ttl: chrono::Duration::seconds(config.fx.quote_ttl_s as i64),
            decode_limits: DecodeLimits { max_chars: config.limits.code_chars_max as usize },
            cancel: CancelPolicy { tz, until },
            resolver: ResolverPolicy {
                schedule: config
                    .resolver
                    .inquiry_schedule_s
                    .iter()
                    .map(|s| chrono::Duration::seconds(*s as i64))
                    .collect(),
                expiry: chrono::Duration::seconds(config.resolver.payment_expiry_s as i64),
            },
            refund_window_days: settlement.refund_window_days,
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
            cancel: CancelPolicy { tz, until },
        };
        let treasury = Arc::new(Treasury::new(engine.clone(), feeds.clone(), days));
        treasury.restore()?;
        let settlement_runs = Arc::new(Settlement::new(
            treasury.clone(),
            days,
            settlement.dir.clone(),
            config.partners.iter().map(|p| (p.id.clone(), p.wallet_currencies.clone())).collect(),
            config.acquirers.iter().map(|a| a.id.clone()).collect(),
        ));

        let http_limits = HttpLimits {
            body_bytes_max: config.limits.body_bytes_max,
            concurrency_max: config.limits.concurrency_max as usize,
            request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
        };
        let serve_limits = ServeLimits {
            connections_max: config.limits.connections_max as usize,
            handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
        };
        let server_tls = |cas: &[&Path]| {
            tls::server_config(
                &config.tls.server_cert,
                &config.tls.server_key,
                tls::roots(cas)?,
                config.tls.allow_tls12,
            )
        };

        // Partners.
        let mut directory = Directory::default();
        let mut cas: Vec<&Path> = Vec::new();
        for p in &config.partners {
            directory.add(&p.id, p.identity.clone(), &p.ca)?;
            if !cas.contains(&p.ca.as_path()) {
                cas.push(&p.ca);
            }
        }
        let rates = config
            .partners
            .iter()
            .map(|p| (p.id.clone(), Rate { per_s: p.limits.requests_per_s, burst: p.limits.burst }))
            .collect();
        let partner = Listen {
            what: "partner API",
            addr: config.listeners.partner,
            tls: server_tls(&cas)?,
            svc: partner_http::partner_service(
                engine.clone(),
                directory,
                rates,
                http_limits.clone(),
            ),
        };

        // Acquirers (those with an identity may call in).
        let mut directory = Directory::default();
        let mut cas: Vec<&Path> = Vec::new();
        for a in &config.acquirers {
            if let Some(identity) = &a.identity {
                directory.add(&a.id, identity.clone(), &a.ca)?;
                if !cas.contains(&a.ca.as_path()) {
                    cas.push(&a.ca);
                }
            }
        }
        let acquirer = Listen {
            what: "acquirer API",
            addr: config.listeners.acquirer,
            tls: if cas.is_empty() {
                // Nobody may call in; the listener still needs a CA, and refuses everyone.
                server_tls(&[&config.tls.admin_ca])?
            } else {
                server_tls(&cas)?
            },
            svc: crate::acquirer_api::acquirer_service(
                engine.clone(),
                directory,
                HashMap::new(),
                http_limits.clone(),
            ),
        };

        // Admins.
        let mut directory = Directory::default();
        for name in &config.tls.admin_identities {
            let identity = if name.contains("://") {
                Identity::SanUri(name.clone())
            } else {
                Identity::SanDns(name.clone())
            };
            directory.add(name, identity, &config.tls.admin_ca)?;
        }
        let admin = Listen {
            what: "admin API",
            addr: config.listeners.admin,
            tls: server_tls(&[&config.tls.admin_ca])?,
            svc: crate::admin::admin_service(
                Arc::new(Admin { engine: engine.clone(), treasury, settlement: settlement_runs }),
                directory,
                http_limits,
            ),
        };

        // Webhook senders, one per partner with a URL.
        let mut senders = HashMap::new();
        for p in &config.partners {
            if let (Some(url), Some(secret)) = (&p.webhook_url, &p.webhook_secret) {
                let ca = p.webhook_ca.as_ref().unwrap_or(&p.ca);
                let sender = WebhookSender::new(
                    url,
                    secret.as_bytes(),
                    client_tls(&config, ca)?,
                    Duration::from_millis(config.webhooks.timeout_ms.min(5_000)),
                    Duration::from_millis(config.webhooks.timeout_ms),
                );
                senders.insert(p.id.clone(), sender);
            }
        }
        let w = &config.webhooks;
        let delivery = DeliveryPolicy {
            backoff_initial: Duration::from_millis(w.backoff_initial_ms),
            backoff_max: Duration::from_millis(w.backoff_max_ms),
            max_age: chrono::Duration::seconds(w.max_age_s as i64),
            concurrency: w.concurrency as usize,
        };

        // Workers first, so what the last process left is under way before new requests come.
        let workers = vec![
            tokio::spawn(crate::resolver::run(
                engine.clone(),
                config.resolver.concurrency as usize,
                shutdown_rx.clone(),
            )),
            tokio::spawn(crate::webhooks::run(
                engine.clone(),
                senders,
                delivery,
                shutdown_rx.clone(),
            )),
            tokio::spawn(feeds.run(book, shutdown_rx.clone())),
        ];
        let open = store.open_work()?.len();
        let undelivered = store.outbox()?.len();
        if open + undelivered > 0 {
            tracing::info!(
                open,
                undelivered,
                "resuming payments in doubt and undelivered webhooks"
            );
        }
        let (acquirer_addr, t1) = acquirer.spawn(serve_limits, &shutdown_rx).await?;
        let (admin_addr, t2) = admin.spawn(serve_limits, &shutdown_rx).await?;
        let (partner_addr, t3) = partner.spawn(serve_limits, &shutdown_rx).await?;
        Ok(Daemon {
            partner_addr,
            acquirer_addr,
            admin_addr,
            engine,
            sandbox,
            shutdown,
            listeners: vec![t1, t2, t3],
            workers,
        })
    }

    pub fn store(&self) -> &Arc<SledStore> {
        self.engine.store()
    }

    /// Stops accepting, lets open connections finish and the workers finish their current task,
    /// flushes, and stops the sandbox.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.listeners.into_iter().chain(self.workers) {
            let _ = t.await;
        }
        if let Err(e) = self.engine.store().flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        if let Some(sb) = self.sandbox {
            sb.shutdown().await;
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
