//! Loading a Cedar policy set fails with every problem located, and deciding fails closed.
//!
//! - An invalid policy or schema is refused with Cedar's diagnostics: file, line, column and
//!   message, for parse errors, strict-validation errors, bad annotations, duplicate ids and
//!   templates, across the files of a folder.
//! - A policy whose evaluation errors makes the verdict `DENY` / `ERROR` with `POLICY_ERROR`
//!   naming it, even when another policy would have allowed the call: never a silent skip.
//! - `policy_version` names the exact text: `cedar:` and 12 hex digits of the SHA-256 of the
//!   files in name order.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use stage0_guard::claims::{ActorRole, ApprovalStatus};
use stage0_guard::policy::cedar::{
    Call, CedarPolicy, Diagnostic, Evaluation, Facts, LoadError, NO_PERMIT, POLICY_ERROR, Position,
    RecentCallCounts, SCHEMA, SCHEMA_PATH, Source, policy_version,
};
use stage0_guard::policy::wire::{Decision, Intent, Verdict};

fn schema() -> Source {
    Source::new(SCHEMA_PATH, SCHEMA)
}

fn from_texts(files: &[(&str, &str)]) -> Result<CedarPolicy, LoadError> {
    let sources: Vec<Source> = files
        .iter()
        .map(|(name, text)| Source::new(*name, *text))
        .collect();
    CedarPolicy::from_sources(&sources, &schema())
}

fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("a policy file");
    }
    dir
}

fn at(path: impl Into<PathBuf>, line: usize, column: usize, message: &str) -> Diagnostic {
    Diagnostic {
        path: path.into(),
        position: Some(Position { line, column }),
        message: message.to_owned(),
    }
}

fn facts(retry_count: u64) -> Facts {
    Facts {
        actor_id: None,
        role: ActorRole::Developer,
        retry_count,
        claimed_retry_count: retry_count,
        approval_status: ApprovalStatus::None,
        approved_by: None,
        now: UNIX_EPOCH + Duration::from_secs(1_795_428_000),
        recent_calls: RecentCallCounts::default(),
    }
}

fn decide_retry(policy: &CedarPolicy, arguments: Value, retry_count: u64) -> Evaluation {
    let intent = Intent {
        goal: "Retry workflow etl (attempt 3)".to_owned(),
        success_criteria: vec!["Workflow completes successfully".to_owned()],
        constraints: vec!["max_retries: 5".to_owned()],
        tools: vec!["shell".to_owned()],
        side_effects: vec!["loop".to_owned()],
        context: Map::new(),
    };
    let arguments = arguments.as_object().expect("an object").clone();
    let call = Call {
        tool: "retry-workflow",
        arguments: &arguments,
        intent: &intent,
    };
    policy.decide(&call, &facts(retry_count), "req-9".to_owned())
}

const VALID: &str = r#"@id("RETRIES")
permit (principal, action == Stage0::Action::"retry-workflow", resource);
"#;

#[test]
fn a_type_error_in_the_second_file_of_a_folder_is_located_in_that_file() {
    let invalid = "@id(\"NUMBERED_ENVIRONMENT\")\nforbid (principal, action == \
                   Stage0::Action::\"deploy-changes\", resource)\n  when { \
                   context.arguments.environment == 3 };\n";
    let dir = folder(&[("b.cedar", invalid), ("a.cedar", VALID)]);
    let error = CedarPolicy::load(dir.path(), None).unwrap_err();
    let [diagnostic] = error.diagnostics() else {
        panic!("one diagnostic: {error}");
    };
    assert_eq!(diagnostic.path, dir.path().join("b.cedar"));
    assert_eq!(
        diagnostic.position,
        Some(Position {
            line: 3,
            column: 10
        })
    );
    assert!(
        diagnostic
            .message
            .starts_with("the types Long and String are not compatible"),
        "{diagnostic}"
    );
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!(
            "invalid policies\n{}:3:10: the types",
            dir.path().join("b.cedar").display()
        )),
        "{shown}"
    );
}

