//! The pages' frame (head, navigation, notices, footer) and what every page works with: the
//! admin API's parts and the admin's identity ([`Ctx`]). Each area's pages are in a module of
//! their own beside this one: `money` (rates, spreads, positions), `days` (settlement), `watch`
//! (operations, proposals, risk, audit).

use chrono::{DateTime, Utc};
use http::StatusCode;
use maud::{html, Markup, DOCTYPE};

use super::{assets, guard, html as html_response};
use crate::admin::Admin;
use crate::error::ApiError;
use crate::http::Resp;
use crate::payments::engine::Engine;
use crate::settlement::Settlement;
use crate::store::Store;
use crate::treasury::proposals::PROPOSALS_LIST_MAX;
use crate::treasury::{Outcome, ProposalState, Treasury};

/// The console's pages, in the navigation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Rates,
    Spreads,
    Positions,
    Settlement,
    Operations,
    Proposals,
    Risk,
    Audit,
    /// An answer that is no page of the navigation (an error).
    Other,
}

const NAV: [(Page, &str, &str); 8] = [
    (Page::Rates, "/console/rates", "Rates"),
    (Page::Spreads, "/console/spreads", "Spreads"),
    (Page::Positions, "/console/positions", "Positions & revenue"),
    (Page::Settlement, "/console/settlement", "Settlement"),
    (Page::Operations, "/console/operations", "Operations"),
    (Page::Proposals, "/console/proposals", "Proposals"),
    (Page::Risk, "/console/risk", "Risk"),
    (Page::Audit, "/console/audit", "Audit"),
];

/// What a change came to, shown above the page it returns to.
pub struct Notice {
    /// `ok`, `error`, `info` or `warn` (the CSS class).
    kind: &'static str,
    title: String,
    body: Markup,
}

impl Notice {
    pub fn ok(title: impl Into<String>, body: Markup) -> Notice {
        Notice { kind: "ok", title: title.into(), body }
    }

    pub fn info(title: impl Into<String>, body: Markup) -> Notice {
        Notice { kind: "info", title: title.into(), body }
    }

    pub fn warn(title: impl Into<String>, body: Markup) -> Notice {
        Notice { kind: "warn", title: title.into(), body }
    }

    pub fn error(title: impl Into<String>, body: Markup) -> Notice {
        Notice { kind: "error", title: title.into(), body }
    }

    /// An admin API error, with its code (as the API and the CLI show it) and message.
    pub fn refused(e: &ApiError) -> Notice {
        Notice::error(format!("Refused: {}", e.code()), html! { p { (e.to_string()) } })
    }

    pub fn render(&self) -> Markup {
        let role = if self.kind == "error" { "alert" } else { "status" };
        html! {
            div class={ "notice " (self.kind) } role=(role) {
                strong { (self.title) }
                (self.body)
            }
        }
    }
}

/// A page's answer status and its notice, after a change.
pub type Done = Option<(StatusCode, Notice)>;

/// A change's failure, as an answer status and notice.
pub fn failed(e: &ApiError) -> (StatusCode, Notice) {
    (e.parts().1, Notice::refused(e))
}

/// What a change under dual control came to, as a notice: `what` took effect, or was proposed
/// for a second admin.
pub fn outcome_notice(o: &Outcome, what: &str) -> Notice {
    match o {
        Outcome::Applied(v) => Notice::ok(
            format!("{what}: in force"),
            html! { p { "Recorded in the audit log as #" (v["audit_seq"]) "." } },
        ),
        Outcome::Proposed(v) => proposed_notice(v),
    }
}

/// A proposal made (`{"proposal", "audit_seq"}`), as a notice.
pub fn proposed_notice(v: &serde_json::Value) -> Notice {
    let p = &v["proposal"];
    Notice::info(
        "Proposed: waiting for a second admin",
        html! {
            p { "Nothing has changed yet. " (super::view::s(p, "why")) "." }
            p {
                "Proposal " code { (super::view::s(p, "proposal_id")) }
                " waits on the " a href="/console/proposals" { "Proposals" } " page until "
                (super::view::time_text(super::view::s(p, "expires_at")))
                " for another admin to approve it (audit #" (v["audit_seq"]) ")."
            }
        },
    )
}

/// What every page works with: the admin API's parts, and who is asking.
pub struct Ctx<'a, S> {
    admin: &'a Admin<S>,
    /// The admin certificate's identity: every change is made, and audited, as this admin.
    pub actor: &'a str,
}

impl<'a, S: Store> Ctx<'a, S> {
    pub fn new(admin: &'a Admin<S>, actor: &'a str) -> Self {
        Ctx { admin, actor }
    }

    pub fn engine(&self) -> &Engine<S> {
        &self.admin.engine
    }

    pub fn treasury(&self) -> &Treasury<S> {
        &self.admin.treasury
    }

    pub fn settlement(&self) -> &Settlement<S> {
        &self.admin.settlement
    }

    /// Now, by the daemon's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.admin.engine.now()
    }

    /// The hidden CSRF field every form carries.
    pub fn csrf(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(guard::token(self.actor, self.now())); }
    }

    /// A page of the navigation, with the number of proposals waiting beside its link.
    pub async fn page(
        &self,
        active: Page,
        title: &str,
        lead: &str,
        done: Done,
        content: Markup,
    ) -> Resp {
        let waiting = self
            .treasury()
            .proposals(Some(ProposalState::Pending), PROPOSALS_LIST_MAX)
            .await
            .map(|p| p.len())
            .ok();
        let (status, notice) = match done {
            Some((s, n)) => (s, Some(n)),
            None => (StatusCode::OK, None),
        };
        self.render(status, active, title, lead, notice.as_ref(), content, waiting)
    }

    /// An answer that is only a message (no such page, a refused change).
    pub fn problem(&self, status: StatusCode, title: &str, text: &str) -> Resp {
        let content = html! {
            p { a href="/console/" { "Back to the console" } }
        };
        let notice = Notice::error(title, html! { p { (text) } });
        self.render(status, Page::Other, title, "", Some(&notice), content, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn render(
        &self,
        status: StatusCode,
        active: Page,
        title: &str,
        lead: &str,
        notice: Option<&Notice>,
        content: Markup,
        waiting: Option<usize>,
    ) -> Resp {
        let now = self.now();
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="robots" content="noindex";
                    // No icon to fetch.
                    link rel="icon" href="data:,";
                    title { (title) " · qrbridge treasury" }
                    link rel="stylesheet" href=(assets::css_href());
                    script src=(assets::js_src()) defer {}
                }
                body {
                    a class="skip" href="#main" { "Skip to the page" }
                    header class="top" {
                        span class="brand" { "qrbridge treasury" }
                        nav class="main" aria-label="Console pages" {
                            ul {
                                @for (p, href, name) in NAV {
                                    li {
                                        a href=(href) aria-current=[(p == active).then_some("page")] {
                                            (name)
                                            @if p == Page::Proposals {
                                                @if let Some(n) = waiting.filter(|n| *n > 0) {
                                                    span class="count" { (n) span class="vh" { " waiting" } }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        span class="who" { "Signed in by certificate as " b { (self.actor) } }
                    }
                    main id="main" tabindex="-1" {
                        h1 { (title) }
                        @if !lead.is_empty() { p class="lead" { (lead) } }
                        @if let Some(n) = notice { (n.render()) }
                        (content)
                    }
                    footer {
                        "Times are UTC. Shown at " (super::view::time(now))
                        ". Every change made here is made as " (self.actor)
                        " and recorded in the audit log, as through the admin API."
                    }
                }
            }
        };
        html_response(status, page.into_string())
    }
}
