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
//! The ledger lives as long as the process and is bounded: it remembers at most
//! [`LEDGER_CAPACITY`] workflows, keyed by the SHA-256 of the canonical id's UTF-8 bytes (32
//! bytes, whatever the id's length; an audit log written before ids were canonical keeps counting
//! the ids that were already canonical, such as `nightly-etl`), and forgets the least recently seen one when a new one arrives. An agent that
//! sends more than that many distinct workflow ids between two retries of one workflow can make
//! the server forget that workflow's count; it then counts again from the agent's claim. That
//! takes thousands of calls, each of them checked and visible in the log.

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
        return Err(InvalidWorkflowId {
            character,
            position: index + 1,
            kind,
        });
    }
    Ok(())
}

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
    pub fn observe(&self, workflow_id: &WorkflowId) -> u64 {
        self.observe_key(AttemptLedger::key(workflow_id))
    }

    /// The key `workflow_id` is counted under: the SHA-256 of its canonical form's UTF-8 bytes.
    /// The audit log records it (hex, as `workflow_sha256`) so that the ledger can be rebuilt
    /// from the log, and a restart counts on where the last run stopped.
    pub fn key(workflow_id: &WorkflowId) -> [u8; 32] {
        Sha256::digest(workflow_id.as_str().as_bytes()).into()
    }

    /// [`observe`](AttemptLedger::observe) by key.
    pub fn observe_key(&self, key: [u8; 32]) -> u64 {
        let mut attempts = self.lock();
        let seen = attempts.get_or_insert_mut(key, || 0);
        let before = *seen;
        *seen = before.saturating_add(1);
        before
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
    fn the_ledger_stays_bounded_under_100_000_workflows_and_forgets_the_least_recently_seen() {
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
        assert_eq!(ledger.observe(&id("forgotten")), 0);
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
