//! Retention: a quote no payment used is removed a while after it expires, so disk stops growing
//! with traffic that did not become payments. Quotes a payment used stay (the record of what was
//! quoted). The sweep walks quotes in id order — ids are time-ordered — from where the last one
//! stopped (a mark kept in the store, so a restart or a new leader goes on from there), in
//! batches off the async runtime's threads, and stops at the first quote not expired long
//! enough: each sweep costs what is new since the last, not the history.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::store::Store;

/// The store's mark ([`Store::mark`]) holding the last quote the sweep looked at.
pub const CURSOR: &str = "quote-retention";

/// When quotes are removed.
#[derive(Debug, Clone, Copy)]
pub struct QuoteRetention {
    /// How long after its expiry an unused quote is kept.
    pub keep_after_expiry: chrono::Duration,
    /// How often the sweep runs.
    pub every: Duration,
    /// Quotes looked at per batch.
    pub batch: usize,
}

/// Sweeps until `shutdown` turns true.
pub async fn run<S: Store>(
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    policy: QuoteRetention,
    mut shutdown: watch::Receiver<bool>,
) {
    // Where the last sweep stopped, kept in the store: a restart, or another node taking the
    // lead, goes on from there rather than walking every quote kept since the first (a quote a
    // payment used stays, so the walk from the start would grow with the history). `None` until
    // read: a sweep that cannot read it waits for the next round rather than start over.
    let mut place: Option<Option<String>> = None;
    loop {
        let mut removed = 0;
        if place.is_none() {
            match store.mark(CURSOR).await {
                Ok(mark) => place = Some(mark),
                Err(e) => {
                    tracing::warn!(error = %e, "quote retention: where the last sweep stopped cannot be read; the next round tries again")
                }
            }
        }
        while let Some(cursor) = place.as_mut() {
            let cutoff = clock.now() - policy.keep_after_expiry;
            let (s, after) = (store.clone(), cursor.clone());
            let batch = policy.batch.max(1);
            // Off the runtime's threads: the embedded store answers on the thread that asks.
            let runtime = tokio::runtime::Handle::current();
            let swept = tokio::task::spawn_blocking(move || {
                runtime.block_on(s.purge_quotes(after.as_deref(), cutoff, batch))
            })
            .await;
            match swept {
                Ok(Ok(p)) => {
                    removed += p.removed;
                    if p.cursor != *cursor {
                        if let Some(c) = &p.cursor {
                            // Not waited for: a mark lost in a crash only repeats a batch.
                            if let Err(e) = store.set_mark(CURSOR, c).await {
                                tracing::warn!(error = %e, "quote retention: the sweep's place not kept");
                            }
                        }
                    }
                    *cursor = p.cursor;
                    if p.caught_up {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "quote retention sweep failed");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "quote retention sweep stopped");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "expired quotes removed");
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.every) => {}
            _ = qrbridge_adapters::https::stopped(&mut shutdown) => return,
        }
    }
}
