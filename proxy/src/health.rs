//! Active health checks and the stale-playlist detector, one [`HealthChecker`] per upstream group
//! run as a pingora background service.
//!
//! Every `interval_ms` each origin of the group gets an HTTP GET of `path`; any answer below 500
//! within `timeout_ms` is a success (this is a liveness probe: freshness is the stale detector's
//! job). With a [`StalePlaylistConfig`], the group's live playlist is fetched too, and an origin
//! whose newest segment (`EXT-X-MEDIA-SEQUENCE` + segment count) has not advanced for
//! `stale_multiple` × `EXT-X-TARGETDURATION` fails its checks although it answers 200: the
//! encoder feeding it died, the other origin's did not. Results feed the group's hysteresis ([`crate::upstream`]).
//!
//! Checks use pingora's own HTTP/1 connector with the same peer (TLS, SNI, certificate
//! verification) that requests use, on a fresh connection each time: a pooled connection would
//! hide an origin that no longer accepts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::Instrument;

use crate::upstream::{FailureReason, Group, OriginId};

/// Largest live playlist the detector reads; a live window is a few KiB, so anything near this
/// is not a live media playlist.
const MAX_PLAYLIST_BYTES: usize = 1 << 20;

/// An invalid configuration value: the key (relative to its section) and why.
pub type InvalidKey = (&'static str, &'static str);

/// Active health checks of a group's origins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Run active checks. Default `true`. Without them, failback relies on
    /// `passive_hold_down_ms` and the stale detector cannot run.
    pub enabled: bool,
    /// Path requested on each origin; any status below 500 counts as alive. Default `/`.
    pub path: String,
    /// Time between checks, milliseconds. Default 1000.
    pub interval_ms: u64,
    /// Longest a check may take (connect to last byte), milliseconds; must be below
    /// `interval_ms`. Default 500.
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down origin back (failback). Default 2.
    pub rise: u32,
    /// Consecutive failures that take an up origin down. Default 2.
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/".to_string(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 2,
        }
    }
}

impl HealthCheckConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if !self.path.starts_with('/') {
            return Err(("path", "must start with /"));
        }
        if self.interval_ms == 0 {
            return Err(("interval_ms", "must be greater than 0"));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.interval_ms {
            return Err(("timeout_ms", "must be greater than 0 and below interval_ms"));
        }
        if self.rise == 0 {
            return Err(("rise", "must be at least 1"));
        }
        if self.fall == 0 {
            return Err(("fall", "must be at least 1"));
        }
        Ok(())
    }
}

/// The stale-playlist detector of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StalePlaylistConfig {
    /// Path of a live media playlist both origins serve, e.g. `/live/main/index.m3u8`. Required.
    pub path: String,
    /// How many target durations the media sequence may stand still before the origin counts
    /// as unhealthy. Default 3.0: a live origin advances once per target duration, so three
    /// leaves room for one late segment without flapping.
    pub stale_multiple: f64,
}

impl Default for StalePlaylistConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            stale_multiple: 3.0,
        }
    }
}

impl StalePlaylistConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if !self.path.starts_with('/') {
            return Err(("path", "must be set to a playlist path starting with /"));
        }
        if !(self.stale_multiple.is_finite() && self.stale_multiple >= 1.0) {
            return Err(("stale_multiple", "must be a number of at least 1"));
        }
        Ok(())
    }
}

/// Why a live playlist could not be read.
#[derive(Debug, Error, PartialEq)]
pub enum PlaylistError {
    /// The body does not start with `#EXTM3U`.
    #[error("not an M3U playlist (no #EXTM3U header)")]
    NotM3u,
    /// A master playlist was named where a media playlist is needed.
    #[error("a master playlist, not a media playlist")]
    Master,
    /// `EXT-X-TARGETDURATION` is absent (required by RFC 8216 section 4.3.3.1).
    #[error("no EXT-X-TARGETDURATION")]
    NoTargetDuration,
    /// A tag's value does not parse.
    #[error("bad {tag} value {value:?}")]
    BadValue {
        /// The tag.
        tag: &'static str,
        /// Its value as found.
        value: String,
    },
}

