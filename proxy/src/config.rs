//! The proxy's whole configuration: one TOML file, one [`Config`].
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`: a missing key takes the documented
//! default, a misspelt key is an error (a typo in `max_ttl_secs` silently caching segments
//! forever is worse than refusing to start). [`Config::validate`] checks what serde cannot and
//! names the offending key in its error. `proxy/proxy.example.toml` documents every key: unit
//! tests parse it and check that it names every field of these structs, so it cannot drift from
//! them, and `docs/configuration.md` is generated from it (`tests/docs.rs`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::admin::{AdminConfig, AdminError};
use crate::kv::KvConfig;
use crate::rules::{default_rules, CacheKeyConfig, CacheRules, RuleConfig, RulesError};
use crate::upstream::{GroupConfig, UpstreamError};
use crate::wasm::WasmConfig;

/// Why a configuration was rejected; each variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown / mistyped key.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file that was parsed.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// A value parsed but is out of range or inconsistent.
    #[error("invalid config: `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the offending key, e.g. `listen.http`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole proxy configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client-facing listeners (plain HTTP and TLS).
    pub listen: ListenConfig,
    /// Origin groups (`[[upstreams]]`); the first one is the default route target.
    pub upstreams: Vec<GroupConfig>,
    /// Host / path-prefix routes to upstream groups (`[[routes]]`), first match wins; unmatched
    /// requests go to the first upstream group.
    pub routes: Vec<RouteConfig>,
    /// The shared object cache.
    pub cache: CacheConfig,
    /// The admin API (purge, stats, upstream health, config summary); off unless
    /// `admin.enabled` (or `--admin-token`).
    pub admin: AdminConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Origin protection: reject requests lacking a shared secret header (CloudFront custom
    /// origin header). Absent = off.
    pub origin_protection: Option<OriginProtectionConfig>,
    /// Request hardening limits.
    pub limits: LimitsConfig,
    /// Access and diagnostic logging.
    pub log: LogConfig,
    /// Process-level settings (threads, draining, graceful upgrade).
    pub server: ServerConfig,
    /// The key-value store policy modules and the admin API share: in-process by default,
    /// Redis when `kv.redis_url` is set.
    pub kv: KvConfig,
    /// Policy modules (WebAssembly components) and the chains of them requests run; off unless
    /// `wasm.enabled`.
    pub wasm: WasmConfig,
    /// The embedded web player at `/player/`; off unless `player.enabled`.
    pub player: PlayerConfig,
}

/// The web player built into the binary (`player/` in the repository).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PlayerConfig {
    /// Serve it at `/player/` (`/player/?url=/live/<stream>/index.m3u8`). Default false: a
    /// cache fleet behind a CDN normally serves only the streams.
    pub enabled: bool,
}

/// Client-facing listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Plain HTTP listen address. Default `0.0.0.0:8080`; empty string disables it.
    pub http: String,
    /// TLS listeners (rustls); none by default.
    pub tls: Vec<TlsListenerConfig>,
    /// Read buffer per client connection, bytes. Default 4096. Request heads larger than this
    /// are still read whole (up to the limits); the buffer only batches small reads. Pingora's
    /// own default is 64 KiB, which a burst of 1000 new connections pays as 64 MB of freshly
    /// zeroed pages: page faults were 35 % of the proxy's CPU in such a burst.
    pub read_buffer_bytes: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            http: "0.0.0.0:8080".into(),
            tls: Vec::new(),
            read_buffer_bytes: 4096,
        }
    }
}

/// One TLS listener: an address and one or more certificates chosen by SNI.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Listen address, e.g. `0.0.0.0:8443`. Required.
    pub addr: String,
    /// Offer HTTP/2 via ALPN (`h2`, then `http/1.1`). Default true.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Certificates; the first is served to clients whose SNI matches no other (or send none).
    pub certs: Vec<CertConfig>,
}

fn yes() -> bool {
    true
}

