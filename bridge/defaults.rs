//! The embedded defaults: what `qrbridge` runs on with no configuration file — everything on
//! loopback, the data under one folder, and the in-process sandbox acquirer serving every code.

use std::path::Path;

use qrbridge_config::{Acquirer, Config, Identity, Route};

/// The development configuration rooted at `data_dir`.
pub fn dev_config(data_dir: &Path) -> Config {
    let mut c: Config = qrbridge_config::from_str("", data_dir).expect("the empty config is valid");
    c.acquirers = vec![Acquirer {
        id: "sandbox".into(),
        endpoint: "sandbox".into(),
        ca: data_dir.join("pki/ca.crt"),
        identity: Some(Identity::SanDns("acquirer-sandbox".into())),
        timeout_ms: 2_000,
        connect_timeout_ms: 500,
        answer_bytes_max: 64 * 1024,
    }];
    c.routes = vec![Route {
        acquirer: "sandbox".into(),
        scheme: None,
        emvco_guid: None,
        emvco_template: None,
        url_host: None,
        path_prefix: None,
        unionpay_institution: None,
    }];
    c
}

/// A dynamic UnionPay-in-EMVCo code for CNY 23.72 at a Handan noodle house: the demo the daemon
/// prints at start.
pub fn demo_code() -> String {
    use qrbridge_adapters::decode::tlv::{field, with_crc};
    with_crc(
        &[
            field(0, "01"),
            field(1, "12"),
            field(15, "2504034400010344500034453110001"),
            field(52, "5812"),
            field(53, "156"),
            field(54, "23.72"),
            field(58, "CN"),
            field(59, "HANDAN NOODLE HOUSE"),
            field(60, "HANDAN"),
        ]
        .concat(),
    )
}
