//! Semantic checks of a parsed [`Config`]: everything serde cannot see (references, bounds,
//! uniqueness, formats). Reports every problem, not just the first.

use std::collections::HashSet;

use qrbridge_fx::{Amount, Currency};

use crate::load::Problem;
use crate::model::*;

/// Every problem with `c`; empty when it is usable.
pub fn check(c: &Config) -> Vec<Problem> {
    let mut p = Problems(Vec::new());
    listeners(&mut p, &c.listeners);
    partners(&mut p, &c.partners);
    let acquirer_ids = acquirers(&mut p, &c.acquirers);
    routes(&mut p, &c.routes, &acquirer_ids);
    fx(&mut p, &c.fx);
    settlement(&mut p, &c.settlement);
    others(&mut p, c);
    let partner_ids: HashSet<&str> = c.partners.iter().map(|x| x.id.as_str()).collect();
    p.0.extend(c.risk.validate(|id| partner_ids.contains(id), |id| acquirer_ids.contains(id)));
    p.0
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    fn range(&mut self, path: &str, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.add(path, format!("{value} is outside {min}..={max}"));
        }
    }
}

/// Ids appear in records, logs and URLs: keep them plain.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn listeners(p: &mut Problems, l: &Listeners) {
    let all = [("partner", l.partner), ("admin", l.admin), ("acquirer", l.acquirer)];
    for (i, (name, addr)) in all.iter().enumerate() {
        if addr.port() != 0 && all[..i].iter().any(|(_, a)| a == addr) {
            p.add(
                format!("listeners.{name}"),
                format!("{addr} is already used by another listener"),
            );
        }
    }
}

fn identity(p: &mut Problems, path: &str, id: &Identity) -> String {
    match id {
        Identity::SanUri(s) | Identity::SanDns(s) => {
            if s.is_empty() || s.chars().any(char::is_whitespace) {
                p.add(path, format!("{s:?} is not a certificate name"));
            }
            s.to_ascii_lowercase()
        }
        Identity::Sha256(hex) => {
            let clean: String = hex.chars().filter(|c| *c != ':').collect();
            if clean.len() != 64 || !clean.chars().all(|c| c.is_ascii_hexdigit()) {
                p.add(format!("{path}.sha256"), "expected 64 hex digits (colons allowed)");
            }
            clean.to_ascii_lowercase()
        }
    }
}

fn partners(p: &mut Problems, partners: &[Partner]) {
    let mut ids = HashSet::new();
    let mut identities = HashSet::new();
    for (i, partner) in partners.iter().enumerate() {
        let at = format!("partners[{i}]");
        if !valid_id(&partner.id) {
            p.add(format!("{at}.id"), format!("{:?} must be 1-64 of a-z 0-9 - _ .", partner.id));
        } else if !ids.insert(partner.id.as_str()) {
            p.add(format!("{at}.id"), format!("{:?} is used by an earlier partner", partner.id));
        }
        let key = identity(p, &format!("{at}.identity"), &partner.identity);
        if !identities.insert(key) {
            p.add(
                format!("{at}.identity"),
                "the same certificate identity is given to an earlier partner",
            );
        }
        if partner.wallet_currencies.is_empty() {
            p.add(format!("{at}.wallet_currencies"), "at least one currency is needed");
        }
        let mut seen = HashSet::new();
        for (j, c) in partner.wallet_currencies.iter().enumerate() {
            if *c == Currency::CNY {
                p.add(
                    format!("{at}.wallet_currencies[{j}]"),
                    "CNY is the merchant side, not a wallet currency",
                );
            }
            if !seen.insert(*c) {
                p.add(format!("{at}.wallet_currencies[{j}]"), format!("{c} is listed twice"));
            }
        }
        match (&partner.webhook_url, &partner.webhook_secret) {
            (Some(url), secret) => {
                if !url.starts_with("https://") {
                    p.add(format!("{at}.webhook_url"), "must be an https:// URL");
                }
                if secret.as_ref().is_none_or(|s| s.expose().len() < 16) {
                    p.add(
                        format!("{at}.webhook_secret"),
                        "a secret of at least 16 characters is needed with a webhook_url",
                    );
                }
            }
            (None, Some(_)) => p.add(format!("{at}.webhook_secret"), "given without a webhook_url"),
            (None, None) => {}
        }
        let l = &partner.limits;
        p.range(&format!("{at}.limits.requests_per_s"), l.requests_per_s.into(), 1, 1_000_000);
        p.range(&format!("{at}.limits.burst"), l.burst.into(), 1, 1_000_000);
        if l.payment_cny_minor_max < 1 || l.payment_cny_minor_max > Amount::MAX_MINOR {
            p.add(
                format!("{at}.limits.payment_cny_minor_max"),
                format!("must be 1..={}", Amount::MAX_MINOR),
            );
        }
    }
}

