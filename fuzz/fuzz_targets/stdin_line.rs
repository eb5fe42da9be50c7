//! Fuzz target: one line on the server's stdin, through the same transport, lifecycle gate,
//! rmcp session and guarded server as the binary (simulator mode, in-process pipes).
//!
//! The first input byte chooses whether the client initializes first (odd) or sends the line
//! before `initialize` (even); the rest is the line. Afterwards a `ping` must be answered (the
//! server neither died nor hung: the answer has to come within [`BOUND`]), and every line the
//! server wrote must be a JSON-RPC 2.0 message. A panic or a missed answer is a crash.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stage0_guard::approval::Approvals;
use stage0_guard::claims::Operator;
use stage0_guard::guard::Guard;
use mcp_server_stage0::server::stage0_server;
use stage0_guard::policy::PolicyClient;
use stage0_guard::transport;
use rmcp::ServiceExt as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::runtime::Runtime;

/// How long the server may take to answer the closing `ping` before the input counts as a hang.
const BOUND: Duration = Duration::from_secs(5);

const INITIALIZE: &[u8] = br#"{"jsonrpc":"2.0","id":"fuzz-init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"fuzz","version":"0"}}}
{"jsonrpc":"2.0","method":"notifications/initialized"}
"#;
const PING: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":\"fuzz-ping\",\"method\":\"ping\"}\n";

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, line)) = data.split_first() else {
        return;
    };
    RUNTIME.block_on(session(mode & 1 == 1, line));
});

async fn session(initialize_first: bool, line: &[u8]) {
    let (mut client_write, server_read) = tokio::io::duplex(64 * 1024);
    let (server_write, client_read) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let guard = Guard::new(
            PolicyClient::Simulator,
            Operator::default(),
            Approvals::default(),
        );
        if let Ok(service) = stage0_server(guard)
            .serve(transport::bounded(server_read, server_write))
            .await
        {
            let _ = service.waiting().await;
        }
    });

    let mut input = Vec::with_capacity(INITIALIZE.len() + line.len() + PING.len() + 1);
    if initialize_first {
        input.extend_from_slice(INITIALIZE);
    }
    input.extend_from_slice(line);
    input.push(b'\n');
    input.extend_from_slice(PING);
    // Written from its own task: the server may answer before it has read everything.
    let writer = tokio::spawn(async move {
        let _ = client_write.write_all(&input).await;
        client_write
    });

    let mut lines = BufReader::new(client_read).lines();
    let answered = tokio::time::timeout(BOUND, async {
        while let Some(out) = lines.next_line().await.expect("stdout is UTF-8 lines") {
            let message: Value = serde_json::from_str(&out)
                .unwrap_or_else(|error| panic!("stdout line is not JSON ({error}): {out}"));
            assert_eq!(message["jsonrpc"], "2.0", "not JSON-RPC 2.0: {out}");
            if message["id"] == "fuzz-ping" {
                return true;
            }
        }
        false
    })
    .await;
    match answered {
        Ok(true) => {}
        Ok(false) => panic!("the server closed stdout without answering the ping"),
        Err(_) => panic!("the server did not answer the ping within {BOUND:?}"),
    }
    drop(writer.await.expect("the writer task does not panic"));
    tokio::time::timeout(BOUND, server)
        .await
        .expect("the server stops when stdin closes")
        .expect("the server task does not panic");
}
