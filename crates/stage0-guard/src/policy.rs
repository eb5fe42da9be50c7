//! The policy decision points: the live Stage0 API, the built-in simulator, or a local Cedar
//! policy set (alone, or before Stage0), behind one `check`.
//!
//! Which one answers is decided once, from the configuration (`docs/contract.md` §5): a Cedar
//! policy (`STAGE0_POLICY`) selects `cedar`, and with a key too `cedar+stage0`; a key alone
//! selects Stage0; nothing selects the simulator. There is no fallback from one to another: when
//! a PDP fails, the verdict is `DENY` / `ERROR`, never another PDP's.
//!
//! With `cedar+stage0` the local policy decides first. Its `DENY` is final and Stage0 is not asked
//! (no network call); otherwise Stage0 is asked and the stricter verdict wins (`DENY` > `DEFER` >
//! `ALLOW`; on a tie, Stage0's answer, which may carry guardrails). Both answers are kept in the
//! verdict's `answers`.

pub mod cedar;
pub mod http;
pub mod local;
pub mod simulator;
pub mod wire;

use std::sync::Arc;

use uuid::Uuid;

use cedar::{Call, Facts};
use http::HttpPolicyClient;
use local::{LocalPolicy, PolicySets};
use wire::{Intent, Opinion, PolicyResponse, Verdict};

pub use wire::Mode;

/// The policy decision point the guard asks: chosen once, from the configuration
/// ([`Config::policy`](crate::config::Config::policy)).
#[derive(Debug, Clone)]
pub enum PolicyClient {
    /// The live Stage0 `/check` API (`STAGE0_API_KEY` set).
    Live(HttpPolicyClient),
    /// The deterministic built-in simulator ([`simulator::simulate`]), with a fresh UUID v4 as
    /// each verdict's `request_id`.
    Simulator,
    /// A local Cedar policy set (`STAGE0_POLICY`), with a fresh UUID v4 as each verdict's
    /// `request_id`.
    Cedar(Arc<LocalPolicy>),
    /// The local Cedar policy set, then Stage0 (`STAGE0_POLICY` and `STAGE0_API_KEY`).
    CedarThenStage0(Arc<LocalPolicy>, HttpPolicyClient),
}

/// What only the `cedar` policy decision point reads about a call, beside its intent.
#[derive(Debug)]
pub struct LocalQuestion<'a> {
    /// The tool, its arguments after vouching, and the intent.
    pub call: Call<'a>,
    /// What the server vouches for: principal, role, retry counts, approval, clock, recent calls.
    pub facts: Facts,
    /// The policy sets the call decides on, taken when it was prepared.
    pub sets: &'a PolicySets,
}

impl PolicyClient {
    /// Which kind of decision point this is.
    pub fn mode(&self) -> Mode {
        match self {
            PolicyClient::Live(_) => Mode::Stage0,
            PolicyClient::Simulator => Mode::Simulator,
            PolicyClient::Cedar(_) => Mode::Cedar,
            PolicyClient::CedarThenStage0(..) => Mode::CedarStage0,
        }
    }

    /// The local Cedar policy, when this decision point has one: the guard then gives
    /// [`check`](PolicyClient::check) a [`LocalQuestion`].
    pub fn local(&self) -> Option<&Arc<LocalPolicy>> {
        match self {
            PolicyClient::Cedar(local) | PolicyClient::CedarThenStage0(local, _) => Some(local),
            PolicyClient::Live(_) | PolicyClient::Simulator => None,
        }
    }

    /// The verdict on `intent`; `local` is what the Cedar policy reads, `None` for a decision
    /// point without one. Never fails: problems are `DENY` / `ERROR` verdicts, and so is a
    /// Cedar policy asked without its `local` question.
    pub async fn check(
        &self,
        intent: &Intent,
        local: Option<&LocalQuestion<'_>>,
    ) -> PolicyResponse {
        let decide_locally = |question: &LocalQuestion<'_>| {
            question
                .sets
                .decide(&question.call, &question.facts, Uuid::new_v4().to_string())
        };
        match (self, local) {
            (PolicyClient::Live(client), _) => client.check(intent).await,
            (PolicyClient::Simulator, _) => simulator::simulate(intent, Uuid::new_v4().to_string()),
            (PolicyClient::Cedar(_), Some(question)) => decide_locally(question),
            (PolicyClient::CedarThenStage0(_, client), Some(question)) => {
                let mut local = decide_locally(question);
                let shadow = local.shadow.take();
                let mut answers = vec![Opinion::of(Mode::Cedar, &local)];
                let mut verdict = if local.verdict == Verdict::Deny {
                    local
                } else {
                    let remote = client.check(intent).await;
                    answers.push(Opinion::of(Mode::Stage0, &remote));
                    if strictness(local.verdict) > strictness(remote.verdict) {
                        local
                    } else {
                        remote
                    }
                };
                verdict.answers = answers;
                verdict.shadow = shadow;
                verdict
            }
            (PolicyClient::Cedar(_) | PolicyClient::CedarThenStage0(..), None) => {
                PolicyResponse::fail_closed(
                    "the Cedar policy was asked without the call's arguments and facts".to_owned(),
                    Uuid::new_v4().to_string(),
                )
            }
        }
    }
}

/// How strict a verdict is, for layering: `DENY` > `DEFER` > `ALLOW`.
fn strictness(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Allow => 0,
        Verdict::Defer => 1,
        Verdict::Deny => 2,
    }
}
