//! Upstream groups: each group is a primary origin and an optional backup. This module owns the
//! choice of origin per attempt, the [`HttpPeer`] each attempt connects with (timeouts, TLS, SNI)
//! and the health state both passive reports (from the request path) and active checks (from
//! [`crate::health`]) feed.
//!
//! # Health model
//!
//! Every origin is either *up* or *down*. Active checks move it through a hysteresis: `rise`
//! consecutive successes to come up, `fall` consecutive failures to go down. Passive failures
//! (refused, timed out, 5xx on a real request) take it down after
//! `passive_failures_to_down` consecutive ones — by default the first — because a hung origin
//! otherwise costs every request a full first-byte timeout until the slower active checks notice.
//! Only active checks bring an origin back up (failback); with active checks disabled, a passively
//! downed origin is tried again after `passive_hold_down_ms`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pingora::services::background::background_service;
use pingora::services::ServiceWithDependents;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error as PingoraError, ErrorType};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::health::{HealthCheckConfig, HealthChecker, StalePlaylistConfig};
use crate::metrics::Metrics;
use crate::resolve::Resolver;

/// Errors building the upstream groups, named by the stage that failed.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// The configuration has no upstream group at all.
    #[error("upstream: at least one group must be configured")]
    NoGroups,
    /// Two groups share a name.
    #[error("upstream: group name {0:?} is used twice")]
    DuplicateGroup(String),
    /// A configuration value is out of range.
    #[error("upstream: {key}: {reason}")]
    InvalidConfig {
        /// The offending key, e.g. `upstreams[live].connect_timeout_ms`.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An origin address did not resolve.
    #[error("upstream: resolving {address:?} for group {group:?}: {source}")]
    Resolve {
        /// The group the origin belongs to.
        group: String,
        /// The configured `host:port`.
        address: String,
        /// The resolver's error.
        source: std::io::Error,
    },
}

/// One origin server of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// `host:port` of the origin. A host name is resolved at startup (failing startup if it
    /// does not resolve) and again every `resolve_interval_ms` of its group. Default
    /// `127.0.0.1:8081`.
    pub address: String,
    /// Connect with TLS. Default `false`.
    pub tls: bool,
    /// TLS server name to send and verify; defaults to the host part of `address`.
    pub sni: Option<String>,
    /// Verify the origin's certificate chain and name when `tls` is on. Default `true`; turn off
    /// only for self-signed test origins.
    pub verify_cert: bool,
    /// `Host` header sent to this origin instead of the client's. Default: none (client's kept).
    pub host_header: Option<String>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8081".to_string(),
            tls: false,
            sni: None,
            verify_cert: true,
            host_header: None,
        }
    }
}

