//! Compiling, validating and calling modules: the wasmtime [`Engine`] and [`Linker`] (built
//! once), a module version's compiled [`Code`], and a [`Bound`] module — one
//! `[[wasm.modules]]` entry's config on one version of its code, with its pool of instances.
//!
//! # Instances
//!
//! A hook call runs synchronously on the proxy worker thread that handles the request, so at
//! most one call per worker thread is in flight at any moment. A [`Bound`] keeps the instances
//! that are not in a call in a small pool: a call takes one (or instantiates one from the
//! `InstancePre`, from the pooling allocator's pre-reserved slots), and puts it back afterwards.
//! An instance that trapped or timed out is dropped instead, since its state may be half
//! updated. So instances are reused across requests (as Envoy reuses proxy-wasm VMs), never
//! shared between two calls at once, and never outlive their version.
//!
//! # Limits
//!
//! - CPU: epoch interruption. A ticker thread advances the engine's epoch every millisecond;
//!   each call gets a deadline of `cpu_ms_per_call + 1` ticks. When it passes, the thread's CPU
//!   clock starts counting, and the call is interrupted once it has used another
//!   `cpu_ms_per_call` of CPU time (or after 20 times that in wall-clock time): a runaway call
//!   ends after about twice its budget, and a call preempted by the scheduler on a busy machine
//!   is not charged for the time it did not run ([`host::CallClock`]).
//! - Memory: each store's [`wasmtime::StoreLimits`] cap linear memory at `memory_bytes`.
//! - Capabilities: the linker has the `host` world's imports and WASI 0.2 with an empty context;
//!   a module importing anything else is rejected when it is loaded.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use super::chain::Hook;
use super::config::{BodyStage, FailurePolicy, ModuleConfig, WasmConfig};
use super::host::{self, wit, CallClock, HostServices, HostState, ModuleContext};
use super::view::{Lent, ResponseView, SharedRequest};

/// The hook interfaces a module may export, by their WIT names.
pub const REQUEST_HOOK: &str = "parallax:policy/request-hook@0.2.1";
/// See [`REQUEST_HOOK`].
pub const RESPONSE_HOOK: &str = "parallax:policy/response-hook@0.2.1";
/// See [`REQUEST_HOOK`].
pub const BODY_HOOK: &str = "parallax:policy/body-hook@0.2.1";
/// See [`REQUEST_HOOK`].
pub const SELF_TEST: &str = "parallax:policy/self-test@0.2.1";
/// See [`REQUEST_HOOK`].
pub const HOOK_NEEDS: &str = "parallax:policy/hook-needs@0.2.1";
/// The WIT package these names belong to.
pub const PACKAGE: &str = "parallax:policy@0.2.1";

/// Upper bound on module instances alive at once in the process (the pooling allocator reserves
/// slots for them up front). Each worker thread holds at most one instance per bound module at
/// a time, plus the ones pooled; with tens of modules and a few versions kept warm this leaves
/// ample room.
const MAX_INSTANCES: u32 = 512;

/// Why a module version was not loaded. Each variant is a stage of loading.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The module file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is over `wasm.max_module_bytes`.
    #[error("module is {size} bytes, over wasm.max_module_bytes ({max})")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A core WebAssembly module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build it with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    NotAComponent,
    /// wasmtime could not parse, validate or compile it.
    #[error("invalid component: {0}")]
    Compile(String),
    /// It imports something the host does not provide (filesystem, sockets, an unknown
    /// interface, another version of ours).
    #[error("imports something this proxy does not provide: {0}")]
    Imports(String),
    /// Its exports do not match `parallax:policy@0.2.1`.
    #[error("exports: {0}")]
    Exports(String),
    /// Instantiating it failed (start function trapped, memory over the cap, ...).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// Its `self-test` export returned an error or trapped.
    #[error("self-test failed for module {module:?}: {reason}")]
    SelfTest {
        /// The `[[wasm.modules]]` entry whose config was tested.
        module: String,
        /// The module's message, or the trap.
        reason: String,
    },
    /// The engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
}

impl ModuleError {
    /// Short label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ModuleError::Read { .. } => "read",
            ModuleError::TooLarge { .. } => "too_large",
            ModuleError::NotAComponent => "not_a_component",
            ModuleError::Compile(_) => "compile",
            ModuleError::Imports(_) => "imports",
            ModuleError::Exports(_) => "exports",
            ModuleError::Instantiate(_) => "instantiate",
            ModuleError::SelfTest { .. } => "self_test",
            ModuleError::Engine(_) => "engine",
        }
    }
}

