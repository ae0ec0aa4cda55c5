//! PNG charts of a run (plotters): latency percentiles, throughput over time, and for a sweep of rates the latency against offered load.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::combinators::{BindKeyPoints, IntoLogRange};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// One point of a rate sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepPoint {
    /// Offered load, messages/s.
    pub offered: f64,
    /// Delivered messages/s.
    pub achieved: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// The machine's CPU while this rate was measured (not charted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu: Option<crate::machine::MachineCpu>,
}

/// What the charts show.
pub struct PlotData {
    /// Title prefix, e.g. "fastchat dm, 100 clients".
    pub title: String,
    /// (percentile in 0..=100 such as 50.0, 90.0, 99.0, 99.9, 99.99, 100.0; latency in microseconds), ascending.
    pub percentiles: Vec<(f64, u64)>,
    /// (seconds since the measurement started, delivered per second in that interval).
    pub throughput: Vec<(f64, f64)>,
    /// Empty unless the run was a sweep.
    pub sweep: Vec<SweepPoint>,
}

/// Draws DIR/PREFIX-latency.png, DIR/PREFIX-throughput.png and, when `sweep` is not empty,
/// DIR/PREFIX-sweep.png; creates DIR if needed; returns the paths written.
pub fn draw(dir: &Path, prefix: &str, data: &PlotData) -> Result<Vec<PathBuf>, String> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut written = Vec::new();

    let path = dir.join(format!("{prefix}-latency.png"));
    draw_latency(&path, &data.title, &data.percentiles)?;
    written.push(path);

    let path = dir.join(format!("{prefix}-throughput.png"));
    draw_throughput(&path, &data.title, &data.throughput)?;
    written.push(path);

    if !data.sweep.is_empty() {
        let path = dir.join(format!("{prefix}-sweep.png"));
        draw_sweep(&path, &data.title, &data.sweep)?;
        written.push(path);
    }
    Ok(written)
}

const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1024, 640);
const CAPTION_PX: u32 = 26;
const DESC_PX: u32 = 19;
const LABEL_PX: u32 = 15;
const NO_FONT: &str = "no TrueType font found: install fonts-dejavu-core or set FASTCHAT_FONT";
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
];

static FONT_READY: OnceLock<()> = OnceLock::new();

/// Registers a TrueType font under `FAMILY` once per process ($FASTCHAT_FONT first, then common paths).
fn ensure_font() -> Result<(), String> {
    if FONT_READY.get().is_some() {
        return Ok(());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("FASTCHAT_FONT").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    candidates.extend(FONT_PATHS.iter().map(PathBuf::from));
    if load_font(&candidates) {
        let _ = FONT_READY.set(());
        Ok(())
    } else {
        Err(NO_FONT.to_string())
    }
}

/// Registers the first readable, valid font among `candidates`; false if there is none.
fn load_font(candidates: &[PathBuf]) -> bool {
    for path in candidates {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        // TrueType, OpenType or collection magic; checked before leaking the buffer.
        let magic = bytes.get(..4).unwrap_or_default();
        if ![&[0, 1, 0, 0][..], b"true", b"OTTO", b"ttcf"].contains(&magic) {
            continue;
        }
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
            return true;
        }
    }
    false
}

fn font(px: u32) -> TextStyle<'static> {
    (FAMILY, px).into_font().into()
}

/// Maps a plotters drawing error to a message naming the file.
fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> String + '_ {
    move |e| format!("drawing {}: {e}", path.display())
}

/// Trims a fixed-point rendering: "2.50" -> "2.5", "10.0" -> "10".
fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A number with about three significant digits.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    let decimals = if a >= 100.0 || a == 0.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else if a >= 0.1 {
        3
    } else {
        4
    };
    trim(format!("{v:.decimals$}"))
}

/// A rate with a k/M suffix: 32500 -> "32.5k".
fn fmt_rate(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", fmt_num(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", fmt_num(v / 1e3))
    } else {
        fmt_num(v)
    }
}

/// Latency in microseconds as milliseconds, kept positive for log axes.
fn ms(us: u64) -> f64 {
    us.max(1) as f64 / 1000.0
}

/// "Nines" of a percentile: 50 -> 0.30, 90 -> 1, 99 -> 2, 99.9 -> 3.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).log10()
}

