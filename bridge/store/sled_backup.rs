//! A consistent copy of the running sled store ([`SledStore::backup`]), and the store built
//! again from one ([`build`], by `qrbridge store restore`).
//!
//! sled lets one process open a store, so the daemon that runs it makes the copy; it cannot stop
//! writing for as long as a copy takes, and sled has no snapshot to read from. So every write
//! passes a [`Tap`] (the store's four writing functions: see [`super::sled_store`]), and a backup
//! goes:
//!
//! 1. **Tap on**, under the gate's write side. Each write holds the gate's read side for its one
//!    sled call, so taking the write side waits only for the calls in progress. From then on,
//!    every write logs what it wrote (each key's new value, or its removal, and its tree) in the
//!    same critical section as its sled call, holding the log's lock across both: two writes of
//!    one key are logged in the order sled applied them. (So while a backup runs the store's
//!    writes go one at a time; sled already serialises its batches, most of them.)
//! 2. **Scan**: every tree is read, in key order, into a file, writes going on. Every few
//!    thousand keys the log is drained into a map of each written key's last value (so a key
//!    written a thousand times takes memory once).
//! 3. **Gate**: the write side is taken again (new writes wait at the gate; those in progress end
//!    first), the rest of the log taken (a swap), the store's id generator read, the tap turned
//!    off, the gate let go. This is the only pause writes see (`pause_us` in the manifest).
//! 4. **The copy** (`db.kv`): the scan, each key in the map replaced by its last value (or
//!    dropped, when that was a removal) — the store at the gate. Synced; the manifest, with the
//!    copy's SHA-256 and the id to go on from, written last ([`super::backup`]). The scan file
//!    is never synced: it is deleted once read, and syncing it while the tap is on would only
//!    keep writes going one at a time for longer.
//!
//! **Why the copy is the store at the instant G the gate was taken.** Let T be the instant the
//! tap went on. A write that began before T ended before T (the write side waited for it), so
//! the scan, which starts after T, sees it; a write that begins after T sees the tap on (it takes
//! the read side after the write side was let go). Now take any key k of any tree:
//! - *No write touched k in [T, G].* k held one value (or none) through the whole scan, which
//!   runs inside [T, G], so the scan read it as it is at G; and k is not in the map.
//! - *Writes touched k in [T, G].* Each of them is in the log, in sled's order for k, so the map
//!   holds the last of them: k's state at G. Whatever the scan read for k, the copy takes the
//!   map's.
//!
//! No write runs between G and the tap going off, so the log is complete at G. What this takes
//! from sled: its iterator does not skip or repeat keys that are not written while it runs
//! (sled's iterators continue from the last key they returned, so concurrent writes elsewhere do
//! not disturb them).
//!
//! The gate falls between two sled calls, not between two store operations: a begin is six
//! puts, a delivery two. So the copy is a state a crash at G would leave had every write before
//! G been flushed — the states the store is built to open (a claim without its payment is free,
//! work without its payment is dropped, an event both delivered and waiting is delivered again
//! under its id: see `begin_payment` and `delivered`).
//!
//! **Why a file, not a sled store.** Writing the copy as a sled store inside the daemon would
//! cost the daemon's own writes: sled 0.34 serialises every batch in the process under one
//! global lock (measured here: about 14 µs a key, 0.9 ms for a batch of 64 and 65 ms for 4096,
//! during which no write of the store proceeds). A sequential file costs neither the lock nor
//! sled's write path, and outlives sled's file format; the store is built from it offline, by
//! the restore.
//!
//! Journal and event sequences come from sled's id generator, which lives outside the trees: a
//! store built afresh would start it over and hand out sequences already used (an event behind
//! the outbox cursor, a delivered event overwritten). The manifest keeps the store's generator,
//! read at G, and [`build`] moves the new store's past it in constant time (drawing ids up to it
//! would take time in proportion to every id the store ever drew): sled, reopening a store,
//! starts its generator at the last persisted value plus twice its persist interval, so the
//! built store is reopened once with that interval set to about half the manifest's id, and one
//! id drawn, which persists it (see [`idgen_past`]).
//!
//! Memory: the map holds what was written during the copy, each key once, and the log what was
//! written since its last drain; both are counted as allocated (the containers' capacity, and
//! each key's and value's own allocation). Together past [`BackupOptions::log_bytes_max`]
//! (`storage.backup_log_bytes_max`) they abandon the backup ([`BackupError::TooManyWrites`];
//! the log is dropped at once); writes never fail because of a backup.
//!
//! A backup also stops — abandoned, its folder emptied — when the daemon shuts down
//! ([`super::Backups::cancel`]), checked at every key it reads or writes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::backup::{self, BackupError, Manifest};
use super::{SledStore, StoreError};

/// The trees the store writes (see [`super::sled_store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum TreeId {
    Records,
    Settings,
    Audit,
}

impl TreeId {
    /// The tree of this name, if the store writes it.
    fn of(name: &[u8]) -> Option<TreeId> {
        [TreeId::Records, TreeId::Settings, TreeId::Audit]
            .into_iter()
            .find(|t| t.name().as_bytes() == name)
    }

    fn name(self) -> &'static str {
        match self {
            TreeId::Records => "records",
            TreeId::Settings => "settings",
            TreeId::Audit => "audit",
        }
    }
}

/// One key written: its new value, or (`None`) its removal.
pub(super) struct Written {
    pub tree: TreeId,
    pub key: sled::IVec,
    pub value: Option<sled::IVec>,
}

/// Bytes sled keeps inside an `IVec` itself, with no allocation of its own.
const IVEC_INLINE: usize = 22;
/// What an allocation costs beyond its bytes, counted high: an `Arc`'s two counts and the
/// allocator's rounding.
const ALLOC_OVERHEAD: usize = 32;

/// The heap bytes `v` holds beyond its own size.
fn heap(v: &sled::IVec) -> usize {
    if v.len() <= IVEC_INLINE {
        0
    } else {
        v.len() + ALLOC_OVERHEAD
    }
}

fn heap_of(v: &Option<sled::IVec>) -> usize {
    v.as_ref().map_or(0, heap)
}

impl Written {
    /// The heap bytes it holds beyond its own size (which its log's capacity counts).
    fn heap(&self) -> usize {
        heap(&self.key) + heap_of(&self.value)
    }
}

