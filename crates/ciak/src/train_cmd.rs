//! `ciak train ...`: tools for the built-in model's toy world. `preview` writes sample clips as
//! PNG strips with their captions; `tokenizer` writes the word-level tokenizer.json.
use anyhow::{Context, Result};
use ciak_train::preview::{write_preview, PreviewOptions};
use ciak_train::world::Aspect;
use ciak_train::Split;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    pub command: TrainCommand,
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Render sample clips of the training world as PNG strips plus captions.txt and scenes.json.
    Preview(PreviewArgs),
    /// Write the built-in model's word-level tokenizer.json (every caption word, T5 special ids).
    Tokenizer(TokenizerArgs),
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// Number of clips.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Dataset seed; clip i is item i of this seed, as the trainer draws it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (created if missing).
    #[arg(long, default_value = "train-preview")]
    pub out: PathBuf,
    /// Only this aspect ratio: 16:9, 9:16 or 1:1 (default: all three).
    #[arg(long, value_parser = parse_aspect)]
    pub aspect: Option<Aspect>,
    /// Draw from the training scenes or the held-out evaluation ones.
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    pub split: SplitArg,
    /// Show every Nth frame in the strip (the last frame is always shown).
    #[arg(long, default_value_t = 4)]
    pub every: usize,
}

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    /// Where to write it.
    #[arg(long, default_value = "tokenizer.json")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    Train,
    Eval,
}

fn parse_aspect(s: &str) -> Result<Aspect, String> {
    s.parse()
}

pub fn run(args: TrainArgs) -> Result<()> {
    match args.command {
        TrainCommand::Preview(p) => preview(p),
        TrainCommand::Tokenizer(t) => {
            ciak_train::tokenizer::write_tokenizer_json(&t.out).with_context(|| format!("writing {}", t.out.display()))?;
            println!("wrote {} ({} tokens)", t.out.display(), ciak_train::tokenizer::tokens().len());
            Ok(())
        }
    }
}

fn preview(p: PreviewArgs) -> Result<()> {
    anyhow::ensure!(p.count > 0, "expected --count of at least 1, got 0");
    let split = match p.split {
        SplitArg::Train => Split::Train,
        SplitArg::Eval => Split::Eval,
    };
    let opts = PreviewOptions { count: p.count, seed: p.seed, aspect: p.aspect, split, every: p.every };
    let start = Instant::now();
    let entries = write_preview(&p.out, &opts).with_context(|| format!("writing the preview to {}", p.out.display()))?;
    for e in &entries {
        println!("{}  {}", e.file, e.sample.caption);
    }
    println!(
        "wrote {} clips to {} (captions.txt, scenes.json) in {:.2} s",
        entries.len(),
        p.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
