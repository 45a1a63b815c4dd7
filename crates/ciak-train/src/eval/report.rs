//! What `ciak eval` writes: `report.md` (the table, the flicker measure, timings, every prompt),
//! `results.json` (everything the analyzer read, per prompt) and `contact_sheet.png` (first,
//! middle and last frame of every clip, a green or red bar for all-correct or not).
use super::analyze::{flicker_definition, limits};
use super::score::{serde_name as name, single_breakdown, Accuracy, Summary, BAR_FLICKER, BAR_PAIR, BAR_SINGLE};
use super::{io_err, EvalReport, PromptResult, Result};
use crate::preview::write_png;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn row(name: &str, a: &Accuracy, bar: f64) -> String {
    let mark = |v: f64| if v >= bar { pct(v) } else { format!("{} (<{})", pct(v), pct(bar)) };
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        a.count,
        mark(a.color),
        mark(a.shape),
        mark(a.motion),
        mark(a.background),
        pct(a.all)
    )
}

/// The accuracy table as markdown (also what the CLI prints).
pub fn summary_table(s: &Summary) -> String {
    let mut out = String::new();
    out.push_str("| prompts | n | colour | shape | motion | background | all right |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    out.push_str(&row("single object", &s.single, BAR_SINGLE));
    out.push('\n');
    for (slot, a) in s.pair.iter().enumerate() {
        out.push_str(&row(&format!("two objects, object {}", slot + 1), a, BAR_PAIR));
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nflicker: mean {:.3}, worst clip {:.3}, worst frame {:.3} (8-bit levels; bar: mean <= {BAR_FLICKER})",
        s.flicker_mean, s.flicker_worst_clip, s.flicker_peak
    );
    if s.passes {
        out.push_str("bar: met\n");
    } else {
        let _ = writeln!(out, "bar: NOT met ({})", s.failures.join("; "));
    }
    out
}

fn expected_text(r: &PromptResult) -> String {
    let objs: Vec<String> =
        r.expected.objects.iter().map(|o| format!("{} {} {}", o.color.name(), name(&o.shape), name(&o.motion))).collect();
    let bg: Vec<&str> = r.expected.background.colors.iter().map(|c| c.name()).collect();
    let bg = if bg.is_empty() { "(any colours)".to_string() } else { bg.join("/") };
    format!("{}; {} {bg}", objs.join(", "), r.expected.background.kind.name())
}

fn read_text(r: &PromptResult) -> String {
    let objs: Vec<String> = r
        .analysis
        .objects
        .iter()
        .map(|o| format!("{} {} {} ({}f)", o.color.name(), name(&o.shape), name(&o.motion), o.frames_found))
        .collect();
    let bg: Vec<&str> = r.analysis.background.colors.iter().map(|c| c.name()).collect();
    format!("{}; {} {}", if objs.is_empty() { "nothing".into() } else { objs.join(", ") }, r.analysis.background.kind.name(), bg.join("/"))
}

fn marks(r: &PromptResult) -> String {
    let mut s = String::new();
    for o in &r.score.objects {
        if !o.found {
            s.push_str("missing ");
            continue;
        }
        for (ok, c) in [(o.color, 'c'), (o.shape, 's'), (o.motion, 'm')] {
            s.push(if ok { c } else { '-' });
        }
        s.push(' ');
    }
    s.push(if r.score.background { 'b' } else { '-' });
    s
}

/// The whole report as markdown; `command` is the line that produced it.
pub fn markdown(report: &EvalReport, command: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# ciak eval\n");
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(out, "Source: {}\n", report.source);
    let _ = writeln!(
        out,
        "Prompts: {} of the {} in `eval/prompts.json` (held-out phrasings and colour x shape x motion combinations, no camera moves).\n",
        report.results.len(),
        report.prompts_total
    );
    out.push_str("## Accuracy\n\n");
    out.push_str(&summary_table(&report.summary));
    let _ = writeln!(
        out,
        "\nBar: every attribute >= {} on single-object prompts, >= {} for each object of two-object prompts, flicker mean <= {}.",
        BAR_SINGLE, BAR_PAIR, BAR_FLICKER
    );
    let cases = single_breakdown(report.results.iter().map(|r| (&r.expected, &r.score)));
    if !cases.is_empty() {
        out.push_str("\n## Single-object prompts by case\n\n");
        out.push_str("| case | n | colour | shape | motion | background | all right |\n|---|---|---|---|---|---|---|\n");
        for (case, a) in &cases {
            out.push_str(&row(case, a, BAR_SINGLE));
            out.push('\n');
        }
    }
    out.push_str("\n## Flicker measure\n\n");
    out.push_str(flicker_definition());
    out.push_str("\n\n## Timings\n\n");
    let n = report.results.len().max(1) as f64;
    let clip = report.results.iter().map(|r| r.seconds_clip).sum::<f64>() / n;
    let analyze = report.results.iter().map(|r| r.seconds_analyze).sum::<f64>() / n;
    let _ = writeln!(out, "- load: {:.2} s", report.seconds_load);
    let _ = writeln!(out, "- per prompt: clip {clip:.2} s, analysis {analyze:.3} s (mean)");
    let mut stages: Vec<(String, f64)> = Vec::new();
    for r in &report.results {
        for (k, v) in &r.timings {
            match stages.iter_mut().find(|s| &s.0 == k) {
                Some(s) => s.1 += v,
                None => stages.push((k.clone(), *v)),
            }
        }
    }
    if !stages.is_empty() {
        let parts: Vec<String> = stages.iter().map(|(k, v)| format!("{k} {:.2} s", v / n)).collect();
        let _ = writeln!(out, "- clip stages (mean): {}", parts.join(", "));
    }
    let _ = writeln!(out, "- total: {:.1} s", report.seconds_total);
    let _ = writeln!(
        out,
        "\nAnalyzer thresholds: foreground CIELAB distance {}, circle if the k = 3, 4, 5 harmonics stay below {} or none is {}x the next, grow/shrink at an area ratio of {}, travel {} of the frame, bounce {} of the height, spin {} rad.",
        limits::FOREGROUND_DE,
        limits::CIRCLE_HARMONIC,
        limits::DOMINANCE,
        limits::GROW_RATIO,
        limits::TRAVEL,
        limits::BOUNCE,
        limits::SPIN
    );
    out.push_str("\n## Prompts\n\nMarks: c colour, s shape, m motion per object, b background; `-` wrong.\n\n");
    out.push_str("| id | prompt | expected | read | marks | flicker |\n|---|---|---|---|---|---|\n");
    for r in &report.results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | `{}` | {:.2} |",
            r.id,
            r.prompt.replace('|', "/"),
            expected_text(r),
            read_text(r),
            marks(r),
            r.analysis.flicker.mean
        );
    }
    out
}