fn acquirers(p: &mut Problems, acquirers: &[Acquirer]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for (i, a) in acquirers.iter().enumerate() {
        let at = format!("acquirers[{i}]");
        if !valid_id(&a.id) {
            p.add(format!("{at}.id"), format!("{:?} must be 1-64 of a-z 0-9 - _ .", a.id));
        } else if !ids.insert(a.id.clone()) {
            p.add(format!("{at}.id"), format!("{:?} is used by an earlier acquirer", a.id));
        }
        if a.endpoint != "sandbox" && !a.endpoint.starts_with("https://") {
            p.add(format!("{at}.endpoint"), "must be an https:// URL or \"sandbox\"");
        }
        if let Some(id) = &a.identity {
            identity(p, &format!("{at}.identity"), id);
        }
        p.range(&format!("{at}.timeout_ms"), a.timeout_ms, 1, 120_000);
        p.range(&format!("{at}.connect_timeout_ms"), a.connect_timeout_ms, 1, 60_000);
        p.range(&format!("{at}.answer_bytes_max"), a.answer_bytes_max, 1_024, 16 << 20);
    }
    ids
}

fn routes(p: &mut Problems, routes: &[Route], acquirers: &HashSet<String>) {
    for (i, r) in routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !acquirers.contains(&r.acquirer) {
            p.add(
                format!("{at}.acquirer"),
                format!("{:?} is not a configured acquirer", r.acquirer),
            );
        }
        if let Some(s) = &r.scheme {
            if !["EMVCO", "ALIPAY", "WECHAT", "UNIONPAY"].contains(&s.as_str()) {
                p.add(
                    format!("{at}.scheme"),
                    format!("{s:?} is not one of EMVCO, ALIPAY, WECHAT, UNIONPAY"),
                );
            }
        }
        if let Some(t) = r.emvco_template {
            if !(2..=51).contains(&t) {
                p.add(
                    format!("{at}.emvco_template"),
                    format!("{t} is not a merchant account template (02-51)"),
                );
            }
        }
        if let Some(code) = &r.unionpay_institution {
            if code.len() != 8 || !code.bytes().all(|b| b.is_ascii_digit()) {
                p.add(format!("{at}.unionpay_institution"), "expected 8 digits");
            }
        }
        if r.path_prefix.as_ref().is_some_and(|pp| !pp.starts_with('/')) {
            p.add(format!("{at}.path_prefix"), "must start with /");
        }
    }
}

