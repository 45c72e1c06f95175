//! Settlement: the business days and where each stands, running a day, its files, and an
//! acquirer's file reconciled — each through the settlement method the admin API's route calls.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, Days, NaiveDate, Utc};
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;
use maud::{html, Markup};
use qrbridge_fx::Amount;
use serde::Deserialize;
use serde_json::Value;

use super::form::Fields;
use super::pages::{failed, Ctx, Done, Notice, Page};
use super::view::{self, badge, s};
use crate::error::ApiError;
use crate::http::Resp;
use crate::settlement::parse_day;
use crate::store::Store;

/// Closed days listed besides those run: today's and the days before it.
const RECENT_DAYS: u64 = 7;
/// Most days listed.
const DAYS_LISTED_MAX: usize = 60;

/// One party's statement totals, as `summary.json` has them: a partner's (its payments and what
/// it owes us) or an acquirer's (its instructions and what we owe it).
#[derive(Deserialize)]
struct StatementLine {
    #[serde(alias = "partner", alias = "acquirer")]
    party: String,
    file: String,
    #[serde(alias = "payments", alias = "instructions")]
    count: u64,
    #[serde(alias = "payments_total", alias = "instructions_total")]
    total: Amount,
    refunds: u64,
    refunds_total: Amount,
    #[serde(alias = "net_due", alias = "net_payable")]
    net: Amount,
}

/// The column headings of a statement table that differ by party: the party, its count, its
/// total, its net.
struct StatementHeads {
    party: &'static str,
    count: &'static str,
    total: &'static str,
    net: &'static str,
}

/// A day's statements of one kind of party, a row each with its file.
fn statement_table(
    day: NaiveDate,
    (id, title): (&str, &str),
    h: StatementHeads,
    lines: &[StatementLine],
) -> Markup {
    html! {
        section class="card" aria-labelledby=(id) {
            h2 id=(id) { (title) }
            div class="table-wrap" { table {
                thead { tr {
                    th scope="col" { (h.party) }
                    th scope="col" class="num" { (h.count) }
                    th scope="col" class="num" { (h.total) }
                    th scope="col" class="num" { "Refunds" }
                    th scope="col" class="num" { "Refunded" }
                    th scope="col" class="num" { (h.net) }
                    th scope="col" { "Statement" }
                } }
                tbody { @for l in lines { tr {
                    th scope="row" { (l.party) }
                    td class="num" { (l.count) }
                    td class="num" { (view::amount(&l.total)) }
                    td class="num" { (l.refunds) }
                    td class="num" { (view::amount(&l.refunds_total)) }
                    td class="num" { (view::amount(&l.net)) }
                    td { a href={ "/console/settlement/" (day) "/files/" (l.file) } download { (l.file) } }
                } } }
            } }
        }
    }
}

/// One partner and pair's spread revenue.
#[derive(Deserialize)]
struct RevenueLine {
    partner: String,
    pair: String,
    payments: u64,
    refunds: u64,
    spread_revenue: Amount,
}

/// A day's `summary.json`: what the console shows of it.
#[derive(Deserialize)]
struct SummaryView {
    time_zone: String,
    from: String,
    to: String,
    partners: Vec<StatementLine>,
    acquirers: Vec<StatementLine>,
    spread_revenue: Vec<RevenueLine>,
    excluded: BTreeMap<String, u64>,
    in_doubt: Vec<String>,
    files: BTreeMap<String, String>,
}

/// What the audit log says of a day: its last run and its reconciliations.
#[derive(Default)]
struct DayRecord {
    run: Option<(DateTime<Utc>, String)>,
    /// Per acquirer: when, by whom, and whether it was clean.
    reconciled: BTreeMap<String, (DateTime<Utc>, String, bool)>,
}

