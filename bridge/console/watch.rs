//! Operations (payments in doubt, the resolver's backlog, parked webhooks), proposals under dual
//! control, risk, and the audit log.

use std::collections::{BTreeMap, HashMap};

use http::StatusCode;
use maud::{html, Markup};
use serde_json::Value;

use super::form::Fields;
use super::pages::{failed, Ctx, Done, Notice, Page};
use super::view::{self, badge, s};
use crate::error::ApiError;
use crate::http::Resp;
use crate::model::{PaymentState, Task};
use crate::store::Store;
use crate::treasury::proposals::PROPOSALS_LIST_MAX;
use crate::treasury::{internal, ProposalState};

/// Most resolver tasks listed (the backlog's size is always shown).
const WORK_LISTED_MAX: usize = 200;
/// Most parked events listed.
const PARKED_LISTED_MAX: usize = 500;
/// Audit records per page.
const AUDIT_PAGE: usize = 100;
/// Decided proposals listed.
const DECIDED_LISTED: usize = 50;
/// Risk decisions read (the last day's).
const DECISIONS_LISTED_MAX: usize = 200;

fn task_name(t: Task) -> &'static str {
    match t {
        Task::Inquire => "Inquire",
        Task::Reverse => "Reverse",
        Task::Verify => "Verify",
        Task::Attention => "Attention",
    }
}

/// Whether a payment in this state is in doubt: its outcome at the acquirer is not known yet.
fn in_doubt(state: Option<PaymentState>) -> bool {
    matches!(
        state,
        Some(
            PaymentState::Pending
                | PaymentState::Unknown
                | PaymentState::Cancelling
                | PaymentState::Reversing
        )
    )
}

