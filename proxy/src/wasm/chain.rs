//! Running a chain of modules on one request: the conversions between pingora's headers and
//! the WIT values, what each hook's answer does, and the one place a failed call is logged,
//! counted and turned into the module's failure policy ([`failed`]).
//!
//! The request path ([`crate::service`]) calls, per request that matches a chain:
//! 1. [`run_request_hooks`] in `request_filter`, before the cache lookup;
//! 2. [`run_response_hooks`] in `response_filter` (and on local responses);
//! 3. a [`BodyRewrite`] fed from `upstream_response_body_filter` (before-cache stage) or
//!    running as a pingora downstream module (after-cache stage), which runs
//!    [`run_body_hooks`] once the whole playlist is in.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::{Error, ErrorType};

use super::config::{BodyStage, FailurePolicy};
use super::host::wit;
use super::registry::Chain;
use super::runtime::{Bound, CallError};
use super::view::{ResponseView, SharedRequest};
use crate::metrics::Metrics;

/// Which hook a call was, for logs and the `hook` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `on-request`.
    Request = 0,
    /// `on-response`.
    Response = 1,
    /// `rewrite-body`.
    Body = 2,
}

impl Hook {
    /// Every hook, in discriminant order.
    pub const ALL: [Hook; 3] = [Hook::Request, Hook::Response, Hook::Body];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Request => "request",
            Hook::Response => "response",
            Hook::Body => "body",
        }
    }
}

/// The modules of a chain, by position, whose request hook asked for their response hook to be
/// skipped on this request (WIT `request-scope.skip-response-hook`). Positions past 63 are never
/// skipped: their response hooks simply run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped(u64);

impl Skipped {
    /// The bit of `position`; `None` past 63.
    fn bit(position: usize) -> Option<u64> {
        1_u64.checked_shl(u32::try_from(position).ok()?)
    }

    fn insert(&mut self, position: usize) {
        self.0 |= Self::bit(position).unwrap_or(0);
    }

    fn contains(self, position: usize) -> bool {
        Self::bit(position).is_some_and(|bit| self.0 & bit != 0)
    }
}

/// What the request hooks decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on to the cache (the request header may have been rewritten; the view's
    /// `upstream-group` names the group to use).
    Continue,
    /// Answer with this response; the cache and origin are not consulted.
    Respond(Box<ResponseHeader>, Bytes),
    /// A fail-closed module failed: answer with this status.
    Fail(u16),
}

/// The one place a failed hook call is handled: a log line naming the module, hook, request
/// and error, a metric, and the module's failure policy — `Some(status)` for fail-closed,
/// `None` (skip the module) for fail-open.
pub fn failed(
    bound: &Bound,
    hook: Hook,
    error: &CallError,
    path: &str,
    metrics: &Metrics,
) -> Option<u16> {
    let spec = &bound.spec;
    metrics
        .module_calls
        .with_label_values(&[spec.name(), hook.as_str(), error.as_str()])
        .inc();
    tracing::warn!(
        module = spec.name(),
        version = bound.code.short(),
        hook = hook.as_str(),
        path,
        policy = spec.failure.as_str(),
        error = %error,
        "module call failed"
    );
    match spec.failure {
        FailurePolicy::FailClosed => Some(spec.failure_status),
        FailurePolicy::FailOpen => None,
    }
}

/// The error a fail-closed failure answers with (the failure is already logged by [`failed`]).
pub fn failure_error(status: u16) -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(status),
        "policy module failed (fail-closed)",
    )
}

