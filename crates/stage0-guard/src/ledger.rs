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
//! by the SHA-256 of the canonical id's UTF-8 bytes: 32 bytes, whatever the id's length (an audit
//! log written before ids were canonical keeps counting the ids that were already canonical, such
//! as `nightly-etl`). Its memory is bounded, in two parts:
//!
//! - **exact counts** of the [`LEDGER_CAPACITY`] (10,000) most recently seen workflows, about 100
//!   bytes each: at most about 1 MiB;
//! - **upper bounds for the forgotten ones**: when a new workflow arrives at a full ledger, the
//!   least recently seen one leaves the exact part, and its count goes into a fixed table of
//!   [`FORGOTTEN_ROWS`] × [`FORGOTTEN_COLUMNS`] counters (4 × 65,536 × 8 bytes = 2 MiB, allocated
//!   at the first such eviction, never grown). Each row has one counter for the key (chosen by
//!   two bytes of the key's hash), and each counter keeps the largest count of every workflow
//!   put there. A workflow that comes back starts from the smallest of its four counters.
//!
//! So the whole ledger holds at most about 3 MiB, and it can over-count but never under-count:
//! a workflow's count never drops below the number of attempts seen, whatever other ids came in
//! between. An agent that floods the server with 10,000 or a million new ids to flush a deferred
//! workflow finds it still deferred. The price of the bound is that a workflow never seen before
//! may start above zero when all four of its counters are shared with busier forgotten
//! workflows: with 10,000 workflows forgotten at 5 attempts or more, about 1 in 2,500 new ones
//! would, so it takes tens of thousands of distinct looping workflows before that is common. An
//! over-count can only make a `DEFER` come sooner (a human is asked), never let a loop run on.
//! Replaying the audit log at start counts every recorded attempt again, in log order, and the
//! same guarantee holds for the rebuilt ledger.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Mutex;

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

/// How many workflows the ledger counts exactly: the most recently seen ones, about 100 bytes
/// each, so at most about 1 MiB.
pub const LEDGER_CAPACITY: usize = 10_000;

/// The rows of the table of upper bounds for forgotten workflows (see the module documentation).
pub const FORGOTTEN_ROWS: usize = 4;

/// The counters in each row of the table of upper bounds: 65,536, one per value of two bytes of
/// a workflow's key. The table is [`FORGOTTEN_ROWS`] × this many `u64`s: 2 MiB.
pub const FORGOTTEN_COLUMNS: usize = 1 << 16;

/// Attempts seen per workflow: exact for the [`LEDGER_CAPACITY`] most recently seen workflows,
/// an upper bound for the ones forgotten before (see the module documentation). Safe to share
/// between concurrent calls.
#[derive(Debug)]
pub struct AttemptLedger {
    attempts: Mutex<Attempts>,
}

/// What the lock of an [`AttemptLedger`] guards.
#[derive(Debug)]
struct Attempts {
    /// Exact counts, least recently seen first to go.
    recent: LruCache<[u8; 32], u64>,
    /// [`FORGOTTEN_ROWS`] rows of [`FORGOTTEN_COLUMNS`] upper bounds; `None` until the first
    /// workflow is forgotten.
    forgotten: Option<Box<[u64]>>,
}

impl Default for AttemptLedger {
    fn default() -> Self {
        AttemptLedger::with_capacity(LEDGER_CAPACITY)
    }
}

