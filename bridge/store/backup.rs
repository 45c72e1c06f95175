//! Backups of the store: `qrbridge store backup DIR` (a consistent copy while the daemon runs)
//! and `qrbridge store restore DIR` (the daemons stopped).
//!
//! A backup is a folder: the store's copy (`db.kv`, every sled tree's keys and values in one
//! checksummed file; or `tables/`, one file per PostgreSQL table) and `backup.json`, the
//! [`Manifest`], written last — after every file of the copy is synced — so a folder without one
//! is a backup that did not finish, and restore refuses it. The folder (`0700`, even when it
//! existed) and its files (`0600`) are the daemon's user's only: it holds every payment.
//!
//! **Consistent.** A backup is the store as it stood at one instant (`taken_at`):
//! - sled ([`super::sled_backup`], with the argument): every write also goes to a log while the
//!   store is read into the copy; then writes are held once, for as long as the rest of the log
//!   takes to apply (microseconds to a few milliseconds: `pause_us`), and the copy is the store
//!   at that instant — a state a crash then, with everything flushed, would have left, which is
//!   what the store is built to open;
//! - PostgreSQL ([`super::postgres::backup`]): every table is read in one snapshot; writes are
//!   never held.
//!
//! **Taking one.** The copy is made by the daemon, on its host, asked through the admin API
//! (`POST /admin/v1/store/backup`, admin certificate, audited as `store.backup` before it starts,
//! so the copy holds its own record): sled lets one process open a store, and that process is the
//! daemon. `qrbridge store backup DIR --url … --pki …` asks for it and waits; `DIR` is a path on
//! the daemon's host, new or empty, and not inside the daemon's own folders (its store, and
//! whatever else the daemon names: [`Backups::keep_out`]). One backup at a time per daemon. It
//! is refused when the folder's file system has less free than about twice the store's size on
//! disk and some headroom ([`space_needed`]: a full disk under the store stops payments), and
//! abandoned — its folder emptied — when the daemon shuts down ([`Backups::cancel`]).
//!
//! **Restoring one** (the daemons stopped): `qrbridge store restore DIR --config FILE` (or
//! `--data-dir D` for sled, `--database-url URL` for PostgreSQL). It checks the manifest (a
//! newer qrbridge's backup is refused), refuses a target that holds a store — sled: unless
//! `--force`, which moves it aside to `<store>.before-restore-<time>`, never deleting it, and
//! never while a process has it open (sled's lock); PostgreSQL: always, restore into an empty
//! database or schema. A sled restore builds the store beside the target (`.<store>.restoring`,
//! one restore at a time: `.<store>.restore.lock`), checks its counts against the manifest,
//! opens it as the daemon would (so its format is checked), counts it and checks that its
//! ledger balances — and only then moves the old store aside and the new one into place. A
//! check that fails leaves the target as it was. A sled store folder that is missing while a
//! restore's traces lie beside it (its build, or a store it moved aside) is a restore that was
//! cut short between its two renames: the store refuses to open there
//! ([`refuse_after_interrupted_restore`]) rather than start an empty one, which would take
//! partners' retries as new payments. Then start the daemons.
//!
//! **What a restore means.** The bridge is back at `taken_at`:
//! - payments in doubt then (sent, outcome unknown) are resolved by asking the acquirer, as after
//!   a crash, and their partners told under a new event id (they may have heard the same outcome
//!   before, under another);
//! - payments made after `taken_at` are unknown to the bridge but known to the acquirer: the
//!   day's reconciliation lists them (`MISSING_AT_BRIDGE`); settle them by hand. A partner that
//!   sends such a request again gets a new payment: tell partners to hold retries until the
//!   restored daemon answers, and reconcile before they resume;
//! - webhook events delivered after `taken_at` are delivered again, under the same ids;
//! - admin changes after `taken_at` (rates, spreads) are gone: the audit log shows where it ends.
//!
//! Take backups often enough that this window is small, and keep the settlement files and the
//! PKI (plain files beside the store) with them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{SledStore, Store, StoreError};
use crate::clock::{Clock, SystemClock};

/// What `backup.json` names itself.
const FORMAT: &str = "qrbridge-backup";
/// The layout of a backup folder this build writes and reads.
const VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "backup.json";
/// The sled store's copy, inside a backup folder (see `sled_backup::dump`).
pub const SLED_DUMP: &str = "db.kv";

/// A backup's manifest (`backup.json`): what it holds and how it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `qrbridge-backup`.
    pub format: String,
    /// The folder's layout version.
    pub version: u32,
    /// `sled` or `postgres`.
    pub store: String,
    /// The record format byte of the build that took it (see `store::codec`); a build reads
    /// only formats up to its own.
    pub record_format: u8,
    /// The PostgreSQL schema version (migrations applied), for a PostgreSQL backup.
    pub schema_version: Option<u32>,
    pub qrbridge_version: String,
    /// The host the daemon ran on.
    pub host: String,
    pub started_at: DateTime<Utc>,
    /// The instant the copy is of (sled: when writes were stopped; PostgreSQL: the snapshot).
    pub taken_at: DateTime<Utc>,
    /// How long the whole backup took.
    pub took_ms: u64,
    /// Per tree (sled) or table (PostgreSQL): records and their bytes (keys and values).
    pub collections: BTreeMap<String, Collection>,
    /// Bytes of the backup's files.
    pub bytes: u64,
    /// Keys written while the copy ran, carried into it (sled).
    pub writes_during: u64,
    /// How long writes were held at the end of the copy, in microseconds (sled; 0 otherwise).
    pub pause_us: u64,
    /// Of that, how long until the writes in progress had ended.
    pub pause_wait_us: u64,
    /// Sequences the restored store hands out start here (sled's id generator).
    pub next_id: Option<u64>,
    /// The SHA-256 of the copy (sled's `db.kv`), checked before a restore.
    pub sha256: Option<String>,
}

/// One tree or table in a manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    pub records: u64,
    pub bytes: u64,
}

