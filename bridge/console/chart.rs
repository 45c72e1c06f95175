//! The revenue chart: spread revenue per business day in one currency, stacked by partner and
//! pair, drawn on the server as SVG (plotters' SVG backend, no fonts of its own: the browser
//! draws the text). Coordinates are integer minor units, as the amounts are; axis labels are
//! written from them as amounts.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;
use qrbridge_fx::Currency;

/// The chart's size in SVG units (it scales to its box in the page).
const WIDTH: u32 = 960;
const HEIGHT: u32 = 320;

/// Series colours, each with at least 3:1 contrast against white (the legend in the page uses
/// the same ones: `.sw0`…`.sw7` in console.css).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x5f, 0xa8),
    RGBColor(0xd9, 0x73, 0x1a),
    RGBColor(0x2e, 0x85, 0x40),
    RGBColor(0xa3, 0x30, 0x7a),
    RGBColor(0x6b, 0x5b, 0x00),
    RGBColor(0x0e, 0x7c, 0x86),
    RGBColor(0x8a, 0x3b, 0x12),
    RGBColor(0x55, 0x5b, 0x66),
];

/// One stacked series: its label and its revenue per day, in minor units of the chart's
/// currency.
pub struct Series {
    pub label: String,
    pub by_day: BTreeMap<NaiveDate, i64>,
}

/// The chart of `series` over `days` (in order) in `currency`, as an SVG document fragment; `title`
/// is its accessible name. `None` when it could not be drawn (logged).
pub fn revenue_svg(
    currency: Currency,
    days: &[NaiveDate],
    series: &[Series],
    title: &str,
) -> Option<String> {
    match draw(currency, days, series) {
        Ok(svg) => Some(accessible(&svg, title)),
        Err(e) => {
            tracing::warn!(error = %e, "revenue chart not drawn");
            None
        }
    }
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

fn draw(currency: Currency, days: &[NaiveDate], series: &[Series]) -> DrawResult<String> {
    // The stack's top and bottom on each day (revenue may be negative: refunds, reversals).
    let mut top = 0i64;
    let mut bottom = 0i64;
    for day in days {
        let (mut up, mut down) = (0i64, 0i64);
        for s in series {
            let v = s.by_day.get(day).copied().unwrap_or(0);
            if v >= 0 {
                up = up.saturating_add(v);
            } else {
                down = down.saturating_add(v);
            }
        }
        top = top.max(up);
        bottom = bottom.min(down);
    }
    // Headroom above the tallest bar; at least one major unit, so an empty chart has an axis.
    let unit = 10i64.pow(currency.exponent());
    let top = top.saturating_add(top / 10).max(unit);
    let bottom = if bottom < 0 { bottom.saturating_add(bottom / 10) } else { 0 };
    let n = i64::try_from(days.len()).unwrap_or(i64::MAX).max(1);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(110)
            .build_cartesian_2d((0i64..n).into_segmented(), bottom..top)?;
        let label_every = usize::try_from(n / 12 + 1).unwrap_or(1);
        let day_label = |x: &SegmentValue<i64>| match x {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
                .ok()
                .filter(|i| i % label_every == 0)
                .and_then(|i| days.get(i))
                .map(|d| d.format("%m-%d").to_string())
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        };
        let amount_label = |y: &i64| super::view::minor(currency, *y);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .bold_line_style(RGBColor(0xd5, 0xdb, 0xe0))
            .light_line_style(WHITE)
            .axis_style(RGBColor(0x4a, 0x55, 0x60))
            .x_labels(days.len().clamp(1, 40))
            .x_label_formatter(&day_label)
            .y_labels(6)
            .y_label_formatter(&amount_label)
            .label_style(("sans-serif", 15).into_font().color(&RGBColor(0x14, 0x17, 0x1a)))
            .x_desc("business day")
            .draw()?;
        let mut ups = vec![0i64; days.len()];
        let mut downs = vec![0i64; days.len()];
        for (k, s) in series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let mut bars = Vec::new();
            for (i, day) in days.iter().enumerate() {
                let v = s.by_day.get(day).copied().unwrap_or(0);
                if v == 0 {
                    continue;
                }
                let stack = if v > 0 { &mut ups[i] } else { &mut downs[i] };
                let from = *stack;
                *stack = stack.saturating_add(v);
                let x = i64::try_from(i).unwrap_or(i64::MAX);
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(x), from), (SegmentValue::Exact(x + 1), *stack)],
                    color.filled(),
                );
                bar.set_margin(0, 0, 4, 4);
                bars.push(bar);
            }
            chart.draw_series(bars)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// The SVG with an accessible name and a box that scales: `role="img"`, a `<title>`, and the
/// fixed width and height replaced by the view box alone.
fn accessible(svg: &str, title: &str) -> String {
    let escaped = maud::html! { (title) }.into_string();
    let Some(open_end) = svg.find('>') else { return svg.to_owned() };
    let (open, rest) = svg.split_at(open_end);
    let open = open.replacen(&format!("width=\"{WIDTH}\""), "", 1).replacen(
        &format!("height=\"{HEIGHT}\""),
        "",
        1,
    );
    format!(
        "{open} role=\"img\" aria-label=\"{escaped}\" preserveAspectRatio=\"xMidYMid meet\"><title>{escaped}</title>{}",
        &rest[1..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_an_svg_with_its_name_and_amounts_on_its_axis() {
        let php = Currency::from_code("PHP").unwrap();
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        let days = [d("2026-11-18"), d("2026-11-19"), d("2026-11-20")];
        let series = [
            Series { label: "a".into(), by_day: [(days[0], 12_345), (days[2], 500)].into() },
            Series { label: "b".into(), by_day: [(days[1], -200)].into() },
        ];
        let svg = revenue_svg(php, &days, &series, "Spread revenue <PHP>").unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains("<title>Spread revenue &lt;PHP&gt;</title>"));
        assert!(svg.contains("viewBox=\"0 0 960 320\""), "{}", &svg[..200]);
        assert!(svg.contains("PHP "), "amount labels on the axis");
        assert!(svg.contains("11-19"), "day labels");
        assert!(!svg.contains("style="), "no inline style: the console's CSP forbids it");
        // Bars of both series' colours.
        assert!(svg.contains("#1F5FA8") || svg.contains("#1f5fa8"));
        assert!(svg.contains("#D9731A") || svg.contains("#d9731a"));
        // Empty: still an axis.
        assert!(revenue_svg(php, &days, &[], "none").is_some());
    }
}
