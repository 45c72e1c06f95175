//! Any bytes, as text, into the decoder and the routing table: nothing may panic, and whatever
//! decodes must serialize. Run: `cd adapters/fuzz && cargo fuzz run decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qrbridge_adapters::decode::{decode, DecodeLimits};
use qrbridge_adapters::routing::{Router, Rule};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = DecodeLimits { max_chars: 2048 };
    if let Ok(code) = decode(text, &limits) {
        let router = Router::new(vec![
            Rule { acquirer: "t15".into(), emvco_template: Some(15), ..Rule::default() },
            Rule { acquirer: "guid".into(), emvco_guid: Some("A000000677010111".into()), ..Rule::default() },
            Rule { acquirer: "host".into(), url_host: Some("qr.alipay.com".into()), path_prefix: Some("/bax".into()), ..Rule::default() },
        ]);
        let _ = router.route(&code);
        let _ = serde_json::to_string(&code).expect("a decoded code serializes");
    }
});
