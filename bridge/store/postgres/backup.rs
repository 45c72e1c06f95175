//! A consistent copy of the PostgreSQL store ([`PgStore::backup_into`]), and restoring one
//! ([`restore`]).
//!
//! **One snapshot.** Every table is read in one `REPEATABLE READ, READ ONLY` transaction: its
//! snapshot, taken at its first statement, is what every read of it sees, so the copy is the
//! database as of one commit — the journal and the running totals, a payment and its events,
//! agree as they do at every commit. Writes are never held: a read-only transaction takes no
//! locks that writers wait for, and gets no transaction id, so it does not hold back the outbox
//! readers (which wait only for transactions with an id; see `PgStore::outbox_after`). It does
//! hold back vacuum's horizon while it runs, as `pg_dump` does.
//!
//! **Why this rather than `pg_dump`.** `pg_dump` takes one snapshot too, but it is a separate
//! program whose major version must be at least the server's, it needs the connection's
//! credentials passed to it and its schema selected by name, and its restore brings the old
//! transaction ids along. Reading through the daemon's own connection needs none of that, and
//! the restore can fix what a logical copy cannot carry (below). `pg_dump` remains a fine
//! database-level backup for operators who run PostgreSQL's own tooling; restore its output
//! into an empty database, then do what [`restore`] does after loading (its last step).
//!
//! **Format.** One file per table under `tables/`: a JSON object per line, the row as
//! `row_to_json` writes it (bytea as `\x…` hex, timestamps with their offset, numbers exact),
//! read back by `json_populate_recordset` into the same table — text, so it outlives the server
//! version that wrote it. Rows are fetched through a cursor, [`FETCH_ROWS`] at a time: the
//! memory a backup takes is one batch, not a table.
//!
//! **What a restore fixes.** The outbox and parked rows carry the transaction id (`xid8`) that
//! wrote them, which readers follow in commit order; in another database (or after the ids moved
//! on) those ids mean nothing — one ahead of the new server's would hold every event back — so
//! the restore stamps them with its own transaction's id (the order within a transaction is the
//! sequence, which keeps each payment's events in order), then, once the load committed, again
//! in sequence order, a thousand rows per transaction ([`restamp`]): the outbox reader never
//! splits a transaction across pages, so one stamp for every restored event would make each of
//! its passes read them all. The sequences behind journal and event numbers are set past the
//! highest number restored (events: over the outbox, delivered and parked, which share one).
//! `leases` are not copied: they name processes of the old database.

use std::io::{BufRead, Write};
use std::path::Path;

use super::{snapshot, PgStore, MIGRATIONS};
use crate::clock::Clock;
use crate::store::backup::{
    check_space, create_file, create_folder, BackupError, Collection, Manifest, RestoreError,
    Target,
};
use crate::store::StoreError;

/// The store's tables, in the order a restore fills them: each after the tables it references.
const TABLES: &[&str] = &[
    "quotes",
    "payments",
    "work",
    "journal",
    "account_totals",
    "refunds",
    "outbox",
    "delivered",
    "parked",
    "outbox_epoch",
    "settings",
    "audit",
    "risk_decisions",
];

/// Tables a backup leaves out: leases name the old processes; the migrations table is the
/// schema's own, made by the restore's migration.
const NOT_COPIED: &[&str] = &["leases", "qrbridge_migrations"];

/// Rows fetched from the cursor at a time (and inserted per statement by a restore).
const FETCH_ROWS: usize = 1000;

/// Where a PostgreSQL copy goes, inside a backup folder.
pub const TABLES_DIR: &str = "tables";

/// The schema version this build migrates to.
fn schema_version() -> u32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

fn io(what: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("{}: {e}", what.display()))
}

impl PgStore {
    /// Copies every table, as of one snapshot, into `dir` (absolute; new, or empty): one file
    /// per table under `dir/tables`, then the manifest. On failure what it wrote is removed.
    pub async fn backup_into(
        &self,
        dir: &Path,
        clock: &dyn Clock,
    ) -> Result<Manifest, BackupError> {
        let started_at = clock.now();
        let started = tokio::time::Instant::now();
        self.backups.check_dir(dir)?;
        check_space(dir, self.size_on_disk().await?, None)?;
        let target = Target::prepare(dir, &self.backups)?;
        let copied = self.copy_tables(&target, clock).await;
        let m = target.finish(copied, started_at, started)?;
        tracing::info!(dir = %dir.display(), took_ms = m.took_ms, "store backup written");
        Ok(m)
    }

