//! The request path: [`EdgeProxy`], our [`ProxyHttp`] implementation.
//!
//! Pingora calls the phases below in this order; each one is a method in this file, in the same
//! order, so the whole path reads top to bottom:
//!
//! 1. `request_filter` — `/healthz`, origin protection, CORS preflights, method / size / path
//!    hardening, the embedded player (`/player/`), route choice, the policy modules' request
//!    hooks.
//!    Rejections become an [`Error`] with an HTTP status and go to `fail_to_proxy`.
//! 2. `request_cache_filter`, `cache_key_callback` — every GET/HEAD uses the cache, with the
//!    cache lock so concurrent misses coalesce into one origin fetch.
//! 3. `upstream_peer` — the route's group picks the origin: the active one first, a retry goes
//!    to the other.
//! 4. `upstream_request_filter` — `X-Forwarded-For`, `Via`; the origin-protection secret is not
//!    forwarded.
//! 5. `upstream_response_filter` — a 5xx while another origin is left becomes a retryable error,
//!    so pingora's retry loop calls `upstream_peer` again (nothing has reached the client yet).
//! 6. `response_cache_filter` — cacheability and TTL for the response.
//! 7. `response_filter` — `X-Cache`, `Via` on everything sent to the client, hits included.
//! 8. `logging` — one access-log line per request.
//!
//! Errors: `fail_to_connect` / `error_while_proxy` decide retries; `fail_to_proxy` is the one
//! place that maps an error to a client status.
//!
//! # Retries in pingora 0.9
//!
//! `process_request` loops over `proxy_to_upstream` while the returned error has its `retry`
//! flag set (at most `ServerConf::max_retries`, 16), calling `upstream_peer` again each time.
//! Connect failures pass through `fail_to_connect`, failures after connecting through
//! `error_while_proxy`; both set the flag here only while the group has an untried origin and
//! the client has not received a response header (`Session::response_written`), since a second
//! response cannot be spliced into a started one. An origin 5xx is not an error to pingora, so
//! `upstream_response_filter` turns it into a retryable `HTTPStatus` error: that filter runs on
//! the response header before the cache sees it and before anything goes downstream. A 5xx on
//! the last origin passes through (and is negatively cached by the rules). Stale-if-error runs
//! after the retry loop (`handle_stale_if_error`) and, for a stale object, on a 5xx header
//! (`revalidate_or_stale`); `should_serve_stale` declines the latter while the other origin is
//! untried, so the backup's fresh copy wins over a stale one.

