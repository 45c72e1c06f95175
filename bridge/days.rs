//! The business day: one definition for settlement and treasury. A day ends at the configured
//! cut-off, local time in the configured zone; a ledger entry belongs to the day its payment was
//! made (a refund to its own day). See the settlement module's notes.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};

use crate::model::{JournalEntry, PaymentRecord};
use crate::payments::engine::CancelPolicy;

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
