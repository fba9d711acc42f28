//! RTMP ingest: the listener and per-connection sessions ([`server`]), publish authorization
//! ([`auth`]), the chunk-stream layer in front of rml_rtmp ([`dechunk`]), acknowledgements
//! with the connection's outbound encoding ([`ack`]) and the socket, read on a timer while
//! publishing ([`socket`]).

pub mod ack;
pub mod auth;
pub mod dechunk;
pub mod server;
pub mod socket;
