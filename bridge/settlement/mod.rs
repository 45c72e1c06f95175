//! Daily settlement: statements per partner and per acquirer, a treasury report, and
//! reconciliation against an acquirer's own file.
//!
//! **The business day.** Day D ends at the configured cut-off (local time in `settlement.time_zone`):
//! a cut-off before noon ends D on the next calendar day (the default `00:00` makes D the
//! calendar day), a cut-off from noon on ends D on D itself (`22:00`: D runs from 22:00 on D−1
//! to 22:00 on D).
//!
//! **What belongs to a day** — one rule, for the statements here and for treasury revenue
//! ([`BusinessDays::day_of_entry`]): a payment belongs to the day it was made (its instruction
//! left then, and that is the day the acquirer files it under), and so does every ledger entry
//! that books or undoes it — its booking (even when an inquiry learns the outcome on a later
//! day), a cancel, a reversal, a late approval. A refund is a money movement of its own and
//! belongs to the day it was made. So revenue for D and D's statements are the same entries, and
//! nothing done on a later day other than resolving D's own payments changes D.
//!
//! **What a run reads.** The day only, not the history, off the async runtime's threads
//! ([`read_days`]): the payments made that day and their ledger entries, the refunds made that
//! day (read with a day's margin either side) with their payments (for the price and merchant)
//! and their entries. A reconciliation reads the same, and each payment the acquirer's file
//! names. So a day costs what happened that day.
//!
//! **Closing.** A day closes only after its end *and* after the cancel window of its last
//! payment (`cancel_until` on the next day), so nothing can still change it by a cancel. Before
//! that, a run is refused with `DAY_NOT_CLOSED` and the moment it closes.
//!
//! **What is on the statements.**
//! - A payment made that day is on its partner's and its acquirer's statement when it
//!   SUCCEEDED. Cancelled, declined and expired payments are on neither side.
//! - A payment still in doubt (not final) is on neither side and is listed in `in-doubt.csv`:
//!   never guessed. A later run of the day, once it has resolved, includes it.
//! - Every refund made that day is on both statements, whatever day its payment was made.
//!
//! **The files**, under `<settlement.dir>/<day>/` (folders `0700`, files `0600`: statements are
//! for the treasury, not for every account on the host):
//! - `partner-<id>-<CUR>.csv`: one for each configured partner and each of its wallet
//!   currencies, and one for every other partner and currency with activity that day (a partner
//!   since removed from the configuration still gets the statement of a day it traded).
//! - `acquirer-<id>.csv`: in CNY, for each configured acquirer and each other with activity.
//! - `treasury-revenue.csv` and `treasury-positions.csv`.
//! - `in-doubt.csv`.
//! - `suspicious-<id>.csv`: the anti-money-laundering monitoring report ([`suspicious`]), one
//!   for each configured partner and each other partner with payments made that day, header
//!   only when nothing was found. It names payers: for the compliance team only.
//! - `summary.json`: counts, totals, net amounts and each file's SHA-256.
//!
//! The files hold no time of their own making and are written in a fixed order. Running a day
//! twice over the same state therefore gives byte-identical files, and a day with no activity
//! still gives every file, with zero counts. Every CSV cell that a spreadsheet would take for a
//! formula (text starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`
//! ([`csv_cell`]); plain numbers such as `-12.50` are left as they are.
//!
//! **Reconciliation** reads an acquirer's file for a day: CSV `instruction_id,amount,currency,
//! status,refund_ids` (major units, `;`-separated refund ids). Each instruction is matched with
//! the bridge's own view of its payments to that acquirer made that day, as of the day's end:
//! refunds made on a later day belong to that day and are not expected in D's file. The bridge
//! expects at the acquirer every instruction the acquirer is known to have seen: approved
//! (`APPROVED`), declined by its answer (`DECLINED`), approved then cancelled (`REVERSED`), and
//! those still in doubt. A payment that failed with `ACQUIRER_UNAVAILABLE` never left the bridge
//! and is not expected (if the acquirer lists it anyway, that is a `STATUS_DIFFERS`, bridge status
//! `NOT_SENT`); one reversed while its outcome was unknown (`EXPIRED`, or cancelled before any
//! answer) may never have arrived, so it is compared when listed and not missed when absent. The
//! report lists what matched, what is missing on either side, and what differs in amount,
//! currency, status or refunds. It is written as `reconciliation-<acquirer>.csv` and `.json`
//! (the acquirer's file is kept beside them, byte for byte as received: it is the acquirer's
//! evidence, not ours to rewrite) and returned as the API answer. The CLI exits 3 when anything
//! differs.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use qrbridge_config::{Monitoring, RiskRules};
use qrbridge_fx::{Amount, Currency};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub mod suspicious;

use crate::cluster::Turn;
pub use crate::days::{business_day, made_at, BusinessDays};
use crate::days::{read_days, read_journal, DaysData};
use crate::error::ApiError;
use crate::model::{JournalEntry, PaymentRecord, PaymentState, RefundRecord};
use crate::store::Store;
use crate::treasury::{internal, off_runtime, positions, revenue_sums, CurrencyPosition, Treasury};

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Totals of one partner's statement in one wallet currency.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerTotals {
    pub partner: String,
    pub currency: Currency,
    pub file: String,
    pub payments: u64,
    pub payments_total: Amount,
    pub refunds: u64,
    pub refunds_total: Amount,
    /// What the partner owes: payments less refunds.
    pub net_due: Amount,
}

