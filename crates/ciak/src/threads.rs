//! The number of compute threads, decided once per process.
//!
//! candle asks for its thread count on every CPU matrix product (and ciak's softmax kernel does
//! too), and unless `RAYON_NUM_THREADS` is set the answer is the count of physical cores, which
//! the `num_cpus` crate finds by parsing `/proc/cpuinfo` anew each time. A VAE training step makes
//! thousands of matrix products, and the reads were 4% of its time in a profile. [`pin`] puts
//! candle's own answer into `RAYON_NUM_THREADS` before any thread starts, so every later ask is
//! one environment lookup with the same result; rayon's pool (eval jobs, training micro-batches)
//! then has that many threads too. A user's own `RAYON_NUM_THREADS` wins: nothing is changed.

const VAR: &str = "RAYON_NUM_THREADS";

/// The value to set, given how to read the variable and candle's count: `None` when the user set
/// a usable count (candle ignores 0 and text, and so falls back to its count).
fn value_to_set(current: Option<String>, candle_count: impl FnOnce() -> usize) -> Option<String> {
    match current.and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n > 0 => None,
        _ => Some(candle_count().max(1).to_string()),
    }
}

/// Sets `RAYON_NUM_THREADS` to candle's default count unless the user set one. Call it first
/// thing in `main`, while the process has one thread.
pub fn pin() {
    if let Some(n) = value_to_set(std::env::var(VAR).ok(), candle_core::utils::get_num_threads) {
        std::env::set_var(VAR, n);
    }
}

/// For `ciak doctor`.
pub fn describe() -> String {
    format!("{} compute threads ({VAR})", candle_core::utils::get_num_threads())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_candles_count_unless_the_user_set_a_usable_one() {
        assert_eq!(value_to_set(None, || 2), Some("2".into()));
        assert_eq!(value_to_set(Some("".into()), || 6), Some("6".into()));
        assert_eq!(value_to_set(Some("0".into()), || 4), Some("4".into()));
        assert_eq!(value_to_set(Some("many".into()), || 4), Some("4".into()));
        assert_eq!(value_to_set(Some(" 3".into()), || 4), Some("4".into()));
        assert_eq!(value_to_set(None, || 0), Some("1".into()));
        assert_eq!(value_to_set(Some("3".into()), || panic!("not asked")), None);
    }
}
