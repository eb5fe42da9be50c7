//! The three demo binaries, run as a user runs them, must show their verdict and exit 0.
//!
//! Each test runs the built binary (`CARGO_BIN_EXE_*`) with an empty environment and
//! a fresh empty directory as its working directory, so no `.env` is read and the simulator
//! answers: the tests are deterministic and never touch the network.

use std::process::Command;

/// Runs `binary` in the simulator, checks it exited 0 and printed each of `expected`, and returns
/// its stdout.
fn run_demo(binary: &str, expected: &[&str]) -> String {
    // An empty environment and an empty working directory: no key, no `.env`, the simulator.
    let dir = tempfile::tempdir().expect("a temporary working directory");
    let log = dir.path().join("audit.jsonl");
    let output = Command::new(binary)
        .env_clear()
        .env("STAGE0_AUDIT_LOG", &log)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{binary}`: {e}"));

    let stdout = String::from_utf8(output.stdout).expect("the demo prints UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{binary} exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // Nothing but the demo on stdout: no log line ahead of the banner.
    assert!(stdout.starts_with(&"=".repeat(70)), "{stdout}");
    for text in ["Mode: simulator"].iter().chain(expected) {
        assert!(stdout.contains(text), "`{text}` missing from:\n{stdout}");
    }
    // Every call was recorded, in a chain that verifies.
    assert!(
        stdout.contains(&format!("audit log {}", log.display())),
        "{stdout}"
    );
    let verified = stage0_guard::audit::verify::verify_file(&log)
        .expect("the audit log is readable")
        .expect("the audit log verifies");
    assert!(verified.records >= 2, "{verified:?}");
    stdout
}

#[test]
fn demo_allow_shows_an_allowed_research_call_that_ran_and_exits_0() {
    run_demo(
        env!("CARGO_BIN_EXE_demo_allow"),
        &[
            "Verdict: ALLOW
Decision: GO
",
            "Tool: research-topic (executed: true)",
            "Research Summary: Rust async runtimes",
            "✅ TOOL CALL ALLOWED",
        ],
    );
}

#[test]
fn demo_deny_shows_a_blocked_publish_and_exits_0() {
    run_demo(
        env!("CARGO_BIN_EXE_demo_deny"),
        &[
            "Verdict: DENY
Decision: NO_GO
",
            "[HIGH] SIDE_EFFECTS_NEED_GUARDRAILS: Side effects [publish]",
            "Tool: publish-content (executed: false)",
            "⛔ TOOL CALL BLOCKED",
        ],
    );
}

#[test]
fn demo_defer_shows_a_vague_request_a_lying_retry_loop_and_a_human_approval_and_exits_0() {
    let stdout = run_demo(
        env!("CARGO_BIN_EXE_demo_defer"),
        &[
            "Reason: UNCLEAR_VALUE_SIGNAL",
            "Clarifying questions:
  ? ",
            // The agent claims retryCount 0 each time; the sixth is deferred anyway.
            "Retry count: 5 used (agent claimed 0, server saw 5 earlier attempts)",
            "Reason: LOOP_THRESHOLD_EXCEEDED",
            "Questions for the reviewer:
  ? ",
            "👤 The server asks the human at the client (MCP 2026-07-28: an input request of an input_required result, answered in a retry):",
            "Human review: rejected (Dana (on call): ",
            "Tool: retry-workflow (executed: false)",
            // Approved by the human, checked again, allowed and run.
            "Reason: Approved by Dana (on call) for this call; no rule blocks it",
            "Human review: approved by Dana (on call) at ",
        ],
    );
    assert_eq!(
        stdout
            .matches(
                "Verdict: DEFER
Decision: DEFER
"
            )
            .count(),
        2,
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("Tool: retry-workflow (executed: true)")
            .count(),
        6,
        "five retries and the approved one ran: {stdout}"
    );
}
