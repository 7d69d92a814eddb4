//! `benchmark_qps.png`: the seed's 3×2 grid at 32×12 in (3200×1200 px at
//! 100 dpi), drawn from level results alone so `llmload plot <dir>` can
//! re-render any archived run.
//!
//! The font is DejaVu Sans compiled into the binary (ab_glyph), so the
//! image is the same on a laptop and in a container without fonts.

use crate::analysis::level::LevelResult;
use crate::analysis::saturation::{Analysis, fmt_qps};
use crate::analysis::stats::Dist;
use crate::results::Summary;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Once;

pub const WIDTH: u32 = 3200;
pub const HEIGHT: u32 = 1200;
const FONT: &str = "sans-serif";
/// Height of the title band above the panels.
const TITLE_BAND: u32 = 72;

/// An axis tick: `45`, not `45.0`; `0.25`, not `0.250000`.
pub(crate) fn tick(v: &f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

static FONTS: Once = Once::new();

/// An RGB pixel buffer for a figure of `size`, drawn by [`canvas`] and
/// written by [`save_png`].
pub(crate) fn pixels(size: (u32, u32)) -> Vec<u8> {
    vec![0; size.0 as usize * size.1 as usize * 3]
}

/// Encode `buf` as a PNG and write it atomically: a reader (or a full
/// disk) never leaves a half figure at `path`, only the old one or none.
pub(crate) fn save_png(path: &Path, buf: &[u8], size: (u32, u32)) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut bytes = Vec::with_capacity(buf.len() / 8);
    {
        let mut enc = png::Encoder::new(&mut bytes, size.0, size.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| err(&e))?;
        w.write_image_data(buf).map_err(|e| err(&e))?;
        w.finish().map_err(|e| err(&e))?;
    }
    crate::results::write_atomic(path, &bytes).map_err(|e| err(&e))
}