#[test]
fn an_unknown_attribute_is_reported_for_every_action_it_is_checked_against() {
    let error = from_texts(&[(
        "p.cedar",
        "permit (principal, action in Stage0::Action::\"execute\", resource)\n  when { \
         context.retry_cuont > 1 };",
    )])
    .unwrap_err();
    // Five tools have a body; each action's context is checked.
    assert_eq!(error.diagnostics().len(), 5, "{error}");
    for diagnostic in error.diagnostics() {
        assert_eq!(
            diagnostic.position,
            Some(Position {
                line: 2,
                column: 10
            })
        );
        assert!(
            diagnostic.message.contains("attribute `retry_cuont`"),
            "{diagnostic}"
        );
        assert!(
            diagnostic.message.contains("did you mean `retry_count`?"),
            "{diagnostic}"
        );
    }
}

#[test]
fn a_parse_error_names_file_line_and_column() {
    let error = from_texts(&[
        ("a.cedar", VALID),
        (
            "b.cedar",
            "permit (principal, action, resource)\nwhen { context.goal like };",
        ),
    ])
    .unwrap_err();
    assert!(matches!(error, LoadError::Policies { .. }));
    assert_eq!(
        error.diagnostics(),
        [at("b.cedar", 2, 26, "unexpected token `}`")]
    );
}

#[test]
fn bad_annotations_duplicate_ids_and_templates_are_all_reported_at_once() {
    let annotations = "\n@id(\"A\")\n@risk_score(\"high\")\npermit (principal, action, resource);\n\n\
                       @verdict(\"DEFER\")\npermit (principal, action, resource);\n\n\
                       @severity(\"CRITICAL\")\nforbid (principal, action, resource);\n\n\
                       @verdict(\"MAYBE\")\nforbid (principal, action, resource);\n";
    let duplicate = "@id(\"RETRIES\")\nforbid (principal, action, resource);\n";
    let template = "permit (principal == ?principal, action, resource);\n";
    let error = from_texts(&[
        ("a.cedar", annotations),
        ("b.cedar", VALID),
        ("c.cedar", duplicate),
        ("d.cedar", template),
    ])
    .unwrap_err();
    assert_eq!(
        error.diagnostics(),
        [
            at(
                "a.cedar",
                2,
                1,
                "`@risk_score(\"high\")` in policy `A`: expected a whole number from 0 to 100"
            ),
            at(
                "a.cedar",
                6,
                1,
                "`@verdict(\"DEFER\")` on `permit` policy `a.cedar:6`: only a `forbid` can defer"
            ),
            at(
                "a.cedar",
                9,
                1,
                "`@severity(\"CRITICAL\")` in policy `a.cedar:9`: expected `HIGH`, `MEDIUM` or \
                 `LOW`"
            ),
            at(
                "a.cedar",
                12,
                1,
                "`@verdict(\"MAYBE\")` in policy `a.cedar:12`: the only verdict a policy can \
                 name is `DEFER`"
            ),
            at(
                "d.cedar",
                1,
                1,
                "templates (policies with `?principal` or `?resource`) are not supported"
            ),
            at("c.cedar", 1, 1, "a second policy with the id `RETRIES`"),
        ]
    );
}

#[test]
fn an_invalid_schema_is_refused_with_its_position() {
    let schema = Source::new(
        "team.cedarschema",
        "namespace Stage0 {\n  entity Actor = { role: Strin };\n}\n",
    );
    let error = CedarPolicy::from_sources(&[Source::new("a.cedar", VALID)], &schema).unwrap_err();
    assert!(matches!(error, LoadError::Schema { .. }), "{error}");
    let [diagnostic] = error.diagnostics() else {
        panic!("one diagnostic: {error}");
    };
    assert_eq!(diagnostic.path, Path::new("team.cedarschema"));
    assert_eq!(
        diagnostic.position,
        Some(Position {
            line: 2,
            column: 26
        })
    );
    assert!(
        diagnostic
            .message
            .starts_with("failed to resolve type: Strin"),
        "{diagnostic}"
    );
}

