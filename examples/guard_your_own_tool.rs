//! A stdio MCP server with one tool of its own, `save-note`, behind the Stage0 guard.
//!
//! Run it with the same `STAGE0_*` variables as mcp-server-stage0: without `STAGE0_API_KEY` the
//! simulator decides (it allows a private note and denies publishing one); with a key, Stage0.

use std::convert::Infallible;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stage0_guard::{Config, GuardedServer, GuardedTool, Intent, Permit, ToolIntent, ToolOutput};

/// Arguments of `save-note`; the doc comments become the tool's input schema.
#[derive(Deserialize, Serialize, JsonSchema)]
struct SaveNote {
    /// The note's title
    title: String,
    /// The note itself
    text: String,
    /// Also publish the note (default: keep it private)
    #[serde(default)]
    publish: bool,
}

impl ToolIntent for SaveNote {
    const NAME: &'static str = "save-note";
    const TITLE: &'static str = "Save a note";
    const DESCRIPTION: &'static str = "Save a note, and publish it when asked to";

    /// What the policy decision point is asked to authorise.
    fn intent(&self) -> Intent {
        Intent {
            goal: format!("Save the note titled {}", self.title),
            success_criteria: vec!["The note is saved".to_owned()],
            side_effects: match self.publish {
                true => vec!["publish".to_owned()],
                false => Vec::new(),
            },
            ..Intent::default()
        }
    }
}

impl GuardedTool for SaveNote {
    type Error = Infallible;

    /// The body: it needs a permit for this tool, which only the guard makes, after `ALLOW`.
    async fn run(self, _permit: Permit<Self>) -> Result<ToolOutput, Infallible> {
        let saved = format!("Saved \"{}\" ({} bytes)", self.title, self.text.len());
        Ok(ToolOutput::text(saved).with_data(serde_json::json!({ "title": self.title })))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_lookup(|name| std::env::var(name).ok())?;
    let guard = config.guard()?;
    let server = GuardedServer::builder(guard).tool::<SaveNote>().build();
    server.serve_stdio(std::future::pending()).await?;
    Ok(())
}
