//! Risk settings admins change (each through dual control: see `proposals`): the rules in force,
//! kept whole in place of the configuration's until an admin resets them; blocklist entries on
//! top of the configuration's files; and the funds partners sent (prefunding top-ups and
//! settlements received), which lower what each owes. All are stored settings with an audit
//! record, put in force on every node by [`Treasury::restore`].
//!
//! And the risk book's upkeep from the store: [`Treasury::refresh_owed`] (what the partners owe,
//! from the ledger's running totals less the funds they sent) and [`Treasury::rebuild_risk`]
//! (every counter, from the payments of the last day and those not final).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::Duration;
use qrbridge_fx::{Amount, Currency};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::proposals::Approved;
use super::{internal, Treasury};
use crate::cluster::Turn;
use crate::error::ApiError;
use crate::model::PaymentRecord;
use crate::payments::risk::{
    Blocklists, BookStats, ListKind, PaymentFacts, Policy, RiskBase, RiskRules,
};
use crate::store::{Store, StoreError};

/// The settings key of the rules admins approved (absent: the configuration's are in force).
const RULES_KEY: &str = "risk/rules";
/// The settings key of the blocklist entries admins added.
const BLOCKED_KEY: &str = "risk/blocked";
/// The settings prefix of the funds each partner sent: `risk/funds/<partner>/<CUR>`.
const FUNDS_PREFIX: &str = "risk/funds/";
/// The settings key marking a funds reference as recorded: `fundsref/<partner>/<SHA-256 of the
/// reference>` (outside `risk/`, which is read whole at every restore).
fn funds_reference_key(partner: &str, reference: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("fundsref/{partner}/{}", hex::encode(Sha256::digest(reference.as_bytes())))
}

/// Most characters of a funds record's reference (the bank's or the partner's id for it).
const REFERENCE_CHARS_MAX: usize = 128;

/// Blocklist entries admins added, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoredBlocked {
    pub merchants: BTreeSet<String>,
    pub mccs: BTreeSet<String>,
    pub acquirers: BTreeSet<String>,
}

impl StoredBlocked {
    fn lists(&self) -> Blocklists {
        Blocklists {
            merchants: self.merchants.iter().cloned().collect(),
            mccs: self.mccs.iter().cloned().collect(),
            acquirers: self.acquirers.iter().cloned().collect(),
        }
    }

    fn set_mut(&mut self, kind: ListKind) -> &mut BTreeSet<String> {
        match kind {
            ListKind::Merchants => &mut self.merchants,
            ListKind::Mccs => &mut self.mccs,
            ListKind::Acquirers => &mut self.acquirers,
        }
    }
}

/// What funds a partner sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FundsKind {
    /// Money paid in advance: more room before its exposure limit.
    TopUp,
    /// A settlement the partner paid: what it owes goes down by it.
    SettlementReceived,
}

/// Funds a partner sent, as treasury records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FundsRecord {
    pub partner: String,
    /// In the partner's wallet currency, more than zero.
    pub amount: Amount,
    pub kind: FundsKind,
    /// The bank's or the partner's reference for the transfer (1-128 characters).
    pub reference: String,
}

/// The risk settings as stored.
pub(super) struct Stored {
    pub(super) rules: Option<RiskRules>,
    pub(super) blocked: StoredBlocked,
    pub(super) funds: BTreeMap<(String, Currency), i64>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { tree: "settings", message: format!("{what}: {e}") }
}

