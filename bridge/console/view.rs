//! How the console writes amounts, times and other values: amounts always with their currency,
//! from integer minor units (never a float), digits grouped; times in UTC, said so.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use qrbridge_fx::{Amount, Currency};
use serde_json::Value;

/// `1234567.50` → `1,234,567.50` (a sign and the decimals kept).
pub fn group(major: &str) -> String {
    let (sign, rest) = major.strip_prefix('-').map_or(("", major), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut out = String::with_capacity(major.len() + int.len() / 3);
    out.push_str(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// An amount as shown: `PHP 1,234.50`.
pub fn amount(a: &Amount) -> String {
    format!("{} {}", a.currency().code(), group(&a.to_major_string()))
}

/// An amount of `minor` units of `currency`; the raw units when they do not make an amount.
pub fn minor(currency: Currency, minor: i64) -> String {
    match Amount::from_minor(currency, minor) {
        Ok(a) => amount(&a),
        Err(_) => format!("{} {minor} (minor units)", currency.code()),
    }
}

/// An amount given as text `CUR 123.45` (as `Amount` displays itself).
pub fn parse_amount_text(text: &str) -> Option<Amount> {
    let (code, major) = text.split_once(' ')?;
    Amount::from_major_str(Currency::from_code(code).ok()?, major).ok()
}

/// An amount given as text `CUR 123.45` (as the admin API's risk view writes them): grouped
/// when it reads as one, as given otherwise.
pub fn amount_text(text: &str) -> String {
    parse_amount_text(text).map_or_else(|| text.to_owned(), |a| amount(&a))
}

/// `2026-11-20 02:00:00 UTC`.
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time written as the API writes it (RFC 3339), shown as [`time`]; as given when it does not
/// read.
pub fn time_text(text: &str) -> String {
    DateTime::parse_from_rfc3339(text).map_or_else(|_| text.to_owned(), |t| time(t.to_utc()))
}

/// A `<time>` element.
pub fn when(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) { (time(at)) } }
}

/// A duration in seconds, the way people say it: `45 s`, `12 min`, `3 h 05 min`, `2 d 4 h`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
        _ if s % 86400 < 3600 => format!("{} d", s / 86400),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

/// A small label with its meaning in words (colour is never the only cue).
pub fn badge(kind: &str, text: &str) -> Markup {
    html! { span class={ "badge " (kind) } { (text) } }
}

/// A JSON value as indented text, or a dash for none.
pub fn json_block(v: &Value) -> Markup {
    match v {
        Value::Null => html! { span class="muted" { "—" } },
        other => {
            let text = serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string());
            html! { pre class="json" { (text) } }
        }
    }
}

/// A JSON value as nested lists: objects as terms and definitions, arrays as lists.
pub fn json_tree(v: &Value) -> Markup {
    match v {
        Value::Object(map) if map.is_empty() => html! { span class="muted" { "none" } },
        Value::Object(map) => html! {
            dl class="facts" {
                @for (k, item) in map {
                    dt { (k.replace('_', " ")) }
                    dd { (json_tree(item)) }
                }
            }
        },
        Value::Array(items) if items.is_empty() => html! { span class="muted" { "none" } },
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let text: Vec<String> = items.iter().map(scalar).collect();
            html! { (text.join(", ")) }
        }
        Value::Array(items) => html! {
            ol { @for item in items { li { (json_tree(item)) } } }
        },
        other => html! { (scalar(other)) },
    }
}

/// Risk rules (or any JSON holding `*_minor*` amounts) as nested lists, each amount written with
/// its currency: `*_cny_minor_*` in CNY, other `*_minor*` keys in the currency of the nearest
/// enclosing key that names one (`currencies.PHP.prefund_minor`); counts as they are.
pub fn rules_tree(v: &Value) -> Markup {
    rules_in(v, None)
}

fn rules_in(v: &Value, currency: Option<Currency>) -> Markup {
    match v {
        Value::Object(map) if map.is_empty() => html! { span class="muted" { "none" } },
        Value::Object(map) => html! {
            dl class="facts" {
                @for (k, item) in map {
                    @let named = (k.len() == 3 && k.bytes().all(|b| b.is_ascii_uppercase()))
                        .then(|| Currency::from_code(k).ok())
                        .flatten();
                    @let in_cny = k.contains("cny_minor");
                    @let unit = if in_cny { Some(Currency::CNY) } else if k.contains("_minor") { currency } else { None };
                    @let label = k.replace("_cny_minor", "").replace("_minor", "").replace('_', " ");
                    dt { (label) @if in_cny { " (CNY)" } }
                    dd {
                        @match (unit, item.as_i64()) {
                            (Some(c), Some(m)) => { (minor(c, m)) }
                            _ => { (rules_in(item, named.or(currency))) }
                        }
                    }
                }
            }
        },
        other => json_tree(other),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "none".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A string field of a JSON object, or empty.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_carry_their_currency_and_group_their_digits() {
        let php = Currency::from_code("PHP").unwrap();
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(minor(php, 123_456_789), "PHP 1,234,567.89");
        assert_eq!(minor(php, -5), "PHP -0.05");
        assert_eq!(minor(jpy, 1_000), "JPY 1,000");
        assert_eq!(minor(jpy, 100), "JPY 100");
        assert_eq!(amount_text("PHP 1234.50"), "PHP 1,234.50");
        assert_eq!(amount_text("not an amount"), "not an amount");
        assert_eq!(group("-1234567"), "-1,234,567");
        assert_eq!(age(59), "59 s");
        assert_eq!(age(3 * 3600 + 5 * 60), "3 h 05 min");
        assert_eq!(age(2 * 86400 + 4 * 3600), "2 d 4 h");
        assert_eq!(age(86400), "1 d");
    }
}
