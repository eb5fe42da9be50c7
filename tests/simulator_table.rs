//! The simulator's rules, their order and their boundaries, tested from one table (SPEC §4).
//!
//! Each row is an execution intent and the verdict the TypeScript original gives for it. The
//! expected reason code, risk score, `high_risk`, issue codes and questions are checked for every
//! row, so a changed rule, a changed order or a moved boundary fails a named case.

use mcp_server_stage0::stage0::simulator::{POLICY_VERSION, simulate};
use mcp_server_stage0::stage0::wire::{Decision, Intent, Verdict};
use serde_json::{Map, Value, json};

/// Which questions a verdict must carry.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Questions {
    None,
    Clarifying,
    Defer,
}

struct Case {
    name: &'static str,
    goal: &'static str,
    side_effects: &'static [&'static str],
    criteria: &'static [&'static str],
    /// `retry_count` in the context; `None` leaves it out.
    retry: Option<Value>,
    verdict: Verdict,
    /// The reason's leading code, or the whole reason for ALLOW.
    code: &'static str,
    risk: u64,
    high_risk: bool,
    issues: &'static [&'static str],
    questions: Questions,
}

const CLEAR: &str = "Summarize the quarterly sales report";
const OK: &[&str] = &["Summary is accurate"];

fn allow(
    name: &'static str,
    goal: &'static str,
    effects: &'static [&'static str],
    retry: Option<Value>,
) -> Case {
    Case {
        name,
        goal,
        side_effects: effects,
        criteria: OK,
        retry,
        verdict: Verdict::Allow,
        code: "Informational operation with no high-risk side effects",
        risk: 15,
        high_risk: false,
        issues: &[],
        questions: Questions::None,
    }
}

fn guardrails(
    name: &'static str,
    goal: &'static str,
    effects: &'static [&'static str],
    criteria: &'static [&'static str],
    retry: Option<Value>,
) -> Case {
    Case {
        name,
        goal,
        side_effects: effects,
        criteria,
        retry,
        verdict: Verdict::Deny,
        code: "SIDE_EFFECTS_NEED_GUARDRAILS",
        risk: 64,
        high_risk: true,
        issues: &[
            "SIDE_EFFECTS_NEED_GUARDRAILS",
            "CUSTOMER_VISIBLE_APPROVAL_REQUIRED",
        ],
        questions: Questions::None,
    }
}

fn loop_threshold(
    name: &'static str,
    goal: &'static str,
    effects: &'static [&'static str],
    criteria: &'static [&'static str],
    retry: Value,
) -> Case {
    Case {
        name,
        goal,
        side_effects: effects,
        criteria,
        retry: Some(retry),
        verdict: Verdict::Defer,
        code: "LOOP_THRESHOLD_EXCEEDED",
        risk: 45,
        high_risk: false,
        issues: &["LOOP_THRESHOLD_EXCEEDED"],
        questions: Questions::Defer,
    }
}

fn unclear(
    name: &'static str,
    goal: &'static str,
    effects: &'static [&'static str],
    criteria: &'static [&'static str],
    retry: Option<Value>,
) -> Case {
    Case {
        name,
        goal,
        side_effects: effects,
        criteria,
        retry,
        verdict: Verdict::Defer,
        code: "UNCLEAR_VALUE_SIGNAL",
        risk: 35,
        high_risk: false,
        issues: &["UNCLEAR_VALUE_SIGNAL"],
        questions: Questions::Clarifying,
    }
}

fn no_criteria(
    name: &'static str,
    goal: &'static str,
    effects: &'static [&'static str],
    retry: Option<Value>,
) -> Case {
    Case {
        name,
        goal,
        side_effects: effects,
        criteria: &[],
        retry,
        verdict: Verdict::Deny,
        code: "MISSING_SUCCESS_CRITERIA",
        risk: 59,
        high_risk: false,
        issues: &["MISSING_SUCCESS_CRITERIA"],
        questions: Questions::None,
    }
}

