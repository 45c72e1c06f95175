//! The configuration's shape. Every section has defaults that make a loopback development daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use qrbridge_fx::{Bps, Currency};
use serde::{Deserialize, Serialize};

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listeners: Listeners,
    #[serde(default)]
    pub tls: Tls,
    /// The wallets that may call the partner API; each is known by its client certificate.
    #[serde(default)]
    pub partners: Vec<Partner>,
    /// The domestic acquirers payment instructions go to.
    #[serde(default)]
    pub acquirers: Vec<Acquirer>,
    /// Which acquirer owns a scanned code; first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub fx: Fx,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub ops: Ops,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub settlement: Settlement,
    #[serde(default)]
    pub resolver: Resolver,
    #[serde(default)]
    pub webhooks: Webhooks,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub risk: crate::risk::Risk,
}

/// Where each API listens. Three listeners so that each can have its own client CAs and its own
/// exposure: partners from the internet, acquirers from their network, admin from inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    pub partner: SocketAddr,
    pub admin: SocketAddr,
    pub acquirer: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            partner: ([127, 0, 0, 1], 8443).into(),
            admin: ([127, 0, 0, 1], 8444).into(),
            acquirer: ([127, 0, 0, 1], 8445).into(),
        }
    }
}

/// The bridge's own TLS material (PEM files). Partner and acquirer CAs live with each party.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Server certificate chain presented on every listener.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate the bridge presents to acquirers and partners' webhook endpoints.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// CAs whose certificates may use the admin API; admins are listed in `admin_identities`.
    pub admin_ca: PathBuf,
    /// Identities (certificate SAN URI or DNS name) that the admin API accepts.
    pub admin_identities: Vec<String>,
    /// When true, TLS 1.2 is accepted besides 1.3 (for a partner whose stack still needs it).
    /// Off by default: TLS 1.3 only.
    pub allow_tls12: bool,
    /// Certificate revocation lists (PEM), one or more per CA that publishes one; each applies to
    /// the client certificates its CA signed, on every listener. Re-read on reload. Certificates
    /// of a CA with no CRL here are not checked for revocation. A CRL past its nextUpdate is
    /// still used, not enforced: refusing it would refuse every certificate of its CA until a
    /// fresh one is installed (a late download would lock a partner out). Each is logged as a
    /// warning, with its file and nextUpdate, at start and on every reload; fetch CRLs on a
    /// schedule and reload.
    pub crls: Vec<PathBuf>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            server_cert: "pki/server.crt".into(),
            server_key: "pki/server.key".into(),
            client_cert: "pki/bridge-client.crt".into(),
            client_key: "pki/bridge-client.key".into(),
            admin_ca: "pki/ca.crt".into(),
            admin_identities: vec!["admin".into()],
            allow_tls12: false,
            crls: Vec::new(),
        }
    }
}

/// How a partner's client certificate is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Identity {
    /// A URI subject alternative name, e.g. `spiffe://gcash.example/wallet`.
    SanUri(String),
    /// A DNS subject alternative name.
    SanDns(String),
    /// The SHA-256 fingerprint of the DER certificate, hex (colons allowed).
    Sha256(String),
}

/// A partner wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    /// Stable id used in records, logs and statements.
    pub id: String,
    pub identity: Identity,
    /// CA (PEM) that issues this partner's client certificates.
    pub ca: PathBuf,
    /// Currencies this partner's users pay in.
    pub wallet_currencies: Vec<Currency>,
    /// Where webhooks go (HTTPS); none means the partner polls.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for the webhook signature header. A [`Secret`]: never in `Debug` or logs;
    /// serialized only because a configuration written back out must load again.
    #[serde(default, serialize_with = "serialize_exposed")]
    pub webhook_secret: Option<Secret>,
    /// CA (PEM) of the webhook endpoint's server certificate; `ca` when not given.
    #[serde(default)]
    pub webhook_ca: Option<PathBuf>,
    #[serde(default)]
    pub limits: PartnerLimits,
}

