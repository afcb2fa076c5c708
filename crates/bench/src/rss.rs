//! Resident memory from `/proc/<pid>/status` (Linux; 0 where it is missing): this
//! process's, for the in-process rows, and a child's, for the server of the HTTP rows.

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