impl OriginConfig {
    /// An origin at `address` with every other setting at its default.
    pub fn at(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            ..Self::default()
        }
    }

    /// The host part of `address` (brackets of an IPv6 literal removed).
    fn host(&self) -> &str {
        let host = match self.address.rsplit_once(':') {
            Some((host, _port)) => host,
            None => &self.address,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The TLS server name: `sni` if set, else the host part of `address`.
    pub fn server_name(&self) -> &str {
        self.sni.as_deref().unwrap_or_else(|| self.host())
    }
}

/// An upstream group: where requests routed to `name` are fetched from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// Group name, used in routing, logs and metric labels. Default `default`.
    pub name: String,
    /// The origin used while it is healthy.
    pub primary: OriginConfig,
    /// The origin used while the primary is down, and for retries. Default: none.
    pub backup: Option<OriginConfig>,
    /// TCP connect timeout per attempt, milliseconds (TLS gets as much again for its
    /// handshake). Default 1000.
    pub connect_timeout_ms: u64,
    /// Longest wait for the origin's next byte (the response header, or any body read) for
    /// segments and other non-playlist objects, milliseconds. Default 2000.
    pub first_byte_timeout_ms: u64,
    /// The same for playlists (`.m3u8`), which are small and on the latency path of every
    /// player, milliseconds. Default 1000.
    pub playlist_first_byte_timeout_ms: u64,
    /// While the other origin of the group is healthy, the first attempt on an origin gets this
    /// much time for its next byte instead of the first-byte timeout above (whichever is
    /// shorter); then the request goes to the other origin, milliseconds. Default 1000.
    ///
    /// This is what bounds a request already in flight when its origin hangs (accepts TCP,
    /// answers nothing): it waits this long, not the 2 s segment timeout, so with a backup that
    /// answers within 500 ms no client request takes 1.5 s. Like the first-byte timeout it is
    /// pingora's per-read timeout, so it also applies to body reads of that attempt. The last
    /// origin left (no backup, backup down, or a retry) always gets the full timeout. Set it to
    /// the first-byte timeout or above to turn it off.
    pub failover_after_ms: u64,
    /// Consecutive failed requests that take an origin down without waiting for active checks.
    /// Default 1: one hung request is the whole price of a hung origin.
    pub passive_failures_to_down: u32,
    /// With active checks disabled, how long a passively downed origin is skipped before it is
    /// tried again, milliseconds. Default 10000. Unused while active checks run: they decide.
    pub passive_hold_down_ms: u64,
    /// Active health checks.
    pub health_check: HealthCheckConfig,
    /// Optional stale-playlist detector; off by default.
    pub stale_playlist: Option<StalePlaylistConfig>,
    /// How often a host name in an origin's address is resolved again, milliseconds: origins
    /// behind DNS (a load balancer, a failover record) change addresses. A changed answer is
    /// used for new connections; a failed lookup keeps the last address, with a log line.
    /// Default 30000; 0 resolves only at startup. Addresses given as IPs are never looked up.
    pub resolve_interval_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            name: "default".to_string(),
            primary: OriginConfig::default(),
            backup: None,
            connect_timeout_ms: 1000,
            first_byte_timeout_ms: 2000,
            playlist_first_byte_timeout_ms: 1000,
            failover_after_ms: 1000,
            passive_failures_to_down: 1,
            passive_hold_down_ms: 10_000,
            health_check: HealthCheckConfig::default(),
            stale_playlist: None,
            resolve_interval_ms: 30_000,
        }
    }
}

impl GroupConfig {
    /// Checks every value is in range; errors name the key as `upstreams[<name>].<key>`.
    pub fn validate(&self) -> Result<(), UpstreamError> {
        let invalid = |key: &str, reason: &str| UpstreamError::InvalidConfig {
            key: format!("upstreams[{}].{key}", self.name),
            reason: reason.to_string(),
        };
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            (
                "playlist_first_byte_timeout_ms",
                self.playlist_first_byte_timeout_ms,
            ),
            ("failover_after_ms", self.failover_after_ms),
            ("passive_hold_down_ms", self.passive_hold_down_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.passive_failures_to_down == 0 {
            return Err(invalid("passive_failures_to_down", "must be at least 1"));
        }
        if (1..1000).contains(&self.resolve_interval_ms) {
            return Err(invalid(
                "resolve_interval_ms",
                "must be 0 (startup only) or at least 1000",
            ));
        }
        for (key, origin) in [
            ("primary", Some(&self.primary)),
            ("backup", self.backup.as_ref()),
        ] {
            if let Some(origin) = origin {
                if origin.address.rsplit_once(':').is_none() {
                    return Err(invalid(&format!("{key}.address"), "must be host:port"));
                }
            }
        }
        self.health_check
            .validate()
            .map_err(|reason| invalid(&format!("health_check.{}", reason.0), reason.1))?;
        if let Some(stale) = &self.stale_playlist {
            if !self.health_check.enabled {
                return Err(invalid(
                    "stale_playlist",
                    "needs health_check.enabled: the detector runs inside the active checks",
                ));
            }
            stale
                .validate()
                .map_err(|reason| invalid(&format!("stale_playlist.{}", reason.0), reason.1))?;
        }
        Ok(())
    }
}

/// Which origin of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginId {
    /// The origin used while healthy.
    Primary,
    /// The standby.
    Backup,
}

impl OriginId {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OriginId::Primary => "primary",
            OriginId::Backup => "backup",
        }
    }

    fn other(self) -> Self {
        match self {
            OriginId::Primary => OriginId::Backup,
            OriginId::Backup => OriginId::Primary,
        }
    }
}

/// What a request is for; playlists get the shorter first-byte timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// An HLS playlist (`.m3u8`).
    Playlist,
    /// Anything else: segments, init sections, keys.
    Media,
}

impl RequestKind {
    /// Classifies by the URI path (without query).
    pub fn from_path(path: &str) -> Self {
        if path.ends_with(".m3u8") {
            RequestKind::Playlist
        } else {
            RequestKind::Media
        }
    }
}

