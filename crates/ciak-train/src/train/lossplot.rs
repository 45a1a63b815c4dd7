//! The loss log (`step,loss,lr,seconds` CSV, one row per step, flushed as it goes) and a plot of
//! it: raw losses as faint dots, a smoothed curve on a log-y axis, decade and step ticks with
//! small numeric labels, rasterised here and written with the `png` crate.

use super::{Result, TrainError};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub const CSV_HEADER: &str = "step,loss,lr,seconds";

/// One logged step: the step number (1-based), its loss, learning rate and training time so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossRow {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// An open loss CSV that rows are appended to.
pub struct LossLog {
    path: PathBuf,
    file: File,
}

impl LossLog {
    /// Starts a fresh log at `path` (`keep_through = None`), or continues one after a resume,
    /// keeping only rows with `step <= keep_through` (later rows were lost with the run that
    /// wrote them and are about to be redone).
    pub fn open(path: &Path, keep_through: Option<u64>) -> Result<Self> {
        let kept = match keep_through {
            Some(step) if path.is_file() => read_loss_csv(path)?.into_iter().filter(|r| r.step <= step).collect(),
            _ => Vec::new(),
        };
        let mut text = format!("{CSV_HEADER}\n");
        for row in &kept {
            text.push_str(&format_row(row));
        }
        let tmp = path.with_extension("csv.tmp");
        std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| TrainError::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&mut self, row: &LossRow) -> Result<()> {
        self.file.write_all(format_row(row).as_bytes()).map_err(|e| TrainError::io(&self.path, e))?;
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

fn format_row(r: &LossRow) -> String {
    // shortest round-trip formatting: the CSV holds the exact f64 values
    format!("{},{:?},{:?},{:.3}\n", r.step, r.loss, r.lr, r.seconds)
}

/// Reads a loss CSV written by [`LossLog`].
pub fn read_loss_csv(path: &Path) -> Result<Vec<LossRow>> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |line: usize, message: String| TrainError::Config { path: path.to_path_buf(), message: format!("line {line}: {message}") };
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if i == 0 {
            if line.trim() != CSV_HEADER {
                return Err(bad(1, format!("expected the header `{CSV_HEADER}`, got `{line}`")));
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 4 {
            return Err(bad(i + 1, format!("expected 4 fields, got {}", fields.len())));
        }
        let num = |s: &str| s.trim().parse::<f64>().map_err(|e| bad(i + 1, format!("`{s}`: {e}")));
        let step = fields[0].trim().parse::<u64>().map_err(|e| bad(i + 1, format!("step `{}`: {e}", fields[0])))?;
        rows.push(LossRow { step, loss: num(fields[1])?, lr: num(fields[2])?, seconds: num(fields[3])? });
    }
    Ok(rows)
}

/// Bias-corrected exponential smoothing (TensorBoard's), weight chosen from the number of points.
pub fn smooth(values: &[f64]) -> Vec<f64> {
    let weight = (1.0 - 20.0 / values.len().max(1) as f64).clamp(0.0, 0.98);
    let mut acc = 0.0;
    let mut norm = 0.0;
    values
        .iter()
        .map(|&v| {
            acc = acc * weight + (1.0 - weight) * v;
            norm = norm * weight + (1.0 - weight);
            acc / norm
        })
        .collect()
}

/// An RGB canvas.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self { w, h, px: vec![255; w * h * 3] }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn dot(&mut self, x: i64, y: i64, radius: i64, c: [u8; 3]) {
        for dy in -radius..=radius {
            for dx in -radius..=radius {
                self.set(x + dx, y + dy, c);
            }
        }
    }