fn fx(p: &mut Problems, fx: &Fx) {
    let mut seen = HashSet::new();
    for (i, c) in fx.pivots.iter().enumerate() {
        if !seen.insert(*c) {
            p.add(format!("fx.pivots[{i}]"), format!("{c} is listed twice"));
        }
    }
    p.range("fx.max_age_s", fx.max_age_s, 1, 86_400 * 366);
    p.range("fx.as_of_skew_s", fx.as_of_skew_s, 0, 3_600);
    p.range("fx.rate_move_bps_max", u64::from(fx.rate_move_bps_max), 1, 1_000_000);
    p.range("fx.quote_ttl_s", fx.quote_ttl_s, 1, 3_600);
    let s = &fx.spread;
    if s.min_bps > s.max_bps {
        p.add("fx.spread.min_bps", format!("{} is above max_bps {}", s.min_bps, s.max_bps));
    } else if s.default_bps < s.min_bps || s.default_bps > s.max_bps {
        p.add(
            "fx.spread.default_bps",
            format!("{} is outside {}..={}", s.default_bps, s.min_bps, s.max_bps),
        );
    }
    let mut ids = HashSet::new();
    for (i, src) in fx.sources.iter().enumerate() {
        let at = format!("fx.sources[{i}]");
        if !valid_id(&src.id) {
            p.add(format!("{at}.id"), format!("{:?} must be 1-64 of a-z 0-9 - _ .", src.id));
        } else if !ids.insert(src.id.as_str()) {
            p.add(format!("{at}.id"), format!("{:?} is used by an earlier source", src.id));
        }
        match (src.kind, &src.location) {
            (RateSourceKind::Builtin, Some(_)) => {
                p.add(format!("{at}.location"), "a builtin source has no location")
            }
            (RateSourceKind::Builtin, None) => {}
            (_, None) => p.add(format!("{at}.location"), "a file path or https:// URL is needed"),
            (_, Some(loc)) if loc.contains("://") && !loc.starts_with("https://") => {
                p.add(format!("{at}.location"), "URLs must be https://")
            }
            (_, Some(_)) => {}
        }
        if let Some(poll) = src.poll_s {
            p.range(&format!("{at}.poll_s"), poll, 10, 86_400);
        }
        if let Some(age) = src.max_age_s {
            p.range(&format!("{at}.max_age_s"), age, 1, 86_400 * 366);
        }
    }
}

