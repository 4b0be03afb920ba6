//! The SVG pieces of the report: line charts over time and top-down maps, plus the number
//! handling they share (cleaning, nice axis ends, moving averages, downsampling).
//!
//! Everything here is plain string building: the page must open from a file with no scripts,
//! so every pixel position is computed now.

use std::fmt::Write as _;

use super::{Dot, DotKind, MapFrame, escape};

/// Values above this are drawn at it: a chart's scale stays finite and its numbers short even
/// when a counter goes wild.
const HUGE: f64 = 1e15;

/// Series longer than this are reduced to [`BUCKETS`] points: a 10-minute run at 30 Hz has
/// 18,000 samples per series, far more than a chart is pixels wide.
const DOWNSAMPLE_ABOVE: usize = 1500;

/// How many points a downsampled series keeps.
const BUCKETS: usize = 1000;

/// `v` fit to draw: `None` for NaN and infinities (the point is skipped), else clamped to
/// `0..=HUGE` (charts start at zero; nothing they show is negative).
pub(super) fn clean(v: f64) -> Option<f64> {
    v.is_finite().then(|| v.clamp(0.0, HUGE))
}

/// The largest drawable value of `values` (0 if there is none).
pub(super) fn max_of(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().filter_map(clean).fold(0.0, f64::max)
}

/// The smallest 1, 2 or 5 × 10^k that is at least `v` (1 for zero, negative or non-finite `v`),
/// so an axis ends on a round number.
pub(super) fn nice_ceil(v: f64) -> f64 {
    let Some(v) = clean(v).filter(|&v| v > 0.0) else {
        return 1.0;
    };
    let k = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * k)
        // log10 of an exact power of ten can come out a hair low: allow for rounding.
        .find(|&c| c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * k)
}

/// The 1, 2 or 5 × 10^k step closest above `raw`, for tick spacing.
fn nice_step(raw: f64) -> f64 {
    nice_ceil(raw)
}

/// The top of an axis for a spiky series `raw` and its smoothed `typical` values (plus `also`,
/// e.g. a budget line): normally the nice ceiling of everything, but when a few spikes tower
/// over the rest (more than twice the 99th percentile and the smoothed peak), the axis is cut
/// above the typical values so they stay readable, and the cut-off peak is returned as well.
pub(super) fn robust_max(raw: &[f64], typical: &[f64], also: f64) -> (f64, Option<f64>) {
    let peak = max_of(raw.iter().copied());
    let mut sorted: Vec<f64> = raw.iter().copied().filter_map(clean).collect();
    sorted.sort_unstable_by(f64::total_cmp);
    let p99 = sorted
        .get((sorted.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    let usual = max_of(typical.iter().copied().chain([p99, also]));
    if usual > 0.0 && peak > 2.0 * usual {
        (nice_ceil(usual * 1.25), Some(peak))
    } else {
        (nice_ceil(peak.max(usual)), None)
    }
}

/// The `p`th percentile (nearest rank) of `values`, 0 for none.
pub(super) fn percentile(values: &[u32], p: u32) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// The mean of `values` over a window of `window` samples centred on each one (shorter at the
/// ends), skipping undrawable values; NaN where a window holds none. Centred so the average
/// does not lag behind what it smooths.
pub(super) fn moving_mean(values: &[f64], window: usize) -> Vec<f64> {
    let half = window.max(1) / 2;
    let mut sum = Vec::with_capacity(values.len() + 1);
    let mut count = Vec::with_capacity(values.len() + 1);
    sum.push(0.0);
    count.push(0u32);
    for &v in values {
        let (s, c) = (sum[sum.len() - 1], count[count.len() - 1]);
        match clean(v) {
            Some(v) => {
                sum.push(s + v);
                count.push(c + 1);
            }
            None => {
                sum.push(s);
                count.push(c);
            }
        }
    }
    (0..values.len())
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(values.len()));
            let n = count[hi] - count[lo];
            if n == 0 {
                f64::NAN
            } else {
                (sum[hi] - sum[lo]) / f64::from(n)
            }
        })
        .collect()
}

/// How a downsampled bucket is summed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Agg {
    /// The bucket's mean: for lines that are averages already.
    Mean,
    /// The bucket's largest value: for spiky lines, whose peaks are the point.
    Max,
}

