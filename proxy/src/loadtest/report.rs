//! The load test's HTML report: one self-contained file (inline SVG charts, no scripts, no
//! external assets) that can be attached to a ticket or opened from a CI artifact.
//!
//! Charts: response time over time (p50/p95 per second, playlists and segments), response-time
//! percentiles (the whole distribution per type), throughput (requests/s and MB/s) and active
//! viewers over time. Tables: the summary and the per-type figures the terminal prints.

use std::fmt::Write as _;

use super::stats::{Second, Summary, PERCENTILES};

/// One line on a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// Renders the report for `summary`.
pub fn render(summary: &Summary) -> String {
    let mut html = String::with_capacity(64 * 1024);
    let title = format!(
        "Parallax load test: {} viewers, {}",
        summary.viewers,
        escape(&summary.target)
    );
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{CSS}</style></head><body>\n<h1>{title}</h1>\n"
    );
    html.push_str(&summary_table(summary));
    html.push_str(&type_table(summary));

    let seconds = |f: fn(&Second) -> f64| -> Vec<(f64, f64)> {
        summary
            .timeline
            .iter()
            .map(|s| (f64::from(s.t), f(s)))
            .collect()
    };
    html.push_str(&chart(
        "Response time over time (per second)",
        "seconds",
        "ms",
        &[
            Series {
                name: "playlist p50",
                color: "#4e79a7",
                points: seconds(|s| s.playlist_p50_ms),
            },
            Series {
                name: "playlist p95",
                color: "#a0cbe8",
                points: seconds(|s| s.playlist_p95_ms),
            },
            Series {
                name: "segment p50",
                color: "#e15759",
                points: seconds(|s| s.segment_p50_ms),
            },
            Series {
                name: "segment p95",
                color: "#ff9d9a",
                points: seconds(|s| s.segment_p95_ms),
            },
        ],
    ));
    let colors = ["#59a14f", "#4e79a7", "#e15759"];
    let percentile_series: Vec<Series> = summary
        .by_type
        .iter()
        .zip(colors)
        .map(|(stats, color)| Series {
            name: stats.kind.name(),
            color,
            points: stats
                .distribution_ms
                .iter()
                .enumerate()
                .map(|(i, &ms)| (i as f64, ms))
                .collect(),
        })
        .collect();
    html.push_str(&percentile_chart(&percentile_series));
    html.push_str(&chart(
        "Throughput",
        "seconds",
        "requests/s",
        &[Series {
            name: "requests/s",
            color: "#4e79a7",
            points: seconds(|s| s.requests as f64),
        }],
    ));
    html.push_str(&chart(
        "Bandwidth",
        "seconds",
        "MB/s",
        &[Series {
            name: "MB/s",
            color: "#f28e2b",
            points: seconds(|s| s.bytes as f64 / 1e6),
        }],
    ));
    html.push_str(&chart(
        "Active viewers and errors",
        "seconds",
        "count",
        &[
            Series {
                name: "viewers",
                color: "#59a14f",
                points: seconds(|s| f64::from(s.viewers)),
            },
            Series {
                name: "errors/s",
                color: "#e15759",
                points: seconds(|s| s.errors as f64),
            },
        ],
    ));
    html.push_str(
        "<p class=\"foot\">Written by <code>proxy loadtest</code>.</p>\n</body></html>\n",
    );
    html
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:780px}\
h1{font-size:18px}table{border-collapse:collapse;margin:12px 0}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}\
td:first-child,th:first-child{text-align:left}svg{display:block;margin:18px 0}\
.foot{color:#777;font-size:12px}";

fn summary_table(s: &Summary) -> String {
    let mut rows = vec![
        (
            "viewers (peak active)",
            format!("{} ({})", s.viewers, s.peak_viewers),
        ),
        (
            "ramp-up / duration",
            format!("{:.0} s / {:.1} s", s.ramp_up_secs, s.duration_secs),
        ),
        (
            "requests",
            format!("{} ({:.0}/s)", s.requests, s.requests_per_sec),
        ),
        ("errors", s.errors_text()),
        (
            "received",
            format!(
                "{:.1} MB ({:.1} MB/s)",
                s.bytes as f64 / 1e6,
                s.megabytes_per_sec
            ),
        ),
        (
            "slow segments (download > duration)",
            s.slow_segments.to_string(),
        ),
        ("fell behind the live window", s.fell_behind.to_string()),
        (
            "tester CPU",
            format!("{:.0} % of one core", s.tester_cpu_percent),
        ),
    ];
    if let (Some(n), Some(per)) = (s.origin_requests, s.origin_requests_per_viewer) {
        rows.push((
            "requests reaching the origin",
            format!("{n} ({per:.3} per viewer)"),
        ));
    }
    let mut out = String::from("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", k, escape(&v));
    }
    out.push_str("</table>\n");
    out
}

