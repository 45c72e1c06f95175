//! A sled store the test controls: flushes that fail or wait at a gate, a refund write that
//! waits until another request has looked the refund up (to line up a race deterministically),
//! and reads it observes: how often the whole history was read, every creation-time window read,
//! and a payments window read held until released.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use chrono::{DateTime, Utc};
use qrbridge::model::*;
use qrbridge::store::{
    AnyStore, Begin, Change, EventSeq, Fence, OutboxPage, SledStore, Store, StoreError,
};
use tokio::sync::{watch, Notify};

/// A creation-time window read: `("payments" | "refunds", from, to)`.
pub type Window = (&'static str, DateTime<Utc>, DateTime<Utc>);

pub struct ControlledStore {
    /// The store itself (shared, so a running daemon's own store can be observed).
    pub inner: Arc<AnyStore>,
    /// Every flush fails while set (but for the next `passes`).
    pub fail: AtomicBool,
    passes: std::sync::atomic::AtomicU32,
    /// While false, flushes wait (each signals `flush_waiting` first).
    gate: watch::Sender<bool>,
    pub flush_waiting: Notify,
    /// Refund lookups so far, and how many the next refund write waits for (0: none).
    lookups: Mutex<u64>,
    looked_up: Condvar,
    hold_refund_write: std::sync::atomic::AtomicU64,
    /// Calls of `payments()` and `journal()`: every payment, every entry.
    history: AtomicUsize,
    /// Each window read, in order.
    windows: Mutex<Vec<Window>>,
    /// While true, a payments window read waits (after signalling `window_read_held`).
    hold_window: Mutex<bool>,
    window_released: Condvar,
    /// A payments window read is waiting to be released.
    pub window_read_held: Notify,
    /// While set, the next refund write waits until another refund write is done (after
    /// signalling `refund_write_held`): as on two nodes, the first read its payment before the
    /// second changed it.
    hold_refund_behind_another: AtomicBool,
    pub refund_write_held: Notify,
    /// Refund writes done.
    refunds_written: watch::Sender<u64>,
    /// While set, the next payment read waits until a refund write is done (after signalling
    /// `payment_read_held`).
    hold_payment_read_behind_refund: AtomicBool,
    pub payment_read_held: Notify,
}

impl ControlledStore {
    /// Over a store of its own, or (an `Arc`) one shared with others.
    pub fn new(inner: Arc<AnyStore>) -> Arc<Self> {
        Arc::new(ControlledStore {
            inner,
            fail: AtomicBool::new(false),
            passes: std::sync::atomic::AtomicU32::new(0),
            gate: watch::channel(true).0,
            flush_waiting: Notify::new(),
            lookups: Mutex::new(0),
            looked_up: Condvar::new(),
            hold_refund_write: std::sync::atomic::AtomicU64::new(0),
            history: AtomicUsize::new(0),
            windows: Mutex::default(),
            hold_window: Mutex::new(false),
            window_released: Condvar::new(),
            window_read_held: Notify::new(),
            hold_refund_behind_another: AtomicBool::new(false),
            refund_write_held: Notify::new(),
            refunds_written: watch::channel(0).0,
            hold_payment_read_behind_refund: AtomicBool::new(false),
            payment_read_held: Notify::new(),
        })
    }

    pub fn open(path: &std::path::Path) -> Arc<Self> {
        Self::new(Arc::new(AnyStore::Sled(SledStore::open(path, 8 << 20).unwrap())))
    }

    /// Flushes wait from now on, until [`ControlledStore::open_gate`].
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// The next refund write waits (on its thread) until `n` refund lookups have been made from
    /// now on.
    pub fn hold_refund_write_until(&self, n: u64) {
        *self.lookups.lock().unwrap() = 0;
        self.hold_refund_write.store(n, Ordering::SeqCst);
    }

    /// The next refund write waits until another refund write is done ([`Self::refund_write_held`]
    /// says when it waits).
    pub fn hold_refund_write_behind_another(&self) {
        self.hold_refund_behind_another.store(true, Ordering::SeqCst);
    }

    /// The next payment read waits until a refund write is done ([`Self::payment_read_held`]
    /// says when it waits).
    pub fn hold_payment_read_behind_a_refund(&self) {
        self.hold_payment_read_behind_refund.store(true, Ordering::SeqCst);
    }

    /// Waits until a refund write is done after `before` were.
    async fn refund_written_after(&self, before: u64) {
        let mut written = self.refunds_written.subscribe();
        written.wait_for(|n| *n > before).await.expect("the store is alive");
    }

    /// The next `n` flushes succeed, every one after fails.
    pub fn fail_after(&self, n: u32) {
        self.passes.store(n, Ordering::SeqCst);
        self.fail.store(true, Ordering::SeqCst);
    }

    /// Reads of the whole history (`payments()`, `journal()`) since the start or the last reset.
    pub fn history_reads(&self) -> usize {
        self.history.load(Ordering::SeqCst)
    }

    pub fn reset_history_reads(&self) {
        self.history.store(0, Ordering::SeqCst);
    }

    /// The window reads made since the last call, in order.
    pub fn take_windows(&self) -> Vec<Window> {
        std::mem::take(&mut *self.windows.lock().unwrap())
    }

    /// Payments window reads wait (on their thread, after signalling `window_read_held`) from now
    /// on, until [`ControlledStore::release_window_reads`].
    pub fn hold_window_reads(&self) {
        *self.hold_window.lock().unwrap() = true;
    }

    pub fn release_window_reads(&self) {
        *self.hold_window.lock().unwrap() = false;
        self.window_released.notify_all();
    }
}

impl Store for ControlledStore {
    async fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        self.inner.put_quote(q).await
    }
    async fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        self.inner.quote(id).await
    }
    async fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<qrbridge::store::Purge, StoreError> {
        self.inner.purge_quotes(after, expired_before, max).await
    }
    async fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        self.inner.begin_payment(p, work, now).await
    }
    async fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        if self.hold_payment_read_behind_refund.swap(false, Ordering::SeqCst) {
            let before = *self.refunds_written.borrow();
            self.payment_read_held.notify_one();
            self.refund_written_after(before).await;
        }
        self.inner.payment(id).await
    }
    async fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        self.history.fetch_add(1, Ordering::SeqCst);
        self.inner.payments().await
    }
    async fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        self.inner.payment_by_request(partner, request_id).await
    }
    async fn request_settled(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        self.inner.request_settled(partner, request_id).await
    }
    async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        let until = if change.refund.is_some() {
            self.hold_refund_write.swap(0, Ordering::SeqCst)
        } else {
            0
        };
        if until > 0 {
            let mut n = self.lookups.lock().unwrap();
            let limit = std::time::Duration::from_secs(10);
            while *n < until {
                let (guard, timeout) = self.looked_up.wait_timeout(n, limit).unwrap();
                n = guard;
                assert!(!timeout.timed_out(), "the refund lookups never came");
            }
        }
        if change.refund.is_some() && self.hold_refund_behind_another.swap(false, Ordering::SeqCst)
        {
            let before = *self.refunds_written.borrow();
            self.refund_write_held.notify_one();
            self.refund_written_after(before).await;
        }
        let applied = self.inner.apply(change).await;
        if change.refund.is_some() && applied.is_ok() {
            self.refunds_written.send_modify(|n| *n += 1);
        }
        applied
    }
    async fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        self.history.fetch_add(1, Ordering::SeqCst);
        self.inner.journal().await
    }
    async fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        self.inner.work_item(payment_id).await
    }
    async fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.inner.open_work().await
    }
    async fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let found = self.inner.refund_by_acquirer_id(acquirer, acquirer_refund_id).await;
        *self.lookups.lock().unwrap() += 1;
        self.looked_up.notify_all();
        found
    }
    async fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        self.inner.refunds_of(payment_id).await
    }
    async fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        self.inner.outbox().await
    }
    async fn outbox_after(&self, after: Option<u64>, max: usize) -> Result<OutboxPage, StoreError> {
        self.inner.outbox_after(after, max).await
    }
    async fn outbox_epoch(&self) -> Result<u64, StoreError> {
        self.inner.outbox_epoch().await
    }
    async fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError> {
        self.inner.purge_parked(seqs).await
    }
    async fn put_risk_decision(&self, d: &RiskDecisionRecord) -> Result<(), StoreError> {
        self.inner.put_risk_decision(d).await
    }

    async fn risk_decisions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<RiskDecisionRecord>, StoreError> {
        self.inner.risk_decisions(from, to, max).await
    }

    async fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        self.windows.lock().unwrap().push(("payments", from, to));
        {
            let mut held = self.hold_window.lock().unwrap();
            if *held {
                self.window_read_held.notify_one();
                let limit = std::time::Duration::from_secs(10);
                while *held {
                    let (guard, waited) = self.window_released.wait_timeout(held, limit).unwrap();
                    held = guard;
                    assert!(!waited.timed_out(), "never released: the read holds a runtime thread");
                }
            }
        }
        self.inner.payments_made(from, to).await
    }
    async fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        self.windows.lock().unwrap().push(("refunds", from, to));
        self.inner.refunds_made(from, to).await
    }
    async fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.inner.journal_of(payment_id).await
    }
    async fn account_totals(
        &self,
    ) -> Result<std::collections::BTreeMap<(qrbridge_fx::Currency, String), i128>, StoreError> {
        self.inner.account_totals().await
    }
    async fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        self.inner.delivered(seq, d).await
    }
    async fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        self.inner.delivered_events().await
    }
    async fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError> {
        self.inner.park(seq, parked).await
    }
    async fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        self.inner.parked().await
    }
    async fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.unpark(event_id, now).await
    }
    async fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
        fence: Option<Fence<'_>>,
    ) -> Result<AuditRecord, StoreError> {
        self.inner.admin_commit(draft, settings, fence).await
    }
    async fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        self.inner.audit_log().await
    }
    async fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.settings(prefix).await
    }
    async fn mark(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.mark(name).await
    }
    async fn set_mark(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_mark(name, value).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        let mut gate = self.gate.subscribe();
        if !*gate.borrow_and_update() {
            self.flush_waiting.notify_one();
            let _ = gate.wait_for(|open| *open).await;
        }
        let pass = self
            .passes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if self.fail.load(Ordering::SeqCst) && !pass {
            let e = sled::Error::Io(std::io::Error::other("injected: disk full"));
            return Err(StoreError::Sled(Arc::new(e)));
        }
        self.inner.flush().await
    }
}