/// A certificate chain and its key, both PEM files.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain, leaf first. Required.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key_path: PathBuf,
    /// SNI names this certificate answers for (exact match, case-insensitive). Empty = only as
    /// the default certificate.
    pub server_names: Vec<String>,
}

/// A route: requests matching `host` (if set) and `path_prefix` (if set) go to `group`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Host header to match, without port, case-insensitive. Empty = any host.
    pub host: String,
    /// Path prefix to match. Empty = any path.
    pub path_prefix: String,
    /// Name of the upstream group. Required.
    pub group: String,
}

/// The shared object cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Upper bound on cached bytes (bodies + headers). Default 1 GiB.
    pub max_bytes: u64,
    /// TTL rules (`[[cache.rules]]`), first match wins, the last must be a catch-all. Default:
    /// playlists (honor origin, capped at 1 s), segments (1 day), catch-all.
    pub rules: Vec<RuleConfig>,
    /// What makes up the cache key.
    pub key: CacheKeyConfig,
    /// How long a cache-lock writer may hold the lock before waiters stop trusting it and
    /// compete again, in milliseconds. Default 5000; must exceed the slowest origin fetch you
    /// want coalesced.
    pub lock_age_timeout_ms: u64,
    /// How long a request waits on another request's fill before going to the origin itself,
    /// in milliseconds. Default 5000.
    pub lock_wait_timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 1 << 30,
            rules: default_rules(),
            key: CacheKeyConfig::default(),
            lock_age_timeout_ms: 5000,
            lock_wait_timeout_ms: 5000,
        }
    }
}

/// The Prometheus scrape endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address for `GET /metrics`. Empty (the default) disables the endpoint.
    pub addr: String,
}

/// Origin protection: only requests carrying `header: secret` (or one of `previous_secrets`)
/// are served.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OriginProtectionConfig {
    /// Header name, e.g. `x-origin-verify`. Required.
    pub header: String,
    /// The shared secret value. Required (or `secret_file`), at least 16 bytes.
    pub secret: String,
    /// Read `secret` from this file instead (surrounding whitespace trimmed). Default empty:
    /// unset.
    pub secret_file: String,
    /// Secrets still accepted while a rotation rolls out (each at least 16 bytes). Default
    /// none. Rotate by putting the new value in `secret` and the old one here on every proxy,
    /// then switching CloudFront's header, then removing the old one.
    pub previous_secrets: Vec<String>,
}

impl OriginProtectionConfig {
    /// Every accepted secret, the current one first.
    pub fn accepted(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.secret.as_str())
            .chain(self.previous_secrets.iter().map(String::as_str))
    }
}

