//! What the audit log costs, through the release server binary over stdio:
//! `cargo bench --bench audit` (`-- --quick` for a smoke run of a few seconds).
//!
//! The server is driven by the lean line client of `benches/e2e.rs` (`common/line_client.rs`) in
//! simulator mode, with `research-topic` calls (each writes two audit records: its `decision`,
//! awaited before the body runs, and its `outcome`, not awaited: it rides on the next batch, so a
//! sequential call's outcome shares the next call's fsync), in three modes:
//!
//! - `off`: `STAGE0_AUDIT_LOG=off`, no audit log;
//! - `no-fsync`: `STAGE0_AUDIT_SYNC=off`, each record written to the file before the call goes on,
//!   but never fsync'd;
//! - `fsync`: the default, `STAGE0_AUDIT_SYNC=on`: each batch of records is written with one
//!   `write` and made durable with one `fdatasync` before its callers go on (group commit);
//!
//! each with 1 call in flight (sequential: one call, its answer, the next) and with 64 (pipelined:
//! a new call for each answer). For each it reports calls/s, the sequential latency (p50 / p99),
//! and the server's CPU time per call (all threads, `/proc/<pid>/task/*/schedstat`). It also
//! measures the disk's own floor: one record-sized line appended and `fdatasync`'d, p50 / p99,
//! in the folder of the logs, right before the `fsync` runs and after them.
//!
//! How many records each fsync carried (the group commit at work) is taken in a second run of
//! each `fsync` configuration, with the server started under `strace -f --seccomp-bpf -c -e
//! trace=fdatasync` (only `fdatasync` stops the server, so it runs at nearly its own speed; the
//! table gives that run's calls/s too): the log's lines over the `fdatasync` calls strace counted.
//! Without `strace` on the `PATH` those figures are left out.
//!
//! Each configuration runs for about [`Budget::seconds`]: a short warm-up measures its rate, and
//! the count of measured calls is chosen from it, so that a slow disk does not make the run take
//! minutes. After each run the harness counts the lines of the log: two per call, or it fails.
//! The logs go to a temporary folder under `target/`, on the project's disk: `/tmp` may be a
//! `tmpfs`, where an fsync costs nothing, while the default log lives in the user's home.
//!
//! It prints a table and writes the figures as JSON to `target/bench-audit.json`.

#[path = "common/line_client.rs"]
mod line_client;
#[path = "common/measure.rs"]
mod measure;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use line_client::{RESEARCH_TOPIC, Server, cpu_ns, load_average, server_binary, watchdog};
use measure::{Budget, RECORD_BYTES, count_lines, filesystem, fsync_floor, micros, p50_p99};

/// The whole run is aborted after this long: a hung server must not hang the bench forever.
const WATCHDOG: Duration = Duration::from_secs(10 * 60);

/// Calls kept in flight by the pipelined runs.
const IN_FLIGHT: usize = 64;

/// Where the server keeps its audit log.
#[derive(Clone, Copy, PartialEq)]
enum Audit {
    Off,
    NoFsync,
    Fsync,
}

impl Audit {
    fn name(self) -> &'static str {
        match self {
            Audit::Off => "off",
            Audit::NoFsync => "no-fsync",
            Audit::Fsync => "fsync",
        }
    }

    /// The server's environment for this mode, with the log at `log`.
    fn env(self, log: &str) -> Vec<(&str, &str)> {
        match self {
            Audit::Off => vec![("STAGE0_AUDIT_LOG", "off")],
            Audit::NoFsync => vec![("STAGE0_AUDIT_LOG", log), ("STAGE0_AUDIT_SYNC", "off")],
            Audit::Fsync => vec![("STAGE0_AUDIT_LOG", log), ("STAGE0_AUDIT_SYNC", "on")],
        }
    }
}

/// What one configuration measured.
struct Row {
    audit: Audit,
    in_flight: usize,
    calls: usize,
    calls_per_s: f64,
    /// p50 and p99 of the sequential calls.
    latency: Option<(Duration, Duration)>,
    cpu_per_call: Duration,
    /// From the run under strace: records per `fdatasync`, and that run's calls/s.
    traced: Option<(f64, f64)>,
}

