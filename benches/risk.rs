//! The risk check's cost per payment: `decide_and_reserve` and its `settle`, on a book that holds a
//! busy day (100k payers, 10k merchants, 300k payments spread over the last 24 hours), with the
//! default rules (none) and with every rule on (limits set for every partner, currency, merchant
//! and MCC, blocklists, near-limit flags). Time moves on by a day / 300k per payment, so the book
//! stays at a day's size: each payment in, about one out. Also: a refusal, and a start-up rebuild.
//! `cargo bench --bench risk` (criterion reports time per payment).

use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;

use chrono::{DateTime, Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use qrbridge::payments::risk::{
    Blocklists, Candidate, CurrencyRules, MccRules, MerchantRules, PartnerRules, PaymentFacts,
    Policy, RiskBook, RiskRules, Stage, VelocityRules,
};
use qrbridge_fx::{Amount, Currency};

const PAYERS: usize = 100_000;
const MERCHANTS: usize = 10_000;
const DAY_PAYMENTS: usize = 300_000;
const PARTNERS: [&str; 4] = ["gcash", "kakao", "truemoney", "tng"];
const CURRENCIES: [&str; 4] = ["PHP", "KRW", "THB", "MYR"];
/// Ledger reads (`reload_owed`) per this many payments, as the daemon would do now and then.
const RELOAD_EVERY: usize = 1_000;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 22, 8, 0, 0).unwrap()
}

/// Names and amounts, owned, for candidates to borrow.
struct World {
    payers: Vec<String>,
    merchants: Vec<String>,
    mccs: Vec<String>,
    ids: Vec<String>,
    currencies: Vec<Currency>,
}

impl World {
    fn new() -> World {
        World {
            payers: (0..PAYERS).map(|i| format!("payer-{i:08}")).collect(),
            merchants: (0..MERCHANTS).map(|i| format!("5000344531{i:05}")).collect(),
            mccs: (0..200).map(|i| format!("{:04}", 5000 + i)).collect(),
            ids: (0..DAY_PAYMENTS).map(|i| format!("pay_{i:026}")).collect(),
            currencies: CURRENCIES.iter().map(|c| Currency::from_code(c).unwrap()).collect(),
        }
    }

    /// Payment `n`: spread over payers and merchants by a fixed scramble.
    fn candidate<'a>(&'a self, n: usize, id: &'a str) -> Candidate<'a> {
        let k = n.wrapping_mul(2_654_435_761);
        let partner = n % PARTNERS.len();
        let merchant = k % MERCHANTS;
        Candidate {
            payment_id: id,
            partner: PARTNERS[partner],
            payer_id: &self.payers[(k >> 7) % PAYERS],
            acquirer: if merchant % 2 == 0 { "acq-a" } else { "acq-b" },
            merchant_id: Some(&self.merchants[merchant]),
            mcc: Some(&self.mccs[merchant % self.mccs.len()]),
            pay: Amount::from_minor(Currency::CNY, 1_000 + (k % 50_000) as i64).unwrap(),
            wallet: Amount::from_minor(self.currencies[partner], 8_000 + (k % 400_000) as i64)
                .unwrap(),
        }
    }
}

/// Every rule on, loose enough that the measured payments go through (the full path).
fn all_rules(w: &World) -> Policy {
    let mut partners = BTreeMap::new();
    for (p, c) in PARTNERS.iter().zip(&w.currencies) {
        let mut currencies = BTreeMap::new();
        currencies.insert(
            *c,
            CurrencyRules {
                payment_cny_minor_min: Some(100),
                payment_cny_minor_max: Some(10_000_000),
                payment_wallet_minor_min: Some(1),
                payment_wallet_minor_max: Some(500_000_000),
                prefund_minor: Some(500_000_000_000_000),
                credit_line_minor: Some(100_000_000_000_000),
            },
        );
        partners.insert(
            (*p).to_owned(),
            PartnerRules {
                payment_cny_minor_min: Some(100),
                payment_cny_minor_max: Some(5_000_000),
                payer: VelocityRules {
                    hour_count_max: Some(100),
                    hour_cny_minor_max: Some(100_000_000),
                    day_count_max: Some(1_000),
                    day_cny_minor_max: Some(1_000_000_000),
                },
                currencies,
            },
        );
    }
    let mut merchants: BTreeMap<String, BTreeMap<String, MerchantRules>> = BTreeMap::new();
    for m in w.merchants.iter().step_by(10) {
        merchants
            .entry("acq-a".into())
            .or_default()
            .insert(m.clone(), MerchantRules { day_cny_minor_max: Some(900_000_000_000) });
    }
    let mccs =
        w.mccs.iter().map(|m| (m.clone(), MccRules { day_cny_minor_max: Some(9 << 40) })).collect();
    let rules = RiskRules {
        near_limit_bps: Some(100),
        partners,
        merchant_day_cny_minor_max: Some(800_000_000_000),
        merchants,
        mccs,
    };
    let blocked = Blocklists {
        merchants: (0..1_000).map(|i| format!("blocked-{i}")).collect::<HashSet<_>>(),
        mccs: ["7995", "7801", "7802"].map(String::from).into(),
        acquirers: ["acq-x"].map(String::from).into(),
    };
    Policy::new(rules, blocked).unwrap()
}

