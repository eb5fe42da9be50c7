//! The one writer of an audit log: a thread that seals records into the chain and appends them.
//!
//! Batches come from the group-commit loop (`batch.rs`): the writer seals each batch in order,
//! appends it with one `write` and makes it durable with one `fdatasync`. With
//! `STAGE0_AUDIT_SYNC=off` the fsync is skipped: records still reach the file before the caller
//! is answered, so they survive the process being killed, but not a power loss or an
//! operating-system crash. An `outcome` record rides on the next batch (`batch.rs`); a crash
//! before then loses it, and the next open names every call that has a `decision` and no
//! `outcome` in an `unfinished` record (see [`Writer::open`]), so the log says so instead of
//! keeping a silent gap.
//!
//! Each batch is appended under an exclusive lock on the file (`flock` on Unix), taken within
//! [`LOCK_WAIT`] or not at all (the batch is then refused, and its calls denied), after catching
//! up with whatever other processes appended since (two MCP clients may each start a server on
//! the same default log): each of their lines is checked as `audit verify` checks it (canonical
//! form, `hash`, `seq`, `prev`) before it moves the chain's head or feeds the attempt ledger, so
//! one file holds one chain and nothing unverified is counted. The same catch-up, from byte 0, is
//! what opening a log does. A last line without its newline found at open is a torn write left by
//! a crash: it is kept, ended with a newline, and named by a `recovery` record, and the chain
//! continues from the last whole record; nothing in it is used. Found while the server runs, it
//! was appended by someone else, and is refused. Any other break (a line that is not a sealed
//! record, a `seq` or `prev` that does not follow, a file that shrank) makes the log unavailable,
//! which fails every later call closed.
//!
//! After any failure to write or sync, the writer stops: what reached the disk is unknown, so
//! every later record is refused until the server restarts (and recovers). A lock not had in
//! time stops nothing: nothing was written, and the next batch tries again.
//!
//! The file is opened without following a symbolic link in the last component of its path
//! (`O_NOFOLLOW` on Unix): a link someone else planted there would choose where the records go.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::batch::Appender;
use super::chain::{self, GENESIS};
use super::record::{Event, RecoveryRecord, UnfinishedRecord};
use super::{AuditError, LOCK_WAIT, Unavailable};
use crate::approval::state::SpentNonceSet;
use crate::escape::escaped;
use crate::ledger::AttemptLedger;

/// About the length of a `decision` record's line, in bytes: what a batch's buffer is sized by.
const LINE_BYTES: usize = 1024;

/// A torn last line: where it starts and how long it is, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Torn {
    /// Where the torn line starts, in bytes from the start of the file.
    pub offset: u64,
    /// Its length in bytes (it has no newline).
    pub length: u64,
}

/// The writer's view of its file.
pub(super) struct Writer {
    file: File,
    path: PathBuf,
    sync: bool,
    /// How many bytes of the file this writer has read or written.
    end: u64,
    /// `seq` and `hash` of the chain's last record (0 and [`GENESIS`] for an empty log).
    seq: u64,
    hash: String,
    ledger: Arc<AttemptLedger>,
    /// The spent nonces of MRTR approval states, fed from `approval` records that name one.
    spent: SpentNonceSet,
    /// Set after a failed write or sync: every later record is refused with this.
    stopped: Option<Unavailable>,
    /// Whether the first catch-up (at open) is done: a torn last line found after it is refused.
    opened: bool,
    /// Filled by the first catch-up: the calls with a `decision` and no `outcome` since the last
    /// `unfinished` record, each with the `seq` of its first decision. Named at open.
    unfinished: HashMap<String, u64>,
}

/// What a record found by the first catch-up does to the calls without an outcome.
enum CallMark {
    /// A `decision` of the call, with its `seq`.
    Decided(String, u64),
    /// The call's `outcome`.
    Ended(String),
    /// An `unfinished` record: every call without an outcome so far is named.
    Named,
}

/// A whole line's place in the file.
#[derive(Clone, Copy)]
struct LineAt {
    offset: u64,
    length: u64,
}