fn joined(problems: &[qrbridge_config::Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Puts the approval (who proposed and approved a change, under dual control) beside `after`.
fn with_approval(mut after: Value, approved: &Approved) -> Value {
    if let Some(obj) = after.as_object_mut() {
        obj.insert("approval".into(), approved.approval.clone());
    }
    after
}

/// A blocklist's name in the API, the audit log and the settings.
pub(super) fn list_name(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Merchants => "merchants",
        ListKind::Mccs => "mccs",
        ListKind::Acquirers => "acquirers",
    }
}

/// Blocklist entries to add and to remove, each checked as the list's files are: at least one,
/// none both added and removed.
pub(super) fn read_blocked(
    kind: ListKind,
    add: &[String],
    remove: &[String],
) -> Result<(HashSet<String>, HashSet<String>), ApiError> {
    let parse = |entries: &[String], what: &str| {
        if entries.iter().any(|e| e.contains(['\n', '\r', '#'])) {
            return Err(ApiError::InvalidRequest(format!(
                "{what}: an entry holds '#' or a line break"
            )));
        }
        Blocklists::parse_list(kind, what, &entries.join("\n"))
            .map_err(|ps| ApiError::InvalidRequest(joined(&ps)))
    };
    let add = parse(add, "add")?;
    let remove = parse(remove, "remove")?;
    if add.is_empty() && remove.is_empty() {
        return Err(ApiError::InvalidRequest("nothing to add or remove".into()));
    }
    if let Some(both) = add.intersection(&remove).next() {
        return Err(ApiError::InvalidRequest(format!("{both:?} is both added and removed")));
    }
    Ok((add, remove))
}

impl<S: Store> Treasury<S> {
    pub(super) async fn stored_risk(&self) -> Result<Stored, StoreError> {
        let store = self.engine.store();
        let mut rules = None;
        let mut blocked = StoredBlocked::default();
        for (k, v) in store.settings("risk/").await? {
            if k == RULES_KEY {
                rules = Some(serde_json::from_slice(&v).map_err(|e| corrupt("risk rules", e))?);
            } else if k == BLOCKED_KEY {
                blocked = serde_json::from_slice(&v).map_err(|e| corrupt("risk blocklist", e))?;
            }
        }
        let mut funds = BTreeMap::new();
        for (k, v) in store.settings(FUNDS_PREFIX).await? {
            let rest = &k[FUNDS_PREFIX.len()..];
            let (partner, code) = rest.rsplit_once('/').ok_or_else(|| corrupt("funds key", &k))?;
            let c = Currency::from_code(code).map_err(|_| corrupt("funds currency", &k))?;
            let total: i64 = serde_json::from_slice(&v).map_err(|e| corrupt("funds", e))?;
            funds.insert((partner.to_owned(), c), total);
        }
        Ok(Stored { rules, blocked, funds })
    }

    fn base(&self) -> RiskBase {
        self.risk_base.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts the stored risk settings in force over the configuration's: the policy (kept as it
    /// is, and logged, should the stored rules no longer make one) and the funds received.
    pub(super) async fn restore_risk(&self) -> Result<(), StoreError> {
        let stored = self.stored_risk().await?;
        match self.base().policy(stored.rules.as_ref(), &stored.blocked.lists()) {
            Ok(policy) => self.engine.risk().set_policy(policy),
            Err(ps) => {
                tracing::error!(problems = %joined(&ps), "stored risk rules left out; the rules in force stay");
            }
        }
        *self.funds.lock().unwrap_or_else(|p| p.into_inner()) = stored.funds;
        Ok(())
    }

    /// The policy a configuration giving `base` would put in force with what admins approved,
    /// checked; nothing changes (a reload makes it before it changes anything).
    pub async fn risk_policy_for(&self, base: &RiskBase) -> Result<Policy, Vec<String>> {
        let stored = self.stored_risk().await.map_err(|e| vec![e.to_string()])?;
        base.policy(stored.rules.as_ref(), &stored.blocked.lists())
            .map_err(|ps| ps.iter().map(ToString::to_string).collect())
    }

    /// Puts `base` (a new configuration's) and `policy` ([`Self::risk_policy_for`] of it) in
    /// force.
    pub fn put_risk_base(&self, base: RiskBase, policy: Policy) {
        *self.risk_base.lock().unwrap_or_else(|p| p.into_inner()) = base;
        self.engine.risk().set_policy(policy);
    }

    /// The funds each partner sent, per currency, in minor units.
    pub fn funds(&self) -> BTreeMap<(String, Currency), i64> {
        self.funds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What each partner owes, per currency: the ledger's `partner_receivable` less the funds
    /// it sent (negative: it is in credit).
    async fn owed_now(&self) -> Result<Vec<(String, Amount)>, StoreError> {
        let totals = self.engine.store().account_totals().await?;
        // Lifetime totals: summed wide, so a partner's history never overflows what is read.
        let mut owed: BTreeMap<(String, Currency), i128> = BTreeMap::new();
        for ((c, account), sum) in &totals {
            if let Some(partner) = account.strip_prefix("partner_receivable:") {
                let o = owed.entry((partner.to_owned(), *c)).or_insert(0);
                *o = o.saturating_add(*sum);
            }
        }
        for ((p, c), sent) in self.funds() {
            let o = owed.entry((p, c)).or_insert(0);
            *o = o.saturating_sub(i128::from(sent));
        }
        let max = i128::from(Amount::MAX_MINOR);
        owed.into_iter()
            .map(|((p, c), m)| {
                // Beyond an amount's range either way: past every cap, or in credit past any
                // payment; held at the range's edge (and said).
                let held = m.clamp(-max, max);
                if held != m {
                    tracing::warn!(partner = %p, currency = %c.code(), "what the partner owes is beyond an amount's range; held at its edge");
                }
                let minor = i64::try_from(held).map_err(|e| corrupt("partner totals", e))?;
                let a = Amount::from_minor(c, minor).map_err(|e| corrupt("partner totals", e))?;
                Ok((p, a))
            })
            .collect()
    }

    /// Reads again what the partners owe into the risk book (bookings since are kept).
    pub async fn refresh_owed(&self) -> Result<(), StoreError> {
        let mark = self.engine.risk().mark();
        let owed = self.owed_now().await?;
        self.engine.risk().reload_owed(owed, mark);
        Ok(())
    }

    /// Rebuilds every risk counter from the store: the payments made in the last day and every
    /// payment not final, then (read after them) what the partners owe. At start; afterwards
    /// the daemon's refresh follows the payments (`daemon::risk`).
    pub async fn rebuild_risk(&self) -> Result<BookStats, StoreError> {
        let store = self.engine.store();
        let now = self.engine.now();
        // A little past now: a payment stamped by a clock a moment ahead of this one.
        let mut payments: Vec<PaymentRecord> =
            store.payments_made(now - Duration::hours(24), now + Duration::minutes(1)).await?;
        let held: HashSet<String> = payments.iter().map(|p| p.payment_id.clone()).collect();
        for w in store.open_work().await? {
            if !held.contains(&w.payment_id) {
                payments.extend(store.payment(&w.payment_id).await?);
            }
        }
        let owed = self.owed_now().await?;
        self.engine
            .risk()
            .rebuild(payments.iter().map(PaymentFacts::of), owed, now)
            .map_err(|e| corrupt("risk rebuild", e))
    }

    /// The risk settings in force: the rules (and whether admins' or the configuration's), the
    /// blocklist entries admins added and the files' sizes, each partner's exposure and funds.
    pub async fn risk_view(&self) -> Result<Value, ApiError> {
        let stored = self.stored_risk().await.map_err(internal)?;
        let policy = self.engine.risk().policy();
        let base = self.base();
        let funds = self.funds();
        let exposures: Vec<Value> = self
            .engine
            .risk()
            .exposures()
            .into_iter()
            .map(|e| {
                let c = e.currency;
                let sent = funds.get(&(e.partner.clone(), c)).copied().unwrap_or(0);
                let amount = |m: i64| Amount::from_minor(c, m).map(|a| a.to_string()).ok();
                let used = e.owed_minor.checked_add(e.reserved_minor).and_then(|u| u.checked_add(e.booked_minor));
                json!({
                    "partner": e.partner,
                    "currency": c.code(),
                    "owed": amount(e.owed_minor),
                    "in_flight": amount(e.reserved_minor),
                    "booked_since_read": amount(e.booked_minor),
                    "funds_received": amount(sent),
                    "cap": e.cap_minor.and_then(amount),
                    "headroom": e.cap_minor.zip(used).and_then(|(cap, u)| cap.checked_sub(u)).and_then(amount),
                })
            })
            .collect();
        let stats = self.engine.risk().stats();
        let received: Vec<Value> = funds
            .iter()
            .map(|((partner, c), m)| {
                let total = Amount::from_minor(*c, *m).map(|a| a.to_string()).ok();
                json!({ "partner": partner, "currency": c.code(), "received": total })
            })
            .collect();
        Ok(json!({
            "rules": policy.rules(),
            "rules_source": if stored.rules.is_some() { "admin" } else { "config" },
            "config_rules": base.rules,
            "blocklists": {
                "admin": stored.blocked,
                "files": {
                    "merchants": base.lists.merchants.len(),
                    "mccs": base.lists.mccs.len(),
                    "acquirers": base.lists.acquirers.len(),
                },
            },
            "exposures": exposures,
            "funds": received,
            "book": {
                "payers": stats.payers,
                "merchants": stats.merchants,
                "mccs": stats.mccs,
                "recent_payments": stats.recent_payments,
                "open_payments": stats.open_payments,
            },
        }))
    }

    /// Checks rules an admin proposes: usable, naming only partners and acquirers configured.
    pub fn check_risk_rules(&self, rules: &RiskRules) -> Result<(), ApiError> {
        let parties = self.engine.parties();
        let partners: HashSet<&str> = parties.partners().collect();
        let acquirers: HashSet<&str> = parties.acquirers().collect();
        let mut problems = rules.validate("rules");
        problems.extend(rules.unknown_names(
            "rules",
            |p| partners.contains(p),
            |a| acquirers.contains(a),
        ));
        if problems.is_empty() {
            self.base()
                .policy(Some(rules), &Blocklists::default())
                .map(drop)
                .map_err(|ps| ApiError::InvalidRequest(joined(&ps)))
        } else {
            Err(ApiError::InvalidRequest(joined(&problems)))
        }
    }

    /// Puts `rules` in force in place of the configuration's (`None`: the configuration's
    /// again), on every node; audited (`risk.rules.set` / `risk.rules.reset`) with what was in
    /// force before and who proposed and approved it, in one write with the proposal's new
    /// state. Hold `changes` and the settings' `turn`.
    pub(super) async fn risk_rules_held(
        &self,
        turn: &Turn<S>,
        actor: &str,
        rules: Option<RiskRules>,
        approved: &Approved,
    ) -> Result<Value, ApiError> {
        if let Some(r) = &rules {
            self.check_risk_rules(r)?;
        }
        let stored = self.stored_risk().await.map_err(internal)?;
        let before = json!(self.engine.risk().policy().rules());
        let value = rules.as_ref().map(|r| serde_json::to_vec(r).expect("JSON of plain data"));
        let action = if rules.is_some() { "risk.rules.set" } else { "risk.rules.reset" };
        let after = with_approval(json!({ "rules": rules }), approved);
        let policy = self
            .base()
            .policy(rules.as_ref(), &stored.blocked.lists())
            .map_err(|ps| ApiError::InvalidRequest(joined(&ps)))?;
        let draft = self.draft(actor, action, "risk:rules".into(), before, after);
        let record = self
            .commit(Some(turn), draft, &[(RULES_KEY.into(), value), approved.setting()])
            .await?;
        self.engine.risk().set_policy(policy);
        let mut answer = self.risk_view().await?;
        answer["audit_seq"] = json!(record.seq);
        Ok(answer)
    }

    /// Adds and removes blocklist entries of `kind` (admins' own: the files' entries change in
    /// the files), on every node; audited (`risk.blocklist`) in one write with the proposal's
    /// new state. Hold `changes` and the settings' `turn`.
    pub(super) async fn blocked_held(
        &self,
        turn: &Turn<S>,
        actor: &str,
        kind: ListKind,
        add: &[String],
        remove: &[String],
        approved: &Approved,
    ) -> Result<Value, ApiError> {
        let (add, remove) = read_blocked(kind, add, remove)?;
        let stored = self.stored_risk().await.map_err(internal)?;
        let mut blocked = stored.blocked.clone();
        let set = blocked.set_mut(kind);
        let before: Vec<String> = set.iter().cloned().collect();
        set.extend(add.iter().cloned());
        for r in &remove {
            set.remove(r);
        }
        let name = list_name(kind);
        let mut added: Vec<&String> = add.iter().collect();
        added.sort();
        let mut removed: Vec<&String> = remove.iter().collect();
        removed.sort();
        let after = with_approval(
            json!({ "added": added, "removed": removed, "entries": blocked.set_mut(kind).clone() }),
            approved,
        );
        let policy = self
            .base()
            .policy(stored.rules.as_ref(), &blocked.lists())
            .map_err(|ps| ApiError::InvalidRequest(joined(&ps)))?;
        let draft = self.draft(
            actor,
            "risk.blocklist",
            format!("risk:blocklist:{name}"),
            json!(before),
            after,
        );
        let value = serde_json::to_vec(&blocked).expect("JSON of plain data");
        let record = self
            .commit(Some(turn), draft, &[(BLOCKED_KEY.into(), Some(value)), approved.setting()])
            .await?;
        self.engine.risk().set_policy(policy);
        Ok(
            json!({ "list": name, "entries": blocked.set_mut(kind).clone(), "audit_seq": record.seq }),
        )
    }

    /// Checks funds an admin proposes to record.
    pub fn check_funds(&self, f: &FundsRecord) -> Result<(), ApiError> {
        if !self.engine.parties().partners().any(|p| p == f.partner) {
            return Err(ApiError::InvalidRequest(format!("partner: no partner {:?}", f.partner)));
        }
        let parties = self.engine.parties();
        if !parties.wallet_currencies(&f.partner).contains(&f.amount.currency()) {
            return Err(ApiError::InvalidRequest(format!(
                "amount: {} is not one of {}'s wallet currencies",
                f.amount.currency().code(),
                f.partner
            )));
        }
        if f.amount.minor() <= 0 {
            return Err(ApiError::InvalidAmount("amount: must be more than zero".into()));
        }
        let n = f.reference.chars().count();
        if n == 0 || n > REFERENCE_CHARS_MAX || f.reference.chars().any(char::is_control) {
            return Err(ApiError::InvalidRequest(format!(
                "reference: 1-{REFERENCE_CHARS_MAX} printable characters"
            )));
        }
        Ok(())
    }

    /// Records funds a partner sent (a top-up, a settlement received): what it owes goes down
    /// by them, on every node; audited (`risk.funds`) with the running total before and after,
    /// in one write with the proposal's new state (so funds are never counted twice). Hold
    /// `changes` and the settings' `turn`.
    pub(super) async fn funds_held(
        &self,
        turn: &Turn<S>,
        actor: &str,
        f: FundsRecord,
        approved: &Approved,
    ) -> Result<Value, ApiError> {
        self.check_funds(&f)?;
        let c = f.amount.currency();
        // One record per transfer: the partner's reference is taken once, whatever proposals
        // carry it (a proposal made twice by a retried request cannot count the money twice).
        let reference_key = funds_reference_key(&f.partner, &f.reference);
        let taken = self.engine.store().settings(&reference_key).await.map_err(internal)?;
        if taken.iter().any(|(k, _)| *k == reference_key) {
            return Err(ApiError::InvalidRequest(format!(
                "reference: {:?} was already recorded for {}",
                f.reference, f.partner
            )));
        }
        let stored = self.stored_risk().await.map_err(internal)?;
        let before = stored.funds.get(&(f.partner.clone(), c)).copied().unwrap_or(0);
        let total = before
            .checked_add(f.amount.minor())
            .ok_or_else(|| ApiError::InvalidAmount("amount: the total would overflow".into()))?;
        let shown = |m: i64| Amount::from_minor(c, m).map(|a| a.to_string()).ok();
        let after = with_approval(
            json!({
                "kind": f.kind,
                "amount": f.amount.to_string(),
                "currency": c.code(),
                "reference": f.reference,
                "total": shown(total),
            }),
            approved,
        );
        let draft = self.draft(
            actor,
            "risk.funds",
            format!("risk:funds:{}:{}", f.partner, c.code()),
            json!({ "total": shown(before) }),
            after,
        );
        let key = format!("{FUNDS_PREFIX}{}/{}", f.partner, c.code());
        let value = serde_json::to_vec(&total).expect("JSON of plain data");
        let taken = serde_json::to_vec(&json!({ "amount": f.amount.to_string() }))
            .expect("JSON of plain data");
        let record = self
            .commit(
                Some(turn),
                draft,
                &[(key, Some(value)), (reference_key, Some(taken)), approved.setting()],
            )
            .await?;
        self.funds.lock().unwrap_or_else(|p| p.into_inner()).insert((f.partner.clone(), c), total);
        // Recorded and durable: the book reads it now, or at its next refresh.
        if let Err(e) = self.refresh_owed().await {
            tracing::error!(error = %e, "risk: what partners owe could not be read after funds were recorded");
        }
        Ok(json!({
            "partner": f.partner,
            "currency": c.code(),
            "funds_received": shown(total),
            "audit_seq": record.seq,
        }))
    }
}