    /// Bytes the store's tables take in the database (with their indexes and TOAST).
    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let sum: Vec<String> =
            TABLES.iter().map(|t| format!("pg_total_relation_size('{t}')")).collect();
        let sql = format!("SELECT ({})::bigint", sum.join(" + "));
        let bytes: i64 = c.query_one(sql.as_str(), &[]).await?.try_get(0)?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    async fn copy_tables(
        &self,
        target: &Target,
        clock: &dyn Clock,
    ) -> Result<Manifest, BackupError> {
        let mut c = self.conn().await?;
        let tx = snapshot(&mut c).await?;
        // The snapshot is taken here, at the transaction's first statement.
        let version: i32 = tx
            .query_one("SELECT COALESCE(max(version), 0) FROM qrbridge_migrations", &[])
            .await
            .map_err(StoreError::from)?
            .try_get(0)
            .map_err(StoreError::from)?;
        let taken_at = clock.now();
        // A table this build does not know (a later migration's) would be left out: refuse.
        let present = tx
            .query(
                "SELECT table_name::text FROM information_schema.tables
                  WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                &[],
            )
            .await
            .map_err(StoreError::from)?;
        for r in present {
            let name: String = r.try_get(0).map_err(StoreError::from)?;
            if !TABLES.contains(&name.as_str()) && !NOT_COPIED.contains(&name.as_str()) {
                return Err(BackupError::Unsupported(format!(
                    "the table {name} is not one this build's backup knows"
                )));
            }
        }
        let folder = target.path().join(TABLES_DIR);
        create_folder(&folder).map_err(|e| io(&folder, e))?;
        let mut collections = std::collections::BTreeMap::new();
        for table in TABLES {
            let path = folder.join(format!("{table}.jsonl"));
            let mut out = std::io::BufWriter::new(create_file(&path).map_err(|e| io(&path, e))?);
            let mut n = Collection::default();
            tx.batch_execute(&format!(
                "DECLARE backup_rows NO SCROLL CURSOR FOR SELECT row_to_json(t)::text FROM {table} t"
            ))
            .await
            .map_err(StoreError::from)?;
            loop {
                if self.backups.cancelled() {
                    return Err(BackupError::Cancelled);
                }
                let fetched = tx
                    .simple_query(&format!("FETCH {FETCH_ROWS} FROM backup_rows"))
                    .await
                    .map_err(StoreError::from)?;
                let mut rows = 0;
                for m in fetched {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        let line = r.get(0).unwrap_or("null");
                        out.write_all(line.as_bytes()).map_err(|e| io(&path, e))?;
                        out.write_all(b"\n").map_err(|e| io(&path, e))?;
                        n.records += 1;
                        n.bytes += line.len() as u64;
                        rows += 1;
                    }
                }
                if rows == 0 {
                    break;
                }
            }
            tx.batch_execute("CLOSE backup_rows").await.map_err(StoreError::from)?;
            out.flush().map_err(|e| io(&path, e))?;
            collections.insert((*table).to_owned(), n);
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Manifest {
            schema_version: Some(u32::try_from(version).unwrap_or(0)),
            collections,
            ..Manifest::new("postgres", taken_at)
        })
    }
}

/// What a PostgreSQL restore did: rows per table.
#[derive(Debug, Clone)]
pub struct RestoredTables {
    pub manifest: Manifest,
    pub rows: std::collections::BTreeMap<String, u64>,
}