impl Writer {
    /// Opens (creating it and its folders if needed) the log at `path`, reads it to its end,
    /// counting every retry it records in `ledger`, records a torn last line if there is one,
    /// then names in an `unfinished` record every call whose `decision` has no `outcome` (a crash
    /// ended it, or lost its outcome before the batch it rode on was written; or another server
    /// on the same file is running it now, and its outcome may follow).
    ///
    /// # Errors
    ///
    /// [`AuditError`] when the file cannot be opened, locked, read or written, or when its chain
    /// cannot be continued.
    pub(super) fn open(
        path: &Path,
        sync: bool,
        ledger: Arc<AttemptLedger>,
        spent: SpentNonceSet,
    ) -> Result<(Writer, Option<Torn>), AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        // The log holds goals, contexts and actor ids: what this opens for the first time only its
        // owner may read (folders 0700, the file 0600). Existing folders and files keep their
        // modes: they are the operator's.
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            private_folder().create(folder).map_err(io)?;
        }
        let existed = path.exists();
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let file = options.open(path).map_err(|source| {
            #[cfg(unix)]
            if source.raw_os_error() == Some(libc::ELOOP) {
                return AuditError::Symlink {
                    path: path.to_owned(),
                };
            }
            io(source)
        })?;
        if !existed && sync {
            // The new file's directory entry must be durable too, or a crash can lose the file.
            sync_folder(path).map_err(io)?;
        }
        let mut writer = Writer {
            file,
            path: path.to_owned(),
            sync,
            end: 0,
            seq: 0,
            hash: GENESIS.to_owned(),
            ledger,
            spent,
            stopped: None,
            opened: false,
            unfinished: HashMap::new(),
        };
        let (_, torn) = writer.append(Vec::new())?;
        Ok((writer, torn))
    }

    /// The `seq` and `hash` of the last record.
    pub(super) fn head(&self) -> (u64, &str) {
        (self.seq, &self.hash)
    }

    /// Appends `records` as one batch, or refuses them all once the writer has stopped.
    fn append_batch(&mut self, records: Vec<Map<String, Value>>) -> Result<Vec<u64>, Unavailable> {
        if let Some(why) = &self.stopped {
            return Err(why.clone());
        }
        self.append(records).map(|(seqs, _)| seqs).map_err(|error| {
            if let AuditError::Locked { .. } = error {
                tracing::error!(
                    path = %escaped(self.path.display()),
                    "audit log locked by another process: the calls of this batch are denied"
                );
                return Unavailable::new(error.to_string());
            }
            tracing::error!(
                path = %escaped(self.path.display()),
                error = %escaped(&error),
                "audit log stopped: every later call is denied"
            );
            let why = Unavailable::new(error.to_string());
            self.stopped = Some(why.clone());
            why
        })
    }

    /// Under the file lock: catches up, records a torn last line, seals and appends `records`,
    /// syncs. Returns the `seq` of each record and the torn line recorded, if any.
    fn append(
        &mut self,
        records: Vec<Map<String, Value>>,
    ) -> Result<(Vec<u64>, Option<Torn>), AuditError> {
        self.lock()?;
        let appended = self.append_locked(records);
        // Closing the file or ending the process releases the lock too; an error here changes
        // nothing that was written.
        let _ = self.file.unlock();
        appended
    }

    /// Takes the exclusive lock on the file, trying again (at most every 50 ms) until
    /// [`LOCK_WAIT`] has passed. Polling, because a blocking `flock` cannot be given a deadline,
    /// and this thread has nothing else to do meanwhile.
    fn lock(&self) -> Result<(), AuditError> {
        let deadline = Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.file.try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::Error(source)) => return Err(self.io(source)),
                Err(std::fs::TryLockError::WouldBlock) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AuditError::Locked {
                    path: self.path.clone(),
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn append_locked(
        &mut self,
        records: Vec<Map<String, Value>>,
    ) -> Result<(Vec<u64>, Option<Torn>), AuditError> {
        let torn = self.catch_up()?;
        // Room for lines of about a `decision`'s size, so that sealing seldom has to grow it.
        let mut buffer = Vec::with_capacity(LINE_BYTES * records.len());
        if let Some(torn) = torn {
            let torn_sha256 = self.torn_sha256(torn)?;
            buffer.push(b'\n');
            let recovery = Event::Recovery(RecoveryRecord {
                torn_offset: torn.offset,
                torn_length: torn.length,
                torn_sha256,
            });
            let Ok(Value::Object(recovery)) = serde_json::to_value(&recovery) else {
                unreachable!("a recovery record is a JSON object");
            };
            self.seal_into(&mut buffer, recovery);
            tracing::warn!(
                path = %escaped(self.path.display()),
                offset = torn.offset,
                length = torn.length,
                "the audit log ended in a torn line (a crash during a write); kept it and recorded it"
            );
        }
        if !self.unfinished.is_empty() {
            let mut calls: Vec<(String, u64)> = self.unfinished.drain().collect();
            calls.sort_unstable_by_key(|&(_, seq)| seq);
            tracing::warn!(
                path = %escaped(self.path.display()),
                calls = calls.len(),
                "calls with a decision and no outcome in the audit log (a crash); named them"
            );
            let unfinished = Event::Unfinished(UnfinishedRecord {
                call_ids: calls.into_iter().map(|(call_id, _)| call_id).collect(),
            });
            let Ok(Value::Object(unfinished)) = serde_json::to_value(&unfinished) else {
                unreachable!("an unfinished record is a JSON object");
            };
            self.seal_into(&mut buffer, unfinished);
        }
        let seqs = records
            .into_iter()
            .map(|record| self.seal_into(&mut buffer, record))
            .collect();
        if !buffer.is_empty() {
            (&self.file)
                .write_all(&buffer)
                .map_err(|source| self.io(source))?;
            if self.sync {
                self.file.sync_data().map_err(|source| self.io(source))?;
            }
            self.end += buffer.len() as u64;
        }
        Ok((seqs, torn))
    }

    /// Seals `record` as the next in the chain and adds its line to `buffer`; returns its `seq`.
    fn seal_into(&mut self, buffer: &mut Vec<u8>, record: Map<String, Value>) -> u64 {
        let seq = self.seq + 1;
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        self.hash = chain::seal_into(buffer, &record, seq, ts, &self.hash);
        buffer.push(b'\n');
        self.seq = seq;
        seq
    }

    /// Reads what was appended since this writer last looked (everything, at open): moves the
    /// head, counts retries in the ledger, and returns the torn last line if there is one.
    ///
    /// Every line is checked as `audit verify` checks it before anything in it is used: canonical
    /// form, `hash`, `seq` and `prev` ([`chain::check`]). A line that fails is accepted only as a
    /// torn line named by the very next record (a `recovery` record giving its offset, length and
    /// SHA-256), and then nothing in it is used. A record's `workflow_sha256` goes to the ledger
    /// only once the next line has shown it is not such a torn line. A last line without its
    /// newline is a torn write a crash left, recovered at open; found later, while this server
    /// runs, it was appended by someone else (a server that crashed mid-write, or anyone who can
    /// write the file), and the log is refused instead.
    fn catch_up(&mut self) -> Result<Option<Torn>, AuditError> {
        let length = self
            .file
            .metadata()
            .map_err(|source| self.io(source))?
            .len();
        if length < self.end {
            return Err(AuditError::Broken {
                path: self.path.clone(),
                offset: length,
                why: format!(
                    "the file shrank from {} to {length} bytes while the server was writing it",
                    self.end
                ),
            });
        }
        if length == self.end {
            self.opened = true;
            return Ok(None);
        }
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.end))
            .map_err(|source| self.io(source))?;
        let mut reader = BufReader::new(file.take(length - self.end));
        let mut offset = self.end;
        let mut line = Vec::new();
        // The last whole line (its bytes in `previous`), the head before it, the line that is not
        // a record and so must be the torn line named by the next (recovery) record, and the
        // ledger key of the last record, counted once the next line does not name it.
        let mut previous = Vec::new();
        let mut last: Option<LineAt> = None;
        let mut head_before_last = (self.seq, self.hash.clone());
        let mut unparsed: Option<(LineAt, chain::LineProblem)> = None;
        let mut pending_key: Option<Counted> = None;
        let mut pending_mark: Option<CallMark> = None;
        let mut torn = None;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|source| self.io(source))? as u64;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                if self.opened {
                    return Err(self.broken(
                        offset,
                        "a line without its newline was appended by another process while this \
                         server was running; only a crash leaves one, and a restart recovers it",
                    ));
                }
                torn = Some(Torn {
                    offset,
                    length: read,
                });
                offset += read;
                break;
            }
            line.pop();
            let at = LineAt {
                offset,
                length: read - 1,
            };
            offset += read;
            let checked = match chain::check(&line) {
                Ok(checked) => checked,
                Err(problem) => {
                    if let Some((earlier, problem)) = unparsed.take() {
                        return Err(self.not_a_record(earlier, &problem));
                    }
                    if let Some(counted) = pending_key.take() {
                        counted.replay(&self.ledger);
                    }
                    mark(&mut self.unfinished, pending_mark.take());
                    unparsed = Some((at, problem));
                    head_before_last = (self.seq, self.hash.clone());
                    last = Some(at);
                    std::mem::swap(&mut line, &mut previous);
                    continue;
                }
            };
            let recovery = checked.record.get("kind").and_then(Value::as_str) == Some("recovery");
            let names_last = recovery
                && last.is_some_and(|last| {
                    let field = |name: &str| checked.record.get(name);
                    field("torn_offset").and_then(Value::as_u64) == Some(last.offset)
                        && field("torn_length").and_then(Value::as_u64) == Some(last.length)
                        && field("torn_sha256").and_then(Value::as_str)
                            == Some(chain::sha256_hex(&previous).as_str())
                });
            if names_last {
                // The line before was torn: the chain goes on from the record before it, and
                // nothing in it counts (its key, still pending, is replaced below uncounted).
                (self.seq, self.hash) = head_before_last.clone();
                unparsed = None;
                pending_mark = None;
            } else if let Some((earlier, problem)) = unparsed.take() {
                return Err(self.not_a_record(earlier, &problem));
            } else if recovery {
                return Err(self.broken(
                    at.offset,
                    "a recovery record that does not name the torn line just before it",
                ));
            } else {
                if let Some(counted) = pending_key.take() {
                    counted.replay(&self.ledger);
                }
                mark(&mut self.unfinished, pending_mark.take());
            }
            if checked.seq != self.seq + 1 || checked.prev != self.hash {
                return Err(self.broken(
                    at.offset,
                    &format!(
                        "record seq {} does not continue the chain after seq {}",
                        checked.seq, self.seq
                    ),
                ));
            }
            pending_key = Counted::in_record(&checked.record);
            if !self.opened {
                pending_mark = call_mark(&checked);
            }
            head_before_last = (self.seq, std::mem::replace(&mut self.hash, checked.hash));
            self.seq = checked.seq;
            // A spent nonce counts at once, even in a line a recovery record later names as torn:
            // remembering one too many only refuses an answer, never accepts one.
            let nonce = checked.record.get("nonce_sha256").and_then(Value::as_str);
            let expiry = checked
                .record
                .get("nonce_expires_at_ms")
                .and_then(Value::as_u64);
            if let (Some(nonce), Some(ms)) = (nonce, expiry) {
                self.spent
                    .record(nonce, UNIX_EPOCH + Duration::from_millis(ms));
            }
            last = Some(at);
            std::mem::swap(&mut line, &mut previous);
        }
        if let Some((earlier, problem)) = unparsed {
            return Err(self.not_a_record(earlier, &problem));
        }
        if let Some(counted) = pending_key {
            counted.replay(&self.ledger);
        }
        mark(&mut self.unfinished, pending_mark);
        self.end = offset;
        self.opened = true;
        Ok(torn)
    }

    /// The error for the line at `at`, which is not a sealed record and no recovery record names.
    fn not_a_record(&self, at: LineAt, problem: &chain::LineProblem) -> AuditError {
        self.broken(
            at.offset,
            &format!("the line is not an audit record ({problem})"),
        )
    }

    /// SHA-256 (hex) of the torn line's bytes.
    fn torn_sha256(&self, torn: Torn) -> Result<String, AuditError> {
        let mut file = &self.file;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(torn.offset))
            .and_then(|_| file.take(torn.length).read_to_end(&mut bytes))
            .map_err(|source| self.io(source))?;
        Ok(chain::sha256_hex(&bytes))
    }

    fn io(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn broken(&self, offset: u64, why: &str) -> AuditError {
        AuditError::Broken {
            path: self.path.clone(),
            offset,
            why: why.to_owned(),
        }
    }
}

