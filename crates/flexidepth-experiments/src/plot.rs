//! Small hand-written SVG charts, so that reports (training curves, the α-sweep trade-off) need no plotting
//! dependency: [`LineChart`] (named series of (x, y) points, optional log axes, legend) and [`Scatter`] (points
//! with their own labels). Non-finite points, and non-positive ones on a log axis, are skipped, never drawn.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One axis: its label and whether it is logarithmic (base 10).
#[derive(Debug, Clone, Default)]
pub struct Axis {
    pub label: String,
    pub log: bool,
}

impl Axis {
    pub fn new(label: &str) -> Self {
        Axis {
            label: label.into(),
            log: false,
        }
    }
    pub fn log(label: &str) -> Self {
        Axis {
            label: label.into(),
            log: true,
        }
    }
    fn usable(&self, v: f64) -> bool {
        v.is_finite() && (!self.log || v > 0.0)
    }
    fn to_lin(&self, v: f64) -> f64 {
        [v, v.log10()][self.log as usize]
    }
}

/// A named line of (x, y) points, drawn in order.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Several series on shared axes, with a legend.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

/// A point of a [`Scatter`] and the text written beside it (e.g. "α=1e-3").
#[derive(Debug, Clone)]
pub struct LabelledPoint {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// Labelled points, e.g. x = layers per token, y = perplexity ratio, one point per α.
#[derive(Debug, Clone)]
pub struct Scatter {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub points: Vec<LabelledPoint>,
}

/// Several chart documents stacked top to bottom in one SVG (each nested as its own `<svg>` at its offset).
pub fn stack(charts: &[String]) -> String {
    let h = HEIGHT * charts.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{h}\" viewBox=\"0 0 {WIDTH} {h}\">\n"
    );
    for (i, c) in charts.iter().enumerate() {
        s.push_str(&c.replacen("<svg ", &format!("<svg y=\"{}\" ", HEIGHT * i as f64), 1));
    }
    s.push_str("</svg>\n");
    s
}

/// Escape text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A number as a tick label: no trailing zeros, exponent form only for very large or small magnitudes.
pub fn format_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() { "0".into() } else { v.to_string() };
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        // Three significant digits: 1.2300000000000002e-5 → 1.23e-5.
        let s = format!("{v:.2e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{e}", trim(m));
    }
    let decimals = (4 - a.log10().floor() as i32).clamp(0, 6) as usize;
    trim(&format!("{v:.decimals$}"))
}

fn trim(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Ticks for `[lo, hi]` in axis units (log10 of the value on a log axis), as (position, label). A log axis gets
/// a tick per decade (and at 2 and 5 within less than two decades), else linear "nice" steps of the exponent.
fn ticks(axis: &Axis, lo: f64, hi: f64) -> Vec<(f64, String)> {
    if axis.log && hi - lo < 12.0 {
        let mults: &[f64] = if hi.floor() - lo.ceil() >= 1.0 {
            &[1.0]
        } else {
            &[1.0, 2.0, 5.0]
        };
        let out: Vec<(f64, String)> = ((lo.floor() as i32)..=(hi.ceil() as i32))
            .flat_map(|e| mults.iter().map(move |m| (m * 10f64.powi(e)).log10()))
            .filter(|&p| p >= lo - 1e-9 && p <= hi + 1e-9)
            .map(|p| (p, format_number(10f64.powf(p))))
            .collect();
        if out.len() >= 2 {
            return out;
        }
    }
    let step = nice_step((hi - lo) / 5.0);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    if !(0..=50).contains(&(last - first)) {
        return Vec::new(); // a range too wide for f64 steps: no ticks rather than a runaway loop
    }
    (first..=last)
        .map(|k| {
            let p = k as f64 * step;
            let v = if axis.log { 10f64.powf(p) } else { p };
            (p, format_number(v))
        })
        .collect()
}

/// The tick spacing nearest `raw` among 1, 2 and 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let pow = 10f64.powf(raw.log10().floor());
    let f = raw / pow;
    let m = if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    };
    m * pow
}

