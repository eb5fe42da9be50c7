//! The simulator's rules, their order and their boundaries, tested from one table
//! (`docs/contract.md` §4).
//!
//! Each row is an execution intent and the verdict the TypeScript original gives for it. The
//! expected reason code, risk score, `high_risk`, issue codes and questions are checked for every
//! row, so a changed rule, a changed order or a moved boundary fails a named case.

use serde_json::{Map, Value, json};
use stage0_guard::policy::simulator::{POLICY_VERSION, simulate};
use stage0_guard::policy::wire::{Decision, Intent, PolicyResponse, Verdict};

/// Which questions a verdict must carry.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Questions {
    None,
    Clarifying,
    Defer,
}

/// The rule a case must end in; each rule fixes the whole expected verdict
/// (`docs/contract.md` §4).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Guardrails,
    LoopThreshold,
    Unclear,
    NoCriteria,
    Allow,
}

/// What a verdict of one rule looks like.
struct Expected {
    verdict: Verdict,
    decision: Decision,
    /// The reason's leading code, or the whole reason for ALLOW.
    code: &'static str,
    risk: u64,
    high_risk: bool,
    issues: &'static [&'static str],
    questions: Questions,
}

impl Rule {
    fn expected(self) -> Expected {
        let (verdict, decision, code, risk, high_risk, issues, questions) = match self {
            Rule::Guardrails => (
                Verdict::Deny,
                Decision::NoGo,
                "SIDE_EFFECTS_NEED_GUARDRAILS",
                64,
                true,
                &[
                    "SIDE_EFFECTS_NEED_GUARDRAILS",
                    "CUSTOMER_VISIBLE_APPROVAL_REQUIRED",
                ][..],
                Questions::None,
            ),
            Rule::LoopThreshold => (
                Verdict::Defer,
                Decision::Defer,
                "LOOP_THRESHOLD_EXCEEDED",
                45,
                false,
                &["LOOP_THRESHOLD_EXCEEDED"][..],
                Questions::Defer,
            ),
            Rule::Unclear => (
                Verdict::Defer,
                Decision::Defer,
                "UNCLEAR_VALUE_SIGNAL",
                35,
                false,
                &["UNCLEAR_VALUE_SIGNAL"][..],
                Questions::Clarifying,
            ),
            Rule::NoCriteria => (
                Verdict::Deny,
                Decision::NoGo,
                "MISSING_SUCCESS_CRITERIA",
                59,
                false,
                &["MISSING_SUCCESS_CRITERIA"][..],
                Questions::None,
            ),
            Rule::Allow => (
                Verdict::Allow,
                Decision::Go,
                "Informational operation with no high-risk side effects",
                15,
                false,
                &[][..],
                Questions::None,
            ),
        };
        Expected {
            verdict,
            decision,
            code,
            risk,
            high_risk,
            issues,
            questions,
        }
    }
}

/// One row of the table: an intent and the rule that must answer it.
struct Case {
    name: &'static str,
    goal: &'static str,
    side_effects: &'static [&'static str],
    criteria: &'static [&'static str],
    /// `retry_count` in the context; `None` leaves it out.
    retry: Option<Value>,
    rule: Rule,
}

const CLEAR: &str = "Summarize the quarterly sales report";
const OK: &[&str] = &["Summary is accurate"];
const NONE: &[&str] = &[];