fn cases() -> Vec<Case> {
    let loop_ = &["loop"][..];
    vec![
        // Rule 5: nothing matches.
        allow(
            "clear goal without side effects is allowed",
            CLEAR,
            &[],
            None,
        ),
        allow(
            "unknown side effects are not high risk",
            CLEAR,
            &["email", "read"],
            None,
        ),
        allow(
            "retry count without a loop side effect does not defer",
            CLEAR,
            &[],
            Some(json!(100)),
        ),
        // Rule 1: publish / deploy.
        guardrails("publish is denied", CLEAR, &["publish"], OK, None),
        guardrails("deploy is denied", CLEAR, &["deploy"], OK, None),
        guardrails(
            "publish among several side effects is denied",
            CLEAR,
            &["read", "publish", "email"],
            OK,
            None,
        ),
        guardrails(
            "deploy and publish together are denied",
            CLEAR,
            &["deploy", "publish"],
            OK,
            None,
        ),
        guardrails(
            "deny beats the loop threshold",
            CLEAR,
            &["deploy", "loop"],
            OK,
            Some(json!(10)),
        ),
        guardrails("deny beats a vague goal", "help me", &["publish"], OK, None),
        guardrails("deny beats an empty goal", "", &["deploy"], OK, None),
        guardrails(
            "deny beats missing success criteria",
            CLEAR,
            &["publish"],
            &[],
            None,
        ),
        allow(
            "side effects match exactly, not by prefix",
            CLEAR,
            &["publishing", "Deploy"],
            None,
        ),
        // Rule 2: loop threshold, boundaries and odd retry counts.
        allow("loop at retry 0 is allowed", CLEAR, loop_, Some(json!(0))),
        allow("loop at retry 2 is allowed", CLEAR, loop_, Some(json!(2))),
        allow("loop at retry 4 is allowed", CLEAR, loop_, Some(json!(4))),
        allow(
            "loop at retry 4.9 is allowed",
            CLEAR,
            loop_,
            Some(json!(4.9)),
        ),
        loop_threshold("loop at retry 5 is deferred", CLEAR, loop_, OK, json!(5)),
        loop_threshold("loop at retry 6 is deferred", CLEAR, loop_, OK, json!(6)),
        loop_threshold("loop at retry 10 is deferred", CLEAR, loop_, OK, json!(10)),
        loop_threshold(
            "loop at retry 100 is deferred",
            CLEAR,
            loop_,
            OK,
            json!(100),
        ),
        loop_threshold(
            "loop at a huge retry count is deferred",
            CLEAR,
            loop_,
            OK,
            json!(u64::MAX),
        ),
        allow("loop without a retry count is allowed", CLEAR, loop_, None),
        allow(
            "loop with a numeric string retry count counts as 0",
            CLEAR,
            loop_,
            Some(json!("7")),
        ),
        allow(
            "loop with a negative retry count counts as 0",
            CLEAR,
            loop_,
            Some(json!(-6)),
        ),
        allow(
            "loop with a null retry count counts as 0",
            CLEAR,
            loop_,
            Some(Value::Null),
        ),
        allow(
            "loop with a boolean retry count counts as 0",
            CLEAR,
            loop_,
            Some(json!(true)),
        ),
        allow(
            "loop with an object retry count counts as 0",
            CLEAR,
            loop_,
            Some(json!({"n": 9})),
        ),
        loop_threshold(
            "loop threshold beats a vague goal",
            "think",
            loop_,
            OK,
            json!(5),
        ),
        loop_threshold(
            "loop threshold beats missing success criteria",
            CLEAR,
            loop_,
            &[],
            json!(5),
        ),
        // Rule 3: unclear goal, boundaries and phrasing.
        unclear("an empty goal is deferred", "", &[], OK, None),
        unclear("a 9 character goal is deferred", "Summarize", &[], OK, None),
        allow("a 10 character goal is allowed", "Summarize!", &[], None),
        unclear(
            "a goal of 4 emoji is 8 UTF-16 units and deferred",
            "🚀🚀🚀🚀",
            &[],
            OK,
            None,
        ),
        allow(
            "a goal of 5 emoji is 10 UTF-16 units and allowed",
            "🚀🚀🚀🚀🚀",
            &[],
            None,
        ),
        unclear(
            "a Chinese help request is deferred",
            "請幫我整理這份季度銷售報告的重點",
            &[],
            OK,
            None,
        ),
        unclear(
            "a Chinese think request is deferred",
            "請想一下如何改善我們的季度銷售流程",
            &[],
            OK,
            None,
        ),
        allow(
            "a clear Chinese goal of 10 characters is allowed",
            "整理第三季度銷售報告",
            &[],
            None,
        ),
        unclear(
            "an English help me request is deferred",
            "Please help me with the quarterly report",
            &[],
            OK,
            None,
        ),
        unclear(
            "help me is matched case-insensitively",
            "HELP ME finish the quarterly report",
            &[],
            OK,
            None,
        ),
        unclear(
            "think is matched inside a word",
            "Rethinking the quarterly sales report",
            &[],
            OK,
            None,
        ),
        unclear(
            "a vague goal beats missing success criteria",
            "help me",
            &[],
            &[],
            None,
        ),
        unclear(
            "a vague goal with a low retry loop is deferred as unclear",
            "think it over",
            loop_,
            OK,
            Some(json!(1)),
        ),
        // Rule 4: success criteria.
        no_criteria(
            "a clear goal without success criteria is denied",
            CLEAR,
            &[],
            None,
        ),
        no_criteria(
            "a loop under the threshold without success criteria is denied",
            CLEAR,
            loop_,
            Some(json!(4)),
        ),
        no_criteria(
            "unknown side effects without success criteria are denied",
            CLEAR,
            &["email"],
            None,
        ),
    ]
}

