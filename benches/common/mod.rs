//! What the benchmarks share: a quote as the engine prices and stores it.

use chrono::{DateTime, Utc};
use qrbridge::model::{CodeRef, MerchantAnswer, QuoteRecord, RECORD_VERSION};

/// A 23.72 CNY quote for `partner-demo` in PHP at a 50 bps spread, priced from the embedded
/// rates, for a static EMVCo code of the sandbox acquirer, valid for `ttl`.
pub fn quote_record(
    config: &qrbridge_config::Config,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> QuoteRecord {
    let rates = qrbridge::rates::load(&config.fx, now);
    let spreads = qrbridge_fx::SpreadPolicy::new(
        "50".parse().unwrap(),
        "0".parse().unwrap(),
        "500".parse().unwrap(),
    )
    .unwrap();
    let req = qrbridge_fx::QuoteRequest {
        partner: "partner-demo",
        pay: qrbridge_fx::Amount::from_minor(qrbridge_fx::Currency::CNY, 2_372).unwrap(),
        wallet_currency: qrbridge_fx::Currency::from_code("PHP").unwrap(),
        now,
        ttl,
    };
    QuoteRecord {
        v: RECORD_VERSION,
        quote_id: qrbridge::model::new_id("quo"),
        partner: "partner-demo".into(),
        code: CodeRef {
            scheme: "EMVCO".into(),
            code_type: "STATIC".into(),
            text: "0002010102110000".repeat(8),
            acquirer: "sandbox".into(),
            merchant_id: "500034453110001".into(),
            merchant: MerchantAnswer {
                id: Some("500034453110001".into()),
                name: Some("HANDAN NOODLE HOUSE".into()),
                city: Some("HANDAN".into()),
                country: Some("CN".into()),
                mcc: Some("5812".into()),
            },
        },
        quote: qrbridge_fx::Quote::price(&req, &rates, &spreads).unwrap(),
    }
}