const CELL: usize = 224;
const GAP: usize = 4;
const BAR: usize = 8;
const PER_ROW: usize = 3;

/// First, middle and last frame of every result, `PER_ROW` prompts per row, each frame centred
/// in a 224x224 cell, a green (all right) or red bar left of each prompt. Order as in the report.
pub fn contact_sheet(results: &[PromptResult]) -> (usize, usize, Vec<u8>) {
    let block_w = BAR + 3 * (CELL + GAP);
    let width = PER_ROW * block_w + GAP;
    let rows = results.len().div_ceil(PER_ROW).max(1);
    let height = rows * (CELL + GAP) + GAP;
    let mut img = vec![40u8; width * height * 3];
    for (i, r) in results.iter().enumerate() {
        let (bx, by) = ((i % PER_ROW) * block_w + GAP, (i / PER_ROW) * (CELL + GAP) + GAP);
        let bar = if r.score.all() { [40, 200, 60] } else { [220, 40, 40] };
        for y in by..by + CELL {
            for x in bx..bx + BAR - 2 {
                img[(y * width + x) * 3..(y * width + x) * 3 + 3].copy_from_slice(&bar);
            }
        }
        for (k, f) in r.keyframes.iter().enumerate() {
            let (fw, fh) = (f.width.min(CELL), f.height.min(CELL));
            let cx = bx + BAR + k * (CELL + GAP) + (CELL - fw) / 2;
            let cy = by + (CELL - fh) / 2;
            for y in 0..fh {
                let src = &f.data[y * f.width * 3..y * f.width * 3 + fw * 3];
                let at = ((cy + y) * width + cx) * 3;
                img[at..at + fw * 3].copy_from_slice(src);
            }
        }
    }
    (width, height, img)
}

/// Writes `report.md`, `results.json` and `contact_sheet.png` into `dir` (created if missing);
/// returns their paths.
pub fn write_report(dir: &Path, report: &EvalReport, command: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let md = dir.join("report.md");
    write_atomic(&md, markdown(report, command).as_bytes())?;
    let json = dir.join("results.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| super::EvalError::Invalid(e.to_string()))?;
    write_atomic(&json, text.as_bytes())?;
    let png = dir.join("contact_sheet.png");
    let (w, h, rgb) = contact_sheet(&report.results);
    let tmp = dir.join(".contact_sheet.png.part");
    write_png(&tmp, w, h, &rgb).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &png).map_err(io_err(&png))?;
    Ok(vec![md, json, png])
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = path.with_file_name(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
