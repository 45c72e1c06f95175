//! Rate sources the daemon loads at start. The built-in snapshot makes the embedded default
//! quote without any feed: indicative mid rates against USD, stamped with the start time
//! ("refreshed at start"), under the source id `builtin`. Feeds (ECB XML, CSV, polling) are the
//! treasury issue's; until then a configured feed is reported and skipped.

use chrono::{DateTime, Duration, Utc};
use qrbridge_config::{Fx, RateSourceKind};
use qrbridge_fx::{Currency, MidRate, Pair, RateBook};

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

/// The rate book for `fx`, loaded at `now`.
pub fn load(fx: &Fx, now: DateTime<Utc>) -> RateBook {
    let mut book = RateBook::new(Duration::seconds(fx.max_age_s as i64), fx.pivots.clone());
    for source in &fx.sources {
        if let Some(age) = source.max_age_s {
            book.set_max_age(&source.id, Duration::seconds(age as i64));
        }
        match source.kind {
            RateSourceKind::Builtin => {
                for (code, rate) in SNAPSHOT {
                    let usd = Currency::from_code("USD").expect("USD");
                    let quote = Currency::from_code(code).expect("snapshot codes are ISO 4217");
                    let rate = MidRate {
                        pair: Pair::new(usd, quote),
                        rate: rate.parse().expect("snapshot rates are decimals"),
                        source: source.id.clone(),
                        as_of: now,
                    };
                    book.upsert(rate).expect("snapshot rates are positive");
                }
            }
            kind => {
                tracing::warn!(source = %source.id, ?kind, "rate feed not loaded: only the builtin snapshot is read so far")
            }
        }
    }
    book
}
