//! Log and terminal injection: text from the agent (a goal, a topic) and from the policy decision
//! point (a reason, a policy version, a request id) reaches stderr and `audit show` escaped.
//!
//! Before, a goal holding a newline and a forged log line put that line on stderr as if the
//! server had written it (`… stage0 check tool=publish-content verdict=ALLOW`), and an OSC 52
//! sequence in it reached the terminal of whoever read the log or ran `audit show` (a clipboard
//! write). Each test drives the built binary against a fake Stage0 on 127.0.0.1; every wait is
//! bounded (see `common::BOUND`).

mod common;
mod fake_stage0;

use common::{BIN, Session, bounded, command, live_env};
use fake_stage0::{FakeStage0, Reply};
use serde_json::json;
use stage0_guard::escape::needs_escape;
use tempfile::TempDir;

/// A newline, then a line dressed as the server's own, then an OSC 52 clipboard write, a C1 CSI
/// that clears the screen, a carriage return and a right-to-left override.
const INJECTED: &str = "weather\n2026-01-01T00:00:00.000000Z  INFO FORGED stage0 check \
     tool=publish-content verdict=ALLOW\n\u{1b}]52;c;cHduZWQ=\u{7}\u{9b}2J\r\u{202e}txt.exe";

/// The characters of `text` that a terminal would act on: those `escape::needs_escape` escapes,
/// but for the newlines that end lines and the backslashes that start escapes.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c != '\n' && c != '\\' && needs_escape(c))
        .collect()
}

#[tokio::test]
async fn outside_text_reaches_stderr_and_audit_show_escaped_one_line_per_event() {
    // The fake answers ALLOW, with the same text in every string field it controls.
    let fake = FakeStage0::start(|_| {
        Reply::json(
            200,
            &json!({
                "verdict": "ALLOW", "decision": "GO",
                "reason": format!("fine {INJECTED}"),
                "policy_version": format!("v1 {INJECTED}"),
                "request_id": format!("r-1 {INJECTED}"),
            }),
        )
    })
    .await;
    let dir = TempDir::new().expect("a temporary folder");
    let server = command(dir.path(), &live_env(fake.base_url(), "5000"));
    let session = Session::spawn(server, ()).await;
    let checked = session
        .call(
            "check-authorization",
            json!({"goal": INJECTED, "sideEffects": []}),
        )
        .await;
    assert!(!checked.is_error, "{checked:#?}");
    let researched = session
        .call("research-topic", json!({"topic": INJECTED}))
        .await;
    assert!(!researched.is_error, "{researched:#?}");
    let stderr = session.stop().await;

    assert_eq!(raw_controls(&stderr), Vec::<char>::new(), "{stderr}");
    // One line per event: every line is one the logger began (with its timestamp), none is the
    // forged one, and there is one check line per call.
    for line in stderr.lines() {
        assert!(
            line.starts_with("20"),
            "a line the logger did not begin: {line:?}"
        );
    }
    let checks: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("stage0_guard::guard: stage0 check "))
        .collect();
    assert_eq!(checks.len(), 2, "{stderr}");
    for check in checks {
        assert!(check.contains(r"weather\n2026-01-01"), "{check}");
        assert!(check.contains(r"\u{1b}]52;c;"), "{check}");
    }

    let output = bounded(
        "audit show",
        tokio::process::Command::new(BIN)
            .args(["audit", "show"])
            .arg(dir.path().join(common::AUDIT_LOG))
            .env_clear()
            .output(),
    )
    .await
    .expect("audit show runs");
    assert!(output.status.success(), "{output:?}");
    let shown = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_eq!(raw_controls(&shown), Vec::<char>::new(), "{shown}");
    assert!(shown.contains(r"goal: weather\n2026-01-01"), "{shown}");
    assert!(shown.contains(r"reason: fine weather\n2026"), "{shown}");
    assert!(
        !shown.lines().any(|line| line.starts_with("2026")),
        "{shown}"
    );
}
