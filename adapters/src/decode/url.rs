//! The domestic networks' URL codes. They carry no merchant details: decoding gives the scheme,
//! the code type where the URL shows it, and the route key; the merchant comes from the
//! acquirer's code lookup.
//!
//! - Alipay: `https://qr.alipay.com/<token>` (host in any case): `fkx…` a personal / merchant
//!   standing code, `bax…` an order (pre-create) code.
//! - WeChat Pay: `wxp://f2f…` (standing), `weixin://wxpay/bizpayurl?pr=…` and
//!   `weixin://pay.weixin.qq.com/bizpayurl/up?pr=…` (native order codes).
//! - UnionPay: `https://qr.95516.com/<8-digit institution>/<token>`.

use super::code::*;
use super::error::DecodeError;

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn new_code(scheme: Scheme, code_type: CodeType, token: &str) -> MerchantCode<'_> {
    MerchantCode {
        scheme,
        code_type,
        merchant: Merchant::default(),
        amount: None,
        warnings: Vec::new(),
        route_key: RouteKey::default(),
        emvco: None,
        url_code: Some(token),
    }
}

/// Splits `rest` (after `scheme://`) into authority, path (from `/`) and query (after `?`).
fn split(rest: &str) -> (&str, &str, Option<&str>) {
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i..], query),
        None => (before_query, "", query),
    }
}

/// Decodes a URL code.
pub fn decode(s: &str) -> Result<MerchantCode<'_>, DecodeError> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DecodeError::UnknownFormat("white space inside a URL"));
    }
    if let Some(token) = strip_prefix_ci(s, "wxp://") {
        return wechat_static(token);
    }
    if let Some(rest) = strip_prefix_ci(s, "weixin://") {
        return wechat_order(rest);
    }
    let (rest, plain_http) = match (strip_prefix_ci(s, "https://"), strip_prefix_ci(s, "http://")) {
        (Some(r), _) => (r, false),
        (None, Some(r)) => (r, true),
        (None, None) => {
            return Err(DecodeError::UnknownFormat("neither an EMVCo code nor a payment URL"))
        }
    };
    let (host, path, _query) = split(rest);
    let mut code = if host.eq_ignore_ascii_case("qr.alipay.com") {
        alipay(path)?
    } else if host.eq_ignore_ascii_case("qr.95516.com") {
        unionpay(path)?
    } else {
        return Err(DecodeError::UnknownFormat("a URL, but not from a payment network we serve"));
    };
    code.route_key.url_host = Some(host);
    code.route_key.url_path = Some(path);
    if plain_http {
        code.warn(WarningCode::OddValue, None, "http:// rather than https://");
    }
    Ok(code)
}

fn alipay(path: &str) -> Result<MerchantCode<'_>, DecodeError> {
    let err = |reason| DecodeError::Url { scheme: "Alipay", reason };
    let token = path.strip_prefix('/').ok_or(err("no code after the host"))?;
    let token = token.strip_suffix('/').unwrap_or(token);
    if !is_token(token) {
        return Err(err("the code after the host is not letters and digits"));
    }
    let kind = token.get(..3).map(str::to_ascii_lowercase);
    let (code_type, known) = match kind.as_deref() {
        Some("bax") => (CodeType::Dynamic, true),
        Some("fkx") => (CodeType::Static, true),
        _ => (CodeType::Static, false),
    };
    let mut code = new_code(Scheme::Alipay, code_type, token);
    if !known {
        code.warn(
            WarningCode::UnknownUrlCode,
            None,
            "Alipay code of an unfamiliar kind; taken as a standing code",
        );
    }
    Ok(code)
}

fn unionpay(path: &str) -> Result<MerchantCode<'_>, DecodeError> {
    let err = |reason| DecodeError::Url { scheme: "UnionPay", reason };
    let rest = path.strip_prefix('/').ok_or(err("no institution code after the host"))?;
    let (inst, token) = rest.split_once('/').ok_or(err("expected /<institution>/<code>"))?;
    if inst.len() != 8 || !inst.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("the institution code is not 8 digits"));
    }
    if !is_token(token) {
        return Err(err("the code after the institution is not letters and digits"));
    }
    let mut code = new_code(Scheme::Unionpay, CodeType::Static, token);
    code.route_key.unionpay_institution = Some(inst);
    Ok(code)
}

fn wechat_static(token: &str) -> Result<MerchantCode<'_>, DecodeError> {
    if !is_token(token) {
        return Err(DecodeError::Url {
            scheme: "WeChat Pay",
            reason: "wxp:// is not followed by a code",
        });
    }
    let mut code = new_code(Scheme::Wechat, CodeType::Static, token);
    if !token.starts_with("f2f") {
        code.warn(
            WarningCode::UnknownUrlCode,
            None,
            "wxp:// code of an unfamiliar kind; taken as a standing code",
        );
    }
    Ok(code)
}

fn wechat_order(rest: &str) -> Result<MerchantCode<'_>, DecodeError> {
    let err = |reason| DecodeError::Url { scheme: "WeChat Pay", reason };
    let (host, path, query) = split(rest);
    let host_ok =
        host.eq_ignore_ascii_case("wxpay") || host.eq_ignore_ascii_case("pay.weixin.qq.com");
    if !host_ok || !path.to_ascii_lowercase().starts_with("/bizpayurl") {
        return Err(err("not a weixin://…/bizpayurl order code"));
    }
    let pr = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("pr="))
        .ok_or(err("no pr= parameter"))?;
    if !is_token(pr) {
        return Err(err("pr= is not letters and digits"));
    }
    let mut code = new_code(Scheme::Wechat, CodeType::Dynamic, pr);
    code.route_key.url_host = Some(host);
    code.route_key.url_path = Some(path);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_codes() {
        let c = decode("HTTPS://QR.ALIPAY.COM/FKX09613RWE3ROTNTVR362").unwrap();
        assert_eq!((c.scheme, c.code_type), (Scheme::Alipay, CodeType::Static));
        assert_eq!(
            decode("https://qr.alipay.com/bax07651xvtprxfkmxyf00a9").unwrap().code_type,
            CodeType::Dynamic
        );
        let u = decode("https://qr.95516.com/00010000/01213270247009520084852952021972").unwrap();
        assert_eq!(u.route_key.unionpay_institution, Some("00010000"));
        let w = decode("weixin://wxpay/bizpayurl?pr=NwY5Mz9").unwrap();
        assert_eq!((w.code_type, w.url_code), (CodeType::Dynamic, Some("NwY5Mz9")));
        assert_eq!(
            decode("wxp://f2f0kZPKzqOiF9dl2-92kt6S3KAhemrBiAyV").unwrap().code_type,
            CodeType::Static
        );
    }

    #[test]
    fn url_refusals() {
        for bad in [
            "https://example.com/fkx123",
            "https://qr.alipay.com/",
            "https://qr.alipay.com/fkx 12",
            "https://qr.95516.com/0001/abc",
            "https://qr.95516.com/00010000/",
            "weixin://wxpay/bizpayurl",
            "weixin://evil/bizpayurl?pr=1",
            "wxp://",
            "ftp://qr.alipay.com/fkx1",
            "hello",
        ] {
            assert!(decode(bad).is_err(), "{bad} accepted");
        }
    }
}
