//! The `qrbridge` command line.

use std::path::{Path, PathBuf};

use qrbridge_adapters::decode::{DecodeLimits, WarningCode};

use crate::api::{DecodeAnswer, ErrorBody, ErrorDetail};
use crate::ops::systemd;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qrbridge_config::LogFormat;

/// qrbridge: overseas e-wallets paying domestic Chinese merchants by QR code.
#[derive(Debug, Parser)]
#[command(name = "qrbridge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon. With no --config: everything on loopback under --data-dir, a generated
    /// development PKI, and the in-process sandbox acquirer.
    Serve {
        /// A configuration file; without it the embedded defaults are used.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the embedded default keeps its data (sled, PKI).
        #[arg(long, default_value = "var")]
        data_dir: PathBuf,
        /// The partner API's address (embedded default only).
        #[arg(long, default_value = "127.0.0.1:8443")]
        partner_addr: std::net::SocketAddr,
        /// The admin API's address (embedded default only).
        #[arg(long, default_value = "127.0.0.1:8444")]
        admin_addr: std::net::SocketAddr,
        /// The acquirer API's address (embedded default only).
        #[arg(long, default_value = "127.0.0.1:8445")]
        acquirer_addr: std::net::SocketAddr,
        /// Keep the state in this PostgreSQL database (`postgres://user@host:port/db`) instead
        /// of sled under the data folder (which then holds only the PKI and settlement files,
        /// and may be shared by several daemons on one host). Overrides `storage.url`.
        #[arg(long)]
        database_url: Option<String>,
        /// The operators' listener (plain HTTP: /metrics, /healthz, /readyz). Overrides
        /// `ops.listen`.
        #[arg(long)]
        ops_addr: Option<std::net::SocketAddr>,
        /// How log lines are written: `text` (coloured only on a terminal) or `json` (one object
        /// a line, the start-up text included). Overrides `log.format`.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Apply the PostgreSQL store's migrations (a daemon also applies them when it starts).
    Migrate {
        /// The database: `postgres://user@host:port/db`.
        #[arg(long)]
        database_url: Option<String>,
        /// Or the database a configuration file names (`storage.url`).
        #[arg(long, conflicts_with = "database_url")]
        config: Option<PathBuf>,
    },
    /// Run the sandbox acquirer on its own (HTTPS, mTLS), with the development PKI by default.
    SandboxAcquirer {
        #[arg(long, default_value = "127.0.0.1:9443")]
        addr: std::net::SocketAddr,
        /// Server certificate and key (PEM).
        #[arg(long, default_value = "var/pki/acquirer-sandbox.crt")]
        cert: PathBuf,
        #[arg(long, default_value = "var/pki/acquirer-sandbox.key")]
        key: PathBuf,
        /// CA of the clients (the bridge) it accepts.
        #[arg(long, default_value = "var/pki/ca.crt")]
        client_ca: PathBuf,
        /// How late the "answer after the timeout" behaviour answers.
        #[arg(long, default_value_t = 30_000)]
        slow_ms: u64,
        /// About how many instructions it remembers (outcomes, amounts; at least 1,024); the
        /// oldest are forgotten past it.
        #[arg(long, default_value_t = qrbridge_adapters::acquirer::sandbox::DEFAULT_REMEMBER)]
        remember: usize,
    },
    /// Check a configuration file: prints each problem with its key path, or `ok`.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Talk to the admin API with an admin certificate: rates, spreads, positions, revenue,
    /// settlement, reconciliation, audit. Exits 0 done, 1 failed, 2 refused, 3 reconciliation
    /// differences.
    Admin(crate::admin_cli::AdminArgs),
    /// The store: a consistent backup while the daemon runs, and restoring one.
    Store(crate::store::backup::StoreArgs),
    /// Decode a scanned code: prints the partner API's decode answer as JSON (exit 0), or
    /// `{"error": {"code": "INVALID_CODE", …}}` (exit 2).
    Decode {
        /// The scanned text.
        code: String,
        /// Route with this configuration's rules instead of the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs a parsed command line; the exit code is 0 on success, 1 on a failure to do the work, 2 on
/// bad input.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            partner_addr,
            admin_addr,
            acquirer_addr,
            database_url,
            ops_addr,
            log_format,
        } => {
            let listeners = qrbridge_config::Listeners {
                partner: partner_addr,
                admin: admin_addr,
                acquirer: acquirer_addr,
            };
            let embedded = config.is_none();
            // A reload reads the configuration the same way, overrides included.
            let source: crate::ops::reload::ConfigSource = {
                let (config, data_dir, listeners) =
                    (config.clone(), data_dir.clone(), listeners.clone());
                let database_url = database_url.clone();
                std::sync::Arc::new(move || {
                    serve_config(
                        config.clone(),
                        &data_dir,
                        listeners.clone(),
                        database_url.clone(),
                        ops_addr,
                    )
                })
            };
            // The configuration first: it says how to log.
            let loaded = serve_config(config, &data_dir, listeners, database_url, ops_addr);
            let format = match log_format.as_deref() {
                Some("json") => LogFormat::Json,
                Some(_) => LogFormat::Text,
                None => loaded.as_ref().map_or(LogFormat::Text, |c| c.log.format),
            };
            init_logging(format);
            match loaded {
                Ok(config) => in_runtime(serve(config, source, embedded, data_dir)),
                Err(problems) => {
                    for p in problems {
                        eprintln!("{p}");
                    }
                    ExitCode::from(2)
                }
            }
        }
        Command::Migrate { database_url, config } => runtime(migrate(database_url, config)),
        Command::SandboxAcquirer { addr, cert, key, client_ca, slow_ms, remember } => {
            let config = qrbridge_adapters::acquirer::sandbox::SandboxConfig { slow_ms, remember };
            runtime(sandbox(addr, cert, key, client_ca, config))
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Decode { code, config } => decode(&code, config.as_deref()),
        Command::Store(args) => runtime(crate::store::backup::run(args)),
        Command::Admin(args) => {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(crate::admin_cli::run(args)),
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn decode(text: &str, config: Option<&Path>) -> ExitCode {
    let config = match config {
        Some(path) => match qrbridge_config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        None => crate::defaults::dev_config(Path::new("var")),
    };
    let limits = DecodeLimits { max_chars: config.limits.code_chars_max as usize };
    match qrbridge_adapters::decode::decode(text, &limits) {
        Ok(mut code) => {
            let router = crate::routing::router(&config);
            let acquirer = match router.route(&code) {
                Ok(r) => Some(r.acquirer.to_owned()),
                Err(e) => {
                    code.warn(WarningCode::NotServiceable, None, e.to_string());
                    None
                }
            };
            let answer = DecodeAnswer::new(&code, acquirer.as_deref());
            out(&serde_json::to_string_pretty(&answer).expect("JSON of plain data"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let body = ErrorBody {
                error: ErrorDetail {
                    code: "INVALID_CODE",
                    message: e.to_string(),
                    retryable: false,
                    reason: None,
                },
            };
            out(&serde_json::to_string(&body).expect("JSON of plain data"));
            ExitCode::from(2)
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match qrbridge_config::from_file(file) {
        Ok(_) => {
            out("ok");
            ExitCode::SUCCESS
        }
        Err(qrbridge_config::ConfigError::Invalid(problems)) => {
            for p in problems {
                out(&p.to_string());
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Prints a line; a closed pipe (`| head`) is not an error worth a panic.
/// How this process writes its lines, once logging has started ([`init_logging`]).
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Writes `line` for the operator on standard output: as it is, or (JSON logs) as one JSON object
/// like the log lines', so that every line the daemon writes reads the same way.
fn out(line: &str) {
    use std::io::Write;
    let text = match FORMAT.get() {
        Some(LogFormat::Json) => serde_json::json!({
            "timestamp": crate::clock::Clock::now(&crate::clock::SystemClock)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "INFO",
            "target": "qrbridge",
            "fields": { "message": line },
        })
        .to_string(),
        _ => line.to_owned(),
    };
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Starts the log: lines on standard error, filtered by `RUST_LOG` (default `info`), as text
/// (coloured only on a terminal) or one JSON object a line with the spans they happen in (the
/// request id, partner and payment where a span carries them).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => builder
            .with_ansi(log_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")))
            .init(),
    }
}

/// Whether log lines on stderr may carry ANSI colour: only on a terminal (a file or a pipe gets
/// plain text), and never when `NO_COLOR` is set (<https://no-color.org>).
pub fn log_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    init_logging(LogFormat::Text);
    in_runtime(work)
}

fn in_runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(work),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn migrate(database_url: Option<String>, config: Option<PathBuf>) -> ExitCode {
    let url = match (database_url, config) {
        (Some(url), _) => url,
        (None, Some(path)) => match qrbridge_config::from_file(&path) {
            Ok(c) => match c.storage.url {
                Some(url) => url,
                None => {
                    eprintln!("{}: storage.url is not set", path.display());
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("give --database-url URL or --config FILE");
            return ExitCode::from(2);
        }
    };
    match crate::store::migrate_database(&url).await {
        Ok(applied) if applied.is_empty() => {
            out("the database is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            let list: Vec<String> = applied.iter().map(u32::to_string).collect();
            out(&format!("migrations applied: {}", list.join(", ")));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migration failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// The configuration `qrbridge serve` runs: the file, or the embedded defaults under `data_dir`,
/// with the command line's overrides; or what is wrong with it.
fn serve_config(
    config: Option<PathBuf>,
    data_dir: &Path,
    listeners: qrbridge_config::Listeners,
    database_url: Option<String>,
    ops_addr: Option<std::net::SocketAddr>,
) -> Result<qrbridge_config::Config, Vec<String>> {
    let mut config = match config {
        Some(path) => qrbridge_config::from_file(&path).map_err(|e| vec![e.to_string()])?,
        None => {
            crate::daemon::embedded_config(data_dir, listeners).map_err(|e| vec![e.to_string()])?
        }
    };
    if database_url.is_some() || ops_addr.is_some() {
        if let Some(url) = database_url {
            config.storage.url = Some(url);
        }
        if let Some(addr) = ops_addr {
            config.ops.listen = Some(addr);
        }
        let problems = qrbridge_config::validate::check(&config);
        if !problems.is_empty() {
            return Err(problems.iter().map(ToString::to_string).collect());
        }
    }
    Ok(config)
}

async fn serve(
    config: qrbridge_config::Config,
    source: crate::ops::reload::ConfigSource,
    embedded: bool,
    data_dir: PathBuf,
) -> ExitCode {
    let opts = crate::daemon::StartOptions {
        clock: std::sync::Arc::new(crate::clock::SystemClock),
        sandbox: Default::default(),
    };
    let daemon = match crate::daemon::Daemon::start_reloadable(config, opts, source).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let listening = format!(
        "partner=https://{} admin=https://{} acquirer=https://{}{}",
        daemon.partner_addr,
        daemon.admin_addr,
        daemon.acquirer_addr,
        daemon.ops_addr.map(|a| format!(" ops=http://{a}")).unwrap_or_default()
    );
    out(&format!("qrbridge listening: {listening}"));
    if embedded {
        let pki = data_dir.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let body = serde_json::json!({ "code": crate::defaults::demo_code() });
        out(&format!(
            "qrbridge is up: partner API on https://{addr}\n\nTry it (decode a merchant's code as partner-demo):\n\n  curl --cacert {ca} --cert {cert} --key {key} \\\n    -H 'content-type: application/json' \\\n    -d '{body}' \\\n    https://{addr}/v1/codes/decode\n\nThen POST the same body plus \"wallet_currency\": \"PHP\" to /v1/quotes, and\n{{\"request_id\", \"quote_id\", \"payer\": {{\"id\"}}}} to /v1/payments. Ctrl-C stops.",
            addr = daemon.partner_addr,
            ca = p("ca.crt"),
            cert = p("partner-demo.crt"),
            key = p("partner-demo.key"),
        ));
    }
    // Under systemd (Type=notify): ready once every listener is bound, with what `systemctl
    // status` shows; after a reload, `systemd::ready(&status)` again. Without NOTIFY_SOCKET these
    // do nothing.
    let status = format!("listening: {listening}");
    systemd::ready(&status);
    // Pinged from this runtime until the termination signal (a wedged runtime stops the pings).
    let (watchdog_stop, watchdog_stop_rx) = tokio::sync::watch::channel(false);
    let watchdog = systemd::watchdog(watchdog_stop_rx);
    // SIGHUP reads the configuration and its files again (crate::ops::reload): all or nothing.
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let stop = terminated();
    tokio::pin!(stop);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hangups.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup => {
                // In a task of its own: SIGTERM is still heard while it runs (reloads queue up
                // behind each other).
                tracing::info!("SIGHUP: reloading the configuration");
                let (reloader, status) = (daemon.reloader().clone(), status.clone());
                tokio::spawn(async move {
                    systemd::reloading();
                    if let Err(refused) = reloader.reload("sighup").await {
                        tracing::error!(
                            reasons = ?refused.0,
                            "reload refused: the configuration in force stays"
                        );
                    }
                    systemd::ready(&status);
                });
            }
        }
    }
    // The pings end before STOPPING=1 is sent, so none follows it (systemd watches only a running
    // service: the drain is bounded by TimeoutStopSec instead).
    let _ = watchdog_stop.send(true);
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    systemd::stopping();
    tracing::info!("shutting down: draining connections");
    daemon.shutdown().await;
    ExitCode::SUCCESS
}

async fn sandbox(
    addr: std::net::SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    config: qrbridge_adapters::acquirer::sandbox::SandboxConfig,
) -> ExitCode {
    let tls = crate::tls::roots(&[&client_ca])
        .and_then(|roots| crate::tls::server_config(&cert, &key, roots, true));
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let sb = match qrbridge_adapters::acquirer::sandbox::Sandbox::start(listener, tls, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    out(&format!("sandbox acquirer on https://{}", sb.addr()));
    terminated().await;
    sb.shutdown().await;
    ExitCode::SUCCESS
}