impl<S: Store> Ctx<'_, S> {
    /// `GET /console/operations`.
    pub async fn operations(&self, done: Done) -> Resp {
        match self.operations_content().await {
            Ok(content) => {
                self.page(
                    Page::Operations,
                    "Operations",
                    "What the bridge has not finished on its own: payments whose outcome is not \
                     known yet, the resolver's work, and webhook events parked after their \
                     maximum age.",
                    done,
                    content,
                )
                .await
            }
            Err(e) => {
                self.page(Page::Operations, "Operations", "", Some(failed(&e)), html! {}).await
            }
        }
    }

    async fn operations_content(&self) -> Result<Markup, ApiError> {
        let store = self.engine().store();
        let now = self.now();
        let mut work = store.open_work().await.map_err(internal)?;
        work.sort_by_key(|w| w.due);
        let mut by_task: BTreeMap<&str, usize> = BTreeMap::new();
        for w in &work {
            *by_task.entry(task_name(w.task)).or_insert(0) += 1;
        }
        let mut rows = Vec::new();
        for w in work.iter().take(WORK_LISTED_MAX) {
            rows.push((w, store.payment(&w.payment_id).await.map_err(internal)?));
        }
        let doubtful = rows.iter().filter(|(_, p)| in_doubt(p.as_ref().map(|p| p.state))).count();
        let parked = store.parked().await.map_err(internal)?;
        let listed_all = work.len() <= WORK_LISTED_MAX;
        Ok(html! {
            section class="card" aria-labelledby="summary" {
                h2 id="summary" { "At a glance" }
                dl class="facts" {
                    dt { "Payments in doubt" }
                    dd id="in-doubt-count" {
                        @if doubtful == 0 { (badge("good", "none")) } @else { (badge("warn", &doubtful.to_string())) }
                        @if !listed_all { " among the " (WORK_LISTED_MAX) " tasks due first" }
                    }
                    dt { "Resolver backlog" }
                    dd id="backlog" {
                        (work.len()) " tasks"
                        @if !by_task.is_empty() { ": " @for (t, n) in &by_task { (n) " " (t) " " } }
                    }
                    dt { "Oldest due" }
                    dd { @if let Some(w) = work.first() { (view::when(w.due)) " (" (view::age((now - w.due).num_seconds())) " ago)" } @else { "—" } }
                    dt { "Parked webhook events" }
                    dd id="parked-count" { @if parked.is_empty() { (badge("good", "none")) } @else { (badge("warn", &parked.len().to_string())) } }
                }
            }
            section class="card" aria-labelledby="work" {
                h2 id="work" { "Resolver work" }
                @if work.is_empty() {
                    p { "Nothing: every payment has come to rest." }
                } @else {
                    p class="muted" { "Due first at the top. The resolver inquires, then reverses; it never guesses. An “Attention” task waits for an operator, who settles it with the acquirer and the partner and records it here." }
                    div class="table-wrap" { table id="work-table" {
                        thead { tr {
                            th scope="col" { "Payment" }
                            th scope="col" { "Partner" }
                            th scope="col" { "State" }
                            th scope="col" class="num" { "Amount" }
                            th scope="col" { "Task" }
                            th scope="col" { "Due" }
                            th scope="col" class="num" { "Attempt" }
                            th scope="col" { "Last answer" }
                            th scope="col" { span class="vh" { "Action" } }
                        } }
                        tbody { @for (w, p) in &rows { tr {
                            td class="id" { (w.payment_id) }
                            td { (p.as_ref().map_or("?", |p| p.partner.as_str())) }
                            td {
                                @if let Some(p) = p {
                                    @let state = serde_json::to_value(p.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                                    @if in_doubt(Some(p.state)) { (badge("warn", &state)) } @else { (badge("plain", &state)) }
                                    @if p.reversal_refused { " " (badge("bad", "reversal refused")) }
                                } @else { (badge("bad", "no record")) }
                            }
                            td class="num" {
                                @if let Some(p) = p { (view::amount(&p.pay)) br; span class="muted" { (view::amount(&p.wallet)) } }
                            }
                            td { @if w.task == Task::Attention { (badge("bad", task_name(w.task))) } @else { (task_name(w.task)) } }
                            td { (view::when(w.due)) }
                            td class="num" { (w.attempt) @if w.refusals > 0 { " (" (w.refusals) " refused)" } }
                            td class="wrap" { (w.last_error.as_deref().unwrap_or("—")) }
                            td {
                                @if w.task == Task::Attention {
                                    form class="stack" method="post" action="/console/operations/settle" {
                                        (self.csrf())
                                        input type="hidden" name="payment_id" value=(w.payment_id);
                                        div class="field" {
                                            label for={ "note-" (w.payment_id) } { "What was done (for the audit log)" }
                                            textarea id={ "note-" (w.payment_id) } name="note" required maxlength="512" {}
                                        }
                                        button type="submit" { "Mark settled" }
                                    }
                                }
                            }
                        } } }
                    } }
                    @if !listed_all { p class="muted" { "The first " (WORK_LISTED_MAX) " of " (work.len()) " tasks." } }
                }
            }
            section class="card" aria-labelledby="parked" {
                h2 id="parked" { "Parked webhook events" }
                @if parked.is_empty() {
                    p id="parked-empty" { "None: every event was delivered or is still being retried." }
                } @else {
                    p class="muted" { "Events the partner's endpoint did not take before their maximum age. Replaying puts one back in the outbox at its old place, under the same event id; events of the same payment that waited behind it follow in order." }
                    div class="table-wrap" { table id="parked-table" {
                        thead { tr {
                            th scope="col" { "Event" }
                            th scope="col" { "Type" }
                            th scope="col" { "Partner" }
                            th scope="col" { "Payment" }
                            th scope="col" { "Made" }
                            th scope="col" { "Parked" }
                            th scope="col" class="num" { "Attempts" }
                            th scope="col" { "Last error" }
                            th scope="col" { span class="vh" { "Action" } }
                        } }
                        tbody { @for (_, p) in parked.iter().take(PARKED_LISTED_MAX) { tr data-event=(p.event.event_id) {
                            td class="id" { (p.event.event_id) }
                            td { (p.event.kind) }
                            td { (p.event.partner) }
                            td class="id" { (p.event.payment_id) }
                            td { (view::when(p.event.created_at)) }
                            td { (view::when(p.parked_at)) }
                            td class="num" { (p.attempts) }
                            td class="wrap" { (p.last_error) }
                            td {
                                form class="inline" method="post" action="/console/operations/replay" data-confirm="Put this event back in the outbox?" {
                                    (self.csrf())
                                    input type="hidden" name="event_id" value=(p.event.event_id);
                                    button type="submit" class="secondary" aria-label={ "Replay event " (p.event.event_id) } { "Replay" }
                                }
                            }
                        } } }
                    } }
                    @if parked.len() > PARKED_LISTED_MAX { p class="muted" { "The first " (PARKED_LISTED_MAX) " of " (parked.len()) " events." } }
                }
            }
        })
    }

    /// `POST /console/operations/replay`: the admin API's
    /// `POST /admin/v1/webhooks/parked/{event_id}/replay`, the same code (under the same lock as
    /// purges).
    pub async fn replay(&self, f: &Fields) -> Resp {
        let event_id = f.given("event_id").unwrap_or("");
        let result = crate::admin::replay_parked(self.engine(), self.actor, event_id).await;
        let done = match result {
            Ok(()) => (
                StatusCode::OK,
                Notice::ok(
                    format!("Event {event_id} replayed"),
                    html! { p { "It is back in the outbox; delivery resumes under the same event id." } },
                ),
            ),
            Err(e) => failed(&e),
        };
        self.operations(Some(done)).await
    }

    /// `POST /console/operations/settle`: `engine.settle_attention`, as
    /// `POST /admin/v1/resolver/{payment_id}/settle`.
    pub async fn settle_attention(&self, f: &Fields) -> Resp {
        let id = f.given("payment_id").unwrap_or("");
        let note = f.text("note").unwrap_or("");
        let done = match self.engine().settle_attention(id, self.actor, note).await {
            Ok(p) => (
                StatusCode::OK,
                Notice::ok(
                    format!("{} settled", p.payment_id),
                    html! { p { "The task is closed; the audit log says who and why." } },
                ),
            ),
            Err(e) => failed(&e),
        };
        self.operations(Some(done)).await
    }

    /// `GET /console/proposals`.
    pub async fn proposals(&self, done: Done) -> Resp {
        let treasury = self.treasury();
        let pending = treasury.proposals(Some(ProposalState::Pending), PROPOSALS_LIST_MAX).await;
        let recent = treasury.proposals(None, DECIDED_LISTED + PROPOSALS_LIST_MAX.min(200)).await;
        let (pending, recent) = match (pending, recent) {
            (Ok(p), Ok(r)) => (p, r),
            (Err(e), _) | (_, Err(e)) => {
                return self
                    .page(Page::Proposals, "Proposals", "", Some(failed(&e)), html! {})
                    .await
            }
        };
        let decided: Vec<&Value> =
            recent.iter().filter(|p| p["state"] != "pending").take(DECIDED_LISTED).collect();
        let dual = treasury.dual_control();
        let content = html! {
            section class="card" aria-labelledby="rules" {
                h2 id="rules" { "Dual control" }
                p {
                    "Risk rules, blocklist entries and funds received always need a second admin; so does a spread moving more than "
                    strong { (dual.spread_step_bps) " bps" } " and a rate set by hand moving more than " strong { (dual.rate_step_bps) " bps" }
                    ". A proposal waits " (view::age(i64::try_from(dual.proposal_ttl_s).unwrap_or(i64::MAX))) " for its approval. "
                    "The admin who proposed a change cannot approve it; they may withdraw it."
                }
            }
            section class="card" aria-labelledby="pending" {
                h2 id="pending" { "Waiting for approval (" (pending.len()) ")" }
                @if pending.is_empty() { p id="no-pending" { "Nothing is waiting." } }
                @for p in &pending { (self.proposal_card(p)) }
            }
            section class="card" aria-labelledby="decided" {
                h2 id="decided" { "Decided lately" }
                @if decided.is_empty() { p { "None yet." } } @else {
                    div class="table-wrap" { table id="decided-table" {
                        thead { tr {
                            th scope="col" { "Proposal" } th scope="col" { "Change" } th scope="col" { "State" }
                            th scope="col" { "Proposed by" } th scope="col" { "Decided by" } th scope="col" { "When" } th scope="col" { "Note" }
                        } }
                        tbody { @for p in &decided { tr {
                            td class="id" { (s(p, "proposal_id")) }
                            td class="wrap" { (s(p, "why")) }
                            td { (state_badge(s(p, "state"))) }
                            td { (s(p, "proposed_by")) }
                            td { (p["decided_by"].as_str().unwrap_or("—")) }
                            td { (view::time_text(p["decided_at"].as_str().unwrap_or(s(p, "expires_at")))) }
                            td class="wrap" { (p["note"].as_str().unwrap_or("")) }
                        } } }
                    } }
                }
            }
        };
        self.page(
            Page::Proposals,
            "Proposals",
            "Changes that move money wait here for a second admin.",
            done,
            content,
        )
        .await
    }

    /// One pending proposal, with what this admin may do with it.
    fn proposal_card(&self, p: &Value) -> Markup {
        let id = s(p, "proposal_id");
        let own = s(p, "proposed_by") == self.actor;
        let note_id = format!("note-{id}");
        html! {
            article class="card" aria-labelledby={ "title-" (id) } data-proposal=(id) {
                h3 id={ "title-" (id) } { (s(p, "why")) }
                dl class="facts" {
                    dt { "Proposal" } dd class="mono" { (id) }
                    dt { "Kind" } dd { (s(p, "kind").replace('_', " ")) }
                    dt { "Proposed by" } dd { (s(p, "proposed_by")) @if own { " " (badge("plain", "you")) } }
                    dt { "Proposed at" } dd { (view::time_text(s(p, "created_at"))) }
                    dt { "Expires" } dd { (view::time_text(s(p, "expires_at"))) }
                    dt { "The change" } dd { (view::json_tree(&p["change"])) }
                }
                @if own {
                    div class="notice warn" role="note" {
                        strong { "You proposed this: another admin must approve it." }
                        p { "The admin who proposes a change cannot approve it (dual control). You may withdraw it." }
                    }
                    form class="actions" method="post" action="/console/proposals/reject" data-confirm="Withdraw your proposal?" {
                        (self.csrf())
                        input type="hidden" name="proposal_id" value=(id);
                        button type="button" disabled aria-describedby={ "own-" (id) } { "Approve" }
                        span id={ "own-" (id) } class="vh" { "Not available: you proposed this change." }
                        button type="submit" class="secondary" { "Withdraw" }
                    }
                } @else {
                    form class="stack" method="post" action="/console/proposals/approve" {
                        (self.csrf())
                        input type="hidden" name="proposal_id" value=(id);
                        div class="field" {
                            label for=(note_id) { "Note (optional, kept with the decision)" }
                            textarea id=(note_id) name="note" maxlength="512" {}
                        }
                        div class="actions" {
                            button type="submit" { "Approve" }
                            button type="submit" class="danger" formaction="/console/proposals/reject" { "Reject" }
                        }
                    }
                }
            }
        }
    }

    /// `POST /console/proposals/approve` and `/reject`: `treasury.approve` / `treasury.reject`,
    /// as `POST /admin/v1/proposals/{id}/approve` and `/reject`.
    pub async fn decide(&self, f: &Fields, approve: bool) -> Resp {
        let id = f.given("proposal_id").unwrap_or("");
        // A textarea's line breaks (CRLF) become spaces: the note is one line in the audit log.
        let note = f.given("note").map(|n| n.split_whitespace().collect::<Vec<_>>().join(" "));
        let note = note.filter(|n| !n.is_empty());
        let treasury = self.treasury();
        let result = if approve {
            treasury.approve(self.actor, id, note).await
        } else {
            treasury.reject(self.actor, id, note).await
        };
        let done = match result {
            Ok(v) => {
                let state = s(&v["proposal"], "state").to_owned();
                (
                    StatusCode::OK,
                    Notice::ok(
                        format!("Proposal {id}: {state}"),
                        html! { p { @if approve { "The change is in force." } @else { "Nothing changed." } " Recorded in the audit log." } },
                    ),
                )
            }
            Err(e @ ApiError::SameAdmin(_)) => (
                e.parts().1,
                Notice::error(
                    "You cannot approve your own proposal",
                    html! { p { (e.to_string()) } },
                ),
            ),
            Err(e) => failed(&e),
        };
        self.proposals(Some(done)).await
    }

    /// `GET /console/risk`.
    pub async fn risk(&self) -> Resp {
        match self.risk_content().await {
            Ok(content) => {
                self.page(
                    Page::Risk,
                    "Risk",
                    "The rules in force, each partner's exposure against its limit, and what was \
                     refused.",
                    None,
                    content,
                )
                .await
            }
            Err(e) => self.page(Page::Risk, "Risk", "", Some(failed(&e)), html! {}).await,
        }
    }

    async fn risk_content(&self) -> Result<Markup, ApiError> {
        let v = self.treasury().risk_view().await?;
        let now = self.now();
        let from = now - chrono::Duration::hours(24);
        let decisions = self
            .engine()
            .store()
            .risk_decisions(from, now + chrono::Duration::seconds(1), DECISIONS_LISTED_MAX)
            .await
            .map_err(internal)?;
        let refused: Vec<_> = decisions.iter().rev().filter(|d| d.outcome == "REFUSED").collect();
        let flagged = decisions.iter().filter(|d| d.outcome != "REFUSED").count();
        let exposures = v["exposures"].as_array().cloned().unwrap_or_default();
        let source = s(&v, "rules_source");
        Ok(html! {
            section class="card" aria-labelledby="exposure" {
                h2 id="exposure" { "Exposure per partner and currency" }
                p class="muted" { "What each partner owes (unsettled, less the funds it sent), what is in flight, against its cap (prefunding plus credit line). Headroom is what it may still take on." }
                @if exposures.is_empty() { p { "No exposure yet." } } @else {
                    div class="table-wrap" { table id="exposure-table" {
                        thead { tr {
                            th scope="col" { "Partner" } th scope="col" { "Currency" }
                            th scope="col" class="num" { "Owed" } th scope="col" class="num" { "In flight" }
                            th scope="col" class="num" { "Booked since last read" } th scope="col" class="num" { "Funds received" }
                            th scope="col" class="num" { "Cap" } th scope="col" class="num" { "Headroom" }
                        } }
                        tbody { @for e in &exposures { tr {
                            th scope="row" { (s(e, "partner")) }
                            td { (s(e, "currency")) }
                            td class="num" { (opt_amount(&e["owed"])) }
                            td class="num" { (opt_amount(&e["in_flight"])) }
                            td class="num" { (opt_amount(&e["booked_since_read"])) }
                            td class="num" { (opt_amount(&e["funds_received"])) }
                            td class="num" { @if e["cap"].is_null() { span class="muted" { "no limit" } } @else { (opt_amount(&e["cap"])) } }
                            td class="num" { (headroom(&e["headroom"], &e["cap"])) }
                        } } }
                    } }
                }
            }
            section class="card" aria-labelledby="refused" {
                h2 id="refused" { "Refused in the last 24 hours (" (refused.len()) ")" }
                @if flagged > 0 { p class="muted" { (flagged) " more payments were flagged (let through, reported in the day's monitoring file)." } }
                @if refused.is_empty() { p { "Nothing was refused." } } @else {
                    div class="table-wrap" { table id="refused-table" {
                        thead { tr {
                            th scope="col" { "When" } th scope="col" { "Partner" } th scope="col" class="num" { "Payment" }
                            th scope="col" { "Reasons" } th scope="col" { "Rules" } th scope="col" class="num" { "Over by" } th scope="col" { "Merchant" }
                        } }
                        tbody { @for d in &refused { tr {
                            td { (view::when(d.at)) }
                            td { (d.partner) }
                            td class="num" { (view::amount(&d.pay)) br; span class="muted" { (view::amount(&d.wallet)) } }
                            td { @for r in &d.reasons { (badge("bad", r)) " " } }
                            td class="wrap mono" { (d.rules.join(", ")) }
                            td class="num" { @if let Some(o) = &d.over_by { (view::amount(o)) } @else { "—" } }
                            td class="wrap" { (d.acquirer) " " (d.merchant_id.as_deref().unwrap_or("")) @if let Some(m) = &d.mcc { " (MCC " (m) ")" } }
                        } } }
                    } }
                }
            }
            section class="card" aria-labelledby="rules-in-force" {
                h2 id="rules-in-force" { "Rules in force " @if source == "admin" { (badge("warn", "set by admins")) } @else { (badge("plain", "from the configuration")) } }
                (view::rules_tree(&v["rules"]))
                p class="muted" { "Rules change only by proposal (admin API " code { "PUT /admin/v1/risk/rules" } " or the CLI), approved on the Proposals page." }
            }
            section class="card" aria-labelledby="blocklists" {
                h2 id="blocklists" { "Blocklists" }
                dl class="facts" {
                    @for list in ["merchants", "mccs", "acquirers"] {
                        dt { (list) }
                        dd {
                            (v["blocklists"]["files"][list].as_u64().unwrap_or(0)) " from files"
                            @let added: Vec<&str> = v["blocklists"]["admin"][list].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                            @if !added.is_empty() { "; added by admins: " span class="mono" { (added.join(", ")) } }
                        }
                    }
                }
            }
        })
    }

    /// `GET /console/audit?page=`.
    pub async fn audit(&self, query: &HashMap<String, String>) -> Resp {
        let (records, chain) = match self.treasury().audit().await {
            Ok(r) => r,
            Err(e) => return self.page(Page::Audit, "Audit", "", Some(failed(&e)), html! {}).await,
        };
        let pages = records.len().div_ceil(AUDIT_PAGE).max(1);
        let page = query
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| (1..=pages).contains(p))
            .unwrap_or(1);
        // Newest first.
        let shown: Vec<_> =
            records.iter().rev().skip((page - 1) * AUDIT_PAGE).take(AUDIT_PAGE).collect();
        let head = records.last();
        let content = html! {
            section class="card" aria-labelledby="chain" {
                h2 id="chain" { "The chain" }
                dl class="facts" {
                    dt { "State" }
                    dd id="chain-state" {
                        @if chain.ok { (badge("good", "Verified")) " every record's hash and link check out" }
                        @else { (badge("bad", "Broken")) " at record " (chain.broken_at.map_or("?".to_owned(), |b| b.to_string())) ": " (chain.reason.as_deref().unwrap_or("")) }
                    }
                    dt { "Records" } dd { (chain.records) }
                    dt { "Head" } dd class="mono" { @if let Some(h) = head { "#" (h.seq) " " (h.hash) } @else { "—" } }
                }
            }
            section class="card" aria-labelledby="records" {
                h2 id="records" { "Every change, newest first" }
                div class="field" {
                    label for="audit-filter" { "Show only records containing" }
                    input type="search" id="audit-filter" data-filter="audit-table" aria-controls="audit-table" autocomplete="off";
                    span id="audit-table-status" class="hint" aria-live="polite" {}
                }
                div class="table-wrap" { table id="audit-table" {
                    thead { tr {
                        th scope="col" class="num" { "#" } th scope="col" { "When" } th scope="col" { "Admin" }
                        th scope="col" { "Action" } th scope="col" { "Target" } th scope="col" { "Before" } th scope="col" { "After" }
                    } }
                    tbody { @for r in &shown { tr {
                        td class="num" { (r.seq) }
                        td { (view::when(r.at)) }
                        td { (r.actor) }
                        td class="mono" { (r.action) }
                        td class="id" { (r.target) }
                        td { (view::json_block(&r.before)) }
                        td { (view::json_block(&r.after)) }
                    } } }
                } }
                @if pages > 1 {
                    nav aria-label="Audit pages" class="actions" {
                        @if page > 1 { a class="button secondary" href={ "/console/audit?page=" (page - 1) } { "Newer" } }
                        span { "Page " (page) " of " (pages) }
                        @if page < pages { a class="button secondary" href={ "/console/audit?page=" (page + 1) } { "Older" } }
                    }
                }
            }
        };
        let done = (!chain.ok).then(|| {
            (
                StatusCode::OK,
                Notice::error("The audit chain does not verify", html! { p { "A record was changed, removed or reordered. Keep the store as it is and investigate." } }),
            )
        });
        self.page(
            Page::Audit,
            "Audit",
            "Every admin change: who, when, and what it was before and after.",
            done,
            content,
        )
        .await
    }
}

fn opt_amount(v: &Value) -> Markup {
    match v.as_str() {
        Some(t) => html! { (view::amount_text(t)) },
        None => html! { span class="muted" { "—" } },
    }
}

/// Headroom, marked when none is left or less than a tenth of the cap.
fn headroom(headroom: &Value, cap: &Value) -> Markup {
    let Some(h) = headroom.as_str() else { return html! { span class="muted" { "—" } } };
    let h_amount = view::parse_amount_text(h);
    let cap = cap.as_str().and_then(view::parse_amount_text);
    match (h_amount, cap) {
        (Some(a), _) if a.minor() <= 0 => {
            html! { (badge("bad", &format!("{} (none left)", view::amount(&a)))) }
        }
        (Some(a), Some(c)) if a.minor().saturating_mul(10) < c.minor() => {
            html! { (badge("warn", &format!("{} (low)", view::amount(&a)))) }
        }
        (Some(a), _) => html! { (view::amount(&a)) },
        (None, _) => html! { (h) },
    }
}

fn state_badge(state: &str) -> Markup {
    match state {
        "approved" => badge("good", "approved"),
        "rejected" => badge("bad", "rejected"),
        "pending" => badge("warn", "pending"),
        other => badge("plain", other),
    }
}