fn type_table(s: &Summary) -> String {
    let mut out = String::from(
        "<table>\n<tr><th>type</th><th>requests</th><th>errors</th><th>p50 ms</th>\
         <th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>MB</th></tr>\n",
    );
    for k in &s.by_type {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td>\
             <td>{:.1}</td><td>{:.1}</td></tr>",
            k.kind.name(),
            k.requests,
            k.errors,
            k.latency.p50_ms,
            k.latency.p95_ms,
            k.latency.p99_ms,
            k.latency.max_ms,
            k.bytes as f64 / 1e6
        );
    }
    out.push_str("</table>\n");
    out
}

fn percentile_chart(series: &[Series]) -> String {
    let labels: Vec<String> = PERCENTILES.iter().map(|p| format!("p{p}")).collect();
    chart_with_labels(
        "Response-time percentiles",
        "percentile",
        "ms",
        series,
        Some(&labels),
    )
}

fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    chart_with_labels(title, x_label, y_label, series, None)
}

/// An SVG chart with axes, ticks, a legend and one polyline per series. `x_labels` names the x
/// positions 0, 1, 2... instead of numbers.
fn chart_with_labels(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_labels: Option<&[String]>,
) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = nice_ceiling(points.map(|p| p.1).fold(0.0_f64, f64::max));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-size=\"11\" role=\"img\">\
         <title>{t}</title><text x=\"{LEFT}\" y=\"16\" font-size=\"13\" \
         font-weight=\"bold\">{t}</text>",
        t = escape(title)
    );
    // Grid and y ticks.
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = yy + 4.0,
            label = format_tick(v)
        );
    }
    // X ticks.
    match x_labels {
        Some(labels) => {
            for (i, label) in labels.iter().enumerate() {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    x(i as f64),
                    TOP + plot_h + 16.0,
                    escape(label)
                );
            }
        }
        None => {
            // Round ticks (1, 2 or 5 × 10^n apart), about five of them.
            let step = nice_ceiling(x_max / 5.0);
            let ticks = (x_max / step).floor() as u32;
            for i in 0..=ticks {
                let v = step * f64::from(i);
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    x(v),
                    TOP + plot_h + 16.0,
                    format_tick(v)
                );
            }
        }
    }
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{b}\" stroke=\"#888\"/>\
         <line x1=\"{LEFT}\" x2=\"{r}\" y1=\"{b}\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"{cx}\" y=\"{ly}\" text-anchor=\"middle\">{xl}</text>\
         <text x=\"14\" y=\"{cy}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {cy})\">{yl}</text>",
        b = TOP + plot_h,
        r = WIDTH - RIGHT,
        cx = LEFT + plot_w / 2.0,
        ly = HEIGHT - 6.0,
        cy = TOP + plot_h / 2.0,
        xl = escape(x_label),
        yl = escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let coords: Vec<String> = s
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.6\" points=\"{p}\"/>\
             <rect x=\"{lx}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{c}\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{n}</text>",
            c = s.color,
            p = coords.join(" "),
            lx = WIDTH - RIGHT - 120.0,
            ly = TOP + 4.0 + 14.0 * i as f64,
            tx = WIDTH - RIGHT - 106.0,
            ty = TOP + 13.0 + 14.0 * i as f64,
            n = escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest 1, 2 or 5 × 10^n at or above `v` (a round top for the y axis).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if v <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn format_tick(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(450.0), 500.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