/// Totals of one acquirer's statement (CNY).
#[derive(Debug, Clone, Serialize)]
pub struct AcquirerTotals {
    pub acquirer: String,
    pub file: String,
    pub instructions: u64,
    pub instructions_total: Amount,
    pub refunds: u64,
    pub refunds_total: Amount,
    /// What the bridge owes the acquirer: instructions less refunds.
    pub net_payable: Amount,
}

/// Spread revenue of one partner and pair on the day.
#[derive(Debug, Clone, Serialize)]
pub struct RevenueTotals {
    pub partner: String,
    pub pair: String,
    pub payments: u64,
    pub refunds: u64,
    pub spread_revenue: Amount,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub day: NaiveDate,
    pub time_zone: String,
    pub from: String,
    pub to: String,
    pub closes_at: String,
    pub partners: Vec<PartnerTotals>,
    pub acquirers: Vec<AcquirerTotals>,
    pub spread_revenue: Vec<RevenueTotals>,
    pub positions: Vec<CurrencyPosition>,
    /// Payments made that day on neither side, by final state.
    pub excluded: BTreeMap<String, u64>,
    /// Payments made that day still in doubt: listed, not settled.
    pub in_doubt: Vec<String>,
    /// Every other file of the day, with its SHA-256.
    pub files: BTreeMap<String, String>,
}

/// What the day's payments and refunds are, as read from the store.
pub struct DayInput<'a> {
    pub day: NaiveDate,
    pub days: &'a BusinessDays,
    /// Configured partners with their wallet currencies, and acquirers: each gets a file (and so
    /// does every other partner, currency and acquirer with activity that day).
    pub partners: &'a [(String, Vec<Currency>)],
    pub acquirers: &'a [String],
    /// At least the payments made that day and the payment of each refund made that day
    /// (filtered here; [`read_days`] reads just those, and the payments of refunds near the day).
    /// Each payment once.
    pub payments: &'a [PaymentRecord],
    /// At least the refunds made that day (filtered here).
    pub refunds: &'a [RefundRecord],
    /// At least the ledger entries of the day ([`BusinessDays::day_of_entry`]; filtered here),
    /// each of a payment among `payments`.
    pub journal: &'a [JournalEntry],
}

/// Whether `cell` is a plain decimal number (`12`, `-12.50`): a spreadsheet reads it as a number.
fn plain_number(cell: &str) -> bool {
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// A CSV cell a spreadsheet can open safely (OWASP, CSV injection): text starting with `=`, `+`,
/// `-`, `@`, a tab or a carriage return is prefixed with `'`, so it is shown and never evaluated
/// as a formula. Plain numbers are left alone. Every CSV the daemon writes goes through here.
pub fn csv_cell(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') if !plain_number(cell) => {
            Cow::Owned(format!("'{cell}"))
        }
        _ => Cow::Borrowed(cell),
    }
}

fn csv_bytes(header: &[&str], rows: Vec<Vec<String>>) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    w.write_record(header).expect("CSV into memory");
    for r in rows {
        w.write_record(r.iter().map(|c| csv_cell(c).into_owned())).expect("CSV into memory");
    }
    w.into_inner().expect("CSV into memory")
}

fn add(total: &mut Amount, a: &Amount) -> Result<(), ApiError> {
    *total = total.checked_add(a).map_err(|e| {
        tracing::error!(error = %e, "statement total out of range");
        ApiError::Internal
    })?;
    Ok(())
}

/// What the day's `suspicious-<partner>.csv` look for ([`suspicious`]).
#[derive(Debug, Clone, Copy)]
pub struct Watch<'a> {
    /// The risk rules in force: the amount maximums a payment can be just under.
    pub rules: &'a RiskRules,
    /// The thresholds (`[risk.monitoring]`).
    pub monitoring: &'a Monitoring,
}

/// The day's files by name.
pub type DayFiles = BTreeMap<String, Vec<u8>>;

/// Builds every file of the day: `(summary, files by name)`, watching with the default
/// thresholds and no amount limits (so `NEAR_LIMIT` finds nothing). [`Settlement::run`] watches
/// with what is in force ([`build_watched`]).
pub fn build(input: &DayInput<'_>) -> Result<(Summary, DayFiles), ApiError> {
    let (rules, monitoring) = (RiskRules::default(), Monitoring::default());
    build_watched(input, Watch { rules: &rules, monitoring: &monitoring })
}

/// Builds every file of the day, the monitoring report by `watch`: `(summary, files by name)`.
pub fn build_watched(
    input: &DayInput<'_>,
    watch: Watch<'_>,
) -> Result<(Summary, DayFiles), ApiError> {
    build_day(input, watch).map(|(summary, files, _)| (summary, files))
}

