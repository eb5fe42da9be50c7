//! Demo 1, ALLOW: a read-only research call passes the Stage0 check and its tool body runs.
//!
//! `cargo run --bin demo_allow`. Connects an MCP client to the real server in process, calls
//! `research-topic`, prints the verdict and the first lines of the tool output, and exits 0 only
//! if the verdict was `ALLOW` and the tool body ran (see `common.rs`).

mod common;

use std::process::ExitCode;

use anyhow::ensure;
use serde_json::json;
use stage0_guard::policy::wire::Verdict;

use common::Session;

#[tokio::main]
async fn main() -> ExitCode {
    common::run(demo).await
}

async fn demo(session: &Session) -> anyhow::Result<()> {
    common::banner(
        "ALLOW Scenario - Research Tool Call",
        "An agent wants to research a topic and return\n\
         informational summary. This is a low-risk operation.",
    );
    let report = session
        .call_tool("research-topic", json!({ "topic": "Rust async runtimes" }))
        .await?;
    common::expect_verdict(&report, Verdict::Allow, None)?;
    ensure!(
        report.executed,
        "the verdict was ALLOW but the `research-topic` body did not run"
    );
    common::explain(
        "✅ TOOL CALL ALLOWED",
        "The agent can proceed to execute the research tool, and the server ran it.",
        "This is safe because:",
        &[
            "No side effects (publish, deploy, etc.)",
            "Informational operation only",
            "No guardrail violations",
        ],
    );
    Ok(())
}
