//! Which acquirer owns a decoded code: rules from configuration, first match wins. A code priced
//! in a currency other than CNY is not serviceable whatever the rules say: our acquirers pay
//! merchants in yuan.

use qrbridge_fx::Currency;

use crate::decode::{MerchantCode, Scheme};

/// One rule: every condition given must hold. Built from `qrbridge_config::Route`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub acquirer: String,
    pub scheme: Option<Scheme>,
    /// Compared case-insensitively with the GUID/AID (sub-tag 00) of templates 26–51.
    pub emvco_guid: Option<String>,
    /// A merchant account template (02–51) the code must carry.
    pub emvco_template: Option<u8>,
    /// URL host, case-insensitive.
    pub url_host: Option<String>,
    /// URL path prefix, case-insensitive.
    pub path_prefix: Option<String>,
    /// The UnionPay institution: URL code or tag 15 acquirer IIN.
    pub unionpay_institution: Option<String>,
}

/// Why no acquirer takes a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotServiceable {
    #[error("the code is priced in {0}; only CNY merchants are served")]
    Currency(Currency),
    #[error("no configured acquirer serves this code")]
    NoRoute,
}

/// The outcome of routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'r> {
    pub acquirer: &'r str,
    /// The merchant account template the rule matched, when it named one.
    pub template: Option<u8>,
}

/// The routing table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<Rule>,
}

impl Router {
    pub fn new(rules: Vec<Rule>) -> Self {
        Router { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The acquirer for `code`.
    pub fn route(&self, code: &MerchantCode<'_>) -> Result<Routed<'_>, NotServiceable> {
        // A code with a currency but no amount still says what it is priced in.
        let currency =
            code.amount.map(|a| a.currency()).or(code.emvco.as_ref().and_then(|e| e.currency));
        if let Some(c) = currency.filter(|c| *c != Currency::CNY) {
            return Err(NotServiceable::Currency(c));
        }
        self.rules
            .iter()
            .find_map(|r| {
                matches(r, code).map(|template| Routed { acquirer: &r.acquirer, template })
            })
            .ok_or(NotServiceable::NoRoute)
    }
}

/// `Some(template matched)` when every condition of `r` holds.
fn matches(r: &Rule, code: &MerchantCode<'_>) -> Option<Option<u8>> {
    let key = &code.route_key;
    if r.scheme.is_some_and(|s| s != code.scheme) {
        return None;
    }
    let mut template = None;
    if let Some(t) = r.emvco_template {
        key.emvco_templates.contains(&t).then_some(())?;
        template = Some(t);
    }
    if let Some(g) = &r.emvco_guid {
        let (t, _) = key.emvco_guids.iter().find(|(_, guid)| guid.eq_ignore_ascii_case(g))?;
        template = Some(*t);
    }
    if let Some(h) = &r.url_host {
        key.url_host.is_some_and(|k| k.eq_ignore_ascii_case(h)).then_some(())?;
    }
    if let Some(p) = &r.path_prefix {
        let path = key.url_path?;
        path.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)).then_some(())?;
    }
    if let Some(i) = &r.unionpay_institution {
        (key.unionpay_institution == Some(i.as_str())).then_some(())?;
    }
    Some(template)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, DecodeLimits};

    fn rule(acquirer: &str) -> Rule {
        Rule { acquirer: acquirer.into(), ..Rule::default() }
    }

    #[test]
    fn first_match_wins() {
        let router = Router::new(vec![
            Rule {
                scheme: Some(Scheme::Unionpay),
                unionpay_institution: Some("00010000".into()),
                ..rule("cup")
            },
            Rule { emvco_guid: Some("d15600000001".into()), ..rule("guid") },
            Rule { emvco_template: Some(15), ..rule("tag15") },
            Rule {
                url_host: Some("QR.ALIPAY.COM".into()),
                path_prefix: Some("/BAX".into()),
                ..rule("ali-order")
            },
            Rule { scheme: Some(Scheme::Alipay), ..rule("ali") },
        ]);
        let limits = DecodeLimits::default();
        let route = |s: &str| {
            router.route(&decode(s, &limits).unwrap()).map(|r| (r.acquirer.to_owned(), r.template))
        };
        assert_eq!(route("https://qr.95516.com/00010000/0121327").unwrap(), ("cup".into(), None));
        assert_eq!(route("https://qr.95516.com/00020000/0121327"), Err(NotServiceable::NoRoute));
        assert_eq!(route("https://qr.alipay.com/bax07651xvtprxfkmxyf00a9").unwrap().0, "ali-order");
        assert_eq!(route("https://qr.alipay.com/fkx01584it3usfwqchi4tde").unwrap().0, "ali");
        let sample = "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988770708123456786304A13A";
        assert_eq!(route(sample).unwrap(), ("guid".into(), Some(31)));
        let thb = "00020101021129370016A000000677010111011300668012345675802TH530376463046197";
        assert_eq!(route(thb), Err(NotServiceable::Currency(Currency::from_code("THB").unwrap())));
        assert_eq!(
            route("wxp://f2f0kZPKzqOiF9dl2-92kt6S3KAhemrBiAyV"),
            Err(NotServiceable::NoRoute)
        );
    }
}
