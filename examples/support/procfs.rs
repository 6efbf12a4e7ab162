//! What `/proc` says about a server process (RSS, peak RSS, CPU time), shared by the load
//! generator and the end-to-end tests (included by `#[path]`, so it is not an example).
#![allow(dead_code)]

/// One `kB` field of `/proc/{pid}/status` (`VmRSS`, `VmHWM`, ...) in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// RssAnon of `pid` in KiB: its own memory (heap, stacks, allocator arenas), without the
/// file-backed pages (the executable's code and libraries, shared and paged in on first
/// use) that VmRSS also counts.
pub fn anon_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon")
}

/// VmHWM (peak RSS) of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// User + system CPU seconds of `pid`.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}