impl AttemptLedger {
    /// A ledger that counts at most `capacity` workflows exactly (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        AttemptLedger {
            attempts: Mutex::new(Attempts {
                recent: LruCache::new(capacity),
                forgotten: None,
            }),
        }
    }

    /// A ledger that counts exactly `counts` (key, attempts seen) and nothing else: a call's
    /// view of a shared ledger read just before (`audit/database.rs`).
    pub fn seeded(counts: impl ExactSizeIterator<Item = ([u8; 32], u64)>) -> Self {
        let ledger = AttemptLedger::with_capacity(counts.len());
        {
            let mut attempts = ledger.lock();
            for (key, count) in counts {
                attempts.recent.push(key, count);
            }
        }
        ledger
    }

    /// Counts one more attempt at `workflow_id` and returns how many were seen before it (or
    /// more, for a workflow forgotten and seen again: never fewer).
    ///
    /// Atomic: of two concurrent calls for one workflow, one sees `n` and the other `n + 1`.
    pub fn observe(&self, workflow_id: &WorkflowId) -> u64 {
        self.observe_key(AttemptLedger::key(workflow_id))
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

    /// [`observe`](AttemptLedger::observe) by key.
    pub fn observe_key(&self, key: [u8; 32]) -> u64 {
        let mut attempts = self.lock();
        if let Some(seen) = attempts.recent.get_mut(&key) {
            let before = *seen;
            *seen = before.saturating_add(1);
            return before;
        }
        let before = attempts.forgotten_count(&key);
        if let Some((gone, count)) = attempts.recent.push(key, before.saturating_add(1)) {
            attempts.forget(&gone, count);
        }
        before
    }

    /// How many attempts at the workflow keyed `key` were counted so far (or more, for a
    /// forgotten one: never fewer); counts nothing.
    pub fn seen_key(&self, key: [u8; 32]) -> u64 {
        let attempts = self.lock();
        match attempts.recent.peek(&key) {
            Some(seen) => *seen,
            None => attempts.forgotten_count(&key),
        }
    }

    /// How many workflows the ledger counts exactly now (at most its capacity).
    pub fn len(&self) -> usize {
        self.lock().recent.len()
    }

    /// Whether the ledger has seen no workflow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attempts> {
        // A panic while holding the lock cannot leave a count lower than it was (each store only
        // raises one), so a poisoned lock is still a correct ledger.
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Attempts {
    /// The counter of `key` in each row of the table of forgotten workflows.
    fn cells(key: &[u8; 32]) -> [usize; FORGOTTEN_ROWS] {
        std::array::from_fn(|row| {
            let column = usize::from(u16::from_le_bytes([key[2 * row], key[2 * row + 1]]));
            row * FORGOTTEN_COLUMNS + column
        })
    }

    /// At least the count `key` had when it was forgotten; 0 when nothing was ever forgotten.
    fn forgotten_count(&self, key: &[u8; 32]) -> u64 {
        let Some(table) = &self.forgotten else {
            return 0;
        };
        Attempts::cells(key)
            .into_iter()
            .map(|cell| table[cell])
            .min()
            .unwrap_or(0)
    }

    /// Keeps `count` as an upper bound for `key`, which has just left the exact counts.
    fn forget(&mut self, key: &[u8; 32], count: u64) {
        let table = self
            .forgotten
            .get_or_insert_with(|| vec![0; FORGOTTEN_ROWS * FORGOTTEN_COLUMNS].into_boxed_slice());
        for cell in Attempts::cells(key) {
            table[cell] = table[cell].max(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> WorkflowId {
        WorkflowId::new(raw).unwrap_or_else(|error| panic!("{raw:?} is refused: {error}"))
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
        for n in 0..3 * LEDGER_CAPACITY {
            ledger.observe(&id(&format!("flood-{n}")));
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
        for n in 0..100_000 {
            if n % 5_000 == 0 {
                ledger.observe(&id("kept"));
            }
            ledger.observe(&id(&format!("flood-{n}")));
            assert!(ledger.len() <= LEDGER_CAPACITY);
        }
        assert_eq!(ledger.len(), LEDGER_CAPACITY);
        assert_eq!(ledger.observe(&id("kept")), 21);
        // Forgotten, and counted from an upper bound: at least its one attempt.
        assert!(ledger.observe(&id("forgotten")) >= 1);
        let table = ledger.lock().forgotten.as_ref().map(|table| table.len());
        assert_eq!(
            table,
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
        for n in 0..LEDGER_CAPACITY {
            ledger.observe(&id(&format!("w{n}")));
        }
        assert!(ledger.lock().forgotten.is_none());
        assert_eq!(ledger.observe(&id("new")), 0);
        assert!(ledger.lock().forgotten.is_some());
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
