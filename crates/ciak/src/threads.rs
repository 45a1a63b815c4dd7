//! The number of compute threads, decided once per process.
//!
//! candle asks for its thread count on every CPU matrix product (and ciak's softmax kernel does
//! too), and unless `RAYON_NUM_THREADS` is set the answer is the count of physical cores, which
//! the `num_cpus` crate finds by parsing `/proc/cpuinfo` anew each time. A VAE training step makes
//! thousands of matrix products, and the reads were 4% of its time in a profile. [`pin`] puts
//! candle's own answer into `RAYON_NUM_THREADS` before any thread starts, so every later ask is
//! one environment lookup with the same result; rayon's pool (eval jobs, training micro-batches)
//! then has that many threads too. A user's own `RAYON_NUM_THREADS` wins: nothing is changed.
//!
//! candle also keeps a pool of its own for element-wise ops, sized once, at the first such op,
//! from `CANDLE_NUM_THREADS` (else the same count). Commands that run parts of their work side by
//! side on rayon's threads (eval's clips, the DiT trainer's micro-batches) already keep every core
//! busy, and there that pool only adds a thread per core that the parts wait for, spinning: a
//! profile of DiT training had a fifth of its samples in those waits. [`side_by_side`] sizes the
//! pool to the calling thread for such commands. Results do not change (element-wise ops give
//! the same values on any number of threads).

const VAR: &str = "RAYON_NUM_THREADS";
/// The size of candle's element-wise pool, the caller included.
const POOL_VAR: &str = "CANDLE_NUM_THREADS";

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

/// The thread count a command that runs its parts side by side uses by default: one per thread.
pub fn count() -> usize {
    candle_core::utils::get_num_threads()
}

/// The value of `CANDLE_NUM_THREADS` to set for a command whose parts run side by side: `None`
/// when the user set it (any value: theirs is the choice).
fn pool_value_to_set(current: Option<std::ffi::OsString>) -> Option<&'static str> {
    current.is_none().then_some("1")
}

/// Sizes candle's element-wise pool to the calling thread unless the user sized it. Call it in
/// `main`, after [`pin`] and before any tensor op, while the process has one thread.
pub fn side_by_side() {
    if let Some(n) = pool_value_to_set(std::env::var_os(POOL_VAR)) {
        std::env::set_var(POOL_VAR, n);
    }
}

/// For `ciak doctor`.
pub fn describe() -> String {
    format!("{} compute threads ({VAR})", count())
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

    #[test]
    fn the_element_wise_pool_is_the_callers_unless_the_user_sized_it() {
        assert_eq!(pool_value_to_set(None), Some("1"));
        assert_eq!(pool_value_to_set(Some("4".into())), None);
        assert_eq!(pool_value_to_set(Some("".into())), None);
    }
}
