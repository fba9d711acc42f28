//! The admin API: purge, cache stats, upstream health and a config summary, on its own listener
//! (loopback by default) behind a bearer token.
//!
//! | Request                              | Answer                                          |
//! |--------------------------------------|-------------------------------------------------|
//! | `POST /purge?url=<url>`              | `{"purged": n}`: one URL                        |
//! | `POST /purge?prefix=/live/<stream>/` | `{"purged": n}`: every object under the prefix  |
//! | `... &scope=node`                    | this node only (default `fleet`, see below)     |
//! | `GET /stats`                         | cache sizes and counters                        |
//! | `GET /upstreams`                     | health of every group and origin                |
//! | `GET /config`                        | the running configuration, secrets left out     |
//! | `GET /kv/<key>`                      | the value as `text/plain`, 404 when unset       |
//! | `PUT /kv/<key>[?ttl_ms=<ms>]`        | sets the value to the request body (UTF-8)      |
//! | `DELETE /kv/<key>`                   | removes the key                                 |
//! | `POST /regions/<name>/close`         | sets `region/<name>/state` to `closed`          |
//! | `POST /regions/<name>/open`          | sets `region/<name>/state` to `open`            |
//! | `GET /modules`                       | policy-module files, entries, kept versions     |
//! | `POST /modules/<file>`               | uploads a new version (body: the `.wasm`)       |
//! | `POST /modules/<file>/activate?version=<hex>` | re-activates a kept version          |
//! | `POST /modules/<file>/rollback`      | re-activates the version before the running one |
//!
//! A module upload is compiled, checked and self-tested off the request path, written to the
//! modules directory and swapped in atomically (201 with the version); a rejected one is 422
//! with the reason, and the running version stays.
//!
//! `url` is a path (`/live/a/1.ts`), `host/path`, or `http(s)://host/path`; `host=` may be
//! given separately. With the kv store on Redis a purge also goes to every other node sharing
//! it ([`crate::fleet`]): the answer adds `"other_nodes": k`, or is 503 (purged here only) when
//! Redis cannot be reached. Every request needs `Authorization: Bearer <token>`, else 401.
//!
//! The `/kv` endpoints reach the same store as policy modules (see [`crate::kv`]); with Redis
//! configured a change made on one node is seen by every node. `<key>` is the rest of the path,
//! percent-decoded (`/kv/region/eu/state` is the key `region/eu/state`). A key over 1 KiB or a
//! value over 64 KiB is 413; Redis unreachable is 503 with the reason, and the write is not made.
//!
//! The cache is reached through the [`CacheAdmin`] view so this module does not depend on how
//! keys are built; [`StorageAdmin`] is that view over [`MokaStorage`].
//!
//! ```text
//! curl -X POST -H "Authorization: Bearer $TOKEN" 'http://127.0.0.1:9090/purge?prefix=/live/main/&host=cdn.example'
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:9090/upstreams
//! curl -X POST -H "Authorization: Bearer $TOKEN" http://127.0.0.1:9090/regions/eu/close
//! curl -X PUT -H "Authorization: Bearer $TOKEN" --data-binary 'on' 'http://127.0.0.1:9090/kv/my-module/flag?ttl_ms=60000'
//! curl -X POST -H "Authorization: Bearer $TOKEN" --data-binary @my_module.wasm http://127.0.0.1:9090/modules/my-module
//! curl -X POST -H "Authorization: Bearer $TOKEN" http://127.0.0.1:9090/modules/my-module/rollback
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use thiserror::Error;
use tracing::Instrument;

use crate::fleet::Fleet;
use crate::kv::{self, KvError, KvStore};
use crate::storage::MokaStorage;
use crate::upstream::Upstreams;
use crate::wasm::registry::HostError;
use crate::wasm::ModuleHost;

/// Largest request body read: a key-value store value (`PUT /kv/...`); the other endpoints take
/// none, and a client sending more must not hold the connection hostage.
const MAX_BODY_BYTES: usize = kv::MAX_VALUE_BYTES;

