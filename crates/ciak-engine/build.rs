//! Embeds the built-in model (models/builtin/, a diffusers folder) into the binary: every file is
//! listed with `include_bytes!`, and a sha256 over names and bytes names the extraction folder.
//! With `CIAK_EMBED_BUILTIN=0` in the build's environment nothing is embedded.
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../../models/builtin");
    println!("cargo:rerun-if-changed={}", root.display());
    // CIAK_EMBED_BUILTIN=0: a binary without the model (20 MB smaller), for machines that get
    // the repository anyway (the GPU machine: `--model models/builtin`)
    println!("cargo:rerun-if-env-changed=CIAK_EMBED_BUILTIN");
    let embed = std::env::var("CIAK_EMBED_BUILTIN").map_or(true, |v| v != "0");
    let mut list = Vec::new();
    if embed {
        files(&root, &mut list);
    }
    list.sort();
    let mut hasher = Sha256::new();
    let mut code = String::from("pub const FILES: &[(&str, &[u8])] = &[\n");
    for path in &list {
        let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if rel.ends_with(".md") || rel.starts_with('.') {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        hasher.update(rel.as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(path).unwrap());
        let abs = path.canonicalize().unwrap();
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", abs.to_string_lossy()));
    }
    code.push_str("];\n");
    let sha: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    code.push_str(&format!("pub const SHA256: &str = {sha:?};\n"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_files.rs");
    std::fs::write(out, code).unwrap();
}
