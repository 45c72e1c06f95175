//! Decode + route of typical EMVCo payloads (`cargo bench --bench decode`); criterion reports
//! codes per second. The payloads are built here (a UnionPay tag-15 dynamic code in CNY, a static
//! code with GUID templates, additional data and a language template); when ../shared/testdata is
//! present, every decodable vector there is benchmarked as one more group.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qrbridge_adapters::decode::tlv::{field as t, with_crc};
use qrbridge_adapters::decode::{decode, DecodeLimits, Scheme};
use qrbridge_adapters::routing::{Router, Rule};
use std::hint::black_box;

fn payloads() -> Vec<String> {
    let unionpay_dynamic = [
        t(0, "01"),
        t(1, "12"),
        t(15, "2504034400010344500034453110001"),
        t(52, "5812"),
        t(53, "156"),
        t(54, "128.50"),
        t(58, "CN"),
        t(59, "HANDAN NOODLE HOUSE"),
        t(60, "HANDAN"),
        t(62, &(t(1, "INV-20260522-0042") + &t(7, "T01"))),
    ]
    .concat();
    let static_templates = [
        t(0, "01"),
        t(1, "11"),
        t(26, &(t(0, "COM.QQ.WEIXIN.PAY") + &t(1, "1000000337") + &t(2, "0000"))),
        t(29, &(t(0, "COM.ALIPAY.OPENAPI") + &t(1, "2088000000000001"))),
        t(52, "5411"),
        t(53, "156"),
        t(58, "CN"),
        t(59, "MARKET STALL 17"),
        t(60, "HANDAN"),
        t(64, &(t(0, "ZH") + &t(1, "市场摊位17") + &t(2, "邯郸"))),
    ]
    .concat();
    vec![with_crc(&unionpay_dynamic), with_crc(&static_templates)]
}

fn router() -> Router {
    let rule = |acquirer: &str| Rule { acquirer: acquirer.into(), ..Rule::default() };
    Router::new(vec![
        Rule {
            scheme: Some(Scheme::Unionpay),
            unionpay_institution: Some("00010000".into()),
            ..rule("cup-url")
        },
        Rule { emvco_guid: Some("com.alipay.openapi".into()), ..rule("alipay") },
        Rule { emvco_guid: Some("com.qq.weixin.pay".into()), ..rule("wechat") },
        Rule { emvco_template: Some(15), ..rule("unionpay") },
        rule("sandbox"),
    ])
}

fn shared_vectors() -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/qr/vectors.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("note: {} missing; benchmarking built payloads only", path.display());
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["expect"] == "decode" && e["fields"]["scheme"] == "EMVCO")
        .filter_map(|e| e["payload"].as_str().map(str::to_owned))
        .collect()
}

fn bench(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let router = router();
    let mut g = c.benchmark_group("decode_route");
    g.throughput(Throughput::Elements(1));
    for (name, p) in
        ["unionpay_dynamic_cny", "static_wechat_alipay_templates"].iter().zip(payloads())
    {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let code = decode(black_box(&p), &limits).unwrap();
                black_box(router.route(&code).ok().map(|r| r.acquirer.len()))
            })
        });
    }
    let shared = shared_vectors();
    if !shared.is_empty() {
        g.throughput(Throughput::Elements(shared.len() as u64));
        g.bench_function("shared_emvco_vectors_each", |b| {
            b.iter(|| {
                for p in &shared {
                    let code = decode(black_box(p), &limits).unwrap();
                    black_box(router.route(&code).ok().map(|r| r.acquirer.len()));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