/// Errors of the admin API, named by stage.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdminError {
    /// A configuration value is unusable.
    #[error("admin.{key}: {reason}")]
    InvalidConfig {
        /// The key under `[admin]`.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// A purge named no host while cache keys include one.
    #[error("cache keys include the host: give url=http://host/path or host=")]
    HostRequired,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API. Default `false`; needs `token` when on.
    pub enabled: bool,
    /// Listen address. Default `127.0.0.1:9090`.
    pub listen: String,
    /// The bearer token every request must carry; at least 16 characters. Default empty.
    pub token: String,
    /// Read `token` from this file instead (surrounding whitespace trimmed), e.g. a systemd
    /// credential or a container secret. Default empty: unset.
    pub token_file: String,
    /// Allow `listen` on a non-loopback address. Default `false`: purge is a cache-wide denial
    /// of service in the wrong hands, so exposing it must be a decision.
    pub allow_non_loopback: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9090".to_string(),
            token: String::new(),
            token_file: String::new(),
            allow_non_loopback: false,
        }
    }
}

impl AdminConfig {
    /// Checks the listen address and token; skipped while disabled.
    pub fn validate(&self) -> Result<(), AdminError> {
        if !self.enabled {
            return Ok(());
        }
        let addr: SocketAddr = self.listen.parse().map_err(|e| AdminError::InvalidConfig {
            key: "listen",
            reason: format!("{:?} is not an ip:port address: {e}", self.listen),
        })?;
        if !addr.ip().is_loopback() && !self.allow_non_loopback {
            return Err(AdminError::InvalidConfig {
                key: "listen",
                reason: format!(
                    "{addr} is not a loopback address; set admin.allow_non_loopback = true to \
                     expose the admin API"
                ),
            });
        }
        if self.token.len() < 16 {
            return Err(AdminError::InvalidConfig {
                key: "token",
                reason: "must be at least 16 characters".to_string(),
            });
        }
        Ok(())
    }
}

/// What the admin API needs from the cache.
pub trait CacheAdmin: Send + Sync {
    /// Purges the object at `path` (and `query`) on `host`, `None` meaning the key has no host.
    /// Returns how many objects (and in-flight fills) were dropped.
    fn purge_url(
        &self,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Result<usize, AdminError>;
    /// Purges every object whose path starts with `prefix` on `host`.
    fn purge_prefix(&self, host: Option<&str>, prefix: &str) -> Result<usize, AdminError>;
    /// [`CacheAdmin::purge_prefix`] of `path` when `prefix`, else [`CacheAdmin::purge_url`].
    fn purge(
        &self,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
        prefix: bool,
    ) -> Result<usize, AdminError> {
        if prefix {
            self.purge_prefix(host, path)
        } else {
            self.purge_url(host, path, query)
        }
    }
    /// Sizes and counters, as JSON.
    fn stats(&self) -> serde_json::Value;
}

/// Builds the cache key string for a host, path and raw query, exactly as the request path does
/// (the rules' `key_for`).
pub type KeyFn = Arc<dyn Fn(Option<&str>, &str, Option<&str>) -> String + Send + Sync>;

/// [`CacheAdmin`] over the proxy's [`MokaStorage`].
pub struct StorageAdmin {
    storage: &'static MokaStorage,
    include_host: bool,
    key_for: KeyFn,
}

impl StorageAdmin {
    /// `include_host` says whether cache keys start with the host (then purges need one);
    /// `key_for` builds a key the way the request path does.
    pub fn new(storage: &'static MokaStorage, include_host: bool, key_for: KeyFn) -> Self {
        Self {
            storage,
            include_host,
            key_for,
        }
    }

    fn host<'a>(&self, host: Option<&'a str>) -> Result<Option<&'a str>, AdminError> {
        match host {
            None if self.include_host => Err(AdminError::HostRequired),
            host => Ok(host),
        }
    }
}

