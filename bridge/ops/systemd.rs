//! systemd: readiness, reload and stop notifications, and the watchdog.
//!
//! Each is a datagram to the socket systemd names in `NOTIFY_SOCKET` (through `sd-notify`), sent
//! by a unit with `Type=notify` (dist/systemd/qrbridge.service). Without `NOTIFY_SOCKET` (not
//! under systemd, or a unit of another type) every function here does nothing. A notification
//! that cannot be sent is logged and otherwise ignored: the daemon serves the same either way.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Start-up is done (the store is open, every listener bound): `systemctl start` returns, and
/// `status` is what `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload has begun; [`ready`] says when it is done (whether it was taken or refused).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    // systemd 253 and later match a reload by this timestamp (it must be sent with
    // RELOADING=1 for `Type=notify-reload`); older ones ignore it.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => states.push(now),
        Err(e) => tracing::warn!(error = %e, "systemd: the monotonic clock could not be read"),
    }
    send(&states);
}

/// The daemon is stopping: it drains its connections and flushes the store.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: draining connections")]);
}

/// How often the watchdog is pinged: half the interval systemd asked this process for
/// (`WATCHDOG_USEC`, and `WATCHDOG_PID` when set must be ours), so one late ping is not a
/// restart. `None` without a notify socket or a watchdog.
pub fn watchdog_period() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let every = sd_notify::watchdog_enabled()? / 2;
    (!every.is_zero()).then_some(every)
}

/// Pings the watchdog (`WATCHDOG=1`) every [`watchdog_period`] from a task on the daemon's
/// runtime, the first at once, until `shutdown` turns true (or its sender is gone). The pings
/// come from the runtime on purpose: when every worker is blocked they stop, and systemd kills
/// and restarts the daemon. `None` (no task) when systemd asked for no watchdog.
pub fn watchdog(shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    let every = watchdog_period()?;
    tracing::info!(every = ?every, "systemd watchdog: pinging");
    Some(tokio::spawn(pings(every, shutdown)))
}

async fn pings(every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    // A late tick is followed by a full period, not by a burst of pings making up for it.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One datagram to systemd; a no-op without `NOTIFY_SOCKET`. It is one `send` on a Unix datagram
/// socket, made where it is called: the kernel queues it at once unless systemd's queue is full,
/// and systemd reads its socket continuously.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "systemd notification could not be sent");
    }
}