fn case(
    name: &'static str,
    goal: &'static str,
    side_effects: &'static [&'static str],
    criteria: &'static [&'static str],
    retry: Option<Value>,
    rule: Rule,
) -> Case {
    Case {
        name,
        goal,
        side_effects,
        criteria,
        retry,
        rule,
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Rule::*;
    let loop_ = &["loop"][..];
    vec![
        // Rule 5: nothing matches.
        case("clear goal without side effects is allowed", CLEAR, &[], OK, None, Allow),
        case("unknown side effects are not high risk", CLEAR, &["email", "read"], OK, None, Allow),
        case("retry count without a loop side effect does not defer", CLEAR, &[], OK, Some(json!(100)), Allow),
        case("side effects match exactly, not by prefix", CLEAR, &["publishing", "Deploy"], OK, None, Allow),
        // Rule 1: publish / deploy.
        case("publish is denied", CLEAR, &["publish"], OK, None, Guardrails),
        case("deploy is denied", CLEAR, &["deploy"], OK, None, Guardrails),
        case("publish among several side effects is denied", CLEAR, &["read", "publish", "email"], OK, None, Guardrails),
        case("deploy and publish together are denied", CLEAR, &["deploy", "publish"], OK, None, Guardrails),
        case("deny beats the loop threshold", CLEAR, &["deploy", "loop"], OK, Some(json!(10)), Guardrails),
        case("deny beats a vague goal", "help me", &["publish"], OK, None, Guardrails),
        case("deny beats an empty goal", "", &["deploy"], OK, None, Guardrails),
        case("deny beats missing success criteria", CLEAR, &["publish"], NONE, None, Guardrails),
        // Rule 2: loop threshold, boundaries and odd retry counts.
        case("loop at retry 0 is allowed", CLEAR, loop_, OK, Some(json!(0)), Allow),
        case("loop at retry 2 is allowed", CLEAR, loop_, OK, Some(json!(2)), Allow),
        case("loop at retry 4 is allowed", CLEAR, loop_, OK, Some(json!(4)), Allow),
        case("loop at retry 4.9 is allowed", CLEAR, loop_, OK, Some(json!(4.9)), Allow),
        case("loop at retry 5 is deferred", CLEAR, loop_, OK, Some(json!(5)), LoopThreshold),
        case("loop at retry 6 is deferred", CLEAR, loop_, OK, Some(json!(6)), LoopThreshold),
        case("loop at retry 10 is deferred", CLEAR, loop_, OK, Some(json!(10)), LoopThreshold),
        case("loop at retry 100 is deferred", CLEAR, loop_, OK, Some(json!(100)), LoopThreshold),
        case("loop at a huge retry count is deferred", CLEAR, loop_, OK, Some(json!(u64::MAX)), LoopThreshold),
        case("loop without a retry count is allowed", CLEAR, loop_, OK, None, Allow),
        case("loop with a numeric string retry count counts as 0", CLEAR, loop_, OK, Some(json!("7")), Allow),
        case("loop with a negative retry count counts as 0", CLEAR, loop_, OK, Some(json!(-6)), Allow),
        case("loop with a null retry count counts as 0", CLEAR, loop_, OK, Some(Value::Null), Allow),
        case("loop with a boolean retry count counts as 0", CLEAR, loop_, OK, Some(json!(true)), Allow),
        case("loop with an object retry count counts as 0", CLEAR, loop_, OK, Some(json!({"n": 9})), Allow),
        case("loop threshold beats a vague goal", "think", loop_, OK, Some(json!(5)), LoopThreshold),
        case("loop threshold beats missing success criteria", CLEAR, loop_, NONE, Some(json!(5)), LoopThreshold),
        // Rule 3: unclear goal, boundaries and phrasing.
        case("an empty goal is deferred", "", &[], OK, None, Unclear),
        case("a 9 character goal is deferred", "Summarize", &[], OK, None, Unclear),
        case("a 10 character goal is allowed", "Summarize!", &[], OK, None, Allow),
        case("a goal of 4 emoji is 8 UTF-16 units and deferred", "🚀🚀🚀🚀", &[], OK, None, Unclear),
        case("a goal of 5 emoji is 10 UTF-16 units and allowed", "🚀🚀🚀🚀🚀", &[], OK, None, Allow),
        case("a Chinese help request is deferred", "請幫我整理這份季度銷售報告的重點", &[], OK, None, Unclear),
        case("a Chinese think request is deferred", "請想一下如何改善我們的季度銷售流程", &[], OK, None, Unclear),
        case("a clear Chinese goal of 10 characters is allowed", "整理第三季度銷售報告", &[], OK, None, Allow),
        case("a clear Chinese goal of 9 characters is deferred", "整理第三季銷售報告", &[], OK, None, Unclear),
        case("an English help me request is deferred", "Please help me with the quarterly report", &[], OK, None, Unclear),
        case("help me is matched case-insensitively", "HELP ME finish the quarterly report", &[], OK, None, Unclear),
        case("think is matched inside a word", "Rethinking the quarterly sales report", &[], OK, None, Unclear),
        case("a vague goal beats missing success criteria", "help me", &[], NONE, None, Unclear),
        case("a vague goal with a low retry loop is deferred as unclear", "think it over", loop_, OK, Some(json!(1)), Unclear),
        // Rule 4: success criteria.
        case("a clear goal without success criteria is denied", CLEAR, &[], NONE, None, NoCriteria),
        case("a loop under the threshold without success criteria is denied", CLEAR, loop_, NONE, Some(json!(4)), NoCriteria),
        case("unknown side effects without success criteria are denied", CLEAR, &["email"], NONE, None, NoCriteria),
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

/// Which questions `response` carries.
fn questions(response: &PolicyResponse) -> Option<Questions> {
    match (
        response.clarifying_questions.len(),
        response.defer_questions.len(),
    ) {
        (0, 0) => Some(Questions::None),
        (2, 0) => Some(Questions::Clarifying),
        (0, 2) => Some(Questions::Defer),
        _ => None,
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
        let expected = case.rule.expected();
        let response = simulate(&intent(case), "req-1".to_owned());
        let issue_codes: Vec<&str> = response.issues.iter().map(|i| i.code.as_str()).collect();
        let reason_ok = if case.rule == Rule::Allow {
            response.reason == expected.code
        } else {
            response.reason.starts_with(&format!("{}: ", expected.code))
        };
        let ok = response.verdict == expected.verdict
            && response.decision == expected.decision
            && reason_ok
            && response.risk_score.as_ref().and_then(|n| n.as_u64()) == Some(expected.risk)
            && response.high_risk == Some(expected.high_risk)
            && issue_codes == expected.issues
            && questions(&response) == Some(expected.questions)
            && response.policy_version == POLICY_VERSION
            && response.request_id == "req-1";
        if !ok {
            failures.push(format!(
                "{} (expected {:?}): got {response:?}",
                case.name, case.rule
            ));
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
    let row = case(
        "x",
        CLEAR,
        &["read", "publish", "deploy"],
        OK,
        None,
        Rule::Guardrails,
    );
    let response = simulate(&intent(&row), "r".to_owned());
    assert_eq!(response.issues[0].severity, "HIGH");
    assert_eq!(
        response.issues[0].message,
        "Side effects [read, publish, deploy] require approval guardrails"
    );
    assert_eq!(response.issues[1].severity, "LOW");
}

#[test]
fn the_loop_threshold_reason_names_the_count_and_the_maximum() {
    let row = case(
        "x",
        CLEAR,
        &["loop"],
        OK,
        Some(json!(7)),
        Rule::LoopThreshold,
    );
    let response = simulate(&intent(&row), "r".to_owned());
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
    let row = case("x", CLEAR, &[], OK, None, Rule::Allow);
    let response = simulate(&intent(&row), "r".to_owned());
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

#[test]
fn a_human_approval_waives_the_loop_and_clarity_rules_but_never_a_deny() {
    use Rule::*;
    let loop_ = &["loop"][..];
    let approved = json!({"approval_status": "approved", "approved_by": "Alice"});
    #[rustfmt::skip]
    let rows: Vec<(Case, Value)> = vec![
        (case("an approved loop at the threshold is allowed", CLEAR, loop_, OK, Some(json!(9)), Allow), approved.clone()),
        (case("an approved vague goal is allowed", "help me", &[], OK, None, Allow), approved.clone()),
        (case("an approved publish is still denied", CLEAR, &["publish"], OK, None, Guardrails), approved.clone()),
        (case("an approved deploy in a loop is still denied", CLEAR, &["deploy", "loop"], OK, Some(json!(9)), Guardrails), approved.clone()),
        (case("an approval does not replace success criteria", CLEAR, &[], NONE, None, NoCriteria), approved.clone()),
        (case("a blank approver is no approval", CLEAR, loop_, OK, Some(json!(9)), LoopThreshold), json!({"approval_status": "approved", "approved_by": "  "})),
        (case("a missing approver is no approval", CLEAR, loop_, OK, Some(json!(9)), LoopThreshold), json!({"approval_status": "approved"})),
        (case("a non-string approver is no approval", "help me", &[], OK, None, Unclear), json!({"approval_status": "approved", "approved_by": 7})),
        (case("a pending approval is no approval", CLEAR, loop_, OK, Some(json!(9)), LoopThreshold), json!({"approval_status": "pending", "approved_by": "Alice"})),
        (case("the status is matched exactly", "help me", &[], OK, None, Unclear), json!({"approval_status": "APPROVED", "approved_by": "Alice"})),
    ];
    for (row, approval) in rows {
        let mut intent = intent(&row);
        intent
            .context
            .extend(approval.as_object().expect("an object").clone());
        let response = simulate(&intent, "r".to_owned());
        let expected = row.rule.expected();
        assert_eq!(response.verdict, expected.verdict, "{}", row.name);
        let codes: Vec<&str> = response.issues.iter().map(|i| i.code.as_str()).collect();
        assert_eq!(codes, expected.issues, "{}", row.name);
        if row.rule == Allow {
            assert_eq!(
                response.reason, "Approved by Alice for this call; no rule blocks it",
                "{}",
                row.name
            );
        }
    }
}
