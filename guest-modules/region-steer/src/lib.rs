//! region-steer: the region "copilot" operators deploy as a Lambda@Edge function today, as a
//! policy module. Each viewer has a home region (from a geo header such as
//! `CloudFront-Viewer-Country`, mapped in config). A region is *usable* while its state in the
//! key-value store is not `closed` (`region/<name>/state`, set with
//! `POST /regions/<name>/close|open` on the admin API) and its upstream group has a healthy
//! origin. A viewer whose region is not usable goes to the first usable region instead: the
//! request is sent to that region's upstream group, or answered with a 302 to its domain. A
//! cookie keeps the viewer where it went while that region stays usable, so players do not
//! flap between regions when the home region comes back mid-stream.
//!
//! The store being unreachable never fails a request: the last state this instance saw is
//! used, or `open` if it never saw one.
//!
//! # Layout
//! - [`config`]: the module's config keys, parsed once per instance.
//! - [`steer`]: the decision, a plain function of the request, the config and an [`steer::Env`]
//!   (store and health lookups), so it is tested natively with a fake.
//! - `glue`: the wit-bindgen exports and the real `Env` over the host imports.

pub mod config;
mod glue;
pub mod steer;
