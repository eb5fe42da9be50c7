//! Soak: 100,000 tool calls in one session, and the server's resident memory must not creep.
//!
//! `cargo bench --bench soak` builds the server with the bench (release) profile, then, once in
//! simulator mode and once in live mode against a fake Stage0 on 127.0.0.1 (always `ALLOW`),
//! drives one session over raw stdio: `research-topic` calls, [`IN_FLIGHT`] at a time, each answer
//! checked to be an `ALLOW` that ran. It reads `VmRSS` from `/proc/<pid>/status` after
//! [`EARLY`] and after [`CALLS`] answers, prints both, and exits non-zero when the second exceeds
//! the first by more than [`ALLOWED_GROWTH`] (a leak grows with every call; a steady state does
//! not). Linux only. Not part of `cargo test` or CI: it is a measurement, and it takes minutes.
//!
//! The server keeps its audit log as it does by default (on, every batch of records fsync'd), but
//! in a file of the run's temporary folder rather than the developer's own log: the audit writer
//! handles two records per call, and a soak is where a per-call leak in it would show. The
//! calls/s it prints are therefore bounded by the disk's fsync (group commit shares each among
//! the calls in flight); `benches/audit.rs` measures that cost, `benches/e2e.rs` the server
//! without it. The number of lines of the log is checked too: two per call.

#[path = "../tests/fake_stage0/mod.rs"]
mod fake_stage0;
#[path = "../tests/common/memory.rs"]
mod memory;

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use fake_stage0::{FakeStage0, Reply};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Calls in the session.
const CALLS: u64 = 100_000;
/// The answer count at which the baseline is sampled.
const EARLY: u64 = 10_000;
/// Requests written but not yet answered, at most.
const IN_FLIGHT: u64 = 32;
/// How much `VmRSS` may grow from [`EARLY`] to [`CALLS`]: 10 %.
const ALLOWED_GROWTH: f64 = 0.10;
/// The longest the client waits for any one line from the server.
const LINE_BOUND: Duration = Duration::from_secs(30);

/// What one soak run measured.
struct Figures {
    rss_early_kib: u64,
    rss_end_kib: u64,
    hwm_end_kib: u64,
    elapsed: Duration,
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; this target takes no options.
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let mut failed = false;
    for mode in ["simulator", "live"] {
        let figures = runtime.block_on(async {
            match mode {
                "simulator" => soak(&[]).await,
                _ => {
                    let fake = FakeStage0::start(|received| {
                        Reply::json(
                            200,
                            &json!({"verdict": "ALLOW", "decision": "GO",
                                    "reason": "soak", "request_id": received.request_id}),
                        )
                    })
                    .await;
                    let base_url = fake.base_url().to_owned();
                    soak(&[
                        ("STAGE0_API_KEY", "sk-soak-not-a-real-key"),
                        ("STAGE0_BASE_URL", &base_url),
                        ("STAGE0_TIMEOUT_MS", "10000"),
                    ])
                    .await
                }
            }
        });
        let growth = figures.rss_end_kib as f64 / figures.rss_early_kib as f64 - 1.0;
        let verdict = if growth > ALLOWED_GROWTH {
            failed = true;
            "FAIL"
        } else {
            "ok"
        };
        println!(
            "soak {mode:>9}: {CALLS} calls, {IN_FLIGHT} in flight, {:.1} s ({:.0} calls/s); \
             VmRSS after {EARLY}: {} KiB, after {CALLS}: {} KiB ({:+.1} %, limit +{:.0} %); \
             VmHWM {} KiB: {verdict}",
            figures.elapsed.as_secs_f64(),
            CALLS as f64 / figures.elapsed.as_secs_f64(),
            figures.rss_early_kib,
            figures.rss_end_kib,
            growth * 100.0,
            ALLOWED_GROWTH * 100.0,
            figures.hwm_end_kib,
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One session of [`CALLS`] calls against a server started with `env` (and nothing else).
async fn soak(env: &[(&str, &str)]) -> Figures {
    let dir = tempfile::TempDir::new().expect("a temporary working directory");
    let log = dir.path().join("audit.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-server-stage0"))
        .env_clear()
        .env("STAGE0_AUDIT_LOG", &log)
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let pid = child.id().expect("the server is running");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(LINE_BOUND, stdout.next_line())
            .await
            .expect("the server answers within the bound")
            .expect("stdout is readable")
            .expect("the server is still running");
        serde_json::from_str(&line).expect("the server writes JSON")
    };

    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "soak", "version": "0"}}});
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    write_lines(&mut stdin, &[initialize, initialized]).await;
    assert_eq!(next_line().await["id"], 0, "the answer to initialize");

    let started = Instant::now();
    let mut sent = 0;
    let mut answered = 0;
    let mut rss_early_kib = 0;
    while answered < CALLS {
        let mut batch = Vec::new();
        while sent < CALLS && sent - answered < IN_FLIGHT {
            sent += 1;
            batch.push(
                json!({"jsonrpc": "2.0", "id": sent, "method": "tools/call", "params": {
                "name": "research-topic",
                "arguments": {"topic": format!("soak topic number {sent}")}}}),
            );
        }
        write_lines(&mut stdin, &batch).await;
        let answer = next_line().await;
        let result = &answer["result"]["structuredContent"];
        assert!(
            result["verdict"] == "ALLOW" && result["executed"] == true,
            "call {} was not an ALLOW that ran: {answer}",
            answer["id"]
        );
        answered += 1;
        if answered == EARLY {
            rss_early_kib = memory::status_kib(pid, "VmRSS");
        }
    }
    let elapsed = started.elapsed();
    let figures = Figures {
        rss_early_kib,
        rss_end_kib: memory::status_kib(pid, "VmRSS"),
        hwm_end_kib: memory::status_kib(pid, "VmHWM"),
        elapsed,
    };
    drop(stdin);
    let status = tokio::time::timeout(LINE_BOUND, child.wait())
        .await
        .expect("the server exits when stdin closes")
        .expect("the server's exit status");
    assert!(status.success(), "the server exited with {status}");
    let log = std::fs::File::open(&log).expect("the audit log");
    let records = std::io::BufRead::split(std::io::BufReader::new(log), b'\n').count() as u64;
    assert_eq!(records, 2 * CALLS, "two audit records per call");
    figures
}

/// Writes each message as one line and flushes.
async fn write_lines(stdin: &mut tokio::process::ChildStdin, messages: &[Value]) {
    let mut bytes = Vec::new();
    for message in messages {
        bytes.extend_from_slice(message.to_string().as_bytes());
        bytes.push(b'\n');
    }
    stdin.write_all(&bytes).await.expect("the server reads");
    stdin.flush().await.expect("the server reads");
}
