//! `benchmark_timeline.png`: the time series of levels whose rate changes
//! (ramps, trace replays, soak shapes), beside the seed's grid. Three
//! panels over time: target and achieved rate; TTFT and E2E p50/p95;
//! errors and requests in flight. Levels follow one another on the time
//! axis, each starting where the previous one's send window ended.

use super::plot::tick;
use crate::analysis::level::LevelResult;
use crate::analysis::series::SeriesPoint;
use plotters::prelude::*;
use std::path::Path;

pub const DEFAULT_TIMELINE_FILE: &str = "benchmark_timeline.png";
pub const WIDTH: u32 = 2400;
pub const HEIGHT: u32 = 1500;
const FONT: &str = "sans-serif";

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Whether any level has a series to draw.
pub fn has_series(levels: &[LevelResult]) -> bool {
    levels.iter().any(|l| !l.timeseries.is_empty())
}

/// The points of every level on one time axis: `(t, point)`.
fn joined(levels: &[LevelResult]) -> Vec<(f64, &SeriesPoint)> {
    let mut out = Vec::new();
    let mut base = 0.0;
    for l in levels.iter().filter(|l| !l.timeseries.is_empty()) {
        for p in &l.timeseries {
            out.push((base + p.t_s, p));
        }
        base += l.send_window_s.max(l.duration);
    }
    out
}

/// A plotted line: its legend and how to read it from a point.
type Line<'a> = (&'a str, fn(&SeriesPoint) -> Option<f64>);

/// Draw the timeline at `path`.
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
    let pts = joined(levels);
    let mut buf = super::plot::pixels((WIDTH, HEIGHT));
    {
        let root = super::plot::canvas(
            &mut buf,
            path,
            (WIDTH, HEIGHT),
            &format!("{title}: over time"),
            64,
            40,
        )?;
        let panels = root.split_evenly((3, 1));
        let t_max = pts.iter().map(|(t, _)| *t).fold(0.0, f64::max);
        let step = pts
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .find(|d| *d > 0.0)
            .unwrap_or(10.0);
        let xr = 0.0..(t_max + step).max(1.0);
        type Get = fn(&SeriesPoint) -> Option<f64>;
        let rates: [(&str, Get); 2] = [
            ("achieved req/s", |p| Some(p.achieved_qps)),
            ("target req/s", |p| Some(p.target_qps)),
        ];
        let latencies: [(&str, Get); 4] = [
            ("TTFT p50", |p| p.ttft_p50),
            ("TTFT p95", |p| p.ttft_p95),
            ("E2E p50", |p| p.e2e_p50),
            ("E2E p95", |p| p.e2e_p95),
        ];
        let load: [(&str, Get); 3] = [
            ("errors / step", |p| Some(p.errors as f64)),
            ("in flight (mean at send)", |p| Some(p.in_flight)),
            ("in flight (max)", |p| Some(p.in_flight_max as f64)),
        ];
        panel(
            &panels[0],
            &pts,
            xr.clone(),
            "Target and achieved rate",
            "requests/s",
            &rates,
        )
        .map_err(|e| err(&e))?;
        panel(
            &panels[1],
            &pts,
            xr.clone(),
            "Latency percentiles per step",
            "seconds",
            &latencies,
        )
        .map_err(|e| err(&e))?;
        panel(
            &panels[2],
            &pts,
            xr,
            "Errors and requests in flight",
            "requests",
            &load,
        )
        .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    super::plot::save_png(path, &buf, (WIDTH, HEIGHT))
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    pts: &[(f64, &SeriesPoint)],
    xr: std::ops::Range<f64>,
    caption: &str,
    unit: &str,
    lines: &[Line],
) -> Result<(), Box<dyn std::error::Error>> {
    let ymax = pts
        .iter()
        .flat_map(|(_, p)| lines.iter().filter_map(|(_, g)| g(p)))
        .fold(0.0, f64::max);
    let ymax = if ymax <= 0.0 { 1.0 } else { ymax * 1.15 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 32))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(100)
        .build_cartesian_2d(xr, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc("seconds from the start")
        .y_desc(unit)
        .label_style((FONT, 22))
        .axis_desc_style((FONT, 24))
        .draw()?;
    for (i, (name, get)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let series: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|(t, p)| get(p).map(|v| (*t, v)))
            .collect();
        if name.starts_with("target") {
            // Dashed and drawn over the achieved line it usually hides.
            let style = BLACK.mix(0.75).stroke_width(3);
            chart
                .draw_series(DashedLineSeries::new(series, 14, 10, style))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], style));
            continue;
        }
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(3)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(3))
            });
        chart.draw_series(
            series
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
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
