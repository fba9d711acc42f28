//! RTMP ingest: the listener and per-connection sessions ([`server`]), publish authorization
//! ([`auth`]), the chunk-stream layer in front of rml_rtmp ([`dechunk`]) and acknowledgements
//! with the connection's outbound encoding ([`ack`]).

pub mod ack;
pub mod auth;
pub mod dechunk;
pub mod server;
