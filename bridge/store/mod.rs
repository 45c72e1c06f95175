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

pub mod retention;

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
    /// The acquirer's refund id is taken: this is the refund it names.
    #[error("refund {} already recorded", .0.acquirer_refund_id)]
    RefundExists(Box<RefundRecord>),
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
    #[error("another payment paid, or is paying, this order")]
    OrderPaid,
}

/// What a purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    pub removed: usize,
    /// The last id looked at: the next sweep starts after it.
    pub cursor: Option<String>,
    /// Whether it stopped at a quote not expired yet (or at the end): nothing more to do now.
    pub caught_up: bool,
}

/// What starting a payment did.
#[derive(Debug, Clone)]
pub enum Begin {
    /// Written as given.
    Created,
    /// The same request was made before: this is the payment it made, as it now stands.
    Replay(Box<PaymentRecord>),
}

/// A state change of one payment, applied atomically with its ledger entry, events, resolver
/// work and (for a refund) the refund itself.
#[derive(Debug, Clone)]
pub struct Change {
    /// The payment as it becomes; its `rev` must be one more than the stored one.
    pub payment: PaymentRecord,
    pub journal: Option<JournalEntry>,
    pub events: Vec<OutboxEvent>,
    /// Lets the quote be paid again (after `ACQUIRER_UNAVAILABLE`).
    pub release_quote: bool,
    /// What becomes of the payment's resolver work.
    pub work: Work,
    /// A refund recorded by this change.
    pub refund: Option<RefundRecord>,
}

impl Change {
    /// A change to `payment` and nothing else.
    pub fn of(payment: PaymentRecord) -> Self {
        Change {
            payment,
            journal: None,
            events: vec![],
            release_quote: false,
            work: Work::Keep,
            refund: None,
        }
    }
}

/// What a change does to the payment's resolver work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    Keep,
    Set(WorkItem),
    Done,
}

/// Where an undelivered event sits in the outbox (its order).
pub type EventSeq = u64;

/// A future the store returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What the engine needs from storage.
pub trait Store: Send + Sync + 'static {
    fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError>;
    fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError>;
    /// Removes quotes that expired before `expired_before` and that no payment used, looking at
    /// most at `max` quotes in id (creation) order after `after`; used quotes stay (their
    /// payments price refunds from them). Stops at the first quote not expired by then, so a
    /// sweep costs what it looks at, not the history.
    fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<Purge, StoreError>;
    /// Starts `p` with its first resolver `work`, unless the partner's request id, or the quote,
    /// says otherwise — atomically.
    fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError>;
    fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError>;
    /// Every payment, oldest first (ids are time-ordered).
    fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError>;
    fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError>;
    /// Applies `change`; a refund in it is refused with [`StoreError::RefundExists`] when the
    /// acquirer's refund id is already taken.
    fn apply(&self, change: &Change) -> Result<(), StoreError>;
    /// Every journal entry, in order.
    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError>;
    /// The resolver's work for one payment.
    fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError>;
    /// All resolver work: every payment not final yet, every reversal not confirmed.
    fn open_work(&self) -> Result<Vec<WorkItem>, StoreError>;
    /// A refund by the acquirer's own id.
    fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError>;
    /// A payment's refunds, oldest first.
    fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError>;
    /// Events not delivered yet, in the order they were written.
    fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError>;
    /// At most `max` undelivered events after `after`, in sequence order. The sequence is the
    /// commit order: an event committed after this returns has a higher sequence than every event
    /// it returned, so a reader that keeps the last sequence it saw misses nothing — except events
    /// an operator put back ([`Store::unpark`]), which change [`Store::outbox_epoch`].
    fn outbox_after(
        &self,
        after: Option<EventSeq>,
        max: usize,
    ) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError>;
    /// Changes whenever an event goes back into the outbox below the sequence (a replay): a
    /// reader that keeps a cursor then reads the whole outbox again.
    fn outbox_epoch(&self) -> u64;
    /// Removes the parked events at `seqs` (those still parked); returns how many it removed.
    fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError>;
    /// Payments created in `[from, to)`, oldest first: read from an index by creation time, so
    /// the cost is that window's, not the history's.
    fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Refunds created in `[from, to)`, oldest first (an index, as for payments).
    fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError>;
    /// One payment's journal entries, in order.
    fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError>;
    /// The sum of every posting per currency and account, kept as running totals as entries are
    /// written (no scan of the journal).
    fn account_totals(&self) -> Result<BTreeMap<(Currency, String), i128>, StoreError>;
    /// Moves an event from the outbox to the delivered log.
    fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError>;
    /// Every delivered event, in order.
    fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError>;
    /// Moves an event from the outbox to the parked list.
    fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError>;
    /// Every parked event, in order.
    fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError>;
    /// Puts a parked event back in the outbox at its old place, its maximum age counting from
    /// `now`; false when no such event is parked.
    fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> StoreFuture<'_, ()>;
    /// Records an admin change at the end of the audit chain and, in the same transaction,
    /// writes `settings` (a `None` value removes the key). Returns the record written.
    fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
    ) -> Result<AuditRecord, StoreError>;
    /// The audit log in order, and the chain head the store keeps.
    fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError>;
    /// Every setting whose key starts with `prefix`, in key order.
    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

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

