//! Which version of each module runs, and how versions change: [`ModuleHost`].
//!
//! Versions belong to module *files* (`<modules_dir>/<file>.wasm`); every `[[wasm.modules]]`
//! entry using a file runs that file's active version with its own config. A new version comes
//! from the watched directory or an upload, or is an older kept one re-activated; in every case
//! it is compiled and prepared (first instance, self-test, for every entry using the file) off
//! the request path, then swapped in by replacing one `Arc` snapshot of all chains. A request
//! takes the snapshot once ([`ModuleHost::chain_for`]) and keeps it to the end, so it runs on
//! exactly one version of each module even when a swap lands mid-request; the old version is
//! freed when its last request finishes. A version that fails any step is rejected with its
//! error and the running one stays.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use super::config::WasmConfig;
use super::host::HostServices;
use super::runtime::{content_hash, Bound, Code, ModuleError, ModuleSpec, Runtime};

/// The modules a request runs, in chain order (a cheap clone of one `Arc`).
pub type Chain = Arc<[Arc<Bound>]>;

/// Where a version came from, for the admin API and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Read from the modules directory (at startup or by the watcher).
    Directory,
    /// Uploaded through the admin API.
    Upload,
    /// A kept version re-activated (`activate` / `rollback`).
    Rollback,
}

/// A version as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// The first 12 hex digits of its SHA-256.
    pub version: String,
    /// The whole SHA-256.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: usize,
    /// Seconds since the Unix epoch when it was compiled.
    pub loaded_at: u64,
    /// Hooks it exports.
    pub hooks: Vec<&'static str>,
    /// Whether it is the running version.
    pub active: bool,
}

/// A module file as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// The file stem.
    pub file: String,
    /// The `[[wasm.modules]]` entries running it.
    pub modules: Vec<String>,
    /// The running version.
    pub active: Option<String>,
    /// Where the running version came from.
    pub source: Option<Source>,
    /// Kept versions, newest first.
    pub versions: Vec<VersionInfo>,
}

/// A module file's versions and its entries' current bindings.
struct FileState {
    /// Kept versions, oldest first; the active one is among them.
    versions: VecDeque<Arc<Code>>,
    active: Option<Arc<Code>>,
    source: Option<Source>,
    /// The active version bound to each entry using the file, by entry name.
    bound: BTreeMap<String, Arc<Bound>>,
    /// What the watcher last saw on disk, so an unchanged (or known-bad) file is not reloaded.
    seen: Option<Stamp>,
}

/// A file's identity on disk as cheap metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        })
    }
}

/// One `[[wasm.chains]]` entry with its modules resolved to bound versions.
struct ChainRoute {
    host: String,
    path_prefix: String,
    modules: Chain,
}

/// The policy-module host: every module's versions and the chains requests run.
pub struct ModuleHost {
    runtime: Arc<Runtime>,
    services: Arc<HostServices>,
    config: WasmConfig,
    specs: Vec<Arc<ModuleSpec>>,
    files: Mutex<BTreeMap<String, FileState>>,
    /// Serializes loads, so an upload and the watcher never interleave their swaps.
    loading: Mutex<()>,
    chains: RwLock<Arc<Vec<ChainRoute>>>,
}

