//! The sled store: one tree of records under typed key prefixes ([`key`]), compact binary values
//! ([`super::codec`]), a state change written key by key behind an intent record that makes it
//! atomic ([`SledStore::write`]) — no sled batches or multi-tree transactions on the payment path.
//!
//! What sled's transactions gave, locks in this process give instead (sled is one process's
//! store, so they are enough):
//! - a payment's changes are serialised by a lock striped by payment id, under which the stored
//!   revision is checked;
//! - single-use claims (the partner's request id, the quote, the order, the acquirer's refund id)
//!   are checked and written under one claims lock;
//! - journal entries and webhook events take their sequence numbers and are written under one
//!   sequencer lock, so the sequence is the commit order (a reader keeping a cursor misses
//!   nothing), and the running account totals change in the same atomic write as the entry.
//!
//! Locks are taken in that order (stripe, claims, sequencer) and never across an await.
//!
//! Every write reaches sled through one of four functions — [`SledStore::write`] (atomic, several keys),
//! [`SledStore::put`], [`SledStore::del`] and the admin transaction in
//! [`SledStore::admin_commit`] — and each passes the backup's [`Tap`]: so a backup taken while
//! the daemon runs sees every write (see [`super::sled_backup`]). A new way of writing must go
//! through the tap too. (Writes at open — the first release's migration, work left by a crash —
//! come before any backup can start.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use qrbridge_fx::Currency;
use serde::de::DeserializeOwned;
use sled::transaction::TransactionError;
use sled::Transactional;

use super::codec::{decode, encode};
use super::sled_backup::{Tap, TreeId, Written};
use super::*;

/// Keys: one prefix byte per kind of record, then the record's id. Ids never hold a zero byte,
/// so a zero byte separates the parts of a compound key.
pub(super) mod key {
    use chrono::{DateTime, Utc};
    use qrbridge_fx::Currency;

    pub const QUOTE: u8 = b'q';
    pub const PAYMENT: u8 = b'p';
    /// Partner and request id → [`super::IdemEntry`].
    pub const REQUEST: u8 = b'i';
    /// Quote id → the payment holding it.
    pub const QUOTE_USE: u8 = b'u';
    /// Order key → the payment holding it.
    pub const ORDER: u8 = b'o';
    pub const WORK: u8 = b'w';
    /// Payment id, sequence → journal entry.
    pub const JOURNAL: u8 = b'j';
    /// Creation time, payment id → nothing: payments by the time they were made.
    pub const MADE: u8 = b'c';
    /// Creation time, refund id → nothing.
    pub const REFUND_MADE: u8 = b'C';
    /// Sequence → the event, waiting to be delivered.
    pub const OUTBOX: u8 = b'e';
    /// Sequence → the delivered event's header (no body) and how it went.
    pub const DELIVERED: u8 = b'D';
    /// Sequence → the parked event, whole.
    pub const PARKED: u8 = b'P';
    /// A parked event's id → its sequence (8 bytes, big-endian): a replay finds it at once.
    pub const PARKED_ID: u8 = b'x';
    pub const REFUND: u8 = b'r';
    /// Payment id, refund id → nothing.
    pub const REFUND_OF: u8 = b'R';
    /// Acquirer and its refund id → [`super::IdemEntry`] naming the refund.
    pub const ACQUIRER_REFUND: u8 = b'a';
    /// Currency → the running sum of the postings of each of its accounts
    /// ([`super::encode_totals`]): one key per currency, so an entry rewrites two keys (its
    /// wallet currency and CNY), not one per account.
    pub const TOTAL: u8 = b't';
    /// Time, decision id → a risk decision ([`crate::model::RiskDecisionRecord`]).
    pub const RISK: u8 = b'k';
    /// Number → a multi-key write under way: every key it writes, with its new value or its
    /// removal ([`super::Intent`]). Present only between the write's first and last step, or
    /// after a crash between them (then finished at open).
    pub const INTENT: u8 = b'n';
    // `m`: the store's own marks (see `v1::MIGRATED` and [`mark`]).

    pub fn of(prefix: u8, id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + id.len());
        k.push(prefix);
        k.extend_from_slice(id.as_bytes());
        k
    }

    pub fn pair(prefix: u8, a: &str, b: &str) -> Vec<u8> {
        let mut k = of(prefix, a);
        k.push(0);
        k.extend_from_slice(b.as_bytes());
        k
    }

    pub fn seq(prefix: u8, seq: u64) -> [u8; 9] {
        let mut k = [prefix; 9];
        k[1..].copy_from_slice(&seq.to_be_bytes());
        k
    }

    /// The sequence in a [`seq`] key.
    pub fn seq_of(k: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
    }

    pub fn journal(payment_id: &str, seq: u64) -> Vec<u8> {
        let mut k = pair(JOURNAL, payment_id, "");
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// A time as 8 bytes that sort as the times do.
    fn time(at: DateTime<Utc>) -> [u8; 8] {
        ((at.timestamp_micros() as u64) ^ (1 << 63)).to_be_bytes()
    }

    /// The first key of `prefix` at or after `at`.
    pub fn made_from(prefix: u8, at: DateTime<Utc>) -> Vec<u8> {
        let mut k = vec![prefix];
        k.extend_from_slice(&time(at));
        k
    }

    pub fn made(prefix: u8, at: DateTime<Utc>, id: &str) -> Vec<u8> {
        let mut k = made_from(prefix, at);
        k.extend_from_slice(id.as_bytes());
        k
    }

    /// A worker's mark ([`crate::store::Store::mark`]), among the store's own marks.
    pub fn mark(name: &str) -> Vec<u8> {
        let mut k = b"m/mark/".to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    }

    pub fn total(currency: Currency) -> Vec<u8> {
        let mut k = vec![TOTAL];
        k.extend_from_slice(currency.code().as_bytes());
        k
    }
}

/// A claim by a partner's request id (or an acquirer's refund id): the content's hash, and the
/// payment (or refund) it made.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct IdemEntry {
    pub hash: String,
    pub payment_id: String,
}

/// Locks serialising one payment's changes.
const STRIPES: usize = 64;

/// The settings key of the audit chain's head.
const AUDIT_HEAD: &str = "audit/head";

/// Running totals per currency and account.
type Totals = BTreeMap<(Currency, String), i128>;

/// The totals record of `currency`: each of its accounts with its sum, from `totals` (a later
/// entry for an account wins over an earlier one).
pub(super) fn encode_totals<'a>(
    currency: Currency,
    totals: impl Iterator<Item = (&'a (Currency, String), &'a i128)>,
) -> Vec<u8> {
    let accounts: BTreeMap<&str, i128> =
        totals.filter(|((c, _), _)| *c == currency).map(|((_, a), s)| (a.as_str(), *s)).collect();
    encode(&accounts.into_iter().collect::<Vec<_>>())
}