/// [`build_watched`], and how many lines of each rule the monitoring report has (for metrics).
fn build_day(
    input: &DayInput<'_>,
    watch: Watch<'_>,
) -> Result<(Summary, DayFiles, BTreeMap<suspicious::Rule, u64>), ApiError> {
    let DayInput { day, days, .. } = *input;
    let (from, to) = days.bounds(day);
    let cny = Currency::from_code("CNY").expect("CNY");
    let mut made: Vec<&PaymentRecord> =
        input.payments.iter().filter(|p| days.day_of(p.created_at) == day).collect();
    made.sort_by(|a, b| (a.created_at, &a.payment_id).cmp(&(b.created_at, &b.payment_id)));
    let mut refunds: Vec<&RefundRecord> =
        input.refunds.iter().filter(|r| days.day_of(r.created_at) == day).collect();
    refunds.sort_by(|a, b| (a.created_at, &a.refund_id).cmp(&(b.created_at, &b.refund_id)));
    let by_id: BTreeMap<&str, &PaymentRecord> =
        input.payments.iter().map(|p| (p.payment_id.as_str(), p)).collect();

    let settled: Vec<&PaymentRecord> =
        made.iter().copied().filter(|p| p.state == PaymentState::Succeeded).collect();
    let mut excluded = BTreeMap::new();
    let mut in_doubt = Vec::new();
    for p in &made {
        match p.state {
            PaymentState::Succeeded => {}
            s if s.is_final() => {
                let why = match (&p.state, &p.failure) {
                    (PaymentState::Failed, Some(f)) => f.code.clone(),
                    (s, _) => s.api_status().to_owned(),
                };
                *excluded.entry(why).or_insert(0) += 1;
            }
            _ => in_doubt.push(*p),
        }
    }

    // Every configured partner and currency, then every other one with activity that day.
    let mut statements: Vec<(String, Currency)> = input
        .partners
        .iter()
        .flat_map(|(partner, currencies)| currencies.iter().map(move |c| (partner.clone(), *c)))
        .collect();
    let active: BTreeSet<(String, Currency)> = settled
        .iter()
        .map(|p| (p.partner.clone(), p.wallet.currency()))
        .chain(refunds.iter().map(|r| (r.partner.clone(), r.wallet_amount.currency())))
        .collect();
    for pc in active {
        if !statements.contains(&pc) {
            statements.push(pc);
        }
    }
    let mut acquirers: Vec<String> = input.acquirers.to_vec();
    let active: BTreeSet<&String> =
        settled.iter().map(|p| &p.acquirer).chain(refunds.iter().map(|r| &r.acquirer)).collect();
    for a in active {
        if !acquirers.contains(a) {
            acquirers.push(a.clone());
        }
    }

    let mut files = BTreeMap::new();
    let mut partner_totals = Vec::new();
    for (partner, c) in &statements {
        let (partner, c) = (partner, *c);
        {
            let file = format!("partner-{partner}-{}.csv", c.code());
            let mut t = PartnerTotals {
                partner: partner.clone(),
                currency: c,
                file: file.clone(),
                payments: 0,
                payments_total: Amount::zero(c),
                refunds: 0,
                refunds_total: Amount::zero(c),
                net_due: Amount::zero(c),
            };
            let mut rows = Vec::new();
            for p in settled.iter().filter(|p| &p.partner == partner && p.wallet.currency() == c) {
                t.payments += 1;
                add(&mut t.payments_total, &p.wallet)?;
                rows.push(vec![
                    "payment".into(),
                    p.payment_id.clone(),
                    String::new(),
                    p.request_id.clone(),
                    ts(p.created_at),
                    p.pay.to_major_string(),
                    p.wallet.to_major_string(),
                    c.code().into(),
                    p.rate.price.to_string(),
                    p.acquirer.clone(),
                ]);
            }
            for r in
                refunds.iter().filter(|r| &r.partner == partner && r.wallet_amount.currency() == c)
            {
                t.refunds += 1;
                add(&mut t.refunds_total, &r.wallet_amount)?;
                let price = by_id
                    .get(r.payment_id.as_str())
                    .map(|p| p.rate.price.to_string())
                    .unwrap_or_default();
                rows.push(vec![
                    "refund".into(),
                    r.payment_id.clone(),
                    r.refund_id.clone(),
                    r.acquirer_refund_id.clone(),
                    ts(r.created_at),
                    r.amount.to_major_string(),
                    r.wallet_amount.to_major_string(),
                    c.code().into(),
                    price,
                    r.acquirer.clone(),
                ]);
            }
            t.net_due =
                t.payments_total.checked_sub(&t.refunds_total).map_err(|_| ApiError::Internal)?;
            files.insert(
                file,
                csv_bytes(
                    &[
                        "type",
                        "payment_id",
                        "refund_id",
                        "reference",
                        "created_at",
                        "cny_amount",
                        "wallet_amount",
                        "wallet_currency",
                        "price",
                        "acquirer",
                    ],
                    rows,
                ),
            );
            partner_totals.push(t);
        }
    }

    let mut acquirer_totals = Vec::new();
    for acquirer in &acquirers {
        let file = format!("acquirer-{acquirer}.csv");
        let mut t = AcquirerTotals {
            acquirer: acquirer.clone(),
            file: file.clone(),
            instructions: 0,
            instructions_total: Amount::zero(cny),
            refunds: 0,
            refunds_total: Amount::zero(cny),
            net_payable: Amount::zero(cny),
        };
        let mut rows = Vec::new();
        for p in settled.iter().filter(|p| &p.acquirer == acquirer) {
            t.instructions += 1;
            add(&mut t.instructions_total, &p.pay)?;
            rows.push(vec![
                "instruction".into(),
                p.payment_id.clone(),
                String::new(),
                p.acquirer_ref.clone().unwrap_or_default(),
                ts(p.created_at),
                p.pay.to_major_string(),
                "CNY".into(),
                p.merchant.id.clone().unwrap_or_default(),
            ]);
        }
        for r in refunds.iter().filter(|r| &r.acquirer == acquirer) {
            t.refunds += 1;
            add(&mut t.refunds_total, &r.amount)?;
            rows.push(vec![
                "refund".into(),
                r.payment_id.clone(),
                r.acquirer_refund_id.clone(),
                r.refund_id.clone(),
                ts(r.created_at),
                r.amount.to_major_string(),
                "CNY".into(),
                by_id
                    .get(r.payment_id.as_str())
                    .map(|p| p.merchant.id.clone().unwrap_or_default())
                    .unwrap_or_default(),
            ]);
        }
        t.net_payable =
            t.instructions_total.checked_sub(&t.refunds_total).map_err(|_| ApiError::Internal)?;
        files.insert(
            file,
            csv_bytes(
                &[
                    "type",
                    "instruction_id",
                    "refund_id",
                    "reference",
                    "created_at",
                    "amount",
                    "currency",
                    "merchant_id",
                ],
                rows,
            ),
        );
        acquirer_totals.push(t);
    }

    // The monitoring report: every payment made that day, whatever its state.
    let findings = suspicious::report(made.iter().copied(), watch.rules, watch.monitoring)
        .map_err(|e| {
            tracing::error!(error = %e, "suspicious payments total out of range");
            ApiError::Internal
        })?;
    let mut lines: BTreeMap<suspicious::Rule, u64> = BTreeMap::new();
    let watched: BTreeSet<&str> = input
        .partners
        .iter()
        .map(|(partner, _)| partner.as_str())
        .chain(made.iter().map(|p| p.partner.as_str()))
        .collect();
    for partner in watched {
        let found = findings.get(partner).map(Vec::as_slice).unwrap_or_default();
        for f in found {
            *lines.entry(f.rule).or_insert(0) += 1;
        }
        files.insert(format!("suspicious-{partner}.csv"), suspicious::csv(found));
    }

    // The treasury report comes from the ledger entries of the day, by the one rule that
    // treasury revenue uses too: the bookings of the day's payments (and what undid them), and
    // the day's refunds.
    let made = made_at(input.payments);
    let entry_day =
        |e: &JournalEntry| days.day_of_entry(e, made.get(e.payment_id.as_str()).copied());
    let entries: Vec<JournalEntry> =
        input.journal.iter().filter(|e| entry_day(e) == day).cloned().collect();
    let positions = positions(&entries)?;
    let spread_revenue = revenue_sums(&entries, entry_day, Some(day), Some(day))?
        .into_iter()
        .map(|((_, partner, c), sum)| RevenueTotals {
            partner,
            pair: format!("CNY/{}", c.code()),
            payments: u64::try_from(sum.payments).unwrap_or(0),
            refunds: sum.refunds,
            spread_revenue: sum.revenue,
        })
        .collect::<Vec<_>>();
    files.insert(
        "treasury-revenue.csv".into(),
        csv_bytes(
            &["partner", "pair", "payments", "refunds", "spread_revenue", "currency"],
            spread_revenue
                .iter()
                .map(|r| {
                    vec![
                        r.partner.clone(),
                        r.pair.clone(),
                        r.payments.to_string(),
                        r.refunds.to_string(),
                        r.spread_revenue.to_major_string(),
                        r.spread_revenue.currency().code().into(),
                    ]
                })
                .collect(),
        ),
    );
    files.insert(
        "treasury-positions.csv".into(),
        csv_bytes(
            &["currency", "partners_owe", "we_owe_acquirers", "spread_revenue", "net_position"],
            positions
                .iter()
                .map(|p| {
                    vec![
                        p.currency.code().into(),
                        p.partners_owe.to_major_string(),
                        p.we_owe_acquirers.to_major_string(),
                        p.spread_revenue.to_major_string(),
                        p.net_position.to_major_string(),
                    ]
                })
                .collect(),
        ),
    );
    files.insert(
        "in-doubt.csv".into(),
        csv_bytes(
            &[
                "payment_id",
                "partner",
                "acquirer",
                "status",
                "created_at",
                "cny_amount",
                "wallet_amount",
                "wallet_currency",
            ],
            in_doubt
                .iter()
                .map(|p| {
                    vec![
                        p.payment_id.clone(),
                        p.partner.clone(),
                        p.acquirer.clone(),
                        p.state.api_status().into(),
                        ts(p.created_at),
                        p.pay.to_major_string(),
                        p.wallet.to_major_string(),
                        p.wallet.currency().code().into(),
                    ]
                })
                .collect(),
        ),
    );

    let summary = Summary {
        day,
        time_zone: days.tz.name().to_owned(),
        from: ts(from),
        to: ts(to),
        closes_at: ts(days.closes_at(day)),
        partners: partner_totals,
        acquirers: acquirer_totals,
        spread_revenue,
        positions,
        excluded,
        in_doubt: in_doubt.iter().map(|p| p.payment_id.clone()).collect(),
        files: files.iter().map(|(n, b)| (n.clone(), hex::encode(Sha256::digest(b)))).collect(),
    };
    let mut json = serde_json::to_vec_pretty(&summary).expect("JSON of plain data");
    json.push(b'\n');
    files.insert("summary.json".into(), json);
    Ok((summary, files, lines))
}