/// Per-partner limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartnerLimits {
    /// Sustained requests per second before `RATE_LIMITED`.
    pub requests_per_s: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
    /// Largest single payment, in CNY minor units (fen).
    pub payment_cny_minor_max: i64,
    /// Requests this partner may have under way at once; more are shed with 503. Unset: an equal
    /// share of `limits.concurrency_max` among the partners, so no partner can crowd out another.
    pub concurrency_max: Option<u32>,
}

impl Default for PartnerLimits {
    fn default() -> Self {
        PartnerLimits {
            requests_per_s: 500,
            burst: 1000,
            payment_cny_minor_max: 5_000_000,
            concurrency_max: None,
        }
    }
}

/// A domestic acquirer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acquirer {
    pub id: String,
    /// Base URL of its API (HTTPS). `sandbox` means the in-process sandbox acquirer.
    pub endpoint: String,
    /// CA (PEM) that issued its server certificate; also the CA of its client certificates when
    /// it calls the acquirer-facing listener.
    pub ca: PathBuf,
    /// Identity its client certificate carries when it calls us (refunds, files).
    #[serde(default)]
    pub identity: Option<Identity>,
    /// How long to wait for an instruction's answer before the payment is UNKNOWN.
    #[serde(default = "default_acquirer_timeout_ms")]
    pub timeout_ms: u64,
    /// How long to wait for a connection; no connection means nothing was sent.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Largest answer read from it. A longer one is not read on: the call's outcome is unknown
    /// (the instruction may have gone out), so the resolver inquires. Stops a broken or hostile
    /// endpoint from filling the bridge's memory.
    #[serde(default = "default_acquirer_answer_bytes_max")]
    pub answer_bytes_max: u64,
}

fn default_acquirer_timeout_ms() -> u64 {
    5_000
}
fn default_acquirer_answer_bytes_max() -> u64 {
    64 * 1024
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}

/// A routing rule: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub acquirer: String,
    /// `EMVCO`, `ALIPAY`, `WECHAT` or `UNIONPAY`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// EMVCo globally unique id (sub-tag 00 of templates 26–51), compared case-insensitively.
    #[serde(default)]
    pub emvco_guid: Option<String>,
    /// EMVCo network template id present in the code (02–51; 15 is UnionPay).
    #[serde(default)]
    pub emvco_template: Option<u8>,
    /// URL code host, case-insensitive (`qr.alipay.com`).
    #[serde(default)]
    pub url_host: Option<String>,
    /// URL code path prefix (`/fkx`), case-insensitive.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// UnionPay institution code: the 8 digits in a `qr.95516.com` URL or the acquirer IIN in tag 15.
    #[serde(default)]
    pub unionpay_institution: Option<String>,
}

/// FX: rate sources, staleness, spreads, quotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fx {
    /// Currencies tried, in order, to make cross rates.
    pub pivots: Vec<Currency>,
    /// Staleness limit for sources without their own.
    pub max_age_s: u64,
    /// How far past now a rate's `as_of` may lie (clocks differ); later ones are refused.
    pub as_of_skew_s: u64,
    /// Largest move of a new rate from the one held for its pair, in basis points; a larger one
    /// is refused (feeds keep the old rate; an admin may force it, audited).
    pub rate_move_bps_max: u32,
    /// How long a quote can be paid.
    pub quote_ttl_s: u64,
    pub spread: Spread,
    pub sources: Vec<RateSource>,
}

impl Default for Fx {
    fn default() -> Self {
        Fx {
            pivots: vec![
                Currency::from_code("USD").expect("USD"),
                Currency::from_code("EUR").expect("EUR"),
            ],
            max_age_s: 3_600,
            as_of_skew_s: 300,
            rate_move_bps_max: 1_000,
            quote_ttl_s: 120,
            spread: Spread::default(),
            sources: vec![RateSource {
                id: "builtin".into(),
                kind: RateSourceKind::Builtin,
                location: None,
                poll_s: None,
                max_age_s: Some(86_400 * 365),
                ca: None,
            }],
        }
    }
}