impl CacheAdmin for StorageAdmin {
    fn purge_url(
        &self,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Result<usize, AdminError> {
        let key = (self.key_for)(self.host(host)?, path, query);
        Ok(usize::from(self.storage.purge_key(&key)))
    }

    fn purge_prefix(&self, host: Option<&str>, prefix: &str) -> Result<usize, AdminError> {
        let key = (self.key_for)(self.host(host)?, prefix, None);
        Ok(self.storage.purge_prefix(&key))
    }

    fn stats(&self) -> serde_json::Value {
        let s = self.storage.stats();
        json!({
            "bytes": s.bytes,
            "max_bytes": s.max_bytes,
            "items": s.items,
            "evictions": s.evictions,
            "expirations": s.expirations,
            "in_flight_fills": s.in_flight_fills,
        })
    }
}

/// Everything the admin API reads or acts on.
pub struct AdminState {
    /// The bearer token.
    pub token: String,
    /// The cache.
    pub cache: Arc<dyn CacheAdmin>,
    /// The fleet's purge channel, when the kv store is Redis-backed: purges then reach every
    /// node.
    pub fleet: Option<Arc<Fleet>>,
    /// The upstream groups, for their health.
    pub upstreams: Upstreams,
    /// The key-value store behind `/kv` and `/regions`.
    pub kv: Arc<dyn KvStore>,
    /// Policy modules behind `/modules`, when `wasm.enabled`.
    pub modules: Option<Arc<ModuleHost>>,
    /// The running configuration with secrets removed, as `GET /config` returns it.
    pub config_summary: serde_json::Value,
}

/// The admin API as a pingora HTTP app; clones share one state.
#[derive(Clone)]
pub struct AdminApp {
    state: Arc<AdminState>,
}

impl AdminApp {
    /// An app answering from `state`.
    pub fn new(state: AdminState) -> Self {
        Self {
            state: Arc::new(state),
        }
    }

    /// Whether `authorization` carries the token. The comparison runs in constant time
    /// (`subtle`, whose optimisation barrier keeps the compiler from turning it back into an
    /// early-exit `memcmp`), so response timing does not reveal how much of a guess was right.
    /// Only the token's length can leak, which is why it has a minimum.
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        bool::from(self.state.token.as_bytes().ct_eq(given.trim_ascii()))
    }

