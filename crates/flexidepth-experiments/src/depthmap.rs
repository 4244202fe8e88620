//! Depth maps: a generation's [`DepthTrace`] drawn so that one sees how many layers each token used.
//!
//! Three formats: ANSI text for a terminal (each token on a background from light blue, every routed layer
//! skipped, to dark blue, the full depth), a self-contained HTML page with the same shading and a tooltip per
//! token, and an SVG heatmap of tokens × routed layers coloured by the router's gate, with the layers that ran
//! marked. [`write_depth_map`] picks the format from the file extension.

use std::fmt::{self, Write};
use std::path::Path;

use flexidepth::error::{write_atomic, Error, Result};
use flexidepth::trace::{DepthTrace, TokenDepth};

type Rgb = (u8, u8, u8);
const LIGHT: Rgb = (222, 235, 247);
const DARK: Rgb = (8, 48, 107);
const GATE_LO: Rgb = (255, 255, 255);
const GATE_HI: Rgb = (84, 39, 143);
const RESET: &str = "\x1b[0m";

/// Output format of a depth map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthMapFormat {
    /// Text with 24-bit ANSI colours (`.txt`, `.ansi`).
    Ansi,
    /// A self-contained HTML page (`.html`, `.htm`).
    Html,
    /// An SVG heatmap of tokens × routed layers (`.svg`).
    Svg,
}

impl DepthMapFormat {
    /// The format for `path`'s extension (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("html" | "htm") => Ok(Self::Html),
            Some("svg") => Ok(Self::Svg),
            Some("txt" | "ansi") => Ok(Self::Ansi),
            _ => Err(Error::Input(format!(
                "{}: unknown depth-map format (use .html, .htm, .svg, .txt or .ansi)",
                path.display()
            ))),
        }
    }
}

fn lerp(a: Rgb, b: Rgb, t: f64) -> Rgb {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The colour of a token that used `layers_used` layers: light blue at `min` to dark blue at `max`, clamped.
pub fn shade(layers_used: f64, min: usize, max: usize) -> (u8, u8, u8) {
    let t = match max.checked_sub(min).filter(|&span| span > 0) {
        Some(span) => ((layers_used - min as f64) / span as f64).clamp(0.0, 1.0),
        None => (layers_used >= max as f64) as u8 as f64,
    };
    lerp(LIGHT, DARK, t)
}

/// Layers used as a reader expects them: whole numbers without decimals, partial skips with two.
fn fmt_layers(l: f64) -> String {
    if l.fract() == 0.0 {
        format!("{l:.0}")
    } else {
        format!("{l:.2}")
    }
}

fn gate_colour(gate: f32) -> Rgb {
    lerp(GATE_LO, GATE_HI, gate as f64)
}

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Black or white, whichever contrasts more with `bg` (WCAG: white below relative luminance ~0.18).
fn foreground(bg: Rgb) -> Rgb {
    let lin = |c: u8| (c as f64 / 255.0).powf(2.2);
    let lum = 0.2126 * lin(bg.0) + 0.7152 * lin(bg.1) + 0.0722 * lin(bg.2);
    [(0, 0, 0), (255, 255, 255)][(lum < 0.179) as usize]
}

/// The fewest and the most layers a token can use (tolerant of a malformed trace).
fn depth_range(trace: &DepthTrace) -> (usize, usize) {
    let min = trace.num_layers.saturating_sub(trace.routed_layers.len());
    (min, trace.num_layers)
}

fn shown(trace: &DepthTrace, include_prompt: bool) -> impl Iterator<Item = &TokenDepth> {
    trace.tokens.iter().filter(move |t| include_prompt || !t.prompt)
}

/// "N tokens (G generated) · mean X.XX layers/token (of L)".
fn summary(trace: &DepthTrace) -> String {
    let generated = trace.tokens.iter().filter(|t| !t.prompt).count();
    let n = trace.tokens.len();
    if n == 0 {
        return format!("0 tokens (of {} layers)", trace.num_layers);
    }
    let (mean, layers) = (trace.mean_layers_generated(), trace.num_layers);
    format!("{n} tokens ({generated} generated) · mean {mean:.2} layers/token (of {layers})")
}

/// `c` as it can be shown: control characters other than tab and newline become visible pictures.
fn printable(c: char) -> char {
    match c {
        '\t' | '\n' => c,
        '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
        '\u{7f}' => '\u{2421}',
        '\u{80}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
        _ => c,
    }
}

/// Escape for XML/HTML text and attributes; `visible_ws` shows spaces, newlines and tabs as symbols.
fn escape(s: &str, visible_ws: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().map(printable) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            ' ' if visible_ws => out.push('␣'),
            '\n' if visible_ws => out.push('⏎'),
            '\t' if visible_ws => out.push('⇥'),
            c => out.push(c),
        }
    }
    out
}

