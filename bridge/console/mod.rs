//! The treasury console: the admin API as web pages, on the admin listener (same mTLS, admin
//! certificates only — the listener refuses every other certificate before a page is reached).
//!
//! - [`serve`]: the one entry point; the admin router hands it every path under `/console/`.
//! - `pages`: the pages, rendered on the server (maud); `chart`: the revenue chart, an SVG drawn
//!   on the server (plotters, integer coordinates); `assets`: the CSS and the little JavaScript,
//!   compiled into the binary and served as files (the pages carry no inline script or style).
//! - `guard`: what a change must bring — a POST, from the console's own origin (`Origin`, or
//!   `Sec-Fetch-Site: same-origin`), with a CSRF token bound to the admin's identity; `form`:
//!   reading form bodies (URL-encoded, and multipart for the acquirer file).
//! - [`p12`]: the development admin identity as PKCS#12, for browsers.
//!
//! Every change calls what the admin API calls (the treasury, settlement and engine methods), as
//! the admin the certificate names, so it is audited the same way; nothing here writes the store
//! by itself except a parked webhook's replay, done exactly as the admin API's route does it.

use std::collections::HashMap;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::Full;

use crate::admin::Admin;
use crate::http::{Req, Resp};
use crate::store::Store;

mod assets;
mod chart;
mod days;
mod form;
mod guard;
mod money;
pub mod p12;
mod pages;
mod view;
mod watch;

pub use p12::{write_p12, DEV_P12_PASSWORD};

/// Every route of the console, as `(method, path template)`: all under `/console/`, listed once,
/// as the last of the admin listener's ([`crate::admin::ROUTES`]). A path that names a page
/// (`/console/settlement/run`) comes before a template it also fits (`/console/settlement/{day}`):
/// [`crate::http::route_template`] takes the first that fits.
pub const ROUTES: &[(&str, &str)] =
    crate::admin::ROUTES.split_at(first_console(crate::admin::ROUTES)).1;

/// Where the `/console/` routes begin in `routes`.
const fn first_console(routes: &[(&str, &str)]) -> usize {
    const PREFIX: &[u8] = b"/console/";
    let mut i = 0;
    while i < routes.len() {
        let path = routes[i].1.as_bytes();
        let mut k = 0;
        while k < PREFIX.len() && k < path.len() && path[k] == PREFIX[k] {
            k += 1;
        }
        if k == PREFIX.len() {
            return i;
        }
        i += 1;
    }
    routes.len()
}

/// Largest URL-encoded form taken (every console form but the file upload).
const FORM_BYTES_MAX: u64 = 64 << 10;
/// Largest acquirer file taken, with its form (as the admin API's file routes).
const UPLOAD_BYTES_MAX: u64 = 32 << 20;

/// Serves `req`, a request for a path under `/console/` from the admin `actor` (the identity the
/// admin listener resolved from the client certificate, as every admin route gets it).
pub async fn serve<S: Store>(admin: &Admin<S>, actor: &str, req: Req) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ctx = pages::Ctx::new(admin, actor);
    if method == Method::GET || method == Method::HEAD {
        match segments.as_slice() {
            ["console"] => return redirect("/console/"),
            ["console", ""] => return redirect("/console/rates"),
            ["console", "assets", name] => return assets::serve(name),
            ["console", "rates"] => return ctx.rates(None).await,
            ["console", "spreads"] => return ctx.spreads(&query, None).await,
            ["console", "positions"] => return ctx.positions(&query).await,
            ["console", "settlement"] => return ctx.days_page(None).await,
            ["console", "settlement", day] => return ctx.settlement_day(day, None).await,
            ["console", "settlement", day, "files", name] => return ctx.download(day, name).await,
            ["console", "operations"] => return ctx.operations(None).await,
            ["console", "audit"] => return ctx.audit(&query).await,
            ["console", "proposals"] => return ctx.proposals(None).await,
            ["console", "risk"] => return ctx.risk().await,
            _ => {}
        }
    } else if method == Method::POST && ROUTES.contains(&("POST", path.as_str())) {
        return change(&ctx, &segments, req).await;
    }
    // A page of the console asked with a method it does not take, or no page at all.
    let template = match ROUTES.iter().find(|(_, t)| *t == path) {
        Some((_, t)) => t,
        None => crate::http::route_template(ROUTES, &path),
    };
    let allowed: Vec<&str> =
        ROUTES.iter().filter(|(_, t)| *t == template).map(|(m, _)| *m).collect();
    if allowed.is_empty() {
        return ctx.problem(StatusCode::NOT_FOUND, "No such page", "The console has no page here.");
    }
    // As every route of the listener answers it (JSON, with `allow`): no form sends such a
    // method, only a program would.
    crate::error::ApiError::MethodNotAllowed(allowed.join(", ")).response()
}

