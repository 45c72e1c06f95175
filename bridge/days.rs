//! The business day: one definition for settlement and treasury. A day ends at the configured
//! cut-off, local time in the configured zone; a ledger entry belongs to the day its payment was
//! made (a refund to its own day). See the settlement module's notes.
//!
//! [`read_days`] and [`read_journal`] read what belongs to some days from the store's indexes by
//! creation time: the cost is those days', not the history's.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Offset, TimeZone, Utc};

use crate::model::{JournalEntry, PaymentRecord, RefundRecord};
use crate::payments::engine::CancelPolicy;
use crate::store::{Store, StoreError};

/// How business days fall.
#[derive(Debug, Clone, Copy)]
pub struct BusinessDays {
    pub tz: chrono_tz::Tz,
    /// The local time a day ends.
    pub cutoff: NaiveTime,
    pub cancel: CancelPolicy,
}

fn noon() -> NaiveTime {
    NaiveTime::from_hms_opt(12, 0, 0).expect("noon")
}

/// The business day `at` falls in (see the module's notes).
pub fn business_day(at: DateTime<Utc>, tz: chrono_tz::Tz, cutoff: NaiveTime) -> NaiveDate {
    let local = at.with_timezone(&tz).naive_local();
    let since_midnight = cutoff - NaiveTime::MIN;
    if cutoff < noon() {
        (local - since_midnight).date()
    } else {
        (local + (Duration::days(1) - since_midnight)).date()
    }
}

impl BusinessDays {
    pub fn day_of(&self, at: DateTime<Utc>) -> NaiveDate {
        business_day(at, self.tz, self.cutoff)
    }

    /// The business day a ledger entry belongs to (see the module's notes): a refund's own day;
    /// for every other entry the day its payment was made (`made_at`; the entry's own time when
    /// the payment is unknown). The one rule for statements and for revenue.
    pub fn day_of_entry(&self, e: &JournalEntry, made_at: Option<DateTime<Utc>>) -> NaiveDate {
        match made_at {
            Some(made) if e.kind != "refund" => self.day_of(made),
            _ => self.day_of(e.at),
        }
    }

    fn local(&self, day: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let t = day.and_time(time);
        // Asia/Shanghai has no DST; elsewhere a time in a gap is taken just after it. Days are
        // refused outside years 1-9999 (`parse_day`), so the last fallback, the time read
        // as UTC, is only there so that no input can panic.
        self.tz
            .from_local_datetime(&t)
            .earliest()
            .or_else(|| {
                let later = t.checked_add_signed(Duration::hours(1))?;
                self.tz.from_local_datetime(&later).earliest()
            })
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| t.and_utc())
    }

    /// `[start, end)` of `day`.
    pub fn bounds(&self, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
        let end_day = if self.cutoff < noon() { day.succ_opt().unwrap_or(day) } else { day };
        let end = self.local(end_day, self.cutoff);
        let start_day = end_day.pred_opt().unwrap_or(end_day);
        (self.local(start_day, self.cutoff), end)
    }

    /// A span of time holding every instant whose business day ([`BusinessDays::day_of`]) is in
    /// `[from, to]`: what a read by creation time must cover so that filtering by `day_of`
    /// afterwards loses nothing. It is the days' bounds, except that an end near a change of the
    /// zone's offset (daylight saving; never in Asia/Shanghai) is moved out by a day: around a
    /// change, `day_of` and [`BusinessDays::bounds`] can disagree about the instants of the hour
    /// that moved. Empty when `from` is after `to`.
    pub fn window(&self, from: NaiveDate, to: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
        let (start, _) = self.bounds(from);
        if from > to {
            return (start, start);
        }
        let (_, end) = self.bounds(to);
        let pad = |at| if self.steady_around(at) { Duration::zero() } else { Duration::days(1) };
        (
            start.checked_sub_signed(pad(start)).unwrap_or(start),
            end.checked_add_signed(pad(end)).unwrap_or(end),
        )
    }

    /// Whether the zone's offset from UTC is the same throughout a day either side of `at`
    /// (looked at hour by hour: offsets change at most a few times a year).
    fn steady_around(&self, at: DateTime<Utc>) -> bool {
        let offset = |t: DateTime<Utc>| self.tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let here = offset(at);
        (-24..=24)
            .all(|h| at.checked_add_signed(Duration::hours(h)).is_none_or(|t| offset(t) == here))
    }

    /// When `day` can be closed: after its end and after its last payment's cancel window.
    pub fn closes_at(&self, day: NaiveDate) -> DateTime<Utc> {
        let (_, end) = self.bounds(day);
        let last = end.checked_sub_signed(Duration::seconds(1)).unwrap_or(end);
        end.max(self.cancel.deadline(last))
    }
}