/// The engine, linker and epoch ticker: one per process, built at startup.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    max_module_bytes: usize,
    ticker: Mutex<Option<u32>>,
}

impl Runtime {
    /// An engine with epoch interruption, the pooling allocator sized for `config`, and
    /// wasmtime's on-disk compilation cache when `config` has one.
    pub fn new(config: &WasmConfig) -> Result<Arc<Self>, ModuleError> {
        let engine_err = |e: wasmtime::Error| ModuleError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 4)
            .total_memories(MAX_INSTANCES)
            .total_tables(MAX_INSTANCES * 4)
            .max_memory_size(usize::try_from(config.memory_bytes).unwrap_or(usize::MAX));
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if let Some(dir) = config.cache_dir() {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            wasm.cache(Some(wasmtime::Cache::new(cache).map_err(engine_err)?));
        }
        let engine = Engine::new(&wasm).map_err(engine_err)?;
        let linker = host::linker(&engine).map_err(engine_err)?;
        let runtime = Arc::new(Runtime {
            engine,
            linker,
            max_module_bytes: config.max_module_bytes,
            ticker: Mutex::new(None),
        });
        runtime.ensure_ticking();
        Ok(runtime)
    }

    /// Starts the epoch ticker thread unless one runs in this process already. Threads do not
    /// survive pingora's daemonizing fork, so this is called again from a background service
    /// once the server runs.
    pub fn ensure_ticking(&self) {
        let pid = std::process::id();
        let mut ticker = self.ticker.lock().unwrap_or_else(PoisonError::into_inner);
        if *ticker == Some(pid) {
            return;
        }
        let engine = self.engine.clone();
        let spawned = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(1));
                engine.increment_epoch();
            });
        match spawned {
            Ok(_) => *ticker = Some(pid),
            Err(e) => tracing::error!(error = %e, "cannot start the wasm epoch ticker"),
        }
    }

    /// Compiles and checks `bytes`: a component, importing only what the host provides,
    /// exporting at least one known hook with the right functions.
    /// `hash` is [`content_hash`] of `bytes`, which the caller has computed already.
    pub fn compile(&self, bytes: Vec<u8>, hash: String) -> Result<Code, ModuleError> {
        if bytes.len() > self.max_module_bytes {
            return Err(ModuleError::TooLarge {
                size: bytes.len(),
                max: self.max_module_bytes,
            });
        }
        // The preamble: `\0asm`, then version 1 and layer 0 for a core module (a component has
        // layer 1).
        if bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err(ModuleError::NotAComponent);
        }
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        check_package_version(&component, &self.engine)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ModuleError::Imports(format!("{e:#}")))?;
        let exports = Exports::find(&pre, &component, &self.engine)?;
        Ok(Code {
            hash,
            bytes: Arc::new(bytes),
            pre,
            exports,
            loaded_at: SystemTime::now(),
        })
    }

    /// The engine, for stores.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// What `proxy module check` runs: every check a load makes (component, imports, exports,
/// first instance, self-test with `entry`'s config), offline and without a cache. Returns the
/// module bound to `entry`, ready to call.
pub fn check(
    bytes: Vec<u8>,
    entry: &ModuleConfig,
    services: HostServices,
) -> Result<Arc<Bound>, ModuleError> {
    let config = WasmConfig {
        cache_dir: Some(std::path::PathBuf::new()),
        ..WasmConfig::default()
    };
    let runtime = Runtime::new(&config)?;
    let hash = content_hash(&bytes);
    let code = Arc::new(runtime.compile(bytes, hash)?);
    let spec = Arc::new(ModuleSpec::new(entry, &config));
    Bound::prepare(spec, code, runtime, Arc::new(services))
}

/// Refuses a module built against another version of `parallax:policy` with a message naming
/// both versions, instead of the linker's "unknown import" for the first interface it meets.
/// Modules built against an earlier patch of this minor version load: patches only add
/// (wasmtime matches `@0.2.0` names with our `@0.2.1` definitions).
fn check_package_version(component: &Component, engine: &Engine) -> Result<(), ModuleError> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(name, _)| name)
        .chain(ty.exports(engine).map(|(name, _)| name));
    for name in names {
        let Some(rest) = name.strip_prefix("parallax:policy/") else {
            continue;
        };
        let version = rest.split_once('@').map_or("", |(_, v)| v);
        if !speaks(version) {
            return Err(ModuleError::Imports(format!(
                "built against parallax:policy@{version} ({name}), but this proxy speaks \
                 {PACKAGE}: rebuild the module against this release's wit/ (docs/modules.md, \
                 \"Interface versions\")"
            )));
        }
    }
    Ok(())
}