    /// Bresenham's line, `radius` pixels thick on each side.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), radius: i64, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.dot(x, y, radius, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in a 3x5 pixel font scaled by `s`; `(x, y)` is the top-left corner.
    fn text(&mut self, x: i64, y: i64, s: i64, text: &str, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        for yy in 0..s {
                            for xx in 0..s {
                                self.set(x + (k as i64 * 4 + col) * s + xx, y + r as i64 * s + yy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn text_width(text: &str, s: i64) -> i64 {
    (text.chars().count() as i64 * 4 - 1) * s
}

/// Rows of a 3x5 glyph, most significant of the 3 bits on the left.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        'e' => [0b000, 0b111, 0b111, 0b100, 0b111],
        'k' => [0b100, 0b101, 0b110, 0b101, 0b101],
        _ => [0; 5],
    }
}

/// A decade label: plain decimals from 0.001 to 1000, else `1e-5` style.
fn decade_label(exp: i32) -> String {
    match exp {
        -3..=-1 => format!("{:.*}", (-exp) as usize, 10f64.powi(exp)),
        0..=3 => format!("{}", 10i64.pow(exp as u32)),
        _ => format!("1e{exp}"),
    }
}

fn step_label(step: u64) -> String {
    if step >= 10_000 && step.is_multiple_of(1000) {
        format!("{}k", step / 1000)
    } else {
        step.to_string()
    }
}

/// A 1-2-5 step giving at most `max_ticks` ticks over `span`.
fn nice_step(span: f64, max_ticks: usize) -> f64 {
    let raw = (span / max_ticks.max(1) as f64).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

/// Renders the plot as `width x height` RGB8 pixels (row-major). Non-positive or non-finite
/// losses are skipped (they cannot sit on a log axis).
pub fn render_loss_plot(rows: &[LossRow], width: usize, height: usize) -> Vec<u8> {
    const AXIS: [u8; 3] = [0, 0, 0];
    const GRID: [u8; 3] = [225, 225, 225];
    const RAW: [u8; 3] = [160, 190, 230];
    const CURVE: [u8; 3] = [20, 60, 160];
    let mut cv = Canvas::new(width, height);
    let (left, right, top, bottom) = (70i64, 20i64, 20i64, 40i64);
    let (x0, x1, y0, y1) = (left, width as i64 - right, top, height as i64 - bottom);
    let pts: Vec<(u64, f64)> = rows.iter().filter(|r| r.loss.is_finite() && r.loss > 0.0).map(|r| (r.step, r.loss)).collect();
    if x1 - x0 < 10 || y1 - y0 < 10 {
        return cv.px;
    }
    if !pts.is_empty() {
        let smoothed = smooth(&pts.iter().map(|p| p.1).collect::<Vec<_>>());
        let (lo, hi) = pts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let (mut ly0, mut ly1) = (lo.log10(), hi.log10());
        let pad = ((ly1 - ly0) * 0.05).max(0.02);
        ly0 -= pad;
        ly1 += pad;
        let (s0, s1) = (pts[0].0 as f64, pts[pts.len() - 1].0.max(pts[0].0 + 1) as f64);
        let px = |step: f64| x0 + ((step - s0) / (s1 - s0) * (x1 - x0) as f64).round() as i64;
        let py = |loss: f64| y1 - ((loss.log10() - ly0) / (ly1 - ly0) * (y1 - y0) as f64).round() as i64;

        // y: decade grid lines with labels, short ticks at 2..9 times each decade
        for exp in ly0.floor() as i32..=ly1.ceil() as i32 {
            for m in 1..10 {
                let v = m as f64 * 10f64.powi(exp);
                let l = v.log10();
                if l < ly0 || l > ly1 {
                    continue;
                }
                let y = py(v);
                if m == 1 {
                    cv.line((x0, y), (x1, y), 0, GRID);
                    cv.line((x0 - 8, y), (x0, y), 0, AXIS);
                    let label = decade_label(exp);
                    cv.text(x0 - 12 - text_width(&label, 2), y - 5, 2, &label, AXIS);
                } else {
                    cv.line((x0 - 4, y), (x0, y), 0, AXIS);
                }
            }
        }
        // x: ticks at a 1-2-5 step interval
        let step = nice_step(s1 - s0, 8);
        let mut t = (s0 / step).ceil() * step;
        while t <= s1 {
            let x = px(t);
            cv.line((x, y1), (x, y1 + 6), 0, AXIS);
            let label = step_label(t as u64);
            cv.text(x - text_width(&label, 2) / 2, y1 + 12, 2, &label, AXIS);
            t += step;
        }
        for &(s, l) in &pts {
            cv.set(px(s as f64), py(l), RAW);
        }
        let curve: Vec<(i64, i64)> = pts.iter().zip(&smoothed).map(|(p, &l)| (px(p.0 as f64), py(l))).collect();
        if curve.len() == 1 {
            cv.dot(curve[0].0, curve[0].1, 2, CURVE);
        }
        for w in curve.windows(2) {
            cv.line(w[0], w[1], 1, CURVE);
        }
    }
    cv.line((x0, y0), (x0, y1), 0, AXIS);
    cv.line((x0, y1), (x1, y1), 0, AXIS);
    cv.px
}

/// Writes the loss plot of `rows` to `path` as an 800x400 PNG (through a temporary file).
pub fn write_loss_plot(rows: &[LossRow], path: &Path) -> Result<()> {
    let (w, h) = (800usize, 400usize);
    let pixels = render_loss_plot(rows, w, h);
    let tmp = path.with_extension("png.tmp");
    let png_err = |e: png::EncodingError| TrainError::io(&tmp, std::io::Error::other(e));
    {
        let file = File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(&pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Reads the CSV at `csv` and writes its plot to `png`.
pub fn plot_loss_csv(csv: &Path, png: &Path) -> Result<()> {
    write_loss_plot(&read_loss_csv(csv)?, png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, loss: f64) -> LossRow {
        LossRow { step, loss, lr: 1e-3 / step as f64, seconds: step as f64 * 0.5 }
    }

    #[test]
    fn csv_round_trips_and_resume_drops_lost_rows() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.csv");
        let mut log = LossLog::open(&path, None)?;
        for s in 1..=5 {
            log.append(&row(s, 1.0 / s as f64 + 1e-17))?;
        }
        drop(log);
        let rows = read_loss_csv(&path)?;
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[2].loss, 1.0 / 3.0 + 1e-17, "exact f64 round trip");
        assert_eq!(rows[2].lr, 1e-3 / 3.0);
        // resume from step 3: rows 4 and 5 go, new rows append after 3
        let mut log = LossLog::open(&path, Some(3))?;
        log.append(&row(4, 0.125))?;
        let steps: Vec<u64> = read_loss_csv(&path)?.iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert_eq!(read_loss_csv(&path)?[3].loss, 0.125);
        // a fresh run starts over
        LossLog::open(&path, None)?;
        assert!(read_loss_csv(&path)?.is_empty());
        std::fs::write(&path, "wrong\n").unwrap();
        assert!(read_loss_csv(&path).is_err());
        Ok(())
    }

    #[test]
    fn plot_draws_a_falling_curve_on_log_axes() -> Result<()> {
        let rows: Vec<LossRow> = (1..=300).map(|s| row(s, 2.0 * (s as f64).powf(-0.8) * (1.0 + 0.2 * ((s * 7) % 5) as f64 / 5.0))).collect();
        let (w, h) = (400usize, 200usize);
        let px = render_loss_plot(&rows, w, h);
        assert_eq!(px.len(), w * h * 3);
        let curve_rows = |x: usize| -> Vec<usize> {
            (0..h).filter(|&y| px[(y * w + x) * 3..(y * w + x) * 3 + 3] == [20, 60, 160]).collect()
        };
        // the smoothed curve is high near the left edge and low near the right edge
        let early = curve_rows(80);
        let late = curve_rows(w - 25);
        assert!(!early.is_empty() && !late.is_empty(), "curve missing: {early:?} {late:?}");
        assert!(early[0] + 40 < late[0], "curve does not fall: {early:?} vs {late:?}");
        // axes are drawn
        assert_eq!(&px[((h - 40) * w + 200) * 3..((h - 40) * w + 200) * 3 + 3], &[0, 0, 0]);

        let dir = tempfile::tempdir().unwrap();
        let png_path = dir.path().join("loss.png");
        write_loss_plot(&rows, &png_path)?;
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&png_path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (800, 400));
        // degenerate inputs still give a valid image
        write_loss_plot(&[], &png_path)?;
        write_loss_plot(&[row(1, 0.5)], &png_path)?;
        write_loss_plot(&[row(1, f64::NAN), row(2, 0.0)], &png_path)?;
        Ok(())
    }

    #[test]
    fn labels_and_ticks() {
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(2), "100");
        assert_eq!(decade_label(-5), "1e-5");
        assert_eq!(step_label(20_000), "20k");
        assert_eq!(step_label(2500), "2500");
        assert_eq!(nice_step(1000.0, 8), 200.0);
        assert_eq!(nice_step(3.0, 8), 1.0);
        let s = smooth(&[1.0, 1.0, 1.0]);
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-12));
    }
}
