//! The key-value store policy modules and the admin API share (WIT `parallax:policy/kv`).
//!
//! The store is synchronous: modules call it from inside a hook, on the request path, so an
//! implementation answers reads from memory and never waits on the network for longer than a
//! few milliseconds.

use std::time::Duration;

/// Largest key, in bytes (WIT `kv`: keys up to 1 KiB).
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes (WIT `kv`: values up to 64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why a store operation failed; mirrors WIT `kv-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The backing store cannot be reached. Reads are still answered from the last known state.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    /// The key or value is over [`MAX_KEY_BYTES`] / [`MAX_VALUE_BYTES`].
    #[error("key or value too large")]
    TooLarge,
}

/// A key-value store with per-key expiry.
pub trait KvStore: Send + Sync + 'static {
    /// The value of `key`, or `None` when unset or expired.
    fn get(&self, key: &str) -> Result<Option<String>, KvError>;
    /// Sets `key` to `value`, expiring after `ttl` if given.
    fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError>;
    /// Sets `key` to `value` only if its current value is `expected` (`None`: only if unset);
    /// returns whether it was set.
    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError>;
    /// Removes `key`; removing an unset key is not an error.
    fn delete(&self, key: &str) -> Result<(), KvError>;
}