/// Runs every request hook of `chain` in order on `view` (which mirrors `req`), applying each
/// rewrite to both before the next module runs. `group_exists` checks an `upstream-group`
/// rewrite; `max_body` caps a local response's body. The modules that asked for their response
/// hook to be skipped on this request are added to `skipped`.
pub fn run_request_hooks(
    chain: &Chain,
    view: &mut SharedRequest,
    req: &mut RequestHeader,
    group_exists: impl Fn(&str) -> bool,
    max_body: usize,
    skipped: &mut Skipped,
    metrics: &Metrics,
) -> Verdict {
    for (position, bound) in chain.iter().enumerate() {
        if !bound.has_request_hook() {
            continue;
        }
        let outcome = bound.on_request(view).and_then(|(action, skip)| {
            if skip {
                skipped.insert(position);
            }
            match action {
                wit::RequestAction::Continue => Ok(None),
                wit::RequestAction::Rewrite(rewrite) => {
                    apply_rewrite(rewrite, view, req, &group_exists).map(|()| None)
                }
                wit::RequestAction::Respond(local) => local_response(local, max_body).map(Some),
                wit::RequestAction::Redirect(redirect) => redirect_response(redirect).map(Some),
            }
        });
        match outcome {
            Ok(None) => bound.count_ok(Hook::Request),
            Ok(Some((head, body))) => {
                bound.count_ok(Hook::Request);
                return Verdict::Respond(head, body);
            }
            Err(e) => {
                if let Some(status) = failed(bound, Hook::Request, &e, view.path(), metrics) {
                    return Verdict::Fail(status);
                }
            }
        }
    }
    Verdict::Continue
}

fn bad(why: impl Into<String>) -> CallError {
    CallError::BadReturn(why.into())
}

fn header_name(name: &str) -> Result<HeaderName, CallError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad(format!("invalid header name {name:?}")))
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, CallError> {
    HeaderValue::from_str(value).map_err(|_| bad(format!("invalid value for header {name:?}")))
}

/// Checks all of `rewrite` first, then applies it to `req` and rebuilds `view` from the result,
/// so a bad field changes nothing.
fn apply_rewrite(
    rewrite: wit::Rewrite,
    view: &mut SharedRequest,
    req: &mut RequestHeader,
    group_exists: impl Fn(&str) -> bool,
) -> Result<(), CallError> {
    let path = rewrite.path.as_deref().unwrap_or(view.path());
    let query = rewrite.query.as_deref().unwrap_or(view.query());
    let uri = if rewrite.path.is_some() || rewrite.query.is_some() {
        if !path.starts_with('/') {
            return Err(bad(format!(
                "rewritten path {path:?} does not start with /"
            )));
        }
        if path.contains(['?', '#']) || query.contains('#') {
            return Err(bad("rewritten path or query contains ? or #"));
        }
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        Some(
            http::Uri::try_from(target.as_str())
                .map_err(|_| bad(format!("rewritten target {target:?} is not a valid URI")))?,
        )
    } else {
        None
    };
    let set: Vec<(HeaderName, HeaderValue)> = rewrite
        .set_headers
        .iter()
        .map(|h| Ok((header_name(&h.name)?, header_value(&h.name, &h.value)?)))
        .collect::<Result<_, CallError>>()?;
    let remove: Vec<HeaderName> = rewrite
        .remove_headers
        .iter()
        .map(|n| header_name(n))
        .collect::<Result<_, CallError>>()?;
    if let Some(group) = &rewrite.upstream_group {
        if !group_exists(group) {
            return Err(bad(format!("upstream group {group:?} does not exist")));
        }
    }

    if let Some(uri) = uri {
        req.set_uri(uri);
    }
    for name in remove {
        req.remove_header(&name);
    }
    for (name, value) in set {
        // Cannot fail: the name and value were checked above.
        let _ = req.insert_header(name, value);
    }
    *view = Arc::new(view.rewritten(req, rewrite.upstream_group));
    Ok(())
}

