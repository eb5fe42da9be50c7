//! The attempt ledger: how many `retry-workflow` calls the server itself has seen per workflow.
//!
//! An agent in a runaway loop can send `retryCount: 0` forever, so the retry count the policy
//! decision point sees must not be the agent's word alone. The guard asks [`AttemptLedger::observe`]
//! once per call, whatever the verdict, and sends the larger of the claim and the count it returns.
//!
//! # One workflow, one spelling
//!
//! Attempts are counted per [`WorkflowId`], the canonical form of the id the agent sent, so that
//! `ETL`, ` etl `, `ｅｔｌ` (full width) and `etl` are one workflow and not four fresh starts. The
//! canonical form is Unicode NFKC, then full case folding (Unicode `CaseFolding.txt`, statuses C
//! and F: `ß` and `ss` fold alike, which lowercasing would not do), then NFKC again, repeated until
//! it no longer changes, with leading and trailing white space (Unicode `White_Space`) trimmed:
//! close to Unicode's `NFKC_Casefold` (UAX #44), which would also delete the characters we refuse
//! below. The tables are ICU4X's (`icu_normalizer`, `icu_casemap`, `icu_properties`, kept by the Unicode Consortium).
//! Characters that would let two ids look alike while being different, or that carry no text at
//! all, are refused rather than dropped, so the agent is told: control characters (`Cc`: NUL,
//! tab, newline, …), format characters (`Cf`: zero-width space U+200B, joiners, bidi controls,
//! U+FEFF, …), line and paragraph separators (`Zl`, `Zp`) and every other
//! `Default_Ignorable_Code_Point` (variation selectors, fillers). A refused id is an invalid
//! argument of the call, and nothing is checked or run.
//!
//! The tool body, the intent sent to the policy decision point and the audit log all see the
//! canonical id: what runs is what was counted.
//!
//! # Bounded, and a flood cannot reset a count
//!
//! The ledger lives as long as the process (and is rebuilt from the audit log at start), keyed
//! by the SHA-256 of the canonical id's UTF-8 bytes, or, for a principal with an actor id, of
//! the actor id and the id ([`AttemptLedger::key_for`]): 32 bytes, whatever the id's length (an
//! audit log written before ids were canonical keeps counting the ids that were already
//! canonical, such as `nightly-etl`). Each principal (each actor id, and the one principal
//! without an id) has its own share, and its memory is bounded, in two parts:
//!
//! - **exact counts** of the principal's [`LEDGER_CAPACITY`] (1,000) most recently seen
//!   workflows;
//! - **upper bounds for the forgotten ones**: when a new workflow arrives at a full share, the
//!   principal's least recently seen one leaves the exact part, and its count goes into the
//!   share's fixed table of [`FORGOTTEN_ROWS`] × [`FORGOTTEN_COLUMNS`] counters (4 × 16,384 × 8
//!   bytes = 512 KiB, allocated at the share's first such eviction, never grown). Each row has
//!   one counter for the key, chosen by 14 bits of the SHA-256 of a secret of 32 random bytes
//!   drawn for this ledger at start and the key, so nobody outside the process can tell which
//!   ids share a counter; each counter keeps the largest count of every workflow put there. A
//!   workflow that comes back starts from the smallest of its four counters.
//!
//! At most [`PRINCIPAL_SHARES`] (32) principals have a share at once, the most recently seen.
//! When one more arrives, the least recently seen principal's share is folded into one more
//! table of the same shape, for departed principals: each exact count is put at its key's
//! counters and each counter of the share's table raises the departed table's. Every lookup
//! outside a share's exact counts takes the larger of the share's bound and the departed
//! table's.
//!
//! A principal may start [`NEW_WORKFLOW_BURST`] (100) new workflows at once in its exact counts
//! (a workflow the share's exact part does not hold is new, a forgotten one coming back
//! included), and one more every [`NEW_WORKFLOW_EVERY`] (1 s) after that. A new workflow over
//! that pace is still counted, and its call goes on as usual, but only in the share's table
//! of upper bounds: a flood of new ids cannot push the principal's own recent workflows out of
//! the exact counts faster than one a second. Replaying the audit log at start spends nothing.
//!
//! Measured (32 shares, each with 1,000 exact counts and its table): exact counts take about
//! 220 bytes each with their hash table (7 MiB for all 32,000), the tables 16 MiB, so the whole
//! ledger holds at most about 24 MiB, the departed table included; a principal that never
//! forgot a workflow holds at most about 220 KiB.
//!
//! The ledger can over-count but never under-count: a workflow's count never drops below the
//! number of attempts seen, whatever other ids came in between. An agent that floods the server
//! with 10,000 or a million new ids to flush a deferred workflow finds it still deferred. And
//! one principal's flood only ever touches its own share: another principal's workflows keep
//! their exact counts, and one it never ran starts at 0. The price of the bound is that a
//! workflow never seen before may start above zero when all four of its counters are shared
//! with busier forgotten workflows of the same principal (or, with more than
//! [`PRINCIPAL_SHARES`] principals seen, of departed ones): with 1,000 of a principal's
//! workflows forgotten at 5 attempts or more, about 1 in 80,000 of its new ones would, and with
//! 10,000, about 1 in 23. An over-count can only make a `DEFER` come sooner (a human is asked),
//! never let a loop run on. Replaying the audit log at start counts every recorded attempt
//! again, in log order, for the principal the record names (`provenance.actor_id`), and the
//! same guarantee holds for the rebuilt ledger.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use icu_casemap::CaseMapperBorrowed;
use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};
use lru::LruCache;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// A workflow id in canonical form (see the module documentation): what the ledger counts, the
/// intent names and the tool body runs on.
///
/// Read from a tool's arguments like a string; an id holding a refused character is an error
/// naming it. Its JSON Schema is that of a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent, inline)]
pub struct WorkflowId(String);

