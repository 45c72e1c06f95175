//! Rates, spreads, positions and revenue: the pages, and the changes made from them (each
//! through the treasury method the admin API's route calls).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{Days, NaiveDate};
use http::StatusCode;
use maud::{html, Markup, PreEscaped};
use qrbridge_fx::{Amount, Bps, Currency, Decimal, Pair, Quote, QuoteRequest, SpreadKey};

use super::chart;
use super::form::Fields;
use super::pages::{failed, outcome_notice, Ctx, Done, Notice, Page};
use super::view::{self, badge};
use crate::http::Resp;
use crate::settlement::parse_day;
use crate::store::Store;
use crate::treasury::{RateInput, SpreadChange};

/// The sample a spread change is previewed on, when the form names none (CNY).
const SAMPLE_CNY: &str = "100.00";
/// Most days one revenue view spans.
const REVENUE_DAYS_MAX: u64 = 92;
/// Days the revenue view spans when none are given (today and the 13 before).
const REVENUE_DAYS_DEFAULT: u64 = 14;

/// `CNY/PHP` as a pair.
fn parse_pair(text: &str) -> Result<Pair, String> {
    let bad = || format!("pair {text:?} is not BASE/QUOTE, e.g. CNY/PHP");
    let (b, q) = text.trim().split_once('/').ok_or_else(bad)?;
    let c = |code: &str| {
        Currency::from_code(code.trim().to_ascii_uppercase().as_str())
            .map_err(|e| format!("{code:?}: {e}"))
    };
    let pair = Pair::new(c(b)?, c(q)?);
    if pair.base == pair.quote {
        return Err(bad());
    }
    Ok(pair)
}

/// A spread change as the form gives it.
struct SpreadForm {
    partner: Option<String>,
    pair: Option<String>,
    bps: Option<String>,
    remove: bool,
}

impl SpreadForm {
    fn of(f: &Fields) -> SpreadForm {
        SpreadForm {
            partner: f.given("partner").map(str::to_owned),
            pair: f.given("pair").map(str::to_owned),
            bps: f.given("bps").map(str::to_owned),
            remove: f.ticked("remove"),
        }
    }

    /// The change as the admin API takes it.
    fn change(&self) -> SpreadChange {
        SpreadChange {
            partner: self.partner.clone(),
            pair: self.pair.clone(),
            bps: if self.remove { None } else { self.bps.clone() },
        }
    }

    /// What it is a spread of, in words.
    fn target(&self) -> String {
        match (&self.partner, &self.pair) {
            (None, None) => "the default spread (every partner, every pair)".to_owned(),
            (Some(p), None) => format!("{p}, every pair"),
            (None, Some(q)) => format!("{q}, every partner"),
            (Some(p), Some(q)) => format!("{p}, {q}"),
        }
    }

    /// The same change as hidden fields (for the confirmation and a new sample).
    fn hidden(&self) -> Markup {
        html! {
            input type="hidden" name="partner" value=(self.partner.as_deref().unwrap_or(""));
            input type="hidden" name="pair" value=(self.pair.as_deref().unwrap_or(""));
            input type="hidden" name="bps" value=(self.bps.as_deref().unwrap_or(""));
            @if self.remove { input type="hidden" name="remove" value="yes"; }
        }
    }

    /// The spreads page's query that opens the form on this key.
    fn query(&self) -> HashMap<String, String> {
        let mut q = HashMap::new();
        if let Some(p) = &self.partner {
            q.insert("partner".to_owned(), p.clone());
        }
        if let Some(p) = &self.pair {
            q.insert("pair".to_owned(), p.clone());
        }
        q
    }
}

/// A sample quote priced before and after a spread change.
struct Sample {
    partner: String,
    pair: Pair,
    before: Quote,
    after: Quote,
}

/// What a spread change does: the spread of its key before and after, how far it moves, whether
/// a second admin must approve it, and a sample quote.
struct Preview {
    own_before: Option<Bps>,
    default: Bps,
    to: Bps,
    moved: Decimal,
    step: u32,
    sample: Sample,
    /// Each partner and pair whose quotes it changes: the spread now, and after.
    affected: Vec<(String, Pair, Bps, Bps)>,
}