/// Spread bounds and default, in basis points (decimal strings, e.g. "45.5").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spread {
    pub default_bps: Bps,
    pub min_bps: Bps,
    pub max_bps: Bps,
}

impl Default for Spread {
    fn default() -> Self {
        Spread {
            default_bps: Bps::from_int(50).expect("50 bps"),
            min_bps: Bps::ZERO,
            max_bps: Bps::from_int(500).expect("500 bps"),
        }
    }
}

/// Where mid rates come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSource {
    pub id: String,
    pub kind: RateSourceKind,
    /// A file path or an `https://` URL; none for `builtin`.
    #[serde(default)]
    pub location: Option<String>,
    /// Poll interval; none reads once at start (and on admin request).
    #[serde(default)]
    pub poll_s: Option<u64>,
    /// Staleness limit for this source's rates.
    #[serde(default)]
    pub max_age_s: Option<u64>,
    /// CA that signs an `https://` location's certificate; none trusts the public web roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateSourceKind {
    /// The ECB euro reference rates (`eurofxref-daily.xml`).
    EcbXml,
    /// `base,quote,rate,as_of` lines.
    Csv,
    /// A snapshot compiled into the binary, for development.
    Builtin,
}

/// The embedded store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// The embedded store's folder (sled), used when `url` is not set.
    pub path: PathBuf,
    /// A PostgreSQL database (`postgres://user@host:port/db`) instead of the embedded store:
    /// several daemons may share it. Its password, if any, is better given by the environment
    /// (`PGPASSWORD`) than written here.
    pub url: Option<String>,
    /// Connections each daemon keeps to the database.
    pub pool_size: u32,
    /// sled's page cache; sled's own default is 1 GiB, too much beside other processes.
    pub cache_bytes: u64,
    /// Under load, the least time in milliseconds from one flush of the embedded store to the
    /// next, so that more writes share each (group commit): only when the last flush was shared
    /// by several requests and ended less than that ago. A request alone is flushed at once. 0:
    /// no wait (writes that come while a flush runs share the next one anyway). PostgreSQL's
    /// commits are its own (`commit_delay`).
    pub flush_every_ms: u64,
    /// A quote no payment used is removed this long after it expires (used ones stay).
    pub quote_retention_s: u64,
    /// How often expired quotes are swept.
    pub retention_sweep_s: u64,
    /// The most memory a sled backup may take for the writes made while it copies (the log of
    /// them, and each written key's last value): past it the backup is abandoned
    /// (`BACKUP_ABANDONED`), never a write refused. A busier store needs more, or a quieter hour.
    pub backup_log_bytes_max: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            path: "var/db".into(),
            url: None,
            pool_size: 16,
            cache_bytes: 64 * 1024 * 1024,
            flush_every_ms: 0,
            quote_retention_s: 3_600,
            retention_sweep_s: 60,
            backup_log_bytes_max: 256 << 20,
        }
    }
}

/// Several daemons on one database (`storage.url`): the work done once — the resolver, webhook
/// deliveries, quote retention, settlement runs — is led by one node at a time under a lease,
/// and each node polls for what the others changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// This node's name in leases and logs; default: host name, process id and a random suffix.
    pub node_id: Option<String>,
    /// How long a lease lasts unless renewed: a node that dies hands its work over after at most
    /// this long. Renewed every third of it.
    pub lease_ttl_ms: u64,
    /// How often a node looks for work and settings another node wrote.
    pub poll_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { node_id: None, lease_ttl_ms: 10_000, poll_ms: 1_000 }
    }
}

