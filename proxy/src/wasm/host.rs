//! The host side of `wit/policy.wit`: the generated bindings, the state every module instance
//! carries ([`HostState`]), and the imports a module may call (log, clock, config, kv,
//! upstreams, counters).
//!
//! `bindgen!` output stays in the private `generated` module; the types the rest of the proxy
//! needs are re-exported under [`wit`]. Imports are plain (not trappable): none of them can fail
//! in a way the guest should not see as a value, so a host function never traps a guest.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::kv::{KvError, KvStore};
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// The bindings for world `parallax:policy/policy`; its items are documented in the WIT file.
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
        with: {
            "parallax:policy/types.request": crate::wasm::view::SharedRequest,
            "parallax:policy/types.response": crate::wasm::view::ResponseView,
        },
    });
}

/// The WIT types the request path converts to and from, and the export bindings.
pub mod wit {
    pub use super::generated::exports::parallax::policy::{
        body_hook, hook_needs, request_hook, response_hook, self_test,
    };
    pub use super::generated::parallax::policy::types::{
        BodyAction, Header, HeaderChanges, HostRequest, HostResponse, LocalResponse, Redirect,
        RequestAction, Rewrite,
    };
}

use generated::parallax::policy::{
    clock, config, counters, kv, log, request_scope, types, upstreams,
};

/// Largest log message a module may write; longer ones are cut (WIT `log`).
const MAX_LOG_BYTES: usize = 4096;
/// Distinct counter names one module may create (WIT `counters`): each is a metric series.
pub const MAX_COUNTER_NAMES: usize = 64;

/// What every instance of every module shares: the process's key-value store, upstream groups
/// and metrics.
pub struct HostServices {
    /// The key-value store behind the `kv` import.
    pub kv: Arc<dyn KvStore>,
    /// Upstream groups behind the `upstreams` import; `None` offline (`proxy module check`).
    pub upstreams: Option<Upstreams>,
    /// Where counters and call outcomes are counted.
    pub metrics: Arc<Metrics>,
}

impl HostServices {
    /// Services for a module run outside a proxy (`proxy module check`, the hook-cost example):
    /// a private in-process key-value store, no upstream groups, a private metrics registry.
    pub fn standalone() -> Result<Self, crate::metrics::MetricsError> {
        Ok(Self {
            kv: Arc::new(crate::kv::MemoryKv::new(1 << 20)),
            upstreams: None,
            metrics: Arc::new(Metrics::new()?),
        })
    }
}

/// The identity and config of one `[[wasm.modules]]` entry, shared by all its instances.
pub struct ModuleContext {
    /// The entry's name (`module` label of logs and metrics).
    pub name: Arc<str>,
    /// The `config` table, sorted by key.
    pub config: BTreeMap<String, String>,
    /// Counter handles by name, at most [`MAX_COUNTER_NAMES`].
    counters: Mutex<HashMap<String, IntCounter>>,
}

impl ModuleContext {
    /// A context for the entry `name` with its `config`.
    pub fn new(name: &str, config: BTreeMap<String, String>) -> Self {
        Self {
            name: name.into(),
            config,
            counters: Mutex::new(HashMap::new()),
        }
    }
}

/// The data of one module instance's `Store`.
pub struct HostState {
    module: Arc<ModuleContext>,
    services: Arc<HostServices>,
    /// The memory cap (and instance/table bounds) the store enforces.
    pub(crate) limits: StoreLimits,
    /// WASI 0.2 with nothing granted: no preopened directories, no environment or arguments,
    /// no sockets, closed stdio. Rust-std guests import these interfaces even when unused.
    wasi: WasiCtx,
    /// WASI's resources and the request and response lent to the call in progress.
    pub(crate) table: ResourceTable,
    /// When the current call started, for its CPU deadline.
    pub(crate) call: CallClock,
    /// Set by WIT `request-scope.skip-response-hook`; cleared before each `on-request` call and
    /// read after it.
    pub(crate) skip_response: bool,
}

/// The CPU budget of the call in progress.
///
/// Epoch ticks count wall-clock time, and on a busy machine a worker thread can be preempted
/// for several milliseconds in the middle of a call. So the first epoch deadline (one budget of
/// wall-clock time) only starts a stopwatch on the *thread's CPU time*, and later deadlines
/// interrupt the call once that stopwatch shows another full budget ([`CallClock::verdict`]),
/// or once wall-clock time passes a generous backstop. A runaway call thus ends after about
/// twice its budget; a call the scheduler merely paused is not cut short. Nothing is read at
/// the start of a call: the thread's CPU clock is a system call, too dear for every hook.
#[derive(Debug, Clone, Copy)]
pub struct CallClock {
    budget: Duration,
    /// The thread's CPU time and the wall-clock time when the first deadline fired.
    mark: Option<(Duration, std::time::Instant)>,
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

impl CallClock {
    /// A call with `budget` of CPU time, starting now.
    pub fn start(budget: Duration) -> Self {
        Self { budget, mark: None }
    }

