//! Back-off shared by both controllers: per object for failed reconciles, and for their watches.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;

/// Base delay of a failing watch: 0.5 s doubling to 2 s. Jitter adds up to as much again, so a
/// watch is retried at most 4 s apart: kube-runtime's default grows to 30 s plus jitter (up to
/// 60 s), and objects created after an API outage went unseen that long. After an outage a
/// watch may fail two or three more times (the reconnect, `403` while the restarted API server's
/// authorizer warms up, `410 Gone` for its stale resourceVersion before it relists), and the
/// controller's trigger stream backs off on each of its watches' errors: 4 s a step keeps new
/// objects seen within about 10 s.
const WATCH_FIRST: Duration = Duration::from_millis(500);
const WATCH_MAX_BASE: Duration = Duration::from_secs(2);
/// A watch that has not failed for this long starts again from the first delay.
const WATCH_RESET: Duration = Duration::from_secs(60);

/// The back-off of every watch (and controller trigger stream) the operator runs.
pub fn watch() -> ResetTimerBackoff<ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(WATCH_FIRST)
        .with_max_delay(WATCH_MAX_BASE)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), WATCH_RESET)
}

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

    #[test]
    fn watch_retries_are_at_most_four_seconds_apart_and_jittered() {
        let delays: Vec<Duration> = watch().take(1000).collect();
        assert_eq!(delays.len(), 1000, "a watch is retried forever");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        assert!(delays[0] < Duration::from_secs(1), "{:?}", delays[0]);
        let late = &delays[10..];
        assert!(
            late.iter().any(|d| *d != late[0]),
            "jitter spreads replicas' retries"
        );
    }
}
