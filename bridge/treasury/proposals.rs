//! Dual control (maker-checker) over the admin changes that move money: one admin identity
//! proposes, a different one approves (or rejects), and nothing takes effect before the approval.
//!
//! - Which changes: risk rules (set, or reset to the configuration's), blocklist entries, funds a
//!   partner sent (prefunding top-ups and settlements received; prefund amounts and credit lines
//!   themselves are in the rules) — always; a spread, or a rate set by hand, when it moves more
//!   than `risk.dual_control.spread_step_bps` / `rate_step_bps` (a rate with none held always
//!   does). Below the steps those take effect at once ([`Outcome::Applied`]).
//! - A proposal is checked in full when it is made (bad input is refused at once and nothing is
//!   stored), then kept as the setting `proposal/<id>` (ids ordered by time) with its audit
//!   record (`proposal.create`, actor the proposer, `after` the change) in one write. It expires
//!   `risk.dual_control.proposal_ttl_s` after it was made, by the engine's clock.
//! - Approval: by an admin other than the proposer (`403 SAME_ADMIN`), before expiry
//!   (`409 PROPOSAL_EXPIRED`), of a proposal still pending (`409 PROPOSAL_DECIDED`). The change is
//!   checked again and made by the same code as a direct change, with one audit record (actor the
//!   approver, `after.approval = {proposal_id, proposed_by, approved_by}`) written in the same
//!   store transaction as the change and the proposal's new state: a crash leaves either both or
//!   neither, so no change is ever made twice (funds are added, not set). A change that no longer
//!   passes its checks (bounds narrowed by a reload, a partner removed) is refused with its own
//!   error and the proposal stays pending.
//! - Rejection: by any other admin (`proposal.reject`), or withdrawn by its proposer
//!   (`proposal.withdraw`); both audited, both final.
//! - Decisions run one at a time on every node (the treasury's lock and the settings' [`Turn`]),
//!   reading the proposal from the store each time: two approvals of one proposal make one change.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::risk::{list_name, read_blocked, FundsRecord};
use super::{internal, read_rates, read_spread, RateInput, SpreadChange, Treasury};
use crate::cluster::Turn;
use crate::error::ApiError;
use crate::payments::risk::{ListKind, RiskRules};
use crate::store::Store;

/// The settings prefix of proposals: `proposal/<id>`.
const PROPOSAL_PREFIX: &str = "proposal/";
/// Most proposals one listing returns, and its default.
pub const PROPOSALS_LIST_MAX: usize = 1_000;
/// Most characters of a decision's note.
pub const NOTE_CHARS_MAX: usize = 512;
/// `prop_`, 13 digits of milliseconds since 1970, `_`, 8 hex digits.
const ID_LEN: usize = 27;

/// A blocklist admins add entries to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockList {
    Merchants,
    Mccs,
    Acquirers,
}

impl BlockList {
    /// The list named in a path (`merchants`, `mccs`, `acquirers`).
    pub fn from_name(name: &str) -> Option<BlockList> {
        match name {
            "merchants" => Some(BlockList::Merchants),
            "mccs" => Some(BlockList::Mccs),
            "acquirers" => Some(BlockList::Acquirers),
            _ => None,
        }
    }

    fn kind(self) -> ListKind {
        match self {
            BlockList::Merchants => ListKind::Merchants,
            BlockList::Mccs => ListKind::Mccs,
            BlockList::Acquirers => ListKind::Acquirers,
        }
    }
}

/// A change under dual control, as proposed (`kind`, and the change itself as `change`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "change", rename_all = "snake_case")]
pub enum Change {
    /// A spread moving more than the spread step.
    Spread(SpreadChange),
    /// Rates set by hand, one of them moving more than the rate step (or with none held).
    Rates { rates: Vec<RateInput>, force: bool },
    /// Rules in place of the configuration's (limits, prefunding, credit lines).
    RiskRules(RiskRules),
    /// The configuration's rules again.
    RiskRulesReset,
    /// Entries added to and removed from one blocklist.
    Blocklist { list: BlockList, add: Vec<String>, remove: Vec<String> },
    /// Funds a partner sent.
    Funds(FundsRecord),
}

