//! Several daemons on one database. Work that must be done once — the resolver, webhook
//! deliveries, quote retention — is led by one node at a time under a lease the store keeps
//! ([`Store::lease`]); a node that dies stops renewing it, and another takes the work over once
//! it runs out. Settings another node changed (spreads, rates set by hand) are read again when
//! the audit chain's head moves ([`watch_settings`]).
//!
//! A lease is only a way to keep nodes from doing the same work at once, never what keeps money
//! right: every change a leader makes is checked against the payment's revision in the store,
//! and a webhook delivered twice carries the same event id. So a node that lost its lease while
//! it was stalled, and finishes a step, costs at worst a repeated inquiry or delivery.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::Store;

/// This process's name among the nodes: the configured one, else host, process id and a random
/// suffix (so a restarted node is a new holder and waits for its old lease like any other).
pub fn node_id(configured: Option<&str>) -> Arc<str> {
    if let Some(id) = configured {
        return id.into();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..)).into()
}

/// How a node leads.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A lease not renewed runs out after this long.
    pub ttl: Duration,
}

impl LeasePolicy {
    fn renew_every(self) -> Duration {
        self.ttl / 3
    }

    /// A leader that could not renew for this long stops: the lease may run out at `ttl`, and
    /// another node may start then, so it stops well before.
    fn give_up_after(self) -> Duration {
        self.ttl / 2
    }
}

/// Runs `work` while this node holds the lease `role`, until `shutdown`. `work` gets a signal
/// that turns true when it must stop (shutdown, or the lease lost) and returns once it has
/// stopped; a new `work` starts when the lease is held again. On shutdown the lease is given
/// up, so another node takes over at once.
pub async fn lead<S, F, Fut>(
    store: Arc<S>,
    role: &'static str,
    node: Arc<str>,
    policy: LeasePolicy,
    mut shutdown: watch::Receiver<bool>,
    work: F,
) where
    S: Store,
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let take = |store: Arc<S>, node: Arc<str>| async move {
        match tokio::time::timeout(policy.renew_every(), store.lease(role, &node, policy.ttl)).await
        {
            Ok(Ok(held)) => Some(held),
            Ok(Err(e)) => {
                tracing::warn!(role, error = %e, "lease: the store did not answer");
                None
            }
            Err(_) => {
                tracing::warn!(role, "lease: the store did not answer in time");
                None
            }
        }
    };
    loop {
        // Until the lease is ours.
        let mut renewed = loop {
            if take(store.clone(), node.clone()).await == Some(true) {
                break Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(policy.renew_every()) => {}
                _ = qrbridge_adapters::https::stopped(&mut shutdown) => return,
            }
        };
        if store.shared() {
            tracing::info!(role, node = %node, "this node leads");
        }
        let (stop, stopped) = watch::channel(false);
        let mut worker = tokio::spawn(work(stopped));
        let ended = loop {
            tokio::select! {
                _ = &mut worker => break Ended::ByItself,
                _ = tokio::time::sleep(policy.renew_every()) => {
                    match take(store.clone(), node.clone()).await {
                        Some(true) => renewed = Instant::now(),
                        Some(false) => break Ended::Lost("another node holds the lease"),
                        None if renewed.elapsed() >= policy.give_up_after() => {
                            break Ended::Lost("the lease could not be renewed")
                        }
                        None => {}
                    }
                }
                _ = qrbridge_adapters::https::stopped(&mut shutdown) => break Ended::Shutdown,
            }
        };
        let _ = stop.send(true);
        if !matches!(ended, Ended::ByItself) {
            let _ = (&mut worker).await;
        }
        match ended {
            Ended::Shutdown => {
                if let Err(e) = store.release_lease(role, &node).await {
                    tracing::warn!(role, error = %e, "lease not given up; it runs out by itself");
                }
                return;
            }
            Ended::Lost(why) => tracing::warn!(role, node = %node, why, "this node stops leading"),
            Ended::ByItself => {
                if *shutdown.borrow() {
                    return;
                }
                tracing::error!(role, "a led worker stopped by itself; starting it again");
            }
        }
    }
}

enum Ended {
    ByItself,
    Lost(&'static str),
    Shutdown,
}

/// Calls `reload` whenever the audit chain's head moves (another node changed a setting),
/// looking every `every`, until `shutdown`.
pub async fn watch_settings<S, F, Fut>(
    store: Arc<S>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
    reload: F,
) where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut seen = store.audit_head().await.ok().flatten().map(|h| h.seq);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = qrbridge_adapters::https::stopped(&mut shutdown) => return,
        }
        match store.audit_head().await {
            Ok(head) => {
                let now = head.map(|h| h.seq);
                if now != seen {
                    reload().await;
                    seen = now;
                }
            }
            Err(e) => tracing::warn!(error = %e, "settings: the store did not answer"),
        }
    }
}
