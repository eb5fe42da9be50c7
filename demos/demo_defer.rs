//! Demo 3, DEFER: a call held for a human instead of being run or refused, and the human's answer.
//!
//! `cargo run --bin demo_defer`. Connects an MCP client (with a scripted human behind it) to the
//! real server in process and shows:
//! (a) a vague request (`check-authorization`, "help me think about this") deferred with
//! clarifying questions (`UNCLEAR_VALUE_SIGNAL`);
//! (b) an agent in a retry loop that claims `retryCount: 0` on every call: the server counts the
//! attempts itself, so the sixth is deferred anyway (`LOOP_THRESHOLD_EXCEEDED`); the human, asked
//! through MCP elicitation, says no, and nothing runs;
//! (c) once the root cause is fixed, the next retry is deferred again, the human approves it, the
//! policy checks again with the approval and the retry runs.
//! The client speaks MCP 2026-07-28 (`common::PROTOCOL_REVISION`), so the human is asked through
//! MRTR: the deferred call returns `input_required` with the approval form and a sealed
//! `requestState`, and rmcp's client retries it with the answer. (At 2025-11-25 the same answer
//! travels as `elicitation/create` within the call; `tests/human_approval.rs` and the Python SDK
//! tests cover that path.)
//! Exits 0 only if it saw all of that (see `common.rs`); the first five retries are shown, not
//! required, because a live policy may treat them otherwise.

mod common;

use std::process::ExitCode;

use anyhow::bail;
use serde_json::json;
use stage0_guard::policy::wire::Verdict;

use common::{Report, Session};

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
        "An agent keeps retrying a failing workflow and claims\n\
         retryCount 0 every time. The server counts the attempts\n\
         itself, so at the sixth Stage0 DEFERs and a human is asked.",
    );
    let lying = json!({ "workflowId": "nightly-etl", "retryCount": 0 });
    println!("Five retries, each claiming retryCount 0:");
    println!();
    for _ in 1..=5 {
        session.call_tool("retry-workflow", lying.clone()).await?;
    }
    println!("The sixth retry, still claiming retryCount 0:");
    println!();
    session.human.will_answer(json!({
        "approve": false,
        "name": "Dana (on call)",
        "reason": "Find the root cause before retrying again"
    }));
    let looping = session.call_tool("retry-workflow", lying.clone()).await?;
    common::expect_verdict(&looping, Verdict::Defer, Some("LOOP_THRESHOLD_EXCEEDED"))?;
    expect_approval(&looping, "rejected")?;
    common::explain(
        "⏸️ TOOL CALL DEFERRED",
        "The retry did not run: the agent's claim of 0 was not taken,",
        "and the human said no. Human review was asked because:",
        &[
            "The server has seen 5 earlier attempts at this workflow",
            "Retrying unchanged is unlikely to succeed and costs each time",
            "A root cause may need fixing first",
        ],
    );

    common::banner(
        "DEFER Scenario - Approved by a Human",
        "The on-call engineer fixed the root cause. The agent\n\
         retries once more; Stage0 DEFERs again, the human approves\n\
         this one call, and Stage0 checks again knowing that.",
    );
    session.human.will_answer(json!({
        "approve": true,
        "name": "Dana (on call)",
        "reason": "Disk quota raised; one more run is expected to pass"
    }));
    let approved = session.call_tool("retry-workflow", lying).await?;
    common::expect_verdict(&approved, Verdict::Allow, None)?;
    expect_approval(&approved, "approved")?;
    if !approved.executed {
        bail!("the approved retry was allowed but did not run");
    }
    common::explain(
        "✅ TOOL CALL ALLOWED AFTER HUMAN APPROVAL",
        "The retry ran once. The approval is not remembered: the next",
        "retry is deferred and asks again. The approval is on record:",
        &[
            "approved_by, approved_at and approval_reason went to Stage0",
            "The result shows who approved and when",
        ],
    );
    Ok(())
}

/// Checks that the human review of `report` ended in `outcome`.
fn expect_approval(report: &Report, outcome: &str) -> anyhow::Result<()> {
    match &report.approval {
        Some(approval) if approval.outcome == outcome => Ok(()),
        Some(approval) => bail!(
            "expected the human review to end `{outcome}`, it ended `{}`",
            approval.outcome
        ),
        None => bail!("expected a human review ending `{outcome}`, nobody was asked"),
    }
}
