//! Demo 3, DEFER: the two ways a call is held for a human instead of being run or refused.
//!
//! `cargo run --bin demo_defer`. Connects an MCP client to the real server in process and shows:
//! (a) a vague request (`check-authorization`, "help me think about this") deferred with
//! clarifying questions (`UNCLEAR_VALUE_SIGNAL`); (b) a retry loop (`retry-workflow`) that runs at
//! `retryCount` 4 and is deferred at 5 with questions for the reviewer
//! (`LOOP_THRESHOLD_EXCEEDED`). Exits 0 only if it saw both deferrals (see `common.rs`); the
//! retry below the threshold is shown, not required, because a live policy may treat it otherwise.

mod common;

use std::process::ExitCode;

use mcp_server_stage0::stage0::wire::Verdict;
use serde_json::json;

use common::Session;

#[tokio::main]
async fn main() -> ExitCode {
    common::run(demo).await
}

async fn demo(session: &Session) -> anyhow::Result<()> {
    common::banner(
        "DEFER Scenario - Unclear/Vague Request",
        "An agent receives a vague request without clear\n\
         success criteria or value proposition. Stage0 DEFERs to\n\
         request more context before proceeding.",
    );
    let vague = session
        .call_tool(
            "check-authorization",
            json!({ "goal": "help me think about this", "sideEffects": [] }),
        )
        .await?;
    common::expect_verdict(&vague, Verdict::Defer, Some("UNCLEAR_VALUE_SIGNAL"))?;
    common::explain(
        "⏸️ TOOL CALL DEFERRED",
        "The agent should NOT proceed automatically.",
        "Human review is required because:",
        &[
            "Request is too vague to evaluate value",
            "Success criteria are unclear",
            "More context is needed before execution",
        ],
    );

    common::banner(
        "DEFER Scenario - Loop Threshold Exceeded",
        "An agent keeps retrying a failing workflow. Below the\n\
         threshold of 5 retries the retry runs; at the threshold\n\
         Stage0 DEFERs so a human can decide whether to go on.",
    );
    println!("First, retryCount 4 (attempt 5), still under the threshold:");
    println!();
    session
        .call_tool(
            "retry-workflow",
            json!({ "workflowId": "nightly-etl", "retryCount": 4 }),
        )
        .await?;
    println!("Then retryCount 5 (attempt 6), at the threshold:");
    println!();
    let looping = session
        .call_tool(
            "retry-workflow",
            json!({ "workflowId": "nightly-etl", "retryCount": 5 }),
        )
        .await?;
    common::expect_verdict(&looping, Verdict::Defer, Some("LOOP_THRESHOLD_EXCEEDED"))?;
    common::explain(
        "⏸️ TOOL CALL DEFERRED",
        "The agent should NOT retry again automatically; the retry did not run.",
        "Human review is required because:",
        &[
            "The workflow has already been retried 5 times",
            "Retrying unchanged is unlikely to succeed and costs each time",
            "A root cause may need fixing first",
        ],
    );
    Ok(())
}
