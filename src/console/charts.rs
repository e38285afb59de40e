//! The console's pictures as inline SVG, written here (as the backtest's
//! sweep is): a card's history as a timeline of attention, and daily series
//! as lines. Every text that came from data is escaped.

use chrono::{DateTime, NaiveDate, Utc};
use std::fmt::Write;

/// Text for SVG/HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// One past transaction on the timeline.
pub struct Past<'a> {
    pub tx_id: &'a str,
    pub ts: DateTime<Utc>,
    pub weight: f32,
    pub amount: f64,
    pub fraud: Option<bool>,
}

const FRAUD: &str = "#d62728";
const GOOD: &str = "#1f77b4";
const UNKNOWN: &str = "#7f7f7f";

/// The card's past transactions left of the decided one (at `now`), each a
/// circle whose area is its attention weight; red when labelled fraud.
pub fn timeline(past: &[Past], now: DateTime<Utc>) -> String {
    const W: f64 = 760.0;
    const H: f64 = 150.0;
    const LEFT: f64 = 30.0;
    const RIGHT: f64 = 60.0;
    const AXIS: f64 = 100.0;
    let first = past.iter().map(|p| p.ts).min().unwrap_or(now).min(now);
    let span = (now - first).num_seconds().max(60) as f64;
    let x = |t: DateTime<Utc>| LEFT + (t - first).num_seconds() as f64 / span * (W - LEFT - RIGHT);
    let max_w = past
        .iter()
        .map(|p| p.weight)
        .fold(0.0f32, f32::max)
        .max(1e-6);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11" role="img" aria-label="the card's past transactions and their attention weights">"##
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{AXIS}" x2="{}" y2="{AXIS}" stroke="#999"/>"##,
        W - RIGHT + 10.0
    );
    for (t, anchor) in [(first, "start"), (now, "end")] {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="{anchor}" fill="#555">{}</text>"##,
            x(t),
            AXIS + 30.0,
            t.format("%Y-%m-%d %H:%M")
        );
    }
    // Light ones first, so the heavily attended sit on top.
    let mut order: Vec<&Past> = past.iter().collect();
    order.sort_by(|a, b| a.weight.total_cmp(&b.weight));
    for p in order {
        let r = 3.0 + 22.0 * (p.weight / max_w).sqrt() as f64;
        let colour = match p.fraud {
            Some(true) => FRAUD,
            Some(false) => GOOD,
            None => UNKNOWN,
        };
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{AXIS}" r="{r:.1}" fill="{colour}" fill-opacity="0.55" stroke="{colour}"><title>{} · {} · {:.2} · attention {:.3}</title></circle>"##,
            x(p.ts),
            esc(p.tx_id),
            p.ts.format("%Y-%m-%d %H:%M"),
            p.amount,
            p.weight
        );
    }
    let _ = writeln!(
        s,
        r##"<path d="M{0:.1} {1} l8 -8 l8 8 l-8 8 z" transform="translate(-8 0)" fill="#222"><title>this transaction</title></path>"##,
        x(now),
        AXIS
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="16" fill="#555">circle area = attention weight · <tspan fill="{FRAUD}">● fraud</tspan> <tspan fill="{GOOD}">● legitimate</tspan> <tspan fill="{UNKNOWN}">● no label</tspan> · ◆ this transaction</text>"##
    );
    s.push_str("</svg>\n");
    s
}

/// A named daily series; `None` where the value is undefined (no alerts).
pub struct Series {
    pub name: String,
    pub points: Vec<(NaiveDate, Option<f64>)>,
}

const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Daily series as lines with dots; `y_max` fixes the scale (1 for
/// precision and recall), else it fits the data.
pub fn lines(title: &str, series: &[Series], y_max: Option<f64>) -> String {
    const W: f64 = 760.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 200.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 40.0;
    let days: Vec<NaiveDate> = {
        let mut d: Vec<NaiveDate> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        d.sort();
        d.dedup();
        d
    };
    let top = y_max.unwrap_or_else(|| {
        series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.1
    });
    let (first, last) = match (days.first(), days.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => {
            return format!(
                r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 60" font-family="sans-serif" font-size="12"><text x="10" y="30">{}: no data in this range</text></svg>"##,
                esc(title)
            )
        }
    };
    let span = (last - first).num_days().max(1) as f64;
    let x = |d: NaiveDate| LEFT + (d - first).num_days() as f64 / span * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / top) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11" role="img" aria-label="{}">"##,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{}</text>"##,
        esc(title)
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end" fill="#555">{4}</text>"##,
            y(v),
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            if top <= 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        );
    }
    for (d, anchor) in [(first, "start"), (last, "end")] {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="{anchor}" fill="#555">{d}</text>"##,
            x(d),
            H - BOTTOM + 18.0
        );
    }
    for (i, line) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut path = String::new();
        let mut pen_down = false;
        for (d, v) in &line.points {
            match v {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1} {:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(*d),
                        y(*v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = writeln!(
            s,
            r##"<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>"##
        );
        for (d, v) in &line.points {
            if let Some(v) = v {
                let _ = writeln!(
                    s,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{} {d}: {v:.4}</title></circle>"##,
                    x(*d),
                    y(*v),
                    esc(&line.name)
                );
            }
        }
        let ly = TOP + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{}" y="{:.1}">{}</text>"##,
            W - RIGHT + 12.0,
            ly,
            W - RIGHT + 30.0,
            ly + 5.0,
            esc(&line.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_break_out_of_the_picture() {
        let ts = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let past = [Past {
            tx_id: "<script>alert(1)</script>\u{7}",
            ts,
            weight: 0.5,
            amount: 1.0,
            fraud: Some(true),
        }];
        let svg = timeline(&past, ts + chrono::Duration::hours(1));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        let series = [Series {
            name: "\"><script>".into(),
            points: vec![
                (ts.date_naive(), Some(0.5)),
                (ts.date_naive().succ_opt().unwrap(), None),
            ],
        }];
        let svg = lines("t<", &series, Some(1.0));
        assert!(!svg.contains("<script>") && svg.contains("t&lt;"));
    }

    #[test]
    fn an_empty_range_says_so() {
        assert!(lines("alerts", &[], None).contains("no data"));
    }
}
