//! Durable state. [`Store`] is what the engine needs; [`SledStore`] keeps it in sled: one tree
//! of compact binary records under typed key prefixes ([`codec`]), one atomic batch per state
//! change, big-endian sequence keys so scans come out in order. A data folder of the first
//! release (JSON, one tree per purpose) is migrated when it opens.
//!
//! Nothing is "done" before [`Store::flush`] has returned `Ok`: sled's `flush_async` made the
//! state durable. Concurrent requests share one flush ([`GroupCommit`]), so fsync does not
//! serialize the daemon.
//!
//! [`backup`]: a consistent copy of the store while the daemon runs ([`sled_backup`] for sled,
//! one snapshot for PostgreSQL), and restoring one; `qrbridge store …`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use qrbridge_fx::Currency;
use tokio::sync::{mpsc, oneshot};

use crate::model::*;

mod any;
pub mod backup;
pub mod codec;
pub mod postgres;
pub mod retention;
mod sled_backup;
mod sled_store;
mod v1;

pub use backup::{BackupError, Backups, Manifest};
pub use sled_backup::BackupOptions;

pub use any::{migrate_database, AnyStore};
pub use postgres::PgStore;
pub use sled_store::SledStore;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(Arc<sled::Error>),
    /// The database failed the operation (or could not be reached); nothing of it took effect
    /// unless a later read shows it did.
    #[error("database: {0}")]
    Database(Arc<str>),
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
    /// A change decided under a lease ([`Fence`]) was not written: the lease had run out or
    /// another node held it, so what the change was decided from may be out of date.
    #[error("lease {0} no longer held: change not written")]
    LeaseLost(String),
    /// The store will not open as things stand on disk (the message says why, and what to do):
    /// e.g. a sled store missing beside the traces of a restore that did not finish.
    #[error("{0}")]
    Refused(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(Arc::new(e))
    }
}

/// What is waiting: [`Store::backlog`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// The task of each open work item (one per payment the bridge is not done with).
    pub work: Vec<Task>,
    /// Events not delivered yet.
    pub outbox: u64,
    /// Events parked.
    pub parked: u64,
}

/// The longest a database may spend on [`Store::backlog`]'s statement.
pub const BACKLOG_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A lease a change was decided under, and its holder ([`Store::admin_commit`]). A store of one
/// process grants every lease at once (there is no other node to fence out); PostgreSQL checks
/// the lease in the change's own transaction and keeps it from being taken until the commit.
#[derive(Clone, Copy, Debug)]
pub struct Fence<'a> {
    pub lease: &'a str,
    pub holder: &'a str,
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
    /// Stops the process when the change's journal entry does not balance: a bug, and booking
    /// wrong money is worse than stopping. Every store calls it before it writes a change.
    pub fn assert_balanced(&self) {
        if let Some(j) = &self.journal {
            assert!(
                j.is_balanced(),
                "unbalanced journal entry for {}: {:?}",
                j.payment_id,
                j.sums()
            );
        }
    }

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

/// A page of the outbox ([`Store::outbox_after`]).
#[derive(Debug, Clone, Default)]
pub struct OutboxPage {
    pub events: Vec<(EventSeq, OutboxEvent)>,
    /// Where the next read starts: pass it back as `after`.
    pub cursor: Option<u64>,
    /// Whether more may be there right now (the page was cut at its maximum).
    pub more: bool,
}

