//! The origin's whole configuration: one struct read from TOML (`origin --config origin.toml`),
//! with a default for every field and a [`Config::validate`] run once at startup, so nothing is
//! re-checked per connection or per request.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt key silently falling back to its
//! default is worse than refusing to start. `origin/origin.example.toml` documents every key; a
//! unit test checks it against these structs (serialized, hence `Serialize`), and
//! `docs/configuration.md` is generated from both (`tests/docs.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`] (syntax, type or unknown key).
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file we parsed.
        path: PathBuf,
        /// What the TOML parser said.
        source: Box<toml::de::Error>,
    },
    /// A value is out of its allowed range; the message names the key.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The origin's configuration. Every section has a default; an empty file is a valid config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding live segments (`live/<stream>/`) and recordings (`vod/<stream>/<id>/`).
    /// Must be one filesystem: recordings hard-link the live segment files. Default `./data`.
    pub data_dir: PathBuf,
    /// Threads running the origin's event loop (RTMP ingest, packaging, HTTP). Default 1: one
    /// loop on the main thread, like nginx-rtmp's single worker. A stream costs about 0.3 CPU
    /// seconds per minute (0.5 % of a core), so one thread carries about 200 streams, and a
    /// second one costs more in cross-thread wakeups than it adds (bench/RESULTS.md). 0 means
    /// one per CPU core. Disk work always runs on separate blocking threads.
    pub worker_threads: usize,
    /// RTMP ingest.
    pub rtmp: RtmpConfig,
    /// HTTP serving of live HLS and VOD.
    pub http: HttpConfig,
    /// HLS packaging.
    pub hls: HlsConfig,
    /// Publish authorization.
    pub auth: AuthConfig,
    /// Recording every publish for VOD.
    pub recording: RecordingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            worker_threads: 1,
            rtmp: RtmpConfig::default(),
            http: HttpConfig::default(),
            hls: HlsConfig::default(),
            auth: AuthConfig::default(),
            recording: RecordingConfig::default(),
        }
    }
}

/// RTMP ingest settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    /// Address the RTMP listener binds. Default `0.0.0.0:1935`.
    pub listen: SocketAddr,
    /// The only RTMP application name accepted (`rtmp://host/<app>/<stream>`). Default `live`.
    pub app: String,
    /// Time a client has to complete the RTMP handshake, in milliseconds. Default 5000.
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed, in milliseconds. Default 10000.
    pub idle_timeout_ms: u64,
    /// A publish that has not sent a video keyframe this long after it started is closed, in
    /// milliseconds; without a keyframe no segment can ever be cut. Default 10000.
    pub keyframe_timeout_ms: u64,
    /// Longest accepted stream name in bytes (names are also limited to `[A-Za-z0-9_-.]`,
    /// no leading dot). Default 64, range 1..=200.
    pub max_stream_name_bytes: usize,
    /// Finished segments (and publish notices) queued between a publishing connection, which
    /// packages its media itself, and its stream's writer task; when full (a stalled disk) the
    /// connection stops reading from its socket (backpressure). Default 16: 32 s of 2 s
    /// segments.
    pub stream_queue_messages: usize,
    /// How often a publishing connection reads its socket, in milliseconds; every publisher is
    /// read on the same tick. Reading each message as it arrives costs a runtime wakeup per
    /// message (~75 a second per stream), most of the origin's CPU; the price of reading on a
    /// tick is latency, a segment is listed half an interval later on average. 0 reads every
    /// message as it arrives. Default 20, range 0..=100 (the segment latency goal is 50 ms).
    pub read_interval_ms: u64,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            app: "live".to_owned(),
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
            keyframe_timeout_ms: 10_000,
            max_stream_name_bytes: 64,
            stream_queue_messages: 16,
            read_interval_ms: 20,
        }
    }
}

/// HTTP serving settings, mostly the Cache-Control values a cache tier and a CDN act on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the HTTP listener binds. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// `max-age` of playlists in seconds. Default: unset, meaning half the target duration
    /// (at least 1), so a cache never holds a playlist longer than half a segment.
    pub playlist_max_age_secs: Option<u64>,
    /// `max-age` of segments in seconds; segments also get `immutable` since a segment URI never
    /// changes content. Default 1209600 (14 days).
    pub segment_max_age_secs: u64,
    /// `max-age` of the 404 for a segment or playlist of a known stream that is not there yet,
    /// in seconds: short, so a player asking early gets it moments later. Default 1.
    pub missing_max_age_secs: u64,
    /// `max-age` of the 404 for an unknown stream, in seconds. Default 1.
    pub unknown_stream_max_age_secs: u64,
    /// `max-age` of the `/vod/<stream>/` JSON listing, in seconds. Default 5.
    pub listing_max_age_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            playlist_max_age_secs: None,
            segment_max_age_secs: 14 * 24 * 3600,
            missing_max_age_secs: 1,
            unknown_stream_max_age_secs: 1,
            listing_max_age_secs: 5,
        }
    }
}

