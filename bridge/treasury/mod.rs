//! Treasury: the rates and spreads in force, the open positions and spread revenue (straight
//! from the ledger), and the audit log of every admin change.
//!
//! Every admin change is made under one lock, written with its audit record in one sled
//! transaction, made durable, and only then put in force: an answer "changed" is never sent for a
//! change a crash could lose, and the log holds every change that was ever in force.
//!
//! Changes that move money are under dual control ([`proposals`]): one admin proposes, another
//! approves, and only the approval puts the change in force. Risk rules, blocklist entries and
//! funds received always are; a spread or a rate set by hand is when it moves more than its
//! configured step ([`Treasury::set_dual_control`]), and below the step takes effect at once.
//!
//! Rates an admin sets are held to the same guard as feeds: an `as_of` beyond now plus
//! `fx.as_of_skew_s` is refused (`RATE_FROM_FUTURE`), and a move from the held rate larger than
//! `fx.rate_move_bps_max` is refused (`RATE_MOVE_TOO_LARGE`) unless the request says
//! `force: true`; a forced change is recorded as `rates.force`, with each move it forced.
//!
//! Revenue falls on business days by the one rule settlement uses
//! ([`BusinessDays::day_of_entry`]), so a day's revenue here equals its treasury report. Revenue
//! between two days reads those days only ([`read_days`]); positions come from the store's
//! running account totals: neither reads the history.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use qrbridge_fx::{Amount, Bps, Currency, Decimal, MidRate, Pair, RateError, SpreadKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cluster::Turn;
use crate::days::{made_at, read_days, read_journal, BusinessDays};
use crate::error::ApiError;
use crate::model::{verify_chain, AuditDraft, AuditRecord, ChainCheck, JournalEntry};
use crate::payments::engine::Engine;
use crate::rates::{Feeds, Offered, RateSink, SourceStatus};
use crate::store::{Store, StoreError};

pub mod proposals;
mod risk;
use crate::payments::risk::RiskBase;
use proposals::Approved;
pub use proposals::{BlockList, Change, Outcome, Proposal, ProposalState};
pub use qrbridge_config::DualControl;
pub use risk::{FundsKind, FundsRecord};

/// The settings key of the spreads an admin set.
const SPREADS_KEY: &str = "spreads";
/// The lease a change of stored settings holds.
const SETTINGS_LEASE: &str = "settings";
/// The settings prefix of rates an admin set: `rate/<BASE>/<QUOTE>`.
const RATE_PREFIX: &str = "rate/";

pub(crate) fn internal(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    ApiError::Internal
}

/// Runs `read` (store reads that may take a while: a day's records, the history) on one of
/// tokio's blocking threads, so the async runtime's threads go on serving meanwhile: the
/// embedded store answers its reads on the thread that asks.
pub(crate) async fn off_runtime<T, F, R>(read: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
    R: std::future::Future<Output = Result<T, ApiError>>,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(read())).await.map_err(|e| {
        tracing::error!(error = %e, "store read stopped");
        ApiError::Internal
    })?
}

/// Treasury operations over one engine.
pub struct Treasury<S> {
    engine: Arc<Engine<S>>,
    feeds: Arc<Feeds>,
    /// One admin change at a time, so the policy in force and the stored one agree.
    changes: tokio::sync::Mutex<()>,
    /// Changes read what is stored and write it back: one node at a time ([`Turn`]).
    node: Arc<str>,
    lease: crate::cluster::LeasePolicy,
    days: BusinessDays,
    /// The audit sequence whose settings are in force here: changes made here, and (several
    /// nodes on one store) those read from another node's.
    in_force: tokio::sync::watch::Sender<u64>,
    /// The risk rules and blocklists the configuration gives, under what admins approved.
    risk_base: std::sync::Mutex<RiskBase>,
    /// Funds each partner sent (prefunding top-ups, settlements received), per currency, as
    /// stored: they lower what it owes.
    funds: std::sync::Mutex<BTreeMap<(String, Currency), i64>>,
    /// Which changes need a second admin, and how long a proposal waits (the configuration's
    /// `risk.dual_control`, put in force at start and on every reload).
    dual: std::sync::Mutex<DualControl>,
    /// The last proposal id's millisecond and number: ids made here only grow.
    last_proposal: std::sync::Mutex<(u64, u32)>,
}

/// Admin changes held back ([`Treasury::settings_held`]) until this is released or dropped.
pub struct SettingsHeld<'a, S: Store> {
    _one: tokio::sync::MutexGuard<'a, ()>,
    turn: Turn<S>,
}

impl<S: Store> SettingsHeld<'_, S> {
    /// Whether the settings' turn was lost (another node may be changing them now).
    pub fn lost(&self) -> bool {
        self.turn.lost()
    }

    pub async fn release(self) {
        self.turn.release().await;
    }
}

/// A spread as kept in the settings (the default has neither partner nor pair).
#[derive(Debug, Serialize, Deserialize)]
struct StoredSpread {
    partner: Option<String>,
    pair: Option<Pair>,
    bps: Bps,
}

