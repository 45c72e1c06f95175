//! The store a daemon runs on, chosen by its configuration: the embedded sled store, or
//! PostgreSQL (several daemons on one database). The engine is generic over [`Store`]; this is
//! the one type the daemon builds it with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use qrbridge_fx::Currency;

use super::*;

/// One of the stores.
// One per daemon, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyStore {
    Sled(SledStore),
    Postgres(PgStore),
}

/// Applies the PostgreSQL store's migrations to the database at `url`; returns the versions it
/// applied (none when it was up to date).
pub async fn migrate_database(url: &str) -> Result<Vec<u32>, StoreError> {
    super::postgres::migrate(url).await
}

/// `$body` with `$s` bound to the store inside, whichever it is.
macro_rules! each {
    ($self:ident, $s:ident => $body:expr) => {
        match $self {
            AnyStore::Sled($s) => $body,
            AnyStore::Postgres($s) => $body,
        }
    };
}

impl AnyStore {
    /// The store `storage` names: PostgreSQL when it has a URL, else sled at its path.
    pub async fn open(storage: &qrbridge_config::model::Storage) -> Result<AnyStore, StoreError> {
        if let Some(url) = &storage.url {
            return Ok(AnyStore::Postgres(
                PgStore::connect(url, storage.pool_size as usize).await?,
            ));
        }
        Ok(AnyStore::Sled(
            SledStore::open(&storage.path, storage.cache_bytes)?
                .with_backup_log_bytes_max(storage.backup_log_bytes_max)
                .with_flush_wait(std::time::Duration::from_millis(storage.flush_every_ms)),
        ))
    }

    /// The sled store inside, if that is what this is.
    pub fn sled(&self) -> Option<&SledStore> {
        match self {
            AnyStore::Sled(s) => Some(s),
            AnyStore::Postgres(_) => None,
        }
    }

    /// Which store this is, for logs: `sled` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Sled(_) => "sled",
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

impl Store for AnyStore {
    async fn put_quote(&self, q: &QuoteRecord) -> Result<(), StoreError> {
        each!(self, s => Store::put_quote(s, q).await)
    }

    async fn quote(&self, id: &str) -> Result<Option<QuoteRecord>, StoreError> {
        each!(self, s => Store::quote(s, id).await)
    }

    async fn purge_quotes(
        &self,
        after: Option<&str>,
        expired_before: DateTime<Utc>,
        max: usize,
    ) -> Result<Purge, StoreError> {
        each!(self, s => Store::purge_quotes(s, after, expired_before, max).await)
    }

    async fn begin_payment(
        &self,
        p: &PaymentRecord,
        work: &WorkItem,
        now: DateTime<Utc>,
    ) -> Result<Begin, StoreError> {
        each!(self, s => Store::begin_payment(s, p, work, now).await)
    }

    async fn payment(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        each!(self, s => Store::payment(s, id).await)
    }

    async fn payments(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        each!(self, s => Store::payments(s).await)
    }

    async fn payment_by_request(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        each!(self, s => Store::payment_by_request(s, partner, request_id).await)
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        each!(self, s => Store::backlog(s).await)
    }

    async fn request_settled(
        &self,
        partner: &str,
        request_id: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        each!(self, s => Store::request_settled(s, partner, request_id).await)
    }

    async fn apply(&self, change: &Change) -> Result<(), StoreError> {
        each!(self, s => Store::apply(s, change).await)
    }

    async fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        each!(self, s => Store::journal(s).await)
    }

    async fn work_item(&self, payment_id: &str) -> Result<Option<WorkItem>, StoreError> {
        each!(self, s => Store::work_item(s, payment_id).await)
    }

    async fn open_work(&self) -> Result<Vec<WorkItem>, StoreError> {
        each!(self, s => Store::open_work(s).await)
    }

    async fn refund_by_acquirer_id(
        &self,
        acquirer: &str,
        acquirer_refund_id: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        each!(self, s => Store::refund_by_acquirer_id(s, acquirer, acquirer_refund_id).await)
    }

