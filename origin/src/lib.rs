//! Parallax origin: RTMP ingest, live HLS packaging, recording to VOD.

pub mod media;
pub mod publisher;
pub mod rtmp;
