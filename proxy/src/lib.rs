//! Parallax cache tier: a Pingora edge cache for live HLS.
//!
//! One process terminates client HTTP(S), answers from a shared in-memory cache, coalesces
//! concurrent misses into one origin fetch, and fails over between a primary and a backup
//! origin. [`build_server`] assembles a pingora [`Server`] from a [`Config`]; the `proxy`
//! binary parses flags and the TOML file and calls [`run`].
//!
//! # Layout
//!
//! - [`config`]: the whole configuration, TOML + validation.
//! - [`service`]: the request path, pingora's `ProxyHttp` phases in order.
//! - [`storage`]: the cache store, pingora's `Storage` on a byte-bounded moka cache.
//! - [`rules`]: per-type TTL rules, Cache-Control decisions, the cache key.
//! - [`upstream`]: origin groups, primary/backup choice, passive failure tracking.
//! - [`health`]: active health checks and the stale-playlist detector.
//! - [`metrics`]: the Prometheus registry and the handles the request path updates.
//! - [`admin`]: the admin API (purge, stats, upstream health, config summary).
//! - [`tls`]: rustls listeners, certificates by SNI.
//! - [`kv`]: the key-value store policy modules and the admin API share.
//! - [`wasm`]: policy modules (WebAssembly components): host, hot-load, chains.
//! - [`player`]: the web player built into the binary, served at `/player/`.
//! - [`loadtest`]: `proxy loadtest`, simulated HLS viewers (a client, not part of the server).
//!
//! # Lifecycle
//!
//! SIGTERM first flips `/healthz` to 503 for `server.drain_secs` while traffic is still served
//! (so a load balancer deregisters the instance), then starts pingora's graceful shutdown.
//! SIGQUIT and `proxy -u` are pingora's graceful upgrade, unchanged. SIGINT stops at once.

