//! What a run leaves in its output folder: `metrics.jsonl` (one JSON object per epoch) and
//! `curves.png` (loss and accuracy per epoch, train and test).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use image::ImageEncoder;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomic;

/// A named curve: its label and how to read it off an epoch's metrics.
type Curve = (&'static str, fn(&EpochMetrics) -> f64);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// Wall time of the epoch's training and evaluation.
    pub seconds: f64,
    /// Training images per second (evaluation excluded).
    pub images_per_sec: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// f16 training: steps of this epoch skipped for inf or NaN gradients, and the loss
    /// scale at its end (absent in f32 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Multi-label: each label's test AUROC (null where the test set has one class of it)
    /// and their mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auroc: Option<Vec<Option<f64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_auroc: Option<f64>,
}

/// Reads the epochs already in `metrics.jsonl` (a resumed run appends to them).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

pub fn write_metrics(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Registers a system sans-serif font for the plot's text, once. None found: no text.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        const CANDIDATES: [&str; 7] = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "/Library/Fonts/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ];
        CANDIDATES.iter().any(|p| match std::fs::read(p) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            Err(_) => false,
        })
    })
}

/// Draws loss and accuracy curves (train and test) into a PNG, atomically.
pub fn plot(path: &Path, rows: &[EpochMetrics], title: &str) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (w, h) = (1000u32, 420u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    let text = font_available();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = match text {
            true => root.titled(title, ("sans-serif", 18))?,
            false => root,
        };
        let panels = root.split_evenly((1, 2));
        let last = rows.last().map_or(1, |r| r.epoch).max(1) as f64;
        let epochs = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
            rows.iter().map(|r| (r.epoch as f64, f(r))).collect()
        };
        let max_loss = rows
            .iter()
            .flat_map(|r| [r.train_loss, r.test_loss])
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.1;
        let series: [(&str, f64, [Curve; 2]); 2] = [
            (
                "loss",
                max_loss,
                [("train", |r| r.train_loss), ("test", |r| r.test_loss)],
            ),
            (
                "accuracy",
                1.0,
                [("train", |r| r.train_acc), ("test", |r| r.test_acc)],
            ),
        ];
        for (panel, (name, top, lines)) in panels.iter().zip(series) {
            let mut builder = ChartBuilder::on(panel);
            builder
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(45);
            if text {
                builder.caption(name, ("sans-serif", 16));
            }
            let mut chart = builder.build_cartesian_2d(0.0..last, 0.0..top)?;
            let mut mesh = chart.configure_mesh();
            mesh.x_desc("epoch");
            if !text {
                mesh.disable_x_axis().disable_y_axis();
            }
            mesh.draw()?;
            for ((label, f), color) in lines.into_iter().zip([BLUE, RED]) {
                let s = chart.draw_series(LineSeries::new(epochs(f), color.stroke_width(2)))?;
                if text {
                    s.label(label).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                }
            }
            if text {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        root.present()?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, w, h, image::ExtendedColorType::Rgb8)
        .context("encoding the plot")?;
    write_atomic(path, &png)
}
