//! A store for tests on paused tokio time. A paused runtime with nothing to do moves its clock to
//! the next timer — also while a database query is on the wire, which would make timers fire
//! early. [`Blocking`] answers each call on a runtime of its own, holding the caller's thread
//! meanwhile, so the test's runtime is never idle during a store call and its clock moves only
//! when the test's own tasks wait. The embedded store answers at once; this changes nothing for it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use qrbridge::model::*;
use qrbridge::store::{
    AnyStore, Begin, Change, EventSeq, Fence, OutboxPage, Purge, Store, StoreError,
};
use qrbridge_fx::Currency;

pub struct Blocking {
    pub inner: Arc<AnyStore>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Blocking {
    fn drop(&mut self) {
        // Dropped inside the test's runtime, where a runtime may not block to stop.
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

impl Blocking {
    /// Over `inner`, on a runtime of its own; build `inner` with [`Blocking::open`] so that its
    /// connections live on that runtime too.
    pub fn open<F, Fut>(make: F) -> Blocking
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = AnyStore>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the store");
        let inner = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(make())).join().expect("the store opens")
        });
        Blocking { inner: Arc::new(inner), runtime: Some(runtime) }
    }

    fn wait<T: Send, F: Future<Output = T> + Send>(&self, f: F) -> T {
        let handle = self.runtime.as_ref().expect("until dropped").handle();
        std::thread::scope(|s| s.spawn(|| handle.block_on(f)).join().expect("a store call"))
    }
}

impl Store for Blocking {
    async fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        self.wait(self.inner.put_quote(q))
    }

    async fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        self.wait(self.inner.quote(id))
    }

    async fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<Purge, StoreError> {
        self.wait(self.inner.purge_quotes(after, expired_before, max))
    }

    async fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        self.wait(self.inner.begin_payment(p, work, now))
    }

    async fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.wait(self.inner.payment(id))
    }

    async fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        self.wait(self.inner.payments())
    }

    async fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        self.wait(self.inner.payment_by_request(partner, request_id))
    }

    async fn backlog(&self) -> Result<qrbridge::store::Backlog, StoreError> {
        self.wait(self.inner.backlog())
    }

    async fn request_settled(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        self.wait(self.inner.request_settled(partner, request_id))
    }

    async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        self.wait(self.inner.apply(change))
    }

    async fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        self.wait(self.inner.journal())
    }

    async fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        self.wait(self.inner.work_item(payment_id))
    }

    async fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.wait(self.inner.open_work())
    }

    async fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        self.wait(self.inner.refund_by_acquirer_id(acquirer, acquirer_refund_id))
    }

    async fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        self.wait(self.inner.refunds_of(payment_id))
    }

    async fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        self.wait(self.inner.outbox())
    }

    async fn outbox_after(&self, after: Option<u64>, max: usize) -> Result<OutboxPage, StoreError> {
        self.wait(self.inner.outbox_after(after, max))
    }

    async fn outbox_epoch(&self) -> Result<u64, StoreError> {
        self.wait(self.inner.outbox_epoch())
    }

    async fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError> {
        self.wait(self.inner.purge_parked(seqs))
    }

    async fn put_risk_decision(&self, d: &RiskDecisionRecord) -> Result<(), StoreError> {
        self.wait(self.inner.put_risk_decision(d))
    }

    async fn risk_decisions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<RiskDecisionRecord>, StoreError> {
        self.wait(self.inner.risk_decisions(from, to, max))
    }

    async fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        self.wait(self.inner.payments_made(from, to))
    }

    async fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        self.wait(self.inner.refunds_made(from, to))
    }

    async fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.wait(self.inner.journal_of(payment_id))
    }

    async fn account_totals(&self) -> Result<BTreeMap<(Currency, String), i128>, StoreError> {
        self.wait(self.inner.account_totals())
    }

    async fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        self.wait(self.inner.delivered(seq, d))
    }

    async fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        self.wait(self.inner.delivered_events())
    }

    async fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError> {
        self.wait(self.inner.park(seq, parked))
    }

    async fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        self.wait(self.inner.parked())
    }

    async fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.wait(self.inner.unpark(event_id, now))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.wait(self.inner.flush())
    }

    async fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
        fence: Option<Fence<'_>>,
    ) -> Result<AuditRecord, StoreError> {
        self.wait(self.inner.admin_commit(draft, settings, fence))
    }

    async fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        self.wait(self.inner.audit_log())
    }

    async fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.wait(self.inner.settings(prefix))
    }

    async fn mark(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.wait(self.inner.mark(name))
    }

    async fn set_mark(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.wait(self.inner.set_mark(name, value))
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        self.wait(self.inner.audit_head())
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.wait(self.inner.lease(name, holder, ttl))
    }

    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.wait(self.inner.renew_lease(name, holder, ttl))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.wait(self.inner.release_lease(name, holder))
    }
}
