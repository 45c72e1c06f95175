//! What a change must bring, besides the admin certificate the listener checked: the console's
//! own origin and a CSRF token.
//!
//! A browser holding an admin certificate presents it to whatever page makes it send a request
//! to the admin listener, so a page elsewhere could post a form here "as" the admin. Two checks
//! stop that, each enough on its own:
//! - **Same origin.** Browsers say where a request comes from: `Origin` on every POST, and
//!   `Sec-Fetch-Site`. A change is taken only when `Origin` is this listener's own
//!   (`https://<host>` as the request names it) and `Sec-Fetch-Site`, when sent, is
//!   `same-origin`; a request with neither (not a browser) is refused: the admin API is there
//!   for programs.
//! - **CSRF token.** Every form carries `csrf` = `<issued>.<HMAC-SHA256(key, actor, issued)>`,
//!   made with a key drawn at start (never stored, never sent): a page elsewhere cannot read it,
//!   it names the admin it was made for, and it expires [`TOKEN_TTL_S`] after it was issued (the
//!   daemon's clock). A restart makes every open form's token stale: the page is opened again.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a form's token is good for, in seconds.
pub const TOKEN_TTL_S: i64 = 12 * 3600;
/// How far in the future a token's issue time may lie (clocks of nodes sharing a store differ
/// a little; the key does not, within a process).
const TOKEN_SKEW_S: i64 = 60;

/// The key tokens are made with: 32 random bytes, drawn once per process.
fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut key)
            .expect("the system's random source answers");
        key
    })
}

fn mac(actor: &str, issued: i64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key()).expect("HMAC takes a key of any length");
    // Length-prefixed, so no two (actor, time) pairs give the same input.
    m.update(b"qrbridge console csrf v1\0");
    m.update(&(actor.len() as u64).to_be_bytes());
    m.update(actor.as_bytes());
    m.update(&issued.to_be_bytes());
    m
}

/// A token for `actor`'s forms, issued `now`.
pub fn token(actor: &str, now: DateTime<Utc>) -> String {
    let issued = now.timestamp();
    format!("{issued}.{}", hex::encode(mac(actor, issued).finalize().into_bytes()))
}

/// Whether `token` was made here for `actor` and is still good at `now` (compared in constant
/// time).
pub fn token_ok(actor: &str, token: Option<&str>, now: DateTime<Utc>) -> bool {
    let Some((issued, tag)) = token.and_then(|t| t.split_once('.')) else {
        return false;
    };
    let (Ok(issued), Ok(tag)) = (issued.parse::<i64>(), hex::decode(tag)) else {
        return false;
    };
    let age = now.timestamp().saturating_sub(issued);
    if !(-TOKEN_SKEW_S..=TOKEN_TTL_S).contains(&age) {
        return false;
    }
    mac(actor, issued).verify_slice(&tag).is_ok()
}

/// Whether a change comes from a page of this listener's own origin; the reason when not.
pub fn same_origin<B>(req: &http::Request<B>) -> Result<(), String> {
    let header = |name: http::header::HeaderName| {
        req.headers().get(name).map(|v| v.to_str().map_err(|_| "an unreadable header".to_owned()))
    };
    let fetch_site = header(http::header::HeaderName::from_static("sec-fetch-site")).transpose()?;
    if let Some(site) = fetch_site {
        if site != "same-origin" {
            return Err(format!("the request came from another site (Sec-Fetch-Site: {site})"));
        }
    }
    // HTTP/2 names the authority in the request's URI, HTTP/1.1 in `Host`.
    let host = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => header(http::header::HOST)
            .transpose()?
            .ok_or_else(|| "the request names no host".to_owned())?
            .to_owned(),
    };
    match header(http::header::ORIGIN).transpose()? {
        Some(origin) if origin.eq_ignore_ascii_case(&format!("https://{host}")) => Ok(()),
        Some(origin) => Err(format!("the request came from {origin}, not https://{host}")),
        None if fetch_site.is_some() => Ok(()),
        None => Err("the request says neither where it came from (Origin) nor from which site \
                     (Sec-Fetch-Site)"
            .to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_for_its_admin_until_it_expires() {
        let at: DateTime<Utc> = "2026-11-20T02:00:00Z".parse().unwrap();
        let t = token("admin", at);
        assert!(token_ok("admin", Some(&t), at));
        assert!(token_ok("admin", Some(&t), at + chrono::Duration::seconds(TOKEN_TTL_S)));
        assert!(!token_ok("admin", Some(&t), at + chrono::Duration::seconds(TOKEN_TTL_S + 1)));
        assert!(!token_ok("admin-2", Some(&t), at), "another admin's token");
        let (issued, tag) = t.split_once('.').unwrap();
        let later = format!("{}.{tag}", issued.parse::<i64>().unwrap() + 3600);
        assert!(!token_ok("admin", Some(&later), at + chrono::Duration::hours(2)), "moved time");
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(!token_ok("admin", Some(std::str::from_utf8(&flipped).unwrap()), at));
        for bad in ["", ".", "x.y", "1.", &format!("{issued}.zz")] {
            assert!(!token_ok("admin", Some(bad), at), "{bad:?}");
        }
        assert!(!token_ok("admin", None, at));
    }

    fn post(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::post(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_the_listeners_own_origin_may_change_anything() {
        let h1 = |hs: &[(&str, &str)]| {
            let mut all = vec![("host", "127.0.0.1:8444")];
            all.extend_from_slice(hs);
            same_origin(&post("/console/rates", &all))
        };
        assert!(h1(&[("origin", "https://127.0.0.1:8444")]).is_ok());
        assert!(
            h1(&[("origin", "https://127.0.0.1:8444"), ("sec-fetch-site", "same-origin")]).is_ok()
        );
        assert!(h1(&[("sec-fetch-site", "same-origin")]).is_ok());
        for refused in [
            vec![],
            vec![("origin", "https://evil.example")],
            vec![("origin", "null")],
            vec![("origin", "http://127.0.0.1:8444")],
            vec![("origin", "https://127.0.0.1:8444"), ("sec-fetch-site", "cross-site")],
            vec![("origin", "https://127.0.0.1:8444"), ("sec-fetch-site", "same-site")],
            vec![("sec-fetch-site", "none")],
        ] {
            assert!(h1(&refused).is_err(), "{refused:?}");
        }
        // HTTP/2: the authority is in the request's URI.
        let h2 =
            post("https://127.0.0.1:8444/console/rates", &[("origin", "https://127.0.0.1:8444")]);
        assert!(same_origin(&h2).is_ok());
        let h2 =
            post("https://127.0.0.1:8444/console/rates", &[("origin", "https://localhost:8444")]);
        assert!(same_origin(&h2).is_err());
    }
}