/// Why an attempt on an origin, or an active check, failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The TCP connection was refused (nothing listening).
    Refused,
    /// The TCP (or TLS) connection did not complete within the connect timeout.
    ConnectTimeout,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// Any other connect failure (no route, socket error).
    Connect,
    /// Nothing arrived within the first-byte timeout. Pingora applies that timeout to every
    /// read, so a body stalled for as long counts too.
    FirstByteTimeout,
    /// The connection was reset or closed before the response completed.
    Reset,
    /// The origin answered with a 5xx status.
    Status5xx,
    /// The response could not be parsed as HTTP.
    BadResponse,
    /// An active check's whole exchange exceeded its `timeout_ms`.
    CheckTimeout,
    /// The live playlist named for the stale detector could not be parsed.
    MalformedPlaylist,
    /// The live playlist's media sequence stopped advancing.
    StalePlaylist,
    /// Anything not classified above.
    Other,
}

impl FailureReason {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Refused => "refused",
            FailureReason::ConnectTimeout => "connect_timeout",
            FailureReason::Tls => "tls",
            FailureReason::Connect => "connect",
            FailureReason::FirstByteTimeout => "first_byte_timeout",
            FailureReason::Reset => "reset",
            FailureReason::Status5xx => "status_5xx",
            FailureReason::BadResponse => "bad_response",
            FailureReason::CheckTimeout => "check_timeout",
            FailureReason::MalformedPlaylist => "malformed_playlist",
            FailureReason::StalePlaylist => "stale_playlist",
            FailureReason::Other => "other",
        }
    }

    /// Classifies a pingora error from `fail_to_connect` or `error_while_proxy`.
    pub fn classify(error: &PingoraError) -> Self {
        match error.etype() {
            ErrorType::ConnectRefused => FailureReason::Refused,
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
                FailureReason::ConnectTimeout
            }
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
                FailureReason::Tls
            }
            ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::SocketError => FailureReason::Connect,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailureReason::FirstByteTimeout,
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                FailureReason::Reset
            }
            ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => {
                FailureReason::BadResponse
            }
            _ => FailureReason::Other,
        }
    }
}