impl Change {
    fn kind(&self) -> &'static str {
        match self {
            Change::Spread(_) => "spread",
            Change::Rates { .. } => "rates",
            Change::RiskRules(_) => "risk_rules",
            Change::RiskRulesReset => "risk_rules_reset",
            Change::Blocklist { .. } => "blocklist",
            Change::Funds(_) => "funds",
        }
    }
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    /// Waiting for a second admin.
    Pending,
    /// Approved and in force.
    Approved,
    /// Rejected by another admin.
    Rejected,
    /// Withdrawn by its proposer.
    Withdrawn,
    /// Pending past its expiry: never stored, only shown (it can no longer be decided).
    Expired,
}

impl ProposalState {
    /// The state named in a query (`?state=pending`).
    pub fn from_name(name: &str) -> Option<ProposalState> {
        serde_json::from_value(Value::String(name.to_owned())).ok()
    }
}

/// A proposal as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub proposal_id: String,
    pub change: Change,
    /// Why it needs a second admin ("spread:partner-demo:CNY/PHP moves from 50 to 300 bps …").
    pub why: String,
    pub proposed_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Pending, approved, rejected or withdrawn ([`Proposal::state_at`] tells expired).
    pub state: ProposalState,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    /// What the admin who decided it wrote.
    pub note: Option<String>,
}

impl Proposal {
    /// Its state at `now`: a pending proposal at or past its expiry is expired.
    pub fn state_at(&self, now: DateTime<Utc>) -> ProposalState {
        if self.state == ProposalState::Pending && now >= self.expires_at {
            ProposalState::Expired
        } else {
            self.state
        }
    }

    /// As the admin API shows it at `now`: `kind` and `change` beside the rest.
    pub fn view(&self, now: DateTime<Utc>) -> Value {
        let change = serde_json::to_value(&self.change).expect("JSON of plain data");
        json!({
            "proposal_id": self.proposal_id,
            "kind": change["kind"],
            "change": change.get("change").cloned().unwrap_or(Value::Null),
            "why": self.why,
            "proposed_by": self.proposed_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": self.state_at(now),
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "note": self.note,
        })
    }

    fn key(&self) -> String {
        format!("{PROPOSAL_PREFIX}{}", self.proposal_id)
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("JSON of plain data")
    }
}

/// What an admin's change came to: made at once, or proposed for a second admin.
#[derive(Debug)]
pub enum Outcome {
    /// In force; the setter's answer (with `audit_seq`).
    Applied(Value),
    /// Nothing changed yet: `{"proposal", "audit_seq"}`.
    Proposed(Value),
}

/// A proposal's approval, made with the change it approves: the audit record's `approval` and
/// the proposal's approved state, written in the change's own commit.
pub(super) struct Approved {
    /// `{proposal_id, proposed_by, approved_by}`.
    pub(super) approval: Value,
    key: String,
    bytes: Vec<u8>,
}

impl Approved {
    /// The proposal's setting, to write beside the change.
    pub(super) fn setting(&self) -> (String, Option<Vec<u8>>) {
        (self.key.clone(), Some(self.bytes.clone()))
    }
}