/// What the detector needs from a media playlist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaylistHead {
    /// `EXT-X-MEDIA-SEQUENCE`, 0 when absent (RFC 8216 section 4.3.3.2).
    pub media_sequence: u64,
    /// `EXT-X-TARGETDURATION` in seconds.
    pub target_duration_secs: f64,
    /// Media segments listed (URI lines).
    pub segments: u64,
}

impl PlaylistHead {
    /// The media sequence number the next segment will get: what grows while the stream is
    /// live, also while the window is still filling up and `EXT-X-MEDIA-SEQUENCE` stays put.
    pub fn next_sequence(&self) -> u64 {
        self.media_sequence.saturating_add(self.segments)
    }

    /// Reads the two tags from a media playlist, tolerating CRLF line ends, a byte-order mark and
    /// surrounding whitespace.
    pub fn parse(text: &str) -> Result<Self, PlaylistError> {
        let mut lines = text
            .trim_start_matches('\u{feff}')
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty());
        if lines.next() != Some("#EXTM3U") {
            return Err(PlaylistError::NotM3u);
        }
        let mut media_sequence = 0;
        let mut target_duration_secs = None;
        let mut segments = 0;
        for line in lines {
            if !line.starts_with('#') {
                segments += 1;
            } else if let Some(value) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                media_sequence = value.trim().parse().map_err(|_| PlaylistError::BadValue {
                    tag: "EXT-X-MEDIA-SEQUENCE",
                    value: value.to_string(),
                })?;
            } else if let Some(value) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                let secs: f64 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| PlaylistError::BadValue {
                        tag: "EXT-X-TARGETDURATION",
                        value: value.to_string(),
                    })?;
                target_duration_secs = Some(secs);
            } else if line.starts_with("#EXT-X-STREAM-INF") {
                return Err(PlaylistError::Master);
            }
        }
        Ok(Self {
            media_sequence,
            target_duration_secs: target_duration_secs.ok_or(PlaylistError::NoTargetDuration)?,
            segments,
        })
    }
}

/// Tracks one origin's live playlist: when its newest segment last changed.
#[derive(Debug, Clone)]
pub(crate) struct StaleDetector {
    stale_multiple: f64,
    last_sequence: Option<u64>,
    last_change: Option<Instant>,
}

impl StaleDetector {
    pub(crate) fn new(stale_multiple: f64) -> Self {
        Self {
            stale_multiple,
            last_sequence: None,
            last_change: None,
        }
    }

    /// Feeds the playlist fetched at `now`. Any change of the next sequence number counts as
    /// progress, a decrease too: an origin restarted mid-stream is alive.
    pub(crate) fn observe(&mut self, playlist: &str, now: Instant) -> Result<(), FailureReason> {
        let head = PlaylistHead::parse(playlist).map_err(|error| {
            tracing::warn!(%error, "live playlist unreadable");
            FailureReason::MalformedPlaylist
        })?;
        let changed_at = match (self.last_sequence, self.last_change) {
            (Some(seq), Some(at)) if seq == head.next_sequence() => at,
            _ => {
                self.last_sequence = Some(head.next_sequence());
                self.last_change = Some(now);
                now
            }
        };
        let limit = Duration::from_secs_f64(head.target_duration_secs * self.stale_multiple);
        let still = now.saturating_duration_since(changed_at);
        if still > limit {
            // Debug only: this repeats every check while stale; the health transition it causes
            // is logged at warn with the reason.
            tracing::debug!(
                next_sequence = head.next_sequence(),
                still_ms = still.as_millis() as u64,
                limit_ms = limit.as_millis() as u64,
                "live playlist stale"
            );
            return Err(FailureReason::StalePlaylist);
        }
        Ok(())
    }
}