/// A multi-key write as its intent record holds it: each key with its new value, or `None` for
/// its removal, in the order they are applied.
type Intent = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// One step of a write: `k` set to `v`, or removed when `v` is `None`.
fn set(
    t: &sled::Tree,
    k: impl AsRef<[u8]>,
    v: Option<impl Into<sled::IVec>>,
) -> Result<(), sled::Error> {
    match v {
        Some(v) => t.insert(k, v).map(drop),
        None => t.remove(k).map(drop),
    }
}

/// The sled store.
pub struct SledStore {
    pub(super) db: sled::Db,
    /// Every record but the admin's (see [`key`]).
    pub(super) t: sled::Tree,
    /// Admin settings (spreads, rates set by hand) and the audit chain's head.
    pub(super) settings: sled::Tree,
    pub(super) audit: sled::Tree,
    /// What every write passes, so that a backup sees it ([`super::sled_backup`]).
    pub(super) tap: Tap,
    /// Backups asked for through the admin API: one at a time, and how the last one went.
    pub(super) backups: super::backup::Backups,
    /// How its backups run (the memory the writes made during one may take).
    pub(super) backup_options: super::sled_backup::BackupOptions,
    flusher: GroupCommit,
    stripes: Vec<Mutex<()>>,
    claims: Mutex<()>,
    /// The sequencer: held while sequence numbers are taken and their records written.
    totals: Mutex<Totals>,
    /// Bumped when an event goes back into the outbox below the sequence.
    epoch: AtomicU64,
    /// Serialises what moves events in and out of the parked list, so a listing never meets a
    /// half-purged event and a replay never races a purge.
    parking: Mutex<()>,
    /// The store's folder.
    path: std::path::PathBuf,
    /// Numbers the intents of multi-key writes (see [`SledStore::write`]); every intent left by
    /// an earlier run is finished and removed at open, so counting from zero never meets one.
    intents: AtomicU64,
    ops: Ops,
}

/// sled operations made by the store since it opened (for benchmarks and diagnostics).
#[derive(Debug, Default)]
pub struct Ops {
    /// Point reads.
    pub reads: AtomicU64,
    /// Atomic multi-key writes (each behind an intent record: see [`SledStore::write`]).
    pub batches: AtomicU64,
    /// Keys written or removed, one at a time (intent records included).
    pub keys: AtomicU64,
}

/// What one atomic write writes, in order: each key's new value, or its removal. Kept as a list
/// (not a `sled::Batch`, which does not show its contents) so that the backup's tap can log it.
#[derive(Default)]
struct Batch {
    ops: Vec<(sled::IVec, Option<sled::IVec>)>,
}

impl Batch {
    fn insert(&mut self, k: impl Into<sled::IVec>, v: impl Into<sled::IVec>) {
        self.ops.push((k.into(), Some(v.into())));
    }

    fn remove(&mut self, k: impl Into<sled::IVec>) {
        self.ops.push((k.into(), None));
    }
}

/// Stops the process when dropped by a panic's unwinding: held across the steps of a multi-key
/// write that must not be left half done while the process goes on (see [`SledStore::write`]).
/// Forgotten once they are all done.
struct StopOnUnwind;

impl Drop for StopOnUnwind {
    fn drop(&mut self) {
        tracing::error!("a write panicked halfway: stopping so that the next open finishes it");
        std::process::abort();
    }
}

/// Locks `m`; a lock poisoned by a panic elsewhere still guards nothing but `()` or totals
/// that were only replaced after their write succeeded (a panic inside a multi-key write stops
/// the process: [`StopOnUnwind`]), so it is taken as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn corrupt(tree: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt { tree, message: message.into() }
}

/// Finishes every multi-key write a crash cut short (see [`SledStore::write`]): writes each key
/// its intent holds, then removes the intent. Writing a key again with the value it already has
/// changes nothing, so a crash in here is finished by the next open in turn. How many there were.
fn finish_intents(t: &sled::Tree) -> Result<usize, StoreError> {
    let mut finished = 0;
    for kv in t.scan_prefix([key::INTENT]) {
        let (k, v) = kv?;
        for (key, value) in decode::<Intent>("intents", &v)? {
            // An event the webhook worker delivered or parked before the crash stays out of
            // the outbox (see `SledStore::write`).
            let event = match (&value, key.first()) {
                (Some(_), Some(&key::OUTBOX)) => key::seq_of(&key),
                _ => None,
            };
            if let Some(seq) = event {
                let gone = t.contains_key(key::seq(key::DELIVERED, seq))?
                    || t.contains_key(key::seq(key::PARKED, seq))?;
                if gone {
                    continue;
                }
            }
            set(t, key, value)?;
        }
        t.remove(k)?;
        finished += 1;
    }
    Ok(finished)
}

