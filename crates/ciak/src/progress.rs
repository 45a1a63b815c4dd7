//! Progress on stderr: a bar on a terminal, plain lines in a pipe, JSON events with --json.
use ciak_engine::pipeline::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub enum Reporter {
    Bar(ProgressBar),
    Plain,
    Json,
}

impl Reporter {
    pub fn new(json: bool) -> Self {
        if json {
            Reporter::Json
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(1);
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg:<16} [{bar:30}] {pos}/{len} eta {eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            Reporter::Bar(bar)
        } else {
            Reporter::Plain
        }
    }

    /// One event for a clip (`clip` of `clips`, counting from 1).
    pub fn report(&self, clip: usize, clips: usize, p: &Progress) {
        match self {
            Reporter::Json => {
                let mut event = serde_json::json!({"event": "progress", "clip": clip, "clips": clips, "stage": p.stage()});
                if let Progress::Denoising { step, total, elapsed } = p {
                    let eta = elapsed.as_secs_f64() / *step as f64 * (total - step) as f64;
                    event["step"] = (*step).into();
                    event["total"] = (*total).into();
                    event["eta_s"] = ((eta * 100.0).round() / 100.0).into();
                }
                eprintln!("{event}");
            }
            Reporter::Plain => match p {
                Progress::Denoising { step, total, elapsed } => {
                    let eta = elapsed.as_secs_f64() / *step as f64 * (total - step) as f64;
                    eprintln!("clip {clip}/{clips}: denoising step {step}/{total} (eta {eta:.1} s)");
                }
                other => eprintln!("clip {clip}/{clips}: {}", other.stage()),
            },
            Reporter::Bar(bar) => match p {
                Progress::Denoising { step, total, .. } => {
                    bar.set_length(*total as u64);
                    bar.set_position(*step as u64);
                    bar.set_message(format!("denoising {clip}/{clips}"));
                }
                other => {
                    bar.set_message(other.stage().to_string());
                    bar.tick();
                }
            },
        }
    }

    /// A stage outside the pipeline (loading, writing).
    pub fn stage(&self, clip: usize, clips: usize, stage: &str) {
        match self {
            Reporter::Json => eprintln!("{}", serde_json::json!({"event": "progress", "clip": clip, "clips": clips, "stage": stage})),
            Reporter::Plain => eprintln!("clip {clip}/{clips}: {stage}"),
            Reporter::Bar(bar) => bar.set_message(stage.to_string()),
        }
    }

    pub fn finish(&self) {
        if let Reporter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