/// Mode of settlement folders: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of settlement files: the owner only.
pub const FILE_MODE: u32 = 0o600;

/// Writes `files` into `dir` (a day's folder under the settlement root), each through a
/// temporary file renamed into place and synced. Folders are made `0700` and files `0600`; the
/// root and the day's folder are set to `0700` even when an older build made them readable to
/// others (the files of every older day are then out of reach too).
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    let owner_only = || std::fs::Permissions::from_mode(DIR_MODE);
    if let Some(root) = dir.parent() {
        std::fs::set_permissions(root, owner_only())?;
    }
    std::fs::set_permissions(dir, owner_only())?;
    for (name, bytes) in files {
        // A name of this writer's own: two nodes sharing the folder never write one file.
        let tmp = dir.join(format!(".{name}.{}.{:08x}.tmp", std::process::id(), fastrand::u32(..)));
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    std::fs::File::open(dir)?.sync_all()
}

/// [`write_files`] off the runtime; a failure is logged and answered `INTERNAL`.
async fn write_day(dir: PathBuf, files: BTreeMap<String, Vec<u8>>) -> Result<(), ApiError> {
    tokio::task::spawn_blocking(move || write_files(&dir, &files))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "settlement files not written");
            ApiError::Internal
        })
}

/// A reconciliation line's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Matched,
    MissingAtAcquirer,
    MissingAtBridge,
    AmountDiffers,
    CurrencyDiffers,
    StatusDiffers,
    RefundsDiffer,
}