/// Why a workflow id was refused: it holds a character that is invisible or not text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "character {position} of the workflow id is `U+{code_point:04X}`, {kind}: workflow ids may not \
     hold control, format or other invisible characters",
    code_point = u32::from(*.character)
)]
pub struct InvalidWorkflowId {
    /// The refused character.
    pub character: char,
    /// Where it is, counted in characters from 1.
    pub position: usize,
    /// What kind of character it is, e.g. `a format character (Cf)`.
    pub kind: &'static str,
}

/// How many rounds of NFKC and case folding [`WorkflowId::new`] runs at most. One is enough for
/// nearly every string; the repetition only serves the few characters whose folded form
/// normalises to something that folds again.
const CANONICAL_ROUNDS: usize = 4;

impl WorkflowId {
    /// The canonical form of `raw`: NFKC, full case folding and NFKC until stable, then trimmed.
    ///
    /// # Errors
    ///
    /// [`InvalidWorkflowId`] naming the first refused character (control, format, line or
    /// paragraph separator, or other default-ignorable), in `raw` or, should normalising ever
    /// produce one, in its canonical form.
    pub fn new(raw: &str) -> Result<Self, InvalidWorkflowId> {
        refuse_invisible(raw)?;
        let nfkc = ComposingNormalizerBorrowed::new_nfkc();
        let fold = CaseMapperBorrowed::new();
        let mut id = raw.trim().to_owned();
        for _ in 0..CANONICAL_ROUNDS {
            let folded = fold.fold_string(&nfkc.normalize(&id)).into_owned();
            let next = nfkc.normalize(&folded);
            let next = next.trim();
            if next == id {
                break;
            }
            id = next.to_owned();
        }
        refuse_invisible(&id)?;
        Ok(WorkflowId(id))
    }

    /// The canonical id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkflowId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        WorkflowId::new(&raw).map_err(serde::de::Error::custom)
    }
}

/// The first character of `text` that a workflow id may not hold.
fn refuse_invisible(text: &str) -> Result<(), InvalidWorkflowId> {
    match first_invisible(text) {
        None => Ok(()),
        Some((position, character, kind)) => Err(InvalidWorkflowId {
            character,
            position,
            kind,
        }),
    }
}

/// The first character of `text` that is invisible or not text (control, format, line or
/// paragraph separator, default-ignorable), as (position from 1, character, what kind it is);
/// `None` when there is none. Workflow ids and approvers' names may hold none of these.
pub(crate) fn first_invisible(text: &str) -> Option<(usize, char, &'static str)> {
    let categories = CodePointMapData::<GeneralCategory>::new();
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    for (index, character) in text.chars().enumerate() {
        let kind = match categories.get(character) {
            GeneralCategory::Control => "a control character (Cc)",
            GeneralCategory::Format => "a format character (Cf)",
            GeneralCategory::LineSeparator => "a line separator (Zl)",
            GeneralCategory::ParagraphSeparator => "a paragraph separator (Zp)",
            _ if ignorable.contains(character) => "a default-ignorable character",
            _ => continue,
        };
        return Some((index + 1, character, kind));
    }
    None
}

/// How many workflows the ledger counts exactly per principal: the most recently seen ones,
/// about 100 bytes each, so at most about 100 KiB a principal.
pub const LEDGER_CAPACITY: usize = 1_000;