/// The operators' listener: plain HTTP, loopback by default — `/metrics` (Prometheus text),
/// `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ops {
    /// Whether it listens at all.
    pub enabled: bool,
    /// Where it listens (`None`, from code only, is off too).
    pub listen: Option<std::net::SocketAddr>,
    /// `/readyz` answers 503 when no rate a partner may be quoted in is younger than this.
    pub rates_stale_after_s: u64,
}

impl Default for Ops {
    fn default() -> Self {
        // Beside the three APIs' 8443–8445; not 9090, a Prometheus server's own.
        Ops { enabled: true, listen: Some(([127, 0, 0, 1], 8446).into()), rates_stale_after_s: 300 }
    }
}

/// How the daemon writes its log lines (standard error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` (coloured only on a terminal) or `json` (one object a line).
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The business day and the windows measured from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settlement {
    /// IANA time zone of the business day.
    pub time_zone: String,
    /// When the business day ends, `HH:MM` local.
    pub cutoff: String,
    /// Cancels are accepted until this time, Asia/Shanghai (the partner contract's zone, whatever
    /// `time_zone` says), on the day after the payment.
    pub cancel_until: String,
    /// Refunds are accepted for this many days after the payment.
    pub refund_window_days: u32,
    /// Where statements and reconciliation reports are written, one folder per business day.
    pub dir: PathBuf,
}

impl Default for Settlement {
    fn default() -> Self {
        Settlement {
            time_zone: "Asia/Shanghai".into(),
            cutoff: "00:00".into(),
            cancel_until: "00:30".into(),
            refund_window_days: 366,
            dir: "var/settlement".into(),
        }
    }
}

/// How payments in doubt are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resolver {
    /// Delays between inquiries of a payment whose outcome is unknown.
    pub inquiry_schedule_s: Vec<u64>,
    /// After this long with the outcome unknown, the payment is reversed and ends EXPIRED.
    pub payment_expiry_s: u64,
    /// Payments resolved at once.
    pub concurrency: u32,
    /// Explicit refusals of a reversal (the acquirer says no, or that the payment is approved)
    /// before the bridge gives up reversing: a cancel is then refused and the payment stays as
    /// the acquirer has it.
    pub reversal_refusals_max: u32,
    /// Resolver steps under way at once against any one acquirer, so that one acquirer's outage
    /// (each call waiting out its timeout) cannot hold the resolver from the others.
    pub acquirer_concurrency_max: u32,
    /// Approvals behind the bridge's reversals of one payment before an operator is asked to
    /// look (an ATTENTION task on the admin API) instead of reversing again.
    pub late_approvals_max: u32,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            inquiry_schedule_s: vec![4, 4, 30, 60, 60, 60, 300, 300],
            payment_expiry_s: 900,
            concurrency: 64,
            reversal_refusals_max: 5,
            acquirer_concurrency_max: 16,
            late_approvals_max: 3,
        }
    }
}

/// Webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    pub timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// After this long undelivered, an event is parked for an operator.
    pub max_age_s: u64,
    /// Deliveries under way at once (each payment's events go one after another).
    pub concurrency: u32,
    /// Deliveries under way at once to any one partner, so a partner whose endpoint stalls holds
    /// at most this many; a partner with nothing under way may always start one, even when
    /// `concurrency` is used up by others.
    pub partner_concurrency: u32,
    /// Largest answer read from a partner's endpoint. Only its status counts; a small body is
    /// read so the connection can be reused, a longer one is not read at all.
    pub answer_bytes_max: u64,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            timeout_ms: 5_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 600_000,
            max_age_s: 3 * 86_400,
            concurrency: 32,
            partner_concurrency: 4,
            answer_bytes_max: 4 * 1024,
        }
    }
}

