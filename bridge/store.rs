//! Durable state. [`Store`] is what the engine needs; [`SledStore`] keeps it in sled, one tree per
//! purpose, one transaction per state change, big-endian sequence keys so scans come out in order.
//!
//! Nothing is "done" before [`Store::flush`] has returned `Ok`: sled's `flush_async` made the
//! state durable. Concurrent requests share one flush ([`GroupCommit`]), so fsync does not
//! serialize the daemon.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use qrbridge_fx::Currency;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::model::*;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(Arc<sled::Error>),
    /// A record did not read back as written: a broken invariant.
    #[error("corrupt record in {tree}: {message}")]
    Corrupt { tree: &'static str, message: String },
    /// The payment changed since it was read; read again and redo the change.
    #[error("payment {0} changed concurrently")]
    Stale(String),
    #[error(transparent)]
    Begin(#[from] BeginError),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(Arc::new(e))
    }
}

/// Why a payment could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeginError {
    #[error("request_id reused with a different body")]
    RequestConflict,
    #[error("no such quote")]
    QuoteNotFound,
    #[error("the quote has expired")]
    QuoteExpired,
    #[error("another request_id already paid this quote")]
    QuoteUsed,
}

/// What starting a payment did.
#[derive(Debug, Clone)]
pub enum Begin {
    /// Written as given.
    Created,
    /// The same request was made before: this is the payment it made, as it now stands.
    Replay(Box<PaymentRecord>),
}

/// A state change of one payment, applied atomically with its ledger entry and events.
#[derive(Debug, Clone)]
pub struct Change {
    /// The payment as it becomes; its `rev` must be one more than the stored one.
    pub payment: PaymentRecord,
    pub journal: Option<JournalEntry>,
    pub events: Vec<OutboxEvent>,
    /// Lets the quote be paid again (after `ACQUIRER_UNAVAILABLE`).
    pub release_quote: bool,
}

/// A future the store returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What the engine needs from storage.
pub trait Store: Send + Sync + 'static {
    fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError>;
    fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError>;
    /// Starts `p` unless the partner's request id, or the quote, says otherwise — atomically.
    fn begin_payment(&self, p: &PaymentRecord, now: DateTime<Utc>) -> Result<Begin, StoreError>;
    fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError>;
    fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    fn apply(&self, change: &Change) -> Result<(), StoreError>;
    /// Every journal entry, in order.
    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError>;
    /// Every outbox event, in order.
    fn outbox(&self) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Payments that are not final, for recovery.
    fn unsettled_payments(&self) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> StoreFuture<'_, ()>;

    /// Per-currency sums of the whole journal: all zero when the ledger balances.
    fn ledger_sums(&self) -> Result<BTreeMap<Currency, i128>, StoreError> {
        let mut sums = BTreeMap::new();
        for e in self.journal()? {
            for (c, s) in e.sums() {
                *sums.entry(c).or_insert(0) += s;
            }
        }
        Ok(sums)
    }
}

/// One flush shared by every write waiting when it starts.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), StoreError>>>,
}

impl GroupCommit {
    /// Starts the flusher task for `db`.
    pub fn start(db: sled::Db) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), StoreError>>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                // Every waiter wrote before it enqueued, so this flush covers all of them.
                let result = db.flush_async().await.map(|_| ()).map_err(StoreError::from);
                for w in waiting {
                    let _ = w.send(result.clone());
                }
            }
        });
        GroupCommit { tx }
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let closed =
            || StoreError::Sled(Arc::new(sled::Error::ReportableBug("flusher stopped".into())));
        self.tx.send(tx).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// The sled store.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    quotes: sled::Tree,
    payments: sled::Tree,
    idem: sled::Tree,
    quote_use: sled::Tree,
    ledger: sled::Tree,
    outbox: sled::Tree,
    flusher: GroupCommit,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON of plain data")
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { tree, message: e.to_string() })
}

fn idem_key(partner: &str, request_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(partner.len() + 1 + request_id.len());
    k.extend_from_slice(partner.as_bytes());
    k.push(0);
    k.extend_from_slice(request_id.as_bytes());
    k
}

#[derive(serde::Serialize, serde::Deserialize)]
struct IdemEntry {
    hash: String,
    payment_id: String,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_get<T: DeserializeOwned>(
    t: &TransactionalTree,
    tree: &'static str,
    key: &[u8],
) -> TxResult<Option<T>> {
    match t.get(key)? {
        Some(v) => decode(tree, &v).map(Some).map_err(ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

fn abort<T>(e: impl Into<StoreError>) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e.into()))
}

fn unwrap_tx<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    })
}

fn storage(e: UnabortableTransactionError) -> ConflictableTransactionError<StoreError> {
    e.into()
}

