//! `[wasm]`: which policy modules exist, what each may use, and which requests run them.
//!
//! ```toml
//! [wasm]
//! enabled = true
//! modules_dir = "/etc/parallax/modules"
//!
//! [[wasm.modules]]
//! name = "auth"                      # used in chains, logs and metrics
//! file = "token-auth"                # <modules_dir>/token-auth.wasm (default: the name)
//! failure = "fail-closed"            # a trap or timeout answers failure_status
//! config = { key = "…" }
//!
//! [[wasm.chains]]
//! path_prefix = "/live/"
//! modules = ["auth"]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[wasm]`: the policy-module host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WasmConfig {
    /// Load and run policy modules. Default `false`.
    pub enabled: bool,
    /// Directory holding the module files (`<file>.wasm`). It is watched: a file written there
    /// (write a temporary name, then rename) becomes that module's new version. Uploads through
    /// the admin API are written here too, so a restart keeps them. Default `modules`.
    pub modules_dir: PathBuf,
    /// How often `modules_dir` is checked for new or changed files, in milliseconds. Default
    /// 250 (a new file is live well within a second); 50..=10000.
    pub watch_interval_ms: u64,
    /// wasmtime's compiled-code cache, keyed by the module's content hash and the engine's
    /// settings, so a restart or a rollback skips compilation. Default
    /// `<modules_dir>/.cache`; an empty string turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// CPU budget of one hook call, in milliseconds, enforced by epoch interruption (1 ms
    /// ticks): after this much wall-clock time the proxy starts counting the thread's CPU time,
    /// and interrupts the call once that reaches this budget too. A runaway call ends after
    /// about twice the budget, with the module's failure policy applied; a call the scheduler
    /// merely paused is not cut short. Default 5; 1..=1000.
    pub cpu_ms_per_call: u64,
    /// Linear memory one module instance may grow to, in bytes. Default 16 MiB;
    /// 1 MiB..=1 GiB. A guest that allocates past it fails its allocation (usually a trap).
    pub memory_bytes: u64,
    /// Largest playlist body handed to body hooks, in bytes; a larger body is sent unchanged
    /// with a log line. Also the cap on a body a module returns. Default 1 MiB; 1 KiB..=64 MiB.
    pub max_body_bytes: usize,
    /// Largest module file accepted, from the directory or an upload, in bytes. Default
    /// 32 MiB.
    pub max_module_bytes: usize,
    /// Versions kept per module file for rollback (the active one included). Default 5; 1..=50.
    pub keep_versions: usize,
    /// Module instances: code + config + failure policy (`[[wasm.modules]]`).
    pub modules: Vec<ModuleConfig>,
    /// Which requests run which modules, in order (`[[wasm.chains]]`); first match wins, and a
    /// request matching none runs no module.
    pub chains: Vec<ChainConfig>,
}

impl Default for WasmConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            modules_dir: PathBuf::from("modules"),
            watch_interval_ms: 250,
            cache_dir: None,
            cpu_ms_per_call: 5,
            memory_bytes: 16 << 20,
            max_body_bytes: 1 << 20,
            max_module_bytes: 32 << 20,
            keep_versions: 5,
            modules: Vec::new(),
            chains: Vec::new(),
        }
    }
}

/// What a failed hook call (trap, timeout, bad return) does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Answer the request with the module's `failure_status` (an auth module that cannot
    /// decide must not let everyone in). The default.
    #[default]
    FailClosed,
    /// Skip the module and go on as if it had answered "continue" / "no change".
    FailOpen,
}

impl FailurePolicy {
    /// The config spelling, for logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "fail-closed",
            FailurePolicy::FailOpen => "fail-open",
        }
    }
}

/// Where a module's body hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BodyStage {
    /// On the origin's response, before it is cached: one rewrite per origin fetch, shared by
    /// every viewer (absolute URLs, merged masters).
    BeforeCache,
    /// On every response to a viewer, hits included: per-viewer results (tokens in segment
    /// URIs). The default.
    #[default]
    AfterCache,
}

