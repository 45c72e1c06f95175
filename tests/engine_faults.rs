//! Proves that a failed flush is fatal to the request that needed it: the partner gets `INTERNAL`
//! (500, retryable), the acquirer is never called for a payment whose PENDING record was not made
//! durable, and the same request retried later finds that payment instead of making another.
//! Drives the engine directly over a store whose flush can be made to fail.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use qrbridge::api::{PayRequestBody, Payer, QuoteRequestBody, RawAmount};
use qrbridge::clock::SystemClock;
use qrbridge::engine::{AcquirerService, Engine};
use qrbridge::error::ApiError;
use qrbridge::model::*;
use qrbridge::store::{Begin, Change, EventSeq, SledStore, Store, StoreError, StoreFuture};
use qrbridge_adapters::acquirer::AcquirerClient;

/// The sled store, with a switch that makes every flush fail.
struct FlakyStore {
    inner: SledStore,
    fail: AtomicBool,
}

impl Store for FlakyStore {
    fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        self.inner.put_quote(q)
    }
    fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        self.inner.quote(id)
    }
    fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        self.inner.begin_payment(p, work, now)
    }
    fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.inner.payment(id)
    }
    fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        self.inner.payments()
    }
    fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        self.inner.payment_by_request(partner, request_id)
    }
    fn apply(&self, change: &Change) -> Result<(), StoreError> {
        self.inner.apply(change)
    }
    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        self.inner.journal()
    }
    fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        self.inner.work_item(payment_id)
    }
    fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.inner.open_work()
    }
    fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        self.inner.refund_by_acquirer_id(acquirer, acquirer_refund_id)
    }
    fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        self.inner.refunds_of(payment_id)
    }
    fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        self.inner.outbox()
    }
    fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        self.inner.delivered(seq, d)
    }
    fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        self.inner.delivered_events()
    }
    fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError> {
        self.inner.park(seq, parked)
    }
    fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        self.inner.parked()
    }
    fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.unpark(event_id, now)
    }
    fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
    ) -> Result<AuditRecord, StoreError> {
        self.inner.admin_commit(draft, settings)
    }
    fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        self.inner.audit_log()
    }
    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.settings(prefix)
    }
    fn flush(&self) -> StoreFuture<'_, ()> {
        if self.fail.load(Ordering::SeqCst) {
            let e = sled::Error::Io(std::io::Error::other("injected: disk full"));
            return Box::pin(async move { Err(StoreError::Sled(Arc::new(e))) });
        }
        self.inner.flush()
    }
}

#[tokio::test]
async fn a_failed_flush_answers_internal_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let sandbox = support::pki_and_sandbox(&pki, 30_000).await;
    let client_tls = support::daemon::client_config(&pki, Some("bridge-client"));
    let client = AcquirerClient::new(
        "sandbox",
        &format!("https://{}", sandbox.addr()),
        client_tls,
        Duration::from_secs(1),
        Duration::from_secs(2),
    );

    let store = Arc::new(FlakyStore {
        inner: SledStore::open(&dir.path().join("db"), 8 << 20).unwrap(),
        fail: AtomicBool::new(false),
    });
    let acquirers = HashMap::from([("sandbox".to_owned(), AcquirerService::new(client))]);
    let engine = Engine::new(support::engine::parts(
        dir.path(),
        store.clone(),
        Arc::new(SystemClock),
        acquirers,
    ));
    let quote_body = || QuoteRequestBody {
        code: qrbridge::defaults::demo_code(),
        amount: Some(RawAmount { currency: "CNY".into(), value: "2372".into() }),
        wallet_currency: "PHP".into(),
    };

    // A quote whose flush fails is not given out.
    store.fail.store(true, Ordering::SeqCst);
    let err = engine.quote("p", quote_body()).await.unwrap_err();
    assert_eq!(err, ApiError::Internal);
    let resp = err.response();
    assert_eq!(resp.status().as_u16(), 500);

    store.fail.store(false, Ordering::SeqCst);
    let q = engine.quote("p", quote_body()).await.unwrap();

    // A payment whose PENDING record cannot be flushed: INTERNAL, and no instruction leaves.
    store.fail.store(true, Ordering::SeqCst);
    let body = || PayRequestBody {
        request_id: "r-1".into(),
        quote_id: q.quote_id.clone(),
        payer: Payer { id: "u".into() },
    };
    let err = engine.pay("p", body()).await.unwrap_err();
    assert_eq!(err.code(), "INTERNAL");
    assert!(err.parts().2, "INTERNAL is retryable");
    assert!(sandbox.all_received().is_empty(), "nothing may be sent before PENDING is durable");

    // Retried once the disk is back: the same payment, still in doubt, never a second one.
    store.fail.store(false, Ordering::SeqCst);
    let (p, created) = engine.pay("p", body()).await.unwrap();
    assert!(!created);
    assert_eq!(p.state, PaymentState::Pending);
    assert!(sandbox.all_received().is_empty());

    // The resolver asks rather than sends: the acquirer never heard of it, so the payment stays
    // in doubt (until its expiry, when it is reversed), and still nothing is sent.
    let p = engine.step(&p.payment_id, Some(Task::Inquire)).await.unwrap().unwrap();
    assert_eq!(p.state, PaymentState::Unknown);
    let work = store.work_item(&p.payment_id).unwrap().unwrap();
    assert_eq!((work.task, work.attempt), (Task::Inquire, 1));
    assert!(sandbox.all_received().is_empty());
    sandbox.shutdown().await;
}