/// Request hardening limits the proxy enforces on top of pingora's own (pingora rejects request
/// heads over 1 MiB and more than 256 header lines with 400).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest accepted request target (path + query) in bytes; longer → 414. Default 8192.
    pub max_uri_bytes: usize,
    /// Largest accepted sum of header names and values in bytes; larger → 431. Default 32768.
    pub max_header_bytes: usize,
    /// Longest a new client may stay silent while sending its first request head, in
    /// milliseconds; then the connection is closed (slowloris). Default 10000.
    pub header_read_timeout_ms: u64,
    /// How long an idle client connection is kept open between requests, in seconds (also the
    /// per-read limit on later request heads). Default 75: above an ALB's default 60 s idle
    /// timeout, so the load balancer, not the proxy, closes idle pooled connections.
    pub keepalive_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_uri_bytes: 8192,
            max_header_bytes: 32 * 1024,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_secs: 75,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Access log format: `text` (default) or `json`.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `parallax_proxy=debug`. Default `info`;
    /// the `RUST_LOG` environment variable overrides it. Access-log lines have the target
    /// `access`: `info,access=off` turns them off.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Access log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Process-level settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads per listening service. Default 0 = one per CPU.
    pub threads: usize,
    /// Let idle worker threads steal tasks from busy ones (one shared tokio runtime). Default
    /// `true`. `false` gives each thread its own runtime, like nginx workers: no cross-thread
    /// wake-ups, but a connection stays on the thread that accepted it.
    pub work_stealing: bool,
    /// Accept tasks per listening socket. Default 1; with `work_stealing = false`, set it to
    /// `threads` so every thread accepts.
    pub listener_tasks_per_fd: usize,
    /// After SIGTERM, how long `/healthz` answers 503 while still serving, before the graceful
    /// shutdown starts, in seconds. Default 5: longer than an ALB health-check interval times its
    /// unhealthy threshold should be used in production (e.g. 15 for 5 s × 2 + margin).
    pub drain_secs: u64,
    /// Pingora's grace period: after the shutdown starts, how long in-flight requests may
    /// finish, in seconds. Default 5.
    pub grace_period_secs: u64,
    /// Pingora's final step: how long runtimes get to stop, in seconds. Default 5.
    pub graceful_shutdown_timeout_secs: u64,
    /// Unix socket used to hand listeners to a new process on graceful upgrade (`proxy -u`).
    /// Default `/tmp/parallax_proxy_upgrade.sock`.
    pub upgrade_sock: String,
    /// PID file. Default `/tmp/parallax_proxy.pid`.
    pub pid_file: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 0,
            work_stealing: true,
            listener_tasks_per_fd: 1,
            drain_secs: 5,
            grace_period_secs: 5,
            graceful_shutdown_timeout_secs: 5,
            upgrade_sock: "/tmp/parallax_proxy_upgrade.sock".into(),
            pid_file: "/tmp/parallax_proxy.pid".into(),
        }
    }
}

