//! Turning what a user types (sizes, aspect ratios, durations) into exact pipeline values, with
//! errors that name the nearest valid choice.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// Parses a dtype flag (`flag` names it in the error, e.g. `--vae-dtype`).
pub fn parse_dtype(s: &str, flag: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => bail!("expected {flag} f32, bf16 or f16, got `{s}`"),
    })
}

/// Parses `--device cpu|cuda|cuda:N`, refusing CUDA in a build without it.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map(str::parse::<usize>)
                .transpose()
                .with_context(|| format!("expected --device cuda:N, got `{s}`"))?
                .unwrap_or(0);
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this ciak was built without CUDA (rebuild with --features cuda)");
            }
            let device = Device::new_cuda(ordinal)?;
            if let Err(e) = ciak_engine::cuda_pool::keep_pool_memory(&device) {
                eprintln!("warning: {e} (allocations are slower; results are the same)");
            }
            Ok(device)
        }
        _ => bail!("expected --device cpu or cuda, got `{s}`"),
    }
}

/// Parses `WxH` (e.g. `832x480`).
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    if let [w, h] = parts.as_slice() {
        if let (Ok(w), Ok(h)) = (w.trim().parse::<usize>(), h.trim().parse::<usize>()) {
            return Ok((w, h));
        }
    }
    bail!("expected --size WIDTHxHEIGHT such as 832x480, got `{s}`")
}

/// Parses an aspect ratio `W:H` (16:9, 9:16, 1:1, 2.39:1).
pub fn parse_aspect(s: &str) -> Result<f64> {
    if let Some((w, h)) = s.split_once(':') {
        if let (Ok(w), Ok(h)) = (w.trim().parse::<f64>(), h.trim().parse::<f64>()) {
            if w > 0.0 && h > 0.0 && (w / h).is_finite() {
                return Ok(w / h);
            }
        }
    }
    bail!("expected --aspect as W:H such as 16:9, 9:16, 1:1 or 2.39:1, got `{s}`")
}

/// A size for aspect `ratio`: the first of the model's trained `sizes` whose ratio is within 3%;
/// else the base size itself when its ratio is (Wan's 832x480 is its 16:9), or its transpose;
/// else a size of about the base's area, in multiples of `m`.
pub fn size_for_aspect(base: (usize, usize), sizes: &[(usize, usize)], ratio: f64, m: usize) -> (usize, usize) {
    let close = |s: &(usize, usize)| s.1 > 0 && (s.0 as f64 / s.1 as f64 / ratio - 1.0).abs() < 0.03;
    if let Some(&s) = sizes.iter().find(|s| close(s)) {
        return s;
    }
    let base_ratio = base.0 as f64 / base.1 as f64;
    if (base_ratio / ratio - 1.0).abs() < 0.03 {
        return base;
    }
    if (base_ratio * ratio - 1.0).abs() < 0.03 {
        return (base.1, base.0);
    }
    let area = (base.0 * base.1) as f64;
    let round = |v: f64| (((v / m as f64).round() as usize).max(1)) * m;
    (round((area * ratio).sqrt()), round((area / ratio).sqrt()))
}

/// Frames for a duration: the nearest count of the form 1+4k to `seconds * fps` (at least 1).
pub fn frames_for_seconds(seconds: f64, fps: f64, temporal: usize) -> Result<usize> {
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("expected --seconds > 0, got {seconds}");
    }
    let raw = seconds * fps;
    let k = ((raw - 1.0) / temporal as f64).round().max(0.0) as usize;
    Ok(1 + temporal * k)
}

/// A file name from the prompt's first words and the seed, e.g. `a-red-ball-moves-s42.mp4`.
pub fn default_output_name(prompt: &str, seed: u64, ext: &str) -> String {
    let words: Vec<String> = prompt
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(6)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let stem = if words.is_empty() { "clip".to_string() } else { words.join("-") };
    format!("{stem}-s{seed}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_aspects_and_durations() {
        assert_eq!(parse_size("832x480").unwrap(), (832, 480));
        assert!(parse_size("832").unwrap_err().to_string().contains("WIDTHxHEIGHT"));
        assert_eq!(size_for_aspect((832, 480), &[], parse_aspect("16:9").unwrap(), 16), (832, 480));
        assert_eq!(size_for_aspect((832, 480), &[], parse_aspect("9:16").unwrap(), 16), (480, 832));
        assert_eq!(size_for_aspect((832, 480), &[], 1.0, 16), (624, 624));
        // a model's trained sizes come first
        let trained = [(224, 128), (128, 224), (160, 160)];
        assert_eq!(size_for_aspect((224, 128), &trained, 1.0, 16), (160, 160));
        assert_eq!(size_for_aspect((224, 128), &trained, parse_aspect("9:16").unwrap(), 16), (128, 224));
        assert_eq!(size_for_aspect((224, 128), &[], 1.0, 16), (176, 176));
        let (w, h) = size_for_aspect((832, 480), &[], parse_aspect("2.39:1").unwrap(), 16);
        assert!((w as f64 / h as f64 - 2.39).abs() < 0.1 && w % 16 == 0 && h % 16 == 0, "{w}x{h}");
        assert!(parse_aspect("wide").is_err() && parse_aspect("0:1").is_err());
        assert_eq!(frames_for_seconds(5.0, 16.0, 4).unwrap(), 81);
        assert_eq!(frames_for_seconds(2.0, 12.0, 4).unwrap(), 25);
        assert_eq!(frames_for_seconds(0.01, 16.0, 4).unwrap(), 1);
        assert!(frames_for_seconds(0.0, 16.0, 4).is_err());
        assert_eq!(default_output_name("A red ball, moving right!", 42, "mp4"), "a-red-ball-moving-right-s42.mp4");
        assert_eq!(default_output_name("!!!", 1, "mp4"), "clip-s1.mp4");
    }
}