pub mod admin;
pub mod config;
pub mod fleet;
pub mod health;
pub mod kv;
pub mod loadtest;
pub mod metrics;
pub mod player;
pub mod resolve;
pub mod rules;
pub mod service;
pub mod storage;
pub mod tls;
pub mod upstream;
pub mod wasm;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::{Error, ErrorType, OrErr, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

pub use config::Config;
pub use service::{EdgeProxy, Readiness, Shared};

use admin::{AdminState, StorageAdmin};
use metrics::{CacheStats, Metrics};
use rules::CacheRules;
use storage::MokaStorage;
use upstream::Upstreams;

/// A built, not yet running proxy: the pingora server and the parts its services share.
pub struct Built {
    /// The pingora server with every service added.
    pub server: Server,
    /// Upstreams, cache, rules, metrics and the readiness flag the SIGTERM handler flips.
    pub shared: Arc<Shared>,
}

/// Builds the pingora server for `config` (validated) with pingora's command-line options
/// `opt` (`-u` upgrade, `-d` daemon, `-t` test).
pub fn build_server(config: &Config, opt: Opt) -> Result<Built> {
    if !opt.upgrade {
        check_listeners_free(config)?;
    }
    let conf = ServerConf {
        threads: config.threads(),
        work_stealing: config.server.work_stealing,
        listener_tasks_per_fd: config.server.listener_tasks_per_fd.max(1),
        grace_period_seconds: Some(config.server.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_secs),
        upgrade_sock: config.server.upgrade_sock.clone(),
        pid_file: config.server.pid_file.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    let readiness = Arc::new(Readiness::default());
    let metrics = Arc::new(Metrics::new().or_err(ErrorType::InternalError, "metrics registry")?);
    let upstreams = Upstreams::new(&config.upstreams, metrics.clone())
        .or_err(ErrorType::InternalError, "upstream groups")?;
    let rules = CacheRules::new(config.cache.rules.clone(), config.cache.key.clone())
        .or_err(ErrorType::InternalError, "cache rules")?;
    let storage = MokaStorage::new(config.cache.max_bytes).leak();
    let kv::Built {
        store: kv,
        follower,
        redis,
    } = kv::build(&config.kv, metrics.clone())
        .or_err(ErrorType::InternalError, "key-value store")?;
    if let Some(follower) = follower {
        server.add_service(follower);
    }
    metrics.set_cache_stats_source(Box::new(move || {
        let stats = storage.stats();
        CacheStats {
            bytes: stats.bytes,
            items: stats.items,
            evictions: stats.evictions,
        }
    }));
    let modules = if config.wasm.enabled {
        let services = wasm::host::HostServices {
            kv: kv.clone(),
            upstreams: Some(upstreams.clone()),
            metrics: metrics.clone(),
        };
        let host = wasm::ModuleHost::start(&config.wasm, services)
            .map_err(|e| Error::explain(ErrorType::InternalError, e))?;
        server.add_service(background_service("wasm module watcher", host.watcher()));
        Some(host)
    } else {
        None
    };
    server.add_services(upstreams.background_services());
    if !config.metrics.addr.is_empty() {
        server.add_service(metrics::metrics_service(
            metrics.clone(),
            &config.metrics.addr,
        ));
    }
    let key_rules = rules.clone();
    let cache: Arc<dyn admin::CacheAdmin> = Arc::new(StorageAdmin::new(
        storage,
        config.cache.key.include_host,
        Arc::new(move |host, path, query| key_rules.key_for(host, path, query)),
    ));
    // Every node applies the fleet's purges, whether or not its own admin API is on.
    let fleet = redis.map(|redis| Arc::new(fleet::Fleet::join(redis, cache.clone())));
    if config.admin.enabled {
        let state = AdminState {
            token: config.admin.token.clone(),
            cache,
            fleet,
            upstreams: upstreams.clone(),
            kv: kv.clone(),
            modules: modules.clone(),
            config_summary: config.summary(),
        };
        let service = admin::admin_service(&config.admin, state)
            .or_err(ErrorType::InternalError, "admin API")?;
        server.add_service(service);
    }
    let shared = Arc::new(Shared {
        upstreams,
        storage,
        rules,
        metrics,
        readiness: readiness.clone(),
        kv,
        modules,
    });

    let edge = EdgeProxy::new(config, shared.clone())?;
    let proxy = pingora::proxy::http_proxy(&server.configuration, edge);
    let app = service::HeaderTimeout::new(
        proxy,
        Duration::from_millis(config.limits.header_read_timeout_ms),
    );
    let mut service = Service::new("parallax proxy".to_owned(), app);
    // Pingora's write buffer default (1460 bytes) stays: header and small bodies go out in one
    // write already. Only the read side is sized here.
    let buffers = L4BufferSettings::default().read(config.listen.read_buffer_bytes);
    if !config.listen.http.is_empty() {
        service.add_listener(ListenerConfig::tcp(&config.listen.http).l4_buffer(buffers));
    }
    for listener in &config.listen.tls {
        service.add_listener(
            ListenerConfig::tcp(&listener.addr)
                .tls(tls::listener_settings(listener)?)
                .l4_buffer(buffers),
        );
    }
    server.add_service(service);
    // Last, so `proxy -t` has loaded certificates and built every service before it exits, and
    // `proxy -u` receives the old process's listeners only once it can serve them.
    server.bootstrap();
    Ok(Built { server, shared })
}

/// Fails with the address and the OS error when a listener's address is taken.
///
/// Pingora retries a failed bind for a while and then lets that one service exit while the
/// rest keep running, so a taken admin or metrics port would otherwise leave a proxy without
/// its admin API and nothing but an INFO line to say so. Skipped for `-u`: the old process
/// still holds every address and hands the sockets over.
fn check_listeners_free(config: &Config) -> Result<()> {
    let admin = config.admin.enabled.then_some(config.admin.listen.as_str());
    let metrics = Some(config.metrics.addr.as_str());
    let tls = config.listen.tls.iter().map(|l| Some(l.addr.as_str()));
    let addrs = [Some(config.listen.http.as_str()), admin, metrics]
        .into_iter()
        .chain(tls)
        .flatten()
        .filter(|addr| !addr.is_empty());
    for addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Error::e_explain(
                ErrorType::BindError,
                format!("cannot listen on {addr}: {e}"),
            );
        }
    }
    Ok(())
}

/// Runs the proxy until it is told to stop; returns after a graceful or fast shutdown.
pub fn run(config: &Config, opt: Opt) -> Result<()> {
    let Built { server, shared } = build_server(config, opt)?;
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingSignals {
            readiness: shared.readiness.clone(),
            drain: Duration::from_secs(config.server.drain_secs),
        }),
    });
    Ok(())
}

/// Pingora's Unix signal handling with a drain step in front of SIGTERM.
struct DrainingSignals {
    readiness: Arc<Readiness>,
    drain: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (mut quit, mut term, mut int) = match (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(quit), Ok(term), Ok(int)) => (quit, term, int),
            _ => {
                error!("cannot install signal handlers; shutting down");
                return ShutdownSignal::FastShutdown;
            }
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                info!(drain_secs = self.drain.as_secs(), "SIGTERM: draining, /healthz now 503");
                self.readiness.start_draining();
                tokio::select! {
                    _ = tokio::time::sleep(self.drain) => ShutdownSignal::GracefulTerminate,
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
        }
    }
}