impl Config {
    /// Reads and parses `path` (no validation; call [`Config::validate`]).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text (no validation).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })
    }

    /// Checks what serde cannot: addresses parse, names resolve, ranges hold. Returns the first
    /// problem, naming its key.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        load_secret(
            &mut self.admin.token,
            &self.admin.token_file,
            "admin.token_file",
        )?;
        if let Some(protection) = &mut self.origin_protection {
            load_secret(
                &mut protection.secret,
                &protection.secret_file,
                "origin_protection.secret_file",
            )?;
        }
        if !self.listen.http.is_empty() {
            check_addr("listen.http", &self.listen.http)?;
        }
        if self.listen.http.is_empty() && self.listen.tls.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "no listener: set listen.http or add a [[listen.tls]]",
            ));
        }
        for (i, tls) in self.listen.tls.iter().enumerate() {
            let key = format!("listen.tls[{i}]");
            check_addr(&format!("{key}.addr"), &tls.addr)?;
            if tls.certs.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.certs"),
                    "at least one certificate is required",
                ));
            }
            for (j, cert) in tls.certs.iter().enumerate() {
                for (field, path) in [("cert_path", &cert.cert_path), ("key_path", &cert.key_path)]
                {
                    if path.as_os_str().is_empty() {
                        return Err(ConfigError::invalid(
                            format!("{key}.certs[{j}].{field}"),
                            "required",
                        ));
                    }
                }
            }
        }

        if self.upstreams.is_empty() {
            return Err(ConfigError::invalid(
                "upstreams",
                "at least one [[upstreams]] group is required (or pass --upstream host:port)",
            ));
        }
        let mut names = HashSet::new();
        for group in &self.upstreams {
            group.validate().map_err(ConfigError::from)?;
            if !names.insert(group.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("upstreams[{}].name", group.name),
                    "used by two groups",
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !names.contains(route.group.as_str()) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].group"),
                    format!("no [[upstreams]] group named {:?}", route.group),
                ));
            }
            if !route.path_prefix.is_empty() && !route.path_prefix.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].path_prefix"),
                    "must start with '/'",
                ));
            }
        }

        if self.cache.max_bytes == 0 {
            return Err(ConfigError::invalid(
                "cache.max_bytes",
                "must be greater than 0",
            ));
        }
        CacheRules::new(self.cache.rules.clone(), self.cache.key.clone())
            .map_err(ConfigError::from)?;
        if self.cache.lock_age_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "cache.lock_age_timeout_ms",
                "must be greater than 0",
            ));
        }
        if self.cache.lock_wait_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "cache.lock_wait_timeout_ms",
                "must be greater than 0",
            ));
        }

        self.admin.validate().map_err(|e| match e {
            AdminError::InvalidConfig { key, reason } => {
                ConfigError::invalid(format!("admin.{key}"), reason)
            }
            other => ConfigError::invalid("admin", other.to_string()),
        })?;
        if !self.metrics.addr.is_empty() {
            check_addr("metrics.addr", &self.metrics.addr)?;
        }
        self.kv
            .validate()
            .map_err(|(key, reason)| ConfigError::invalid(format!("kv.{key}"), reason))?;
        self.wasm
            .validate()
            .map_err(|(key, reason)| ConfigError::invalid(format!("wasm.{key}"), reason))?;
        if let Some(protection) = &self.origin_protection {
            if http::HeaderName::from_bytes(protection.header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    "origin_protection.header",
                    "must be a valid HTTP header name",
                ));
            }
            if protection.secret.len() < 16 {
                return Err(ConfigError::invalid(
                    "origin_protection.secret",
                    "must be at least 16 bytes",
                ));
            }
            if protection.previous_secrets.iter().any(|s| s.len() < 16) {
                return Err(ConfigError::invalid(
                    "origin_protection.previous_secrets",
                    "every secret must be at least 16 bytes",
                ));
            }
        }

        if !(256..=1024 * 1024).contains(&self.limits.max_uri_bytes) {
            return Err(ConfigError::invalid(
                "limits.max_uri_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.limits.max_header_bytes) {
            return Err(ConfigError::invalid(
                "limits.max_header_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if self.limits.header_read_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "limits.header_read_timeout_ms",
                "must be greater than 0",
            ));
        }
        if self
            .log
            .filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(ConfigError::invalid(
                "log.filter",
                "not a valid tracing filter directive",
            ));
        }
        Ok(self)
    }

    /// The configuration as JSON with secrets (admin token, origin-protection secret) replaced
    /// by `"<redacted>"`, for the admin API's `GET /config`.
    pub fn summary(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        for pointer in ["/admin/token", "/origin_protection/secret"] {
            if let Some(secret) = value.pointer_mut(pointer) {
                *secret = serde_json::Value::from("<redacted>");
            }
        }
        if let Some(serde_json::Value::Array(previous)) =
            value.pointer_mut("/origin_protection/previous_secrets")
        {
            for secret in previous {
                *secret = serde_json::Value::from("<redacted>");
            }
        }
        if let Some(url) = value.pointer_mut("/kv/redis_url") {
            *url = serde_json::Value::from(self.kv.redacted_url());
        }
        value
    }

    /// The worker thread count to use: `server.threads`, or one per CPU when 0.
    pub fn threads(&self) -> usize {
        if self.server.threads > 0 {
            self.server.threads
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}

/// Reads a secret kept out of the config file: `value` from `file` (whitespace trimmed) when
/// `file` is set. Setting both is an error, as is a file that cannot be read.
fn load_secret(value: &mut String, file: &str, key: &str) -> Result<(), ConfigError> {
    if file.is_empty() {
        return Ok(());
    }
    if !value.is_empty() {
        return Err(ConfigError::invalid(
            key,
            "set either the value or the file, not both",
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::invalid(key, format!("reading {file}: {e}")))?;
    *value = text.trim().to_owned();
    Ok(())
}

fn check_addr(key: &str, value: &str) -> Result<(), ConfigError> {
    value
        .parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| ConfigError::invalid(key, format!("{value:?} is not an ip:port address")))
}

impl From<UpstreamError> for ConfigError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::InvalidConfig { key, reason } => ConfigError::Invalid { key, reason },
            other => ConfigError::invalid("upstreams", other.to_string()),
        }
    }
}