fn local_response(
    local: wit::LocalResponse,
    max_body: usize,
) -> Result<(Box<ResponseHeader>, Bytes), CallError> {
    if !(200..=599).contains(&local.status) {
        return Err(bad(format!(
            "response status {} is not 200..=599",
            local.status
        )));
    }
    if local.body.len() > max_body {
        return Err(bad(format!(
            "response body of {} bytes is over wasm.max_body_bytes ({max_body})",
            local.body.len()
        )));
    }
    let mut head = ResponseHeader::build(local.status, Some(local.headers.len() + 2))
        .map_err(|e| bad(e.to_string()))?;
    for h in &local.headers {
        let name = header_name(&h.name)?;
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue; // Framing is the proxy's.
        }
        head.append_header(name, header_value(&h.name, &h.value)?)
            .map_err(|e| bad(e.to_string()))?;
    }
    finish_local(&mut head, local.body.len())?;
    Ok((Box::new(head), Bytes::from(local.body)))
}

fn redirect_response(redirect: wit::Redirect) -> Result<(Box<ResponseHeader>, Bytes), CallError> {
    if !matches!(redirect.status, 301 | 302 | 303 | 307 | 308) {
        return Err(bad(format!(
            "redirect status {} is not 301/302/303/307/308",
            redirect.status
        )));
    }
    let mut head =
        ResponseHeader::build(redirect.status, Some(3)).map_err(|e| bad(e.to_string()))?;
    head.insert_header(
        header::LOCATION,
        header_value("location", &redirect.location)?,
    )
    .map_err(|e| bad(e.to_string()))?;
    finish_local(&mut head, 0)?;
    Ok((Box::new(head), Bytes::new()))
}

/// Framing and caching headers every local response carries: a module's answer is per viewer.
fn finish_local(head: &mut ResponseHeader, body_len: usize) -> Result<(), CallError> {
    head.insert_header(header::CONTENT_LENGTH, body_len)
        .and_then(|()| {
            if head.headers.contains_key(header::CACHE_CONTROL) {
                Ok(())
            } else {
                head.insert_header(header::CACHE_CONTROL, "private, no-store")
            }
        })
        .map_err(|e| bad(e.to_string()))
}

/// Runs every response hook of `chain` in reverse order on `resp`, but those in `skipped`.
/// `Err(status)` when a fail-closed module failed.
pub fn run_response_hooks(
    chain: &Chain,
    req: &SharedRequest,
    resp: &mut ResponseHeader,
    cache_status: &'static str,
    skipped: Skipped,
    metrics: &Metrics,
) -> Result<(), u16> {
    // One view serves every module until one of them changes the headers.
    let mut view = None;
    for (position, bound) in chain.iter().enumerate().rev() {
        if !bound.has_response_hook() || skipped.contains(position) {
            continue;
        }
        if view.is_none() {
            view = Some(ResponseView::new(resp, cache_status));
        }
        let outcome = bound.on_response(req, &mut view).and_then(|changes| {
            if changes.remove.is_empty() && changes.set.is_empty() && changes.append.is_empty() {
                return Ok(());
            }
            view = None;
            apply_header_changes(changes, resp)
        });
        match outcome {
            Ok(()) => bound.count_ok(Hook::Response),
            Err(e) => {
                if let Some(status) = failed(bound, Hook::Response, &e, req.path(), metrics) {
                    return Err(status);
                }
            }
        }
    }
    Ok(())
}