impl Appender for Writer {
    /// Records nobody waits for that could not be written are counted in the log of the server;
    /// the next open names their calls in an `unfinished` record.
    fn commit(
        &mut self,
        records: Vec<Map<String, Value>>,
        awaited: &[bool],
    ) -> Vec<Result<u64, Unavailable>> {
        let count = records.len();
        match self.append_batch(records) {
            Ok(seqs) => seqs.into_iter().map(Ok).collect(),
            Err(why) => {
                let unawaited = awaited.iter().filter(|awaited| !**awaited).count();
                if unawaited > 0 {
                    tracing::error!(
                        records = unawaited,
                        why = %escaped(&why),
                        "outcome records not written; the next start names their calls as unfinished"
                    );
                }
                vec![Err(why); count]
            }
        }
    }

    fn closed(&mut self) {
        tracing::info!(
            path = %escaped(self.path.display()),
            seq = self.seq,
            hash = %self.hash,
            "audit log closed"
        );
    }
}

/// Applies to `unfinished` what a whole record found by the first catch-up says about calls
/// without an outcome.
fn mark(unfinished: &mut HashMap<String, u64>, mark: Option<CallMark>) {
    match mark {
        Some(CallMark::Decided(call_id, seq)) => {
            unfinished.entry(call_id).or_insert(seq);
        }
        Some(CallMark::Ended(call_id)) => {
            unfinished.remove(&call_id);
        }
        Some(CallMark::Named) => unfinished.clear(),
        None => {}
    }
}

