//! End-to-end figures of the release server binary over stdio: `cargo bench --bench e2e`.
//!
//! Run `cargo build --release` first: this harness drives the binary at
//! `target/release/mcp-server-stage0` (or `STAGE0_E2E_SERVER`), and refuses one older than the
//! sources. `cargo bench --bench e2e -- --quick` is a fast smoke run with a tenth of the calls.
//!
//! The client is deliberately lean (`common/line_client.rs`, shared with `benches/audit.rs`): it
//! writes JSON-RPC lines to the child's stdin and reads answer lines from its stdout with
//! blocking I/O, matching answers to requests by `id`. A raw line client measures the server and
//! the pipe, not an MCP client library (an rmcp client would add its own tasks and parsing to
//! every figure).
//!
//! The audit log is off (`STAGE0_AUDIT_LOG=off`) in every run here, although a server started
//! without the variable writes one, fsync'd, to the per-user default. These figures are the cost
//! of the guard and the protocol, comparable with those taken before the audit log existed (issue
//! 5's targets are about them); with the default, the sequential figures would be those of the
//! disk's fsync (two per call), and every run would append to the developer's own log.
//! `benches/audit.rs` measures what auditing adds, off, without fsync and with fsync. "Audit log
//! line" below means the stderr line `stage0 check` (`RUST_LOG=info`), not the audit log file.
//!
//! It measures, in simulator mode with the per-check log lines off (`RUST_LOG=warn`) unless said
//! otherwise:
//!
//! - cold start: spawn → `initialize` answer, median and max of 20 fresh processes;
//! - sequential `tools/call` latency of `check-authorization` and `research-topic`:
//!   p50 / p99 / max over 10,000 calls each, after 1,000 warm-up calls; the same again in `cedar`
//!   mode (`_cedar`: `STAGE0_POLICY` naming the shipped `simulator.cedar`, the simulator's rules
//!   as a Cedar policy set, so only the policy decision point differs);
//! - pipelined throughput: 64 calls in flight, calls/s over 100,000 calls, every answer matched
//!   to its request id (each id answered exactly once);
//! - the server's CPU time per call (all its threads, from `/proc/<pid>/task/*/schedstat`) in
//!   the sequential and pipelined runs: what a call costs whatever the machine's wake-up latency;
//! - the server's peak resident memory (`VmHWM` in `/proc/<pid>/status`) after `initialize`, and
//!   at 10,000 and 100,000 pipelined calls;
//! - live mode against a fake Stage0 on 127.0.0.1 that answers at once: `research-topic` latency,
//!   the fake's own latency (the same `POST /check` sent straight to it, keep-alive), the
//!   difference, and how many TCP connections the server opened (accepts counted by the fake);
//! - the floor: the same line size echoed by `cat` over the same kind of pipes, which no stdio
//!   server can beat on this machine.
//!
//! It prints a table and writes the same figures as JSON to `target/bench-e2e.json`.

#[path = "common/line_client.rs"]
mod line_client;
#[path = "../tests/common/memory.rs"]
mod memory;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use line_client::{
    CHECK_AUTHORIZATION, INITIALIZE, RESEARCH_TOPIC, Server, answer_id, cpu_ns, load_average,
    scratch_dir, server_binary, watchdog,
};

/// The whole run is aborted after this long: a hung server must not hang the bench forever.
const WATCHDOG: Duration = Duration::from_secs(30 * 60);

/// Calls kept in flight by the pipelined client.
const IN_FLIGHT: usize = 64;

