//! Reload without restart (issue 16), on the real `qrbridge serve --config` process with real
//! TLS on loopback: SIGHUP with a partner's rotated certificate admits the new certificate while
//! the connection opened before keeps serving; a CRL loaded by the next SIGHUP refuses the
//! revoked certificate, on new connections and on that old one; a broken configuration, one
//! naming a missing file, or one changing what only a restart changes is refused whole and the
//! daemon keeps serving as before; `POST /admin/v1/reload` does the same for an admin only, says
//! what changed, and every reload is in the audit log.
//!
//! The daemon's own log line says when a SIGHUP's reload is done (or refused): the test waits for
//! that line, with a bound that turns a hang into a failure.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use qrbridge::store::Store;
use qrbridge_config::{Config, Identity, Partner};
use serde_json::{json, Value};
use support::daemon::{client_config, TestClient};
use support::third_ca::ThirdCa;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a reload may take before the test calls it hung.
const BOUND: Duration = Duration::from_secs(30);

struct Served {
    child: Child,
    partner: SocketAddr,
    admin: SocketAddr,
    /// The daemon's log lines (standard error).
    log: mpsc::UnboundedReceiver<String>,
}

impl Served {
    async fn start(config: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qrbridge"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("qrbridge serve starts");
        let (tx, log) = mpsc::unbounded_channel();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                eprintln!("daemon: {line}");
                let _ = tx.send(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("qrbridge listening: partner=https://") {
                let addr = |prefix: &str| -> SocketAddr {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(prefix))
                        .expect("the address")
                        .parse()
                        .unwrap()
                };
                let partner = rest.split_whitespace().next().unwrap().parse().unwrap();
                let admin = addr("admin=https://");
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Served { child, partner, admin, log };
            }
        }
        panic!("the daemon exited before listening: {:?}", child.wait().await);
    }

    /// Sends SIGHUP and waits for the daemon to say the reload is done (`true`) or refused.
    async fn hangup(&mut self) -> bool {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill").args(["-HUP", &pid]).status().await.unwrap();
        assert!(status.success());
        tokio::time::timeout(BOUND, async {
            loop {
                let line = self.log.recv().await.expect("the daemon's log ended");
                if line.contains("configuration reloaded") {
                    return true;
                }
                if line.contains("reload refused") {
                    return false;
                }
            }
        })
        .await
        .expect("the reload neither finished nor was refused")
    }

    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(status.success());
        let exit = self.child.wait().await.unwrap();
        assert!(exit.success(), "the daemon did not stop cleanly: {exit:?}");
    }
}

