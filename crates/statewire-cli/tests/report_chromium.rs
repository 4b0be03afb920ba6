//! `statewire sim --report` writes a page a real browser draws: a short run's HTML is
//! screenshotted by headless Chromium and the picture checked for charts. Markup checks alone
//! would pass a page whose SVG draws nothing (a zero-size viewBox, a CSS rule hiding it).
//!
//! Without a browser the test is skipped, unless `STATEWIRE_REQUIRE_CHROMIUM=1` (CI sets it)
//! makes that a failure. `STATEWIRE_CHROMIUM` names the browser to use; `STATEWIRE_REPORT_SHOT`
//! names a file to keep the screenshot in.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The charts the page must hold, by `id`.
const CHART_IDS: [&str; 4] = ["bandwidth", "server-tick", "prediction", "interpolation"];

/// The downstream line's colour in the bandwidth chart (the first chart), RGB.
const DOWNSTREAM_BLUE: [u8; 3] = [0x19, 0x71, 0xc2];

/// The main lines of the other charts (server time, mean prediction error, interpolation
/// delay), RGB: colours nothing else on the page uses.
const LATER_LINES: [(&str, [u8; 3]); 3] = [
    ("server-tick", [0x2b, 0x8a, 0x3e]),
    ("prediction", [0x5f, 0x3d, 0xc4]),
    ("interpolation", [0x0c, 0x85, 0x99]),
];

/// The browser's window, CSS pixels; the screenshot has this size.
const WIDTH: usize = 1280;
/// See [`WIDTH`].
const HEIGHT: usize = 3000;

/// The browser to use: `$STATEWIRE_CHROMIUM`, else the first of the usual names on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STATEWIRE_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| is_executable(p))
}

/// Whether `p` is a file this process may run.
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Waits for `child` at most `limit`; kills it and panics (naming `what`) past that, so a hung
/// browser fails the test instead of hanging it.
fn wait_for(mut child: Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {} s: killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory of this test's own under the system's temporary directory.
fn scratch_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "statewire-report-chromium-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// A decoded screenshot: RGB, row by row.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Image {
    /// Decodes the PNG at `path` to 8-bit RGB, whatever its colour type.
    fn load(path: &Path) -> Image {
        let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut decoder = png::Decoder::new(BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("a PNG of sane size")];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        let n = info.color_type.samples();
        let rgb = buf[..info.buffer_size()]
            .chunks_exact(n)
            .map(|px| match n {
                1 | 2 => [px[0]; 3],
                _ => [px[0], px[1], px[2]],
            })
            .collect();
        Image {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        }
    }

    /// The pixels of rows `y0..y1`, columns `x0..x1` (clipped to the image).
    fn region(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<(usize, usize, [u8; 3])> {
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .map(|(x, y)| (x, y, self.rgb[y * self.width + x]))
            .collect()
    }
}

/// The most common colour of `pixels`, and how many of them differ from it, and how many
/// distinct colours there are.
fn colour_stats(pixels: &[(usize, usize, [u8; 3])]) -> ([u8; 3], usize, usize) {
    let mut counts = std::collections::HashMap::new();
    for &(_, _, c) in pixels {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let (&bg, &n) = counts
        .iter()
        .max_by_key(|&(_, n)| *n)
        .expect("a non-empty image");
    (bg, pixels.len() - n, counts.len())
}

/// Whether `c` is within `tolerance` of `target` on every channel.
fn near(c: [u8; 3], target: [u8; 3], tolerance: u8) -> bool {
    c.iter()
        .zip(target)
        .all(|(&a, b)| a.abs_diff(b) <= tolerance)
}

/// How many of `pixels` are about `colour`, and how far apart (px) the leftmost and
/// rightmost of them are: a line drawn across a chart spans most of its width.
fn line_pixels(pixels: &[(usize, usize, [u8; 3])], colour: [u8; 3]) -> (usize, usize) {
    let xs: Vec<usize> = pixels
        .iter()
        .filter(|&&(_, _, c)| near(c, colour, 24))
        .map(|&(x, _, _)| x)
        .collect();
    let span = xs.iter().max().unwrap_or(&0) - xs.iter().min().unwrap_or(&0);
    (xs.len(), span)
}

#[test]
fn the_report_renders_its_charts_in_chromium() {
    let dir = scratch_dir();
    let html = dir.join("r.html");
    let sim = Command::new(env!("CARGO_BIN_EXE_statewire"))
        .args([
            "sim",
            "--clients",
            "3",
            "--entities",
            "120",
            "--ticks",
            "150",
        ])
        .args(["--quiet-ticks", "30", "--seed", "1", "--report"])
        .arg(&html)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run statewire sim");
    let status = wait_for(sim, Duration::from_secs(120), "statewire sim");
    assert!(status.success(), "statewire sim --report: {status}");
    let page = std::fs::read_to_string(&html).expect("the report file");
    assert!(page.starts_with("<!DOCTYPE html>"));
    for id in CHART_IDS {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "the page has no chart {id}"
        );
    }

    let Some(browser) = find_chromium() else {
        if std::env::var("STATEWIRE_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!(
                "STATEWIRE_REQUIRE_CHROMIUM=1 but no browser: set STATEWIRE_CHROMIUM or put \
                 chromium, chromium-browser or google-chrome on PATH (Debian: apt-get install \
                 chromium)"
            );
        }
        eprintln!("skipped: no chromium (set STATEWIRE_CHROMIUM or install Debian's chromium)");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let shot = dir.join("r.png");
    let log = File::create(dir.join("chromium.log")).expect("the browser's log file");
    let started = Instant::now();
    let child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--window-size={WIDTH},{HEIGHT}"))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let status = wait_for(child, Duration::from_secs(60), "chromium");
    let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
    assert!(
        status.success() && shot.is_file(),
        "{} exited {status} without a screenshot; its log:\n{log}",
        browser.display()
    );
    eprintln!(
        "chromium took {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        browser.display()
    );
    if let Some(keep) = std::env::var_os("STATEWIRE_REPORT_SHOT") {
        std::fs::copy(&shot, &keep).expect("copy the screenshot to STATEWIRE_REPORT_SHOT");
    }

    let img = Image::load(&shot);
    assert_eq!((img.width, img.height), (WIDTH, HEIGHT), "screenshot size");
    let all = img.region(0, 0, img.width, img.height);
    let (bg, differ, colours) = colour_stats(&all);
    assert!(
        differ * 50 >= all.len() && colours >= 8,
        "the page looks blank: {differ} of {} pixels differ from {bg:?}, {colours} colours",
        all.len()
    );
    // The bandwidth chart sits under the header and the summary, in the top third of the
    // window; the maps (whose players share its blue) start far below.
    let (y0, y1) = (150, 900);
    let chart = img.region(40, y0, img.width - 40, y1);
    let (card, differ, colours) = colour_stats(&chart);
    assert!(
        differ * 50 >= chart.len() && colours >= 8,
        "rows {y0}..{y1} look blank: {differ} of {} pixels differ from {card:?}, {colours} \
         colours",
        chart.len()
    );
    let (n, span) = line_pixels(&chart, DOWNSTREAM_BLUE);
    assert!(
        n >= 300 && span * 2 >= img.width,
        "no downstream line across the bandwidth chart: {n} blue pixels spanning {span} px"
    );
    for (id, colour) in LATER_LINES {
        let (n, span) = line_pixels(&all, colour);
        assert!(
            n >= 300 && span * 2 >= img.width,
            "no line across the {id} chart: {n} pixels of {colour:?} spanning {span} px"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