/// Whether a module built against interface `version` runs here: the same major and minor
/// version as [`PACKAGE`]'s (interface versions are below 1.0, where the minor one breaks), and
/// a patch version no newer than ours.
fn speaks(version: &str) -> bool {
    fn parts(version: &str) -> Option<(u64, u64, u64)> {
        let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
        let parsed = (parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(parsed)
    }
    let ours = PACKAGE.rsplit_once('@').and_then(|(_, v)| parts(v));
    match (parts(version), ours) {
        (Some((major, minor, patch)), Some((our_major, our_minor, our_patch))) => {
            major == our_major && minor == our_minor && patch <= our_patch
        }
        _ => false,
    }
}

/// A module version's identity: the SHA-256 of its file, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The export indices of the hooks a version has; `None` for hooks it does not export.
struct Exports {
    request: Option<wit::request_hook::GuestIndices>,
    response: Option<wit::response_hook::GuestIndices>,
    body: Option<wit::body_hook::GuestIndices>,
    self_test: Option<wit::self_test::GuestIndices>,
    needs: Option<wit::hook_needs::GuestIndices>,
}

impl Exports {
    fn find(
        pre: &InstancePre<HostState>,
        component: &Component,
        engine: &Engine,
    ) -> Result<Self, ModuleError> {
        fn optional<T>(
            component: &Component,
            name: &str,
            indices: impl FnOnce() -> wasmtime::Result<T>,
        ) -> Result<Option<T>, ModuleError> {
            if component.get_export_index(None, name).is_none() {
                return Ok(None);
            }
            indices()
                .map(Some)
                .map_err(|e| ModuleError::Exports(format!("{name}: {e:#}")))
        }
        let exports = Exports {
            request: optional(component, REQUEST_HOOK, || {
                wit::request_hook::GuestIndices::new(pre)
            })?,
            response: optional(component, RESPONSE_HOOK, || {
                wit::response_hook::GuestIndices::new(pre)
            })?,
            body: optional(component, BODY_HOOK, || {
                wit::body_hook::GuestIndices::new(pre)
            })?,
            self_test: optional(component, SELF_TEST, || {
                wit::self_test::GuestIndices::new(pre)
            })?,
            needs: optional(component, HOOK_NEEDS, || {
                wit::hook_needs::GuestIndices::new(pre)
            })?,
        };
        if exports.request.is_none() && exports.response.is_none() && exports.body.is_none() {
            let found: Vec<String> = component
                .component_type()
                .exports(engine)
                .map(|(name, _)| name.to_owned())
                .collect();
            return Err(ModuleError::Exports(format!(
                "no hook this proxy calls ({REQUEST_HOOK}, {RESPONSE_HOOK} or {BODY_HOOK}); \
                 the module exports [{}]",
                found.join(", ")
            )));
        }
        Ok(exports)
    }
}

/// One compiled, checked version of a module file.
pub struct Code {
    /// SHA-256 of the file, hex: the version's identity.
    pub hash: String,
    /// The file itself, kept to persist or re-activate this version.
    pub bytes: Arc<Vec<u8>>,
    pre: InstancePre<HostState>,
    exports: Exports,
    /// When it was compiled.
    pub loaded_at: SystemTime,
}

impl Code {
    /// The hooks this version exports, by WIT interface name.
    pub fn hooks(&self) -> Vec<&'static str> {
        let e = &self.exports;
        [
            (e.request.is_some(), "request-hook"),
            (e.response.is_some(), "response-hook"),
            (e.body.is_some(), "body-hook"),
            (e.self_test.is_some(), "self-test"),
            (e.needs.is_some(), "hook-needs"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }

    /// The first 12 hex digits of the hash, as versions are shown.
    pub fn short(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }
}

/// A `[[wasm.modules]]` entry as the runtime needs it.
pub struct ModuleSpec {
    /// Name, config and counters.
    pub context: Arc<ModuleContext>,
    /// The file stem its code comes from.
    pub file: String,
    /// Fail-open or fail-closed.
    pub failure: FailurePolicy,
    /// Status of a fail-closed failure.
    pub failure_status: u16,
    /// Where its body hook runs.
    pub body_stage: BodyStage,
    /// CPU time per call (`cpu_ms_per_call`).
    cpu_budget: Duration,
    memory_bytes: u64,
}

impl ModuleSpec {
    /// The runtime view of `entry` under the `[wasm]` defaults of `config`.
    pub fn new(entry: &ModuleConfig, config: &WasmConfig) -> Self {
        Self {
            context: Arc::new(ModuleContext::new(&entry.name, entry.config_strings())),
            file: entry.file_stem().to_owned(),
            failure: entry.failure,
            failure_status: entry.failure_status,
            body_stage: entry.body_stage,
            cpu_budget: Duration::from_millis(
                entry.cpu_ms_per_call.unwrap_or(config.cpu_ms_per_call),
            ),
            memory_bytes: entry.memory_bytes.unwrap_or(config.memory_bytes),
        }
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.context.name
    }
}

/// Why one hook call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// It ran past its CPU deadline.
    Timeout,
    /// It trapped (panic, unreachable, out of memory, ...).
    Trap(String),
    /// No instance could be made (memory cap below the module's minimum, pool exhausted).
    Instantiate(String),
    /// It returned something the host refuses (bad status, oversized body, invalid header).
    BadReturn(String),
}

impl CallError {
    /// The `outcome` label of `parallax_module_calls_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Trap(_) => "trap",
            CallError::Instantiate(_) => "instantiate_error",
            CallError::BadReturn(_) => "bad_return",
        }
    }

    fn from_wasmtime(e: &wasmtime::Error) -> Self {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout,
            _ => CallError::Trap(first_line(&format!("{e:#}"))),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("ran past its CPU deadline"),
            CallError::Trap(why) => write!(f, "trapped: {why}"),
            CallError::Instantiate(why) => write!(f, "cannot instantiate: {why}"),
            CallError::BadReturn(why) => write!(f, "bad return: {why}"),
        }
    }
}