/// One HTTP/2 connection presenting `<pki>/<cert>.crt`: requests on it stay on it.
async fn connect(
    pki: &Path,
    cert: &str,
    addr: SocketAddr,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let mut tls = client_config(pki, Some(cert));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// A GET of an unknown payment on `conn`: its status (404 served, 403 refused), or the error.
async fn ask(conn: &mut SendRequest<Full<Bytes>>, addr: SocketAddr) -> Result<u16, String> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("https://{addr}/v1/payments/pay_nope"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let fut = async {
        conn.ready().await.map_err(|e| e.to_string())?;
        let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(BOUND, fut).await.expect("an answer or an error in time")
}

/// A fresh connection's answer: `Ok(404)` when `cert` is served.
async fn fresh(pki: &Path, cert: &str, addr: SocketAddr) -> Result<u16, String> {
    let mut c = connect(pki, cert, addr).await?;
    ask(&mut c, addr).await
}

/// The daemon's configuration: the embedded default's, a third partner whose CA bundle and CRL
/// the test holds, every listener on a free port.
fn config(dir: &Path) -> Config {
    let pki = dir.join("pki");
    let ca = qrbridge::pki::Ca::new("test CA").unwrap();
    qrbridge::pki::write_dev_pki(&pki, &ca).unwrap();
    let mut c = qrbridge::daemon::embedded_config(dir, support::loopback()).unwrap();
    c.ops.listen = Some(([127, 0, 0, 1], 0).into());
    c.partners.push(Partner {
        id: "partner-third".into(),
        identity: Identity::SanDns("partner-third".into()),
        ca: dir.join("third-ca.pem"),
        wallet_currencies: vec!["PHP".parse().unwrap()],
        webhook_url: None,
        webhook_secret: None,
        webhook_ca: None,
        limits: Default::default(),
    });
    c.tls.crls = vec![dir.join("third.crl")];
    // A second admin, to approve what dual control holds back.
    support::daemon::second_admin(&mut c);
    c
}

fn write(path: &Path, c: &Config) {
    support::crash::write_config(path, c);
}

fn admin(pki: &Path, name: &str, addr: SocketAddr) -> TestClient {
    TestClient::new(pki, Some(name), addr, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_a_partner_certificate_loads_its_crl_and_refuses_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, file) = (dir.path().join("pki"), dir.path().join("qrbridge.toml"));
    let mut c = config(dir.path());
    let old_ca = ThirdCa::new();
    std::fs::write(dir.path().join("third-ca.pem"), &old_ca.pem).unwrap();
    old_ca.revoke(&dir.path().join("third.crl"), 1, &[]);
    old_ca.issue(&pki, "third-old", 1001);
    write(&file, &c);
    let mut d = Served::start(&file).await;
    let addr = d.partner;

    // A connection with the partner's current certificate, kept open throughout.
    let mut old = connect(&pki, "third-old", addr).await.expect("connects");
    assert_eq!(ask(&mut old, addr).await, Ok(404));

    // The partner rotates to a certificate of its new CA: refused until the bundle has it.
    let new_ca = ThirdCa::named("third partner CA G2");
    new_ca.issue(&pki, "third-new", 2001);
    assert_ne!(fresh(&pki, "third-new", addr).await, Ok(404), "served before the reload");
    std::fs::write(dir.path().join("third-ca.pem"), format!("{}{}", old_ca.pem, new_ca.pem))
        .unwrap();
    assert!(d.hangup().await, "the rotation's reload was refused");
    assert_eq!(fresh(&pki, "third-new", addr).await, Ok(404), "the new certificate");
    assert_eq!(ask(&mut old, addr).await, Ok(404), "the connection opened before");
    assert_eq!(fresh(&pki, "third-old", addr).await, Ok(404), "not revoked yet");

    // The old certificate revoked: its CRL, loaded by the next SIGHUP, refuses it everywhere.
    old_ca.revoke(&dir.path().join("third.crl"), 2, &[1001]);
    assert!(d.hangup().await, "the CRL's reload was refused");
    assert_ne!(fresh(&pki, "third-old", addr).await, Ok(404), "a revoked certificate served");
    assert_eq!(ask(&mut old, addr).await, Ok(403), "the old connection's revoked certificate");
    assert_eq!(fresh(&pki, "third-new", addr).await, Ok(404));

    // Broken configurations are refused whole; what is in force stays.
    std::fs::write(&file, "[listeners\npartner = ").unwrap();
    assert!(!d.hangup().await, "a file that does not parse was taken");
    let mut missing = c.clone();
    missing.partners[2].ca = dir.path().join("no-such-ca.pem");
    missing.fx.spread.max_bps = "400".parse().unwrap();
    write(&file, &missing);
    assert!(!d.hangup().await, "a missing CA file was taken");
    let mut moved = c.clone();
    moved.listeners.partner = ([127, 0, 0, 1], 1).into();
    write(&file, &moved);
    assert!(!d.hangup().await, "a listener change was taken without a restart");
    assert_eq!(fresh(&pki, "third-new", addr).await, Ok(404), "serving after refusals");
    assert_ne!(fresh(&pki, "third-old", addr).await, Ok(404), "the CRL stays in force");
    let admin_pki = admin(&pki, "admin", d.admin);
    let (s, spreads) = admin_pki.get("/admin/v1/spreads").await;
    assert_eq!(s, StatusCode::OK, "{spreads}");
    assert_eq!(spreads["max_bps"], json!("500"), "a refused reload changed the bounds");

    // The admin API reloads too, for admins only, and says what changed.
    c.fx.spread.max_bps = "400".parse().unwrap();
    c.partners.retain(|p| p.id != "partner-other");
    write(&file, &c);
    let (s, body) = admin(&pki, "partner-demo", d.admin).post("/admin/v1/reload", &json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = admin_pki.post("/admin/v1/reload", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], json!(["partners", "fx.spread"]), "{body}");
    assert_eq!(admin_pki.get("/admin/v1/spreads").await.1["max_bps"], json!("400"));
    let other = TestClient::new(&pki, Some("partner-other"), addr, false);
    assert_eq!(other.get("/v1/payments/pay_nope").await.0, StatusCode::FORBIDDEN);

    // A reload that would leave a spread outside the new bounds is refused, with the reason.
    // (50 to 350 bps is past the dual-control step: a second admin approves it.)
    let change = json!({"partner": "partner-demo", "bps": "350"});
    let (s, body) = admin_pki
        .try_send(Method::PUT, "/admin/v1/spreads", Some(change.to_string().into_bytes()))
        .await
        .expect("an answer");
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    support::daemon::approve_proposed(&pki, d.admin, &body).await;
    c.fx.spread.max_bps = "300".parse().unwrap();
    write(&file, &c);
    let (s, body) = admin_pki.post("/admin/v1/reload", &json!({})).await;
    assert_eq!(s.as_u16(), 422, "{body}");
    assert_eq!(body["error"]["code"], "CONFIG_REFUSED", "{body}");
    let reasons = body["error"]["message"].as_str().unwrap_or_default();
    assert!(reasons.contains("spread:partner-demo"), "{body}");

    // The admin CLI says the same, and exits 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qrbridge"))
        .args(["admin", "--url", &format!("https://{}", d.admin), "--pki"])
        .arg(&pki)
        .arg("reload")
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("CONFIG_REFUSED") && said.contains("spread:partner-demo"), "{said}");

    // Every reload that took is in the audit log, with the files' digests and no secret.
    let (s, audit) = admin_pki.get("/admin/v1/audit").await;
    assert_eq!(s, StatusCode::OK, "{audit}");
    let reloads: Vec<&Value> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["action"] == "config.reload")
        .collect();
    assert_eq!(reloads.len(), 3, "{audit}");
    assert_eq!(reloads[0]["actor"], "sighup");
    assert_eq!(reloads[2]["actor"], "admin");
    let bundle = dir.path().join("third-ca.pem").display().to_string();
    assert_ne!(
        reloads[0]["before"]["files"][&bundle], reloads[0]["after"]["config"]["files"][&bundle],
        "the rotated CA bundle's digest: {}",
        reloads[0]
    );
    d.stop().await;
}