/// One `[[wasm.modules]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModuleConfig {
    /// The name chains refer to, also the `module` label of logs and metrics. Required;
    /// 1-64 characters of `A-Z a-z 0-9 - _`, unique.
    pub name: String,
    /// The code: `<modules_dir>/<file>.wasm`. Default: `name`. Several entries may share a
    /// file with different `config` (its versions are swapped for all of them at once).
    pub file: String,
    /// `fail-closed` (default) or `fail-open`.
    pub failure: FailurePolicy,
    /// The status a fail-closed failure answers with. Default 503; 400..=599.
    pub failure_status: u16,
    /// `before-cache` or `after-cache` (default): where the body hook runs.
    pub body_stage: BodyStage,
    /// Overrides `wasm.cpu_ms_per_call` for this module.
    pub cpu_ms_per_call: Option<u64>,
    /// Overrides `wasm.memory_bytes` for this module (at most `wasm.memory_bytes`).
    pub memory_bytes: Option<u64>,
    /// Key/values the module reads through the `config` import. Values may be written as
    /// strings, numbers or booleans; the module sees them as strings. Dotted keys may be
    /// written bare (`region.eu.group = "eu"`, which TOML reads as nested tables) or quoted
    /// (`"region.eu.group" = "eu"`): either way the module sees the key `region.eu.group`.
    pub config: BTreeMap<String, ConfigValue>,
}

impl Default for ModuleConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            file: String::new(),
            failure: FailurePolicy::default(),
            failure_status: 503,
            body_stage: BodyStage::default(),
            cpu_ms_per_call: None,
            memory_bytes: None,
            config: BTreeMap::new(),
        }
    }
}

impl ModuleConfig {
    /// The file stem of the module's code (`file`, else `name`).
    pub fn file_stem(&self) -> &str {
        if self.file.is_empty() {
            &self.name
        } else {
            &self.file
        }
    }

    /// The `config` table as the strings the module reads, nested tables flattened to dotted
    /// keys.
    pub fn config_strings(&self) -> BTreeMap<String, String> {
        fn flatten(
            prefix: &str,
            table: &BTreeMap<String, ConfigValue>,
            out: &mut BTreeMap<String, String>,
        ) {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    ConfigValue::Table(inner) => flatten(&key, inner, out),
                    ConfigValue::Text(s) => {
                        out.insert(key, s.clone());
                    }
                    ConfigValue::Bool(b) => {
                        out.insert(key, b.to_string());
                    }
                    ConfigValue::Integer(i) => {
                        out.insert(key, i.to_string());
                    }
                    ConfigValue::Float(x) => {
                        out.insert(key, x.to_string());
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        flatten("", &self.config, &mut out);
        out
    }
}

/// A module config value as written in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// `"text"`.
    Text(String),
    /// `true` / `false`.
    Bool(bool),
    /// `42`.
    Integer(i64),
    /// `1.5`.
    Float(f64),
    /// A nested table, from a bare dotted key (`region.eu.group = "eu"`).
    Table(BTreeMap<String, ConfigValue>),
}

/// One `[[wasm.chains]]` entry: requests it matches run `modules` in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// The `Host` to match, without port, case-insensitive. Default empty: any host.
    pub host: String,
    /// The path prefix to match. Default `/`.
    pub path_prefix: String,
    /// Names of `[[wasm.modules]]` entries, in the order their request hooks run (response
    /// hooks run in reverse). May be empty: matching requests then run no module.
    pub modules: Vec<String>,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            path_prefix: "/".into(),
            modules: Vec::new(),
        }
    }
}