/// What every write of the store passes.
#[derive(Default)]
pub(super) struct Tap {
    /// Each write holds the read side for its sled call (and its log entry); a backup holds the
    /// write side to turn the tap on, and to stop writes while it takes the rest of the log.
    gate: RwLock<()>,
    /// Whether writes are logged. Changed only under the gate's write side, so one write sees
    /// one value for its whole call.
    on: AtomicBool,
    log: Mutex<Log>,
    /// Signalled when a write is logged while a backup waits for writes ([`Hold`]).
    logged: Condvar,
    /// A backup is under way (one at a time).
    busy: AtomicBool,
}

#[derive(Default)]
struct Log {
    writes: Vec<Written>,
    /// Heap bytes held by `writes` beyond the vector's own capacity.
    heap: usize,
    /// What the backup's map of last values holds (set by the backup after each drain).
    held: usize,
    /// Past this, all told ([`Log::bytes`]), the log is dropped and marked overflowed.
    max: usize,
    overflowed: bool,
    /// Keys logged since the tap went on (not reset by a drain).
    total: u64,
    /// A backup waits on `Tap::logged` ([`Hold`]).
    waiting: bool,
}

impl Log {
    /// The memory the writes made during the copy take: the log's entries, as allocated, and
    /// the map of last values.
    fn bytes(&self) -> usize {
        self.writes.capacity() * std::mem::size_of::<Written>() + self.heap + self.held
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tap {
    /// Runs `apply` — one sled call — and, while a backup is under way, logs what it wrote
    /// (`logged`, from its result) in the same critical section.
    pub(super) fn write<R>(
        &self,
        apply: impl FnOnce() -> Result<R, StoreError>,
        logged: impl FnOnce(&R) -> Vec<Written>,
    ) -> Result<R, StoreError> {
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        // The gate orders this read after the write side that changed it.
        if !self.on.load(Ordering::Relaxed) {
            return apply();
        }
        // Held across the sled call: the log's order of two writes of a key is sled's.
        let mut log = lock(&self.log);
        let r = apply()?;
        if !log.overflowed {
            let w = logged(&r);
            log.total += w.len() as u64;
            log.heap += w.iter().map(Written::heap).sum::<usize>();
            log.writes.extend(w);
            if log.bytes() > log.max {
                log.overflowed = true;
                log.writes = Vec::new();
                log.heap = 0;
            }
            if log.waiting {
                self.logged.notify_all();
            }
        }
        Ok(r)
    }

    /// Turns the tap on (waiting for the writes in progress); `Err` while another backup runs.
    fn begin(&self, bytes_max: usize) -> Result<Tapping<'_>, BackupError> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(BackupError::InProgress(None));
        }
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        *lock(&self.log) = Log { max: bytes_max, ..Log::default() };
        self.on.store(true, Ordering::Relaxed);
        Ok(Tapping { tap: self, bytes_max })
    }
}

/// The tap while a backup runs; turned off when dropped, whatever happened.
struct Tapping<'a> {
    tap: &'a Tap,
    bytes_max: usize,
}

/// How long writes were held at the gate.
struct Pause {
    /// Until the writes in progress had ended.
    waited: Duration,
    /// In all, until writes went on.
    held: Duration,
}

impl Tapping<'_> {
    /// The log so far (emptied).
    fn drain(&self) -> Result<Vec<Written>, BackupError> {
        let mut log = lock(&self.tap.log);
        if log.overflowed {
            return Err(BackupError::TooManyWrites(self.bytes_max));
        }
        log.heap = 0;
        Ok(std::mem::take(&mut log.writes))
    }

    /// Tells the log what the map of last values now holds, so that the writes logged next
    /// are bounded with it.
    fn holding(&self, bytes: usize) {
        lock(&self.tap.log).held = bytes;
    }

    /// Waits until `writes` keys in all were logged since the tap went on, `within` passed, or
    /// `cancelled` says so (looked at every [`HOLD_LOOK_EVERY`] at least: no write wakes the
    /// wait then); whether they were.
    fn wait_for_writes(&self, writes: u64, within: Duration, cancelled: &dyn Fn() -> bool) -> bool {
        let until = Instant::now() + within;
        let mut log = lock(&self.tap.log);
        log.waiting = true;
        while log.total < writes && !log.overflowed && !cancelled() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            log = self
                .tap
                .logged
                .wait_timeout(log, left.min(HOLD_LOOK_EVERY))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        log.waiting = false;
        log.total >= writes
    }

    /// Stops writes, hands the rest of the log to `last`, turns the tap off and lets writes go
    /// on.
    fn finish<T>(
        self,
        last: impl FnOnce(Vec<Written>) -> Result<T, BackupError>,
    ) -> Result<(T, Pause), BackupError> {
        let asked = Instant::now();
        let gate = self.tap.gate.write().unwrap_or_else(PoisonError::into_inner);
        let waited = asked.elapsed();
        let out = self.drain().and_then(last);
        self.off();
        drop(gate);
        let held = asked.elapsed();
        out.map(|t| (t, Pause { waited, held }))
    }

    /// Under the gate's write side (held by the caller, or taken here).
    fn off(&self) {
        self.tap.on.store(false, Ordering::Relaxed);
        *lock(&self.tap.log) = Log::default();
    }
}

impl Drop for Tapping<'_> {
    fn drop(&mut self) {
        // Only this backup changes `on`: off already (after `finish`) needs no gate.
        if self.tap.on.load(Ordering::Relaxed) {
            let _gate = self.tap.gate.write().unwrap_or_else(PoisonError::into_inner);
            self.off();
        }
        self.tap.busy.store(false, Ordering::SeqCst);
    }
}

/// The test hook type.
type Hook = Arc<dyn Fn() + Send + Sync>;

/// Holds the scan, once it has read a tree, until writes have raced it: so a test shows the tap
/// at work whatever the machine's speed. Set by tests, or (builds with debug assertions only)
/// by [`HOLD_ENV`].
#[derive(Debug, Clone)]
struct Hold {
    /// The tree after which the scan waits.
    after_tree: String,
    /// Keys logged since the tap went on that it waits for.
    writes: u64,
    /// The longest it waits; then it goes on.
    within: Duration,
}

/// How often a held scan looks whether it was told to give up.
const HOLD_LOOK_EVERY: Duration = Duration::from_millis(100);

/// `<writes>` (or `<writes>:<tree>`, `records` by default): the daemon's backups hold their
/// scan after that tree until that many keys were written meanwhile (at most a minute). Read in
/// builds with debug assertions only — the end-to-end test's hook; a release build ignores it.
const HOLD_ENV: &str = "QRBRIDGE_TEST_BACKUP_HOLD_WRITES";