/// A white canvas of `size` in `buf` (for the figure at `path`), `title` centred in a band of
/// `band` pixels across its top (drawn from the band's top edge:
/// `titled` places text by its baseline and cuts off its top); the area
/// below the band.
pub(crate) fn canvas<'a>(
    buf: &'a mut [u8],
    path: &Path,
    size: (u32, u32),
    title: &str,
    band: u32,
    font: u32,
) -> Result<DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>, PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, rest) = root.split_vertically(band);
    top.draw(&Text::new(
        title.to_string(),
        (size.0 as i32 / 2, font as i32 / 3),
        (FONT, font)
            .into_font()
            .style(FontStyle::Bold)
            .into_text_style(&top)
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(|e| err(&e))?;
    Ok(rest)
}

pub(crate) fn register_fonts() {
    FONTS.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

const PCT_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// Draw the PNG at `path`.
pub fn render(
    path: &Path,
    levels: &[LevelResult],
    summary: &Summary,
    title: &str,
) -> Result<(), PlotError> {
    let analysis = &summary.analysis;
    // The SLO's limits, drawn on the latency panels.
    let slo = summary
        .slo
        .as_deref()
        .and_then(|s| crate::analysis::slo::Slo::parse(&[s]).ok());
    register_fonts();
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut sorted: Vec<&LevelResult> = levels.iter().collect();
    sorted.sort_by(|a, b| a.load().total_cmp(&b.load()));

    let mut buf = pixels((WIDTH, HEIGHT));
    {
        let root = canvas(&mut buf, path, (WIDTH, HEIGHT), title, TITLE_BAND, 44)?;
        let panels = root.split_evenly((2, 3));

        draw_qps(&panels[0], &sorted).map_err(|e| err(&e))?;
        let limit = |m| {
            slo.as_ref()
                .and_then(|s| s.limit(m))
                .map(|d| d.as_secs_f64())
        };
        draw_percentiles(
            &panels[1],
            &sorted,
            "TTFT percentiles",
            "seconds",
            |l| &l.ttft,
            limit(crate::analysis::slo::Metric::Ttft),
        )
        .map_err(|e| err(&e))?;
        draw_percentiles(
            &panels[2],
            &sorted,
            "E2E latency percentiles",
            "seconds",
            |l| &l.e2e_latency,
            limit(crate::analysis::slo::Metric::E2e),
        )
        .map_err(|e| err(&e))?;
        draw_percentiles(
            &panels[3],
            &sorted,
            "Tokens/sec percentiles (output tokens / E2E)",
            "tokens/s",
            |l| &l.tokens_per_sec,
            None,
        )
        .map_err(|e| err(&e))?;
        draw_summary(&panels[4], &sorted, analysis, summary).map_err(|e| err(&e))?;
        draw_errors(&panels[5], &sorted).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    save_png(path, &buf, (WIDTH, HEIGHT))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// X range covering all targets, padded so single levels are visible.
fn x_range(levels: &[&LevelResult]) -> std::ops::Range<f64> {
    let max = levels.iter().map(|l| l.load()).fold(0.0, f64::max);
    0.0..(max * 1.08).max(1.0)
}

/// The x-axis: users for a concurrency sweep, the target rate otherwise.
fn x_name(levels: &[&LevelResult]) -> &'static str {
    if !levels.is_empty() && levels.iter().all(|l| l.concurrency.is_some()) {
        "concurrency (users)"
    } else {
        "target QPS"
    }
}

fn y_max(values: impl Iterator<Item = f64>) -> f64 {
    let m = values.fold(0.0, f64::max);
    if m <= 0.0 { 1.0 } else { m * 1.15 }
}

fn empty_note(area: &Area, caption: &str, note: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        caption.to_string(),
        (40, 20),
        (FONT, 34).into_font().style(FontStyle::Bold),
    ))?;
    area.draw(&Text::new(
        note.to_string(),
        (w as i32 / 2 - 200, h as i32 / 2),
        (FONT, 30).into_font().color(&RGBColor(90, 90, 90)),
    ))?;
    Ok(())
}

fn draw_qps(area: &Area, levels: &[&LevelResult]) -> DrawResult {
    if levels.is_empty() {
        return empty_note(area, "QPS and success rate", "no levels measured");
    }
    let xr = x_range(levels);
    let ymax = y_max(
        levels
            .iter()
            .flat_map(|l| [l.qps_target, l.actual_qps, l.completed_qps]),
    );
    let mut chart = ChartBuilder::on(area)
        .caption("Achieved vs target QPS, success rate", (FONT, 34))
        .margin(24)
        .x_label_area_size(70)
        .y_label_area_size(100)
        .right_y_label_area_size(100)
        .build_cartesian_2d(xr.clone(), 0.0..ymax)?
        .set_secondary_coord(xr, 0.0..105.0);
    chart
        .configure_mesh()
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc(x_name(levels))
        .y_desc("requests/s")
        .label_style((FONT, 24))
        .axis_desc_style((FONT, 26))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_label_formatter(&tick)
        .y_desc("success %")
        .label_style((FONT, 24))
        .axis_desc_style((FONT, 26))
        .draw()?;
    for (name, color, get) in [
        (
            "sent (actual QPS)",
            PCT_COLORS[0],
            (|l: &LevelResult| l.actual_qps) as fn(&LevelResult) -> f64,
        ),
        ("succeeded/s", PCT_COLORS[2], |l: &LevelResult| {
            l.completed_qps
        }),
    ] {
        let pts: Vec<(f64, f64)> = levels.iter().map(|l| (l.load(), get(l))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(4)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(4))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 7, color.filled())))?;
    }
    if levels.iter().any(|l| l.goodput.is_some()) {
        let color = RGBColor(148, 103, 189);
        let pts: Vec<(f64, f64)> = levels
            .iter()
            .map(|l| (l.load(), l.goodput.unwrap_or(0.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))?
            .label("goodput (within SLO)/s")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(3))
            });
        // Capacity probes: passed green, failed red, repeated (the client
        // was the limit: no verdict on the endpoint) grey.
        chart.draw_series(levels.iter().filter_map(|l| {
            let p = l.probe.as_ref()?;
            let c = match p.verdict.as_str() {
                "pass" => RGBColor(44, 160, 44),
                "repeated" => RGBColor(127, 127, 127),
                _ => RGBColor(214, 39, 40),
            };
            Some(Cross::new(
                (l.load(), l.goodput.unwrap_or(0.0)),
                12,
                c.stroke_width(4),
            ))
        }))?;
    }
    // Target last and dashed: when the client keeps up it lies exactly on
    // the sent line, and both must still show.
    let ideal: Vec<(f64, f64)> = levels
        .iter()
        .filter(|l| l.concurrency.is_none())
        .map(|l| (l.load(), l.qps_target))
        .collect();
    let target_style = BLACK.mix(0.75).stroke_width(3);
    chart
        .draw_series(DashedLineSeries::new(ideal, 14, 10, target_style))?
        .label("target")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], target_style));
    let succ: Vec<(f64, f64)> = levels.iter().map(|l| (l.load(), l.success_rate)).collect();
    chart
        .draw_secondary_series(LineSeries::new(succ.clone(), PCT_COLORS[3].stroke_width(3)))?
        .label("success % (right)")
        .legend(|(x, y)| {
            PathElement::new(vec![(x, y), (x + 30, y)], PCT_COLORS[3].stroke_width(3))
        });
    chart.draw_secondary_series(
        succ.into_iter()
            .map(|p| TriangleMarker::new(p, 9, PCT_COLORS[3].filled())),
    )?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 24))
        .draw()?;
    Ok(())
}