/// Data range of one axis in axis units, padded so that points sit off the frame; a default for no data.
fn range(axis: &Axis, values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|&v| axis.usable(v)).map(|v| axis.to_lin(v)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 * (1.0 + lo.abs()) {
        // One value: half a decade either side on a log axis, else 10% of it (or 1 around zero).
        let pad = if axis.log {
            0.5
        } else if lo == 0.0 {
            1.0
        } else {
            lo.abs() * 0.1
        };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.04;
    (lo - pad, hi + pad)
}

/// The plot area and its mapping from data to pixels; draws the frame, ticks, labels and title.
struct Frame {
    x: Axis,
    y: Axis,
    xr: (f64, f64),
    yr: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        if !(self.x.usable(x) && self.y.usable(y)) {
            return None;
        }
        let (x, y) = (self.x.to_lin(x), self.y.to_lin(y));
        let fx = (x - self.xr.0) / (self.xr.1 - self.xr.0);
        let fy = (y - self.yr.0) / (self.yr.1 - self.yr.0);
        Some((
            LEFT + fx * (WIDTH - LEFT - RIGHT),
            HEIGHT - BOTTOM - fy * (HEIGHT - TOP - BOTTOM),
        ))
    }

    fn open(&self, title: &str) -> String {
        let mut s = String::new();
        let (w, h) = (WIDTH, HEIGHT);
        let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            escape(title)
        );
        for (p, label) in ticks(&self.x, self.xr.0, self.xr.1) {
            let px = LEFT + (p - self.xr.0) / (self.xr.1 - self.xr.0) * pw;
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                escape(&label)
            );
        }
        for (p, label) in ticks(&self.y, self.yr.0, self.yr.1) {
            let py = TOP + ph - (p - self.yr.0) / (self.yr.1 - self.yr.0) * ph;
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                py + 4.0,
                escape(&label)
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            h - 12.0,
            escape(&self.x.label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(&self.y.label)
        );
        s
    }
}

impl LineChart {
    pub fn new(title: &str, x: Axis, y: Axis) -> Self {
        LineChart {
            title: title.into(),
            x,
            y,
            series: Vec::new(),
        }
    }