/// The drawable `(x, y)` points of `ys` against `xs`, at most about [`BUCKETS`] of them once
/// there are more than [`DOWNSAMPLE_ABOVE`].
pub(super) fn points(xs: &[f64], ys: &[f64], agg: Agg) -> Vec<(f64, f64)> {
    let all: Vec<(f64, f64)> = xs
        .iter()
        .zip(ys)
        .filter_map(|(&x, &y)| Some((clean(x)?, clean(y)?)))
        .collect();
    if all.len() <= DOWNSAMPLE_ABOVE {
        return all;
    }
    let size = all.len().div_ceil(BUCKETS);
    all.chunks(size)
        .map(|b| {
            let x = b.iter().map(|p| p.0).sum::<f64>() / b.len() as f64;
            let y = match agg {
                Agg::Mean => b.iter().map(|p| p.1).sum::<f64>() / b.len() as f64,
                Agg::Max => b.iter().map(|p| p.1).fold(0.0, f64::max),
            };
            (x, y)
        })
        .collect()
}

/// Appends `v` as an SVG number: at most one decimal, no trailing `.0`, no `-0`.
fn push_num(out: &mut String, v: f64) {
    let r = (v * 10.0).round() / 10.0;
    let r = if r == 0.0 { 0.0 } else { r };
    if r.fract() == 0.0 {
        let _ = write!(out, "{r:.0}");
    } else {
        let _ = write!(out, "{r:.1}");
    }
}

/// `v` as an SVG number (see [`push_num`]).
fn num(v: f64) -> String {
    let mut s = String::new();
    push_num(&mut s, v);
    s
}

/// A tick label for `v` on an axis with ticks `step` apart: thousands as `k` and millions as
/// `M` once the axis reaches 10,000, with as many decimals as the step needs.
fn tick_label(v: f64, step: f64, axis_max: f64) -> String {
    let (scale, suffix) = if axis_max >= 1e7 {
        (1e6, "M")
    } else if axis_max >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    if v == 0.0 {
        return "0".to_string();
    }
    let step = step / scale;
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 6.0) as usize
    };
    format!("{:.*}{suffix}", decimals, v / scale)
}

/// The x-axis end for samples reaching `last` seconds, and the tick step: the end is the
/// first tick at or after `last`, so the line reaches (almost) the right edge.
pub(super) fn x_axis(last: f64) -> (f64, f64) {
    let last = clean(last).filter(|&v| v > 0.0).unwrap_or(1.0);
    let step = nice_step(last / 10.0);
    let end = ((last / step) - 1e-9).ceil().max(1.0) * step;
    (end, step)
}

/// One vertical axis of a chart.
pub(super) struct Axis {
    /// The axis title, with its unit ("B/s per client").
    pub(super) title: String,
    /// The value at the top of the plot (0 is at the bottom).
    pub(super) max: f64,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy)]
pub(super) enum Style {
    /// A polyline of this width; `opacity` below 1 for the faint per-tick lines.
    Line {
        /// Stroke width, in the chart's units (about pixels).
        width: f64,
        /// 0..=1.
        opacity: f64,
    },
    /// Filled down to the axis.
    Area {
        /// 0..=1.
        opacity: f64,
    },
}

/// One line or area of a chart.
pub(super) struct Series {
    /// Its name in the legend; `None` leaves it out of the legend.
    pub(super) name: Option<String>,
    /// `(seconds, value)` points, already cleaned (see [`points`]).
    pub(super) points: Vec<(f64, f64)>,
    /// CSS colour.
    pub(super) color: &'static str,
    /// How it is drawn.
    pub(super) style: Style,
    /// Whether it is read against the right axis.
    pub(super) right: bool,
}

/// A dashed horizontal line across a chart (a budget, a percentile), labelled at its right end.
pub(super) struct Rule {
    /// The value it marks, on the left axis.
    pub(super) y: f64,
    /// Its label, drawn on the line and in the legend.
    pub(super) label: String,
    /// CSS colour.
    pub(super) color: &'static str,
}

/// A chart of values over time.
pub(super) struct Chart {
    /// The `id` of the `<svg>`.
    pub(super) id: &'static str,
    /// Its accessible title (the `<title>` inside the SVG).
    pub(super) title: String,
    /// The time at the right edge, seconds, and the spacing of the time ticks (see
    /// [`x_axis`]).
    pub(super) x: (f64, f64),
    /// The axis most series are read against.
    pub(super) left: Axis,
    /// A second axis on the right, if any series is read against it.
    pub(super) right: Option<Axis>,
    /// Drawn in order: put areas and faint lines first.
    pub(super) series: Vec<Series>,
    /// Dashed reference lines.
    pub(super) rules: Vec<Rule>,
    /// A line of text across the middle of the plot (e.g. "no data yet").
    pub(super) note: Option<String>,
    /// A short line above the plot's top right corner (e.g. a peak the scale leaves off).
    pub(super) corner: Option<String>,
}