/// A rate as listed.
#[derive(Debug, Serialize)]
pub struct RateView {
    pub base: Currency,
    pub quote: Currency,
    pub rate: Decimal,
    pub source: String,
    pub as_of: DateTime<Utc>,
    pub age_s: i64,
    pub fresh: bool,
}

/// A rate an admin sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateInput {
    pub base: String,
    pub quote: String,
    pub rate: String,
    /// Defaults to now.
    #[serde(default)]
    pub as_of: Option<DateTime<Utc>>,
}

/// A spread change: `bps` none removes the override (the default cannot be removed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpreadChange {
    #[serde(default)]
    pub partner: Option<String>,
    /// `BASE/QUOTE` as quotes show it, e.g. `CNY/PHP`: CNY, then the wallet currency.
    #[serde(default)]
    pub pair: Option<String>,
    pub bps: Option<String>,
}

/// One position line per currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrencyPosition {
    pub currency: Currency,
    /// Partners owe us this (wallet currencies).
    pub partners_owe: Amount,
    /// We owe acquirers this (CNY).
    pub we_owe_acquirers: Amount,
    pub spread_revenue: Amount,
    /// Long (positive) or short: what we hold in this currency at mid, before settlement.
    pub net_position: Amount,
}

/// Spread revenue of one day, partner and pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevenueLine {
    pub day: NaiveDate,
    pub partner: String,
    pub pair: String,
    pub revenue: Amount,
    /// Ledger entries behind it: payments, refunds, reversals.
    pub entries: u64,
}

fn amount(currency: Currency, minor: i128) -> Result<Amount, ApiError> {
    i64::try_from(minor).ok().and_then(|m| Amount::from_minor(currency, m).ok()).ok_or_else(|| {
        tracing::error!(%currency, minor, "ledger sum out of range");
        ApiError::Internal
    })
}

fn target_of(key: &SpreadKey) -> String {
    format!(
        "spread:{}:{}",
        key.partner.as_deref().unwrap_or("*"),
        key.pair.map_or("*".to_owned(), |p| p.to_string())
    )
}

fn parse_pair(text: &str) -> Result<Pair, ApiError> {
    let bad = || ApiError::InvalidRequest(format!("pair {text:?} is not BASE/QUOTE"));
    let (b, q) = text.split_once('/').ok_or_else(bad)?;
    let c = |code: &str| {
        Currency::from_code(code.trim())
            .map_err(|e| ApiError::CurrencyNotSupported(format!("{code:?}: {e}")))
    };
    let pair = Pair::new(c(b)?, c(q)?);
    if pair.base == pair.quote {
        return Err(bad());
    }
    Ok(pair)
}

/// Rates an admin gave, read: as source `source`, `as_of` now where none is given.
fn read_rates(
    inputs: &[RateInput],
    source: &str,
    now: DateTime<Utc>,
) -> Result<Vec<MidRate>, ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::InvalidRate("no rates given".into()));
    }
    inputs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let bad = |m: String| ApiError::InvalidRate(format!("rates[{i}]: {m}"));
            let pair =
                parse_pair(&format!("{}/{}", r.base, r.quote)).map_err(|e| bad(e.to_string()))?;
            let rate = crate::rates::positive(&r.rate).map_err(bad)?;
            Ok(MidRate { pair, rate, source: source.to_owned(), as_of: r.as_of.unwrap_or(now) })
        })
        .collect()
}

/// Rates as the guard found them ([`Treasury::check_rates`]), each at its index.
#[derive(Debug, Default)]
struct CheckedRates {
    /// The rate held for each pair before (null: none).
    before: Vec<Value>,
    /// Whether each would be taken (one older than the rate held is not).
    taken: Vec<bool>,
    /// Each move `force` let past the bound.
    forced: Vec<Value>,
    /// How far each moves from the rate held, in bps (none: no rate held).
    moves: Vec<Option<Decimal>>,
}

/// A spread change's key and spread (none: the override removed), read.
fn read_spread(change: &SpreadChange) -> Result<(SpreadKey, Option<Bps>), ApiError> {
    let pair = change.pair.as_deref().map(parse_pair).transpose()?;
    let key = SpreadKey { partner: change.partner.clone(), pair };
    let bps = change
        .bps
        .as_deref()
        .map(|b| {
            b.parse::<Bps>().map_err(|e| ApiError::SpreadOutOfBounds(format!("bps {b:?}: {e}")))
        })
        .transpose()?;
    Ok((key, bps))
}

/// The spreads with one changed ([`Treasury::spread_changed`]).
struct SpreadChanged {
    policy: qrbridge_fx::SpreadPolicy,
    /// The key's own spread before (none: no override; for the default, the default).
    before: Option<Bps>,
    /// The spread in force for the key before, and after.
    from: Bps,
    to: Bps,
    /// `|to - from|` in bps.
    moved: Decimal,
}