impl Hold {
    /// [`HOLD_ENV`]'s hold, in a build with debug assertions.
    fn from_env() -> Option<Hold> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let text = std::env::var(HOLD_ENV).ok()?;
        let (writes, tree) = text.split_once(':').unwrap_or((text.as_str(), "records"));
        let writes = writes.trim().parse().ok()?;
        Some(Hold { after_tree: tree.to_owned(), writes, within: Duration::from_secs(60) })
    }
}

/// How a sled backup runs.
#[derive(Clone)]
pub struct BackupOptions {
    /// The most memory, in bytes, the writes made during the copy may take (the log between two
    /// drains, and the map of last values, as allocated); past it the backup is abandoned rather
    /// than take more.
    log_bytes_max: usize,
    /// Keys scanned between two drains of the log.
    batch_keys: usize,
    /// The free bytes of the backup's file system, instead of asking it (tests).
    space_available: Option<u64>,
    /// Holds the scan until writes raced it (tests).
    hold: Option<Hold>,
    /// Called after each drain during the scan (tests: to let writes in between).
    after_batch: Option<Hook>,
    /// Called while writes are stopped (tests: the store is then what the copy must be).
    at_gate: Option<Hook>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            log_bytes_max: 256 << 20,
            batch_keys: 4096,
            space_available: None,
            hold: None,
            after_batch: None,
            at_gate: None,
        }
    }
}

impl BackupOptions {
    /// The bound on the memory the writes made during the copy take, in bytes.
    pub fn log_bytes_max(mut self, bytes: usize) -> Self {
        self.log_bytes_max = bytes;
        self
    }

    #[cfg(test)]
    fn batch_keys(mut self, keys: usize) -> Self {
        self.batch_keys = keys.max(1);
        self
    }

    #[cfg(test)]
    fn space_available(mut self, bytes: u64) -> Self {
        self.space_available = Some(bytes);
        self
    }

    #[cfg(test)]
    fn hold_after(mut self, tree: &str, writes: u64) -> Self {
        let within = Duration::from_secs(60);
        self.hold = Some(Hold { after_tree: tree.to_owned(), writes, within });
        self
    }

    #[cfg(test)]
    fn after_batch(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.after_batch = Some(Arc::new(hook));
        self
    }

    #[cfg(test)]
    fn at_gate(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.at_gate = Some(Arc::new(hook));
        self
    }
}

/// The last value of each key written during a copy (`None`: removed), by tree; and what it
/// holds in memory.
#[derive(Default)]
struct Overrides {
    keys: HashMap<(TreeId, sled::IVec), Option<sled::IVec>>,
    /// Heap bytes of the keys and values held, beyond the table's own.
    heap: usize,
}

impl Overrides {
    /// Takes `writes` in order: a later write of a key replaces an earlier one.
    fn take(&mut self, writes: Vec<Written>, bytes_max: usize) -> Result<(), BackupError> {
        for w in writes {
            let (key_heap, value_heap) = (heap(&w.key), heap_of(&w.value));
            match self.keys.insert((w.tree, w.key), w.value) {
                // The key held already stays; the new one is dropped.
                Some(old) => self.heap = self.heap - heap_of(&old) + value_heap,
                None => self.heap += key_heap + value_heap,
            }
        }
        if self.bytes() > bytes_max {
            return Err(BackupError::TooManyWrites(bytes_max));
        }
        Ok(())
    }

    /// What it holds in memory: its table as allocated (a slot and a control byte for each of
    /// capacity × 8/7 buckets), and the keys' and values' own allocations.
    fn bytes(&self) -> usize {
        type Slot = ((TreeId, sled::IVec), Option<sled::IVec>);
        let buckets = self.keys.capacity().saturating_mul(8) / 7;
        buckets.saturating_mul(std::mem::size_of::<Slot>() + 1).saturating_add(self.heap)
    }
}

impl SledStore {
    /// Copies the store into `dir` (absolute; new, or empty) as it stands at one instant, while
    /// it keeps serving (see the module's docs): `dir/db.kv`, every tree's keys and values, then
    /// `dir/backup.json`. Blocks the calling thread for as long as the copy takes. On failure
    /// what it created is removed.
    pub fn backup(
        &self,
        dir: &Path,
        clock: &dyn crate::clock::Clock,
    ) -> Result<Manifest, BackupError> {
        let mut options = self.backup_options.clone();
        if options.hold.is_none() {
            options.hold = Hold::from_env();
        }
        self.backup_with(dir, clock, &options)
    }

    /// [`SledStore::backup`] with its limits (and, in tests, hooks).
    pub fn backup_with(
        &self,
        dir: &Path,
        clock: &dyn crate::clock::Clock,
        options: &BackupOptions,
    ) -> Result<Manifest, BackupError> {
        let started_at = clock.now();
        let started = Instant::now();
        // One at a time, refused before the folder is touched; and only where it fits.
        let tapping = self.tap.begin(options.log_bytes_max)?;
        self.backups.check_dir(dir)?;
        backup::check_space(dir, self.size_on_disk()?, options.space_available)?;
        let target = backup::Target::prepare(dir, &self.backups)?;
        let copied = self.copy_into(&target, tapping, clock, options);
        let m = target.finish(copied, started_at, started)?;
        tracing::info!(
            dir = %dir.display(),
            pause_us = m.pause_us,
            pause_wait_us = m.pause_wait_us,
            writes_during = m.writes_during,
            took_ms = m.took_ms,
            "store backup written"
        );
        Ok(m)
    }

    /// `Err` once the daemon said to give up.
    fn go_on(&self) -> Result<(), BackupError> {
        if self.backups.cancelled() {
            return Err(BackupError::Cancelled);
        }
        Ok(())
    }

