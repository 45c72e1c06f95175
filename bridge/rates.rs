//! Where mid rates come from, and the feed worker that keeps them current.
//!
//! | kind | format | as of |
//! |---|---|---|
//! | `builtin` | indicative rates against USD, compiled in (development) | the start time |
//! | `ecb_xml` | the ECB euro reference rates, `eurofxref-daily.xml` (or `-hist`): `<Cube time=…><Cube currency=… rate=…/>` | 16:00 Europe/Berlin on the day published |
//! | `csv` | a header `base,quote,rate,as_of`, then one line per pair; `as_of` is RFC 3339 | as given |
//!
//! A source's `location` is a file path or an `https://` URL (the source's `ca`, or the public web
//! roots). Sources with `poll_s` are read again on that schedule; every source is read at start and
//! again on an admin's request. A read that fails changes nothing: the rates held keep their
//! `as_of` and go stale on their own, so quoting stops rather than using an old price. A feed is
//! taken whole or not at all: one bad line refuses the read, and the error names the line.
//!
//! Every rate read is held to the rate book's guard ([`qrbridge_fx::RateGuard`], from
//! `fx.as_of_skew_s` and `fx.rate_move_bps_max`): a rate whose `as_of` lies beyond now plus the
//! skew, or that moves further from the held rate than the bound, is refused on its own. The
//! pair keeps its old rate, which goes stale by the usual rule (quoting then answers
//! `RATE_UNAVAILABLE`) until a sane rate comes or an admin forces one. Refusals are logged and
//! shown in the source's status (`refused`).
//!
//! Rates an admin sets (`source = admin:<identity>`) are kept in the store's settings, so they
//! survive a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use bytes::Bytes;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use http_body_util::{BodyExt, Full, Limited};
use qrbridge_adapters::https::{self, HttpsClient};
use qrbridge_config::{Fx, RateSource, RateSourceKind};
use qrbridge_fx::{Currency, Decimal, MidRate, Pair, RateBook, RateError, RateGuard};
use serde::Serialize;
use tokio::sync::watch;

use crate::clock::Clock;

/// Indicative mid rates, units per USD.
const SNAPSHOT: &[(&str, &str)] = &[
    ("CNY", "7.1200"),
    ("PHP", "57.90"),
    ("KRW", "1390.0"),
    ("THB", "34.10"),
    ("MYR", "4.450"),
    ("SGD", "1.3300"),
    ("IDR", "16250"),
    ("VND", "25400"),
    ("HKD", "7.8000"),
    ("JPY", "150.50"),
    ("EUR", "0.9200"),
    ("KHR", "4100"),
    ("INR", "84.00"),
    ("BRL", "5.400"),
    ("BHD", "0.3760"),
    ("KWD", "0.3070"),
];

/// Largest feed body read.
const FEED_BYTES_MAX: usize = 4 << 20;
/// How long an HTTPS read may take.
const FEED_TIMEOUT: StdDuration = StdDuration::from_secs(15);

/// Why a feed could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("read {location}: {message}")]
    Read { location: String, message: String },
    #[error("line {line}: {message}")]
    Line { line: u64, message: String },
    #[error("{0}")]
    Format(String),
    #[error("the feed holds no rates")]
    Empty,
    #[error("no rate source {0:?}")]
    UnknownSource(String),
}

/// What became of the rates a read offered the book.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offered {
    /// Rates taken (a rate older than the one held is neither taken nor refused).
    pub taken: usize,
    /// Rates refused by the guard: from the future, or moving too far.
    pub refused: Vec<RateError>,
}

/// Where a read's rates go: the engine's rate book, through its guard.
pub type RateSink = dyn Fn(Vec<MidRate>) -> Offered + Send + Sync;

/// The guard new rates are held to under `fx`.
pub fn guard(fx: &Fx) -> RateGuard {
    RateGuard {
        as_of_skew: i64::try_from(fx.as_of_skew_s)
            .ok()
            .and_then(Duration::try_seconds)
            .unwrap_or(Duration::MAX),
        move_bps_max: Some(fx.rate_move_bps_max),
    }
}

/// An empty rate book with `fx`'s staleness limits, pivots and guard.
pub fn book(fx: &Fx) -> RateBook {
    let mut book = RateBook::new(Duration::seconds(fx.max_age_s as i64), fx.pivots.clone());
    book.set_guard(guard(fx));
    for source in &fx.sources {
        if let Some(age) = source.max_age_s {
            book.set_max_age(&source.id, Duration::seconds(age as i64));
        }
    }
    book
}