/// Applies `changes` (remove, then set, then append) after checking all of them.
fn apply_header_changes(
    changes: wit::HeaderChanges,
    resp: &mut ResponseHeader,
) -> Result<(), CallError> {
    let pairs = |list: &[wit::Header]| -> Result<Vec<(HeaderName, HeaderValue)>, CallError> {
        list.iter()
            .map(|h| Ok((header_name(&h.name)?, header_value(&h.name, &h.value)?)))
            .collect()
    };
    let remove: Vec<HeaderName> = changes
        .remove
        .iter()
        .map(|n| header_name(n))
        .collect::<Result<_, _>>()?;
    let set = pairs(&changes.set)?;
    let append = pairs(&changes.append)?;
    for (name, _) in set.iter().chain(&append) {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            return Err(bad(format!("modules may not set {name}")));
        }
    }
    for name in remove {
        resp.remove_header(&name);
    }
    for (name, value) in set {
        resp.insert_header(name, value)
            .map_err(|e| bad(e.to_string()))?;
    }
    for (name, value) in append {
        resp.append_header(name, value)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// Whether a response is a playlist the body hook applies to: `.m3u8` by path or an HLS
/// content type (WIT `body-hook`).
pub fn is_playlist(path: &str, resp: &ResponseHeader) -> bool {
    let content_type = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    path.ends_with(".m3u8")
        || mime == "application/vnd.apple.mpegurl"
        || mime == "application/x-mpegurl"
        || mime == "audio/mpegurl"
}

/// Whether `chain` has a body hook at `stage` for a response with `status` to `method`: only
/// whole 200 bodies of GET requests are rewritten (a 206 part or a HEAD has no whole body).
pub fn wants_body(
    chain: &Chain,
    stage: BodyStage,
    method: &http::Method,
    status: StatusCode,
) -> bool {
    status == StatusCode::OK
        && method == http::Method::GET
        && chain.iter().any(|b| b.has_body_hook(stage))
}

/// Prepares `resp` for a body whose length changes: no `Content-Length`, chunked framing on
/// HTTP/1.1 (HTTP/2 frames it anyway), and no validator that described the old bytes.
pub fn unframe(resp: &mut ResponseHeader) -> pingora::Result<()> {
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::ETAG);
    resp.insert_header(header::TRANSFER_ENCODING, "chunked")
}