/// Percentile label of a nines position: 1 -> "90%", 3 -> "99.9%".
fn percent_label(n: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-n));
    let decimals = (n.round() as i64 - 2).clamp(0, 6) as usize;
    format!("{}%", trim(format!("{p:.decimals$}")))
}

/// Padded log-axis range and tick values (1-2-5 per decade, thinned or densified to fit).
fn log_axis(lo: f64, hi: f64) -> (f64, f64, Vec<f64>) {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo * 2.0) };
    let (lo, hi) = (lo / 1.3, hi * 1.3);
    let decades = |mants: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let mut e = lo.log10().floor() as i32;
        while 10f64.powi(e) <= hi {
            for m in mants {
                let v = m * 10f64.powi(e);
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
            e += 1;
        }
        out
    };
    let mut ticks = decades(&[1.0, 2.0, 5.0]);
    if ticks.len() > 12 {
        ticks = decades(&[1.0]);
    } else if ticks.len() < 4 {
        ticks = decades(&[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    if ticks.len() < 3 {
        // Narrower than a factor of ~1.5: evenly spaced round ticks.
        let raw = (hi - lo) / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        let first = (lo / step).ceil() as i64;
        let last = (hi / step).floor() as i64;
        ticks = (first..=last).map(|i| i as f64 * step).collect();
    }
    (lo, hi, ticks)
}

/// A white chart area with a caption line; the caption is drawn by the chart builder.
fn open(path: &Path) -> Result<DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, String> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    Ok(root)
}

/// An empty chart saying there is nothing to show.
fn draw_empty(
    path: &Path,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    msg: &str,
) -> Result<(), String> {
    let root = open(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, font(CAPTION_PX))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(font(DESC_PX))
        .draw()
        .map_err(err(path))?;
    chart
        .draw_series(std::iter::once(Text::new(
            msg.to_string(),
            (0.5, 0.5),
            font(DESC_PX).pos(Pos::new(HPos::Center, VPos::Center)),
        )))
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

fn draw_latency(path: &Path, title: &str, percentiles: &[(f64, u64)]) -> Result<(), String> {
    let caption = format!("{title}: latency by percentile");
    let x_desc = "percentile";
    let y_desc = "latency (ms, log scale)";
    let mut pts: Vec<(f64, u64)> = percentiles
        .iter()
        .copied()
        .filter(|(p, _)| p.is_finite() && (0.0..=100.0).contains(p))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    if pts.is_empty() {
        return draw_empty(path, &caption, x_desc, y_desc, "no latency samples");
    }

    // x = nines (-log10(1 - p)); the maximum (p = 100) sits at its own column past the last one.
    let finite_max = pts
        .iter()
        .filter(|(p, _)| *p < 100.0)
        .map(|(p, _)| nines(*p))
        .fold(f64::NEG_INFINITY, f64::max);
    let has_max = pts.iter().any(|(p, _)| *p >= 100.0);
    let max_pos = if finite_max.is_finite() {
        (finite_max + 0.5).ceil()
    } else {
        1.0
    };
    let xy: Vec<(f64, f64)> = pts
        .iter()
        .map(|&(p, us)| (if p >= 100.0 { max_pos } else { nines(p) }, ms(us)))
        .collect();
    let x_first = xy.first().map_or(0.0, |v| v.0);
    let x_last = xy.last().map_or(1.0, |v| v.0);
    let x_lo = x_first.min(nines(50.0)) - 0.25;
    let x_hi = x_last.max(x_first + 1.0) + 0.35;
    let mut x_keys: Vec<f64> = Vec::new();
    if nines(50.0) >= x_lo {
        x_keys.push(nines(50.0));
    }
    let last_key = if has_max { max_pos - 1.0 } else { x_hi };
    let mut n = 1.0;
    while n <= last_key + 1e-9 {
        x_keys.push(n);
        n += 1.0;
    }
    if has_max {
        x_keys.push(max_pos);
    }
    // Percentiles not on a standard tick still get a tick of their own.
    for &(x, _) in &xy {
        if !x_keys.iter().any(|k| (k - x).abs() < 0.15) {
            x_keys.push(x);
        }
    }
    x_keys.sort_by(f64::total_cmp);

    let y_min = xy.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
    let y_max = xy.iter().map(|v| v.1).fold(0.0, f64::max);
    let (y_lo, y_hi, y_keys) = log_axis(y_min, y_max * 1.15);

    let root = open(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&caption, font(CAPTION_PX))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            // x = 1/(1 - p) on a log axis, which is linear in nines.
            (10f64.powf(x_lo)..10f64.powf(x_hi))
                .log_scale()
                .with_key_points(x_keys.iter().map(|k| 10f64.powf(*k)).collect()),
            (y_lo..y_hi).log_scale().with_key_points(y_keys),
        )
        .map_err(err(path))?;
    let x_fmt = |x: &f64| {
        let n = x.log10();
        if has_max && (n - max_pos).abs() < 1e-6 {
            "max".to_string()
        } else {
            percent_label(n)
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(font(DESC_PX))
        .label_style(font(LABEL_PX))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|y: &f64| fmt_num(*y))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(err(path))?;
    let color = RGBColor(31, 119, 180);
    chart
        .draw_series(
            LineSeries::new(
                xy.iter().map(|&(n, y)| (10f64.powf(n), y)),
                color.stroke_width(2),
            )
            .point_size(4),
        )
        .map_err(err(path))?;
    // Value labels above the points, skipping ones that would collide with the previous label.
    let min_gap = (x_hi - x_lo) * 75.0 / 900.0;
    let mut last_x = f64::NEG_INFINITY;
    let mut labeled = Vec::new();
    for &(x, y) in &xy {
        if x - last_x >= min_gap {
            labeled.push((x, y));
            last_x = x;
        }
    }
    let label_style = font(LABEL_PX).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(labeled.into_iter().map(|(x, y)| {
            EmptyElement::at((10f64.powf(x), y))
                + Text::new(format!("{} ms", fmt_num(y)), (0, -8), label_style.clone())
        }))
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

/// Linear range with a little padding; a single value gets a window around it.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 1.0 };
        (lo - pad, hi + pad)
    }
}

fn draw_throughput(path: &Path, title: &str, samples: &[(f64, f64)]) -> Result<(), String> {
    let caption = format!("{title}: throughput");
    let x_desc = "time since measurement start (s)";
    let y_desc = "delivered messages/s";
    let mut pts: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, v)| t.is_finite() && v.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    if pts.is_empty() {
        return draw_empty(path, &caption, x_desc, y_desc, "no throughput samples");
    }
    let t_min = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let t_max = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (x_lo, x_hi) = if t_max > t_min {
        (t_min.min(0.0), t_max)
    } else {
        (t_min.min(0.0), t_max + 1.0)
    };
    let v_min = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let v_max = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let y_lo = v_min.min(0.0) * 1.15;
    let y_hi = if v_max > 0.0 { v_max * 1.15 } else { 1.0 };
    let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;

    let root = open(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&caption, font(CAPTION_PX))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(font(DESC_PX))
        .label_style(font(LABEL_PX))
        .x_label_formatter(&|x: &f64| fmt_num(*x))
        .y_label_formatter(&|y: &f64| fmt_rate(*y))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err(path))?;
    let color = RGBColor(31, 119, 180);
    let points = if pts.len() == 1 { 4 } else { 0 };
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)).point_size(points))
        .map_err(err(path))?
        .label(format!("delivered/s (mean {}/s)", fmt_rate(mean)))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    let mean_color = RGBColor(214, 39, 40);
    chart
        .draw_series(LineSeries::new(
            [(x_lo, mean), (x_hi, mean)],
            mean_color.mix(0.7).stroke_width(1),
        ))
        .map_err(err(path))?
        .label("mean")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], mean_color.mix(0.7)));
    chart
        .configure_series_labels()
        .label_font(font(LABEL_PX))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