impl<S: Store> Treasury<S> {
    pub fn new(engine: Arc<Engine<S>>, feeds: Arc<Feeds>, days: BusinessDays) -> Self {
        Treasury {
            engine,
            feeds,
            changes: tokio::sync::Mutex::new(()),
            days,
            node: crate::cluster::node_id(None),
            lease: crate::cluster::LeasePolicy { ttl: std::time::Duration::from_secs(10) },
            in_force: tokio::sync::watch::channel(0).0,
            risk_base: std::sync::Mutex::default(),
            funds: std::sync::Mutex::default(),
            dual: std::sync::Mutex::new(DualControl::default()),
            last_proposal: std::sync::Mutex::default(),
        }
    }

    /// Puts `dual` (the configuration's `risk.dual_control`) in force: at start and on every
    /// reload. Proposals made before keep their expiry.
    pub fn set_dual_control(&self, dual: DualControl) {
        *self.dual.lock().unwrap_or_else(|p| p.into_inner()) = dual;
    }

    /// The dual control in force.
    pub fn dual_control(&self) -> DualControl {
        self.dual.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`Treasury::restore`] between this node's own changes (another node changed settings).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.changes.lock().await;
        self.restore().await
    }

    /// The audit sequence whose settings are in force on this node, as it moves.
    pub fn settings_in_force(&self) -> tokio::sync::watch::Receiver<u64> {
        self.in_force.subscribe()
    }

    /// Settings up to audit sequence `seq` are in force here.
    pub fn settings_reached(&self, seq: u64) {
        self.in_force.send_if_modified(|s| {
            let moved = seq > *s;
            *s = (*s).max(seq);
            moved
        });
    }

    /// Changes as node `node` among several sharing the store, with leases of `lease`.
    pub fn on_node(mut self, node: Arc<str>, lease: crate::cluster::LeasePolicy) -> Self {
        self.node = node;
        self.lease = lease;
        self
    }

    pub fn engine(&self) -> &Arc<Engine<S>> {
        &self.engine
    }

    /// Puts what admins set back in force — before a restart, or on another node: spreads (each
    /// within today's bounds; others are logged and left out) and rates set by hand (a rate
    /// older than the one held is not taken).
    pub async fn restore(&self) -> Result<(), StoreError> {
        self.restore_risk().await?;
        let store = self.engine.store();
        if let Some((_, bytes)) =
            store.settings(SPREADS_KEY).await?.into_iter().find(|(k, _)| k == SPREADS_KEY)
        {
            let stored: Vec<StoredSpread> = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Corrupt { tree: "settings", message: format!("spreads: {e}") }
            })?;
            let mut policy = self.engine.spreads();
            // The stored list is the whole set: an override it no longer holds was removed
            // (on another node, when several share the store).
            let gone: Vec<SpreadKey> = policy
                .overrides()
                .map(|(k, _)| k.clone())
                .filter(|k| !stored.iter().any(|s| s.partner == k.partner && s.pair == k.pair))
                .collect();
            for k in &gone {
                policy.remove(k);
            }
            for s in stored {
                let key = SpreadKey { partner: s.partner, pair: s.pair };
                if let Err(e) = policy.set(key.clone(), s.bps) {
                    tracing::warn!(target = %target_of(&key), error = %e, "stored spread left out");
                }
            }
            self.engine.set_spreads(policy);
        }
        let rates = store
            .settings(RATE_PREFIX)
            .await?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice::<MidRate>(&v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt { tree: "settings", message: format!("rate: {e}") })?;
        let now = self.engine.now();
        self.engine.with_rates(|book| {
            for r in rates {
                // Not held to the move bound (it was taken once), but one from the future
                // (kept by an older build) would shadow every later rate.
                if let Err(e) = book.offer(r, now, true) {
                    tracing::warn!(error = %e, "stored rate left out");
                }
            }
        });
        Ok(())
    }

    /// Every rate held, with its age and whether it may be quoted; every source's last read.
    pub fn rates(&self) -> (Vec<RateView>, Vec<SourceStatus>) {
        let now = self.engine.now();
        let views = self.engine.with_rates(|book| {
            book.rates()
                .map(|r| RateView {
                    base: r.pair.base,
                    quote: r.pair.quote,
                    rate: r.rate,
                    source: r.source.clone(),
                    as_of: r.as_of,
                    age_s: (now - r.as_of).num_seconds(),
                    fresh: book.is_fresh(r, now),
                })
                .collect()
        });
        (views, self.feeds.status())
    }

    /// Writes `draft` and `settings` in one transaction, and makes them durable. `turn`: the
    /// settings' turn the change was decided under, when it was (a change read, decided and
    /// written under it); written only while this node still holds it, else `Overloaded`
    /// (retryable) and nothing written.
    async fn commit(
        &self,
        turn: Option<&Turn<S>>,
        draft: AuditDraft,
        settings: &[(String, Option<Vec<u8>>)],
    ) -> Result<AuditRecord, ApiError> {
        if turn.is_some_and(Turn::lost) {
            return Err(ApiError::Overloaded);
        }
        let store = self.engine.store();
        let record =
            store.admin_commit(&draft, settings, turn.map(Turn::fence)).await.map_err(|e| match e {
                StoreError::LeaseLost(lease) => {
                    tracing::warn!(%lease, actor = %draft.actor, action = %draft.action, "admin change not written: the settings' lease was lost while it was decided");
                    ApiError::Overloaded
                }
                e => internal(e),
            })?;
        store.flush().await.map_err(internal)?;
        self.settings_reached(record.seq);
        tracing::info!(actor = %draft.actor, action = %draft.action, target = %draft.target, seq = record.seq, "admin change");
        Ok(record)
    }

    /// This node's turn at changing stored settings, among the nodes sharing the store.
    async fn settings_turn(&self) -> Result<Turn<S>, ApiError> {
        let store = self.engine.store();
        let wait = self.lease.ttl + self.lease.ttl / 2;
        match Turn::take(store, SETTINGS_LEASE, &self.node, self.lease, wait).await {
            Ok(Some(turn)) => Ok(turn),
            Ok(None) => Err(ApiError::Overloaded),
            Err(e) => Err(internal(e)),
        }
    }

    fn draft(
        &self,
        actor: &str,
        action: &str,
        target: String,
        before: Value,
        after: Value,
    ) -> AuditDraft {
        AuditDraft {
            at: self.engine.now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            before,
            after,
        }
    }

    /// Sets mid rates by hand (all or none), as source `admin:<actor>`, or proposes them
    /// ([`Outcome::Proposed`], nothing changed) when one moves more than
    /// `risk.dual_control.rate_step_bps` from the rate held, or has none held. Each is held to
    /// the rate book's guard first (a bad rate is refused either way); `force` lets a move past
    /// the bound through, and is audited. Applied, it returns each rate and whether it was taken
    /// (a rate older than the one held is not).
    pub async fn change_rates(
        &self,
        actor: &str,
        inputs: Vec<RateInput>,
        force: bool,
    ) -> Result<Outcome, ApiError> {
        let now = self.engine.now();
        let rates = read_rates(&inputs, &format!("admin:{actor}"), now)?;
        let _one = self.changes.lock().await;
        let checked = self.check_rates(&rates, force, now)?;
        let step = Decimal::from(self.dual_control().rate_step_bps);
        let over: Vec<String> = rates
            .iter()
            .zip(&checked.taken)
            .zip(&checked.moves)
            .filter(|((_, taken), moved)| **taken && moved.is_none_or(|m| m > step))
            .map(|((r, _), moved)| match moved {
                Some(m) => format!("{} moves {} bps", r.pair, m.round_dp(2)),
                None => format!("{} has no rate held", r.pair),
            })
            .collect();
        if over.is_empty() {
            return self
                .rates_commit(actor, rates, checked, None, None)
                .await
                .map(Outcome::Applied);
        }
        let why = format!("{} (dual control above {step} bps)", over.join(", "));
        let proposal = self.propose(actor, Change::Rates { rates: inputs, force }, why).await?;
        Ok(Outcome::Proposed(proposal))
    }

    /// Checks `rates` against the rate book's guard (hold `changes`): what each replaces,
    /// whether it would be taken, what it forces, how far it moves.
    fn check_rates(
        &self,
        rates: &[MidRate],
        force: bool,
        now: DateTime<Utc>,
    ) -> Result<CheckedRates, ApiError> {
        let checked = self.engine.with_rates(|book| {
            let held: BTreeMap<Pair, &MidRate> = book.rates().map(|r| (r.pair, r)).collect();
            let max_bps = book.guard().move_bps_max.map(Decimal::from);
            rates
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let taken = book.check(r, now, force).map_err(|e| refusal(i, e))?;
                    let moved = book.move_bps(r, now);
                    let forced = taken && max_bps.is_some_and(|m| moved.is_none_or(|b| b > m));
                    let forced = forced.then(|| {
                        json!({"pair": r.pair.to_string(), "held": held.get(&r.pair).map(|h| h.rate),
                               "rate": r.rate, "move_bps": moved.map(|b| b.round_dp(2))})
                    });
                    Ok((json!(held.get(&r.pair)), taken, forced, moved))
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })?;
        let mut out = CheckedRates::default();
        for (before, taken, forced, moved) in checked {
            out.before.push(before);
            out.taken.push(taken);
            out.forced.extend(forced);
            out.moves.push(moved);
        }
        Ok(out)
    }

    /// Writes `rates` as [`Self::check_rates`] found them, with their audit record (`rates.set`,
    /// or `rates.force` with each move forced) and, approved, the proposal's new state; then
    /// puts them in force. Hold `changes` (and, approved, the settings' `turn`).
    async fn rates_commit(
        &self,
        actor: &str,
        rates: Vec<MidRate>,
        checked: CheckedRates,
        approved: Option<&Approved>,
        turn: Option<&Turn<S>>,
    ) -> Result<Value, ApiError> {
        let CheckedRates { before, taken, forced, .. } = checked;
        let kept: Vec<&MidRate> =
            rates.iter().zip(&taken).filter(|(_, t)| **t).map(|(r, _)| r).collect();
        let mut settings: Vec<(String, Option<Vec<u8>>)> = kept
            .iter()
            .map(|r| {
                let key = format!("{RATE_PREFIX}{}/{}", r.pair.base, r.pair.quote);
                (key, Some(serde_json::to_vec(r).expect("JSON of plain data")))
            })
            .collect();
        let draft = match (forced.is_empty(), approved) {
            (true, None) => {
                self.draft(actor, "rates.set", "rates".into(), json!(before), json!(rates))
            }
            (true, Some(a)) => {
                let after = json!({ "rates": rates, "approval": a.approval });
                self.draft(actor, "rates.set", "rates".into(), json!(before), after)
            }
            (false, _) => {
                tracing::warn!(actor, forced = forced.len(), "rates forced past the move bound");
                let mut after = json!({ "rates": rates, "forced": forced });
                if let Some(a) = approved {
                    after["approval"] = a.approval.clone();
                }
                self.draft(actor, "rates.force", "rates".into(), json!(before), after)
            }
        };
        settings.extend(approved.map(Approved::setting));
        let record = self.commit(turn, draft, &settings).await?;
        self.engine.with_rates(|book| {
            for r in kept {
                let _ = book.upsert(r.clone());
            }
        });
        let results: Vec<Value> = rates
            .iter()
            .zip(taken)
            .map(|(r, t)| json!({"base": r.pair.base, "quote": r.pair.quote, "rate": r.rate, "as_of": r.as_of, "source": r.source, "taken": t}))
            .collect();
        Ok(json!({ "rates": results, "audit_seq": record.seq }))
    }

    /// Reads a rate source now (an admin's request), and records that it was asked for.
    pub async fn refresh(&self, actor: &str, id: &str) -> Result<Value, ApiError> {
        if !self.feeds.ids().iter().any(|s| s == id) {
            return Err(ApiError::RateSourceNotFound(id.to_owned()));
        }
        let book = rate_sink(self.engine.clone());
        let Offered { taken, refused } = self
            .feeds
            .refresh(id, book.as_ref())
            .await
            .map_err(|e| ApiError::RateSourceFailed(format!("source {id:?}: {e}")))?;
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        let _one = self.changes.lock().await;
        let draft = self.draft(
            actor,
            "rates.refresh",
            format!("source:{id}"),
            Value::Null,
            json!({ "taken": taken, "refused": refused }),
        );
        let record = self.commit(None, draft, &[]).await?;
        Ok(json!({ "source": id, "taken": taken, "refused": refused, "audit_seq": record.seq }))
    }

    /// The spreads in force: default, bounds and overrides.
    pub fn spreads(&self) -> Value {
        let p = self.engine.spreads();
        let (min, max) = p.bounds();
        let overrides: Vec<Value> = p
            .overrides()
            .map(|(k, bps)| json!({"partner": k.partner, "pair": k.pair.map(|p| p.to_string()), "bps": bps}))
            .collect();
        json!({ "default_bps": p.default_bps(), "min_bps": min, "max_bps": max, "overrides": overrides })
    }

    /// Sets or removes one spread, or proposes it ([`Outcome::Proposed`], nothing changed) when
    /// it moves the spread in force for its key (an override's, or the default where there is
    /// none; a removed override falls back to the default) by more than
    /// `risk.dual_control.spread_step_bps`. Checked against the bounds first either way. New
    /// quotes are priced with it; issued quotes keep theirs.
    pub async fn change_spread(
        &self,
        actor: &str,
        change: SpreadChange,
    ) -> Result<Outcome, ApiError> {
        let (key, bps) = read_spread(&change)?;
        let _one = self.changes.lock().await;
        // The spreads are stored as one list: another node's change since this node last read
        // them must be in it, so read them again under the cluster's turn.
        let turn = self.settings_turn().await?;
        self.restore().await.map_err(internal)?;
        let changed = self.spread_changed(&key, bps)?;
        let step = Decimal::from(self.dual_control().spread_step_bps);
        if changed.moved > step {
            turn.release().await;
            let why = format!(
                "{} moves from {} to {} bps ({} bps; dual control above {step} bps)",
                target_of(&key),
                changed.from,
                changed.to,
                changed.moved
            );
            let proposal = self.propose(actor, Change::Spread(change), why).await?;
            return Ok(Outcome::Proposed(proposal));
        }
        let answer = self.spread_commit(&turn, actor, &key, bps, changed, None).await?;
        turn.release().await;
        Ok(Outcome::Applied(answer))
    }

    /// The spreads in force with `bps` set at `key` (none: the override removed), checked
    /// against the bounds, and how far that moves the spread for `key`. Call after
    /// [`Self::restore`], under the settings' turn.
    fn spread_changed(&self, key: &SpreadKey, bps: Option<Bps>) -> Result<SpreadChanged, ApiError> {
        let mut policy = self.engine.spreads();
        let in_force = policy.clone();
        let is_default = key.partner.is_none() && key.pair.is_none();
        let default = policy.default_bps();
        let before = if is_default {
            Some(default)
        } else {
            policy.overrides().find(|(k, _)| *k == key).map(|(_, b)| *b)
        };
        match bps {
            Some(b) => {
                policy
                    .set(key.clone(), b)
                    .map_err(|e| ApiError::SpreadOutOfBounds(e.to_string()))?;
            }
            None if is_default => {
                return Err(ApiError::InvalidRequest(
                    "the default spread cannot be removed".into(),
                ));
            }
            None => {
                policy.remove(key);
            }
        }
        let from = before.unwrap_or(default);
        let to = bps.unwrap_or(default);
        // Both within 0..=10000: the difference cannot overflow.
        let gap =
            |a: Bps, b: Bps| a.value().checked_sub(b.value()).map_or(Decimal::MAX, |d| d.abs());
        let mut moved = gap(to, from);
        // What a quote is priced with moves by the most any partner's pair moves: an override
        // under a broader one (or a removal uncovering one) moves it by more than the key's own
        // value says.
        let parties = self.engine.parties();
        for partner in parties.partners() {
            for w in parties.wallet_currencies(partner) {
                let pair = Pair::new(Currency::CNY, *w);
                moved = moved
                    .max(gap(policy.spread_for(partner, pair), in_force.spread_for(partner, pair)));
            }
        }
        Ok(SpreadChanged { policy, before, from, to, moved })
    }

    /// Writes the spreads [`Self::spread_changed`] made, with their audit record
    /// (`spreads.set`) and, approved, the proposal's new state; then puts them in force. Hold
    /// `changes` and the settings' `turn`.
    async fn spread_commit(
        &self,
        turn: &Turn<S>,
        actor: &str,
        key: &SpreadKey,
        bps: Option<Bps>,
        changed: SpreadChanged,
        approved: Option<&Approved>,
    ) -> Result<Value, ApiError> {
        let SpreadChanged { policy, before, .. } = changed;
        let stored =
            std::iter::once(StoredSpread { partner: None, pair: None, bps: policy.default_bps() })
                .chain(policy.overrides().map(|(k, b)| StoredSpread {
                    partner: k.partner.clone(),
                    pair: k.pair,
                    bps: *b,
                }))
                .collect::<Vec<_>>();
        let stored = serde_json::to_vec(&stored).expect("JSON of plain data");
        // Approved, `after` names who proposed and approved it beside the new spread.
        let after = match approved {
            None => json!(bps),
            Some(a) => json!({ "bps": bps, "approval": a.approval }),
        };
        let draft = self.draft(actor, "spreads.set", target_of(key), json!(before), after);
        let mut settings = vec![(SPREADS_KEY.to_owned(), Some(stored))];
        settings.extend(approved.map(Approved::setting));
        let record = self.commit(Some(turn), draft, &settings).await?;
        self.engine.set_spreads(policy);
        let mut answer = self.spreads();
        answer["audit_seq"] = json!(record.seq);
        Ok(answer)
    }

    /// Open positions per currency, over the whole ledger: from the store's running totals per
    /// account ([`Store::account_totals`]), not a scan of the journal.
    pub async fn positions(&self) -> Result<Vec<CurrencyPosition>, ApiError> {
        let totals = self.engine.store().account_totals().await.map_err(internal)?;
        positions_of(totals.iter().map(|((c, account), sum)| (*c, account.as_str(), *sum)))
    }

    /// Spread revenue by business day, partner and pair, for days in `[from, to]`; entries fall
    /// on days by [`BusinessDays::day_of_entry`], as in settlement. With both days given it reads
    /// those days only ([`read_days`]); without one it is a request over the whole history, and
    /// reads it all. Reads on the calling thread: from async code call
    /// [`Treasury::revenue_async`].
    pub async fn revenue(
        &self,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Vec<RevenueLine>, ApiError> {
        read_revenue(self.engine.store().as_ref(), &self.days, from, to).await
    }

    /// [`Treasury::revenue`], read on tokio's blocking threads: the runtime's threads are not
    /// held up by a long range (or by the whole history, when a day is not given).
    pub async fn revenue_async(
        &self,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Vec<RevenueLine>, ApiError> {
        let (store, days) = (self.engine.store().clone(), self.days);
        off_runtime(move || async move { read_revenue(store.as_ref(), &days, from, to).await })
            .await
    }

    /// The audit log, verified.
    pub async fn audit(&self) -> Result<(Vec<AuditRecord>, ChainCheck), ApiError> {
        let (records, head) = self.engine.store().audit_log().await.map_err(internal)?;
        let check = verify_chain(&records, head.as_ref());
        if !check.ok {
            tracing::error!(broken_at = ?check.broken_at, reason = ?check.reason, "audit chain broken");
        }
        Ok((records, check))
    }

    /// Holds admin changes back, here and (as the settings' turn) on every node sharing the
    /// store: a reload puts new spread bounds in force under it, so no spread change checked
    /// against the old bounds lands after them, and the stored spreads it checks stay as read.
    pub async fn settings_held(&self) -> Result<SettingsHeld<'_, S>, ApiError> {
        let one = self.changes.lock().await;
        let turn = self.settings_turn().await?;
        Ok(SettingsHeld { _one: one, turn })
    }

    /// The spreads `base` (the configuration's default and bounds) puts in force with what
    /// admins set (the stored default and overrides win over the configuration's default), or
    /// each stored spread that the new bounds refuse and the bounds in force take. One that the
    /// bounds in force refuse too (kept from a build with wider bounds) is left out and logged,
    /// as at start. Call with [`Self::settings_held`] held.
    pub async fn spreads_within(
        &self,
        base: qrbridge_fx::SpreadPolicy,
    ) -> Result<qrbridge_fx::SpreadPolicy, Vec<String>> {
        let store = self.engine.store();
        let stored = store.settings(SPREADS_KEY).await.map_err(|e| vec![e.to_string()])?;
        let (min, max) = self.engine.spreads().bounds();
        let mut policy = base;
        let mut refused = Vec::new();
        if let Some((_, bytes)) = stored.into_iter().find(|(k, _)| k == SPREADS_KEY) {
            let stored: Vec<StoredSpread> =
                serde_json::from_slice(&bytes).map_err(|e| vec![format!("stored spreads: {e}")])?;
            for s in stored {
                let key = SpreadKey { partner: s.partner, pair: s.pair };
                let Err(e) = policy.set(key.clone(), s.bps) else { continue };
                if s.bps < min || s.bps > max {
                    tracing::warn!(target = %target_of(&key), error = %e, "stored spread left out");
                } else {
                    refused.push(format!(
                        "fx.spread: the spread in force for {} ({}) would be outside the new \
                         bounds: {e}; change it first",
                        target_of(&key),
                        s.bps
                    ));
                }
            }
        }
        if refused.is_empty() {
            Ok(policy)
        } else {
            Err(refused)
        }
    }

    /// [`Self::record`] with [`Self::settings_held`] already held (`held`), with what was
    /// before: written only while `held`'s turn is still this node's, as what it records was
    /// decided under it.
    pub async fn record_held(
        &self,
        held: &SettingsHeld<'_, S>,
        actor: &str,
        action: &str,
        target: String,
        before: Value,
        after: Value,
    ) -> Result<AuditRecord, ApiError> {
        let draft = self.draft(actor, action, target, before, after);
        self.commit(Some(&held.turn), draft, &[]).await
    }

    /// Records an admin action that is not a setting (a settlement run, a reconciliation).
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: String,
        after: Value,
    ) -> Result<AuditRecord, ApiError> {
        let _one = self.changes.lock().await;
        let draft = self.draft(actor, action, target, Value::Null, after);
        self.commit(None, draft, &[]).await
    }
}