/// The chart's size in its own units; the page scales it to its column.
const W: f64 = 960.0;
/// See [`W`].
const H: f64 = 300.0;
/// Room for the left axis's tick labels and title.
const LEFT: f64 = 76.0;
/// Room for the legend.
const TOP: f64 = 40.0;
/// Room for the time ticks and the axis title.
const BOTTOM: f64 = 46.0;

impl Chart {
    /// The chart as one `<svg class="chart">` element.
    pub(super) fn render(&self) -> String {
        let right_room = if self.right.is_some() { 76.0 } else { 28.0 };
        let (pw, ph) = (W - LEFT - right_room, H - TOP - BOTTOM);
        let (x_end, x_step) = self.x;
        let x_end = if x_end > 0.0 { x_end } else { 1.0 };
        let sx = |x: f64| LEFT + x.clamp(0.0, x_end) / x_end * pw;
        let sy = |y: f64, max: f64| TOP + ph - y.clamp(0.0, max) / max * ph;
        let left_max = axis_max(self.left.max);
        let right_max = self.right.as_ref().map_or(1.0, |a| axis_max(a.max));
        let mut o = String::with_capacity(16 * 1024);
        let _ = writeln!(
            o,
            "<svg class=\"chart\" id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" \
             viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"{id}-title\">\
             <title id=\"{id}-title\">{title}</title>",
            id = self.id,
            title = escape(&self.title),
        );
        // Plot background, then grid and tick labels.
        let _ = writeln!(
            o,
            "<rect class=\"plot\" x=\"{}\" y=\"{TOP}\" width=\"{}\" height=\"{}\"/>",
            num(LEFT),
            num(pw),
            num(ph)
        );
        o.push_str("<g class=\"grid\">");
        for (v, _) in y_ticks(left_max) {
            let y = num(sy(v, left_max));
            let _ = write!(
                o,
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
                num(LEFT),
                num(LEFT + pw)
            );
        }
        let x_ticks = x_ticks(x_end, x_step);
        // The axes themselves stand for the first and last vertical gridlines.
        for &x in x_ticks
            .iter()
            .filter(|&&x| x > 0.0 && x < x_end - x_step * 1e-6)
        {
            let px = num(sx(x));
            let _ = write!(
                o,
                "<line x1=\"{px}\" y1=\"{TOP}\" x2=\"{px}\" y2=\"{}\"/>",
                num(TOP + ph)
            );
        }
        o.push_str("</g>\n<g class=\"ticks\">");
        for (v, step) in y_ticks(left_max) {
            let _ = write!(
                o,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                num(LEFT - 8.0),
                num(sy(v, left_max) + 4.0),
                tick_label(v, step, left_max)
            );
        }
        if self.right.is_some() {
            // On the left axis's gridlines, so both axes read off the same lines.
            for (v, step) in y_ticks(left_max) {
                let (v, step) = (v / left_max * right_max, step / left_max * right_max);
                let _ = write!(
                    o,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"start\">{}</text>",
                    num(LEFT + pw + 8.0),
                    num(sy(v, right_max) + 4.0),
                    tick_label(v, step, right_max)
                );
            }
        }
        for &x in &x_ticks {
            let _ = write!(
                o,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                num(sx(x)),
                num(TOP + ph + 18.0),
                tick_label(x, x_step, 0.0)
            );
        }
        o.push_str("</g>\n");
        // Axis titles.
        let _ = writeln!(
            o,
            "<text class=\"axis-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">time, s</text>",
            num(LEFT + pw / 2.0),
            num(H - 8.0)
        );
        let _ = writeln!(
            o,
            "<text class=\"axis-title\" transform=\"translate(16 {}) rotate(-90)\" \
             text-anchor=\"middle\">{}</text>",
            num(TOP + ph / 2.0),
            escape(&self.left.title)
        );
        if let Some(r) = &self.right {
            let _ = writeln!(
                o,
                "<text class=\"axis-title\" transform=\"translate({} {}) rotate(90)\" \
                 text-anchor=\"middle\">{}</text>",
                num(W - 14.0),
                num(TOP + ph / 2.0),
                escape(&r.title)
            );
        }
        // The frame goes under the data: a series that is zero throughout lies on the x
        // axis and must still show.
        let _ = writeln!(
            o,
            "<rect class=\"frame\" x=\"{}\" y=\"{TOP}\" width=\"{}\" height=\"{}\"/>",
            num(LEFT),
            num(pw),
            num(ph)
        );
        // The data.
        for s in &self.series {
            let max = if s.right { right_max } else { left_max };
            if s.points.is_empty() {
                continue;
            }
            let mut coords = String::with_capacity(s.points.len() * 12);
            for &(x, y) in &s.points {
                push_num(&mut coords, sx(x));
                coords.push(',');
                push_num(&mut coords, sy(y, max));
                coords.push(' ');
            }
            match s.style {
                Style::Line { width, opacity } => {
                    let _ = writeln!(
                        o,
                        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" \
                         stroke-opacity=\"{}\" stroke-linejoin=\"round\" points=\"{}\"/>",
                        s.color,
                        num(width),
                        opacity,
                        coords.trim_end()
                    );
                }
                Style::Area { opacity } => {
                    let (first, last) = (s.points[0].0, s.points[s.points.len() - 1].0);
                    let base = num(TOP + ph);
                    let _ = writeln!(
                        o,
                        "<polygon fill=\"{}\" fill-opacity=\"{}\" stroke=\"{}\" \
                         stroke-width=\"1\" points=\"{},{base} {}{},{base}\"/>",
                        s.color,
                        opacity,
                        s.color,
                        num(sx(first)),
                        coords,
                        num(sx(last))
                    );
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let y = sy(r.y, left_max);
            // Labels alternate between the right and left ends: two rules close together
            // (a median and a p99) would otherwise print one label over the other.
            let (lx, anchor) = if i % 2 == 0 {
                (LEFT + pw - 6.0, "end")
            } else {
                (LEFT + 6.0, "start")
            };
            let _ = writeln!(
                o,
                "<line stroke=\"{c}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\" x1=\"{}\" \
                 y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/><text class=\"rule\" style=\"fill: {c}\" \
                 x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
                num(LEFT),
                num(LEFT + pw),
                num(lx),
                num(y - 5.0),
                escape(&r.label),
                c = r.color,
                y = num(y),
            );
        }
        if let Some(corner) = &self.corner {
            let _ = writeln!(
                o,
                "<text class=\"corner\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                num(LEFT + pw),
                num(TOP - 6.0),
                escape(corner)
            );
        }
        if let Some(note) = &self.note {
            let _ = writeln!(
                o,
                "<text class=\"note\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                num(LEFT + pw / 2.0),
                num(TOP + ph / 2.0),
                escape(note)
            );
        }
        self.legend(&mut o);
        o.push_str("</svg>");
        o
    }

    /// The legend along the top: the named main lines, areas, faint lines, then the rules.
    /// Main lines are what a reader looks for first, while drawing order puts them last (on
    /// top), so the legend has an order of its own.
    fn legend(&self, o: &mut String) {
        o.push_str("<g class=\"legend\">");
        let mut x = LEFT;
        let y = 20.0;
        let rank = |s: &Series| match s.style {
            Style::Line { opacity, .. } if opacity >= 1.0 => 0,
            Style::Area { .. } => 1,
            Style::Line { .. } => 2,
        };
        let mut order: Vec<&Series> = self.series.iter().collect();
        order.sort_by_key(|s| rank(s));
        for s in order {
            let Some(name) = &s.name else { continue };
            match s.style {
                Style::Line { width, opacity } => {
                    let _ = write!(
                        o,
                        "<line stroke=\"{}\" stroke-width=\"{}\" stroke-opacity=\"{opacity}\" \
                         x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
                        s.color,
                        num(width.max(2.0)),
                        num(x),
                        num(x + 22.0)
                    );
                }
                Style::Area { opacity } => {
                    let _ = write!(
                        o,
                        "<rect fill=\"{c}\" fill-opacity=\"{opacity}\" stroke=\"{c}\" x=\"{}\" \
                         y=\"{}\" width=\"22\" height=\"10\"/>",
                        num(x),
                        num(y - 5.0),
                        c = s.color,
                    );
                }
            }
            x = legend_text(o, x, y, name);
        }
        for r in &self.rules {
            let _ = write!(
                o,
                "<line stroke=\"{}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\" x1=\"{}\" \
                 y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
                r.color,
                num(x),
                num(x + 22.0)
            );
            x = legend_text(o, x, y, &r.label);
        }
        o.push_str("</g>\n");
    }
}

/// Writes a legend entry's text after its 22-unit swatch at `x`; returns where the next entry
/// starts (text width estimated: SVG cannot measure without a script).
fn legend_text(o: &mut String, x: f64, y: f64, text: &str) -> f64 {
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\">{}</text>",
        num(x + 28.0),
        num(y + 4.0),
        escape(text)
    );
    x + 28.0 + text.chars().count() as f64 * 6.9 + 22.0
}

/// The time ticks from 0 to `end`, `step` apart (at most a hundred, whatever the inputs).
fn x_ticks(end: f64, step: f64) -> Vec<f64> {
    if !(step > 0.0 && end.is_finite()) {
        return vec![0.0];
    }
    (0..=100u32)
        .map(|i| f64::from(i) * step)
        .take_while(|&x| x <= end + step * 1e-6)
        .collect()
}

/// `max` made safe to divide by (1 if it is not a positive finite number).
fn axis_max(max: f64) -> f64 {
    clean(max).filter(|&m| m > 0.0).unwrap_or(1.0)
}

/// The y-axis ticks from 0 to `max`, with their step: 4 or 5 of them for a 1/2/5 × 10^k `max`.
fn y_ticks(max: f64) -> impl Iterator<Item = (f64, f64)> {
    let step = nice_step(max / 5.0);
    let n = ((max / step) + 1e-6).floor().clamp(1.0, 20.0) as u32;
    (0..=n).map(move |i| (f64::from(i) * step, step))
}

/// The map's size in its own units: a square plot under a legend, above a scale line.
const MAP_SIDE: f64 = 380.0;
/// Margin around the square.
const MAP_PAD: f64 = 10.0;
/// Room for the legend above the square.
const MAP_TOP: f64 = 34.0;
/// Room for the scale line under the square.
const MAP_BOTTOM: f64 = 24.0;

/// CSS colour of a dot kind (view and truth alike, so a pair reads as one entity).
fn dot_color(kind: DotKind) -> &'static str {
    match kind {
        DotKind::Me => "#e8590c",
        DotKind::Player => "#1971c2",
        DotKind::Enemy => "#9c36b5",
    }
}

