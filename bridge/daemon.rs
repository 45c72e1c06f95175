//! Assembling and running the daemon: store, rates, acquirer clients (and the in-process sandbox
//! acquirer for endpoints named `sandbox`), the engine, and the partner listener. Shutdown stops
//! accepting, drains every connection, then makes a final flush.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qrbridge_adapters::acquirer::sandbox::{Sandbox, SandboxConfig};
use qrbridge_adapters::acquirer::AcquirerClient;
use qrbridge_adapters::decode::DecodeLimits;
use qrbridge_adapters::https::{self, ServeLimits};
use qrbridge_config::{Config, Identity, Partner};
use qrbridge_fx::{Currency, SpreadPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::engine::{CancelPolicy, Engine, EngineParts, PartnerPolicy};
use crate::http::{self as partner_http, HttpLimits, Rate};
use crate::store::{SledStore, Store};
use crate::tls::{self, Directory};

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
    pub engine: Arc<Engine<SledStore>>,
    pub sandbox: Option<Sandbox>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        let now = opts.clock.now();
        let rates = crate::rates::load(&config.fx, now);
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
            acquirers.insert(a.id.clone(), client);
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
        });

        let mut directory = Directory::default();
        let mut cas: Vec<&Path> = Vec::new();
        for p in &config.partners {
            directory.add(&p.id, p.identity.clone(), &p.ca)?;
            if !cas.contains(&p.ca.as_path()) {
                cas.push(&p.ca);
            }
        }
        let partner_tls = tls::server_config(
            &config.tls.server_cert,
            &config.tls.server_key,
            tls::roots(&cas)?,
            config.tls.allow_tls12,
        )?;
        let svc = partner_http::partner_service(
            engine.clone(),
            directory,
            config
                .partners
                .iter()
                .map(|p| {
                    (p.id.clone(), Rate { per_s: p.limits.requests_per_s, burst: p.limits.burst })
                })
                .collect(),
            HttpLimits {
                body_bytes_max: config.limits.body_bytes_max,
                concurrency_max: config.limits.concurrency_max as usize,
                request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
            },
        );
        let addr = config.listeners.partner;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
            what: "partner listener",
            addr,
            source,
        })?;
        let partner_addr = listener.local_addr().map_err(|source| StartError::Bind {
            what: "partner listener",
            addr,
            source,
        })?;
        let limits = ServeLimits {
            connections_max: config.limits.connections_max as usize,
            handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
        };
        let task = tokio::spawn(https::serve(
            listener,
            partner_tls,
            limits,
            shutdown_rx,
            move |req, conn| partner_http::serve_request(svc.clone(), req, conn),
        ));
        tracing::info!(%partner_addr, "partner API listening");
        Ok(Daemon { partner_addr, engine, sandbox, shutdown, tasks: vec![task] })
    }

    pub fn store(&self) -> &Arc<SledStore> {
        self.engine.store()
    }

    /// Stops accepting, lets open connections finish, flushes, and stops the sandbox.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
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
/// missing, and the partner listener on `partner_addr`.
pub fn embedded_config(data_dir: &Path, partner_addr: SocketAddr) -> Result<Config, StartError> {
    let pki = data_dir.join("pki");
    crate::pki::ensure_dev_pki(&pki)?;
    let mut c = crate::defaults::dev_config(data_dir);
    c.listeners.partner = partner_addr;
    c.storage.path = data_dir.join("db");
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
