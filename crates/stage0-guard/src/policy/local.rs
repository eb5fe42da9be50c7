//! The `cedar` policy decision point as a server runs it: the enforcing policy set, a shadow set
//! beside it, the recent-call counts, and reloading both without a restart.
//!
//! [`LocalPolicy`] holds the policy sets loaded from files ([`PolicyFiles`]) as one immutable
//! [`PolicySets`] behind an `Arc`. A call takes the current sets once, when it is prepared
//! ([`LocalPolicy::current`]), and decides on them to its end, so a reload never changes the
//! policy under a call in flight (`docs/cedar.md`, "Reload"). [`LocalPolicy::reload`] reads and
//! validates everything again and swaps it in only when all of it is valid; otherwise the old
//! sets stay and the diagnostics are returned.
//!
//! The shadow set (`STAGE0_POLICY_SHADOW`) is decided on every call beside the enforcing one and
//! never enforced: its answer goes into the verdict's `shadow` field (and so into the decision
//! record), and a verdict that differs is logged.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::cedar::{Call, CedarPolicy, Facts, LoadError, RecentCallCounts, RecentCalls};
use super::wire::{Mode, Opinion, PolicyResponse};
use crate::escape::escaped;

/// Where a Cedar policy set is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFiles {
    /// A `.cedar` file, or a folder whose `.cedar` files are read in name order
    /// (`STAGE0_POLICY`, `STAGE0_POLICY_SHADOW`).
    pub policies: PathBuf,
    /// The Cedar schema to validate against (`STAGE0_POLICY_SCHEMA`); `None` for the shipped
    /// one ([`cedar::SCHEMA`](super::cedar::SCHEMA)).
    pub schema: Option<PathBuf>,
}

impl PolicyFiles {
    /// Reads and validates the policy set in strict mode.
    ///
    /// # Errors
    ///
    /// [`LoadError`] with every diagnostic (file, line, column, message).
    pub fn load(&self) -> Result<CedarPolicy, LoadError> {
        CedarPolicy::load(&self.policies, self.schema.as_deref())
    }
}

/// The policy sets in force at one moment: what a call decides on from start to end.
#[derive(Debug)]
pub struct PolicySets {
    /// The set that decides.
    pub enforcing: CedarPolicy,
    /// The candidate set decided beside it and never enforced.
    pub shadow: Option<CedarPolicy>,
}

impl PolicySets {
    /// The enforcing set's verdict on `call`, with its determining policies and, when there is a
    /// shadow set, the shadow's answer in `shadow` (a difference in verdict is logged).
    pub fn decide(&self, call: &Call<'_>, facts: &Facts, request_id: String) -> PolicyResponse {
        let evaluation = self.enforcing.decide(call, facts, request_id.clone());
        let mut response = evaluation.response;
        response.determining_policies = evaluation.determining;
        if let Some(shadow) = &self.shadow {
            let mut candidate = shadow.decide(call, facts, request_id);
            candidate.response.determining_policies = candidate.determining;
            let opinion = Opinion::of(Mode::Cedar, &candidate.response);
            if opinion.verdict != response.verdict {
                tracing::warn!(
                    tool = call.tool,
                    verdict = %response.verdict,
                    shadow_verdict = %opinion.verdict,
                    policy_version = %response.policy_version,
                    shadow_policy_version = %opinion.policy_version,
                    shadow_policies = %escaped(&opinion.determining_policies.join(",")),
                    "the shadow policy set disagrees"
                );
            }
            response.shadow = Some(opinion);
        }
        response
    }
}

/// The outcome of [`LocalPolicy::reload`].
#[derive(Debug)]
pub struct Reload {
    /// The enforcing set's `policy_version` before the reload.
    pub previous_version: String,
    /// The versions now in force (enforcing, shadow), or why nothing changed.
    pub result: Result<(String, Option<String>), LoadError>,
}

/// The `cedar` policy decision point: policy sets loaded from files, reloadable, and the
/// recent-call counts its requests carry. Share it behind an `Arc`.
#[derive(Debug)]
pub struct LocalPolicy {
    files: PolicyFiles,
    shadow_files: Option<PolicyFiles>,
    sets: RwLock<Arc<PolicySets>>,
    recent_calls: RecentCalls,
}

impl LocalPolicy {
    /// Loads the enforcing set from `files` and, when given, the shadow set from `shadow`.
    ///
    /// # Errors
    ///
    /// The [`LoadError`] of the first set that is invalid; the server must not start with it.
    pub fn load(files: PolicyFiles, shadow: Option<PolicyFiles>) -> Result<Self, LoadError> {
        let sets = PolicySets {
            enforcing: files.load()?,
            shadow: shadow.as_ref().map(PolicyFiles::load).transpose()?,
        };
        Ok(LocalPolicy {
            files,
            shadow_files: shadow,
            sets: RwLock::new(Arc::new(sets)),
            recent_calls: RecentCalls::default(),
        })
    }

