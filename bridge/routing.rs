//! Builds the adapters' router from configuration (config stays free of adapter types).

use qrbridge_adapters::decode::Scheme;
use qrbridge_adapters::routing::{Router, Rule};
use qrbridge_config::Config;

/// The routing table of `config`, in order. Config validation has already checked the scheme
/// names, so an unknown one cannot reach here.
pub fn router(config: &Config) -> Router {
    Router::new(
        config
            .routes
            .iter()
            .map(|r| Rule {
                acquirer: r.acquirer.clone(),
                scheme: r.scheme.as_deref().and_then(Scheme::parse),
                emvco_guid: r.emvco_guid.clone(),
                emvco_template: r.emvco_template,
                url_host: r.url_host.clone(),
                path_prefix: r.path_prefix.clone(),
                unionpay_institution: r.unionpay_institution.clone(),
            })
            .collect(),
    )
}