    fn copy_into(
        &self,
        target: &backup::Target,
        tapping: Tapping<'_>,
        clock: &dyn crate::clock::Clock,
        options: &BackupOptions,
    ) -> Result<Manifest, BackupError> {
        let max = options.log_bytes_max;
        // The scan: every tree there is (those the store writes, and any other), as it reads.
        let scan_path = target.path().join(format!("{}.scan", backup::SLED_DUMP));
        let mut scan = dump::Writer::create(&scan_path)?;
        let mut overrides = Overrides::default();
        let mut writes_during = 0u64;
        let mut take = |overrides: &mut Overrides, log: Vec<Written>| {
            writes_during += log.len() as u64;
            overrides.take(log, max)?;
            tapping.holding(overrides.bytes());
            Ok::<_, BackupError>(())
        };
        let names = self.db.tree_names();
        for name in &names {
            let tree = self.db.open_tree(name).map_err(StoreError::from)?;
            scan.tree(name)?;
            for (n, kv) in tree.iter().enumerate() {
                self.go_on()?;
                let (k, v) = kv.map_err(StoreError::from)?;
                scan.put(name, &k, &v)?;
                if (n + 1) % options.batch_keys == 0 {
                    // What was written meanwhile, kept as each key's last value.
                    take(&mut overrides, tapping.drain()?)?;
                    if let Some(h) = &options.after_batch {
                        h();
                    }
                }
            }
            if let Some(hold) =
                options.hold.as_ref().filter(|h| h.after_tree.as_bytes() == &name[..])
            {
                let cancelled = || self.backups.cancelled();
                if !tapping.wait_for_writes(hold.writes, hold.within, &cancelled) {
                    tracing::warn!(
                        writes = hold.writes,
                        tree = %hold.after_tree,
                        "the backup's hold ended before that many keys were written"
                    );
                }
                self.go_on()?;
                take(&mut overrides, tapping.drain()?)?;
            }
        }
        // Not synced: it is read once, below, and deleted.
        scan.finish_unsynced()?;

        // The gate: the rest of the log, and the instant the copy is of.
        let ((rest, next_id, taken_at), pause) = tapping.finish(|rest| {
            let next_id = self.db.generate_id().map_err(StoreError::from)?;
            if let Some(h) = &options.at_gate {
                h();
            }
            Ok((rest, next_id, clock.now()))
        })?;
        writes_during += rest.len() as u64;
        overrides.take(rest, max)?;

        // The copy: the scan, each key written meanwhile replaced by its last value (or
        // dropped, removed).
        let path = target.path().join(backup::SLED_DUMP);
        let mut out = dump::Writer::create(&path)?;
        for name in &names {
            out.tree(name)?;
        }
        for entry in dump::Reader::open(&scan_path)? {
            self.go_on()?;
            let (tree, k, v) = entry?;
            let written = TreeId::of(&tree)
                .is_some_and(|t| overrides.keys.contains_key(&(t, sled::IVec::from(k.as_slice()))));
            if !written {
                out.put(&tree, &k, &v)?;
            }
        }
        let mut last: Vec<_> = overrides.keys.into_iter().collect();
        last.sort_by(|a, b| (a.0 .0.name(), &a.0 .1).cmp(&(b.0 .0.name(), &b.0 .1)));
        for ((tree, k), v) in last {
            if let Some(v) = v {
                out.put(tree.name().as_bytes(), &k, &v)?;
            }
        }
        let (sha256, collections) = out.finish()?;
        std::fs::remove_file(&scan_path).map_err(|e| BackupError::Io(e.to_string()))?;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Ok(Manifest {
            next_id: Some(next_id),
            sha256: Some(sha256),
            taken_at,
            collections,
            writes_during,
            pause_us: micros(pause.held),
            pause_wait_us: micros(pause.waited),
            ..Manifest::new("sled", taken_at)
        })
    }
}

/// Builds the sled store at `path` (new) from the dump at `from` — `trees` (made even when
/// empty), every key and value, its id generator past `next_id` — and closes it; returns the
/// records per tree. Offline: the store is no process's yet.
pub(super) fn build<'a>(
    from: &Path,
    path: &Path,
    trees: impl IntoIterator<Item = &'a str>,
    next_id: u64,
) -> Result<BTreeMap<String, u64>, BackupError> {
    let db = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .map_err(StoreError::from)?;
    let mut counts = BTreeMap::new();
    for t in trees {
        db.open_tree(t).map_err(StoreError::from)?;
        counts.insert(t.to_owned(), 0);
    }
    let mut batch: Option<(Vec<u8>, sled::Batch, usize)> = None;
    let apply = |db: &sled::Db, (tree, b, _): (Vec<u8>, sled::Batch, usize)| {
        db.open_tree(tree).and_then(|t| t.apply_batch(b)).map_err(StoreError::from)
    };
    for entry in dump::Reader::open(from)? {
        let (tree, k, v) = entry?;
        *counts.entry(String::from_utf8_lossy(&tree).into_owned()).or_insert(0) += 1;
        let full = batch.as_ref().is_some_and(|(t, _, n)| *t != tree || *n == BUILD_BATCH);
        if full {
            apply(&db, batch.take().expect("checked"))?;
        }
        let (_, b, n) = batch.get_or_insert_with(|| (tree.clone(), sled::Batch::default(), 0));
        b.insert(k, v);
        *n += 1;
    }
    if let Some(b) = batch.take() {
        apply(&db, b)?;
    }
    db.flush().map_err(StoreError::from)?;
    drop(db);
    idgen_past(path, next_id)?;
    Ok(counts)
}

/// The interval at which sled persists its id generator, by default (the store's): a
/// persisted value is always a multiple of it.
const SLED_IDGEN_INTERVAL: u64 = 1_000_000;

/// Moves the id generator of the sled store at `path` (closed; its generator never drawn from)
/// past `next_id`, in constant time. sled reopens a store with its generator at the persisted
/// value (0 here) plus twice its persist interval, and persists, when an id crosses a multiple
/// of the interval, that multiple. So the store is reopened with an interval of half the first
/// multiple of sled's own interval at or past `next_id`; the first id drawn is that multiple,
/// and drawing it persists it: every later open, with sled's own interval, starts past it.
fn idgen_past(path: &Path, next_id: u64) -> Result<(), BackupError> {
    let interval = next_id.div_ceil(SLED_IDGEN_INTERVAL).max(1) * (SLED_IDGEN_INTERVAL / 2);
    backup::wait_released(path).map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))?;
    let db = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .idgen_persist_interval(interval)
        .open()
        .map_err(StoreError::from)?;
    let drawn = db.generate_id().map_err(StoreError::from)?;
    if drawn < next_id {
        // Only a store whose generator was drawn from already gets here: a broken invariant.
        return Err(BackupError::Io(format!(
            "{}: the id generator starts at {drawn}, before {next_id}",
            path.display()
        )));
    }
    db.flush().map_err(StoreError::from)?;
    drop(db);
    // Closed when this returns: whoever opens it next finds it free.
    backup::wait_released(path).map_err(|e| BackupError::Io(format!("{}: {e}", path.display())))
}

/// Keys per batch when a store is built from a dump.
const BUILD_BATCH: usize = 4096;

