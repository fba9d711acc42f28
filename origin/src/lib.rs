//! Placeholder until the crate's first module lands.

pub mod publisher;
pub mod rtmp;
