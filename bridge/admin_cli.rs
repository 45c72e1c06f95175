//! `qrbridge admin …`: the admin API from the command line, with an admin certificate.
//! Tables for people, `--json` for scripts (the API's answer as it came).
//!
//! Exit codes: 0 done; 1 the work could not be done (connection, TLS, server error); 2 the
//! request was refused as bad (4xx: the error's code and message are printed); 3 a
//! reconciliation found differences.
//!
//! Changes under dual control (risk rules, blocklists, funds, and spreads or rates past their
//! step) print the proposal they made; another admin approves it with
//! `qrbridge admin --as admin-2 proposals approve <id>` (`--as` picks `<pki>/<name>.crt` and
//! `.key`; `--cert`/`--key` name any other files).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// How to reach the admin API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin listener and the admin certificate (shared by `qrbridge admin` and
/// `qrbridge store backup`).
#[derive(Debug, Args)]
pub struct Connection {
    /// The admin listener.
    #[arg(long, default_value = "https://127.0.0.1:8444")]
    pub url: String,
    /// Folder with `admin.crt`, `admin.key` and `ca.crt` (the development PKI by default).
    #[arg(long, default_value = "var/pki")]
    pub pki: PathBuf,
    /// Act as this admin: its certificate and key are `<pki>/<ADMIN>.crt` and `.key` (the
    /// development PKI has `admin` and `admin-2`; a proposal needs a second admin to approve).
    #[arg(long = "as", value_name = "ADMIN", global = true)]
    pub as_admin: Option<String>,
    /// The admin certificate (PEM); default `<pki>/admin.crt`.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its key (PEM); default `<pki>/admin.key`.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The CA of the server's certificate; default `<pki>/ca.crt`.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Mid rates and their sources.
    #[command(subcommand)]
    Rates(RatesCommand),
    /// Spreads in basis points.
    #[command(subcommand)]
    Spreads(SpreadsCommand),
    /// Open position per currency, from the ledger.
    Positions,
    /// Spread revenue by business day, partner and pair.
    Revenue {
        /// First day (YYYY-MM-DD).
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD).
        #[arg(long)]
        to: Option<String>,
    },
    /// Daily statements.
    #[command(subcommand)]
    Settlement(SettlementCommand),
    /// Reconcile an acquirer's CSV for a day; exits 3 when anything differs.
    Reconcile {
        /// The business day (YYYY-MM-DD).
        day: String,
        /// The acquirer's id.
        acquirer: String,
        /// The acquirer's file: `instruction_id,amount,currency,status,refund_ids`.
        file: PathBuf,
    },
    /// The audit log, its hash chain verified; exits 1 when the chain is broken.
    Audit,
    /// Make the daemon read its configuration again and put it in force, all or nothing (as
    /// SIGHUP does); exits 2 with every reason when it is refused.
    Reload,
    /// Parked webhook events and the resolver's open work.
    #[command(subcommand)]
    Ops(OpsCommand),
    /// Changes waiting for a second admin (dual control): list (the default), show, approve,
    /// reject (its proposer withdraws it).
    Proposals {
        #[command(subcommand)]
        command: Option<ProposalsCommand>,
    },
    /// Risk rules, blocklists, funds received and decisions; every change is a proposal for a
    /// second admin to approve. `show` is the default.
    Risk {
        #[command(subcommand)]
        command: Option<RiskCommand>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProposalsCommand {
    /// Proposals, newest first.
    List {
        /// Only those `pending`, `approved`, `rejected`, `withdrawn` or `expired`.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1 to 1000; 100 by default).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One proposal, with its change.
    Show { id: String },
    /// Approve a proposal another admin made: it takes effect now (audited with both names).
    Approve {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject a proposal (or withdraw your own).
    Reject {
        id: String,
        /// Why, for the proposal and the audit log.
        #[arg(long)]
        note: Option<String>,
    },
}

/// What funds a partner sent.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FundsKindArg {
    /// Prefunding paid in advance.
    #[value(name = "top_up")]
    TopUp,
    /// A settlement the partner paid.
    #[value(name = "settlement_received")]
    SettlementReceived,
}

#[derive(Debug, Subcommand)]
pub enum RiskCommand {
    /// The rules in force (the configuration's or admins'), blocklists, exposures, funds.
    Show,
    /// Propose rules in place of the configuration's, from a file: TOML with the keys of
    /// `[risk.rules]` (`near_limit_bps`, `partners`, `merchants`, `mccs`, …), or the same as JSON.
    Rules { file: PathBuf },
    /// Propose putting the configuration's rules back in force.
    Reset,
    /// Propose adding entries to a blocklist (`merchants`, `mccs` or `acquirers`).
    Block {
        list: String,
        #[arg(required = true)]
        entries: Vec<String>,
    },
    /// Propose removing entries an admin added to a blocklist.
    Unblock {
        list: String,
        #[arg(required = true)]
        entries: Vec<String>,
    },
    /// Propose recording funds a partner sent: AMOUNT in major units of CURRENCY (its wallet
    /// currency), e.g. `funds partner-demo 100000.00 PHP --kind top_up --reference BANK-123`.
    Funds {
        partner: String,
        amount: String,
        currency: String,
        #[arg(long, value_enum)]
        kind: FundsKindArg,
        /// The bank's or the partner's reference for the transfer.
        #[arg(long)]
        reference: String,
    },
    /// Risk decisions kept (refusals and flags), oldest first.
    Decisions {
        /// From this instant (RFC 3339); default a day before `--to`.
        #[arg(long)]
        from: Option<String>,
        /// Up to this instant (RFC 3339); default now.
        #[arg(long)]
        to: Option<String>,
        /// At most this many (1 to 1000; 100 by default).
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RatesCommand {
    /// Every rate held: source, age, whether it may be quoted; then every source's last read.
    List,
    /// Set one mid rate by hand.
    Set {
        base: String,
        quote: String,
        rate: String,
        /// RFC 3339; default now.
        #[arg(long)]
        as_of: Option<String>,
        /// Take it even when it moves more than `fx.rate_move_bps_max` from the held rate
        /// (audited as `rates.force`).
        #[arg(long)]
        force: bool,
    },
    /// Load rates from a CSV file (`base,quote,rate,as_of`), all or none.
    Load {
        file: PathBuf,
        /// Take them even when they move more than `fx.rate_move_bps_max` (audited).
        #[arg(long)]
        force: bool,
    },
    /// Read a configured rate source now.
    Refresh { source: String },
}

#[derive(Debug, Subcommand)]
pub enum SpreadsCommand {
    /// Default, bounds and overrides.
    List,
    /// Set a spread: the default, or for a partner, a pair, or both.
    Set {
        bps: String,
        #[arg(long)]
        partner: Option<String>,
        /// `CNY/PHP` as quotes show it: CNY, then the wallet currency.
        #[arg(long)]
        pair: Option<String>,
    },
    /// Remove an override.
    Clear {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        pair: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettlementCommand {
    /// Close a day: write its statements and show the summary.
    Run { day: String },
    /// Download one of a day's files (to stdout, or --out, made readable to its owner only).
    Download {
        day: String,
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Webhook events parked after their maximum age.
    Parked,
    /// Put a parked event back in the outbox.
    Replay { event_id: String },
    /// Remove parked events for good (audited as `webhooks.purge_parked`, listing each).
    #[command(group(clap::ArgGroup::new("cutoff").required(true)))]
    Purge {
        /// Those parked longer ago than this: seconds, or a number with `s`, `m`, `h` or `d`
        /// (`7d`, `36h`); `0` is every event parked so far.
        #[arg(long, group = "cutoff", value_parser = parse_age)]
        older_than: Option<u64>,
        /// Those parked before this instant (RFC 3339).
        #[arg(long, group = "cutoff")]
        before: Option<String>,
        /// At most this many (1 to 1000, the default).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Payments the resolver still has work for.
    Resolver,
    /// Close an ATTENTION task settled out of band (audited).
    Settle {
        payment_id: String,
        /// What was done, for the audit log.
        #[arg(long)]
        note: String,
    },
}

/// The admin API over mTLS.
pub(crate) struct Client {
    http: qrbridge_adapters::https::HttpsClient,
    base: String,
    /// The longest wait for one answer.
    answer_within: Duration,
}

/// What went wrong, and the exit code it gives.
pub(crate) enum Failure {
    /// Connection, TLS, a server error: 1.
    Work(String),
    /// The request was refused as bad: 2.
    Refused(String),
}

impl Failure {
    /// Prints the failure and gives its exit code.
    pub(crate) fn exit(self) -> ExitCode {
        match self {
            Failure::Work(m) => {
                eprintln!("error: {m}");
                ExitCode::from(1)
            }
            Failure::Refused(m) => {
                eprintln!("refused: {m}");
                ExitCode::from(2)
            }
        }
    }
}

impl Client {
    /// A client of the admin API `a` names, waiting at most `answer_within` for each answer.
    pub(crate) fn new(a: &Connection, answer_within: Duration) -> Result<Client, Failure> {
        let file =
            |given: &Option<PathBuf>, name: &str| given.clone().unwrap_or_else(|| a.pki.join(name));
        let me = a.as_admin.as_deref().unwrap_or("admin");
        let (cert, key, ca) = (
            file(&a.cert, &format!("{me}.crt")),
            file(&a.key, &format!("{me}.key")),
            file(&a.ca, "ca.crt"),
        );
        let tls = (|| -> Result<rustls::ClientConfig, crate::tls::TlsError> {
            Ok(rustls::ClientConfig::builder()
                .with_root_certificates(crate::tls::roots(&[ca.as_path()])?)
                .with_client_auth_cert(
                    crate::tls::load_certs(&cert)?,
                    crate::tls::load_key(&key)?,
                )?)
        })()
        .map_err(|e| Failure::Work(format!("admin certificate: {e}")))?;
        Ok(Client {
            http: qrbridge_adapters::https::client(tls, Duration::from_secs(5)),
            base: a.url.trim_end_matches('/').to_owned(),
            answer_within,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(Bytes, bool), Failure> {
        let (_, bytes, is_json) = self.send_with_status(method, path, body).await?;
        Ok((bytes, is_json))
    }

    /// Sends a request: a success's status, body and whether it is JSON; an error answer as a
    /// [`Failure`] (4xx refused, the rest failed).
    async fn send_with_status(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(http::StatusCode, Bytes, bool), Failure> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        let bytes = match body {
            Some((kind, b)) => {
                req = req.header(http::header::CONTENT_TYPE, kind);
                b
            }
            None => Vec::new(),
        };
        let req =
            req.body(Full::new(Bytes::from(bytes))).map_err(|e| Failure::Work(e.to_string()))?;
        let res = tokio::time::timeout(self.answer_within, self.http.request(req))
            .await
            .map_err(|_| {
                let s = self.answer_within.as_secs();
                Failure::Work(format!("the admin API did not answer in {s} s"))
            })?
            .map_err(|e| Failure::Work(format!("{}: {e}", self.base)))?;
        let status = res.status();
        let is_json = res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body =
            res.into_body().collect().await.map_err(|e| Failure::Work(e.to_string()))?.to_bytes();
        if status.is_success() {
            return Ok((status, body, is_json));
        }
        let err: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let text = format!(
            "{} {}: {}",
            status.as_u16(),
            err["error"]["code"].as_str().unwrap_or("ERROR"),
            err["error"]["message"]
                .as_str()
                .unwrap_or_else(|| std::str::from_utf8(&body).unwrap_or(""))
        );
        Err(if status.is_client_error() { Failure::Refused(text) } else { Failure::Work(text) })
    }

    /// Sends `body` as JSON; the answer as JSON, with its status.
    pub(crate) async fn json_with_status(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(http::StatusCode, Value), Failure> {
        let body =
            body.map(|b| ("application/json", serde_json::to_vec(&b).expect("JSON of plain data")));
        let (status, bytes, _) = self.send_with_status(method, path, body).await?;
        let v = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Work(format!("the answer is not JSON: {e}")))?;
        Ok((status, v))
    }

    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let body =
            body.map(|b| ("application/json", serde_json::to_vec(&b).expect("JSON of plain data")));
        let (bytes, _) = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Work(format!("the answer is not JSON: {e}")))
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An amount in the API's form (`{"currency", "value"}` in minor units) as major-unit text.
fn money(v: &Value) -> String {
    let (Some(c), Some(minor)) = (v["currency"].as_str(), v["value"].as_str()) else {
        return s(v);
    };
    match (qrbridge_fx::Currency::from_code(c), minor.trim_start_matches('-').parse::<i64>()) {
        (Ok(cur), Ok(m)) => {
            let m = if minor.starts_with('-') { -m } else { m };
            qrbridge_fx::Amount::from_minor(cur, m)
                .map(|a| format!("{} {c}", a.to_major_string()))
                .unwrap_or_else(|_| format!("{minor} (minor) {c}"))
        }
        _ => format!("{minor} (minor) {c}"),
    }
}

fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v[key].as_array().into_iter().flatten()
}

fn print(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Runs one admin command.
pub async fn run(a: AdminArgs) -> ExitCode {
    let result = async {
        let c = Client::new(&a.connection, Duration::from_secs(120))?;
        execute(&c, &a).await
    }
    .await;
    result.unwrap_or_else(Failure::exit)
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))
}

async fn execute(c: &Client, a: &AdminArgs) -> Result<ExitCode, Failure> {
    let show = |v: &Value, human: String| {
        print(&if a.json {
            serde_json::to_string_pretty(v).expect("JSON of plain data")
        } else {
            human
        });
    };
    match &a.command {
        AdminCommand::Rates(RatesCommand::List) => {
            let v = c.json(Method::GET, "/admin/v1/rates", None).await?;
            let rates = table(
                &["pair", "rate", "source", "as of", "age s", "fresh"],
                items(&v, "rates").map(|r| {
                    vec![
                        format!("{}/{}", s(&r["base"]), s(&r["quote"])),
                        s(&r["rate"]),
                        s(&r["source"]),
                        s(&r["as_of"]),
                        s(&r["age_s"]),
                        s(&r["fresh"]),
                    ]
                }),
            );
            let sources = table(
                &["source", "kind", "location", "poll s", "last good read", "rates", "last error"],
                items(&v, "sources").map(|r| {
                    vec![
                        s(&r["id"]),
                        s(&r["kind"]),
                        s(&r["location"]),
                        s(&r["poll_s"]),
                        s(&r["last_ok_at"]),
                        s(&r["rates"]),
                        s(&r["last_error"]),
                    ]
                }),
            );
            show(&v, format!("{rates}\n{sources}"));
        }
        AdminCommand::Rates(RatesCommand::Set { base, quote, rate, as_of, force }) => {
            let body = json!({ "rates": [{ "base": base, "quote": quote, "rate": rate, "as_of": as_of }], "force": force });
            let v = c.json(Method::POST, "/admin/v1/rates", Some(body)).await?;
            show(&v, rates_taken(&v));
        }
        AdminCommand::Rates(RatesCommand::Load { file, force }) => {
            let path = if *force { "/admin/v1/rates?force=true" } else { "/admin/v1/rates" };
            let (b, _) = c.send(Method::POST, path, Some(("text/csv", read(file)?))).await?;
            let v: Value = serde_json::from_slice(&b).map_err(|e| Failure::Work(e.to_string()))?;
            show(&v, rates_taken(&v));
        }
        AdminCommand::Rates(RatesCommand::Refresh { source }) => {
            let v = c
                .json(Method::POST, &format!("/admin/v1/rates/sources/{source}/refresh"), None)
                .await?;
            let refused: Vec<String> =
                items(&v, "refused").map(|r| format!("\n  refused: {}", s(r))).collect();
            show(
                &v,
                format!(
                    "{}: {} rates taken (audit #{}){}",
                    s(&v["source"]),
                    s(&v["taken"]),
                    s(&v["audit_seq"]),
                    refused.concat()
                ),
            );
        }
        AdminCommand::Spreads(cmd) => {
            let v = match cmd {
                SpreadsCommand::List => c.json(Method::GET, "/admin/v1/spreads", None).await?,
                SpreadsCommand::Set { bps, partner, pair } => {
                    let body = json!({ "partner": partner, "pair": pair, "bps": bps });
                    c.json(Method::PUT, "/admin/v1/spreads", Some(body)).await?
                }
                SpreadsCommand::Clear { partner, pair } => {
                    let body = json!({ "partner": partner, "pair": pair, "bps": null });
                    c.json(Method::PUT, "/admin/v1/spreads", Some(body)).await?
                }
            };
            if v.get("proposal").is_some() {
                show(&v, proposed_text(&v));
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![vec!["*".into(), "*".into(), s(&v["default_bps"])]];
            rows.extend(items(&v, "overrides").map(|o| {
                let any = |x: &Value| if x.is_null() { "*".to_owned() } else { s(x) };
                vec![any(&o["partner"]), any(&o["pair"]), s(&o["bps"])]
            }));
            let t = table(&["partner", "pair", "bps"], rows);
            show(&v, format!("{t}\nbounds: {} to {} bps", s(&v["min_bps"]), s(&v["max_bps"])));
        }
        AdminCommand::Positions => {
            let v = c.json(Method::GET, "/admin/v1/positions", None).await?;
            let t = table(
                &["currency", "partners owe", "we owe acquirers", "spread revenue", "net position"],
                items(&v, "positions").map(|p| {
                    vec![
                        s(&p["currency"]),
                        money(&p["partners_owe"]),
                        money(&p["we_owe_acquirers"]),
                        money(&p["spread_revenue"]),
                        money(&p["net_position"]),
                    ]
                }),
            );
            show(&v, format!("{t}\nas of {}", s(&v["as_of"])));
        }
        AdminCommand::Revenue { from, to } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(f) = from {
                q.append_pair("from", f);
            }
            if let Some(t) = to {
                q.append_pair("to", t);
            }
            let v = c.json(Method::GET, &format!("/admin/v1/revenue?{}", q.finish()), None).await?;
            let t = table(
                &["day", "partner", "pair", "revenue", "entries"],
                items(&v, "revenue").map(|r| {
                    vec![
                        s(&r["day"]),
                        s(&r["partner"]),
                        s(&r["pair"]),
                        money(&r["revenue"]),
                        s(&r["entries"]),
                    ]
                }),
            );
            show(&v, t);
        }
        AdminCommand::Settlement(SettlementCommand::Run { day }) => {
            let v = c.json(Method::POST, &format!("/admin/v1/settlement/{day}"), None).await?;
            show(&v, settlement_tables(&v));
        }
        AdminCommand::Settlement(SettlementCommand::Download { day, name, out }) => {
            let (bytes, _) = c
                .send(Method::GET, &format!("/admin/v1/settlement/{day}/files/{name}"), None)
                .await?;
            match out {
                Some(path) => write_private(path, &bytes)
                    .map_err(|e| Failure::Work(format!("{}: {e}", path.display())))?,
                None => {
                    use std::io::Write;
                    let _ = std::io::stdout().lock().write_all(&bytes);
                }
            }
        }
        AdminCommand::Reconcile { day, acquirer, file } => {
            let body = Some(("text/csv", read(file)?));
            let (b, _) = c
                .send(
                    Method::POST,
                    &format!("/admin/v1/settlement/{day}/reconciliation/{acquirer}"),
                    body,
                )
                .await?;
            let v: Value = serde_json::from_slice(&b).map_err(|e| Failure::Work(e.to_string()))?;
            let differing: Vec<Vec<String>> = items(&v, "lines")
                .filter(|l| l["verdicts"] != json!(["MATCHED"]))
                .map(|l| {
                    let verdicts: Vec<String> = items(l, "verdicts").map(s).collect();
                    vec![
                        s(&l["instruction_id"]),
                        verdicts.join(", "),
                        format!(
                            "{} {} {}",
                            s(&l["bridge_amount"]),
                            s(&l["bridge_currency"]),
                            s(&l["bridge_status"])
                        ),
                        format!(
                            "{} {} {}",
                            s(&l["acquirer_amount"]),
                            s(&l["acquirer_currency"]),
                            s(&l["acquirer_status"])
                        ),
                        s(&l["note"]),
                    ]
                })
                .collect();
            let counts = v["counts"]
                .as_object()
                .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "));
            let human = if differing.is_empty() {
                format!("{day} {acquirer}: clean ({} instructions matched)", s(&v["instructions"]))
            } else {
                let t =
                    table(&["instruction", "differences", "bridge", "acquirer", "note"], differing);
                format!("{t}\n{day} {acquirer}: {}", counts.unwrap_or_default())
            };
            show(&v, human);
            if v["clean"] != json!(true) {
                return Ok(ExitCode::from(3));
            }
        }
        AdminCommand::Reload => {
            let v = c.json(Method::POST, "/admin/v1/reload", Some(json!({}))).await?;
            let changed: Vec<String> = items(&v, "changed").map(s).collect();
            let text = if changed.is_empty() {
                format!("reloaded (nothing changed; audit record {})", s(&v["audit_seq"]))
            } else {
                format!("reloaded: {} (audit record {})", changed.join(", "), s(&v["audit_seq"]))
            };
            show(&v, text);
        }
        AdminCommand::Audit => {
            let v = c.json(Method::GET, "/admin/v1/audit", None).await?;
            let t = table(
                &["#", "at", "actor", "action", "target", "before", "after"],
                items(&v, "records").map(|r| {
                    vec![
                        s(&r["seq"]),
                        s(&r["at"]),
                        s(&r["actor"]),
                        s(&r["action"]),
                        s(&r["target"]),
                        s(&r["before"]),
                        s(&r["after"]),
                    ]
                }),
            );
            let chain = &v["chain"];
            let verdict = if chain["ok"] == json!(true) {
                format!("chain verified: {} records", s(&chain["records"]))
            } else {
                format!(
                    "CHAIN BROKEN at record {}: {}",
                    s(&chain["broken_at"]),
                    s(&chain["reason"])
                )
            };
            show(&v, format!("{t}\n{verdict}"));
            if chain["ok"] != json!(true) {
                return Ok(ExitCode::from(1));
            }
        }
        AdminCommand::Ops(OpsCommand::Parked) => {
            let v = c.json(Method::GET, "/admin/v1/webhooks/parked", None).await?;
            let t = table(
                &["event", "type", "partner", "payment", "parked at", "attempts", "last error"],
                items(&v, "events").map(|e| {
                    vec![
                        s(&e["event_id"]),
                        s(&e["type"]),
                        s(&e["partner"]),
                        s(&e["payment_id"]),
                        s(&e["parked_at"]),
                        s(&e["attempts"]),
                        s(&e["last_error"]),
                    ]
                }),
            );
            show(&v, t);
        }
        AdminCommand::Ops(OpsCommand::Replay { event_id }) => {
            let v = c
                .json(Method::POST, &format!("/admin/v1/webhooks/parked/{event_id}/replay"), None)
                .await?;
            show(&v, format!("{event_id} replayed"));
        }
        AdminCommand::Ops(OpsCommand::Purge { older_than, before, limit }) => {
            let mut body = match (older_than, before) {
                (Some(s), _) => json!({ "older_than_s": s }),
                (None, b) => json!({ "parked_before": b }),
            };
            if let Some(n) = limit {
                body["limit"] = json!(n);
            }
            let v = c.json(Method::POST, "/admin/v1/webhooks/parked/purge", Some(body)).await?;
            let audit = if v["audit_seq"].is_null() {
                String::new()
            } else {
                format!(" (audit #{})", s(&v["audit_seq"]))
            };
            let more = match v["remaining"].as_u64() {
                Some(n) if n > 0 => format!("; {n} more parked before it: run again"),
                _ => String::new(),
            };
            show(
                &v,
                format!(
                    "{} parked events purged, parked before {}{audit}{more}",
                    s(&v["purged"]),
                    s(&v["parked_before"])
                ),
            );
        }
        AdminCommand::Ops(OpsCommand::Resolver) => {
            let v = c.json(Method::GET, "/admin/v1/resolver", None).await?;
            let t = table(
                &["payment", "status", "state", "task", "due", "attempt", "refusals", "last"],
                items(&v, "open").map(|w| {
                    vec![
                        s(&w["payment_id"]),
                        s(&w["status"]),
                        s(&w["state"]),
                        s(&w["task"]),
                        s(&w["due"]),
                        s(&w["attempt"]),
                        s(&w["refusals"]),
                        s(&w["last_error"]),
                    ]
                }),
            );
            show(&v, t);
        }
        AdminCommand::Ops(OpsCommand::Settle { payment_id, note }) => {
            let body = serde_json::json!({ "note": note });
            let v = c
                .json(Method::POST, &format!("/admin/v1/resolver/{payment_id}/settle"), Some(body))
                .await?;
            show(&v, format!("{payment_id} settled"));
        }
        AdminCommand::Proposals { command } => {
            let list = ProposalsCommand::List { state: None, limit: None };
            proposals(c, command.as_ref().unwrap_or(&list), &show).await?;
        }
        AdminCommand::Risk { command } => {
            risk(c, command.as_ref().unwrap_or(&RiskCommand::Show), &show).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A path segment as given (ids and list names are checked by the daemon).
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn proposals(
    c: &Client,
    cmd: &ProposalsCommand,
    show: &impl Fn(&Value, String),
) -> Result<(), Failure> {
    match cmd {
        ProposalsCommand::List { state, limit } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(st) = state {
                q.append_pair("state", st);
            }
            if let Some(n) = limit {
                q.append_pair("limit", &n.to_string());
            }
            let path = format!("/admin/v1/proposals?{}", q.finish());
            let v = c.json(Method::GET, &path, None).await?;
            let t = table(
                &[
                    "proposal",
                    "kind",
                    "state",
                    "proposed by",
                    "created",
                    "expires",
                    "decided by",
                    "why",
                ],
                items(&v, "proposals").map(|p| {
                    vec![
                        s(&p["proposal_id"]),
                        s(&p["kind"]),
                        s(&p["state"]),
                        s(&p["proposed_by"]),
                        s(&p["created_at"]),
                        s(&p["expires_at"]),
                        s(&p["decided_by"]),
                        s(&p["why"]),
                    ]
                }),
            );
            show(&v, t);
        }
        ProposalsCommand::Show { id } => {
            let v =
                c.json(Method::GET, &format!("/admin/v1/proposals/{}", segment(id)), None).await?;
            show(&v, proposal_text(&v));
        }
        ProposalsCommand::Approve { id, note } => {
            let path = format!("/admin/v1/proposals/{}/approve", segment(id));
            let v = c.json(Method::POST, &path, Some(json!({ "note": note }))).await?;
            let audit = s(&v["result"]["audit_seq"]);
            show(
                &v,
                format!("{}\napproved: in force (audit #{audit})", proposal_text(&v["proposal"])),
            );
        }
        ProposalsCommand::Reject { id, note } => {
            let path = format!("/admin/v1/proposals/{}/reject", segment(id));
            let v = c.json(Method::POST, &path, Some(json!({ "note": note }))).await?;
            let p = &v["proposal"];
            show(
                &v,
                format!("{}\n{} (audit #{})", proposal_text(p), s(&p["state"]), s(&v["audit_seq"])),
            );
        }
    }
    Ok(())
}

async fn risk(
    c: &Client,
    cmd: &RiskCommand,
    show: &impl Fn(&Value, String),
) -> Result<(), Failure> {
    let blocklist = |list: &str, add: &[String], remove: &[String]| {
        (
            format!("/admin/v1/risk/blocklists/{}", segment(list)),
            json!({ "add": add, "remove": remove }),
        )
    };
    let v = match cmd {
        RiskCommand::Show => {
            let v = c.json(Method::GET, "/admin/v1/risk", None).await?;
            show(&v, risk_text(&v));
            return Ok(());
        }
        RiskCommand::Decisions { from, to, limit } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, val) in [("from", from), ("to", to)] {
                if let Some(x) = val {
                    q.append_pair(k, x);
                }
            }
            if let Some(n) = limit {
                q.append_pair("limit", &n.to_string());
            }
            let path = format!("/admin/v1/risk/decisions?{}", q.finish());
            let v = c.json(Method::GET, &path, None).await?;
            let t = table(
                &["at", "partner", "outcome", "reasons", "rules", "CNY", "wallet", "over by"],
                items(&v, "decisions").map(|d| {
                    let list = |k: &str| items(d, k).map(s).collect::<Vec<_>>().join(", ");
                    vec![
                        s(&d["at"]),
                        s(&d["partner"]),
                        s(&d["outcome"]),
                        list("reasons"),
                        list("rules"),
                        money(&d["pay"]),
                        money(&d["wallet"]),
                        money(&d["over_by"]),
                    ]
                }),
            );
            let more = if v["more"] == json!(true) {
                format!("\nmore: continue with --from {}", s(&v["next_from"]))
            } else {
                String::new()
            };
            show(&v, format!("{t}\n{} to {}{more}", s(&v["from"]), s(&v["to"])));
            return Ok(());
        }
        RiskCommand::Rules { file } => {
            let text = read(file)?;
            let rules: Value = if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
                // The keys of [risk.rules], as in the configuration file.
                let text = std::str::from_utf8(&text)
                    .map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
                let rules: qrbridge_config::RiskRules = toml::from_str(text)
                    .map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
                serde_json::to_value(rules).expect("JSON of plain data")
            } else {
                serde_json::from_slice(&text)
                    .map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?
            };
            c.json(Method::PUT, "/admin/v1/risk/rules", Some(rules)).await?
        }
        RiskCommand::Reset => c.json(Method::DELETE, "/admin/v1/risk/rules", None).await?,
        RiskCommand::Block { list, entries } => {
            let (path, body) = blocklist(list, entries, &[]);
            c.json(Method::POST, &path, Some(body)).await?
        }
        RiskCommand::Unblock { list, entries } => {
            let (path, body) = blocklist(list, &[], entries);
            c.json(Method::POST, &path, Some(body)).await?
        }
        RiskCommand::Funds { partner, amount, currency, kind, reference } => {
            let cur = qrbridge_fx::Currency::from_code(currency)
                .map_err(|e| Failure::Refused(format!("{currency:?}: {e}")))?;
            let a = qrbridge_fx::Amount::from_major_str(cur, amount)
                .map_err(|e| Failure::Refused(format!("{amount:?} {currency}: {e}")))?;
            let kind = match kind {
                FundsKindArg::TopUp => "top_up",
                FundsKindArg::SettlementReceived => "settlement_received",
            };
            let body =
                json!({ "partner": partner, "amount": a, "kind": kind, "reference": reference });
            c.json(Method::POST, "/admin/v1/risk/funds", Some(body)).await?
        }
    };
    show(&v, proposed_text(&v));
    Ok(())
}

/// A proposal as people read it.
fn proposal_text(p: &Value) -> String {
    let decided = if p["decided_by"].is_null() {
        String::new()
    } else {
        format!("\ndecided by {} at {}", s(&p["decided_by"]), s(&p["decided_at"]))
    };
    let note =
        if p["note"].is_null() { String::new() } else { format!("\nnote: {}", s(&p["note"])) };
    format!(
        "{} ({}) {}: {}\nproposed by {} at {}, expires {}{decided}{note}\nchange: {}",
        s(&p["proposal_id"]),
        s(&p["kind"]),
        s(&p["state"]),
        s(&p["why"]),
        s(&p["proposed_by"]),
        s(&p["created_at"]),
        s(&p["expires_at"]),
        serde_json::to_string(&p["change"]).unwrap_or_default(),
    )
}

/// A change proposed (`202`): what it is, and how another admin approves it.
fn proposed_text(v: &Value) -> String {
    let p = &v["proposal"];
    format!(
        "{}\nnothing changes until another admin approves it (audit #{}):\n  qrbridge admin --as <another admin> proposals approve {}",
        proposal_text(p),
        s(&v["audit_seq"]),
        s(&p["proposal_id"])
    )
}

fn risk_text(v: &Value) -> String {
    let rules = serde_json::to_string_pretty(&v["rules"]).unwrap_or_default();
    let lists = &v["blocklists"];
    let admin_lists = ["merchants", "mccs", "acquirers"]
        .iter()
        .map(|k| {
            let added: Vec<String> = items(&lists["admin"], k).map(s).collect();
            format!(
                "{k}: {} from files, added by admins: {}",
                s(&lists["files"][k]),
                added.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let exposures = table(
        &[
            "partner",
            "currency",
            "owed",
            "in flight",
            "booked",
            "funds received",
            "cap",
            "headroom",
        ],
        items(v, "exposures").map(|e| {
            vec![
                s(&e["partner"]),
                s(&e["currency"]),
                s(&e["owed"]),
                s(&e["in_flight"]),
                s(&e["booked_since_read"]),
                s(&e["funds_received"]),
                s(&e["cap"]),
                s(&e["headroom"]),
            ]
        }),
    );
    let funds = table(
        &["partner", "currency", "funds received"],
        items(v, "funds").map(|f| vec![s(&f["partner"]), s(&f["currency"]), s(&f["received"])]),
    );
    format!("rules ({}):\n{rules}\n{admin_lists}\n{exposures}\n{funds}", s(&v["rules_source"]))
}

/// An age for `--older-than`: whole seconds, or a whole number of `s`, `m`, `h` or `d`.
fn parse_age(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: use seconds, or a number with s, m, h or d (7d)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: use seconds, or a number with s, m, h or d (7d)"))?;
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

/// Writes a downloaded settlement file readable to its owner only (`0600`), as the daemon keeps
/// it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::settlement::FILE_MODE)
        .open(path)?;
    // An existing file keeps its mode on open: narrow it too.
    f.set_permissions(std::fs::Permissions::from_mode(crate::settlement::FILE_MODE))?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn rates_taken(v: &Value) -> String {
    if v.get("proposal").is_some() {
        return proposed_text(v);
    }
    let t = table(
        &["pair", "rate", "as of", "source", "taken"],
        items(v, "rates").map(|r| {
            vec![
                format!("{}/{}", s(&r["base"]), s(&r["quote"])),
                s(&r["rate"]),
                s(&r["as_of"]),
                s(&r["source"]),
                s(&r["taken"]),
            ]
        }),
    );
    format!("{t}\naudit #{}", s(&v["audit_seq"]))
}

fn settlement_tables(v: &Value) -> String {
    let partners = table(
        &["partner", "currency", "payments", "total", "refunds", "total", "net due"],
        items(v, "partners").map(|p| {
            vec![
                s(&p["partner"]),
                s(&p["currency"]),
                s(&p["payments"]),
                money(&p["payments_total"]),
                s(&p["refunds"]),
                money(&p["refunds_total"]),
                money(&p["net_due"]),
            ]
        }),
    );
    let acquirers = table(
        &["acquirer", "instructions", "total", "refunds", "total", "net payable"],
        items(v, "acquirers").map(|a| {
            vec![
                s(&a["acquirer"]),
                s(&a["instructions"]),
                money(&a["instructions_total"]),
                s(&a["refunds"]),
                money(&a["refunds_total"]),
                money(&a["net_payable"]),
            ]
        }),
    );
    let revenue = table(
        &["partner", "pair", "payments", "refunds", "spread revenue"],
        items(v, "spread_revenue").map(|r| {
            vec![
                s(&r["partner"]),
                s(&r["pair"]),
                s(&r["payments"]),
                s(&r["refunds"]),
                money(&r["spread_revenue"]),
            ]
        }),
    );
    let doubt = items(v, "in_doubt").count();
    format!(
        "business day {} ({} to {}, {})\n{partners}\n{acquirers}\n{revenue}\nin doubt (listed, not settled): {doubt}\nfiles: {}",
        s(&v["day"]), s(&v["from"]), s(&v["to"]), s(&v["time_zone"]),
        v["files"].as_object().map(|f| f.keys().cloned().collect::<Vec<_>>().join(", ")).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_seconds() {
        assert_eq!(parse_age("3600"), Ok(3_600));
        assert_eq!(parse_age("0"), Ok(0));
        assert_eq!(parse_age("90m"), Ok(5_400));
        assert_eq!(parse_age("36h"), Ok(129_600));
        assert_eq!(parse_age("7d"), Ok(604_800));
        assert_eq!(parse_age("45s"), Ok(45));
        for bad in ["", "d", "7w", "-1", "1.5h", "7 d", "1d2h", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }
}