impl Manifest {
    /// A manifest of `store` taken at `taken_at`, with nothing counted yet.
    pub(super) fn new(store: &str, taken_at: DateTime<Utc>) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            store: store.into(),
            record_format: super::codec::FORMAT,
            schema_version: None,
            qrbridge_version: env!("CARGO_PKG_VERSION").into(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            started_at: taken_at,
            taken_at,
            took_ms: 0,
            collections: BTreeMap::new(),
            bytes: 0,
            writes_during: 0,
            pause_us: 0,
            pause_wait_us: 0,
            next_id: None,
            sha256: None,
        }
    }

    /// Reads the manifest of the backup at `dir`, refusing what this build cannot restore.
    pub fn read(dir: &Path) -> Result<Manifest, RestoreError> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RestoreError::Refused(format!(
                    "{} has no {MANIFEST}: it is not a backup, or one that did not finish (the \
                     manifest is written last)",
                    dir.display()
                )))
            }
            Err(e) => return Err(RestoreError::Failed(format!("{}: {e}", path.display()))),
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| {
            RestoreError::Refused(format!("{}: not a manifest: {e}", path.display()))
        })?;
        if m.format != FORMAT {
            return Err(RestoreError::Refused(format!(
                "{}: not a qrbridge backup",
                path.display()
            )));
        }
        if m.version > VERSION || m.record_format > super::codec::FORMAT {
            return Err(RestoreError::Refused(format!(
                "{}: written by a newer qrbridge ({}): restore it with that version or newer",
                path.display(),
                m.qrbridge_version
            )));
        }
        Ok(m)
    }
}

/// Why a backup was not made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackupError {
    /// Another backup is under way (into the folder named, when known).
    #[error("a backup is already under way{}", .0.as_ref().map(|d| format!(" (into {})", d.display())).unwrap_or_default())]
    InProgress(Option<PathBuf>),
    /// The folder cannot take a backup: not absolute, its parent missing, not empty.
    #[error("{0}")]
    Refused(String),
    /// This store cannot be backed up by the daemon.
    #[error("{0}")]
    Unsupported(String),
    /// What was written while the copy ran took more memory than the backup may keep
    /// (`storage.backup_log_bytes_max`): abandoned.
    #[error(
        "abandoned: the writes made while the copy ran took more than {0} bytes of memory \
         (storage.backup_log_bytes_max); try again when the store is quieter"
    )]
    TooManyWrites(usize),
    /// The folder's file system has less free space than the copy needs ([`space_needed`]):
    /// refused before anything was written.
    #[error(
        "not enough free space: the file system of {} has {available} bytes free, and a backup \
         of this store needs about {needed} (twice the store's size on disk, and headroom); free \
         some, or choose a folder on another file system",
        .dir.display()
    )]
    NoSpace { dir: PathBuf, needed: u64, available: u64 },
    /// The daemon is shutting down: the copy was abandoned, and what it wrote removed.
    #[error("abandoned: the daemon is shutting down")]
    Cancelled,
    /// Writing the backup failed (disk full, permissions…).
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BackupError {
    /// The stable code the admin API answers it with.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::InProgress(_) => "BACKUP_IN_PROGRESS",
            BackupError::Refused(_) => "INVALID_REQUEST",
            BackupError::Unsupported(_) => "BACKUP_UNSUPPORTED",
            BackupError::TooManyWrites(_) | BackupError::Cancelled => "BACKUP_ABANDONED",
            BackupError::NoSpace { .. } => "BACKUP_NO_SPACE",
            BackupError::Io(_) | BackupError::Store(_) => "BACKUP_FAILED",
        }
    }
}

fn io(what: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("{}: {e}", what.display()))
}

