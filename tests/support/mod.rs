//! Shared helpers for the end-to-end tests.
#![allow(dead_code)]

pub mod blocking;
pub mod both;
pub mod crash;
pub mod daemon;
pub mod engine;
pub mod flows;
pub mod pg;
pub mod stores;
pub mod third_ca;
pub mod webhook;

use std::path::PathBuf;

/// A file under `<workspace root>/../shared/testdata/`, read in place. When it is missing the
/// test fails under `CI=true` and otherwise skips with a loud message (returns `None`).
pub fn shared_testdata(rel: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata").join(rel);
    if path.exists() {
        return Some(path);
    }
    missing(&format!("shared test data {}", path.display()));
    None
}

/// What a test needs is missing from this machine (`what`, named for the message): under
/// `CI=true` the test fails here; otherwise it says so loudly, for the caller to skip.
pub fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing, and CI=true");
    }
    // Straight to the process's standard error: the test harness captures `eprintln!`.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED: {what} is missing (set CI=true to fail instead) !!!\n"
    );
}

/// Every listener on a free loopback port.
pub fn loopback() -> qrbridge_config::Listeners {
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    qrbridge_config::Listeners { partner: any, admin: any, acquirer: any }
}

/// A fresh development PKI under `pki`, and the sandbox acquirer serving on loopback with its
/// certificate, accepting clients of that CA.
pub async fn pki_and_sandbox(
    pki: &std::path::Path,
    slow_ms: u64,
) -> qrbridge_adapters::acquirer::sandbox::Sandbox {
    use qrbridge_adapters::acquirer::sandbox::{Sandbox, SandboxConfig};
    let ca = qrbridge::pki::Ca::new("test CA").unwrap();
    qrbridge::pki::write_dev_pki(pki, &ca).unwrap();
    let tls = qrbridge::tls::server_config(
        &pki.join("acquirer-sandbox.crt"),
        &pki.join("acquirer-sandbox.key"),
        qrbridge::tls::roots(&[&pki.join("ca.crt")]).unwrap(),
        true,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Sandbox::start(listener, tls, SandboxConfig { slow_ms, ..SandboxConfig::default() }).unwrap()
}