fn ansi_bg(c: Rgb) -> String {
    format!("\x1b[48;2;{};{};{}m", c.0, c.1, c.2)
}

/// Terminal text: each token on its depth shade (prompt tokens underlined), then a one-line legend.
pub fn to_ansi(trace: &DepthTrace, include_prompt: bool) -> String {
    let (min, max) = depth_range(trace);
    let mut out = String::new();
    let mut any_prompt = false;
    for t in shown(trace, include_prompt) {
        let bg = shade(t.layers_used, min, max);
        let fg = foreground(bg);
        any_prompt |= t.prompt;
        let ul = if t.prompt { "\x1b[4m" } else { "" };
        let text: String = t.text.chars().map(printable).collect();
        for (i, seg) in text.split('\n').enumerate() {
            if i > 0 {
                out.push('\n');
            }
            if !seg.is_empty() {
                let fg = format!("\x1b[38;2;{};{};{}m", fg.0, fg.1, fg.2);
                let _ = write!(out, "{}{fg}{ul}{seg}{RESET}", ansi_bg(bg));
            }
        }
    }
    if !out.is_empty() {
        out.push_str(if out.ends_with('\n') { "\n" } else { "\n\n" }); // a blank line before the legend
    }
    let _ = write!(out, "layers used: {min} ");
    for i in 0..=5 {
        let _ = write!(out, "{}  ", ansi_bg(lerp(LIGHT, DARK, i as f64 / 5.0)));
    }
    let _ = write!(out, "{RESET} {max} · {}", summary(trace));
    if any_prompt {
        out.push_str(" · underlined: prompt");
    }
    out.push('\n');
    out
}

/// Plain text for a pipe or file (no colour codes): each token followed by its layers used in brackets
/// (`Paris[27.5]`; prompt tokens marked `|…|`), then the summary line.
pub fn to_plain(trace: &DepthTrace, include_prompt: bool) -> String {
    let mut out = String::new();
    for t in shown(trace, include_prompt) {
        let text: String = t.text.chars().map(printable).collect();
        let text = if t.prompt { format!("|{text}|") } else { text };
        let _ = write!(out, "{text}[{:.1}]", t.layers_used);
    }
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(&summary(trace));
    out.push('\n');
    out
}

/// A self-contained HTML page: the text shaded per token, with tooltips, a legend and a summary line.
pub fn to_html(trace: &DepthTrace, include_prompt: bool, title: &str) -> String {
    let mut out = String::new();
    let _ = html_into(&mut out, trace, include_prompt, title);
    out
}

const CSS: &str = "body { font-family: system-ui, sans-serif; color: #222; background: #fff; \
    max-width: 60em; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.3em; }
