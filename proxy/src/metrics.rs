//! Prometheus metrics: one [`Metrics`] owns a private registry and the handles the request path,
//! the upstream groups and the health checkers update; [`metrics_service`] serves it as text.
//!
//! Gauges that mirror another component's state (cache size, items, evictions) are read from a
//! [`CacheStatsSource`] at scrape time rather than pushed, so the storage hot path never touches a
//! metric for them.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use thiserror::Error;

/// Failures while building the registry.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// A metric could not be created or registered (a duplicate name or an invalid label).
    #[error("registering metric {name}: {source}")]
    Register {
        /// The metric's name.
        name: &'static str,
        /// What prometheus reported.
        source: prometheus::Error,
    },
}

/// Cache figures read at scrape time; see [`Metrics::set_cache_stats_source`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes held by the cache (bodies and headers as weighed by the storage).
    pub bytes: u64,
    /// Objects held by the cache.
    pub items: u64,
    /// Objects evicted since start, a monotonic count.
    pub evictions: u64,
}

/// Where scrapes read the cache figures from (the storage's `stats()`, wired by the service).
pub type CacheStatsSource = Box<dyn Fn() -> CacheStats + Send + Sync>;

/// Latency buckets in seconds: loopback hits are sub-millisecond, origin fetches are bounded by
/// the 1 s / 2 s first-byte timeouts, so resolution is spent below 2.5 s.
const LATENCY_BUCKETS_SECS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0,
];

