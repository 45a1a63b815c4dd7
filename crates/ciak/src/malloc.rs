//! glibc's allocator settings for tensor work.
//!
//! By default glibc serves every allocation above its mmap threshold (128 KiB at first, raised up
//! to 32 MiB as large blocks are freed) with a fresh `mmap`, and returns freed heap to the kernel
//! above a 128 KiB trim threshold. A sampling or training loop allocates and frees tensors of the
//! same few sizes thousands of times, so with those defaults most of them come back as fresh pages
//! that the kernel faults in and zeroes: the built-in model's default clip spent 2.7 of its 7.8 CPU
//! seconds in the kernel (docs/performance.md). With the threshold pinned at its 32 MiB maximum and
//! trimming only above 1 GiB, freed blocks are reused. Large weight buffers (over 32 MiB) are still
//! mapped and unmapped as before, and peak memory does not change.
//!
//! A user's own `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` (glibc's environment
//! variables) win: when either is set, nothing is changed.

/// The mmap threshold ciak sets: glibc's largest (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Freed heap is given back to the kernel only above this much.
pub const TRIM_THRESHOLD: usize = 1 << 30;

const ENV_VARS: [&str; 2] = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"];

/// Whether ciak should set the thresholds, given how to read an environment variable: not when
/// the user set either of glibc's own variables.
fn should_tune(var: impl Fn(&str) -> Option<String>) -> bool {
    ENV_VARS.iter().all(|name| var(name).is_none())
}

/// [`should_tune`] on this process's environment.
fn env_allows_tuning() -> bool {
    should_tune(|name| std::env::var(name).ok())
}

/// What [`tune`] did, for `ciak doctor`.
pub fn describe() -> String {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return "the platform's defaults".to_string();
    }
    if env_allows_tuning() {
        let (mmap, trim) = (MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20);
        format!("mmap threshold {mmap} MiB, trim threshold {trim} MiB (ciak's settings)")
    } else {
        format!("as set by {}", ENV_VARS.join(" / "))
    }
}

/// Sets the thresholds (glibc on Linux only; elsewhere nothing to do). Returns whether they were set.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if env_allows_tuning() {
            // SAFETY: mallopt only changes the allocator's parameters, under the allocator's own lock.
            unsafe {
                return libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_own_setting_wins() {
        assert!(should_tune(|_| None));
        assert!(!should_tune(|name| (name == "MALLOC_MMAP_THRESHOLD_").then(|| "65536".to_string())));
        assert!(!should_tune(|name| (name == "MALLOC_TRIM_THRESHOLD_").then(|| "0".to_string())));
    }

    #[test]
    fn the_thresholds_are_accepted_by_glibc() {
        // glibc refuses an mmap threshold above its maximum (mallopt returns 0); where the user
        // set the variables, tune() leaves them and reports false
        if env_allows_tuning() && cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(tune());
        } else {
            assert!(!tune());
        }
    }
}