/// Checks that `dir` can take a backup, without touching it: absolute, its parent an existing
/// folder, itself missing or an empty folder, and not inside any of `keep_out` (the daemon's own
/// folders; compared with links resolved).
pub fn check_dir(dir: &Path, keep_out: &[PathBuf]) -> Result<(), BackupError> {
    if !dir.is_absolute() {
        return Err(BackupError::Refused(format!(
            "dir: {} is not an absolute path (the path is on the daemon's host)",
            dir.display()
        )));
    }
    let (Some(parent), Some(name)) =
        (dir.parent().filter(|p| !p.as_os_str().is_empty()), dir.file_name())
    else {
        return Err(BackupError::Refused(format!(
            "dir: {} names no folder in a parent folder",
            dir.display()
        )));
    };
    if !parent.is_dir() {
        return Err(BackupError::Refused(format!(
            "dir: {} does not exist on the daemon's host (the backup's folder is made in it)",
            parent.display()
        )));
    }
    // Where the folder really is: its parent's links resolved, and its own if it is one.
    let real = std::fs::canonicalize(parent).map_err(|e| io(parent, e))?.join(name);
    let real = std::fs::canonicalize(&real).unwrap_or(real);
    for kept in keep_out {
        let kept_real = std::fs::canonicalize(kept).unwrap_or_else(|_| kept.clone());
        if real.starts_with(&kept_real) {
            return Err(BackupError::Refused(format!(
                "dir: {} is inside {}, one of the daemon's own folders: put backups elsewhere",
                dir.display(),
                kept.display()
            )));
        }
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Refused(format!(
                    "dir: {} is not empty: a backup goes into a new or empty folder",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if dir.exists() && !dir.is_dir() => {
            Err(BackupError::Refused(format!("dir: {} is not a folder ({e})", dir.display())))
        }
        Err(e) => Err(io(dir, e)),
    }
}

/// Free space a backup leaves beyond its own size, at least: the rest of the disk is the
/// store's, and sled stops writing (payments with it) when it fills.
const SPACE_HEADROOM_MIN: u64 = 64 << 20;

/// The free space a backup of a store taking `store_bytes` on disk needs on its folder's file
/// system: the copy is about the store's live data, and a sled backup also writes its scan (as
/// big again) before the copy; plus headroom — a tenth of the store, and at least 64 MiB.
pub fn space_needed(store_bytes: u64) -> u64 {
    store_bytes.saturating_mul(2).saturating_add((store_bytes / 10).max(SPACE_HEADROOM_MIN))
}

/// Refuses a backup into `dir` (checked by [`check_dir`]: it or its parent exists) when its file
/// system has less free than [`space_needed`] for a store of `store_bytes`. `available`: the
/// free bytes there, or `None` to ask the file system.
pub(super) fn check_space(
    dir: &Path,
    store_bytes: u64,
    available: Option<u64>,
) -> Result<(), BackupError> {
    let on = if dir.exists() { dir } else { dir.parent().unwrap_or(dir) };
    let available = match available {
        Some(a) => a,
        None => fs2::available_space(on).map_err(|e| io(on, e))?,
    };
    let needed = space_needed(store_bytes);
    if available < needed {
        return Err(BackupError::NoSpace { dir: dir.to_owned(), needed, available });
    }
    Ok(())
}

/// Creates the new file `path` of a backup (or a restore), readable by the daemon's user only.
pub(super) fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// Creates the new folder `path` of a backup, readable by the daemon's user only.
pub(super) fn create_folder(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// A backup's folder while the copy is made.
pub(super) struct Target {
    dir: PathBuf,
    /// Made by this backup (removed again if the backup fails).
    made: bool,
}

impl Target {
    /// Takes `dir`: refused unless [`Backups::check_dir`] allows it; made when missing, and
    /// readable by the daemon's user only either way (a backup holds every payment).
    pub(super) fn prepare(dir: &Path, backups: &Backups) -> Result<Target, BackupError> {
        use std::os::unix::fs::PermissionsExt;
        backups.check_dir(dir)?;
        let made = match create_folder(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Made, or filled, since the check: look again.
                backups.check_dir(dir)?;
                false
            }
            Err(e) => return Err(io(dir, e)),
        };
        // An empty folder that was there keeps no wider mode than a new one.
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            let target = Target { dir: dir.to_owned(), made };
            target.abandon();
            return Err(io(dir, e));
        }
        Ok(Target { dir: dir.to_owned(), made })
    }

    pub(super) fn path(&self) -> &Path {
        &self.dir
    }

    /// Syncs every file and folder of the copy, then writes the manifest (with the folder's
    /// size) last, synced and renamed into place.
    pub(super) fn complete(&self, m: &mut Manifest) -> Result<(), BackupError> {
        m.bytes = sync_tree(&self.dir)?;
        let tmp = self.dir.join(format!("{MANIFEST}.tmp"));
        let text = serde_json::to_vec_pretty(m).expect("JSON of plain data");
        write_synced(&tmp, &text).map_err(|e| io(&tmp, e))?;
        let done = self.dir.join(MANIFEST);
        std::fs::rename(&tmp, &done).map_err(|e| io(&done, e))?;
        sync_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        if self.made {
            if let Some(parent) = self.dir.parent() {
                sync_dir(parent).map_err(|e| io(parent, e))?;
            }
        }
        Ok(())
    }

    /// Ends a backup with what its copy gave: stamps when it started and how long it took, then
    /// [`Self::complete`]s it; on any error what it wrote is removed ([`Self::abandon`]).
    pub(super) fn finish(
        self,
        copied: Result<Manifest, BackupError>,
        started_at: chrono::DateTime<chrono::Utc>,
        started: tokio::time::Instant,
    ) -> Result<Manifest, BackupError> {
        let mut m = match copied {
            Ok(m) => m,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        m.started_at = started_at;
        m.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = self.complete(&mut m) {
            self.abandon();
            return Err(e);
        }
        Ok(m)
    }

    /// Removes what the backup wrote (the folder was empty, or new, when it began).
    pub(super) fn abandon(self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(_) => return,
        };
        for e in entries.flatten() {
            let path = e.path();
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(err) = gone {
                tracing::warn!(path = %path.display(), error = %err, "could not remove part of an abandoned backup");
            }
        }
        if self.made {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = create_file(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Syncs every file under `dir` and the folders themselves; returns the files' bytes.
fn sync_tree(dir: &Path) -> Result<u64, BackupError> {
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = e.map_err(|e| io(dir, e))?.path();
        if path.is_dir() {
            bytes += sync_tree(&path)?;
        } else {
            let f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            f.sync_all().map_err(|e| io(&path, e))?;
            bytes += f.metadata().map_err(|e| io(&path, e))?.len();
        }
    }
    sync_dir(dir).map_err(|e| io(dir, e))?;
    Ok(bytes)
}

/// How a backup asked for through the admin API stands; what `GET /admin/v1/store/backup`
/// answers.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum BackupState {
    /// None was asked for since the daemon started.
    #[default]
    Idle,
    Running {
        dir: PathBuf,
        actor: String,
        started_at: DateTime<Utc>,
    },
    Done {
        dir: PathBuf,
        actor: String,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        manifest: Box<Manifest>,
    },
    Failed {
        dir: PathBuf,
        actor: String,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        error: FailedBackup,
    },
}

/// Why a backup failed, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FailedBackup {
    pub code: &'static str,
    pub message: String,
}

/// The backups a store was asked for: one at a time, and how the last one went; the folders
/// none may go into; and the word to give up.
#[derive(Default)]
pub struct Backups {
    state: Mutex<BackupState>,
    /// Folders a backup must not go into (see [`Backups::keep_out`]).
    keep_out: Mutex<Vec<PathBuf>>,
    /// Set when the daemon stops: the copy under way gives up at its next key (or batch of
    /// rows) and removes what it wrote, rather than hold the shutdown.
    cancel: AtomicBool,
}

impl Backups {
    fn lock(&self) -> std::sync::MutexGuard<'_, BackupState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds folders no backup may go into: the store's own (the sled store adds its folder when
    /// it opens), and the daemon's others (its PKI, its settlement files).
    pub fn keep_out(&self, folders: impl IntoIterator<Item = PathBuf>) {
        self.keep_out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(folders);
    }

    /// [`check_dir`] against the folders kept out.
    pub fn check_dir(&self, dir: &Path) -> Result<(), BackupError> {
        let keep_out =
            self.keep_out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        check_dir(dir, &keep_out)
    }

    /// Tells the backup under way, if any, to give up (the daemon is shutting down).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether the backup under way was told to give up.
    pub(super) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Marks a backup into `dir` by `actor` as running; `Err` while another one runs.
    pub fn begin(&self, dir: &Path, actor: &str, at: DateTime<Utc>) -> Result<(), BackupError> {
        let mut s = self.lock();
        if let BackupState::Running { dir, .. } = &*s {
            return Err(BackupError::InProgress(Some(dir.clone())));
        }
        self.cancel.store(false, Ordering::SeqCst);
        *s = BackupState::Running { dir: dir.to_owned(), actor: actor.to_owned(), started_at: at };
        Ok(())
    }

    /// Records how the running backup ended.
    pub fn finish(&self, result: &Result<Manifest, BackupError>, at: DateTime<Utc>) {
        let mut s = self.lock();
        let BackupState::Running { dir, actor, started_at } = std::mem::take(&mut *s) else {
            return;
        };
        *s = match result {
            Ok(m) => BackupState::Done {
                dir,
                actor,
                started_at,
                finished_at: at,
                manifest: Box::new(m.clone()),
            },
            Err(e) => BackupState::Failed {
                dir,
                actor,
                started_at,
                finished_at: at,
                error: FailedBackup { code: e.code(), message: e.to_string() },
            },
        };
    }

    pub fn state(&self) -> BackupState {
        self.lock().clone()
    }
}

/// Why a restore was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RestoreError {
    /// Refused before anything changed (exit 2): not a backup, the wrong store, a target that
    /// holds a store, a store in use, another restore under way.
    #[error("{0}")]
    Refused(String),
    /// Could not be done (exit 1).
    #[error("{0}")]
    Failed(String),
}

fn failed(what: &Path, e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Failed(format!("{}: {e}", what.display()))
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    /// Where the store now is.
    pub path: PathBuf,
    /// Where the store that was there was moved (`--force`).
    pub moved_aside: Option<PathBuf>,
    pub payments: usize,
    pub journal_entries: usize,
    pub outbox: usize,
    pub parked: usize,
    pub audit_records: usize,
}

/// Whether `path` is missing or an empty folder.
fn vacant(path: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut e) => Ok(e.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// A sled store folder's name and the folder it is in.
fn name_and_parent(target: &Path) -> Option<(String, PathBuf)> {
    let name = target.file_name()?.to_string_lossy().into_owned();
    let parent = match target.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_owned(),
        None => PathBuf::from("."),
    };
    Some((name, parent))
}

/// Where a restore into the store folder `<parent>/<name>` builds the store: beside it (one file
/// system, so it moves into place by a rename).
fn staging_of(parent: &Path, name: &str) -> PathBuf {
    parent.join(format!(".{name}.restoring"))
}

/// The start of the name a restore moves the store that was there to.
fn aside_prefix(name: &str) -> String {
    format!("{name}.before-restore-")
}

/// The file a restore into `<parent>/<name>` holds locked while it runs (so two restores never
/// share one build); left behind, empty, when it ends.
fn lock_of(parent: &Path, name: &str) -> PathBuf {
    parent.join(format!(".{name}.restore.lock"))
}

/// What a restore into the sled store folder `path` leaves beside it while it runs: its build,
/// and the stores it moved aside (this one's, or an earlier restore's).
fn restore_traces(path: &Path) -> Vec<PathBuf> {
    let Some((name, parent)) = name_and_parent(path) else { return Vec::new() };
    let mut traces = Vec::new();
    let staging = staging_of(&parent, &name);
    if staging.exists() {
        traces.push(staging);
    }
    let prefix = aside_prefix(&name);
    let mut aside: Vec<PathBuf> = std::fs::read_dir(&parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    aside.sort();
    traces.extend(aside);
    traces
}

/// Refuses to open a sled store at `path` when none is there but a restore's traces lie beside
/// it ([`restore_traces`]): a restore cut short between moving the old store aside and moving
/// the new one in. Opening would make a new, empty store, and partners' retries of payments it
/// does not know would become new payments — an acquirer could be told to pay twice.
pub(super) fn refuse_after_interrupted_restore(path: &Path) -> Result<(), StoreError> {
    if !vacant(path).unwrap_or(false) {
        return Ok(());
    }
    let traces = restore_traces(path);
    if traces.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = traces.iter().map(|t| t.display().to_string()).collect();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let back = traces
        .iter()
        .rev()
        .find(|t| {
            t.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&aside_prefix(&name)))
        })
        .map(|aside| {
            format!(
                ", or put the store that was there back (mv {} {})",
                aside.display(),
                path.display()
            )
        })
        .unwrap_or_default();
    Err(StoreError::Refused(format!(
        "{} holds no store, but a restore into it did not finish: {} beside it. Opening it would \
         start an empty store, and partners' retries would become new payments. Run the restore \
         again (qrbridge store restore BACKUP, with the same target: it builds the store anew and \
         puts it in place){back}; to start an empty store on purpose, move {} elsewhere first",
        path.display(),
        listed.join(", "),
        listed.join(" and ")
    )))
}

/// Holds the restore lock of the store folder `target` ([`lock_of`]), or refuses: another
/// restore into it is under way. Let go when the file is dropped (or the process ends).
fn lock_restore(parent: &Path, name: &str, target: &Path) -> Result<std::fs::File, RestoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = lock_of(parent, name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| failed(&path, e))?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err(RestoreError::Refused(format!(
                "another restore into {} is under way (it holds {}): let it finish",
                target.display(),
                path.display()
            )))
        }
        Err(e) => Err(failed(&path, e)),
    }
}