impl<S: Store> Ctx<'_, S> {
    /// Every day the audit log shows run or reconciled.
    async fn day_records(&self) -> Result<BTreeMap<NaiveDate, DayRecord>, ApiError> {
        let (records, _) = self.treasury().audit().await?;
        let mut days: BTreeMap<NaiveDate, DayRecord> = BTreeMap::new();
        for r in records {
            match r.action.as_str() {
                "settlement.run" => {
                    if let Some(d) =
                        r.target.strip_prefix("settlement:").and_then(|d| d.parse().ok())
                    {
                        days.entry(d).or_default().run = Some((r.at, r.actor.clone()));
                    }
                }
                "settlement.reconcile" => {
                    let rest = r.target.strip_prefix("reconciliation:").unwrap_or("");
                    if let Some((d, acquirer)) = rest.split_once(':') {
                        if let Ok(d) = d.parse::<NaiveDate>() {
                            let clean = r.after["clean"] == true;
                            days.entry(d)
                                .or_default()
                                .reconciled
                                .insert(acquirer.to_owned(), (r.at, r.actor.clone(), clean));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(days)
    }

    /// A day's state, in words and as a badge.
    fn day_state(&self, day: NaiveDate, record: Option<&DayRecord>) -> Markup {
        let closes = self.settlement().days().closes_at(day);
        match record.and_then(|r| r.run.as_ref()) {
            Some(_) => badge("good", "Run"),
            None if self.now() < closes => {
                html! { (badge("plain", "Open")) " " span class="muted" { "closes " (view::time(closes)) } }
            }
            None => badge("warn", "Closed, not run"),
        }
    }

    /// `GET /console/settlement`.
    pub async fn days_page(&self, done: Done) -> Resp {
        let today = self.settlement().days().day_of(self.now());
        let records = match self.day_records().await {
            Ok(r) => r,
            Err(e) => {
                return self
                    .page(Page::Settlement, "Settlement", "", Some(failed(&e)), html! {})
                    .await
            }
        };
        let mut days: BTreeSet<NaiveDate> = records.keys().copied().collect();
        for back in 0..=RECENT_DAYS {
            if let Some(d) = today.checked_sub_days(Days::new(back)) {
                days.insert(d);
            }
        }
        let listed: Vec<NaiveDate> = days.into_iter().rev().take(DAYS_LISTED_MAX).collect();
        let yesterday = today.checked_sub_days(Days::new(1)).unwrap_or(today);
        let content = html! {
            section class="card" aria-labelledby="run" {
                h2 id="run" { "Run a day" }
                p { "Writes the day's statements (per partner in its currency, per acquirer in CNY), the treasury reports and the list of payments still in doubt. A day runs once it has closed — after its cut-off and the cancel window of its last payment; running it again over the same records writes the same files." }
                form class="row" method="post" action="/console/settlement/run" data-confirm="Run settlement for this day?" {
                    (self.csrf())
                    div class="field" {
                        label for="run-day" { "Business day" }
                        input type="date" id="run-day" name="day" required value=(yesterday.to_string());
                    }
                    button type="submit" { "Run the day" }
                }
            }
            section class="card" aria-labelledby="days" {
                h2 id="days" { "Days" }
                div class="table-wrap" {
                    table id="days-table" {
                        thead { tr {
                            th scope="col" { "Business day" }
                            th scope="col" { "State" }
                            th scope="col" { "Last run" }
                            th scope="col" { "Reconciled" }
                        } }
                        tbody {
                            @for d in &listed {
                                @let r = records.get(d);
                                tr {
                                    th scope="row" { a href={ "/console/settlement/" (d) } { (d) } @if *d == today { " " span class="muted" { "(today)" } } }
                                    td { (self.day_state(*d, r)) }
                                    td { @if let Some((at, by)) = r.and_then(|r| r.run.as_ref()) { (view::when(*at)) " by " (by) } @else { span class="muted" { "—" } } }
                                    td {
                                        @match r.map(|r| &r.reconciled) {
                                            Some(rec) if !rec.is_empty() => {
                                                @for (acq, (_, _, clean)) in rec {
                                                    (acq) " " @if *clean { (badge("good", "clean")) } @else { (badge("bad", "differences")) } " "
                                                }
                                            }
                                            _ => { span class="muted" { "—" } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        self.page(
            Page::Settlement,
            "Settlement",
            "Business days, their statements and files, and the acquirers' files reconciled.",
            done,
            content,
        )
        .await
    }

    /// `POST /console/settlement/run`: `settlement.run`, as `POST /admin/v1/settlement/{day}`.
    pub async fn run_day(&self, f: &Fields) -> Resp {
        let day = match parse_day(f.given("day").unwrap_or("")) {
            Ok(d) => d,
            Err(e) => return self.days_page(Some(failed(&e))).await,
        };
        match self.settlement().run(self.actor, day).await {
            Ok(summary) => {
                let files = summary.files.len() + 1;
                let notice = Notice::ok(
                    format!("{day} run"),
                    html! { p { (files) " files written; " (summary.in_doubt.len()) " payments still in doubt (listed in in-doubt.csv, on no statement)." } },
                );
                let view = serde_json::to_value(&summary).ok();
                self.day_page(day, view, None, Some((StatusCode::OK, notice))).await
            }
            Err(e) => self.days_page(Some(failed(&e))).await,
        }
    }

    /// `GET /console/settlement/{day}`.
    pub async fn settlement_day(&self, day: &str, done: Done) -> Resp {
        let day = match parse_day(day) {
            Ok(d) => d,
            Err(e) => return self.problem(StatusCode::BAD_REQUEST, "No such day", &e.to_string()),
        };
        self.day_page(day, None, None, done).await
    }

    /// A day's page: its summary (`summary`, or the one written), its files, its
    /// reconciliations (`report` first, when one was just made) and the upload form.
    async fn day_page(
        &self,
        day: NaiveDate,
        summary: Option<Value>,
        report: Option<(String, Value)>,
        done: Done,
    ) -> Resp {
        let summary = match summary {
            Some(v) => Some(v),
            None => match self.settlement().file(day, "summary.json").await {
                Ok(bytes) => serde_json::from_slice::<Value>(&bytes).ok(),
                Err(_) => None,
            },
        };
        let view: Option<SummaryView> = summary.and_then(|v| serde_json::from_value(v).ok());
        let mut acquirers: BTreeSet<String> =
            self.engine().parties().acquirers().map(str::to_owned).collect();
        if let Some(v) = &view {
            acquirers.extend(v.acquirers.iter().map(|a| a.party.clone()));
        }
        // Reconciliation reports kept for the day, one per acquirer.
        let mut reports: Vec<(String, Value)> = report.into_iter().collect();
        for acq in &acquirers {
            if reports.iter().any(|(a, _)| a == acq) {
                continue;
            }
            if let Ok(bytes) =
                self.settlement().file(day, &format!("reconciliation-{acq}.json")).await
            {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    reports.push((acq.clone(), v));
                }
            }
        }
        let mut files: Vec<String> =
            view.as_ref().map(|v| v.files.keys().cloned().collect()).unwrap_or_default();
        if view.is_some() {
            files.push("summary.json".to_owned());
        }
        for (acq, _) in &reports {
            files.push(format!("reconciliation-{acq}.csv"));
            files.push(format!("reconciliation-{acq}.json"));
            files.push(format!("acquirer-file-{acq}.csv"));
        }
        files.sort();
        files.dedup();
        let closes = self.settlement().days().closes_at(day);
        // The acquirer with the most instructions that day comes chosen in the upload form.
        let busiest = view
            .as_ref()
            .and_then(|v| v.acquirers.iter().filter(|a| a.count > 0).max_by_key(|a| a.count))
            .map(|a| a.party.clone());
        let content = html! {
            @match &view {
                None => {
                    section class="card" {
                        h2 { "Not run yet" }
                        @if self.now() < closes {
                            p { "This day closes at " (view::time(closes)) "; it can be run after that." }
                        } @else {
                            form class="row" method="post" action="/console/settlement/run" data-confirm="Run settlement for this day?" {
                                (self.csrf())
                                input type="hidden" name="day" value=(day.to_string());
                                button type="submit" { "Run " (day) }
                            }
                        }
                    }
                }
                Some(v) => {
                    section class="card" aria-labelledby="window" {
                        h2 id="window" { "The day" }
                        dl class="facts" {
                            dt { "From" } dd { (view::time_text(&v.from)) }
                            dt { "To" } dd { (view::time_text(&v.to)) " (" (v.time_zone) " business day)" }
                            dt { "Still in doubt" } dd {
                                @if v.in_doubt.is_empty() { "none" } @else {
                                    (badge("warn", &format!("{} payments", v.in_doubt.len()))) " on no statement until they resolve: "
                                    span class="mono" { (v.in_doubt.join(", ")) }
                                }
                            }
                            dt { "On neither side" } dd {
                                @if v.excluded.is_empty() { "none" } @else {
                                    @for (state, n) in &v.excluded { (n) " " (state.to_lowercase()) " " }
                                }
                            }
                        }
                        form class="row" method="post" action="/console/settlement/run" data-confirm="Run this day again?" {
                            (self.csrf())
                            input type="hidden" name="day" value=(day.to_string());
                            button type="submit" class="secondary" { "Run again" }
                        }
                    }
                    (statement_table(day, ("partners", "Partners"), StatementHeads {
                        party: "Partner", count: "Payments", total: "Paid", net: "Net due to us",
                    }, &v.partners))
                    (statement_table(day, ("acquirers", "Acquirers"), StatementHeads {
                        party: "Acquirer", count: "Instructions", total: "Instructed", net: "Net we owe",
                    }, &v.acquirers))
                    @if !v.spread_revenue.is_empty() {
                        section class="card" aria-labelledby="day-revenue" {
                            h2 id="day-revenue" { "Spread revenue" }
                            div class="table-wrap" { table {
                                thead { tr {
                                    th scope="col" { "Partner" } th scope="col" { "Pair" }
                                    th scope="col" class="num" { "Payments" } th scope="col" class="num" { "Refunds" }
                                    th scope="col" class="num" { "Spread revenue" }
                                } }
                                tbody { @for r in &v.spread_revenue { tr {
                                    th scope="row" { (r.partner) } td { (r.pair) }
                                    td class="num" { (r.payments) } td class="num" { (r.refunds) }
                                    td class="num" { (view::amount(&r.spread_revenue)) }
                                } } }
                            } }
                        }
                    }
                }
            }
            @for (acq, report) in &reports {
                (verdicts(acq, report))
            }
            section class="card" aria-labelledby="reconcile" {
                h2 id="reconcile" { "Reconcile an acquirer's file" }
                p { "The acquirer's CSV for this day: " code { "instruction_id,amount,currency,status,refund_ids" } ". Each instruction is compared with the bridge's own record; the report is kept beside the day's files, with the acquirer's file as received." }
                form class="stack" method="post" action="/console/settlement/reconcile" enctype="multipart/form-data" {
                    (self.csrf())
                    input type="hidden" name="day" value=(day.to_string());
                    div class="field" {
                        label for="recon-acquirer" { "Acquirer" }
                        select id="recon-acquirer" name="acquirer" required {
                            @for a in &acquirers { option value=(a) selected[Some(a) == busiest.as_ref()] { (a) } }
                        }
                    }
                    div class="field" {
                        label for="recon-file" { "The acquirer's file" }
                        input type="file" id="recon-file" name="file" required accept=".csv,text/csv";
                    }
                    div class="actions" { button type="submit" { "Reconcile" } }
                }
            }
            @if !files.is_empty() {
                section class="card" aria-labelledby="files" {
                    h2 id="files" { "Files" }
                    div class="table-wrap" { table id="files-table" {
                        thead { tr { th scope="col" { "File" } th scope="col" { "SHA-256" } } }
                        tbody { @for name in &files { tr {
                            td { a href={ "/console/settlement/" (day) "/files/" (name) } download { (name) } }
                            td class="id" { (view.as_ref().and_then(|v| v.files.get(name)).map_or("", String::as_str)) }
                        } } }
                    } }
                }
            }
            p { a href="/console/settlement" { "All days" } }
        };
        self.page(Page::Settlement, &format!("Settlement: {day}"), "", done, content).await
    }

    /// `GET /console/settlement/{day}/files/{name}`: `settlement.file`, as
    /// `GET /admin/v1/settlement/{day}/files/{name}`.
    pub async fn download(&self, day: &str, name: &str) -> Resp {
        let day = match parse_day(day) {
            Ok(d) => d,
            Err(e) => return self.problem(StatusCode::BAD_REQUEST, "No such day", &e.to_string()),
        };
        match self.settlement().file(day, name).await {
            Ok(bytes) => file_response(name, bytes),
            Err(e) => self.problem(e.parts().1, "No such file", &e.to_string()),
        }
    }

    /// `POST /console/settlement/reconcile` (multipart: `day`, `acquirer`, `file`):
    /// `settlement.reconcile`, as `POST /admin/v1/settlement/{day}/reconciliation/{acquirer}`.
    pub async fn reconcile(&self, f: &Fields) -> Resp {
        let day = match parse_day(f.given("day").unwrap_or("")) {
            Ok(d) => d,
            Err(e) => return self.days_page(Some(failed(&e))).await,
        };
        let acquirer = f.given("acquirer").unwrap_or("").to_owned();
        let Some(file) = f.file("file").filter(|b| !b.is_empty()) else {
            let n = Notice::error(
                "No file",
                html! { p { "Choose the acquirer's CSV file for the day." } },
            );
            return self.day_page(day, None, None, Some((StatusCode::BAD_REQUEST, n))).await;
        };
        match self.settlement().reconcile(self.actor, day, &acquirer, file).await {
            Ok(report) => {
                let clean = report["clean"] == true;
                let n = report["instructions"].as_u64().unwrap_or(0);
                let notice = if clean {
                    Notice::ok(
                        format!("{acquirer}, {day}: every instruction matches"),
                        html! { p { (n) " instructions compared." } },
                    )
                } else {
                    Notice::warn(
                        format!("{acquirer}, {day}: differences found"),
                        html! { p { (n) " instructions compared; see the verdicts below." } },
                    )
                };
                self.day_page(day, None, Some((acquirer, report)), Some((StatusCode::OK, notice)))
                    .await
            }
            Err(e) => self.day_page(day, None, None, Some(failed(&e))).await,
        }
    }
}

/// A reconciliation report's verdicts, as a table.
fn verdicts(acquirer: &str, report: &Value) -> Markup {
    let lines = report["lines"].as_array().cloned().unwrap_or_default();
    let clean = report["clean"] == true;
    let money = |amount: &Value, currency: &Value| match (amount.as_str(), currency.as_str()) {
        (Some(a), Some(c)) => view::amount_text(&format!("{c} {a}")),
        (Some(a), None) => a.to_owned(),
        _ => "—".to_owned(),
    };
    let id = format!("verdicts-{acquirer}");
    html! {
        section class="card" aria-labelledby=(format!("{id}-title")) {
            h2 id=(format!("{id}-title")) { "Reconciliation: " (acquirer) " " @if clean { (badge("good", "clean")) } @else { (badge("bad", "differences")) } }
            @if let Some(counts) = report["counts"].as_object() {
                p { @for (verdict, n) in counts { (n) " " (verdict) "  " } }
            }
            div class="table-wrap" { table id=(id) {
                thead { tr {
                    th scope="col" { "Instruction" }
                    th scope="col" { "Verdict" }
                    th scope="col" class="num" { "Bridge amount" }
                    th scope="col" class="num" { "Acquirer amount" }
                    th scope="col" { "Bridge status" }
                    th scope="col" { "Acquirer status" }
                    th scope="col" { "Refunds (bridge / acquirer)" }
                    th scope="col" { "Note" }
                } }
                tbody { @for l in &lines {
                    @let vs: Vec<&str> = l["verdicts"].as_array().map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                    tr {
                        td class="id" { (s(l, "instruction_id")) }
                        td { @for v in &vs { @if *v == "MATCHED" { (badge("good", v)) } @else { (badge("bad", v)) } " " } }
                        td class="num" { (money(&l["bridge_amount"], &l["bridge_currency"])) }
                        td class="num" { (money(&l["acquirer_amount"], &l["acquirer_currency"])) }
                        td { (l["bridge_status"].as_str().unwrap_or("—")) }
                        td { (l["acquirer_status"].as_str().unwrap_or("—")) }
                        td class="wrap" { (join(&l["bridge_refunds"])) " / " (join(&l["acquirer_refunds"])) }
                        td class="wrap" { (s(l, "note")) }
                    }
                } }
            } }
        }
    }
}

fn join(v: &Value) -> String {
    let items: Vec<&str> =
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if items.is_empty() {
        "—".to_owned()
    } else {
        items.join(", ")
    }
}

/// A day's file, to save (as the admin API sends it).
fn file_response(name: &str, bytes: Vec<u8>) -> Resp {
    let kind = if name.ends_with(".json") { "application/json" } else { "text/csv; charset=utf-8" };
    let mut resp = http::Response::new(Full::new(Bytes::from(bytes)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // `settlement.file` took only `A-Z a-z 0-9 - _ .` names: safe in a quoted header value.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    super::secure(&mut resp, true);
    resp
}
