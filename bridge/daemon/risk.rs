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

/// A reservation whose payment the store still does not hold this long after it was made was
/// never written (its write failed with an unknown outcome, and a write that lands late is
/// sent only within the send window): its hold is given back.
const UNWRITTEN_AFTER: chrono::Duration = chrono::Duration::minutes(2);

/// Follows the payments this book holds in flight to where the store says they stand (their
/// end may have been written by another node, or their write never landed) and, on a store
/// other nodes share, takes in the payments they made since `since`; returns where the next
/// read starts.
async fn follow<S: Store>(
    t: &Treasury<S>,
    since: DateTime<Utc>,
) -> Result<DateTime<Utc>, StoreError> {
    let engine = t.engine();
    let store = engine.store();
    let now = engine.now();
    let mut payments: Vec<PaymentRecord> = Vec::new();
    let mut next = since;
    if store.shared() {
        // Never further back than the windows reach, however long reads failed.
        let from = (since - OVERLAP).max(now - chrono::Duration::hours(24));
        payments = store.payments_made(from, now + chrono::Duration::minutes(1)).await?;
        next = now;
    }
    let read: HashSet<String> = payments.iter().map(|p| p.payment_id.clone()).collect();
    for (id, at) in engine.risk().in_flight() {
        if read.contains(&id) {
            continue;
        }
        match store.payment(&id).await? {
            Some(p) => payments.push(p),
            None if now - at > UNWRITTEN_AFTER && engine.risk().forget(&id) => {
                tracing::warn!(payment = %id, "risk: a reservation whose payment was never written is given back");
            }
            None => {}
        }
    }
    let added = engine
        .risk()
        .absorb(payments.iter().map(PaymentFacts::of), now)
        .map_err(|e| StoreError::Corrupt { tree: "payments", message: e.to_string() })?;
    if added > 0 {
        tracing::debug!(added, "risk: payments of other nodes counted");
    }
    Ok(next)
}

/// One round of upkeep: the payments in flight followed (and, on a shared store, other nodes'
/// payments since `since` taken in), what the partners owe read again, the windows tidied.
/// Returns where the next read of other nodes' payments starts.
pub async fn refresh<S: Store>(t: &Treasury<S>, since: DateTime<Utc>) -> DateTime<Utc> {
    let next = match follow(t, since).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "risk: payments could not be read");
            since
        }
    };
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
