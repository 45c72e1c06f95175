//! A real daemon in-process for end-to-end tests: its own PKI (kept, so tests can issue more
//! certificates), its own data dir, the in-process sandbox acquirer, real TLS on loopback, and an
//! mTLS HTTP client built on hyper.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use qrbridge::clock::{Clock, ManualClock, SystemClock};
use qrbridge::daemon::{Daemon, StartOptions};
use qrbridge::pki::{self, Ca, Usage};
use qrbridge::store::Store;
use qrbridge_adapters::acquirer::sandbox::SandboxConfig;
use qrbridge_config::{Acquirer, Config, Identity, Route};
use serde_json::{json, Value};

use super::webhook::{Mode, Receiver};

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub clock: Option<ManualClock>,
    /// The partners' webhook endpoint, when the setup asked for one.
    pub hooks: Option<Receiver>,
    /// The configuration a reload reads: change it, then `daemon().reload(…)`.
    pub config: Arc<std::sync::Mutex<Config>>,
    /// The daemon's database, when it runs on PostgreSQL ([`super::both`]); dropped last.
    pub database: Option<super::pg::PgTest>,
}

/// Knobs a test may turn.
pub struct Setup {
    pub manual_clock: bool,
    /// Where the manual clock starts (default: now).
    pub start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Start a webhook endpoint answering this way, and send both partners' webhooks to it.
    pub webhooks: Option<Mode>,
    pub tweak: Box<dyn FnOnce(&mut Config)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup { manual_clock: false, start_at: None, webhooks: None, tweak: Box::new(|_| {}) }
    }
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        Self::start_with(Setup::default()).await
    }

    pub async fn start_with(setup: Setup) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki_dir = dir.path().join("pki");
        let ca = Ca::new("test CA").unwrap();
        pki::write_dev_pki(&pki_dir, &ca).unwrap();
        let mut config = qrbridge::daemon::embedded_config(dir.path(), super::loopback()).unwrap();
        // Short acquirer timeouts so "no answer" cases end quickly.
        config.acquirers[0].timeout_ms = 400;
        // Every test daemon has its ops listener, on a port of its own (not the default's 8446).
        config.ops.listen = Some(([127, 0, 0, 1], 0).into());
        // An acquirer that refuses connections, routed by a GUID only tests use.
        config.acquirers.push(Acquirer {
            id: "dead".into(),
            endpoint: "https://127.0.0.1:1".into(),
            ca: pki_dir.join("ca.crt"),
            identity: None,
            timeout_ms: 400,
            connect_timeout_ms: 400,
            answer_bytes_max: 64 * 1024,
        });
        config.routes.insert(
            0,
            Route {
                acquirer: "dead".into(),
                scheme: Some("EMVCO".into()),
                emvco_guid: Some("TEST.DEAD.ACQUIRER".into()),
                emvco_template: None,
                url_host: None,
                path_prefix: None,
                unionpay_institution: None,
            },
        );
        // GBP is enabled but has no rate: RATE_UNAVAILABLE.
        config.partners[0].wallet_currencies.push("GBP".parse().unwrap());
        config.partners[1].identity = Identity::SanDns("partner-other".into());
        let hooks = match setup.webhooks {
            Some(mode) => Some(Receiver::start(&pki_dir, mode).await),
            None => None,
        };
        if let Some(h) = &hooks {
            for p in &mut config.partners {
                p.webhook_url = Some(h.url());
                p.webhook_secret = Some(super::webhook::SECRET.into());
            }
            config.webhooks.backoff_initial_ms = 20;
            config.webhooks.backoff_max_ms = 100;
        }
        let database = match super::both::kind() {
            super::both::StoreKind::Sled => None,
            super::both::StoreKind::Postgres => {
                let db = super::pg::database().await.expect("checked by support::both::run");
                config.storage.url = Some(db.url.clone());
                Some(db)
            }
        };
        (setup.tweak)(&mut config);
        let start = setup.start_at.unwrap_or_else(|| SystemClock.now());
        let manual = setup.manual_clock.then(|| ManualClock::new(start));
        let clock: Arc<dyn Clock> = match &manual {
            Some(m) => Arc::new(m.clone()),
            None => Arc::new(SystemClock),
        };
        let shared = Arc::new(std::sync::Mutex::new(config.clone()));
        let source = shared.clone();
        let daemon = Daemon::start_reloadable(
            config,
            StartOptions {
                clock,
                sandbox: SandboxConfig { slow_ms: 5_000, ..SandboxConfig::default() },
            },
            Arc::new(move || Ok(source.lock().unwrap().clone())),
        )
        .await
        .expect("daemon starts");
        TestDaemon { daemon: Some(daemon), dir, ca, clock: manual, hooks, config: shared, database }
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.daemon().partner_addr
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// A client presenting `<pki>/<name>.crt`.
    pub fn client(&self, name: &str) -> TestClient {
        TestClient::new(&self.pki(), Some(name), self.addr(), false)
    }

    /// A client of the acquirer listener presenting `<pki>/<name>.crt`.
    pub fn acquirer_client(&self, name: &str) -> TestClient {
        TestClient::new(&self.pki(), Some(name), self.daemon().acquirer_addr, false)
    }

    /// A client of the admin listener presenting `<pki>/<name>.crt`.
    pub fn admin_client(&self, name: &str) -> TestClient {
        TestClient::new(&self.pki(), Some(name), self.daemon().admin_addr, false)
    }

    /// Moves the manual clock by `by`, then does every resolver task due.
    pub async fn resolve_after(&self, by: chrono::Duration) {
        self.clock.as_ref().expect("a manual clock").advance(by);
        self.daemon().engine.run_due_work().await.unwrap();
    }

    /// Moves the manual clock a minute at a time, resolving as it goes, until no payment has
    /// resolver work left (at most `limit` of time).
    pub async fn resolve_all(&self, limit: chrono::Duration) {
        let mut moved = chrono::Duration::zero();
        while !self.daemon().store().open_work().await.unwrap().is_empty() {
            assert!(
                moved <= limit,
                "still in doubt after {limit}: {:?}",
                self.daemon().store().open_work().await
            );
            self.resolve_after(chrono::Duration::seconds(60)).await;
            moved += chrono::Duration::seconds(60);
        }
    }

    /// Issues a client certificate `name` from this daemon's CA into its PKI folder.
    pub fn issue_client(&self, name: &str, expired: bool) {
        let issued = self.ca.issue(name, Usage::Client, expired).unwrap();
        pki::write_issued(&self.pki(), name, &issued).unwrap();
    }

    /// Every currency's journal sum is zero.
    pub async fn assert_ledger_balances(&self) {
        let sums = self.daemon().store().ledger_sums().await.unwrap();
        for (c, s) in &sums {
            assert_eq!(*s, 0, "ledger does not balance in {c}: {sums:?}");
        }
    }

    /// Checks the ledger and stops the daemon.
    pub async fn finish(mut self) {
        self.assert_ledger_balances().await;
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

/// An mTLS JSON client.
#[derive(Clone)]
pub struct TestClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
}