use std::any::Any;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{CacheKey, CacheOptionOverrides, CachePhase, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompressionBuilder;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use tracing::{info, warn, Span};

use crate::config::{Config, LimitsConfig};
use crate::kv::KvStore;
use crate::metrics::Metrics;
use crate::player;
use crate::rules::CacheRules;
use crate::storage::{self, MokaStorage};
use crate::upstream::{FailureReason, Group, OriginId, RequestKind, Upstreams};
use crate::wasm::chain::{
    self, failure_error as module_failure, BodyBuffer, BodyRewrite, BodyRewriteBuilder, Skipped,
    Verdict,
};
use crate::wasm::view::{RequestView, SharedRequest};
use crate::wasm::{BodyStage, Chain, ModuleHost};

/// The `Via` pseudonym we add to requests and responses (RFC 9110 §7.6.3).
const VIA: &str = "1.1 parallax";

/// Whether this process should receive traffic. Shared by `/healthz` and the SIGTERM handler.
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    /// Switches `/healthz` to 503 for good: the load balancer should stop sending new requests
    /// while in-flight ones still complete.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True once [`Readiness::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// A host / path-prefix route resolved to a group index.
struct Route {
    host: String,
    path_prefix: String,
    group: usize,
}

/// Per-request state shared by the phases.
pub struct RequestCtx {
    started: Instant,
    span: Span,
    /// Index of the routed group in `Upstreams::groups`.
    group: usize,
    kind: RequestKind,
    /// Upstream attempts made so far (at most one per origin of the group).
    attempt: usize,
    /// The origin of the latest attempt and when its request went out.
    origin: Option<(OriginId, Instant)>,
    /// The policy modules this request runs, when a chain matched.
    modules: Option<Box<ModuleState>>,
}

/// A request's policy modules: the chain snapshot taken when it arrived (so it runs on one
/// version of each module to the end), the request as the request hooks left it (what later
/// hooks read), and the playlist bodies being collected for the body hooks.
struct ModuleState {
    chain: Chain,
    view: SharedRequest,
    /// The modules whose response hook is not to run on this request (they said so).
    skipped: Skipped,
    /// The origin's playlist, for before-cache body hooks (the after-cache stage runs as a
    /// downstream module).
    before_cache: BodyRewrite,
}

/// What the request path shares with the rest of the process: built once in
/// [`crate::build_server`], also handed to the admin API and the metrics endpoint.
pub struct Shared {
    /// Origin groups and their health.
    pub upstreams: Upstreams,
    /// The cache store.
    pub storage: &'static MokaStorage,
    /// TTL rules and the cache key.
    pub rules: CacheRules,
    /// Metric handles.
    pub metrics: Arc<Metrics>,
    /// Draining flag behind `/healthz`.
    pub readiness: Arc<Readiness>,
    /// The key-value store policy modules and the admin API share (`[kv]`).
    pub kv: Arc<dyn KvStore>,
    /// Policy modules, when `wasm.enabled`.
    pub modules: Option<Arc<ModuleHost>>,
}

/// The Parallax [`ProxyHttp`] implementation.
pub struct EdgeProxy {
    shared: Arc<Shared>,
    routes: Vec<Route>,
    cache_lock: &'static CacheKeyLockImpl,
    lock_wait_timeout: Duration,
    limits: LimitsConfig,
    /// `origin_protection`: the header and every accepted secret.
    protection: Option<(HeaderName, Vec<Vec<u8>>)>,
    /// `wasm.max_body_bytes`: the largest playlist body hooks see or return.
    module_max_body: usize,
    /// `player.enabled`: serve the embedded web player at `/player/`.
    player: bool,
}

impl EdgeProxy {
    /// Builds the proxy logic from a validated config and the process-wide parts.
    pub fn new(config: &Config, shared: Arc<Shared>) -> Result<Self> {
        let groups = shared.upstreams.groups();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let group = groups
                    .iter()
                    .position(|g| g.name() == r.group)
                    .or_err(ErrorType::InternalError, "route to unknown group")?;
                Ok(Route {
                    host: r.host.to_ascii_lowercase(),
                    path_prefix: r.path_prefix.clone(),
                    group,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let protection = match &config.origin_protection {
            Some(p) => Some((
                HeaderName::from_bytes(p.header.as_bytes())
                    .or_err(ErrorType::InternalError, "origin_protection.header")?,
                p.accepted().map(|s| s.as_bytes().to_vec()).collect(),
            )),
            None => None,
        };
        // Pingora's cache API takes a `&'static` lock: it lives as long as the process, so
        // leaking the one instance per server is the intended use.
        let cache_lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(
            Duration::from_millis(config.cache.lock_age_timeout_ms),
        ));
        Ok(EdgeProxy {
            shared,
            routes,
            cache_lock,
            lock_wait_timeout: Duration::from_millis(config.cache.lock_wait_timeout_ms),
            limits: config.limits.clone(),
            protection,
            module_max_body: config.wasm.max_body_bytes,
            player: config.player.enabled,
        })
    }

    fn group(&self, ctx: &RequestCtx) -> &Arc<Group> {
        let groups = self.shared.upstreams.groups();
        // `Upstreams::new` refuses an empty group list, so index 0 exists.
        groups.get(ctx.group).unwrap_or(&groups[0])
    }

    /// Whether another origin is left to try after the attempts made so far.
    fn retry_left(&self, ctx: &RequestCtx) -> bool {
        ctx.attempt < self.group(ctx).max_attempts()
    }

    /// The first route matching host and path, else the first group.
    fn route(&self, host: &str, path: &str) -> usize {
        let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
        self.routes
            .iter()
            .find(|r| (r.host.is_empty() || r.host == host) && path.starts_with(&r.path_prefix))
            .map_or(0, |r| r.group)
    }

    /// Hardening checks on the request head; `Err` carries the status to answer with.
    fn check_request(&self, req: &RequestHeader) -> Result<()> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Error::e_explain(ErrorType::HTTPStatus(405), "method not allowed");
        }
        if req.raw_path().len() > self.limits.max_uri_bytes {
            return Error::e_explain(ErrorType::HTTPStatus(414), "request target too long");
        }
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if header_bytes > self.limits.max_header_bytes {
            return Error::e_explain(ErrorType::HTTPStatus(431), "request headers too large");
        }
        if !path_is_normal(req.uri.path()) {
            return Error::e_explain(ErrorType::HTTPStatus(400), "dot segment in path");
        }
        Ok(())
    }

    fn protected_ok(&self, req: &RequestHeader) -> bool {
        let Some((name, secrets)) = &self.protection else {
            return true;
        };
        // Every secret is compared (no early exit), each in constant time: the time taken
        // tells nothing about which one, if any, matched.
        req.headers.get(name).is_some_and(|v| {
            secrets.iter().fold(false, |ok, secret| {
                ok | constant_time_eq(v.as_bytes(), secret)
            })
        })
    }

    /// Runs the request hooks of `chain` (request filter phase). `Ok(true)`: a module answered
    /// and the response is written.
    async fn run_request_modules(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        chain: Chain,
    ) -> Result<bool> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let group = self.group(ctx).name().to_owned();
        let mut view = Arc::new(RequestView::new(
            session.req_header(),
            client_ip,
            group.clone(),
        ));
        let upstreams = &self.shared.upstreams;
        let mut skipped = Skipped::default();
        let verdict = chain::run_request_hooks(
            &chain,
            &mut view,
            session.req_header_mut(),
            |name| upstreams.group(name).is_some(),
            self.module_max_body,
            &mut skipped,
            &self.shared.metrics,
        );
        match verdict {
            Verdict::Continue => {
                if view.upstream_group() != group {
                    if let Some(index) = upstreams
                        .groups()
                        .iter()
                        .position(|g| g.name() == view.upstream_group())
                    {
                        ctx.group = index;
                    }
                }
                // A rewritten request passes the same checks as one sent by a client.
                self.check_request(session.req_header())?;
                ctx.kind = RequestKind::from_path(session.req_header().uri.path());
                ctx.modules = Some(Box::new(ModuleState {
                    chain,
                    view,
                    skipped,
                    before_cache: BodyRewrite::default(),
                }));
                Ok(false)
            }
            Verdict::Respond(mut head, body) => {
                let metrics = &self.shared.metrics;
                chain::run_response_hooks(&chain, &view, &mut head, "LOCAL", skipped, metrics)
                    .map_err(module_failure)?;
                head.insert_header(header::VIA, VIA)?;
                respond_locally(session, head, body).await
            }
            Verdict::Fail(status) => Err(module_failure(status)),
        }
    }
}