impl<S: Store> Ctx<'_, S> {
    /// The partners configured, sorted.
    fn partners(&self) -> Vec<String> {
        let mut p: Vec<String> = self.engine().parties().partners().map(str::to_owned).collect();
        p.sort();
        p
    }

    /// The pairs partners are quoted in (`CNY/<wallet currency>`), each partner's among them.
    fn quoted(&self) -> Vec<(String, Pair)> {
        let parties = self.engine().parties();
        let mut out: Vec<(String, Pair)> = parties
            .partners()
            .flat_map(|p| {
                parties
                    .wallet_currencies(p)
                    .iter()
                    .map(move |c| (p.to_owned(), Pair::new(Currency::CNY, *c)))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
        out
    }

    /// The pairs partners are quoted in, and those of the overrides.
    fn pairs(&self) -> Vec<String> {
        let mut set: BTreeSet<String> = self.quoted().iter().map(|(_, p)| p.to_string()).collect();
        set.extend(
            self.engine().spreads().overrides().filter_map(|(k, _)| k.pair.map(|p| p.to_string())),
        );
        set.into_iter().collect()
    }

    /// `GET /console/rates`.
    pub async fn rates(&self, done: Done) -> Resp {
        let (mut rates, sources) = self.treasury().rates();
        rates.sort_by(|a, b| (a.base.code(), a.quote.code()).cmp(&(b.base.code(), b.quote.code())));
        let step = self.treasury().dual_control().rate_step_bps;
        let stale = rates.iter().filter(|r| !r.fresh).count();
        let content = html! {
            section class="card" aria-labelledby="held" {
                h2 id="held" { "Rates held" }
                p class="muted" {
                    (rates.len()) " pairs; "
                    @if stale == 0 { "every one fresh." } @else { (stale) " stale: a stale rate is never quoted." }
                }
                div class="table-wrap" {
                    table id="rates-table" {
                        thead { tr {
                            th scope="col" { "Pair" }
                            th scope="col" class="num" { "Mid rate" }
                            th scope="col" { "Source" }
                            th scope="col" { "As of" }
                            th scope="col" class="num" { "Age" }
                            th scope="col" { "State" }
                        } }
                        tbody {
                            @for r in &rates {
                                tr {
                                    th scope="row" { (r.base.code()) "/" (r.quote.code()) }
                                    td class="num" { (r.rate) }
                                    td { (r.source) }
                                    td { (view::when(r.as_of)) }
                                    td class="num" { (view::age(r.age_s)) }
                                    td { @if r.fresh { (badge("good", "Fresh")) } @else { (badge("bad", "Stale")) } }
                                }
                            }
                        }
                    }
                }
            }
            section class="card" aria-labelledby="sources" {
                h2 id="sources" { "Sources" }
                div class="table-wrap" {
                    table {
                        thead { tr {
                            th scope="col" { "Source" }
                            th scope="col" { "Kind" }
                            th scope="col" { "Location" }
                            th scope="col" { "Last read" }
                            th scope="col" { "Last good read" }
                            th scope="col" class="num" { "Rates taken" }
                            th scope="col" { "Refused by the guard" }
                            th scope="col" { "Last error" }
                            th scope="col" { span class="vh" { "Action" } }
                        } }
                        tbody {
                            @for s in &sources {
                                tr {
                                    th scope="row" class="mono" { (s.id) }
                                    td { (serde_json::to_value(s.kind).ok().and_then(|k| k.as_str().map(str::to_owned)).unwrap_or_default()) }
                                    td class="wrap" { (s.location.as_deref().unwrap_or("built in")) }
                                    td { @if let Some(at) = s.last_read_at { (view::when(at)) } @else { span class="muted" { "never" } } }
                                    td { @if let Some(at) = s.last_ok_at { (view::when(at)) } @else { span class="muted" { "never" } } }
                                    td class="num" { (s.rates) }
                                    td class="wrap" { @if s.refused.is_empty() { span class="muted" { "none" } } @else { (s.refused.join("; ")) } }
                                    td class="wrap" { @if let Some(e) = &s.last_error { (badge("bad", "Failed")) " " (e) } @else { span class="muted" { "none" } } }
                                    td {
                                        form class="inline" method="post" action="/console/rates/refresh" {
                                            (self.csrf())
                                            input type="hidden" name="source" value=(s.id);
                                            button type="submit" class="secondary" aria-label={ "Read source " (s.id) " now" } { "Read now" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section class="card" aria-labelledby="set" {
                h2 id="set" { "Set a rate by hand" }
                p {
                    "Taken as source " code { "admin:" (self.actor) } ", as of now. A rate moving more than "
                    strong { (step) " bps" } " from the rate held, or for a pair with none held, is proposed for a "
                    "second admin's approval; a smaller move takes effect at once. Every rate is held to the "
                    "feeds' guard: a larger move than the guard allows needs “force”, and is audited as forced."
                }
                form class="row" method="post" action="/console/rates" {
                    (self.csrf())
                    div class="field" {
                        label for="rate-base" { "Base currency" }
                        input type="text" id="rate-base" name="base" required maxlength="3" size="5"
                            pattern="[A-Za-z]{3}" autocomplete="off" spellcheck="false" placeholder="USD";
                    }
                    div class="field" {
                        label for="rate-quote" { "Quote currency" }
                        input type="text" id="rate-quote" name="quote" required maxlength="3" size="5"
                            pattern="[A-Za-z]{3}" autocomplete="off" spellcheck="false" placeholder="PHP";
                    }
                    div class="field" {
                        label for="rate-value" { "Mid rate" }
                        input type="text" id="rate-value" name="rate" required inputmode="decimal"
                            autocomplete="off" placeholder="58.1234" aria-describedby="rate-hint";
                        span id="rate-hint" class="hint" { "Quote units per one base unit" }
                    }
                    div class="field check" {
                        input type="checkbox" id="rate-force" name="force" value="yes";
                        label for="rate-force" { "Force past the guard's bound (audited)" }
                    }
                    button type="submit" { "Set rate" }
                }
            }
        };
        self.page(
            Page::Rates,
            "Rates",
            "Mid rates by pair, where each came from and how old it is; each source's last read.",
            done,
            content,
        )
        .await
    }

    /// `POST /console/rates`: `treasury.change_rates`, as `POST /admin/v1/rates`.
    pub async fn set_rate(&self, f: &Fields) -> Resp {
        let input = RateInput {
            base: f.given("base").unwrap_or("").to_ascii_uppercase(),
            quote: f.given("quote").unwrap_or("").to_ascii_uppercase(),
            rate: f.given("rate").unwrap_or("").to_owned(),
            as_of: None,
        };
        let pair = format!("{}/{}", input.base, input.quote);
        let done = match self
            .treasury()
            .change_rates(self.actor, vec![input], f.ticked("force"))
            .await
        {
            Ok(o) => {
                let mut notice = outcome_notice(&o, &format!("Rate {pair}"));
                if let crate::treasury::Outcome::Applied(v) = &o {
                    if v["rates"][0]["taken"] == false {
                        notice = Notice::warn(
                            format!("Rate {pair}: not taken"),
                            html! { p { "The rate held is newer than this one, and stays. Audit #" (v["audit_seq"]) "." } },
                        );
                    }
                }
                (StatusCode::OK, notice)
            }
            Err(e) => failed(&e),
        };
        self.rates(Some(done)).await
    }

    /// `POST /console/rates/refresh`: `treasury.refresh`, as
    /// `POST /admin/v1/rates/sources/{id}/refresh`.
    pub async fn refresh_source(&self, f: &Fields) -> Resp {
        let id = f.given("source").unwrap_or("");
        let done = match self.treasury().refresh(self.actor, id).await {
            Ok(v) => {
                let refused: Vec<String> = v["refused"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                (
                    StatusCode::OK,
                    Notice::ok(
                        format!("Source {id} read"),
                        html! {
                            p { (v["taken"]) " rates taken. Audit #" (v["audit_seq"]) "." }
                            @if !refused.is_empty() { p { "Refused by the guard: " (refused.join("; ")) } }
                        },
                    ),
                )
            }
            Err(e) => failed(&e),
        };
        self.rates(Some(done)).await
    }

    /// `GET /console/spreads` (`?partner=&pair=` opens the form on that spread).
    pub async fn spreads(&self, query: &HashMap<String, String>, done: Done) -> Resp {
        let policy = self.engine().spreads();
        let (min, max) = policy.bounds();
        let default = policy.default_bps();
        let step = self.treasury().dual_control().spread_step_bps;
        let mut overrides: Vec<(SpreadKey, Bps)> =
            policy.overrides().map(|(k, b)| (k.clone(), *b)).collect();
        overrides.sort_by(|a, b| a.0.cmp(&b.0));
        let want_partner = query.get("partner").map(String::as_str).filter(|p| !p.is_empty());
        let want_pair = query.get("pair").map(String::as_str).filter(|p| !p.is_empty());
        let current = overrides
            .iter()
            .find(|(k, _)| {
                k.partner.as_deref() == want_partner
                    && k.pair.map(|p| p.to_string()).as_deref() == want_pair
            })
            .map_or(default, |(_, b)| *b);
        let mut partners = self.partners();
        partners.extend(overrides.iter().filter_map(|(k, _)| k.partner.clone()));
        partners.sort();
        partners.dedup();
        let pairs = self.pairs();
        let edit = |partner: Option<&str>, pair: Option<String>| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(p) = partner {
                q.append_pair("partner", p);
            }
            if let Some(p) = &pair {
                q.append_pair("pair", p);
            }
            format!("/console/spreads?{}#change", q.finish())
        };
        let content = html! {
            section class="card" aria-labelledby="in-force" {
                h2 id="in-force" { "In force" }
                dl class="facts" {
                    dt { "Default spread" } dd { strong { (default) " bps" } " on every partner and pair without an override" }
                    dt { "Bounds" } dd { (min) " to " (max) " bps (configuration: fx.spread)" }
                    dt { "Dual control" } dd { "A change moving a spread more than " strong { (step) " bps" } " is proposed for a second admin's approval" }
                }
                div class="table-wrap" {
                    table id="spreads-table" {
                        caption { "The default and the overrides (the most specific one applies: partner and pair, then partner, then pair, then the default)" }
                        thead { tr {
                            th scope="col" { "Partner" }
                            th scope="col" { "Pair" }
                            th scope="col" class="num" { "Spread" }
                            th scope="col" { span class="vh" { "Action" } }
                        } }
                        tbody {
                            tr {
                                td { span class="muted" { "every partner" } }
                                td { span class="muted" { "every pair" } }
                                td class="num" { (default) " bps" }
                                td { a href=(edit(None, None)) aria-label="Change the default spread" { "Change" } }
                            }
                            @for (k, b) in &overrides {
                                tr {
                                    td { @if let Some(p) = &k.partner { (p) } @else { span class="muted" { "every partner" } } }
                                    td { @if let Some(p) = k.pair { (p.to_string()) } @else { span class="muted" { "every pair" } } }
                                    td class="num" { (b) " bps" }
                                    td {
                                        a href=(edit(k.partner.as_deref(), k.pair.map(|p| p.to_string())))
                                            aria-label={ "Change the spread of " (k.partner.as_deref().unwrap_or("every partner")) " in " (k.pair.map_or("every pair".to_owned(), |p| p.to_string())) } { "Change" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section class="card" id="change" aria-labelledby="change-title" {
                h2 id="change-title" { "Change a spread" }
                p class="muted" { "You will see the price a sample quote gets before and after, and confirm, before anything changes." }
                form class="stack" method="post" action="/console/spreads/preview" {
                    (self.csrf())
                    div class="field" {
                        label for="spread-partner" { "Partner" }
                        select id="spread-partner" name="partner" {
                            option value="" selected[want_partner.is_none()] { "Every partner" }
                            @for p in &partners { option value=(p) selected[want_partner == Some(p.as_str())] { (p) } }
                        }
                    }
                    div class="field" {
                        label for="spread-pair" { "Pair" }
                        select id="spread-pair" name="pair" {
                            option value="" selected[want_pair.is_none()] { "Every pair" }
                            @for p in &pairs { option value=(p) selected[want_pair == Some(p.as_str())] { (p) } }
                        }
                    }
                    div class="field" {
                        label for="spread-bps" { "New spread (bps)" }
                        input type="text" id="spread-bps" name="bps" value=(current) inputmode="decimal"
                            autocomplete="off" aria-describedby="spread-bps-hint";
                        span id="spread-bps-hint" class="hint" { "Basis points, " (min) " to " (max) ", e.g. 45 or 45.5" }
                    }
                    div class="field check" {
                        input type="checkbox" id="spread-remove" name="remove" value="yes";
                        label for="spread-remove" { "Remove this override instead (quotes fall back to the next spread that applies)" }
                    }
                    div class="field" {
                        label for="spread-sample" { "Sample payment (CNY)" }
                        input type="text" id="spread-sample" name="sample_amount" value=(SAMPLE_CNY) inputmode="decimal" autocomplete="off";
                    }
                    div class="actions" { button type="submit" { "Preview the change" } }
                }
            }
        };
        self.page(
            Page::Spreads,
            "Spreads",
            "The margin over the mid rate, per partner and pair. New quotes are priced with the \
             spread in force; a quote issued before keeps its price.",
            done,
            content,
        )
        .await
    }

    /// What `form` would do, priced on a sample (`f` may name its partner, pair and amount).
    fn preview(&self, form: &SpreadForm, f: &Fields) -> Result<Preview, String> {
        let pair = form.pair.as_deref().map(parse_pair).transpose()?;
        let bps = match (&form.bps, form.remove) {
            (_, true) => None,
            (Some(b), false) => Some(b.parse::<Bps>().map_err(|e| format!("spread {b:?}: {e}"))?),
            (None, false) => return Err("give the new spread in bps, or tick “remove”".into()),
        };
        let key = SpreadKey { partner: form.partner.clone(), pair };
        let before = self.engine().spreads();
        let default = before.default_bps();
        let is_default = key.partner.is_none() && key.pair.is_none();
        let own_before = if is_default {
            Some(default)
        } else {
            before.overrides().find(|(k, _)| **k == key).map(|(_, b)| *b)
        };
        let mut after = before.clone();
        match bps {
            Some(b) => {
                after.set(key.clone(), b).map_err(|e| e.to_string())?;
            }
            None if is_default => return Err("the default spread cannot be removed".into()),
            None if own_before.is_none() => {
                return Err(format!("{} has no override to remove", form.target()))
            }
            None => {
                after.remove(&key);
            }
        }
        let from = own_before.unwrap_or(default);
        let to = bps.unwrap_or(default);
        // As the treasury measures it: the key's own move, or the largest move of a spread any
        // partner's quotes get, whichever is more.
        let gap =
            |a: Bps, b: Bps| a.value().checked_sub(b.value()).map_or(Decimal::MAX, |d| d.abs());
        let mut moved = gap(to, from);
        let mut affected = Vec::new();
        for (partner, pair) in self.quoted() {
            let (now, then) = (before.spread_for(&partner, pair), after.spread_for(&partner, pair));
            moved = moved.max(gap(then, now));
            if now != then {
                affected.push((partner, pair, now, then));
            }
        }
        let step = self.treasury().dual_control().spread_step_bps;
        // The sample: what the form names, else the change's own partner and pair, else the
        // first configured partner and the first pair held.
        let partner = f
            .given("sample_partner")
            .map(str::to_owned)
            .or_else(|| key.partner.clone())
            .or_else(|| self.partners().into_iter().next())
            .ok_or("no partner is configured to price a sample for")?;
        let now = self.now();
        let sample_pair = match (f.given("sample_pair"), key.pair) {
            (Some(p), _) => parse_pair(p)?,
            (None, Some(p)) => p,
            // The partner's own pairs first, then any: the first with a rate to price it.
            (None, None) => {
                let mut candidates: Vec<Pair> = self
                    .quoted()
                    .into_iter()
                    .filter(|(p, _)| *p == partner)
                    .map(|(_, q)| q)
                    .collect();
                candidates.extend(self.pairs().iter().filter_map(|p| parse_pair(p).ok()));
                candidates
                    .into_iter()
                    .find(|p| {
                        p.base == Currency::CNY
                            && self.engine().with_rates(|book| book.resolve(*p, now).is_ok())
                    })
                    .ok_or("no rate is held to price a sample with")?
            }
        };
        if sample_pair.base != Currency::CNY {
            return Err(format!("quotes are priced from CNY: {sample_pair} is not CNY/…"));
        }
        let pay_text = f.given("sample_amount").unwrap_or(SAMPLE_CNY);
        let pay = Amount::from_major_str(Currency::CNY, pay_text)
            .map_err(|e| format!("sample amount {pay_text:?}: {e}"))?;
        let resolved = self
            .engine()
            .with_rates(|book| book.resolve(sample_pair, now))
            .map_err(|e| format!("no sample for {sample_pair}: {e}"))?;
        let req = QuoteRequest {
            partner: &partner,
            pay,
            wallet_currency: sample_pair.quote,
            now,
            ttl: chrono::Duration::seconds(120),
        };
        let price = |bps: Bps| {
            Quote::from_mid(&req, resolved.clone(), bps).map_err(|e| format!("sample: {e}"))
        };
        let sample = Sample {
            before: price(before.spread_for(&partner, sample_pair))?,
            after: price(after.spread_for(&partner, sample_pair))?,
            partner,
            pair: sample_pair,
        };
        Ok(Preview { own_before, default, to, moved, step, sample, affected })
    }

    /// `POST /console/spreads/preview`: what the change would do, and its confirmation.
    pub async fn spread_preview(&self, f: &Fields) -> Resp {
        let form = SpreadForm::of(f);
        let p = match self.preview(&form, f) {
            Ok(p) => p,
            Err(why) => {
                let notice = Notice::error("The change cannot be previewed", html! { p { (why) } });
                return self
                    .spreads(&form.query(), Some((StatusCode::UNPROCESSABLE_ENTITY, notice)))
                    .await;
            }
        };
        let second = p.moved > Decimal::from(p.step);
        let s = &p.sample;
        let wallet_more = s.after.wallet.checked_sub(&s.before.wallet).ok();
        let after_label = if form.remove {
            format!("{} bps (override removed)", p.to)
        } else {
            format!("{} bps", p.to)
        };
        let partners = self.partners();
        let pairs = self.pairs();
        let side = |title: &str, q: &Quote, class: &str, id: &str| {
            html! {
                div class={ "side " (class) } {
                    h3 { (title) }
                    dl class="facts" {
                        dt { "Spread" } dd { (q.spread_bps) " bps" }
                        dt { "Client price" } dd { span class="big" id={ "sample-price-" (id) } { (q.price) } " " (q.pair.quote.code()) " per CNY" }
                        dt { "Wallet pays" } dd { span class="big" id={ "sample-wallet-" (id) } { (view::amount(&q.wallet)) } }
                        dt { "Spread revenue" } dd { (view::amount(&q.spread_amount)) }
                    }
                }
            }
        };
        let content = html! {
            section class="card" aria-labelledby="what" {
                h2 id="what" { "The change" }
                dl class="facts" {
                    dt { "Spread of" } dd { (form.target()) }
                    dt { "Now" } dd { @if let Some(b) = p.own_before { (b) " bps" } @else { "no override of its own (a broader one applies, or the default of " (p.default) " bps)" } }
                    dt { "After" } dd { strong { (after_label) } }
                    dt { "Moves by" } dd { (p.moved) " bps" }
                }
            }
            section class="card" aria-labelledby="affected" {
                h2 id="affected" { "Whose quotes it changes" }
                @if p.affected.is_empty() {
                    p { "No partner's quotes: a more specific spread applies to each one this key covers." }
                } @else {
                    div class="table-wrap" { table id="affected-table" {
                        thead { tr {
                            th scope="col" { "Partner" } th scope="col" { "Pair" }
                            th scope="col" class="num" { "Spread now" } th scope="col" class="num" { "After" }
                        } }
                        tbody { @for (partner, pair, now, then) in &p.affected { tr {
                            th scope="row" { (partner) } td { (pair.to_string()) }
                            td class="num" { (now) " bps" } td class="num" { strong { (then) " bps" } }
                        } } }
                    } }
                }
            }
            @if second {
                div class="notice warn" role="status" {
                    strong { "A second admin must approve this" }
                    p { "It moves the spread by " (p.moved) " bps, more than the " (p.step) " bps one admin may move it. Confirming proposes it; nothing changes until another admin approves it on the Proposals page." }
                }
            } @else {
                div class="notice info" role="status" {
                    strong { "Takes effect when you confirm" }
                    p { "It moves the spread by " (p.moved) " bps, within the " (p.step) " bps one admin may move it: new quotes are priced with it at once." }
                }
            }
            section class="card" aria-labelledby="sample" {
                h2 id="sample" { "A sample quote" }
                p {
                    (view::amount(&s.before.pay)) " paid to a merchant, quoted for " strong { (s.partner) }
                    " in " (s.pair.to_string()) " at the mid rate " strong { (s.before.mid) }
                    " (" (s.before.mid_source) ", as of " (view::time(s.before.mid_as_of)) ")."
                }
                @if s.before.spread_bps == s.after.spread_bps {
                    p class="muted" { "This sample's spread does not change: a more specific spread applies to it. Choose another sample below." }
                }
                div class="compare" {
                    (side("Now", &s.before, "before", "before"))
                    (side("After the change", &s.after, "after", "after"))
                }
                @if let Some(d) = wallet_more.filter(|d| !d.is_zero()) {
                    @let (abs, word) = if d.minor() < 0 { (d.checked_neg(), "less") } else { (d, "more") };
                    p { "After the change the wallet pays " strong { (view::amount(&abs)) " " (word) } " for this payment." }
                }
                details {
                    summary { "Price another sample" }
                    form class="row" method="post" action="/console/spreads/preview" {
                        (self.csrf())
                        (form.hidden())
                        div class="field" {
                            label for="sample-partner" { "Partner" }
                            select id="sample-partner" name="sample_partner" {
                                @for p in &partners { option value=(p) selected[*p == s.partner] { (p) } }
                            }
                        }
                        div class="field" {
                            label for="sample-pair" { "Pair" }
                            select id="sample-pair" name="sample_pair" {
                                @for p in &pairs { option value=(p) selected[*p == s.pair.to_string()] { (p) } }
                            }
                        }
                        div class="field" {
                            label for="sample-amount" { "Amount (CNY)" }
                            input type="text" id="sample-amount" name="sample_amount" value=(s.before.pay.to_major_string()) inputmode="decimal";
                        }
                        button type="submit" class="secondary" { "Price it" }
                    }
                }
            }
            section class="card" aria-labelledby="confirm" {
                h2 id="confirm" { "Confirm" }
                form class="actions" method="post" action="/console/spreads" {
                    (self.csrf())
                    (form.hidden())
                    input type="hidden" name="confirmed" value="yes";
                    button type="submit" id="confirm-spread" {
                        @if second { "Confirm: propose " (after_label) } @else { "Confirm: set " (after_label) }
                    }
                    a class="button secondary" href={ "/console/spreads?" (form_urlencoded::Serializer::new(String::new()).extend_pairs(form.query()).finish()) "#change" } { "Go back and change it" }
                }
            }
        };
        self.page(
            Page::Spreads,
            "Confirm the spread change",
            "Nothing has changed yet.",
            None,
            content,
        )
        .await
    }

    /// `POST /console/spreads`: `treasury.change_spread`, as `PUT /admin/v1/spreads`. Only from
    /// the preview's confirmation; without it, the preview.
    pub async fn set_spread(&self, f: &Fields) -> Resp {
        if f.given("confirmed").is_none() {
            return self.spread_preview(f).await;
        }
        let form = SpreadForm::of(f);
        let done = match self.treasury().change_spread(self.actor, form.change()).await {
            Ok(o) => (StatusCode::OK, outcome_notice(&o, &format!("Spread of {}", form.target()))),
            Err(e) => failed(&e),
        };
        self.spreads(&form.query(), Some(done)).await
    }

    /// `GET /console/positions?from=&to=`: positions per currency, revenue by day, partner and
    /// pair, with a chart per currency.
    pub async fn positions(&self, query: &HashMap<String, String>) -> Resp {
        let today = self.settlement().days().day_of(self.now());
        let day = |name: &str| {
            query.get(name).filter(|t| !t.is_empty()).map(|t| parse_day(t)).transpose()
        };
        let range = match (day("from"), day("to")) {
            (Ok(from), Ok(to)) => {
                let to = to.unwrap_or(today);
                let from = from.unwrap_or_else(|| {
                    to.checked_sub_days(Days::new(REVENUE_DAYS_DEFAULT - 1)).unwrap_or(to)
                });
                let span = (to - from).num_days();
                if from > to {
                    Err("“from” is after “to”".to_owned())
                } else if span >= i64::try_from(REVENUE_DAYS_MAX).unwrap_or(i64::MAX) {
                    Err(format!("at most {REVENUE_DAYS_MAX} days at once"))
                } else {
                    Ok((from, to))
                }
            }
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        };
        let (from, to, done) = match range {
            Ok((f, t)) => (f, t, None),
            Err(why) => {
                let from =
                    today.checked_sub_days(Days::new(REVENUE_DAYS_DEFAULT - 1)).unwrap_or(today);
                let n = Notice::error("Those days cannot be shown", html! { p { (why) } });
                (from, today, Some((StatusCode::BAD_REQUEST, n)))
            }
        };
        let positions = self.treasury().positions().await;
        let revenue = self.treasury().revenue_async(Some(from), Some(to)).await;
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        // Per currency: per partner, per day, revenue in minor units; and totals.
        let mut by_currency: BTreeMap<Currency, BTreeMap<String, BTreeMap<NaiveDate, i64>>> =
            BTreeMap::new();
        let mut totals: BTreeMap<Currency, i64> = BTreeMap::new();
        if let Ok(lines) = &revenue {
            for l in lines {
                let c = l.revenue.currency();
                let slot = by_currency
                    .entry(c)
                    .or_default()
                    .entry(l.partner.clone())
                    .or_default()
                    .entry(l.day)
                    .or_insert(0);
                *slot = slot.saturating_add(l.revenue.minor());
                let t = totals.entry(c).or_insert(0);
                *t = t.saturating_add(l.revenue.minor());
            }
        }
        let content = html! {
            section class="card" aria-labelledby="positions" {
                h2 id="positions" { "Positions" }
                p class="muted" { "Open per currency, from the ledger's running totals, before settlement." }
                @match &positions {
                    Err(e) => { (Notice::refused(e).render()) }
                    Ok(list) if list.is_empty() => { p { "No money has moved yet." } }
                    Ok(list) => {
                        div class="table-wrap" {
                            table id="positions-table" {
                                thead { tr {
                                    th scope="col" { "Currency" }
                                    th scope="col" class="num" { "Partners owe us" }
                                    th scope="col" class="num" { "We owe acquirers" }
                                    th scope="col" class="num" { "Spread revenue" }
                                    th scope="col" class="num" { "Net position" }
                                } }
                                tbody {
                                    @for p in list {
                                        tr {
                                            th scope="row" { (p.currency.code()) }
                                            td class="num" { (view::amount(&p.partners_owe)) }
                                            td class="num" { (view::amount(&p.we_owe_acquirers)) }
                                            td class="num" { (view::amount(&p.spread_revenue)) }
                                            td class="num" { (view::amount(&p.net_position)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section class="card" aria-labelledby="revenue" {
                h2 id="revenue" { "Spread revenue" }
                form class="row" method="get" action="/console/positions" {
                    div class="field" {
                        label for="rev-from" { "From (business day)" }
                        input type="date" id="rev-from" name="from" value=(from.to_string());
                    }
                    div class="field" {
                        label for="rev-to" { "To" }
                        input type="date" id="rev-to" name="to" value=(to.to_string());
                    }
                    button type="submit" class="secondary" { "Show" }
                }
                p class="muted" { (from) " to " (to) ", by the business day settlement uses. At most " (REVENUE_DAYS_MAX) " days at once." }
                @match &revenue {
                    Err(e) => { (Notice::refused(e).render()) }
                    Ok(lines) if lines.is_empty() => { p { "No spread revenue on these days." } }
                    Ok(lines) => {
                        @for (c, partners) in &by_currency {
                            @let series: Vec<chart::Series> = partners.iter().map(|(p, by_day)| chart::Series { label: p.clone(), by_day: by_day.clone() }).collect();
                            @let title = format!("Spread revenue in {} per business day, {} to {}, stacked by partner", c.code(), from, to);
                            figure class="chart" {
                                @if let Some(svg) = chart::revenue_svg(*c, &days, &series, &title) { (PreEscaped(svg)) }
                                figcaption {
                                    (title) ". Total " (view::minor(*c, totals.get(c).copied().unwrap_or(0))) "."
                                    ul class="legend" {
                                        @for (k, s) in series.iter().enumerate() {
                                            li { span class={ "swatch sw" (k % chart::PALETTE.len()) } aria-hidden="true" {} (s.label) }
                                        }
                                    }
                                }
                            }
                        }
                        div class="table-wrap" {
                            table id="revenue-table" {
                                thead { tr {
                                    th scope="col" { "Business day" }
                                    th scope="col" { "Partner" }
                                    th scope="col" { "Pair" }
                                    th scope="col" class="num" { "Spread revenue" }
                                    th scope="col" class="num" { "Ledger entries" }
                                } }
                                tbody {
                                    @for l in lines.iter().rev() {
                                        tr {
                                            td { (l.day) }
                                            td { (l.partner) }
                                            td { (l.pair) }
                                            td class="num" { (view::amount(&l.revenue)) }
                                            td class="num" { (l.entries) }
                                        }
                                    }
                                }
                                tfoot {
                                    @for (c, t) in &totals {
                                        tr { th scope="row" colspan="3" { "Total in " (c.code()) } td class="num" { (view::minor(*c, *t)) } td {} }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        self.page(
            Page::Positions,
            "Positions and revenue",
            "What we hold and owe in each currency, and the spread earned.",
            done,
            content,
        )
        .await
    }
}