impl SledStore {
    /// Opens (or creates) the store at `path` with a page cache of `cache_bytes`. Must be called
    /// inside a tokio runtime (the group-commit flusher is a task).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly before answering; sled's timer flush would only add fsyncs.
            .flush_every_ms(None)
            .open()?;
        Ok(SledStore {
            quotes: db.open_tree("quotes")?,
            payments: db.open_tree("payments")?,
            idem: db.open_tree("idempotency")?,
            quote_use: db.open_tree("quote_use")?,
            ledger: db.open_tree("ledger")?,
            outbox: db.open_tree("outbox")?,
            flusher: GroupCommit::start(db.clone()),
            db,
        })
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn scan<T: DeserializeOwned>(
        tree: &sled::Tree,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        tree.iter().values().map(|v| decode(name, &v?)).collect()
    }
}

impl Store for SledStore {
    fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        self.quotes.insert(q.quote_id.as_bytes(), encode(q))?;
        Ok(())
    }

    fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        self.quotes.get(id.as_bytes())?.map(|v| decode("quotes", &v)).transpose()
    }

    fn begin_payment(&self, p: &PaymentRecord, now: DateTime<Utc>) -> Result<Begin, StoreError> {
        let key = idem_key(&p.partner, &p.request_id);
        let record = encode(p);
        let idem_entry =
            encode(&IdemEntry { hash: p.request_hash.clone(), payment_id: p.payment_id.clone() });
        unwrap_tx((&self.idem, &self.quotes, &self.quote_use, &self.payments).transaction(
            |(idem, quotes, quote_use, payments)| {
                if let Some(seen) = tx_get::<IdemEntry>(idem, "idempotency", &key)? {
                    if seen.hash != p.request_hash {
                        return abort(BeginError::RequestConflict);
                    }
                    let Some(existing) =
                        tx_get::<PaymentRecord>(payments, "payments", seen.payment_id.as_bytes())?
                    else {
                        return abort(StoreError::Corrupt {
                            tree: "idempotency",
                            message: format!("points at missing payment {}", seen.payment_id),
                        });
                    };
                    return Ok(Begin::Replay(Box::new(existing)));
                }
                let Some(q) = tx_get::<QuoteRecord>(quotes, "quotes", p.quote_id.as_bytes())?
                else {
                    return abort(BeginError::QuoteNotFound);
                };
                if q.partner != p.partner {
                    return abort(BeginError::QuoteNotFound);
                }
                if q.quote.is_expired(now) {
                    return abort(BeginError::QuoteExpired);
                }
                if quote_use.get(p.quote_id.as_bytes()).map_err(storage)?.is_some() {
                    return abort(BeginError::QuoteUsed);
                }
                payments.insert(p.payment_id.as_bytes(), record.as_slice())?;
                idem.insert(key.as_slice(), idem_entry.as_slice())?;
                quote_use.insert(p.quote_id.as_bytes(), p.payment_id.as_bytes())?;
                Ok(Begin::Created)
            },
        ))
    }

    fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.payments.get(id.as_bytes())?.map(|v| decode("payments", &v)).transpose()
    }

    fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let Some(v) = self.idem.get(idem_key(partner, request_id))? else { return Ok(None) };
        let e: IdemEntry = decode("idempotency", &v)?;
        self.payment(&e.payment_id)
    }

    fn apply(&self, c: &Change) -> Result<(), StoreError> {
        if let Some(j) = &c.journal {
            // A journal entry that does not balance is a bug: stop rather than book wrong money.
            assert!(
                j.is_balanced(),
                "unbalanced journal entry for {}: {:?}",
                j.payment_id,
                j.sums()
            );
        }
        let id = c.payment.payment_id.as_bytes();
        let record = encode(&c.payment);
        let journal = c.journal.as_ref().map(encode);
        let events: Vec<Vec<u8>> = c.events.iter().map(encode).collect();
        unwrap_tx((&self.payments, &self.ledger, &self.outbox, &self.quote_use).transaction(
            |(payments, ledger, outbox, quote_use)| {
                let Some(current) = tx_get::<PaymentRecord>(payments, "payments", id)? else {
                    return abort(StoreError::Stale(c.payment.payment_id.clone()));
                };
                if current.rev + 1 != c.payment.rev {
                    return abort(StoreError::Stale(c.payment.payment_id.clone()));
                }
                payments.insert(id, record.as_slice())?;
                if let Some(j) = &journal {
                    let seq = ledger.generate_id()?;
                    ledger.insert(&seq.to_be_bytes(), j.as_slice())?;
                }
                for e in &events {
                    let seq = outbox.generate_id()?;
                    outbox.insert(&seq.to_be_bytes(), e.as_slice())?;
                }
                if c.release_quote
                    && quote_use.get(c.payment.quote_id.as_bytes())?.as_deref() == Some(id)
                {
                    quote_use.remove(c.payment.quote_id.as_bytes())?;
                }
                Ok(())
            },
        ))
    }

    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        Self::scan(&self.ledger, "ledger")
    }

    fn outbox(&self) -> Result<Vec<OutboxEvent>, StoreError> {
        Self::scan(&self.outbox, "outbox")
    }

    fn unsettled_payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        let all: Vec<PaymentRecord> = Self::scan(&self.payments, "payments")?;
        Ok(all.into_iter().filter(|p| !p.state.is_final()).collect())
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.flusher.flush())
    }
}