impl SledStore {
    /// Opens (or creates) the store at `path` with a page cache of `cache_bytes`, migrating a
    /// data folder of the first release on the way. Must be called inside a tokio runtime (the
    /// group-commit flusher is a task).
    ///
    /// Refuses a missing store beside the traces of a restore that did not finish, rather than
    /// start an empty one there (see [`super::backup::refuse_after_interrupted_restore`]).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        super::backup::refuse_after_interrupted_restore(path)?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly before answering; sled's timer flush would only add fsyncs.
            .flush_every_ms(None)
            .open()?;
        let t = db.open_tree("records")?;
        if let Some(m) = super::v1::migrate(&db, path, &t)? {
            tracing::info!(
                records = m.records,
                payments = m.payments,
                "data folder of the first release migrated"
            );
        }
        // Multi-key writes a crash cut short are finished before anything reads the records.
        let finished = finish_intents(&t)?;
        if finished > 0 {
            tracing::warn!(writes = finished, "multi-key writes cut short by a crash finished");
        }
        let mut totals = Totals::new();
        for kv in t.scan_prefix([key::TOTAL]) {
            let (k, v) = kv?;
            let code = k.get(1..).and_then(|c| std::str::from_utf8(c).ok());
            let currency = code
                .and_then(|c| Currency::from_code(c).ok())
                .ok_or_else(|| corrupt("totals", "a total under no currency"))?;
            for (account, sum) in decode::<Vec<(String, i128)>>("totals", &v)? {
                totals.insert((currency, account), sum);
            }
        }
        // Resolver work left without its payment by a crash inside a begin: nothing to resolve.
        for kv in t.scan_prefix([key::WORK]) {
            let (k, _) = kv?;
            if t.get(key::of(key::PAYMENT, &String::from_utf8_lossy(&k[1..])))?.is_none() {
                t.remove(&k)?;
            }
        }
        // What the migration and the clean-up above wrote, and what this open recovered, is
        // made durable before anything is served from it; then every flush is synced the same
        // way (see `DiskSync`).
        db.flush()?;
        let disk = DiskSync::open(path).map_err(sled::Error::Io)?;
        super::describe_metrics();
        let backups = super::backup::Backups::default();
        // A backup inside the store's own folder would be copied into the next one, and moved
        // aside with it by a restore.
        backups.keep_out([path.to_owned()]);
        Ok(SledStore {
            settings: db.open_tree("settings")?,
            audit: db.open_tree("audit")?,
            tap: Tap::default(),
            backups,
            backup_options: super::sled_backup::BackupOptions::default(),
            flusher: GroupCommit::start(db.clone(), disk),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            claims: Mutex::new(()),
            totals: Mutex::new(totals),
            epoch: AtomicU64::new(0),
            parking: Mutex::new(()),
            intents: AtomicU64::new(0),
            path: path.to_owned(),
            ops: Ops::default(),
            t,
            db,
        })
    }

    /// Closes the store: returns once sled's files are let go (its lock with them), so another
    /// process — or this one — may open it at once.
    pub async fn close(self) {
        let SledStore { flusher, db, t, settings, audit, path, .. } = self;
        drop((db, t, settings, audit));
        flusher.close().await;
        // sled's I/O threads may hold its log a moment after the last handle went (a log write
        // that made a flush stable finishes after it): wait, at most a second, until its lock
        // is free.
        let log = path.join("db");
        for _ in 0..1000 {
            let held = std::fs::File::open(&log)
                .and_then(|f| fs2::FileExt::try_lock_exclusive(&f))
                .is_err_and(|e| e.kind() == fs2::lock_contended_error().kind());
            if !held {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tracing::warn!(path = %path.display(), "sled still holds the store's lock a second after it was closed: opening it again now fails");
    }

    /// The store with its backups' log of writes bounded at `bytes` of memory
    /// (`storage.backup_log_bytes_max`; see [`super::sled_backup`]).
    pub fn with_backup_log_bytes_max(mut self, bytes: u64) -> Self {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.backup_options = self.backup_options.log_bytes_max(bytes);
        self
    }

    /// The store with, under load, at least `wait` from one flush to the next, so that more
    /// writes share each (`storage.flush_every_ms`; see [`GroupCommit`]).
    pub fn with_flush_wait(self, wait: std::time::Duration) -> Self {
        self.flusher.set_wait(wait);
        self
    }

    /// Flushes made since the store was opened.
    pub fn flushes(&self) -> u64 {
        self.flusher.flushes()
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// What the store has done since it opened: (point reads, atomic multi-key writes, keys written).
    pub fn ops(&self) -> (u64, u64, u64) {
        let o = &self.ops;
        (
            o.reads.load(Ordering::Relaxed),
            o.batches.load(Ordering::Relaxed),
            o.keys.load(Ordering::Relaxed),
        )
    }

    /// The live records by kind (their key's prefix byte): how many, and their key and value
    /// bytes. A full scan — for the bench and for inspecting a data folder, not for a request.
    pub fn footprint(&self) -> Result<BTreeMap<char, (u64, u64, u64)>, StoreError> {
        let mut kinds: BTreeMap<char, (u64, u64, u64)> = BTreeMap::new();
        for kv in self.t.iter() {
            let (k, v) = kv?;
            let kind = kinds.entry(char::from(k.first().copied().unwrap_or(b'?'))).or_default();
            kind.0 += 1;
            kind.1 += k.len() as u64;
            kind.2 += v.len() as u64;
        }
        Ok(kinds)
    }

    fn read(&self, k: impl AsRef<[u8]>) -> Result<Option<sled::IVec>, StoreError> {
        self.ops.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.t.get(k)?)
    }

    /// Writes `b` atomically: all of it survives a crash, or none of it.
    ///
    /// Not as a sled batch: sled seals and writes its log buffer (a `pwrite` and a
    /// `sync_file_range` on its I/O threads) for every batch, which cost more than everything
    /// else a payment does. Instead, key by key in sled's log order, which a crash cuts to a
    /// prefix: first an intent record holding every key and value of the write, then the keys,
    /// then the intent's removal. A crash before the intent is durable keeps none of the keys
    /// (they come after it in the log); one after it keeps the intent, and the next open
    /// ([`finish_intents`]) writes all its keys before anything is read. The caller holds the
    /// locks that own those keys (the payment's stripe, the claims, the sequencer) across the
    /// whole write, so no other write of them comes between the intent and its removal, and
    /// finishing an intent at open does not overwrite a later value. One exception: the webhook
    /// worker may deliver (or park) a new event and remove it from the outbox before the
    /// intent that wrote it is removed; finishing that intent skips an event already delivered
    /// or parked.
    fn write(&self, b: Batch) -> Result<(), StoreError> {
        if let [(k, v)] = b.ops.as_slice() {
            return match v {
                Some(v) => self.put(k, v.clone()),
                None => self.del(k),
            };
        }
        if b.ops.is_empty() {
            return Ok(());
        }
        self.ops.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.keys.fetch_add(b.ops.len() as u64 + 2, Ordering::Relaxed);
        let n = self.intents.fetch_add(1, Ordering::Relaxed);
        let intent_key = key::seq(key::INTENT, n);
        // Encoded from the write's own bytes: a list of byte slices is an `Intent` on the wire.
        let intent: Vec<(&[u8], Option<&[u8]>)> =
            b.ops.iter().map(|(k, v)| (k.as_ref(), v.as_deref())).collect();
        let intent = sled::IVec::from(encode(&intent));
        let logged_intent = intent.clone();
        self.tap.write(
            || {
                self.t.insert(intent_key, intent)?;
                // Past the intent, a failed step is fatal: the intent would stay in the tree
                // beside some of its keys, later writes would make it durable, and the next
                // open would write its (by then stale) values again. Stopping leaves it to the
                // next open to finish before anything else is written, as for a crash. A panic
                // is a failed step too: unwinding would hand the caller's locks to the next
                // writer (they are taken poisoned) and let the runtime carry on.
                let stop = StopOnUnwind;
                let rest = || -> Result<(), sled::Error> {
                    for (k, v) in &b.ops {
                        #[cfg(test)]
                        tests::panic_here();
                        set(&self.t, k, v.clone())?;
                    }
                    self.t.remove(intent_key)?;
                    Ok(())
                };
                if let Err(e) = rest() {
                    tracing::error!(error = %e, "a write failed halfway: stopping so that the next open finishes it");
                    std::process::exit(70);
                }
                std::mem::forget(stop);
                Ok(())
            },
            // The intent too, and its removal last: a backup whose copy caught the intent
            // must not restore it.
            |_| {
                let intent = |value| Written {
                    tree: TreeId::Records,
                    key: intent_key.as_slice().into(),
                    value,
                };
                std::iter::once(intent(Some(logged_intent)))
                    .chain(b.ops.iter().cloned().map(|(key, value)| Written {
                        tree: TreeId::Records,
                        key,
                        value,
                    }))
                    .chain(std::iter::once(intent(None)))
                    .collect()
            },
        )
    }

    /// One key of the records tree written on its own (no batch: see `begin_payment`).
    fn put(&self, k: impl AsRef<[u8]>, v: impl Into<sled::IVec>) -> Result<(), StoreError> {
        self.ops.keys.fetch_add(1, Ordering::Relaxed);
        let (k, v): (&[u8], sled::IVec) = (k.as_ref(), v.into());
        let logged = v.clone();
        self.tap.write(
            || Ok(self.t.insert(k, v).map(drop)?),
            |_| vec![Written { tree: TreeId::Records, key: k.into(), value: Some(logged) }],
        )
    }

    /// One key of the records tree removed.
    fn del(&self, k: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.ops.keys.fetch_add(1, Ordering::Relaxed);
        let k = k.as_ref();
        self.tap.write(
            || Ok(self.t.remove(k).map(drop)?),
            |_| vec![Written { tree: TreeId::Records, key: k.into(), value: None }],
        )
    }

    /// Whether the claim at `k` (a payment id) is held by a payment that exists. One that is not
    /// was left by a crash inside a begin (see `begin_payment`): it is free, and said so.
    fn held(&self, k: &[u8]) -> Result<bool, StoreError> {
        let Some(id) = self.read(k)? else { return Ok(false) };
        let id = String::from_utf8_lossy(&id).into_owned();
        let held = self.read(key::of(key::PAYMENT, &id))?.is_some();
        if !held {
            tracing::warn!(left_by = %id, "a claim left by a crash inside a begin is free");
        }
        Ok(held)
    }

    fn stripe(&self, payment_id: &str) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        payment_id.hash(&mut h);
        lock(&self.stripes[(h.finish() as usize) % STRIPES])
    }

    fn get<T: DeserializeOwned>(
        &self,
        what: &'static str,
        k: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.read(k)?.map(|v| decode(what, &v)).transpose()
    }

    /// Every record under `prefix`, in key order.
    fn scan<T: DeserializeOwned>(
        &self,
        what: &'static str,
        prefix: u8,
    ) -> Result<Vec<T>, StoreError> {
        self.t.scan_prefix([prefix]).values().map(|v| decode(what, &v?)).collect()
    }

    /// The ids in an index under `prefix` for times in `[from, to)`, in time order.
    fn made_ids(
        &self,
        prefix: u8,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        if to <= from {
            return Ok(vec![]);
        }
        let (lo, hi) = (key::made_from(prefix, from), key::made_from(prefix, to));
        self.t
            .range(lo..hi)
            .keys()
            .map(|k| {
                let k = k?;
                let id = k.get(9..).ok_or_else(|| corrupt("index", "short key"))?;
                Ok(String::from_utf8_lossy(id).into_owned())
            })
            .collect()
    }

    /// Applies `batch`, with the sequenced part of `c` (its journal entry and events) when it
    /// has one: under the sequencer, so sequences are the commit order.
    fn commit(&self, c: &Change, mut batch: Batch) -> Result<(), StoreError> {
        if c.journal.is_none() && c.events.is_empty() {
            self.write(batch)?;
            return Ok(());
        }
        let mut totals = lock(&self.totals);
        let mut changed: Totals = BTreeMap::new();
        if let Some(j) = &c.journal {
            let seq = self.db.generate_id()?;
            batch.insert(key::journal(&j.payment_id, seq), encode(j));
            for p in &j.postings {
                let k = (p.currency, p.account.clone());
                let now = changed.get(&k).or_else(|| totals.get(&k)).copied().unwrap_or(0);
                let sum = now.checked_add(i128::from(p.minor)).ok_or_else(|| {
                    corrupt("totals", format!("{} {} overflows", p.currency, p.account))
                })?;
                changed.insert(k, sum);
            }
            let currencies: std::collections::BTreeSet<Currency> =
                changed.keys().map(|(c, _)| *c).collect();
            for c in currencies {
                let all = totals.iter().chain(changed.iter());
                batch.insert(key::total(c), encode_totals(c, all));
            }
        }
        for e in &c.events {
            let seq = self.db.generate_id()?;
            batch.insert(key::seq(key::OUTBOX, seq).to_vec(), encode(e));
        }
        self.write(batch)?;
        totals.extend(changed);
        Ok(())
    }

    /// The parked list; the caller holds `parking`.
    fn parked_locked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        self.events(key::PARKED, None, usize::MAX)
    }

    /// The records under a sequence `prefix`, from `after` (excluded) on, at most `max`.
    fn events<T: DeserializeOwned>(
        &self,
        prefix: u8,
        after: Option<EventSeq>,
        max: usize,
    ) -> Result<Vec<(EventSeq, T)>, StoreError> {
        let from = match after {
            Some(a) => match a.checked_add(1) {
                Some(next) => key::seq(prefix, next),
                None => return Ok(vec![]),
            },
            None => key::seq(prefix, 0),
        };
        let end = [prefix + 1];
        self.t
            .range(from.as_slice()..end.as_slice())
            .take(max)
            .map(|kv| {
                let (k, v) = kv?;
                let seq = key::seq_of(&k).ok_or_else(|| corrupt("events", "short key"))?;
                Ok((seq, decode("events", &v)?))
            })
            .collect()
    }
}