/// Header changes that change nothing.
fn no_changes() -> wit::HeaderChanges {
    wit::HeaderChanges {
        remove: Vec::new(),
        set: Vec::new(),
        append: Vec::new(),
    }
}

/// Runs a guest call, turning a trap into [`CallError`] and a panic that unwinds out of it into
/// a trap as well.
///
/// wasmtime-wasi's synchronous bindings run their blocking functions (stream writes such as
/// stderr, `poll`) through `Handle::block_on`, which panics on a tokio worker thread — where
/// every hook runs. A Rust guest writes its panic message to stderr, so any guest that panics
/// would otherwise take the worker thread down with it. wasmtime carries a host panic back out
/// through the wasm frames; it is caught here and the instance is dropped like after any trap.
fn contained<R>(call: impl FnOnce() -> wasmtime::Result<R>) -> Result<R, CallError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(CallError::from_wasmtime(&e)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(CallError::Trap(
                if message.contains("Cannot start a runtime") {
                    "called a blocking WASI function (stdout/stderr, poll, sleep), which modules \
                     cannot use on the request path (a Rust panic message goes to stderr)"
                        .to_owned()
                } else {
                    format!("host panic: {}", first_line(&message))
                },
            ))
        }
    }
}

/// The message without wasmtime's multi-line wasm backtrace, for one log line.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line[..line.floor_char_boundary(512)].to_owned()
}

/// A live instance and its loaded hook functions.
pub struct Instance {
    store: Store<HostState>,
    request: Option<wit::request_hook::Guest>,
    response: Option<wit::response_hook::Guest>,
    body: Option<wit::body_hook::Guest>,
    self_test: Option<wit::self_test::Guest>,
    needs: Option<wit::hook_needs::Guest>,
}

/// A module entry bound to one version of its code, with its pool of idle instances.
pub struct Bound {
    /// The entry.
    pub spec: Arc<ModuleSpec>,
    /// The version.
    pub code: Arc<Code>,
    runtime: Arc<Runtime>,
    services: Arc<HostServices>,
    idle: Mutex<Vec<Instance>>,
    /// `parallax_module_calls_total{outcome="ok"}` per [`Hook`] (in `Hook::ALL` order),
    /// resolved once instead of a label lookup per call.
    ok_calls: [prometheus::IntCounter; 3],
    /// Whether each [`Hook`] (in `Hook::ALL` order) is exported and, if the module exports
    /// `hook-needs`, needed under this entry's config.
    calls: [bool; 3],
}