/// Answers a request the proxy serves itself (`/healthz`, the player, a module's local
/// response): the head, then the body unless the request is HEAD.
async fn respond_locally(
    session: &mut Session,
    head: Box<ResponseHeader>,
    body: Bytes,
) -> Result<bool> {
    let head_only = session.req_header().method == Method::HEAD;
    session.write_response_header(head, head_only).await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

/// The whole stored body a response served from the cache is about to send (shared, not
/// copied); `None` when the response is not served from a complete stored object.
fn stored_body(session: &mut Session) -> Option<Bytes> {
    match session.cache.phase() {
        // The phases in which pingora serves from a hit handler.
        CachePhase::Hit
        | CachePhase::Stale
        | CachePhase::StaleUpdating
        | CachePhase::Revalidated
        | CachePhase::RevalidatedNoCache(_) => storage::whole_body(session.cache.hit_handler()),
        _ => None,
    }
}

/// A response of `status` with no body that nobody should store: errors and fail-closed
/// module failures.
fn empty_response(status: u16) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_LENGTH, 0)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    Ok(resp)
}

/// What the proxy serves (the `Allow` of a 405), and what a CORS preflight may ask for.
const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";

/// A browser's CORS preflight: `OPTIONS` with `Origin` and an `Access-Control-Request-Method`
/// of GET or HEAD (a player on another site sending, say, a token header).
fn is_cors_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| m == "GET" || m == "HEAD")
}

/// Answers a CORS preflight here, without the cache or an origin: any origin may GET/HEAD with
/// the headers it asked for (the streams are public or token-protected, never cookie-only
/// secrets, and the origin's own responses already say `Access-Control-Allow-Origin: *`).
async fn answer_preflight(session: &mut Session) -> Result<bool> {
    let requested = session
        .req_header()
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned();
    let mut resp = ResponseHeader::build(204, Some(6))?;
    resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")?;
    resp.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS)?;
    if let Some(requested) = requested {
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, requested)?;
    }
    resp.insert_header(header::ACCESS_CONTROL_MAX_AGE, "86400")?;
    resp.insert_header(header::VARY, "Origin, Access-Control-Request-Headers")?;
    respond_locally(session, Box::new(resp), Bytes::new()).await
}