/// How many principals have a share of their own: the most recently seen ones. A principal
/// that leaves folds its counts into the table of departed principals (see the module
/// documentation).
pub const PRINCIPAL_SHARES: usize = 32;

/// The rows of a table of upper bounds for forgotten workflows (see the module documentation).
pub const FORGOTTEN_ROWS: usize = 4;

/// The counters in each row of a table of upper bounds: 16,384, one per value of 14 bits of a
/// workflow's keyed cell hash. A table is [`FORGOTTEN_ROWS`] × this many `u64`s: 512 KiB.
pub const FORGOTTEN_COLUMNS: usize = 1 << 14;

/// How many new workflows a principal may start in the exact counts at once; past it, one more
/// every [`NEW_WORKFLOW_EVERY`]. A new workflow over the pace is counted in the principal's
/// table of upper bounds only (see the module documentation).
pub const NEW_WORKFLOW_BURST: u32 = 100;

/// How often a principal earns one more new workflow in its exact counts, once its
/// [`NEW_WORKFLOW_BURST`] is spent: once a second.
pub const NEW_WORKFLOW_EVERY: Duration = Duration::from_secs(1);

/// Attempts seen per principal and workflow: exact for each principal's [`LEDGER_CAPACITY`]
/// most recently seen workflows, an upper bound for the ones forgotten before (see the module
/// documentation). Safe to share between concurrent calls.
pub struct AttemptLedger {
    /// Chooses the cells of a key in the tables of upper bounds; drawn from the operating
    /// system's random number generator for this ledger, never shown (not even in `Debug`).
    secret: [u8; 32],
    /// Exact counts each principal's share holds at most.
    capacity: NonZeroUsize,
    attempts: Mutex<Attempts>,
}

impl fmt::Debug for AttemptLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptLedger")
            .field("capacity", &self.capacity)
            .field("workflows", &self.len())
            .finish_non_exhaustive()
    }
}

/// What the lock of an [`AttemptLedger`] guards.
#[derive(Debug)]
struct Attempts {
    /// Each principal's own share, by the SHA-256 of its actor id; least recently seen first
    /// to go, at most [`PRINCIPAL_SHARES`].
    shares: LruCache<[u8; 32], Share>,
    /// Upper bounds for the workflows of principals whose share was dropped.
    departed: Table,
}

/// One principal's part of the ledger.
#[derive(Debug)]
struct Share {
    /// Exact counts, least recently seen first to go.
    recent: LruCache<[u8; 32], u64>,
    /// Upper bounds for the workflows this share forgot.
    forgotten: Table,
    /// New workflows this principal may still start in `recent` now.
    allowance: u32,
    /// When `allowance` was last topped up.
    topped_up: Instant,
}

/// [`FORGOTTEN_ROWS`] rows of [`FORGOTTEN_COLUMNS`] upper bounds; `None` until the first count
/// is put there.
#[derive(Debug, Default)]
struct Table(Option<Box<[u64]>>);

/// Whether counting a new workflow spends the principal's allowance: a live call does, replaying
/// the audit log does not (it counts what was allowed when it happened).
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// A call at this instant.
    At(Instant),
    /// A recorded attempt.
    Replay,
}

impl Default for AttemptLedger {
    fn default() -> Self {
        AttemptLedger::with_capacity(LEDGER_CAPACITY)
    }
}

impl AttemptLedger {
    /// A ledger that counts at most `capacity` workflows exactly per principal (at least one).
    ///
    /// # Panics
    ///
    /// If the operating system has no random numbers to give (as `uuid::Uuid::new_v4` does).
    pub fn with_capacity(capacity: usize) -> Self {
        let mut secret = [0; 32];
        getrandom::fill(&mut secret).expect("the operating system's random number generator");
        let shares = NonZeroUsize::new(PRINCIPAL_SHARES).unwrap_or(NonZeroUsize::MIN);
        AttemptLedger {
            secret,
            capacity: NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            attempts: Mutex::new(Attempts {
                shares: LruCache::sparse(shares),
                departed: Table::default(),
            }),
        }
    }

    /// A ledger that counts exactly `counts` (key, attempts seen) for the principal `actor_id`
    /// and nothing else: a call's view of a shared ledger read just before
    /// (`audit/database.rs`).
    pub fn seeded(
        actor_id: Option<&str>,
        counts: impl ExactSizeIterator<Item = ([u8; 32], u64)>,
    ) -> Self {
        let ledger = AttemptLedger::with_capacity(counts.len());
        {
            let mut attempts = ledger.lock();
            let Attempts { shares, departed } = &mut *attempts;
            let share = Attempts::share(shares, departed, &ledger, actor_id, Instant::now());
            for (key, count) in counts {
                share.recent.push(key, count);
            }
        }
        ledger
    }