/// Whether `id` has the form of a proposal id (anything else is not looked up).
fn well_formed(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == ID_LEN
        && b.starts_with(b"prop_")
        && b[5..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'_'
        && b[19..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// A decision's note: at most [`NOTE_CHARS_MAX`] printable characters.
fn check_note(note: Option<String>) -> Result<Option<String>, ApiError> {
    match note {
        Some(n) if n.chars().count() > NOTE_CHARS_MAX || n.chars().any(char::is_control) => {
            Err(ApiError::InvalidRequest(format!(
                "note: at most {NOTE_CHARS_MAX} printable characters"
            )))
        }
        Some(n) if n.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

impl<S: Store> Treasury<S> {
    /// Stores `change` as a proposal of `actor`'s, checked already, with its audit record
    /// (`proposal.create`). The answer is `{"proposal", "audit_seq"}`.
    pub(super) async fn propose(
        &self,
        actor: &str,
        change: Change,
        why: String,
    ) -> Result<Value, ApiError> {
        let now = self.engine.now();
        let ttl_s = self.dual_control().proposal_ttl_s;
        let expires_at = i64::try_from(ttl_s)
            .ok()
            .and_then(Duration::try_seconds)
            .and_then(|ttl| now.checked_add_signed(ttl))
            .ok_or_else(|| {
                tracing::error!(ttl_s, "proposal expiry out of range");
                ApiError::Internal
            })?;
        let proposal = Proposal {
            proposal_id: self.next_proposal_id(now),
            change,
            why,
            proposed_by: actor.to_owned(),
            created_at: now,
            expires_at,
            state: ProposalState::Pending,
            decided_by: None,
            decided_at: None,
            note: None,
        };
        let view = proposal.view(now);
        let after = json!({
            "proposal_id": proposal.proposal_id,
            "kind": view["kind"],
            "change": view["change"],
            "why": proposal.why,
            "expires_at": proposal.expires_at,
        });
        let target = format!("proposal:{}", proposal.proposal_id);
        let draft = self.draft(actor, "proposal.create", target, Value::Null, after);
        let record = self.commit(None, draft, &[(proposal.key(), Some(proposal.bytes()))]).await?;
        tracing::info!(actor, proposal = %proposal.proposal_id, kind = proposal.change.kind(), "change proposed");
        Ok(json!({ "proposal": view, "audit_seq": record.seq }))
    }

    /// A new proposal id: the millisecond of `now` and a number, random in a new millisecond
    /// and one more than the last within one (as ULIDs do), so that ids made here sort in the
    /// order they were made, even when the clock stands still.
    fn next_proposal_id(&self, now: DateTime<Utc>) -> String {
        let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let mut last = self.last_proposal.lock().unwrap_or_else(|p| p.into_inner());
        *last = match *last {
            (ms, n) if ms >= millis && n < u32::MAX => (ms, n + 1),
            // A new millisecond; a random start leaves room to count up in it.
            (ms, _) => (millis.max(ms + 1), fastrand::u32(..u32::MAX / 2)),
        };
        format!("prop_{:013}_{:08x}", last.0, last.1)
    }

    /// Proposes `rules` in place of the configuration's, checked now (as at approval).
    pub async fn propose_risk_rules(
        &self,
        actor: &str,
        rules: RiskRules,
    ) -> Result<Value, ApiError> {
        self.check_risk_rules(&rules)?;
        self.propose(actor, Change::RiskRules(rules), "risk rules change".into()).await
    }

    /// Proposes putting the configuration's rules back in force; refused when they are.
    pub async fn propose_risk_reset(&self, actor: &str) -> Result<Value, ApiError> {
        let stored = self.stored_risk().await.map_err(internal)?;
        if stored.rules.is_none() {
            return Err(ApiError::InvalidRequest(
                "the configuration's risk rules are in force already".into(),
            ));
        }
        self.propose(actor, Change::RiskRulesReset, "risk rules reset".into()).await
    }

    /// Proposes adding and removing entries of one blocklist, checked now.
    pub async fn propose_blocked(
        &self,
        actor: &str,
        list: BlockList,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<Value, ApiError> {
        let (a, r) = read_blocked(list.kind(), &add, &remove)?;
        // Kept as read (trimmed, each once, in order), so the approver sees what will be done.
        let (mut add, mut remove): (Vec<String>, Vec<String>) =
            (a.into_iter().collect(), r.into_iter().collect());
        add.sort();
        remove.sort();
        let why = format!("blocklist {} change", list_name(list.kind()));
        self.propose(actor, Change::Blocklist { list, add, remove }, why).await
    }

    /// Proposes recording funds a partner sent, checked now.
    pub async fn propose_funds(&self, actor: &str, funds: FundsRecord) -> Result<Value, ApiError> {
        self.check_funds(&funds)?;
        let why = format!("funds received from {}", funds.partner);
        self.propose(actor, Change::Funds(funds), why).await
    }

    /// Every proposal in `state` (all: none), newest first, at most `limit`.
    pub async fn proposals(
        &self,
        state: Option<ProposalState>,
        limit: usize,
    ) -> Result<Vec<Value>, ApiError> {
        let now = self.engine.now();
        let stored = self.engine.store().settings(PROPOSAL_PREFIX).await.map_err(internal)?;
        let mut out = Vec::new();
        // Keys are ordered by time: newest last.
        for (key, bytes) in stored.iter().rev() {
            let p = decode(key, bytes)?;
            if state.is_none_or(|s| p.state_at(now) == s) {
                out.push(p.view(now));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// One proposal, as it stands now.
    pub async fn proposal(&self, id: &str) -> Result<Value, ApiError> {
        Ok(self.read_proposal(id).await?.view(self.engine.now()))
    }

    async fn read_proposal(&self, id: &str) -> Result<Proposal, ApiError> {
        if !well_formed(id) {
            return Err(ApiError::ProposalNotFound(id.chars().take(64).collect()));
        }
        let key = format!("{PROPOSAL_PREFIX}{id}");
        let stored = self.engine.store().settings(&key).await.map_err(internal)?;
        match stored.into_iter().find(|(k, _)| *k == key) {
            Some((k, bytes)) => decode(&k, &bytes),
            None => Err(ApiError::ProposalNotFound(id.to_owned())),
        }
    }

    /// Proposal `id`, still to be decided now (read under the settings' turn).
    async fn decidable(&self, id: &str) -> Result<Proposal, ApiError> {
        let p = self.read_proposal(id).await?;
        let now = self.engine.now();
        match p.state_at(now) {
            ProposalState::Pending => Ok(p),
            ProposalState::Expired => Err(ApiError::ProposalExpired(format!(
                "proposal {id} expired at {}; propose the change again",
                p.expires_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ))),
            done => Err(ApiError::ProposalDecided(format!(
                "proposal {id} is {} already (by {})",
                json!(done).as_str().unwrap_or("decided"),
                p.decided_by.as_deref().unwrap_or("?"),
            ))),
        }
    }

    /// Approves proposal `id` as `approver` (not its proposer): checks the change again, and
    /// makes it with its audit record and the proposal's approved state in one write. The answer
    /// is `{"proposal", "result"}`, `result` being what the direct change answers.
    pub async fn approve(
        &self,
        approver: &str,
        id: &str,
        note: Option<String>,
    ) -> Result<Value, ApiError> {
        let note = check_note(note)?;
        let _one = self.changes.lock().await;
        let turn = self.settings_turn().await?;
        let mut p = self.decidable(id).await?;
        if p.proposed_by == approver {
            return Err(ApiError::SameAdmin(format!(
                "{approver} proposed {id}: another admin must approve it"
            )));
        }
        let now = self.engine.now();
        p.state = ProposalState::Approved;
        p.decided_by = Some(approver.to_owned());
        p.decided_at = Some(now);
        p.note = note;
        let approved = Approved {
            approval: json!({
                "proposal_id": p.proposal_id,
                "proposed_by": p.proposed_by,
                "approved_by": approver,
            }),
            key: p.key(),
            bytes: p.bytes(),
        };
        let result = self.apply(&turn, approver, &p, &approved, now).await?;
        turn.release().await;
        tracing::info!(approver, proposal = %p.proposal_id, proposed_by = %p.proposed_by, kind = p.change.kind(), "proposal approved");
        Ok(json!({ "proposal": p.view(now), "result": result }))
    }

    /// Makes `p`'s change as `approver`, with `approved` in the same write.
    async fn apply(
        &self,
        turn: &Turn<S>,
        approver: &str,
        p: &Proposal,
        approved: &Approved,
        now: DateTime<Utc>,
    ) -> Result<Value, ApiError> {
        match p.change.clone() {
            Change::Spread(change) => {
                let (key, bps) = read_spread(&change)?;
                self.restore().await.map_err(internal)?;
                let changed = self.spread_changed(&key, bps)?;
                self.spread_commit(turn, approver, &key, bps, changed, Some(approved)).await
            }
            Change::Rates { rates, force } => {
                // The rates are the proposer's; `as_of` not given is the approval's time.
                let mids = read_rates(&rates, &format!("admin:{}", p.proposed_by), now)?;
                let checked = self.check_rates(&mids, force, now)?;
                self.rates_commit(approver, mids, checked, Some(approved), Some(turn)).await
            }
            Change::RiskRules(rules) => {
                self.risk_rules_held(turn, approver, Some(rules), approved).await
            }
            Change::RiskRulesReset => self.risk_rules_held(turn, approver, None, approved).await,
            Change::Blocklist { list, add, remove } => {
                self.blocked_held(turn, approver, list.kind(), &add, &remove, approved).await
            }
            Change::Funds(f) => self.funds_held(turn, approver, f, approved).await,
        }
    }

    /// Rejects proposal `id` (`proposal.reject`), or, by its proposer, withdraws it
    /// (`proposal.withdraw`): audited, final, nothing else changes.
    pub async fn reject(
        &self,
        actor: &str,
        id: &str,
        note: Option<String>,
    ) -> Result<Value, ApiError> {
        let note = check_note(note)?;
        let _one = self.changes.lock().await;
        let turn = self.settings_turn().await?;
        let mut p = self.decidable(id).await?;
        let now = self.engine.now();
        let withdrawn = p.proposed_by == actor;
        p.state = if withdrawn { ProposalState::Withdrawn } else { ProposalState::Rejected };
        p.decided_by = Some(actor.to_owned());
        p.decided_at = Some(now);
        p.note = note;
        let action = if withdrawn { "proposal.withdraw" } else { "proposal.reject" };
        let after = json!({
            "state": p.state,
            "kind": p.change.kind(),
            "proposed_by": p.proposed_by,
            "decided_by": actor,
            "note": p.note,
        });
        let draft = self.draft(
            actor,
            action,
            format!("proposal:{}", p.proposal_id),
            json!({ "state": ProposalState::Pending }),
            after,
        );
        let record = self.commit(Some(&turn), draft, &[(p.key(), Some(p.bytes()))]).await?;
        turn.release().await;
        tracing::info!(actor, proposal = %p.proposal_id, action, "proposal decided");
        Ok(json!({ "proposal": p.view(now), "audit_seq": record.seq }))
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Proposal, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        tracing::error!(key, error = %e, "stored proposal does not read");
        ApiError::Internal
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(change: Change) -> Proposal {
        let at: DateTime<Utc> = "2026-11-20T02:00:00Z".parse().unwrap();
        Proposal {
            proposal_id: "prop_1795140000000_0a1b2c3d".into(),
            change,
            why: "why".into(),
            proposed_by: "admin".into(),
            created_at: at,
            expires_at: at + Duration::hours(24),
            state: ProposalState::Pending,
            decided_by: None,
            decided_at: None,
            note: None,
        }
    }

    #[test]
    fn proposals_read_back_as_stored_and_show_kind_and_change() {
        let funds: FundsRecord = serde_json::from_value(json!({
            "partner": "partner-demo", "amount": {"currency": "PHP", "value": "100000"},
            "kind": "top_up", "reference": "BANK-1"
        }))
        .unwrap();
        for change in [
            Change::Funds(funds),
            Change::RiskRulesReset,
            Change::Blocklist { list: BlockList::Mccs, add: vec!["7995".into()], remove: vec![] },
            Change::Spread(SpreadChange {
                partner: Some("partner-demo".into()),
                pair: Some("CNY/PHP".into()),
                bps: Some("300".into()),
            }),
            Change::Rates {
                rates: vec![RateInput {
                    base: "USD".into(),
                    quote: "PHP".into(),
                    rate: "58".into(),
                    as_of: None,
                }],
                force: false,
            },
            Change::RiskRules(RiskRules::default()),
        ] {
            let p = proposal(change);
            let again: Proposal = serde_json::from_slice(&p.bytes()).unwrap();
            assert_eq!(again.bytes(), p.bytes());
            let v = p.view(p.created_at);
            assert_eq!(v["kind"], p.change.kind(), "{v}");
            assert_eq!(v["state"], "pending");
        }
        let v = proposal(Change::Blocklist {
            list: BlockList::Mccs,
            add: vec!["7995".into()],
            remove: vec![],
        })
        .view("2026-11-20T02:00:00Z".parse().unwrap());
        assert_eq!(v["change"], json!({"list": "mccs", "add": ["7995"], "remove": []}));
    }

    #[test]
    fn a_pending_proposal_expires_at_its_expiry_not_before() {
        let p = proposal(Change::RiskRulesReset);
        let just_before = p.expires_at - Duration::milliseconds(1);
        assert_eq!(p.state_at(just_before), ProposalState::Pending);
        assert_eq!(p.state_at(p.expires_at), ProposalState::Expired);
        let mut decided = p.clone();
        decided.state = ProposalState::Rejected;
        assert_eq!(decided.state_at(p.expires_at), ProposalState::Rejected);
    }

    #[test]
    fn only_well_formed_ids_are_looked_up() {
        assert!(well_formed("prop_1795140000000_0a1b2c3d"));
        for bad in ["", "prop_", "{proposal_id}", "prop_1795140000000_0a1b2c3", "prop_../../x"] {
            assert!(!well_formed(bad), "{bad:?}");
        }
        assert_eq!(ProposalState::from_name("expired"), Some(ProposalState::Expired));
        assert_eq!(ProposalState::from_name("nope"), None);
    }
}
