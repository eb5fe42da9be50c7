//! The lean line client of the stdio benchmarks (`benches/e2e.rs`, `benches/audit.rs`, included
//! with `#[path]`): the server binary as a child process, driven with JSON-RPC lines written to
//! its stdin and answer lines read from its stdout with blocking I/O, matched to requests by
//! `id`. A raw line client measures the server and the pipe, not an MCP client library (an rmcp
//! client would add its own tasks and parsing to every figure).

// Each bench uses its own part of this module; the rest would be reported as dead code.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// `STAGE0_E2E_SERVER`, or the release binary, which must exist and be newer than the sources.
/// (`cargo bench` builds it with the bench profile, which is the release profile.)
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STAGE0_E2E_SERVER") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = root.join("target/release/mcp-server-stage0");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --release` first",
                binary.display()
            )
        });
    let newest_source = newest_modification(&root.join("src"))
        .max(newest_modification(&root.join("crates")))
        .max(newest_modification(&root.join("Cargo.lock")));
    assert!(
        built >= newest_source,
        "{} is older than the sources: run `cargo build --release` first",
        binary.display()
    );
    binary
}

fn newest_modification(path: &Path) -> SystemTime {
    let metadata = std::fs::metadata(path).expect("a readable source path");
    let own = metadata.modified().expect("a modification time");
    if !metadata.is_dir() {
        return own;
    }
    std::fs::read_dir(path)
        .expect("a readable source folder")
        .map(|entry| newest_modification(&entry.expect("a folder entry").path()))
        .fold(own, SystemTime::max)
}

/// Ends the whole process with an error once `limit` has passed: a hung server must not hang
/// the `bench` run forever.
pub fn watchdog(bench: &'static str, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{bench} bench: still running after {limit:?}, giving up");
        std::process::exit(1);
    });
}

/// The load average over 1, 5 and 15 minutes, as `/proc/loadavg` gives it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// CPU time the process `pid` has used so far, all threads, in nanoseconds.
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc task list")
        .filter_map(|task| {
            let path = task.ok()?.path().join("schedstat");
            let text = std::fs::read_to_string(path).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::TempDir::new().expect("a temporary folder")
}

/// The server as a child process, driven line by line over its stdin and stdout.
pub struct Server {
    pub child: Child,
    pub stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    line: String,
}

pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"e2e-bench","version":"0"}}}"#;
pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The arguments of the two benchmarked tools, as JSON text.
pub const CHECK_AUTHORIZATION: (&str, &str) = (
    "check-authorization",
    r#"{"goal":"Summarise the release notes","sideEffects":[],"successCriteria":["Summary produced"]}"#,
);
pub const RESEARCH_TOPIC: (&str, &str) = ("research-topic", r#"{"topic":"Rust async runtimes"}"#);

pub fn call_line(id: u64, (tool, arguments): (&str, &str)) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    )
}

