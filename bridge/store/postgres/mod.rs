//! The PostgreSQL store: several daemons on one database.
//!
//! Records are kept whole as `bytea` in the store's codec ([`super::codec`], as sled keeps
//! them), with real columns beside them for every key, constraint and index (the schema is
//! `migrations/*.sql`, applied in order at start and by [`migrate`]). What sled's in-process
//! locks give the sled store, the database gives here, so that any number of processes may
//! share it:
//! - single use by constraints, never a read before a write: `INSERT … ON CONFLICT DO NOTHING`,
//!   then the owner read to tell a replay from a conflict (a conflicting insert waits for the
//!   transaction that holds the key, so the owner is committed when it is read);
//! - each state change is one transaction, checked against the stored revision by its first
//!   statement (`UPDATE payments … WHERE id = $1 AND rev = $2`: no row, stale), whose row lock
//!   then serialises that payment's changes;
//! - running totals spread over shard rows, summed on read, so concurrent entries do not queue
//!   on one row per account;
//! - the outbox is read by transaction id, never past a transaction that may still commit (see
//!   [`PgStore::outbox_after`]); its epoch is a row, bumped in the transaction that changes the
//!   outbox behind readers.
//!
//! Durability: every method commits before it returns, so [`Store::flush`] has nothing left to
//! do. Payments and their outcomes commit as the server's `synchronous_commit` says (it must be
//! `on` or stronger: [`PgStore::connect`] warns when it is not); quotes and delivery marks commit
//! with `synchronous_commit = off`, since losing them in a crash is honest (a quote not found, an
//! event delivered again under its id).
//!
//! Every call is bounded, by the server's clock where it can be ([`bounded`]: a statement, a
//! lock wait, a transaction left idle by a node cut off mid-way — which would otherwise hold its
//! row locks, and every node's outbox reads, until TCP gave up hours later) and by the pool's
//! (waiting for a connection, making one). The URL's own settings, where it has them, win.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use qrbridge_fx::Currency;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::codec::{decode, encode};
use super::*;

pub mod backup;

/// The schema's versions, in order: each applied once, in one transaction with the others
/// missing. Never edit one that was released; add the next.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_leases.sql")),
    (3, include_str!("migrations/0003_risk.sql")),
];

/// The advisory lock migrations run under (`qrbrmigr`), so daemons starting together apply
/// each version once. Advisory locks are per database, not per schema.
const MIGRATION_LOCK: i64 = 0x7172_6272_6d69_6772;

/// The advisory lock admin commits run under (`qrbraudt`): the audit log stays one chain
/// whichever node appends to it.
const AUDIT_LOCK: i64 = 0x7172_6272_6175_6474;

/// Where workers' marks ([`Store::mark`]) are kept among the settings, beside the audit head:
/// no admin setting starts so. Copied by backups with the rest, as the sled store's are.
const MARK_PREFIX: &str = "mark/";

/// The settings key of the audit chain's head (as in the sled store).
const AUDIT_HEAD: &str = "audit/head";

/// Rows each running total is spread over; a write picks one at random.
const TOTAL_SHARDS: i16 = 16;

/// How often a begin inserts again when the claim that refused it was let go before it could be
/// read (a payment released its quote or order in between): in practice once.
const CLAIM_TRIES: usize = 4;

/// The oldest server this store runs on (`xid8`, `pg_current_xact_id`: PostgreSQL 13).
const SERVER_VERSION_MIN: i32 = 130_000;

/// A connection from the pool.
type Conn = deadpool_postgres::Object;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let text = match e.as_db_error() {
            Some(d) => match d.detail() {
                Some(detail) => format!(
                    "{}: {} ({detail}) [SQLSTATE {}]",
                    d.severity(),
                    d.message(),
                    d.code().code()
                ),
                None => format!("{}: {} [SQLSTATE {}]", d.severity(), d.message(), d.code().code()),
            },
            None => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        StoreError::Database(text.into())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => database(format!("connection pool: {other}")),
        }
    }
}

fn database(message: impl Into<Arc<str>>) -> StoreError {
    StoreError::Database(message.into())
}

fn corrupt(tree: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt { tree, message: message.into() }
}

/// `v` as a `bigint`.
fn int(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| corrupt(what, format!("{v} does not fit a bigint")))
}

/// A `bigint` read back as the `u64` it was written from.
fn uint(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(what, format!("negative number {v}")))
}

/// The record in column `i` of `row`.
fn record<T: DeserializeOwned>(what: &'static str, row: &Row, i: usize) -> Result<T, StoreError> {
    let bytes: &[u8] = row.try_get(i)?;
    decode(what, bytes)
}

/// A transaction id read as text (`tx::text`): what outbox cursors hold.
fn xid(row: &Row, i: usize) -> Result<u64, StoreError> {
    let text: &str = row.try_get(i)?;
    text.parse().map_err(|_| corrupt("outbox", format!("transaction id {text:?}")))
}

/// Whether a partner's request id can be stored at all: no stored id holds a NUL (the database
/// refuses one), so a request with one is not found.
fn storable(partner: &str, request_id: &str) -> bool {
    !partner.contains('\0') && !request_id.contains('\0')
}