/// Serves the embedded web player (`player.enabled`): a redirect to `/player/`, a file with
/// its ETag (304 when the browser has it), or 404.
async fn serve_player(session: &mut Session, route: player::Route) -> Result<bool> {
    let asset = match route {
        player::Route::File(asset) => asset,
        player::Route::Redirect(location) => {
            let mut resp = ResponseHeader::build(301, Some(3))?;
            resp.insert_header(header::LOCATION, location)?;
            resp.insert_header(header::CONTENT_LENGTH, 0)?;
            resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
            return respond_locally(session, Box::new(resp), Bytes::new()).await;
        }
        player::Route::NotFound | player::Route::NotPlayer => {
            return Error::e_explain(ErrorType::HTTPStatus(404), "no such player file");
        }
    };
    let etag = asset.etag();
    let cached = session
        .req_header()
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| player::not_modified(v, etag));
    let (status, body) = if cached {
        (304, Bytes::new())
    } else {
        (200, Bytes::from_static(asset.body))
    };
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(header::ETAG, etag)?;
    resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
    if !cached {
        resp.insert_header(header::CONTENT_TYPE, asset.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
    }
    respond_locally(session, Box::new(resp), body).await
}

/// Rejects `.` and `..` segments, also percent-encoded: a cache keyed on the raw path would
/// otherwise store one object under many names, and some origins resolve them on disk.
fn path_is_normal(path: &str) -> bool {
    path.starts_with('/') && !path.split('/').any(is_dot_segment)
}

