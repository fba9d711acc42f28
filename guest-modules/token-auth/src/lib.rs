//! token-auth: lets a request through only with a valid signed token (see `parallax-token`
//! for the format), else answers 403 with `x-parallax-auth: <reason>`.
//!
//! The token is looked for in a query parameter, a header and a cookie (names configurable).
//! Optionally, a playlist fetched with a query/header token gets a session cookie scoped to the
//! playlist's directory, so players fetch the segments with no token in their URLs.
//!
//! # Layout
//! - [`config`]: the module's config keys, parsed and validated once per instance.
//! - [`auth`]: the decisions, as plain functions of the request, config and time.
//! - `glue` (wasm only in effect): the `wit-bindgen` exports calling into [`auth`].

pub mod auth;
pub mod config;
mod glue;
