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

/// This process's name among the nodes: the configured name (else the host's), process id and a
/// random suffix (so a restarted node is a new holder and waits for its old lease like any other).
///
/// The process id and the random suffix are kept even with a configured name: two processes
/// given the same name by mistake must not both hold every lease.
pub fn node_id(configured: Option<&str>) -> Arc<str> {
    let name = match configured {
        Some(id) => id.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "node".into()),
    };
    format!("{name}-{}-{:04x}", std::process::id(), fastrand::u16(..)).into()
}

/// How a node leads.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A lease not renewed runs out after this long.
    pub ttl: Duration,
}

impl LeasePolicy {
    /// How often the lease is renewed, and the longest one renewal may take.
    fn renew_every(self) -> Duration {
        self.ttl / 4
    }

    /// A leader whose last renewal that succeeded was *sent* this long ago stops: the lease runs
    /// out `ttl` after the database granted it, which was after the send, and another node may
    /// start then; stopping at half of it leaves the other half for the work under way to end.
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
    // A renewal waits at most `limit`: never past the point where the leader must stop. A
    // renewal (`renew`) never takes the lease again once it was lost.
    let take = |store: Arc<S>, node: Arc<str>, limit: Duration, renew: bool| async move {
        let sent = Instant::now();
        let asked = async {
            match renew {
                true => store.renew_lease(role, &node, policy.ttl).await,
                false => store.lease(role, &node, policy.ttl).await,
            }
        };
        match tokio::time::timeout(limit, asked).await {
            Ok(Ok(held)) => Some((held, sent)),
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
            if let Some((true, sent)) =
                take(store.clone(), node.clone(), policy.renew_every(), false).await
            {
                break sent;
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
        // Aborted if this task is (a shutdown past its deadline): the worker never outlives it.
        let mut worker = AbortOnDrop(tokio::spawn(work(stopped)));
        let mut next = renewed + policy.renew_every();
        let ended = loop {
            tokio::select! {
                _ = &mut worker.0 => break Ended::ByItself,
                _ = tokio::time::sleep_until(next) => {
                    // After a failed renewal, again soon (not at once: the store is struggling).
                    next = Instant::now() + policy.renew_every() / 4;
                    if renewed.elapsed() >= policy.give_up_after() {
                        // This process stalled past the point where the leader must stop.
                        break Ended::Lost("the lease could not be renewed in time");
                    }
                    let left = policy.give_up_after().saturating_sub(renewed.elapsed());
                    let limit = policy.renew_every().min(left).max(Duration::from_millis(1));
                    match take(store.clone(), node.clone(), limit, true).await {
                        Some((true, sent)) => {
                            renewed = sent;
                            next = sent + policy.renew_every();
                        }
                        Some((false, _)) => {
                            break Ended::Lost("the lease ran out or another node holds it")
                        }
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
            let _ = (&mut worker.0).await;
        }
        match ended {
            Ended::Shutdown => {
                let release = store.release_lease(role, &node);
                match tokio::time::timeout(policy.renew_every(), release).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(role, error = %e, "lease not given up; it runs out by itself")
                    }
                    Err(_) => {
                        tracing::warn!(role, "lease not given up in time; it runs out by itself")
                    }
                }
                return;
            }
            Ended::Lost(why) => tracing::warn!(role, node = %node, why, "this node stops leading"),
            Ended::ByItself => {
                if *shutdown.borrow() {
                    return;
                }
                tracing::error!(role, "a led worker stopped by itself; starting it again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = qrbridge_adapters::https::stopped(&mut shutdown) => return,
                }
            }
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Ended {
    ByItself,
    Lost(&'static str),
    Shutdown,
}

/// Calls `reload` whenever the audit chain's head moves from `seen` (the head read before the
/// settings in force were read: another node changed a setting), looking every `every`, until
/// `shutdown`; `reload` gets the head's sequence. A reload that fails (false) is tried again at
/// the next look.
pub async fn watch_settings<S, F, Fut>(
    store: Arc<S>,
    every: Duration,
    mut seen: Option<u64>,
    mut shutdown: watch::Receiver<bool>,
    reload: F,
) where
    S: Store,
    F: Fn(Option<u64>) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = qrbridge_adapters::https::stopped(&mut shutdown) => return,
        }
        match store.audit_head().await {
            Ok(head) => {
                let now = head.map(|h| h.seq);
                if now != seen && reload(now).await {
                    seen = now;
                }
            }
            Err(e) => tracing::warn!(error = %e, "settings: the store did not answer"),
        }
    }
}

/// One node at a time among those sharing the store, for work that must not overlap: a
/// settlement run, a change of settings read from the store and written back. The lease is
/// renewed while the turn is held and given up when it is dropped; [`Turn::lost`] says whether
/// it could not be renewed (another node may have started), to be checked before the work's
/// results are made visible.
pub struct Turn<S: Store> {
    store: Arc<S>,
    name: &'static str,
    /// This turn's own holder name (the node's, and a nonce): giving it up never gives up
    /// another turn's, even of the same node.
    holder: Arc<str>,
    renewing: Option<tokio::task::JoinHandle<()>>,
    lost: watch::Receiver<bool>,
}

impl<S: Store> Turn<S> {
    /// Waits (at most `wait`) for the lease `name`, then holds it until dropped; `None` when
    /// another node kept it all that time. On a store of one process, at once.
    pub async fn take(
        store: &Arc<S>,
        name: &'static str,
        node: &Arc<str>,
        policy: LeasePolicy,
        wait: Duration,
    ) -> Result<Option<Turn<S>>, crate::store::StoreError> {
        let (lost_tx, lost) = watch::channel(false);
        let holder: Arc<str> = format!("{node}/{:08x}", fastrand::u32(..)).into();
        let turn = |renewing| Turn {
            store: store.clone(),
            name,
            holder: holder.clone(),
            renewing,
            lost: lost.clone(),
        };
        if !store.shared() {
            return Ok(Some(turn(None)));
        }
        let until = Instant::now() + wait;
        let mut granted = loop {
            let sent = Instant::now();
            // Each ask bounded as a renewal is: a grant that came back late is counted from
            // when it was asked, and would be given up as soon as it came.
            match tokio::time::timeout(policy.renew_every(), store.lease(name, &holder, policy.ttl))
                .await
            {
                Ok(Ok(true)) => break sent,
                Ok(Ok(false)) | Err(_) => {}
                Ok(Err(e)) => return Err(e),
            }
            if Instant::now() >= until {
                // An ask that timed out may have been granted after all: given back, so no
                // other node waits out its lease for nothing.
                let release = store.release_lease(name, &holder);
                let _ = tokio::time::timeout(policy.renew_every(), release).await;
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100).min(policy.renew_every())).await;
        };
        let (s, n) = (store.clone(), holder.clone());
        let renewing = tokio::spawn(async move {
            let mut next = granted + policy.renew_every();
            loop {
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                if granted.elapsed() >= policy.give_up_after() {
                    // This process stalled: another node may have taken the lease meanwhile.
                    let _ = lost_tx.send(true);
                    return;
                }
                let renewal = s.renew_lease(name, &n, policy.ttl);
                match tokio::time::timeout(policy.renew_every(), renewal).await {
                    Ok(Ok(true)) => {
                        granted = sent;
                        next = sent + policy.renew_every();
                    }
                    Ok(Ok(false)) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    _ if granted.elapsed() >= policy.give_up_after() => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    _ => next = Instant::now() + policy.renew_every() / 4,
                }
            }
        });
        Ok(Some(turn(Some(renewing))))
    }

    /// This turn's lease and holder, for a change decided under it: the store writes it only
    /// while the lease is still this turn's ([`crate::store::Store::admin_commit`]).
    pub fn fence(&self) -> crate::store::Fence<'_> {
        crate::store::Fence { lease: self.name, holder: &self.holder }
    }

    /// Whether the lease could not be kept: another node may be doing the same work.
    pub fn lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Gives the turn up now (dropping it gives it up in the background).
    pub async fn release(mut self) {
        let Some(renewing) = self.renewing.take() else { return };
        renewing.abort();
        let release = self.store.release_lease(self.name, &self.holder);
        match tokio::time::timeout(Duration::from_secs(5), release).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = self.name, error = %e, "lease not given up; it runs out by itself")
            }
            Err(_) => tracing::warn!(
                lease = self.name,
                "lease not given up in time; it runs out by itself"
            ),
        }
    }
}

impl<S: Store> Drop for Turn<S> {
    fn drop(&mut self) {
        let Some(renewing) = self.renewing.take() else { return };
        renewing.abort();
        let (store, name, holder) = (self.store.clone(), self.name, self.holder.clone());
        tokio::spawn(async move {
            if let Err(e) = store.release_lease(name, &holder).await {
                tracing::warn!(lease = name, error = %e, "lease not given up; it runs out by itself");
            }
        });
    }
}
