//! Retention: a quote no payment used is removed a while after it expires, so disk stops growing
//! with traffic that did not become payments. Quotes a payment used stay (its refunds are priced
//! from them). The sweep walks quotes in id order — ids are time-ordered — from where the last one
//! stopped, in batches off the async runtime's threads, and stops at the first quote not expired
//! long enough: each sweep costs what is new since the last, not the history.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::store::Store;

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
    // Where the last sweep stopped (from the start after a restart: once, then incremental).
    let mut cursor: Option<String> = None;
    loop {
        let mut removed = 0;
        loop {
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
                    cursor = p.cursor;
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
