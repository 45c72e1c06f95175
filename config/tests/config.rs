//! Proves the configuration loader: the shipped example passes, defaults make a valid config, and
//! each kind of mistake is reported with its key path and what was expected — all of them at once.

use std::path::Path;

use qrbridge_config::{from_file, from_str, Config, ConfigError};

fn problems(text: &str) -> Vec<String> {
    match from_str(text, Path::new("/etc/qrbridge")) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected {e}"),
    }
}

const PARTNER: &str = r#"
[[partners]]
id = "gcash"
identity = { san_uri = "spiffe://gcash/wallet" }
ca = "gcash-ca.pem"
wallet_currencies = ["PHP"]
"#;

#[test]
fn the_example_passes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("example.toml");
    let c = from_file(&path).unwrap_or_else(|e| panic!("example.toml: {e}"));
    assert_eq!(c.partners.len(), 2);
    assert_eq!(c.routes.len(), 4);
    assert!(
        c.storage.path.ends_with("config/var/db"),
        "relative to the file: {:?}",
        c.storage.path
    );
}

#[test]
fn empty_text_is_the_default() {
    let c: Config = from_str("", Path::new(".")).unwrap();
    assert_eq!(c.storage.cache_bytes, 64 * 1024 * 1024);
    assert_eq!(c.listeners.partner.to_string(), "127.0.0.1:8443");
    assert_eq!(c.fx.quote_ttl_s, 120);
    assert_eq!(c.settlement.time_zone, "Asia/Shanghai");
}

