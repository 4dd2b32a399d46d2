//! PNG plots of a training run against the step: loss, explained variance (train and
//! validation), l0 and the dead fraction.
//!
//! Text is drawn by plotters' `ab_glyph` backend with a font embedded in the binary
//! (DejaVu Sans, assets/fonts/, licence beside it), so plotting needs no system fonts or
//! fontconfig. Charts are drawn into an RGB buffer and encoded by the `image` crate.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::logs::{Record, Run};
use crate::disk::write_atomic;

/// DejaVu Sans (Bitstream Vera licence, assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 560);
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// One curve of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (step, value), finite values only.
    pub points: Vec<(f64, f64)>,
    /// Mark every point (epoch series, which have few points).
    pub markers: bool,
}

/// One chart, written as `<name>.png`.
#[derive(Debug, Clone)]
pub struct Chart {
    pub name: &'static str,
    pub title: String,
    pub y_label: &'static str,
    pub series: Vec<Series>,
    /// Lower bound of the y axis (values below are clipped), e.g. for an evr that starts
    /// far below zero.
    pub y_floor: Option<f64>,
    /// Start the y axis at 0 (shares, counts).
    pub from_zero: bool,
    /// Where the legend goes (away from where the curves usually are).
    pub legend: SeriesLabelPosition,
}

fn series(
    name: &str,
    rows: &[&Record],
    value: impl Fn(&Record) -> Option<f64>,
    markers: bool,
) -> Series {
    Series {
        name: name.into(),
        points: rows
            .iter()
            .filter_map(|r| {
                value(r)
                    .filter(|v| v.is_finite())
                    .map(|v| (r.step as f64, v))
            })
            .collect(),
        markers,
    }
}

/// The charts of a run, from its step and epoch lines.
pub fn charts(run: &Run) -> Vec<Chart> {
    let steps: Vec<&Record> = run.log.steps().map(|(r, _)| r).collect();
    let epochs: Vec<&Record> = run.log.epochs().map(|(r, _)| r).collect();
    let keep = |v: Vec<Series>| v.into_iter().filter(|s| !s.points.is_empty()).collect();
    vec![
        Chart {
            name: "loss",
            title: "Training loss".into(),
            y_label: "loss",
            series: keep(vec![
                series("loss (batch)", &steps, |r| r.loss, false),
                series("loss (epoch mean)", &epochs, |r| r.loss, true),
                series("aux loss (epoch mean)", &epochs, |r| r.aux_loss, true),
            ]),
            y_floor: None,
            from_zero: false,
            legend: SeriesLabelPosition::UpperRight,
        },
        Chart {
            name: "evr",
            title: "Explained variance".into(),
            y_label: "evr",
            series: keep(vec![
                series("train (batch)", &steps, |r| r.evr, false),
                series("train (epoch)", &epochs, |r| r.evr, true),
                series("validation (epoch)", &epochs, |r| r.val_evr, true),
            ]),
            y_floor: Some(-0.5),
            from_zero: false,
            legend: SeriesLabelPosition::LowerRight,
        },
        Chart {
            name: "l0",
            title: "Active latents per row (l0)".into(),
            y_label: "l0",
            series: keep(vec![
                series("train (batch)", &steps, |r| r.l0, false),
                series("validation (epoch)", &epochs, |r| r.val_l0, true),
            ]),
            y_floor: None,
            from_zero: false,
            legend: SeriesLabelPosition::UpperRight,
        },
        Chart {
            name: "dead_frac",
            title: "Dead latents".into(),
            y_label: "fraction of latents",
            series: keep(vec![series(
                "dead fraction (epoch)",
                &epochs,
                |r| r.dead_frac,
                true,
            )]),
            y_floor: None,
            from_zero: true,
            legend: SeriesLabelPosition::UpperRight,
        },
    ]
}

/// Write every chart that has data into `dir` as PNG; returns the files written.
pub fn write_plots(run: &Run, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the plot directory {}", dir.display()))?;
    let mut written = Vec::new();
    for chart in charts(run) {
        if chart.series.is_empty() {
            continue;
        }
        let path = dir.join(format!("{}.png", chart.name));
        draw(&chart, &path)?;
        written.push(path);
    }
    Ok(written)
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ok.then_some(())
        .ok_or_else(|| anyhow!("the embedded plot font cannot be read"))
}

/// (min, max) of the values, padded so that a flat or single-point series still has a range.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad, hi + pad)
}

/// Draw `chart` to the PNG file `path` (atomically), against the step.
pub fn draw(chart: &Chart, path: &Path) -> Result<()> {
    draw_against(chart, ("step", 0), path)
}

/// Draw `chart` to the PNG file `path` (atomically), with the x axis named `x.0` and its
/// labels written with `x.1` decimals.
pub fn draw_against(chart: &Chart, x: (&str, usize), path: &Path) -> Result<()> {
    register_font()?;
    let failed = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let (x0, x1) = bounds(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
    );
    let (mut y0, y1) = bounds(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
    );
    if chart.from_zero && y0 > 0.0 {
        y0 = 0.0;
    }
    if let Some(floor) = chart.y_floor {
        y0 = y0.max(floor).min(y1 - 1e-9);
    }
    let (w, h) = SIZE;
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption(&chart.title, (FAMILY, 26))
            .margin(18)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| failed(&e))?;
        c.configure_mesh()
            .x_desc(x.0)
            .x_label_formatter(&|v| format!("{v:.0$}", x.1))
            .y_desc(chart.y_label)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| failed(&e))?;
        for (i, s) in chart.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let width = if s.markers { 2 } else { 1 };
            let clipped = s.points.iter().map(|&(x, y)| (x, y.max(y0)));
            c.draw_series(LineSeries::new(clipped.clone(), color.stroke_width(width)))
                .map_err(|e| failed(&e))?
                .label(&s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            if s.markers {
                c.draw_series(clipped.map(|p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| failed(&e))?;
            }
        }
        c.configure_series_labels()
            .position(chart.legend.clone())
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FAMILY, 15))
            .draw()
            .map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
    }
    let image =
        image::RgbImage::from_raw(w, h, buffer).context("plot buffer has the wrong size")?;
    write_atomic(path, |tmp| {
        image
            .save_with_format(tmp, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_pad_flat_and_empty_data() {
        assert_eq!(bounds([2.0, 2.0].into_iter()), (1.9, 2.1));
        assert_eq!(bounds(std::iter::empty()), (0.0, 1.0));
        let (lo, hi) = bounds([0.0, 10.0].into_iter());
        assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12);
    }
}