/// The `id` of an answer line, read without parsing the whole line.
pub fn answer_id(line: &str) -> Option<u64> {
    let rest = &line[line.find(r#""id":"#)? + 5..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Server {
    /// Spawns the server with `env` only, stderr discarded, in a fresh temporary folder `dir` so
    /// no `.env` is read. Unless `env` sets them: `RUST_LOG=warn` (no per-check log line) and
    /// `STAGE0_AUDIT_LOG=off`, so that no bench ever writes the developer's default audit log
    /// (`~/.local/state/mcp-server-stage0/audit.jsonl`); a bench that measures auditing names
    /// its own file.
    pub fn spawn(binary: &Path, env: &[(&str, &str)], dir: &Path) -> Server {
        Server::spawn_under(&[], binary, env, dir)
    }

    /// [`Server::spawn`], with the server started by `wrapper` (a program and its arguments,
    /// such as `strace -c -o FILE`) when it is not empty. The child is then the wrapper.
    pub fn spawn_under(
        wrapper: &[&OsStr],
        binary: &Path,
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Server {
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("STAGE0_AUDIT_LOG", "off");
        command
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("the server binary starts");
        let stdin = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Server {
            child,
            stdin: Some(stdin),
            stdout,
            line: String::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(line.as_bytes())
            .expect("write to the server");
        stdin.write_all(b"\n").expect("write to the server");
        stdin.flush().expect("write to the server");
    }

    /// The next answer line; fails the run when the server closed stdout.
    pub fn receive(&mut self) -> &str {
        self.line.clear();
        let read = self
            .stdout
            .read_line(&mut self.line)
            .expect("read from the server");
        assert!(read > 0, "the server closed stdout");
        &self.line
    }

    /// `initialize` and `notifications/initialized`; returns the `initialize` answer.
    pub fn initialize(&mut self) -> Value {
        self.send(INITIALIZE);
        let answer: Value = serde_json::from_str(self.receive()).expect("a JSON answer");
        assert_eq!(answer["id"], 0, "{answer}");
        assert!(answer["result"]["serverInfo"].is_object(), "{answer}");
        self.send(INITIALIZED);
        answer
    }

    /// One call, checked fully: a result that is not an error.
    pub fn call_checked(&mut self, id: u64, call: (&str, &str)) {
        self.send(&call_line(id, call));
        let answer: Value = serde_json::from_str(self.receive()).expect("a JSON answer");
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"]["isError"], false, "{answer}");
        assert!(
            answer["result"]["structuredContent"].is_object(),
            "{answer}"
        );
    }

    /// One call, timed from the write to the end of the answer line; the answer is checked by
    /// its id and `"isError":false` without parsing the whole line.
    pub fn call_timed(&mut self, id: u64, call: (&str, &str)) -> Duration {
        let line = call_line(id, call);
        let start = Instant::now();
        self.send(&line);
        let answer = self.receive();
        let elapsed = start.elapsed();
        assert_eq!(answer_id(answer), Some(id), "{answer}");
        assert!(answer.contains(r#""isError":false"#), "{answer}");
        elapsed
    }

    /// `total` calls with ids `first..first + total`, `in_flight` at a time: a writer thread
    /// sends a call for each answer the reader (this thread) has taken, so the server always has
    /// `in_flight` calls to work on. Every answer must be a success, and each id is answered
    /// exactly once. `on_answer` is called with the count of answers so far after each one.
    /// Returns the time from the first write to the last answer.
    pub fn pipelined(
        &mut self,
        call: (&'static str, &'static str),
        first: u64,
        total: usize,
        in_flight: usize,
        mut on_answer: impl FnMut(usize),
    ) -> Duration {
        let mut stdin = self.stdin.take().expect("stdin is open");
        let (credit, credits) = mpsc::channel::<()>();
        let last = first + total as u64 - 1;
        let start = Instant::now();
        let writer = std::thread::spawn(move || {
            let mut available = in_flight;
            for id in first..=last {
                if available == 0 {
                    credits.recv().expect("the reader is alive");
                    available += 1;
                }
                while credits.try_recv().is_ok() {
                    available += 1;
                }
                let line = call_line(id, call);
                stdin
                    .write_all(line.as_bytes())
                    .expect("write to the server");
                stdin.write_all(b"\n").expect("write to the server");
                available -= 1;
                // Send now unless more credits are about to allow a larger write.
                if available == 0 || id == last {
                    stdin.flush().expect("write to the server");
                }
            }
            stdin
        });
        let mut answered = vec![false; total];
        for count in 1..=total {
            let answer = self.receive();
            let id = answer_id(answer).expect("an answer with an id");
            assert!(answer.contains(r#""isError":false"#), "{answer}");
            let index = id.wrapping_sub(first) as usize;
            assert!(
                index < total && !answered[index],
                "answer to an unknown or already answered id {id}"
            );
            answered[index] = true;
            let _ = credit.send(());
            on_answer(count);
        }
        let elapsed = start.elapsed();
        self.stdin = Some(writer.join().expect("the writer finished"));
        elapsed
    }

    /// Closes stdin and waits for a clean exit.
    pub fn stop(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("the server exits");
        assert!(status.success(), "the server exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
