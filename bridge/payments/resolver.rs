//! The resolver: the background worker that brings every payment in doubt to rest.
//!
//! It keeps no state of its own: the work is in the store ([`crate::model::WorkItem`], written
//! with each payment change), so a restart resumes it. Each pass does every task that is due —
//! [`Engine::step`], up to `concurrency` payments at a time — then sleeps until the next one is
//! due, or until the engine signals work due sooner than that, or until shutdown.

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::payments::engine::Engine;
use crate::store::Store;

/// How long to wait before looking again at a payment this process is still paying, or after a
/// store failure.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs until `shutdown` turns true, `concurrency` tasks at a time; tasks under way are finished
/// first. With `poll`, it looks at the work at least that often: other nodes write work that
/// wakes no one here.
pub async fn run<S: Store>(
    engine: Arc<Engine<S>>,
    concurrency: usize,
    poll: Option<std::time::Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    loop {
        // Between passes too: a pass that did work is followed at once by another, and a node
        // told to stop (shutdown, or its lease lost) must not go on.
        if *shutdown.borrow() {
            return;
        }
        let woken = engine.work_written.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // While scanning, any new work wakes the next round.
        engine.resolver_sleeps_until(None);
        let wait = match pass(&engine, &permits, &shutdown).await {
            Ok(Pass { done: 0, next }) => next,
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(error = %e, "resolver pass failed");
                Some(RECHECK)
            }
        };
        let idle = poll.unwrap_or(std::time::Duration::from_secs(3600));
        let wait = wait.map_or(idle, |w| w.min(idle));
        let wake = chrono::Duration::from_std(wait).ok().map(|w| engine.now() + w);
        engine.resolver_sleeps_until(wake);
        let sleep = tokio::time::sleep(wait);
        tokio::select! {
            _ = sleep => {}
            _ = &mut woken => {}
            _ = qrbridge_adapters::https::stopped(&mut shutdown) => return,
        }
    }
}

struct Pass {
    done: usize,
    /// How long until the next task is due.
    next: Option<std::time::Duration>,
}

async fn pass<S: Store>(
    engine: &Arc<Engine<S>>,
    permits: &Arc<Semaphore>,
    stop: &watch::Receiver<bool>,
) -> Result<Pass, crate::store::StoreError> {
    let now = engine.now();
    let mut next: Option<std::time::Duration> = None;
    let mut soonest = |d: std::time::Duration| next = Some(next.map_or(d, |n| n.min(d)));
    let mut tasks = JoinSet::new();
    for item in engine.store().open_work().await? {
        if *stop.borrow() {
            // Told to stop (shutdown, or the lease lost): nothing more starts; what started ends.
            break;
        }
        if item.task == crate::model::Task::Attention {
            // For an operator; the resolver never does it.
            continue;
        }
        if engine.is_inflight(&item.payment_id) {
            soonest(RECHECK);
        } else if item.due > now {
            soonest((item.due - now).to_std().unwrap_or_default());
        } else {
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let engine = engine.clone();
            tasks.spawn(async move {
                let _permit = permit;
                match engine.step_counted(&item.payment_id, None).await {
                    Ok((_, acted)) => Some(acted),
                    Err(e) => {
                        tracing::warn!(payment = %item.payment_id, error = %e, "resolver step failed");
                        None
                    }
                }
            });
        }
    }
    let mut done = 0;
    let mut failed = false;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Some(true)) => done += 1,
            // Due, but taken up meanwhile (a payment this process started paying): look again.
            Ok(Some(false)) => soonest(RECHECK),
            _ => failed = true,
        }
    }
    if failed {
        // Let the failure pass (a store or acquirer fault) rather than spin on it.
        return Ok(Pass { done: 0, next: Some(RECHECK) });
    }
    Ok(Pass { done, next })
}