fn main() {
    // `cargo bench` passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|arg| arg == "--quick");
    let budget = Budget::new(quick);
    watchdog("audit", WATCHDOG);
    let binary = server_binary();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let logs = tempfile::Builder::new()
        .prefix("bench-audit-")
        .tempdir_in(&target)
        .expect("a temporary folder under target/");
    let load_before = load_average();

    let mut rows = Vec::new();
    let mut floors = Vec::new();
    for audit in [Audit::Off, Audit::NoFsync, Audit::Fsync] {
        if audit == Audit::Fsync {
            // Right before the runs it bounds: on a shared VM it moves tenfold within minutes.
            floors.push(fsync_floor(logs.path(), budget.seconds));
        }
        for in_flight in [1, IN_FLIGHT] {
            rows.push(measure(
                &binary,
                audit,
                in_flight,
                &budget,
                logs.path(),
                None,
            ));
        }
    }
    let strace = find_program("strace");
    if let Some(strace) = &strace {
        for row in rows.iter_mut().filter(|row| row.audit == Audit::Fsync) {
            let traced = measure(
                &binary,
                row.audit,
                row.in_flight,
                &budget,
                logs.path(),
                Some(strace),
            );
            row.traced = traced.traced;
        }
    }
    floors.push(fsync_floor(logs.path(), budget.seconds));
    let load_after = load_average();

    println!("\nserver {}", binary.display());
    println!(
        "logs in {} ({})",
        logs.path().display(),
        filesystem(logs.path())
    );
    for (when, (p50, p99)) in ["before", "after"].iter().zip(&floors) {
        println!(
            "disk floor {when} the fsync runs: append {RECORD_BYTES} bytes + fdatasync, \
             p50 {:.0} µs, p99 {:.0} µs",
            micros(*p50),
            micros(*p99)
        );
    }
    println!("load average before {load_before}, after {load_after}\n");
    print_table(&rows);
    if strace.is_none() {
        println!("(no `strace` on the PATH: records per fsync not measured)");
    }

    let mut figures = BTreeMap::new();
    figures.insert("server".to_owned(), json!(binary.display().to_string()));
    figures.insert(
        "mode".to_owned(),
        json!(if quick { "quick" } else { "full" }),
    );
    figures.insert("load_before".to_owned(), json!(load_before));
    figures.insert("load_after".to_owned(), json!(load_after));
    for (when, (p50, p99)) in ["before", "after"].iter().zip(&floors) {
        figures.insert(format!("fsync_floor_{when}_p50_us"), json!(micros(*p50)));
        figures.insert(format!("fsync_floor_{when}_p99_us"), json!(micros(*p99)));
    }
    for row in &rows {
        let key = format!("{}_{}", row.audit.name().replace('-', "_"), row.in_flight);
        let mut add = |name: &str, value: Value| {
            figures.insert(format!("{key}_{name}"), value);
        };
        add("calls", json!(row.calls));
        add("calls_per_s", json!(row.calls_per_s.round()));
        add("cpu_per_call_us", json!(micros(row.cpu_per_call)));
        if let Some((p50, p99)) = row.latency {
            add("p50_us", json!(micros(p50)));
            add("p99_us", json!(micros(p99)));
        }
        if let Some((records, calls_per_s)) = row.traced {
            add(
                "records_per_fsync",
                json!((records * 100.0).round() / 100.0),
            );
            add("traced_calls_per_s", json!(calls_per_s.round()));
        }
    }
    let path = target.join("bench-audit.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&figures).expect("JSON") + "\n",
    )
    .expect("target/bench-audit.json is writable");
    println!("\nfigures written to {}", path.display());
}