/// How many of everything: the full run, or a tenth of it with `--quick`.
struct Sizes {
    cold_starts: usize,
    warm_up: usize,
    sequential: usize,
    pipelined: usize,
    rss_checkpoint: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                cold_starts: 5,
                warm_up: 100,
                sequential: 1_000,
                pipelined: 10_000,
                rss_checkpoint: 1_000,
            }
        } else {
            Sizes {
                cold_starts: 20,
                warm_up: 1_000,
                sequential: 10_000,
                pipelined: 100_000,
                rss_checkpoint: 10_000,
            }
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|arg| arg == "--quick");
    let sizes = Sizes::new(quick);
    watchdog("e2e", WATCHDOG);
    let binary = server_binary();
    let mut figures = Figures::default();
    figures.text("server", &binary.display().to_string());
    figures.text("mode", if quick { "quick" } else { "full" });
    figures.text("load_before", &load_average());

    cold_start(&binary, &sizes, &mut figures);
    // Right before the sequential calls, so the floor is that of the same moment: on a shared
    // VM it moves by a factor of ten with the load on the other vCPU (BENCHMARKS.md).
    pipe_floor(&sizes, &mut figures);
    sequential(&binary, &sizes, &mut figures);
    pipelined(&binary, &sizes, &mut figures);
    live(&binary, &sizes, &mut figures);

    figures.text("load_after", &load_average());
    figures.print();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-e2e.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&figures.json).expect("JSON") + "\n",
    )
    .expect("target/bench-e2e.json is writable");
    println!("figures written to {}", path.display());
}

// ---------------------------------------------------------------------------------------------
// The measurements.

fn cold_start(binary: &Path, sizes: &Sizes, figures: &mut Figures) {
    let dir = scratch_dir();
    let mut times = Vec::with_capacity(sizes.cold_starts);
    for _ in 0..sizes.cold_starts {
        let start = Instant::now();
        let mut server = Server::spawn(binary, &[], dir.path());
        server.send(INITIALIZE);
        let answer = server.receive().to_owned();
        times.push(start.elapsed());
        assert_eq!(answer_id(&answer), Some(0), "{answer}");
        server.stop();
    }
    times.sort();
    figures.duration("cold_start_median", times[times.len() / 2]);
    figures.duration("cold_start_max", *times.last().expect("some starts"));
}

fn sequential(binary: &Path, sizes: &Sizes, figures: &mut Figures) {
    // The shipped Cedar translation of the simulator's rules, so that `_cedar` decides the same
    // calls the same way and differs only in the policy decision point.
    let cedar = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/stage0-guard/policies/simulator.cedar")
        .display()
        .to_string();
    for (audit, env) in [
        ("", &[][..]),
        ("_cedar", &[("STAGE0_POLICY", cedar.as_str())][..]),
        ("_audit_log_on", &[("RUST_LOG", "info,rmcp=warn")][..]),
    ] {
        let dir = scratch_dir();
        let mut server = Server::spawn(binary, env, dir.path());
        server.initialize();
        let mut id = 1;
        let calls = if audit == "_audit_log_on" {
            &[CHECK_AUTHORIZATION][..]
        } else {
            &[CHECK_AUTHORIZATION, RESEARCH_TOPIC][..]
        };
        for &call in calls {
            server.call_checked(id, call);
            id += 1;
            for _ in 0..sizes.warm_up {
                server.call_timed(id, call);
                id += 1;
            }
            let cpu_before = cpu_ns(server.child.id());
            let mut times: Vec<Duration> = (0..sizes.sequential)
                .map(|_| {
                    id += 1;
                    server.call_timed(id, call)
                })
                .collect();
            let cpu = cpu_ns(server.child.id()) - cpu_before;
            let name = format!("sequential_{}{audit}", call.0.replace('-', "_"));
            figures.percentiles(&name, &mut times);
            figures.duration(
                &format!("{name}_server_cpu_per_call"),
                Duration::from_nanos(cpu / sizes.sequential as u64),
            );
        }
        if audit.is_empty() {
            figures.kib("peak_rss_sequential_kib", peak_rss_kib(&server));
        }
        server.stop();
    }
}

