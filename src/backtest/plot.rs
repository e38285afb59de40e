//! The sweep as an SVG picture: precision and recall against alerts per day,
//! the policy in force and the candidate marked. Plain SVG, written here:
//! one picture does not need a plotting library.

use super::Report;
use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;

pub fn svg(report: &Report) -> String {
    let points: Vec<(f64, f64, f64)> = report
        .sweep
        .iter()
        .filter_map(|p| Some((p.alerts_per_day, p.precision?, p.recall?)))
        .collect();
    let marks = [
        ("in force", &report.in_force, "#222222"),
        ("candidate", &report.candidate, "#d62728"),
    ];
    let x_max = points
        .iter()
        .map(|p| p.0)
        .chain(marks.iter().map(|m| m.1.alerts_per_day))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let x = |v: f64| LEFT + v / x_max * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="22" font-size="14">Review-threshold sweep: precision and recall against alerts per day</text>"##
    );
    // Axes, grid and ticks.
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            v * 100.0
        );
        let xv = x_max * v;
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{TOP}" y2="{:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"##,
            x(xv),
            x(xv),
            H - BOTTOM,
            x(xv),
            H - BOTTOM + 16.0,
            xv
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">alerts (review + decline) per day</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 16.0
    );
    for (name, pick, colour) in [
        ("precision", 1usize, "#1f77b4"),
        ("recall", 2usize, "#ff7f0e"),
    ] {
        let path: Vec<String> = points
            .iter()
            .map(|p| {
                let v = if pick == 1 { p.1 } else { p.2 };
                format!("{:.1},{:.1}", x(p.0), y(v))
            })
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
        let ly = if pick == 1 { TOP + 10.0 } else { TOP + 30.0 };
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"##,
            W - RIGHT + 12.0,
            W - RIGHT + 36.0,
            W - RIGHT + 42.0,
            ly + 4.0
        );
    }
    for (i, (name, f, colour)) in marks.iter().enumerate() {
        let (Some(p), Some(r)) = (f.precision, f.recall) else {
            continue;
        };
        let cx = x(f.alerts_per_day);
        for v in [p, r] {
            let _ = writeln!(
                s,
                r##"<circle cx="{cx:.1}" cy="{:.1}" r="5" fill="{colour}"/>"##,
                y(v)
            );
        }
        let ly = TOP + 60.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{colour}"/><text x="{:.1}" y="{:.1}">{name}</text>"##,
            W - RIGHT + 24.0,
            ly,
            W - RIGHT + 42.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