/// A change: the origin checked, the form read, its CSRF token checked, then the change made.
async fn change<S: Store>(ctx: &pages::Ctx<'_, S>, segments: &[&str], req: Req) -> Resp {
    if let Err(why) = guard::same_origin(&req) {
        tracing::warn!(admin = %ctx.actor, why = %why, "console change refused: not from the console's origin");
        return ctx.problem(
            StatusCode::FORBIDDEN,
            "Change refused",
            &format!("{why}. Changes are taken only from the console's own pages."),
        );
    }
    let upload = segments == ["console", "settlement", "reconcile"];
    let max = if upload { UPLOAD_BYTES_MAX } else { FORM_BYTES_MAX };
    let fields = match form::read(req, max).await {
        Ok(f) => f,
        Err(e) => return ctx.problem(e.status(), "The form could not be read", &e.to_string()),
    };
    if !guard::token_ok(ctx.actor, fields.text("csrf"), ctx.now()) {
        tracing::warn!(admin = %ctx.actor, "console change refused: CSRF token missing, wrong or expired");
        return ctx.problem(
            StatusCode::FORBIDDEN,
            "Change refused",
            "This form has expired or did not come from this console. Open the page again and \
             repeat the change.",
        );
    }
    match segments {
        ["console", "rates"] => ctx.set_rate(&fields).await,
        ["console", "rates", "refresh"] => ctx.refresh_source(&fields).await,
        ["console", "spreads", "preview"] => ctx.spread_preview(&fields).await,
        ["console", "spreads"] => ctx.set_spread(&fields).await,
        ["console", "settlement", "run"] => ctx.run_day(&fields).await,
        ["console", "settlement", "reconcile"] => ctx.reconcile(&fields).await,
        ["console", "operations", "replay"] => ctx.replay(&fields).await,
        ["console", "operations", "settle"] => ctx.settle_attention(&fields).await,
        ["console", "proposals", "approve"] => ctx.decide(&fields, true).await,
        ["console", "proposals", "reject"] => ctx.decide(&fields, false).await,
        _ => ctx.problem(StatusCode::NOT_FOUND, "No such page", "The console has no page here."),
    }
}

/// `303 See Other` to `to` (a path of the console).
fn redirect(to: &'static str) -> Resp {
    let mut resp = http::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    secure(&mut resp, true);
    resp
}

/// The policy every console answer carries: scripts and styles from the console's own files only
/// (no inline script or style), no framing, no referrer beyond this origin, nothing sniffed; `no_store` for answers
/// with data (every page and file: only the CSS and JavaScript may be kept).
fn secure(resp: &mut Resp, no_store: bool) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on the console's own form posts.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if no_store {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// An HTML page answer.
fn html(status: StatusCode, body: String) -> Resp {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    secure(&mut resp, true);
    resp
}

#[cfg(test)]
mod tests {
    /// The console's routes are the admin listener's from the first `/console/` one to the end:
    /// all of those, and nothing else.
    #[test]
    fn the_console_routes_are_the_admin_listeners_last() {
        assert_eq!(super::ROUTES.len(), 22);
        assert!(super::ROUTES.iter().all(|(_, p)| p.starts_with("/console/")));
        let admin_only = crate::admin::ROUTES.len() - super::ROUTES.len();
        assert!(crate::admin::ROUTES[..admin_only].iter().all(|(_, p)| !p.starts_with("/console")));
        assert_eq!(super::first_console(&[("GET", "/x")]), 1);
    }
}