fn pipelined(binary: &Path, sizes: &Sizes, figures: &mut Figures) {
    let dir = scratch_dir();
    let mut server = Server::spawn(binary, &[], dir.path());
    server.initialize();
    figures.kib("peak_rss_after_initialize_kib", peak_rss_kib(&server));
    let pid = server.child.id();
    let checkpoint = sizes.rss_checkpoint;
    let mut rss_at_checkpoint = 0;
    let cpu_before = cpu_ns(pid);
    let elapsed = server.pipelined(
        CHECK_AUTHORIZATION,
        1,
        sizes.pipelined,
        IN_FLIGHT,
        |count| {
            if count == checkpoint {
                rss_at_checkpoint = memory::status_kib(pid, "VmHWM");
            }
        },
    );
    let cpu = cpu_ns(pid) - cpu_before;
    let total = sizes.pipelined;
    figures.number(
        "pipelined_calls_per_s",
        (total as f64 / elapsed.as_secs_f64()).round(),
    );
    figures.duration(
        "pipelined_server_cpu_per_call",
        Duration::from_nanos(cpu / total as u64),
    );
    figures.kib(&format!("peak_rss_at_{checkpoint}_kib"), rss_at_checkpoint);
    figures.kib(&format!("peak_rss_at_{total}_kib"), peak_rss_kib(&server));
    server.stop();
}

/// The server's peak resident memory so far.
fn peak_rss_kib(server: &Server) -> u64 {
    memory::status_kib(server.child.id(), "VmHWM")
}

/// The body of every answer of the fake Stage0: an `ALLOW` with the usual fields.
fn allow_body() -> String {
    json!({
        "verdict": "ALLOW",
        "decision": "GO",
        "reason": "Low-risk informational request",
        "policy_version": "fake-1",
        "risk_score": 10,
        "high_risk": false
    })
    .to_string()
}

/// A fake Stage0 on 127.0.0.1 that answers every request at once with an `ALLOW`, keeping
/// connections alive; counts the connections it accepted.
struct FakeStage0 {
    base_url: String,
    accepted: Arc<AtomicUsize>,
}

impl FakeStage0 {
    fn start() -> FakeStage0 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let base_url = format!("http://{}", listener.local_addr().expect("an address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let response = {
            let body = allow_body();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let response: Arc<[u8]> = response.into_bytes().into();
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(socket) = socket else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                std::thread::spawn(move || serve_connection(socket, &response));
            }
        });
        FakeStage0 { base_url, accepted }
    }
}

