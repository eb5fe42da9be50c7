//! How many calls a principal made lately: the `recent_calls` fact of a Cedar request.
//!
//! A rate limit is policy (`forbid (…) when { context.recent_calls.tool_last_minute >= 30 }`), so
//! the server counts, per principal, every checked call whatever its verdict, and hands the
//! counts of the calls *before* this one to the policy decision point. An agent cannot claim
//! them: they are what the server saw.
//!
//! Counting is by buckets on a monotonic clock (an [`Instant`], so a wall clock that steps back
//! forgets nothing): the minute windows have 60 one-second buckets, the hour window 60 one-minute
//! buckets. A call counts towards `*_last_minute` while its second is one of the last 60 seconds,
//! and towards `tool_last_hour` while its minute is one of the last 60 minutes. Memory is bounded:
//! at most [`PRINCIPAL_CAPACITY`] principals (the least recently seen forgotten first, keyed by
//! the SHA-256 of the principal's id, as the attempt ledger keys workflows) and
//! [`TOOLS_PER_PRINCIPAL`] tools each (the least recently called forgotten first), about 8 KiB per
//! principal at most. A principal that is forgotten counts again from zero; forgetting one takes
//! calls from that many other principals in between, each of them checked.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Instant;

use lru::LruCache;
use sha2::{Digest, Sha256};

/// How many principals the counter remembers.
pub const PRINCIPAL_CAPACITY: usize = 1024;

/// How many tools per principal the counter remembers; the server has six.
pub const TOOLS_PER_PRINCIPAL: usize = 8;

/// Buckets per window.
const BUCKETS: usize = 60;

/// The checked calls of one principal before the current one: the context's `recent_calls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentCallCounts {
    /// Calls of the same tool in the last 60 seconds (1-second buckets).
    pub tool_last_minute: u64,
    /// Calls of the same tool in the last 60 minutes (1-minute buckets).
    pub tool_last_hour: u64,
    /// Calls of any tool in the last 60 seconds (1-second buckets).
    pub all_last_minute: u64,
}

/// Recent calls per principal and tool, bounded (see the module docs). Safe to share between
/// concurrent calls.
#[derive(Debug)]
pub struct RecentCalls {
    /// Time zero of every bucket stamp.
    origin: Instant,
    principals: Mutex<LruCache<[u8; 32], PrincipalCalls>>,
}

impl Default for RecentCalls {
    fn default() -> Self {
        RecentCalls::with_capacity(PRINCIPAL_CAPACITY)
    }
}