/// A day of payments, ending at `t0`, most booked, some in flight, some failed.
fn day(w: &World) -> Vec<PaymentFacts<'_>> {
    let step = 86_400_000 / DAY_PAYMENTS as i64;
    (0..DAY_PAYMENTS)
        .map(|n| PaymentFacts {
            payment: w.candidate(n, &w.ids[n]),
            at: t0() - Duration::milliseconds((DAY_PAYMENTS - n) as i64 * step),
            stage: match n % 50 {
                0 => Stage::Void,
                1 => Stage::InFlight,
                _ => Stage::Booked,
            },
        })
        .collect()
}

/// The process's resident memory in KiB (Linux), to show what a loaded book costs.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn loaded(w: &World, policy: Policy) -> RiskBook {
    let before = rss_kib();
    let book = RiskBook::new(policy);
    let owed = PARTNERS.iter().zip(&w.currencies).map(|(p, c)| (*p, Amount::zero(*c)));
    let stats = book.rebuild(day(w), owed, t0()).unwrap();
    let grew = rss_kib().zip(before).map(|(a, b)| a.saturating_sub(b) / 1024);
    eprintln!("book: {stats:?}; resident memory grew by {grew:?} MiB");
    book
}

fn bench(cr: &mut Criterion) {
    let w = World::new();
    let step = Duration::milliseconds(86_400_000 / DAY_PAYMENTS as i64);
    let ring: Vec<String> = (0..3 * RELOAD_EVERY).map(|i| format!("pay_live_{i:020}")).collect();
    let mut g = cr.benchmark_group("risk");
    g.throughput(Throughput::Elements(1));
    for (name, policy) in [("default_rules", Policy::default()), ("all_rules", all_rules(&w))] {
        let book = loaded(&w, policy);
        // Outside the routine: criterion calls it once per sample, and time only goes on.
        let (mut n, mut now) = (DAY_PAYMENTS, t0());
        let mut mark = book.mark();
        g.bench_function(format!("decide_and_reserve+settle/{name}"), |b| {
            b.iter(|| {
                n += 1;
                now += step;
                let id = &ring[n % ring.len()];
                let c = w.candidate(n, id);
                let r = book.decide_and_reserve(black_box(&c), now).unwrap();
                black_box(r.flags());
                let stage = if n % 50 == 0 { Stage::Void } else { Stage::Booked };
                black_box(book.settle(&PaymentFacts { payment: c, at: now, stage }));
                if n % RELOAD_EVERY == 0 {
                    // The ledger read: bookings before the previous mark leave `booked`.
                    let owed =
                        PARTNERS.iter().zip(&w.currencies).map(|(p, c)| (*p, Amount::zero(*c)));
                    book.reload_owed(owed, mark);
                    mark = book.mark();
                }
            })
        });
        eprintln!("after: {:?}", book.stats());
    }
    // A refusal (a blocked MCC): the early way out.
    let book = loaded(&w, all_rules(&w));
    g.bench_function("decide_and_reserve/refused_mcc", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n += 1;
            let mut c = w.candidate(n, "pay_refused");
            c.mcc = Some("7995");
            black_box(book.decide_and_reserve(black_box(&c), t0()).unwrap_err())
        })
    });
    g.finish();

    let mut g = cr.benchmark_group("risk_rebuild");
    g.sample_size(10);
    g.throughput(Throughput::Elements(DAY_PAYMENTS as u64));
    g.bench_function("rebuild_300k_payments", |b| {
        b.iter_batched(
            || (RiskBook::new(all_rules(&w)), day(&w)),
            |(book, facts)| {
                let owed = PARTNERS.iter().zip(&w.currencies).map(|(p, c)| (*p, Amount::zero(*c)));
                black_box(book.rebuild(facts, owed, t0()).unwrap())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
