//! ciak: text to video on your own machine. `ciak generate "prompt"` writes a playable MP4.
mod bench;
mod doctor;
mod eval_cmd;
mod generate;
mod malloc;
mod options;
mod progress;
mod threads;
mod train_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ciak", version, about = "Text to video on your own machine (Wan architecture, Rust)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render a clip from a prompt and write it as MP4 (and optionally PNG frames).
    Generate(Box<generate::GenerateArgs>),
    /// Print what ciak sees (CPU, threads, CUDA, models in the cache) for a bug report.
    Doctor,
    /// Tools for the built-in model's training world: preview clips, write its tokenizer.
    Train(train_cmd::TrainArgs),
    /// Score a model on the held-out prompt set (per-attribute accuracy, flicker, report).
    Eval(Box<eval_cmd::EvalArgs>),
    Bench(Box<bench::BenchArgs>),
}

impl Command {
    /// Whether the command runs parts of its work side by side on the CPU's threads.
    fn runs_side_by_side(&self) -> bool {
        match self {
            Command::Eval(a) => a.runs_side_by_side(),
            Command::Train(a) => a.runs_side_by_side(),
            Command::Generate(_) | Command::Doctor | Command::Bench(_) => false,
        }
    }
}

fn main() -> ExitCode {
    threads::pin();
    malloc::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout; a usage error is one line on stderr, exit code 2.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap puts what is missing or wrong on the lines after the first; the usage and
            // the hint that follow are left out
            let text = e.to_string();
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", if lines.is_empty() { "error: bad arguments".to_string() } else { lines.join(" ") });
            return ExitCode::from(2);
        }
    };
    if cli.command.runs_side_by_side() {
        threads::side_by_side();
    }
    let result = match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Doctor => doctor::run(),
        Command::Bench(args) => bench::run(*args),
        Command::Train(args) => train_cmd::run(args),
        Command::Eval(args) => eval_cmd::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side_by_side(args: &[&str]) -> bool {
        Cli::try_parse_from(std::iter::once("ciak").chain(args.iter().copied())).unwrap().command.runs_side_by_side()
    }

    #[test]
    fn only_work_split_across_cpu_threads_runs_side_by_side() {
        let threads = threads::count() > 1;
        assert!(side_by_side(&["eval", "--jobs", "2"]));
        assert!(!side_by_side(&["eval", "--jobs", "1"]));
        assert_eq!(side_by_side(&["eval"]), threads);
        assert!(!side_by_side(&["eval", "--device", "cuda"]));
        assert!(side_by_side(&["train", "dit", "--latents", "L", "--vae", "V", "--out", "O", "--micro-batches", "2"]));
        assert!(!side_by_side(&["train", "dit", "--latents", "L", "--vae", "V", "--out", "O", "--micro-batches", "1"]));
        assert!(!side_by_side(&["train", "dit", "--latents", "L", "--vae", "V", "--out", "O", "--device", "cuda"]));
        assert_eq!(side_by_side(&["train", "all", "--out", "O"]), threads);
        assert!(!side_by_side(&["train", "vae", "--out", "O"]));
        assert!(!side_by_side(&["generate", "a red ball"]));
    }
}
