//! Backups of the store: `qrbridge store backup DIR` (a consistent copy while the daemon runs)
//! and `qrbridge store restore DIR` (the daemons stopped).
//!
//! A backup is a folder: the store's copy (`db.kv`, every sled tree's keys and values in one
//! checksummed file; or `tables/`, one file per PostgreSQL table) and `backup.json`, the [`Manifest`], written last — after every file of the
//! copy is synced — so a folder without one is a backup that did not finish, and restore refuses
//! it. The folder is made readable by the daemon's user only: it holds every payment.
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
//! the daemon's host, new or empty. One backup at a time per daemon.
//!
//! **Restoring one** (the daemons stopped): `qrbridge store restore DIR --config FILE` (or
//! `--data-dir D` for sled, `--database-url URL` for PostgreSQL). It checks the manifest (a
//! newer qrbridge's backup is refused), refuses a target that holds a store — sled: unless
//! `--force`, which moves it aside to `<store>.before-restore-<time>`, never deleting it, and
//! never while a process has it open (sled's lock); PostgreSQL: always, restore into an empty
//! database or schema — copies the backup beside the target, checks its counts against the
//! manifest, moves it into place, opens it as the daemon would (so its format is checked) and
//! prints what it holds. Then start the daemons.
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
    /// More was written while the copy ran than the backup keeps in memory: abandoned.
    #[error(
        "abandoned: more than {0} bytes were written while the copy ran; try again when the \
         store is quieter"
    )]
    TooManyWrites(usize),
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
            BackupError::TooManyWrites(_) => "BACKUP_ABANDONED",
            BackupError::Io(_) | BackupError::Store(_) => "BACKUP_FAILED",
        }
    }
}

fn io(what: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("{}: {e}", what.display()))
}