/// The store's own operations, answered at once (sled's calls are synchronous); the [`Store`]
/// implementation below wraps each in a ready future.
impl SledStore {
    pub fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        let _write = self.flusher.write();
        self.put(key::of(key::QUOTE, &q.quote_id), encode(q))?;
        Ok(())
    }

    pub fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        self.get("quotes", &key::of(key::QUOTE, id))
    }

    /// See [`Store::mark`]. Kept among the store's own marks (`m/mark/<name>`).
    pub fn mark(&self, name: &str) -> Result<Option<String>, StoreError> {
        let v = self.read(key::mark(name))?;
        v.map(|v| {
            String::from_utf8(v.to_vec())
                .map_err(|_| corrupt("marks", format!("{name} is not text")))
        })
        .transpose()
    }

    /// See [`Store::set_mark`].
    pub fn set_mark(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let _write = self.flusher.write();
        self.put(key::mark(name), value.as_bytes())
    }

    pub fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<Purge, StoreError> {
        let _write = self.flusher.write();
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(key::of(key::QUOTE, a)),
            None => std::ops::Bound::Included(vec![key::QUOTE]),
        };
        let end = std::ops::Bound::Excluded(vec![key::QUOTE + 1]);
        let mut purge = Purge { cursor: after.map(str::to_owned), ..Purge::default() };
        for (looked, kv) in self.t.range((from, end)).enumerate() {
            if looked == max {
                return Ok(purge);
            }
            let (k, v) = kv?;
            let q: QuoteRecord = decode("quotes", &v)?;
            if q.quote.expires_at >= expired_before {
                purge.caught_up = true;
                return Ok(purge);
            }
            // Only while no payment holds it, under the claims lock: a payment beginning on it
            // now either sees it or finds it gone (QUOTE_NOT_FOUND).
            {
                let _claims = lock(&self.claims);
                let claim = key::of(key::QUOTE_USE, &q.quote_id);
                if !self.held(&claim)? {
                    // The quote first: a crash between leaves a claim of nothing, still free.
                    self.del(&k)?;
                    if self.read(&claim)?.is_some() {
                        self.del(&claim)?;
                    }
                    purge.removed += 1;
                }
            }
            purge.cursor = Some(q.quote_id);
        }
        purge.caught_up = true;
        Ok(purge)
    }

    pub fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        let _write = self.flusher.write();
        let request = key::pair(key::REQUEST, &p.partner, &p.request_id);
        let _claims = lock(&self.claims);
        // A claim whose payment is missing was left by a crash in the middle of an earlier
        // begin (see below): that payment was never answered nor sent, so the claim is free.
        if let Some(seen) = self.get::<IdemEntry>("requests", &request)? {
            if let Some(existing) = self.payment(&seen.payment_id)? {
                if seen.hash != p.request_hash {
                    return Err(BeginError::RequestConflict.into());
                }
                return Ok(Begin::Replay(Box::new(existing)));
            }
            tracing::warn!(partner = %p.partner, left_by = %seen.payment_id, "a request claim left by a crash inside a begin is taken again");
        }
        let Some(q) = self.quote(&p.quote_id)? else {
            return Err(BeginError::QuoteNotFound.into());
        };
        if q.partner != p.partner {
            return Err(BeginError::QuoteNotFound.into());
        }
        if q.quote.is_expired(now) {
            return Err(BeginError::QuoteExpired.into());
        }
        let quote_use = key::of(key::QUOTE_USE, &p.quote_id);
        if self.held(&quote_use)? {
            return Err(BeginError::QuoteUsed.into());
        }
        let order = p.order.as_deref().map(|o| key::of(key::ORDER, o));
        if let Some(order) = &order {
            if self.held(order)? {
                return Err(BeginError::OrderPaid.into());
            }
        }
        // One key at a time, not a batch (sled seals its log buffer twice for every batch, the
        // main cost of a write here), in an order that is safe whatever prefix of it a crash
        // keeps: the claims, the resolver work and the index first, the payment last. Without
        // its payment, each of those is ignored (claims above, work in `open_work` and at open,
        // the index in `payments_made`); the flush that follows, before anything is answered or
        // sent, makes them all durable at once. Under the claims lock, so no other begin sees
        // them half-written.
        let id = p.payment_id.as_str();
        if let Some(order) = order {
            self.put(order, id.as_bytes())?;
        }
        self.put(quote_use, id.as_bytes())?;
        let claim = IdemEntry { hash: p.request_hash.clone(), payment_id: p.payment_id.clone() };
        self.put(request, encode(&claim))?;
        self.put(key::of(key::WORK, id), encode(work))?;
        self.put(key::made(key::MADE, p.created_at, id), &[][..])?;
        self.put(key::of(key::PAYMENT, id), encode(p))?;
        Ok(Begin::Created)
    }

    pub fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        self.get("payments", &key::of(key::PAYMENT, id))
    }

    pub fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        self.scan("payments", key::PAYMENT)
    }

    pub fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let k = key::pair(key::REQUEST, partner, request_id);
        let Some(e) = self.get::<IdemEntry>("requests", &k)? else { return Ok(None) };
        self.payment(&e.payment_id)
    }

    pub fn apply(&self, c: &Change) -> Result<(), StoreError> {
        let _write = self.flusher.write();
        c.assert_balanced();
        let p = &c.payment;
        let id = p.payment_id.as_str();
        let _payment = self.stripe(id);
        let Some(current) = self.payment(id)? else {
            return Err(StoreError::Stale(p.payment_id.clone()));
        };
        if current.rev + 1 != p.rev {
            return Err(StoreError::Stale(p.payment_id.clone()));
        }
        let mut b = Batch::default();
        // A change that releases a claim (its quote, its order) holds the claims lock until its
        // write is whole, so no begin takes the claim while the write's intent, which removes
        // it, could still be finished by an open after a crash.
        let releases = c.release_quote
            || (p.order.is_some()
                && matches!(p.state, PaymentState::Failed | PaymentState::Cancelled));
        let claims = (c.refund.is_some() || releases).then(|| lock(&self.claims));
        if let Some(r) = &c.refund {
            let k = key::pair(key::ACQUIRER_REFUND, &r.acquirer, &r.acquirer_refund_id);
            if let Some(seen) = self.get::<IdemEntry>("acquirer_refunds", &k)? {
                let existing = self
                    .get::<RefundRecord>("refunds", &key::of(key::REFUND, &seen.payment_id))?
                    .ok_or_else(|| {
                        corrupt(
                            "acquirer_refunds",
                            format!("points at missing refund {}", seen.payment_id),
                        )
                    })?;
                return Err(StoreError::RefundExists(Box::new(existing)));
            }
            let claim = IdemEntry { hash: r.request_hash.clone(), payment_id: r.refund_id.clone() };
            b.insert(k, encode(&claim));
            b.insert(key::of(key::REFUND, &r.refund_id), encode(r));
            b.insert(key::pair(key::REFUND_OF, &r.payment_id, &r.refund_id), &[][..]);
            b.insert(key::made(key::REFUND_MADE, r.created_at, &r.refund_id), &[][..]);
        }
        b.insert(key::of(key::PAYMENT, id), encode(p));
        match &c.work {
            Work::Set(w) => b.insert(key::of(key::WORK, id), encode(w)),
            Work::Done => b.remove(key::of(key::WORK, id)),
            Work::Keep => {}
        }
        // Claims held by this payment only change under its stripe (a beginning payment only
        // takes a claim nobody holds), so reading them here and releasing them in the batch is
        // safe.
        let quote_use = key::of(key::QUOTE_USE, &p.quote_id);
        if c.release_quote && self.read(&quote_use)?.as_deref() == Some(id.as_bytes()) {
            b.remove(quote_use);
        }
        // An order whose payment failed or was cancelled may be paid again.
        if let Some(order) = &p.order {
            let released = matches!(p.state, PaymentState::Failed | PaymentState::Cancelled);
            let order = key::of(key::ORDER, order);
            if released && self.read(&order)?.as_deref() == Some(id.as_bytes()) {
                b.remove(order);
            }
        }
        let written = self.commit(c, b);
        drop(claims);
        written
    }

    pub fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let mut entries = self
            .t
            .scan_prefix([key::JOURNAL])
            .map(|kv| {
                let (k, v) = kv?;
                let seq = k
                    .len()
                    .checked_sub(9)
                    .and_then(|at| key::seq_of(&k[at..]))
                    .ok_or_else(|| corrupt("journal", "short key"))?;
                Ok((seq, decode::<JournalEntry>("journal", &v)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.sort_by_key(|(seq, _)| *seq);
        Ok(entries.into_iter().map(|(_, e)| e).collect())
    }

    pub fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.t
            .scan_prefix(key::pair(key::JOURNAL, payment_id, ""))
            .values()
            .map(|v| decode("journal", &v?))
            .collect()
    }

    pub fn account_totals(&self) -> Result<BTreeMap<(Currency, String), i128>, StoreError> {
        Ok(lock(&self.totals).clone())
    }

    pub fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        self.get("work", &key::of(key::WORK, payment_id))
    }

    pub fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        // Work whose payment is not written (yet, or ever: see `begin_payment`) is not open.
        let mut open = Vec::new();
        for w in self.scan::<WorkItem>("work", key::WORK)? {
            if self.read(key::of(key::PAYMENT, &w.payment_id))?.is_some() {
                open.push(w);
            }
        }
        Ok(open)
    }

    pub fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let k = key::pair(key::ACQUIRER_REFUND, acquirer, acquirer_refund_id);
        let Some(e) = self.get::<IdemEntry>("acquirer_refunds", &k)? else { return Ok(None) };
        self.get("refunds", &key::of(key::REFUND, &e.payment_id))
    }

    pub fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        let prefix = key::pair(key::REFUND_OF, payment_id, "");
        let mut out = Vec::new();
        for k in self.t.scan_prefix(&prefix).keys() {
            let k = k?;
            let refund_id = String::from_utf8_lossy(&k[prefix.len()..]);
            if let Some(r) = self.get("refunds", &key::of(key::REFUND, &refund_id))? {
                out.push(r);
            }
        }
        // Bridge refund ids are time-ordered (UUIDv7), so key order is creation order.
        Ok(out)
    }

    pub fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        // An index entry without its payment was left by a crash inside a begin: skipped.
        let mut made = Vec::new();
        for id in self.made_ids(key::MADE, from, to)? {
            made.extend(self.payment(&id)?);
        }
        Ok(made)
    }

    pub fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        self.made_ids(key::REFUND_MADE, from, to)?
            .iter()
            .map(|id| {
                self.get("refunds", &key::of(key::REFUND, id))?
                    .ok_or_else(|| corrupt("refunds_made", format!("no refund {id}")))
            })
            .collect()
    }

    pub fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        self.events(key::OUTBOX, None, usize::MAX)
    }

    pub fn outbox_after(&self, after: Option<u64>, max: usize) -> Result<OutboxPage, StoreError> {
        let events = self.events(key::OUTBOX, after, max)?;
        let cursor = events.last().map(|(seq, _)| *seq).or(after);
        Ok(OutboxPage { more: events.len() == max, events, cursor })
    }

    pub fn outbox_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        // The log keeps the event's header, not its body. The mark first, then the outbox entry
        // goes: a crash between leaves the event in the outbox, delivered again under its id
        // (allowed).
        let _write = self.flusher.write();
        self.put(key::seq(key::DELIVERED, seq), encode(&d.kept()))?;
        self.del(key::seq(key::OUTBOX, seq))
    }

    pub fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        self.scan("delivered", key::DELIVERED)
    }

    pub fn park(&self, seq: EventSeq, p: &ParkedEvent) -> Result<(), StoreError> {
        let _parking = lock(&self.parking);
        // One atomic write: an event is never both parked and waiting.
        let _write = self.flusher.write();
        let mut b = Batch::default();
        b.insert(key::seq(key::PARKED, seq).to_vec(), encode(p));
        b.insert(key::of(key::PARKED_ID, &p.event.event_id), &seq.to_be_bytes()[..]);
        b.remove(key::seq(key::OUTBOX, seq).to_vec());
        self.write(b)
    }

    pub fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        let _parking = lock(&self.parking);
        self.parked_locked()
    }

    pub fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let _parking = lock(&self.parking);
        let id_key = key::of(key::PARKED_ID, event_id);
        let Some(seq) = self.read(&id_key)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        else {
            return Ok(false);
        };
        let seq = u64::from_be_bytes(seq);
        let Some(p) = self.get::<ParkedEvent>("parked", &key::seq(key::PARKED, seq))? else {
            return Err(corrupt(
                "parked",
                format!("{event_id} indexed at {seq}, not parked there"),
            ));
        };
        let _write = self.flusher.write();
        let event = OutboxEvent { replayed_at: Some(now), ..p.event };
        let mut b = Batch::default();
        b.remove(key::seq(key::PARKED, seq).to_vec());
        b.remove(id_key);
        b.insert(key::seq(key::OUTBOX, seq).to_vec(), encode(&event));
        self.write(b)?;
        // After the write: a reader that sees the new epoch finds the event in the outbox.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }

    pub fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError> {
        let _parking = lock(&self.parking);
        let _write = self.flusher.write();
        let mut b = Batch::default();
        let mut removed = 0;
        for &seq in seqs {
            if let Some(p) = self.get::<ParkedEvent>("parked", &key::seq(key::PARKED, seq))? {
                b.remove(key::seq(key::PARKED, seq).to_vec());
                b.remove(key::of(key::PARKED_ID, &p.event.event_id));
                removed += 1;
            }
        }
        self.write(b)?;
        if removed > 0 {
            // Their payments' later events may go now: readers keeping a cursor look again.
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        Ok(removed)
    }

    pub fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
    ) -> Result<AuditRecord, StoreError> {
        let _write = self.flusher.write();
        // Admin changes are rare and not on the payment path: a transaction across the two trees.
        // What it wrote is logged for a backup from the record it returns (a transaction may run
        // its closure more than once; only the committed run counts).
        let transaction = || {
            let r = (&self.settings, &self.audit).transaction(|(set, audit)| {
                let head = match set.get(AUDIT_HEAD.as_bytes())? {
                    Some(v) => Some(
                        decode::<AuditHead>("settings", &v)
                            .map_err(sled::transaction::ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                let record = AuditRecord::next(draft, head);
                audit.insert(&record.seq.to_be_bytes(), encode(&record))?;
                set.insert(AUDIT_HEAD.as_bytes(), encode(&record.head()))?;
                for (k, v) in settings {
                    match v {
                        Some(v) => set.insert(k.as_bytes(), v.as_slice())?,
                        None => set.remove(k.as_bytes())?,
                    };
                }
                Ok(record)
            });
            r.map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })
        };
        self.tap.write(transaction, |record: &AuditRecord| {
            let mut w = vec![
                Written {
                    tree: TreeId::Audit,
                    key: record.seq.to_be_bytes().as_slice().into(),
                    value: Some(encode(record).into()),
                },
                Written {
                    tree: TreeId::Settings,
                    key: AUDIT_HEAD.as_bytes().into(),
                    value: Some(encode(&record.head()).into()),
                },
            ];
            w.extend(settings.iter().map(|(k, v)| Written {
                tree: TreeId::Settings,
                key: k.as_bytes().into(),
                value: v.as_deref().map(Into::into),
            }));
            w
        })
    }

    pub fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        self.settings.get(AUDIT_HEAD)?.map(|v| decode("settings", &v)).transpose()
    }

    pub fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        let records = self
            .audit
            .iter()
            .values()
            .map(|v| decode("audit", &v?))
            .collect::<Result<Vec<AuditRecord>, StoreError>>()?;
        let head = self.settings.get(AUDIT_HEAD)?.map(|v| decode("settings", &v)).transpose()?;
        Ok((records, head))
    }

    pub fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.settings
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    pub fn put_risk_decision(&self, d: &RiskDecisionRecord) -> Result<(), StoreError> {
        let _write = self.flusher.write();
        self.put(key::made(key::RISK, d.at, &d.decision_id), encode(d))
    }

    pub fn risk_decisions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<RiskDecisionRecord>, StoreError> {
        if to <= from {
            return Ok(vec![]);
        }
        let (lo, hi) = (key::made_from(key::RISK, from), key::made_from(key::RISK, to));
        self.t.range(lo..hi).values().take(max).map(|v| decode("risk_decisions", &v?)).collect()
    }
}