/// Runs one configuration in a fresh server process; under `strace` (its path) when given, to
/// count the `fdatasync` calls.
fn measure(
    binary: &Path,
    audit: Audit,
    in_flight: usize,
    budget: &Budget,
    logs: &Path,
    strace: Option<&Path>,
) -> Row {
    let log = logs.join(format!("{}-{in_flight}.jsonl", audit.name()));
    let log_text = log.to_str().expect("a UTF-8 temporary path");
    let counts = logs.join("strace-counts");
    let wrapper: Vec<&OsStr> = match strace {
        Some(strace) => [
            strace.as_os_str(),
            "-f".as_ref(),
            "--seccomp-bpf".as_ref(),
            "-c".as_ref(),
            "-e".as_ref(),
            "trace=fdatasync".as_ref(),
            "-o".as_ref(),
            counts.as_os_str(),
        ]
        .into(),
        None => Vec::new(),
    };
    let mut server = Server::spawn_under(&wrapper, binary, &audit.env(log_text), logs);
    server.initialize();
    server.call_checked(1, RESEARCH_TOPIC);
    let pid = server.child.id();
    let pipelined = in_flight > 1;

    // The warm-up, which also gives the rate the measured count is chosen from.
    let (warm_up, warm_up_time) = if pipelined {
        let calls = budget.pipelined.0;
        (
            calls,
            server.pipelined(RESEARCH_TOPIC, 2, calls, in_flight, |_| {}),
        )
    } else {
        budget.warm_up(|n| {
            server.call_timed(2 + n, RESEARCH_TOPIC);
        })
    };
    let calls = budget.calls(pipelined, warm_up, warm_up_time);
    let first = 2 + warm_up as u64;

    let cpu_before = cpu_ns(pid);
    let (elapsed, latency) = if pipelined {
        let elapsed = server.pipelined(RESEARCH_TOPIC, first, calls, in_flight, |_| {});
        (elapsed, None)
    } else {
        let start = Instant::now();
        let mut times: Vec<Duration> = (0..calls as u64)
            .map(|id| server.call_timed(first + id, RESEARCH_TOPIC))
            .collect();
        let elapsed = start.elapsed();
        (elapsed, Some(p50_p99(&mut times)))
    };
    // Under strace, `pid` is strace's, and its CPU time is not the server's.
    let cpu = cpu_ns(pid) - cpu_before;
    server.stop();

    let calls_per_s = calls as f64 / elapsed.as_secs_f64();
    let mut traced = None;
    if audit != Audit::Off {
        let records = count_lines(&log);
        let expected = 2 * (1 + warm_up + calls);
        assert_eq!(records, expected, "{}: two records per call", log.display());
        if strace.is_some() {
            let fsyncs = fdatasync_calls(&counts);
            traced = Some((records as f64 / fsyncs as f64, calls_per_s));
        }
        // The log has done its job; the next configuration should not pay for its pages.
        std::fs::remove_file(&log).expect("the log can be removed");
    }
    Row {
        audit,
        in_flight,
        calls,
        calls_per_s,
        latency,
        cpu_per_call: Duration::from_nanos(cpu / calls as u64),
        traced,
    }
}

/// The `fdatasync` calls in the summary `strace -c -o` wrote to `path` (0 when there were none).
fn fdatasync_calls(path: &Path) -> u64 {
    let summary = std::fs::read_to_string(path).expect("the strace summary");
    summary
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `% time  seconds  usecs/call  calls  [errors]  syscall`
            (fields.last() == Some(&"fdatasync")).then(|| fields[3].parse().expect("a count"))
        })
        .unwrap_or(0)
}

/// `program`'s path on the `PATH`, if it is there.
fn find_program(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|folder| folder.join(program))
        .find(|path| path.is_file())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:>9} {:>7} {:>9} {:>7} {:>9} {:>9} {:>9} {:>11} {:>16}",
        "audit",
        "in flight",
        "calls",
        "calls/s",
        "vs off",
        "p50 µs",
        "p99 µs",
        "CPU µs",
        "rec/fsync",
        "(calls/s traced)"
    );
    println!("{:-<116}", "");
    for row in rows {
        let off = rows
            .iter()
            .find(|other| other.audit == Audit::Off && other.in_flight == row.in_flight)
            .expect("an `off` row for each in-flight count");
        let (p50, p99) = row
            .latency
            .map_or(("".to_owned(), "".to_owned()), |(p50, p99)| {
                (format!("{:.1}", micros(p50)), format!("{:.1}", micros(p99)))
            });
        let (records, traced) = row.traced.map_or((String::new(), String::new()), |(r, c)| {
            (format!("{r:.2}"), format!("({c:.0})"))
        });
        println!(
            "{:<9} {:>9} {:>7} {:>9.0} {:>7} {:>9} {:>9} {:>9.1} {:>11} {:>16}",
            row.audit.name(),
            row.in_flight,
            row.calls,
            row.calls_per_s,
            format!("{:.0}%", 100.0 * row.calls_per_s / off.calls_per_s),
            p50,
            p99,
            micros(row.cpu_per_call),
            records,
            traced,
        );
    }
}