fn draw_percentiles(
    area: &Area,
    levels: &[&LevelResult],
    caption: &str,
    unit: &str,
    get: impl Fn(&LevelResult) -> &Dist,
    slo_limit: Option<f64>,
) -> DrawResult {
    if levels.iter().all(|l| get(l).count == 0) {
        return empty_note(area, caption, "no successful requests");
    }
    let xr = x_range(levels);
    let ymax = y_max(
        levels
            .iter()
            .map(|l| get(l).p99)
            .chain(slo_limit.map(|v| v / 1.15 * 1.05)),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 34))
        .margin(24)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d(xr.clone(), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc(x_name(levels))
        .y_desc(unit)
        .label_style((FONT, 24))
        .axis_desc_style((FONT, 26))
        .draw()?;
    type Pick = fn(&Dist) -> f64;
    let pick: [(&str, Pick); 4] = [
        ("P50", |d| d.p50),
        ("P90", |d| d.p90),
        ("P95", |d| d.p95),
        ("P99", |d| d.p99),
    ];
    for (i, (name, f)) in pick.iter().enumerate() {
        let color = PCT_COLORS[i];
        let pts: Vec<(f64, f64)> = levels
            .iter()
            .filter(|l| get(l).count > 0)
            .map(|l| (l.load(), f(get(l))))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(4)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(4))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 7, color.filled())))?;
    }
    if let Some(v) = slo_limit {
        let style = RGBColor(200, 0, 0).stroke_width(3);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xr.start, v), (xr.end, v)],
                14,
                10,
                style,
            ))?
            .label("SLO")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 24))
        .draw()?;
    Ok(())
}

