//! Double-entry postings for each money movement, in the same transaction as the state change.
//!
//! A payment, for wallet currency W (e.g. PHP) and the merchant side in CNY:
//!
//! | account | W | CNY |
//! |---|---|---|
//! | `partner_receivable:<partner>` | + wallet | |
//! | `fx_position:W` | − wallet at mid | |
//! | `spread_revenue:W` | − spread | |
//! | `fx_position:CNY` | | + pay |
//! | `acquirer_payable:<acquirer>` | | − pay |
//!
//! Debits are positive, credits negative; each currency sums to zero. A cancel posts the exact
//! opposite. Refunds post the same shape for the refunded amounts.

use chrono::{DateTime, Utc};
use qrbridge_fx::Amount;

use crate::model::{JournalEntry, PaymentRecord, Posting, RECORD_VERSION};

fn posting(account: String, amount: Amount) -> Posting {
    Posting::new(account, amount)
}

/// The entry booking a succeeded payment.
pub fn payment(p: &PaymentRecord, at: DateTime<Utc>) -> JournalEntry {
    let w = p.wallet.currency();
    JournalEntry {
        v: RECORD_VERSION,
        payment_id: p.payment_id.clone(),
        kind: "payment".into(),
        at,
        postings: vec![
            posting(format!("partner_receivable:{}", p.partner), p.wallet),
            posting(format!("fx_position:{w}"), p.wallet_at_mid.checked_neg()),
            posting(format!("spread_revenue:{w}"), p.spread.checked_neg()),
            posting("fx_position:CNY".into(), p.pay),
            posting(format!("acquirer_payable:{}", p.acquirer), p.pay.checked_neg()),
        ],
    }
}

/// The entry reversing a payment's booking (a cancel).
pub fn reversal(p: &PaymentRecord, at: DateTime<Utc>) -> JournalEntry {
    let mut e = payment(p, at);
    e.kind = "cancel".into();
    e.postings = e.postings.iter().map(Posting::negated).collect();
    e
}
