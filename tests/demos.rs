//! The three demo binaries, run as a user runs them, must show their verdict and exit 0.
//!
//! Each test runs the built binary (`CARGO_BIN_EXE_*`) with every `STAGE0_*` variable removed and
//! a fresh empty directory as its working directory, so no `.env` is read and the simulator
//! answers: the tests are deterministic and never touch the network.

use std::path::PathBuf;
use std::process::Command;

/// Runs `binary` in the simulator and returns its stdout; panics unless it exited 0.
fn run_demo(name: &str, binary: &str) -> String {
    let dir = fresh_dir(name);
    let mut command = Command::new(binary);
    command.current_dir(&dir);
    for variable in [
        "STAGE0_API_KEY",
        "STAGE0_BASE_URL",
        "STAGE0_TIMEOUT_MS",
        "STAGE0_DEBUG",
    ] {
        command.env_remove(variable);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{binary}`: {e}"));
    std::fs::remove_dir_all(&dir).ok();

    let stdout = String::from_utf8(output.stdout).expect("the demo prints UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // Nothing but the demo on stdout: no log line ahead of the banner.
    assert!(stdout.starts_with(&"=".repeat(70)), "{stdout}");
    assert!(stdout.contains("Mode: simulator"), "{stdout}");
    stdout
}

/// An empty directory of its own for one test run.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-server-stage0-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

#[test]
fn demo_allow_shows_an_allowed_research_call_that_ran_and_exits_0() {
    let stdout = run_demo("demo_allow", env!("CARGO_BIN_EXE_demo_allow"));
    assert!(
        stdout.contains("Verdict: ALLOW\nDecision: GO\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Tool: research-topic (executed: true)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Research Summary: Rust async runtimes"),
        "{stdout}"
    );
    assert!(stdout.contains("✅ TOOL CALL ALLOWED"), "{stdout}");
}

#[test]
fn demo_deny_shows_a_blocked_publish_and_exits_0() {
    let stdout = run_demo("demo_deny", env!("CARGO_BIN_EXE_demo_deny"));
    assert!(
        stdout.contains("Verdict: DENY\nDecision: NO_GO\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[HIGH] SIDE_EFFECTS_NEED_GUARDRAILS: Side effects [publish]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Tool: publish-content (executed: false)"),
        "{stdout}"
    );
    assert!(stdout.contains("⛔ TOOL CALL BLOCKED"), "{stdout}");
}

#[test]
fn demo_defer_shows_a_vague_request_and_a_retry_loop_deferred_and_exits_0() {
    let stdout = run_demo("demo_defer", env!("CARGO_BIN_EXE_demo_defer"));
    assert_eq!(
        stdout.matches("Verdict: DEFER\nDecision: DEFER\n").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("Reason: UNCLEAR_VALUE_SIGNAL"), "{stdout}");
    assert!(stdout.contains("Clarifying questions:\n  ? "), "{stdout}");
    assert!(
        stdout.contains("Reason: LOOP_THRESHOLD_EXCEEDED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Questions for the reviewer:\n  ? "),
        "{stdout}"
    );
    // Below the threshold the same retry is allowed and runs; at it, it does not run.
    assert!(stdout.contains("Verdict: ALLOW"), "{stdout}");
    assert!(
        stdout.contains("Tool: retry-workflow (executed: true)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Tool: retry-workflow (executed: false)"),
        "{stdout}"
    );
}
