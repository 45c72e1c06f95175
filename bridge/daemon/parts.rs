//! What the daemon makes from the parts of its configuration that a reload may change: the
//! acquirers' clients and the routing table, the partners' policies, webhook senders, each
//! listener's TLS configuration and the directory of parties it admits, and the listeners'
//! services over them. [`Parts::build`] reads every file and can fail; nothing it makes is in
//! force until the caller puts it there, so a reload whose files are bad changes nothing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use qrbridge_adapters::acquirer::AcquirerClient;
use qrbridge_adapters::routing::Router;
use qrbridge_adapters::webhook::WebhookSender;
use qrbridge_config::{Config, Identity};
use rustls::ServerConfig;
use tower::util::BoxCloneSyncService;

use crate::admin::Admin;
use crate::http::{HttpLimits, Rate, Req, Resp};
use crate::payments::engine::{AcquirerService, Engine, PartnerPolicy};
use crate::payments::risk::{Blocklists, ListKind, RiskBase};
use crate::settlement::SettlementParties;
use crate::store::AnyStore;
use crate::tls::{self, Directory, ServerTlsFiles, TlsError};

/// A listener's service.
pub type Svc = BoxCloneSyncService<Req, Resp, Infallible>;

/// A listener's service as it is in force: made again on reload; each request is served by the
/// one in force when it arrived (requests under way finish on the one they began with).
#[derive(Clone)]
pub struct ServiceSlot(Arc<RwLock<Svc>>);

impl ServiceSlot {
    pub fn new(svc: Svc) -> Self {
        ServiceSlot(Arc::new(RwLock::new(svc)))
    }

    pub fn current(&self) -> Svc {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn put(&self, svc: Svc) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = svc;
    }
}

/// One listener's TLS and the parties it admits.
pub struct ListenerParts {
    pub files: ServerTlsFiles,
    pub tls: Arc<ServerConfig>,
    pub directory: Directory,
}

/// Everything made from the reloadable parts of one configuration.
pub struct Parts {
    pub acquirers: HashMap<String, AcquirerService>,
    pub partners: HashMap<String, PartnerPolicy>,
    pub router: Router,
    pub settlement: SettlementParties,
    pub senders: HashMap<String, WebhookSender>,
    pub partner: ListenerParts,
    pub acquirer: ListenerParts,
    pub admin: ListenerParts,
    /// What the configuration gives the risk check (admins' approved rules go on top).
    pub risk: RiskBase,
    /// Per partner: its request rate, and its own concurrency limit where it has one.
    partner_rates: HashMap<String, Rate>,
    partner_concurrency: HashMap<String, usize>,
}

/// The client TLS the bridge presents to acquirers and partners' webhook endpoints, trusting
/// the server certificates `ca` issues.
pub fn client_tls(config: &Config, ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let roots = tls::roots(&[ca])?;
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(
        tls::load_certs(&config.tls.client_cert)?,
        tls::load_key(&config.tls.client_key)?,
    )?)
}

/// Each distinct path once, in order.
fn distinct<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// What `config` gives the risk check: its rules, each partner's per-payment maximum, and the
/// blocklists read from the files it names.
pub fn risk_of(config: &Config) -> Result<RiskBase, String> {
    let partner_max =
        config.partners.iter().map(|p| (p.id.clone(), p.limits.payment_cny_minor_max)).collect();
    let files = &config.risk.blocklists;
    let mut lists = Blocklists::default();
    for (kind, path, set) in [
        (ListKind::Merchants, &files.merchants, &mut lists.merchants),
        (ListKind::Mccs, &files.mccs, &mut lists.mccs),
        (ListKind::Acquirers, &files.acquirers, &mut lists.acquirers),
    ] {
        let Some(path) = path else { continue };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("risk.blocklists: cannot read {}: {e}", path.display()))?;
        *set = Blocklists::parse_list(kind, &path.display().to_string(), &text)
            .map_err(|ps| ps.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    }
    Ok(RiskBase { rules: config.risk.rules.clone(), partner_max, lists })
}