/// One instruction, as both sides see it.
#[derive(Debug, Clone, Serialize)]
pub struct ReconLine {
    pub instruction_id: String,
    /// Every difference found (just `MATCHED` when there is none).
    pub verdicts: Vec<Verdict>,
    pub bridge_amount: Option<String>,
    pub acquirer_amount: Option<String>,
    pub bridge_currency: Option<String>,
    pub acquirer_currency: Option<String>,
    pub bridge_status: Option<String>,
    pub acquirer_status: Option<String>,
    pub bridge_refunds: Vec<String>,
    pub acquirer_refunds: Vec<String>,
    pub note: String,
}

struct TheirLine {
    amount: String,
    currency: String,
    status: String,
    refunds: BTreeSet<String>,
}

/// What the bridge expects an acquirer's file to say of one of its instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// The acquirer saw the instruction: it must be listed, with this status.
    Listed(&'static str),
    /// Reversed while its outcome was unknown: it may never have arrived. Compared when listed,
    /// not missed when absent.
    IfListed(&'static str),
    /// Nothing was sent (`ACQUIRER_UNAVAILABLE`): it must not be listed.
    NotSent,
}

/// What the bridge expects of `p` at its acquirer.
fn expected(p: &PaymentRecord) -> Expected {
    let seen = p.acquirer_ref.is_some() || p.late_approvals > 0;
    match (p.state, p.failure.as_ref().map(|f| f.code.as_str())) {
        (PaymentState::Succeeded, _) => Expected::Listed("APPROVED"),
        (PaymentState::Failed, Some("DECLINED")) => Expected::Listed("DECLINED"),
        (PaymentState::Failed, Some("ACQUIRER_UNAVAILABLE")) => Expected::NotSent,
        (PaymentState::Failed | PaymentState::Cancelled, _) if seen => Expected::Listed("REVERSED"),
        (PaymentState::Failed | PaymentState::Cancelled, _) => Expected::IfListed("REVERSED"),
        _ => Expected::Listed("IN_DOUBT"),
    }
}

/// How the bridge states a payment's standing to an acquirer.
fn bridge_status(p: &PaymentRecord) -> &'static str {
    match expected(p) {
        Expected::Listed(s) | Expected::IfListed(s) => s,
        Expected::NotSent => "NOT_SENT",
    }
}

/// The instructions of an acquirer's reconciliation file, by id.
fn their_lines(file: &[u8]) -> Result<BTreeMap<String, TheirLine>, ApiError> {
    let bad =
        |line: u64, m: String| ApiError::InvalidReconciliationFile(format!("line {line}: {m}"));
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(file);
    let header = reader.headers().map_err(|e| bad(1, e.to_string()))?;
    let want = ["instruction_id", "amount", "currency", "status", "refund_ids"];
    if header.iter().collect::<Vec<_>>() != want {
        return Err(bad(1, format!("the header must be {}", want.join(","))));
    }
    let mut theirs: BTreeMap<String, TheirLine> = BTreeMap::new();
    for (i, row) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let row = row.map_err(|e| bad(line, e.to_string()))?;
        let id = row[0].to_owned();
        if id.is_empty() {
            return Err(bad(line, "instruction_id is empty".into()));
        }
        let refunds =
            row[4].split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let entry = TheirLine {
            amount: row[1].to_owned(),
            currency: row[2].to_owned(),
            status: row[3].to_ascii_uppercase(),
            refunds,
        };
        if theirs.insert(id.clone(), entry).is_some() {
            return Err(bad(line, format!("instruction {id} is listed twice")));
        }
    }
    Ok(theirs)
}

