//! Proves the decoder against real QR payloads other people wrote (`../shared/testdata/qr/`):
//! every `decode` vector decodes to the fields its entry gives, every `reject` vector fails (which
//! the API and CLI report as `INVALID_CODE`), every `either` vector gives a clean answer. The CLI
//! is checked on a few of them: JSON and exit 0, or the error body and exit 2.

mod support;

use std::process::Command;

use qrbridge_adapters::decode::{decode, DecodeLimits};
use serde_json::Value;

fn vectors() -> Option<Vec<Value>> {
    let path = support::shared_testdata("qr/vectors.json")?;
    let text = std::fs::read_to_string(path).expect("readable vectors.json");
    Some(serde_json::from_str(&text).expect("vectors.json is JSON"))
}

#[test]
fn every_vector_is_decoded_as_its_entry_says() {
    let Some(vectors) = vectors() else { return };
    assert!(vectors.len() >= 90, "expected the full set, got {}", vectors.len());
    let limits = DecodeLimits::default();
    let mut failures = Vec::new();
    for v in &vectors {
        let id = v["id"].as_str().unwrap();
        let payload = v["payload"].as_str().unwrap();
        let expect = v["expect"].as_str().unwrap();
        let got = decode(payload, &limits);
        match (expect, &got) {
            ("reject", Ok(_)) => failures.push(format!("{id}: decoded, should be rejected")),
            ("reject", Err(_)) | ("either", _) => {}
            ("decode", Err(e)) => failures.push(format!("{id}: {e}")),
            ("decode", Ok(code)) => {
                let answer =
                    serde_json::to_value(qrbridge::api::DecodeAnswer::new(code, None)).unwrap();
                let fields = v["fields"].as_object().unwrap();
                for (key, want) in fields {
                    let have = match key.as_str() {
                        "scheme" | "code_type" | "amount" => &answer[key.as_str()],
                        "merchant_name" => &answer["merchant"]["name"],
                        "merchant_city" => &answer["merchant"]["city"],
                        "merchant_country" => &answer["merchant"]["country"],
                        other => panic!("{id}: unknown field {other}"),
                    };
                    if have != want {
                        failures.push(format!("{id}: {key} is {have}, expected {want}"));
                    }
                }
            }
            (other, _) => panic!("{id}: unknown expectation {other}"),
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

fn cli(code: &str) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_qrbridge")).args(["decode", code]).output().unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), json)
}

#[test]
fn the_cli_prints_the_decode_answer_or_the_error() {
    let Some(vectors) = vectors() else { return };
    let find = |id: &str| {
        vectors.iter().find(|v| v["id"] == id).unwrap()["payload"].as_str().unwrap().to_owned()
    };
    let (rc, json) = cli(&find("emvco-spec-b7-best-transport"));
    assert_eq!(rc, 0);
    assert_eq!(json["scheme"], "EMVCO");
    assert_eq!(json["code_type"], "DYNAMIC");
    assert_eq!(json["merchant"]["name"], "BEST TRANSPORT");
    assert_eq!(json["merchant"]["mcc"], "4111");
    assert_eq!(json["amount"], serde_json::json!({"currency": "CNY", "value": "2372"}));
    assert_eq!(json["acquirer"], "sandbox");
    assert_eq!(json["warnings"], serde_json::json!([]));

    let (rc, json) = cli(&find("alipay-uppercase-scheme"));
    assert_eq!(
        (rc, &json["scheme"], &json["merchant"]["name"]),
        (0, &"ALIPAY".into(), &Value::Null)
    );

    for id in ["khqr-neg-crc-mismatch", "mvallim-duplicate-tag-53", "vietqr-neg-pfi-99"] {
        let (rc, json) = cli(&find(id));
        assert_eq!(rc, 2, "{id}");
        assert_eq!(json["error"]["code"], "INVALID_CODE", "{id}");
        assert!(json["error"]["message"].as_str().unwrap().len() > 10, "{id}");
    }
}
