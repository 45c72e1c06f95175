//! Runs the README's start command for real — the `qrbridge serve` binary on its embedded
//! defaults — in a fresh folder: it generates the development PKI, starts the sandbox acquirer,
//! prints a working curl command, takes a payment over mTLS, stops cleanly on SIGTERM, and after a
//! restart on the same folder the payment is still there; the same on PostgreSQL, after
//! `qrbridge migrate`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use http::StatusCode;
use serde_json::json;
use support::daemon::TestClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `qrbridge serve` in `dir` and reads its banner: the address and the printed curl body.
async fn start(dir: &Path) -> (Child, SocketAddr, String) {
    start_with(dir, &[]).await
}

/// [`start`] with more arguments.
async fn start_with(dir: &Path, more: &[&str]) -> (Child, SocketAddr, String) {
    start_env(dir, more, None).await
}

/// [`start_with`], with `MIMALLOC_ALLOW_THP` set to `thp` (or unset).
async fn start_env(dir: &Path, more: &[&str], thp: Option<&str>) -> (Child, SocketAddr, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qrbridge"));
    match thp {
        Some(v) => cmd.env("MIMALLOC_ALLOW_THP", v),
        None => cmd.env_remove("MIMALLOC_ALLOW_THP"),
    };
    let mut child = cmd
        .args(["serve", "--data-dir", "var", "--partner-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0", "--acquirer-addr", "127.0.0.1:0"])
        .args(["--ops-addr", "127.0.0.1:0"])
        .args(more)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("qrbridge serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut body = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("qrbridge is up: partner API on https://") {
            addr = Some(rest.trim().parse().unwrap());
        }
        if let Some(b) = line.trim().strip_prefix("-d '") {
            body = Some(b.trim_end_matches(['\\', ' ']).trim_end_matches('\'').to_owned());
        }
        if line.contains("Ctrl-C stops") {
            break;
        }
    }
    (child, addr.expect("banner names the address"), body.expect("banner has a curl body"))
}

/// Quotes the printed curl body in PHP and pays it as `request_id`: the payment, SUCCEEDED.
async fn quote_and_pay(c: &TestClient, curl_body: &str, request_id: &str) -> serde_json::Value {
    let mut quote_body: serde_json::Value = serde_json::from_str(curl_body).unwrap();
    quote_body["wallet_currency"] = json!("PHP");
    let (s, q) = c.post("/v1/quotes", &quote_body).await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let (s, p) = c
        .post(
            "/v1/payments",
            &json!({"request_id": request_id, "quote_id": q["quote_id"], "payer": {"id": "u"}}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::CREATED, Some("SUCCEEDED")), "{p}");
    p
}

async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(status.success());
    let exit = child.wait().await.unwrap();
    assert!(exit.success(), "qrbridge serve exited with {exit}");
}

#[tokio::test]
async fn the_embedded_default_serves_and_keeps_its_word() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, curl_body) = start(dir.path()).await;
    let pki = dir.path().join("var/pki");
    for f in [
        "ca.crt",
        "server.crt",
        "partner-demo.crt",
        "partner-demo.key",
        "partner-other.crt",
        "admin.crt",
        "admin.key",
    ] {
        assert!(pki.join(f).exists(), "{f} was not generated");
    }
    let c = TestClient::new(&pki, Some("partner-demo"), addr, false);
    // The printed curl body works as printed.
    let (s, decoded) = c.post_raw("/v1/codes/decode", curl_body.clone().into_bytes()).await;
    assert_eq!(s, StatusCode::OK, "{decoded}");
    assert_eq!(decoded["acquirer"], "sandbox");
    let p = quote_and_pay(&c, &curl_body, "serve-1").await;
    stop(child).await;

    // Restarted on the same folder: same PKI, and the payment is durable.
    let (child, addr, _) = start(dir.path()).await;
    let c = TestClient::new(&pki, Some("partner-demo"), addr, false);
    let (s, again) = c.get("/v1/payments?request_id=serve-1").await;
    assert_eq!((s, &again), (StatusCode::OK, &p));
    stop(child).await;
}

