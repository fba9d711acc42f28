//! [`MemoryKv`]: the in-process store (the default), also the local mirror behind the Redis store.
//!
//! One `RwLock` around a `HashMap`: reads (every hook call that consults the store) share the
//! lock, writes (operator changes, module state) are rare. Expired entries read as absent at
//! once and are swept when a write needs room, so memory stays bounded by `max_bytes` without a
//! background task. A full store refuses new data ([`KvError::TooLarge`]) rather than evicting:
//! silently forgetting that an operator closed a region is worse than a failed write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::{check_sizes, KvError, KvStore};

/// Bytes charged per entry on top of its key and value (map slot, two `String` headers, the
/// expiry), so a flood of tiny keys is bounded too.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: String,
    /// When it stops being visible; `None`: never.
    pub expires_at: Option<Instant>,
}

impl Entry {
    /// An entry expiring `ttl` from now (`None`: never; a TTL too large for the clock: never).
    pub fn new(value: String, ttl: Option<Duration>) -> Self {
        Self {
            value,
            expires_at: ttl.and_then(|ttl| Instant::now().checked_add(ttl)),
        }
    }

    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

fn cost(key: &str, value: &str) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD_BYTES
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<String, Entry>,
    /// Sum of [`cost`] over `map`.
    bytes: usize,
}

impl State {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let old = self.map.remove(key)?;
        self.bytes -= cost(key, &old.value);
        Some(old)
    }

    fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.map.retain(|key, entry| {
            let keep = entry.live(now);
            if !keep {
                freed += cost(key, &entry.value);
            }
            keep
        });
        self.bytes -= freed;
    }
}

/// An in-process key-value store with per-key expiry, bounded to `max_bytes`.
#[derive(Debug)]
pub struct MemoryKv {
    max_bytes: usize,
    state: RwLock<State>,
    /// Set while full, so a module retrying writes into a full store logs one warning, not one
    /// per request.
    full: AtomicBool,
}

impl MemoryKv {
    /// An empty store holding at most `max_bytes` (keys + values + [`ENTRY_OVERHEAD_BYTES`] each).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            state: RwLock::default(),
            full: AtomicBool::new(false),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a way that matters
        // more than refusing every later request would.
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `entry` under `key` if it fits (after sweeping expired entries when needed).
    pub fn put(&self, key: &str, entry: Entry) -> Result<(), KvError> {
        check_sizes(key, &entry.value)?;
        let mut state = self.write();
        self.put_locked(&mut state, key, entry)
    }