#[test]
fn a_schema_without_the_request_model_is_refused() {
    let schema = Source::new(
        "other.cedarschema",
        "namespace Stage0 {\n  entity Tool;\n  action \"research-topic\" appliesTo { principal: \
         Tool, resource: Tool };\n}\n",
    );
    let error = CedarPolicy::from_sources(
        &[Source::new(
            "a.cedar",
            "permit (principal, action, resource);",
        )],
        &schema,
    )
    .unwrap_err();
    assert!(matches!(error, LoadError::Schema { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "invalid schema\nother.cedarschema: the schema does not declare the entity type \
         `Stage0::Actor` of the request model"
    );
}

#[test]
fn missing_files_and_empty_folders_are_refused() {
    let dir = folder(&[("notes.txt", "not a policy")]);
    assert!(matches!(
        CedarPolicy::load(dir.path(), None),
        Err(LoadError::NoPolicies { .. })
    ));
    let missing = dir.path().join("missing.cedar");
    let error = CedarPolicy::load(&missing, None).unwrap_err();
    assert!(matches!(error, LoadError::Read { .. }));
    assert!(error.to_string().starts_with("cannot read `"), "{error}");
    let error = CedarPolicy::load(&dir.path().join("notes.txt"), Some(&missing)).unwrap_err();
    assert!(matches!(error, LoadError::Read { path, .. } if path == missing));
}

#[test]
fn an_erroring_policy_denies_the_call_and_is_named_even_beside_a_permit() {
    // Multiplying a retry count of 2 or more by 2^62 overflows a Long: an evaluation error.
    let policies = format!(
        "{VALID}\n@id(\"SCALED_RETRIES\")\npermit (principal, action == \
         Stage0::Action::\"retry-workflow\", resource)\n  when {{ context.retry_count * \
         4611686018427387904 > 0 }};\n"
    );
    let policy = from_texts(&[("p.cedar", &policies)]).unwrap();
    let arguments = json!({"workflowId": "etl", "retryCount": 2});

    let fine = decide_retry(&policy, arguments.clone(), 0);
    assert_eq!(fine.response.verdict, Verdict::Allow);
    assert_eq!(fine.determining, ["RETRIES"]);

    // Cedar alone would allow: `RETRIES` applies and the failing permit is skipped.
    let failed = decide_retry(&policy, arguments, 2);
    let response = &failed.response;
    assert_eq!(response.verdict, Verdict::Deny);
    assert_eq!(response.decision, Decision::Error);
    assert_eq!(failed.determining, ["SCALED_RETRIES"]);
    assert_eq!(
        response.reason,
        "POLICY_ERROR: policy `SCALED_RETRIES` could not be evaluated: integer overflow while \
         attempting to multiply the values `2` and `4611686018427387904`"
    );
    assert_eq!(response.issues.len(), 1);
    assert_eq!(response.issues[0].code, POLICY_ERROR);
    assert!(response.issues[0].message.contains("`SCALED_RETRIES`"));
    assert_eq!(response.policy_version, policy.version());
}

#[test]
fn a_call_that_does_not_fit_the_schema_is_denied_with_policy_error() {
    let policy = from_texts(&[("p.cedar", VALID)]).unwrap();
    // A call that fits comes first: the shapes that fit are remembered, never the others.
    let fits = decide_retry(&policy, json!({"workflowId": "etl", "retryCount": 2}), 2);
    assert_eq!(fits.response.verdict, Verdict::Allow);
    for (arguments, why) in [
        (
            json!({"workflowId": "etl", "retryCount": 2, "force": true}),
            "force",
        ),
        (
            json!({"workflowId": "etl", "retryCount": "2"}),
            "retryCount",
        ),
        (json!({"workflowId": "etl"}), "retryCount"),
        (
            json!({"workflowId": "etl", "retryCount": 1.5}),
            "retryCount",
        ),
    ]
    .into_iter()
    .flat_map(|case| [case.clone(), case])
    {
        let evaluation = decide_retry(&policy, arguments.clone(), 0);
        let response = &evaluation.response;
        assert_eq!(
            (response.verdict, response.decision),
            (Verdict::Deny, Decision::Error),
            "{arguments}"
        );
        assert!(
            response.reason.starts_with(
                "POLICY_ERROR: the request for `retry-workflow` does not fit the schema: "
            ),
            "{arguments}: {}",
            response.reason
        );
        assert!(response.reason.contains(why), "{}", response.reason);
        assert!(evaluation.determining.is_empty());
    }
}

#[test]
fn an_unknown_tool_is_denied_with_policy_error() {
    let policy = from_texts(&[("p.cedar", "permit (principal, action, resource);")]).unwrap();
    let intent = Intent {
        goal: "Delete everything".to_owned(),
        success_criteria: Vec::new(),
        constraints: Vec::new(),
        tools: Vec::new(),
        side_effects: Vec::new(),
        context: Map::new(),
    };
    let call = Call {
        tool: "rm-rf",
        arguments: &Map::new(),
        intent: &intent,
    };
    let response = policy.decide(&call, &facts(0), "r".to_owned()).response;
    assert_eq!(response.decision, Decision::Error);
    assert!(
        response.reason.starts_with(
            "POLICY_ERROR: the request for `rm-rf` does not fit the schema: action \
             `Stage0::Action::\"rm-rf\"` is not "
        ),
        "{}",
        response.reason
    );
}

#[test]
fn a_deferring_forbid_without_any_permit_is_no_permit() {
    let policy = from_texts(&[(
        "p.cedar",
        "@id(\"LOOPS\") @verdict(\"DEFER\")\nforbid (principal, action, resource) when { \
         context.retry_count >= 1 };",
    )])
    .unwrap();
    let evaluation = decide_retry(&policy, json!({"workflowId": "etl", "retryCount": 1}), 1);
    assert_eq!(evaluation.response.verdict, Verdict::Deny);
    assert_eq!(evaluation.response.issues[0].code, NO_PERMIT);
    assert!(evaluation.determining.is_empty());
}

#[test]
fn annotations_fill_the_verdict_and_defaults_fill_the_gaps() {
    let policy = from_texts(&[(
        "p.cedar",
        "permit (principal, action, resource);\n\n\
         @risk_score(\"30\")\nforbid (principal, action, resource) when { context.retry_count \
         >= 1 };\n\n\
         @id(\"LATE\") @reason(\"Too many retries\") @severity(\"LOW\") @risk_score(\"75\")\n\
         forbid (principal, action, resource) when { context.retry_count >= 2 };",
    )])
    .unwrap();
    assert_eq!(policy.policy_ids(), ["p.cedar:1", "p.cedar:3", "LATE"]);
    let arguments = json!({"workflowId": "etl", "retryCount": 2});

    let allowed = decide_retry(&policy, arguments.clone(), 0).response;
    assert_eq!(allowed.reason, "Permitted by policy `p.cedar:1`");
    assert_eq!((allowed.risk_score, allowed.high_risk), (None, None));

    let denied = decide_retry(&policy, arguments, 2).response;
    assert_eq!(denied.reason, "p.cedar:3: Policy `p.cedar:3` applies");
    let issues: Vec<(&str, &str, &str)> = denied
        .issues
        .iter()
        .map(|i| (i.code.as_str(), i.severity.as_str(), i.message.as_str()))
        .collect();
    assert_eq!(
        issues,
        [
            ("p.cedar:3", "HIGH", "Policy `p.cedar:3` applies"),
            ("LATE", "LOW", "Too many retries"),
        ]
    );
    assert_eq!(denied.risk_score, Some(75.into()));
    assert_eq!(denied.high_risk, Some(true));
}

#[test]
fn an_approval_without_an_approver_reads_as_pending() {
    let policy = from_texts(&[(
        "p.cedar",
        "@id(\"PENDING\")\npermit (principal, action, resource) when { context.approval_status \
         == \"pending\" && !(context has approved_by) };",
    )])
    .unwrap();
    let intent = Intent {
        goal: "Retry workflow etl".to_owned(),
        success_criteria: Vec::new(),
        constraints: Vec::new(),
        tools: Vec::new(),
        side_effects: Vec::new(),
        context: Map::new(),
    };
    let arguments = json!({"workflowId": "etl", "retryCount": 0});
    let arguments = arguments.as_object().unwrap();
    let call = Call {
        tool: "retry-workflow",
        arguments,
        intent: &intent,
    };
    for approved_by in [None, Some(""), Some("  ")] {
        let facts = Facts {
            approval_status: ApprovalStatus::Approved,
            approved_by: approved_by.map(str::to_owned),
            ..facts(0)
        };
        let verdict = policy
            .decide(&call, &facts, "r".to_owned())
            .response
            .verdict;
        assert_eq!(verdict, Verdict::Allow, "approved by {approved_by:?}");
    }
}

#[test]
fn the_policy_version_is_the_hash_of_the_files_in_name_order() {
    let dir = folder(&[("b.cedar", VALID), ("a.cedar", "// first\n")]);
    let loaded = CedarPolicy::load(dir.path(), None).unwrap();
    let digest = hex::encode(Sha256::digest(format!("// first\n{VALID}")));
    assert_eq!(loaded.version(), format!("cedar:{}", &digest[..12]));
    assert_eq!(
        policy_version(&[Source::new("a", "// first\n"), Source::new("b", VALID)]),
        loaded.version()
    );
    // One more byte is another version.
    std::fs::write(dir.path().join("a.cedar"), "// first \n").unwrap();
    assert_ne!(
        CedarPolicy::load(dir.path(), None).unwrap().version(),
        loaded.version()
    );
}

#[test]
fn the_shipped_policy_sets_load_and_name_their_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        std::fs::read_to_string(root.join(SCHEMA_PATH)).unwrap(),
        SCHEMA
    );
    for file in ["simulator.cedar", "team-example.cedar"] {
        let path = root.join("policies").join(file);
        let policy = CedarPolicy::load(&path, Some(&root.join(SCHEMA_PATH)))
            .unwrap_or_else(|error| panic!("{error}"));
        let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(policy.version(), format!("cedar:{}", &digest[..12]));
    }
}

