//! `statewire sim --report FILE.html`: one self-contained HTML page (no network, no scripts)
//! with SVG charts of a run over time and top-down maps of the world.

mod svg;

use std::fmt::Write as _;

use svg::{Agg, Axis, Chart, Rule, Series, Style};

/// What a run recorded over time, for the HTML report.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    /// Simulation rate (ticks per second), to label the time axes in seconds.
    pub(crate) tick_hz: u32,
    /// The per-client replication budget as a byte rate: budget × tick rate (the budget line
    /// on the downstream chart), bytes per second.
    pub(crate) budget_bytes_per_sec: f64,
    /// Half the arena's side, metres: maps span `-arena..=arena` on both axes.
    pub(crate) arena: f32,
    /// The report's title line (profile, clients, seed...).
    pub(crate) title: String,
    /// Headline figures shown above the charts, as (label, value) pairs in order.
    pub(crate) summary: Vec<(String, String)>,
    /// One sample per active tick, in tick order.
    pub(crate) samples: Vec<Sample>,
    /// A few moments of the world: server truth vs one client's view.
    pub(crate) maps: Vec<MapFrame>,
}

/// One active tick of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// Ticks since the active period started (0-based).
    pub(crate) tick: u32,
    /// Server→client bytes per client this tick, as a rate (bytes per second).
    pub(crate) down_bytes_per_sec: f64,
    /// Client→server bytes per client this tick, as a rate (bytes per second).
    pub(crate) up_bytes_per_sec: f64,
    /// The server's replication time this tick, µs.
    pub(crate) server_tick_us: u32,
    /// Prediction error this tick (metres; mean over clients with a sample).
    pub(crate) prediction_error_mean: f32,
    /// Prediction error this tick (metres; largest over clients).
    pub(crate) prediction_error_max: f32,
    /// Interpolation delay this tick, ms (mean over clients).
    pub(crate) interpolation_delay_ms: f32,
    /// Share of clients (0..=1) that had to extrapolate a remote entity this frame.
    pub(crate) extrapolated_share: f32,
}

/// One moment of the world on the map: where everything is on the server, and where one
/// client shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MapFrame {
    /// Ticks since the active period started.
    pub(crate) tick: u32,
    /// Which client's view `view` is (index among the bots, 0-based).
    pub(crate) viewer: usize,
    /// The server's entities.
    pub(crate) truth: Vec<Dot>,
    /// The client's view of them (its own player predicted, the rest interpolated).
    pub(crate) view: Vec<Dot>,
}

/// One entity on a map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dot {
    /// Position, metres.
    pub(crate) x: f32,
    /// Position, metres.
    pub(crate) y: f32,
    /// What it is.
    pub(crate) kind: DotKind,
}

/// What a map dot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DotKind {
    /// The viewing client's own player.
    Me,
    /// Another player.
    Player,
    /// An enemy.
    Enemy,
}