/// The `state` column: the state's name as the API and the records spell it.
fn state_name(s: PaymentState) -> &'static str {
    match s {
        PaymentState::Pending => "PENDING",
        PaymentState::Unknown => "UNKNOWN",
        PaymentState::Succeeded => "SUCCEEDED",
        PaymentState::Failed => "FAILED",
        PaymentState::Cancelling => "CANCELLING",
        PaymentState::Cancelled => "CANCELLED",
        PaymentState::Reversing => "REVERSING",
    }
}

async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

async fn row(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, params).await?)
}

async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

/// A read-only transaction on one snapshot (`REPEATABLE READ`), taken at its first statement.
async fn snapshot(c: &mut Conn) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    Ok(c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// Commits a write transaction, which waits for its WAL to reach disk (the server's
/// `synchronous_commit`): the store's flush, timed as one.
async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    let started = tokio::time::Instant::now();
    tx.commit().await?;
    super::flushed("postgres", started.elapsed(), 1);
    Ok(())
}

/// Every record `sql` selects (in its first column).
async fn records<T: DeserializeOwned>(
    c: &impl GenericClient,
    what: &'static str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<T>, StoreError> {
    rows(c, sql, params).await?.iter().map(|r| record(what, r, 0)).collect()
}

/// The record `sql` selects, if any.
async fn one<T: DeserializeOwned>(
    c: &impl GenericClient,
    what: &'static str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<T>, StoreError> {
    row(c, sql, params).await?.map(|r| record(what, &r, 0)).transpose()
}

fn parse(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    tokio_postgres::Config::from_str(url)
        .map(bounded)
        .map_err(|e| database(format!("database URL: {e}")))
}

/// The bounds every connection gets unless the URL sets its own: how long a connection may take
/// to open, how soon a dead peer is noticed (TCP keepalives), and on the server, how long one
/// statement may run, wait for a lock, or a transaction sit idle.
fn bounded(mut c: tokio_postgres::Config) -> tokio_postgres::Config {
    use std::time::Duration;
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(Duration::from_secs(5));
    }
    // A peer gone without a word (a partition, a host lost) is noticed in about 20 s, not the
    // operating system's default of hours: keepalives after 10 s idle, every 3 s, 3 unanswered;
    // data unacknowledged for 20 s ends the connection too.
    c.keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(3))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20));
    // Of several hosts in the URL, the primary: a standby (or a demoted primary) takes no writes.
    c.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    let mut options = c.get_options().unwrap_or("").to_owned();
    for (setting, value) in [
        ("statement_timeout", "60s"),
        ("lock_timeout", "10s"),
        ("idle_in_transaction_session_timeout", "15s"),
    ] {
        if !options.contains(setting) {
            options.push_str(&format!(" -c {setting}={value}"));
        }
    }
    c.options(options.trim());
    c
}

/// Applies the migrations `url`'s database lacks; returns the versions applied (none when it
/// was up to date). Refuses a database migrated by a newer build.
pub async fn migrate(url: &str) -> Result<Vec<u32>, StoreError> {
    let (mut client, connection) = parse(url)?.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    let applied = apply_migrations(&mut client).await;
    drop(client);
    let _ = task.await;
    applied
}

