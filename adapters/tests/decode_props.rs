//! Proves no input makes the decoder panic, and that what it accepts is consistent: random text,
//! random TLV built to be valid (with a correct CRC), and valid codes mutated one edit at a time.
//! A mutated code either fails cleanly or decodes; a decoded amount is always in range.

use proptest::prelude::*;
use qrbridge_adapters::decode::tlv::{field as tlv_field, with_crc};
use qrbridge_adapters::decode::{decode, CodeType, DecodeLimits, Scheme};

const SEEDS: &[&str] = &[
    "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988770708123456786304A13A",
    "00020101021129370016A000000677010111011300668012345675802TH530376463046197",
    "https://qr.alipay.com/fkx01584it3usfwqchi4tde",
    "weixin://wxpay/bizpayurl?pr=NwY5Mz9",
    "https://qr.95516.com/00010000/01213270247009520084852952021972",
];

/// A valid-by-construction EMVCo code from random parts.
fn emvco() -> impl Strategy<Value = (String, bool, Option<String>)> {
    (
        prop::bool::ANY,
        "[A-Z0-9.]{1,20}",
        "[0-9]{4}",
        prop::option::of("[1-9][0-9]{0,6}(\\.[0-9]{1,2})?"),
        "[A-Za-z ]{1,25}",
        "\\PC{1,15}",
    )
        .prop_map(|(dynamic, guid, mcc, amount, name, city)| {
            let mut body = tlv_field(0, "01") + &tlv_field(1, if dynamic { "12" } else { "11" });
            body += &tlv_field(26, &(tlv_field(0, &guid) + &tlv_field(1, "M123")));
            body += &tlv_field(52, &mcc);
            body += &tlv_field(53, "156");
            if let Some(a) = &amount {
                body += &tlv_field(54, a);
            }
            body += &(tlv_field(58, "CN") + &tlv_field(59, &name) + &tlv_field(60, &city));
            (with_crc(&body), dynamic, amount)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_text_never_panics(s in "\\PC{0,300}") {
        let _ = decode(&s, &DecodeLimits::default());
    }

    #[test]
    fn random_digits_never_panic(s in "[0-9A-F]{0,200}") {
        let _ = decode(&s, &DecodeLimits::default());
        let _ = decode(&format!("000201{s}"), &DecodeLimits::default());
    }

    #[test]
    fn built_codes_decode_as_built((code, dynamic, amount) in emvco()) {
        let c = decode(&code, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(c.scheme, Scheme::Emvco);
        prop_assert_eq!(c.code_type, if dynamic { CodeType::Dynamic } else { CodeType::Static });
        prop_assert_eq!(c.amount.map(|a| a.to_major_string().parse::<rust_decimal::Decimal>().unwrap()),
            amount.map(|a| a.parse::<rust_decimal::Decimal>().unwrap()));
    }

    #[test]
    fn mutated_codes_fail_cleanly_or_decode(
        (code, _, _) in emvco(),
        seed in 0..SEEDS.len(),
        use_seed in prop::bool::ANY,
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..4),
    ) {
        let base = if use_seed { SEEDS[seed].to_owned() } else { code };
        let mut chars: Vec<char> = base.chars().collect();
        for (at, kind, c) in edits {
            let i = at.index(chars.len().max(1));
            match kind {
                0 if !chars.is_empty() => { chars.remove(i.min(chars.len() - 1)); }
                1 => chars.insert(i.min(chars.len()), c),
                2 if !chars.is_empty() => { let j = i.min(chars.len() - 1); chars[j] = c; }
                _ => chars.truncate(i),
            }
        }
        let s: String = chars.into_iter().collect();
        if let Ok(c) = decode(&s, &DecodeLimits::default()) {
            if let Some(a) = c.amount {
                prop_assert!(a.minor() >= 0);
            }
            let _ = serde_json::to_string(&c).unwrap();
        }
    }

    #[test]
    fn over_the_limit_is_refused(n in 65usize..400) {
        let limits = DecodeLimits { max_chars: 64 };
        let s = "0".repeat(n);
        prop_assert!(decode(&s, &limits).is_err());
    }
}