pub fn client_config(pki: &Path, cert: Option<&str>) -> rustls::ClientConfig {
    let roots = qrbridge::tls::roots(&[&pki.join("ca.crt")]).unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match cert {
        Some(name) => builder
            .with_client_auth_cert(
                qrbridge::tls::load_certs(&pki.join(format!("{name}.crt"))).unwrap(),
                qrbridge::tls::load_key(&pki.join(format!("{name}.key"))).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

impl TestClient {
    pub fn new(pki: &Path, cert: Option<&str>, addr: SocketAddr, http1_only: bool) -> TestClient {
        Self::with_tls(client_config(pki, cert), addr, http1_only)
    }

    pub fn with_tls(tls: rustls::ClientConfig, addr: SocketAddr, http1_only: bool) -> TestClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only();
        let https = if http1_only {
            b.enable_http1().wrap_connector(http)
        } else {
            b.enable_all_versions().wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(https);
        TestClient { client, base: format!("https://{addr}") }
    }

    /// Sends a request; `Err` when no HTTP answer came (a refused handshake).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Value), String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = self.client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, json))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.try_send(Method::POST, path, Some(serde_json::to_vec(body).unwrap()))
            .await
            .expect("an HTTP answer")
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.try_send(Method::POST, path, Some(body)).await.expect("an HTTP answer")
    }

    /// A request with a raw body and content type; the raw answer.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = self.client.request(req).await.expect("request");
        let status = res.status();
        (status, res.into_body().collect().await.unwrap().to_bytes())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.try_send(Method::GET, path, None).await.expect("an HTTP answer")
    }
}

/// Asserts an API error answer.
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "status for {code}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(got.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", got.1);
    assert!(got.1["error"]["retryable"].is_boolean(), "{}", got.1);
}

/// The second admin identity of the development PKI (`admin-2`), who approves what `admin`
/// proposes under dual control.
pub const SECOND_ADMIN: &str = "admin-2";

/// Lists [`SECOND_ADMIN`] among `c`'s admins (when the configuration does not already).
pub fn second_admin(c: &mut Config) {
    if !c.tls.admin_identities.iter().any(|a| a == SECOND_ADMIN) {
        c.tls.admin_identities.push(SECOND_ADMIN.into());
    }
}

/// Approves the proposal of a `202` answer (`{"proposal", …}`) as [`SECOND_ADMIN`] on the admin
/// listener at `admin`, with the PKI at `pki`: the change is in force after. Returns the
/// approval's answer (`{"proposal", "result"}`).
pub async fn approve_proposed(pki: &Path, admin: SocketAddr, proposed: &Value) -> Value {
    let id = proposed["proposal"]["proposal_id"]
        .as_str()
        .unwrap_or_else(|| panic!("not a proposal: {proposed}"));
    let second = TestClient::new(pki, Some(SECOND_ADMIN), admin, false);
    let (s, v) = second.post(&format!("/admin/v1/proposals/{id}/approve"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "approving {id}: {v}");
    v
}
