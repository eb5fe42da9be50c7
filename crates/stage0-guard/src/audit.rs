//! The audit log: a durable, hash-chained record of every decision, kept in a JSON Lines file
//! (`docs/contract.md` §10).
//!
//! For every tool call the guard writes a `decision` record for each verdict, an `approval`
//! record for each human answer and an `outcome` record at the end ([`record`] gives the
//! shapes). A decision record is on disk (written and fsync'd) before the tool body may run; if
//! it cannot be written, the call is `DENY` with the issue code `AUDIT_UNAVAILABLE` and nothing
//! runs. Each record carries the hash of the one before ([`chain`]), so an edited, deleted,
//! reordered or forged record breaks the chain where it is, and `mcp-server-stage0 audit verify`
//! ([`verify`]) names the first bad one. One writer thread per process seals and appends
//! (`writer.rs`), sharing an fsync between concurrent calls. The `outcome` record is not waited
//! for: it rides on the next batch (within [`LINGER`]), so a sequential call pays one fsync; a
//! crash that loses it leaves a `decision` without an `outcome`, which the next open names in an
//! `unfinished` record.
//!
//! What the chain proves, and what it does not: anyone who can write the file can also recompute
//! every hash after an edit. The chain makes any change show unless the whole rest of the file is
//! rewritten, and a rewrite shows against a last hash kept elsewhere: the server logs the head
//! (`seq` and `hash`) when it opens and closes the log, and `audit verify` prints it.

mod batch;
pub mod chain;
pub mod database;
pub mod record;
pub mod show;
pub mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rmcp::model::JsonObject;
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::approval::state::{self, SpentNonceSet};
use crate::approval::{ApprovalOutcome, ApprovalReport};
use crate::claims::Provenance;
use crate::ledger::AttemptLedger;
use crate::policy::Mode;
use crate::policy::wire::{Intent, Issue, PolicyResponse};
use batch::Message;
use database::{DatabaseLedger, DatabaseUrl, DatabaseWriter};
use record::{Event, Status};
use writer::Writer;

pub use batch::LINGER;
pub use writer::Torn;

/// Where the audit log goes and how durably it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `STAGE0_AUDIT_LOG`: the JSON Lines file; `None` for `off`. When the variable is not set,
    /// [`default_path`], in the user's state folder.
    pub path: Option<PathBuf>,
    /// `STAGE0_AUDIT_SYNC` (`on` | `off`, default `on`): fsync every batch of records before a
    /// tool body runs. `off` keeps the records through a killed process but not through a power
    /// loss or an operating-system crash.
    pub sync: bool,
    /// `STAGE0_DATABASE_URL`: the audit chain and the attempt ledger in this PostgreSQL database,
    /// shared by every server that names it, instead of a file (`path` is then `None`).
    pub database: Option<DatabaseUrl>,
}

/// The issue code of the `DENY` a call gets when its decision record cannot be written.
pub const AUDIT_UNAVAILABLE: &str = "AUDIT_UNAVAILABLE";

/// The file name of the default log, in the platform's per-user state (Linux) or local data
/// (macOS, Windows) folder for this program.
pub const DEFAULT_FILE_NAME: &str = "audit.jsonl";

/// Where the log goes when `STAGE0_AUDIT_LOG` is not set: `$XDG_STATE_HOME/mcp-server-stage0/
/// audit.jsonl` (by default `~/.local/state/...`) on Linux, `~/Library/Application Support/
/// mcp-server-stage0/audit.jsonl` on macOS, `%LOCALAPPDATA%\mcp-server-stage0\data\audit.jsonl`
/// on Windows; the same whatever folder an MCP client starts the server in. `None` when the
/// platform has no home folder for the user. (The `directories` crate reads `HOME` and the XDG
/// variables itself.)
pub fn default_path() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "mcp-server-stage0")?;
    let folder = dirs.state_dir().unwrap_or_else(|| dirs.data_local_dir());
    Some(folder.join(DEFAULT_FILE_NAME))
}

/// How long the writer waits for the lock on the log file before it gives up on a batch: 5 s.
///
/// Another server holds the lock for one batch (a write and an fsync: milliseconds) or, while it
/// opens the log, for one read of the whole file (about a second for 100,000 records,
/// BENCHMARKS.md). Anyone else who can open the file can also take the lock and keep it (a
/// read-only descriptor is enough for `flock`); past this wait the records of the batch are not
/// written and each of its calls is denied (`AUDIT_UNAVAILABLE`), instead of every call, and the
/// server's exit, waiting on the lock forever. The next batch tries again.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Why an audit log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file or its folder could not be created, opened, locked, read, written or synced, or
    /// the writer thread could not be started.
    #[error("cannot use the audit log `{}`: {source}", path.display())]
    Io {
        /// The audit log file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the lock on the file for longer than [`LOCK_WAIT`].
    #[error(
        "the audit log `{}` is locked by another process: waited {} s for it",
        path.display(),
        LOCK_WAIT.as_secs()
    )]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// The log's path names a symbolic link, which the server does not follow: whoever made it
    /// chose where the records go, or what file they overwrite.
    #[error(
        "the audit log `{}` is a symbolic link, which is not followed: set `STAGE0_AUDIT_LOG` to \
         the file itself",
        path.display()
    )]
    Symlink {
        /// The log's path, the link.
        path: PathBuf,
    },
    #[error(
        "the audit log `{}` cannot be continued at byte {offset}: {why}; run \
         `mcp-server-stage0 audit verify` on it, and move it aside to start a new chain",
        path.display()
    )]
    /// The file is not a chain this server can continue: a line that is not a record (other
    /// than a torn last line), a `seq` or `prev` that does not follow, or a file that shrank.
    Broken {
        /// The audit log file.
        path: PathBuf,
        /// Where the break is, in bytes from the start of the file.
        offset: u64,
        /// What is wrong, in a few words.
        why: String,
    },
}