/// Limits on what clients can make the daemon do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body.
    pub body_bytes_max: u64,
    /// Established connections (TLS handshake done, client certificate verified) per listener.
    /// When all are taken, a connection whose handshake is done waits for one until
    /// `handshake_timeout_ms` after it was accepted, then is closed.
    pub connections_max: u32,
    /// Established connections from one IP address (an IPv6 /64 counts as one) per listener;
    /// more are closed as soon as their handshake is done. Behind a load balancer that hides
    /// client addresses, raise it to `connections_max` (`handshakes_max` needs no such change).
    pub connections_per_ip_max: u32,
    /// Connections in their TLS handshake per listener, a pool apart from `connections_max`: a
    /// connection leaves it for an established slot once its handshake is done. When it is full,
    /// a new connection is not kept waiting: it takes the place of a socket that has sent
    /// nothing yet, else of a handshake of an address holding more places than its own, else of
    /// a handshake that has had a quarter of `handshake_timeout_ms` to finish; failing all
    /// three it is closed at once (its client retries). So sockets that never send a byte cannot
    /// keep a partner out, however many and from wherever. No per-address setting: it needs no
    /// change behind a load balancer.
    pub handshakes_max: u32,
    /// Requests being handled at once per listener; more are shed with 503. Each caller also has
    /// its own share (`partners[].limits.concurrency_max`).
    pub concurrency_max: u32,
    /// Longest a request may take end to end.
    pub request_timeout_ms: u64,
    /// Longest scanned code accepted, in characters.
    pub code_chars_max: u32,
    /// A connection must finish its TLS handshake and get an established slot within this of
    /// being accepted, or it is closed: a socket that never starts TLS holds its handshake place
    /// no longer than this (less when `handshakes_max` is reached and newer connections need it).
    pub handshake_timeout_ms: u64,
    /// An HTTP/1 request head must arrive within this; it is also the longest wait for the next
    /// request on a keep-alive connection.
    pub header_read_timeout_ms: u64,
    /// A connection with no request under way for this long is closed (a TLS connection that
    /// never sends a request, an HTTP/2 connection with no streams).
    pub idle_timeout_ms: u64,
    /// Connections are closed gracefully at this age, so certificate expiry, revocation and
    /// reloaded TLS settings reach long-lived connections.
    pub connection_max_age_s: u64,
    /// HTTP/2: a quiet connection is pinged this often, and dropped when the answer does not come
    /// within `http2_keep_alive_timeout_ms`.
    pub http2_keep_alive_interval_ms: u64,
    pub http2_keep_alive_timeout_ms: u64,
    /// HTTP/2: streams open at once on one connection.
    pub http2_streams_max: u32,
    /// A request's body must have arrived this long after its head, or the request is refused;
    /// a slow sender cannot hold a share of `concurrency_max` for long.
    pub body_read_timeout_ms: u64,
    /// Shutdown lets connections finish their requests for at most this long, then drops them.
    pub shutdown_timeout_ms: u64,
    /// After closing a connection, how long the server goes on reading (and dropping) what the
    /// client still sends — a body answered early, unread — so the answer is not lost to a reset.
    pub linger_ms: u64,
    /// The most read while lingering.
    pub linger_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 16 * 1024,
            connections_max: 1_024,
            concurrency_max: 512,
            request_timeout_ms: 15_000,
            code_chars_max: 2_048,
            handshake_timeout_ms: 5_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            connection_max_age_s: 600,
            http2_keep_alive_interval_ms: 20_000,
            http2_keep_alive_timeout_ms: 10_000,
            http2_streams_max: 128,
            body_read_timeout_ms: 5_000,
            shutdown_timeout_ms: 20_000,
            linger_ms: 2_000,
            linger_bytes_max: 16 << 20,
            connections_per_ip_max: 256,
            handshakes_max: 256,
        }
    }
}

/// A secret from the configuration (a webhook signing key). Its `Debug` masks it and it does
/// not implement `Serialize`: reading it takes [`Secret::expose`], and a field that must be
/// written out says so with `serialize_with`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it (signing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// Writes an optional secret out in clear: only for fields that must round-trip (the config).
fn serialize_exposed<S: serde::Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    v.as_ref().map(Secret::expose).serialize(s)
}