/// Answers each request on `socket` with `response` until the client closes it.
fn serve_connection(socket: TcpStream, response: &[u8]) {
    socket.set_nodelay(true).expect("TCP_NODELAY");
    let mut writer = socket.try_clone().expect("a second handle");
    let mut reader = BufReader::new(socket);
    while read_request(&mut reader).is_some() {
        if writer.write_all(response).is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request (head and `content-length` body); `None` at end of stream.
fn read_request(reader: &mut impl BufRead) -> Option<()> {
    let mut content_length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()
}

/// The fake's own latency: the `POST /check` the server sends, straight to the fake over one
/// keep-alive connection, from the write to the end of the answer.
fn fake_round_trips(fake: &FakeStage0, count: usize) -> Vec<Duration> {
    let address = fake.base_url.trim_start_matches("http://");
    let socket = TcpStream::connect(address).expect("the fake accepts");
    socket.set_nodelay(true).expect("TCP_NODELAY");
    let mut writer = socket.try_clone().expect("a second handle");
    let mut reader = BufReader::new(socket);
    let body = r#"{"goal":"Research and summarize: Rust async runtimes","success_criteria":["Summary is accurate and relevant","No external side effects"],"constraints":["read-only"],"tools":["web_search","read_file"],"side_effects":[],"context":{},"pro":false}"#;
    let request = format!(
        "POST /check HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         x-api-key: bench\r\nx-request-id: 00000000-0000-4000-8000-000000000000\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut line = String::new();
    (0..count)
        .map(|_| {
            let start = Instant::now();
            writer
                .write_all(request.as_bytes())
                .expect("write to the fake");
            let mut length = 0;
            loop {
                line.clear();
                reader.read_line(&mut line).expect("read from the fake");
                if line == "\r\n" {
                    break;
                }
                if let Some(value) = line.strip_prefix("content-length:") {
                    length = value.trim().parse().expect("a length");
                }
            }
            let mut answer = vec![0; length];
            reader.read_exact(&mut answer).expect("the fake's body");
            start.elapsed()
        })
        .collect()
}

fn live(binary: &Path, sizes: &Sizes, figures: &mut Figures) {
    let fake = FakeStage0::start();
    let dir = scratch_dir();
    let env = [
        ("STAGE0_API_KEY", "bench-key"),
        ("STAGE0_BASE_URL", fake.base_url.as_str()),
        ("STAGE0_TIMEOUT_MS", "5000"),
    ];
    let mut server = Server::spawn(binary, &env, dir.path());
    server.initialize();
    server.call_checked(1, RESEARCH_TOPIC);
    for id in 0..sizes.warm_up as u64 {
        server.call_timed(2 + id, RESEARCH_TOPIC);
    }
    let first = 2 + sizes.warm_up as u64;
    let mut times: Vec<Duration> = (0..sizes.sequential as u64)
        .map(|id| server.call_timed(first + id, RESEARCH_TOPIC))
        .collect();
    let connections = fake.accepted.load(Ordering::SeqCst);
    server.stop();
    let mut fake_times = fake_round_trips(&fake, sizes.sequential);

    let live_p50 = figures.percentiles("live_research_topic", &mut times);
    let fake_p50 = figures.percentiles("fake_stage0_own", &mut fake_times);
    figures.duration("live_overhead_p50", live_p50.saturating_sub(fake_p50));
    figures.number("live_tcp_connections", connections as f64);
    figures.number("live_calls", (1 + sizes.warm_up + sizes.sequential) as f64);
}

/// The floor of any stdio server here: a line the size of an answer, echoed by `cat`.
fn pipe_floor(sizes: &Sizes, figures: &mut Figures) {
    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cat starts");
    let mut stdin = cat.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(cat.stdout.take().expect("piped stdout"));
    let line = "x".repeat(2_000) + "\n";
    let mut echo = String::new();
    let mut times: Vec<Duration> = (0..sizes.sequential)
        .map(|_| {
            let start = Instant::now();
            stdin.write_all(line.as_bytes()).expect("write to cat");
            echo.clear();
            stdout.read_line(&mut echo).expect("read from cat");
            start.elapsed()
        })
        .collect();
    drop(stdin);
    cat.wait().expect("cat exits");
    figures.percentiles("pipe_floor_cat_echo", &mut times);
}

// ---------------------------------------------------------------------------------------------
// The report.

/// Figures in the order taken: printed as a table, written as JSON.
#[derive(Default)]
struct Figures {
    rows: Vec<(String, String)>,
    json: BTreeMap<String, Value>,
}

impl Figures {
    fn text(&mut self, name: &str, value: &str) {
        self.rows.push((name.to_owned(), value.to_owned()));
        self.json.insert(name.to_owned(), json!(value));
    }

    fn number(&mut self, name: &str, value: f64) {
        self.rows.push((name.to_owned(), format!("{value}")));
        self.json.insert(name.to_owned(), json!(value));
    }

    fn kib(&mut self, name: &str, kib: u64) {
        let mib = kib as f64 / 1024.0;
        self.rows
            .push((name.to_owned(), format!("{kib} KiB ({mib:.1} MiB)")));
        self.json.insert(name.to_owned(), json!(kib));
    }

    /// A duration, in microseconds with one decimal in the JSON (`name_us`).
    fn duration(&mut self, name: &str, value: Duration) {
        let us = (value.as_secs_f64() * 1e7).round() / 10.0;
        self.rows.push((name.to_owned(), format!("{us} µs")));
        self.json.insert(format!("{name}_us"), json!(us));
    }

    /// p50, p99 and max of `times` (sorted in place); returns p50.
    fn percentiles(&mut self, name: &str, times: &mut [Duration]) -> Duration {
        times.sort();
        let at = |percent: usize| times[(times.len() * percent / 100).min(times.len() - 1)];
        let p50 = at(50);
        self.duration(&format!("{name}_p50"), p50);
        self.duration(&format!("{name}_p99"), at(99));
        self.duration(&format!("{name}_max"), *times.last().expect("some times"));
        p50
    }

    fn print(&self) {
        let width = self
            .rows
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        println!("\n{:width$}  value", "figure");
        println!("{:-<width$}  {:-<24}", "", "");
        for (name, value) in &self.rows {
            println!("{name:width$}  {value}");
        }
    }
}
