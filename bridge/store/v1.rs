//! The first release's data folder: JSON records, one sled tree per purpose. [`migrate`] moves
//! it into the one tree of compact records when the store opens.
//!
//! Crash-safe by being repeatable: every record is written under its new key with the value it
//! will always have (the same input gives the same output), the new records are flushed, and only
//! then are the old trees dropped. A crash before the drops leaves the old trees, and the next
//! open simply migrates again over the same keys. Settings and the audit chain keep their own
//! trees and are read in place (the codec reads JSON records), so nothing of the chain is
//! rewritten.

use std::collections::BTreeMap;

use qrbridge_fx::Currency;

use super::codec::{decode, encode};
use super::sled_store::{encode_totals, key, IdemEntry};
use super::StoreError;
use crate::model::*;

/// The first release's trees, in the order they are migrated.
const TREES: [&str; 13] = [
    "quotes",
    "payments",
    "idempotency",
    "quote_use",
    "orders",
    "ledger",
    "outbox",
    "webhooks_delivered",
    "webhooks_parked",
    "resolver",
    "refunds",
    "refunds_by_payment",
    "refund_idempotency",
];

/// Written once the migration is complete (and the old trees dropped).
pub(super) const MIGRATED: &[u8] = b"m/migrated-from-v1";

/// Records written per batch.
const BATCH: usize = 4096;

/// What a migration did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrated {
    pub records: u64,
    pub payments: u64,
}

fn seq_key(tree: &'static str, k: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(k)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt { tree, message: "key is not a sequence number".into() })
}

/// Migrates the first release's trees of `db` into `t`, if there are any.
pub fn migrate(
    db: &sled::Db,
    db_path: &std::path::Path,
    t: &sled::Tree,
) -> Result<Option<Migrated>, StoreError> {
    let names = db.tree_names();
    let present: Vec<&'static str> =
        TREES.into_iter().filter(|n| names.iter().any(|m| m.as_ref() == n.as_bytes())).collect();
    if present.is_empty() {
        // A folder of this release from its start: marked too, so the first release's trees
        // appearing in it later (a rollback) are refused below rather than merged.
        if t.get(MIGRATED)?.is_none() {
            t.insert(MIGRATED, &[][..])?;
        }
        return Ok(None);
    }
    if t.get(MIGRATED)?.is_some() {
        // The first release ran on this folder again after it was migrated (a rollback): its
        // trees now hold only what it wrote since, and the records tree the rest. Merging the
        // two by hand is an operator's decision, not a start-up's.
        return Err(StoreError::Corrupt {
            tree: "records",
            message: format!(
                "this folder was migrated, yet the first release's trees ({}) are back: a \
                 rollback wrote to it; restore the backup taken before the rollback",
                present.join(", ")
            ),
        });
    }
    let mut m = Migrated::default();
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let mut put = |k: Vec<u8>, v: Vec<u8>, m: &mut Migrated| -> Result<(), StoreError> {
        batch.insert(k, v);
        m.records += 1;
        pending += 1;
        if pending == BATCH {
            t.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
        Ok(())
    };
    let mut totals: BTreeMap<(Currency, String), i128> = BTreeMap::new();
    for &name in &present {
        let tree = db.open_tree(name)?;
        for kv in tree.iter() {
            let (k, v) = kv?;
            let text = || String::from_utf8_lossy(&k).into_owned();
            match name {
                "quotes" => {
                    let q: QuoteRecord = decode(name, &v)?;
                    put(key::of(key::QUOTE, &q.quote_id), encode(&q), &mut m)?;
                }
                "payments" => {
                    let p: PaymentRecord = decode(name, &v)?;
                    put(key::made(key::MADE, p.created_at, &p.payment_id), vec![], &mut m)?;
                    put(key::of(key::PAYMENT, &p.payment_id), encode(&p), &mut m)?;
                    m.payments += 1;
                }
                "idempotency" | "refund_idempotency" => {
                    // The key is already `a \0 b`; the value a JSON claim.
                    let e: IdemEntry = decode(name, &v)?;
                    let prefix =
                        if name == "idempotency" { key::REQUEST } else { key::ACQUIRER_REFUND };
                    put([&[prefix][..], &k].concat(), encode(&e), &mut m)?;
                }
                "quote_use" => put(key::of(key::QUOTE_USE, &text()), v.to_vec(), &mut m)?,
                "orders" => put(key::of(key::ORDER, &text()), v.to_vec(), &mut m)?,
                "ledger" => {
                    let seq = seq_key(name, &k)?;
                    let j: JournalEntry = decode(name, &v)?;
                    for p in &j.postings {
                        *totals.entry((p.currency, p.account.clone())).or_insert(0) +=
                            i128::from(p.minor);
                    }
                    put(key::journal(&j.payment_id, seq), encode(&j), &mut m)?;
                }
                "outbox" => {
                    let seq = seq_key(name, &k)?;
                    let e: OutboxEvent = decode(name, &v)?;
                    put(key::seq(key::OUTBOX, seq).to_vec(), encode(&e), &mut m)?;
                }
                "webhooks_delivered" => {
                    let seq = seq_key(name, &k)?;
                    let mut d: DeliveredEvent = decode(name, &v)?;
                    // The delivered log keeps headers, not bodies (see `SledStore::delivered`).
                    d.event.data = serde_json::Value::Null;
                    put(key::seq(key::DELIVERED, seq).to_vec(), encode(&d), &mut m)?;
                }
                "webhooks_parked" => {
                    let seq = seq_key(name, &k)?;
                    let p: ParkedEvent = decode(name, &v)?;
                    let id = key::of(key::PARKED_ID, &p.event.event_id);
                    put(id, seq.to_be_bytes().to_vec(), &mut m)?;
                    put(key::seq(key::PARKED, seq).to_vec(), encode(&p), &mut m)?;
                }
                "resolver" => {
                    let w: WorkItem = decode(name, &v)?;
                    put(key::of(key::WORK, &w.payment_id), encode(&w), &mut m)?;
                }
                "refunds" => {
                    let r: RefundRecord = decode(name, &v)?;
                    put(key::made(key::REFUND_MADE, r.created_at, &r.refund_id), vec![], &mut m)?;
                    put(key::of(key::REFUND, &r.refund_id), encode(&r), &mut m)?;
                }
                "refunds_by_payment" => put([&[key::REFUND_OF][..], &k].concat(), vec![], &mut m)?,
                _ => unreachable!("only the trees listed"),
            }
        }
    }
    let currencies: std::collections::BTreeSet<Currency> = totals.keys().map(|(c, _)| *c).collect();
    for c in currencies {
        put(key::total(c), encode_totals(c, totals.iter()), &mut m)?;
    }
    t.apply_batch(batch)?;
    db.flush()?;
    // The new records must survive the machine before the old ones go.
    super::DiskSync::open(db_path).map_err(sled::Error::Io)?;
    for name in present {
        db.drop_tree(name)?;
    }
    // Only once the old trees are gone: a crash before this point migrates again.
    t.insert(MIGRATED, &[][..])?;
    db.flush()?;
    Ok(Some(m))
}