/// The response's content type as sent, empty when it has none (what the body hook gets).
fn content_type(resp: &ResponseHeader) -> &str {
    resp.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Whether a playlist of `len` bytes is over the body hooks' cap; if so it is logged, and the
/// hooks are skipped.
fn over_cap(req: &SharedRequest, len: usize, max: usize) -> bool {
    if len <= max {
        return false;
    }
    tracing::warn!(
        path = req.path(),
        bytes = len,
        max,
        "playlist over wasm.max_body_bytes: body hooks skipped"
    );
    true
}

/// Runs the after-cache body hooks on a playlist that is already whole (a complete cache hit)
/// while its header can still change: a rewritten body keeps exact `Content-Length` framing
/// (one write of header and body, as for any hit) instead of being re-framed as chunks.
/// `Ok(Some(body))`: send `body` instead of the stored one ([`BodyRewrite::replace`]); `resp`
/// has its length set and its `ETag` (which described the stored bytes) removed.
/// `Err(status)`: a fail-closed module failed.
pub fn rewrite_whole(
    chain: &Chain,
    req: &SharedRequest,
    resp: &mut ResponseHeader,
    body: &Bytes,
    max: usize,
    metrics: &Metrics,
) -> Result<Option<Bytes>, u16> {
    if over_cap(req, body.len(), max) {
        return Ok(None);
    }
    let stage = BodyStage::AfterCache;
    let Some(new) = run_body_hooks(chain, stage, req, content_type(resp), body, max, metrics)?
    else {
        return Ok(None);
    };
    resp.remove_header(&header::ETAG);
    // Cannot fail: a number is a valid header value.
    let _ = resp.insert_header(header::CONTENT_LENGTH, new.len());
    Ok(Some(Bytes::from(new)))
}

/// A playlist body collected for the body hooks of one stage.
pub struct BodyBuffer {
    stage: BodyStage,
    content_type: String,
    data: BytesMut,
    max: usize,
}

impl BodyBuffer {
    /// A buffer for `stage`, for a response whose content type is that of `resp`.
    pub fn new(stage: BodyStage, resp: &ResponseHeader, max: usize) -> Self {
        Self {
            stage,
            content_type: content_type(resp).to_owned(),
            data: BytesMut::new(),
            max,
        }
    }

    /// Feeds one body filter call: holds chunks back (`*body` becomes `None`) until the end,
    /// then puts the rewritten body (or the original) in `*body`. Returns `false` once the
    /// buffer is done with: at the end, or when the body outgrew the cap (then what was held
    /// back goes out unchanged, with a log line). `Err(status)`: a fail-closed module failed.
    pub fn feed(
        &mut self,
        chain: &Chain,
        req: &SharedRequest,
        body: &mut Option<Bytes>,
        end: bool,
        metrics: &Metrics,
    ) -> Result<bool, u16> {
        if let Some(chunk) = body.take() {
            self.data.extend_from_slice(&chunk);
        }
        if over_cap(req, self.data.len(), self.max) {
            *body = Some(self.data.split().freeze());
            return Ok(false);
        }
        if !end {
            return Ok(true);
        }
        let original = self.data.split().freeze();
        let rewritten = run_body_hooks(
            chain,
            self.stage,
            req,
            &self.content_type,
            &original,
            self.max,
            metrics,
        )?;
        *body = Some(rewritten.map_or(original, Bytes::from));
        Ok(false)
    }
}

/// One stage's body hooks on one response: idle until [`start`]ed, then collecting the
/// playlist through [`feed`] until it has run the hooks; or, after [`replace`], sending a body
/// the hooks already rewrote in place of the stored one.
///
/// The before-cache stage lives in the request's context and is fed from
/// `upstream_response_body_filter`. The after-cache stage is a pingora downstream module (one
/// per request, see [`BodyRewriteBuilder`]): a body streamed to the client from the cache (a
/// hit, or a miss whose fill the client reads as it arrives) ends with pingora's `Done` task,
/// which `ProxyHttp::response_body_filter` never sees; downstream modules get it as
/// `response_done_filter`.
///
/// [`start`]: BodyRewrite::start
/// [`feed`]: BodyRewrite::feed
/// [`replace`]: BodyRewrite::replace
#[derive(Default)]
pub struct BodyRewrite {
    state: Rewriting,
}

#[derive(Default)]
enum Rewriting {
    /// Nothing to do: the body passes through.
    #[default]
    Idle,
    /// Collecting the body for the hooks.
    Collecting(BodyJob),
    /// The body to send instead of the one read from the cache (`None` once sent).
    Replacing(Option<Bytes>),
}

struct BodyJob {
    chain: Chain,
    req: SharedRequest,
    buffer: BodyBuffer,
    metrics: Arc<Metrics>,
}

impl BodyRewrite {
    /// Collects this response's body for `chain`'s body hooks at `buffer`'s stage.
    pub fn start(
        &mut self,
        chain: Chain,
        req: SharedRequest,
        buffer: BodyBuffer,
        metrics: Arc<Metrics>,
    ) {
        self.state = Rewriting::Collecting(BodyJob {
            chain,
            req,
            buffer,
            metrics,
        });
    }

    /// Sends `body` instead of the response's own, whose chunks are dropped (see
    /// [`rewrite_whole`]).
    pub fn replace(&mut self, body: Bytes) {
        self.state = Rewriting::Replacing(Some(body));
    }

    /// One body filter call: feeds the job, if any (see [`BodyBuffer::feed`]); the job ends
    /// when the buffer is done with. An error is a fail-closed module's failure.
    pub fn feed(&mut self, body: &mut Option<Bytes>, end: bool) -> pingora::Result<()> {
        let job = match &mut self.state {
            Rewriting::Idle => return Ok(()),
            Rewriting::Replacing(replacement) => {
                *body = replacement.take();
                return Ok(());
            }
            Rewriting::Collecting(job) => job,
        };
        match job
            .buffer
            .feed(&job.chain, &job.req, body, end, &job.metrics)
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.state = Rewriting::Idle;
                Ok(())
            }
            Err(status) => {
                self.state = Rewriting::Idle;
                Err(failure_error(status))
            }
        }
    }
}

