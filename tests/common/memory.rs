//! Memory of a running process, read from `/proc/<pid>/status` (Linux). Shared by the tests
//! (`tests/common`) and the benchmarks (`benches/e2e.rs`, `benches/soak.rs`, through `#[path]`).

/// The `field` of `/proc/<pid>/status` (`"VmRSS"`: resident now, `"VmHWM"`: peak resident), in
/// KiB.
///
/// # Panics
///
/// When the process is gone or the field is missing: a measurement that cannot be taken must not
/// pass for a small one.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("/proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