/// Compares an acquirer's file with the bridge's view as of the end of `day`. `payments` must
/// hold at least the payments made on `day` and every payment the file names (whatever its day:
/// the report says where the bridge has it); `refunds` at least the refunds of the day's
/// payments made up to the day's end (those made after `day` are left out here).
pub fn reconcile(
    day: NaiveDate,
    days: &BusinessDays,
    acquirer: &str,
    file: &[u8],
    payments: &[PaymentRecord],
    refunds: &[RefundRecord],
) -> Result<Vec<ReconLine>, ApiError> {
    let theirs = their_lines(file)?;
    let mut refunds_of: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in refunds.iter().filter(|r| days.day_of(r.created_at) <= day) {
        refunds_of.entry(r.payment_id.as_str()).or_default().insert(r.acquirer_refund_id.clone());
    }
    let all: BTreeMap<&str, &PaymentRecord> =
        payments.iter().map(|p| (p.payment_id.as_str(), p)).collect();
    let ours: BTreeMap<&str, &PaymentRecord> = payments
        .iter()
        .filter(|p| p.acquirer == acquirer && days.day_of(p.created_at) == day)
        .map(|p| (p.payment_id.as_str(), p))
        .collect();
    let ids: BTreeSet<&str> =
        ours.keys().copied().chain(theirs.keys().map(String::as_str)).collect();
    let mut lines = Vec::new();
    for id in ids {
        let our = ours.get(id).copied();
        let their = theirs.get(id);
        let our_refunds: Vec<String> =
            refunds_of.get(id).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        if let (Some(p), None) = (our, their) {
            if !matches!(expected(p), Expected::Listed(_)) {
                // Never sent, or perhaps never arrived: its absence is no difference.
                continue;
            }
        }
        let mut line = ReconLine {
            instruction_id: id.to_owned(),
            verdicts: Vec::new(),
            bridge_amount: our.map(|p| p.pay.to_major_string()),
            acquirer_amount: their.map(|t| t.amount.clone()),
            bridge_currency: our.map(|p| p.pay.currency().code().to_owned()),
            acquirer_currency: their.map(|t| t.currency.clone()),
            bridge_status: our.map(|p| bridge_status(p).to_owned()),
            acquirer_status: their.map(|t| t.status.clone()),
            bridge_refunds: our_refunds.clone(),
            acquirer_refunds: their
                .map(|t| t.refunds.iter().cloned().collect())
                .unwrap_or_default(),
            note: String::new(),
        };
        match (our, their) {
            (Some(_), None) => line.verdicts.push(Verdict::MissingAtAcquirer),
            (None, Some(_)) => {
                line.verdicts.push(Verdict::MissingAtBridge);
                line.note = match all.get(id) {
                    Some(p) if p.acquirer != acquirer => {
                        format!("the bridge sent it to {}", p.acquirer)
                    }
                    Some(p) => format!("the bridge has it on {}", days.day_of(p.created_at)),
                    None => "unknown to the bridge".into(),
                };
            }
            (Some(p), Some(t)) => {
                let currency_ok = t.currency.eq_ignore_ascii_case(p.pay.currency().code());
                if !currency_ok {
                    line.verdicts.push(Verdict::CurrencyDiffers);
                }
                let amount_ok = currency_ok
                    && Amount::from_major_str(p.pay.currency(), &t.amount)
                        .is_ok_and(|a| a == p.pay);
                if currency_ok && !amount_ok {
                    line.verdicts.push(Verdict::AmountDiffers);
                }
                if bridge_status(p) != t.status {
                    line.verdicts.push(Verdict::StatusDiffers);
                    if !p.state.is_final() {
                        line.note = "in doubt at the bridge".into();
                    } else if expected(p) == Expected::NotSent {
                        line.note = "the bridge never sent it (acquirer unavailable)".into();
                    }
                }
                if our_refunds.iter().cloned().collect::<BTreeSet<_>>() != t.refunds {
                    line.verdicts.push(Verdict::RefundsDiffer);
                }
                if line.verdicts.is_empty() {
                    line.verdicts.push(Verdict::Matched);
                }
            }
            (None, None) => unreachable!("the id came from one side"),
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Settlement over one treasury: runs days, serves their files, reconciles acquirers' files.
pub struct Settlement<S> {
    treasury: Arc<Treasury<S>>,
    days: BusinessDays,
    dir: PathBuf,
    /// The configured partners (with their wallet currencies) and acquirers: each gets a file.
    /// Made again on reload ([`Settlement::set_parties`]).
    parties: std::sync::RwLock<Arc<SettlementParties>>,
    /// The thresholds of the monitoring report (`[risk.monitoring]`); set again on reload
    /// ([`Settlement::set_monitoring`]). The limits it looks near come from the engine's risk
    /// policy in force at each run.
    monitoring: std::sync::RwLock<Arc<Monitoring>>,
    /// One run or reconciliation at a time in this process...
    running: tokio::sync::Mutex<()>,
    /// ...and across the nodes sharing the store: this node's name and the lease's length.
    node: Arc<str>,
    lease: crate::cluster::LeasePolicy,
}

/// Who gets a file whether or not they had activity: the configured partners, each with its
/// wallet currencies, and the configured acquirers.
#[derive(Debug, Clone, Default)]
pub struct SettlementParties {
    pub partners: Vec<(String, Vec<Currency>)>,
    pub acquirers: Vec<String>,
}

/// The lease a settlement run or reconciliation holds while it runs.
const SETTLEMENT_LEASE: &str = "settlement";

/// The first and last day the API takes: the four-digit years of RFC 3339 `full-date`.
const DAY_MIN: (i32, u32, u32) = (1, 1, 1);
const DAY_MAX: (i32, u32, u32) = (9999, 12, 31);

/// A day as the API names it: `YYYY-MM-DD` (RFC 3339 `full-date`), 0001-01-01 to 9999-12-31.
/// Anything else (a sign, a fifth year digit) is `INVALID_REQUEST`: no day bound can overflow.
pub fn parse_day(text: &str) -> Result<NaiveDate, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(format!(
            "day {text:?} is not a date YYYY-MM-DD from 0001-01-01 to 9999-12-31"
        ))
    };
    let shape = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return Err(bad());
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())?;
    let bound = |(y, m, d)| NaiveDate::from_ymd_opt(y, m, d);
    match (bound(DAY_MIN), bound(DAY_MAX)) {
        (Some(min), Some(max)) if (min..=max).contains(&day) => Ok(day),
        _ => Err(bad()),
    }
}