/// HLS packaging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HlsConfig {
    /// Target segment duration in milliseconds; segments are cut on the first keyframe at or
    /// after it, so the encoder's keyframe interval should divide it. Default 2000, range
    /// 500..=30000.
    pub target_duration_ms: u32,
    /// Segments listed in the live playlist. Default 6, range 3..=100 (RFC 8216 §6.2.2 wants a
    /// live playlist to span at least three target durations).
    pub window_segments: usize,
    /// How long a stream waits for its publisher to come back before ending the playlist
    /// (ENDLIST) and finalizing the recording, in milliseconds. A publish within the grace
    /// continues the same playlist after an EXT-X-DISCONTINUITY. Default 10000.
    pub reconnect_grace_ms: u64,
    /// Whether a second publisher on a live stream takes it over (the first is disconnected)
    /// instead of being refused. Default false.
    pub takeover: bool,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            target_duration_ms: 2_000,
            window_segments: 6,
            reconnect_grace_ms: 10_000,
            takeover: false,
        }
    }
}

/// Publish authorization. With neither keys nor a callback, every publish is allowed; with
/// both, a publish must pass both.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Stream keys allowed to publish (the stream name, without any `?query`). Empty: no key
    /// check. Default empty.
    pub allowed_keys: Vec<String>,
    /// URL POSTed a form (`app`, `stream`, `addr`, `query`) before each publish; a 2xx answer
    /// allows it, anything else (or no answer within the timeout) refuses it. `http://` only.
    /// Default unset.
    pub callback_url: Option<String>,
    /// How long the callback may take, in milliseconds. Default 2000.
    pub callback_timeout_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allowed_keys: Vec::new(),
            callback_url: None,
            callback_timeout_ms: 2_000,
        }
    }
}

/// Recording of every publish to VOD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Whether publishes are recorded. Default true.
    pub enabled: bool,
    /// A recording rolls over to a new id once it holds this many bytes. Default 4 GiB.
    pub max_bytes: u64,
    /// A recording rolls over to a new id once it is this long, in seconds. Default 3600.
    pub max_duration_secs: u64,
    /// Command run after a recording is finalized. Default unset.
    pub post_record_hook: Option<HookConfig>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 4 << 30,
            max_duration_secs: 3_600,
            post_record_hook: None,
        }
    }
}