/// `HH:MM`, 00:00 to 23:59.
pub fn parse_hhmm(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

fn settlement(p: &mut Problems, s: &Settlement) {
    if s.time_zone.parse::<chrono_tz::Tz>().is_err() {
        p.add("settlement.time_zone", format!("{:?} is not an IANA time zone", s.time_zone));
    }
    for (key, v) in [("cutoff", &s.cutoff), ("cancel_until", &s.cancel_until)] {
        if parse_hhmm(v).is_none() {
            p.add(format!("settlement.{key}"), format!("{v:?} is not HH:MM"));
        }
    }
    p.range("settlement.refund_window_days", s.refund_window_days.into(), 1, 3_660);
}

fn others(p: &mut Problems, c: &Config) {
    p.range("storage.cache_bytes", c.storage.cache_bytes, 1 << 20, 1 << 40);
    p.range("storage.pool_size", u64::from(c.storage.pool_size), 1, 1_000);
    p.range("cluster.lease_ttl_ms", c.cluster.lease_ttl_ms, 1_000, 600_000);
    p.range("cluster.poll_ms", c.cluster.poll_ms, 10, 60_000);
    p.range("ops.rates_stale_after_s", c.ops.rates_stale_after_s, 1, 86_400);
    if let Some(id) = &c.cluster.node_id {
        if !valid_id(id) {
            p.add(
                "cluster.node_id",
                "lowercase letters, digits, '-', '_' and '.' only, 1 to 64 of them",
            );
        }
    }
    if let Some(url) = &c.storage.url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            p.add("storage.url", "must be a postgres:// or postgresql:// URL");
        }
    }
    p.range("storage.flush_every_ms", c.storage.flush_every_ms, 0, 1_000);
    p.range("storage.quote_retention_s", c.storage.quote_retention_s, 0, 366 * 86_400);
    p.range("storage.retention_sweep_s", c.storage.retention_sweep_s, 1, 86_400);
    p.range("storage.backup_log_bytes_max", c.storage.backup_log_bytes_max, 1, 1 << 40);
    if c.resolver.inquiry_schedule_s.is_empty() {
        p.add("resolver.inquiry_schedule_s", "at least one delay is needed");
    }
    for (i, d) in c.resolver.inquiry_schedule_s.iter().enumerate() {
        p.range(&format!("resolver.inquiry_schedule_s[{i}]"), *d, 1, 86_400);
    }
    p.range("resolver.payment_expiry_s", c.resolver.payment_expiry_s, 1, 7 * 86_400);
    let w = &c.webhooks;
    p.range("webhooks.timeout_ms", w.timeout_ms, 1, 120_000);
    p.range("webhooks.backoff_initial_ms", w.backoff_initial_ms, 1, w.backoff_max_ms.max(1));
    p.range("webhooks.backoff_max_ms", w.backoff_max_ms, 1, 86_400_000);
    p.range("webhooks.max_age_s", w.max_age_s, 1, 30 * 86_400);
    p.range("webhooks.concurrency", u64::from(w.concurrency), 1, 1_024);
    let lane_max = u64::from(w.concurrency.max(1));
    p.range("webhooks.partner_concurrency", u64::from(w.partner_concurrency), 1, lane_max);
    p.range("webhooks.answer_bytes_max", w.answer_bytes_max, 0, 1 << 20);
    p.range("resolver.concurrency", u64::from(c.resolver.concurrency), 1, 1_024);
    p.range("resolver.reversal_refusals_max", u64::from(c.resolver.reversal_refusals_max), 1, 100);
    p.range(
        "resolver.acquirer_concurrency_max",
        u64::from(c.resolver.acquirer_concurrency_max),
        1,
        // Half the resolver at most: one acquirer's outage leaves the other half to the rest.
        u64::from((c.resolver.concurrency / 2).max(1)),
    );
    p.range("resolver.late_approvals_max", u64::from(c.resolver.late_approvals_max), 1, 100);
    let l = &c.limits;
    p.range("limits.body_bytes_max", l.body_bytes_max, 256, 16 << 20);
    p.range("limits.connections_max", l.connections_max.into(), 1, 1_000_000);
    p.range("limits.concurrency_max", l.concurrency_max.into(), 1, 1_000_000);
    p.range("limits.request_timeout_ms", l.request_timeout_ms, 1, 600_000);
    p.range("limits.code_chars_max", l.code_chars_max.into(), 64, 65_536);
    p.range("limits.handshake_timeout_ms", l.handshake_timeout_ms, 1, 120_000);
    p.range(
        "limits.connections_per_ip_max",
        l.connections_per_ip_max.into(),
        1,
        l.connections_max.max(1).into(),
    );
    p.range("limits.handshakes_max", l.handshakes_max.into(), 1, 1_000_000);
    p.range("limits.header_read_timeout_ms", l.header_read_timeout_ms, 1, 600_000);
    p.range("limits.idle_timeout_ms", l.idle_timeout_ms, 1, 3_600_000);
    p.range("limits.connection_max_age_s", l.connection_max_age_s, 1, 7 * 86_400);
    p.range("limits.http2_keep_alive_interval_ms", l.http2_keep_alive_interval_ms, 1, 3_600_000);
    p.range("limits.http2_keep_alive_timeout_ms", l.http2_keep_alive_timeout_ms, 1, 600_000);
    p.range("limits.http2_streams_max", l.http2_streams_max.into(), 1, 10_000);
    // A body deadline past the request's own would never fire.
    p.range("limits.body_read_timeout_ms", l.body_read_timeout_ms, 1, l.request_timeout_ms.max(1));
    p.range("limits.shutdown_timeout_ms", l.shutdown_timeout_ms, 1, 600_000);
    p.range("limits.linger_ms", l.linger_ms, 0, 60_000);
    p.range("limits.linger_bytes_max", l.linger_bytes_max, 0, 1 << 30);
    for (i, partner) in c.partners.iter().enumerate() {
        if let Some(n) = partner.limits.concurrency_max {
            p.range(
                &format!("partners[{i}].limits.concurrency_max"),
                n.into(),
                1,
                l.concurrency_max.max(1).into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_backup_may_hold_some_memory_and_256_mib_by_default() {
        let c = crate::from_str("", Path::new("/")).unwrap();
        assert_eq!(c.storage.backup_log_bytes_max, 256 << 20);
        let zero = "[storage]\nbackup_log_bytes_max = 0\n";
        let e = crate::from_str(zero, Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("storage.backup_log_bytes_max"), "{e}");
        let set = "[storage]\nbackup_log_bytes_max = 1048576\n";
        assert_eq!(
            crate::from_str(set, Path::new("/")).unwrap().storage.backup_log_bytes_max,
            1 << 20
        );
    }
}