    /// Counts one more attempt at `workflow_id` for a principal without an actor id, and
    /// returns how many were seen before it (or more, for a workflow forgotten and seen again:
    /// never fewer).
    pub fn observe(&self, workflow_id: &WorkflowId) -> u64 {
        self.observe_key(None, AttemptLedger::key(workflow_id))
    }

    /// The key `workflow_id` is counted under: the SHA-256 of its canonical form's UTF-8 bytes.
    /// The audit log records it (hex, as `workflow_sha256`) so that the ledger can be rebuilt
    /// from the log, and a restart counts on where the last run stopped.
    pub fn key(workflow_id: &WorkflowId) -> [u8; 32] {
        Sha256::digest(workflow_id.as_str().as_bytes()).into()
    }

    /// The key `workflow_id` is counted under for the principal `actor_id`: [`key`](Self::key)
    /// when there is no actor id, else the SHA-256 of the actor id's length (8 bytes, big
    /// endian), the actor id and the workflow id, so that one principal's attempts never count
    /// for another's workflow of the same name (the HTTP mode serves many principals).
    pub fn key_for(actor_id: Option<&str>, workflow_id: &WorkflowId) -> [u8; 32] {
        let Some(actor_id) = actor_id else {
            return AttemptLedger::key(workflow_id);
        };
        let mut hash = Sha256::new();
        hash.update((actor_id.len() as u64).to_be_bytes());
        hash.update(actor_id.as_bytes());
        hash.update(workflow_id.as_str().as_bytes());
        hash.finalize().into()
    }

    /// Counts one more attempt of a call, at the workflow keyed `key` ([`key_for`](Self::key_for))
    /// of the principal `actor_id`, and returns how many were seen before it (or more, never
    /// fewer). A workflow the principal's exact counts do not hold spends one of its new
    /// workflows ([`NEW_WORKFLOW_BURST`]); with none left, it is counted as an upper bound only.
    ///
    /// Atomic: of two concurrent calls for one workflow, one sees `n` and the other `n + 1`.
    pub fn observe_key(&self, actor_id: Option<&str>, key: [u8; 32]) -> u64 {
        self.count(actor_id, key, Pace::At(Instant::now()))
    }

    /// As [`observe_key`](Self::observe_key), for an attempt the audit log recorded (the
    /// ledger rebuilt at start): it spends no new workflow of the principal's.
    pub fn replay_key(&self, actor_id: Option<&str>, key: [u8; 32]) -> u64 {
        self.count(actor_id, key, Pace::Replay)
    }

    /// How many attempts at the workflow keyed `key` of the principal `actor_id` were counted
    /// so far (or more, for a forgotten one: never fewer); counts nothing.
    pub fn seen_key(&self, actor_id: Option<&str>, key: [u8; 32]) -> u64 {
        let attempts = self.lock();
        let cells = self.cells(&key);
        let departed = attempts.departed.bound(&cells);
        match attempts.shares.peek(&share_key(actor_id)) {
            None => departed,
            Some(share) => match share.recent.peek(&key) {
                Some(seen) => *seen,
                None => share.forgotten.bound(&cells).max(departed),
            },
        }
    }

    /// How many workflows the ledger counts exactly now, over every principal's share (at most
    /// [`PRINCIPAL_SHARES`] × its capacity).
    pub fn len(&self) -> usize {
        let attempts = self.lock();
        attempts
            .shares
            .iter()
            .map(|(_, share)| share.recent.len())
            .sum()
    }

    /// Whether the ledger has seen no workflow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts one more attempt at `key` of `actor_id` and returns how many were seen before it
    /// (see [`observe_key`](Self::observe_key)).
    fn count(&self, actor_id: Option<&str>, key: [u8; 32], pace: Pace) -> u64 {
        let now = match pace {
            Pace::At(now) => now,
            Pace::Replay => Instant::now(),
        };
        let mut attempts = self.lock();
        let Attempts { shares, departed } = &mut *attempts;
        let share = Attempts::share(shares, departed, self, actor_id, now);
        if let Some(seen) = share.recent.get_mut(&key) {
            let before = *seen;
            *seen = before.saturating_add(1);
            return before;
        }
        let cells = self.cells(&key);
        let before = share.forgotten.bound(&cells).max(departed.bound(&cells));
        let after = before.saturating_add(1);
        let admitted = match pace {
            Pace::At(now) => share.spend_new_workflow(now),
            Pace::Replay => true,
        };
        if !admitted {
            // Over the principal's pace: counted as an upper bound only.
            share.forgotten.raise(&cells, after);
        } else if let Some((gone, count)) = share.recent.push(key, after) {
            share.forgotten.raise(&self.cells(&gone), count);
        }
        before
    }