/// The issue code of the `DENY` a call gets when the shared attempt ledger had counted another
/// attempt at its workflow (through another replica) after the call read its count: it was
/// decided on a count the ledger had moved past (`audit/database.rs`). Calling again reads the
/// new count.
pub const LEDGER_CONFLICT: &str = "LEDGER_CONFLICT";

/// The issue code of the `DENY` a call gets when the MRTR approval state it answers was answered
/// before through another replica (its nonce is in the shared chain, `audit/database.rs`).
pub const STATE_ALREADY_ANSWERED: &str = "STATE_ALREADY_ANSWERED";

/// Why a record was not written: the reason a call was failed closed, and the issue code that
/// says so ([`AUDIT_UNAVAILABLE`], or for a database's refusal [`LEDGER_CONFLICT`] or
/// [`STATE_ALREADY_ANSWERED`]). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct Unavailable {
    why: Arc<str>,
    code: &'static str,
}

impl Unavailable {
    fn new(why: impl Into<Arc<str>>) -> Self {
        Unavailable::refused(AUDIT_UNAVAILABLE, why)
    }

    fn refused(code: &'static str, why: impl Into<Arc<str>>) -> Self {
        Unavailable {
            why: why.into(),
            code,
        }
    }

    /// The issue code of the `DENY` this failure gives a call.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// A handle on the audit log that every call of a server appends to. Clones share the writer.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The file; `None` for a database.
    path: Option<PathBuf>,
    ledger: Arc<AttemptLedger>,
    /// With a database: the shared ledger, read before each counted call.
    shared: Option<DatabaseLedger>,
    spent: SpentNonceSet,
    state: State,
}

#[derive(Debug)]
enum State {
    Open {
        inbox: mpsc::Sender<Message>,
        thread: Mutex<Option<JoinHandle<()>>>,
    },
    Unavailable(Unavailable),
}

