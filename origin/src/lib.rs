//! Parallax origin: RTMP ingest → live HLS for a cache tier, recording every publish for VOD.
//!
//! Encoders publish `rtmp://HOST:1935/live/<stream>`; players and caches fetch
//! `http://HOST:8080/live/<stream>/index.m3u8`. Two origins fed the same encoder output serve
//! interchangeable HLS (same URIs, sequence numbers, EXTINF and PTS), because segment numbering
//! is derived from the stream's own timestamps.
//!
//! # Layout
//!
//! - [`config`]: the whole [`Config`], its defaults and `validate()`.
//! - [`rtmp`]: chunk-stream reassembly ([`rtmp::dechunk`]) and publish authorization
//!   ([`rtmp::auth`]).
//! - [`store`]: the data directory layout, atomic writes, safe names.
//! - [`record`]: the `/vod` listing and the post-record hook.
//! - [`media`]: pure FLV → MPEG-TS packaging, segmenting and playlists.
//! - [`http`]: the hyper server for live and VOD HLS.
//! - [`publisher`]: a built-in RTMP publisher looping a bundled test clip.

pub mod config;
pub mod http;
pub mod media;
pub mod publisher;
pub mod record;
pub mod rtmp;
pub mod store;

pub use config::Config;