    /// Add a series (builder style).
    pub fn with(mut self, name: &str, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    /// The chart as an SVG document. A series breaks where a point is skipped; a lone point is a dot.
    pub fn to_svg(&self) -> String {
        let all = || self.series.iter().flat_map(|s| s.points.iter().copied());
        let frame = Frame {
            xr: range(&self.x, all().filter(|p| self.y.usable(p.1)).map(|p| p.0)),
            yr: range(&self.y, all().filter(|p| self.x.usable(p.0)).map(|p| p.1)),
            x: self.x.clone(),
            y: self.y.clone(),
        };
        let mut s = frame.open(&self.title);
        for (i, series) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for &(x, y) in &series.points {
                match frame.px(x, y) {
                    Some(p) => runs.last_mut().expect("never empty").push(p),
                    None => runs.push(Vec::new()),
                }
            }
            for run in runs.iter().filter(|r| !r.is_empty()) {
                if let [(x, y)] = run.as_slice() {
                    let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#);
                } else {
                    let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                    let _ = writeln!(
                        s,
                        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
                        pts.join(" ")
                    );
                }
            }
        }
        // Legend in the top-right corner of the plot area.
        if !self.series.is_empty() {
            let longest = self.series.iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
            let bw = 34.0 + 7.0 * longest as f64;
            let (bx, by) = (WIDTH - RIGHT - bw - 8.0, TOP + 8.0);
            let _ = writeln!(
                s,
                r##"<rect x="{bx:.1}" y="{by:.1}" width="{bw:.1}" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#999"/>"##,
                8.0 + 16.0 * self.series.len() as f64
            );
            for (i, series) in self.series.iter().enumerate() {
                let y = by + 16.0 + 16.0 * i as f64;
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                    bx + 6.0,
                    y - 4.0,
                    bx + 24.0,
                    y - 4.0,
                    COLORS[i % COLORS.len()],
                    bx + 28.0,
                    y,
                    escape(&series.name)
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

impl Scatter {
    pub fn new(title: &str, x: Axis, y: Axis) -> Self {
        Scatter {
            title: title.into(),
            x,
            y,
            points: Vec::new(),
        }
    }

    /// Add a labelled point (builder style).
    pub fn with(mut self, x: f64, y: f64, label: &str) -> Self {
        self.points.push(LabelledPoint {
            x,
            y,
            label: label.into(),
        });
        self
    }

    /// The chart as an SVG document: a dot per point, its label just above it.
    pub fn to_svg(&self) -> String {
        let usable = |p: &&LabelledPoint| self.x.usable(p.x) && self.y.usable(p.y);
        let frame = Frame {
            xr: range(&self.x, self.points.iter().filter(usable).map(|p| p.x)),
            yr: range(&self.y, self.points.iter().filter(usable).map(|p| p.y)),
            x: self.x.clone(),
            y: self.y.clone(),
        };
        let mut s = frame.open(&self.title);
        for p in &self.points {
            if let Some((x, y)) = frame.px(p.x, p.y) {
                // Labels of points near the right edge go to their left, inside the frame.
                let (dx, anchor) = if x > WIDTH - RIGHT - 120.0 {
                    (-6.0, "end")
                } else {
                    (6.0, "start")
                };
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                    COLORS[0],
                    x + dx,
                    y - 6.0,
                    escape(&p.label)
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags open and close in order (self-closing ones count as both), and no raw `<`/`&` sits in text.
    fn balanced(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let text = &rest[..i];
            assert!(!text.contains('>'), "stray '>' in text: {text}");
            for (j, _) in text.match_indices('&') {
                let ent = &text[j..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| ent.starts_with(e)),
                    "raw '&' in text: {text}"
                );
            }
            let end = rest[i..].find('>').expect("unclosed tag") + i;
            let tag = &rest[i + 1..end];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(svg.starts_with("<svg"));
    }

    #[test]
    fn line_chart_has_series_legend_and_escapes() {
        let svg = LineChart::new("loss <&> \"steps\"", Axis::log("step"), Axis::new("L_skip & loss"))
            .with("loss", (1..=100).map(|i| (i as f64, 10.0 / i as f64)).collect())
            .with(
                "a<b",
                vec![(1.0, 2.0), (f64::NAN, 3.0), (50.0, 1.0), (60.0, f64::INFINITY)],
            )
            .to_svg();
        balanced(&svg);
        assert!(svg.contains(">loss<") && svg.contains(">a&lt;b<"));
        assert!(svg.contains("loss &lt;&amp;&gt; &quot;steps&quot;"));
        assert!(
            svg.contains(">10<") && svg.contains(">100<"),
            "decade ticks on the log axis"
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(
            svg.matches("<polyline").count(),
            1,
            "the second series has no two adjacent points"
        );
        assert_eq!(svg.matches("<circle").count(), 2, "so it is two dots");
    }

    #[test]
    fn empty_single_and_degenerate_inputs_do_not_panic() {
        for chart in [
            LineChart::new("empty", Axis::new("x"), Axis::new("y")),
            LineChart::new("no points", Axis::new("x"), Axis::log("y")).with("s", vec![]),
            LineChart::new("one", Axis::log("x"), Axis::new("y")).with("s", vec![(1e-3, 5.0)]),
            LineChart::new("flat", Axis::new("x"), Axis::new("y")).with("s", vec![(0.0, 0.0), (0.0, 0.0)]),
            LineChart::new("nan", Axis::new("x"), Axis::new("y")).with("s", vec![(f64::NAN, f64::NAN)]),
            LineChart::new("neg on log", Axis::log("x"), Axis::new("y")).with("s", vec![(-1.0, 1.0), (0.0, 2.0)]),
            LineChart::new("huge", Axis::new("x"), Axis::log("y")).with("s", vec![(-1e300, 1e-300), (1e300, 1e300)]),
        ] {
            let svg = chart.to_svg();
            balanced(&svg);
            assert!(!svg.contains("NaN"), "{}: {svg}", chart.title);
        }
        let svg = Scatter::new("none", Axis::new("x"), Axis::new("y")).to_svg();
        balanced(&svg);
    }

    #[test]
    fn scatter_labels_points() {
        let svg = Scatter::new("trade-off", Axis::new("layers/token"), Axis::new("perplexity ratio"))
            .with(22.5, 1.10, "α=1e-3")
            .with(25.0, 1.03, "α=<5e-4>")
            .with(f64::NAN, 1.0, "skipped")
            .to_svg();
        balanced(&svg);
        assert!(svg.contains(">α=1e-3<") && svg.contains("α=&lt;5e-4&gt;"));
        assert!(!svg.contains("skipped"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(1000.0), "1000");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(0.1 + 0.2), "0.3");
        assert_eq!(format_number(1e-5), "1e-5");
        assert_eq!(format_number(2.5e7), "2.5e7");
        assert_eq!(format_number(-1.5), "-1.5");
        let t = ticks(&Axis::new("x"), 0.0, 1.0);
        assert_eq!(
            t.iter().map(|t| t.1.as_str()).collect::<Vec<_>>(),
            ["0", "0.2", "0.4", "0.6", "0.8", "1"]
        );
        assert_eq!(nice_step(0.0), 1.0);
    }
}
