//! The attempt ledger: how many `retry-workflow` calls the server itself has seen per workflow.
//!
//! An agent in a runaway loop can send `retryCount: 0` forever, so the retry count the policy
//! decision point sees must not be the agent's word alone. The guard asks [`AttemptLedger::observe`]
//! once per call, whatever the verdict, and sends the larger of the claim and the count it returns.
//!
//! The ledger lives as long as the process and is bounded: it remembers at most
//! [`LEDGER_CAPACITY`] workflows, keyed by the SHA-256 of the workflow id (32 bytes, whatever the
//! id's length), and forgets the least recently seen one when a new one arrives. An agent that
//! sends more than that many distinct workflow ids between two retries of one workflow can make
//! the server forget that workflow's count; it then counts again from the agent's claim. That
//! takes thousands of calls, each of them checked and visible in the log.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use sha2::{Digest, Sha256};

/// How many workflows the ledger remembers; about 100 bytes each, so at most about 1 MiB.
pub const LEDGER_CAPACITY: usize = 10_000;

/// Attempts seen per workflow id, bounded to [`LEDGER_CAPACITY`] workflows (least recently seen
/// forgotten first). Safe to share between concurrent calls.
#[derive(Debug)]
pub struct AttemptLedger {
    attempts: Mutex<LruCache<[u8; 32], u64>>,
}

impl Default for AttemptLedger {
    fn default() -> Self {
        AttemptLedger::with_capacity(LEDGER_CAPACITY)
    }
}

impl AttemptLedger {
    /// A ledger that remembers at most `capacity` workflows (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        AttemptLedger {
            attempts: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Counts one more attempt at `workflow_id` and returns how many were seen before it.
    ///
    /// Atomic: of two concurrent calls for one workflow, one sees `n` and the other `n + 1`.
    pub fn observe(&self, workflow_id: &str) -> u64 {
        self.observe_key(AttemptLedger::key(workflow_id))
    }

    /// The key `workflow_id` is counted under: the SHA-256 of its bytes. The audit log records it
    /// (hex, as `workflow_sha256`) so that the ledger can be rebuilt from the log.
    pub fn key(workflow_id: &str) -> [u8; 32] {
        Sha256::digest(workflow_id.as_bytes()).into()
    }

    /// [`observe`](AttemptLedger::observe) by key.
    pub fn observe_key(&self, key: [u8; 32]) -> u64 {
        let mut attempts = self.lock();
        let seen = attempts.get_or_insert_mut(key, || 0);
        let before = *seen;
        *seen = before.saturating_add(1);
        before
    }

    /// How many attempts at the workflow keyed `key` were counted so far; counts nothing.
    pub fn seen_key(&self, key: [u8; 32]) -> u64 {
        self.lock().peek(&key).copied().unwrap_or(0)
    }

    /// How many workflows the ledger remembers now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the ledger remembers no workflow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<[u8; 32], u64>> {
        // A panic while holding the lock cannot leave a count half-written (one integer store),
        // so a poisoned lock is still a correct ledger.
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_workflow_counts_its_own_attempts() {
        let ledger = AttemptLedger::default();
        assert_eq!(
            (0..6).map(|_| ledger.observe("etl")).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(ledger.observe("backup"), 0);
        assert_eq!(ledger.observe("etl"), 6);
    }

    #[test]
    fn the_ledger_stays_bounded_under_100_000_workflows_and_forgets_the_least_recently_seen() {
        let ledger = AttemptLedger::default();
        ledger.observe("kept");
        ledger.observe("forgotten");
        for id in 0..100_000 {
            if id % 5_000 == 0 {
                ledger.observe("kept");
            }
            ledger.observe(&format!("flood-{id}"));
            assert!(ledger.len() <= LEDGER_CAPACITY);
        }
        assert_eq!(ledger.len(), LEDGER_CAPACITY);
        assert_eq!(ledger.observe("kept"), 21);
        assert_eq!(ledger.observe("forgotten"), 0);
    }

    #[test]
    fn concurrent_attempts_at_one_workflow_each_get_their_own_count() {
        let ledger = AttemptLedger::default();
        let mut seen: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| (0..100).map(|_| ledger.observe("etl")).collect::<Vec<_>>())
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("a worker finishes"))
                .collect()
        });
        seen.sort_unstable();
        assert_eq!(seen, (0..800).collect::<Vec<u64>>());
    }
}