/// The whole HTML page for `timeline`: a header, the summary figures, four charts over time
/// and the maps. The style is inline and there is no script, so the file opens anywhere,
/// offline, and shows the same thing in every browser.
pub(crate) fn render_html(timeline: &Timeline) -> String {
    let t = timeline;
    // A zero rate would make every time infinite; one tick per second still draws the shapes.
    let hz = f64::from(t.tick_hz.max(1));
    let secs: Vec<f64> = t.samples.iter().map(|s| f64::from(s.tick) / hz).collect();
    let span = Span {
        secs: &secs,
        x: svg::x_axis(svg::max_of(secs.iter().copied())),
        window: (t.tick_hz.max(1)) as usize,
    };
    let mut page = String::with_capacity(64 * 1024);
    let title = if t.title.is_empty() {
        "statewire sim"
    } else {
        &t.title
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><h1>{title}</h1><p>{sub}</p></header>\n<main>\n",
        title = escape(title),
        sub = escape(&subtitle(t, hz)),
    );
    if !t.summary.is_empty() {
        page.push_str("<dl class=\"summary\">\n");
        for (label, value) in &t.summary {
            let _ = writeln!(
                page,
                "<div><dt>{}</dt><dd>{}</dd></div>",
                escape(label),
                escape(value)
            );
        }
        page.push_str("</dl>\n");
    }
    let charts = [
        (
            "Bandwidth per client",
            "Bytes per second per client, server → client (downstream) and client → server \
             (upstream): thick lines are 1 s moving averages, faint lines the per-tick rates, \
             the dashed line the replication budget. x: time, s; y: B/s.",
            bandwidth_chart(t, &span),
        ),
        (
            "Server replication time",
            "Wall time the server spent replicating each tick (updating, then encoding for \
             every client), µs: the thick line is a 1 s moving average, the faint line each \
             tick; dashed lines mark the median (p50) and 99th percentile.",
            server_chart(t, &span),
        ),
        (
            "Prediction error",
            "Distance between where a client predicted its own player and where the server \
             put it, metres, per tick: the mean over clients and the largest.",
            prediction_chart(t, &span),
        ),
        (
            "Interpolation",
            "How far behind the server clients draw remote entities, ms (left axis, mean over \
             clients), and the share of clients that had to extrapolate one, % (right axis, \
             shaded).",
            interpolation_chart(t, &span),
        ),
    ];
    for (heading, caption, chart) in charts {
        let _ = writeln!(
            page,
            "<section class=\"card\">\n<h2>{}</h2>\n<p class=\"caption\">{}</p>\n{}\n</section>",
            escape(heading),
            escape(caption),
            chart.render()
        );
    }
    maps_section(&mut page, t, hz);
    page.push_str(
        "</main>\n<footer>Written by <code>statewire sim --report</code>: one file, no scripts, \
         nothing loaded from the network.</footer>\n</body>\n</html>\n",
    );
    page
}

