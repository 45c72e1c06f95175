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