impl<S: Store> Settlement<S> {
    pub fn new(
        treasury: Arc<Treasury<S>>,
        days: BusinessDays,
        dir: PathBuf,
        partners: Vec<(String, Vec<Currency>)>,
        acquirers: Vec<String>,
    ) -> Self {
        Settlement {
            treasury,
            days,
            dir,
            parties: std::sync::RwLock::new(Arc::new(SettlementParties { partners, acquirers })),
            monitoring: std::sync::RwLock::new(Arc::new(Monitoring::default())),
            running: tokio::sync::Mutex::new(()),
            node: crate::cluster::node_id(None),
            lease: crate::cluster::LeasePolicy { ttl: std::time::Duration::from_secs(10) },
        }
    }

    /// The parties in force.
    fn parties(&self) -> Arc<SettlementParties> {
        self.parties.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `parties` in force for the runs and reconciliations that begin from now on.
    pub fn set_parties(&self, parties: SettlementParties) {
        *self.parties.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parties);
    }

    /// With the monitoring thresholds `m` (instead of [`Monitoring::default`]).
    pub fn with_monitoring(self, m: Monitoring) -> Self {
        self.set_monitoring(m);
        self
    }

    /// The monitoring thresholds in force.
    fn monitoring(&self) -> Arc<Monitoring> {
        self.monitoring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts the monitoring thresholds `m` in force for the runs that begin from now on.
    pub fn set_monitoring(&self, m: Monitoring) {
        *self.monitoring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
    }

    /// Runs as node `node` among several sharing the store, with leases of `lease`.
    pub fn on_node(mut self, node: Arc<str>, lease: crate::cluster::LeasePolicy) -> Self {
        self.node = node;
        self.lease = lease;
        self
    }

    /// This node's turn at settlement among the nodes sharing the store: waits at most a lease
    /// and a half (a node that died holding it has lost it by then).
    async fn one_in_cluster(&self) -> Result<Turn<S>, ApiError> {
        let store = self.treasury.engine().store();
        let wait = self.lease.ttl + self.lease.ttl / 2;
        match Turn::take(store, SETTLEMENT_LEASE, &self.node, self.lease, wait).await {
            Ok(Some(turn)) => Ok(turn),
            Ok(None) => {
                tracing::warn!("settlement: another node kept the lease");
                Err(ApiError::Overloaded)
            }
            Err(e) => Err(internal(e)),
        }
    }

    pub fn days(&self) -> &BusinessDays {
        &self.days
    }

    fn ensure_closed(&self, day: NaiveDate) -> Result<(), ApiError> {
        let closes = self.days.closes_at(day);
        if self.treasury.engine().now() < closes {
            return Err(ApiError::DayNotClosed(format!("{day} closes at {}", ts(closes))));
        }
        Ok(())
    }

    /// What belongs to `day` ([`read_days`]; with its ledger entries when `journal`), and the
    /// payments `named` (by id, wherever their day), read off the async runtime's threads.
    async fn load(
        &self,
        day: NaiveDate,
        journal: bool,
        named: Vec<String>,
    ) -> Result<DaysData, ApiError> {
        let (store, days) = (self.treasury.engine().store().clone(), self.days);
        off_runtime(move || async move {
            let store = store.as_ref();
            let mut data = read_days(store, &days, day, day).await.map_err(internal)?;
            if journal {
                read_journal(store, &days, day, day, &mut data).await.map_err(internal)?;
            }
            let mut held: std::collections::HashSet<String> =
                data.payments.iter().map(|p| p.payment_id.clone()).collect();
            for id in named {
                if held.insert(id.clone()) {
                    data.payments.extend(store.payment(&id).await.map_err(internal)?);
                }
            }
            Ok(data)
        })
        .await
    }

    /// Produces (or produces again) the day's files; returns the summary. Reads that day only.
    pub async fn run(&self, actor: &str, day: NaiveDate) -> Result<Summary, ApiError> {
        self.ensure_closed(day)?;
        let _one = self.running.lock().await;
        let turn = self.one_in_cluster().await?;
        let data = self.load(day, true, Vec::new()).await?;
        let parties = self.parties();
        let (monitoring, policy) = (self.monitoring(), self.treasury.engine().risk().policy());
        let watch = Watch { rules: policy.rules(), monitoring: &monitoring };
        let input = DayInput {
            day,
            days: &self.days,
            partners: &parties.partners,
            acquirers: &parties.acquirers,
            payments: &data.payments,
            refunds: &data.refunds,
            journal: &data.journal,
        };
        let (summary, files, findings) = build_day(&input, watch)?;
        if turn.lost() {
            // Another node may be running the day now: it publishes, not this one.
            tracing::warn!(%day, "settlement lease lost during the run; files not written");
            return Err(ApiError::Overloaded);
        }
        let dir = self.dir.join(day.to_string());
        write_day(dir, files).await?;
        turn.release().await;
        // Lines written to the monitoring reports (a rerun of the day writes them again).
        for (rule, n) in findings {
            metrics::counter!("qrbridge_risk_findings_total", "rule" => rule.code()).increment(n);
        }
        let digest = summary.files.get("in-doubt.csv").cloned();
        self.treasury
            .record(
                actor,
                "settlement.run",
                format!("settlement:{day}"),
                json!({ "in_doubt": summary.in_doubt.len(), "in_doubt_sha256": digest }),
            )
            .await?;
        Ok(summary)
    }

    fn day_dir(&self, day: NaiveDate) -> PathBuf {
        self.dir.join(day.to_string())
    }

    /// A file of a day already run (`summary.json` among them).
    pub async fn file(&self, day: NaiveDate, name: &str) -> Result<Vec<u8>, ApiError> {
        let safe = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let missing = || {
            ApiError::SettlementNotFound(format!("no file {name:?} for {day}; run the day first"))
        };
        if !safe {
            return Err(missing());
        }
        tokio::fs::read(self.day_dir(day).join(name)).await.map_err(|_| missing())
    }

    /// Reconciles `acquirer`'s file for `day`; writes and returns the report.
    pub async fn reconcile(
        &self,
        actor: &str,
        day: NaiveDate,
        acquirer: &str,
        file: &[u8],
    ) -> Result<Value, ApiError> {
        let _one = self.running.lock().await;
        let _turn = self.one_in_cluster().await?;
        // The day's records, and each payment the file names (a file that does not read names
        // none: it is refused below, after the acquirer and the day are checked, as always).
        let named = their_lines(file).map(|t| t.into_keys().collect()).unwrap_or_default();
        let data = self.load(day, false, named).await?;
        // A configured acquirer, or one the bridge has dealt with (since removed from the
        // configuration): its days can still be reconciled. Only what was read for this day is
        // looked at, not the history: an acquirer gone from the configuration is known when it
        // has payments or refunds among the day's records (the payments made that day, the
        // refunds made that day or a day either side and their payments, and the payments its
        // file names). An unconfigured acquirer with none of those is `ACQUIRER_NOT_FOUND`.
        if !self.parties().acquirers.iter().any(|a| a == acquirer)
            && !data.payments.iter().any(|p| p.acquirer == acquirer)
            && !data.refunds.iter().any(|r| r.acquirer == acquirer)
        {
            return Err(ApiError::AcquirerNotFound(acquirer.to_owned()));
        }
        self.ensure_closed(day)?;
        let lines = reconcile(day, &self.days, acquirer, file, &data.payments, &data.refunds)?;
        let mut counts: BTreeMap<Verdict, u64> = BTreeMap::new();
        for l in &lines {
            for v in &l.verdicts {
                *counts.entry(*v).or_insert(0) += 1;
            }
        }
        let clean = lines.iter().all(|l| l.verdicts == [Verdict::Matched]);
        let report = json!({
            "day": day, "acquirer": acquirer, "clean": clean,
            "instructions": lines.len(), "counts": counts, "lines": lines,
        });
        let rows = lines
            .iter()
            .map(|l| {
                let verdicts: Vec<String> = l
                    .verdicts
                    .iter()
                    .map(|v| json!(v).as_str().unwrap_or_default().to_owned())
                    .collect();
                vec![
                    l.instruction_id.clone(),
                    verdicts.join(";"),
                    l.bridge_amount.clone().unwrap_or_default(),
                    l.acquirer_amount.clone().unwrap_or_default(),
                    l.bridge_currency.clone().unwrap_or_default(),
                    l.acquirer_currency.clone().unwrap_or_default(),
                    l.bridge_status.clone().unwrap_or_default(),
                    l.acquirer_status.clone().unwrap_or_default(),
                    l.bridge_refunds.join(";"),
                    l.acquirer_refunds.join(";"),
                    l.note.clone(),
                ]
            })
            .collect();
        let mut files = BTreeMap::new();
        files.insert(
            format!("reconciliation-{acquirer}.csv"),
            csv_bytes(
                &[
                    "instruction_id",
                    "result",
                    "bridge_amount",
                    "acquirer_amount",
                    "bridge_currency",
                    "acquirer_currency",
                    "bridge_status",
                    "acquirer_status",
                    "bridge_refunds",
                    "acquirer_refunds",
                    "note",
                ],
                rows,
            ),
        );
        let mut json_bytes = serde_json::to_vec_pretty(&report).expect("JSON of plain data");
        json_bytes.push(b'\n');
        files.insert(format!("reconciliation-{acquirer}.json"), json_bytes);
        files.insert(format!("acquirer-file-{acquirer}.csv"), file.to_vec());
        let dir = self.day_dir(day);
        write_day(dir, files).await?;
        self.treasury
            .record(
                actor,
                "settlement.reconcile",
                format!("reconciliation:{day}:{acquirer}"),
                json!({ "clean": clean, "counts": counts }),
            )
            .await?;
        Ok(report)
    }
}
