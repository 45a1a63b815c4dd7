//! Does the text encoder bind a colour to its role? For captions with two coloured roles, "a green
//! ball moves right under a X sky over Y ground" and "a X ball moves left and a Y star moves
//! right", over all pairs of distinct colours X, Y (and a third colour Z), compares the encoder's
//! output at the role tokens ("sky" and "ground", "ball" and "star"):
//!
//! - own: X, Y against Z, Y for the first role (the word's own colour changes);
//! - other: X, Y against X, Z for the first role (only the other role's colour changes);
//! - swap: X, Y against Y, X.
//!
//! Distances are relative (|a - b| / |a|), averaged over the pairs. An encoder that binds colours
//! to roles changes a role's token much more with its own colour than with the other one's; a
//! bag of words changes both alike, and then the DiT cannot tell which colour goes where.
//!
//!   cargo run --release -p ciak-train --example roles_probe -- MODEL_DIR
use candle_core::Tensor;
use ciak_engine::model_dir::WanModelDir;
use ciak_engine::pipeline::{LoadOptions, WanPipeline};

const COLOURS: [&str; 10] = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black"];

/// (caption with the slots `{x}` and `{y}`, the token of X's role, the token of Y's role)
const CASES: [(&str, &str, &str); 2] = [
    ("a green ball moves right under a {x} sky over {y} ground", "sky", "ground"),
    ("a {x} ball moves left and a {y} star moves right", "ball", "star"),
];

fn main() {
    let dir = std::env::args().nth(1).expect("usage: roles_probe MODEL_DIR");
    let pipe = WanPipeline::load(&WanModelDir::open(std::path::Path::new(&dir)).unwrap(), &LoadOptions::default()).unwrap();
    let text = &pipe.text_encoder;
    let id_of = |word: &str| -> u32 {
        let t = text.tokenize(&[word.to_string()]).unwrap();
        t.input_ids.get(0).unwrap().get(0).unwrap().to_scalar::<u32>().unwrap()
    };
    let rel = |a: &Tensor, b: &Tensor| -> f64 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let n = a.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        (d / n) as f64
    };
    println!("relative change of the role token's encoding, over the ordered pairs of distinct colours");
    println!("token     own colour  other role's colour  swapped");
    for (template, first, second) in CASES {
        let caption = |x: &str, y: &str| template.replace("{x}", x).replace("{y}", y);
        let ids = text.tokenize(&[caption("red", "blue")]).unwrap().input_ids.get(0).unwrap().to_vec1::<u32>().unwrap();
        let at = |word: &str| {
            let id = id_of(word);
            ids.iter().position(|&i| i == id).unwrap_or_else(|| panic!("no `{word}` token"))
        };
        let positions = [at(first), at(second)];
        // [own, other, swap] for the first role's token, then the second's
        let mut sums = [[0f64; 3]; 2];
        let mut n = 0usize;
        for (i, x) in COLOURS.iter().enumerate() {
            for (j, y) in COLOURS.iter().enumerate() {
                if i == j {
                    continue;
                }
                let z = COLOURS[(0..COLOURS.len()).find(|&k| k != i && k != j).unwrap()];
                let e = text.encode(&[caption(x, y), caption(z, y), caption(x, z), caption(y, x)]).unwrap().prompt_embeds;
                for (r, &pos) in positions.iter().enumerate() {
                    let tok = |b: usize| e.get(b).unwrap().get(pos).unwrap();
                    let base = tok(0);
                    // own colour of this role: row 1 changes the first role's, row 2 the second's
                    let (own, other) = if r == 0 { (tok(1), tok(2)) } else { (tok(2), tok(1)) };
                    sums[r][0] += rel(&base, &own);
                    sums[r][1] += rel(&base, &other);
                    sums[r][2] += rel(&base, &tok(3));
                }
                n += 1;
            }
        }
        for (r, name) in [first, second].iter().enumerate() {
            let m = sums[r].map(|s| s / n as f64);
            println!("{name:<8}  {:.3}       {:.3}                {:.3}", m[0], m[1], m[2]);
        }
    }
}
