//! Helpers shared by the integration tests that drive the built server binary as a child process.
//!
//! Every server is started in isolation: an empty environment plus only the variables the test
//! names (so a developer's `STAGE0_API_KEY` or `RUST_LOG` never leaks in), a fresh temporary
//! working directory (so no `.env` is read), and stderr captured so tests can assert on the logs.
//! Every wait is bounded by [`BOUND`]; nothing sleeps to wait for something to happen.
//!
//! Two ways to talk to the server: [`Session`] is a real rmcp client session, [`RawServer`]
//! writes JSON-RPC lines to stdin and reads stdout line by line.

// Each test crate uses its own part of this module; the rest would be reported as dead code.
#![allow(dead_code)]

pub mod http;
pub mod memory;
pub mod postgres;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// The server binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-server-stage0");

/// The longest any single wait may take (start-up, one call, shutdown) before the test fails.
/// Generous because the suite may share two cores with concurrent builds.
pub const BOUND: Duration = Duration::from_secs(20);

/// Every stand-in tool body says this in its output, so its absence proves the body did not run.
pub const STAND_IN: &str = "Stand-in action";

/// The file name of a test server's audit log, in its working directory.
pub const AUDIT_LOG: &str = "audit.jsonl";

/// A distinctive API key, so a leak is unmistakable in any text.
pub const SECRET_KEY: &str = "sk-test-DO-NOT-LEAK-9f8e7d";

/// Awaits `future`, failing the test with `what` if it takes longer than [`BOUND`].
pub async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(BOUND, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {BOUND:?}"),
    }
}

/// The server command: empty environment plus `env`, working directory `dir`, killed on drop.
///
/// Its audit log is [`AUDIT_LOG`] in `dir` unless `env` sets `STAGE0_AUDIT_LOG` (or puts the log
/// in a database, `STAGE0_DATABASE_URL`), so no test
/// writes to the developer's own log.
pub fn command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear();
    // A server whose log is in a database (tests/postgres_replicas.rs) may not name a file too.
    if !env.iter().any(|(name, _)| *name == "STAGE0_DATABASE_URL") {
        cmd.env("STAGE0_AUDIT_LOG", dir.join(AUDIT_LOG));
    }
    cmd.envs(env.iter().copied())
        .current_dir(dir)
        .kill_on_drop(true);
    cmd
}

/// The environment of a live-mode server that asks the Stage0 at `base_url`.
///
/// Its operator allows every role (`STAGE0_ACTOR_ROLE=admin`), so a claimed role reaches the fake
/// as given; the role ceiling itself is tested in `tests/claims.rs`.
pub fn live_env<'a>(base_url: &'a str, timeout_ms: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("STAGE0_API_KEY", SECRET_KEY),
        ("STAGE0_BASE_URL", base_url),
        ("STAGE0_TIMEOUT_MS", timeout_ms),
        ("STAGE0_ACTOR_ROLE", "admin"),
    ]
}