/// Up/down with hysteresis: `rise` consecutive successes to come up, `fall` consecutive failures
/// to go down, so one lost probe or one lucky answer does not flap traffic between origins.
#[derive(Debug, Clone)]
pub(crate) struct Hysteresis {
    up: bool,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl Hysteresis {
    /// Starts up: at startup we have no evidence against an origin, and starting down would send
    /// the first requests to the backup for no reason.
    pub(crate) fn new(rise: u32, fall: u32) -> Self {
        Self {
            up: true,
            successes: 0,
            failures: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check; returns the new state if it changed.
    pub(crate) fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    /// Sets the state without waiting for the edge (passive evidence, hold-down expiry) and
    /// restarts both streaks, so a downed origin needs `rise` fresh successes. Returns whether the
    /// state changed.
    pub(crate) fn force(&mut self, up: bool) -> bool {
        self.successes = 0;
        self.failures = 0;
        let changed = self.up != up;
        self.up = up;
        changed
    }
}

#[derive(Debug)]
struct OriginState {
    health: Hysteresis,
    passive_failures: u32,
    down_since: Option<Instant>,
    last_failure: Option<FailureReason>,
}

#[derive(Debug)]
struct Origin {
    id: OriginId,
    config: OriginConfig,
    /// The resolved address; a name is resolved again every `resolve_interval_ms`.
    address: Mutex<SocketAddr>,
    state: Mutex<OriginState>,
}

impl Origin {
    fn address(&self) -> SocketAddr {
        *self.address.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OriginState> {
        // The state is a handful of counters, consistent after any panic; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Health of one origin as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct OriginStatus {
    /// `primary` or `backup`.
    pub origin: OriginId,
    /// The configured `host:port`.
    pub address: String,
    /// Whether requests may go to it.
    pub healthy: bool,
    /// Seconds since it went down, while down.
    pub down_for_secs: Option<f64>,
    /// Consecutive failed requests seen by the request path.
    pub passive_failures: u32,
    /// The last failure recorded, passive or active.
    pub last_failure: Option<FailureReason>,
}

/// Health of one group as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// Where the next request's first attempt goes.
    pub active: OriginId,
    /// Each origin's health, primary first.
    pub origins: Vec<OriginStatus>,
}

/// A primary and optional backup origin with their health; see the module docs.
#[derive(Debug)]
pub struct Group {
    config: GroupConfig,
    /// Primary first, then the backup if configured.
    origins: Vec<Origin>,
    metrics: Arc<Metrics>,
}

impl Group {
    fn new(config: GroupConfig, metrics: Arc<Metrics>) -> Result<Self, UpstreamError> {
        config.validate()?;
        let mut origins = Vec::with_capacity(2);
        for (id, origin) in [
            (OriginId::Primary, Some(&config.primary)),
            (OriginId::Backup, config.backup.as_ref()),
        ] {
            let Some(origin) = origin else { continue };
            let resolve_error = |source| UpstreamError::Resolve {
                group: config.name.clone(),
                address: origin.address.clone(),
                source,
            };
            let address = origin
                .address
                .to_socket_addrs()
                .map_err(resolve_error)?
                .next()
                .ok_or_else(|| {
                    resolve_error(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no address",
                    ))
                })?;
            metrics
                .upstream_healthy
                .with_label_values(&[&config.name, id.as_str()])
                .set(1);
            origins.push(Origin {
                id,
                config: origin.clone(),
                address: Mutex::new(address),
                state: Mutex::new(OriginState {
                    health: Hysteresis::new(config.health_check.rise, config.health_check.fall),
                    passive_failures: 0,
                    down_since: None,
                    last_failure: None,
                }),
            });
        }
        Ok(Self {
            config,
            origins,
            metrics,
        })
    }

    /// Each origin's configured `host:port` whose host is a name (not an IP), to resolve again.
    pub(crate) fn named_origins(&self) -> Vec<(OriginId, String)> {
        self.origins
            .iter()
            .filter(|o| o.config.host().parse::<std::net::IpAddr>().is_err())
            .map(|o| (o.id, o.config.address.clone()))
            .collect()
    }

    /// Points `origin` at `address` for new connections; returns the previous address.
    pub(crate) fn set_address(&self, origin: OriginId, address: SocketAddr) -> SocketAddr {
        let origin = self.origin(origin);
        let mut current = origin
            .address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut current, address)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The group's configuration.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The origins configured, primary first.
    pub fn origin_ids(&self) -> impl Iterator<Item = OriginId> + '_ {
        self.origins.iter().map(|o| o.id)
    }

    fn origin(&self, id: OriginId) -> &Origin {
        // A group always has its primary at index 0; an id without an origin (backup of a
        // group without one) falls back to it rather than panicking.
        self.origins
            .iter()
            .find(|o| o.id == id)
            .unwrap_or(&self.origins[0])
    }

    /// The `Host` header to send to `origin`, if overridden in its config.
    pub fn host_header(&self, origin: OriginId) -> Option<&str> {
        self.origin(origin).config.host_header.as_deref()
    }

    /// The configuration of `origin`.
    pub fn origin_config(&self, origin: OriginId) -> &OriginConfig {
        &self.origin(origin).config
    }

    /// Whether requests may go to `origin` now.
    pub fn is_healthy(&self, origin: OriginId) -> bool {
        let origin = self.origin(origin);
        let mut state = origin.state();
        if state.health.is_up() {
            return true;
        }
        let hold_down = Duration::from_millis(self.config.passive_hold_down_ms);
        let expired = state
            .down_since
            .is_some_and(|since| since.elapsed() >= hold_down);
        if !self.config.health_check.enabled && expired && state.health.force(true) {
            state.passive_failures = 0;
            state.down_since = None;
            drop(state);
            self.transitioned(origin.id, true, "hold-down expired");
            return true;
        }
        false
    }

    /// The origin the first attempt goes to: the primary while healthy, else a healthy backup,
    /// else the primary again (with both down, the primary is as good a bet as any and keeps the
    /// traffic where operators expect it).
    pub fn active(&self) -> OriginId {
        if self.origins.len() > 1
            && !self.is_healthy(OriginId::Primary)
            && self.is_healthy(OriginId::Backup)
        {
            OriginId::Backup
        } else {
            OriginId::Primary
        }
    }

    /// How many attempts a request gets: one per origin, since retrying the origin that just
    /// refused or timed out only doubles the wait.
    pub fn max_attempts(&self) -> usize {
        self.origins.len()
    }

    /// Which origin to try for a `kind` request and the peer to connect with. The first attempt
    /// (`previous` = `None`) goes to the [`Group::active`] origin; a retry goes to the origin
    /// other than `previous`, the one that just failed. (That failure may already have changed
    /// which origin is active, so a retry cannot be derived from an attempt count.) The peer
    /// carries the connect timeout, the `kind`'s first-byte timeout as read/write timeout (cut to
    /// `failover_after_ms` on a first attempt while the other origin is healthy), TLS and SNI.
    pub fn pick(&self, previous: Option<OriginId>, kind: RequestKind) -> (OriginId, Box<HttpPeer>) {
        let id = match previous {
            None => self.active(),
            Some(failed) if self.origins.len() > 1 => {
                self.metrics
                    .upstream_retries
                    .with_label_values(&[self.name(), failed.other().as_str()])
                    .inc();
                failed.other()
            }
            Some(failed) => failed,
        };
        let mut first_byte = match kind {
            RequestKind::Playlist => self.config.playlist_first_byte_timeout_ms,
            RequestKind::Media => self.config.first_byte_timeout_ms,
        };
        // Only worth cutting short when the retry has somewhere healthy to go; a retry is itself
        // the last attempt (one per origin) and waits the full timeout.
        if previous.is_none() && self.origins.len() > 1 && self.is_healthy(id.other()) {
            first_byte = first_byte.min(self.config.failover_after_ms);
        }
        (id, self.peer(id, Duration::from_millis(first_byte)))
    }

    /// The peer for `origin` with `first_byte` as read and write timeout.
    pub(crate) fn peer(&self, origin: OriginId, first_byte: Duration) -> Box<HttpPeer> {
        let origin = self.origin(origin);
        let mut peer = HttpPeer::new(
            origin.address(),
            origin.config.tls,
            origin.config.server_name().to_string(),
        );
        let connect = Duration::from_millis(self.config.connect_timeout_ms);
        peer.options.connection_timeout = Some(connect);
        // The total covers TCP plus the TLS handshake; plain TCP never gets near it.
        peer.options.total_connection_timeout = Some(connect * 2);
        peer.options.read_timeout = Some(first_byte);
        peer.options.write_timeout = Some(first_byte);
        peer.options.verify_cert = origin.config.verify_cert;
        peer.options.verify_hostname = origin.config.verify_cert;
        Box::new(peer)
    }

    /// Records a failed attempt on `origin` from the request path.
    pub fn report_failure(&self, origin: OriginId, reason: FailureReason) {
        let origin = self.origin(origin);
        self.metrics
            .upstream_failures
            .with_label_values(&[self.name(), origin.id.as_str(), reason.as_str()])
            .inc();
        let mut state = origin.state();
        state.passive_failures = state.passive_failures.saturating_add(1);
        state.last_failure = Some(reason);
        if state.passive_failures >= self.config.passive_failures_to_down
            && state.health.force(false)
        {
            state.down_since = Some(Instant::now());
            drop(state);
            self.transitioned(origin.id, false, reason.as_str());
        }
    }

    /// Records a successful attempt on `origin` from the request path. It resets the passive
    /// failure count but does not bring a downed origin back: only active checks do.
    pub fn report_success(&self, origin: OriginId) {
        self.origin(origin).state().passive_failures = 0;
    }

    /// Feeds one active check result into `origin`'s hysteresis.
    pub(crate) fn record_check(&self, origin: OriginId, result: Result<(), FailureReason>) {
        let origin = self.origin(origin);
        let label = match result {
            Ok(()) => "ok",
            Err(reason) => reason.as_str(),
        };
        self.metrics
            .health_checks
            .with_label_values(&[self.name(), origin.id.as_str(), label])
            .inc();
        let mut state = origin.state();
        if let Err(reason) = result {
            state.last_failure = Some(reason);
        }
        match state.health.record(result.is_ok()) {
            Some(true) => {
                state.passive_failures = 0;
                state.down_since = None;
                drop(state);
                self.transitioned(origin.id, true, "active checks passing");
            }
            Some(false) => {
                state.down_since = Some(Instant::now());
                drop(state);
                self.transitioned(origin.id, false, label);
            }
            None => {}
        }
    }

    /// The one place a health change is logged and counted.
    fn transitioned(&self, origin: OriginId, up: bool, cause: &str) {
        let (group, label) = (self.name(), origin.as_str());
        self.metrics
            .upstream_healthy
            .with_label_values(&[group, label])
            .set(i64::from(up));
        self.metrics
            .health_transitions
            .with_label_values(&[group, label, if up { "up" } else { "down" }])
            .inc();
        if up {
            tracing::info!(group, origin = label, cause, "origin up");
        } else {
            tracing::warn!(group, origin = label, cause, "origin down");
            if origin == OriginId::Primary && self.origins.len() > 1 {
                self.metrics.failovers.with_label_values(&[group]).inc();
            }
        }
    }

    /// Health of the group for the admin API.
    pub fn status(&self) -> GroupStatus {
        let active = self.active();
        let origins = self
            .origins
            .iter()
            .map(|origin| {
                let state = origin.state();
                OriginStatus {
                    origin: origin.id,
                    address: origin.config.address.clone(),
                    healthy: state.health.is_up(),
                    down_for_secs: state.down_since.map(|t| t.elapsed().as_secs_f64()),
                    passive_failures: state.passive_failures,
                    last_failure: state.last_failure,
                }
            })
            .collect();
        GroupStatus {
            name: self.config.name.clone(),
            active,
            origins,
        }
    }
}

/// Every upstream group; the first configured is the default.
#[derive(Debug, Clone)]
pub struct Upstreams {
    default: Arc<Group>,
    groups: Vec<Arc<Group>>,
}

impl Upstreams {
    /// Validates and builds the groups, resolving origin addresses once.
    pub fn new(groups: &[GroupConfig], metrics: Arc<Metrics>) -> Result<Self, UpstreamError> {
        let mut built: Vec<Arc<Group>> = Vec::with_capacity(groups.len());
        for config in groups {
            if built.iter().any(|g| g.name() == config.name) {
                return Err(UpstreamError::DuplicateGroup(config.name.clone()));
            }
            built.push(Arc::new(Group::new(config.clone(), Arc::clone(&metrics))?));
        }
        let default = built.first().cloned().ok_or(UpstreamError::NoGroups)?;
        Ok(Self {
            default,
            groups: built,
        })
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<Arc<Group>> {
        self.groups.iter().find(|g| g.name() == name).cloned()
    }

    /// The first configured group.
    pub fn default_group(&self) -> Arc<Group> {
        Arc::clone(&self.default)
    }

    /// Every group, in configuration order.
    pub fn groups(&self) -> &[Arc<Group>] {
        &self.groups
    }

    /// One pingora background service per group with active checks enabled; add them with
    /// `Server::add_services`.
    pub fn background_services(&self) -> Vec<Box<dyn ServiceWithDependents>> {
        let checks = self
            .groups
            .iter()
            .filter(|g| g.config.health_check.enabled)
            .map(|g| {
                let name = format!("health checks {}", g.name());
                Box::new(background_service(&name, HealthChecker::new(Arc::clone(g))))
                    as Box<dyn ServiceWithDependents>
            });
        let resolvers = self
            .groups
            .iter()
            .filter(|g| g.config.resolve_interval_ms > 0 && !g.named_origins().is_empty())
            .map(|g| {
                let name = format!("dns {}", g.name());
                Box::new(background_service(&name, Resolver::new(Arc::clone(g))))
                    as Box<dyn ServiceWithDependents>
            });
        checks.chain(resolvers).collect()
    }

    /// Health of every group for the admin API.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups.iter().map(|g| g.status()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(backup: bool, configure: impl FnOnce(&mut GroupConfig)) -> Group {
        let mut config = GroupConfig {
            primary: OriginConfig::at("127.0.0.1:1001"),
            backup: backup.then(|| OriginConfig::at("127.0.0.1:1002")),
            ..GroupConfig::default()
        };
        configure(&mut config);
        Group::new(config, Arc::new(Metrics::new().unwrap())).unwrap()
    }

    fn port(peer: &HttpPeer) -> u16 {
        peer._address.as_inet().unwrap().port()
    }

    #[test]
    fn healthy_primary_takes_first_attempt_and_retry_goes_to_backup() {
        let g = group(true, |_| {});
        let (first, peer) = g.pick(None, RequestKind::Media);
        assert_eq!((first, port(&peer)), (OriginId::Primary, 1001));
        let (second, peer) = g.pick(Some(first), RequestKind::Media);
        assert_eq!((second, port(&peer)), (OriginId::Backup, 1002));
        assert_eq!(g.max_attempts(), 2);
    }

    #[test]
    fn one_passive_failure_sends_the_next_requests_straight_to_backup() {
        let g = group(true, |_| {});
        g.report_failure(OriginId::Primary, FailureReason::FirstByteTimeout);
        assert_eq!(g.pick(None, RequestKind::Media).0, OriginId::Backup);
        // The retry of a request that starts on the backup goes to the primary.
        assert_eq!(
            g.pick(Some(OriginId::Backup), RequestKind::Media).0,
            OriginId::Primary
        );
        assert_eq!(g.metrics.failovers.with_label_values(&["default"]).get(), 1);
    }

    #[test]
    fn passive_threshold_counts_only_consecutive_failures() {
        let g = group(true, |c| c.passive_failures_to_down = 2);
        g.report_failure(OriginId::Primary, FailureReason::Status5xx);
        g.report_success(OriginId::Primary);
        g.report_failure(OriginId::Primary, FailureReason::Status5xx);
        assert_eq!(g.active(), OriginId::Primary);
        g.report_failure(OriginId::Primary, FailureReason::Status5xx);
        assert_eq!(g.active(), OriginId::Backup);
    }

    #[test]
    fn passive_success_does_not_bring_a_downed_origin_back() {
        let g = group(true, |_| {});
        g.report_failure(OriginId::Primary, FailureReason::Refused);
        g.report_success(OriginId::Primary);
        assert!(!g.is_healthy(OriginId::Primary));
    }

    #[test]
    fn primary_is_used_when_both_origins_are_down() {
        let g = group(true, |_| {});
        g.report_failure(OriginId::Primary, FailureReason::Refused);
        g.report_failure(OriginId::Backup, FailureReason::Refused);
        assert_eq!(g.pick(None, RequestKind::Media).0, OriginId::Primary);
        assert_eq!(
            g.pick(Some(OriginId::Primary), RequestKind::Media).0,
            OriginId::Backup
        );
    }

    #[test]
    fn group_without_backup_always_picks_primary() {
        let g = group(false, |_| {});
        g.report_failure(OriginId::Primary, FailureReason::Refused);
        assert_eq!(g.pick(None, RequestKind::Media).0, OriginId::Primary);
        assert_eq!(
            g.pick(Some(OriginId::Primary), RequestKind::Media).0,
            OriginId::Primary
        );
        assert_eq!(g.max_attempts(), 1);
    }

    #[test]
    fn failback_to_primary_needs_rise_consecutive_active_successes() {
        let g = group(true, |c| c.health_check.rise = 2);
        g.report_failure(OriginId::Primary, FailureReason::Refused);
        g.record_check(OriginId::Primary, Ok(()));
        g.record_check(OriginId::Primary, Err(FailureReason::Refused));
        g.record_check(OriginId::Primary, Ok(()));
        assert_eq!(g.active(), OriginId::Backup);
        g.record_check(OriginId::Primary, Ok(()));
        assert_eq!(g.active(), OriginId::Primary);
    }

    #[test]
    fn active_checks_take_an_origin_down_after_fall_consecutive_failures() {
        let g = group(true, |c| c.health_check.fall = 2);
        g.record_check(OriginId::Primary, Err(FailureReason::CheckTimeout));
        g.record_check(OriginId::Primary, Ok(()));
        g.record_check(OriginId::Primary, Err(FailureReason::CheckTimeout));
        assert_eq!(g.active(), OriginId::Primary);
        g.record_check(OriginId::Primary, Err(FailureReason::StalePlaylist));
        assert_eq!(g.active(), OriginId::Backup);
        let status = g.status();
        assert!(!status.origins[0].healthy);
        assert_eq!(
            status.origins[0].last_failure,
            Some(FailureReason::StalePlaylist)
        );
    }

    #[test]
    fn hysteresis_changes_state_only_on_the_edges() {
        let mut h = Hysteresis::new(3, 2);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(false));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(true));
        assert_eq!(h.record(true), None);
        assert!(h.is_up());
    }

