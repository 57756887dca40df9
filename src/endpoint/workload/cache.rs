//! Positive TokenReviews, remembered briefly so a pod asking again does not cost an API request.
//! Keyed by the SHA-256 of the assertion (the assertion itself is never kept); an entry lives
//! until the assertion's own `exp` or `maxAge`, whichever comes first, and the cache holds at most
//! `maxEntries`.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest::{SHA256, digest};

use super::assertion::ServiceAccount;

pub type Key = [u8; 32];

/// The cache key of an assertion.
pub fn key(assertion: &str) -> Key {
    let mut key = [0; 32];
    key.copy_from_slice(digest(&SHA256, assertion.as_bytes()).as_ref());
    key
}

pub struct ReviewCache {
    /// Seconds; 0 keeps nothing.
    max_age: i64,
    max_entries: usize,
    entries: Mutex<HashMap<Key, Entry>>,
}

struct Entry {
    account: ServiceAccount,
    /// Unix seconds; the entry is used while `now < until`.
    until: i64,
}

impl ReviewCache {
    pub fn new(max_age: std::time::Duration, max_entries: usize) -> ReviewCache {
        ReviewCache {
            max_age: i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &Key, now: i64) -> Option<ServiceAccount> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|entry| now < entry.until)
            .map(|entry| entry.account.clone())
    }

    /// Remembers that the assertion with `key`, expiring at `exp`, is `account`'s.
    pub fn put(&self, key: Key, account: ServiceAccount, exp: i64, now: i64) {
        let until = exp.min(now.saturating_add(self.max_age));
        if until <= now || self.max_entries == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if !entries.contains_key(&key) && entries.len() >= self.max_entries {
            entries.retain(|_, entry| now < entry.until);
            // Still full: the entry that would expire first goes.
            if entries.len() >= self.max_entries
                && let Some(first) = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.until)
                    .map(|(key, _)| *key)
            {
                entries.remove(&first);
            }
        }
        entries.insert(key, Entry { account, until });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn account(name: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: "team-a".into(),
            name: name.into(),
        }
    }

    #[test]
    fn entries_live_until_exp_or_max_age() {
        let cache = ReviewCache::new(Duration::from_secs(30), 10);
        // (what, exp, asked at, hit?)
        let cases = [
            ("exp first: used before it", 1_010, 1_009, true),
            ("exp first: gone at exp", 1_010, 1_010, false),
            ("max age first: used before it", 2_000, 1_029, true),
            ("max age first: gone at it", 2_000, 1_030, false),
        ];
        for (i, (what, exp, at, hit)) in cases.into_iter().enumerate() {
            let key = key(&format!("assertion {i}"));
            cache.put(key, account("api"), exp, 1_000);
            assert_eq!(cache.get(&key, at).is_some(), hit, "{what}");
        }
        let expired = key("expired");
        cache.put(expired, account("api"), 999, 1_000);
        assert_eq!(cache.get(&expired, 999), None, "an expired one is not kept");
        assert_eq!(cache.get(&key("never seen"), 1_000), None);
    }

    #[test]
    fn bounded_size_drops_the_expired_then_the_soonest() {
        let cache = ReviewCache::new(Duration::from_secs(100), 2);
        cache.put(key("a"), account("a"), 1_010, 1_000);
        cache.put(key("b"), account("b"), 1_050, 1_000);
        cache.put(key("c"), account("c"), 1_080, 1_000);
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.get(&key("a"), 1_001),
            None,
            "the soonest to expire went"
        );
        assert_eq!(cache.get(&key("c"), 1_001), Some(account("c")));
        cache.put(key("d"), account("d"), 1_090, 1_060);
        assert_eq!(cache.get(&key("b"), 1_001), None, "the expired went");
        assert_eq!(cache.get(&key("c"), 1_061), Some(account("c")));
        assert_eq!(cache.get(&key("d"), 1_061), Some(account("d")));
    }

    #[test]
    fn zero_max_age_keeps_nothing() {
        let cache = ReviewCache::new(Duration::ZERO, 10);
        cache.put(key("a"), account("a"), 2_000, 1_000);
        assert_eq!(cache.get(&key("a"), 1_000), None);
    }

    #[test]
    fn keys_are_digests_of_the_whole_assertion() {
        assert_ne!(key("a.b.c"), key("a.b.d"));
        assert_eq!(key("a.b.c"), key("a.b.c"));
    }
}
