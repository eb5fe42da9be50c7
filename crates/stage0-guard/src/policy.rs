//! The policy decision points: the live Stage0 API or the built-in simulator, behind one `check`.
//!
//! Which one answers is decided once, from the configuration: a key selects Stage0, no key
//! selects the simulator. There is no fallback from one to the other: when a key is set and the
//! API fails, the verdict is `DENY` / `ERROR`, never a simulated one.

pub mod cedar;
pub mod http;
pub mod simulator;
pub mod wire;

use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

use http::HttpPolicyClient;
use wire::{Intent, PolicyResponse};

/// Which policy decision point answered; part of every verdict this server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The live Stage0 API (`STAGE0_API_KEY` set).
    Stage0,
    /// The deterministic built-in simulator (no key).
    Simulator,
}

impl Mode {
    /// `stage0` or `simulator`, as in `structuredContent.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stage0 => "stage0",
            Mode::Simulator => "simulator",
        }
    }
}

/// The policy decision point the guard asks: chosen once, from the configuration
/// ([`Config::policy`](crate::config::Config::policy)).
#[derive(Debug, Clone)]
pub enum PolicyClient {
    /// The live Stage0 `/check` API (`STAGE0_API_KEY` set).
    Live(HttpPolicyClient),
    /// The deterministic built-in simulator ([`simulator::simulate`]), with a fresh UUID v4 as
    /// each verdict's `request_id`.
    Simulator,
}

impl PolicyClient {
    /// Which kind of decision point this is.
    pub fn mode(&self) -> Mode {
        match self {
            PolicyClient::Live(_) => Mode::Stage0,
            PolicyClient::Simulator => Mode::Simulator,
        }
    }

    /// The verdict on `intent`. Never fails: problems are `DENY` / `ERROR` verdicts.
    pub async fn check(&self, intent: &Intent) -> PolicyResponse {
        match self {
            PolicyClient::Live(client) => client.check(intent).await,
            PolicyClient::Simulator => simulator::simulate(intent, Uuid::new_v4().to_string()),
        }
    }
}