impl Bound {
    /// Binds `spec` to `code`, makes a first instance (so the version's memory needs and start
    /// function are checked now, not on a request) and runs its self-test if it exports one.
    pub fn prepare(
        spec: Arc<ModuleSpec>,
        code: Arc<Code>,
        runtime: Arc<Runtime>,
        services: Arc<HostServices>,
    ) -> Result<Arc<Self>, ModuleError> {
        let ok_calls = Hook::ALL.map(|hook| {
            services
                .metrics
                .module_calls
                .with_label_values(&[spec.name(), hook.as_str(), "ok"])
        });
        let exports = &code.exports;
        let exported = [
            exports.request.is_some(),
            exports.response.is_some(),
            exports.body.is_some(),
        ];
        let mut bound = Bound {
            spec,
            code,
            runtime,
            services,
            idle: Mutex::new(Vec::new()),
            ok_calls,
            calls: exported,
        };
        let mut instance = bound
            .instantiate()
            .map_err(|e| ModuleError::Instantiate(e.to_string()))?;
        let self_test = |reason: String| ModuleError::SelfTest {
            module: bound.spec.name().to_owned(),
            reason,
        };
        if let Some(test) = &instance.self_test {
            bound.start_call(&mut instance.store);
            match contained(|| test.call_run(&mut instance.store)) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(self_test(message)),
                Err(e) => return Err(self_test(e.to_string())),
            }
        }
        if let Some(needs) = &instance.needs {
            bound.start_call(&mut instance.store);
            let needed = contained(|| needs.call_needed(&mut instance.store))
                .map_err(|e| self_test(format!("hook-needs: {e}")))?;
            use wit::hook_needs::Hooks;
            let wanted = [Hooks::REQUEST, Hooks::RESPONSE, Hooks::BODY].map(|h| needed & h == h);
            bound.calls = std::array::from_fn(|i| exported[i] && wanted[i]);
        }
        bound.put_back(instance);
        Ok(Arc::new(bound))
    }

    /// Counts a call of `hook` that went well.
    pub fn count_ok(&self, hook: Hook) {
        self.ok_calls[hook as usize].inc();
    }

    /// Whether the request hook is to be called: exported, and needed (WIT `hook-needs`).
    pub fn has_request_hook(&self) -> bool {
        self.calls[Hook::Request as usize]
    }

    /// Whether the response hook is to be called: exported, and needed.
    pub fn has_response_hook(&self) -> bool {
        self.calls[Hook::Response as usize]
    }

    /// Whether the body hook is to be called for `stage`: exported, needed, and configured for
    /// that stage.
    pub fn has_body_hook(&self, stage: BodyStage) -> bool {
        self.calls[Hook::Body as usize] && self.spec.body_stage == stage
    }

    fn instantiate(&self) -> Result<Instance, CallError> {
        let state = HostState::new(
            self.spec.context.clone(),
            self.services.clone(),
            self.spec.memory_bytes,
        );
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut store| {
            Ok(match store.data_mut().call.verdict() {
                Some(ticks) => UpdateDeadline::Continue(ticks),
                None => UpdateDeadline::Interrupt,
            })
        });
        self.start_call(&mut store);
        let fail = |e: wasmtime::Error| CallError::Instantiate(first_line(&format!("{e:#}")));
        let instance =
            contained(|| self.code.pre.instantiate(&mut store)).map_err(|e| match e {
                CallError::Trap(why) => CallError::Instantiate(why),
                other => other,
            })?;
        let exports = &self.code.exports;
        let request = exports
            .request
            .as_ref()
            .map(|i| i.load(&mut store, &instance));
        let response = exports
            .response
            .as_ref()
            .map(|i| i.load(&mut store, &instance));
        let body = exports.body.as_ref().map(|i| i.load(&mut store, &instance));
        let self_test = exports
            .self_test
            .as_ref()
            .map(|i| i.load(&mut store, &instance));
        let needs = exports
            .needs
            .as_ref()
            .map(|i| i.load(&mut store, &instance));
        Ok(Instance {
            request: request.transpose().map_err(fail)?,
            response: response.transpose().map_err(fail)?,
            body: body.transpose().map_err(fail)?,
            self_test: self_test.transpose().map_err(fail)?,
            needs: needs.transpose().map_err(fail)?,
            store,
        })
    }

    /// Arms the CPU deadline for a call about to start on `store`.
    fn start_call(&self, store: &mut Store<HostState>) {
        let budget = self.spec.cpu_budget;
        store.data_mut().call = CallClock::start(budget);
        // Epoch ticks are milliseconds; +1 because the deadline counts whole ticks from a point
        // inside the current one.
        let ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
        store.set_epoch_deadline(ms.saturating_add(1));
    }

    fn put_back(&self, instance: Instance) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(instance);
    }

    /// Runs `call` on an idle instance (or a new one) under the CPU deadline. The instance goes
    /// back to the pool after a clean return and is dropped after a trap.
    fn with_instance<R>(
        &self,
        call: impl FnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate()?,
        };
        self.start_call(&mut instance.store);
        match contained(|| call(&mut instance)) {
            Ok(value) => {
                self.put_back(instance);
                Ok(value)
            }
            Err(e) => Err(e),
        }
    }

    /// Calls `on-request` with `req` lent to it. Also returns whether the module asked for its
    /// response hook to be skipped on this request (WIT `request-scope`).
    pub fn on_request(&self, req: &SharedRequest) -> Result<(wit::RequestAction, bool), CallError> {
        self.with_instance(|i| {
            let Some(hook) = &i.request else {
                return Ok((wit::RequestAction::Continue, false));
            };
            let state = i.store.data_mut();
            state.skip_response = false;
            let lent = Lent::lend(&mut state.table, req.clone())?;
            let action = hook.call_on_request(&mut i.store, lent.handle())?;
            let state = i.store.data_mut();
            lent.take_back(&mut state.table)?;
            Ok((action, state.skip_response))
        })
    }

    /// Calls `on-response` with `req` and the view in `resp` lent to it. The view goes back
    /// into `resp` after a clean call, for the next module; after a failed one `resp` is empty.
    pub fn on_response(
        &self,
        req: &SharedRequest,
        resp: &mut Option<ResponseView>,
    ) -> Result<wit::HeaderChanges, CallError> {
        self.with_instance(|i| {
            let Some(hook) = &i.response else {
                return Ok(no_changes());
            };
            let Some(view) = resp.take() else {
                return Ok(no_changes());
            };
            let table = &mut i.store.data_mut().table;
            let lent_req = Lent::lend(table, req.clone())?;
            let lent_resp = Lent::lend(table, view)?;
            let changes =
                hook.call_on_response(&mut i.store, lent_req.handle(), lent_resp.handle())?;
            let table = &mut i.store.data_mut().table;
            lent_req.take_back(table)?;
            *resp = Some(lent_resp.take_back(table)?);
            Ok(changes)
        })
    }

    /// Calls `rewrite-body` with `req` lent to it.
    pub fn rewrite_body(
        &self,
        req: &SharedRequest,
        content_type: &str,
        body: &[u8],
    ) -> Result<wit::BodyAction, CallError> {
        self.with_instance(|i| {
            let Some(hook) = &i.body else {
                return Ok(wit::BodyAction::Unchanged);
            };
            let lent = Lent::lend(&mut i.store.data_mut().table, req.clone())?;
            let action = hook.call_rewrite_body(&mut i.store, lent.handle(), content_type, body)?;
            lent.take_back(&mut i.store.data_mut().table)?;
            Ok(action)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Arc<Runtime> {
        let config = WasmConfig {
            cache_dir: Some(std::path::PathBuf::new()),
            ..WasmConfig::default()
        };
        Runtime::new(&config).unwrap()
    }

    #[test]
    fn earlier_patches_of_the_interface_are_spoken_other_minors_and_later_patches_are_not() {
        assert!(speaks("0.2.0"));
        assert!(speaks("0.2.1"));
        for version in [
            "0.2.2", "0.1.0", "0.3.0", "1.2.1", "0.2", "0.2.1.0", "", "0.2.x",
        ] {
            assert!(!speaks(version), "{version}");
        }
    }

    #[test]
    fn a_module_built_against_another_interface_version_is_refused_naming_both() {
        let old = wat::parse_str(
            r#"(component
                 (import "parallax:policy/log@0.1.0" (instance
                   (export "log" (func (param "message" string))))))"#,
        )
        .unwrap();
        let hash = content_hash(&old);
        let Err(err) = runtime().compile(old, hash) else {
            panic!("a 0.1.0 module was accepted");
        };
        let message = err.to_string();
        assert_eq!(err.as_str(), "imports");
        assert!(message.contains("parallax:policy@0.1.0"), "{message}");
        assert!(message.contains(PACKAGE), "{message}");
        assert!(message.contains("rebuild"), "{message}");
    }
}
