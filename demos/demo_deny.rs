//! Demo 2, DENY: publishing without approval is blocked before the tool body runs.
//!
//! `cargo run --bin demo_deny`. Connects an MCP client to the real server in process, calls
//! `publish-content`, prints the verdict and its issues, and exits 0 only if the verdict was
//! `DENY` and nothing was published (see `common.rs`).

mod common;

use std::process::ExitCode;

use serde_json::json;
use stage0_guard::policy::wire::Verdict;

use common::Session;

#[tokio::main]
async fn main() -> ExitCode {
    common::run(demo).await
}

async fn demo(session: &Session) -> anyhow::Result<()> {
    common::banner(
        "DENY Scenario - Publish Tool Call",
        "An agent attempts to publish content to a public\n\
         channel without proper authorization. This is a high-risk\n\
         operation that should be blocked.",
    );
    let report = session
        .call_tool(
            "publish-content",
            json!({
                "content": "Our Q3 roadmap, straight from the research notes.",
                "channel": "blog",
            }),
        )
        .await?;
    common::expect_verdict(&report, Verdict::Deny, None)?;
    common::explain(
        "⛔ TOOL CALL BLOCKED",
        "The agent is NOT allowed to execute this tool.",
        "This is correct because:",
        &[
            "\"publish\" side effect requires approval guardrails",
            "No human approval was provided",
            "Publishing without review can cause trust/compliance issues",
        ],
    );
    Ok(())
}