/// A base URL on 127.0.0.1 where nothing listens: connections to it are refused.
pub fn refused_base_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    let port = listener.local_addr().expect("a bound address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Reads `reader` to its end in the background; the handle yields everything read, lossily
/// decoded. Reading continuously also keeps the child from blocking on a full pipe.
pub fn collect(mut reader: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// One `tools/call` result, reduced to what the tests assert on.
#[derive(Debug)]
pub struct Outcome {
    /// `isError`, `false` when absent.
    pub is_error: bool,
    /// The text of every text content block, joined.
    pub text: String,
    /// `structuredContent`, `Null` when absent.
    pub structured: Value,
    /// The whole result as JSON text, for "never appears anywhere" checks.
    pub raw: String,
}

impl Outcome {
    pub fn from_result(result: &CallToolResult) -> Self {
        let value = serde_json::to_value(result).expect("a tool result serialises");
        let text = value["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|block| block["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        Outcome {
            is_error: value["isError"].as_bool().unwrap_or(false),
            text,
            structured: value
                .get("structuredContent")
                .cloned()
                .unwrap_or(Value::Null),
            raw: value.to_string(),
        }
    }

    /// A string field of the structured content, failing the test when it is not one.
    pub fn field(&self, name: &str) -> &str {
        self.structured[name]
            .as_str()
            .unwrap_or_else(|| panic!("structured `{name}` is not a string: {self:#?}"))
    }
}

/// A real MCP client session (rmcp) with the server binary as its child process.
///
/// The client is `C`: `()` declares no capabilities; a test's own [`ClientHandler`] can, for
/// instance, answer elicitations.
pub struct Session<C: ClientHandler = ()> {
    pub client: RunningService<RoleClient, C>,
    stderr: JoinHandle<String>,
    /// The working directory, when the session made it.
    _dir: Option<TempDir>,
}

impl Session {
    /// Spawns the server with `env` (and nothing else) and completes `initialize` as a client
    /// that declares no capabilities.
    pub async fn start(env: &[(&str, &str)]) -> Session {
        Session::start_with(env, ()).await
    }
}

impl<C: ClientHandler> Session<C> {
    /// Spawns the server with `env` (and nothing else) and completes `initialize` as `client`.
    pub async fn start_with(env: &[(&str, &str)], client: C) -> Session<C> {
        let dir = TempDir::new().expect("a temporary working directory");
        let mut session = Session::spawn(command(dir.path(), env), client).await;
        session._dir = Some(dir);
        session
    }

    /// Spawns `server` (made by [`command`], in a folder the caller keeps) and completes
    /// `initialize` as `client`.
    pub async fn spawn(server: Command, client: C) -> Session<C> {
        let (transport, stderr) = TokioChildProcess::builder(server)
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let stderr = collect(stderr.expect("stderr is piped"));
        let client = bounded("initialize", client.serve(transport))
            .await
            .expect("the server completes initialize");
        Session {
            client,
            stderr,
            _dir: None,
        }
    }

    /// Calls `tool` with `arguments` (a JSON object); the JSON-RPC result or error as rmcp gives it.
    pub async fn try_call(
        &self,
        tool: &str,
        arguments: Value,
    ) -> Result<CallToolResult, ServiceError> {
        let arguments = arguments
            .as_object()
            .cloned()
            .expect("tool arguments are a JSON object");
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        bounded(&format!("tools/call {tool}"), self.client.call_tool(params)).await
    }

    /// Calls `tool` and fails the test on a JSON-RPC error.
    pub async fn call(&self, tool: &str, arguments: Value) -> Outcome {
        match self.try_call(tool, arguments.clone()).await {
            Ok(result) => Outcome::from_result(&result),
            Err(error) => panic!("tools/call {tool} {arguments} failed: {error}"),
        }
    }

    /// Closes stdin, waits for the server to exit and returns everything it wrote to stderr.
    pub async fn stop(self) -> String {
        bounded("client shutdown", self.client.cancel())
            .await
            .expect("the client session shuts down");
        bounded("the server's stderr to close", self.stderr)
            .await
            .expect("the stderr reader finishes")
    }
}

/// The server driven line by line: raw JSON-RPC on stdin, every stdout line kept and checked.
pub struct RawServer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
    /// Every line the server has written to stdout so far.
    pub lines: Vec<String>,
    _dir: TempDir,
}

/// What a [`RawServer`] left behind once it exited.
pub struct Exit {
    pub status: ExitStatus,
    /// Every line the server wrote to stdout over its whole life.
    pub stdout_lines: Vec<String>,
    pub stderr: String,
}

impl RawServer {
    /// Spawns the server in simulator mode with piped stdin, stdout and stderr.
    pub fn spawn() -> RawServer {
        RawServer::spawn_with(&[])
    }

    /// Spawns the server with `env` (and nothing else), stdin, stdout and stderr piped.
    pub fn spawn_with(env: &[(&str, &str)]) -> RawServer {
        let dir = TempDir::new().expect("a temporary working directory");
        let mut child = command(dir.path(), env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        RawServer {
            child,
            stdin,
            stdout,
            stderr: Some(stderr),
            lines: Vec::new(),
            _dir: dir,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// Writes `line` and a newline to the server's stdin.
    pub async fn send_line(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.send_bytes(&bytes).await;
    }

    /// Writes `bytes` to the server's stdin exactly as given (no newline added).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        let write = async {
            stdin.write_all(bytes).await?;
            stdin.flush().await
        };
        bounded("writing to stdin", write)
            .await
            .expect("the server reads its stdin");
    }

    /// Fails the test if the server process has exited.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("the server's status");
        assert!(status.is_none(), "the server exited: {status:?}");
    }

    /// The server's peak and current resident memory, in KiB (`VmHWM`, `VmRSS` in
    /// `/proc/<pid>/status`; Linux only).
    pub fn memory_kib(&self) -> (u64, u64) {
        let pid = self.child.id().expect("the server is running");
        (
            memory::status_kib(pid, "VmHWM"),
            memory::status_kib(pid, "VmRSS"),
        )
    }

    /// Sends `message` as one line of JSON.
    pub async fn send(&mut self, message: Value) {
        self.send_line(&message.to_string()).await;
    }

    /// Reads stdout until the response with `id` arrives (answers may come out of order).
    pub async fn response(&mut self, id: u64) -> Value {
        loop {
            let line = bounded(
                &format!("the response to request {id}"),
                self.stdout.next_line(),
            )
            .await
            .expect("stdout is readable")
            .unwrap_or_else(|| panic!("stdout closed before the response to {id}"));
            let message = assert_json_rpc(&line);
            self.lines.push(line);
            if message["id"] == json!(id) {
                return message;
            }
        }
    }

    /// The next message the server writes to stdout; `None` once stdout closes.
    pub async fn message(&mut self) -> Option<Value> {
        let line = bounded("the next stdout line", self.stdout.next_line())
            .await
            .expect("stdout is readable")?;
        let message = assert_json_rpc(&line);
        self.lines.push(line);
        Some(message)
    }

    /// Kills the server with SIGKILL, so it can finish nothing, and waits until it is gone.
    pub async fn kill(mut self) -> ExitStatus {
        self.child.start_kill().expect("the server can be killed");
        bounded("the killed server to exit", self.child.wait())
            .await
            .expect("the server's exit status")
    }

    /// Sends a request and waits for its response.
    pub async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.response(id).await
    }

    /// `initialize` (as request `id`) followed by `notifications/initialized`.
    pub async fn initialize(&mut self, id: u64) -> Value {
        let response = self
            .request(
                id,
                "initialize",
                json!({
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw-test-client", "version": "0"}
                }),
            )
            .await;
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        response
    }

    /// The server's stdin, for a test that writes while it reads stdout (a pipelined flood that
    /// would fill both pipes otherwise); dropping it closes stdin.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin is still open")
    }

    /// Closes the server's stdin (EOF), as a client does when it is done.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the server to exit on its own, then drains stdout and stderr.
    pub async fn exit(mut self) -> Exit {
        let status = bounded("the server to exit", self.child.wait())
            .await
            .expect("the server's exit status");
        while let Some(line) = bounded("the rest of stdout", self.stdout.next_line())
            .await
            .expect("stdout is readable")
        {
            assert_json_rpc(&line);
            self.lines.push(line);
        }
        let stderr = self.stderr.take().expect("stderr is collected once");
        let stderr = bounded("the server's stderr to close", stderr)
            .await
            .expect("the stderr reader finishes");
        Exit {
            status,
            stdout_lines: std::mem::take(&mut self.lines),
            stderr,
        }
    }
}

