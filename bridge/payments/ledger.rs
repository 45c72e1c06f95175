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
//! Debits are positive, credits negative; each currency sums to zero. A cancel (or a reversal)
//! posts the exact opposite. A refund posts the opposite for the refunded amounts: the CNY refunded,
//! the wallet amount given back, and within it the spread share
//! ([`qrbridge_fx::Pricing::refund_split`]).

use chrono::{DateTime, Utc};
use qrbridge_fx::Amount;

use crate::model::{JournalEntry, PaymentRecord, Posting, RefundRecord, RECORD_VERSION};

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

/// The entry reversing a payment's booking; `kind` says why (`cancel`, `reversal`).
pub fn reversal(p: &PaymentRecord, kind: &str, at: DateTime<Utc>) -> JournalEntry {
    let mut e = payment(p, at);
    e.kind = kind.into();
    e.postings = e.postings.iter().map(Posting::negated).collect();
    e
}

/// The entry for a refund: `r.wallet_amount` back to the partner, of which `spread` was spread.
pub fn refund(
    p: &PaymentRecord,
    r: &RefundRecord,
    spread: Amount,
    at: DateTime<Utc>,
) -> JournalEntry {
    let w = p.wallet.currency();
    let at_mid = r.wallet_amount.checked_sub(&spread).unwrap_or(r.wallet_amount);
    JournalEntry {
        v: RECORD_VERSION,
        payment_id: p.payment_id.clone(),
        kind: "refund".into(),
        at,
        postings: vec![
            posting(format!("partner_receivable:{}", p.partner), r.wallet_amount.checked_neg()),
            posting(format!("fx_position:{w}"), at_mid),
            posting(format!("spread_revenue:{w}"), spread),
            posting("fx_position:CNY".into(), r.amount.checked_neg()),
            posting(format!("acquirer_payable:{}", p.acquirer), r.amount),
        ],
    }
}
