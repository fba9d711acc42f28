//! RTMP ingest: the listener and per-connection sessions ([`server`]), publish authorization
//! ([`auth`]) and the chunk-stream layer in front of rml_rtmp ([`dechunk`]).

pub mod auth;
pub mod dechunk;
pub mod server;