/// A post-record hook: `command args... <recording dir> <recording id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// Program to run (looked up in `PATH` if not absolute).
    pub command: String,
    /// Arguments placed before the recording's directory and id.
    pub args: Vec<String>,
    /// The hook is killed after this long, in seconds. Default 0 means no limit.
    pub timeout_secs: u64,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        config.validate()
    }

    /// Checks every value's range; returns the config unchanged if all are sane.
    pub fn validate(self) -> Result<Self, ConfigError> {
        fn check(ok: bool, msg: &str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid(msg.to_owned()))
            }
        }
        check(
            !self.data_dir.as_os_str().is_empty(),
            "data_dir must not be empty",
        )?;
        check(
            self.worker_threads <= 1024,
            "worker_threads must be in 0..=1024",
        )?;
        let app_ok = !self.rtmp.app.is_empty()
            && self.rtmp.app.len() <= 64
            && self
                .rtmp
                .app
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        check(app_ok, "rtmp.app must be 1-64 characters of [A-Za-z0-9_-]")?;
        check(
            self.rtmp.handshake_timeout_ms > 0
                && self.rtmp.idle_timeout_ms > 0
                && self.rtmp.keyframe_timeout_ms > 0,
            "rtmp timeouts must be positive",
        )?;
        check(
            (1..=200).contains(&self.rtmp.max_stream_name_bytes),
            "rtmp.max_stream_name_bytes must be in 1..=200",
        )?;
        check(
            (1..=65_536).contains(&self.rtmp.stream_queue_messages),
            "rtmp.stream_queue_messages must be in 1..=65536",
        )?;
        check(
            self.rtmp.read_interval_ms <= 100,
            "rtmp.read_interval_ms must be in 0..=100",
        )?;
        check(
            (500..=30_000).contains(&self.hls.target_duration_ms),
            "hls.target_duration_ms must be in 500..=30000",
        )?;
        check(
            (3..=100).contains(&self.hls.window_segments),
            "hls.window_segments must be in 3..=100",
        )?;
        check(
            self.hls.reconnect_grace_ms <= 3_600_000,
            "hls.reconnect_grace_ms must be at most one hour",
        )?;
        if let Some(url) = &self.auth.callback_url {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
            check(ok, "auth.callback_url must be an http:// URL with a host")?;
            check(
                self.auth.callback_timeout_ms > 0,
                "auth.callback_timeout_ms must be positive",
            )?;
        }
        check(
            self.auth.allowed_keys.iter().all(|k| !k.is_empty()),
            "auth.allowed_keys must not contain an empty key",
        )?;
        check(
            self.recording.max_bytes >= 1 << 20,
            "recording.max_bytes must be at least 1 MiB",
        )?;
        check(
            self.recording.max_duration_secs * 1000 >= u64::from(self.hls.target_duration_ms),
            "recording.max_duration_secs must be at least one target duration",
        )?;
        if let Some(hook) = &self.recording.post_record_hook {
            check(
                !hook.command.is_empty(),
                "recording.post_record_hook.command must not be empty",
            )?;
        }
        Ok(self)
    }

    /// The playlist `max-age` in seconds: configured, or half the target duration (at least 1).
    pub fn playlist_max_age_secs(&self) -> u64 {
        self.http
            .playlist_max_age_secs
            .unwrap_or_else(|| (u64::from(self.hls.target_duration_ms) / 2000).max(1))
    }
}

#[cfg(test)]
#[path = "../../tests/support/example_config.rs"]
mod example_config;

#[cfg(test)]
mod tests {
    use super::example_config;

    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.rtmp.listen.port(), 1935);
        assert_eq!(c.rtmp.app, "live");
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.hls.target_duration_ms, 2000);
        assert_eq!(c.hls.window_segments, 6);
        assert_eq!(c.hls.reconnect_grace_ms, 10_000);
        assert!(!c.hls.takeover);
        assert!(c.recording.enabled);
        assert_eq!(c.http.segment_max_age_secs, 1_209_600);
        assert_eq!(c.http.missing_max_age_secs, 1);
    }

    #[test]
    fn playlist_max_age_defaults_to_half_the_target_duration() {
        let mut c = Config::default();
        assert_eq!(c.playlist_max_age_secs(), 1);
        c.hls.target_duration_ms = 6000;
        assert_eq!(c.playlist_max_age_secs(), 3);
        c.http.playlist_max_age_secs = Some(7);
        assert_eq!(c.playlist_max_age_secs(), 7);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[hls]\ntarget_duration = 2000\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected_naming_the_key() {
        for (toml, key) in [
            ("[hls]\ntarget_duration_ms = 100", "hls.target_duration_ms"),
            ("[hls]\nwindow_segments = 2", "hls.window_segments"),
            ("[rtmp]\napp = \"a/b\"", "rtmp.app"),
            (
                "[rtmp]\nmax_stream_name_bytes = 0",
                "rtmp.max_stream_name_bytes",
            ),
            ("[rtmp]\nread_interval_ms = 101", "rtmp.read_interval_ms"),
            ("[auth]\ncallback_url = \"ftp://x/\"", "auth.callback_url"),
            ("[auth]\nallowed_keys = [\"\"]", "auth.allowed_keys"),
            ("[recording]\nmax_bytes = 10", "recording.max_bytes"),
            (
                "[recording.post_record_hook]\ncommand = \"\"",
                "recording.post_record_hook.command",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err}");
        }
    }

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("origin.example.toml");
        let c = Config::from_file(&path).unwrap();
        // The example sets every key to its default; drift between the two is a doc bug.
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_example_config_documents_every_field() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("origin.example.toml");
        let text = example_config::with_optional_keys(&std::fs::read_to_string(path).unwrap());
        // deny_unknown_fields: a key of the example that no field takes fails here.
        let config = Config::from_toml(&text).unwrap();
        example_config::assert_documents_every_field(
            "origin.example.toml",
            &text,
            &serde_json::to_value(&config).unwrap(),
            &[],
        );
    }
}