/// Whether a path segment decodes to `.` or `..`, each dot written as `.` or `%2e`/`%2E`.
/// Runs on every request, so it reads the bytes in place instead of decoding into a new string.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() && dots < 3 {
        rest = match rest {
            [b'.', tail @ ..] | [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    rest.is_empty() && (1..=2).contains(&dots)
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// secret was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The metric label for an `X-Cache` value (labels are lowercase by Prometheus convention).
fn cache_label(status: &str) -> &'static str {
    match status {
        "HIT" => "hit",
        "MISS" => "miss",
        "STALE" => "stale",
        "EXPIRED" => "expired",
        "REVALIDATED" => "revalidated",
        _ => "bypass",
    }
}

/// The `X-Cache` value for the cache phase a response was served in.
fn cache_status(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        CachePhase::Disabled(_)
        | CachePhase::Bypass
        | CachePhase::Uninit
        | CachePhase::CacheKey => "BYPASS",
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        // Pingora's default: its response compression module, off.
        modules.add_module(ResponseCompressionBuilder::enable(0));
        if self.shared.modules.is_some() {
            modules.add_module(Box::new(BodyRewriteBuilder));
        }
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            span: Span::none(),
            group: 0,
            kind: RequestKind::Media,
            attempt: 0,
            origin: None,
            modules: None,
        }
    }

    // 1. Request filters.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let path = req.uri.path().to_owned();
        // A debug span: at the default `info` level it is disabled and costs nothing. The
        // access line carries the same fields, and an info span formatted its fields for every
        // request (the access log cost 35 % more CPU per playlist hit with it).
        ctx.span = tracing::debug_span!(
            "request",
            method = %req.method,
            path = %path,
            client = session.client_addr().map(tracing::field::display),
        );

        // Health checks come from the load balancer, not through CloudFront: answer them before
        // origin protection.
        if path == "/healthz" {
            let (status, body) = if self.shared.readiness.is_draining() {
                (503, "draining\n")
            } else {
                (200, "ok\n")
            };
            let mut resp = ResponseHeader::build(status, Some(3))?;
            resp.insert_header(header::CONTENT_LENGTH, body.len())?;
            resp.insert_header(header::CACHE_CONTROL, "no-store")?;
            resp.insert_header(header::CONTENT_TYPE, "text/plain")?;
            return respond_locally(session, Box::new(resp), Bytes::from_static(body.as_bytes()))
                .await;
        }

        if !self.protected_ok(req) {
            return Error::e_explain(ErrorType::HTTPStatus(403), "origin-protection header");
        }
        if is_cors_preflight(req) {
            return answer_preflight(session).await;
        }
        self.check_request(req)?;
        if self.player {
            match player::route(&path, req.uri.query()) {
                player::Route::NotPlayer => {}
                route => return serve_player(session, route).await,
            }
        }

        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or_default()
            .to_owned();
        ctx.group = self.route(&host, &path);
        ctx.kind = RequestKind::from_path(&path);
        if let Some(modules) = &self.shared.modules {
            if let Some(chain) = modules.chain_for(&host, &path) {
                return self.run_request_modules(session, ctx, chain).await;
            }
        }
        Ok(false)
    }

    // 2. Cache decisions.
    fn request_cache_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_wait_timeout);
        session.cache.enable(
            self.shared.storage,
            None,
            None,
            Some(self.cache_lock),
            Some(overrides),
        );
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, _ctx: &mut RequestCtx) -> Result<CacheKey> {
        // The primary is the readable key string (not a hash of it) so the admin API can purge
        // by URL or by stream prefix.
        let key = self.shared.rules.cache_key(session.req_header().as_ref());
        Ok(CacheKey::new(key, ""))
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        let Some(error) = error else {
            // Stale-while-revalidate: pingora only asks once the object's SWR window allows it,
            // and holds the cache lock so one background revalidation goes upstream.
            return true;
        };
        if error.esource() != &ErrorSource::Upstream {
            return false;
        }
        // An origin 5xx while the other origin is still untried: retry there first (a fresh
        // playlist from the backup beats a stale one).
        !(matches!(error.etype(), ErrorType::HTTPStatus(_))
            && self.retry_left(ctx)
            && session.response_written().is_none())
    }

    // 3. Upstream choice.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // The peer carries the connect timeout and, as pingora's per-read timeout, the
        // first-byte timeout for this kind of object. A retry goes to the other origin than the
        // one that just failed (`ctx.origin` still names it).
        let previous = ctx.origin.map(|(origin, _)| origin);
        let (origin, peer) = self.group(ctx).pick(previous, ctx.kind);
        ctx.attempt += 1;
        ctx.origin = Some((origin, Instant::now()));
        Ok(peer)
    }

    // 4. Request to the origin.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some((name, _)) = &self.protection {
            upstream.remove_header(name);
        }
        if let Some((origin, _)) = ctx.origin {
            if let Some(host) = self.group(ctx).host_header(origin) {
                upstream.insert_header(header::HOST, host)?;
            }
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            append_forwarded_for(upstream, ip)?;
        }
        let via = via_value(upstream.headers.get(header::VIA))?;
        upstream.insert_header(header::VIA, via)
    }

    // 5. Response from the origin (before caching).
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let group = self.group(ctx);
        if let Some((origin, sent)) = ctx.origin {
            self.shared.metrics.observe_origin_request(
                group.name(),
                origin.as_str(),
                sent.elapsed().as_secs_f64(),
            );
            if upstream.status.is_server_error() {
                group.report_failure(origin, FailureReason::Status5xx);
            } else {
                group.report_success(origin);
            }
        }
        if upstream.status.is_server_error()
            && self.retry_left(ctx)
            && session.response_written().is_none()
        {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(upstream.status.as_u16()),
                "origin answered 5xx, retrying on the other origin",
            );
            e.set_retry(true);
            return Err(e.into_up());
        }
        if let Some(m) = ctx.modules.as_deref_mut() {
            let req = session.req_header();
            if chain::wants_body(
                &m.chain,
                BodyStage::BeforeCache,
                &req.method,
                upstream.status,
            ) && chain::is_playlist(req.uri.path(), upstream)
            {
                // Before the cache sees the header: the stored object is the rewritten one.
                chain::unframe(upstream)?;
                let buffer =
                    BodyBuffer::new(BodyStage::BeforeCache, upstream, self.module_max_body);
                m.before_cache.start(
                    m.chain.clone(),
                    m.view.clone(),
                    buffer,
                    self.shared.metrics.clone(),
                );
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(m) = ctx.modules.as_deref_mut() {
            m.before_cache.feed(body, end_of_stream)?;
        }
        Ok(None)
    }

    // 6. Cacheability.
    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let path = session.req_header().uri.path();
        Ok(self.shared.rules.response_cacheable(path, resp))
    }

    // 7. Response to the client (hits included).
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let cache = cache_status(session.cache.phase());
        resp.insert_header("x-cache", cache)?;
        let via = via_value(resp.headers.get(header::VIA))?;
        resp.insert_header(header::VIA, via)?;
        if let Some(m) = ctx.modules.as_deref_mut() {
            let metrics = &self.shared.metrics;
            if let Err(status) =
                chain::run_response_hooks(&m.chain, &m.view, resp, cache, m.skipped, metrics)
            {
                // A fail-closed failure replaces the header in place rather than failing the
                // request: pingora answers a failed response filter on a cache hit with its own
                // 500. The body that follows is dropped by the framing (`Content-Length: 0`).
                *resp = empty_response(status)?;
                return Ok(());
            }
            let req = session.req_header();
            if chain::wants_body(&m.chain, BodyStage::AfterCache, &req.method, resp.status)
                && chain::is_playlist(req.uri.path(), resp)
            {
                // A complete stored playlist is rewritten now, so the new body keeps exact
                // framing; one still arriving (a miss, a fill being streamed) is collected as
                // it goes out and sent chunked.
                let stored = stored_body(session);
                let Some(rewriter) = session.downstream_modules_ctx.get_mut::<BodyRewrite>() else {
                    return Ok(());
                };
                let max = self.module_max_body;
                if let Some(body) = stored {
                    match chain::rewrite_whole(&m.chain, &m.view, resp, &body, max, metrics) {
                        Ok(Some(new)) => rewriter.replace(new),
                        Ok(None) => {}
                        Err(status) => *resp = empty_response(status)?,
                    }
                } else {
                    chain::unframe(resp)?;
                    let buffer = BodyBuffer::new(BodyStage::AfterCache, resp, max);
                    rewriter.start(m.chain.clone(), m.view.clone(), buffer, metrics.clone());
                }
            }
        }
        Ok(())
    }

    // Errors and retries.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some((origin, _)) = ctx.origin {
            self.group(ctx)
                .report_failure(origin, FailureReason::classify(&e));
        }
        // Connection refused / connect timeout: nothing was sent, always safe to try the other
        // origin if there is one.
        e.set_retry(self.retry_left(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // Our own 5xx retry error was already reported in `upstream_response_filter`. A client
        // that hangs up mid-body also lands here (as a downstream error) and says nothing about
        // the origin: counting it would take a healthy origin down.
        let origin_failed =
            e.esource() == &ErrorSource::Upstream && !matches!(e.etype(), ErrorType::HTTPStatus(_));
        if let (Some((origin, _)), true) = (ctx.origin, origin_failed) {
            self.group(ctx)
                .report_failure(origin, FailureReason::classify(&e));
        }
        // Retry on the other origin only while the client has seen nothing: after the response
        // header went out, a second response cannot be spliced in.
        let retry = self.retry_left(ctx) && session.response_written().is_none();
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = error_status(e);
        if status == 0 || session.response_written().is_some() {
            // The client is gone or already has a (partial) response: closing is all we can do.
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if status >= 500 {
            let origin = ctx.origin.map(|(o, _)| o.as_str());
            let req = session.req_header();
            warn!(
                parent: &ctx.span,
                method = %req.method,
                path = %req.uri.path(),
                error = %e,
                status,
                origin,
                "proxy error"
            );
        }
        let written = async {
            let mut resp = empty_response(status)?;
            if status == 405 {
                resp.insert_header(header::ALLOW, ALLOWED_METHODS)?;
            }
            session.write_response_header(Box::new(resp), true).await
        }
        .await;
        FailToProxy {
            error_code: status,
            // 4xx from our own checks leave the connection in a clean state, but a client that
            // sent garbage does not deserve keepalive.
            can_reuse_downstream: written.is_ok() && status < 400,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // Client errors and the handled 5xx are in the access log; pingora's error log would
        // repeat them.
        matches!(e.etype(), ErrorType::HTTPStatus(_))
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        Some(Box::new(ConnectionReused))
    }

    // 8. Access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // Undo `HeaderTimeout`'s short first-request timeout for the idle time until the next
        // request, unless pingora already decided not to keep the connection.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.limits.keepalive_timeout_secs));
        }
        let req = session.req_header();
        let status = session
            .response_written()
            .map_or_else(|| e.map_or(0, error_status), |r| r.status.as_u16());
        let cache = cache_status(session.cache.phase());
        let bytes = session.body_bytes_sent();
        let metrics = &self.shared.metrics;
        metrics
            .requests
            .with_label_values(&[cache_label(cache)])
            .inc();
        metrics.bytes_served.inc_by(bytes as u64);
        if session.cache.lock_duration().is_some() {
            metrics.coalesced_waiters.inc();
        }
        let _entered = ctx.span.enter();
        info!(
            target: "access",
            method = %req.method,
            path = %req.uri.path(),
            client = session.client_addr().map(tracing::field::display),
            status,
            cache,
            group = self.group(ctx).name(),
            upstream = ctx.origin.map_or("-", |(o, _)| o.as_str()),
            attempts = ctx.attempt,
            bytes,
            duration_ms = ctx.started.elapsed().as_millis() as u64,
            background = session.subrequest_ctx.is_some(),
            error = e.map(|e| e.to_string()),
        );
    }
}