/// Whether `name` is usable as a module or file name: 1-64 of `A-Z a-z 0-9 - _`. Names end up
/// in file paths and metric labels, so nothing else (no `.`, `/`) is allowed.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl WasmConfig {
    /// The compiled-code cache directory, if on.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            None => Some(self.modules_dir.join(".cache")),
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
        }
    }

    /// Checks ranges and references; the error is `(key under [wasm], reason)`. Skipped while
    /// disabled.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        let err = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        if self.modules_dir.as_os_str().is_empty() {
            return err("modules_dir", "must not be empty");
        }
        if !(50..=10_000).contains(&self.watch_interval_ms) {
            return err("watch_interval_ms", "must be between 50 and 10000");
        }
        if !(1..=1000).contains(&self.cpu_ms_per_call) {
            return err("cpu_ms_per_call", "must be between 1 and 1000");
        }
        if !(1 << 20..=1 << 30).contains(&self.memory_bytes) {
            return err(
                "memory_bytes",
                "must be between 1048576 (1 MiB) and 1073741824 (1 GiB)",
            );
        }
        if !(1024..=64 << 20).contains(&self.max_body_bytes) {
            return err("max_body_bytes", "must be between 1024 and 67108864");
        }
        if self.max_module_bytes < 1024 {
            return err("max_module_bytes", "must be at least 1024");
        }
        if !(1..=50).contains(&self.keep_versions) {
            return err("keep_versions", "must be between 1 and 50");
        }
        for (i, module) in self.modules.iter().enumerate() {
            let key = |field: &str| format!("modules[{i}].{field}");
            if !valid_name(&module.name) {
                return Err((
                    key("name"),
                    "must be 1-64 characters of A-Z a-z 0-9 - _".into(),
                ));
            }
            if self.modules[..i].iter().any(|m| m.name == module.name) {
                return Err((key("name"), format!("{:?} is used twice", module.name)));
            }
            if !valid_name(module.file_stem()) {
                return Err((
                    key("file"),
                    "must be a file stem of 1-64 characters of A-Z a-z 0-9 - _ (no path, no .wasm)"
                        .into(),
                ));
            }
            if !(400..=599).contains(&module.failure_status) {
                return Err((key("failure_status"), "must be between 400 and 599".into()));
            }
            if let Some(ms) = module.cpu_ms_per_call {
                if !(1..=1000).contains(&ms) {
                    return Err((key("cpu_ms_per_call"), "must be between 1 and 1000".into()));
                }
            }
            if let Some(bytes) = module.memory_bytes {
                if !(1 << 20..=self.memory_bytes).contains(&bytes) {
                    return Err((
                        key("memory_bytes"),
                        "must be between 1 MiB and wasm.memory_bytes".into(),
                    ));
                }
            }
        }
        for (i, chain) in self.chains.iter().enumerate() {
            if !chain.path_prefix.starts_with('/') {
                return Err((
                    format!("chains[{i}].path_prefix"),
                    "must start with /".into(),
                ));
            }
            for name in &chain.modules {
                if !self.modules.iter().any(|m| &m.name == name) {
                    return Err((
                        format!("chains[{i}].modules"),
                        format!("{name:?} is not a [[wasm.modules]] name"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> WasmConfig {
        #[derive(Deserialize)]
        struct Wrap {
            wasm: WasmConfig,
        }
        toml::from_str::<Wrap>(text).unwrap().wasm
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = WasmConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.cpu_ms_per_call, 5);
        assert_eq!(c.memory_bytes, 16 << 20);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.cache_dir(), Some(PathBuf::from("modules/.cache")));
        let m = ModuleConfig::default();
        assert_eq!(m.failure, FailurePolicy::FailClosed);
        assert_eq!(m.failure_status, 503);
        assert_eq!(m.body_stage, BodyStage::AfterCache);
    }

    #[test]
    fn config_values_may_be_strings_numbers_or_booleans() {
        let c = parse(
            r#"
            [wasm]
            enabled = true
            [[wasm.modules]]
            name = "a"
            config = { text = "x", on = true, n = 3, region.eu.group = "eu", "region.us.group" = "us" }
            "#,
        );
        let strings = c.modules[0].config_strings();
        assert_eq!(strings["region.eu.group"], "eu");
        assert_eq!(strings["region.us.group"], "us");
        assert_eq!(strings["text"], "x");
        assert_eq!(strings["on"], "true");
        assert_eq!(strings["n"], "3");
        assert_eq!(c.modules[0].file_stem(), "a");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("cpu_ms_per_call = 0", "cpu_ms_per_call"),
            ("memory_bytes = 10", "memory_bytes"),
            ("[[wasm.modules]]\nname = \"../x\"", "modules[0].name"),
            (
                "[[wasm.modules]]\nname = \"a\"\nfile = \"a.wasm\"",
                "modules[0].file",
            ),
            (
                "[[wasm.modules]]\nname = \"a\"\nfailure_status = 200",
                "modules[0].failure_status",
            ),
            (
                "[[wasm.modules]]\nname = \"a\"\n[[wasm.modules]]\nname = \"a\"",
                "modules[1].name",
            ),
            ("[[wasm.chains]]\nmodules = [\"nope\"]", "chains[0].modules"),
            (
                "[[wasm.chains]]\npath_prefix = \"live\"",
                "chains[0].path_prefix",
            ),
        ];
        for (text, key) in cases {
            let c = parse(&format!("[wasm]\nenabled = true\n{text}"));
            assert_eq!(c.validate().unwrap_err().0, key, "{text}");
        }
    }

    #[test]
    fn unknown_keys_and_policies_are_refused() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrap {
            wasm: WasmConfig,
        }
        assert!(toml::from_str::<Wrap>("[wasm]\nenable = true").is_err());
        assert!(toml::from_str::<Wrap>(
            "[wasm]\n[[wasm.modules]]\nname = \"a\"\nfailure = \"fail-maybe\""
        )
        .is_err());
    }
}