/// A code the test daemon routes to its acquirer `dead`.
fn dead_code() -> String {
    use qrbridge_adapters::decode::tlv::field;
    support::flows::code_with(
        None,
        &field(26, &(field(0, "TEST.DEAD.ACQUIRER") + &field(1, "M-1"))),
        "156",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_never_strands_or_misroutes_money() {
    use support::daemon::{assert_error, TestDaemon};
    use support::flows::{code, pay, quote, quote_and_pay};
    let d = TestDaemon::start().await;
    let c = d.client("partner-demo");

    // A payment in doubt with the sandbox acquirer; quotes issued before the reloads below.
    let (s, slow) = quote_and_pay(&c, 1_052, "slow").await;
    assert_eq!((s, slow["status"].as_str()), (StatusCode::CREATED, Some("PROCESSING")), "{slow}");
    let (s, big) = quote(&c, &code(None), Some(1_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{big}");
    let (s, on_dead) = quote(&c, &dead_code(), Some(1_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "{on_dead}");
    let audit_before = d.daemon().store().audit_head().await.unwrap().map_or(0, |h| h.seq);

    // The acquirer holding it cannot leave while it is in doubt: refused whole, nothing changed.
    {
        let mut c = d.config.lock().unwrap();
        c.acquirers.retain(|a| a.id != "sandbox");
        c.routes.retain(|r| r.acquirer != "sandbox");
        c.partners[0].limits.payment_cny_minor_max = 500;
    }
    let refused = d.daemon().reload("test").await.expect_err("refused");
    assert!(
        refused.0.iter().any(|r| r.contains("sandbox") && r.contains("in doubt")),
        "{refused:?}"
    );
    assert_eq!(
        d.daemon().store().audit_head().await.unwrap().map_or(0, |h| h.seq),
        audit_before,
        "a refused reload was audited"
    );
    let (s, q) = quote(&c, &code(None), Some(1_000), "PHP").await;
    assert_eq!(s, StatusCode::CREATED, "the old limit stays in force: {q}");

    // An acquirer with nothing in doubt leaves; a partner's limit is lowered.
    let in_force = d.daemon().reloader().config_in_force().await;
    {
        let mut c = d.config.lock().unwrap();
        *c = in_force;
        c.acquirers.retain(|a| a.id != "dead");
        c.routes.retain(|r| r.acquirer != "dead");
        c.partners[0].limits.payment_cny_minor_max = 500;
    }
    let done = d.daemon().reload("test").await.expect("reloads");
    assert_eq!(done.changed, vec!["partners", "acquirers", "routes"], "{done:?}");
    assert_eq!(done.acquirers, vec!["sandbox"]);

    // Nothing new goes to the retired acquirer, not even a quote issued before...
    let got = pay(&c, "on-dead", on_dead["quote_id"].as_str().unwrap(), "payer-1").await;
    assert_error(&got, 422, "MERCHANT_NOT_SERVICEABLE");
    // (its merchants now go by the routes left: the catch-all one, to the sandbox)
    let (s, q) = quote(&c, &dead_code(), Some(400), "PHP").await;
    assert_eq!((s, q["acquirer"].as_str()), (StatusCode::CREATED, Some("sandbox")), "{q}");
    // ...a quote over the lowered limit is not paid, and nothing is stored for either...
    let got = pay(&c, "big", big["quote_id"].as_str().unwrap(), "payer-1").await;
    assert_error(&got, 422, "INVALID_AMOUNT");
    for rid in ["on-dead", "big"] {
        let stored = d.daemon().store().payment_by_request("partner-demo", rid).await.unwrap();
        assert!(stored.is_none(), "{rid} was stored");
    }
    // ...while the payment in doubt is still resolved with its acquirer.
    let id = slow["payment_id"].as_str().unwrap();
    let (s, p) = c.get(&format!("/v1/payments/{id}")).await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::OK, Some("PROCESSING")), "{p}");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_hands_out_no_fresh_burst() {
    use support::daemon::{Setup, TestDaemon};
    let d = TestDaemon::start_with(Setup {
        tweak: Box::new(|c| {
            c.partners[0].limits.requests_per_s = 1;
            c.partners[0].limits.burst = 1;
        }),
        ..Setup::default()
    })
    .await;
    let c = d.client("partner-demo");
    assert_eq!(c.get("/v1/payments/pay_nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(c.get("/v1/payments/pay_nope").await.0, StatusCode::TOO_MANY_REQUESTS);
    // A reload that leaves the partner's rate as it was keeps its limiter: still at the rate.
    d.config.lock().unwrap().fx.spread.max_bps = "450".parse().unwrap();
    let done = d.daemon().reload("test").await.expect("reloads");
    assert_eq!(done.changed, vec!["fx.spread"]);
    assert_eq!(c.get("/v1/payments/pay_nope").await.0, StatusCode::TOO_MANY_REQUESTS);
    d.finish().await;
}
