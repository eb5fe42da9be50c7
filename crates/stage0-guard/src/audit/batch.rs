//! Group commit: the loop that turns the records callers send into batches, shared by the file
//! writer (`writer.rs`) and the PostgreSQL writer (`database.rs`).
//!
//! Callers send records over a channel. The loop takes every record that is waiting (up to
//! [`MAX_BATCH`]) and hands them to its [`Appender`] as one batch, which seals them in order and
//! makes them durable at once (one fsync, or one transaction); then each caller hears its
//! record's `seq`, or why it was not written. Concurrent calls so share the cost of durability
//! instead of paying it each, and no caller hears "written" before its record is durable.
//!
//! A record nobody waits for (an `outcome`: the call has ended, its result stands) rides on the
//! next batch: a batch of only such records is held for at most [`LINGER`], so that the next
//! call's `decision` carries it through the same commit, and is written alone once [`LINGER`]
//! has passed, or at [`Message::Close`].

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::Unavailable;

/// The most records sealed and made durable in one batch.
pub(super) const MAX_BATCH: usize = 256;

/// The longest a record nobody waits for is held for a batch to ride on: 5 ms.
pub const LINGER: Duration = Duration::from_millis(5);

/// What callers send the writer.
pub(super) enum Message {
    /// Seal and append `record`; answer `done` with its `seq` once it is durable or, without
    /// `done`, write it with the next batch (within [`LINGER`]).
    Append {
        record: Map<String, Value>,
        done: Option<oneshot::Sender<Result<u64, Unavailable>>>,
    },
    /// Finish what was sent before, then stop.
    Close,
}

/// Where a batch goes: the file, or the database.
pub(super) trait Appender {
    /// Seals `records` in order and makes them durable as one batch. Returns, for each record,
    /// its `seq` or why it was not written. `awaited[i]` says whether a caller waits for
    /// `records[i]`; a record nobody waits for that is not written is the appender's to keep for
    /// later or to report.
    fn commit(
        &mut self,
        records: Vec<Map<String, Value>>,
        awaited: &[bool],
    ) -> Vec<Result<u64, Unavailable>>;

    /// The loop has ended: every record sent was handed to [`commit`](Appender::commit).
    fn closed(&mut self);
}

/// Answers messages until [`Message::Close`] or until every sender is gone, then writes what is
/// left and calls [`Appender::closed`].
pub(super) fn run(appender: &mut impl Appender, inbox: &Receiver<Message>) {
    let mut records = Vec::new();
    let mut replies = Vec::new();
    // Set while the batch holds only records nobody waits for: when to write it anyway.
    let mut deadline: Option<Instant> = None;
    loop {
        let first = match deadline {
            None => inbox.recv().ok(),
            Some(until) => {
                match inbox.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(message) => Some(message),
                    Err(RecvTimeoutError::Timeout) => {
                        answer(appender, &mut records, &mut replies);
                        deadline = None;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let mut next = first;
        let mut closing = next.is_none();
        while let Some(message) = next.take() {
            match message {
                Message::Append { record, done } => {
                    records.push(record);
                    replies.push(done);
                }
                Message::Close => {
                    closing = true;
                    break;
                }
            }
            if records.len() < MAX_BATCH {
                next = inbox.try_recv().ok();
            }
        }
        let awaited = replies.iter().any(Option::is_some);
        if closing || awaited || records.len() >= MAX_BATCH {
            answer(appender, &mut records, &mut replies);
            deadline = None;
        } else if !records.is_empty() {
            deadline.get_or_insert_with(|| Instant::now() + LINGER);
        }
        if closing {
            break;
        }
    }
    appender.closed();
}

/// Commits the batch in `records` and answers those who wait.
fn answer(
    appender: &mut impl Appender,
    records: &mut Vec<Map<String, Value>>,
    replies: &mut Vec<Option<oneshot::Sender<Result<u64, Unavailable>>>>,
) {
    if records.is_empty() {
        return;
    }
    let awaited: Vec<bool> = replies.iter().map(Option::is_some).collect();
    let written = appender.commit(std::mem::take(records), &awaited);
    for (done, written) in replies.drain(..).zip(written) {
        // A caller that stopped waiting (a cancelled call) needs no answer.
        if let Some(done) = done {
            let _ = done.send(written);
        }
    }
}
