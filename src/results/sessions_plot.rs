//! `benchmark_sessions.png`: sessions by turn, beside the seed's grid.
//! Two panels over the levels of a run: TTFT p50 and p95 of each turn
//! bucket (on a server that caches prefixes, later turns sit below the
//! first), and the prefix cache hit ratio, the level's and each bucket's.

use super::plot::tick;
use crate::analysis::level::LevelResult;
use crate::analysis::sessions::TurnResult;
use plotters::prelude::*;
use std::path::Path;

pub const DEFAULT_SESSIONS_FILE: &str = "benchmark_sessions.png";
pub const WIDTH: u32 = 2400;
pub const HEIGHT: u32 = 1000;
const FONT: &str = "sans-serif";

/// One color per turn bucket (`1`, `2-4`, `5+`), and the level's own.
const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(0, 0, 0),
];

/// Whether any level ran sessions.
pub fn has_sessions(levels: &[LevelResult]) -> bool {
    levels.iter().any(|l| l.sessions.is_some())
}

fn bucket_color(turn: &str) -> RGBColor {
    let i = crate::workload::session::TURN_BUCKETS
        .iter()
        .position(|b| *b == turn)
        .unwrap_or(0);
    COLORS[i]
}

/// A drawn line: legend, color, dashed, points.
struct Line {
    name: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Lines of one figure of each turn bucket over the levels.
fn by_bucket(
    levels: &[&LevelResult],
    stat: &str,
    dashed: bool,
    get: fn(&TurnResult) -> Option<f64>,
) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for turn in crate::workload::session::TURN_BUCKETS {
        let points: Vec<(f64, f64)> = levels
            .iter()
            .filter_map(|l| {
                let t = l.sessions.as_ref()?.turns.iter().find(|t| t.turn == turn)?;
                get(t).map(|v| (l.load(), v))
            })
            .collect();
        if !points.is_empty() {
            out.push(Line {
                name: format!("turn {turn} {stat}"),
                color: bucket_color(turn),
                dashed,
                points,
            });
        }
    }
    out
}

/// Draw the sessions figure at `path`.
pub fn render(
    path: &Path,
    levels: &[LevelResult],
    title: &str,
) -> Result<(), super::plot::PlotError> {
    super::plot::register_fonts();
    let err = |e: &dyn std::fmt::Display| super::plot::PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let levels: Vec<&LevelResult> = levels.iter().filter(|l| l.sessions.is_some()).collect();
    let users = levels.iter().any(|l| l.concurrency.is_some());
    let x_desc = if users {
        "concurrent users"
    } else {
        "new sessions/s (target)"
    };
    let mut buf = super::plot::pixels((WIDTH, HEIGHT));
    {
        let root = super::plot::canvas(
            &mut buf,
            path,
            (WIDTH, HEIGHT),
            &format!("{title}: sessions by turn"),
            64,
            40,
        )?;
        let panels = root.split_evenly((1, 2));
        let mut ttft = by_bucket(&levels, "p95", false, |t| {
            (t.ttft.count > 0).then_some(t.ttft.p95)
        });
        ttft.extend(by_bucket(&levels, "p50", true, |t| {
            (t.ttft.count > 0).then_some(t.ttft.p50)
        }));
        let mut cache = vec![Line {
            name: "level".into(),
            color: COLORS[3],
            dashed: false,
            points: levels
                .iter()
                .filter_map(|l| l.cache_hit_ratio.map(|r| (l.load(), r)))
                .collect(),
        }];
        cache.extend(by_bucket(&levels, "", true, |t| t.cache_hit_ratio));
        cache.retain(|l| !l.points.is_empty());
        let xs: Vec<f64> = levels.iter().map(|l| l.load()).collect();
        panel(
            &panels[0],
            &xs,
            x_desc,
            "TTFT by turn",
            "seconds",
            None,
            &ttft,
        )
        .map_err(|e| err(&e))?;
        panel(
            &panels[1],
            &xs,
            x_desc,
            "Prefix cache hit ratio (cached / prompt tokens, as the server reported)",
            "share of prompt tokens",
            Some(1.0),
            &cache,
        )
        .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    super::plot::save_png(path, &buf, (WIDTH, HEIGHT))
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    xs: &[f64],
    x_desc: &str,
    caption: &str,
    unit: &str,
    y_max: Option<f64>,
    lines: &[Line],
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = xs.iter().copied().fold(0.0, f64::max);
    let x_min = xs.iter().copied().fold(x_max, f64::min);
    let pad = ((x_max - x_min) * 0.05).max(0.5);
    let xr = (x_min - pad).max(0.0)..x_max + pad;
    let y_max = y_max.unwrap_or_else(|| {
        let m = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        if m <= 0.0 { 1.0 } else { m * 1.15 }
    });
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 30))
        .margin(24)
        .x_label_area_size(60)
        .y_label_area_size(100)
        .build_cartesian_2d(xr, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc(x_desc)
        .y_desc(unit)
        .label_style((FONT, 22))
        .axis_desc_style((FONT, 24))
        .draw()?;
    for l in lines {
        let style = l.color.stroke_width(3);
        let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 30, y)], style);
        if l.dashed {
            chart
                .draw_series(DashedLineSeries::new(l.points.clone(), 12, 8, style))?
                .label(l.name.trim())
                .legend(legend);
        } else {
            chart
                .draw_series(LineSeries::new(l.points.clone(), style))?
                .label(l.name.trim())
                .legend(legend);
        }
        chart.draw_series(
            l.points
                .iter()
                .map(|p| Circle::new(*p, 5, l.color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 22))
        .draw()?;
    Ok(())
}