impl State {
    /// Starts the writer thread, which makes its appender with `start` and runs the group-commit
    /// loop into it.
    fn writing<A: batch::Appender>(
        start: impl FnOnce() -> A + Send + 'static,
    ) -> std::io::Result<State> {
        let (inbox, messages) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || batch::run(&mut start(), &messages))?;
        Ok(State::Open {
            inbox,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// What opening a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The `seq` of the last record (0 for a new log).
    pub seq: u64,
    /// The `hash` of the last record ([`chain::GENESIS`] for a new log).
    pub hash: String,
    /// The torn last line a crash had left, now named by a `recovery` record.
    pub recovered: Option<Torn>,
}

impl AuditLog {
    /// Opens the log at `path` (creating it and its folders if needed), continues its chain,
    /// records a torn last line, rebuilds the attempt ledger from its records, and starts the
    /// writer thread. `sync` is `STAGE0_AUDIT_SYNC`: fsync every batch before answering.
    ///
    /// # Errors
    ///
    /// [`AuditError`] when the file cannot be created, locked, read or written, or its chain
    /// cannot be continued (see `writer.rs`).
    pub fn open(path: &Path, sync: bool) -> Result<(AuditLog, Opened), AuditError> {
        let ledger = Arc::new(AttemptLedger::default());
        let spent = SpentNonceSet::default();
        let (writer, recovered) = Writer::open(path, sync, Arc::clone(&ledger), spent.clone())?;
        let (seq, hash) = writer.head();
        let opened = Opened {
            seq,
            hash: hash.to_owned(),
            recovered,
        };
        let state = State::writing(move || writer).map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        let log = AuditLog::with_state(Some(path), ledger, spent, state, None);
        Ok((log, opened))
    }

    /// Opens the chain and the attempt ledger in the PostgreSQL database at `url`
    /// (`STAGE0_DATABASE_URL`), shared with every other server that uses it (`database.rs`), and
    /// starts the writer thread, which connects at once and logs the chain's head. A database
    /// that cannot be reached does not stop anything: that is logged, every call is denied
    /// (`AUDIT_UNAVAILABLE`) while it lasts, and each batch connects again.
    ///
    /// # Errors
    ///
    /// The operating system's error when the writer thread or its runtime cannot be started.
    pub fn open_database(url: DatabaseUrl) -> std::io::Result<AuditLog> {
        let shared = DatabaseLedger::new(url.clone());
        let writer = DatabaseWriter::new(url)?;
        let state = State::writing(move || {
            let mut writer = writer;
            writer.connect();
            writer
        })?;
        Ok(AuditLog::with_state(
            None,
            Arc::new(AttemptLedger::default()),
            SpentNonceSet::default(),
            state,
            Some(shared),
        ))
    }

    /// A log that could not be opened: every call is failed closed with `error` as the reason.
    pub fn unavailable(path: &Path, error: &AuditError) -> AuditLog {
        let state = State::Unavailable(Unavailable::new(error.to_string()));
        let ledger = Arc::new(AttemptLedger::default());
        AuditLog::with_state(Some(path), ledger, SpentNonceSet::default(), state, None)
    }

    fn with_state(
        path: Option<&Path>,
        ledger: Arc<AttemptLedger>,
        spent: SpentNonceSet,
        state: State,
        shared: Option<DatabaseLedger>,
    ) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                path: path.map(Path::to_owned),
                ledger,
                shared,
                spent,
                state,
            }),
        }
    }

    /// The file this log writes; `None` for a database ([`open_database`](AuditLog::open_database)).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The shared attempt ledger in the database, when the log is one (`open_database`); `None`
    /// for a file, whose ledger is [`ledger`](AuditLog::ledger).
    pub fn shared_ledger(&self) -> Option<&DatabaseLedger> {
        self.inner.shared.as_ref()
    }

    /// The attempt ledger rebuilt from the log's records; the guard counts retries in it.
    pub fn ledger(&self) -> Arc<AttemptLedger> {
        Arc::clone(&self.inner.ledger)
    }

    /// The spent nonces of MRTR approval states that the log's `approval` records name, its own
    /// and those other servers append; the guard's [`ApprovalStates`] shares the set, so a state
    /// answered once cannot be answered again after a restart.
    ///
    /// [`ApprovalStates`]: crate::approval::state::ApprovalStates
    pub fn spent_nonces(&self) -> SpentNonceSet {
        self.inner.spent.clone()
    }

    /// Seals `event` into the chain and waits until it is written (and, with sync on, fsync'd);
    /// returns its `seq`.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when the record was not written: the log could not be opened, a write or
    /// sync failed, or the log was closed.
    pub async fn append(&self, event: &Event<'_>) -> Result<u64, Unavailable> {
        let (done, answer) = oneshot::channel();
        self.send(event, Some(done))?;
        answer.await.map_err(|_| closed())?
    }

    /// Seals `event` into the chain with the next batch, within [`LINGER`] or at
    /// [`close`](AuditLog::close), without waiting for it; a failure to write it is logged by
    /// the writer, and the next open names its call as unfinished.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when the log could not be opened or was closed.
    fn append_unawaited(&self, event: &Event<'_>) -> Result<(), Unavailable> {
        self.send(event, None)
    }

    fn send(
        &self,
        event: &Event<'_>,
        done: Option<oneshot::Sender<Result<u64, Unavailable>>>,
    ) -> Result<(), Unavailable> {
        let inbox = match &self.inner.state {
            State::Open { inbox, .. } => inbox,
            State::Unavailable(why) => return Err(why.clone()),
        };
        let Ok(Value::Object(record)) = serde_json::to_value(event) else {
            unreachable!("every event serialises to a JSON object");
        };
        inbox
            .send(Message::Append { record, done })
            .map_err(|_| closed())
    }

    /// Writes what was sent before, stops the writer and waits for it: call once, at shutdown.
    /// Later appends are refused.
    pub fn close(&self) {
        if let State::Open { inbox, thread } = &self.inner.state {
            let _ = inbox.send(Message::Close);
            let thread = thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

/// Why a record sent after [`AuditLog::close`] is refused.
fn closed() -> Unavailable {
    Unavailable::new("the audit log is closed (the server is stopping)")
}

/// `policy` replaced by the `DENY` of a call whose decision record could not be written: decision
/// `ERROR`, the issue [`Unavailable::code`] (`AUDIT_UNAVAILABLE` unless a database refused the
/// record), the same `request_id`, `stage0_request_id` and `policy_version`.
pub fn fail_closed(policy: PolicyResponse, why: &Unavailable) -> PolicyResponse {
    let reason = match why.code() {
        AUDIT_UNAVAILABLE => format!("The audit log is unavailable, so nothing may run: {why}"),
        _ => format!("The audit log refused the record, so nothing may run: {why}"),
    };
    let mut denied = PolicyResponse::fail_closed(reason, policy.request_id);
    denied.stage0_request_id = policy.stage0_request_id;
    denied.policy_version = policy.policy_version;
    denied.issues = vec![Issue {
        code: why.code().to_owned(),
        severity: "HIGH".to_owned(),
        message: why.to_string(),
    }];
    denied
}

/// The records of one tool call, written as the guard reaches each step. Without a log (auditing
/// off) every step does nothing.
#[derive(Debug)]
pub struct CallTrail<'a> {
    log: Option<&'a AuditLog>,
    call_id: String,
    tool: &'static str,
    arguments_sha256: String,
    /// Set by an approval, named by the decision of the second check.
    deferred_request_id: Option<String>,
    decisions: u32,
    /// Named by the outcome record, once the guard has sorted the `ALLOW`'s guardrails.
    guardrails: Guardrails,
    /// The call's turns at its workflows in a shared ledger, held until its first decision is
    /// recorded ([`DatabaseLedger::turns`]).
    turns: Vec<database::Turn>,
}

/// The guardrails of an `ALLOW`, sorted by whether the tool's body enforces them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guardrails {
    /// Those the body enforces (`GuardedTool::GUARDRAILS`).
    pub enforced: Vec<String>,
    /// Those no code enforces.
    pub unenforced: Vec<String>,
}