fn draw_summary(
    area: &Area,
    levels: &[&LevelResult],
    a: &Analysis,
    summary: &Summary,
) -> DrawResult {
    area.fill(&RGBColor(247, 247, 247))?;
    let opt = |v: Option<f64>| {
        v.map(|q| format!("{} QPS", fmt_qps(q)))
            .unwrap_or_else(|| "-".into())
    };
    let mut lines: Vec<(String, u32, bool)> = vec![
        ("Summary and recommendations".into(), 36, true),
        (String::new(), 16, false),
    ];
    if let Some(c) = &summary.capacity {
        lines.push((
            match c.qps {
                Some(q) => format!("Capacity under SLO: {} QPS", fmt_qps(q)),
                None => format!("Capacity under SLO: {}", c.outcome.replace('_', " ")),
            },
            30,
            true,
        ));
        lines.extend(
            wrap(&c.message, 62)
                .into_iter()
                .map(|l| (format!("  {l}"), 24, false)),
        );
        let passed = c.probes.iter().filter(|p| p.verdict == "pass").count();
        let repeated = c.probes.iter().filter(|p| p.verdict == "repeated").count();
        lines.push((
            format!(
                "  {} probes ({passed} passed{}) in {:.0}s",
                c.probes.len(),
                if repeated > 0 {
                    format!(", {repeated} client-bound, repeated")
                } else {
                    String::new()
                },
                c.wall_time_s
            ),
            24,
            false,
        ));
    } else if let Some(slo) = &summary.slo {
        lines.push((format!("SLO: {slo}"), 26, true));
    }
    if let Some(c) = &summary.concurrency {
        let users = |v: Option<u32>| v.map_or("-".to_string(), |n| format!("{n} users"));
        for (head, value, reason) in [
            ("Knee", c.knee, &c.knee_reason),
            ("Recommended", c.recommended_concurrency, &c.recommendation),
        ] {
            lines.push((format!("{head}: {}", users(value)), 30, true));
            lines.extend(
                wrap(reason, 62)
                    .into_iter()
                    .map(|l| (format!("  {l}"), 24, false)),
            );
        }
        lines.extend(
            wrap(
                "A closed loop sends less when the server slows down (coordinated omission): \
                 use --qps levels or llmload capacity for a rate to hold.",
                62,
            )
            .into_iter()
            .map(|l| (l, 22, false)),
        );
    }
    let rows = if summary.concurrency.is_some() {
        Vec::new()
    } else {
        vec![
            (
                "Max QPS without errors",
                a.max_qps_without_errors,
                &a.max_qps_reason,
            ),
            ("Saturation point", a.saturation_qps, &a.saturation_reason),
            ("Recommended limit", a.recommended_qps, &a.recommendation),
        ]
    };
    for (head, value, reason) in rows {
        // With a capacity answer above, the sweep numbers take a line
        // each: the panel has room for one set of reasons.
        if summary.capacity.is_some() {
            lines.push((format!("{head}: {}", opt(value)), 26, false));
            continue;
        }
        lines.push((format!("{head}: {}", opt(value)), 30, true));
        lines.extend(
            wrap(reason, 62)
                .into_iter()
                .map(|l| (format!("  {l}"), 24, false)),
        );
    }
    if !a.client_bound_levels.is_empty() {
        let qs: Vec<String> = a.client_bound_levels.iter().map(|q| fmt_qps(*q)).collect();
        lines.push((
            format!("Client-bound levels (not the endpoint): {}", qs.join(", ")),
            24,
            true,
        ));
    }
    if let Some(best) = levels
        .iter()
        .map(|l| l.output_throughput_tokens_per_sec)
        .reduce(f64::max)
    {
        lines.push((
            format!("Peak output throughput: {best:.0} tokens/s"),
            26,
            false,
        ));
    }
    let mut y = 24;
    for (text, size, bold) in lines {
        let style = (FONT, size as i32).into_font().style(if bold {
            FontStyle::Bold
        } else {
            FontStyle::Normal
        });
        area.draw(&Text::new(text, (36, y), style))?;
        y += size as i32 + 12;
    }
    Ok(())
}

fn draw_errors(area: &Area, levels: &[&LevelResult]) -> DrawResult {
    let keys: BTreeSet<&String> = levels.iter().flat_map(|l| l.errors.keys()).collect();
    if keys.is_empty() {
        return empty_note(area, "Errors by type", "no errors at any level");
    }
    let xr = x_range(levels);
    let ymax = y_max(
        levels
            .iter()
            .flat_map(|l| l.errors.values().map(|v| *v as f64)),
    );
    let mut chart = ChartBuilder::on(area)
        .caption("Errors by type per level", (FONT, 34))
        .margin(24)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d(xr, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc(x_name(levels))
        .y_desc("requests")
        .label_style((FONT, 24))
        .axis_desc_style((FONT, 26))
        .draw()?;
    let palette = [
        PCT_COLORS[3],
        PCT_COLORS[1],
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    for (i, key) in keys.into_iter().enumerate() {
        let color = palette[i % palette.len()];
        let pts: Vec<(f64, f64)> = levels
            .iter()
            .map(|l| (l.load(), l.errors.get(key).copied().unwrap_or(0) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(4)))?
            .label(key.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(4))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 7, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 24))
        .draw()?;
    Ok(())
}

/// Greedy word wrap at `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_words() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert!(wrap("", 5).is_empty());
    }

    #[test]
    fn ticks_drop_needless_decimals() {
        for (v, want) in [
            (45.0, "45"),
            (0.25, "0.25"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (0.0, "0"),
            (-0.0, "0"),
            (2560.0, "2560"),
            (0.0005, "0.001"),
        ] {
            assert_eq!(super::tick(&v), want, "{v}");
        }
    }
}