    /// The counter of `key` in each row of a table of upper bounds: 14 bits each of the
    /// SHA-256 of this ledger's secret and the key. Keyed, so that nobody outside the process
    /// can choose workflow ids that land on given counters.
    fn cells(&self, key: &[u8; 32]) -> [usize; FORGOTTEN_ROWS] {
        let mut hash = Sha256::new();
        hash.update(self.secret);
        hash.update(key);
        let hash: [u8; 32] = hash.finalize().into();
        std::array::from_fn(|row| {
            let bits = usize::from(u16::from_le_bytes([hash[2 * row], hash[2 * row + 1]]));
            row * FORGOTTEN_COLUMNS + bits % FORGOTTEN_COLUMNS
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attempts> {
        // A panic while holding the lock cannot leave a count lower than it was (each store only
        // raises one), so a poisoned lock is still a correct ledger.
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The key of the share of the principal `actor_id`: the SHA-256 of its UTF-8 bytes, and 32 zero
/// bytes for a principal without an actor id (a digest no id is known to have).
fn share_key(actor_id: Option<&str>) -> [u8; 32] {
    match actor_id {
        Some(actor_id) => Sha256::digest(actor_id.as_bytes()).into(),
        None => [0; 32],
    }
}

impl Attempts {
    /// The share of `actor_id` in `shares`, made (and the least recently seen one dropped, its
    /// counts folded into `departed`) if it has none.
    fn share<'a>(
        shares: &'a mut LruCache<[u8; 32], Share>,
        departed: &mut Table,
        ledger: &AttemptLedger,
        actor_id: Option<&str>,
        now: Instant,
    ) -> &'a mut Share {
        let principal = share_key(actor_id);
        if !shares.contains(&principal) {
            if shares.len() == shares.cap().get()
                && let Some((_, gone)) = shares.pop_lru()
            {
                for (key, count) in &gone.recent {
                    departed.raise(&ledger.cells(key), *count);
                }
                departed.fold(&gone.forgotten);
            }
            let share = Share {
                recent: LruCache::sparse(ledger.capacity),
                forgotten: Table::default(),
                allowance: NEW_WORKFLOW_BURST,
                topped_up: now,
            };
            shares.put(principal, share);
        }
        shares
            .get_mut(&principal)
            .expect("the share was just made if it was missing")
    }
}

impl Share {
    /// Whether the principal may start one more new workflow in its exact counts at `now`,
    /// and if so, spends it: [`NEW_WORKFLOW_BURST`] at once, then one every
    /// [`NEW_WORKFLOW_EVERY`].
    fn spend_new_workflow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.topped_up);
        let earned = elapsed.as_nanos() / NEW_WORKFLOW_EVERY.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.allowance = self
                .allowance
                .saturating_add(earned)
                .min(NEW_WORKFLOW_BURST);
            self.topped_up = now;
        }
        if self.allowance == 0 {
            return false;
        }
        self.allowance -= 1;
        true
    }
}

impl Table {
    /// At least the count of every key put at `cells` ([`AttemptLedger::cells`]); 0 for an
    /// empty table.
    fn bound(&self, cells: &[usize; FORGOTTEN_ROWS]) -> u64 {
        let Some(table) = &self.0 else {
            return 0;
        };
        cells.iter().map(|&cell| table[cell]).min().unwrap_or(0)
    }

    /// Keeps `count` as an upper bound at `cells`.
    fn raise(&mut self, cells: &[usize; FORGOTTEN_ROWS], count: u64) {
        let table = self.allocated();
        for &cell in cells {
            table[cell] = table[cell].max(count);
        }
    }

    /// Keeps every bound of `other` (a table of the same cells) in this one.
    fn fold(&mut self, other: &Table) {
        let Some(other) = &other.0 else {
            return;
        };
        for (mine, theirs) in self.allocated().iter_mut().zip(other.iter()) {
            *mine = (*mine).max(*theirs);
        }
    }

