//! The request path: [`EdgeProxy`], our [`ProxyHttp`] implementation.
//!
//! Pingora calls the phases below in this order; each one is a method in this file, in the same
//! order, so the whole path reads top to bottom:
//!
//! 1. `request_filter` — `/healthz`, origin protection, method / size / path hardening, route
//!    choice. Rejections become an [`Error`] with an HTTP status and go to `fail_to_proxy`.
//! 2. `request_cache_filter`, `cache_key_callback` — every GET/HEAD uses the cache, with the
//!    cache lock so concurrent misses coalesce into one origin fetch.
//! 3. `upstream_peer` — the route's group picks an origin for this attempt (0 = primary).
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

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::cache::cache_control::CacheControl;
use pingora::cache::filters::resp_cacheable;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMetaDefaults, CacheOptionOverrides, CachePhase, MemCache, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use tracing::{info, warn, Span};

use crate::config::{Config, GroupConfig, LimitsConfig};

/// The `Via` pseudonym we add to requests and responses (RFC 9110 §7.6.3).
const VIA: &str = "1.1 parallax";

/// Whether this process should receive traffic. Shared by `/healthz`, the SIGTERM handler and
/// the admin API.
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

/// What kind of object a path names; decides timeouts (and, via the rules, TTLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A live or VOD playlist (`.m3u8`): small, short-lived, latency-critical.
    Playlist,
    /// Media segments and everything else.
    Segment,
}

impl ObjectKind {
    fn of(path: &str) -> Self {
        if path.ends_with(".m3u8") {
            ObjectKind::Playlist
        } else {
            ObjectKind::Segment
        }
    }
}

/// An origin pair picked per attempt. Attempt 0 goes to the primary, later attempts alternate
/// with the backup when there is one.
struct OriginPair {
    config: GroupConfig,
}

impl OriginPair {
    fn attempts(&self) -> usize {
        if self.config.backup.is_some() {
            2
        } else {
            1
        }
    }

    fn pick(&self, attempt: usize) -> &str {
        match (&self.config.backup, attempt % 2) {
            (Some(backup), 1) => backup,
            _ => &self.config.primary,
        }
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
    group: usize,
    kind: ObjectKind,
    /// Upstream attempts made so far; the next `upstream_peer` call uses this as its index.
    attempt: usize,
    /// The origin of the latest attempt, for logs.
    origin: Option<String>,
}

/// The Parallax [`ProxyHttp`] implementation.
pub struct EdgeProxy {
    groups: Vec<OriginPair>,
    routes: Vec<Route>,
    storage: &'static MemCache,
    cache_lock: &'static CacheKeyLockImpl,
    lock_wait_timeout: Duration,
    limits: LimitsConfig,
    protection: Option<(HeaderName, Vec<u8>)>,
    readiness: Arc<Readiness>,
}

impl EdgeProxy {
    /// Builds the proxy logic from a validated config.
    pub fn new(config: &Config, readiness: Arc<Readiness>) -> Result<Self> {
        let groups: Vec<OriginPair> = config
            .upstream
            .iter()
            .map(|g| OriginPair { config: g.clone() })
            .collect();
        let routes = config
            .route
            .iter()
            .map(|r| {
                let group = config
                    .upstream
                    .iter()
                    .position(|g| g.name == r.group)
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
                p.secret.as_bytes().to_vec(),
            )),
            None => None,
        };
        // Pingora's cache API takes `&'static` storage and lock: they live as long as the
        // process, so leaking the one instance per server is the intended use.
        let storage: &'static MemCache = Box::leak(Box::new(MemCache::new()));
        let cache_lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(
            Duration::from_millis(config.cache.lock_age_timeout_ms),
        ));
        Ok(EdgeProxy {
            groups,
            routes,
            storage,
            cache_lock,
            lock_wait_timeout: Duration::from_millis(config.cache.lock_wait_timeout_ms),
            limits: config.limits.clone(),
            protection,
            readiness,
        })
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
        let Some((name, secret)) = &self.protection else {
            return true;
        };
        req.headers
            .get(name)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), secret))
    }
}