/// Refuses a store folder a process has open: sled holds an exclusive lock on its `db` file
/// while it has it open. (Tried on the file itself, not by opening the store: that would leave
/// sled's own threads holding the lock a moment after, and a second look would find it held.)
fn refuse_in_use(target: &Path) -> Result<(), RestoreError> {
    let path = target.join("db");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(&path, e)),
    };
    // Let go when `file` is dropped.
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err(RestoreError::Refused(format!(
                "{} is in use (a running daemon holds it): stop the daemon, then restore",
                target.display()
            )))
        }
        Err(e) => Err(failed(&path, e)),
    }
}

/// Waits until sled has let go of the store at `path` that this process closed: its IO threads
/// drop their handle on the store's file (and its lock with it) a moment after the store is
/// closed, so opening it again at once can find it locked (sled's own tests wait the same way).
/// Blocks on the lock itself, no polling; only for a store no other process may open (a
/// restore's build, under the restore lock; a test's).
pub(super) fn wait_released(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path.join("db"))?;
    fs2::FileExt::lock_exclusive(&file)
}

/// What a built store holds.
struct Counted {
    payments: usize,
    journal_entries: usize,
    outbox: usize,
    parked: usize,
    audit_records: usize,
}

/// Opens the store built at `built` as the daemon opens it (its format checked, what an open
/// repairs repaired), counts it, checks that its ledger balances, and closes it.
async fn check_built(
    built: &Path,
    cache_bytes: u64,
    target: &Path,
) -> Result<Counted, RestoreError> {
    let b = built.to_owned();
    tokio::task::spawn_blocking(move || wait_released(&b))
        .await
        .map_err(|e| failed(built, e))?
        .map_err(|e| failed(built, e))?;
    let store = SledStore::open(built, cache_bytes).map_err(|e| failed(built, e))?;
    let count = async {
        let sums = Store::ledger_sums(&store).await?;
        let counted = Counted {
            payments: store.payments()?.len(),
            journal_entries: store.journal()?.len(),
            outbox: store.outbox()?.len(),
            parked: store.parked()?.len(),
            audit_records: store.audit_log()?.0.len(),
        };
        Ok::<_, StoreError>((sums, counted))
    };
    let counted = count.await;
    store.close().await;
    let (sums, counted) = counted.map_err(|e| failed(built, e))?;
    let unbalanced: Vec<String> =
        sums.iter().filter(|(_, s)| **s != 0).map(|(c, s)| format!("{c} {s}")).collect();
    if !unbalanced.is_empty() {
        return Err(RestoreError::Failed(format!(
            "the backup's ledger does not balance ({}): it was not restored, and {} is as it was \
             (keep the backup to look into it)",
            unbalanced.join(", "),
            target.display()
        )));
    }
    Ok(counted)
}

