//! What the audit benchmarks (`benches/audit.rs`, `benches/postgres.rs`, included with `#[path]`)
//! measure with: how long each configuration runs, the floor of one durable record on this disk,
//! percentiles, the file system a folder is on, and the lines of a log.

// Each bench uses its own part of this module; the rest would be reported as dead code.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long each configuration is measured, and the bounds on its call count (per server).
pub struct Budget {
    pub seconds: f64,
    /// The fewest and the most measured calls with one call in flight.
    pub sequential: (usize, usize),
    /// The same with more in flight; the fewest is also the pipelined warm-up.
    pub pipelined: (usize, usize),
}

impl Budget {
    /// About 3 s a configuration, or 0.5 s for `--quick`.
    pub fn new(quick: bool) -> Budget {
        Budget {
            seconds: if quick { 0.5 } else { 3.0 },
            sequential: (200, 20_000),
            pipelined: (1_000, 50_000),
        }
    }

    /// The sequential warm-up: `call(n)` for n = 0, 1, 2… for a tenth of the budget. Returns how
    /// many calls it made and how long they took.
    pub fn warm_up(&self, mut call: impl FnMut(u64)) -> (usize, Duration) {
        let start = Instant::now();
        let mut calls = 0;
        while start.elapsed().as_secs_f64() < self.seconds / 10.0 {
            call(calls as u64);
            calls += 1;
        }
        (calls, start.elapsed())
    }

    /// How many calls to measure after a warm-up of `calls` in `took`: about the budget's time,
    /// within its bounds for pipelined or sequential calls.
    pub fn calls(&self, pipelined: bool, calls: usize, took: Duration) -> usize {
        let (fewest, most) = if pipelined {
            self.pipelined
        } else {
            self.sequential
        };
        ((calls as f64 / took.as_secs_f64() * self.seconds) as usize).clamp(fewest, most)
    }
}

/// The size of an audit record's line, about that of a `research-topic` decision, in bytes.
pub const RECORD_BYTES: usize = 600;

/// How many lines the file at `path` holds.
pub fn count_lines(path: &Path) -> usize {
    let file = File::open(path).expect("the audit log is readable");
    BufReader::new(file).split(b'\n').count()
}

/// p50 and p99 of appending one record-sized line to a file in `folder` and `fdatasync`ing it
/// for about a third of `seconds` (20 times at least): the floor of a durable record on this
/// disk, whatever the server does.
pub fn fsync_floor(folder: &Path, seconds: f64) -> (Duration, Duration) {
    let path = folder.join("fsync-floor");
    let mut file = File::options()
        .append(true)
        .create(true)
        .open(&path)
        .expect("a file in the scratch folder");
    let line = "x".repeat(RECORD_BYTES - 1) + "\n";
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 20 || start.elapsed().as_secs_f64() < seconds / 3.0 {
        let started = Instant::now();
        file.write_all(line.as_bytes()).expect("a write");
        file.sync_data().expect("an fdatasync");
        times.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).expect("the floor file can be removed");
    p50_p99(&mut times)
}

/// The 50th and 99th percentiles of `times` (sorted in place; not empty).
pub fn p50_p99(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    let at = |percent: usize| times[(times.len() * percent / 100).min(times.len() - 1)];
    (at(50), at(99))
}

/// The type of the file system `path` is on, from the longest mount point that contains it in
/// `/proc/self/mounts`.
pub fn filesystem(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{kind} on {device}")))
        })
        .max_by_key(|(length, _)| *length)
        .map_or_else(|| "file system unknown".to_owned(), |(_, kind)| kind)
}

/// `duration` in microseconds, to a tenth.
pub fn micros(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e7).round() / 10.0
}