/// Checks one group's origins every interval until shutdown; see the module docs.
pub struct HealthChecker {
    group: Arc<Group>,
    connector: Connector,
    /// One detector per origin, in [`Group::origin_ids`] order, when the group has one.
    stale: Vec<(OriginId, Mutex<StaleDetector>)>,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("group", &self.group.name())
            .finish_non_exhaustive()
    }
}

impl HealthChecker {
    /// A checker for `group`.
    pub fn new(group: Arc<Group>) -> Self {
        let stale = match &group.config().stale_playlist {
            Some(config) => group
                .origin_ids()
                .map(|id| (id, Mutex::new(StaleDetector::new(config.stale_multiple))))
                .collect(),
            None => Vec::new(),
        };
        Self {
            group,
            connector: Connector::new(None),
            stale,
        }
    }

    /// Checks every `interval_ms` until `shutdown` turns true or its sender is dropped.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let interval = Duration::from_millis(self.group.config().health_check.interval_ms);
        let mut ticker = tokio::time::interval(interval);
        // A slow round must not be followed by a burst of catch-up checks.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            group = self.group.name(),
            ?interval,
            "health checks started"
        );
        while !*shutdown.borrow() {
            tokio::select! {
                _ = ticker.tick() => self.check_all().await,
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        tracing::info!(group = self.group.name(), "health checks stopped");
    }

    /// Runs one round: every origin checked concurrently, results recorded.
    pub async fn check_all(&self) {
        // A group has one or two origins; checking them side by side keeps a hung one from
        // delaying the other's check past the interval.
        let mut ids = self.group.origin_ids();
        match (ids.next(), ids.next()) {
            (Some(primary), Some(backup)) => {
                tokio::join!(
                    self.check_and_record(primary),
                    self.check_and_record(backup)
                );
            }
            (Some(primary), None) => self.check_and_record(primary).await,
            _ => {}
        }
    }

    async fn check_and_record(&self, origin: OriginId) {
        let span = tracing::debug_span!(
            "health_check",
            group = self.group.name(),
            origin = origin.as_str()
        );
        let result = self.check(origin).instrument(span).await;
        self.group.record_check(origin, result);
    }

    /// One check of `origin`: liveness, then the live playlist if configured.
    async fn check(&self, origin: OriginId) -> Result<(), FailureReason> {
        let config = self.group.config();
        let timeout = Duration::from_millis(config.health_check.timeout_ms);
        let peer = self.group.peer(origin, timeout);
        let origin_config = self.group.origin_config(origin);
        let host = origin_config
            .host_header
            .as_deref()
            .unwrap_or(&origin_config.address);

        let (status, _) = self
            .get(&peer, host, &config.health_check.path, 0, timeout)
            .await?;
        if status >= 500 {
            return Err(FailureReason::Status5xx);
        }

        let (Some(stale), Some(detector)) = (
            &config.stale_playlist,
            self.stale.iter().find(|(id, _)| *id == origin),
        ) else {
            return Ok(());
        };
        let (status, body) = self
            .get(&peer, host, &stale.path, MAX_PLAYLIST_BYTES, timeout)
            .await?;
        if status != 200 {
            tracing::warn!(status, path = stale.path, "live playlist not served");
            return Err(if status >= 500 {
                FailureReason::Status5xx
            } else {
                FailureReason::BadResponse
            });
        }
        let text = std::str::from_utf8(&body).map_err(|_| {
            tracing::warn!(path = stale.path, "live playlist is not UTF-8");
            FailureReason::MalformedPlaylist
        })?;
        detector
            .1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(text, Instant::now())
    }

    /// GETs `path` within `timeout`, reading at most `max_body` bytes of the body (more is a
    /// malformed playlist); returns the status and body.
    async fn get(
        &self,
        peer: &HttpPeer,
        host: &str,
        path: &str,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(u16, Bytes), FailureReason> {
        let exchange = async {
            let classify = |e: Box<pingora::Error>| FailureReason::classify(&e);
            let (mut session, _reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(classify)?;
            let mut request =
                RequestHeader::build("GET", path.as_bytes(), None).map_err(classify)?;
            request.insert_header("Host", host).map_err(classify)?;
            request
                .insert_header("User-Agent", "parallax-health-check")
                .map_err(classify)?;
            request
                .insert_header("Connection", "close")
                .map_err(classify)?;
            session
                .write_request_header(Box::new(request))
                .await
                .map_err(classify)?;
            session.read_response().await.map_err(classify)?;
            let status = session
                .resp_header()
                .map(|h| h.status.as_u16())
                .ok_or(FailureReason::BadResponse)?;
            let mut body = BytesMut::new();
            if max_body > 0 {
                while let Some(chunk) = session.read_body_bytes().await.map_err(classify)? {
                    if body.len() + chunk.len() > max_body {
                        tracing::warn!(path, max_body, "response body too large for a check");
                        return Err(FailureReason::MalformedPlaylist);
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Ok((status, body.freeze()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => {
                if let Err(reason) = &result {
                    tracing::debug!(reason = reason.as_str(), path, "check failed");
                }
                result
            }
            Err(_) => {
                tracing::debug!(path, ?timeout, "check timed out");
                Err(FailureReason::CheckTimeout)
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::{GroupConfig, OriginConfig, Upstreams};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn playlist(sequence: u64) -> String {
        format!(
            "#EXTM3U\r\n#EXT-X-VERSION:3\r\n#EXT-X-TARGETDURATION:2\r\n\
             #EXT-X-MEDIA-SEQUENCE:{sequence}\r\n#EXTINF:2.000,\r\n{sequence}.ts\r\n"
        )
    }

    #[test]
    fn playlist_head_reads_sequence_and_target_duration() {
        let head = PlaylistHead::parse(&playlist(41)).unwrap();
        assert_eq!(head.media_sequence, 41);
        assert_eq!(head.target_duration_secs, 2.0);
        let head = PlaylistHead::parse("\u{feff}#EXTM3U\n#EXT-X-TARGETDURATION:6\n").unwrap();
        assert_eq!(head.media_sequence, 0);
    }

    #[test]
    fn malformed_playlists_are_errors_not_panics() {
        for (text, expected) in [
            ("", PlaylistError::NotM3u),
            ("<html>", PlaylistError::NotM3u),
            (
                "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:3\n",
                PlaylistError::NoTargetDuration,
            ),
            (
                "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow.m3u8\n",
                PlaylistError::Master,
            ),
        ] {
            assert_eq!(PlaylistHead::parse(text), Err(expected), "{text:?}");
        }
        for text in [
            "#EXTM3U\n#EXT-X-TARGETDURATION:two\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:0\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:-1\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:99999999999999999999999\n",
        ] {
            assert!(
                matches!(
                    PlaylistHead::parse(text),
                    Err(PlaylistError::BadValue { .. })
                ),
                "{text:?}"
            );
        }
        let mut detector = StaleDetector::new(3.0);
        assert_eq!(
            detector.observe("garbage", Instant::now()),
            Err(FailureReason::MalformedPlaylist)
        );
    }

    #[test]
    fn sequence_standing_still_for_three_target_durations_is_stale() {
        let start = Instant::now();
        let mut detector = StaleDetector::new(3.0);
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(detector.observe(&playlist(10), at(0)), Ok(()));
        assert_eq!(detector.observe(&playlist(10), at(3000)), Ok(()));
        assert_eq!(detector.observe(&playlist(10), at(6000)), Ok(()));
        assert_eq!(
            detector.observe(&playlist(10), at(6001)),
            Err(FailureReason::StalePlaylist)
        );
        // Progress clears it at once.
        assert_eq!(detector.observe(&playlist(11), at(7000)), Ok(()));
    }

    #[test]
    fn a_window_still_filling_up_is_not_stale() {
        // A new stream: EXT-X-MEDIA-SEQUENCE stays 0 while segments are appended, until the
        // window is full (6 segments = 12 s here, longer than the 6 s limit).
        let filling = |count: u64| {
            let mut text =
                String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n");
            for i in 0..count {
                text.push_str(&format!("#EXTINF:2.000,\n{i}.ts\n"));
            }
            text
        };
        assert_eq!(PlaylistHead::parse(&filling(3)).unwrap().next_sequence(), 3);
        let start = Instant::now();
        let mut detector = StaleDetector::new(3.0);
        for i in 0..12u64 {
            let now = start + Duration::from_secs(i);
            assert_eq!(
                detector.observe(&filling(1 + i / 2), now),
                Ok(()),
                "at {i} s"
            );
        }
    }

    #[test]
    fn advancing_sequence_stays_healthy() {
        let start = Instant::now();
        let mut detector = StaleDetector::new(3.0);
        for i in 0..20u64 {
            let now = start + Duration::from_millis(i * 1000);
            assert_eq!(detector.observe(&playlist(100 + i / 2), now), Ok(()));
        }
    }

    /// An origin on loopback answering every request with the playlist from `body()`.
    async fn playlist_origin(body: Arc<Mutex<String>>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let body = body.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn checks_over_the_network_take_a_stale_origin_down_and_bring_it_back() {
        let body = Arc::new(Mutex::new(playlist(1)));
        let addr = playlist_origin(Arc::clone(&body)).await;
        // The backup is a closed port: its checks fail and it goes down.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let config = GroupConfig {
            primary: OriginConfig::at(addr.to_string()),
            backup: Some(OriginConfig::at(closed_addr.to_string())),
            stale_playlist: Some(StalePlaylistConfig {
                path: "/live/index.m3u8".to_string(),
                stale_multiple: 1.0,
            }),
            health_check: HealthCheckConfig {
                rise: 1,
                fall: 1,
                ..HealthCheckConfig::default()
            },
            ..GroupConfig::default()
        };
        let upstreams = Upstreams::new(&[config], Arc::new(Metrics::new().unwrap())).unwrap();
        let group = upstreams.default_group();
        let checker = HealthChecker::new(Arc::clone(&group));

        checker.check_all().await;
        assert!(group.is_healthy(OriginId::Primary));
        assert!(!group.is_healthy(OriginId::Backup));
        assert_eq!(
            group.status().origins[1].last_failure,
            Some(FailureReason::Refused)
        );

        // Target duration 2 s × 1: still healthy at 1 s, stale after 2 s.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        checker.check_all().await;
        assert!(group.is_healthy(OriginId::Primary));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        checker.check_all().await;
        assert!(!group.is_healthy(OriginId::Primary));

        *body.lock().unwrap() = playlist(2);
        checker.check_all().await;
        assert!(group.is_healthy(OriginId::Primary));

        *body.lock().unwrap() = "not a playlist".to_string();
        checker.check_all().await;
        assert_eq!(
            group.status().origins[0].last_failure,
            Some(FailureReason::MalformedPlaylist)
        );
    }

    #[tokio::test]
    async fn silent_origin_fails_its_check_within_the_timeout() {
        // Accepts TCP (the kernel's backlog does) but never answers, like a SIGSTOPped process.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = GroupConfig {
            primary: OriginConfig::at(listener.local_addr().unwrap().to_string()),
            ..GroupConfig::default()
        };
        let upstreams = Upstreams::new(&[config], Arc::new(Metrics::new().unwrap())).unwrap();
        let checker = HealthChecker::new(upstreams.default_group());
        let started = Instant::now();
        assert_eq!(
            checker.check(OriginId::Primary).await,
            Err(FailureReason::CheckTimeout)
        );
        let took = started.elapsed();
        assert!(took < Duration::from_millis(700), "{took:?}");
        drop(listener);
    }

    #[test]
    fn config_rejects_a_timeout_not_below_the_interval() {
        let config = HealthCheckConfig {
            timeout_ms: 1000,
            ..HealthCheckConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().0, "timeout_ms");
        let stale = StalePlaylistConfig::default();
        assert_eq!(stale.validate().unwrap_err().0, "path");
    }
}