    /// Answers one request whose `body` has been read, so it is testable without a socket.
    pub fn handle(
        &self,
        method: &Method,
        uri: &http::Uri,
        authorization: Option<&[u8]>,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        if !self.authorized(authorization) {
            tracing::warn!("admin request without a valid token");
            let mut response =
                json_response(StatusCode::UNAUTHORIZED, &json!({"error": "unauthorized"}));
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let query = uri.query().unwrap_or("");
        if let Some(key) = uri.path().strip_prefix("/kv/") {
            return self.kv(method, key, query, body);
        }
        if let Some(rest) = uri.path().strip_prefix("/regions/") {
            return self.region(method, rest);
        }
        if let Some(rest) = uri
            .path()
            .strip_prefix("/modules")
            .filter(|r| r.is_empty() || r.starts_with('/'))
        {
            return self.modules(method, rest.trim_start_matches('/'), query, body);
        }
        match (method, uri.path()) {
            (&Method::POST, "/purge") => self.purge(query),
            (&Method::GET, "/stats") => json_response(StatusCode::OK, &self.state.cache.stats()),
            (&Method::GET, "/upstreams") => {
                json_response(StatusCode::OK, &json!(self.state.upstreams.status()))
            }
            (&Method::GET, "/config") => json_response(StatusCode::OK, &self.state.config_summary),
            (_, "/purge" | "/stats" | "/upstreams" | "/config") => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        }
    }

    /// `GET/PUT/DELETE /kv/<key>`; `raw_key` is still percent-encoded.
    fn kv(&self, method: &Method, raw_key: &str, query: &str, body: &[u8]) -> Response<Vec<u8>> {
        let key = percent_decode_path(raw_key);
        if key.is_empty() {
            return json_response(StatusCode::BAD_REQUEST, &json!({"error": "empty key"}));
        }
        let kv = &self.state.kv;
        let result = match *method {
            Method::GET => {
                return match kv.get(&key) {
                    Ok(Some(value)) => text_response(value.into_bytes()),
                    Ok(None) => json_response(
                        StatusCode::NOT_FOUND,
                        &json!({"error": "not set", "key": key}),
                    ),
                    Err(e) => kv_error_response(&e),
                };
            }
            Method::PUT => {
                let Ok(value) = std::str::from_utf8(body) else {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "the value must be UTF-8 text"}),
                    );
                };
                let ttl = match parse_query(query).iter().find(|(k, _)| k == "ttl_ms") {
                    None => None,
                    Some((_, ms)) => match ms.parse::<u64>() {
                        Ok(ms) if ms > 0 => Some(std::time::Duration::from_millis(ms)),
                        _ => {
                            return json_response(
                                StatusCode::BAD_REQUEST,
                                &json!({"error": "ttl_ms must be a whole number of milliseconds above 0"}),
                            )
                        }
                    },
                };
                tracing::info!(key, ttl_ms = ttl.map(|t| t.as_millis() as u64), "kv set");
                kv.set(&key, value, ttl)
            }
            Method::DELETE => {
                tracing::info!(key, "kv delete");
                kv.delete(&key)
            }
            _ => {
                return json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"error": "method not allowed"}),
                )
            }
        };
        match result {
            Ok(()) => json_response(StatusCode::OK, &json!({"ok": true, "key": key})),
            Err(e) => kv_error_response(&e),
        }
    }

    /// `POST /regions/<name>/close|open`: the region-steer module's switch.
    fn region(&self, method: &Method, rest: &str) -> Response<Vec<u8>> {
        let Some((name, state)) = rest
            .rsplit_once('/')
            .filter(|(_, action)| matches!(*action, "close" | "open"))
            .map(|(name, action)| (name, if action == "close" { "closed" } else { "open" }))
        else {
            return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
        };
        if method != Method::POST {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            );
        }
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "region names are 1-64 characters of A-Z a-z 0-9 - _ ."}),
            );
        }
        let key = kv::region_state_key(name);
        tracing::info!(region = name, state, "region state");
        match self.state.kv.set(&key, state, None) {
            Ok(()) => json_response(
                StatusCode::OK,
                &json!({"region": name, "state": state, "key": key}),
            ),
            Err(e) => kv_error_response(&e),
        }
    }

    /// `/modules...`: list, upload, activate, rollback. `rest` is the path after `/modules/`.
    fn modules(&self, method: &Method, rest: &str, query: &str, body: &[u8]) -> Response<Vec<u8>> {
        let Some(host) = &self.state.modules else {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "policy modules are off (wasm.enabled = false)"}),
            );
        };
        let (file, action) = rest.split_once('/').unwrap_or((rest, ""));
        let result = match (method, file, action) {
            (&Method::GET, "", "") => return json_response(StatusCode::OK, &json!(host.list())),
            (&Method::POST, file, "") if !file.is_empty() => {
                if body.is_empty() {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "the request body must be the module (.wasm)"}),
                    );
                }
                tracing::info!(file, bytes = body.len(), "module upload");
                host.upload(file, body.to_vec())
            }
            (&Method::POST, file, "activate") => {
                let params = parse_query(query);
                let Some((_, version)) = params.iter().find(|(k, _)| k == "version") else {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "give version=<at least 4 hex digits of the sha256>"}),
                    );
                };
                tracing::info!(file, version, "module activate");
                host.activate(file, Some(version))
            }
            (&Method::POST, file, "rollback") => {
                tracing::info!(file, "module rollback");
                host.activate(file, None)
            }
            (&Method::GET | &Method::POST, _, _) => {
                return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}))
            }
            _ => {
                return json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"error": "method not allowed"}),
                )
            }
        };
        match result {
            Ok(version) => json_response(
                StatusCode::CREATED,
                &json!({"file": file, "active": version}),
            ),
            Err(e) => {
                let status = match &e {
                    HostError::UnknownFile(_) | HostError::UnknownVersion { .. } => {
                        StatusCode::NOT_FOUND
                    }
                    HostError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    HostError::Persist { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                };
                tracing::warn!(file, error = %e, "module change refused; the running version stays");
                json_response(status, &json!({"error": e.to_string()}))
            }
        }
    }

    fn purge(&self, query: &str) -> Response<Vec<u8>> {
        let params = parse_query(query);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let bad = |reason: &str| json_response(StatusCode::BAD_REQUEST, &json!({"error": reason}));
        let host_param = param("host").filter(|h| !h.is_empty());
        let fleet = match (param("scope"), &self.state.fleet) {
            (None | Some("fleet"), fleet) => fleet.as_deref(),
            (Some("node"), _) => None,
            _ => return bad("scope must be fleet (the default) or node"),
        };
        let (target, prefix) = match (param("url"), param("prefix")) {
            (Some(url), None) => match PurgeTarget::parse(url) {
                Some(target) => (target, false),
                None => return bad("url must be a path, host/path or http(s)://host/path"),
            },
            (None, Some(prefix)) => match PurgeTarget::parse(prefix) {
                Some(target) => (target, true),
                None => return bad("prefix must be a path, host/path or http(s)://host/path"),
            },
            _ => return bad("give exactly one of url= or prefix="),
        };
        let host = target.host.or(host_param);
        tracing::info!(
            host,
            path = target.path,
            prefix,
            fleet = fleet.is_some(),
            "purge"
        );
        let purged = match self
            .state
            .cache
            .purge(host, target.path, target.query, prefix)
        {
            Ok(purged) => purged,
            Err(e) => return bad(&e.to_string()),
        };
        let Some(fleet) = fleet else {
            return json_response(StatusCode::OK, &json!({ "purged": purged }));
        };
        match fleet.publish(host, target.path, target.query, prefix) {
            Ok(nodes) => json_response(
                StatusCode::OK,
                &json!({ "purged": purged, "other_nodes": nodes }),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "purge applied on this node only");
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({
                        "purged": purged,
                        "error": format!("purged on this node only, not published to the fleet: {e}"),
                    }),
                )
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (method, uri) = {
            let req = session.req_header();
            (req.method.clone(), req.uri.clone())
        };
        let span = tracing::info_span!("admin", %method, path = uri.path());
        async {
            // Read the body (a `/kv` value; drained otherwise so the connection can be reused);
            // refuse absurd ones.
            let max_body = match &self.state.modules {
                Some(host) if uri.path().starts_with("/modules/") => host.max_module_bytes(),
                _ => MAX_BODY_BYTES,
            };
            let mut body = Vec::new();
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > max_body {
                            session.set_keepalive(None);
                            return json_response(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                &json!({"error": "request body too large"}),
                            );
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading admin request body");
                        session.set_keepalive(None);
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &json!({"error": "unreadable request body"}),
                        );
                    }
                }
            }
            let authorization = session
                .req_header()
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            // The store is synchronous and a Redis write may wait up to `kv.redis_timeout_ms`,
            // and compiling a module takes tens to hundreds of milliseconds: keep both off this
            // runtime's worker.
            if ["/kv/", "/regions/", "/modules/"]
                .iter()
                .any(|p| uri.path().starts_with(p))
            {
                let app = self.clone();
                return tokio::task::spawn_blocking(move || {
                    app.handle(&method, &uri, authorization.as_deref(), &body)
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "admin kv handler panicked");
                    json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"error": "internal error"}),
                    )
                });
            }
            self.handle(&method, &uri, authorization.as_deref(), &body)
        }
        .instrument(span)
        .await
    }
}