/// Spread revenue for days in `[from, to]` ([`Treasury::revenue`]), read from `store`.
async fn read_revenue<S: Store + ?Sized>(
    store: &S,
    days: &BusinessDays,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<Vec<RevenueLine>, ApiError> {
    let (journal, payments) = match (from, to) {
        (Some(f), Some(t)) => {
            let mut data = read_days(store, days, f, t).await.map_err(internal)?;
            read_journal(store, days, f, t, &mut data).await.map_err(internal)?;
            (data.journal, data.payments)
        }
        // Asked for without a bound: the whole history, as asked.
        _ => (store.journal().await.map_err(internal)?, store.payments().await.map_err(internal)?),
    };
    let made = made_at(&payments);
    let day_of = |e: &JournalEntry| days.day_of_entry(e, made.get(e.payment_id.as_str()).copied());
    revenue(&journal, day_of, from, to)
}

/// An admin's rate refused by the guard, as an API error naming the rate.
fn refusal(i: usize, e: RateError) -> ApiError {
    match e {
        RateError::FromFuture { .. } => ApiError::RateFromFuture(format!("rates[{i}]: {e}")),
        RateError::MoveTooLarge { .. } => ApiError::RateMoveTooLarge(format!(
            "rates[{i}]: {e}; send \"force\": true to set it anyway (audited)"
        )),
        other => ApiError::InvalidRate(format!("rates[{i}]: {other}")),
    }
}

/// Where feeds put the rates they read: the engine's rate book, through its guard (a rate older
/// than the one held is not taken; one from the future, or moving too far, is refused and the
/// pair keeps its rate).
pub fn rate_sink<S: Store>(engine: Arc<Engine<S>>) -> Arc<RateSink> {
    Arc::new(move |rates: Vec<MidRate>| {
        let now = engine.now();
        engine.with_rates(|b| {
            let mut offered = Offered::default();
            for r in rates {
                match b.offer(r, now, false) {
                    Ok(taken) => offered.taken += usize::from(taken),
                    Err(e) => offered.refused.push(e),
                }
            }
            offered
        })
    })
}

/// Sums of every account kind per currency, from `(currency, account, amount)` postings or
/// totals.
fn account_sums<'a>(
    postings: impl IntoIterator<Item = (Currency, &'a str, i128)>,
) -> BTreeMap<(Currency, &'static str), i128> {
    let mut sums = BTreeMap::new();
    for (currency, account, minor) in postings {
        let kind = ["partner_receivable:", "acquirer_payable:", "spread_revenue:", "fx_position:"]
            .into_iter()
            .find(|k| account.starts_with(k));
        if let Some(kind) = kind {
            *sums.entry((currency, kind)).or_insert(0) += minor;
        }
    }
    sums
}

/// Positions per currency from journal entries: debits positive in the ledger, shown here from
/// the house's side (what it is owed and what it holds positive).
pub fn positions(journal: &[JournalEntry]) -> Result<Vec<CurrencyPosition>, ApiError> {
    positions_of(journal.iter().flat_map(|e| {
        e.postings.iter().map(|p| (p.currency, p.account.as_str(), i128::from(p.minor)))
    }))
}

/// Positions per currency ([`positions`]) from sums per currency and account (each posting on
/// its own, or running totals).
pub fn positions_of<'a>(
    sums: impl IntoIterator<Item = (Currency, &'a str, i128)>,
) -> Result<Vec<CurrencyPosition>, ApiError> {
    let sums = account_sums(sums);
    let currencies: std::collections::BTreeSet<Currency> = sums.keys().map(|(c, _)| *c).collect();
    currencies
        .into_iter()
        .map(|c| {
            let get = |k: &str| sums.get(&(c, k)).copied().unwrap_or(0);
            Ok(CurrencyPosition {
                currency: c,
                partners_owe: amount(c, get("partner_receivable:"))?,
                we_owe_acquirers: amount(c, -get("acquirer_payable:"))?,
                spread_revenue: amount(c, -get("spread_revenue:"))?,
                net_position: amount(c, -get("fx_position:"))?,
            })
        })
        .collect()
}

/// Spread revenue of one business day, partner and wallet currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueSum {
    pub revenue: Amount,
    /// Ledger entries behind it.
    pub entries: u64,
    /// Payment bookings less the cancels and reversals that undid them.
    pub payments: i64,
    pub refunds: u64,
}