impl Parts {
    /// Makes everything from `config`, reading every file it names. `sandbox` is the base URL of
    /// the in-process sandbox acquirer, for acquirers whose endpoint is `sandbox`. `retired` are
    /// acquirers removed by a reload: no longer routed to, but still let in to send refunds.
    pub fn build(
        config: &Config,
        sandbox: Option<&str>,
        retired: &[qrbridge_config::Acquirer],
    ) -> Result<Parts, String> {
        let tls_err = |what: &str, e: TlsError| format!("{what}: {e}");
        let crls = tls::read_crls(&config.tls.crls).map_err(|e| tls_err("tls.crls", e))?;
        let listener = |cas: Vec<PathBuf>, directory: Directory, what: &str| {
            let files = ServerTlsFiles {
                cert: config.tls.server_cert.clone(),
                key: config.tls.server_key.clone(),
                client_cas: cas,
                crls: config.tls.crls.clone(),
                allow_tls12: config.tls.allow_tls12,
            };
            let tls = files.load().map_err(|e| tls_err(what, e))?;
            Ok::<_, String>(ListenerParts { files, tls, directory })
        };

        let mut acquirers = HashMap::new();
        for (i, a) in config.acquirers.iter().enumerate() {
            let base = if a.endpoint == "sandbox" {
                sandbox
                    .ok_or_else(|| {
                        format!(
                            "acquirers[{i}].endpoint: \"sandbox\" needs the sandbox acquirer, \
                             which starts with the daemon: restart to add it"
                        )
                    })?
                    .to_owned()
            } else {
                a.endpoint.clone()
            };
            let client = AcquirerClient::new(
                &a.id,
                &base,
                client_tls(config, &a.ca).map_err(|e| tls_err(&format!("acquirers[{i}]"), e))?,
                Duration::from_millis(a.connect_timeout_ms),
                Duration::from_millis(a.timeout_ms),
            )
            .with_answer_bytes_max(a.answer_bytes_max as usize);
            acquirers.insert(a.id.clone(), AcquirerService::new(client));
        }

        let mut senders = HashMap::new();
        for (i, p) in config.partners.iter().enumerate() {
            if let (Some(url), Some(secret)) = (&p.webhook_url, &p.webhook_secret) {
                let ca = p.webhook_ca.as_ref().unwrap_or(&p.ca);
                let tls =
                    client_tls(config, ca).map_err(|e| tls_err(&format!("partners[{i}]"), e))?;
                let w = &config.webhooks;
                let sender = WebhookSender::new(
                    url,
                    secret.expose().as_bytes(),
                    tls,
                    Duration::from_millis(w.timeout_ms.min(5_000)),
                    Duration::from_millis(w.timeout_ms),
                )
                .with_answer_bytes_max(w.answer_bytes_max as usize);
                senders.insert(p.id.clone(), sender);
            }
        }

        // Partners.
        let mut directory = Directory::default();
        for (i, p) in config.partners.iter().enumerate() {
            directory
                .add(&p.id, p.identity.clone(), &p.ca, &crls)
                .map_err(|e| tls_err(&format!("partners[{i}].ca"), e))?;
        }
        let partner =
            listener(distinct(config.partners.iter().map(|p| &p.ca)), directory, "partner API")?;

        // Acquirers (those with an identity may call in). With none, the listener still needs
        // a CA, and refuses everyone.
        let mut directory = Directory::default();
        let callers: Vec<_> =
            config.acquirers.iter().chain(retired).filter(|a| a.identity.is_some()).collect();
        for a in &callers {
            if let Some(identity) = &a.identity {
                directory
                    .add(&a.id, identity.clone(), &a.ca, &crls)
                    .map_err(|e| tls_err(&format!("acquirer {}", a.id), e))?;
            }
        }
        let cas = if callers.is_empty() {
            vec![config.tls.admin_ca.clone()]
        } else {
            distinct(callers.iter().map(|a| &a.ca))
        };
        let acquirer = listener(cas, directory, "acquirer API")?;

        // Admins.
        let mut directory = Directory::default();
        for name in &config.tls.admin_identities {
            let identity = if name.contains("://") {
                Identity::SanUri(name.clone())
            } else {
                Identity::SanDns(name.clone())
            };
            directory
                .add(name, identity, &config.tls.admin_ca, &crls)
                .map_err(|e| tls_err("tls.admin_ca", e))?;
        }
        let admin = listener(vec![config.tls.admin_ca.clone()], directory, "admin API")?;
        let risk = risk_of(config)?;

        Ok(Parts {
            acquirers,
            partners: config
                .partners
                .iter()
                .map(|p| {
                    let policy = PartnerPolicy {
                        wallet_currencies: p.wallet_currencies.clone(),
                        payment_cny_minor_max: p.limits.payment_cny_minor_max,
                    };
                    (p.id.clone(), policy)
                })
                .collect(),
            router: crate::routing::router(config),
            settlement: SettlementParties {
                partners: config
                    .partners
                    .iter()
                    .map(|p| (p.id.clone(), p.wallet_currencies.clone()))
                    .collect(),
                acquirers: config.acquirers.iter().map(|a| a.id.clone()).collect(),
            },
            senders,
            partner,
            acquirer,
            admin,
            risk,
            partner_rates: config
                .partners
                .iter()
                .map(|p| {
                    (p.id.clone(), Rate { per_s: p.limits.requests_per_s, burst: p.limits.burst })
                })
                .collect(),
            partner_concurrency: config
                .partners
                .iter()
                .filter_map(|p| Some((p.id.clone(), p.limits.concurrency_max? as usize)))
                .collect(),
        })
    }

    /// The three listeners' services over these parts: partner, acquirer, admin, each with its
    /// own [`crate::http::Admission`] (kept across reloads).
    pub fn services(
        &self,
        engine: &Arc<Engine<AnyStore>>,
        admin: &Arc<Admin<AnyStore>>,
        limits: &HttpLimits,
        admissions: &[crate::http::Admission; 3],
    ) -> [Svc; 3] {
        let [partner, acquirer, admins] = admissions.clone();
        let with = |admission| HttpLimits { admission, ..limits.clone() };
        [
            crate::http::partner_service(
                engine.clone(),
                self.partner.directory.clone(),
                self.partner_rates.clone(),
                HttpLimits {
                    caller_concurrency_max: self.partner_concurrency.clone(),
                    ..with(partner)
                },
            ),
            crate::acquirer_api::acquirer_service(
                engine.clone(),
                self.acquirer.directory.clone(),
                HashMap::new(),
                with(acquirer),
            ),
            crate::admin::admin_service(admin.clone(), self.admin.directory.clone(), with(admins)),
        ]
    }
}

/// A listener as it runs: its TLS and its service, each made again on reload.
pub struct ListenerSlot {
    pub what: &'static str,
    pub tls: tls::ReloadableTls,
    pub svc: ServiceSlot,
}