/// The migrations of this build the database lacks, applied in one transaction under
/// [`MIGRATION_LOCK`]: a daemon starting at the same time waits, then finds them applied.
async fn apply_migrations(client: &mut tokio_postgres::Client) -> Result<Vec<u32>, StoreError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .try_get(0)?;
    if version < SERVER_VERSION_MIN {
        return Err(database(format!(
            "PostgreSQL {version} is too old: this store needs {SERVER_VERSION_MIN} or newer"
        )));
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS qrbridge_migrations (
             version    int PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM qrbridge_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(&newest) = done.last() {
        if i64::from(newest) > i64::from(known) {
            return Err(database(format!(
                "the database's schema is version {newest}, newer than this build knows \
                 ({known}): run a qrbridge at least as new as the one that migrated it"
            )));
        }
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let v = i32::try_from(*version).map_err(|_| database("migration version overflows"))?;
        if done.contains(&v) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO qrbridge_migrations (version, applied_at) VALUES ($1, now())",
            &[&v],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The PostgreSQL store: a pool of connections to one database, which holds all state.
pub struct PgStore {
    pool: Pool,
    /// Backups asked for through the admin API: one at a time, and how the last one went.
    backups: super::backup::Backups,
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or a `key=value` string; a schema
    /// of its own by `?options=-csearch_path%3Dname`) with at most `pool_size` connections,
    /// applies the migrations it lacks and checks the connection.
    ///
    /// Without TLS: fine over loopback or a host's socket; a database across a network needs a
    /// TLS connector here before it is used that way.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore, StoreError> {
        if pool_size == 0 {
            return Err(database("the connection pool needs at least one connection"));
        }
        let manager = Manager::from_config(
            parse(url)?,
            NoTls,
            // A broken connection shows as closed, or fails its first statement (an error the
            // caller sees once); no probe query before every use.
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .recycle_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| database(format!("connection pool: {e}")))?;
        let mut c = pool.get().await?;
        let applied = apply_migrations(&mut c).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "database schema migrated");
        }
        let sync: String =
            c.query_one("SELECT current_setting('synchronous_commit')", &[]).await?.try_get(0)?;
        if sync == "off" {
            tracing::warn!(
                "the database's synchronous_commit is off: a payment answered as done may be lost \
                 in a crash of the database"
            );
        }
        let standbys: String = c
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .await?
            .try_get(0)?;
        if standbys.trim().is_empty() {
            tracing::warn!(
                "the database has no synchronous standby: a payment answered as done lives on \
                 this server alone, and a failover to an asynchronous standby may lose it \
                 (docs/SCALING.md)"
            );
        }
        drop(c);
        super::describe_metrics();
        Ok(PgStore { pool, backups: super::backup::Backups::default() })
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Waits until no other transaction is creating a payment for `partner`'s `request_id`
    /// (another node making the same request at this moment), so that a read after it sees that
    /// payment if it was committed. A plain read does not wait for a row not yet committed; an
    /// insert of the same unique key does. So a placeholder row of that request (no claims, no
    /// record) is inserted inside `c`'s transaction and taken back by the caller: here, to a
    /// savepoint, so nothing of it stays.
    async fn wait_for_request(
        tx: &deadpool_postgres::Transaction<'_>,
        partner: &str,
        request_id: &str,
    ) -> Result<(), StoreError> {
        tx.batch_execute("SAVEPOINT wait_for_request").await?;
        exec(
            tx,
            "INSERT INTO payments (id, partner, request_id, request_hash, quote_id, state, rev,
                                   created_at, record)
             VALUES ($1, $2, $3, '', '', 'PENDING', 0, clock_timestamp(), ''::bytea)
             ON CONFLICT DO NOTHING",
            &[&format!("\u{1}wait/{partner}/{request_id}"), &partner, &request_id],
        )
        .await?;
        tx.batch_execute("ROLLBACK TO SAVEPOINT wait_for_request").await?;
        Ok(())
    }

    /// Runs `sql` on the lease `name` (`$1`), for `holder` (`$2`), for `ttl` (`$3`, in
    /// milliseconds): whether it returned a row (the lease is `holder`'s until `ttl` from now).
    async fn lease_statement(
        &self,
        sql: &str,
        (name, holder, ttl): (&str, &str, std::time::Duration),
    ) -> Result<bool, StoreError> {
        let ms = i64::try_from(ttl.as_millis()).map_err(|_| database("lease too long"))?;
        let c = self.conn().await?;
        Ok(row(&c, sql, &[&name, &holder, &ms]).await?.is_some())
    }

    /// The payment `partner`'s `request_id` made, if any.
    async fn by_request(
        c: &impl GenericClient,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        one(
            c,
            "payments",
            "SELECT record FROM payments WHERE partner = $1 AND request_id = $2",
            &[&partner, &request_id],
        )
        .await
    }

    /// The payment the partner's request made, if it made one: a replay (same content) or a
    /// conflict (other content).
    async fn replay(
        c: &impl GenericClient,
        p: &PaymentRecord,
    ) -> Result<Option<Result<Begin, StoreError>>, StoreError> {
        let Some(r) = row(
            c,
            "SELECT request_hash, record FROM payments WHERE partner = $1 AND request_id = $2",
            &[&p.partner, &p.request_id],
        )
        .await?
        else {
            return Ok(None);
        };
        let hash: &str = r.try_get(0)?;
        if hash != p.request_hash {
            return Ok(Some(Err(BeginError::RequestConflict.into())));
        }
        Ok(Some(Ok(Begin::Replay(Box::new(record("payments", &r, 1)?)))))
    }

    /// A page of the outbox after the cursor `after`; see the trait.
    ///
    /// A sequence is taken when a row is inserted, not when its transaction commits, so reading
    /// `seq > cursor` would skip an event whose transaction committed after a later one had been
    /// read. Each row carries its transaction's id instead, and a read returns only rows of
    /// transactions older than every transaction still running (the snapshot's `xmin`): those
    /// are all committed or aborted, so none can appear behind the cursor afterwards. The cost:
    /// an event waits until every transaction older than its own has ended (a transaction held
    /// open anywhere in the cluster holds the outbox back — it delays, never loses).
    ///
    /// A transaction's events are never split across pages, so the cursor can be that
    /// transaction's id; one transaction with more than `max` events is a page of its own.
    pub async fn outbox_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<OutboxPage, StoreError> {
        let c = self.conn().await?;
        let from = after.unwrap_or(0).to_string();
        let limit = i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1);
        let mut page = Self::outbox_rows(
            &c,
            "SELECT tx::text AS tx_text, seq, record FROM outbox
              WHERE tx > $1::text::xid8 AND tx < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY tx, seq LIMIT $2",
            &[&from, &limit],
        )
        .await?;
        let more = page.len() > max;
        if more {
            let next = page[max].0;
            page.truncate(max);
            if page.last().is_none_or(|(tx, _, _)| *tx == next) {
                page.retain(|(tx, _, _)| *tx != next);
                if page.is_empty() {
                    let tx = next.to_string();
                    page = Self::outbox_rows(
                        &c,
                        "SELECT tx::text AS tx_text, seq, record FROM outbox
                          WHERE tx = $1::text::xid8
                          ORDER BY seq",
                        &[&tx],
                    )
                    .await?;
                }
            }
        }
        let cursor = page.last().map(|(tx, _, _)| *tx).or(after);
        Ok(OutboxPage { events: page.into_iter().map(|(_, s, e)| (s, e)).collect(), cursor, more })
    }

    /// Rows of `(tx, seq, event)`. (`tx` goes out as text under another name: `ORDER BY tx`
    /// must mean the column, not text that sorts "10" before "9".)
    async fn outbox_rows(
        c: &Conn,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<(u64, EventSeq, OutboxEvent)>, StoreError> {
        rows(c, sql, params)
            .await?
            .iter()
            .map(|r| Ok((xid(r, 0)?, uint("outbox", r.try_get(1)?)?, record("outbox", r, 2)?)))
            .collect()
    }
}

