//! The console's stylesheet and script, compiled in. Pages name them with a digest of their
//! bytes (`?v=…`), so a browser may keep them: a new build's pages name new ones.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use crate::http::Resp;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The stylesheet's path, with its digest.
pub fn css_href() -> &'static str {
    static HREF: OnceLock<String> = OnceLock::new();
    HREF.get_or_init(|| format!("/console/assets/console.css?v={}", digest(CSS)))
}

/// The script's path, with its digest.
pub fn js_src() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| format!("/console/assets/console.js?v={}", digest(JS)))
}

fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// `GET /console/assets/{name}`.
pub fn serve(name: &str) -> Resp {
    let (body, kind) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => {
            let mut resp = http::Response::new(Full::new(Bytes::from_static(b"no such file\n")));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            super::secure(&mut resp, true);
            return resp;
        }
    };
    let mut resp = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    super::secure(&mut resp, false);
    // Named by digest: safe to keep for a day (this browser only).
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400"));
    resp
}
