//! The key-value store policy modules and the admin API share (WIT `parallax:policy/kv`).
//!
//! The store is synchronous: modules call it from inside a hook, on the request path, so an
//! implementation answers reads from memory and never waits on the network for longer than a
//! few milliseconds.
//!
//! # Layout
//!
//! - this file: the [`KvStore`] trait, the size limits, the `[kv]` config ([`KvConfig`]) and
//!   [`build`], which picks the implementation.
//! - [`memory`]: [`MemoryKv`], in-process with per-key TTL and a byte bound (the default).
//! - [`redis`]: [`RedisKv`], shared by the fleet through Redis, read from a local mirror.
//! - [`resp`]: the Redis protocol subset `redis` speaks, with a hard deadline on every call.
//!
//! # Keys the proxy itself defines
//!
//! | key                    | values             | written by                                  | read by |
//! |------------------------|--------------------|---------------------------------------------|---------|
//! | `region/<name>/state`  | `open` \| `closed` | `POST /regions/<name>/close` \| `/open` (admin) | region-steer |
//!
//! Everything else is the modules' own; prefix keys with the module name to avoid collisions.

pub mod memory;
pub mod redis;
pub mod resp;

use std::sync::Arc;
use std::time::Duration;

use pingora::services::background::{background_service, GenBackgroundService};
use serde::{Deserialize, Serialize};

pub use memory::MemoryKv;
pub use redis::RedisKv;

use crate::metrics::Metrics;

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

/// `TooLarge` unless `key` and `value` are within [`MAX_KEY_BYTES`] / [`MAX_VALUE_BYTES`].
pub fn check_sizes(key: &str, value: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
        return Err(KvError::TooLarge);
    }
    Ok(())
}

/// The key whose value (`open` or `closed`) says whether region `name` takes viewers; the
/// region-steer module reads it, the admin API's `/regions/<name>/close|open` write it.
pub fn region_state_key(name: &str) -> String {
    format!("region/{name}/state")
}

/// `[kv]`: the key-value store shared by policy modules and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvConfig {
    /// Upper bound on what the store (or the Redis store's local mirror) holds, in bytes: keys +
    /// values + 64 bytes per entry. Default 16 MiB; at least 1 MiB. A full in-process store
    /// refuses new keys (`too-large`) rather than evicting them.
    pub max_bytes: usize,
    /// Redis to share the store with the fleet, `redis://[[user]:password@]host[:port][/db]`;
    /// admin purges then reach the whole fleet too ([`crate::fleet`]). Empty (the default):
    /// in-process only, each node its own store and its own purges.
    pub redis_url: String,
    /// Prefix of every key in Redis, and the name of the pub/sub channel changes are announced
    /// on. Default `parallax:kv:`; not empty. Nodes sharing a store must use the same one.
    pub redis_key_prefix: String,
    /// How long a write may take in Redis, connect included, in milliseconds; over it the write
    /// fails with `unavailable`. It is spent on the request thread of the module that writes, so
    /// keep it short. Default 25; 1..=1000.
    pub redis_timeout_ms: u64,
    /// How often the whole prefix is re-read from Redis, in milliseconds: catches changes made
    /// outside Parallax (`redis-cli`) and announcements missed while disconnected. Default 5000;
    /// at least 100.
    pub redis_resync_interval_ms: u64,
    /// How long to wait between reconnect attempts while Redis is down, in milliseconds.
    /// Default 1000; 10..=60000.
    pub redis_reconnect_interval_ms: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_bytes: 16 << 20,
            redis_url: String::new(),
            redis_key_prefix: "parallax:kv:".into(),
            redis_timeout_ms: 25,
            redis_resync_interval_ms: 5000,
            redis_reconnect_interval_ms: 1000,
        }
    }
}