impl From<RulesError> for ConfigError {
    fn from(e: RulesError) -> Self {
        let key = match &e {
            RulesError::InvalidRule { index, field, .. } => format!("cache.rules[{index}].{field}"),
            RulesError::InvalidKey { field, .. } => format!("cache.key.{field}"),
            RulesError::NoRules
            | RulesError::NoCatchAll { .. }
            | RulesError::Unreachable { .. } => "cache.rules".to_owned(),
        };
        ConfigError::invalid(key, e.to_string())
    }
}

#[cfg(test)]
#[path = "../../tests/support/example_config.rs"]
mod example_config;

#[cfg(test)]
mod tests {
    use super::example_config;

    use super::*;

    fn minimal() -> Config {
        Config::from_toml(
            r#"
            [[upstreams]]
            name = "live"
            primary.address = "127.0.0.1:8081"
            "#,
        )
        .unwrap()
    }

    fn rejected_key(text: &str) -> String {
        match Config::from_toml(text).unwrap().validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = minimal().validate().unwrap();
        assert_eq!(config.listen.http, "0.0.0.0:8080");
        assert!(config.listen.tls.is_empty());
        assert_eq!(config.admin.listen, "127.0.0.1:9090");
        assert!(!config.admin.enabled);
        assert!(config.metrics.addr.is_empty());
        assert!(config.origin_protection.is_none());
        assert_eq!(config.cache.max_bytes, 1 << 30);
        assert_eq!(config.limits.max_uri_bytes, 8192);
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.upstreams[0].connect_timeout_ms, 1000);
        assert_eq!(config.upstreams[0].first_byte_timeout_ms, 2000);
        assert_eq!(config.upstreams[0].playlist_first_byte_timeout_ms, 1000);
        assert_eq!(config.cache.rules, default_rules());
        assert_eq!(config.server.drain_secs, 5);
        assert_eq!(config.kv, KvConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_key() {
        let err = Config::from_toml("[cache]\nmax_byte = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_byte"), "{err}");
    }

    #[test]
    fn a_config_without_upstreams_is_rejected() {
        assert_eq!(rejected_key(""), "upstreams");
    }