#[async_trait]
impl HttpModule for BodyRewrite {
    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        self.feed(body, end_of_stream)
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        let mut body = None;
        self.feed(&mut body, true)?;
        Ok(body)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Builds the after-cache [`BodyRewrite`] of each request; added to the downstream modules only
/// while policy modules are on.
pub struct BodyRewriteBuilder;

impl HttpModuleBuilder for BodyRewriteBuilder {
    fn init(&self) -> Module {
        Box::new(BodyRewrite::default())
    }
}

/// Runs every body hook of `chain` at `stage` in order, each on the previous one's output.
/// `Ok(None)`: no module changed the body.
pub fn run_body_hooks(
    chain: &Chain,
    stage: BodyStage,
    req: &SharedRequest,
    content_type: &str,
    body: &[u8],
    max: usize,
    metrics: &Metrics,
) -> Result<Option<Vec<u8>>, u16> {
    let mut current: Option<Vec<u8>> = None;
    for bound in chain.iter().filter(|b| b.has_body_hook(stage)) {
        let input = current.as_deref().unwrap_or(body);
        let outcome =
            bound
                .rewrite_body(req, content_type, input)
                .and_then(|action| match action {
                    wit::BodyAction::Unchanged => Ok(None),
                    wit::BodyAction::Replace(new) if new.len() > max => Err(bad(format!(
                        "returned a body of {} bytes, over wasm.max_body_bytes ({max})",
                        new.len()
                    ))),
                    wit::BodyAction::Replace(new) => Ok(Some(new)),
                });
        match outcome {
            Ok(new) => {
                bound.count_ok(Hook::Body);
                if new.is_some() {
                    current = new;
                }
            }
            Err(e) => {
                if let Some(status) = failed(bound, Hook::Body, &e, req.path(), metrics) {
                    return Err(status);
                }
            }
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::super::view::RequestView;
    use super::*;

    fn request() -> (SharedRequest, RequestHeader) {
        let mut req = RequestHeader::build("GET", b"/live/a/index.m3u8?x=1", None).unwrap();
        req.insert_header("host", "cdn.example").unwrap();
        req.insert_header("x-keep", "1").unwrap();
        let view = RequestView::new(&req, "192.0.2.1".into(), "live".into());
        (Arc::new(view), req)
    }

    fn rewrite() -> wit::Rewrite {
        wit::Rewrite {
            path: None,
            query: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            upstream_group: None,
        }
    }

    #[test]
    fn a_rewrite_changes_the_request_and_the_view_together() {
        let (mut view, mut req) = request();
        let change = wit::Rewrite {
            path: Some("/live/b/index.m3u8".into()),
            query: Some(String::new()),
            set_headers: vec![wit::Header {
                name: "x-region".into(),
                value: "eu".into(),
            }],
            remove_headers: vec!["x-keep".into()],
            upstream_group: Some("eu".into()),
        };
        apply_rewrite(change, &mut view, &mut req, |g| g == "eu").unwrap();
        assert_eq!(req.uri.to_string(), "/live/b/index.m3u8");
        assert_eq!(view.path(), "/live/b/index.m3u8");
        assert_eq!(view.query(), "");
        assert_eq!(req.headers.get("x-region").unwrap(), "eu");
        assert!(req.headers.get("x-keep").is_none());
        assert_eq!(view.headers().get("x-region").unwrap(), "eu");
        assert!(view.headers().get("x-keep").is_none());
        assert_eq!(view.upstream_group(), "eu");
    }

    #[test]
    fn a_bad_rewrite_is_a_bad_return_and_changes_nothing() {
        for change in [
            wit::Rewrite {
                path: Some("no-slash".into()),
                ..rewrite()
            },
            wit::Rewrite {
                path: Some("/a b".into()),
                ..rewrite()
            },
            wit::Rewrite {
                set_headers: vec![wit::Header {
                    name: "bad name".into(),
                    value: "v".into(),
                }],
                ..rewrite()
            },
            wit::Rewrite {
                set_headers: vec![wit::Header {
                    name: "x-ok".into(),
                    value: "line\nbreak".into(),
                }],
                ..rewrite()
            },
            wit::Rewrite {
                upstream_group: Some("nowhere".into()),
                path: Some("/changed".into()),
                ..rewrite()
            },
        ] {
            let (mut view, mut req) = request();
            let err = apply_rewrite(change, &mut view, &mut req, |_| false).unwrap_err();
            assert_eq!(err.as_str(), "bad_return");
            assert_eq!(req.uri.path(), "/live/a/index.m3u8");
            assert_eq!(view.path(), "/live/a/index.m3u8");
        }
    }

    #[test]
    fn local_responses_are_framed_by_the_proxy_and_not_cacheable() {
        let (head, body) = local_response(
            wit::LocalResponse {
                status: 403,
                headers: vec![
                    wit::Header {
                        name: "x-reason".into(),
                        value: "expired".into(),
                    },
                    wit::Header {
                        name: "content-length".into(),
                        value: "999".into(),
                    },
                ],
                body: b"no".to_vec(),
            },
            1024,
        )
        .unwrap();
        assert_eq!(head.status, 403);
        assert_eq!(head.headers.get("content-length").unwrap(), "2");
        assert_eq!(
            head.headers.get("cache-control").unwrap(),
            "private, no-store"
        );
        assert_eq!(head.headers.get("x-reason").unwrap(), "expired");
        assert_eq!(&body[..], b"no");
    }

    #[test]
    fn out_of_range_statuses_and_oversized_bodies_are_bad_returns() {
        let local = |status, body: Vec<u8>| wit::LocalResponse {
            status,
            headers: Vec::new(),
            body,
        };
        assert!(local_response(local(100, Vec::new()), 10).is_err());
        assert!(local_response(local(600, Vec::new()), 10).is_err());
        assert!(local_response(local(200, vec![0; 11]), 10).is_err());
        let redirect = |status| wit::Redirect {
            status,
            location: "https://eu.example/".into(),
        };
        assert!(redirect_response(redirect(200)).is_err());
        let (head, _) = redirect_response(redirect(302)).unwrap();
        assert_eq!(head.headers.get("location").unwrap(), "https://eu.example/");
    }

    #[test]
    fn header_changes_apply_remove_then_set_then_append_and_never_touch_framing() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("x-old", "1").unwrap();
        resp.insert_header("set-cookie", "a=1").unwrap();
        let h = |n: &str, v: &str| wit::Header {
            name: n.into(),
            value: v.into(),
        };
        apply_header_changes(
            wit::HeaderChanges {
                remove: vec!["x-old".into()],
                set: vec![h("x-new", "2")],
                append: vec![h("set-cookie", "b=2")],
            },
            &mut resp,
        )
        .unwrap();
        assert!(resp.headers.get("x-old").is_none());
        assert_eq!(resp.headers.get("x-new").unwrap(), "2");
        assert_eq!(resp.headers.get_all("set-cookie").iter().count(), 2);
        let framing = wit::HeaderChanges {
            remove: Vec::new(),
            set: vec![h("content-length", "1")],
            append: Vec::new(),
        };
        assert!(apply_header_changes(framing, &mut resp).is_err());
    }

    #[test]
    fn skipped_positions_are_remembered_up_to_63() {
        let mut skipped = Skipped::default();
        for position in [0, 5, 63, 64, 1000] {
            skipped.insert(position);
        }
        assert!(skipped.contains(0) && skipped.contains(5) && skipped.contains(63));
        assert!(!skipped.contains(1) && !skipped.contains(62));
        assert!(
            !skipped.contains(64) && !skipped.contains(1000),
            "past 63 hooks still run"
        );
    }

    #[test]
    fn playlists_are_recognised_by_path_or_content_type() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        assert!(is_playlist("/a/index.m3u8", &resp));
        assert!(!is_playlist("/a/1.ts", &resp));
        resp.insert_header(
            "content-type",
            "application/vnd.apple.mpegurl; charset=utf-8",
        )
        .unwrap();
        assert!(is_playlist("/a/master", &resp));
    }
}