/// The daemon turns transparent huge pages off for itself (its allocator's regions would
/// otherwise be resident in 2 MiB pages), unless `MIMALLOC_ALLOW_THP` says otherwise. Read from
/// the kernel's own account of each process (`THP_enabled` in /proc/<pid>/status, Linux 4.20 and
/// later). This process must have huge pages allowed for the check to mean anything: when it
/// does not (an older kernel, huge pages disabled for the test runner), the test fails under
/// `CI=true` and otherwise skips, loudly.
#[tokio::test]
async fn the_daemon_runs_without_transparent_huge_pages_unless_told() {
    let thp_enabled = |pid: &str| {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a /proc status");
        status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim().to_owned())
    };
    if thp_enabled("self").as_deref() != Some("1") {
        support::missing("a kernel reporting THP_enabled: 1 for the test process");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, _, _) = start_env(dir.path(), &[], None).await;
    let pid = child.id().unwrap().to_string();
    assert_eq!(thp_enabled(&pid).as_deref(), Some("0"), "huge pages still on for the daemon");
    stop(child).await;
    let (child, _, _) = start_env(dir.path(), &[], Some("1")).await;
    let pid = child.id().unwrap().to_string();
    assert_eq!(thp_enabled(&pid).as_deref(), Some("1"), "MIMALLOC_ALLOW_THP=1 was not left alone");
    stop(child).await;
}

/// The README's PostgreSQL command: `qrbridge migrate` applies the schema once, `qrbridge serve
/// --database-url` runs the embedded defaults on it (the data folder holds the PKI, not a store),
/// and a restart finds the payment in the database.
#[tokio::test]
async fn the_embedded_default_on_postgresql() {
    let Some(db) = support::pg::database().await else { return };
    let migrate = |url: String| async move {
        let out = Command::new(env!("CARGO_BIN_EXE_qrbridge"))
            .args(["migrate", "--database-url", &url])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(migrate(db.url.clone()).await.contains("migrations applied: 1, 2"));
    assert!(migrate(db.url.clone()).await.contains("up to date"));

    let dir = tempfile::tempdir().unwrap();
    let (child, addr, curl_body) =
        start_with(dir.path(), &["--database-url", db.url.as_str()]).await;
    assert!(!dir.path().join("var/db").exists(), "no embedded store beside a database");
    let pki = dir.path().join("var/pki");
    let c = TestClient::new(&pki, Some("partner-demo"), addr, false);
    let p = quote_and_pay(&c, &curl_body, "serve-pg").await;
    stop(child).await;

    let (child, addr, _) = start_with(dir.path(), &["--database-url", db.url.as_str()]).await;
    let c = TestClient::new(&pki, Some("partner-demo"), addr, false);
    let (s, again) = c.get("/v1/payments?request_id=serve-pg").await;
    assert_eq!((s, &again), (StatusCode::OK, &p));
    stop(child).await;
}

/// `--log-format json`: every line the daemon writes, on either stream and the start-up text
/// included, is one JSON object with a time, a level and a message; a payer's id and the private
/// keys it reads never appear in them, even at `debug`.
#[tokio::test]
async fn json_logs_are_one_object_a_line_and_keep_secrets_out() {
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrbridge"))
        .args(["serve", "--data-dir", "var", "--partner-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0", "--acquirer-addr", "127.0.0.1:0"])
        .args(["--ops-addr", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&errors).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("qrbridge serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    let mut addr: Option<SocketAddr> = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: serde_json::Value = serde_json::from_str(&line).expect("stdout: one JSON object");
        let message = v["fields"]["message"].as_str().unwrap_or_default().to_owned();
        if let Some(rest) = message.strip_prefix("qrbridge is up: partner API on https://") {
            addr = Some(rest.lines().next().unwrap().trim().parse().unwrap());
        }
        out.push(line);
        if message.contains("Ctrl-C stops") {
            break;
        }
    }
    let addr = addr.expect("the start-up text names the address");
    let payer = "payer-SECRET-4711";
    let c = TestClient::new(&dir.path().join("var/pki"), Some("partner-demo"), addr, false);
    let (s, q) = c
        .post(
            "/v1/quotes",
            &json!({"code": qrbridge::defaults::demo_code(), "wallet_currency": "PHP"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let (s, p) = c
        .post(
            "/v1/payments",
            &json!({"request_id": "json-1", "quote_id": q["quote_id"], "payer": {"id": payer}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    stop(child).await;

    let logged = std::fs::read_to_string(&errors).unwrap();
    let all: Vec<&str> = out.iter().map(String::as_str).chain(logged.lines()).collect();
    assert!(all.len() > out.len(), "the daemon logged at debug");
    for line in &all {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        assert!(!line.contains(payer), "a payer id was logged: {line}");
        assert!(!line.contains("PRIVATE KEY"), "a key was logged: {line}");
    }
}