impl RecentCalls {
    /// A counter that remembers at most `principals` principals (at least one).
    pub fn with_capacity(principals: usize) -> Self {
        let capacity = NonZeroUsize::new(principals).unwrap_or(NonZeroUsize::MIN);
        RecentCalls {
            origin: Instant::now(),
            principals: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Counts a call of `tool` by `principal` at `at` and returns the counts of the calls before
    /// it. Call it once per checked call, before the decision.
    ///
    /// Atomic: of two concurrent calls, one sees the other and the other does not. An `at`
    /// before this counter was made counts as the moment it was made.
    pub fn observe(&self, principal: &str, tool: &str, at: Instant) -> RecentCallCounts {
        let second = at.saturating_duration_since(self.origin).as_secs();
        let key: [u8; 32] = Sha256::digest(principal.as_bytes()).into();
        let mut principals = self
            .principals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let calls = principals.get_or_insert_mut(key, PrincipalCalls::default);
        let tool_calls = calls.tool(tool, second);
        let tool_last_minute = tool_calls.minute.count(second);
        let tool_last_hour = tool_calls.hour.count(second / 60);
        tool_calls.minute.add(second);
        tool_calls.hour.add(second / 60);
        let all_last_minute = calls.all.count(second);
        calls.all.add(second);
        RecentCallCounts {
            tool_last_minute,
            tool_last_hour,
            all_last_minute,
        }
    }

    /// How many principals the counter remembers now.
    pub fn len(&self) -> usize {
        self.principals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether the counter remembers no principal.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One principal's calls: all tools per second, and each tool.
#[derive(Debug, Default)]
struct PrincipalCalls {
    all: Window,
    tools: Vec<ToolCalls>,
}

impl PrincipalCalls {
    /// The windows of `tool`, made (forgetting the least recently called tool when full) if new.
    fn tool(&mut self, tool: &str, second: u64) -> &mut ToolCalls {
        let index = match self.tools.iter().position(|t| &*t.name == tool) {
            Some(index) => index,
            None => {
                if self.tools.len() >= TOOLS_PER_PRINCIPAL
                    && let Some(oldest) = (0..self.tools.len()).min_by_key(|&i| self.tools[i].last)
                {
                    self.tools.swap_remove(oldest);
                }
                self.tools.push(ToolCalls {
                    name: tool.into(),
                    minute: Window::default(),
                    hour: Window::default(),
                    last: second,
                });
                self.tools.len() - 1
            }
        };
        let calls = &mut self.tools[index];
        calls.last = calls.last.max(second);
        calls
    }
}

#[derive(Debug)]
struct ToolCalls {
    name: Box<str>,
    /// Per second.
    minute: Window,
    /// Per minute.
    hour: Window,
    /// The second of the last call, to forget the least recently called tool first.
    last: u64,
}

/// 60 buckets of one time unit each (a second or a minute): a ring indexed by `unit % 60`, each
/// bucket stamped with the unit it counts.
#[derive(Debug)]
struct Window {
    stamps: [u64; BUCKETS],
    counts: [u32; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            // No unit is `u64::MAX`, so an empty bucket never counts.
            stamps: [u64::MAX; BUCKETS],
            counts: [0; BUCKETS],
        }
    }
}

impl Window {
    /// Calls in the 60 units up to and including `unit`.
    fn count(&self, unit: u64) -> u64 {
        self.stamps
            .iter()
            .zip(&self.counts)
            .filter(|&(&stamp, _)| stamp <= unit && unit - stamp < BUCKETS as u64)
            .map(|(_, &count)| u64::from(count))
            .sum()
    }

    fn add(&mut self, unit: u64) {
        let index = (unit % BUCKETS as u64) as usize;
        if self.stamps[index] != unit {
            self.stamps[index] = unit;
            self.counts[index] = 0;
        }
        self.counts[index] = self.counts[index].saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn counts(minute: u64, hour: u64, all: u64) -> RecentCallCounts {
        RecentCallCounts {
            tool_last_minute: minute,
            tool_last_hour: hour,
            all_last_minute: all,
        }
    }

    #[test]
    fn each_call_sees_the_calls_before_it() {
        let recent = RecentCalls::default();
        let t = Instant::now();
        assert_eq!(recent.observe("alice", "deploy", t), counts(0, 0, 0));
        assert_eq!(recent.observe("alice", "deploy", t), counts(1, 1, 1));
        assert_eq!(recent.observe("alice", "research", t), counts(0, 0, 2));
        assert_eq!(recent.observe("alice", "deploy", t), counts(2, 2, 3));
    }

    #[test]
    fn principals_are_counted_apart() {
        let recent = RecentCalls::default();
        let t = Instant::now();
        recent.observe("alice", "deploy", t);
        recent.observe("alice", "deploy", t);
        assert_eq!(recent.observe("bob", "deploy", t), counts(0, 0, 0));
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn a_call_leaves_the_minute_after_60_seconds_and_the_hour_after_60_minutes() {
        // A call at second 10 (minute 0), then one `later` seconds after it.
        let second_call = |later: u64| {
            let recent = RecentCalls::default();
            let first = recent.origin + Duration::from_secs(10);
            recent.observe("alice", "deploy", first);
            recent.observe("alice", "deploy", first + Duration::from_secs(later))
        };
        assert_eq!(second_call(0), counts(1, 1, 1));
        assert_eq!(second_call(59), counts(1, 1, 1));
        assert_eq!(second_call(60), counts(0, 1, 0));
        // Minute 0 is among the last 60 minutes up to minute 59 (second 3599).
        assert_eq!(second_call(3599 - 10), counts(0, 1, 0));
        assert_eq!(second_call(3600 - 10), counts(0, 0, 0));
    }

    #[test]
    fn a_steady_rate_is_counted_over_the_last_minute_only() {
        let recent = RecentCalls::default();
        let start = recent.origin;
        // One call every 2 seconds for 5 minutes.
        let mut last = RecentCallCounts::default();
        for i in 0..150u64 {
            last = recent.observe("alice", "deploy", start + Duration::from_secs(2 * i));
        }
        assert_eq!(last, counts(29, 149, 29));
    }

    #[test]
    fn memory_is_bounded_in_principals_and_tools() {
        let recent = RecentCalls::with_capacity(3);
        let t = Instant::now();
        for principal in ["a", "b", "c", "d"] {
            recent.observe(principal, "deploy", t);
        }
        assert_eq!(recent.len(), 3);
        // "a" was forgotten: it counts from zero again.
        assert_eq!(recent.observe("a", "deploy", t), counts(0, 0, 0));

        let recent = RecentCalls::default();
        for tool in 0..=TOOLS_PER_PRINCIPAL {
            recent.observe("a", &format!("tool-{tool}"), t);
        }
        let principals = recent.principals.lock().unwrap();
        let key: [u8; 32] = Sha256::digest(b"a").into();
        let calls = principals.peek(&key).unwrap();
        assert_eq!(calls.tools.len(), TOOLS_PER_PRINCIPAL);
    }

    #[test]
    fn an_instant_before_the_counter_counts_as_its_start() {
        let early = Instant::now();
        let recent = RecentCalls::default();
        recent.observe("a", "deploy", early);
        assert_eq!(
            recent.observe("a", "deploy", recent.origin),
            counts(1, 1, 1)
        );
    }
}
