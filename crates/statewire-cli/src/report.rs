//! `statewire sim --report FILE.html`: one self-contained HTML page (no network, no scripts)
//! with SVG charts of a run over time and top-down maps of the world.

/// What a run recorded over time, for the HTML report.
#[allow(
    dead_code,
    reason = "the charts that read these come with the renderer"
)]
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

/// The whole HTML page for `timeline`.
pub(crate) fn render_html(timeline: &Timeline) -> String {
    // Filled in by the renderer (charts, maps); the skeleton keeps the flag working meanwhile.
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head>\
         <body><h1>{}</h1></body></html>\n",
        escape(&timeline.title),
        escape(&timeline.title)
    )
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
