//! The settings of the bridge's outbound calls (issue 12, items 13, 14 and 17): a partner's
//! webhook secret never shows in `Debug` yet survives writing the configuration back out, and the
//! answer size limits and per-partner webhook lanes have defaults and are checked.

use std::path::Path;

use qrbridge_config::{from_str, Config, ConfigError};

const SECRET: &str = "s3cr3t-hmac-key-nobody-may-log";

fn with_secret() -> String {
    format!(
        r#"
[[partners]]
id = "gcash"
identity = {{ san_uri = "spiffe://gcash/wallet" }}
ca = "gcash-ca.pem"
wallet_currencies = ["PHP"]
webhook_url = "https://hooks.gcash.example/qrbridge"
webhook_secret = "{SECRET}"

[[acquirers]]
id = "acme"
endpoint = "https://acme.example"
ca = "acme-ca.pem"
"#
    )
}

fn problems(text: &str) -> Vec<String> {
    match from_str(text, Path::new("/etc/qrbridge")) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn the_webhook_secret_is_masked_in_debug_and_kept_when_written_out() {
    let c: Config = from_str(&with_secret(), Path::new("/etc/qrbridge")).unwrap();
    let secret = c.partners[0].webhook_secret.as_ref().expect("a secret");
    assert_eq!(secret.expose(), SECRET);
    for shown in [format!("{c:?}"), format!("{c:#?}"), format!("{secret:?}")] {
        assert!(!shown.contains(SECRET), "the secret shows in Debug: {shown}");
    }
    assert!(format!("{:?}", c.partners[0]).contains("webhook_secret: Some(Secret(***))"));
    // A configuration written back out loads again, secret included (the field asks for it).
    let written = toml::to_string(&c).unwrap();
    let again: Config = from_str(&written, Path::new("/etc/qrbridge")).unwrap();
    assert_eq!(again, c);
}

#[test]
fn answer_limits_and_webhook_lanes_have_defaults_and_are_checked() {
    let c: Config = from_str(&with_secret(), Path::new("/etc/qrbridge")).unwrap();
    assert_eq!(c.acquirers[0].answer_bytes_max, 64 * 1024);
    assert_eq!(c.webhooks.answer_bytes_max, 4 * 1024);
    assert_eq!(c.webhooks.partner_concurrency, 4);
    assert!(c.webhooks.partner_concurrency <= c.webhooks.concurrency);

    let text = with_secret()
        .replace("ca = \"acme-ca.pem\"", "ca = \"acme-ca.pem\"\nanswer_bytes_max = 100")
        + "\n[webhooks]\nconcurrency = 8\npartner_concurrency = 9\nanswer_bytes_max = 2000000\n";
    let got = problems(&text);
    for want in [
        "acquirers[0].answer_bytes_max",
        "webhooks.partner_concurrency",
        "webhooks.answer_bytes_max",
    ] {
        assert!(got.iter().any(|p| p.starts_with(want)), "{want} not reported: {got:?}");
    }
}