/// A rate book for `fx` with its built-in sources read at `now`: for tests and benchmarks (the
/// daemon reads every source through [`Feeds`]).
pub fn load(fx: &Fx, now: DateTime<Utc>) -> RateBook {
    let mut b = book(fx);
    for s in fx.sources.iter().filter(|s| s.kind == RateSourceKind::Builtin) {
        for r in builtin(&s.id, now) {
            b.upsert(r).expect("snapshot rates are positive");
        }
    }
    b
}

/// The compiled-in snapshot, stamped `now`.
pub fn builtin(source: &str, now: DateTime<Utc>) -> Vec<MidRate> {
    let usd = Currency::from_code("USD").expect("USD");
    SNAPSHOT
        .iter()
        .map(|(code, rate)| MidRate {
            pair: Pair::new(usd, Currency::from_code(code).expect("snapshot codes are ISO 4217")),
            rate: rate.parse().expect("snapshot rates are decimals"),
            source: source.to_owned(),
            as_of: now,
        })
        .collect()
}

/// A rate as text: plain decimal digits with at most one `.` (no sign, no exponent), exact (no
/// digits rounded away), above zero.
pub fn positive(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    let plain = !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes().filter(|b| *b == b'.').count() <= 1;
    let rate = plain
        .then(|| Decimal::from_str_exact(t).ok())
        .flatten()
        .ok_or_else(|| format!("rate {text:?} is not a plain decimal"))?;
    if rate <= Decimal::ZERO {
        return Err(format!("rate {text:?} is not positive"));
    }
    Ok(rate)
}

/// Rates in the ECB's `eurofxref` XML, as `EUR/<currency>`. Currencies this bridge cannot hold
/// (no ISO 4217 minor unit) are left out and counted in the second value.
pub fn parse_ecb(xml: &[u8], source: &str) -> Result<(Vec<MidRate>, usize), FeedError> {
    use quick_xml::events::Event;
    let eur = Currency::from_code("EUR").expect("EUR");
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut as_of: Option<DateTime<Utc>> = None;
    let (mut rates, mut skipped) = (Vec::new(), 0);
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            FeedError::Format(format!("XML at byte {}: {e}", reader.buffer_position()))
        })?;
        match event {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"Cube" => {
                let mut attrs = BTreeMap::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| FeedError::Format(format!("XML attribute: {e}")))?;
                    let value = std::str::from_utf8(&a.value)
                        .map_err(|_| FeedError::Format("attribute is not UTF-8".into()))?;
                    attrs.insert(a.key.local_name().as_ref().to_vec(), value.to_owned());
                }
                if let Some(day) = attrs.get(b"time".as_slice()) {
                    let day = NaiveDate::parse_from_str(day, "%Y-%m-%d")
                        .map_err(|_| FeedError::Format(format!("time {day:?} is not a date")))?;
                    // The reference rates are set at 14:10 and published around 16:00 CET.
                    let local = day.and_hms_opt(16, 0, 0).expect("16:00 exists");
                    as_of = chrono_tz::Europe::Berlin
                        .from_local_datetime(&local)
                        .earliest()
                        .map(|t| t.with_timezone(&Utc));
                }
                if let (Some(code), Some(rate)) =
                    (attrs.get(b"currency".as_slice()), attrs.get(b"rate".as_slice()))
                {
                    let Some(as_of) = as_of else {
                        return Err(FeedError::Format(format!(
                            "rate for {code} outside a dated Cube"
                        )));
                    };
                    let rate = positive(rate).map_err(FeedError::Format)?;
                    match Currency::from_code(code) {
                        Ok(c) if c != eur => rates.push(MidRate {
                            pair: Pair::new(eur, c),
                            rate,
                            source: source.to_owned(),
                            as_of,
                        }),
                        _ => skipped += 1,
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if rates.is_empty() {
        return Err(FeedError::Empty);
    }
    Ok((rates, skipped))
}

/// Rates in the plain CSV form: a header `base,quote,rate,as_of`, then one pair per line.
pub fn parse_csv(text: &[u8], source: &str) -> Result<Vec<MidRate>, FeedError> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text);
    let header =
        reader.headers().map_err(|e| FeedError::Line { line: 1, message: e.to_string() })?;
    if header.iter().collect::<Vec<_>>() != ["base", "quote", "rate", "as_of"] {
        return Err(FeedError::Line {
            line: 1,
            message: "the header must be base,quote,rate,as_of".into(),
        });
    }
    let mut rates = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let row = row.map_err(|e| FeedError::Line { line, message: e.to_string() })?;
        let bad = |message: String| FeedError::Line { line, message };
        let currency =
            |code: &str| Currency::from_code(code).map_err(|e| bad(format!("{code:?}: {e}")));
        let pair = Pair::new(currency(&row[0])?, currency(&row[1])?);
        if pair.base == pair.quote {
            return Err(bad(format!("{pair} is one currency")));
        }
        let rate = positive(&row[2]).map_err(bad)?;
        let as_of = DateTime::parse_from_rfc3339(&row[3])
            .map_err(|_| bad(format!("as_of {:?} is not RFC 3339", &row[3])))?
            .with_timezone(&Utc);
        rates.push(MidRate { pair, rate, source: source.to_owned(), as_of });
    }
    if rates.is_empty() {
        return Err(FeedError::Empty);
    }
    Ok(rates)
}

