//! Quote pricing: rate resolution (direct and cross), spread lookup, rounding, refund conversion.
//! Criterion reports throughput in quotes per second (`cargo bench --bench quote`).

use chrono::{Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use qrbridge_fx::{
    Amount, Bps, Currency, MidRate, Quote, QuoteRequest, RateBook, SpreadKey, SpreadPolicy,
};
use std::hint::black_box;

fn setup() -> (RateBook, SpreadPolicy, chrono::DateTime<Utc>) {
    let now = Utc.with_ymd_and_hms(2026, 5, 22, 8, 0, 0).unwrap();
    let c = |s: &str| Currency::from_code(s).unwrap();
    let mut book = RateBook::new(Duration::seconds(3600), vec![c("USD"), c("EUR")]);
    for (pair, rate) in
        [("USD/CNY", "7.1234"), ("USD/PHP", "56.789"), ("USD/KRW", "1380.5"), ("CNY/THB", "4.9876")]
    {
        book.upsert(MidRate {
            pair: pair.parse().unwrap(),
            rate: rate.parse().unwrap(),
            source: "bench".into(),
            as_of: now,
        })
        .unwrap();
    }
    let mut spreads =
        SpreadPolicy::new("50".parse().unwrap(), Bps::ZERO, "500".parse().unwrap()).unwrap();
    for i in 0..50 {
        spreads
            .set(
                SpreadKey {
                    partner: Some(format!("partner-{i}")),
                    pair: Some("CNY/PHP".parse().unwrap()),
                },
                "35".parse().unwrap(),
            )
            .unwrap();
    }
    (book, spreads, now)
}

fn bench(cr: &mut Criterion) {
    let (book, spreads, now) = setup();
    let mut g = cr.benchmark_group("quote");
    g.throughput(Throughput::Elements(1));
    for (name, wallet) in
        [("direct_THB", "THB"), ("cross_PHP_via_USD", "PHP"), ("cross_KRW_via_USD", "KRW")]
    {
        let wallet = Currency::from_code(wallet).unwrap();
        g.bench_function(name, |b| {
            let mut minor = 1_000i64;
            b.iter(|| {
                minor = minor % 1_000_000 + 7;
                let req = QuoteRequest {
                    partner: "partner-7",
                    pay: Amount::from_minor(Currency::CNY, minor).unwrap(),
                    wallet_currency: wallet,
                    now,
                    ttl: Duration::seconds(120),
                };
                black_box(Quote::price(black_box(&req), &book, &spreads).unwrap())
            })
        });
    }
    let req = QuoteRequest {
        partner: "partner-7",
        pay: Amount::from_minor(Currency::CNY, 123_456).unwrap(),
        wallet_currency: Currency::from_code("PHP").unwrap(),
        now,
        ttl: Duration::seconds(120),
    };
    let q = Quote::price(&req, &book, &spreads).unwrap();
    g.bench_function("refund_partial", |b| {
        b.iter_batched(
            || {
                (
                    Amount::from_minor(Currency::CNY, 1_000).unwrap(),
                    Amount::from_minor(Currency::CNY, 777).unwrap(),
                )
            },
            |(before, r)| black_box(q.pricing().refund_wallet_amount(&before, &r).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
