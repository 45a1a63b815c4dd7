//! `ciak doctor`: a few lines a user can paste into a bug report.
use ciak_engine::model_dir::hf_cache_dirs;

pub fn run() -> anyhow::Result<()> {
    println!("ciak {} ({} {})", env!("CARGO_PKG_VERSION"), std::env::consts::OS, std::env::consts::ARCH);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("cpu: {} threads, features: {}", threads, cpu_features().join(" "));
    println!("cuda: {}", cuda_line());
    println!("threads: {}", crate::threads::describe());
    println!("allocator: {}", crate::malloc::describe());
    if ciak_engine::builtin::available() {
        println!(
            "built-in model: {} (sha256 {}), cache {}",
            ciak_engine::builtin::NAMES.join(" / "),
            &ciak_engine::builtin::sha256()[..16],
            ciak_engine::builtin::cache_root().display()
        );
    } else {
        println!("built-in model: not in this build (models/builtin was missing when it was built)");
    }
    for cache in hf_cache_dirs() {
        let models: Vec<String> = std::fs::read_dir(&cache)
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix("models--").map(|m| m.replacen("--", "/", 1)))
                    .filter(|m| m.contains("Wan"))
                    .collect()
            })
            .unwrap_or_default();
        let found = if models.is_empty() { "no Wan models".to_string() } else { models.join(", ") };
        println!("hugging face cache {}: {found}", cache.display());
    }
    Ok(())
}

fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($f:tt),*) => { $( if std::is_x86_feature_detected!($f) { found.push($f); } )* };
        }
        check!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl");
    }
    #[cfg(target_arch = "aarch64")]
    found.push("neon");
    found
}

fn cuda_line() -> String {
    if !candle_core::utils::cuda_is_available() {
        return "not built in (build with --features cuda)".into();
    }
    match candle_core::Device::new_cuda(0) {
        Ok(_) => "built in; device 0 available".into(),
        Err(e) => format!("built in; no usable device ({e})"),
    }
}
