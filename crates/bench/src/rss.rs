//! What `/proc` says of a process (Linux; 0 where it is missing): resident memory from
//! `/proc/<pid>/status`, this process's for the in-process rows and a child's for the
//! server of the HTTP rows; and a child's CPU time from `/proc/<pid>/stat`.

/// A `…kB` field of a status file, in bytes.
fn status_bytes(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Resident memory of this process now, in bytes.
#[must_use]
pub fn rss_bytes() -> u64 {
    status_bytes("/proc/self/status", "VmRSS:")
}

/// Peak resident memory of this process since start or the last reset, in bytes.
#[must_use]
pub fn peak_rss_bytes() -> u64 {
    status_bytes("/proc/self/status", "VmHWM:")
}

/// Peak resident memory of process `pid`, in bytes.
#[must_use]
pub fn peak_rss_of(pid: u32) -> u64 {
    status_bytes(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// Resets this process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux
/// whatever the kernel's own tick).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system, all threads) that process `pid` has used so far, in seconds.
#[must_use]
pub fn cpu_seconds_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| cpu_ticks(&stat))
        .map_or(0.0, |ticks| ticks as f64 / USER_HZ)
}

/// utime + stime of a `stat` line: fields 14 and 15, counted after the command name
/// (which is in parentheses and may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "4242 (app serve (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn a_busy_process_is_seen_using_cpu() {
        // Ticks are 10 ms: spin until one is counted, within a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut spin = 0u64;
        while super::cpu_seconds_of(std::process::id()) == 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no CPU time seen in 5 s"
            );
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        assert!(super::cpu_seconds_of(std::process::id()) >= 0.01);
    }
}
