//! Proves that a failed flush is fatal to the request that needed it: the partner gets `INTERNAL`
//! (500, retryable), the acquirer is never called for a payment whose PENDING record was not made
//! durable, and the same request retried later finds that payment and finishes it, over the real
//! sandbox acquirer, instead of making another. Drives the engine directly over a store whose
//! flush can be made to fail.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use qrbridge::api::{PayRequestBody, Payer, QuoteRequestBody, RawAmount};
use qrbridge::clock::SystemClock;
use qrbridge::engine::{AcquirerService, Engine};
use qrbridge::model::*;
use qrbridge::store::Store;
use qrbridge_adapters::acquirer::AcquirerClient;
use support::stores::ControlledStore;

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

    let store = ControlledStore::open(&dir.path().join("db"));
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

    // A quote needs no flush of its own (one lost in a crash is QUOTE_NOT_FOUND when paid): it is
    // given out while flushes fail; the payment that uses it makes it durable.
    store.set_failing(true);
    engine.quote("p", quote_body()).await.unwrap();

    store.set_failing(false);
    let q = engine.quote("p", quote_body()).await.unwrap();

    // A payment whose PENDING record cannot be flushed: INTERNAL, and no instruction leaves.
    store.set_failing(true);
    let body = || PayRequestBody {
        request_id: "r-1".into(),
        quote_id: q.quote_id.clone(),
        payer: Payer { id: "u".into() },
    };
    let err = engine.pay("p", body()).await.unwrap_err();
    assert_eq!(err.code(), "INTERNAL");
    assert!(err.parts().2, "INTERNAL is retryable");
    assert!(sandbox.all_received().is_empty(), "nothing may be sent before PENDING is durable");

    // Retried once the disk is back: the same payment, never a second one, and this retry
    // finishes it (the contract of INTERNAL: "retry with the same request_id").
    store.set_failing(false);
    let (p, created) = engine.pay("p", body()).await.unwrap();
    assert!(!created);
    assert_eq!(p.state, PaymentState::Succeeded);
    assert_eq!(sandbox.all_received().len(), 1, "one instruction, under the payment's id");
    let (again, created) = engine.pay("p", body()).await.unwrap();
    assert_eq!((again.payment_id.as_str(), created), (p.payment_id.as_str(), false));
    assert_eq!(sandbox.all_received().len(), 1);
    assert!(store.work_item(&p.payment_id).await.unwrap().is_none());
    sandbox.shutdown().await;
}