impl<'a> CallTrail<'a> {
    /// The trail of a call of `tool` with `arguments`, in `log` (or nowhere).
    pub fn new(log: Option<&'a AuditLog>, tool: &'static str, arguments: &JsonObject) -> Self {
        let (call_id, arguments_sha256) = match log {
            Some(_) => (
                Uuid::new_v4().to_string(),
                chain::sha256_hex(&chain::canonical(arguments)),
            ),
            None => (String::new(), String::new()),
        };
        CallTrail {
            log,
            call_id,
            tool,
            arguments_sha256,
            deferred_request_id: None,
            decisions: 0,
            guardrails: Guardrails::default(),
            turns: Vec::new(),
        }
    }

    /// The `call_id` every record of this call carries; `None` without an audit log.
    pub fn call_id(&self) -> Option<&str> {
        self.log.map(|_| self.call_id.as_str())
    }

    /// Writes the `decision` record of `policy`, the verdict on `intent`, and waits until it is
    /// durable.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when it was not written; the caller must then fail the call closed.
    pub async fn decision(
        &mut self,
        intent: &Intent,
        provenance: &Provenance,
        policy: &PolicyResponse,
        mode: Mode,
        latency: Duration,
    ) -> Result<(), Unavailable> {
        let Some(log) = self.log else {
            return Ok(());
        };
        self.decisions += 1;
        let (goal, whole_goal) = record::bounded_goal(&intent.goal);
        let (goal_bytes, goal_sha256) = whole_goal.unzip();
        let event = Event::Decision(record::DecisionRecord {
            call_id: &self.call_id,
            request_id: &policy.request_id,
            stage0_request_id: policy.stage0_request_id.as_deref(),
            deferred_request_id: self.deferred_request_id.as_deref(),
            tool: self.tool,
            arguments_sha256: &self.arguments_sha256,
            goal,
            goal_bytes,
            goal_sha256,
            side_effects: &intent.side_effects,
            context: &intent.context,
            provenance,
            // Only the first check of a call counted an attempt, whatever came after.
            workflow_sha256: provenance
                .workflow_key
                .filter(|_| self.decisions == 1)
                .map(hex::encode),
            verdict: policy.verdict,
            decision: policy.decision,
            reason: &policy.reason,
            policy_version: &policy.policy_version,
            risk_score: policy.risk_score.as_ref(),
            issues: policy.issues.iter().map(|i| i.code.as_str()).collect(),
            mode,
            determining_policies: &policy.determining_policies,
            answers: &policy.answers,
            shadow: policy.shadow.as_ref(),
            check_latency_ms: record::millis(latency),
        });
        let recorded = log.append(&event).await.map(drop);
        // Counted (or refused): the next call of the workflow may read its count.
        self.turns.clear();
        recorded
    }

    /// Holds `turns` until the call's first decision is recorded (or the call ends).
    pub fn hold(&mut self, turns: Vec<database::Turn>) {
        self.turns = turns;
    }

    /// Writes the `approval` record of how asking a human ended, and waits until it is durable.
    /// `spent` names the nonce (SHA-256, hex) and expiry of the MRTR state the answer came with,
    /// when it did.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when it was not written; the caller must then fail the call closed.
    pub async fn approval(
        &mut self,
        asked: &ApprovalReport,
        spent: Option<(&str, SystemTime)>,
    ) -> Result<(), Unavailable> {
        let Some(log) = self.log else {
            return Ok(());
        };
        if asked.outcome == ApprovalOutcome::Approved {
            self.deferred_request_id = Some(asked.deferred_request_id.clone());
        }
        let event = Event::Approval(record::ApprovalRecord {
            call_id: &self.call_id,
            request_id: &asked.deferred_request_id,
            tool: self.tool,
            outcome: asked.outcome,
            via: asked.via,
            nonce_sha256: spent.map(|(nonce, _)| nonce),
            nonce_expires_at_ms: spent.map(|(_, expires_at)| state::unix_ms(expires_at)),
            approval: asked.approval.as_ref(),
            detail: asked.detail.as_deref(),
        });
        log.append(&event).await.map(drop)
    }

