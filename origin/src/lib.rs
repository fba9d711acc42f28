//! Parallax origin: RTMP ingest → live HLS for a cache tier, recording every publish for VOD.
//!
//! Encoders publish `rtmp://HOST:1935/live/<stream>`; players and caches fetch
//! `http://HOST:8080/live/<stream>/index.m3u8`. Two origins fed the same encoder output serve
//! interchangeable HLS (same URIs, sequence numbers, EXTINF and PTS), because segment numbering
//! is derived from the stream's own timestamps.
//!
//! # Layout
//!
//! The media path, one stage per module:
//!
//! ```text
//! rtmp::server ──▶ hub::Publication ──▶ media::Packager ──▶ hub stream task ──▶ store (live/<s>/) ──▶ http
//!   (dechunk,       (in the connection's    (FLV → TS,         (segments only)      └──▶ record (vod/<s>/<id>/)
//!    auth)           task)                   segmenter, m3u8)
//! ```
//!
//! - [`config`]: the whole [`Config`], its defaults and `validate()`.
//! - [`rtmp`]: the RTMP listener: handshake, chunk-stream reassembly ([`rtmp::dechunk`]),
//!   media handed to the packager, rml_rtmp session events for the rest, publish
//!   authorization ([`rtmp::auth`]), acknowledgements ([`rtmp::ack`]), paced reads while
//!   publishing ([`rtmp::socket`]).
//! - [`hub`]: the registry of live streams; the publishing connection drives the stream's
//!   packager, and one task per stream writes its segments, handles takeover and the
//!   reconnect grace.
//! - [`media`]: pure FLV → MPEG-TS packaging, epoch-locked segmenting, playlist rendering.
//! - [`store`]: the data directory: atomic playlist and segment writes, availability-time
//!   deletion, safe names.
//! - [`record`]: recordings (hard links of the live segments), VOD playlists, the `/vod` listing,
//!   the post-record hook.
//! - [`http`]: the hyper server for live and VOD HLS.
//! - [`publisher`]: a built-in RTMP publisher looping a bundled test clip.
//!
//! [`run`] starts everything on listeners the caller bound, so `main.rs` and the integration
//! tests (which bind `127.0.0.1:0`) run the same server.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod config;
pub mod http;
pub mod hub;
pub mod media;
pub mod publisher;
pub mod record;
pub mod rtmp;
pub mod store;

pub use config::Config;
pub use hub::Hub;

/// Why the origin stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory cannot be created.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A listener failed.
    #[error("serving: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the origin on already-bound listeners until `shutdown` resolves, then stops: HTTP and
/// RTMP stop accepting, every stream's recording is finalized (and its hook run), and it
/// returns.
///
/// Live playlists are deliberately left **without** ENDLIST: the origin going down (a restart,
/// a deploy) is not the stream ending — the encoder goes on publishing to the partner origin,
/// and a cache that fetched an ENDLIST playlist would tell every viewer the stream is over.
/// ENDLIST is written only when a publisher left and its reconnect grace expired.
///
/// The listen addresses in `config` are ignored here; the caller bound `rtmp` and `http`.
pub async fn run(
    rtmp: TcpListener,
    http: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), OriginError> {
    let config = config.validate()?;
    store::create_dir(&config.data_dir)?;
    tracing::info!(
        rtmp = %rtmp.local_addr()?,
        http = %http.local_addr()?,
        data_dir = %config.data_dir.display(),
        "origin running"
    );

    let hub = Hub::new(&config);
    let rtmp_ctx = Arc::new(rtmp::server::RtmpContext {
        config: config.rtmp.clone(),
        hub: hub.clone(),
        auth: rtmp::auth::Authorizer::new(&config.auth),
        ticker: rtmp::socket::Ticker::new(std::time::Duration::from_millis(
            config.rtmp.read_interval_ms,
        )),
    });
    let http_state = Arc::new(http::HttpState::new(&config));

    // One shutdown signal fanned out to both listeners.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let rtmp_task = tokio::spawn(rtmp::server::serve(
        rtmp,
        rtmp_ctx,
        stopped(stop_rx.clone()),
    ));
    let http_task = tokio::spawn(http::serve(http, http_state, stopped(stop_rx)));

    shutdown.await;
    tracing::info!("shutting down");
    // Streams out of the registry before the publishers' connections drop, so no reconnect
    // grace can end a stream (ENDLIST) while the origin goes down.
    let streams = hub.shutdown();
    // HTTP stops with RTMP, before the streams stop: from now on this origin's playlists no
    // longer advance, and a refused connection sends the cache to the partner at once.
    let _ = stop_tx.send(true);
    let (rtmp_result, http_result) = tokio::join!(rtmp_task, http_task);
    streams.await;
    rtmp_result.map_err(std::io::Error::other)??;
    http_result.map_err(std::io::Error::other)??;
    Ok(())
}