/// How a source's last reads went.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub id: String,
    pub kind: RateSourceKind,
    pub location: Option<String>,
    pub poll_s: Option<u64>,
    pub max_age_s: Option<u64>,
    pub last_read_at: Option<DateTime<Utc>>,
    pub last_ok_at: Option<DateTime<Utc>>,
    /// Rates taken by the last good read (older than the held rate: not taken).
    pub rates: usize,
    /// Currencies the last good read left out (ECB only: no minor unit here).
    pub skipped: usize,
    /// Rates the last good read offered that the guard refused, and why (the pair keeps its old
    /// rate).
    pub refused: Vec<String>,
    pub last_error: Option<String>,
}

/// The configured rate sources and how their reads went.
pub struct Feeds {
    sources: Vec<(RateSource, Option<HttpsClient>)>,
    status: Mutex<BTreeMap<String, SourceStatus>>,
    clock: Arc<dyn Clock>,
}

impl Feeds {
    /// Sets up every source of `fx` (an HTTPS client for each URL).
    pub fn new(fx: &Fx, clock: Arc<dyn Clock>) -> Result<Feeds, crate::tls::TlsError> {
        let mut sources = Vec::new();
        let mut status = BTreeMap::new();
        for s in &fx.sources {
            let client = match &s.location {
                Some(l) if l.starts_with("https://") => {
                    let roots = match &s.ca {
                        Some(ca) => crate::tls::roots(&[ca.as_path()])?,
                        None => Arc::new(rustls::RootCertStore {
                            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                        }),
                    };
                    let tls = rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                    Some(https::client(tls, StdDuration::from_secs(5)))
                }
                _ => None,
            };
            status.insert(
                s.id.clone(),
                SourceStatus {
                    id: s.id.clone(),
                    kind: s.kind,
                    location: s.location.clone(),
                    poll_s: s.poll_s,
                    max_age_s: s.max_age_s,
                    last_read_at: None,
                    last_ok_at: None,
                    rates: 0,
                    skipped: 0,
                    refused: Vec::new(),
                    last_error: None,
                },
            );
            sources.push((s.clone(), client));
        }
        Ok(Feeds { sources, status: Mutex::new(status), clock })
    }

    /// How each source's reads went, by id.
    pub fn status(&self) -> Vec<SourceStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Source ids.
    pub fn ids(&self) -> Vec<String> {
        self.sources.iter().map(|(s, _)| s.id.clone()).collect()
    }