/// When each payment was made, by id: what [`BusinessDays::day_of_entry`] needs.
pub fn made_at(payments: &[PaymentRecord]) -> HashMap<&str, DateTime<Utc>> {
    payments.iter().map(|p| (p.payment_id.as_str(), p.created_at)).collect()
}

/// What belongs to the business days `[from, to]`, as [`read_days`] (and [`read_journal`]) read
/// it from the store.
#[derive(Debug, Clone, Default)]
pub struct DaysData {
    /// The payments made on those days, then the payment of each refund read that was not among
    /// them (once each): what refunds are priced and attributed from.
    pub payments: Vec<PaymentRecord>,
    /// The refunds made on those days and those made within a day either side (a refund's
    /// ledger entry falls on the day of its own time, which is the refund's; the margin keeps
    /// every such entry in reach). The caller filters them by their own day.
    pub refunds: Vec<RefundRecord>,
    /// The ledger entries of those payments (and of the refunds' payments) that belong to the
    /// days by [`BusinessDays::day_of_entry`], each payment's in order; empty from
    /// [`read_days`], filled by [`read_journal`].
    pub journal: Vec<JournalEntry>,
}

/// Reads the payments and refunds of the business days `[from, to]` ([`DaysData`]) from the
/// store's indexes by creation time: the payments made in [`BusinessDays::window`], kept when
/// their day is one of those; the refunds made from a day before it to a day after it; and the
/// payment of each of those refunds, looked up by id. The cost is those days', not the history's.
/// It reads the store on the calling thread: call it off the async runtime's threads.
pub async fn read_days<S: Store + ?Sized>(
    store: &S,
    days: &BusinessDays,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<DaysData, StoreError> {
    if from > to {
        return Ok(DaysData::default());
    }
    let (start, end) = days.window(from, to);
    let margin = Duration::days(1);
    let mut nearby: HashMap<String, PaymentRecord> = HashMap::new();
    let mut payments = Vec::new();
    for p in store.payments_made(start, end).await? {
        if (from..=to).contains(&days.day_of(p.created_at)) {
            payments.push(p);
        } else {
            nearby.insert(p.payment_id.clone(), p);
        }
    }
    let refunds = store
        .refunds_made(
            start.checked_sub_signed(margin).unwrap_or(start),
            end.checked_add_signed(margin).unwrap_or(end),
        )
        .await?;
    let mut seen: HashSet<String> = payments.iter().map(|p| p.payment_id.clone()).collect();
    for r in &refunds {
        if seen.insert(r.payment_id.clone()) {
            let p = match nearby.remove(&r.payment_id) {
                Some(p) => Some(p),
                None => store.payment(&r.payment_id).await?,
            };
            payments.extend(p);
        }
    }
    Ok(DaysData { payments, refunds, journal: Vec::new() })
}

/// Fills `data.journal` ([`DaysData::journal`]): the ledger entries of each payment in `data`
/// and of each refund's payment (even one missing from the store: its entries then fall on the
/// day of their own time, as [`BusinessDays::day_of_entry`] says), those of the days `[from, to]`
/// only. Reads on the calling thread, one payment's journal at a time.
pub async fn read_journal<S: Store + ?Sized>(
    store: &S,
    days: &BusinessDays,
    from: NaiveDate,
    to: NaiveDate,
    data: &mut DaysData,
) -> Result<(), StoreError> {
    let made = made_at(&data.payments);
    let mut seen = HashSet::new();
    let ids = data
        .payments
        .iter()
        .map(|p| p.payment_id.as_str())
        .chain(data.refunds.iter().map(|r| r.payment_id.as_str()));
    let mut journal = Vec::new();
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        for e in store.journal_of(id).await? {
            let day = days.day_of_entry(&e, made.get(e.payment_id.as_str()).copied());
            if (from..=to).contains(&day) {
                journal.push(e);
            }
        }
    }
    data.journal = journal;
    Ok(())
}