    fn allocated(&mut self) -> &mut [u64] {
        self.0
            .get_or_insert_with(|| vec![0; FORGOTTEN_ROWS * FORGOTTEN_COLUMNS].into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> WorkflowId {
        WorkflowId::new(raw).unwrap_or_else(|error| panic!("{raw:?} is refused: {error}"))
    }

    /// Counts a call of `actor` at workflow `raw` at `at`, as the guard does.
    fn call(ledger: &AttemptLedger, actor: Option<&str>, raw: &str, at: Instant) -> u64 {
        ledger.count(actor, AttemptLedger::key_for(actor, &id(raw)), Pace::At(at))
    }

    /// The instant of the `n`th of a principal's new workflows sent from `start` at the pace it
    /// may start them, one every [`NEW_WORKFLOW_EVERY`].
    fn paced(start: Instant, n: usize) -> Instant {
        start + NEW_WORKFLOW_EVERY * u32::try_from(n).expect("a test's count")
    }

    /// The counters of the table of upper bounds of the share of `actor`; `None` before it
    /// holds any.
    fn forgotten_counters(ledger: &AttemptLedger, actor: Option<&str>) -> Option<usize> {
        let attempts = ledger.lock();
        let share = attempts.shares.peek(&share_key(actor))?;
        share.forgotten.0.as_ref().map(|table| table.len())
    }

    #[test]
    fn each_workflow_counts_its_own_attempts() {
        let ledger = AttemptLedger::default();
        assert_eq!(
            (0..6)
                .map(|_| ledger.observe(&id("etl")))
                .collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(ledger.observe(&id("backup")), 0);
        assert_eq!(ledger.observe(&id("etl")), 6);
    }

    #[test]
    fn spellings_of_one_workflow_are_one_workflow() {
        let ledger = AttemptLedger::default();
        let spellings = [
            "etl",
            "ETL",
            "Etl",
            "etl ",
            " etl",
            "\u{a0}etl\u{3000}",
            "ｅｔｌ",
            "ＥＴＬ",
        ];
        for (seen, spelling) in spellings.into_iter().enumerate() {
            assert_eq!(id(spelling).as_str(), "etl", "{spelling:?}");
            assert_eq!(ledger.observe(&id(spelling)), seen as u64, "{spelling:?}");
        }
        for (a, b) in [
            ("STRASSE", "straße"),
            ("ﬁle", "FILE"),
            ("ΟΔΟΣ", "οδοσ"),
            ("Å", "\u{212b}"),
            ("é", "e\u{301}"),
            ("①", "1"),
        ] {
            assert_eq!(id(a), id(b), "{a:?} and {b:?}");
        }
        assert_ne!(id("etl"), id("etl2"));
        assert_ne!(id("e t l"), id("etl"), "inner spaces are part of the id");
    }

    #[test]
    fn the_canonical_form_is_its_own_canonical_form() {
        for raw in [
            "Nightly-ETL",
            "ǅemal",
            "ﬃ",
            "ᾼ",
            "ΐ",
            "İstanbul",
            "ẞ",
            "\u{345}",
            "㎒",
            " \u{301}a ",
            "",
            "   ",
        ] {
            let once = id(raw);
            assert_eq!(id(once.as_str()), once, "{raw:?}");
        }
    }

    #[test]
    fn control_format_and_invisible_characters_are_refused_and_named() {
        for (raw, character, position, kind) in [
            ("etl\u{200b}", '\u{200b}', 4, "a format character (Cf)"),
            ("etl\t", '\t', 4, "a control character (Cc)"),
            ("etl\0", '\0', 4, "a control character (Cc)"),
            ("\netl", '\n', 1, "a control character (Cc)"),
            ("et\rl", '\r', 3, "a control character (Cc)"),
            ("e\u{200d}tl", '\u{200d}', 2, "a format character (Cf)"),
            ("\u{feff}etl", '\u{feff}', 1, "a format character (Cf)"),
            ("\u{202e}lte", '\u{202e}', 1, "a format character (Cf)"),
            ("etl\u{ad}", '\u{ad}', 4, "a format character (Cf)"),
            ("etl\u{2028}", '\u{2028}', 4, "a line separator (Zl)"),
            ("etl\u{2029}", '\u{2029}', 4, "a paragraph separator (Zp)"),
            (
                "etl\u{fe0f}",
                '\u{fe0f}',
                4,
                "a default-ignorable character",
            ),
            (
                "etl\u{3164}",
                '\u{3164}',
                4,
                "a default-ignorable character",
            ),
            ("etl\u{85}", '\u{85}', 4, "a control character (Cc)"),
        ] {
            assert_eq!(
                WorkflowId::new(raw),
                Err(InvalidWorkflowId {
                    character,
                    position,
                    kind
                }),
                "{raw:?}"
            );
        }
        assert_eq!(
            WorkflowId::new("etl\u{200b}").unwrap_err().to_string(),
            "character 4 of the workflow id is `U+200B`, a format character (Cf): workflow ids \
             may not hold control, format or other invisible characters"
        );
    }

    #[test]
    fn a_workflow_id_is_read_from_json_as_its_canonical_form_or_refused() {
        let read = |value: serde_json::Value| {
            serde_json::from_value::<WorkflowId>(value).map_err(|error| error.to_string())
        };
        assert_eq!(read(serde_json::json!(" ETL ")), Ok(id("etl")));
        assert!(read(serde_json::json!("etl\u{200b}")).is_err());
        assert!(read(serde_json::json!(7)).is_err());
    }

    #[test]
    fn a_deferred_workflow_keeps_its_count_through_a_flood_of_new_workflow_ids() {
        let ledger = AttemptLedger::default();
        let etl = id("etl");
        for _ in 0..5 {
            ledger.observe(&etl);
        }
        // Five attempts seen: the next call is at the loop threshold, so it is deferred.
        let start = Instant::now();
        for n in 0..3 * LEDGER_CAPACITY {
            call(&ledger, None, &format!("flood-{n}"), paced(start, n));
            assert!(ledger.len() <= LEDGER_CAPACITY);
        }
        assert_eq!(ledger.len(), LEDGER_CAPACITY);
        assert_eq!(ledger.observe(&etl), 5, "the flood did not reset the count");
        assert_eq!(ledger.observe(&etl), 6);
    }

    #[test]
    fn the_ledger_stays_bounded_under_100_000_workflows_and_keeps_exact_counts_for_recent_ones() {
        let ledger = AttemptLedger::default();
        ledger.observe(&id("kept"));
        ledger.observe(&id("forgotten"));
        let start = Instant::now();
        for n in 0..100_000 {
            if n % 5_000 == 0 {
                ledger.observe(&id("kept"));
            }
            call(&ledger, None, &format!("flood-{n}"), paced(start, n));
            assert!(ledger.len() <= LEDGER_CAPACITY);
        }
        assert_eq!(ledger.len(), LEDGER_CAPACITY);
        assert_eq!(ledger.observe(&id("kept")), 21);
        // Forgotten, and counted from an upper bound: at least its one attempt.
        assert!(ledger.observe(&id("forgotten")) >= 1);
        assert_eq!(
            forgotten_counters(&ledger, None),
            Some(FORGOTTEN_ROWS * FORGOTTEN_COLUMNS),
            "never grown"
        );
    }

    #[test]
    fn no_workflow_is_ever_counted_below_its_attempts_whatever_else_is_seen() {
        // A ledger of three exact counts, and a long pseudo-random mix of 40 workflows: every
        // answer is at least the number of earlier attempts at that workflow.
        let ledger = AttemptLedger::with_capacity(3);
        let ids: Vec<WorkflowId> = (0..40).map(|n| id(&format!("w{n}"))).collect();
        let mut seen = [0_u64; 40];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let pick = (state >> 33) as usize % ids.len();
            let answer = ledger.observe(&ids[pick]);
            assert!(
                answer >= seen[pick],
                "{}: {answer} < {}",
                ids[pick],
                seen[pick]
            );
            seen[pick] += 1;
        }
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn a_ledger_that_never_forgot_anything_holds_no_table_of_upper_bounds() {
        let ledger = AttemptLedger::default();
        let start = Instant::now();
        for n in 0..LEDGER_CAPACITY {
            call(&ledger, None, &format!("w{n}"), paced(start, n));
        }
        assert_eq!(forgotten_counters(&ledger, None), None);
        let later = paced(start, LEDGER_CAPACITY);
        assert_eq!(call(&ledger, None, "new", later), 0);
        assert!(forgotten_counters(&ledger, None).is_some());
    }

    #[test]
    fn one_principals_flood_never_counts_for_another_principals_workflows() {
        let ledger = AttemptLedger::default();
        let (mallory, alice) = (Some("mallory"), Some("alice"));
        let start = Instant::now();
        assert_eq!(call(&ledger, alice, "etl", start), 0);
        assert_eq!(call(&ledger, alice, "etl", start), 1);
        // Mallory fills her exact counts twenty times over, at the pace she may, with workflows
        // of six attempts each: every one forgotten at a count past the loop threshold.
        for n in 0..20 * LEDGER_CAPACITY {
            let flood = format!("flood-{n}");
            for _ in 0..6 {
                call(&ledger, mallory, &flood, paced(start, n));
            }
        }
        let after = paced(start, 20 * LEDGER_CAPACITY);
        assert_eq!(
            call(&ledger, alice, "etl", after),
            2,
            "alice's count is exact"
        );
        for n in 0..LEDGER_CAPACITY {
            let never_run = format!("never-run-{n}");
            assert_eq!(
                call(&ledger, alice, &never_run, paced(after, n)),
                0,
                "{never_run} of alice starts at 0"
            );
        }
        // Mallory's own flood may over-count her own workflows, never under-count them.
        assert!(call(&ledger, mallory, "flood-0", after) >= 6);
    }

    #[test]
    fn a_flood_of_new_ids_at_once_is_counted_but_cannot_push_out_the_principals_own_workflows() {
        let ledger = AttemptLedger::default();
        let (mallory, bob) = (Some("mallory"), Some("bob"));
        let now = Instant::now();
        for _ in 0..5 {
            call(&ledger, mallory, "etl", now);
        }
        // Ten times the exact counts at one instant: the burst's places left after `etl` are
        // taken, the other workflows are counted as upper bounds only.
        for n in 0..10 * LEDGER_CAPACITY {
            call(&ledger, mallory, &format!("flood-{n}"), now);
        }
        let burst = usize::try_from(NEW_WORKFLOW_BURST).expect("a small number");
        assert_eq!(ledger.len(), burst);
        assert_eq!(
            call(&ledger, mallory, "etl", now),
            5,
            "still exact: deferred"
        );
        for n in [0, burst, 10 * LEDGER_CAPACITY - 1] {
            let key = AttemptLedger::key_for(mallory, &id(&format!("flood-{n}")));
            assert!(ledger.seen_key(mallory, key) >= 1, "flood-{n} was counted");
        }
        // Another principal's pace is its own.
        assert_eq!(call(&ledger, bob, "backup", now), 0);
        assert_eq!(ledger.len(), burst + 1);
        // One more new workflow of mallory's takes a place once NEW_WORKFLOW_EVERY has passed.
        assert_eq!(call(&ledger, mallory, "late-1", now), 0);
        assert_eq!(ledger.len(), burst + 1, "over the pace");
        assert_eq!(
            call(&ledger, mallory, "late-2", now + NEW_WORKFLOW_EVERY),
            0
        );
        assert_eq!(ledger.len(), burst + 2, "one earned");
    }

    #[test]
    fn a_principal_whose_share_was_dropped_is_never_counted_below_its_attempts() {
        let ledger = AttemptLedger::default();
        let now = Instant::now();
        for _ in 0..5 {
            call(&ledger, Some("first"), "etl", now);
        }
        call(&ledger, Some("first"), "backup", now);
        for n in 0..2 * PRINCIPAL_SHARES {
            call(&ledger, Some(&format!("other-{n}")), "etl", now);
        }
        assert!(
            ledger
                .lock()
                .shares
                .peek(&share_key(Some("first")))
                .is_none()
        );
        assert!(call(&ledger, Some("first"), "etl", now) >= 5);
        assert!(call(&ledger, Some("first"), "backup", now) >= 1);
    }

    #[test]
    fn replayed_attempts_spend_no_new_workflows_and_count_for_their_principal() {
        let ledger = AttemptLedger::default();
        for n in 0..3 * LEDGER_CAPACITY {
            let key = AttemptLedger::key_for(Some("alice"), &id(&format!("w{n}")));
            ledger.replay_key(Some("alice"), key);
        }
        assert_eq!(
            ledger.len(),
            LEDGER_CAPACITY,
            "every one took a place in turn"
        );
        let etl = AttemptLedger::key_for(Some("alice"), &id("etl"));
        ledger.replay_key(Some("alice"), etl);
        assert_eq!(ledger.seen_key(Some("alice"), etl), 1);
        assert_eq!(ledger.seen_key(Some("bob"), etl), 0);
    }

    #[test]
    fn the_cells_secret_is_not_in_debug_output() {
        let ledger = AttemptLedger::default();
        let shown = format!("{ledger:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", ledger.secret)), "{shown}");
        assert_ne!(
            ledger.secret,
            AttemptLedger::default().secret,
            "one per ledger"
        );
    }

    #[test]
    fn concurrent_attempts_at_one_workflow_each_get_their_own_count() {
        let ledger = AttemptLedger::default();
        let etl = id("etl");
        let mut seen: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..100).map(|_| ledger.observe(&etl)).collect::<Vec<_>>()))
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