    async fn fetch(source: &RateSource, client: Option<&HttpsClient>) -> Result<Bytes, FeedError> {
        let location = source.location.clone().unwrap_or_default();
        let read = |message: String| FeedError::Read { location: location.clone(), message };
        match client {
            None => tokio::fs::read(PathBuf::from(&location))
                .await
                .map(Bytes::from)
                .map_err(|e| read(e.to_string())),
            Some(client) => {
                let req = http::Request::get(location.as_str())
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| read(e.to_string()))?;
                let res = tokio::time::timeout(FEED_TIMEOUT, client.request(req))
                    .await
                    .map_err(|_| read("timed out".into()))?
                    .map_err(|e| read(e.to_string()))?;
                if res.status() != http::StatusCode::OK {
                    return Err(read(format!("HTTP {}", res.status())));
                }
                let body = tokio::time::timeout(
                    FEED_TIMEOUT,
                    Limited::new(res.into_body(), FEED_BYTES_MAX).collect(),
                )
                .await
                .map_err(|_| read("timed out".into()))?
                .map_err(|e| read(e.to_string()))?;
                Ok(body.to_bytes())
            }
        }
    }

    /// Reads one source now and offers its rates to `book`; returns what became of them.
    pub async fn refresh(&self, id: &str, book: &RateSink) -> Result<Offered, FeedError> {
        let (source, client) = self
            .sources
            .iter()
            .find(|(s, _)| s.id == id)
            .ok_or_else(|| FeedError::UnknownSource(id.to_owned()))?;
        let started = self.clock.now();
        let parsed = match source.kind {
            RateSourceKind::Builtin => Ok((builtin(&source.id, started), 0)),
            RateSourceKind::EcbXml => match Self::fetch(source, client.as_ref()).await {
                Ok(body) => parse_ecb(&body, &source.id),
                Err(e) => Err(e),
            },
            RateSourceKind::Csv => match Self::fetch(source, client.as_ref()).await {
                Ok(body) => parse_csv(&body, &source.id).map(|r| (r, 0)),
                Err(e) => Err(e),
            },
        };
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let st = status.get_mut(id).expect("every source has a status");
        st.last_read_at = Some(started);
        match parsed {
            Ok((rates, skipped)) => {
                let offered = book(rates);
                st.last_ok_at = Some(started);
                st.rates = offered.taken;
                st.skipped = skipped;
                st.refused = offered.refused.iter().map(ToString::to_string).collect();
                st.last_error = None;
                for e in &offered.refused {
                    tracing::warn!(source = %id, error = %e, "rate refused; the pair keeps its old rate");
                }
                tracing::info!(source = %id, taken = offered.taken, refused = offered.refused.len(), skipped, "rate source read");
                Ok(offered)
            }
            Err(e) => {
                tracing::warn!(source = %id, error = %e, "rate source not read; rates held keep their age");
                st.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Reads every local source (built in, files) once: what start-up waits for.
    pub async fn refresh_local(&self, book: &RateSink) {
        let local: Vec<String> =
            self.sources.iter().filter(|(_, c)| c.is_none()).map(|(s, _)| s.id.clone()).collect();
        for id in local {
            let _ = self.refresh(&id, book).await;
        }
    }

    /// Reads every URL source at once, then each polled source on its schedule, until
    /// `shutdown` says true.
    pub async fn run(self: Arc<Self>, book: Arc<RateSink>, mut shutdown: watch::Receiver<bool>) {
        let remote: Vec<String> =
            self.sources.iter().filter(|(_, c)| c.is_some()).map(|(s, _)| s.id.clone()).collect();
        for id in remote {
            let _ = self.refresh(&id, book.as_ref()).await;
        }
        let polled: Vec<(String, u64)> =
            self.sources.iter().filter_map(|(s, _)| s.poll_s.map(|p| (s.id.clone(), p))).collect();
        if polled.is_empty() {
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (id, every) in polled {
            let feeds = self.clone();
            let book = book.clone();
            let mut stop = shutdown.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(StdDuration::from_secs(every));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await; // the first tick is now: read already
                loop {
                    tokio::select! {
                        _ = tick.tick() => { let _ = feeds.refresh(&id, book.as_ref()).await; }
                        _ = https::stopped(&mut stop) => return,
                    }
                }
            });
        }
        https::stopped(&mut shutdown).await;
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecb(day: &str) -> String {
        format!(
            r#"<Envelope><Cube><Cube time="{day}"><Cube currency="USD" rate="1.05"/></Cube></Cube></Envelope>"#
        )
    }

    /// A feed's dates at the ends of chrono's range are read or refused, never a panic.
    #[test]
    fn extreme_feed_dates_do_not_panic() {
        for day in ["262142-12-31", "-262143-01-01", "+262142-12-31", "9999-12-31", "0001-01-01"] {
            let _ = parse_ecb(ecb(day).as_bytes(), "ecb");
        }
        let csv = "base,quote,rate,as_of\nUSD,PHP,58,+262142-12-31T23:59:59Z\n";
        let _ = parse_csv(csv.as_bytes(), "csv");
    }

    #[test]
    fn rates_are_plain_positive_decimals() {
        assert_eq!(positive(" 57.90 "), Ok("57.90".parse().unwrap()));
        for bad in [
            "1e5",
            "-1",
            "+1",
            "0",
            "0.000",
            "1.2.3",
            "",
            ".",
            "NaN",
            "0.00000000000000000000000000001",
        ] {
            assert!(positive(bad).is_err(), "{bad}");
        }
    }
}