    #[test]
    fn passive_down_expires_after_hold_down_when_active_checks_are_off() {
        let g = group(true, |c| {
            c.health_check.enabled = false;
            c.passive_hold_down_ms = 30;
        });
        g.report_failure(OriginId::Primary, FailureReason::Refused);
        assert_eq!(g.active(), OriginId::Backup);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(g.active(), OriginId::Primary);
    }

    #[test]
    fn peers_carry_the_timeouts_of_their_request_kind_and_tls_settings() {
        let g = group(true, |c| {
            c.backup = Some(OriginConfig {
                address: "127.0.0.1:1443".to_string(),
                tls: true,
                sni: Some("origin.example".to_string()),
                ..OriginConfig::default()
            });
        });
        let (first, playlist) = g.pick(None, RequestKind::from_path("/live/a/index.m3u8"));
        assert_eq!(
            playlist.options.read_timeout,
            Some(Duration::from_millis(1000))
        );
        assert_eq!(
            playlist.options.connection_timeout,
            Some(Duration::from_millis(1000))
        );
        assert!(!playlist.is_tls());
        let (_, segment) = g.pick(Some(first), RequestKind::from_path("/live/a/12.ts"));
        assert_eq!(
            segment.options.read_timeout,
            Some(Duration::from_millis(2000))
        );
        assert!(segment.is_tls());
        assert_eq!(segment.sni, "origin.example");
    }