/// One flush shared by every write waiting when it starts, and none when an earlier flush already
/// covered everything written.
///
/// Writes are counted as they begin and as they end ([`GroupCommit::write`]). A flush that starts
/// when every write begun so far has also ended covers them all, and records that count once it
/// succeeds. So a caller that has read something — its own write or another's — and then calls
/// [`GroupCommit::flush`] skips the flush only when a successful flush started after every write
/// begun before the call had ended: nothing it read can be taken back by a crash.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), StoreError>>>,
    marks: Arc<Marks>,
}

#[derive(Default)]
struct Marks {
    /// Writes begun.
    begun: std::sync::atomic::AtomicU64,
    /// Writes ended (made, or failed).
    ended: std::sync::atomic::AtomicU64,
    /// Every write up to this count is durable.
    durable: std::sync::atomic::AtomicU64,
}

/// A write under way; dropping it marks it ended.
pub struct WriteMark(Arc<Marks>);

impl Drop for WriteMark {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl GroupCommit {
    /// Starts the flusher task for `db`.
    pub fn start(db: sled::Db) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), StoreError>>>();
        let marks = Arc::new(Marks::default());
        let m = marks.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                // Ended first, then begun: equal means no write was under way in between, so
                // this flush covers every write begun so far. Every waiter wrote before it
                // enqueued, so the flush covers all of them in any case.
                let ended = m.ended.load(SeqCst);
                let begun = m.begun.load(SeqCst);
                let result = if m.durable.load(SeqCst) >= begun {
                    Ok(())
                } else {
                    db.flush_async().await.map(|_| ()).map_err(StoreError::from)
                };
                if result.is_ok() && ended == begun {
                    m.durable.fetch_max(begun, SeqCst);
                }
                for w in waiting {
                    let _ = w.send(result.clone());
                }
            }
        });
        GroupCommit { tx, marks }
    }

    /// Marks a write as begun (call it before writing) until the mark is dropped.
    pub fn write(&self) -> WriteMark {
        self.marks.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        WriteMark(self.marks.clone())
    }

    /// Returns once everything written before the call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.marks.durable.load(SeqCst) >= self.marks.begun.load(SeqCst) {
            return Ok(());
        }
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
    /// Order key → the payment that holds the order (dynamic codes only).
    orders: sled::Tree,
    ledger: sled::Tree,
    outbox: sled::Tree,
    delivered: sled::Tree,
    parked: sled::Tree,
    work: sled::Tree,
    refunds: sled::Tree,
    refunds_by_payment: sled::Tree,
    refund_idem: sled::Tree,
    /// Admin settings (spreads, rates set by hand) and the audit chain's head.
    settings: sled::Tree,
    audit: sled::Tree,
    flusher: GroupCommit,
}

/// The settings key of the audit chain's head.
const AUDIT_HEAD: &str = "audit/head";

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON of plain data")
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { tree, message: e.to_string() })
}

