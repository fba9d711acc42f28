//! RTMP ingest: the chunk-stream layer in front of rml_rtmp.

pub mod dechunk;