/// The style of the page: light cards on a grey page, the charts as wide as their card.
/// (No `>` in here: the test's tag checker reads the page as markup.)
const STYLE: &str = "
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d8dee4; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f5f7; color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', sans-serif; }
header { background: #12344d; color: #fff; padding: 22px 32px 20px; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; letter-spacing: .01em; }
header p { margin: 4px 0 0; color: #b9cfe0; font-size: 14px; }
main { max-width: 1200px; margin: 0 auto; padding: 20px 32px 32px; }
.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
  gap: 12px; margin: 0 0 20px; }
.summary div { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; }
.summary dt { font-size: 12px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); }
.summary dd { margin: 2px 0 0; font-size: 16px; font-weight: 600; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 20px 12px; margin: 0 0 20px; }
h2 { margin: 0; font-size: 17px; font-weight: 600; }
.caption { margin: 2px 0 8px; color: var(--muted); font-size: 13.5px; }
svg { display: block; width: 100%; height: auto; }
svg text { font-family: system-ui, sans-serif; font-size: 12px; fill: #59636e; }
svg .plot { fill: #fbfcfd; }
svg .frame { fill: none; stroke: #adb5bd; }
svg .grid line { stroke: #e6e9ec; stroke-width: 1; }
svg .axis-title { font-size: 12.5px; fill: #343a40; }
svg .legend text { fill: #343a40; }
svg .rule { font-size: 11.5px; font-weight: 600; paint-order: stroke; stroke: #fff;
  stroke-width: 4px; stroke-linejoin: round; }
svg .corner { font-size: 11.5px; fill: #c92a2a; }
svg .note { font-size: 14px; fill: #868e96; font-style: italic; }
.maps { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
  gap: 16px 24px; }
figure { margin: 0; }
figcaption { font-size: 14px; font-weight: 600; margin: 0 0 2px; }
svg.map .arena { fill: #fbfcfd; }
svg.map .truth { fill: none; stroke-opacity: .8; }
svg.map .view { fill: none; stroke-linecap: round; }
svg.map .key-ring { fill: none; stroke: #495057; stroke-width: 1.5; }
svg.map .key-dot { stroke: #495057; stroke-width: 7; stroke-linecap: round; }
svg.map .scale { font-size: 11px; }
footer { max-width: 1200px; margin: 0 auto; padding: 0 32px 28px; color: var(--muted);
  font-size: 13px; }
";

/// The time axis every chart shares.
struct Span<'a> {
    /// Each sample's time, seconds.
    secs: &'a [f64],
    /// The axis end and tick step (see [`svg::x_axis`]).
    x: (f64, f64),
    /// Samples in the moving average's window (one second).
    window: usize,
}

/// The line under the title: how long the run was and at what rate.
fn subtitle(t: &Timeline, hz: f64) -> String {
    let n = t.samples.len();
    if n == 0 {
        return "No active ticks were recorded.".to_string();
    }
    let dur = t.samples.iter().map(|s| s.tick).max().unwrap_or(0) as f64 / hz + 1.0 / hz;
    format!(
        "{} at {} Hz ({dur:.1} s) · {}",
        crate::count(n as u64, "active tick", "active ticks"),
        t.tick_hz,
        crate::count(t.maps.len() as u64, "map", "maps"),
    )
}

/// `v` bytes per second in words: "850 B/s", "33.0 kB/s", "1.25 MB/s".
fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} MB/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB/s", v / 1e3)
    } else {
        format!("{v:.0} B/s")
    }
}

/// A per-tick line drawn faint; `name` is for the first of a chart's faint lines only, so the
/// legend says once what faint means.
fn faint(name: Option<&str>, points: Vec<(f64, f64)>, color: &'static str) -> Series {
    Series {
        name: name.map(str::to_string),
        points,
        color,
        style: Style::Line {
            width: 1.0,
            opacity: 0.3,
        },
        right: false,
    }
}

/// A main line, named in the legend.
fn line(name: &str, points: Vec<(f64, f64)>, color: &'static str) -> Series {
    Series {
        name: Some(name.to_string()),
        points,
        color,
        style: Style::Line {
            width: 2.0,
            opacity: 1.0,
        },
        right: false,
    }
}

/// The note for a chart whose values are all zero or missing: they are drawn (flat), but a
/// reader should not mistake "not measured" for "perfect".
fn zero_note(values: &[f64]) -> Option<String> {
    if values.is_empty() {
        Some("no samples".to_string())
    } else {
        (svg::max_of(values.iter().copied()) == 0.0)
            .then(|| "every sample is zero (or not measured)".to_string())
    }
}

/// Downstream and upstream bytes per second per client, with the budget line.
fn bandwidth_chart(t: &Timeline, span: &Span<'_>) -> Chart {
    let down: Vec<f64> = t.samples.iter().map(|s| s.down_bytes_per_sec).collect();
    let up: Vec<f64> = t.samples.iter().map(|s| s.up_bytes_per_sec).collect();
    let (down_avg, up_avg) = (
        svg::moving_mean(&down, span.window),
        svg::moving_mean(&up, span.window),
    );
    let budget = svg::clean(t.budget_bytes_per_sec).filter(|&b| b > 0.0);
    let (max, peak) = svg::robust_max(
        &[down.as_slice(), &up].concat(),
        &[down_avg.as_slice(), &up_avg].concat(),
        budget.unwrap_or(0.0),
    );
    let pts = |v: &[f64], agg| svg::points(span.secs, v, agg);
    Chart {
        id: "bandwidth",
        title: "Bandwidth per client over time, B/s".to_string(),
        x: span.x,
        left: Axis {
            title: "B/s per client".to_string(),
            max,
        },
        right: None,
        series: vec![
            faint(Some("per tick"), pts(&down, Agg::Max), DOWN),
            faint(None, pts(&up, Agg::Max), UP),
            line("downstream (1 s avg)", pts(&down_avg, Agg::Mean), DOWN),
            line("upstream (1 s avg)", pts(&up_avg, Agg::Mean), UP),
        ],
        rules: budget
            .map(|b| Rule {
                y: b,
                label: format!("budget {}", rate(b)),
                color: "#c92a2a",
            })
            .into_iter()
            .collect(),
        corner: peak.map(|p| format!("per-tick peak {} (off the scale)", rate(p))),
        note: zero_note(&[down, up].concat()),
    }
}

/// Colour of the downstream line.
const DOWN: &str = "#1971c2";
/// Colour of the upstream line.
const UP: &str = "#e8590c";

/// The server's replication time per tick, with its median and 99th percentile.
fn server_chart(t: &Timeline, span: &Span<'_>) -> Chart {
    let raw: Vec<u32> = t.samples.iter().map(|s| s.server_tick_us).collect();
    let us: Vec<f64> = raw.iter().map(|&v| f64::from(v)).collect();
    let avg = svg::moving_mean(&us, span.window);
    let (max, peak) = svg::robust_max(&us, &avg, 0.0);
    let mut rules = Vec::new();
    if !raw.is_empty() {
        let (p50, p99) = (svg::percentile(&raw, 50), svg::percentile(&raw, 99));
        rules.push(Rule {
            y: f64::from(p50),
            label: format!("p50 {p50} µs"),
            color: "#495057",
        });
        rules.push(Rule {
            y: f64::from(p99),
            label: format!("p99 {p99} µs"),
            color: "#c92a2a",
        });
    }
    Chart {
        id: "server-tick",
        title: "Server replication time per tick, µs".to_string(),
        x: span.x,
        left: Axis {
            title: "µs per tick".to_string(),
            max,
        },
        right: None,
        series: vec![
            faint(
                Some("per tick"),
                svg::points(span.secs, &us, Agg::Max),
                SERVER,
            ),
            line(
                "replication time (1 s avg)",
                svg::points(span.secs, &avg, Agg::Mean),
                SERVER,
            ),
        ],
        rules,
        corner: peak.map(|p| format!("peak {p:.0} µs (off the scale)")),
        note: zero_note(&us),
    }
}

/// Colour of the server time line.
const SERVER: &str = "#2b8a3e";

/// Prediction error over time: mean over clients and largest.
fn prediction_chart(t: &Timeline, span: &Span<'_>) -> Chart {
    let mean: Vec<f64> = t
        .samples
        .iter()
        .map(|s| f64::from(s.prediction_error_mean))
        .collect();
    let max: Vec<f64> = t
        .samples
        .iter()
        .map(|s| f64::from(s.prediction_error_max))
        .collect();
    let top = svg::max_of(mean.iter().chain(&max).copied());
    Chart {
        id: "prediction",
        title: "Prediction error over time, metres".to_string(),
        x: span.x,
        left: Axis {
            title: "error, m".to_string(),
            max: svg::nice_ceil(top),
        },
        right: None,
        series: vec![
            line(
                "largest over clients",
                svg::points(span.secs, &max, Agg::Max),
                "#e64980",
            ),
            line(
                "mean over clients",
                svg::points(span.secs, &mean, Agg::Mean),
                "#5f3dc4",
            ),
        ],
        rules: Vec::new(),
        corner: None,
        note: zero_note(&[mean, max].concat()),
    }
}

/// Interpolation delay (left axis, ms) and the extrapolating share (right axis, %).
fn interpolation_chart(t: &Timeline, span: &Span<'_>) -> Chart {
    let delay: Vec<f64> = t
        .samples
        .iter()
        .map(|s| f64::from(s.interpolation_delay_ms))
        .collect();
    let share: Vec<f64> = t
        .samples
        .iter()
        .map(|s| f64::from(s.extrapolated_share).min(1.0) * 100.0)
        .collect();
    Chart {
        id: "interpolation",
        title: "Interpolation delay (ms) and extrapolating clients (%) over time".to_string(),
        x: span.x,
        left: Axis {
            title: "delay, ms".to_string(),
            max: svg::nice_ceil(svg::max_of(delay.iter().copied())),
        },
        right: Some(Axis {
            title: "extrapolating, % of clients".to_string(),
            max: 100.0,
        }),
        series: vec![
            Series {
                name: Some("extrapolating (% of clients, right axis)".to_string()),
                points: svg::points(span.secs, &share, Agg::Mean),
                color: "#f59f00",
                style: Style::Area { opacity: 0.25 },
                right: true,
            },
            line(
                "interpolation delay (ms, mean over clients)",
                svg::points(span.secs, &delay, Agg::Mean),
                "#0c8599",
            ),
        ],
        rules: Vec::new(),
        corner: None,
        note: zero_note(&[delay, share].concat()),
    }
}

/// The maps section: one figure per map frame, in a grid.
fn maps_section(page: &mut String, t: &Timeline, hz: f64) {
    page.push_str(
        "<section class=\"card\">\n<h2>Maps: server truth vs one client's view</h2>\n\
         <p class=\"caption\">The arena from above, metres, y up: rings are where the server \
         has each entity, filled dots where the client shows it (its own player predicted, \
         the rest interpolated). A dot away from its ring is a visible error.</p>\n",
    );
    if t.maps.is_empty() {
        page.push_str("<p class=\"caption\">No map was recorded.</p>\n");
    } else {
        page.push_str("<div class=\"maps\">\n");
        for (i, m) in t.maps.iter().enumerate() {
            let when = format!(
                "t = {:.2} s (tick {}) · client {}'s view",
                f64::from(m.tick) / hz,
                m.tick,
                m.viewer
            );
            let _ = writeln!(
                page,
                "<figure><figcaption>{}</figcaption>\n{}</figure>",
                escape(&when),
                svg::map(m, t.arena, &format!("map-{i}"), &when)
            );
        }
        page.push_str("</div>\n");
    }
    page.push_str("</section>\n");
}

/// `s` with the characters HTML gives a meaning to escaped.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `n` samples with made-up but plausible shapes, and four maps.
    fn timeline(n: u32) -> Timeline {
        let samples = (0..n)
            .map(|i| {
                let t = f64::from(i) / 30.0;
                Sample {
                    tick: i,
                    down_bytes_per_sec: 30_000.0 + 4_000.0 * (t * 1.3).sin() + f64::from(i % 7),
                    up_bytes_per_sec: 2_000.0 + 300.0 * (t * 0.7).cos(),
                    server_tick_us: 900 + (i * 37) % 400,
                    prediction_error_mean: (0.05 * (t * 2.0).sin().abs()) as f32,
                    prediction_error_max: (0.3 * (t * 2.0).sin().abs()) as f32,
                    interpolation_delay_ms: 100.0 + (i % 10) as f32,
                    extrapolated_share: if i % 50 < 5 { 0.25 } else { 0.0 },
                }
            })
            .collect();
        let dots = |k: u32| -> Vec<Dot> {
            (0..50)
                .map(|j| Dot {
                    x: (j as f32 * 7.0 + k as f32) % 200.0 - 100.0,
                    y: (j as f32 * 13.0) % 200.0 - 100.0,
                    kind: match j {
                        0 => DotKind::Me,
                        1..=3 => DotKind::Player,
                        _ => DotKind::Enemy,
                    },
                })
                .collect()
        };
        Timeline {
            tick_hz: 30,
            budget_bytes_per_sec: 33_000.0,
            arena: 100.0,
            title: "statewire sim: 8 clients <seed 1> & \"friends\"".to_string(),
            summary: vec![
                ("downstream".to_string(), "30415 B/s per client".to_string()),
                (
                    "server tick".to_string(),
                    "120 µs median, <script> p99".to_string(),
                ),
            ],
            samples,
            maps: (0..4)
                .map(|k| MapFrame {
                    tick: n * (k + 1) / 4,
                    viewer: 0,
                    truth: dots(k),
                    view: dots(k + 1),
                })
                .collect(),
        }
    }

    /// Elements that never have a closing tag in HTML.
    const VOID: &[&str] = &[
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr",
    ];

    /// Whether `html` is well-formed in the strict sense the report keeps to: every element
    /// but the void ones is closed (or self-closed, as SVG elements are), in order; every
    /// attribute value is quoted; `<`, `>` and `&` in text only as markup or entities.
    /// `Err` says what is wrong where.
    fn check_markup(html: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut i = 0;
        let at = |i: usize| format!("at byte {i}: {:?}", &html[i..html.len().min(i + 40)]);
        while let Some(rel) = html[i..].find(['<', '>', '&']) {
            let j = i + rel;
            let rest = &html[j..];
            if rest.starts_with('>') {
                return Err(format!("a bare '>' in text {}", at(j)));
            }
            if let Some(entity) = rest.strip_prefix('&') {
                let end = entity.find(';').filter(|&e| {
                    e > 0
                        && e <= 10
                        && entity[..e]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '#')
                });
                match end {
                    Some(e) => i = j + e + 2,
                    None => return Err(format!("a bare '&' {}", at(j))),
                }
                continue;
            }
            if let Some(body) = rest.strip_prefix("<!--") {
                let end = body
                    .find("-->")
                    .ok_or_else(|| format!("open comment {}", at(j)))?;
                i = j + 4 + end + 3;
                continue;
            }
            if rest.starts_with("<!") {
                let end = rest
                    .find('>')
                    .ok_or_else(|| format!("open declaration {}", at(j)))?;
                i = j + end + 1;
                continue;
            }
            if let Some(body) = rest.strip_prefix("</") {
                let end = body
                    .find('>')
                    .ok_or_else(|| format!("open end tag {}", at(j)))?;
                let name = body[..end].trim().to_ascii_lowercase();
                match stack.pop() {
                    Some(open) if open == name => {}
                    Some(open) => return Err(format!("</{name}> closes <{open}> {}", at(j))),
                    None => return Err(format!("</{name}> closes nothing {}", at(j))),
                }
                i = j + 2 + end + 1;
                continue;
            }
            // A start tag: a name, then name="value" pairs, then `>` or `/>`.
            let b = rest.as_bytes();
            let mut k = 1;
            while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'-') {
                k += 1;
            }
            let name = rest[1..k].to_ascii_lowercase();
            if name.is_empty() {
                return Err(format!("a bare '<' in text {}", at(j)));
            }
            let self_closed = loop {
                while k < b.len() && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                if rest[k..].starts_with("/>") {
                    k += 2;
                    break true;
                }
                if rest[k..].starts_with('>') {
                    k += 1;
                    break false;
                }
                let start = k;
                while k < b.len() && (b[k].is_ascii_alphanumeric() || b"-_:".contains(&b[k])) {
                    k += 1;
                }
                if k == start || b.get(k) != Some(&b'=') {
                    return Err(format!(
                        "<{name}>: an attribute without a value {}",
                        at(j + k)
                    ));
                }
                k += 1;
                let quote = match b.get(k) {
                    Some(&q @ (b'"' | b'\'')) => q,
                    _ => return Err(format!("<{name}>: an unquoted attribute {}", at(j + k))),
                };
                let close = rest[k + 1..]
                    .find(quote as char)
                    .ok_or_else(|| format!("<{name}>: an unclosed quote {}", at(j + k)))?;
                if rest[k + 1..k + 1 + close].contains('<') {
                    return Err(format!("<{name}>: a '<' in an attribute {}", at(j + k)));
                }
                k += 1 + close + 1;
            };
            i = j + k;
            if self_closed || VOID.contains(&name.as_str()) {
                continue;
            }
            if name == "style" {
                // Style sheets are raw text up to their end tag.
                let end = html[i..]
                    .find("</style>")
                    .ok_or_else(|| format!("open <style> {}", at(j)))?;
                i += end;
            }
            stack.push(name);
        }
        match stack.last() {
            Some(open) => Err(format!("<{open}> is never closed")),
            None => Ok(()),
        }
    }

    #[test]
    fn the_markup_checker_passes_good_markup_and_catches_broken_markup() {
        let good = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                    <style>a { b: c }</style></head><body><!-- note --><p a=\"1\" b='2'>x \
                    &amp; y &#39;</p><br><svg><path d=\"M0 0h0\"/></svg></body></html>";
        assert_eq!(check_markup(good), Ok(()));
        for bad in [
            "<div><span></div></span>",
            "<div class=x></div>",
            "<div class></div>",
            "<p>never closed",
            "<b>a & b</b>",
            "<div></div></div>",
            "<svg><circle r=\"1\"></svg>",
            "<p>1 < 2</p>",
            "<p>2 > 1</p>",
            "<p title=\"a<b\">x</p>",
            "<p title=\"open>x</p>",
        ] {
            assert!(check_markup(bad).is_err(), "{bad:?} passed");
        }
        let page = render_html(&timeline(60));
        assert_eq!(check_markup(&page), Ok(()));
        assert!(check_markup(&page.replacen("</g>", "", 1)).is_err());
        assert!(check_markup(&page.replacen("\"chart\"", "chart", 1)).is_err());
    }

    /// `page` is well-formed, self-contained and script-free.
    fn assert_clean(page: &str) {
        assert!(page.starts_with("<!DOCTYPE html>"), "{}", &page[..40]);
        if let Err(e) = check_markup(page) {
            panic!("malformed page: {e}");
        }
        assert!(!page.to_ascii_lowercase().contains("<script"));
        let rest = page.replace("http://www.w3.org/2000/svg", "");
        for scheme in ["http:", "https:", "//fonts", "url(http", "@import", "<img"] {
            assert!(!rest.contains(scheme), "the page holds {scheme:?}");
        }
    }

    #[test]
    fn a_run_renders_a_well_formed_self_contained_page() {
        let t = timeline(600);
        let page = render_html(&t);
        assert_clean(&page);
        for id in ["bandwidth", "server-tick", "prediction", "interpolation"] {
            assert!(page.contains(&format!("id=\"{id}\"")), "no chart {id}");
        }
        assert!(page.matches("class=\"chart\"").count() >= 4);
        assert_eq!(page.matches("class=\"map\"").count(), t.maps.len());
        assert!(page.matches("<svg").count() >= 4 + t.maps.len());
        assert_eq!(page.matches("<section").count(), 5);
        assert_eq!(page.matches("<h2>").count(), 5);
        assert!(page.contains(">budget 33.0 kB/s<"), "no budget label");
        assert!(page.contains(">p99 "), "no p99 label");
        assert!(page.contains("t = 5.00 s (tick 150)"), "no map time");
        assert!(!page.contains("off the scale"));
        let mut spike = t.clone();
        spike.samples[100].server_tick_us = 1_000_000;
        let page = render_html(&spike);
        assert!(
            page.contains(">peak 1000000 µs (off the scale)<"),
            "no peak label"
        );
    }

    #[test]
    fn every_text_is_escaped() {
        let page = render_html(&timeline(30));
        assert!(!page.contains("<seed"));
        assert!(page.contains("&lt;seed 1&gt; &amp; &quot;friends&quot;"));
        assert!(page.contains("&lt;script&gt; p99"));
    }

    /// Every number in `page`'s SVG geometry is finite, short and has at most one decimal.
    fn assert_coordinates_are_tidy(page: &str) {
        let attrs = [
            " points=\"",
            " d=\"",
            " cx=\"",
            " cy=\"",
            " x=\"",
            " y=\"",
            " x1=\"",
            " y1=\"",
        ];
        for attr in attrs {
            for chunk in page.split(attr).skip(1) {
                let value = &chunk[..chunk.find('"').expect("closed attribute")];
                let numbers = value
                    .split(|c: char| c.is_ascii_whitespace() || ",MhLZ".contains(c))
                    .filter(|n| !n.is_empty());
                for n in numbers {
                    let v: f64 = n.parse().unwrap_or_else(|_| panic!("{attr}{value}: {n:?}"));
                    assert!(v.is_finite() && v.abs() < 10_000.0, "{attr}{value}: {n}");
                    let decimals = n.split_once('.').map_or(0, |(_, f)| f.len());
                    assert!(decimals <= 1, "{attr}{value}: {n}");
                }
            }
        }
    }

    #[test]
    fn coordinates_have_at_most_one_decimal() {
        assert_coordinates_are_tidy(&render_html(&timeline(600)));
    }

    #[test]
    fn empty_and_tiny_timelines_render() {
        let empty = render_html(&Timeline::default());
        assert_clean(&empty);
        assert!(empty.contains("No active ticks were recorded."));
        assert!(empty.contains("No map was recorded."));
        assert_eq!(empty.matches(">no samples<").count(), 4);
        assert!(empty.contains("id=\"bandwidth\""));
        let mut one = timeline(1);
        one.samples[0] = Sample::default();
        one.maps.truncate(1);
        one.maps[0].truth.clear();
        one.maps[0].view.clear();
        assert_clean(&render_html(&one));
        let mut zeros = timeline(100);
        zeros
            .samples
            .iter_mut()
            .for_each(|s| *s = Sample::default());
        zeros.budget_bytes_per_sec = 0.0;
        let page = render_html(&zeros);
        assert_clean(&page);
        assert!(page.contains("every sample is zero (or not measured)"));
    }

    #[test]
    fn nan_infinite_negative_and_huge_values_render() {
        let mut t = timeline(300);
        for (i, s) in t.samples.iter_mut().enumerate() {
            match i % 5 {
                0 => {
                    s.down_bytes_per_sec = f64::NAN;
                    s.prediction_error_mean = f32::NAN;
                    s.interpolation_delay_ms = f32::INFINITY;
                    s.extrapolated_share = f32::NAN;
                }
                1 => {
                    s.up_bytes_per_sec = f64::INFINITY;
                    s.prediction_error_max = f32::NEG_INFINITY;
                    s.extrapolated_share = 7.0;
                }
                2 => {
                    s.down_bytes_per_sec = -5.0;
                    s.server_tick_us = u32::MAX;
                }
                3 => s.up_bytes_per_sec = f64::MAX,
                _ => {}
            }
        }
        t.budget_bytes_per_sec = f64::NAN;
        t.arena = f32::NAN;
        t.tick_hz = 0;
        t.maps[0].truth[0].x = f32::NAN;
        t.maps[0].view[1].y = f32::INFINITY;
        t.maps[1].view[2].x = 1e30;
        let page = render_html(&t);
        assert_clean(&page);
        assert!(!page.contains("NaN"), "a NaN was drawn");
        // Huge values are clamped to the plot, and skipped values leave no "inf" behind.
        assert_coordinates_are_tidy(&page);
        let mut all_nan = timeline(50);
        all_nan.samples.iter_mut().for_each(|s| {
            s.down_bytes_per_sec = f64::NAN;
            s.up_bytes_per_sec = f64::NAN;
        });
        all_nan.arena = 0.0;
        assert_clean(&render_html(&all_nan));
    }

    #[test]
    fn a_hundred_thousand_samples_stay_under_a_megabyte() {
        let t = timeline(100_000);
        let page = render_html(&t);
        assert_clean(&page);
        assert!(page.len() < 1_000_000, "{} bytes", page.len());
        assert_coordinates_are_tidy(&page);
    }

    #[test]
    fn axes_end_on_round_numbers() {
        for (v, nice) in [
            (0.0, 1.0),
            (-3.0, 1.0),
            (f64::NAN, 1.0),
            (f64::INFINITY, 1.0),
            (0.7, 1.0),
            (1.0, 1.0),
            (1.01, 2.0),
            (3.0, 5.0),
            (7.0, 10.0),
            (100.0, 100.0),
            (35_000.0, 50_000.0),
            (0.0012, 0.002),
            (1e15, 1e15),
        ] {
            let got = svg::nice_ceil(v);
            assert!(
                (got - nice).abs() <= nice * 1e-9,
                "nice_ceil({v}) = {got}, not {nice}"
            );
        }
        let mut spiky = vec![100.0; 1000];
        spiky[10] = 5_000.0;
        assert_eq!(
            svg::robust_max(&spiky, &[110.0], 0.0),
            (200.0, Some(5_000.0))
        );
        assert_eq!(svg::robust_max(&spiky[11..], &[110.0], 0.0), (200.0, None));
        assert_eq!(svg::robust_max(&spiky, &[110.0], 3_000.0), (5_000.0, None));
        assert_eq!(svg::robust_max(&[], &[], 0.0), (1.0, None));
        assert_eq!(svg::x_axis(4.97), (5.0, 0.5));
        assert_eq!(svg::x_axis(19.97), (20.0, 2.0));
        assert_eq!(svg::x_axis(0.0), (1.0, 0.1));
    }

    #[test]
    fn downsampling_keeps_peaks_and_averages_skip_gaps() {
        let xs: Vec<f64> = (0..10_000).map(f64::from).collect();
        let mut ys = vec![1.0; 10_000];
        ys[4321] = 500.0;
        let max = svg::points(&xs, &ys, svg::Agg::Max);
        assert!(max.len() <= 1000, "{}", max.len());
        assert!(max.iter().any(|p| p.1 == 500.0), "the spike is lost");
        let few = svg::points(&xs[..100], &ys[..100], svg::Agg::Mean);
        assert_eq!(few.len(), 100);
        let avg = svg::moving_mean(&[1.0, f64::NAN, 3.0, f64::NAN, f64::NAN, f64::NAN], 3);
        assert_eq!(&avg[..3], &[1.0, 2.0, 3.0]);
        assert_eq!(avg[3], 3.0);
        assert!(avg[4].is_nan() && avg[5].is_nan());
        assert_eq!(svg::percentile(&[5, 1, 4, 2, 3], 50), 3);
        assert_eq!(svg::percentile(&[], 99), 0);
    }
}