    fn put_locked(&self, state: &mut State, key: &str, entry: Entry) -> Result<(), KvError> {
        let new = cost(key, &entry.value);
        let old = state.map.get(key).map_or(0, |e| cost(key, &e.value));
        if state.bytes - old + new > self.max_bytes {
            state.sweep(Instant::now());
            let old = state.map.get(key).map_or(0, |e| cost(key, &e.value));
            if state.bytes - old + new > self.max_bytes {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max_bytes = self.max_bytes,
                        used_bytes = state.bytes,
                        key,
                        "key-value store full: refusing writes until entries expire or are \
                         deleted (raise kv.max_bytes?)"
                    );
                }
                return Err(KvError::TooLarge);
            }
        }
        self.full.store(false, Ordering::Relaxed);
        state.remove(key);
        state.bytes += new;
        state.map.insert(key.to_owned(), entry);
        Ok(())
    }

    /// Removes `key`; whether it was there (expired or not).
    pub fn remove(&self, key: &str) -> bool {
        self.write().remove(key).is_some()
    }

    /// Replaces the whole content with `entries`, keeping as many as fit; returns how many were
    /// left out for lack of room.
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (String, Entry)>) -> usize {
        let mut fresh = State::default();
        let mut left_out = 0;
        for (key, entry) in entries {
            let cost = cost(&key, &entry.value);
            if fresh.bytes + cost > self.max_bytes {
                left_out += 1;
                continue;
            }
            fresh.bytes += cost;
            if let Some(old) = fresh.map.insert(key.clone(), entry) {
                fresh.bytes -= self::cost(&key, &old.value);
            }
        }
        *self.write() = fresh;
        left_out
    }

    /// Live (unexpired) entries.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.map.values().filter(|e| e.live(now)).count()
    }

    /// Whether no live entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KvStore for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state
            .map
            .get(key)
            .filter(|e| e.live(Instant::now()))
            .map(|e| e.value.clone()))
    }

    fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        self.put(key, Entry::new(value.to_owned(), ttl))
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        check_sizes(key, value)?;
        // Read and write under one write lock: that is what makes it atomic.
        let mut state = self.write();
        let current = state
            .map
            .get(key)
            .filter(|e| e.live(Instant::now()))
            .map(|e| e.value.as_str());
        if current != expected {
            return Ok(false);
        }
        self.put_locked(&mut state, key, Entry::new(value.to_owned(), ttl))?;
        Ok(true)
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        if key.len() > super::MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        self.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
    use std::sync::Arc;

    #[test]
    fn set_get_delete_round_trip() {
        let kv = MemoryKv::new(1 << 20);
        assert_eq!(kv.get("region/eu/state"), Ok(None));
        kv.set("region/eu/state", "closed", None).unwrap();
        assert_eq!(kv.get("region/eu/state"), Ok(Some("closed".into())));
        kv.set("region/eu/state", "open", None).unwrap();
        assert_eq!(kv.get("region/eu/state"), Ok(Some("open".into())));
        kv.delete("region/eu/state").unwrap();
        kv.delete("region/eu/state").unwrap();
        assert_eq!(kv.get("region/eu/state"), Ok(None));
    }

    #[test]
    fn entries_disappear_when_their_ttl_passes() {
        let kv = MemoryKv::new(1 << 20);
        kv.set("short", "v", Some(Duration::from_millis(30)))
            .unwrap();
        kv.set("long", "v", Some(Duration::from_secs(60))).unwrap();
        kv.set("zero", "v", Some(Duration::ZERO)).unwrap();
        assert_eq!(kv.get("short"), Ok(Some("v".into())));
        assert_eq!(kv.get("zero"), Ok(None));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(kv.get("short"), Ok(None));
        assert_eq!(kv.get("long"), Ok(Some("v".into())));
        assert_eq!(kv.len(), 1);
        // A TTL the clock cannot represent means "never expires", not a panic.
        kv.set("forever", "v", Some(Duration::MAX)).unwrap();
        assert_eq!(kv.get("forever"), Ok(Some("v".into())));
    }

    #[test]
    fn oversized_keys_and_values_are_refused() {
        let kv = MemoryKv::new(1 << 20);
        let key = "k".repeat(MAX_KEY_BYTES);
        let value = "v".repeat(MAX_VALUE_BYTES);
        kv.set(&key, &value, None).unwrap();
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(kv.set(&long_key, "v", None), Err(KvError::TooLarge));
        assert_eq!(kv.set("k", &long_value, None), Err(KvError::TooLarge));
        assert_eq!(
            kv.compare_and_set("k", None, &long_value, None),
            Err(KvError::TooLarge)
        );
        assert_eq!(kv.delete(&long_key), Err(KvError::TooLarge));
    }

    #[test]
    fn a_full_store_refuses_new_data_until_entries_expire() {
        let kv = MemoryKv::new(10 * (ENTRY_OVERHEAD_BYTES + 3));
        for i in 0..10 {
            kv.set(&format!("k{i}"), "v", Some(Duration::from_millis(40)))
                .unwrap();
        }
        assert_eq!(kv.set("k10", "v", None), Err(KvError::TooLarge));
        // Overwriting in place with a value of the same size still fits.
        kv.set("k0", "w", Some(Duration::from_millis(40))).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        kv.set("k10", "v", None).unwrap();
        assert_eq!(kv.len(), 1);
    }

    #[test]
    fn compare_and_set_only_replaces_the_expected_value() {
        let kv = MemoryKv::new(1 << 20);
        assert_eq!(kv.compare_and_set("k", Some("a"), "b", None), Ok(false));
        assert_eq!(kv.compare_and_set("k", None, "a", None), Ok(true));
        assert_eq!(kv.compare_and_set("k", None, "x", None), Ok(false));
        assert_eq!(kv.compare_and_set("k", Some("a"), "b", None), Ok(true));
        assert_eq!(kv.get("k"), Ok(Some("b".into())));
        // An expired value counts as unset.
        kv.set("t", "old", Some(Duration::ZERO)).unwrap();
        assert_eq!(kv.compare_and_set("t", None, "new", None), Ok(true));
    }

    #[test]
    fn concurrent_compare_and_set_increments_lose_no_update() {
        let kv = Arc::new(MemoryKv::new(1 << 20));
        kv.set("n", "0", None).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        loop {
                            let cur = kv.get("n").unwrap().unwrap();
                            let next = (cur.parse::<u64>().unwrap() + 1).to_string();
                            if kv.compare_and_set("n", Some(&cur), &next, None).unwrap() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get("n"), Ok(Some("1600".into())));
    }

    #[test]
    fn replace_all_keeps_what_fits_and_counts_the_rest() {
        let kv = MemoryKv::new(2 * (ENTRY_OVERHEAD_BYTES + 2));
        kv.set("old", "v", None).unwrap();
        let left_out =
            kv.replace_all(["a", "b", "c"].map(|k| (k.to_string(), Entry::new("v".into(), None))));
        assert_eq!(left_out, 1);
        assert_eq!(kv.get("old"), Ok(None));
        assert_eq!(kv.get("a"), Ok(Some("v".into())));
        assert_eq!(kv.len(), 2);
    }
}