/// Rejects `.` and `..` segments, also percent-encoded: a cache keyed on the raw path would
/// otherwise store one object under many names, and some origins resolve them on disk.
fn path_is_normal(path: &str) -> bool {
    path.starts_with('/')
        && path.split('/').all(|segment| {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            decoded != "." && decoded != ".."
        })
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// secret was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
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

/// TTLs by status while no per-rule configuration is loaded: playlists 1 s, segments 1 day,
/// 404/5xx 1 s of negative caching. Origin `Cache-Control` takes precedence.
const PLAYLIST_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(
    |status| match status.as_u16() {
        200 => Some(Duration::from_secs(1)),
        404 | 500..=599 => Some(Duration::from_secs(1)),
        _ => None,
    },
    0,
    0,
);
const SEGMENT_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(
    |status| match status.as_u16() {
        200 => Some(Duration::from_secs(86_400)),
        404 | 500..=599 => Some(Duration::from_secs(1)),
        _ => None,
    },
    0,
    0,
);

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            span: Span::none(),
            group: 0,
            kind: ObjectKind::Segment,
            attempt: 0,
            origin: None,
        }
    }

    // 1. Request filters.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let path = req.uri.path().to_owned();
        ctx.span = tracing::info_span!(
            "request",
            method = %req.method,
            path = %path,
            client = ?session.client_addr().map(|a| a.to_string()),
        );

        // Health checks come from the load balancer, not through CloudFront: answer them before
        // origin protection.
        if path == "/healthz" {
            let (status, body) = if self.readiness.is_draining() {
                (503, "draining\n")
            } else {
                (200, "ok\n")
            };
            let mut resp = ResponseHeader::build(status, Some(3))?;
            resp.insert_header(header::CONTENT_LENGTH, body.len())?;
            resp.insert_header(header::CACHE_CONTROL, "no-store")?;
            resp.insert_header(header::CONTENT_TYPE, "text/plain")?;
            session.write_response_header(Box::new(resp), false).await?;
            session
                .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
                .await?;
            return Ok(true);
        }

        if !self.protected_ok(req) {
            return Error::e_explain(ErrorType::HTTPStatus(403), "origin-protection header");
        }
        self.check_request(req)?;

        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or_default()
            .to_owned();
        ctx.group = self.route(&host, &path);
        ctx.kind = ObjectKind::of(&path);
        Ok(false)
    }

    // 2. Cache decisions.
    fn request_cache_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_wait_timeout);
        session.cache.enable(
            self.storage,
            None,
            None,
            Some(self.cache_lock),
            Some(overrides),
        );
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, _ctx: &mut RequestCtx) -> Result<CacheKey> {
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        Ok(CacheKey::new(format!("{host}{}", req.uri.path()), ""))
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
        let retry_left = ctx.attempt < self.groups[ctx.group].attempts();
        !(matches!(error.etype(), ErrorType::HTTPStatus(_))
            && retry_left
            && session.response_written().is_none())
    }

    // 3. Upstream choice.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let group = &self.groups[ctx.group];
        let addr = group.pick(ctx.attempt).to_owned();
        ctx.attempt += 1;
        let mut peer = HttpPeer::new(addr.as_str(), false, String::new());
        peer.options.connection_timeout =
            Some(Duration::from_millis(group.config.connect_timeout_ms));
        // Pingora's read timeout bounds every read from the origin, the first one included:
        // that makes it our first-byte timeout.
        let first_byte_ms = match ctx.kind {
            ObjectKind::Playlist => group.config.playlist_first_byte_timeout_ms,
            ObjectKind::Segment => group.config.first_byte_timeout_ms,
        };
        peer.options.read_timeout = Some(Duration::from_millis(first_byte_ms));
        ctx.origin = Some(addr);
        Ok(Box::new(peer))
    }

    // 4. Request to the origin.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some((name, _)) = &self.protection {
            upstream.remove_header(name);
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
        let retry_left = ctx.attempt < self.groups[ctx.group].attempts();
        if upstream.status.is_server_error() && retry_left && session.response_written().is_none() {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(upstream.status.as_u16()),
                "origin answered 5xx, retrying on the other origin",
            );
            e.set_retry(true);
            return Err(e.into_up());
        }
        Ok(())
    }

    // 6. Cacheability.
    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let defaults = match ctx.kind {
            ObjectKind::Playlist => &PLAYLIST_DEFAULTS,
            ObjectKind::Segment => &SEGMENT_DEFAULTS,
        };
        let cc = CacheControl::from_resp_headers(resp);
        Ok(resp_cacheable(cc.as_ref(), resp.clone(), false, defaults))
    }

    // 7. Response to the client (hits included).
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("x-cache", cache_status(session.cache.phase()))?;
        let via = via_value(resp.headers.get(header::VIA))?;
        resp.insert_header(header::VIA, via)
    }

    // Errors and retries.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Connection refused / connect timeout: nothing was sent, always safe to try the other
        // origin if there is one.
        e.set_retry(ctx.attempt < self.groups[ctx.group].attempts());
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
        // Retry on the other origin only while the client has seen nothing: after the response
        // header went out, a second response cannot be spliced in.
        let retry =
            ctx.attempt < self.groups[ctx.group].attempts() && session.response_written().is_none();
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
            warn!(parent: &ctx.span, error = %e, status, origin = ?ctx.origin, "proxy error");
        }
        let written = async {
            let mut resp = ResponseHeader::build(status, Some(4))?;
            resp.insert_header(header::CONTENT_LENGTH, 0)?;
            resp.insert_header(header::CACHE_CONTROL, "no-store")?;
            if status == 405 {
                resp.insert_header(header::ALLOW, "GET, HEAD")?;
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

    // 8. Access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let status = session
            .response_written()
            .map_or_else(|| e.map_or(0, error_status), |r| r.status.as_u16());
        let _entered = ctx.span.enter();
        info!(
            target: "access",
            method = %req.method,
            path = %req.uri.path(),
            status,
            cache = cache_status(session.cache.phase()),
            upstream = ctx.origin.as_deref().unwrap_or("-"),
            attempts = ctx.attempt,
            bytes = session.body_bytes_sent(),
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

/// Wraps pingora's HTTP app to bound how long a client may stall while sending a request head.
///
/// Pingora reads request heads with a 60 s timeout per read and `ProxyHttp` gets control only
/// after the head is complete, so the limit has to be set on the session before it is handed
/// over. The timeout is per read, like nginx's `client_header_timeout`: a client trickling a
/// byte just under the limit keeps its connection, but holds one idle socket, not a worker.
pub struct HeaderTimeout<A> {
    inner: Arc<A>,
    timeout: Duration,
}

impl<A> HeaderTimeout<A> {
    /// Wraps `inner`, closing connections that stay silent for `timeout` mid-head.
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
        session.set_read_timeout(Some(self.timeout));
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
            "relative",
        ] {
            assert!(!path_is_normal(bad), "{bad}");
        }
        for good in ["/", "/live/stream.m3u8", "/a..b/c", "/.well-known/x"] {
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

    #[test]
    fn playlists_are_told_apart_from_segments() {
        assert_eq!(ObjectKind::of("/live/a/index.m3u8"), ObjectKind::Playlist);
        assert_eq!(ObjectKind::of("/live/a/12.ts"), ObjectKind::Segment);
    }
}
