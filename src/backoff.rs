//! Per-object exponential back-off for failed reconciles, shared by both controllers.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(300);

/// Consecutive failures per object: 5 s, 10 s, 20 s, … capped at 5 minutes.
pub struct Backoff<K>(Mutex<HashMap<K, u32>>);

impl<K: Hash + Eq> Default for Backoff<K> {
    fn default() -> Self {
        Backoff(Mutex::default())
    }
}

impl<K: Hash + Eq> Backoff<K> {
    /// Records one more failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: K) -> Duration {
        let mut failures = self.0.lock().expect("not poisoned");
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        FIRST.saturating_mul(1 << (*count - 1).min(6)).min(MAX)
    }

    /// Forgets `key`'s failures, after a success or once the object is gone.
    pub fn reset(&self, key: &K) {
        self.0.lock().expect("not poisoned").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_minutes_and_resets() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(
            backoff.failed("b").as_secs(),
            5,
            "objects back off independently"
        );
        backoff.reset(&"a");
        assert_eq!(backoff.failed("a").as_secs(), 5);
    }
}
