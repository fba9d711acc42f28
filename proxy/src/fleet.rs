//! Purges that reach the whole fleet: an admin purge on one node is published on the Redis of
//! `[kv]` (channel `<redis_key_prefix>purge`) and applied by every other node listening there.
//!
//! Operators run many proxies behind one load balancer, and the admin API listens on loopback
//! only, so without this a purge would have to be sent to every instance's own admin port. With
//! `[kv] redis_url` set, `POST /purge` on any node purges the same objects on every node that
//! shares that Redis (and key prefix); `scope=node` keeps it local. Without Redis, purges are
//! per node, as before.
//!
//! Delivery is Redis pub/sub: fire-and-forget. A node that is disconnected from Redis when a
//! purge is published misses it; the publishing node's answer says how many other nodes
//! received it, so automation can compare that with the fleet size, and the kv store logs each
//! node's outages (`redis down`, `redis up`), which bound what it may have missed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::admin::CacheAdmin;
use crate::kv::redis::RedisKv;
use crate::kv::KvError;

/// The channel name under the kv's key prefix.
const CHANNEL: &str = "purge";

/// One purge as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeOrder {
    /// The node that published it (it has already purged its own cache).
    pub node: u64,
    /// `None` when cache keys carry no host.
    pub host: Option<String>,
    /// The path of one URL, or the prefix of many.
    pub path: String,
    /// A URL purge's raw query (`None` for none); always `None` for a prefix.
    pub query: Option<String>,
    /// Whether `path` is a prefix.
    pub prefix: bool,
}

/// This node's end of the fleet's purge channel.
pub struct Fleet {
    redis: Arc<RedisKv>,
    node: u64,
}

impl Fleet {
    /// Listens on `redis` for other nodes' purges and applies them to `cache`. Call before the
    /// server starts (the subscription is made when the kv follower connects).
    pub fn join(redis: Arc<RedisKv>, cache: Arc<dyn CacheAdmin>) -> Self {
        let node = node_id();
        redis.listen(
            CHANNEL,
            Arc::new(move |payload| receive(payload, node, cache.as_ref())),
        );
        Self { redis, node }
    }

    /// Publishes a purge this node has applied already; returns how many *other* nodes
    /// received it.
    pub fn publish(
        &self,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
        prefix: bool,
    ) -> Result<usize, KvError> {
        let order = PurgeOrder {
            node: self.node,
            host: host.map(str::to_owned),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            prefix,
        };
        let payload = serde_json::to_string(&order)
            .map_err(|e| KvError::Unavailable(format!("cannot encode the purge: {e}")))?;
        // This node listens too; it is not one of the others.
        Ok(self.redis.publish(CHANNEL, &payload)?.saturating_sub(1))
    }
}

/// Handles one message from the channel: malformed ones are logged and dropped, this node's
/// own are skipped (already applied), others are applied.
fn receive(payload: &str, node: u64, cache: &dyn CacheAdmin) {
    let order: PurgeOrder = match serde_json::from_str(payload) {
        Ok(order) => order,
        Err(e) => {
            tracing::warn!(error = %e, payload = &payload[..payload.floor_char_boundary(200)], "malformed fleet purge ignored");
            return;
        }
    };
    if order.node == node {
        return;
    }
    let host = order.host.as_deref();
    match cache.purge(host, &order.path, order.query.as_deref(), order.prefix) {
        Ok(purged) => tracing::info!(
            from = order.node,
            host,
            path = order.path,
            prefix = order.prefix,
            purged,
            "fleet purge applied"
        ),
        Err(e) => tracing::warn!(from = order.node, error = %e, "fleet purge not applicable here"),
    }
}

/// A random id for this process, telling its own messages apart from other nodes'. std's
/// `RandomState` is seeded from the OS random source.
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the purges it is asked for.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl CacheAdmin for Recorder {
        fn purge_url(
            &self,
            host: Option<&str>,
            path: &str,
            query: Option<&str>,
        ) -> Result<usize, crate::admin::AdminError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("url {host:?} {path} {query:?}"));
            Ok(1)
        }
        fn purge_prefix(
            &self,
            host: Option<&str>,
            prefix: &str,
        ) -> Result<usize, crate::admin::AdminError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("prefix {host:?} {prefix}"));
            Ok(2)
        }
        fn stats(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    fn order(node: u64, prefix: bool) -> String {
        serde_json::to_string(&PurgeOrder {
            node,
            host: Some("cdn.example".into()),
            path: "/live/a/".into(),
            query: None,
            prefix,
        })
        .unwrap()
    }

    #[test]
    fn other_nodes_orders_are_applied_and_our_own_and_garbage_are_not() {
        let cache = Recorder::default();
        receive(&order(7, true), 1, &cache);
        receive(&order(7, false), 1, &cache);
        receive(&order(1, true), 1, &cache);
        receive("{not json", 1, &cache);
        receive(r#"{"node": 7}"#, 1, &cache);
        assert_eq!(
            *cache.0.lock().unwrap(),
            [
                "prefix Some(\"cdn.example\") /live/a/",
                "url Some(\"cdn.example\") /live/a/ None"
            ]
        );
    }

    #[test]
    fn node_ids_differ() {
        assert_ne!(node_id(), node_id());
    }
}