/// The one mapping from a proxy error to the status the client gets (0 = no response possible).
fn error_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

fn append_forwarded_for(req: &mut RequestHeader, ip: IpAddr) -> Result<()> {
    let value = match req.headers.get("x-forwarded-for").map(|v| v.to_str()) {
        Some(Ok(existing)) if !existing.is_empty() => format!("{existing}, {ip}"),
        _ => ip.to_string(),
    };
    req.insert_header("x-forwarded-for", value)
}

/// `Via` with our pseudonym appended to what earlier hops wrote.
fn via_value(existing: Option<&HeaderValue>) -> Result<HeaderValue> {
    match existing.map(|v| v.to_str()) {
        Some(Ok(existing)) if !existing.is_empty() => {
            HeaderValue::from_str(&format!("{existing}, {VIA}"))
                .or_err(ErrorType::InternalError, "via header")
        }
        _ => Ok(HeaderValue::from_static(VIA)),
    }
}

/// Marks a downstream connection that already carried a request; see [`HeaderTimeout`].
struct ConnectionReused;

/// Wraps pingora's HTTP app to bound how long a new client may stall while sending its first
/// request head (slowloris).
///
/// `ProxyHttp` only gets control after a head is complete, so the limit has to be set on the
/// session before it is handed over. Pingora applies the keepalive timeout (60 s by default) to
/// every read of a request head, so for a connection's first request the keepalive timeout is
/// lowered to the header timeout; [`EdgeProxy`]'s `logging` phase restores the idle keepalive
/// timeout once a request completes, and `persist_connection_context` marks the connection as
/// reused so later requests keep it (a load balancer's idle pooled connections must not be cut
/// at the header timeout: ALBs answer 502 when a target closes a connection they reuse). The
/// timeout is per read, like nginx's `client_header_timeout`; on reused connections it is the
/// idle keepalive timeout.
pub struct HeaderTimeout<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> HeaderTimeout<A> {
    /// Wraps `inner`, closing new connections that stay silent for `timeout` mid-head.
    pub fn new(inner: A, timeout: Duration) -> Self {
        HeaderTimeout {
            inner: Arc::new(inner),
            timeout,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for HeaderTimeout<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let reused = session
            .take_connection_user_context()
            .is_some_and(|ctx| ctx.is::<ConnectionReused>());
        if !reused {
            session.set_read_timeout(Some(self.timeout));
            if session.get_keepalive().is_some() {
                // Whole seconds is pingora's keepalive unit; 0 would mean "no timeout".
                let secs = self.timeout.as_millis().div_ceil(1000).max(1);
                session.set_keepalive(Some(u64::try_from(secs).unwrap_or(u64::MAX)));
            }
        }
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_rejected_in_any_spelling() {
        for bad in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a/%2E",
            "/a/%2e.",
            "relative",
        ] {
            assert!(!path_is_normal(bad), "{bad}");
        }
        for good in [
            "/",
            "/live/stream.m3u8",
            "/a..b/c",
            "/.well-known/x",
            "/a/.../b",
            "/a/%2e%2e%2e/b",
            "/a/%2f/b",
            "/a/%2/b",
        ] {
            assert!(path_is_normal(good), "{good}");
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcde"));
    }

    #[test]
    fn upstream_errors_map_to_gateway_statuses() {
        let refused = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(error_status(&refused), 502);
        let timeout = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(error_status(&timeout), 504);
        let status = Error::new(ErrorType::HTTPStatus(405));
        assert_eq!(error_status(&status), 405);
        let gone = Error::new(ErrorType::WriteError).into_down();
        assert_eq!(error_status(&gone), 0);
    }
}