/// The admin API as a pingora service listening on `config.listen`, after validating `config`.
pub fn admin_service(
    config: &AdminConfig,
    state: AdminState,
) -> Result<Service<AdminApp>, AdminError> {
    config.validate()?;
    let mut service = Service::new("admin".to_string(), AdminApp::new(state));
    service.add_tcp(&config.listen);
    Ok(service)
}

/// 413 for a key or value over the limits (or a full in-process store), 503 when the backing
/// store is unreachable, with the reason.
fn kv_error_response(e: &KvError) -> Response<Vec<u8>> {
    let status = match e {
        KvError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        KvError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    tracing::warn!(error = %e, "kv request failed");
    json_response(status, &json!({"error": e.to_string()}))
}

fn text_response(body: Vec<u8>) -> Response<Vec<u8>> {
    let length = body.len();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    let length = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    response
}

/// A purge argument split into host, path and query.
#[derive(Debug, PartialEq, Eq)]
struct PurgeTarget<'a> {
    host: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> PurgeTarget<'a> {
    fn parse(url: &'a str) -> Option<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(url);
        let (host, path_and_query) = match rest.find('/') {
            Some(0) => (None, rest),
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => return None,
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        Some(Self { host, path, query })
    }
}

/// Splits a query string into decoded `(name, value)` pairs (`application/x-www-form-urlencoded`:
/// `+` is a space, `%XX` a byte). Undecodable escapes are kept verbatim.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX` in a path segment (`+` stays a plus, unlike in a query).
fn percent_decode_path(s: &str) -> String {
    percent_decode_with(s, false)
}

fn percent_decode(s: &str) -> String {
    percent_decode_with(s, true)
}

fn percent_decode_with(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryKv;
    use crate::metrics::Metrics;
    use crate::upstream::GroupConfig;
    use std::sync::Mutex;

    const TOKEN: &str = "0123456789abcdef-secret";

    /// Records purges and answers fixed stats.
    #[derive(Default)]
    struct FakeCache {
        purged: Mutex<Vec<String>>,
    }

    impl CacheAdmin for FakeCache {
        fn purge_url(
            &self,
            host: Option<&str>,
            path: &str,
            query: Option<&str>,
        ) -> Result<usize, AdminError> {
            let host = host.ok_or(AdminError::HostRequired)?;
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            self.purged
                .lock()
                .unwrap()
                .push(format!("url {host}{path}{query}"));
            Ok(1)
        }
        fn purge_prefix(&self, host: Option<&str>, prefix: &str) -> Result<usize, AdminError> {
            let host = host.ok_or(AdminError::HostRequired)?;
            self.purged
                .lock()
                .unwrap()
                .push(format!("prefix {host}{prefix}"));
            Ok(3)
        }
        fn stats(&self) -> serde_json::Value {
            json!({"items": 7})
        }
    }

    fn app() -> (AdminApp, Arc<FakeCache>) {
        let cache = Arc::new(FakeCache::default());
        let upstreams =
            Upstreams::new(&[GroupConfig::default()], Arc::new(Metrics::new().unwrap())).unwrap();
        let app = AdminApp::new(AdminState {
            token: TOKEN.to_string(),
            cache: cache.clone(),
            fleet: None,
            upstreams,
            kv: Arc::new(MemoryKv::new(1 << 20)),
            modules: None,
            config_summary: json!({"listen": "0.0.0.0:8080"}),
        });
        (app, cache)
    }

    fn call(
        app: &AdminApp,
        method: Method,
        uri: &str,
        auth: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, body) = call_with_body(app, method, uri, auth, b"");
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn call_with_body(
        app: &AdminApp,
        method: Method,
        uri: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, Vec<u8>) {
        let uri: http::Uri = uri.parse().unwrap();
        let response = app.handle(&method, &uri, auth.map(str::as_bytes), body);
        (response.status(), response.into_body())
    }

    /// A store whose writes always fail the way a store behind an unreachable Redis does.
    struct DownKv;

    impl KvStore for DownKv {
        fn get(&self, _: &str) -> Result<Option<String>, KvError> {
            Ok(Some("last-known".into()))
        }
        fn set(&self, _: &str, _: &str, _: Option<std::time::Duration>) -> Result<(), KvError> {
            Err(KvError::Unavailable("redis at h:1 is unreachable".into()))
        }
        fn compare_and_set(
            &self,
            _: &str,
            _: Option<&str>,
            _: &str,
            _: Option<std::time::Duration>,
        ) -> Result<bool, KvError> {
            Err(KvError::Unavailable("redis at h:1 is unreachable".into()))
        }
        fn delete(&self, _: &str) -> Result<(), KvError> {
            Err(KvError::Unavailable("redis at h:1 is unreachable".into()))
        }
    }

    #[test]
    fn kv_values_are_put_read_and_deleted_by_path() {
        let (app, _) = app();
        let auth = format!("Bearer {TOKEN}");
        let auth = Some(auth.as_str());
        let (status, _) = call_with_body(&app, Method::PUT, "/kv/my-module/a%20b+c", auth, b"v 1");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(app.state.kv.get("my-module/a b+c"), Ok(Some("v 1".into())));
        let (status, body) = call_with_body(&app, Method::GET, "/kv/my-module/a%20b+c", auth, b"");
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"v 1"[..]));
        let (status, _) = call_with_body(&app, Method::DELETE, "/kv/my-module/a%20b+c", auth, b"");
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(&app, Method::GET, "/kv/my-module/a%20b+c", auth);
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["key"], "my-module/a b+c");
    }

    #[test]
    fn kv_put_honours_ttl_ms_and_refuses_bad_input() {
        let (app, _) = app();
        let auth = format!("Bearer {TOKEN}");
        let auth = Some(auth.as_str());
        let (status, _) = call_with_body(&app, Method::PUT, "/kv/t?ttl_ms=30", auth, b"v");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(app.state.kv.get("t"), Ok(Some("v".into())));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(app.state.kv.get("t"), Ok(None));

        let too_long_key = format!("/kv/{}", "k".repeat(kv::MAX_KEY_BYTES + 1));
        for (uri, body, want) in [
            ("/kv/t?ttl_ms=0", &b"v"[..], StatusCode::BAD_REQUEST),
            ("/kv/t?ttl_ms=soon", b"v", StatusCode::BAD_REQUEST),
            ("/kv/t", b"\xff\xfe", StatusCode::BAD_REQUEST),
            ("/kv/", b"v", StatusCode::BAD_REQUEST),
            (too_long_key.as_str(), b"v", StatusCode::PAYLOAD_TOO_LARGE),
        ] {
            assert_eq!(
                call_with_body(&app, Method::PUT, uri, auth, body).0,
                want,
                "{uri}"
            );
        }
        assert_eq!(
            call_with_body(&app, Method::POST, "/kv/t", auth, b"v").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call_with_body(&app, Method::PUT, "/kv/t", None, b"v").0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn regions_are_closed_and_opened_through_their_state_key() {
        let (app, _) = app();
        let auth = format!("Bearer {TOKEN}");
        let auth = Some(auth.as_str());
        let (status, body) = call(&app, Method::POST, "/regions/eu-west/close", auth);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"region": "eu-west", "state": "closed", "key": "region/eu-west/state"})
        );
        assert_eq!(
            app.state.kv.get("region/eu-west/state"),
            Ok(Some("closed".into()))
        );
        call(&app, Method::POST, "/regions/eu-west/open", auth);
        assert_eq!(
            app.state.kv.get("region/eu-west/state"),
            Ok(Some("open".into()))
        );

        assert_eq!(
            call(&app, Method::GET, "/regions/eu-west/close", auth).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call(&app, Method::POST, "/regions/eu-west/shut", auth).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, Method::POST, "/regions/a/b/close", auth).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(&app, Method::POST, "/regions//close", auth).0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn an_unreachable_store_is_503_with_the_reason_and_reads_still_answer() {
        let cache = Arc::new(FakeCache::default());
        let upstreams =
            Upstreams::new(&[GroupConfig::default()], Arc::new(Metrics::new().unwrap())).unwrap();
        let app = AdminApp::new(AdminState {
            token: TOKEN.to_string(),
            cache,
            fleet: None,
            upstreams,
            kv: Arc::new(DownKv),
            modules: None,
            config_summary: json!({}),
        });
        let auth = format!("Bearer {TOKEN}");
        let auth = Some(auth.as_str());
        let (status, body) = call(&app, Method::POST, "/regions/eu/close", auth);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body["error"].as_str().unwrap().contains("unreachable"),
            "{body}"
        );
        assert_eq!(
            call(&app, Method::DELETE, "/kv/k", auth).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (status, body) = call_with_body(&app, Method::GET, "/kv/k", auth, b"");
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::OK, &b"last-known"[..])
        );
    }

    #[test]
    fn requests_without_the_right_token_get_401() {
        let (app, cache) = app();
        let bearer = format!("Bearer {TOKEN}");
        for auth in [
            None,
            Some("Bearer"),
            Some("Bearer wrong"),
            Some(&format!("Basic {TOKEN}")),
            Some(&bearer[..bearer.len() - 1]),
            Some(&format!("{bearer}x")),
        ] {
            let (status, _) = call(&app, Method::POST, "/purge?prefix=/live/a/&host=h", auth);
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        }
        assert!(cache.purged.lock().unwrap().is_empty());
        let (status, body) = call(&app, Method::GET, "/stats", Some(&bearer));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"items": 7}));
    }

    #[test]
    fn token_comparison_is_the_constant_time_one() {
        let (app, _) = app();
        let right = format!("Bearer {TOKEN}");
        assert!(app.authorized(Some(right.as_bytes())));
        // Same length, differs only in the last byte: rejected.
        let almost = format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1]);
        assert!(!app.authorized(Some(almost.as_bytes())));
        assert!(!app.authorized(Some(b"Bearer ")));
    }

    #[test]
    fn purge_accepts_paths_hosts_and_full_urls() {
        let (app, cache) = app();
        let auth = Some(format!("Bearer {TOKEN}"));
        let auth = auth.as_deref();
        let cases = [
            "/purge?url=/live/a/1.ts&host=cdn.example",
            "/purge?url=cdn.example/live/a/2.ts",
            "/purge?url=http%3A%2F%2Fcdn.example%2Flive%2Fa%2Findex.m3u8%3F_HLS_msn%3D5",
            "/purge?prefix=/live/a/&host=cdn.example",
        ];
        for uri in cases {
            let (status, _) = call(&app, Method::POST, uri, auth);
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
        assert_eq!(
            *cache.purged.lock().unwrap(),
            [
                "url cdn.example/live/a/1.ts",
                "url cdn.example/live/a/2.ts",
                "url cdn.example/live/a/index.m3u8?_HLS_msn=5",
                "prefix cdn.example/live/a/",
            ]
        );
        let (_, body) = call(&app, Method::POST, "/purge?prefix=/live/a/&host=h", auth);
        assert_eq!(body, json!({"purged": 3}));
    }

    #[test]
    fn bad_purges_are_400_and_wrong_methods_405() {
        let (app, _) = app();
        let auth = format!("Bearer {TOKEN}");
        let auth = Some(auth.as_str());
        for uri in [
            "/purge",
            "/purge?url=/a&prefix=/b",
            "/purge?url=no-slash",
            "/purge?url=/live/a/1.ts",
        ] {
            assert_eq!(
                call(&app, Method::POST, uri, auth).0,
                StatusCode::BAD_REQUEST,
                "{uri}"
            );
        }
        assert_eq!(
            call(&app, Method::GET, "/purge?url=/a", auth).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call(&app, Method::GET, "/nope", auth).0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn upstreams_and_config_are_reported_as_json() {
        let (app, _) = app();
        let auth = format!("Bearer {TOKEN}");
        let (status, body) = call(&app, Method::GET, "/upstreams", Some(&auth));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body[0]["name"], "default");
        assert_eq!(body[0]["active"], "primary");
        assert_eq!(body[0]["origins"][0]["healthy"], true);
        let (_, body) = call(&app, Method::GET, "/config", Some(&auth));
        assert_eq!(body, json!({"listen": "0.0.0.0:8080"}));
    }

    #[test]
    fn config_refuses_non_loopback_unless_allowed_and_short_tokens() {
        let mut config = AdminConfig {
            enabled: true,
            listen: "0.0.0.0:9090".to_string(),
            token: TOKEN.to_string(),
            allow_non_loopback: false,
            ..AdminConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(AdminError::InvalidConfig { key: "listen", .. })
        ));
        config.allow_non_loopback = true;
        assert_eq!(config.validate(), Ok(()));
        config.listen = "[::1]:9090".to_string();
        config.allow_non_loopback = false;
        assert_eq!(config.validate(), Ok(()));
        config.token = "short".to_string();
        assert!(matches!(
            config.validate(),
            Err(AdminError::InvalidConfig { key: "token", .. })
        ));
        assert_eq!(AdminConfig::default().validate(), Ok(()));
    }

    async fn fill(storage: &'static MokaStorage, key: &str) {
        use pingora::cache::storage::Storage;
        use pingora::cache::trace::Span;
        use pingora::cache::{CacheKey, CacheMeta};
        use std::time::{Duration, SystemTime};

        let now = SystemTime::now();
        let header = pingora::http::ResponseHeader::build(200, None).unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let mut writer = storage
            .get_miss_handler(&CacheKey::new(key, ""), &meta, &Span::inactive().handle())
            .await
            .unwrap();
        writer
            .write_body(bytes::Bytes::from_static(b"body"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
    }

    #[tokio::test]
    async fn storage_admin_builds_keys_with_the_rules_and_purges_them() {
        let storage = MokaStorage::new(1 << 20).leak();
        for key in [
            "h/live/a/1.ts",
            "h/live/a/2.ts",
            "h/live/b/1.ts",
            "other/live/a/3.ts",
        ] {
            fill(storage, key).await;
        }
        let key_for: KeyFn = Arc::new(|host, path, query| {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{}{path}{query}", host.unwrap_or(""))
        });
        let admin = StorageAdmin::new(storage, true, key_for);
        assert_eq!(admin.stats()["items"], 4);
        assert_eq!(
            admin.purge_url(None, "/live/a/1.ts", None),
            Err(AdminError::HostRequired)
        );
        assert_eq!(admin.purge_url(Some("h"), "/live/a/1.ts", None), Ok(1));
        assert_eq!(admin.purge_url(Some("h"), "/live/a/1.ts", None), Ok(0));
        assert_eq!(admin.purge_prefix(Some("h"), "/live/a/"), Ok(1));
        assert_eq!(admin.stats()["items"], 2);
    }
}