/// Checks that `dir` can take a backup, without touching it: absolute, its parent an existing
/// folder, and itself missing or an empty folder.
pub fn check_dir(dir: &Path) -> Result<(), BackupError> {
    if !dir.is_absolute() {
        return Err(BackupError::Refused(format!(
            "dir: {} is not an absolute path (the path is on the daemon's host)",
            dir.display()
        )));
    }
    let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Err(BackupError::Refused(format!("dir: {} has no parent folder", dir.display())));
    };
    if !parent.is_dir() {
        return Err(BackupError::Refused(format!(
            "dir: {} does not exist on the daemon's host (the backup's folder is made in it)",
            parent.display()
        )));
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

/// A backup's folder while the copy is made.
pub(super) struct Target {
    dir: PathBuf,
    /// Made by this backup (removed again if the backup fails).
    made: bool,
}

impl Target {
    /// Takes `dir`: made when missing (readable by the daemon's user only: a backup holds every
    /// payment), refused unless empty ([`check_dir`]).
    pub(super) fn prepare(dir: &Path) -> Result<Target, BackupError> {
        use std::os::unix::fs::DirBuilderExt;
        check_dir(dir)?;
        let made = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Made, or filled, since the check: look again.
                check_dir(dir)?;
                false
            }
            Err(e) => return Err(io(dir, e)),
        };
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
    let mut f = std::fs::File::create(path)?;
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

/// The backups a store was asked for: one at a time, and how the last one went.
#[derive(Default)]
pub struct Backups {
    state: Mutex<BackupState>,
}

impl Backups {
    fn lock(&self) -> std::sync::MutexGuard<'_, BackupState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a backup into `dir` by `actor` as running; `Err` while another one runs.
    pub fn begin(&self, dir: &Path, actor: &str, at: DateTime<Utc>) -> Result<(), BackupError> {
        let mut s = self.lock();
        if let BackupState::Running { dir, .. } = &*s {
            return Err(BackupError::InProgress(Some(dir.clone())));
        }
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
    /// holds a store, a store in use.
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
    /// Whether the ledger balances in every currency.
    pub balanced: bool,
}

/// Whether `path` is missing or an empty folder.
fn vacant(path: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(path) {
        Ok(mut e) => Ok(e.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(failed(path, e)),
    }
}

/// Restores the sled backup at `backup` into the sled store folder `target`, the daemon stopped.
///
/// Refuses a folder without a manifest, a PostgreSQL backup, a copy whose SHA-256 is not the
/// manifest's, and a `target` that holds a store — unless `force`, which moves that store aside
/// (to `<target>.before-restore-<time>`, never deleted), and never while a process has it open.
/// The store is built beside `target` (its id generator past the manifest's), checked against
/// the manifest's counts, synced, and only then renamed into place — a failure leaves `target`
/// as it was — and opened as the daemon opens its store (so its format is checked); what it
/// holds is counted.
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
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| RestoreError::Refused(format!("{}: not a folder name", target.display())))?;
    let parent = match target.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_owned(),
        None => PathBuf::from("."),
    };
    let held = !vacant(target)?;
    // A store a process has open holds sled's lock on it: opening it here fails.
    if held && target.join("db").is_file() {
        match sled::Config::new().path(target).open() {
            Ok(db) => drop(db),
            Err(e) if e.to_string().contains("could not acquire lock") => {
                return Err(RestoreError::Refused(format!(
                    "{} is in use (a running daemon holds it): stop the daemon, then restore",
                    target.display()
                )))
            }
            Err(e) => return Err(failed(target, e)),
        }
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
    std::fs::create_dir_all(&parent).map_err(|e| failed(&parent, e))?;
    let staging = parent.join(format!(".{name}.restoring"));
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
        sync_tree(&into).map_err(|e| failed(&into, e))?;
        Ok(())
    })
    .await
    .map_err(|e| RestoreError::Failed(format!("the build stopped: {e}")))?;
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }

    let mut moved_aside = None;
    if held {
        let stamp = SystemClock.now().format("%Y%m%dT%H%M%SZ");
        let aside = parent.join(format!("{name}.before-restore-{stamp}"));
        if aside.exists() {
            return Err(RestoreError::Refused(format!("{} exists already", aside.display())));
        }
        std::fs::rename(target, &aside).map_err(|e| failed(target, e))?;
        moved_aside = Some(aside);
    } else if target.exists() {
        // An empty folder: the store takes its name.
        std::fs::remove_dir(target).map_err(|e| failed(target, e))?;
    }
    std::fs::rename(&staging, target).map_err(|e| failed(target, e))?;
    sync_dir(&parent).map_err(|e| failed(&parent, e))?;

    // Opened as the daemon opens it: its format is checked, and it is counted.
    let store = SledStore::open(target, cache_bytes).map_err(|e| failed(target, e))?;
    let count = async {
        let sums = Store::ledger_sums(&store).await?;
        Ok::<_, StoreError>(Restored {
            payments: store.payments()?.len(),
            journal_entries: store.journal()?.len(),
            outbox: store.outbox()?.len(),
            parked: store.parked()?.len(),
            audit_records: store.audit_log()?.0.len(),
            balanced: sums.values().all(|s| *s == 0),
            manifest: manifest.clone(),
            path: target.to_owned(),
            moved_aside: moved_aside.clone(),
        })
    };
    let restored = count.await.map_err(|e| failed(target, e));
    store.close().await;
    restored
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
                 ({}), {} events waiting, {} parked, {} audit records",
                r.manifest.taken_at.to_rfc3339(),
                if r.manifest.host.is_empty() { "?" } else { &r.manifest.host },
                r.path.display(),
                r.payments,
                r.journal_entries,
                if r.balanced { "balanced" } else { "NOT BALANCED" },
                r.outbox,
                r.parked,
                r.audit_records
            ));
            if r.balanced {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
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
        let refused = |p: &Path| matches!(check_dir(p), Err(BackupError::Refused(_)));
        assert!(refused(Path::new("relative/backup")));
        assert!(refused(Path::new("/")));
        assert!(refused(&dir.path().join("missing/backup")));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(refused(&file));
        assert!(check_dir(&dir.path().join("new")).is_ok());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check_dir(&empty).is_ok());
        assert!(refused(dir.path()), "holds `file` and `empty`");
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
}