    /// Notes the guardrails of the final `ALLOW`, for the `outcome` record.
    pub fn guardrails(&mut self, guardrails: Guardrails) {
        self.guardrails = guardrails;
    }

    /// Hands the `outcome` record to the writer without waiting for it to be written: it rides
    /// on the next batch (the next call's decision, or alone within [`LINGER`], or at
    /// [`AuditLog::close`]), so a call pays one fsync, its decision's, not two. A crash before
    /// that batch loses the record, and the next open names the call in an `unfinished` record
    /// (`docs/contract.md` §10). A failure is logged, not returned: the call has ended, and its
    /// result stands. (`async` for the callers that await it; it never waits.)
    ///
    /// `request_id` is that of the final verdict, `error` why the body failed or the arguments
    /// could not be read, `duration` how long the body ran.
    pub async fn outcome(
        &self,
        request_id: Option<&str>,
        status: Status,
        error: Option<&str>,
        duration: Option<Duration>,
    ) {
        let Some(log) = self.log else {
            return;
        };
        let event = Event::Outcome(record::OutcomeRecord {
            call_id: &self.call_id,
            request_id,
            tool: self.tool,
            arguments_sha256: &self.arguments_sha256,
            executed: matches!(status, Status::Ok | Status::Error),
            status,
            error,
            duration_ms: duration.map(record::millis),
            guardrails_enforced: &self.guardrails.enforced,
            guardrails_unenforced: &self.guardrails.unenforced,
        });
        if let Err(why) = log.append_unawaited(&event) {
            tracing::error!(
                tool = self.tool,
                call_id = %self.call_id,
                why = %crate::escape::escaped(&why),
                "outcome record not written"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use serde_json::json;

    use super::*;
    use crate::ledger::WorkflowId;

    fn outcome(call_id: &str) -> Event<'_> {
        Event::Outcome(record::OutcomeRecord {
            call_id,
            request_id: None,
            tool: "research-topic",
            arguments_sha256: "00",
            executed: false,
            status: Status::Blocked,
            error: None,
            duration_ms: None,
            guardrails_enforced: &[],
            guardrails_unenforced: &[],
        })
    }

    /// A log at `path` with `n` records written by a writer that is then closed.
    async fn write(path: &Path, n: usize) -> Opened {
        let (log, opened) = AuditLog::open(path, true).expect("the log opens");
        for i in 0..n {
            log.append(&outcome(&i.to_string())).await.unwrap();
        }
        log.close();
        opened
    }

    fn verified(path: &Path) -> verify::Verified {
        verify::verify_file(path)
            .unwrap()
            .expect("the log verifies")
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    /// A call of `research-topic` in `log` whose decision (a `DENY` of the check `request_id`)
    /// is durable.
    async fn decided<'a>(log: &'a AuditLog, request_id: &str) -> CallTrail<'a> {
        let mut trail = CallTrail::new(Some(log), "research-topic", &JsonObject::new());
        decide(&mut trail, request_id).await;
        trail
    }

    /// Records one more decision of `trail`'s call (the check `request_id`), as a second check
    /// does.
    async fn decide(trail: &mut CallTrail<'_>, request_id: &str) {
        let intent = Intent {
            goal: "Research Rust".to_owned(),
            success_criteria: Vec::new(),
            constraints: Vec::new(),
            tools: Vec::new(),
            side_effects: Vec::new(),
            context: serde_json::Map::new(),
        };
        let policy = PolicyResponse::fail_closed("test".to_owned(), request_id.to_owned());
        let provenance = Provenance::default();
        trail
            .decision(
                &intent,
                &provenance,
                &policy,
                Mode::Simulator,
                Duration::ZERO,
            )
            .await
            .unwrap();
    }

    /// The records of the log at `path`.
    fn records(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn an_outcome_is_not_waited_for_and_is_written_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, true).unwrap();
        let trail = CallTrail::new(Some(&log), "research-topic", &JsonObject::new());
        trail.outcome(None, Status::Blocked, None, None).await;
        log.close();
        let records = records(&path);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["kind"], "outcome");
        assert_eq!(records[0]["call_id"], trail.call_id().unwrap());
    }

    #[tokio::test]
    async fn an_outcome_rides_on_the_next_awaited_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, true).unwrap();
        log.append_unawaited(&outcome("1")).unwrap();
        // Once the next decision is durable, the outcome sent before it is too, before it.
        decided(&log, "r").await;
        let records = records(&path);
        assert_eq!((records.len(), &records[0]["call_id"]), (2, &json!("1")));
        log.close();
    }

    #[tokio::test]
    async fn an_outcome_alone_is_written_without_a_close_or_another_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, false).unwrap();
        log.append_unawaited(&outcome("1")).unwrap();
        // Bounded polling: nothing else happens that the test could wait on.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() == 0 {
            assert!(std::time::Instant::now() < deadline, "never written");
            tokio::task::yield_now().await;
        }
        log.close();
    }

    #[tokio::test]
    async fn an_open_names_the_calls_with_a_decision_and_no_outcome_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, true).unwrap();
        let ended = decided(&log, "r1").await;
        let mut first = decided(&log, "r2").await;
        let second = decided(&log, "r3").await;
        log.append(&outcome(ended.call_id().unwrap()))
            .await
            .unwrap();
        decide(&mut first, "r4").await;
        log.close();
        assert_eq!(verified(&path).open, 2);

        write(&path, 0).await;
        let records = records(&path);
        assert_eq!(records.len(), 6);
        assert_eq!(records[5]["kind"], "unfinished");
        let named = json!([first.call_id(), second.call_id()]);
        assert_eq!(
            records[5]["call_ids"], named,
            "in the order of their first decision"
        );
        let after = verified(&path);
        assert_eq!((after.unfinished, after.open), (2, 0));
        // Named once: the next open has nothing to add.
        write(&path, 0).await;
        assert_eq!(verified(&path).records, 6);

        // `audit show --request-id` of a named call shows the record that names it.
        let mut out = Vec::new();
        let selection = show::Selection {
            request_id: Some("r3".to_owned()),
            last: None,
        };
        show::show(&path, &selection, &mut out).unwrap();
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("2 call(s) without an outcome"), "{shown}");
        assert!(
            !shown.contains("r2"),
            "only the call selected and the record naming it"
        );
    }

    #[tokio::test]
    async fn a_decision_in_a_torn_line_is_not_named_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 1).await;
        let last = verified(&path).last_hash;
        // A whole decision that lost its newline: torn, kept, and never counted.
        let Value::Object(record) = json!({"kind": "decision", "call_id": "torn"}) else {
            unreachable!()
        };
        append_bytes(&path, &chain::seal(record, 2, "t".to_owned(), &last).line);
        write(&path, 0).await;
        // And again from the start, where the recovery record names it.
        write(&path, 0).await;
        let kinds: Vec<Value> = records(&path).iter().map(|r| r["kind"].clone()).collect();
        assert_eq!(
            kinds,
            [json!("outcome"), json!("decision"), json!("recovery")]
        );
        assert_eq!(verified(&path).unfinished, 0);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_log_and_the_folders_made_for_it_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made/here/audit.jsonl");
        write(&path, 1).await;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "the log file");
        assert_eq!(
            mode(&dir.path().join("made/here")),
            0o700,
            "the folder it is in"
        );
        assert_eq!(mode(&dir.path().join("made")), 0o700, "the folder above");
    }

    #[tokio::test]
    async fn a_reopened_log_continues_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/folder/audit.jsonl");
        assert_eq!(write(&path, 3).await.seq, 0);
        let first = verified(&path);
        let reopened = write(&path, 2).await;
        assert_eq!((reopened.seq, reopened.hash), (3, first.last_hash));
        assert_eq!(verified(&path).records, 5);
    }

    #[tokio::test]
    async fn concurrent_appends_get_contiguous_seqs_in_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, true).unwrap();
        let mut appends = tokio::task::JoinSet::new();
        for i in 0..200 {
            let log = log.clone();
            appends.spawn(async move { log.append(&outcome(&i.to_string())).await.unwrap() });
        }
        let mut seqs = appends.join_all().await;
        log.close();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
        assert_eq!(verified(&path).records, 200);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_kept_and_named_by_a_recovery_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 2).await;
        let before = std::fs::read(&path).unwrap();
        let torn = br#"{"call_id":"7","kind":"outc"#;
        append_bytes(&path, torn);

        let reopened = write(&path, 1).await;
        let expected = Torn {
            offset: before.len() as u64,
            length: torn.len() as u64,
        };
        assert_eq!(reopened.recovered, Some(expected));
        assert_eq!(reopened.seq, 3, "the recovery record is seq 3");
        let after = std::fs::read(&path).unwrap();
        assert!(after.starts_with(&[before, torn.to_vec(), b"\n".to_vec()].concat()));
        let verified = verified(&path);
        assert_eq!((verified.records, verified.recoveries), (4, 1));
    }

    #[tokio::test]
    async fn a_whole_record_that_lost_only_its_newline_is_recovered_as_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 2).await;
        let last = verified(&path).last_hash;
        let Ok(Value::Object(record)) = serde_json::to_value(outcome("x")) else {
            unreachable!()
        };
        append_bytes(&path, &chain::seal(record, 3, "t".to_owned(), &last).line);

        let reopened = write(&path, 0).await;
        assert!(reopened.recovered.is_some());
        assert_eq!(verified(&path).recoveries, 1);
        // And again after a second crash that tore the very first write of a restart.
        append_bytes(&path, b"{");
        assert!(write(&path, 1).await.recovered.is_some());
        assert_eq!(verified(&path).recoveries, 2);
    }

    #[tokio::test]
    async fn a_log_torn_before_its_first_record_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"{\"ca").unwrap();
        let opened = write(&path, 1).await;
        assert_eq!(
            opened.recovered,
            Some(Torn {
                offset: 0,
                length: 4
            })
        );
        assert_eq!(verified(&path).records, 2);
    }

    #[tokio::test]
    async fn a_log_whose_chain_cannot_be_continued_is_refused_and_fails_calls_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 2).await;
        let size = std::fs::metadata(&path).unwrap().len();
        append_bytes(&path, b"edited by hand\n");
        let error = AuditLog::open(&path, true).unwrap_err();
        assert!(
            matches!(&error, AuditError::Broken { offset, .. } if *offset == size),
            "{error}"
        );
        let log = AuditLog::unavailable(&path, &error);
        let why = log.append(&outcome("1")).await.unwrap_err();
        assert!(why.to_string().contains("audit verify"), "{why}");
    }

    /// `n` lines a process that cannot compute hashes appends after the record `(seq, hash)`:
    /// each continues `seq` and `prev`, claims a hash of its own making and counts a retry of
    /// `workflow`.
    fn forged(n: u64, seq: u64, hash: &str, workflow: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut prev = hash.to_owned();
        for i in 1..=n {
            let fake = format!("{:064x}", seq + i);
            let line = serde_json::json!({
                "kind": "decision", "seq": seq + i, "prev": prev, "hash": fake,
                "ts": "2026-01-01T00:00:00Z", "tool": "retry-workflow",
                "workflow_sha256": hex::encode(AttemptLedger::key(&WorkflowId::new(workflow).unwrap())),
            });
            let serde_json::Value::Object(line) = line else {
                unreachable!("an object literal")
            };
            bytes.extend_from_slice(&chain::canonical(&line));
            bytes.push(b'\n');
            prev = fake;
        }
        bytes
    }

    #[tokio::test]
    async fn foreign_lines_whose_hash_does_not_hold_count_nothing_and_stop_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, opened) = AuditLog::open(&path, false).unwrap();
        append_bytes(&path, &forged(5, opened.seq, &opened.hash, "never-seen"));
        let why = log.append(&outcome("1")).await.unwrap_err();
        assert!(why.to_string().contains("`hash` does not match"), "{why}");
        assert_eq!(
            log.ledger()
                .observe(&WorkflowId::new("never-seen").unwrap()),
            0
        );
        // Refused for good: the log does not pick up after the forged lines either.
        assert!(log.append(&outcome("2")).await.is_err());
        log.close();
        // And a restart refuses them as well.
        let error = AuditLog::open(&path, false).unwrap_err();
        assert!(matches!(error, AuditError::Broken { .. }), "{error}");
    }

    #[tokio::test]
    async fn foreign_records_that_verify_are_counted_once_the_next_line_shows_they_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, opened) = AuditLog::open(&path, false).unwrap();
        // Another server's record: sealed, so it verifies, and it counts one retry of `etl`.
        let Ok(Value::Object(mut record)) = serde_json::to_value(outcome("x")) else {
            unreachable!()
        };
        let key = hex::encode(AttemptLedger::key(&WorkflowId::new("etl").unwrap()));
        record.insert("workflow_sha256".to_owned(), key.into());
        let sealed = chain::seal(record, opened.seq + 1, "t".to_owned(), &opened.hash);
        append_bytes(&path, &[sealed.line, b"\n".to_vec()].concat());
        log.append(&outcome("1")).await.unwrap();
        assert_eq!(log.ledger().observe(&WorkflowId::new("etl").unwrap()), 1);
        log.close();
        assert_eq!(verified(&path).records, 2);
    }

    #[tokio::test]
    async fn a_line_without_its_newline_appended_while_the_server_runs_stops_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, opened) = AuditLog::open(&path, false).unwrap();
        // A whole record, even one that verifies, is not a crash's torn write while we run.
        let Ok(Value::Object(record)) = serde_json::to_value(outcome("x")) else {
            unreachable!()
        };
        let sealed = chain::seal(record, opened.seq + 1, "t".to_owned(), &opened.hash);
        append_bytes(&path, &sealed.line);
        let why = log.append(&outcome("1")).await.unwrap_err();
        assert!(why.to_string().contains("without its newline"), "{why}");
        log.close();
        // A restart recovers it as a torn line, which counts for nothing.
        let reopened = write(&path, 1).await;
        assert!(reopened.recovered.is_some());
        assert_eq!(verified(&path).recoveries, 1);
    }

    #[tokio::test]
    async fn audit_show_shows_a_torn_line_by_its_place_never_as_the_record_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 1).await;
        let last = verified(&path).last_hash;
        // A whole decision, sealed so that it would verify, appended without its newline.
        let Ok(Value::Object(mut record)) = serde_json::to_value(outcome("forged")) else {
            unreachable!()
        };
        record.insert("tool".to_owned(), "publish-content".into());
        let sealed = chain::seal(record, 2, "t".to_owned(), &last);
        append_bytes(&path, &sealed.line);
        let shown = |path: &Path| {
            let mut out = Vec::new();
            show::show(path, &show::Selection::default(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let before = shown(&path);
        assert!(
            before.contains("line 2: torn line of") && before.contains("no recovery record"),
            "{before}"
        );
        // Recovered at the next start: still a torn line, now named by the recovery record.
        write(&path, 1).await;
        let after = shown(&path);
        assert!(
            after.contains("line 2: torn line of") && after.contains("kept by recovery record #2"),
            "{after}"
        );
        for text in [before, after] {
            assert!(
                !text.contains("forged") && !text.contains("publish"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_decision_record_keeps_a_prefix_of_a_long_goal_and_the_digest_of_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, false).unwrap();
        let short = "Research Rust".to_owned();
        let long = format!("Research {}", "é".repeat(2 * 1024 * 1024));
        let policy = PolicyResponse::fail_closed("test".to_owned(), "r".to_owned());
        for goal in [&short, &long] {
            let intent = Intent {
                goal: goal.clone(),
                success_criteria: Vec::new(),
                constraints: Vec::new(),
                tools: Vec::new(),
                side_effects: Vec::new(),
                context: serde_json::Map::new(),
            };
            let mut trail = CallTrail::new(Some(&log), "research-topic", &JsonObject::new());
            trail
                .decision(
                    &intent,
                    &Provenance::default(),
                    &policy,
                    Mode::Simulator,
                    Duration::ZERO,
                )
                .await
                .unwrap();
        }
        log.close();
        assert_eq!(verified(&path).records, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].len() < 4096, "{} bytes", lines[1].len());
        let records: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records[0]["goal"], short.as_str());
        assert!(records[0].get("goal_sha256").is_none());
        let prefix: String = long.chars().take(record::GOAL_PREFIX_CHARS).collect();
        assert_eq!(records[1]["goal"], prefix.as_str());
        assert_eq!(records[1]["goal_bytes"], long.len());
        assert_eq!(
            records[1]["goal_sha256"],
            chain::sha256_hex(long.as_bytes()).as_str()
        );
    }

    #[tokio::test]
    async fn an_unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let path = file.join("audit.jsonl");
        let error = AuditLog::open(&path, true).unwrap_err();
        assert!(
            error.to_string().contains(&*path.to_string_lossy()),
            "{error}"
        );
    }

    /// The intent of a `retry-workflow` call of `etl`.
    fn retry_intent() -> Intent {
        Intent {
            goal: "Retry workflow etl".to_owned(),
            side_effects: vec!["loop".to_owned()],
            ..Intent::default()
        }
    }

    #[tokio::test]
    async fn the_attempt_ledger_is_rebuilt_from_decision_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, false).unwrap();
        let key = AttemptLedger::key(&WorkflowId::new("etl").unwrap());
        let provenance = Provenance {
            workflow_key: Some(key),
            ..Provenance::default()
        };
        let intent = retry_intent();
        let policy = PolicyResponse::fail_closed("test".to_owned(), "r".to_owned());
        for _ in 0..3 {
            let mut trail = CallTrail::new(Some(&log), "retry-workflow", &JsonObject::new());
            for _ in 0..2 {
                // A second check of the same call (after an approval) counts nothing more.
                trail
                    .decision(
                        &intent,
                        &provenance,
                        &policy,
                        Mode::Simulator,
                        Duration::ZERO,
                    )
                    .await
                    .unwrap();
            }
        }
        log.close();
        let (reopened, _) = AuditLog::open(&path, false).unwrap();
        let observe = |id| reopened.ledger().observe(&WorkflowId::new(id).unwrap());
        assert_eq!(observe("ETL"), 3, "the same workflow, spelled otherwise");
        assert_eq!(observe("other"), 0);
        reopened.close();
    }

    #[tokio::test]
    async fn a_principals_attempts_are_rebuilt_in_its_own_share_of_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, _) = AuditLog::open(&path, false).unwrap();
        let key = AttemptLedger::key_for(Some("alice"), &WorkflowId::new("etl").unwrap());
        let provenance = Provenance {
            actor_id: Some("alice".to_owned()),
            workflow_key: Some(key),
            ..Provenance::default()
        };
        let intent = retry_intent();
        let policy = PolicyResponse::fail_closed("test".to_owned(), "r".to_owned());
        for _ in 0..2 {
            CallTrail::new(Some(&log), "retry-workflow", &JsonObject::new())
                .decision(
                    &intent,
                    &provenance,
                    &policy,
                    Mode::Simulator,
                    Duration::ZERO,
                )
                .await
                .unwrap();
        }
        log.close();
        let (reopened, _) = AuditLog::open(&path, false).unwrap();
        assert_eq!(reopened.ledger().seen_key(Some("alice"), key), 2);
        assert_eq!(reopened.ledger().seen_key(None, key), 0, "not anybody's");
        reopened.close();
    }
}