    #[test]
    fn a_first_segment_attempt_fails_over_early_only_while_the_other_origin_is_healthy() {
        let read_timeout = |g: &Group, previous| {
            g.pick(previous, RequestKind::Media)
                .1
                .options
                .read_timeout
                .unwrap()
        };
        let g = group(true, |c| c.failover_after_ms = 700);
        assert_eq!(read_timeout(&g, None), Duration::from_millis(700));
        // The retry is the last attempt: it gets the whole first-byte timeout.
        assert_eq!(
            read_timeout(&g, Some(OriginId::Primary)),
            Duration::from_millis(2000)
        );
        // A playlist's own timeout is shorter than the failover delay here.
        let g = group(true, |c| c.failover_after_ms = 1500);
        let (_, playlist) = g.pick(None, RequestKind::Playlist);
        assert_eq!(
            playlist.options.read_timeout,
            Some(Duration::from_millis(1000))
        );
        // Backup down: nowhere better to go, so the primary gets the full timeout.
        let g = group(true, |c| c.failover_after_ms = 700);
        g.report_failure(OriginId::Backup, FailureReason::Refused);
        assert_eq!(read_timeout(&g, None), Duration::from_millis(2000));
        // No backup at all.
        let g = group(false, |c| c.failover_after_ms = 700);
        assert_eq!(read_timeout(&g, None), Duration::from_millis(2000));
    }