/// Why an admin action on modules failed; the HTTP status it maps to is the caller's.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No `[[wasm.modules]]` entry uses that file.
    #[error("no [[wasm.modules]] entry uses the file {0:?}")]
    UnknownFile(String),
    /// No kept version matches.
    #[error("no kept version of {file:?} matches {version:?}")]
    UnknownVersion {
        /// The file.
        file: String,
        /// The version prefix asked for.
        version: String,
    },
    /// The version was rejected.
    #[error(transparent)]
    Rejected(#[from] ModuleError),
    /// Writing the accepted version to the modules directory failed; nothing was changed.
    #[error("cannot write {path}: {source}")]
    Persist {
        /// The target file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ModuleHost {
    /// Builds the runtime and loads every module file `config` refers to from `modules_dir`.
    /// Any file missing or invalid fails startup, naming the module and the reason: a proxy
    /// must not come up silently without its auth module.
    pub fn start(config: &WasmConfig, services: HostServices) -> Result<Arc<Self>, String> {
        let runtime = Runtime::new(config).map_err(|e| e.to_string())?;
        let specs: Vec<Arc<ModuleSpec>> = config
            .modules
            .iter()
            .map(|m| Arc::new(ModuleSpec::new(m, config)))
            .collect();
        let host = Arc::new(ModuleHost {
            runtime,
            services: Arc::new(services),
            config: config.clone(),
            specs,
            files: Mutex::new(BTreeMap::new()),
            loading: Mutex::new(()),
            chains: RwLock::new(Arc::new(Vec::new())),
        });
        for file in host.file_stems() {
            let path = host.path_of(&file);
            let seen = Stamp::of(&path);
            let bytes = std::fs::read(&path).map_err(|source| {
                format!(
                    "wasm module file {:?}: {}",
                    file,
                    ModuleError::Read {
                        path: path.clone(),
                        source
                    }
                )
            })?;
            host.load(&file, bytes, Source::Directory, seen)
                .map_err(|e| format!("wasm module file {}: {e}", path.display()))?;
        }
        Ok(host)
    }

    /// Every file stem some entry uses, once each.
    fn file_stems(&self) -> Vec<String> {
        let mut stems: Vec<String> = self.specs.iter().map(|s| s.file.clone()).collect();
        stems.sort();
        stems.dedup();
        stems
    }

    fn path_of(&self, file: &str) -> PathBuf {
        self.config.modules_dir.join(format!("{file}.wasm"))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FileState>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The modules for a request to `host` (port ignored) and `path`: the first matching chain,
    /// or `None` when no chain matches or the matching one is empty.
    pub fn chain_for(&self, host: &str, path: &str) -> Option<Chain> {
        let chains = self.chains.read().unwrap_or_else(PoisonError::into_inner);
        let host = host.split(':').next().unwrap_or(host);
        chains
            .iter()
            .find(|c| {
                (c.host.is_empty() || c.host.eq_ignore_ascii_case(host))
                    && path.starts_with(&c.path_prefix)
            })
            .map(|c| c.modules.clone())
            .filter(|modules| !modules.is_empty())
    }

    /// Compiles `bytes` as a new version of `file`, prepares it for every entry using the file,
    /// and makes it the running version. `persist` also writes it to the modules directory
    /// (before the swap; a failed write changes nothing).
    fn load(
        &self,
        file: &str,
        bytes: Vec<u8>,
        source: Source,
        seen: Option<Stamp>,
    ) -> Result<Arc<Code>, HostError> {
        let _loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        let started = std::time::Instant::now();
        // A kept version coming back (a swap back and forth, a re-upload) skips compiling.
        let hash = content_hash(&bytes);
        let kept = match self.files().get_mut(file) {
            Some(state) => {
                let active = state.active.clone().filter(|a| a.hash == hash);
                if let (Some(active), Source::Directory) = (active, source) {
                    // The directory now holds what already runs (e.g. an upload written back):
                    // nothing to swap, only remember the file as seen.
                    state.seen = seen;
                    return Ok(active);
                }
                state.versions.iter().find(|v| v.hash == hash).cloned()
            }
            None => None,
        };
        let code = match kept {
            Some(code) => code,
            None => match self.runtime.compile(bytes, hash) {
                Ok(code) => Arc::new(code),
                Err(e) => {
                    self.count_load(file, e.as_str());
                    return Err(e.into());
                }
            },
        };
        self.activate_locked(file, code, source, seen, started)
    }

    /// Prepares `code` for every entry using `file` and swaps it in. Call with `loading` held.
    fn activate_locked(
        &self,
        file: &str,
        code: Arc<Code>,
        source: Source,
        seen: Option<Stamp>,
        started: std::time::Instant,
    ) -> Result<Arc<Code>, HostError> {
        let mut bound = BTreeMap::new();
        for spec in self.specs.iter().filter(|s| s.file == file) {
            match Bound::prepare(
                spec.clone(),
                code.clone(),
                self.runtime.clone(),
                self.services.clone(),
            ) {
                Ok(b) => {
                    bound.insert(spec.name().to_owned(), b);
                }
                Err(e) => {
                    self.count_load(file, e.as_str());
                    return Err(e.into());
                }
            }
        }
        if source != Source::Directory {
            // Uploads and rollbacks land on disk too, so a restart keeps what runs now. Written
            // under a temporary name and renamed, so the watcher never reads half a file.
            let path = self.path_of(file);
            let tmp = self.config.modules_dir.join(format!(".{file}.wasm.tmp"));
            let written = std::fs::write(&tmp, code.bytes.as_slice())
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(source) = written {
                let _ = std::fs::remove_file(&tmp);
                self.count_load(file, "persist");
                return Err(HostError::Persist { path, source });
            }
        }
        let seen = if source == Source::Directory {
            seen
        } else {
            Stamp::of(&self.path_of(file))
        };
        {
            let mut files = self.files();
            let state = files.entry(file.to_owned()).or_insert_with(|| FileState {
                versions: VecDeque::new(),
                active: None,
                source: None,
                bound: BTreeMap::new(),
                seen: None,
            });
            state.versions.retain(|v| v.hash != code.hash);
            state.versions.push_back(code.clone());
            while state.versions.len() > self.config.keep_versions {
                state.versions.pop_front();
            }
            state.active = Some(code.clone());
            state.source = Some(source);
            state.bound = bound;
            state.seen = seen;
            let chains = self.resolve_chains(&files);
            *self.chains.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(chains);
        }
        self.count_load(file, "ok");
        tracing::info!(
            file,
            version = code.short(),
            source = ?source,
            hooks = ?code.hooks(),
            load_ms = started.elapsed().as_millis() as u64,
            "module version active"
        );
        Ok(code)
    }

    /// Every chain with its entries resolved to their active bindings. An entry whose file has
    /// no active version yet is left out (only possible while starting).
    fn resolve_chains(&self, files: &BTreeMap<String, FileState>) -> Vec<ChainRoute> {
        self.config
            .chains
            .iter()
            .map(|chain| {
                let modules: Vec<Arc<Bound>> = chain
                    .modules
                    .iter()
                    .filter_map(|name| {
                        let spec = self.specs.iter().find(|s| s.name() == name)?;
                        files.get(&spec.file)?.bound.get(name).cloned()
                    })
                    .collect();
                ChainRoute {
                    host: chain.host.clone(),
                    path_prefix: chain.path_prefix.clone(),
                    modules: modules.into(),
                }
            })
            .collect()
    }

    fn count_load(&self, file: &str, result: &str) {
        self.services
            .metrics
            .module_loads
            .with_label_values(&[file, result])
            .inc();
    }

    /// Checks every module file for changes and loads the changed ones. A rejected file is
    /// logged once and not retried until it changes again; the running version stays.
    pub fn scan(&self) {
        for file in self.file_stems() {
            let path = self.path_of(&file);
            let Some(stamp) = Stamp::of(&path) else {
                continue; // Removed: keep running what is loaded.
            };
            let seen = self.files().get(&file).and_then(|s| s.seen);
            if seen == Some(stamp) {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read module file");
                    continue;
                }
            };
            if let Err(e) = self.load(&file, bytes, Source::Directory, Some(stamp)) {
                tracing::error!(
                    file = %path.display(),
                    error = %e,
                    "module file rejected; the running version stays"
                );
                self.remember_stamp(&file, stamp);
            }
        }
    }

    fn remember_stamp(&self, file: &str, stamp: Stamp) {
        if let Some(state) = self.files().get_mut(file) {
            state.seen = Some(stamp);
        }
    }

    /// Admin upload: a new version of `file` from `bytes`, written to the modules directory.
    pub fn upload(&self, file: &str, bytes: Vec<u8>) -> Result<VersionInfo, HostError> {
        if !self.specs.iter().any(|s| s.file == file) {
            return Err(HostError::UnknownFile(file.to_owned()));
        }
        let code = self.load(file, bytes, Source::Upload, None)?;
        Ok(version_info(&code, true))
    }

    /// Admin activate: makes the kept version of `file` whose hash starts with `version` the
    /// running one again; `None` means the newest version older than the running one
    /// (rollback).
    pub fn activate(&self, file: &str, version: Option<&str>) -> Result<VersionInfo, HostError> {
        let _loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted = {
            let files = self.files();
            let state = files
                .get(file)
                .ok_or_else(|| HostError::UnknownFile(file.to_owned()))?;
            let unknown = || HostError::UnknownVersion {
                file: file.to_owned(),
                version: version.unwrap_or("previous").to_owned(),
            };
            match version {
                Some(prefix) if prefix.len() >= 4 => state
                    .versions
                    .iter()
                    .find(|v| v.hash.starts_with(prefix))
                    .cloned()
                    .ok_or_else(unknown)?,
                Some(_) => return Err(unknown()),
                None => {
                    let active = state.active.as_ref().map(|a| a.hash.as_str());
                    let position = state
                        .versions
                        .iter()
                        .position(|v| Some(v.hash.as_str()) == active);
                    match position {
                        Some(p) if p > 0 => state.versions[p - 1].clone(),
                        _ => return Err(unknown()),
                    }
                }
            }
        };
        let code = self.activate_locked(
            file,
            wanted,
            Source::Rollback,
            None,
            std::time::Instant::now(),
        )?;
        Ok(version_info(&code, true))
    }

    /// Every module file, its entries and its kept versions.
    pub fn list(&self) -> Vec<FileInfo> {
        let files = self.files();
        self.file_stems()
            .into_iter()
            .map(|file| {
                let state = files.get(&file);
                let active = state.and_then(|s| s.active.clone());
                FileInfo {
                    modules: self
                        .specs
                        .iter()
                        .filter(|s| s.file == file)
                        .map(|s| s.name().to_owned())
                        .collect(),
                    active: active.as_ref().map(|c| c.short().to_owned()),
                    source: state.and_then(|s| s.source),
                    versions: state
                        .map(|s| {
                            s.versions
                                .iter()
                                .rev()
                                .map(|v| {
                                    let is_active =
                                        active.as_ref().is_some_and(|a| a.hash == v.hash);
                                    version_info(v, is_active)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    file,
                }
            })
            .collect()
    }

    /// `wasm.max_module_bytes`: the largest upload the admin API reads.
    pub fn max_module_bytes(&self) -> usize {
        self.config.max_module_bytes
    }

    /// The watcher, as a pingora background service (it also restarts the epoch ticker in the
    /// serving process after a daemonizing fork).
    pub fn watcher(self: &Arc<Self>) -> ModuleWatcher {
        ModuleWatcher { host: self.clone() }
    }
}

fn version_info(code: &Code, active: bool) -> VersionInfo {
    VersionInfo {
        version: code.short().to_owned(),
        sha256: code.hash.clone(),
        bytes: code.bytes.len(),
        loaded_at: code
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        hooks: code.hooks(),
        active,
    }
}

/// Polls the modules directory every `watch_interval_ms` and loads changed files.
pub struct ModuleWatcher {
    host: Arc<ModuleHost>,
}

#[async_trait]
impl BackgroundService for ModuleWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.host.runtime.ensure_ticking();
        let interval = Duration::from_millis(self.host.config.watch_interval_ms);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let host = self.host.clone();
            // Compiling takes tens to hundreds of milliseconds: not on a runtime worker.
            if let Err(e) = tokio::task::spawn_blocking(move || host.scan()).await {
                tracing::error!(error = %e, "module directory scan panicked");
            }
        }
    }
}