/// A revenue line's business day, partner and wallet currency.
pub type RevenueKey = (NaiveDate, String, Currency);

/// Spread revenue per business day (`day_of`), partner and wallet currency, from journal
/// entries, for days in `[from, to]`: the one sum behind both the revenue report and each day's
/// treasury report.
pub fn revenue_sums(
    journal: &[JournalEntry],
    day_of: impl Fn(&JournalEntry) -> NaiveDate,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<BTreeMap<RevenueKey, RevenueSum>, ApiError> {
    // Per line: the sum in minor units, entries, net payments, refunds.
    type Line = (i128, u64, i64, u64);
    let mut lines: BTreeMap<RevenueKey, Line> = BTreeMap::new();
    for e in journal {
        let day = day_of(e);
        if from.is_some_and(|f| day < f) || to.is_some_and(|t| day > t) {
            continue;
        }
        let partner = e.postings.iter().find_map(|p| p.account.strip_prefix("partner_receivable:"));
        for p in &e.postings {
            if p.account.starts_with("spread_revenue:") {
                let key = (day, partner.unwrap_or("?").to_owned(), p.currency);
                let line = lines.entry(key).or_insert((0, 0, 0, 0));
                line.0 -= i128::from(p.minor);
                line.1 += 1;
                match e.kind.as_str() {
                    "payment" | "late_approval" => line.2 += 1,
                    "cancel" | "reversal" => line.2 -= 1,
                    "refund" => line.3 += 1,
                    _ => {}
                }
            }
        }
    }
    lines
        .into_iter()
        .map(|((day, partner, c), (sum, entries, payments, refunds))| {
            let revenue = amount(c, sum)?;
            Ok(((day, partner, c), RevenueSum { revenue, entries, payments, refunds }))
        })
        .collect()
}

/// Spread revenue per business day (`day_of`), partner and pair, from journal entries.
pub fn revenue(
    journal: &[JournalEntry],
    day_of: impl Fn(&JournalEntry) -> NaiveDate,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<Vec<RevenueLine>, ApiError> {
    Ok(revenue_sums(journal, day_of, from, to)?
        .into_iter()
        .map(|((day, partner, c), sum)| RevenueLine {
            day,
            partner,
            pair: format!("CNY/{c}"),
            revenue: sum.revenue,
            entries: sum.entries,
        })
        .collect())
}