    #[test]
    fn pingora_errors_map_to_failure_reasons() {
        let reason = |t| FailureReason::classify(&PingoraError::new(t));
        assert_eq!(reason(ErrorType::ConnectRefused), FailureReason::Refused);
        assert_eq!(
            reason(ErrorType::ConnectTimedout),
            FailureReason::ConnectTimeout
        );
        assert_eq!(
            reason(ErrorType::ReadTimedout),
            FailureReason::FirstByteTimeout
        );
        assert_eq!(reason(ErrorType::ConnectionClosed), FailureReason::Reset);
        assert_eq!(FailureReason::Status5xx.as_str(), "status_5xx");
    }

    #[test]
    fn invalid_values_are_rejected_naming_the_key() {
        let config = GroupConfig {
            connect_timeout_ms: 0,
            ..GroupConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("upstreams[default].connect_timeout_ms"),
            "{err}"
        );

        let mut config = GroupConfig::default();
        config.health_check.fall = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("upstreams[default].health_check.fall"),
            "{err}"
        );

        let configs = [GroupConfig::default(), GroupConfig::default()];
        let metrics = Arc::new(Metrics::new().unwrap());
        assert!(matches!(
            Upstreams::new(&configs, metrics.clone()),
            Err(UpstreamError::DuplicateGroup(_))
        ));
        assert!(matches!(
            Upstreams::new(&[], metrics),
            Err(UpstreamError::NoGroups)
        ));
    }

    #[test]
    fn default_config_parses_from_an_empty_table() {
        let config: GroupConfig = toml::from_str("").unwrap();
        assert_eq!(config, GroupConfig::default());
        assert!(config.validate().is_ok());
        let err = toml::from_str::<GroupConfig>("bogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }
}