.summary, .legend { color: #555; margin: .4em 0; }
.bar { display: inline-block; width: 14em; height: 1em; vertical-align: middle; border: 1px solid #999; }
.text { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; overflow-wrap: anywhere; \
    line-height: 1.9; border: 1px solid #ddd; padding: 1em; margin-top: 1em; }
.t { border-radius: 2px; padding: 1px 0; }
.t.p { outline: 1px dashed #666; outline-offset: -1px; opacity: .6; }
.key { padding: 0 .4em; background: #7391b3; color: #fff; }";

fn html_into(out: &mut String, trace: &DepthTrace, include_prompt: bool, title: &str) -> fmt::Result {
    let (min, max) = depth_range(trace);
    let (title, lo, hi) = (escape(title, false), hex(LIGHT), hex(DARK));
    let gradient = format!("style=\"background: linear-gradient(to right, {lo}, {hi})\"");
    let head = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">";
    writeln!(
        out,
        "{head}\n<title>{title}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>"
    )?;
    writeln!(out, "<h1>{title}</h1>\n<p class=\"summary\">{}</p>", summary(trace))?;
    let mut key = String::new();
    if include_prompt && trace.tokens.iter().any(|t| t.prompt) {
        key.push_str(" · <span class=\"t p key\">prompt</span> dashed");
    }
    writeln!(
        out,
        "<p class=\"legend\">layers used: {min} <span class=\"bar\" {gradient}></span> {max}{key}</p>"
    )?;
    out.push_str("<div class=\"text\">");
    for t in shown(trace, include_prompt) {
        let (bg, p) = (shade(t.layers_used, min, max), if t.prompt { " p" } else { "" });
        let style = format!("background:{};color:{}", hex(bg), hex(foreground(bg)));
        let tip = format!(
            "pos {} · token {} · {} layers",
            t.pos,
            t.token_id,
            fmt_layers(t.layers_used)
        );
        let text = escape(&t.text, false);
        write!(
            out,
            "<span class=\"t{p}\" style=\"{style}\" title=\"{tip}\">{text}</span>"
        )?;
    }
    writeln!(out, "</div>\n</body>\n</html>")
}

/// An SVG heatmap: one column per token, one row per routed layer coloured by the gate (ran: dotted cell),
/// a top strip of layers used per token, the token texts along the x axis, and legends for both scales.
pub fn to_svg(trace: &DepthTrace, include_prompt: bool) -> String {
    let mut out = String::new();
    let _ = svg_into(&mut out, trace, include_prompt);
    out
}

const CW: usize = 14; // SVG cell width and height

/// An SVG cell with a tooltip.
fn cell(out: &mut String, class: &str, x: usize, y: usize, fill: Rgb, tip: &str) -> fmt::Result {
    let f = hex(fill);
    let size = format!("width=\"{CW}\" height=\"{CW}\"");
    writeln!(
        out,
        "<rect class=\"{class}\" x=\"{x}\" y=\"{y}\" {size} fill=\"{f}\"><title>{tip}</title></rect>"
    )
}

/// SVG text at (x, y), anchored `anchor` ("start", "end").
fn text(out: &mut String, x: usize, y: usize, anchor: &str, s: &str) -> fmt::Result {
    writeln!(out, "<text x=\"{x}\" y=\"{y}\" text-anchor=\"{anchor}\">{s}</text>")
}

/// A dot marking a cell whose layer ran.
fn dot(out: &mut String, x: usize, y: usize, fill: Rgb) -> fmt::Result {
    let (cx, cy, f) = (x + CW / 2, y + CW / 2, hex(foreground(fill)));
    writeln!(
        out,
        "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2.5\" fill=\"{f}\" stroke=\"none\"/>"
    )
}

/// A red dashed vertical line: where the generation starts.
fn start_line(out: &mut String, x: usize, y1: usize, y2: usize) -> fmt::Result {
    let style = "stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"3 2\"";
    writeln!(out, "<line x1=\"{x}\" y1=\"{y1}\" x2=\"{x}\" y2=\"{y2}\" {style}/>")
}

fn svg_into(out: &mut String, trace: &DepthTrace, include_prompt: bool) -> fmt::Result {
    const LEFT: usize = 64; // room for the row labels
    const LABEL_CHARS: usize = 12;
    let (min, max) = depth_range(trace);
    let toks: Vec<&TokenDepth> = shown(trace, include_prompt).collect();
    let longest = toks.iter().map(|t| t.text.chars().count().min(LABEL_CHARS + 1)).max();
    let label_h = 10 + 7 * longest.unwrap_or(0).max(1); // room for the rotated token texts
    let start = toks.iter().position(|t| !t.prompt).filter(|&k| k > 0);
    let rows = &trace.routed_layers;
    let (strip_y, grid_y) = (30, 30 + CW + 6);
    let labels_y = grid_y + rows.len() * CW + 4;
    let legend_y = labels_y + label_h + 12;
    let width = (LEFT + toks.len() * CW + 12).max(if start.is_some() { 690 } else { 560 });
    let height = legend_y + 34;
    let font = "font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"11\"";
    let size = format!("width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\"");
    writeln!(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" {size} {font}>")?;
    let stops = |id: &str, a: Rgb, b: Rgb| {
        let (a, b) = (hex(a), hex(b));
        let stop = |at: u8, c: &str| format!("<stop offset=\"{at}\" stop-color=\"{c}\"/>");
        format!(
            "<linearGradient id=\"{id}\">{}{}</linearGradient>",
            stop(0, &a),
            stop(1, &b)
        )
    };
    let (g1, g2) = (stops("fd-depth", LIGHT, DARK), stops("fd-gate", GATE_LO, GATE_HI));
    let bg = format!("<rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>");
    writeln!(out, "<defs>{g1}{g2}</defs>\n{bg}")?;
    let sum = summary(trace);
    writeln!(out, "<text x=\"8\" y=\"18\" font-size=\"12\">Depth map · {sum}</text>")?;
    text(out, LEFT - 6, strip_y + 11, "end", "used")?;
    for (r, layer) in rows.iter().enumerate() {
        text(out, LEFT - 6, grid_y + r * CW + 11, "end", &format!("layer {layer}"))?;
    }
    out.push_str("<g stroke=\"#fff\" stroke-width=\"0.5\">\n");
    for (i, t) in toks.iter().enumerate() {
        let x = LEFT + i * CW;
        let tip = format!(
            "pos {} · token {} · {} layers",
            t.pos,
            t.token_id,
            fmt_layers(t.layers_used)
        );
        cell(out, "used", x, strip_y, shade(t.layers_used, min, max), &tip)?;
        for (r, &layer) in rows.iter().enumerate() {
            let y = grid_y + r * CW;
            let d = match t.routed.get(r) {
                Some(d) if d.layer_idx == layer => Some(d),
                _ => t.routed.iter().find(|d| d.layer_idx == layer),
            };
            let Some(d) = d else {
                let tip = format!("pos {} · layer {layer} · no decision", t.pos);
                cell(out, "cell", x, y, (221, 221, 221), &tip)?;
                continue;
            };
            let (fill, verdict) = (gate_colour(d.gate), if d.run { "run" } else { "skip" });
            let tip = format!("pos {} · layer {layer} · gate {:.3} · {verdict}", t.pos, d.gate);
            cell(out, if d.run { "cell run" } else { "cell" }, x, y, fill, &tip)?;
            if d.run {
                dot(out, x, y, fill)?;
            }
        }
    }
    out.push_str("</g>\n");
    if let Some(k) = start {
        start_line(out, LEFT + k * CW, strip_y - 4, labels_y + label_h)?;
    }
    for (i, t) in toks.iter().enumerate() {
        let mut label: String = t.text.chars().take(LABEL_CHARS).collect();
        if t.text.chars().nth(LABEL_CHARS).is_some() {
            label.push('…');
        }
        let label = if label.is_empty() {
            "∅".into()
        } else {
            escape(&label, true)
        };
        let (x, fill) = (LEFT + i * CW + CW / 2 + 4, if t.prompt { "#999" } else { "#222" });
        let mono = "font-family=\"DejaVu Sans Mono, monospace\"";
        let at = format!("transform=\"translate({x},{labels_y}) rotate(-90)\" text-anchor=\"end\"");
        writeln!(out, "<text {at} fill=\"{fill}\" {mono}>{label}</text>")?;
    }
    // Legends: the depth scale, the gate scale, the run mark and the generation start.
    let (y, ty, by) = (legend_y, legend_y + 10, legend_y + 25);
    let bar = |x: usize, id: &str| {
        format!("<rect x=\"{x}\" y=\"{y}\" width=\"140\" height=\"12\" fill=\"url(#{id})\" stroke=\"#999\"/>")
    };
    writeln!(out, "{}\n{}", bar(80, "fd-depth"), bar(282, "fd-gate"))?;
    text(out, 8, ty, "start", "layers used")?;
    text(out, 80, by, "start", &min.to_string())?;
    text(out, 220, by, "end", &max.to_string())?;
    text(out, 250, ty, "start", "gate")?;
    text(out, 282, by, "start", "0")?;
    text(out, 422, by, "end", "1")?;
    let run_fill = gate_colour(0.8);
    cell(out, "key", 450, y - 1, run_fill, "run")?;
    dot(out, 450, y - 1, run_fill)?;
    text(out, 470, ty, "start", "ran the layer")?;
    if start.is_some() {
        start_line(out, 578, y - 2, y + 13)?;
        text(out, 586, ty, "start", "generation starts")?;
    }
    writeln!(out, "</svg>")
}

/// Render `trace` in `format`; `include_prompt` also shows the prompt tokens.
pub fn render(trace: &DepthTrace, format: DepthMapFormat, include_prompt: bool) -> String {
    match format {
        DepthMapFormat::Ansi => to_ansi(trace, include_prompt),
        DepthMapFormat::Html => to_html(trace, include_prompt, "FlexiDepth depth map"),
        DepthMapFormat::Svg => to_svg(trace, include_prompt),
    }
}

/// Write the depth map of `trace` to `path`, in the format its extension names, atomically.
pub fn write_depth_map(path: &Path, trace: &DepthTrace, include_prompt: bool) -> Result<()> {
    let format = DepthMapFormat::from_path(path)?;
    write_atomic(path, render(trace, format, include_prompt).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flexidepth::trace::LayerDecision;

    /// A token of an 8-layer model routed at 4..8 that runs the routed layers whose gate > 0.5.
    fn tok(pos: usize, text: &str, prompt: bool, gates: &[f32]) -> TokenDepth {
        let decide = |(layer_idx, &gate)| LayerDecision {
            layer_idx,
            gate,
            run: gate > 0.5,
        };
        let routed: Vec<LayerDecision> = (4..).zip(gates).map(decide).collect();
        let (token_id, text) = (100 + pos as u32, text.to_string());
        let layers_used = (4 + routed.iter().filter(|d| d.run).count()) as f64;
        TokenDepth {
            pos,
            token_id,
            text,
            prompt,
            layers_used,
            routed,
            dmtd_head: None,
        }
    }

    fn sample() -> DepthTrace {
        let tokens = vec![
            tok(0, "PROMPTX", true, &[0.9, 0.9, 0.9, 0.9]),
            tok(1, " <script>", false, &[0.9, 0.8, 0.7, 0.6]),
            tok(2, " a & b", false, &[0.1, 0.2, 0.3, 0.4]),
            tok(3, "\nnext\n", false, &[0.9, 0.1, 0.9, 0.1]),
            tok(4, "é€", false, &[0.6, 0.4, 0.0, 1.0]),
            tok(5, "", false, &[0.0; 4]),
        ];
        DepthTrace {
            num_layers: 8,
            routed_layers: vec![4, 5, 6, 7],
            tokens,
        }
    }

    /// Tags balance, every `<` opens a tag and every `&` starts an entity.
    fn assert_well_formed(s: &str) {
        let (mut stack, mut rest) = (Vec::new(), s);
        while let Some(i) = rest.find('<') {
            let end = rest[i..].find('>').expect("unclosed tag") + i;
            let tag = &rest[i + 1..end];
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(closing), "mismatched </{closing}>");
            } else if !tag.starts_with('!') && !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                assert!(
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{tag:?}"
                );
                stack.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        let entities = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"];
        for (i, _) in s.match_indices('&') {
            assert!(entities.iter().any(|e| s[i..].starts_with(e)), "raw & at {i}");
        }
    }

    #[test]
    fn shade_endpoints_and_monotonic() {
        assert_eq!((shade(4.0, 4, 8), shade(8.0, 4, 8)), (LIGHT, DARK));
        assert_eq!((shade(0.0, 4, 8), shade(99.0, 4, 8)), (LIGHT, DARK)); // clamped
        let sum = |c: Rgb| c.0 as u32 + c.1 as u32 + c.2 as u32;
        for l in 8..16 {
            let l = l as f64 / 2.0;
            assert!(sum(shade(l + 0.5, 4, 8)) < sum(shade(l, 4, 8)), "not darker at {l}");
        }
        assert_eq!(
            (shade(5.0, 5, 5), shade(0.0, 0, 0), shade(1.0, 5, 3)),
            (DARK, DARK, LIGHT)
        );
    }

    #[test]
    fn format_from_path() {
        let f = |p: &str| DepthMapFormat::from_path(Path::new(p)).ok();
        use DepthMapFormat::*;
        assert_eq!(
            [f("a.html"), f("d/a.HTM"), f("a.svg")],
            [Some(Html), Some(Html), Some(Svg)]
        );
        assert_eq!([f("a.txt"), f("a.ansi")], [Some(Ansi), Some(Ansi)]);
        for bad in ["a.png", "noext", "a.svg.bak"] {
            match DepthMapFormat::from_path(Path::new(bad)) {
                Err(Error::Input(msg)) => assert!(msg.contains(".html") && msg.contains(".svg")),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn html_escapes_spans_and_legend() {
        let html = to_html(&sample(), false, "T <&>");
        assert!(!html.contains("<script>") && html.contains("> &lt;script&gt;<"));
        assert!(html.contains("> a &amp; b<") && html.contains("<title>T &lt;&amp;&gt;</title>"));
        assert_eq!(html.matches("<span class=\"t").count(), 5);
        assert!(
            !html.contains("PROMPTX") && !html.contains("http"),
            "prompt or an external resource"
        );
        // Token 1 ran all four routed layers: full depth, dark blue with white text.
        let full = "style=\"background:#08306b;color:#ffffff\" title=\"pos 1 · token 101 · 8 layers\"";
        assert!(html.contains(full) && html.contains("style=\"background:#deebf7;color:#000000\" title=\"pos 2"));
        let bar = "style=\"background: linear-gradient(to right, #deebf7, #08306b)\"";
        assert!(html.contains(&format!("layers used: 4 <span class=\"bar\" {bar}></span> 8")));
        assert!(html.contains("mean 5.60 layers/token") && html.contains("white-space: pre-wrap"));
        assert_well_formed(
            &html
                .replace("<!DOCTYPE html>", "")
                .replace("<meta charset=\"utf-8\">", ""),
        );
        let with = to_html(&sample(), true, "x");
        assert_eq!(with.matches("<span class=\"t").count(), 7); // six tokens and the legend's key
        assert!(with.contains("<span class=\"t p\"") && with.contains(">PROMPTX</span>"));
    }

    #[test]
    fn ansi_colours_and_resets() {
        let a = to_ansi(&sample(), false);
        assert!(a.contains("\x1b[48;2;8;48;107m\x1b[38;2;255;255;255m <script>\x1b[0m"));
        assert!(a.contains("\x1b[48;2;222;235;247m\x1b[38;2;0;0;0m a & b\x1b[0m"));
        // The newlines of token 3 come after a reset, never inside a coloured run.
        assert!(a.contains("b\x1b[0m\n") && a.contains("next\x1b[0m\n"));
        let (body, legend) = a.trim_end().rsplit_once('\n').unwrap();
        assert!(body.lines().all(|l| l.is_empty() || l.ends_with(RESET)), "{body:?}");
        assert!(legend.starts_with("layers used: 4 ") && legend.contains(" 8 · "));
        assert!(legend.contains("mean 5.60 layers/token") && legend.contains(&ansi_bg(DARK)));
        assert!(!a.contains("PROMPTX") && to_ansi(&sample(), true).contains("\x1b[4mPROMPTX"));
        let mut t = sample();
        t.tokens[1].text = "\x1b[2J\r".into(); // control characters cannot reach the terminal
        assert!(!to_ansi(&t, false).contains("\x1b[2J") && !to_ansi(&t, false).contains('\r'));
    }

    #[test]
    fn plain_has_layer_counts_and_no_escape_codes() {
        let p = to_plain(&sample(), false);
        assert!(p.contains(" <script>[8.0]") && p.contains(" a & b[4.0]"), "{p}");
        assert!(!p.contains('\x1b') && !p.contains("PROMPTX"));
        assert!(p.trim_end().ends_with("mean 5.60 layers/token (of 8)"), "{p}");
        assert!(to_plain(&sample(), true).contains("|PROMPTX|["));
        let mut t = sample();
        t.tokens[1].text = "\x1b[2J\r".into();
        assert!(!to_plain(&t, false).contains('\x1b') && !to_plain(&t, false).contains('\r'));
    }

    #[test]
    fn svg_cells_labels_and_escaping() {
        let mut t = sample();
        t.tokens[2].text = "1 < 2 && x".into();
        let svg = to_svg(&t, true);
        assert!(svg.starts_with("<svg") && svg.contains("viewBox=\"0 0 "));
        assert_eq!((svg.matches("<svg").count(), svg.matches("</svg>").count()), (1, 1));
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<rect class=\"cell").count(), 6 * 4);
        let runs: usize = t.tokens.iter().map(|t| t.routed.iter().filter(|d| d.run).count()).sum();
        assert_eq!(svg.matches("<rect class=\"cell run\"").count(), runs);
        assert_eq!(svg.matches("<circle").count(), runs + 1); // + the legend's
        assert_eq!(svg.matches("<rect class=\"used\"").count(), 6);
        let rows: Vec<_> = (4..8).map(|l| svg.find(&format!(">layer {l}</text>"))).collect();
        assert!(rows.iter().all(Option::is_some) && rows.windows(2).all(|w| w[0] < w[1]));
        assert!(svg.contains(">1␣&lt;␣2␣&amp;&amp;␣x</text>") && svg.contains(">⏎next⏎</text>"));
        assert!(svg.contains("fill=\"#08306b\"><title>pos 1 · token 101 · 8 layers"));
        assert!(svg.contains("fd-depth") && svg.contains("fd-gate") && svg.contains(">ran the layer<"));
        assert!(svg.contains(">generation starts<") && svg.contains("stroke-dasharray"));
        assert_eq!(to_svg(&t, false).matches("<rect class=\"cell").count(), 5 * 4);
        t.tokens = (0..100).map(|i| tok(i, "x", false, &[0.5; 4])).collect();
        let width = 64 + 100 * 14 + 12; // grows with the tokens
        assert!(to_svg(&t, false).contains(&format!("viewBox=\"0 0 {width} ")));
    }

    #[test]
    fn empty_and_malformed_traces() {
        let empty = DepthTrace::default();
        for f in [DepthMapFormat::Ansi, DepthMapFormat::Html, DepthMapFormat::Svg] {
            let s = render(&empty, f, true);
            assert!(s.contains("layers used") && s.contains("0 tokens"), "{f:?}");
        }
        assert_well_formed(&to_svg(&empty, true));
        let mut bad = sample(); // more routed layers than layers, decisions missing
        bad.num_layers = 2;
        bad.tokens[1].routed.clear();
        let svg = to_svg(&bad, true);
        assert_eq!(svg.matches("<rect class=\"cell").count(), 6 * 4);
        assert!(svg.contains("no decision") && to_html(&bad, true, "").contains("#08306b"));
    }

    #[test]
    fn writes_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, start) in [("m.html", "<!DOCTYPE html>"), ("m.svg", "<svg"), ("m.txt", "\x1b[")] {
            let p = dir.path().join(name);
            write_depth_map(&p, &sample(), true).unwrap();
            assert!(std::fs::read_to_string(&p).unwrap().starts_with(start), "{name}");
        }
        assert!(write_depth_map(&dir.path().join("m.png"), &sample(), true).is_err());
        assert!(!dir.path().join("m.png").exists());
    }
}