/// Restores the sled backup at `backup` into the sled store folder `target`, the daemon stopped.
///
/// Refuses a folder without a manifest, a PostgreSQL backup, a copy whose SHA-256 is not the
/// manifest's, another restore into `target` under way, and a `target` that holds a store —
/// unless `force`, which moves that store aside (to `<target>.before-restore-<time>`, never
/// deleted), and never while a process has it open. The store is built beside `target` (its id
/// generator past the manifest's), checked against the manifest's counts, opened as the daemon
/// opens it (so its format is checked), counted, its ledger checked, closed and synced — and
/// only then the old store moved aside and the new one renamed into place. A failure before the
/// renames leaves `target` as it was; a crash between them leaves a missing store that
/// [`SledStore::open`] refuses to start afresh (see [`refuse_after_interrupted_restore`]), and
/// running the restore again finishes it.
pub async fn restore_sled(
    backup: &Path,
    target: &Path,
    force: bool,
    cache_bytes: u64,
) -> Result<Restored, RestoreError> {
    let manifest = Manifest::read(backup)?;
    if manifest.store != "sled" {
        return Err(RestoreError::Refused(format!(
            "{} is a {} backup: restore it with --database-url (or a --config naming \
             storage.url)",
            backup.display(),
            manifest.store
        )));
    }
    let source = backup.join(SLED_DUMP);
    if !source.is_file() {
        return Err(RestoreError::Refused(format!("{} is missing", source.display())));
    }
    let (name, parent) = name_and_parent(target)
        .ok_or_else(|| RestoreError::Refused(format!("{}: not a folder name", target.display())))?;
    std::fs::create_dir_all(&parent).map_err(|e| failed(&parent, e))?;
    // Held to the end: one restore builds beside this target at a time.
    let _lock = lock_restore(&parent, &name, target)?;
    let held = !vacant(target).map_err(|e| failed(target, e))?;
    if held {
        refuse_in_use(target)?;
    }
    if held && !force {
        return Err(RestoreError::Refused(format!(
            "{} already holds a store: stop the daemon and restore with --force to move it \
             aside (it is kept, never deleted)",
            target.display()
        )));
    }

    // Built beside the target (same file system), checked, synced. A build left by an earlier
    // restore that was interrupted is this restore's to redo.
    let staging = staging_of(&parent, &name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| failed(&staging, e))?;
    }
    let (from, into, m) = (source.clone(), staging.clone(), manifest.clone());
    let built = tokio::task::spawn_blocking(move || {
        let damaged = |why: String| RestoreError::Failed(format!("the backup is damaged: {why}"));
        let sha = super::sled_backup::dump::sha256(&from).map_err(|e| damaged(e.to_string()))?;
        if m.sha256.as_deref() != Some(sha.as_str()) {
            return Err(damaged(format!(
                "{} does not match its manifest's SHA-256",
                from.display()
            )));
        }
        let trees = m.collections.keys().map(String::as_str);
        let counts = super::sled_backup::build(&from, &into, trees, m.next_id.unwrap_or(0))
            .map_err(|e| damaged(e.to_string()))?;
        for (tree, want) in &m.collections {
            let got = counts.get(tree).copied().unwrap_or(0);
            if got != want.records {
                return Err(damaged(format!(
                    "{tree} holds {got} records, its manifest says {}",
                    want.records
                )));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("the build stopped: {e}")))
    .and_then(|built| built);
    // Opened, counted and its ledger checked before it goes anywhere near the target.
    let checked = match built {
        Ok(()) => check_built(&staging, cache_bytes, target).await,
        Err(e) => Err(e),
    };
    let checked = checked.and_then(|counted| {
        sync_tree(&staging).map_err(|e| RestoreError::Failed(e.to_string()))?;
        Ok(counted)
    });
    let counted = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };

    // The swap: the old store aside, the new one in. Between the two renames the target is
    // missing, with the build and the old store beside it: what `SledStore::open` refuses.
    let mut moved_aside = None;
    if held {
        // A daemon started since the first look would keep writing into the store moved aside.
        if let Err(e) = refuse_in_use(target) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        let stamp = SystemClock.now().format("%Y%m%dT%H%M%SZ");
        let aside = parent.join(format!("{}{stamp}", aside_prefix(&name)));
        if aside.exists() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(RestoreError::Refused(format!(
                "{} exists already: try again in a second",
                aside.display()
            )));
        }
        std::fs::rename(target, &aside).map_err(|e| failed(target, e))?;
        moved_aside = Some(aside);
    } else if target.exists() {
        // An empty folder: the store takes its name.
        std::fs::remove_dir(target).map_err(|e| failed(target, e))?;
    }
    if let Err(e) = std::fs::rename(&staging, target) {
        // Put the old store back, if it can be; if not, opening the target refuses until the
        // restore is run again.
        if let Some(aside) = &moved_aside {
            let _ = std::fs::rename(aside, target);
        }
        return Err(failed(target, e));
    }
    sync_dir(&parent).map_err(|e| failed(&parent, e))?;
    Ok(Restored {
        manifest,
        path: target.to_owned(),
        moved_aside,
        payments: counted.payments,
        journal_entries: counted.journal_entries,
        outbox: counted.outbox,
        parked: counted.parked,
        audit_records: counted.audit_records,
    })
}

