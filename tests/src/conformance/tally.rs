//! The suite's bookkeeping: a [`Tally`] of what one test sent, confirmed and handled, and the
//! summary line and verdict drawn from it (lost, phantom and duplicate messages).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::factory::TransportFactory;

/// What was sent, confirmed and handled in one test.
#[derive(Clone, Default)]
pub(super) struct Tally {
    inner: Arc<Mutex<TallyInner>>,
}

#[derive(Default)]
struct TallyInner {
    sent: HashSet<String>,
    confirmed: HashSet<String>,
    handled: HashMap<String, u32>,
    by_instance: BTreeMap<String, u64>,
}

/// The figures of a summary line.
#[derive(Debug)]
pub(super) struct Figures {
    sent: usize,
    confirmed: usize,
    handled: u64,
    lost: Vec<String>,
    duplicates: u64,
    phantom: Vec<String>,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, TallyInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a publish attempted.
    pub(super) fn sent(&self, id: &str) {
        self.lock().sent.insert(id.to_string());
    }

    /// Record a publish that returned `Ok`.
    pub(super) fn confirmed(&self, id: &str) {
        self.lock().confirmed.insert(id.to_string());
    }

    /// Record one handling; returns how many times `id` has now been handled.
    pub(super) fn handled(&self, id: &str, instance: &str) -> u32 {
        let mut inner = self.lock();
        *inner.by_instance.entry(instance.to_string()).or_default() += 1;
        let n = inner.handled.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }

    /// How many times `id` was handled.
    pub(super) fn times(&self, id: &str) -> u32 {
        self.lock().handled.get(id).copied().unwrap_or(0)
    }

    /// Distinct messages handled.
    pub(super) fn distinct(&self) -> usize {
        self.lock().handled.len()
    }

    /// Publishes confirmed so far.
    pub(super) fn confirmed_count(&self) -> usize {
        self.lock().confirmed.len()
    }

    /// The ids of the publishes confirmed so far.
    pub(super) fn confirmed_ids(&self) -> HashSet<String> {
        self.lock().confirmed.clone()
    }

    /// Handlings per instance.
    pub(super) fn by_instance(&self) -> BTreeMap<String, u64> {
        self.lock().by_instance.clone()
    }

    /// The figures of the summary line, as of now.
    fn figures(&self) -> Figures {
        let inner = self.lock();
        let mut lost: Vec<String> = inner
            .confirmed
            .iter()
            .filter(|id| !inner.handled.contains_key(*id))
            .cloned()
            .collect();
        lost.sort();
        let mut phantom: Vec<String> = inner
            .handled
            .keys()
            .filter(|id| !inner.sent.contains(*id))
            .cloned()
            .collect();
        phantom.sort();
        Figures {
            sent: inner.sent.len(),
            confirmed: inner.confirmed.len(),
            handled: inner.handled.values().map(|&n| u64::from(n)).sum(),
            lost,
            duplicates: inner
                .handled
                .values()
                .map(|&n| u64::from(n.saturating_sub(1)))
                .sum(),
            phantom,
        }
    }
}

/// Print the summary line and return the figures.
pub(super) fn report(
    test: &str,
    f: &dyn TransportFactory,
    tally: &Tally,
    started: Instant,
    extra: &str,
) -> Figures {
    let fig = tally.figures();
    println!(
        "conformance {test:<27} [{}] sent={} confirmed={} handled={} lost={} duplicates={} phantom={} in {:.0?}{}{extra}",
        f.name(),
        fig.sent,
        fig.confirmed,
        fig.handled,
        fig.lost.len(),
        fig.duplicates,
        fig.phantom.len(),
        started.elapsed(),
        if extra.is_empty() { "" } else { "; " },
    );
    fig
}

/// Nothing lost, nothing phantom, and (unless allowed) no duplicates.
pub(super) fn assert_clean(
    test: &str,
    f: &dyn TransportFactory,
    fig: &Figures,
    duplicates_allowed: u64,
) {
    let few = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    assert!(
        fig.lost.is_empty(),
        "{test} [{}]: {} confirmed message(s) never handled, e.g. {}",
        f.name(),
        fig.lost.len(),
        few(&fig.lost)
    );
    assert!(
        fig.phantom.is_empty(),
        "{test} [{}]: {} handled message(s) were never sent, e.g. {}",
        f.name(),
        fig.phantom.len(),
        few(&fig.phantom)
    );
    assert!(
        fig.duplicates <= duplicates_allowed,
        "{test} [{}]: {} duplicate handling(s), at most {duplicates_allowed} allowed",
        f.name(),
        fig.duplicates
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::MemoryFactory;

    #[test]
    fn figures_name_lost_phantom_and_duplicate_messages() {
        let tally = Tally::default();
        for id in ["a", "b", "c"] {
            tally.sent(id);
        }
        // `c` was attempted but never confirmed: missing it is no loss.
        tally.confirmed("a");
        tally.confirmed("b");
        assert_eq!(tally.handled("a", "one"), 1);
        assert_eq!(tally.handled("a", "two"), 2);
        tally.handled("ghost", "one");

        let fig = tally.figures();
        assert_eq!((fig.sent, fig.confirmed, fig.handled), (3, 2, 3));
        assert_eq!(fig.lost, ["b"]);
        assert_eq!(fig.phantom, ["ghost"]);
        assert_eq!(fig.duplicates, 1);
        assert_eq!(tally.distinct(), 2);
        assert_eq!(tally.times("a"), 2);
        assert_eq!(
            tally.by_instance(),
            BTreeMap::from([("one".to_string(), 2), ("two".to_string(), 1)])
        );
    }

    #[test]
    fn a_clean_run_passes_and_duplicates_pass_only_when_allowed() {
        let f = MemoryFactory::typed();
        let tally = Tally::default();
        tally.sent("a");
        tally.confirmed("a");
        tally.handled("a", "one");
        assert_clean("clean", &f, &tally.figures(), 0);
        tally.handled("a", "one");
        assert_clean("one duplicate allowed", &f, &tally.figures(), 1);
        let strict = || assert_clean("strict", &f, &tally.figures(), 0);
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(strict));
        assert!(refused.is_err(), "a duplicate fails a strict check");
    }

    #[test]
    #[should_panic(expected = "1 confirmed message(s) never handled, e.g. lost-1")]
    fn a_lost_message_fails_the_test() {
        let tally = Tally::default();
        tally.sent("lost-1");
        tally.confirmed("lost-1");
        assert_clean("lost", &MemoryFactory::typed(), &tally.figures(), 0);
    }
}