/// What the engine needs from storage.
pub trait Store: Send + Sync + 'static {
    fn put_quote(&self, q: &QuoteRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn quote(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<QuoteRecord>, StoreError>> + Send;
    /// Removes quotes that expired before `expired_before` and that no payment used, looking at
    /// most at `max` quotes in id (creation) order after `after`; used quotes stay (their
    /// payments price refunds from them). Stops at the first quote not expired by then, so a
    /// sweep costs what it looks at, not the history.
    fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> impl Future<Output = Result<Purge, StoreError>> + Send;
    /// Starts `p` with its first resolver `work`, unless the partner's request id, or the quote,
    /// says otherwise — atomically.
    fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send;
    fn payment(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<PaymentRecord>, StoreError>> + Send;
    /// Every payment, oldest first (ids are time-ordered).
    fn payments(&self) -> impl Future<Output = Result<Vec<PaymentRecord>, StoreError>> + Send;
    fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<PaymentRecord>, StoreError>> + Send;
    /// [`Store::payment_by_request`], once no other node is writing that request's payment at
    /// this moment: read before refusing a request, so that a refusal is not answered beside a
    /// payment of the same request whose write was under way. A copy of the request still
    /// before its write on another node (between its own lookup and its insert: milliseconds,
    /// unless that node stalls there) is not seen, and decides on what it read and its own
    /// clock. A store of one process reads at once (the engine's in-process claim keeps one copy
    /// of a request at a time).
    fn request_settled(
        &self,
        partner: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<PaymentRecord>, StoreError>> + Send {
        self.payment_by_request(partner, request_id)
    }
    /// Applies `change`; a refund in it is refused with [`StoreError::RefundExists`] when the
    /// acquirer's refund id is already taken.
    fn apply(&self, change: &Change) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every journal entry, in order.
    fn journal(&self) -> impl Future<Output = Result<Vec<JournalEntry>, StoreError>> + Send;
    /// The resolver's work for one payment.
    fn work_item(
        &self,
        payment_id: &str,
    ) -> impl Future<Output = Result<Option<WorkItem>, StoreError>> + Send;
    /// All resolver work: every payment not final yet, every reversal not confirmed.
    fn open_work(&self) -> impl Future<Output = Result<Vec<WorkItem>, StoreError>> + Send;
    /// A refund by the acquirer's own id.
    fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> impl Future<Output = Result<Option<RefundRecord>, StoreError>> + Send;
    /// A payment's refunds, oldest first.
    fn refunds_of(
        &self,
        payment_id: &str,
    ) -> impl Future<Output = Result<Vec<RefundRecord>, StoreError>> + Send;
    /// Events not delivered yet, in the order they were written.
    fn outbox(
        &self,
    ) -> impl Future<Output = Result<Vec<(EventSeq, OutboxEvent)>, StoreError>> + Send;
    /// Undelivered events after the cursor `after` (`None`: from the start), about `max` of them,
    /// each payment's in sequence order. The cursor follows commit order: an event committed
    /// after this returns comes after the cursor it returned, so a reader that keeps the cursor
    /// misses nothing — except events an operator put back ([`Store::unpark`]), which change
    /// [`Store::outbox_epoch`].
    fn outbox_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> impl Future<Output = Result<OutboxPage, StoreError>> + Send;
    /// Changes whenever the outbox changes behind a cursor — an event put back below the
    /// sequence (a replay), parked events purged (their payments' later events may go): a reader
    /// that keeps a cursor then reads the whole outbox and parked list again.
    fn outbox_epoch(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Removes the parked events at `seqs` (those still parked); returns how many it removed.
    fn purge_parked(
        &self,
        seqs: &[EventSeq],
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
    /// Payments created in `[from, to)`, oldest first: read from an index by creation time, so
    /// the cost is that window's, not the history's.
    fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<PaymentRecord>, StoreError>> + Send;
    /// Refunds created in `[from, to)`, oldest first (an index, as for payments).
    fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<RefundRecord>, StoreError>> + Send;
    /// One payment's journal entries, in order.
    fn journal_of(
        &self,
        payment_id: &str,
    ) -> impl Future<Output = Result<Vec<JournalEntry>, StoreError>> + Send;
    /// The sum of every posting per currency and account, kept as running totals as entries are
    /// written (no scan of the journal).
    fn account_totals(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<(Currency, String), i128>, StoreError>> + Send;
    /// Keeps a risk decision (a refusal, or flags on a payment let through). Not flushed on its
    /// own: the next flush carries it (a decision lost in a crash is a log line lost, never
    /// money).
    fn put_risk_decision(
        &self,
        d: &RiskDecisionRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Risk decisions made in `[from, to)`, oldest first, at most `max` (an index by time).
    fn risk_decisions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RiskDecisionRecord>, StoreError>> + Send;
    /// Moves an event from the outbox to the delivered log.
    fn delivered(
        &self,
        seq: EventSeq,
        d: &DeliveredEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every delivered event, in order: its header (id, kind, partner, payment, times) and how it
    /// went; the body (`data`) is not kept once delivered (it reads as `null`).
    fn delivered_events(
        &self,
    ) -> impl Future<Output = Result<Vec<DeliveredEvent>, StoreError>> + Send;
    /// Moves an event from the outbox to the parked list.
    fn park(
        &self,
        seq: EventSeq,
        parked: &ParkedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every parked event, in order.
    fn parked(
        &self,
    ) -> impl Future<Output = Result<Vec<(EventSeq, ParkedEvent)>, StoreError>> + Send;
    /// What is waiting, counted for the metrics: each open work item's task, the events in the
    /// outbox and those parked. PostgreSQL counts in the database, in one statement bounded
    /// there ([`BACKLOG_READ_LIMIT`], half the metrics' own bound on the whole call), so a slow
    /// count ends on the server and does not hold a pooled connection for the payments behind
    /// it; the embedded store reads its own tree.
    fn backlog(&self) -> impl Future<Output = Result<Backlog, StoreError>> + Send {
        async {
            Ok(Backlog {
                work: self.open_work().await?.into_iter().map(|w| w.task).collect(),
                outbox: self.outbox().await?.len() as u64,
                parked: self.parked().await?.len() as u64,
            })
        }
    }
    /// Puts a parked event back in the outbox at its old place, its maximum age counting from
    /// `now`; false when no such event is parked.
    fn unpark(
        &self,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Makes everything written so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records an admin change at the end of the audit chain and, in the same transaction,
    /// writes `settings` (a `None` value removes the key). Returns the record written. With a
    /// `fence`, only while its holder still holds its lease ([`StoreError::LeaseLost`] else, and
    /// nothing written): a change read, decided and written under a lease is never written after
    /// another node has taken the lease and may have read the same state.
    fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
        fence: Option<Fence<'_>>,
    ) -> impl Future<Output = Result<AuditRecord, StoreError>> + Send;
    /// The audit log in order, and the chain head the store keeps.
    fn audit_log(
        &self,
    ) -> impl Future<Output = Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError>> + Send;
    /// Every setting whose key starts with `prefix`, in key order.
    fn settings(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;

    /// The audit chain's head: it changes with every admin change, so a node that keeps settings
    /// in memory reads them again when it moves (another node changed them).
    fn audit_head(&self) -> impl Future<Output = Result<Option<AuditHead>, StoreError>> + Send {
        async move { Ok(self.audit_log().await?.1) }
    }

    /// A mark a worker keeps in the store (where its sweep stopped), `None` if never set. Marks
    /// are progress, not state: one lost (a crash before the next flush) only makes the worker
    /// do again what it had done. Backups copy them with the records they describe.
    fn mark(&self, name: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Sets mark `name` to `value`; durable with the next flush, not waited for.
    fn set_mark(
        &self,
        name: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether other processes may use this store at the same time (a database several daemons
    /// share), so that work done once is led by one node ([`Store::lease`]) and what others
    /// change is polled for.
    fn shared(&self) -> bool {
        false
    }

    /// Takes, or renews, the lease `name` for `holder` for `ttl` (by the store's clock); true
    /// when `holder` holds it now. A store one process owns grants every lease.
    fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (name, holder, ttl);
        async { Ok(true) }
    }

    /// Extends the lease `name` by `ttl` from now, only while `holder` still holds it and it has
    /// not run out: false otherwise. Never takes it again (as [`Store::lease`] would): a holder
    /// that lost it, even for a moment, may have been followed by another node that read and
    /// wrote what the lease guards, and must find out. On a store of one process, always true.
    fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (name, holder, ttl);
        async { Ok(true) }
    }

    /// Gives the lease `name` up, if `holder` holds it, so another node takes it at once.
    fn release_lease(
        &self,
        name: &str,
        holder: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (name, holder);
        async { Ok(()) }
    }

    /// Copies the store, as it stood at one instant, into the folder `dir` (absolute; new, or
    /// empty), while it keeps serving; the manifest is written last. Blocks the thread it runs on
    /// for as long as the copy takes (the sled store's copy is synchronous): call it off the
    /// async runtime's threads. A store that cannot do it answers [`BackupError::Unsupported`].
    fn backup(
        &self,
        dir: &std::path::Path,
        clock: &dyn crate::clock::Clock,
    ) -> impl Future<Output = Result<Manifest, BackupError>> + Send {
        let _ = (dir, clock);
        async { Err(BackupError::Unsupported("this store has no backup of its own".into())) }
    }

    /// The backups asked for through the admin API (one at a time, and how the last went), for
    /// a store that can make them.
    fn backups(&self) -> Option<&Backups> {
        None
    }

    /// Per-currency sums of the whole journal: all zero when the ledger balances.
    fn ledger_sums(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<Currency, i128>, StoreError>> + Send {
        async move {
            let mut sums = BTreeMap::new();
            for e in self.journal().await? {
                for (c, s) in e.sums() {
                    *sums.entry(c).or_insert(0) += s;
                }
            }
            Ok(sums)
        }
    }
}

/// How long each flush took (sled: `flush_async` and the disk syncs after it; PostgreSQL: the
/// `COMMIT` of a transaction that waits for its WAL), by store.
pub const FLUSH_DURATION: &str = "qrbridge_store_flush_duration_seconds";
/// How many writes each flush made durable (sled: the writes begun since the previous flush
/// began; PostgreSQL: 1, a commit covers its own transaction), by store.
pub const FLUSH_WRITES: &str = "qrbridge_store_flush_writes";

/// Describes the store's metrics to the process's recorder (installed before a daemon opens its
/// store: see `ops::handle`); called at every open, which is harmless.
pub(crate) fn describe_metrics() {
    use metrics::{describe_histogram, Unit};
    describe_histogram!(
        FLUSH_DURATION,
        Unit::Seconds,
        "Store flushes (fsync, or a synchronous commit)"
    );
    describe_histogram!(FLUSH_WRITES, Unit::Count, "Writes each store flush made durable");
}

/// Records one flush of `store` that took `took` and covered `writes` writes.
pub(crate) fn flushed(store: &'static str, took: std::time::Duration, writes: u64) {
    metrics::histogram!(FLUSH_DURATION, "store" => store).record(took);
    metrics::histogram!(FLUSH_WRITES, "store" => store)
        .record(u32::try_from(writes).unwrap_or(u32::MAX));
}

/// One flush shared by every write waiting when it starts, and none when an earlier flush already
/// covered everything written.
///
/// Writes are counted as they begin and as they end ([`GroupCommit::write`]). A flush that starts
/// when every write begun so far has also ended covers them all, and records that count once it
/// succeeds. So a caller that has read something — its own write or another's — and then calls
/// [`GroupCommit::flush`] skips the flush only when a successful flush started after every write
/// begun before the call had ended: nothing it read can be taken back by a crash.
///
/// Under load a flush may also wait for more writes to share it ([`GroupCommit::set_wait`],
/// `storage.flush_every_ms`): when the flush before it was shared by several requests and ended
/// less than the wait ago, the next starts no sooner than the wait after it. A request alone (one
/// client paying in turn, a quiet moment) is flushed at once, and so is one whose write an earlier
/// flush already covered. Off by default: on the machine of BENCHMARKS.md fewer flushes did not
/// measurably lower the CPU per transaction.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), StoreError>>>,
    marks: Arc<Marks>,
    /// The flusher task (it holds the store open): ends once every sender is gone.
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

#[derive(Default)]
struct Marks {
    /// Writes begun.
    begun: std::sync::atomic::AtomicU64,
    /// Writes ended (made, or failed).
    ended: std::sync::atomic::AtomicU64,
    /// Every write up to this count is durable.
    durable: std::sync::atomic::AtomicU64,
    /// Flushes made (each covering at least one write).
    flushes: std::sync::atomic::AtomicU64,
    /// Under load, the least time from one flush to the next, in microseconds (0: none; see
    /// [`GroupCommit`]).
    wait_us: std::sync::atomic::AtomicU64,
}

/// A write under way; dropping it marks it ended.
pub struct WriteMark(Arc<Marks>);

impl Drop for WriteMark {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What makes sled's flushed writes survive the machine, not only the process: sled writes its
/// log with `sync_file_range`, which neither empties the disk's write cache nor records a file's
/// new length, and writes a record too large for its log (over ≈128 KiB: rare here) as a file of
/// its own under `blobs/` with no sync at all. After each flush: every blob file there is (a file
/// still being written when one round lists it is synced whole by the next round, which the
/// flush covering that write waits for), the blob folder, then `fdatasync` of the log.
///
/// A failed sync is final: Linux reports a lost write-back once per file, so a later sync that
/// succeeds proves nothing about what the failed one covered. The process stops at once (exit
/// code 70), as PostgreSQL does on a failed fsync, for its supervisor to restart it on what the
/// disk really holds; nothing after the failure is answered as done.
pub struct DiskSync {
    log: std::fs::File,
    blobs: std::path::PathBuf,
}

impl DiskSync {
    /// For the sled folder at `path`; syncs what is there now (the folder itself included).
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let d = DiskSync { log: std::fs::File::open(path.join("db"))?, blobs: path.join("blobs") };
        d.sync_once()?;
        std::fs::File::open(path)?.sync_all()?;
        Ok(d)
    }

    /// Syncs the blob files, the blob folder and the log; stops the process when that fails.
    pub fn sync(&self) {
        if let Err(e) = self.sync_once() {
            tracing::error!(error = %e, "syncing the store failed: what it covered may be lost; stopping so that a restart recovers from what the disk holds");
            std::process::exit(70);
        }
    }

    fn sync_once(&self) -> std::io::Result<()> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        match std::fs::read_dir(&self.blobs) {
            Ok(entries) => {
                let mut any = false;
                for e in entries {
                    let e = e?;
                    if e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()).is_none() {
                        continue;
                    }
                    // sled removes blobs it no longer needs while we list them: gone is fine.
                    match std::fs::File::open(e.path()).and_then(|f| f.sync_data()) {
                        Ok(()) => any = true,
                        Err(e) if gone(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                if any {
                    std::fs::File::open(&self.blobs)?.sync_all()?;
                }
            }
            Err(e) if gone(&e) => {}
            Err(e) => return Err(e),
        }
        self.log.sync_data()
    }
}

impl GroupCommit {
    /// Starts the flusher task for `db`; after every flush it syncs `disk`.
    pub fn start(db: sled::Db, disk: DiskSync) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let disk = Arc::new(disk);
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), StoreError>>>();
        let marks = Arc::new(Marks::default());
        let m = marks.clone();
        let task = tokio::spawn(async move {
            // Writes begun when the last flush that ran began: the next one covers those after.
            let mut covered = 0u64;
            // When the last flush that ran ended, if several requests shared it.
            let mut last_shared_end: Option<tokio::time::Instant> = None;
            while let Some(first) = rx.recv().await {
                // Under load (the last flush was shared and ended less than the wait ago), the
                // next starts no sooner than the wait after it, for more writes to share it. A
                // request alone, or one whose write is already durable, goes at once.
                let wait = std::time::Duration::from_micros(m.wait_us.load(SeqCst));
                let durable_now = m.durable.load(SeqCst) >= m.begun.load(SeqCst);
                let under_load = |end: &tokio::time::Instant| end.elapsed() < wait;
                if let Some(end) = last_shared_end.filter(under_load).filter(|_| !durable_now) {
                    tokio::time::sleep_until(end + wait).await;
                }
                // Once round the runtime's queue first: requests already woken write and ask
                // too, and this flush covers them (fewer flushes, each for more writes).
                tokio::task::yield_now().await;
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
                    let started = tokio::time::Instant::now();
                    // sled's flush and the syncs after it in one blocking task: one hand-over
                    // between threads per flush, not two.
                    let (db, d) = (db.clone(), disk.clone());
                    let joined = tokio::task::spawn_blocking(move || {
                        db.flush()?;
                        d.sync();
                        Ok::<_, sled::Error>(())
                    })
                    .await;
                    // Only a task that did not run (the runtime stopping) fails to join.
                    let outcome = match joined {
                        Ok(r) => r.map_err(StoreError::from),
                        Err(e) => Err(StoreError::from(sled::Error::Io(std::io::Error::other(e)))),
                    };
                    if outcome.is_ok() {
                        flushed("sled", started.elapsed(), begun.saturating_sub(covered));
                        m.flushes.fetch_add(1, SeqCst);
                        covered = begun;
                    }
                    last_shared_end = (waiting.len() > 1).then(tokio::time::Instant::now);
                    outcome
                };
                if result.is_ok() && ended == begun {
                    m.durable.fetch_max(begun, SeqCst);
                }
                for w in waiting {
                    let _ = w.send(result.clone());
                }
            }
        });
        GroupCommit { tx, marks, task: Arc::new(std::sync::Mutex::new(Some(task))) }
    }

    /// Under load, the least time from one flush to the next (see [`GroupCommit`]); zero: none.
    /// At most a second (as `storage.flush_every_ms`); the runtime's timer rounds it up to a
    /// millisecond.
    pub fn set_wait(&self, wait: std::time::Duration) {
        let wait = wait.min(std::time::Duration::from_secs(1));
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.marks.wait_us.store(us, std::sync::atomic::Ordering::SeqCst);
    }

    /// Flushes made so far.
    pub fn flushes(&self) -> u64 {
        self.marks.flushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the flusher and waits until it has let the store go (with this, the last sender).
    pub async fn close(self) {
        let task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        drop(self);
        if let Some(t) = task {
            let _ = t.await;
        }
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