fn draw_sweep(path: &Path, title: &str, sweep: &[SweepPoint]) -> Result<(), String> {
    let caption = format!("{title}: latency against offered load");
    let x_desc = "offered load (messages/s)";
    let y_desc = "latency (ms, log scale)";
    let mut pts: Vec<&SweepPoint> = sweep.iter().filter(|s| s.offered.is_finite()).collect();
    pts.sort_by(|a, b| a.offered.total_cmp(&b.offered));
    if pts.is_empty() {
        return draw_empty(path, &caption, x_desc, y_desc, "no sweep points");
    }
    let o_min = pts.iter().map(|s| s.offered).fold(f64::INFINITY, f64::min);
    let o_max = pts
        .iter()
        .map(|s| s.offered)
        .fold(f64::NEG_INFINITY, f64::max);
    let (x_lo, x_hi) = padded(o_min, o_max);
    let lat = || pts.iter().flat_map(|s| [ms(s.p50_us), ms(s.p99_us)]);
    let y_min = lat().fold(f64::INFINITY, f64::min);
    let y_max = lat().fold(0.0, f64::max);
    let (y_lo, y_hi, y_keys) = log_axis(y_min, y_max * 1.15);

    let root = open(path)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&caption, font(CAPTION_PX))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_lo..x_hi, (y_lo..y_hi).log_scale().with_key_points(y_keys))
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(font(DESC_PX))
        .label_style(font(LABEL_PX))
        .x_label_formatter(&|x: &f64| fmt_rate(*x))
        .y_label_formatter(&|y: &f64| fmt_num(*y))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err(path))?;
    let p50: Vec<(f64, f64)> = pts.iter().map(|s| (s.offered, ms(s.p50_us))).collect();
    let p99: Vec<(f64, f64)> = pts.iter().map(|s| (s.offered, ms(s.p99_us))).collect();
    let series = [
        ("p50", RGBColor(31, 119, 180), p50),
        ("p99", RGBColor(214, 39, 40), p99),
    ];
    for (name, color, line) in series {
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)).point_size(4))
            .map_err(err(path))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font(font(LABEL_PX))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("fastchat-plot-test-{}-{name}", std::process::id()))
    }

    /// Draws into a fresh directory (scripts/test.sh installs the font it needs).
    fn try_draw(name: &str, data: &PlotData) -> Vec<PathBuf> {
        let dir = out_dir(name);
        let res = draw(&dir, "t", data);
        let _ = std::fs::remove_dir_all(&dir);
        res.expect("draw (is fonts-dejavu-core installed?)")
    }

    #[test]
    fn missing_font_is_reported_not_panicked() {
        assert!(!load_font(&[PathBuf::from("/nonexistent/font.ttf")]));
    }

    #[test]
    fn draws_all_three_charts() {
        let data = PlotData {
            title: "test".into(),
            percentiles: vec![(50.0, 2000), (99.0, 9000), (99.9, 20000), (100.0, 80000)],
            throughput: (0..40).map(|i| (i as f64, 30000.0 + i as f64)).collect(),
            sweep: (1..=5)
                .map(|i| SweepPoint {
                    offered: i as f64 * 1000.0,
                    achieved: i as f64 * 1000.0,
                    p50_us: 1000 * i,
                    p99_us: 5000 * i,
                    machine_cpu: None,
                })
                .collect(),
        };
        {
            let paths = try_draw("full", &data);
            assert_eq!(paths.len(), 3);
            assert!(paths[2].ends_with("t-sweep.png"));
        }
    }

    #[test]
    fn empty_and_single_point_data_do_not_panic() {
        let empty = PlotData {
            title: "empty".into(),
            percentiles: vec![],
            throughput: vec![],
            sweep: vec![],
        };
        {
            let paths = try_draw("empty", &empty);
            assert_eq!(paths.len(), 2);
        }
        let single = PlotData {
            title: "single".into(),
            percentiles: vec![(100.0, 0)],
            throughput: vec![(0.0, 0.0)],
            sweep: vec![SweepPoint {
                offered: 10.0,
                achieved: 10.0,
                p50_us: 5,
                p99_us: 5,
                machine_cpu: None,
            }],
        };
        {
            let paths = try_draw("single", &single);
            assert_eq!(paths.len(), 3);
        }
    }

    #[test]
    fn labels_and_ticks() {
        assert_eq!(percent_label(nines(50.0)), "50%");
        assert_eq!(percent_label(nines(99.0)), "99%");
        assert_eq!(percent_label(nines(99.99)), "99.99%");
        assert_eq!(fmt_rate(32500.0), "32.5k");
        assert_eq!(fmt_num(2.0), "2");
        let (lo, hi, ticks) = log_axis(2.0, 80.0);
        assert!(lo < 2.0 && hi > 80.0);
        assert!(ticks.len() >= 3 && ticks.iter().all(|t| *t >= lo && *t <= hi));
        let (_, _, ticks) = log_axis(2.0, 2.0);
        assert!(ticks.len() >= 3);
    }
}
