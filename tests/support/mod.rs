//! Shared helpers for the end-to-end tests.
#![allow(dead_code)]

pub mod daemon;
pub mod engine;
pub mod flows;
pub mod webhook;

use std::path::PathBuf;

/// A file under `<workspace root>/../shared/testdata/`, read in place. When it is missing the
/// test fails under `CI=true` and otherwise skips with a loud message (returns `None`).
pub fn shared_testdata(rel: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata").join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("shared test data {} is missing, and CI=true", path.display());
    }
    eprintln!();
    eprintln!(
        "!!! SKIPPED: shared test data {} is missing (set CI=true to fail instead) !!!",
        path.display()
    );
    eprintln!();
    None
}

/// Every listener on a free loopback port.
pub fn loopback() -> qrbridge_config::Listeners {
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    qrbridge_config::Listeners { partner: any, admin: any, acquirer: any }
}