/// One map: a top-down `<svg class="map">` of `frame`, `-arena..arena` on both axes with y up,
/// the server's truth as rings and the client's view as filled dots.
pub(super) fn map(frame: &MapFrame, arena: f32, id: &str, title: &str) -> String {
    let arena = f64::from(arena);
    let arena = if arena.is_finite() && arena > 0.0 {
        arena
    } else {
        // No arena size: fit the dots instead, so they are still visible.
        let far = frame
            .truth
            .iter()
            .chain(&frame.view)
            .flat_map(|d| [f64::from(d.x).abs(), f64::from(d.y).abs()])
            .filter_map(clean)
            .fold(0.0, f64::max);
        nice_ceil(far)
    };
    let (x0, y0) = (MAP_PAD, MAP_TOP);
    let scale = MAP_SIDE / (2.0 * arena);
    // Dots a little outside the arena are pinned to its edge rather than dropped: they are
    // still entities the client shows.
    let pos = |d: &Dot| -> Option<(f64, f64)> {
        let (x, y) = (clean_signed(d.x)?, clean_signed(d.y)?);
        let (x, y) = (x.clamp(-arena, arena), y.clamp(-arena, arena));
        Some((x0 + (x + arena) * scale, y0 + (arena - y) * scale))
    };
    let (w, h) = (MAP_SIDE + 2.0 * MAP_PAD, MAP_TOP + MAP_SIDE + MAP_BOTTOM);
    let mut o = String::with_capacity(64 * (frame.truth.len() + frame.view.len()) + 4096);
    let _ = writeln!(
        o,
        "<svg class=\"map\" id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {} {}\" role=\"img\" aria-labelledby=\"{id}-title\">\
         <title id=\"{id}-title\">{}</title>",
        num(w),
        num(h),
        escape(title)
    );
    let _ = write!(
        o,
        "<rect class=\"arena\" x=\"{x0}\" y=\"{y0}\" width=\"{s}\" height=\"{s}\"/>\
         <g class=\"grid\">",
        s = num(MAP_SIDE)
    );
    for q in 1..4 {
        let _ = write!(
            o,
            "<line x1=\"{x0}\" y1=\"{y}\" x2=\"{x1}\" y2=\"{y}\"/>\
             <line x1=\"{x}\" y1=\"{y0}\" x2=\"{x}\" y2=\"{y1}\"/>",
            y = num(y0 + f64::from(q) * MAP_SIDE / 4.0),
            x = num(x0 + f64::from(q) * MAP_SIDE / 4.0),
            x1 = num(x0 + MAP_SIDE),
            y1 = num(y0 + MAP_SIDE),
        );
    }
    o.push_str("</g>\n");
    // Enemies first, then players, then "me" on top: the few dots that matter most stay
    // visible in a crowd.
    for kind in [DotKind::Enemy, DotKind::Player, DotKind::Me] {
        let r = if kind == DotKind::Me { 5.5 } else { 3.2 };
        let _ = write!(
            o,
            "<g class=\"truth\" stroke=\"{}\" stroke-width=\"{}\">",
            dot_color(kind),
            if kind == DotKind::Me { 2 } else { 1 }
        );
        for p in frame
            .truth
            .iter()
            .filter(|d| d.kind == kind)
            .filter_map(pos)
        {
            let _ = write!(
                o,
                "<circle cx=\"{}\" cy=\"{}\" r=\"{r}\"/>",
                num(p.0),
                num(p.1)
            );
        }
        o.push_str("</g>\n");
    }
    for kind in [DotKind::Enemy, DotKind::Player, DotKind::Me] {
        // A zero-length segment with round caps is a filled dot in a dozen bytes: maps of a
        // thousand entities stay small.
        let mut d = String::new();
        for p in frame.view.iter().filter(|d| d.kind == kind).filter_map(pos) {
            d.push('M');
            push_num(&mut d, p.0);
            d.push(' ');
            push_num(&mut d, p.1);
            d.push_str("h0");
        }
        if !d.is_empty() {
            let _ = writeln!(
                o,
                "<path class=\"view\" stroke=\"{}\" stroke-width=\"{}\" d=\"{d}\"/>",
                dot_color(kind),
                if kind == DotKind::Me { 6 } else { 3 }
            );
        }
    }
    let _ = write!(
        o,
        "<rect class=\"frame\" x=\"{x0}\" y=\"{y0}\" width=\"{s}\" height=\"{s}\"/>",
        s = num(MAP_SIDE)
    );
    // Legend: what rings and dots mean, then the colours.
    let ly = 16.0;
    let _ = write!(
        o,
        "<g class=\"legend\"><circle class=\"key-ring\" cx=\"{}\" cy=\"{ly}\" r=\"4\"/>\
         <text x=\"{}\" y=\"{}\">server</text>\
         <path class=\"key-dot\" d=\"M{} {ly}h0\"/><text x=\"{}\" y=\"{}\">client view</text>",
        num(x0 + 5.0),
        num(x0 + 14.0),
        num(ly + 4.0),
        num(x0 + 70.0),
        num(x0 + 79.0),
        num(ly + 4.0),
    );
    let mut lx = x0 + 170.0;
    for (kind, name) in [
        (DotKind::Me, "me"),
        (DotKind::Player, "player"),
        (DotKind::Enemy, "enemy"),
    ] {
        let _ = write!(
            o,
            "<rect fill=\"{}\" x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" rx=\"2\"/>\
             <text x=\"{}\" y=\"{}\">{name}</text>",
            dot_color(kind),
            num(lx),
            num(ly - 5.0),
            num(lx + 14.0),
            num(ly + 4.0)
        );
        lx += 14.0 + name.len() as f64 * 7.0 + 16.0;
    }
    o.push_str("</g>\n");
    let _ = writeln!(
        o,
        "<text class=\"scale\" x=\"{}\" y=\"{}\" text-anchor=\"start\">{}</text>\
         <text class=\"scale\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        num(x0),
        num(y0 + MAP_SIDE + 16.0),
        escape(&format!("x, y: −{0} … {0} m", tick_label(arena, 1.0, 0.0))),
        num(x0 + MAP_SIDE),
        num(y0 + MAP_SIDE + 16.0),
        escape(&format!(
            "{} server, {} shown",
            frame.truth.len(),
            frame.view.len()
        )),
    );
    o.push_str("</svg>");
    o
}

/// `v` as a finite f64, or `None` (the dot is skipped).
fn clean_signed(v: f32) -> Option<f64> {
    let v = f64::from(v);
    v.is_finite().then_some(v)
}
