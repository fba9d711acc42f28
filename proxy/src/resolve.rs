//! Keeping origin addresses current: a group whose origins are given by host name resolves
//! them again every `resolve_interval_ms` ([`Resolver`], one background service per such group).
//!
//! Origins often sit behind DNS that changes: a cloud load balancer's addresses rotate, a
//! failover record flips. Resolving once at startup would leave a long-running proxy sending to
//! an address that no longer serves. A changed answer is logged and used for new connections
//! (pooled connections to the old address simply age out); a failed or empty lookup keeps the
//! last address, with a warning, so a DNS outage never takes an origin away by itself. When a
//! name resolves to several addresses the first is used, as at startup.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::upstream::Group;

/// Longest a lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Re-resolves one group's named origins; see the module docs.
pub struct Resolver {
    group: Arc<Group>,
}

impl Resolver {
    /// A resolver for `group` (whose `resolve_interval_ms` is not 0).
    pub fn new(group: Arc<Group>) -> Self {
        Self { group }
    }
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Validated: 0 (no resolver is started) or at least a second.
        let interval = Duration::from_millis(self.group.config().resolve_interval_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            refresh(&self.group, system_lookup).await;
        }
    }
}

/// The system resolver (`getaddrinfo`, on tokio's blocking pool), bounded by [`LOOKUP_TIMEOUT`].
async fn system_lookup(address: String) -> Result<SocketAddr, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(address)).await {
        Ok(Ok(mut found)) => found.next().ok_or_else(|| "no address".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
    }
}

/// Looks up every named origin of `group` once with `lookup` and applies the answers.
async fn refresh<F, Fut>(group: &Group, lookup: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<SocketAddr, String>>,
{
    for (origin, name) in group.named_origins() {
        match lookup(name.clone()).await {
            Ok(address) => {
                let previous = group.set_address(origin, address);
                if previous != address {
                    tracing::info!(
                        group = group.name(),
                        origin = origin.as_str(),
                        name,
                        %previous,
                        %address,
                        "origin address changed"
                    );
                }
            }
            Err(error) => tracing::warn!(
                group = group.name(),
                origin = origin.as_str(),
                name,
                error,
                "cannot resolve origin; keeping its last address"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::{GroupConfig, OriginConfig, OriginId, Upstreams};
    use pingora::upstreams::peer::Peer;

    fn group(primary: &str, backup: &str) -> Arc<Group> {
        let config = GroupConfig {
            primary: OriginConfig::at(primary),
            backup: Some(OriginConfig::at(backup)),
            ..GroupConfig::default()
        };
        let upstreams = Upstreams::new(&[config], Arc::new(Metrics::new().unwrap())).unwrap();
        upstreams.default_group()
    }

    fn peer_address(group: &Group, origin: OriginId) -> String {
        group
            .peer(origin, Duration::from_secs(1))
            .address()
            .to_string()
    }

    #[tokio::test]
    async fn a_changed_answer_moves_new_connections_and_a_failure_keeps_the_last_address() {
        let group = group("localhost:8081", "127.0.0.1:8082");
        assert_eq!(
            group.named_origins(),
            [(OriginId::Primary, "localhost:8081".to_owned())],
            "IP addresses are never looked up"
        );

        refresh(&group, |name| async move {
            assert_eq!(name, "localhost:8081");
            Ok::<_, String>("127.0.0.9:8081".parse().unwrap())
        })
        .await;
        assert_eq!(peer_address(&group, OriginId::Primary), "127.0.0.9:8081");

        refresh(&group, |_| async {
            Err::<SocketAddr, _>("timeout".to_owned())
        })
        .await;
        assert_eq!(peer_address(&group, OriginId::Primary), "127.0.0.9:8081");
        assert_eq!(peer_address(&group, OriginId::Backup), "127.0.0.1:8082");
    }

    #[tokio::test]
    async fn the_system_resolver_answers_for_localhost() {
        // /etc/hosts: no query leaves the machine.
        let address = system_lookup("localhost:8081".into()).await.unwrap();
        assert!(address.ip().is_loopback(), "{address}");
        assert_eq!(address.port(), 8081);
    }
}