    /// The policy sets in force now; a call keeps them to its end.
    pub fn current(&self) -> Arc<PolicySets> {
        Arc::clone(&self.sets.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts a checked call of `tool` by `principal` now, and returns the counts of the calls
    /// before it ([`RecentCalls::observe`]).
    pub fn observe(&self, principal: &str, tool: &str) -> RecentCallCounts {
        self.recent_calls.observe(principal, tool, Instant::now())
    }

    /// Reads and validates the policy files again (the enforcing and the shadow set) and puts
    /// them in force when all are valid; otherwise the sets in force stay as they were. Calls
    /// already holding the old sets ([`current`](LocalPolicy::current)) finish on them.
    pub fn reload(&self) -> Reload {
        let previous_version = self.current().enforcing.version().to_owned();
        let loaded = self.files.load().and_then(|enforcing| {
            let shadow = self.shadow_files.as_ref().map(PolicyFiles::load);
            Ok(PolicySets {
                enforcing,
                shadow: shadow.transpose()?,
            })
        });
        let result = loaded.map(|sets| {
            let versions = (
                sets.enforcing.version().to_owned(),
                sets.shadow
                    .as_ref()
                    .map(|shadow| shadow.version().to_owned()),
            );
            *self.sets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sets);
            versions
        });
        Reload {
            previous_version,
            result,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::claims::{ActorRole, ApprovalStatus};
    use crate::policy::wire::{Intent, Verdict};

    fn facts() -> Facts {
        Facts {
            actor_id: None,
            role: ActorRole::Viewer,
            retry_count: 0,
            claimed_retry_count: 0,
            approval_status: ApprovalStatus::None,
            approved_by: None,
            now: std::time::SystemTime::now(),
            recent_calls: RecentCallCounts::default(),
        }
    }

    /// The verdict of `sets` on a `research-topic` call.
    fn research(sets: &PolicySets) -> Verdict {
        let arguments = Map::from_iter([("topic".to_owned(), "Rust".into())]);
        let intent = Intent::default();
        let call = Call {
            tool: "research-topic",
            arguments: &arguments,
            intent: &intent,
        };
        sets.decide(&call, &facts(), "r".to_owned()).verdict
    }

    const PERMIT: &str = "permit (principal, action, resource);\n";
    const FORBID: &str = "forbid (principal, action, resource);\n";

    #[test]
    fn a_call_holding_the_old_sets_decides_on_them_after_a_reload() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("policy.cedar");
        std::fs::write(&path, PERMIT).unwrap();
        let files = PolicyFiles {
            policies: path.clone(),
            schema: None,
        };
        let local = LocalPolicy::load(files, None).unwrap();
        let in_flight = local.current();

        std::fs::write(&path, FORBID).unwrap();
        let reload = local.reload();
        let (version, shadow) = reload.result.expect("the new policy is valid");
        assert_ne!(version, reload.previous_version);
        assert_eq!(shadow, None);
        assert_eq!(
            research(&in_flight),
            Verdict::Allow,
            "the call in flight keeps its policy"
        );
        assert_eq!(research(&local.current()), Verdict::Deny);
    }

    #[test]
    fn an_invalid_reload_keeps_both_sets_in_force() {
        let dir = tempfile::TempDir::new().unwrap();
        let (path, shadow_path) = (dir.path().join("p.cedar"), dir.path().join("s.cedar"));
        std::fs::write(&path, PERMIT).unwrap();
        std::fs::write(&shadow_path, FORBID).unwrap();
        let files = |policies: &std::path::Path| PolicyFiles {
            policies: policies.to_owned(),
            schema: None,
        };
        let local = LocalPolicy::load(files(&path), Some(files(&shadow_path))).unwrap();
        let before = local.current().enforcing.version().to_owned();

        // A valid enforcing set beside an invalid shadow: neither is taken.
        std::fs::write(&path, FORBID).unwrap();
        std::fs::write(&shadow_path, "forbid (principal, action resource);").unwrap();
        let reload = local.reload();
        let error = reload.result.expect_err("the shadow is invalid");
        assert!(error.to_string().contains("s.cedar:1:"), "{error}");
        assert_eq!(local.current().enforcing.version(), before);
        assert_eq!(research(&local.current()), Verdict::Allow);
    }

    #[cfg(unix)]
    #[test]
    fn a_reload_of_a_file_others_can_write_keeps_the_set_in_force() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("policy.cedar");
        std::fs::write(&path, PERMIT).unwrap();
        let files = PolicyFiles {
            policies: path.clone(),
            schema: None,
        };
        let local = LocalPolicy::load(files, None).unwrap();
        let before = local.current().enforcing.version().to_owned();

        std::fs::write(&path, FORBID).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let reload = local.reload();
        let error = reload.result.expect_err("others can write the file");
        assert!(matches!(error, LoadError::Untrusted { .. }), "{error}");
        assert!(error.to_string().contains("mode 0666"), "{error}");
        assert_eq!(local.current().enforcing.version(), before);
        assert_eq!(research(&local.current()), Verdict::Allow);
    }
}