/// Parses one stdout line, failing the test unless it is a JSON-RPC 2.0 message.
pub fn assert_json_rpc(line: &str) -> Value {
    let message: Value = serde_json::from_str(line)
        .unwrap_or_else(|error| panic!("stdout line is not JSON ({error}): {line}"));
    assert_eq!(
        message["jsonrpc"], "2.0",
        "stdout line is not JSON-RPC 2.0: {line}"
    );
    message
}

/// The records of an audit log that ends with a whole line: every line a JSON object, in file
/// order; fails the test otherwise.
pub fn audit_records(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    let bytes = std::fs::read(path).expect("the audit log is readable");
    assert!(bytes.ends_with(b"\n"), "the log ends in a torn line");
    bytes[..bytes.len() - 1]
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_slice(line).unwrap_or_else(|error| {
                panic!(
                    "line {} is not a whole JSON object ({error}): {}",
                    index + 1,
                    String::from_utf8_lossy(line)
                )
            })
        })
        .collect()
}

/// A temporary folder and the path of an audit log in it (not created).
pub fn temp_log() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("a temporary folder");
    let path = dir.path().join("audit.jsonl");
    (dir, path)
}

/// `path` as the value of `STAGE0_AUDIT_LOG`.
pub fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// A `tools/call` request of `tool` with `arguments`, as request `id`.
pub fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}
    })
}
