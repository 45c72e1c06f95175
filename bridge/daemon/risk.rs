//! The risk book's upkeep: every `risk.refresh_ms`, what the partners owe is read again from the
//! ledger (refunds, cancels after success and funds received lower it), windows that left the
//! day are tidied, and — on a store several daemons share — the payments other nodes made (and
//! the ends of payments this book holds in flight) are taken in, so that every node counts every
//! node's payments within one refresh.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::model::PaymentRecord;
use crate::payments::risk::PaymentFacts;
use crate::store::{Store, StoreError};
use crate::treasury::Treasury;

/// How far back each read of other nodes' payments reaches behind the previous one: a payment
/// is stamped when it is made and written up to the send window later (a write later than that
/// is never sent, and ends as failed), so one read late still sees it.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(30);

/// Takes in the payments other nodes made since `since` and where those this book holds in
/// flight now stand; returns where the next read starts.
async fn absorb_others<S: Store>(
    t: &Treasury<S>,
    since: DateTime<Utc>,
) -> Result<DateTime<Utc>, StoreError> {
    let engine = t.engine();
    let store = engine.store();
    let now = engine.now();
    let mut payments: Vec<PaymentRecord> =
        store.payments_made(since - OVERLAP, now + chrono::Duration::minutes(1)).await?;
    let read: HashSet<String> = payments.iter().map(|p| p.payment_id.clone()).collect();
    for id in engine.risk().in_flight() {
        if !read.contains(&id) {
            payments.extend(store.payment(&id).await?);
        }
    }
    let added = engine
        .risk()
        .absorb(payments.iter().map(PaymentFacts::of), now)
        .map_err(|e| StoreError::Corrupt { tree: "payments", message: e.to_string() })?;
    if added > 0 {
        tracing::debug!(added, "risk: payments of other nodes counted");
    }
    Ok(now)
}

/// One round of upkeep: other nodes' payments since `since` (on a shared store), what the
/// partners owe, the windows tidied. Returns where the next read of other nodes' payments
/// starts.
pub async fn refresh<S: Store>(t: &Treasury<S>, since: DateTime<Utc>) -> DateTime<Utc> {
    let mut next = since;
    if t.engine().store().shared() {
        match absorb_others(t, since).await {
            Ok(n) => next = n,
            Err(e) => tracing::error!(error = %e, "risk: other nodes' payments could not be read"),
        }
    }
    if let Err(e) = t.refresh_owed().await {
        tracing::error!(error = %e, "risk: what partners owe could not be read");
    }
    t.engine().risk().prune(t.engine().now());
    next
}

/// Runs until `stop`.
pub async fn run<S: Store>(t: Arc<Treasury<S>>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut since = t.engine().now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        since = refresh(&t, since).await;
    }
}