/// The registry and every metric handle of the proxy. Clone the `Arc` around it; handles are
/// cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    /// Client requests by cache status (`hit`, `miss`, `stale`, `expired`, `bypass`, ...).
    pub requests: IntCounterVec,
    /// Response body bytes written to clients.
    pub bytes_served: IntCounter,
    /// Requests sent to an origin, by `group` and `origin` (`primary`/`backup`).
    pub origin_requests: IntCounterVec,
    /// Time from sending a request to an origin until its response header, by `group`/`origin`.
    pub origin_latency: HistogramVec,
    /// Requests that waited on another request's cache fill instead of going to the origin.
    pub coalesced_waiters: IntCounter,
    /// Bytes held by the cache, read from the storage at scrape.
    pub cache_bytes: IntGauge,
    /// Objects held by the cache, read from the storage at scrape.
    pub cache_items: IntGauge,
    /// Objects evicted from the cache since start.
    pub cache_evictions: IntCounter,
    /// 1 while an origin counts as healthy, 0 while it is down, by `group`/`origin`.
    pub upstream_healthy: IntGaugeVec,
    /// Times a group's traffic moved from its primary to its backup, by `group`.
    pub failovers: IntCounterVec,
    /// Failed origin attempts by `group`, `origin` and `reason` (see `FailureReason::as_str`).
    pub upstream_failures: IntCounterVec,
    /// Attempts that went to the other origin after a failure, by `group`/`origin` retried on.
    pub upstream_retries: IntCounterVec,
    /// Active health checks by `group`, `origin` and `result` (`ok` or a failure reason).
    pub health_checks: IntCounterVec,
    /// Health state changes by `group`, `origin` and `to` (`up`/`down`).
    pub health_transitions: IntCounterVec,
    /// 1 while the Redis-backed key-value store is connected and in sync, else 0 (stays 0 for
    /// the in-process store).
    pub kv_redis_up: IntGauge,
    /// Redis connection state changes of the key-value store, by `to` (`up`/`down`).
    pub kv_redis_transitions: IntCounterVec,
    /// Key-value writes Redis did not take, by `op` and `reason` (`down`, `connect`, `timeout`,
    /// `io`, `protocol`, `redis_error`).
    pub kv_write_failures: IntCounterVec,
    /// Policy-module hook calls by `module`, `hook` (`request`/`response`/`body`) and `outcome`
    /// (`ok`, `timeout`, `trap`, `bad_return`, `instantiate_error`).
    pub module_calls: IntCounterVec,
    /// Counters modules keep through the `counters` import, by `module` and `name`.
    pub module_counters: IntCounterVec,
    /// Module version loads by `file` and `result` (`ok`, or the stage that rejected it).
    pub module_loads: IntCounterVec,
    cache_stats: OnceLock<CacheStatsSource>,
    /// Evictions already added to `cache_evictions`, so a scrape adds only the difference.
    evictions_seen: Mutex<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the registry with every metric registered under the `parallax_` prefix.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter_vec = |name: &'static str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)
                .map_err(|source| MetricsError::Register { name, source })?;
            registry
                .register(Box::new(metric.clone()))
                .map_err(|source| MetricsError::Register { name, source })?;
            Ok::<_, MetricsError>(metric)
        };
        let requests = counter_vec(
            "parallax_requests_total",
            "Client requests by cache status.",
            &["cache_status"],
        )?;
        let origin_requests = counter_vec(
            "parallax_origin_requests_total",
            "Requests sent to an origin.",
            &["group", "origin"],
        )?;
        let failovers = counter_vec(
            "parallax_upstream_failovers_total",
            "Times a group's traffic moved from its primary to its backup origin.",
            &["group"],
        )?;
        let upstream_failures = counter_vec(
            "parallax_upstream_failures_total",
            "Failed origin attempts by reason.",
            &["group", "origin", "reason"],
        )?;
        let upstream_retries = counter_vec(
            "parallax_upstream_retries_total",
            "Attempts retried on the other origin of a group.",
            &["group", "origin"],
        )?;
        let health_checks = counter_vec(
            "parallax_health_checks_total",
            "Active health checks by result.",
            &["group", "origin", "result"],
        )?;
        let health_transitions = counter_vec(
            "parallax_health_transitions_total",
            "Origin health state changes.",
            &["group", "origin", "to"],
        )?;
        let kv_redis_transitions = counter_vec(
            "parallax_kv_redis_transitions_total",
            "Redis connection state changes of the key-value store.",
            &["to"],
        )?;
        let kv_write_failures = counter_vec(
            "parallax_kv_write_failures_total",
            "Key-value writes Redis did not take, by operation and reason.",
            &["op", "reason"],
        )?;
        let module_calls = counter_vec(
            "parallax_module_calls_total",
            "Policy-module hook calls by module, hook and outcome.",
            &["module", "hook", "outcome"],
        )?;
        let module_counters = counter_vec(
            "parallax_module_counter_total",
            "Counters kept by policy modules (the counters import).",
            &["module", "name"],
        )?;
        let module_loads = counter_vec(
            "parallax_module_loads_total",
            "Policy-module version loads by file and result.",
            &["file", "result"],
        )?;

        let counter = |name: &'static str, help: &str| {
            let metric = IntCounter::new(name, help)
                .map_err(|source| MetricsError::Register { name, source })?;
            registry
                .register(Box::new(metric.clone()))
                .map_err(|source| MetricsError::Register { name, source })?;
            Ok::<_, MetricsError>(metric)
        };
        let bytes_served = counter(
            "parallax_bytes_served_total",
            "Response body bytes written to clients.",
        )?;
        let coalesced_waiters = counter(
            "parallax_coalesced_waiters_total",
            "Requests that waited on another request's cache fill (cache lock).",
        )?;
        let cache_evictions = counter(
            "parallax_cache_evictions_total",
            "Objects evicted from the cache.",
        )?;

        let gauge = |name: &'static str, help: &str| {
            let metric = IntGauge::new(name, help)
                .map_err(|source| MetricsError::Register { name, source })?;
            registry
                .register(Box::new(metric.clone()))
                .map_err(|source| MetricsError::Register { name, source })?;
            Ok::<_, MetricsError>(metric)
        };
        let cache_bytes = gauge("parallax_cache_size_bytes", "Bytes held by the cache.")?;
        let cache_items = gauge("parallax_cache_items", "Objects held by the cache.")?;
        let kv_redis_up = gauge(
            "parallax_kv_redis_up",
            "1 while the Redis-backed key-value store is connected and in sync.",
        )?;

        let name = "parallax_upstream_healthy";
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(name, "1 while an origin counts as healthy, 0 while down."),
            &["group", "origin"],
        )
        .map_err(|source| MetricsError::Register { name, source })?;
        registry
            .register(Box::new(upstream_healthy.clone()))
            .map_err(|source| MetricsError::Register { name, source })?;

        let name = "parallax_origin_request_duration_seconds";
        let origin_latency = HistogramVec::new(
            HistogramOpts::new(
                name,
                "Time from request sent to response header, per origin.",
            )
            .buckets(LATENCY_BUCKETS_SECS.to_vec()),
            &["group", "origin"],
        )
        .map_err(|source| MetricsError::Register { name, source })?;
        registry
            .register(Box::new(origin_latency.clone()))
            .map_err(|source| MetricsError::Register { name, source })?;

        Ok(Self {
            registry,
            requests,
            bytes_served,
            origin_requests,
            origin_latency,
            coalesced_waiters,
            cache_bytes,
            cache_items,
            cache_evictions,
            upstream_healthy,
            failovers,
            upstream_failures,
            upstream_retries,
            health_checks,
            health_transitions,
            kv_redis_up,
            kv_redis_transitions,
            kv_write_failures,
            module_calls,
            module_counters,
            module_loads,
            cache_stats: OnceLock::new(),
            evictions_seen: Mutex::new(0),
        })
    }

    /// Names where scrapes read cache figures from. Only the first call takes effect: there is one
    /// storage per process.
    pub fn set_cache_stats_source(&self, source: CacheStatsSource) {
        if self.cache_stats.set(source).is_err() {
            tracing::warn!("cache stats source already set; keeping the first one");
        }
    }

    /// Counts one origin request and its time to response header.
    pub fn observe_origin_request(&self, group: &str, origin: &str, secs: f64) {
        self.origin_requests
            .with_label_values(&[group, origin])
            .inc();
        self.origin_latency
            .with_label_values(&[group, origin])
            .observe(secs);
    }

    /// Refreshes the scrape-time gauges and renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(source) = self.cache_stats.get() {
            let stats = source();
            self.cache_bytes
                .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
            self.cache_items
                .set(i64::try_from(stats.items).unwrap_or(i64::MAX));
            let mut seen = self
                .evictions_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A storage rebuilt behind us would report fewer evictions; never count backwards.
            if stats.evictions > *seen {
                self.cache_evictions.inc_by(stats.evictions - *seen);
                *seen = stats.evictions;
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The `/metrics` endpoint as a pingora HTTP app; every path answers the metrics, since the
/// listener serves nothing else.
#[derive(Debug, Clone)]
pub struct MetricsApp {
    metrics: Arc<Metrics>,
}

impl MetricsApp {
    /// An app rendering `metrics` on every request.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, _session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = self.metrics.render().into_bytes();
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// A pingora service serving `metrics` over plain HTTP on `listen` (e.g. `127.0.0.1:9091`);
/// add it to the server with `Server::add_service`.
pub fn metrics_service(metrics: Arc<Metrics>, listen: &str) -> Service<MetricsApp> {
    let mut service = Service::new("metrics".to_string(), MetricsApp::new(metrics));
    service.add_tcp(listen);
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_metric_family_with_its_labels() {
        let metrics = Metrics::new().unwrap();
        metrics.requests.with_label_values(&["hit"]).inc_by(3);
        metrics.observe_origin_request("default", "primary", 0.02);
        metrics
            .upstream_healthy
            .with_label_values(&["default", "backup"])
            .set(1);
        metrics.failovers.with_label_values(&["default"]).inc();
        metrics.bytes_served.inc_by(1024);
        let text = metrics.render();
        assert!(text.contains("parallax_requests_total{cache_status=\"hit\"} 3"));
        assert!(
            text.contains("parallax_origin_requests_total{group=\"default\",origin=\"primary\"} 1")
        );
        assert!(text.contains(
            "parallax_origin_request_duration_seconds_bucket{group=\"default\",origin=\"primary\",le=\"0.025\"} 1"
        ));
        assert!(text.contains("parallax_upstream_healthy{group=\"default\",origin=\"backup\"} 1"));
        assert!(text.contains("parallax_upstream_failovers_total{group=\"default\"} 1"));
        assert!(text.contains("parallax_bytes_served_total 1024"));
    }

    #[test]
    fn cache_gauges_are_read_at_scrape_and_evictions_only_grow() {
        let metrics = Metrics::new().unwrap();
        let evictions = Arc::new(Mutex::new(5u64));
        let source = Arc::clone(&evictions);
        metrics.set_cache_stats_source(Box::new(move || CacheStats {
            bytes: 4096,
            items: 2,
            evictions: *source.lock().unwrap(),
        }));
        let text = metrics.render();
        assert!(text.contains("parallax_cache_size_bytes 4096"));
        assert!(text.contains("parallax_cache_items 2"));
        assert!(text.contains("parallax_cache_evictions_total 5"));

        *evictions.lock().unwrap() = 7;
        assert!(metrics
            .render()
            .contains("parallax_cache_evictions_total 7"));
        // Rendering twice must not double-count.
        assert!(metrics
            .render()
            .contains("parallax_cache_evictions_total 7"));
        *evictions.lock().unwrap() = 1;
        assert!(metrics
            .render()
            .contains("parallax_cache_evictions_total 7"));
    }
}
