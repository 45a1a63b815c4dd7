//! Host memory of this process from /proc (Linux): the peak resident set (VmHWM), which can be
//! reset to the current size so each stage gets its own peak. Elsewhere everything is `None`.

/// Peak resident set size in bytes since start or the last [`reset_peak`].
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// Resets VmHWM to the current RSS (Linux 4.0+, `echo 5 > /proc/self/clear_refs`); false where
/// that is not possible, and then stage peaks are peaks since the start of the process.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// CPU time (user + system, all threads) this process has used, in seconds, from
/// /proc/self/stat (assumes the usual 100 clock ticks per second).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name and state.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// The CPU's model name (first `model name` of /proc/cpuinfo).
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_follows_a_large_allocation_and_resets() {
        if !std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss_bytes().is_none());
            return;
        }
        let before = peak_rss_bytes().unwrap();
        assert!(rss_bytes().unwrap() > 0 && before >= rss_bytes().unwrap() / 2);
        // Touch 256 MiB so it becomes resident, then free it.
        let block = vec![1u8; 256 << 20];
        std::hint::black_box(&block);
        let with_block = peak_rss_bytes().unwrap();
        assert!(with_block >= (256 << 20), "peak {with_block} after touching 256 MiB");
        drop(block);
        let cpu = cpu_seconds().unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed().as_millis() < 300 {
            std::hint::black_box(spin.elapsed());
        }
        let used = cpu_seconds().unwrap() - cpu;
        assert!(used > 0.05 && used < 5.0, "300 ms of spinning used {used} s of CPU");
        if reset_peak() {
            let after = peak_rss_bytes().unwrap();
            assert!(after < with_block, "reset peak {after} should drop below {with_block}");
        }
    }
}
