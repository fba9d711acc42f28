//! Signed access tokens for Parallax, in the Akamai EdgeAuth style operators already use:
//!
//! ```text
//! exp=1764000000~st=1763990000~acl=/live/cam1/*~hmac=9f2c…(64 hex digits)
//! ```
//!
//! The `hmac` is HMAC-SHA256, keyed by a shared secret, over the token text before `~hmac=`
//! exactly as it appears. `exp` (Unix seconds, exclusive) is required; `st` (Unix seconds, the
//! first valid second) is optional; `acl` is one or more path patterns separated by `!`, where
//! `*` matches any run of characters (slashes included) and `?` exactly one. `id` and `data`
//! are optional opaque fields covered by the signature. Nothing else is accepted.
//!
//! This crate is pure (no I/O, no clock): the caller passes the current time, so it runs the
//! same natively (the `proxy token sign` command) and inside the token-auth Wasm module.
//!
//! # Layout
//! - [`token`]: [`sign`], [`verify`] (or [`authenticate`] once, then [`Claims::admit`] per
//!   request), [`Key`] and the reasons a token is refused.
//! - [`acl`]: the wildcard path patterns.
//! - [`locate`]: finding a token in a query string, a `Cookie` header, and percent-coding.

pub mod acl;
pub mod locate;
pub mod token;

pub use token::{authenticate, sign, verify, Claims, Key, SignParams, TokenError};
