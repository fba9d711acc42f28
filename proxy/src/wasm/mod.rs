//! Policy modules: WebAssembly components implementing `wit/policy.wit`
//! (`parallax:policy@0.2.1`), run by wasmtime on the request path, swapped without a restart.
//!
//! # How a module runs
//!
//! 1. At startup [`ModuleHost::start`] builds one engine (epoch interruption, pooling
//!    allocator, on-disk compilation cache) and one linker (the `host` world's imports plus WASI
//!    0.2 with an empty context), then compiles every file `[[wasm.modules]]` names from
//!    `wasm.modules_dir`. Compiling checks that the file is a component, imports nothing else,
//!    and exports at least one hook of the right shape; each entry using the file then gets a
//!    first instance and its `self-test` run with the entry's config. Any failure stops startup
//!    with the module's name and the reason.
//! 2. Per request, `request_filter` asks [`ModuleHost::chain_for`] for the chain matching the
//!    host and path, a snapshot that stays with the request, and runs its request hooks
//!    ([`chain::run_request_hooks`]). Response hooks run in `response_filter`, body hooks on
//!    playlists either before the cache (`upstream_response_body_filter`) or after it
//!    (`response_body_filter`).
//! 3. Every hook call takes an idle instance of that module version, runs under a CPU
//!    deadline and a memory cap, and returns the instance to the pool, or drops it after a trap.
//!    A failed call goes through [`chain::failed`]: one log line, one metric, and the module's
//!    policy (`fail-closed`: answer `failure_status`; `fail-open`: skip it).
//! 4. A new version (watched directory, admin upload, rollback) is compiled and prepared off the
//!    request path and swapped in atomically; requests in flight finish on the old one.
//!
//! # Layout
//!
//! - [`config`]: `[wasm]`, `[[wasm.modules]]`, `[[wasm.chains]]`.
//! - [`host`]: the generated bindings, the per-instance state, the host imports.
//! - [`runtime`]: engine, compiling and checking a version, instances and calls with limits.
//! - [`registry`]: versions per file, the active chains, hot-load, upload, rollback.
//! - [`chain`]: running a chain on a request, header conversions, the failure policy.
//! - [`view`]: the request and response a hook reads through the WIT resources.

pub mod chain;
pub mod config;
pub mod host;
pub mod registry;
pub mod runtime;
pub mod view;

pub use config::{BodyStage, ChainConfig, ConfigValue, FailurePolicy, ModuleConfig, WasmConfig};
pub use registry::{Chain, ModuleHost};
pub use runtime::{ModuleError, Runtime};