impl Store for SledStore {
    async fn put_risk_decision(&self, d: &RiskDecisionRecord) -> Result<(), StoreError> {
        SledStore::put_risk_decision(self, d)
    }

    async fn risk_decisions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<RiskDecisionRecord>, StoreError> {
        SledStore::risk_decisions(self, from, to, max)
    }

    async fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        SledStore::put_quote(self, q)
    }

    async fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        SledStore::quote(self, id)
    }

    async fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<Purge, StoreError> {
        SledStore::purge_quotes(self, after, expired_before, max)
    }

    async fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        SledStore::begin_payment(self, p, work, now)
    }

    async fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        SledStore::payment(self, id)
    }

    async fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        SledStore::payments(self)
    }

    async fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        SledStore::payment_by_request(self, partner, request_id)
    }

    async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        SledStore::apply(self, change)
    }

    async fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        SledStore::journal(self)
    }

    async fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        SledStore::work_item(self, payment_id)
    }

    async fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        SledStore::open_work(self)
    }

    async fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        SledStore::refund_by_acquirer_id(self, acquirer, acquirer_refund_id)
    }

    async fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        SledStore::refunds_of(self, payment_id)
    }

    async fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        SledStore::outbox(self)
    }

    async fn outbox_after(&self, after: Option<u64>, max: usize) -> Result<OutboxPage, StoreError> {
        SledStore::outbox_after(self, after, max)
    }

    async fn outbox_epoch(&self) -> Result<u64, StoreError> {
        Ok(SledStore::outbox_epoch(self))
    }

    async fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError> {
        SledStore::purge_parked(self, seqs)
    }

    async fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        SledStore::payments_made(self, from, to)
    }

    async fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        SledStore::refunds_made(self, from, to)
    }

    async fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        SledStore::journal_of(self, payment_id)
    }

    async fn account_totals(&self) -> Result<BTreeMap<(Currency, String), i128>, StoreError> {
        SledStore::account_totals(self)
    }

    async fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        SledStore::delivered(self, seq, d)
    }

    async fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        SledStore::delivered_events(self)
    }

    async fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError> {
        SledStore::park(self, seq, parked)
    }

    async fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        SledStore::parked(self)
    }

    async fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        SledStore::unpark(self, event_id, now)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        SledStore::flush(self).await
    }

    async fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
        // One process owns a sled store: no other node can hold a lease (`Store::shared`).
        _fence: Option<Fence<'_>>,
    ) -> Result<AuditRecord, StoreError> {
        SledStore::admin_commit(self, draft, settings)
    }

    async fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        SledStore::audit_log(self)
    }

    async fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        SledStore::settings(self, prefix)
    }

    async fn mark(&self, name: &str) -> Result<Option<String>, StoreError> {
        SledStore::mark(self, name)
    }

    async fn set_mark(&self, name: &str, value: &str) -> Result<(), StoreError> {
        SledStore::set_mark(self, name, value)
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        SledStore::audit_head(self)
    }

    async fn backup(
        &self,
        dir: &Path,
        clock: &dyn crate::clock::Clock,
    ) -> Result<Manifest, BackupError> {
        SledStore::backup(self, dir, clock)
    }

    fn backups(&self) -> Option<&Backups> {
        Some(&self.backups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    fn open(path: &Path) -> SledStore {
        SledStore::open(path, 8 << 20).unwrap()
    }

    /// How many more keys of multi-key writes [`panic_here`] lets through before it panics
    /// (never, by default); set only in a child process of
    /// [`a_panic_halfway_through_a_write_stops_the_process`].
    static PANIC_AFTER: AtomicUsize = AtomicUsize::new(usize::MAX);

    pub(super) fn panic_here() {
        if PANIC_AFTER
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            panic!("sled panicked in the middle of a write");
        }
    }

    fn records(s: &SledStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
        s.t.iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// `storage.flush_every_ms`: after a flush several requests shared, the next waits until
    /// the wait has passed since it, and the writes made meanwhile share it; a request alone, or
    /// after a quiet spell, is flushed at once. (Time is the runtime's paused clock: nothing here
    /// waits on the wall.)
    #[tokio::test(start_paused = true)]
    async fn under_load_a_flush_waits_for_more_writes_and_alone_it_does_not() {
        use std::time::Duration;
        let wait = Duration::from_millis(50);
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(open(&dir.path().join("db")).with_flush_wait(wait));
        let flush = |s: &std::sync::Arc<SledStore>| {
            let s = s.clone();
            tokio::spawn(async move { s.flush().await })
        };
        // One client writing and flushing in turn: every flush at once.
        let t0 = tokio::time::Instant::now();
        for i in 0..3 {
            s.set_mark("alone", &i.to_string()).unwrap();
            s.flush().await.unwrap();
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "a request alone waited");
        assert_eq!(s.flushes(), 3);
        // Two requests share a flush (both ask before the flusher runs): at once too.
        s.set_mark("a1", "1").unwrap();
        s.set_mark("a2", "2").unwrap();
        let (a1, a2) = (flush(&s), flush(&s));
        a1.await.unwrap().unwrap();
        a2.await.unwrap().unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(s.flushes(), 4, "the two shared one flush");
        // Right after that shared flush, B's flush waits; C, written 10 ms into the wait,
        // shares it, and it starts the wait after the last one ended.
        s.set_mark("b", "3").unwrap();
        let b = flush(&s);
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!b.is_finished(), "B's flush did not wait");
        s.set_mark("c", "4").unwrap();
        let c = flush(&s);
        b.await.unwrap().unwrap();
        c.await.unwrap().unwrap();
        assert_eq!(s.flushes(), 5, "B and C shared one flush");
        assert!(t0.elapsed() >= wait && t0.elapsed() < wait * 2, "waited {:?}", t0.elapsed());
        // A quiet spell longer than the wait: the next flush goes at once.
        tokio::time::advance(wait * 2).await;
        s.set_mark("d", "5").unwrap();
        let t1 = tokio::time::Instant::now();
        s.flush().await.unwrap();
        assert_eq!(t1.elapsed(), Duration::ZERO, "a flush after a quiet spell waited");
        assert_eq!(s.flushes(), 6);
        // With no wait set, a flush right after a shared one goes at once.
        s.flusher.set_wait(Duration::ZERO);
        s.set_mark("e1", "6").unwrap();
        let (e1, e2) = (flush(&s), flush(&s));
        e1.await.unwrap().unwrap();
        e2.await.unwrap().unwrap();
        s.set_mark("f", "7").unwrap();
        s.flush().await.unwrap();
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert_eq!(s.flushes(), 8);
    }

    #[test]
    fn a_mark_is_kept_across_a_reopen_apart_from_the_records() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        rt.block_on(async {
            let s = open(&path);
            assert_eq!(s.mark("sweep").unwrap(), None);
            s.set_mark("sweep", "quo_1").unwrap();
            s.set_mark("sweep", "quo_2").unwrap();
            s.set_mark("other", "x").unwrap();
            s.flush().await.unwrap();
            s.close().await;
        });
        rt.block_on(async {
            let s = open(&path);
            assert_eq!(s.mark("sweep").unwrap().as_deref(), Some("quo_2"));
            assert_eq!(s.mark("other").unwrap().as_deref(), Some("x"));
            // Marks are among the store's own keys, not records any reader decodes.
            assert!(s.payments().unwrap().is_empty());
            assert!(s.journal().unwrap().is_empty());
        });
    }

    /// A crash keeps a prefix of sled's log. Whatever prefix of a multi-key write survives —
    /// nothing, the intent alone, the intent and some of its keys, all but the intent's removal
    /// — the next open holds the records as they were before it, or as they are after it.
    #[test]
    fn a_write_cut_short_by_a_crash_is_whole_or_absent_at_open() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (a, b, c) =
            (key::of(key::PAYMENT, "a"), key::of(key::PAYMENT, "b"), key::of(key::OUTBOX, "c"));
        let batch = || {
            let mut w = Batch::default();
            w.insert(a.clone(), &b"a-after"[..]);
            w.remove(b.clone());
            w.insert(c.clone(), &b"c-after"[..]);
            w
        };
        let (before, after) = rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let s = open(&dir.path().join("db"));
            s.put(&a, &b"a-before"[..]).unwrap();
            s.put(&b, &b"b-before"[..]).unwrap();
            let before = records(&s);
            s.write(batch()).unwrap();
            let after = records(&s);
            assert!(
                s.t.scan_prefix([key::INTENT]).next().is_none(),
                "a whole write leaves no intent"
            );
            assert_ne!(before, after);
            (before, after)
        });
        // The write's steps: the intent, its three keys, the intent's removal.
        for kept in 0..=5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            rt.block_on(async {
                let s = open(&path);
                s.put(&a, &b"a-before"[..]).unwrap();
                s.put(&b, &b"b-before"[..]).unwrap();
                let ops = batch().ops;
                let intent: Intent =
                    ops.iter().map(|(k, v)| (k.to_vec(), v.as_ref().map(|v| v.to_vec()))).collect();
                // `write` encodes its intent from byte slices: the same record on the wire.
                let slices: Vec<(&[u8], Option<&[u8]>)> =
                    ops.iter().map(|(k, v)| (k.as_ref(), v.as_deref())).collect();
                assert_eq!(decode::<Intent>("intents", &encode(&slices)).unwrap(), intent);
                let n = key::seq(key::INTENT, 7);
                let mut steps: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                    vec![(n.to_vec(), Some(encode(&intent)))];
                steps.extend(intent.clone());
                steps.push((n.to_vec(), None));
                for (k, v) in steps.into_iter().take(kept) {
                    set(&s.t, k, v).unwrap();
                }
                s.flush().await.unwrap();
                s.close().await;
                let s = open(&path);
                let want = if kept == 0 { &before } else { &after };
                assert_eq!(&records(&s), want, "{kept} steps kept");
                s.close().await;
            });
        }
    }

    /// A panic between a write's intent and its removal stops the process (as a failed step
    /// does), even where something catches the panic as the runtime does a task's; the next open
    /// finishes the write. Carrying on would leave the intent in the tree for later flushes to
    /// make durable, and that open would write its stale values over newer ones. Run in a child
    /// process (this test binary again), which must die of `SIGABRT`.
    #[test]
    fn a_panic_halfway_through_a_write_stops_the_process() {
        const CHILD: &str = "QRBRIDGE_TEST_PANIC_CHILD";
        let (a, b) = (key::of(key::PAYMENT, "a"), key::of(key::JOURNAL, "b"));
        let batch = || {
            let mut w = Batch::default();
            w.insert(a.clone(), &b"a-after"[..]);
            w.insert(b.clone(), &b"b-after"[..]);
            w
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        if let Some(path) = std::env::var_os(CHILD) {
            rt.block_on(async {
                let s = open(Path::new(&path));
                {
                    let _write = s.flusher.write();
                    s.put(&a, &b"a-before"[..]).unwrap();
                }
                s.flush().await.unwrap();
                PANIC_AFTER.store(1, Ordering::Relaxed);
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _write = s.flusher.write();
                    s.write(batch())
                }));
                assert!(caught.is_err(), "the write was to panic");
                // The process went on: what it writes next makes the intent durable.
                let _write = s.flusher.write();
                s.put(key::of(key::PAYMENT, "later"), &b"x"[..]).unwrap();
                drop(_write);
                s.flush().await.unwrap();
                s.close().await;
            });
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sled_store::tests::a_panic_halfway_through_a_write_stops_the_process",
            ])
            .arg("--nocapture")
            .env(CHILD, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "the child was to abort, not {status}");
        rt.block_on(async {
            // As after a crash: the write whole (its intent had reached the disk) or not at all.
            let s = open(&path);
            let (a, b) = (s.t.get(&a).unwrap(), s.t.get(&b).unwrap());
            let (a, b) = (a.as_deref(), b.as_deref());
            assert!(
                (a, b) == (Some(&b"a-before"[..]), None)
                    || (a, b) == (Some(&b"a-after"[..]), Some(&b"b-after"[..])),
                "half a write: {a:?} {b:?}"
            );
            assert_eq!(s.t.get(key::of(key::PAYMENT, "later")).unwrap(), None, "nothing after");
            assert!(s.t.scan_prefix([key::INTENT]).next().is_none());
            s.close().await;
        });
    }

    /// An event the webhook worker delivered before the crash, from a write whose intent the
    /// crash kept, is not put back in the outbox by the open that finishes the write.
    #[test]
    fn finishing_a_write_does_not_bring_back_a_delivered_event() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (event, payment) = (key::seq(key::OUTBOX, 5), key::of(key::PAYMENT, "a"));
        rt.block_on(async {
            let s = open(&path);
            let intent: Intent = vec![
                (payment.clone(), Some(b"after".to_vec())),
                (event.to_vec(), Some(b"e".to_vec())),
            ];
            s.t.insert(key::seq(key::INTENT, 0), encode(&intent)).unwrap();
            s.t.insert(key::seq(key::DELIVERED, 5), &b"delivered"[..]).unwrap();
            s.flush().await.unwrap();
            s.close().await;
            let s = open(&path);
            assert_eq!(s.t.get(&payment).unwrap().as_deref(), Some(&b"after"[..]));
            assert_eq!(s.t.get(event).unwrap(), None, "delivered, so not waiting again");
            assert!(s.t.scan_prefix([key::INTENT]).next().is_none());
            s.close().await;
        });
    }
}