    async fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        each!(self, s => Store::refunds_of(s, payment_id).await)
    }

    async fn outbox(&self) -> Result<Vec<(EventSeq, OutboxEvent)>, StoreError> {
        each!(self, s => Store::outbox(s).await)
    }

    async fn outbox_after(&self, after: Option<u64>, max: usize) -> Result<OutboxPage, StoreError> {
        each!(self, s => Store::outbox_after(s, after, max).await)
    }

    async fn outbox_epoch(&self) -> Result<u64, StoreError> {
        each!(self, s => Store::outbox_epoch(s).await)
    }

    async fn purge_parked(&self, seqs: &[EventSeq]) -> Result<usize, StoreError> {
        each!(self, s => Store::purge_parked(s, seqs).await)
    }

    async fn payments_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        each!(self, s => Store::payments_made(s, from, to).await)
    }

    async fn refunds_made(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RefundRecord>, StoreError> {
        each!(self, s => Store::refunds_made(s, from, to).await)
    }

    async fn put_risk_decision(&self, d: &RiskDecisionRecord) -> Result<(), StoreError> {
        each!(self, s => Store::put_risk_decision(s, d).await)
    }

    async fn risk_decisions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<RiskDecisionRecord>, StoreError> {
        each!(self, s => Store::risk_decisions(s, from, to, max).await)
    }

    async fn journal_of(&self, payment_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        each!(self, s => Store::journal_of(s, payment_id).await)
    }

    async fn account_totals(&self) -> Result<BTreeMap<(Currency, String), i128>, StoreError> {
        each!(self, s => Store::account_totals(s).await)
    }

    async fn delivered(&self, seq: EventSeq, d: &DeliveredEvent) -> Result<(), StoreError> {
        each!(self, s => Store::delivered(s, seq, d).await)
    }

    async fn delivered_events(&self) -> Result<Vec<DeliveredEvent>, StoreError> {
        each!(self, s => Store::delivered_events(s).await)
    }

    async fn park(&self, seq: EventSeq, parked: &ParkedEvent) -> Result<(), StoreError> {
        each!(self, s => Store::park(s, seq, parked).await)
    }

    async fn parked(&self) -> Result<Vec<(EventSeq, ParkedEvent)>, StoreError> {
        each!(self, s => Store::parked(s).await)
    }

    async fn unpark(&self, event_id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        each!(self, s => Store::unpark(s, event_id, now).await)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        each!(self, s => Store::flush(s).await)
    }

    async fn admin_commit(
        &self,
        draft: &AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
        fence: Option<Fence<'_>>,
    ) -> Result<AuditRecord, StoreError> {
        each!(self, s => Store::admin_commit(s, draft, settings, fence).await)
    }

    async fn audit_log(&self) -> Result<(Vec<AuditRecord>, Option<AuditHead>), StoreError> {
        each!(self, s => Store::audit_log(s).await)
    }

    async fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        each!(self, s => Store::settings(s, prefix).await)
    }

    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        each!(self, s => Store::audit_head(s).await)
    }

    async fn mark(&self, name: &str) -> Result<Option<String>, StoreError> {
        each!(self, s => Store::mark(s, name).await)
    }

    async fn set_mark(&self, name: &str, value: &str) -> Result<(), StoreError> {
        each!(self, s => Store::set_mark(s, name, value).await)
    }

    fn shared(&self) -> bool {
        each!(self, s => Store::shared(s))
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => Store::lease(s, name, holder, ttl).await)
    }

    async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => Store::renew_lease(s, name, holder, ttl).await)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        each!(self, s => Store::release_lease(s, name, holder).await)
    }

    async fn backup(
        &self,
        dir: &std::path::Path,
        clock: &dyn crate::clock::Clock,
    ) -> Result<Manifest, BackupError> {
        each!(self, s => Store::backup(s, dir, clock).await)
    }

    fn backups(&self) -> Option<&Backups> {
        each!(self, s => Store::backups(s))
    }
}