    /// At an epoch deadline: `None` to interrupt the call, else the milliseconds (epoch ticks)
    /// to extend it by.
    pub fn verdict(&mut self) -> Option<u64> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let now = thread_cpu_time();
        let Some((cpu_mark, wall_mark)) = self.mark else {
            self.mark = Some((now, std::time::Instant::now()));
            return Some(ms(self.budget));
        };
        let used = now.saturating_sub(cpu_mark);
        let backstop = (self.budget * 20).max(Duration::from_millis(100));
        if used >= self.budget || wall_mark.elapsed() >= backstop {
            return None;
        }
        Some(ms(self.budget - used))
    }
}

impl HostState {
    /// State for an instance of `module` that may grow its memory to `memory_bytes`.
    pub fn new(module: Arc<ModuleContext>, services: Arc<HostServices>, memory_bytes: u64) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
            .table_elements(100_000)
            .instances(64)
            .tables(64)
            .memories(8)
            .build();
        Self {
            module,
            services,
            limits,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            call: CallClock::start(Duration::ZERO),
            skip_response: false,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A linker with every import of the `host` world and WASI 0.2 (empty context).
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    generated::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, mut message: String) {
        if message.len() > MAX_LOG_BYTES {
            message.truncate(message.floor_char_boundary(MAX_LOG_BYTES));
            message.push('…');
        }
        let module = &*self.module.name;
        // The request span of the calling request is current, so its fields come along.
        match level {
            log::Level::Trace => tracing::trace!(target: "module", module, "{message}"),
            log::Level::Debug => tracing::debug!(target: "module", module, "{message}"),
            log::Level::Info => tracing::info!(target: "module", module, "{message}"),
            log::Level::Warn => tracing::warn!(target: "module", module, "{message}"),
            log::Level::Error => tracing::error!(target: "module", module, "{message}"),
        }
    }
}

impl request_scope::Host for HostState {
    fn skip_response_hook(&mut self) {
        self.skip_response = true;
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.module.config.get(&key).cloned()
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.module
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn kv_error(e: KvError) -> kv::KvError {
    match e {
        KvError::Unavailable(why) => kv::KvError::Unavailable(why),
        KvError::TooLarge => kv::KvError::TooLarge,
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, kv::KvError> {
        self.services.kv.get(&key).map_err(kv_error)
    }

    fn set(&mut self, key: String, value: String, ttl_ms: Option<u64>) -> Result<(), kv::KvError> {
        let ttl = ttl_ms.map(Duration::from_millis);
        self.services.kv.set(&key, &value, ttl).map_err(kv_error)
    }

    fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<String>,
        value: String,
        ttl_ms: Option<u64>,
    ) -> Result<bool, kv::KvError> {
        let ttl = ttl_ms.map(Duration::from_millis);
        self.services
            .kv
            .compare_and_set(&key, expected.as_deref(), &value, ttl)
            .map_err(kv_error)
    }

    fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        self.services.kv.delete(&key).map_err(kv_error)
    }
}

impl upstreams::Host for HostState {
    fn usable(&mut self, name: String) -> Option<bool> {
        let group = self.services.upstreams.as_ref()?.group(&name)?;
        let usable = group.origin_ids().any(|origin| group.is_healthy(origin));
        Some(usable)
    }

    fn group(&mut self, name: String) -> Option<upstreams::GroupHealth> {
        let group = self.services.upstreams.as_ref()?.group(&name)?;
        let status = group.status();
        let active = if status.origins.iter().any(|o| o.healthy) {
            status.active.as_str()
        } else {
            "none"
        };
        Some(upstreams::GroupHealth {
            name: status.name,
            active: active.to_owned(),
            origins: status
                .origins
                .into_iter()
                .map(|o| upstreams::OriginHealth {
                    role: o.origin.as_str().to_owned(),
                    address: o.address,
                    healthy: o.healthy,
                })
                .collect(),
        })
    }
}

impl counters::Host for HostState {
    fn add(&mut self, name: String, delta: u64) {
        let mut counters = self
            .module
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = counters.get(&name) {
            counter.inc_by(delta);
            return;
        }
        if counters.len() >= MAX_COUNTER_NAMES {
            tracing::debug!(
                module = &*self.module.name,
                counter = name,
                "counter not created: a module may have at most {MAX_COUNTER_NAMES} counter names"
            );
            return;
        }
        let counter = self
            .services
            .metrics
            .module_counters
            .with_label_values(&[&*self.module.name, &name]);
        counter.inc_by(delta);
        counters.insert(name, counter);
    }
}