/// `qrbridge store …`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Have the running daemon copy its store, consistently, into DIR (new, or empty) on the
    /// daemon's host, through the admin API (admin certificate). Exits 0 done, 1 failed,
    /// 2 refused.
    Backup {
        /// The backup's folder; a relative path is made absolute from here.
        dir: PathBuf,
        #[command(flatten)]
        connection: crate::admin_cli::Connection,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup, the daemons stopped: a sled backup into the store of --data-dir (its
    /// `db` folder) or of --config (`storage.path`); a PostgreSQL backup into the empty
    /// database of --database-url or of --config (`storage.url`). A sled store already there is
    /// refused unless --force, which moves it aside (never deletes it); a database that holds a
    /// store is refused. Exits 0 done, 1 failed, 2 refused.
    Restore {
        /// The backup's folder (with its backup.json).
        dir: PathBuf,
        /// The daemon's data folder (as `qrbridge serve --data-dir`): the store is `<it>/db`.
        #[arg(long, conflicts_with_all = ["config", "database_url"], required_unless_present_any = ["config", "database_url"])]
        data_dir: Option<PathBuf>,
        /// The daemon's configuration file: its `storage.url`, else its `storage.path`.
        #[arg(long, conflicts_with = "database_url")]
        config: Option<PathBuf>,
        /// An empty PostgreSQL database (`postgres://user@host:port/db`) for a PostgreSQL
        /// backup.
        #[arg(long)]
        database_url: Option<String>,
        /// Move a sled store already at the target aside (to `<it>.before-restore-<time>`).
        #[arg(long)]
        force: bool,
    },
}

fn print(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Runs `qrbridge store …`.
pub async fn run(args: StoreArgs) -> ExitCode {
    match args.command {
        StoreCommand::Backup { dir, connection, json } => {
            backup_command(&dir, &connection, json).await.unwrap_or_else(|f| f.exit())
        }
        StoreCommand::Restore { dir, data_dir, config, database_url, force } => {
            let target = match (data_dir, config, database_url) {
                (Some(d), ..) => Ok(RestoreInto::Sled(
                    d.join("db"),
                    qrbridge_config::model::Storage::default().cache_bytes,
                )),
                (None, _, Some(url)) => Ok(RestoreInto::Database(url)),
                (None, Some(file), None) => match qrbridge_config::from_file(&file) {
                    Ok(c) => Ok(match c.storage.url {
                        Some(url) => RestoreInto::Database(url),
                        None => RestoreInto::Sled(c.storage.path, c.storage.cache_bytes),
                    }),
                    Err(e) => Err(e.to_string()),
                },
                (None, None, None) => Err("give --data-dir, --config or --database-url".into()),
            };
            match target {
                Ok(into) => restore_command(&dir, into, force).await,
                Err(m) => restore_failed(RestoreError::Refused(m)),
            }
        }
    }
}

/// How long the CLI waits for each answer of the admin API: the daemon answers the backup
/// request within its own request timeout (at most 600 s), earlier with "running".
const ANSWER_WITHIN: Duration = Duration::from_secs(900);
/// How often the CLI asks how a running backup stands.
const POLL_EVERY: Duration = Duration::from_secs(1);

async fn backup_command(
    dir: &Path,
    connection: &crate::admin_cli::Connection,
    json: bool,
) -> Result<ExitCode, crate::admin_cli::Failure> {
    use crate::admin_cli::{Client, Failure};
    let dir = std::path::absolute(dir)
        .map_err(|e| Failure::Refused(format!("{}: {e}", dir.display())))?;
    let c = Client::new(connection, ANSWER_WITHIN)?;
    let body = serde_json::json!({ "dir": dir });
    let (_, mut v) =
        c.json_with_status(http::Method::POST, "/admin/v1/store/backup", Some(body)).await?;
    // Longer than the daemon answers within: it said "running"; ask until it ends.
    while v["state"] == "running" {
        tokio::time::sleep(POLL_EVERY).await;
        v = c.json(http::Method::GET, "/admin/v1/store/backup", None).await?;
    }
    if json {
        print(&serde_json::to_string_pretty(&v).expect("JSON of plain data"));
    }
    match v["state"].as_str() {
        Some("done") => {
            if !json {
                let m = &v["manifest"];
                let counts: Vec<String> = m["collections"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, c)| format!("{name} {}", c["records"]))
                    .collect();
                print(&format!(
                    "backup of the {} store written to {} (taken at {}; {} bytes; writes held {} µs)\n{}",
                    m["store"].as_str().unwrap_or("?"),
                    dir.display(),
                    m["taken_at"].as_str().unwrap_or("?"),
                    m["bytes"],
                    m["pause_us"],
                    counts.join(", ")
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Failure::Work(format!(
            "the backup failed: {} {}",
            v["error"]["code"].as_str().unwrap_or("ERROR"),
            v["error"]["message"].as_str().unwrap_or("")
        ))),
    }
}

/// Where a restore goes.
enum RestoreInto {
    /// A sled store's folder, and its page cache.
    Sled(PathBuf, u64),
    /// A PostgreSQL database's URL.
    Database(String),
}

/// Prints why a restore was not done; its exit code (as `qrbridge admin`'s).
fn restore_failed(e: RestoreError) -> ExitCode {
    use crate::admin_cli::Failure;
    match e {
        RestoreError::Refused(m) => Failure::Refused(m),
        RestoreError::Failed(m) => Failure::Work(m),
    }
    .exit()
}

async fn restore_command(dir: &Path, into: RestoreInto, force: bool) -> ExitCode {
    let (target, cache_bytes) = match into {
        RestoreInto::Sled(path, cache) => (path, cache),
        RestoreInto::Database(url) => {
            return match super::postgres::backup::restore(dir, &url).await {
                Ok(r) => {
                    let rows: Vec<String> =
                        r.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
                    print(&format!(
                        "restored the backup taken at {} on {} into the database: {}",
                        r.manifest.taken_at.to_rfc3339(),
                        if r.manifest.host.is_empty() { "?" } else { &r.manifest.host },
                        rows.join(", ")
                    ));
                    ExitCode::SUCCESS
                }
                Err(e) => restore_failed(e),
            };
        }
    };
    match restore_sled(dir, &target, force, cache_bytes).await {
        Ok(r) => {
            if let Some(aside) = &r.moved_aside {
                print(&format!(
                    "the store that was at {} is now at {}",
                    r.path.display(),
                    aside.display()
                ));
            }
            print(&format!(
                "restored the backup taken at {} on {} into {}: {} payments, {} journal entries \
                 (balanced), {} events waiting, {} parked, {} audit records",
                r.manifest.taken_at.to_rfc3339(),
                if r.manifest.host.is_empty() { "?" } else { &r.manifest.host },
                r.path.display(),
                r.payments,
                r.journal_entries,
                r.outbox,
                r.parked,
                r.audit_records
            ));
            ExitCode::SUCCESS
        }
        Err(e) => restore_failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_goes_into_a_new_or_empty_folder_named_absolutely() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |p: &Path| matches!(check_dir(p, &[]), Err(BackupError::Refused(_)));
        assert!(refused(Path::new("relative/backup")));
        assert!(refused(Path::new("/")));
        assert!(refused(&dir.path().join("empty/..")));
        assert!(refused(&dir.path().join("missing/backup")));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(refused(&file));
        assert!(check_dir(&dir.path().join("new"), &[]).is_ok());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check_dir(&empty, &[]).is_ok());
        assert!(refused(dir.path()), "holds `file` and `empty`");
    }

    #[test]
    fn a_backup_stays_out_of_the_daemons_own_folders_links_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("db");
        let pki = dir.path().join("pki");
        for d in [&store, &pki] {
            std::fs::create_dir(d).unwrap();
        }
        let backups = Backups::default();
        backups.keep_out([store.clone()]);
        backups.keep_out([pki.clone()]);
        let inside = |d: &Path| matches!(backups.check_dir(d), Err(BackupError::Refused(m)) if m.contains("own folders"));
        assert!(inside(&store.join("backup")));
        assert!(inside(&pki.join("backup")));
        assert!(inside(&dir.path().join("pki/../db/backup")));
        // Through a link to the store's folder, or a link in its place.
        std::os::unix::fs::symlink(&store, dir.path().join("link")).unwrap();
        assert!(inside(&dir.path().join("link/backup")));
        assert!(inside(&dir.path().join("link")));
        // Beside them is fine (the store's folder, a sibling of the backups').
        assert!(backups.check_dir(&dir.path().join("backups")).is_ok());
        assert!(backups.check_dir(&dir.path().join("db-backup")).is_ok());
    }

    #[test]
    fn a_folder_without_a_manifest_or_with_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |d: &Path| matches!(Manifest::read(d), Err(RestoreError::Refused(_)));
        assert!(refused(dir.path()));
        let mut m = Manifest::new("sled", SystemClock.now());
        let write = |m: &Manifest| {
            std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(m).unwrap()).unwrap()
        };
        write(&m);
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        m.record_format = super::super::codec::FORMAT + 1;
        write(&m);
        assert!(refused(dir.path()));
        m.record_format = super::super::codec::FORMAT;
        m.version = VERSION + 1;
        write(&m);
        assert!(refused(dir.path()));
        std::fs::write(dir.path().join(MANIFEST), b"{").unwrap();
        assert!(refused(dir.path()));
    }

    #[test]
    fn one_backup_runs_at_a_time_and_the_last_one_is_remembered() {
        let b = Backups::default();
        let at = SystemClock.now();
        assert!(matches!(b.state(), BackupState::Idle));
        b.begin(Path::new("/a"), "admin", at).unwrap();
        let again = b.begin(Path::new("/b"), "admin", at);
        assert!(matches!(&again, Err(BackupError::InProgress(Some(d))) if d == Path::new("/a")));
        b.finish(&Err(BackupError::TooManyWrites(1)), at);
        match b.state() {
            BackupState::Failed { dir, error, .. } => {
                assert_eq!(dir, Path::new("/a"));
                assert_eq!(error.code, "BACKUP_ABANDONED");
            }
            other => panic!("{other:?}"),
        }
        b.begin(Path::new("/b"), "admin", at).unwrap();
        b.finish(&Ok(Manifest::new("sled", at)), at);
        assert!(matches!(b.state(), BackupState::Done { .. }));
    }

    use crate::model::{AuditDraft, JournalEntry, Posting, RECORD_VERSION};

    /// Opens the sled store at `path` (as it was let go by this process, if it was), waiting for
    /// sled's threads to let go of it.
    fn open(path: &Path) -> SledStore {
        if path.join("db").exists() {
            wait_released(path).unwrap();
        }
        SledStore::open(path, 8 << 20).unwrap()
    }

    /// Opens the sled store at `path`, sets `test/value` to `value` in it, and closes it.
    async fn store_holding(path: &Path, value: &str) {
        let s = open(path);
        let draft = AuditDraft {
            at: SystemClock.now(),
            actor: "admin".into(),
            action: "test.set".into(),
            target: "test".into(),
            before: serde_json::Value::Null,
            after: serde_json::json!(value),
        };
        s.admin_commit(&draft, &[("test/value".into(), Some(value.as_bytes().to_vec()))]).unwrap();
        s.flush().await.unwrap();
        s.close().await;
    }

    /// What `test/value` holds in the sled store at `path`.
    async fn value_in(path: &Path) -> String {
        let s = open(path);
        let got = s.settings("test/").unwrap();
        s.close().await;
        assert_eq!(got.len(), 1, "{got:?}");
        String::from_utf8(got[0].1.clone()).unwrap()
    }

    /// A backup, at `dir/backup`, of a store holding `value` (and, if `unbalanced`, a journal
    /// entry whose postings do not sum to zero).
    async fn backup_holding(dir: &Path, value: &str, unbalanced: bool) -> PathBuf {
        let path = dir.join("source").join("db");
        store_holding(&path, value).await;
        let s = open(&path);
        if unbalanced {
            let entry = JournalEntry {
                v: RECORD_VERSION,
                payment_id: "pay_unbalanced".into(),
                kind: "payment".into(),
                at: SystemClock.now(),
                postings: vec![Posting {
                    account: "wallet".into(),
                    currency: qrbridge_fx::Currency::CNY,
                    minor: 100,
                }],
            };
            let key = super::super::sled_store::key::journal(&entry.payment_id, 1);
            s.t.insert(key, super::super::codec::encode(&entry)).unwrap();
        }
        let backup = dir.join("backup");
        s.backup(&backup, &SystemClock).unwrap();
        s.close().await;
        backup
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_cut_short_between_its_renames_is_refused_at_open_then_finished() {
        let dir = tempfile::tempdir().unwrap();
        let backup = backup_holding(dir.path(), "restored", false).await;
        let data = dir.path().join("data");
        let target = data.join("db");
        store_holding(&target, "old").await;

        // Cut short: the old store moved aside, the checked build beside it, nothing in place.
        let aside = data.join("db.before-restore-20260101T000000Z");
        std::fs::rename(&target, &aside).unwrap();
        let staging = data.join(".db.restoring");
        std::fs::create_dir(&staging).unwrap();
        let refused = |why: &str| match SledStore::open(&target, 8 << 20) {
            Err(StoreError::Refused(m)) => {
                assert!(m.contains("did not finish") && m.contains(&target.display().to_string()));
                m
            }
            Err(e) => panic!("{why}: {e}"),
            Ok(_) => panic!("{why}: a store was opened"),
        };
        let m = refused("the build and the old store beside it");
        assert!(
            m.contains(".db.restoring") && m.contains(&format!("mv {}", aside.display())),
            "{m}"
        );
        assert!(!target.exists(), "no empty store is made");
        // An empty folder in its place holds no store either.
        std::fs::create_dir(&target).unwrap();
        refused("an empty folder");
        std::fs::remove_dir(&target).unwrap();
        // Only the old store aside (cut short before the build was made, on another try).
        std::fs::remove_dir(&staging).unwrap();
        refused("the old store beside it");
        // Only the build (a restore into a new data folder).
        std::fs::create_dir(&staging).unwrap();
        std::fs::rename(&aside, dir.path().join("kept")).unwrap();
        let m = refused("the build beside it");
        assert!(!m.contains("mv "), "{m}");
        std::fs::rename(dir.path().join("kept"), &aside).unwrap();

        // Running the restore again finishes it: the build made anew, and put in place.
        let r = restore_sled(&backup, &target, false, 8 << 20).await.unwrap();
        assert!(r.moved_aside.is_none());
        assert_eq!(value_in(&target).await, "restored");
        assert!(!staging.exists());
        // The store moved aside is kept as it was.
        assert_eq!(value_in(&aside).await, "old");
        // With the store in place, the traces beside it stop nothing.
        assert_eq!(value_in(&target).await, "restored");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_whose_ledger_does_not_balance_leaves_the_store_there_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let backup = backup_holding(dir.path(), "restored", true).await;
        let data = dir.path().join("data");
        let target = data.join("db");
        store_holding(&target, "old").await;
        let got = restore_sled(&backup, &target, true, 8 << 20).await;
        match &got {
            Err(RestoreError::Failed(m)) => {
                assert!(m.contains("does not balance") && m.contains("CNY 100"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(names_in(&data), [".db.restore.lock", "db"], "no build, nothing moved aside");
        assert_eq!(value_in(&target).await, "old");

        // A balanced backup goes in, the old store aside.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let backup = backup_holding(&other, "restored", false).await;
        let r = restore_sled(&backup, &target, true, 8 << 20).await.unwrap();
        let aside = r.moved_aside.unwrap();
        assert_eq!((r.payments, r.journal_entries), (0, 0));
        assert_eq!(value_in(&target).await, "restored");
        assert_eq!(value_in(&aside).await, "old");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_restores_into_one_store_never_share_a_build() {
        let dir = tempfile::tempdir().unwrap();
        let backup = backup_holding(dir.path(), "restored", false).await;
        let data = dir.path().join("data");
        let target = data.join("db");
        std::fs::create_dir(&data).unwrap();
        let held = lock_restore(&data, "db", &target).unwrap();
        let got = restore_sled(&backup, &target, false, 8 << 20).await;
        assert!(
            matches!(&got, Err(RestoreError::Refused(m)) if m.contains("under way")),
            "{got:?}"
        );
        assert!(!target.exists() && !data.join(".db.restoring").exists());
        drop(held);
        restore_sled(&backup, &target, false, 8 << 20).await.unwrap();
        assert_eq!(value_in(&target).await, "restored");
    }
}