#[test]
fn currency_errors_name_the_key_path() {
    let text = format!(
        "{PARTNER}\n[[partners]]\nid = \"kakao\"\nidentity = {{ san_dns = \"kakao\" }}\nca = \"k.pem\"\nwallet_currencies = [\"KRW\"]\n\n[[partners]]\nid = \"tng\"\nidentity = {{ san_dns = \"tng\" }}\nca = \"t.pem\"\nwallet_currencies = [\"XAU\"]\n"
    );
    assert_eq!(
        problems(&text),
        vec![r#"partners[2].wallet_currencies[0]: "XAU" has no minor unit"#]
    );
    let text = PARTNER.replace("PHP", "PESO");
    assert_eq!(
        problems(&text),
        vec![r#"partners[0].wallet_currencies[0]: "PESO" is not an ISO 4217 alphabetic code"#]
    );
}

#[test]
fn type_and_unknown_key_errors_name_the_path() {
    let p = problems("[limits]\nbody_bytes_max = \"big\"\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("limits.body_bytes_max: invalid type: string"), "{p:?}");
    let p = problems("[limits]\nbody_bytes = 5\n");
    assert!(
        p[0].starts_with(
            "limits.body_bytes: unknown field `body_bytes`, expected one of `body_bytes_max`"
        ),
        "{p:?}"
    );
    let p = problems("[limits\n");
    assert_eq!(p.len(), 1, "{p:?}");
    let p = problems("[fx.spread]\ndefault_bps = \"1e3\"\n");
    assert!(p[0].starts_with("fx.spread.default_bps: spread \"1e3\""), "{p:?}");
}

#[test]
fn every_semantic_problem_is_reported() {
    let text = format!(
        r#"{PARTNER}
webhook_url = "http://gcash.example/hook"

[[partners]]
id = "gcash"
identity = {{ san_uri = "spiffe://gcash/wallet" }}
ca = "x.pem"
wallet_currencies = ["CNY", "PHP", "PHP"]
limits = {{ requests_per_s = 0, burst = 1, payment_cny_minor_max = 0 }}

[[acquirers]]
id = "Bank A"
endpoint = "http://bank"
ca = "b.pem"
timeout_ms = 0

[[routes]]
acquirer = "nobody"
scheme = "VISA"
emvco_template = 60
unionpay_institution = "123"

[fx]
quote_ttl_s = 0
pivots = ["USD", "USD"]
[fx.spread]
default_bps = "600"
min_bps = "0"
max_bps = "500"

[settlement]
time_zone = "Asia/Beijing"
cutoff = "24:00"

[limits]
body_bytes_max = 1
"#
    );
    let got = problems(&text);
    for want in [
        "partners[0].webhook_url: must be an https:// URL",
        "partners[0].webhook_secret: a secret of at least 16 characters is needed with a webhook_url",
        "partners[1].id: \"gcash\" is used by an earlier partner",
        "partners[1].identity: the same certificate identity is given to an earlier partner",
        "partners[1].wallet_currencies[0]: CNY is the merchant side, not a wallet currency",
        "partners[1].wallet_currencies[2]: PHP is listed twice",
        "partners[1].limits.requests_per_s: 0 is outside 1..=1000000",
        "partners[1].limits.payment_cny_minor_max: must be 1..=999999999999999",
        "acquirers[0].id: \"Bank A\" must be 1-64 of a-z 0-9 - _ .",
        "acquirers[0].endpoint: must be an https:// URL or \"sandbox\"",
        "acquirers[0].timeout_ms: 0 is outside 1..=120000",
        "routes[0].acquirer: \"nobody\" is not a configured acquirer",
        "routes[0].scheme: \"VISA\" is not one of EMVCO, ALIPAY, WECHAT, UNIONPAY",
        "routes[0].emvco_template: 60 is not a merchant account template (02-51)",
        "routes[0].unionpay_institution: expected 8 digits",
        "fx.pivots[1]: USD is listed twice",
        "fx.quote_ttl_s: 0 is outside 1..=3600",
        "fx.spread.default_bps: 600 is outside 0..=500",
        "settlement.time_zone: \"Asia/Beijing\" is not an IANA time zone",
        "settlement.cutoff: \"24:00\" is not HH:MM",
        "limits.body_bytes_max: 1 is outside 256..=16777216",
    ] {
        assert!(got.iter().any(|g| g == want), "missing {want:?} in\n{}", got.join("\n"));
    }
    assert_eq!(got.len(), 21, "{}", got.join("\n"));
}

#[test]
fn listener_limits_are_checked_and_tls_defaults_to_1_3() {
    let c: Config = from_str("", Path::new(".")).unwrap();
    assert!(!c.tls.allow_tls12, "TLS 1.2 is off unless asked for");
    assert!(c.tls.crls.is_empty());
    assert!(c.limits.connections_per_ip_max <= c.limits.connections_max);
    assert!(c.limits.body_read_timeout_ms <= c.limits.request_timeout_ms);
    let text = format!(
        "{PARTNER}limits = {{ concurrency_max = 600 }}\n\n[limits]\nconnections_max = 100\nconnections_per_ip_max = 101\nconcurrency_max = 512\nbody_read_timeout_ms = 20000\nidle_timeout_ms = 0\n"
    );
    assert_eq!(
        problems(&text),
        vec![
            "limits.connections_per_ip_max: 101 is outside 1..=100",
            "limits.idle_timeout_ms: 0 is outside 1..=3600000",
            "limits.body_read_timeout_ms: 20000 is outside 1..=15000",
            "partners[0].limits.concurrency_max: 600 is outside 1..=512",
        ]
    );
}

#[test]
fn risk_rules_are_checked_with_their_key_paths() {
    let text = format!(
        r#"{PARTNER}
[risk]
refresh_ms = 10

[risk.rules.partners.gcash]
payment_cny_minor_min = 500
payment_cny_minor_max = 400
payer = {{ hour_count_max = 0 }}

[risk.rules.partners.gcash.currencies.PHP]
prefund_minor = -1

[risk.rules.partners.maya]
payment_cny_minor_max = 100

[risk.rules.merchants.nobody."M1"]
day_cny_minor_max = 1

[risk.rules.mccs."59"]
day_cny_minor_max = 1

[risk.monitoring]
burst_merchants_min = 1

[risk.dual_control]
proposal_ttl_s = 1
"#
    );
    let got = problems(&text);
    for want in [
        "risk.rules.partners.gcash.payment_cny_minor_min: 500 is above payment_cny_minor_max 400",
        "risk.rules.partners.gcash.payer.hour_count_max: must be at least 1",
        "risk.rules.partners.gcash.currencies.PHP.prefund_minor: -1 is outside 0..=",
        "risk.rules.partners.maya: \"maya\" is not a partner",
        "risk.rules.merchants.nobody: \"nobody\" is not an acquirer",
        "risk.rules.mccs.59: \"59\" is not a merchant category code",
        "risk.monitoring.burst_merchants_min: 1 is outside 2..=",
        "risk.dual_control.proposal_ttl_s: 1 is outside 60..=",
        "risk.refresh_ms: 10 is outside 100..=",
    ] {
        assert!(got.iter().any(|p| p.starts_with(want)), "missing {want:?} in {got:#?}");
    }
    // An unknown key in a rule is refused with its path.
    let got = problems("[risk.rules.partners.gcash]\npayment_max = 1\n");
    assert!(
        got.iter().any(|p| p.contains("risk.rules.partners.gcash") && p.contains("payment_max")),
        "{got:?}"
    );
}
