//! Placeholder until the crate's first module lands.
pub mod health;
pub mod metrics;
pub mod rules;
pub mod storage;
pub mod upstream;