    #[test]
    fn bad_values_are_rejected_naming_the_key() {
        let base = "[[upstreams]]\nname = \"a\"\nprimary.address = \"127.0.0.1:1\"\n";
        let cases = [
            ("[listen]\nhttp = \"nope\"\n", "listen.http"),
            ("[cache]\nmax_bytes = 0\n", "cache.max_bytes"),
            ("[admin]\nenabled = true\ntoken = \"short\"\n", "admin.token"),
            (
                "[admin]\nenabled = true\nlisten = \"0.0.0.0:9090\"\ntoken = \"0123456789abcdef\"\n",
                "admin.listen",
            ),
            (
                "[origin_protection]\nheader = \"x-secret\"\nsecret = \"s\"\n",
                "origin_protection.secret",
            ),
            (
                "[origin_protection]\nheader = \"bad header\"\nsecret = \"0123456789abcdef\"\n",
                "origin_protection.header",
            ),
            (
                "[origin_protection]\nheader = \"x-secret\"\nsecret = \"0123456789abcdef\"\n\
                 previous_secrets = [\"short\"]\n",
                "origin_protection.previous_secrets",
            ),
            ("[limits]\nmax_uri_bytes = 10\n", "limits.max_uri_bytes"),
            ("[kv]\nredis_url = \"rediss://h\"\n", "kv.redis_url"),
            ("[kv]\nmax_bytes = 10\n", "kv.max_bytes"),
            ("[[routes]]\ngroup = \"missing\"\n", "routes[0].group"),
            (
                "[[cache.rules]]\nname = \"only-ts\"\npath_suffixes = [\".ts\"]\n",
                "cache.rules",
            ),
            (
                "[[listen.tls]]\naddr = \"127.0.0.1:8443\"\n",
                "listen.tls[0].certs",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(rejected_key(&format!("{base}{extra}")), key, "{extra}");
        }
        assert_eq!(
            rejected_key("[[upstreams]]\nname = \"a\"\nprimary.address = \"nohost\"\n"),
            "upstreams[a].primary.address"
        );
        assert_eq!(
            rejected_key(&format!(
                "{base}[[upstreams]]\nname = \"a\"\nprimary.address = \"h:2\"\n"
            )),
            "upstreams[a].name"
        );
    }

    #[test]
    fn the_summary_leaves_secrets_out() {
        let mut config = minimal();
        config.admin.token = "admin-token-0123456789".into();
        config.kv.redis_url = "redis://:redis-password-0123@10.0.0.5:6379".into();
        config.origin_protection = Some(OriginProtectionConfig {
            header: "x-origin-verify".into(),
            secret: "cloudfront-secret-0123".into(),
            previous_secrets: vec!["cloudfront-old-secret-0123".into()],
            ..OriginProtectionConfig::default()
        });
        let text = config.summary().to_string();
        assert!(!text.contains("admin-token-0123456789"), "{text}");
        assert!(!text.contains("cloudfront-secret-0123"), "{text}");
        assert!(!text.contains("cloudfront-old-secret-0123"), "{text}");
        assert!(!text.contains("redis-password-0123"), "{text}");
        assert!(text.contains("10.0.0.5:6379"), "{text}");
        assert!(text.contains("x-origin-verify"), "{text}");
    }

    #[test]
    fn secrets_can_come_from_files_but_not_from_both_places() {
        let dir = std::env::temp_dir().join(format!("parallax-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("admin-token");
        let secret = dir.join("origin-secret");
        std::fs::write(&token, "admin-token-from-a-file\n").unwrap();
        std::fs::write(&secret, "  origin-secret-from-a-file  ").unwrap();
        let base = "[[upstreams]]\nname = \"o\"\nprimary.address = \"127.0.0.1:8081\"\n";
        let text = format!(
            "{base}[admin]\nenabled = true\ntoken_file = {token:?}\n\
             [origin_protection]\nheader = \"x-origin-verify\"\nsecret_file = {secret:?}\n"
        );
        let config = Config::from_toml(&text).unwrap().validate().unwrap();
        assert_eq!(config.admin.token, "admin-token-from-a-file");
        assert_eq!(
            config.origin_protection.unwrap().secret,
            "origin-secret-from-a-file"
        );
        let both = format!(
            "{base}[admin]\nenabled = true\ntoken = \"admin-token-0123456789\"\n\
             token_file = {token:?}\n"
        );
        let err = Config::from_toml(&both).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("admin.token_file"), "{err}");
        let missing = format!(
            "{base}[origin_protection]\nheader = \"x-origin-verify\"\n\
             secret_file = \"/nonexistent/secret\"\n"
        );
        let err = Config::from_toml(&missing).unwrap().validate().unwrap_err();
        let err = err.to_string();
        assert!(err.contains("origin_protection.secret_file"), "{err}");
        assert!(err.contains("/nonexistent/secret"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.example.toml");
        let config = Config::from_file(&path).unwrap().validate().unwrap();
        assert_eq!(config.upstreams.len(), 2);
        assert!(config.origin_protection.is_some());
        assert_eq!(config.kv.redis_url, "redis://127.0.0.1:6379");
    }

    /// Tables whose keys are the user's rather than fields of a struct: not descended into.
    const FREE_FORM_TABLES: &[&str] = &["wasm.modules[].config"];

    #[test]
    fn the_example_config_documents_every_field() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.example.toml");
        let text = example_config::with_optional_keys(&std::fs::read_to_string(path).unwrap());
        // deny_unknown_fields: a key of the example that no field takes fails here.
        let config = Config::from_toml(&text).unwrap();
        example_config::assert_documents_every_field(
            "proxy.example.toml",
            &text,
            &serde_json::to_value(&config).unwrap(),
            FREE_FORM_TABLES,
        );
    }
}
