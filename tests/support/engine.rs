//! An engine assembled by hand (no listeners), for tests that drive it directly: one partner `p`
//! paying in PHP, every code routed to the acquirer `sandbox`, the built-in rates.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use qrbridge::clock::Clock;
use qrbridge::engine::{AcquirerService, CancelPolicy, EngineParts, PartnerPolicy, ResolverPolicy};
use qrbridge::store::Store;
use qrbridge_adapters::decode::DecodeLimits;
use qrbridge_fx::{Currency, SpreadPolicy};

pub fn parts<S: Store>(
    dir: &Path,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    acquirers: HashMap<String, AcquirerService>,
) -> EngineParts<S> {
    let config = qrbridge::daemon::embedded_config(dir, super::loopback()).unwrap();
    EngineParts {
        store,
        rates: qrbridge::rates::load(&config.fx, clock.now()),
        clock,
        spreads: SpreadPolicy::new(
            "50".parse().unwrap(),
            "0".parse().unwrap(),
            "500".parse().unwrap(),
        )
        .unwrap(),
        router: qrbridge::routing::router(&config),
        acquirers,
        partners: HashMap::from([(
            "p".to_owned(),
            PartnerPolicy {
                wallet_currencies: vec![Currency::from_code("PHP").unwrap()],
                payment_cny_minor_max: 1_000_000,
            },
        )]),
        quote_ttl: chrono::Duration::seconds(60),
        decode_limits: DecodeLimits::default(),
        cancel: CancelPolicy {
            tz: chrono_tz::Asia::Shanghai,
            until: chrono::NaiveTime::from_hms_opt(0, 30, 0).unwrap(),
        },
        resolver: ResolverPolicy::default(),
        refund_window_days: 366,
        risk: qrbridge::payments::risk::Policy::default(),
    }
}