/// `a`, a zero byte, `b`: a key for `b` within `a` (ids never hold a zero byte).
fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
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
            orders: db.open_tree("orders")?,
            ledger: db.open_tree("ledger")?,
            outbox: db.open_tree("outbox")?,
            delivered: db.open_tree("webhooks_delivered")?,
            parked: db.open_tree("webhooks_parked")?,
            work: db.open_tree("resolver")?,
            refunds: db.open_tree("refunds")?,
            refunds_by_payment: db.open_tree("refunds_by_payment")?,
            refund_idem: db.open_tree("refund_idempotency")?,
            settings: db.open_tree("settings")?,
            audit: db.open_tree("audit")?,
            flusher: GroupCommit::start(db.clone()),
            db,
        })
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn scan_seq<T: DeserializeOwned>(
        tree: &sled::Tree,
        name: &'static str,
    ) -> Result<Vec<(EventSeq, T)>, StoreError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                let seq = <[u8; 8]>::try_from(k.as_ref()).map_err(|_| StoreError::Corrupt {
                    tree: name,
                    message: "key is not a sequence number".into(),
                })?;
                Ok((u64::from_be_bytes(seq), decode(name, &v)?))
            })
            .collect()
    }

    /// Moves the record at `seq` from one tree to another, as `value`, atomically.
    fn move_event(
        &self,
        from: &sled::Tree,
        to: &sled::Tree,
        seq: EventSeq,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        let _write = self.flusher.write();
        let key = seq.to_be_bytes();
        unwrap_tx((from, to).transaction(|(from, to)| {
            from.remove(&key)?;
            to.insert(&key, value.as_slice())?;
            Ok(())
        }))
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
        let _write = self.flusher.write();
        self.quotes.insert(q.quote_id.as_bytes(), encode(q))?;
        Ok(())
    }

    fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        self.quotes.get(id.as_bytes())?.map(|v| decode("quotes", &v)).transpose()
    }

    fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<Purge, StoreError> {
        let _write = self.flusher.write();
        let range = match after {
            Some(a) => self.quotes.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.quotes.iter(),
        };
        let mut purge = Purge { cursor: after.map(str::to_owned), ..Purge::default() };
        for (looked, kv) in range.enumerate() {
            if looked == max {
                return Ok(purge);
            }
            let (k, v) = kv?;
            let q: QuoteRecord = decode("quotes", &v)?;
            if q.quote.expires_at >= expired_before {
                purge.caught_up = true;
                return Ok(purge);
            }
            // Only while no payment holds it: the claim and the removal in one transaction, so a
            // payment beginning on it now either sees it or finds it gone (QUOTE_NOT_FOUND).
            let removed =
                unwrap_tx((&self.quotes, &self.quote_use).transaction(|(quotes, used)| {
                    if used.get(&k)?.is_some() {
                        return Ok(false);
                    }
                    quotes.remove(&k)?;
                    Ok(true)
                }))?;
            purge.removed += usize::from(removed);
            purge.cursor = Some(String::from_utf8_lossy(&k).into_owned());
        }
        purge.caught_up = true;
        Ok(purge)
    }

    fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        let _write = self.flusher.write();
        let key = pair_key(&p.partner, &p.request_id);
        let record = encode(p);
        let work = encode(work);
        let idem_entry =
            encode(&IdemEntry { hash: p.request_hash.clone(), payment_id: p.payment_id.clone() });
        let trees =
            (&self.idem, &self.quotes, &self.quote_use, &self.payments, &self.work, &self.orders);
        unwrap_tx(trees.transaction(|(idem, quotes, quote_use, payments, work_tree, orders)| {
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
            let Some(q) = tx_get::<QuoteRecord>(quotes, "quotes", p.quote_id.as_bytes())? else {
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
            if let Some(order) = &p.order {
                if orders.get(order.as_bytes())?.is_some() {
                    return abort(BeginError::OrderPaid);
                }
                orders.insert(order.as_bytes(), p.payment_id.as_bytes())?;
            }
            payments.insert(p.payment_id.as_bytes(), record.as_slice())?;
            idem.insert(key.as_slice(), idem_entry.as_slice())?;
            quote_use.insert(p.quote_id.as_bytes(), p.payment_id.as_bytes())?;
            work_tree.insert(p.payment_id.as_bytes(), work.as_slice())?;
            Ok(Begin::Created)
        }))
    }

    fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.payments.get(id.as_bytes())?.map(|v| decode("payments", &v)).transpose()
    }

    fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        Self::scan(&self.payments, "payments")
    }

    fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let Some(v) = self.idem.get(pair_key(partner, request_id))? else { return Ok(None) };
        let e: IdemEntry = decode("idempotency", &v)?;
        self.payment(&e.payment_id)
    }

    fn apply(&self, c: &Change) -> Result<(), StoreError> {
        let _write = self.flusher.write();
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
        // Sequence numbers are taken before the transaction: sled's id generator may have to
        // persist its counter (always so on the first id after a restart), and doing that inside a
        // transaction, which holds sled's global write lock, waits on the flusher forever.
        let journal = match &c.journal {
            Some(j) => Some((self.db.generate_id()?, encode(j))),
            None => None,
        };
        let events = c
            .events
            .iter()
            .map(|e| Ok((self.db.generate_id()?, encode(e))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let work = match &c.work {
            Work::Set(w) => Some(encode(w)),
            Work::Keep | Work::Done => None,
        };
        let refund = c.refund.as_ref().map(|r| {
            let idem = encode(&IdemEntry {
                hash: r.request_hash.clone(),
                payment_id: r.refund_id.clone(),
            });
            (r, encode(r), idem)
        });
        // Only the trees this change touches take part: the refund trees only for a refund.
        let mut trees = vec![
            &self.payments,
            &self.ledger,
            &self.outbox,
            &self.quote_use,
            &self.work,
            &self.orders,
        ];
        if refund.is_some() {
            trees.extend([&self.refunds, &self.refunds_by_payment, &self.refund_idem]);
        }
        unwrap_tx(trees.as_slice().transaction(|t| {
            let [payments, ledger, outbox, quote_use, work_tree, orders, refund_trees @ ..] =
                t.as_slice()
            else {
                unreachable!("at least six trees in, as many out");
            };
            let Some(current) = tx_get::<PaymentRecord>(payments, "payments", id)? else {
                return abort(StoreError::Stale(c.payment.payment_id.clone()));
            };
            if current.rev + 1 != c.payment.rev {
                return abort(StoreError::Stale(c.payment.payment_id.clone()));
            }
            if let (Some((r, bytes, idem)), [refunds, by_payment, refund_idem]) =
                (&refund, refund_trees)
            {
                let key = pair_key(&r.acquirer, &r.acquirer_refund_id);
                if let Some(seen) = tx_get::<IdemEntry>(refund_idem, "refund_idempotency", &key)? {
                    let Some(existing) =
                        tx_get::<RefundRecord>(refunds, "refunds", seen.payment_id.as_bytes())?
                    else {
                        return abort(StoreError::Corrupt {
                            tree: "refund_idempotency",
                            message: format!("points at missing refund {}", seen.payment_id),
                        });
                    };
                    return abort(StoreError::RefundExists(Box::new(existing)));
                }
                refund_idem.insert(key, idem.as_slice())?;
                refunds.insert(r.refund_id.as_bytes(), bytes.as_slice())?;
                by_payment.insert(pair_key(&r.payment_id, &r.refund_id), &[])?;
            }
            payments.insert(id, record.as_slice())?;
            if let Some((seq, j)) = &journal {
                ledger.insert(&seq.to_be_bytes(), j.as_slice())?;
            }
            for (seq, e) in &events {
                outbox.insert(&seq.to_be_bytes(), e.as_slice())?;
            }
            match (&c.work, &work) {
                (Work::Set(_), Some(w)) => {
                    work_tree.insert(id, w.as_slice())?;
                }
                (Work::Done, _) => {
                    work_tree.remove(id)?;
                }
                _ => {}
            }
            if c.release_quote
                && quote_use.get(c.payment.quote_id.as_bytes())?.as_deref() == Some(id)
            {
                quote_use.remove(c.payment.quote_id.as_bytes())?;
            }
            // An order whose payment failed or was cancelled may be paid again.
            if let Some(order) = &c.payment.order {
                let released =
                    matches!(c.payment.state, PaymentState::Failed | PaymentState::Cancelled);
                if released && orders.get(order.as_bytes())?.as_deref() == Some(id) {
                    orders.remove(order.as_bytes())?;
                }
            }
            Ok(())
        }))
    }

    fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        Self::scan(&self.ledger, "ledger")
    }

    fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        self.work.get(payment_id.as_bytes())?.map(|v| decode("resolver", &v)).transpose()
    }

    fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        Self::scan(&self.work, "resolver")
    }

    fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let Some(v) = self.refund_idem.get(pair_key(acquirer, acquirer_refund_id))? else {
            return Ok(None);
        };
        let e: IdemEntry = decode("refund_idempotency", &v)?;
        self.refunds.get(e.payment_id.as_bytes())?.map(|v| decode("refunds", &v)).transpose()
    }

    fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        let prefix = pair_key(payment_id, "");
        let mut out = Vec::new();
        for kv in self.refunds_by_payment.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let refund_id = &k[prefix.len()..];
            if let Some(v) = self.refunds.get(refund_id)? {
                out.push(decode("refunds", &v)?);
            }
        }
        // Bridge refund ids are time-ordered (UUIDv7), so key order is creation order.
        Ok(out)
    }

    fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        Self::scan_seq(&self.outbox, "outbox")
    }

    fn outbox_after(
        &self,
        after: Option<EventSeq>,
        max: usize,
    ) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        Ok(self
            .outbox()?
            .into_iter()
            .filter(|(s, _)| after.is_none_or(|a| *s > a))
            .take(max)
            .collect())
    }

    fn outbox_epoch(&self) -> u64 {
        0
    }

    fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError> {
        let mut n = 0;
        for s in seqs {
            n += usize::from(self.parked.remove(s.to_be_bytes())?.is_some());
        }
        Ok(n)
    }

    fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let mut v: Vec<PaymentRecord> = self
            .payments()?
            .into_iter()
            .filter(|p| p.created_at >= from && p.created_at < to)
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.payment_id).cmp(&(b.created_at, &b.payment_id)));
        Ok(v)
    }

    fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        let mut v: Vec<RefundRecord> = Self::scan::<RefundRecord>(&self.refunds, "refunds")?
            .into_iter()
            .filter(|r| r.created_at >= from && r.created_at < to)
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.refund_id).cmp(&(b.created_at, &b.refund_id)));
        Ok(v)
    }

    fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        Ok(self.journal()?.into_iter().filter(|e| e.payment_id == payment_id).collect())
    }

    fn account_totals(&self) -> Result<BTreeMap<(Currency, String), i128>, StoreError> {
        let mut t = BTreeMap::new();
        for e in self.journal()? {
            for p in e.postings {
                *t.entry((p.currency, p.account)).or_insert(0) += i128::from(p.minor);
            }
        }
        Ok(t)
    }

    fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        self.move_event(&self.outbox, &self.delivered, seq, encode(d))
    }

    fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        Self::scan(&self.delivered, "webhooks_delivered")
    }

    fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError> {
        self.move_event(&self.outbox, &self.parked, seq, encode(parked))
    }

    fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        Self::scan_seq(&self.parked, "webhooks_parked")
    }

    fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let Some((seq, p)) = self.parked()?.into_iter().find(|(_, p)| p.event.event_id == event_id)
        else {
            return Ok(false);
        };
        let event = OutboxEvent { replayed_at: Some(now), ..p.event };
        self.move_event(&self.parked, &self.outbox, seq, encode(&event))?;
        Ok(true)
    }

    fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
    ) -> Result<AuditRecord, StoreError> {
        let _write = self.flusher.write();
        unwrap_tx((&self.settings, &self.audit).transaction(|(set, audit)| {
            let head = tx_get::<AuditHead>(set, "settings", AUDIT_HEAD.as_bytes())?
                .unwrap_or(AuditHead { seq: 0, hash: AUDIT_GENESIS.into() });
            let mut record = AuditRecord {
                v: RECORD_VERSION,
                seq: head.seq + 1,
                at: draft.at,
                actor: draft.actor.clone(),
                action: draft.action.clone(),
                target: draft.target.clone(),
                before: draft.before.clone(),
                after: draft.after.clone(),
                prev_hash: head.hash,
                hash: String::new(),
            };
            record.hash = record.compute_hash();
            audit.insert(&record.seq.to_be_bytes(), encode(&record))?;
            let head = AuditHead { seq: record.seq, hash: record.hash.clone() };
            set.insert(AUDIT_HEAD.as_bytes(), encode(&head))?;
            for (k, v) in settings {
                match v {
                    Some(v) => set.insert(k.as_bytes(), v.as_slice())?,
                    None => set.remove(k.as_bytes())?,
                };
            }
            Ok(record)
        }))
    }

    fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        let records = self
            .audit
            .iter()
            .values()
            .map(|v| decode("audit", &v?))
            .collect::<Result<Vec<AuditRecord>, StoreError>>()?;
        let head = self.settings.get(AUDIT_HEAD)?.map(|v| decode("settings", &v)).transpose()?;
        Ok((records, head))
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.settings
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.flusher.flush())
    }
}