#[test]
fn a_loaded_policy_set_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<CedarPolicy>();
}

/// Sets the permission bits of `path` to `mode`.
#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(unix)]
#[test]
fn a_policy_file_others_can_write_is_refused_naming_it_and_its_mode() {
    let dir = folder(&[("policy.cedar", VALID)]);
    let file = dir.path().join("policy.cedar");
    chmod(&file, 0o666);
    let error = CedarPolicy::load(&file, None).unwrap_err();
    assert!(
        matches!(&error, LoadError::Untrusted { path, .. } if *path == file.canonicalize().unwrap()),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains(&*file.to_string_lossy()), "{message}");
    assert!(message.contains("mode 0666"), "{message}");
    // Group-writable is refused as well; writable by its owner only, it loads.
    chmod(&file, 0o620);
    assert!(matches!(
        CedarPolicy::load(&file, None),
        Err(LoadError::Untrusted { .. })
    ));
    chmod(&file, 0o644);
    CedarPolicy::load(&file, None).expect("only its owner can write it");
}

#[cfg(unix)]
#[test]
fn a_policy_file_in_a_folder_others_can_write_is_refused_and_a_sticky_one_is_not() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let file = open.join("policy.cedar");
    std::fs::write(&file, VALID).unwrap();
    chmod(&file, 0o644);
    chmod(&open, 0o777);
    let error = CedarPolicy::load(&file, None).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, LoadError::Untrusted { .. }), "{message}");
    assert!(
        message.contains(&format!("`{}`", open.canonicalize().unwrap().display())),
        "{message}"
    );
    assert!(message.contains("mode 0777"), "{message}");
    // A symbolic link from a safe folder does not hide the folder the file is in.
    let link = dir.path().join("link.cedar");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    assert!(matches!(
        CedarPolicy::load(&link, None),
        Err(LoadError::Untrusted { .. })
    ));
    // With the sticky bit (as /tmp), others cannot replace the file: it loads.
    chmod(&open, 0o1777);
    CedarPolicy::load(&file, None).expect("a sticky folder above is accepted");
    // But a policy folder anyone can add a `.cedar` file to is refused, sticky or not.
    let error = CedarPolicy::load(&open, None).unwrap_err();
    assert!(error.to_string().contains("mode 1777"), "{error}");
}

#[cfg(unix)]
#[test]
fn a_schema_others_can_write_is_refused() {
    let dir = folder(&[("policy.cedar", VALID), ("stage0.cedarschema", SCHEMA)]);
    let schema = dir.path().join("stage0.cedarschema");
    chmod(&schema, 0o646);
    let error = CedarPolicy::load(&dir.path().join("policy.cedar"), Some(&schema)).unwrap_err();
    assert!(
        matches!(&error, LoadError::Untrusted { path, .. } if *path == schema.canonicalize().unwrap()),
        "{error}"
    );
}

#[cfg(unix)]
#[test]
fn a_policy_file_owned_by_another_user_is_refused() {
    let dir = folder(&[("policy.cedar", VALID)]);
    let file = dir.path().join("policy.cedar");
    // Only root can give a file away; run as another user, this test has nothing to check.
    if std::os::unix::fs::chown(&file, Some(4_242), None).is_err() {
        eprintln!("not root: a file cannot be given to another user here");
        return;
    }
    let error = CedarPolicy::load(&file, None).unwrap_err();
    assert!(error.to_string().contains("owned by uid 4242"), "{error}");
}