/// The dump a sled backup is: its trees' keys and values, in a plain framed file, checksummed.
///
/// `QRBKV1\n`, then frames: `T` (u16 length, a tree's name: the frames after it are its keys),
/// `P` (u32 length, key; u32 length, value), and last `E` (u64 frames `P` in all), so a file cut
/// short is told from a whole one. Lengths big-endian. Independent of sled's own file format.
pub(super) mod dump {
    use std::io::{BufReader, BufWriter, Read, Write};
    use std::path::{Path, PathBuf};

    use sha2::{Digest, Sha256};

    use crate::store::backup::{BackupError, Collection};

    const MAGIC: &[u8] = b"QRBKV1\n";

    fn io(path: &Path, e: std::io::Error) -> BackupError {
        BackupError::Io(format!("{}: {e}", path.display()))
    }

    /// Writes a dump, counting and hashing as it goes.
    pub struct Writer {
        path: PathBuf,
        out: BufWriter<std::fs::File>,
        hash: Sha256,
        tree: Option<Vec<u8>>,
        frames: u64,
        counts: std::collections::BTreeMap<String, Collection>,
    }

    impl Writer {
        /// A new file (refused if one is there), readable by the daemon's user only.
        pub fn create(path: &Path) -> Result<Writer, BackupError> {
            let f = crate::store::backup::create_file(path).map_err(|e| io(path, e))?;
            let mut w = Writer {
                path: path.to_owned(),
                out: BufWriter::with_capacity(1 << 20, f),
                hash: Sha256::new(),
                tree: None,
                frames: 0,
                counts: Default::default(),
            };
            w.write(MAGIC)?;
            Ok(w)
        }

        fn write(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
            self.hash.update(bytes);
            self.out.write_all(bytes).map_err(|e| io(&self.path, e))
        }

        fn len32(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
            let n = u32::try_from(bytes.len())
                .map_err(|_| BackupError::Io(format!("a record of {} bytes", bytes.len())))?;
            self.write(&n.to_be_bytes())?;
            self.write(bytes)
        }

        /// The keys that follow are `tree`'s (which is counted even if none follow).
        pub fn tree(&mut self, tree: &[u8]) -> Result<(), BackupError> {
            if self.tree.as_deref() != Some(tree) {
                let n = u16::try_from(tree.len())
                    .map_err(|_| BackupError::Io("a tree name over 64 KiB".into()))?;
                self.write(b"T")?;
                self.write(&n.to_be_bytes())?;
                self.write(tree)?;
                self.tree = Some(tree.to_owned());
            }
            self.counts.entry(String::from_utf8_lossy(tree).into_owned()).or_default();
            Ok(())
        }

        pub fn put(&mut self, tree: &[u8], key: &[u8], value: &[u8]) -> Result<(), BackupError> {
            self.tree(tree)?;
            self.write(b"P")?;
            self.len32(key)?;
            self.len32(value)?;
            self.frames += 1;
            let c = self.counts.entry(String::from_utf8_lossy(tree).into_owned()).or_default();
            c.records += 1;
            c.bytes += (key.len() + value.len()) as u64;
            Ok(())
        }

        /// Ends the dump and syncs it; its SHA-256 (hex) and what it holds per tree.
        pub fn finish(
            self,
        ) -> Result<(String, std::collections::BTreeMap<String, Collection>), BackupError> {
            let (f, path, done) = self.end()?;
            f.sync_all().map_err(|e| io(&path, e))?;
            Ok(done)
        }

        /// Ends the dump without syncing it: for a file read back at once and deleted.
        pub fn finish_unsynced(self) -> Result<(), BackupError> {
            self.end().map(drop)
        }

        #[allow(clippy::type_complexity)]
        fn end(
            mut self,
        ) -> Result<
            (std::fs::File, PathBuf, (String, std::collections::BTreeMap<String, Collection>)),
            BackupError,
        > {
            self.write(b"E")?;
            let frames = self.frames.to_be_bytes();
            self.write(&frames)?;
            let f = self.out.into_inner().map_err(|e| io(&self.path, e.into_error()))?;
            Ok((f, self.path, (hex::encode(self.hash.finalize()), self.counts)))
        }
    }

    /// One key of a dump: its tree's name, the key, the value.
    pub type Entry = (Vec<u8>, Vec<u8>, Vec<u8>);

    /// Reads a dump: its [`Entry`]s in order; an error for a file cut short or damaged.
    pub struct Reader {
        path: PathBuf,
        inp: BufReader<std::fs::File>,
        tree: Option<Vec<u8>>,
        frames: u64,
        ended: bool,
    }

    impl Reader {
        pub fn open(path: &Path) -> Result<Reader, BackupError> {
            let f = std::fs::File::open(path).map_err(|e| io(path, e))?;
            let mut r = Reader {
                path: path.to_owned(),
                inp: BufReader::with_capacity(1 << 20, f),
                tree: None,
                frames: 0,
                ended: false,
            };
            let mut magic = [0u8; MAGIC.len()];
            r.exact(&mut magic)?;
            if magic != MAGIC {
                return Err(r.damaged("not a qrbridge dump"));
            }
            Ok(r)
        }

        fn damaged(&self, why: &str) -> BackupError {
            BackupError::Io(format!("{}: damaged ({why})", self.path.display()))
        }

        fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
            self.inp.read_exact(buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => self.damaged("cut short"),
                _ => io(&self.path, e),
            })
        }

        fn bytes(&mut self, n: usize) -> Result<Vec<u8>, BackupError> {
            let mut v = vec![0u8; n];
            self.exact(&mut v)?;
            Ok(v)
        }

        fn len32(&mut self) -> Result<Vec<u8>, BackupError> {
            let mut n = [0u8; 4];
            self.exact(&mut n)?;
            self.bytes(u32::from_be_bytes(n) as usize)
        }

        fn next_entry(&mut self) -> Result<Option<Entry>, BackupError> {
            loop {
                let mut kind = [0u8; 1];
                self.exact(&mut kind)?;
                match &kind {
                    b"T" => {
                        let mut n = [0u8; 2];
                        self.exact(&mut n)?;
                        self.tree = Some(self.bytes(u16::from_be_bytes(n) as usize)?);
                    }
                    b"P" => {
                        let tree = self.tree.clone().ok_or_else(|| self.damaged("no tree"))?;
                        let (k, v) = (self.len32()?, self.len32()?);
                        self.frames += 1;
                        return Ok(Some((tree, k, v)));
                    }
                    b"E" => {
                        let mut n = [0u8; 8];
                        self.exact(&mut n)?;
                        if u64::from_be_bytes(n) != self.frames {
                            return Err(self.damaged("record count"));
                        }
                        if self.inp.read(&mut [0u8; 1]).map_err(|e| io(&self.path, e))? != 0 {
                            return Err(self.damaged("bytes after the end"));
                        }
                        return Ok(None);
                    }
                    _ => return Err(self.damaged("unknown frame")),
                }
            }
        }
    }

    impl Iterator for Reader {
        type Item = Result<Entry, BackupError>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.ended {
                return None;
            }
            match self.next_entry() {
                Ok(Some(e)) => Some(Ok(e)),
                Ok(None) => {
                    self.ended = true;
                    None
                }
                Err(e) => {
                    self.ended = true;
                    Some(Err(e))
                }
            }
        }
    }

    /// The SHA-256 (hex) of the file at `path`.
    pub fn sha256(path: &Path) -> Result<String, BackupError> {
        let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(|e| io(path, e))?;
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    //! A copy taken while writes race equals the store at the gate: writer threads keep writing
    //! through every kind of write the store has while the scan is held between its batches
    //! until they have made progress, and the store's every tree is read at the gate (writes
    //! stopped) and compared key by key with the copy.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex};

    use chrono::{DateTime, Utc};
    use qrbridge_fx::{Amount, Currency};

    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::model::*;
    use crate::store::{Begin, Change, Work};

    type Trees = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

    fn trees(db: &sled::Db) -> Trees {
        let mut out = Trees::new();
        for name in db.tree_names() {
            let t = db.open_tree(&name).unwrap();
            let kvs = t.iter().map(|kv| kv.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec()));
            out.insert(name.to_vec(), kvs.collect());
        }
        out
    }

    fn now() -> DateTime<Utc> {
        SystemClock.now()
    }

    fn quote(at: DateTime<Utc>, ttl: chrono::Duration) -> QuoteRecord {
        let config = qrbridge_config::from_str("", &std::env::temp_dir()).unwrap();
        let rates = crate::rates::load(&config.fx, at);
        let spreads = qrbridge_fx::SpreadPolicy::new(
            "50".parse().unwrap(),
            "0".parse().unwrap(),
            "500".parse().unwrap(),
        )
        .unwrap();
        let req = qrbridge_fx::QuoteRequest {
            partner: "partner-demo",
            pay: Amount::from_minor(Currency::CNY, 2_372).unwrap(),
            wallet_currency: Currency::from_code("PHP").unwrap(),
            now: at,
            ttl,
        };
        QuoteRecord {
            v: RECORD_VERSION,
            quote_id: new_id("quo"),
            partner: "partner-demo".into(),
            code: CodeRef {
                scheme: "EMVCO".into(),
                code_type: "STATIC".into(),
                text: "0002010102110000".into(),
                acquirer: "sandbox".into(),
                merchant_id: "500034453110001".into(),
                merchant: MerchantAnswer {
                    id: None,
                    name: None,
                    city: None,
                    country: None,
                    mcc: None,
                },
            },
            quote: qrbridge_fx::Quote::price(&req, &rates, &spreads).unwrap(),
        }
    }

    fn event(p: &PaymentRecord, kind: &str, at: DateTime<Utc>) -> OutboxEvent {
        OutboxEvent {
            v: RECORD_VERSION,
            event_id: new_id("evt"),
            partner: p.partner.clone(),
            kind: kind.into(),
            payment_id: p.payment_id.clone(),
            created_at: at,
            data: serde_json::json!({"payment_id": p.payment_id}),
            replayed_at: None,
        }
    }

    /// Writes made so far, and a signal each time.
    #[derive(Default)]
    struct Progress {
        writes: Mutex<u64>,
        moved: Condvar,
    }

    impl Progress {
        fn wrote(&self) {
            *self.writes.lock().unwrap() += 1;
            self.moved.notify_all();
        }

        /// Waits until `n` more writes were made.
        fn wait_for(&self, n: u64) {
            let mut w = self.writes.lock().unwrap();
            let until = *w + n;
            while *w < until {
                w = self.moved.wait(w).unwrap();
            }
        }
    }

    /// One writer's loop: payments begun and moved through their states (journal entries,
    /// running totals, events), events delivered, parked, put back and purged, quotes purged,
    /// admin changes — every kind of write, many keys written again and again.
    fn writer(s: &SledStore, n: usize, stop: &AtomicBool, progress: &Progress) {
        let mut round = 0u64;
        while !stop.load(Ordering::SeqCst) {
            round += 1;
            let at = now();
            // A quote that expired long ago, for the purge to take.
            let mut old = quote(at - chrono::Duration::hours(2), chrono::Duration::minutes(1));
            old.quote_id = format!("quo_0old{n}{round:08}");
            s.put_quote(&old).unwrap();
            progress.wrote();
            let q = quote(at, chrono::Duration::minutes(5));
            s.put_quote(&q).unwrap();
            progress.wrote();
            let request = format!("w{n}-{round}");
            let p = PaymentRecord::pending(&q, &request, &"a".repeat(64), "payer-1", None, at);
            let work = WorkItem::new(&p.payment_id, Task::Inquire, at, 0);
            assert!(matches!(s.begin_payment(&p, &work, at).unwrap(), Begin::Created));
            progress.wrote();
            let mut next = p.successor(at);
            next.state = PaymentState::Succeeded;
            next.booked = true;
            let done = event(&next, "payment.succeeded", at);
            s.apply(&Change {
                journal: Some(crate::ledger::payment(&next, at)),
                events: vec![done.clone()],
                work: Work::Done,
                ..Change::of(next.clone())
            })
            .unwrap();
            progress.wrote();
            if round % 2 == 0 {
                // A refund: its claim, record and indexes.
                let refund = RefundRecord {
                    v: RECORD_VERSION,
                    refund_id: new_id("ref"),
                    payment_id: next.payment_id.clone(),
                    partner: next.partner.clone(),
                    acquirer: next.acquirer.clone(),
                    acquirer_refund_id: format!("ar-{n}-{round}"),
                    request_hash: "r".repeat(64),
                    amount: Amount::from_minor(Currency::CNY, 100).unwrap(),
                    wallet_amount: Amount::from_minor(next.wallet.currency(), 800).unwrap(),
                    reason: "returned".into(),
                    created_at: at,
                };
                s.apply(&Change { refund: Some(refund), ..Change::of(next.successor(at)) })
                    .unwrap();
                progress.wrote();
            }
            let (seq, _) = s
                .outbox()
                .unwrap()
                .into_iter()
                .find(|(_, e)| e.event_id == done.event_id)
                .expect("the event waits");
            if round % 3 == 0 {
                let parked = ParkedEvent {
                    v: RECORD_VERSION,
                    event: done,
                    parked_at: at,
                    attempts: 3,
                    last_error: "x".into(),
                };
                s.park(seq, &parked).unwrap();
                progress.wrote();
                if round % 2 == 0 {
                    assert!(s.unpark(&parked.event.event_id, at).unwrap());
                } else {
                    assert_eq!(s.purge_parked(&[seq]).unwrap(), 1);
                }
                progress.wrote();
            } else {
                let d = DeliveredEvent {
                    v: RECORD_VERSION,
                    event: done,
                    delivered_at: at,
                    attempts: 1,
                    skipped: false,
                };
                s.delivered(seq, &d).unwrap();
                progress.wrote();
            }
            if round % 5 == 0 {
                s.purge_quotes(None, at - chrono::Duration::hours(1), 8).unwrap();
                progress.wrote();
            }
            if round % 4 == 0 {
                let draft = AuditDraft {
                    at,
                    actor: format!("admin-{n}"),
                    action: "test.change".into(),
                    target: "spreads".into(),
                    before: serde_json::Value::Null,
                    after: serde_json::json!({"round": round}),
                };
                // One key rewritten by every writer, others added and removed.
                let key = format!("test/{n}/{}", round % 3);
                let value = (round % 2 == 0).then(|| round.to_be_bytes().to_vec());
                s.admin_commit(
                    &draft,
                    &[("test/shared".into(), Some(round.to_be_bytes().to_vec())), (key, value)],
                )
                .unwrap();
                progress.wrote();
            }
        }
    }

    /// Writer threads on a store, until stopped.
    struct Writers {
        stop: Arc<AtomicBool>,
        progress: Arc<Progress>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Writers {
        fn start(store: &Arc<SledStore>, threads: usize) -> Writers {
            let stop = Arc::new(AtomicBool::new(false));
            let progress = Arc::new(Progress::default());
            let threads = (0..threads)
                .map(|n| {
                    let (s, stop, p) = (store.clone(), stop.clone(), progress.clone());
                    std::thread::spawn(move || writer(&s, n, &stop, &p))
                })
                .collect();
            Writers { stop, progress, threads }
        }

        fn stop(self) {
            self.stop.store(true, Ordering::SeqCst);
            for t in self.threads {
                t.join().unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_taken_while_writes_race_is_the_store_at_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db"), 8 << 20).unwrap());
        let writers = Writers::start(&store, 4);
        let progress = writers.progress.clone();
        // Some history before the copy starts.
        progress.wait_for(400);

        let at_gate: Arc<Mutex<Option<Trees>>> = Arc::default();
        let (s, p, seen) = (store.clone(), progress.clone(), at_gate.clone());
        let options = BackupOptions::default()
            .batch_keys(16)
            // Between batches of the scan, writes go on: keys ahead of the scan and behind it
            // change, and some are written again many times.
            .after_batch(move || p.wait_for(2))
            .at_gate(move || *seen.lock().unwrap() = Some(trees(&s.db)));
        let backup = dir.path().join("backup");
        let s = store.clone();
        let b = backup.clone();
        let manifest =
            tokio::task::spawn_blocking(move || s.backup_with(&b, &SystemClock, &options))
                .await
                .unwrap()
                .unwrap();
        writers.stop();

        let expected = at_gate.lock().unwrap().take().expect("the hook ran at the gate");
        let built = dir.path().join("built");
        let names = manifest.collections.keys().map(String::as_str);
        build(&backup.join(backup::SLED_DUMP), &built, names, manifest.next_id.unwrap()).unwrap();
        let copy = sled::open(&built).unwrap();
        let got = trees(&copy);
        assert!(manifest.writes_during > 100, "the copy raced few writes: {manifest:?}");
        for (name, kvs) in &expected {
            let name_s = String::from_utf8_lossy(name);
            let mine = got.get(name).unwrap_or_else(|| panic!("tree {name_s} missing"));
            let missing: Vec<_> = kvs.keys().filter(|k| !mine.contains_key(*k)).take(3).collect();
            let extra: Vec<_> = mine.keys().filter(|k| !kvs.contains_key(*k)).take(3).collect();
            let differ: Vec<_> =
                kvs.iter().filter(|(k, v)| mine.get(*k).is_some_and(|m| m != *v)).take(3).collect();
            assert!(
                missing.is_empty() && extra.is_empty() && differ.is_empty(),
                "tree {name_s}: missing {missing:?}, extra {extra:?}, different {differ:?}"
            );
            assert_eq!(manifest.collections[name_s.as_ref()].records, kvs.len() as u64, "{name_s}");
        }
        assert_eq!(got.len(), expected.len());
        // The copy's sequences go on after the store's.
        let next = copy.generate_id().unwrap();
        assert!(next >= manifest.next_id.unwrap(), "{next} {manifest:?}");
        drop(copy);
        let (records, _) = store.audit_log().unwrap();
        assert!(!records.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopened_copy_sequences_after_everything_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 8 << 20).unwrap();
        // Ids drawn well past a fresh store's first ones.
        for _ in 0..50_000 {
            store.db.generate_id().unwrap();
        }
        let drawn = store.db.generate_id().unwrap();
        let backup = dir.path().join("backup");
        let m = store.backup(&backup, &SystemClock).unwrap();
        assert!(m.next_id.unwrap() > drawn);
        let built = dir.path().join("built");
        let trees = m.collections.keys().map(String::as_str);
        build(&backup.join(backup::SLED_DUMP), &built, trees, m.next_id.unwrap()).unwrap();
        let restored = SledStore::open(&built, 8 << 20).unwrap();
        assert!(restored.db.generate_id().unwrap() > drawn);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_many_writes_during_a_copy_abandon_it_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db"), 8 << 20).unwrap());
        let writers = Writers::start(&store, 2);
        let progress = writers.progress.clone();
        progress.wait_for(200);
        let p = progress.clone();
        let options = BackupOptions::default()
            .log_bytes_max(4096)
            .batch_keys(8)
            .after_batch(move || p.wait_for(4));
        let backup = dir.path().join("backup");
        let (s, b) = (store.clone(), backup.clone());
        let got = tokio::task::spawn_blocking(move || s.backup_with(&b, &SystemClock, &options))
            .await
            .unwrap();
        assert!(matches!(got, Err(BackupError::TooManyWrites(4096))), "{got:?}");
        assert!(!backup.exists(), "an abandoned backup leaves nothing");
        // The tap is off and free again: the next backup runs, and writes went on throughout.
        let before = *progress.writes.lock().unwrap();
        progress.wait_for(10);
        assert!(*progress.writes.lock().unwrap() >= before + 10);
        let (s, b) = (store.clone(), backup.clone());
        tokio::task::spawn_blocking(move || s.backup(&b, &SystemClock)).await.unwrap().unwrap();
        writers.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_store_sequences_past_a_huge_next_id_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 8 << 20).unwrap();
        let backup = dir.path().join("backup");
        let m = store.backup(&backup, &SystemClock).unwrap();
        store.close().await;
        // Drawing ids one by one up to here would take hours: the build takes constant time.
        let next_id = 1_000_000_000_000u64;
        let built = dir.path().join("built");
        let trees = m.collections.keys().map(String::as_str);
        build(&backup.join(backup::SLED_DUMP), &built, trees, next_id).unwrap();
        // Opened as the daemon opens it, twice (every open moves the generator on).
        for _ in 0..2 {
            backup::wait_released(&built).unwrap();
            let restored = SledStore::open(&built, 8 << 20).unwrap();
            let id = restored.db.generate_id().unwrap();
            assert!(id > next_id, "{id} <= {next_id}");
            // And not far past it: a restore of a restore does not double the ids.
            assert!(id < next_id + 10_000_000, "{id}");
            restored.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_held_until_writes_raced_it_carries_them_into_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db"), 8 << 20).unwrap());
        let writers = Writers::start(&store, 2);
        writers.progress.wait_for(100);
        let at_gate: Arc<Mutex<Option<Trees>>> = Arc::default();
        let (s, seen) = (store.clone(), at_gate.clone());
        // Held once the records tree is read: every write to it then is behind the scan, and
        // only the tap carries it into the copy.
        let options = BackupOptions::default()
            .hold_after("records", 300)
            .at_gate(move || *seen.lock().unwrap() = Some(trees(&s.db)));
        let backup = dir.path().join("backup");
        let (s, b) = (store.clone(), backup.clone());
        let m = tokio::task::spawn_blocking(move || s.backup_with(&b, &SystemClock, &options))
            .await
            .unwrap()
            .unwrap();
        writers.stop();
        assert!(m.writes_during >= 300, "{m:?}");
        let expected = at_gate.lock().unwrap().take().unwrap();
        let built = dir.path().join("built");
        let names = m.collections.keys().map(String::as_str);
        build(&backup.join(backup::SLED_DUMP), &built, names, m.next_id.unwrap()).unwrap();
        assert_eq!(trees(&sled::open(&built).unwrap()), expected);
        // The backup's own: a folder and files of the daemon's user only, no scan left.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&backup), 0o700);
        let mut names: Vec<String> = std::fs::read_dir(&backup)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [backup::MANIFEST, backup::SLED_DUMP]);
        for name in names {
            assert_eq!(mode(&backup.join(&name)), 0o600, "{name}");
        }
    }

    #[tokio::test]
    async fn a_folder_that_was_there_is_made_the_daemons_users_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 8 << 20).unwrap();
        let backup = dir.path().join("backup");
        std::fs::create_dir(&backup).unwrap();
        std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o755)).unwrap();
        store.backup(&backup, &SystemClock).unwrap();
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn a_backup_that_would_not_fit_is_refused_before_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 8 << 20).unwrap();
        let size = store.size_on_disk().unwrap();
        let needed = backup::space_needed(size);
        assert!(needed >= 2 * size + (64 << 20), "{needed} for {size}");
        let backup = dir.path().join("backup");
        let options = BackupOptions::default().space_available(needed - 1);
        let got = store.backup_with(&backup, &SystemClock, &options);
        match got {
            Err(BackupError::NoSpace { needed: n, available, .. }) => {
                assert_eq!((n, available), (needed, needed - 1))
            }
            other => panic!("{other:?}"),
        }
        assert!(!backup.exists(), "nothing is made");
        let options = BackupOptions::default().space_available(needed);
        store.backup_with(&backup, &SystemClock, &options).unwrap();
        // Nor into the store's own folder.
        let inside = dir.path().join("db").join("backup");
        let got = store.backup(&inside, &SystemClock);
        assert!(
            matches!(&got, Err(BackupError::Refused(m)) if m.contains("own folders")),
            "{got:?}"
        );
        assert!(!inside.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_gives_up_when_the_daemon_stops_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db"), 8 << 20).unwrap());
        let writers = Writers::start(&store, 1);
        writers.progress.wait_for(200);
        writers.stop();
        for made in [true, false] {
            let backup = dir.path().join(format!("backup-{made}"));
            if !made {
                std::fs::create_dir(&backup).unwrap();
            }
            let s = store.clone();
            // The daemon stops while the scan runs.
            let options =
                BackupOptions::default().batch_keys(4).after_batch(move || s.backups.cancel());
            let (s, b) = (store.clone(), backup.clone());
            let got =
                tokio::task::spawn_blocking(move || s.backup_with(&b, &SystemClock, &options))
                    .await
                    .unwrap();
            assert!(matches!(got, Err(BackupError::Cancelled)), "{got:?}");
            assert_eq!(got.unwrap_err().code(), "BACKUP_ABANDONED");
            if made {
                assert!(!backup.exists(), "the folder it made is removed");
            } else {
                assert_eq!(std::fs::read_dir(&backup).unwrap().count(), 0, "emptied");
            }
            // The next backup (the admin API's `begin` says go) runs.
            store.backups.begin(&backup, "admin", now()).unwrap();
            let (s, b) = (store.clone(), backup.clone());
            let done = tokio::task::spawn_blocking(move || s.backup(&b, &SystemClock)).await;
            let done = done.unwrap();
            store.backups.finish(&done, now());
            done.unwrap();
        }
    }

    #[tokio::test]
    async fn one_backup_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), 8 << 20).unwrap();
        let first = store.tap.begin(1 << 20).unwrap();
        let second = store.backup(&dir.path().join("backup"), &SystemClock);
        assert!(matches!(second, Err(BackupError::InProgress(_))), "{second:?}");
        assert!(!dir.path().join("backup").exists());
        drop(first);
        store.backup(&dir.path().join("backup"), &SystemClock).unwrap();
    }
}