/// What `line` does to the calls without an outcome, by its `kind`.
fn call_mark(line: &chain::CheckedLine) -> Option<CallMark> {
    let call_id = || field(&line.record, "call_id").to_owned();
    match field(&line.record, "kind") {
        "decision" => Some(CallMark::Decided(call_id(), line.seq)),
        "outcome" => Some(CallMark::Ended(call_id())),
        "unfinished" => Some(CallMark::Named),
        _ => None,
    }
}

/// A string field of `record` ("" when absent or not a string).
fn field<'a>(record: &'a Map<String, Value>, name: &str) -> &'a str {
    record.get(name).and_then(Value::as_str).unwrap_or("")
}

/// The attempt a record counted in the ledger: its principal (`provenance.actor_id`, absent for
/// a principal without one) and the key its `workflow_sha256` names.
#[derive(Debug)]
struct Counted {
    actor_id: Option<String>,
    key: [u8; 32],
}

impl Counted {
    /// The attempt `record` counted; `None` when it counted none.
    fn in_record(record: &Map<String, Value>) -> Option<Counted> {
        let hex = record.get("workflow_sha256").and_then(Value::as_str)?;
        let mut key = [0; 32];
        hex::decode_to_slice(hex, &mut key).ok()?;
        let actor_id = record
            .get("provenance")
            .and_then(|provenance| provenance.get("actor_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(Counted { actor_id, key })
    }

    /// Counts the attempt again in `ledger`, as the call counted it.
    fn replay(self, ledger: &AttemptLedger) {
        ledger.replay_key(self.actor_id.as_deref(), self.key);
    }
}

/// Makes the directory entry of a new file durable.
#[cfg(unix)]
fn sync_folder(path: &Path) -> io::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    File::open(folder)?.sync_all()
}

/// Windows cannot open a directory as a file; its file system orders the metadata itself.
#[cfg(not(unix))]
fn sync_folder(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates a folder and its missing parents, each `0700` on Unix.
fn private_folder() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
}
