//! Writes a prompt set like eval/prompts.json drawn from a world file's scenes (held-out split,
//! the same seed, counts and per-prompt kinds as the committed set), so that
//! `ciak eval --reference --prompts OUT` measures the analyzer on what that world renders, for
//! example objects drawn larger by `object_scale`:
//!
//!   cargo run --release -p ciak-train --example world_eval_set -- train/world-x.json OUT.json
use ciak_train::eval::prompts::{build_eval_set_in, EVAL_SEED, PAIR_PROMPTS, SINGLE_PROMPTS};
use ciak_train::SamplerConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [world, out] = args.as_slice() else {
        return Err("expected two arguments, WORLD.json OUT.json".into());
    };
    let text = std::fs::read_to_string(world).map_err(|e| format!("reading {world}: {e}"))?;
    let world = SamplerConfig::from_json(&serde_json::from_str(&text)?).map_err(|e| format!("{world}: {e}"))?;
    let set = build_eval_set_in(EVAL_SEED, SINGLE_PROMPTS, PAIR_PROMPTS, &world);
    std::fs::write(out, set.to_json())?;
    println!("wrote {} prompts to {out}", set.prompts.len());
    Ok(())
}