fn intent(case: &Case) -> Intent {
    let mut context = Map::new();
    if let Some(retry) = &case.retry {
        context.insert("retry_count".to_owned(), retry.clone());
    }
    Intent {
        goal: case.goal.to_owned(),
        success_criteria: case.criteria.iter().map(|s| s.to_string()).collect(),
        constraints: Vec::new(),
        tools: Vec::new(),
        side_effects: case.side_effects.iter().map(|s| s.to_string()).collect(),
        context,
    }
}

#[test]
fn every_case_of_the_table_gets_the_verdict_of_the_original() {
    let cases = cases();
    assert!(
        cases.len() >= 42,
        "the table must keep at least 42 cases, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let response = simulate(&intent(case), "req-1".to_owned());
        let decision = match case.verdict {
            Verdict::Allow => Decision::Go,
            Verdict::Deny => Decision::NoGo,
            Verdict::Defer => Decision::Defer,
        };
        let issue_codes: Vec<&str> = response.issues.iter().map(|i| i.code.as_str()).collect();
        let questions = match (
            response.clarifying_questions.len(),
            response.defer_questions.len(),
        ) {
            (0, 0) => Questions::None,
            (2, 0) => Questions::Clarifying,
            (0, 2) => Questions::Defer,
            other => panic!("{}: unexpected question counts {other:?}", case.name),
        };
        let reason_ok = if case.verdict == Verdict::Allow {
            response.reason == case.code
        } else {
            response.reason.starts_with(&format!("{}: ", case.code))
        };
        let ok = response.verdict == case.verdict
            && response.decision == decision
            && reason_ok
            && response.risk_score.as_ref().and_then(|n| n.as_u64()) == Some(case.risk)
            && response.high_risk == Some(case.high_risk)
            && issue_codes == case.issues
            && questions == case.questions
            && response.policy_version == POLICY_VERSION
            && response.request_id == "req-1";
        if !ok {
            failures.push(format!("{}: got {response:?}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_guardrails_issue_lists_every_side_effect() {
    let mut intent = intent(&guardrails("x", CLEAR, &["read", "publish"], OK, None));
    intent.side_effects.push("deploy".to_owned());
    let response = simulate(&intent, "r".to_owned());
    assert_eq!(response.issues[0].severity, "HIGH");
    assert_eq!(
        response.issues[0].message,
        "Side effects [read, publish, deploy] require approval guardrails"
    );
    assert_eq!(response.issues[1].severity, "LOW");
}

#[test]
fn the_loop_threshold_reason_names_the_count_and_the_maximum() {
    let response = simulate(
        &intent(&loop_threshold("x", CLEAR, &["loop"], OK, json!(7))),
        "r".to_owned(),
    );
    assert_eq!(
        response.reason,
        "LOOP_THRESHOLD_EXCEEDED: Retry count (7) exceeds maximum allowed (5). \
         Consider alternative approaches or human review."
    );
    assert_eq!(response.issues[0].severity, "MEDIUM");
    assert_eq!(
        response.issues[0].message,
        "Retry count 7 exceeds threshold of 5"
    );
}

#[test]
fn an_allow_carries_the_read_only_guardrail_and_no_issues() {
    let response = simulate(&intent(&allow("x", CLEAR, &[], None)), "r".to_owned());
    assert_eq!(response.guardrails, vec!["read_only".to_owned()]);
    assert!(response.issues.is_empty());
}

#[test]
fn the_same_intent_always_gets_the_same_verdict() {
    for case in cases() {
        let first = simulate(&intent(&case), "same".to_owned());
        let second = simulate(&intent(&case), "same".to_owned());
        assert_eq!(first, second, "{}", case.name);
    }
}