/// Makes the statement it is part of commit without waiting for its WAL to reach disk: for
/// writes whose loss in a crash is honest. `set_config(…, true)` is `SET LOCAL` as a function:
/// it holds until the end of the statement's own (implicit) transaction, commit included, so
/// one round trip does what `BEGIN; SET LOCAL …; …; COMMIT` does in four.
const RELAXED: &str = "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed";

impl Store for PgStore {
    async fn backup(
        &self,
        dir: &std::path::Path,
        clock: &dyn crate::clock::Clock,
    ) -> Result<Manifest, BackupError> {
        self.backup_into(dir, clock).await
    }

    fn backups(&self) -> Option<&Backups> {
        Some(&self.backups)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        // Taken when free, renewed by its holder, taken over once it ran out; one statement, so
        // two nodes asking at once cannot both get it.
        self.lease_statement(
            "INSERT INTO leases (name, holder, until)
             VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3::bigint / 1000.0))
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.holder = excluded.holder OR leases.until < clock_timestamp()
             RETURNING holder",
            (name, holder, ttl),
        )
        .await
    }

    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.lease_statement(
            "UPDATE leases SET until = clock_timestamp() + make_interval(secs => $3::bigint / 1000.0)
             WHERE name = $1 AND holder = $2 AND until > clock_timestamp()
             RETURNING holder",
            (name, holder, ttl),
        )
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let c = self.conn().await?;
        exec(&c, "DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder]).await?;
        Ok(())
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        let c = self.conn().await?;
        one(&c, "settings", "SELECT value FROM settings WHERE key = $1", &[&AUDIT_HEAD]).await
    }

    async fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        let c = self.conn().await?;
        exec(
            &c,
            &format!(
                "INSERT INTO quotes (id, partner, expires_at, record)
                 SELECT $1::text, $2::text, $3::timestamptz, $4::bytea FROM {RELAXED}
                 ON CONFLICT (id) DO UPDATE
                    SET partner = excluded.partner, expires_at = excluded.expires_at,
                        record = excluded.record"
            ),
            &[&q.quote_id, &q.partner, &q.quote.expires_at, &encode(q)],
        )
        .await?;
        Ok(())
    }

    async fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        if id.contains('\0') {
            // No stored id holds a NUL (the database refuses one): not found.
            return Ok(None);
        }
        let c = self.conn().await?;
        one(&c, "quotes", "SELECT record FROM quotes WHERE id = $1", &[&id]).await
    }

    async fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<Purge, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        // One more than `max`: whether the batch stopped at its limit or at the end.
        let limit = i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1);
        let looked: Vec<QuoteRecord> = records(
            &tx,
            "quotes",
            "SELECT record FROM quotes WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after.unwrap_or(""), &limit],
        )
        .await?;
        let mut purge = Purge { cursor: after.map(str::to_owned), ..Purge::default() };
        let mut expired = Vec::new();
        purge.caught_up = true;
        for (i, q) in looked.into_iter().enumerate() {
            if i == max {
                purge.caught_up = false;
                break;
            }
            if q.quote.expires_at >= expired_before {
                break;
            }
            purge.cursor = Some(q.quote_id.clone());
            expired.push(q.quote_id);
        }
        if !expired.is_empty() {
            // Locked first, so a payment beginning on one of them now (it holds its quote
            // `FOR KEY SHARE` until it commits) has either committed, and its claim is seen by
            // the delete's own snapshot, or waits and then finds the quote gone.
            rows(
                &tx,
                "SELECT id FROM quotes WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&expired],
            )
            .await?;
            let removed = exec(
                &tx,
                "DELETE FROM quotes q WHERE id = ANY($1)
                   AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.quote_claim = q.id)",
                &[&expired],
            )
            .await?;
            purge.removed = usize::try_from(removed).unwrap_or(usize::MAX);
        }
        commit(tx).await?;
        Ok(purge)
    }

    async fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        // Held until commit: a purge cannot remove the quote under this payment.
        let quote: Option<QuoteRecord> = one(
            &tx,
            "quotes",
            "SELECT record FROM quotes WHERE id = $1 FOR KEY SHARE",
            &[&p.quote_id],
        )
        .await?;
        let refused = match &quote {
            None => Some(BeginError::QuoteNotFound),
            Some(q) if q.partner != p.partner => Some(BeginError::QuoteNotFound),
            Some(q) if q.quote.is_expired(now) => Some(BeginError::QuoteExpired),
            Some(_) => None,
        };
        if let Some(refused) = refused {
            // The same request made while the quote was good is a replay, expired or not: also
            // one another node is making right now.
            Self::wait_for_request(&tx, &p.partner, &p.request_id).await?;
            if let Some(answer) = Self::replay(&tx, p).await? {
                return answer;
            }
            return Err(refused.into());
        }
        let rev = int("payments", p.rev)?;
        let record = encode(p);
        for _ in 0..CLAIM_TRIES {
            // Every claim at once: the request id, the quote, the order.
            let created = exec(
                &tx,
                "INSERT INTO payments (id, partner, request_id, request_hash, quote_id,
                                       quote_claim, order_claim, state, rev, created_at, record)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT DO NOTHING",
                &[
                    &p.payment_id,
                    &p.partner,
                    &p.request_id,
                    &p.request_hash,
                    &p.quote_id,
                    &p.order,
                    &state_name(p.state),
                    &rev,
                    &p.created_at,
                    &record,
                ],
            )
            .await?;
            if created == 1 {
                exec(
                    &tx,
                    "INSERT INTO work (payment_id, due, record) VALUES ($1, $2, $3)",
                    &[&p.payment_id, &work.due, &encode(work)],
                )
                .await?;
                commit(tx).await?;
                return Ok(Begin::Created);
            }
            // Refused by a committed claim (the insert waited for its transaction): whose, in
            // the order the sled store checks them.
            if let Some(answer) = Self::replay(&tx, p).await? {
                return answer;
            }
            let held =
                row(&tx, "SELECT 1 FROM payments WHERE quote_claim = $1", &[&p.quote_id]).await?;
            if held.is_some() {
                return Err(BeginError::QuoteUsed.into());
            }
            if let Some(order) = &p.order {
                let held =
                    row(&tx, "SELECT 1 FROM payments WHERE order_claim = $1", &[order]).await?;
                if held.is_some() {
                    return Err(BeginError::OrderPaid.into());
                }
            }
            if row(&tx, "SELECT 1 FROM payments WHERE id = $1", &[&p.payment_id]).await?.is_some() {
                return Err(corrupt(
                    "payments",
                    format!("payment id {} is taken by another request", p.payment_id),
                ));
            }
            // The claim was let go in between: claim again.
        }
        Err(database(format!(
            "the claims of payment {} kept changing while it began",
            p.payment_id
        )))
    }

    async fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        if id.contains('\0') {
            // No stored id holds a NUL (the database refuses one): not found.
            return Ok(None);
        }
        let c = self.conn().await?;
        one(&c, "payments", "SELECT record FROM payments WHERE id = $1", &[&id]).await
    }

    async fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        let c = self.conn().await?;
        records(&c, "payments", "SELECT record FROM payments ORDER BY id", &[]).await
    }

    async fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        if !storable(partner, request_id) {
            return Ok(None);
        }
        let c = self.conn().await?;
        Self::by_request(&c, partner, request_id).await
    }

    async fn request_settled(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        if !storable(partner, request_id) {
            return Ok(None);
        }
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        Self::wait_for_request(&tx, partner, request_id).await?;
        let found = Self::by_request(&tx, partner, request_id).await?;
        tx.rollback().await?;
        Ok(found)
    }

    async fn apply(&self, ch: &Change) -> Result<(), StoreError> {
        ch.assert_balanced();
        let p = &ch.payment;
        let stale = || StoreError::Stale(p.payment_id.clone());
        let Some(stored_rev) = p.rev.checked_sub(1) else { return Err(stale()) };
        let (rev, stored_rev) = (int("payments", p.rev)?, int("payments", stored_rev)?);
        // An order whose payment failed or was cancelled may be paid again.
        let release_order =
            p.order.is_some() && matches!(p.state, PaymentState::Failed | PaymentState::Cancelled);
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        // First: the revision check, and the row lock that serialises this payment's changes.
        let updated = exec(
            &tx,
            "UPDATE payments
                SET record = $2, state = $3, rev = $4,
                    quote_claim = CASE WHEN $5 THEN NULL ELSE quote_claim END,
                    order_claim = CASE WHEN $6 THEN NULL ELSE order_claim END
              WHERE id = $1 AND rev = $7",
            &[
                &p.payment_id,
                &encode(p),
                &state_name(p.state),
                &rev,
                &ch.release_quote,
                &release_order,
                &stored_rev,
            ],
        )
        .await?;
        if updated == 0 {
            return Err(stale());
        }
        if let Some(r) = &ch.refund {
            let recorded = exec(
                &tx,
                "INSERT INTO refunds (id, payment_id, acquirer, acquirer_refund_id, created_at,
                                      record)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (acquirer, acquirer_refund_id) DO NOTHING",
                &[
                    &r.refund_id,
                    &r.payment_id,
                    &r.acquirer,
                    &r.acquirer_refund_id,
                    &r.created_at,
                    &encode(r),
                ],
            )
            .await?;
            if recorded == 0 {
                let existing: RefundRecord = one(
                    &tx,
                    "refunds",
                    "SELECT record FROM refunds WHERE acquirer = $1 AND acquirer_refund_id = $2",
                    &[&r.acquirer, &r.acquirer_refund_id],
                )
                .await?
                .ok_or_else(|| {
                    corrupt("refunds", format!("{} refused, yet not there", r.acquirer_refund_id))
                })?;
                return Err(StoreError::RefundExists(Box::new(existing)));
            }
        }
        match &ch.work {
            Work::Set(w) => {
                exec(
                    &tx,
                    "INSERT INTO work (payment_id, due, record) VALUES ($1, $2, $3)
                     ON CONFLICT (payment_id) DO UPDATE
                        SET due = excluded.due, record = excluded.record",
                    &[&p.payment_id, &w.due, &encode(w)],
                )
                .await?;
            }
            Work::Done => {
                exec(&tx, "DELETE FROM work WHERE payment_id = $1", &[&p.payment_id]).await?;
            }
            Work::Keep => {}
        }
        if let Some(j) = &ch.journal {
            // The entry's effect on each account it posts to, in one order for every writer
            // (rows locked in the same order cannot deadlock).
            let mut deltas: BTreeMap<(&str, &str), i128> = BTreeMap::new();
            for posting in &j.postings {
                let d =
                    deltas.entry((posting.currency.code(), posting.account.as_str())).or_insert(0);
                *d = d.checked_add(i128::from(posting.minor)).ok_or_else(|| {
                    corrupt("totals", format!("{} {} overflows", posting.currency, posting.account))
                })?;
            }
            let currencies: Vec<&str> = deltas.keys().map(|(c, _)| *c).collect();
            let accounts: Vec<&str> = deltas.keys().map(|(_, a)| *a).collect();
            let amounts: Vec<String> = deltas.values().map(i128::to_string).collect();
            exec(
                &tx,
                "WITH entry AS (
                     INSERT INTO journal (payment_id, kind, at, record) VALUES ($1, $2, $3, $4)
                 )
                 INSERT INTO account_totals (currency, account, shard, total)
                 SELECT c, a, $5, t::numeric
                   FROM unnest($6::text[], $7::text[], $8::text[]) WITH ORDINALITY AS x(c, a, t, n)
                  ORDER BY n
                 ON CONFLICT (currency, account, shard) DO UPDATE
                    SET total = account_totals.total + excluded.total",
                &[
                    &j.payment_id,
                    &j.kind,
                    &j.at,
                    &encode(j),
                    &fastrand::i16(0..TOTAL_SHARDS),
                    &currencies,
                    &accounts,
                    &amounts,
                ],
            )
            .await?;
        }
        if !ch.events.is_empty() {
            let ids: Vec<&str> = ch.events.iter().map(|e| e.event_id.as_str()).collect();
            let payments: Vec<&str> = ch.events.iter().map(|e| e.payment_id.as_str()).collect();
            let bodies: Vec<Vec<u8>> = ch.events.iter().map(encode).collect();
            // In the given order: each takes its sequence number as it is inserted.
            exec(
                &tx,
                "INSERT INTO outbox (event_id, payment_id, record)
                 SELECT e, p, r
                   FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS x(e, p, r, n)
                  ORDER BY n",
                &[&ids, &payments, &bodies],
            )
            .await?;
        }
        commit(tx).await?;
        Ok(())
    }

    async fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let c = self.conn().await?;
        records(&c, "journal", "SELECT record FROM journal ORDER BY seq", &[]).await
    }

    async fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        if payment_id.contains('\0') {
            // No stored id holds a NUL (the database refuses one): not found.
            return Ok(None);
        }
        let c = self.conn().await?;
        one(&c, "work", "SELECT record FROM work WHERE payment_id = $1", &[&payment_id]).await
    }

    async fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        let c = self.conn().await?;
        records(&c, "work", "SELECT record FROM work ORDER BY payment_id", &[]).await
    }

    async fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        if acquirer.contains('\0') || acquirer_refund_id.contains('\0') {
            // No stored id holds a NUL (the database refuses one): not found.
            return Ok(None);
        }
        let c = self.conn().await?;
        one(
            &c,
            "refunds",
            "SELECT record FROM refunds WHERE acquirer = $1 AND acquirer_refund_id = $2",
            &[&acquirer, &acquirer_refund_id],
        )
        .await
    }

    async fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        if payment_id.contains('\0') {
            // No stored id holds a NUL (the database refuses one): not found.
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        // Refund ids are time-ordered: id order is creation order.
        records(
            &c,
            "refunds",
            "SELECT record FROM refunds WHERE payment_id = $1 ORDER BY id",
            &[&payment_id],
        )
        .await
    }

    async fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        let c = self.conn().await?;
        rows(&c, "SELECT seq, record FROM outbox ORDER BY seq", &[])
            .await?
            .iter()
            .map(|r| Ok((uint("outbox", r.try_get(0)?)?, record("outbox", r, 1)?)))
            .collect()
    }

    async fn outbox_after(&self, after: Option<u64>, max: usize) -> Result<OutboxPage, StoreError> {
        PgStore::outbox_after(self, after, max).await
    }

    async fn outbox_epoch(&self) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let r = row(&c, "SELECT epoch FROM outbox_epoch", &[])
            .await?
            .ok_or_else(|| corrupt("outbox_epoch", "the epoch row is missing"))?;
        uint("outbox_epoch", r.try_get(0)?)
    }

    async fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError> {
        let seqs = seqs.iter().map(|s| int("parked", *s)).collect::<Result<Vec<i64>, _>>()?;
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let removed = exec(&tx, "DELETE FROM parked WHERE seq = ANY($1)", &[&seqs]).await?;
        if removed > 0 {
            // Their payments' later events may go now: readers keeping a cursor look again.
            exec(&tx, "UPDATE outbox_epoch SET epoch = epoch + 1", &[]).await?;
        }
        commit(tx).await?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    async fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let c = self.conn().await?;
        records(
            &c,
            "payments",
            "SELECT record FROM payments WHERE created_at >= $1 AND created_at < $2
              ORDER BY created_at, id",
            &[&from, &to],
        )
        .await
    }

    async fn put_risk_decision(&self, d: &RiskDecisionRecord) -> Result<(), StoreError> {
        let c = self.conn().await?;
        exec(
            &c,
            &format!(
                "INSERT INTO risk_decisions (id, at, partner, record)
                 SELECT $1::text, $2::timestamptz, $3::text, $4::bytea FROM {RELAXED}
                 ON CONFLICT (id) DO NOTHING"
            ),
            &[&d.decision_id, &d.at, &d.partner, &encode(d)],
        )
        .await?;
        Ok(())
    }

    async fn risk_decisions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<RiskDecisionRecord>, StoreError> {
        let c = self.conn().await?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        records(
            &c,
            "risk_decisions",
            "SELECT record FROM risk_decisions WHERE at >= $1 AND at < $2
              ORDER BY at, id LIMIT $3",
            &[&from, &to, &max],
        )
        .await
    }

    async fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        let c = self.conn().await?;
        records(
            &c,
            "refunds",
            "SELECT record FROM refunds WHERE created_at >= $1 AND created_at < $2
              ORDER BY created_at, id",
            &[&from, &to],
        )
        .await
    }

    async fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        if payment_id.contains('\0') {
            // No stored id holds a NUL (the database refuses one): not found.
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        records(
            &c,
            "journal",
            "SELECT record FROM journal WHERE payment_id = $1 ORDER BY seq",
            &[&payment_id],
        )
        .await
    }

    async fn account_totals(&self) -> Result<BTreeMap<(Currency, String), i128>, StoreError> {
        let c = self.conn().await?;
        let mut totals = BTreeMap::new();
        for r in rows(
            &c,
            "SELECT currency, account, sum(total)::text FROM account_totals
              GROUP BY currency, account",
            &[],
        )
        .await?
        {
            let (code, account, sum): (&str, String, &str) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let currency = Currency::from_code(code)
                .map_err(|_| corrupt("totals", format!("a total in {code:?}")))?;
            let sum: i128 =
                sum.parse().map_err(|_| corrupt("totals", format!("{code} {account} is {sum}")))?;
            totals.insert((currency, account), sum);
        }
        Ok(totals)
    }

    async fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        // The log keeps the event's header, not its body.
        let kept = d.kept();
        let seq = int("delivered", seq)?;
        let c = self.conn().await?;
        // One statement: the mark, and the event out of the outbox.
        exec(
            &c,
            &format!(
                "WITH gone AS (DELETE FROM outbox WHERE seq = $1)
                 INSERT INTO delivered (seq, event_id, payment_id, delivered_at, record)
                 SELECT $1::bigint, $2::text, $3::text, $4::timestamptz, $5::bytea FROM {RELAXED}
                 ON CONFLICT (seq) DO UPDATE
                    SET event_id = excluded.event_id, payment_id = excluded.payment_id,
                        delivered_at = excluded.delivered_at, record = excluded.record"
            ),
            &[
                &seq,
                &kept.event.event_id,
                &kept.event.payment_id,
                &kept.delivered_at,
                &encode(&kept),
            ],
        )
        .await?;
        Ok(())
    }

    async fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        let c = self.conn().await?;
        records(&c, "delivered", "SELECT record FROM delivered ORDER BY seq", &[]).await
    }

    async fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError> {
        let seq = int("parked", seq)?;
        let c = self.conn().await?;
        // One statement: an event is never both parked and waiting. It keeps its transaction
        // id, so a replay puts it back in its place among its payment's events.
        exec(
            &c,
            "WITH gone AS (DELETE FROM outbox WHERE seq = $1 RETURNING tx)
             INSERT INTO parked (seq, tx, event_id, payment_id, record)
             VALUES ($1, COALESCE((SELECT tx FROM gone), pg_current_xact_id()), $2, $3, $4)
             ON CONFLICT (seq) DO UPDATE
                SET event_id = excluded.event_id, payment_id = excluded.payment_id,
                    record = excluded.record",
            &[&seq, &parked.event.event_id, &parked.event.payment_id, &encode(parked)],
        )
        .await?;
        Ok(())
    }

    async fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        let c = self.conn().await?;
        rows(&c, "SELECT seq, record FROM parked ORDER BY seq", &[])
            .await?
            .iter()
            .map(|r| Ok((uint("parked", r.try_get(0)?)?, record("parked", r, 1)?)))
            .collect()
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let mut c = self.conn().await?;
        // One statement, bounded on the server: a count that takes too long is ended there, so
        // the connection goes back to the pool free, not busy behind a caller that gave up.
        let tx = c.transaction().await?;
        let limit = format!("SET LOCAL statement_timeout = {}", BACKLOG_READ_LIMIT.as_millis());
        tx.batch_execute(&limit).await?;
        let r = tx
            .query_one(
                "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM parked),
                        (SELECT array_agg(record) FROM work)",
                &[],
            )
            .await?;
        tx.commit().await?;
        let work: Option<Vec<Vec<u8>>> = r.try_get(2)?;
        let work = work.unwrap_or_default();
        let work = work.iter().map(|w| decode::<WorkItem>("work", w).map(|w| w.task));
        Ok(Backlog {
            work: work.collect::<Result<_, _>>()?,
            outbox: uint("outbox", r.try_get(0)?)?,
            parked: uint("parked", r.try_get(1)?)?,
        })
    }

    async fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        if event_id.contains('\0') {
            // No stored id holds a NUL (the database refuses one): not found.
            return Ok(false);
        }
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let Some(r) = row(
            &tx,
            "DELETE FROM parked WHERE event_id = $1 RETURNING seq, tx::text, record",
            &[&event_id],
        )
        .await?
        else {
            return Ok(false);
        };
        let (seq, was): (i64, &str) = (r.try_get(0)?, r.try_get(1)?);
        let p: ParkedEvent = record("parked", &r, 2)?;
        let event = OutboxEvent { replayed_at: Some(now), ..p.event };
        exec(
            &tx,
            "INSERT INTO outbox (seq, tx, event_id, payment_id, record)
             VALUES ($1, $2::text::xid8, $3, $4, $5)
             ON CONFLICT (seq) DO UPDATE
                SET tx = excluded.tx, event_id = excluded.event_id,
                    payment_id = excluded.payment_id, record = excluded.record",
            &[&seq, &was, &event.event_id, &event.payment_id, &encode(&event)],
        )
        .await?;
        // In the same transaction: a reader that sees the new epoch finds the event back.
        exec(&tx, "UPDATE outbox_epoch SET epoch = epoch + 1", &[]).await?;
        commit(tx).await?;
        Ok(true)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write committed before it returned (see the module doc).
        Ok(())
    }

    async fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
        fence: Option<Fence<'_>>,
    ) -> Result<AuditRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        // One appender at a time, on any node: each record follows the head it read.
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK]).await?;
        if let Some(f) = fence {
            // Still this holder's, on the database's clock; and the row lock keeps another node
            // from taking it (its `lease` updates this row) until this transaction ends. So the
            // next holder reads what this change writes, or this change is not written.
            let held = tx
                .query_opt(
                    "SELECT 1 FROM leases WHERE name = $1 AND holder = $2
                       AND until > clock_timestamp() FOR SHARE",
                    &[&f.lease, &f.holder],
                )
                .await?;
            if held.is_none() {
                return Err(StoreError::LeaseLost(f.lease.to_owned()));
            }
        }
        let head: Option<AuditHead> =
            one(&tx, "settings", "SELECT value FROM settings WHERE key = $1", &[&AUDIT_HEAD])
                .await?;
        let record = AuditRecord::next(draft, head);
        exec(
            &tx,
            "INSERT INTO audit (seq, at, actor, action, hash, record) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &int("audit", record.seq)?,
                &record.at,
                &record.actor,
                &record.action,
                &record.hash,
                &encode(&record),
            ],
        )
        .await?;
        let head = record.head();
        let mut writes: Vec<(&str, Option<Vec<u8>>)> = vec![(AUDIT_HEAD, Some(encode(&head)))];
        writes.extend(settings.iter().map(|(k, v)| (k.as_str(), v.clone())));
        for (key, value) in writes {
            match value {
                Some(v) => {
                    exec(
                        &tx,
                        "INSERT INTO settings (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&key, &v],
                    )
                    .await?
                }
                None => exec(&tx, "DELETE FROM settings WHERE key = $1", &[&key]).await?,
            };
        }
        commit(tx).await?;
        Ok(record)
    }

    async fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        let mut c = self.conn().await?;
        // One snapshot for both: the log and the head it reads agree.
        let tx = snapshot(&mut c).await?;
        let log = records(&tx, "audit", "SELECT record FROM audit ORDER BY seq", &[]).await?;
        let head =
            one(&tx, "settings", "SELECT value FROM settings WHERE key = $1", &[&AUDIT_HEAD])
                .await?;
        tx.commit().await?;
        Ok((log, head))
    }

    async fn mark(&self, name: &str) -> Result<Option<String>, StoreError> {
        let c = self.conn().await?;
        let key = format!("{MARK_PREFIX}{name}");
        let r = rows(&c, "SELECT value FROM settings WHERE key = $1", &[&key]).await?;
        let Some(row) = r.first() else { return Ok(None) };
        let value: Vec<u8> = row.try_get(0)?;
        String::from_utf8(value)
            .map(Some)
            .map_err(|_| corrupt("marks", format!("{name} is not text")))
    }

    async fn set_mark(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let key = format!("{MARK_PREFIX}{name}");
        exec(
            &c,
            &format!(
                "INSERT INTO settings (key, value) SELECT $1::text, $2::bytea FROM {RELAXED}
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            &[&key, &value.as_bytes()],
        )
        .await?;
        Ok(())
    }

    async fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let c = self.conn().await?;
        rows(
            &c,
            "SELECT key, value FROM settings WHERE key >= $1 AND starts_with(key, $1)
              ORDER BY key",
            &[&prefix],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }
}