/// Restores the PostgreSQL backup at `backup` into the database (and schema) `url` names, which
/// must hold no store yet (its tables are made by the migration if missing; a store with any
/// row is refused). Everything is loaded in one transaction, checked against the manifest's
/// counts, and fixed as the module's docs say; nothing is kept if any of it fails.
pub async fn restore(backup: &Path, url: &str) -> Result<RestoredTables, RestoreError> {
    let manifest = Manifest::read(backup)?;
    if manifest.store != "postgres" {
        return Err(RestoreError::Refused(format!(
            "{} is a {} backup: restore it with --data-dir or --config",
            backup.display(),
            manifest.store
        )));
    }
    if manifest.schema_version != Some(schema_version()) {
        return Err(RestoreError::Refused(format!(
            "{} has schema version {:?} and this build {}: restore it with the qrbridge that \
             took it ({}), then upgrade",
            backup.display(),
            manifest.schema_version,
            schema_version(),
            manifest.qrbridge_version
        )));
    }
    let folder = backup.join(TABLES_DIR);
    let failed = |e: StoreError| RestoreError::Failed(e.to_string());
    let store = PgStore::connect(url, 1).await.map_err(failed)?;
    let mut c = store.conn().await.map_err(failed)?;
    for table in TABLES {
        let sql = if *table == "outbox_epoch" {
            "SELECT EXISTS (SELECT 1 FROM outbox_epoch WHERE epoch <> 0)".to_owned()
        } else {
            format!("SELECT EXISTS (SELECT 1 FROM {table})")
        };
        let held: bool = c
            .query_one(sql.as_str(), &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| failed(e.into()))?;
        if held {
            return Err(RestoreError::Refused(format!(
                "the database already holds a store ({table} has rows): restore into an empty \
                 database or schema"
            )));
        }
    }
    let tx = c.transaction().await.map_err(|e| failed(e.into()))?;
    let mut rows = std::collections::BTreeMap::new();
    for table in TABLES {
        let path = folder.join(format!("{table}.jsonl"));
        let file = std::fs::File::open(&path)
            .map_err(|e| RestoreError::Failed(format!("{}: {e}", path.display())))?;
        if *table == "outbox_epoch" {
            tx.execute("DELETE FROM outbox_epoch", &[]).await.map_err(|e| failed(e.into()))?;
        }
        let insert = format!(
            "INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::text::json)"
        );
        let mut lines = std::io::BufReader::new(file).lines();
        loop {
            let mut batch = Vec::with_capacity(FETCH_ROWS);
            for line in lines.by_ref().take(FETCH_ROWS) {
                let line =
                    line.map_err(|e| RestoreError::Failed(format!("{}: {e}", path.display())))?;
                if !line.trim().is_empty() {
                    batch.push(line);
                }
            }
            if batch.is_empty() {
                break;
            }
            let json = format!("[{}]", batch.join(","));
            tx.execute(insert.as_str(), &[&json]).await.map_err(|e| failed(e.into()))?;
        }
        let count: i64 = tx
            .query_one(format!("SELECT count(*) FROM {table}").as_str(), &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| failed(e.into()))?;
        let want = manifest.collections.get(*table).map_or(0, |c| c.records);
        if u64::try_from(count).ok() != Some(want) {
            return Err(RestoreError::Failed(format!(
                "{table}: {count} rows restored, the manifest says {want}: the backup is damaged"
            )));
        }
        rows.insert((*table).to_owned(), want);
    }
    // Transaction ids of the old database mean nothing here; sequences go on past what is here.
    tx.batch_execute(
        "UPDATE outbox SET tx = pg_current_xact_id();
         UPDATE parked SET tx = pg_current_xact_id();
         SELECT setval(pg_get_serial_sequence('journal', 'seq'),
                       (SELECT COALESCE(max(seq), 0) + 1 FROM journal), false);
         SELECT setval(pg_get_serial_sequence('outbox', 'seq'),
                       GREATEST((SELECT COALESCE(max(seq), 0) FROM outbox),
                                (SELECT COALESCE(max(seq), 0) FROM delivered),
                                (SELECT COALESCE(max(seq), 0) FROM parked)) + 1, false);",
    )
    .await
    .map_err(|e| failed(e.into()))?;
    tx.commit().await.map_err(|e| failed(e.into()))?;
    restamp(&mut c).await.map_err(failed)?;
    Ok(RestoredTables { manifest, rows })
}

/// Events re-stamped per transaction after a restore: at most this many share a transaction
/// id, under the outbox reader's page (which never splits a transaction, so one transaction of
/// every restored event would be read whole on every pass).
const RESTAMP_ROWS: i64 = 1000;

/// Stamps the restored outbox and parked rows again, in sequence order, [`RESTAMP_ROWS`] at a
/// time, each batch with the id of a transaction of its own — later batches, later ids — so the
/// readers' order (transaction, then sequence) stays the sequence's, and their pages stay
/// small. The two tables are taken together: a parked event put back keeps its id, and takes
/// its place among the others. Each batch commits alone; one that does not leaves its rows
/// with the load's id, which is still a valid stamp (just a larger transaction).
async fn restamp(c: &mut super::Conn) -> Result<(), StoreError> {
    let mut after = 0i64;
    loop {
        let tx = c.transaction().await?;
        let last: Option<i64> = tx
            .query_one(
                "SELECT max(seq) FROM (
                    SELECT seq FROM (SELECT seq FROM outbox WHERE seq > $1
                                     UNION ALL
                                     SELECT seq FROM parked WHERE seq > $1) s
                     ORDER BY seq LIMIT $2) b",
                &[&after, &RESTAMP_ROWS],
            )
            .await?
            .try_get(0)?;
        let Some(last) = last else { break };
        tx.execute(
            "UPDATE outbox SET tx = pg_current_xact_id() WHERE seq > $1 AND seq <= $2",
            &[&after, &last],
        )
        .await?;
        tx.execute(
            "UPDATE parked SET tx = pg_current_xact_id() WHERE seq > $1 AND seq <= $2",
            &[&after, &last],
        )
        .await?;
        tx.commit().await?;
        after = last;
    }
    Ok(())
}