impl KvConfig {
    /// Checks ranges and the Redis URL; the error is `(key under [kv], reason)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_bytes < 1 << 20 {
            return Err(("max_bytes", "must be at least 1048576 (1 MiB)".into()));
        }
        if self.redis_url.is_empty() {
            return Ok(());
        }
        redis::RedisTarget::parse(&self.redis_url).map_err(|e| ("redis_url", e))?;
        if self.redis_key_prefix.is_empty() {
            return Err((
                "redis_key_prefix",
                "must not be empty (it also names the change channel)".into(),
            ));
        }
        if !(1..=1000).contains(&self.redis_timeout_ms) {
            return Err(("redis_timeout_ms", "must be between 1 and 1000".into()));
        }
        if self.redis_resync_interval_ms < 100 {
            return Err(("redis_resync_interval_ms", "must be at least 100".into()));
        }
        if !(10..=60_000).contains(&self.redis_reconnect_interval_ms) {
            return Err((
                "redis_reconnect_interval_ms",
                "must be between 10 and 60000".into(),
            ));
        }
        Ok(())
    }

    /// `redis_url` with any password replaced, for logs and `GET /config`.
    pub fn redacted_url(&self) -> String {
        match self.redis_url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('/').unwrap_or((rest, "")) {
                (authority, path) if authority.contains('@') => {
                    let host = authority.rsplit_once('@').map_or("", |(_, h)| h);
                    let slash = if path.is_empty() && !rest.contains('/') {
                        ""
                    } else {
                        "/"
                    };
                    format!("{scheme}://<redacted>@{host}{slash}{path}")
                }
                _ => self.redis_url.clone(),
            },
            None => self.redis_url.clone(),
        }
    }
}

/// A store and, for Redis, the background service that keeps its mirror fresh.
pub struct Built {
    /// The store to hand to the Wasm host and the admin API.
    pub store: Arc<dyn KvStore>,
    /// Add to the pingora server when set (`Server::add_service`).
    pub follower: Option<GenBackgroundService<redis::RedisFollower>>,
    /// The Redis behind `store`, when there is one: also the fleet's message bus.
    pub redis: Option<Arc<RedisKv>>,
}

/// The store `config` asks for: Redis-backed when `redis_url` is set (first sync made now; an
/// unreachable Redis is not an error), else in-process.
pub fn build(config: &KvConfig, metrics: Arc<Metrics>) -> Result<Built, String> {
    if config.redis_url.is_empty() {
        return Ok(Built {
            store: Arc::new(MemoryKv::new(config.max_bytes)),
            follower: None,
            redis: None,
        });
    }
    tracing::info!(redis = %config.redacted_url(), prefix = %config.redis_key_prefix, "key-value store backed by redis");
    let kv = Arc::new(RedisKv::connect(config, metrics)?);
    let follower = background_service("kv redis follower", redis::RedisFollower(kv.clone()));
    Ok(Built {
        store: kv.clone(),
        follower: Some(follower),
        redis: Some(kv),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_in_process_and_valid() {
        let config = KvConfig::default();
        assert!(config.redis_url.is_empty());
        assert_eq!(config.max_bytes, 16 << 20);
        assert_eq!(config.redis_timeout_ms, 25);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_rejected_naming_the_field() {
        let redis = KvConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            ..KvConfig::default()
        };
        assert_eq!(redis.validate(), Ok(()));
        let cases = [
            (
                KvConfig {
                    max_bytes: 1000,
                    ..redis.clone()
                },
                "max_bytes",
            ),
            (
                KvConfig {
                    redis_url: "http://x".into(),
                    ..redis.clone()
                },
                "redis_url",
            ),
            (
                KvConfig {
                    redis_key_prefix: String::new(),
                    ..redis.clone()
                },
                "redis_key_prefix",
            ),
            (
                KvConfig {
                    redis_timeout_ms: 0,
                    ..redis.clone()
                },
                "redis_timeout_ms",
            ),
            (
                KvConfig {
                    redis_timeout_ms: 5000,
                    ..redis.clone()
                },
                "redis_timeout_ms",
            ),
            (
                KvConfig {
                    redis_resync_interval_ms: 10,
                    ..redis.clone()
                },
                "redis_resync_interval_ms",
            ),
            (
                KvConfig {
                    redis_reconnect_interval_ms: 0,
                    ..redis.clone()
                },
                "redis_reconnect_interval_ms",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(config.validate().unwrap_err().0, key, "{config:?}");
        }
    }

    #[test]
    fn passwords_are_redacted_from_the_url() {
        let url = |u: &str| {
            KvConfig {
                redis_url: u.into(),
                ..KvConfig::default()
            }
            .redacted_url()
        };
        assert_eq!(url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            url("redis://:secret@h:6379/2"),
            "redis://<redacted>@h:6379/2"
        );
        assert_eq!(url("redis://u:secret@h"), "redis://<redacted>@h");
    }

    #[test]
    fn the_in_process_store_is_built_without_redis() {
        let built = build(&KvConfig::default(), Arc::new(Metrics::new().unwrap())).unwrap();
        assert!(built.follower.is_none());
        let kv = built.store;
        kv.set(&region_state_key("eu"), "closed", None).unwrap();
        assert_eq!(kv.get("region/eu/state"), Ok(Some("closed".into())));
    }
}
