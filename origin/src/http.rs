//! The HTTP server (hyper 1): live playlists and segments, VOD playlists, segments and listings,
//! with the headers a cache tier, a CDN and browser players act on.
//!
//! Routes (GET and HEAD; OPTIONS answers CORS preflights; anything else is 405):
//!
//! | path                               | body                                   |
//! |------------------------------------|----------------------------------------|
//! | `/live/<stream>/index.m3u8`        | live media playlist                    |
//! | `/live/<stream>/<segment>.ts`      | live segment                           |
//! | `/vod/<stream>/`                   | JSON list of finished recordings       |
//! | `/vod/<stream>/<id>/index.m3u8`    | VOD playlist (`EXT-X-PLAYLIST-TYPE:VOD`) |
//! | `/vod/<stream>/<id>/<segment>.ts`  | recorded segment                       |
//!
//! Files are served from the data directory only through names that passed
//! [`StreamName::parse`] / [`is_safe_file_name`]; paths are not percent-decoded, so `%2e%2e`
//! or `%2f` are simply names with a `%`, which the charset refuses.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Config;
use crate::record;
use crate::store::{is_safe_file_name, Layout, StreamName, PLAYLIST_NAME};

/// The response body type: whole files, or nothing for HEAD and errors.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const SEGMENT_TYPE: &str = "video/mp2t";

/// Everything a request handler needs; built once, shared by every connection.
#[derive(Debug)]
pub struct HttpState {
    layout: Layout,
    max_stream_name_bytes: usize,
    playlist_cache: HeaderValue,
    segment_cache: HeaderValue,
    vod_playlist_cache: HeaderValue,
    missing_cache: HeaderValue,
    unknown_cache: HeaderValue,
    listing_cache: HeaderValue,
}

impl HttpState {
    /// Precomputes the Cache-Control values from the config.
    pub fn new(config: &Config) -> Self {
        let max_age = |secs: u64| HeaderValue::from(MaxAge(secs));
        let segment_secs = config.http.segment_max_age_secs;
        Self {
            layout: Layout::new(&config.data_dir),
            max_stream_name_bytes: config.rtmp.max_stream_name_bytes,
            playlist_cache: max_age(config.playlist_max_age_secs()),
            segment_cache: HeaderValue::from_str(&format!("max-age={segment_secs}, immutable"))
                .unwrap_or(HeaderValue::from_static("max-age=1209600, immutable")),
            // A finished recording's playlist never changes, but it is not `immutable`: an
            // operator may delete a recording.
            vod_playlist_cache: max_age(segment_secs),
            missing_cache: max_age(config.http.missing_max_age_secs),
            unknown_cache: max_age(config.http.unknown_stream_max_age_secs),
            listing_cache: max_age(config.http.listing_max_age_secs),
        }
    }
}

struct MaxAge(u64);

impl From<MaxAge> for HeaderValue {
    fn from(m: MaxAge) -> Self {
        HeaderValue::from_str(&format!("max-age={}", m.0))
            .unwrap_or(HeaderValue::from_static("max-age=1"))
    }
}

/// Accepts HTTP/1.1 connections until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning, keep serving the others.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Reap finished connection tasks so the set does not grow with the server's uptime.
        while conns.try_join_next().is_some() {}
        let state = state.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // A slow-loris client must not hold a connection open forever.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    let _ = stop_tx.send(true);
    // Bounded: an idle keep-alive connection closes at once on graceful shutdown, a busy one
    // after its response.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Handles one request: route, read the file, apply conditional and range headers.
pub async fn handle<B>(state: &HttpState, req: Request<B>) -> Response<Body> {
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        status = tracing::field::Empty,
    );
    async move {
        let response = route(state, &req).await;
        let mut response = response;
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Length, Content-Range, ETag, Last-Modified"),
        );
        tracing::Span::current().record("status", response.status().as_u16());
        tracing::debug!("served");
        response
    }
    .instrument(span)
    .await
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    LiveFile(StreamName, String),
    VodListing(StreamName),
    VodFile(StreamName, String, String),
}

/// Why a path names nothing.
#[derive(Debug, PartialEq, Eq)]
enum NoRoute {
    /// Not a path we serve at all, or a name outside the allowed charset.
    Unknown,
}

fn parse_route(path: &str, max_name: usize) -> Result<Route, NoRoute> {
    let parts: Vec<&str> = path
        .strip_prefix('/')
        .ok_or(NoRoute::Unknown)?
        .split('/')
        .collect();
    let stream = |s: &str| StreamName::parse(s, max_name).map_err(|_| NoRoute::Unknown);
    let file = |s: &str| {
        if is_safe_file_name(s) {
            Ok(s.to_owned())
        } else {
            Err(NoRoute::Unknown)
        }
    };
    match parts.as_slice() {
        ["live", name, f] => Ok(Route::LiveFile(stream(name)?, file(f)?)),
        ["vod", name] | ["vod", name, ""] => Ok(Route::VodListing(stream(name)?)),
        ["vod", name, id, f] => Ok(Route::VodFile(stream(name)?, file(id)?, file(f)?)),
        _ => Err(NoRoute::Unknown),
    }
}

async fn route<B>(state: &HttpState, req: &Request<B>) -> Response<Body> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        Method::OPTIONS => return preflight(),
        _ => {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED, None);
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            return r;
        }
    };
    let unknown = || status(StatusCode::NOT_FOUND, Some(&state.unknown_cache));
    let route = match parse_route(req.uri().path(), state.max_stream_name_bytes) {
        Ok(r) => r,
        Err(NoRoute::Unknown) => return unknown(),
    };
    let (dir, file, vod) = match route {
        Route::VodListing(stream) => {
            let dir = state.layout.vod_dir(&stream);
            return match record::list_recordings(&dir, &stream).await {
                Ok(Some(list)) => {
                    let body = serde_json::to_vec_pretty(&list).unwrap_or_default();
                    let body = Bytes::from(body);
                    file_response(
                        req.headers(),
                        head,
                        body,
                        None,
                        "application/json",
                        &state.listing_cache,
                    )
                }
                Ok(None) => unknown(),
                Err(e) => {
                    tracing::error!(error = %e, "listing recordings");
                    status(StatusCode::INTERNAL_SERVER_ERROR, None)
                }
            };
        }
        Route::LiveFile(stream, file) => (state.layout.live_dir(&stream), file, false),
        Route::VodFile(stream, id, file) => (state.layout.vod_dir(&stream).join(id), file, true),
    };
    let (content_type, cache) = if file == PLAYLIST_NAME {
        let cache = if vod {
            &state.vod_playlist_cache
        } else {
            &state.playlist_cache
        };
        (PLAYLIST_TYPE, cache)
    } else if file.ends_with(".ts") {
        (SEGMENT_TYPE, &state.segment_cache)
    } else {
        return unknown();
    };
    match read_file(&dir.join(&file)).await {
        Ok((body, modified)) => {
            file_response(req.headers(), head, body, modified, content_type, cache)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
                // Known stream, file not (yet) there: a player asking early retries soon.
                status(StatusCode::NOT_FOUND, Some(&state.missing_cache))
            } else {
                unknown()
            }
        }
        Err(e) => {
            tracing::error!(path = %dir.join(&file).display(), error = %e, "reading file");
            status(StatusCode::INTERNAL_SERVER_ERROR, None)
        }
    }
}

async fn read_file(path: &Path) -> std::io::Result<(Bytes, Option<SystemTime>)> {
    let path: PathBuf = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let data = std::fs::read(&path)?;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok((Bytes::from(data), modified))
    })
    .await
    .map_err(std::io::Error::other)?
}

fn empty() -> Body {
    http_body_util::BodyExt::boxed_unsync(Empty::new())
}

fn full(b: Bytes) -> Body {
    http_body_util::BodyExt::boxed_unsync(Full::new(b))
}

fn status(code: StatusCode, cache: Option<&HeaderValue>) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        cache
            .cloned()
            .unwrap_or(HeaderValue::from_static("no-store")),
    );
    r
}

fn preflight() -> Response<Body> {
    let mut r = status(StatusCode::NO_CONTENT, None);
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range, If-None-Match, If-Modified-Since"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(86_400));
    r
}

/// FNV-1a over the content: the same bytes give the same ETag on both origins of a pair, so a
/// cache revalidating against the other origin still gets its 304.
fn etag(body: &[u8]) -> HeaderValue {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    HeaderValue::from_str(&format!("\"{h:016x}-{:x}\"", body.len()))
        .unwrap_or(HeaderValue::from_static("\"0\""))
}

fn file_response(
    req: &HeaderMap,
    head: bool,
    body: Bytes,
    modified: Option<SystemTime>,
    content_type: &'static str,
    cache: &HeaderValue,
) -> Response<Body> {
    let tag = etag(&body);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, cache.clone());
    headers.insert(header::ETAG, tag.clone());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(m) = modified.and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok())
    {
        headers.insert(header::LAST_MODIFIED, m);
    }

    if not_modified(req, &tag, modified) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        headers.remove(header::CONTENT_TYPE);
        *r.headers_mut() = headers;
        return r;
    }

    let len = body.len() as u64;
    let range = req
        .get(header::RANGE)
        .filter(|_| if_range_matches(req, &tag))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let (code, body) = match range {
        None => (StatusCode::OK, body),
        Some(Err(Unsatisfiable)) => {
            let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE, None);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        Some(Ok((start, end))) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            let slice = body.slice(start as usize..=end as usize);
            (StatusCode::PARTIAL_CONTENT, slice)
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut r = Response::new(if head { empty() } else { full(body) });
    *r.status_mut() = code;
    *r.headers_mut() = headers;
    r
}

/// RFC 9110 §13.1.2/§13.1.3: If-None-Match wins; If-Modified-Since only without it.
fn not_modified(req: &HeaderMap, tag: &HeaderValue, modified: Option<SystemTime>) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else { return false };
        let tag = tag.to_str().unwrap_or_default();
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == tag);
    }
    match (
        req.get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        modified,
    ) {
        // HTTP dates have whole seconds; compare at that resolution.
        (Some(since), Some(m)) => httpdate::HttpDate::from(m) <= httpdate::HttpDate::from(since),
        _ => false,
    }
}

/// If-Range with a strong ETag: serve the range only if the representation is unchanged.
fn if_range_matches(req: &HeaderMap, tag: &HeaderValue) -> bool {
    req.get(header::IF_RANGE).is_none_or(|v| v == tag)
}

#[derive(Debug, PartialEq, Eq)]
struct Unsatisfiable;

/// Parses a single `bytes=` range against a body of `len` bytes into an inclusive range.
///
/// `None` means "ignore the header and send the whole body", which RFC 9110 §14.2 allows for
/// syntax we do not support (multiple ranges, other units, garbage).
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), Unsatisfiable>> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(Unsatisfiable));
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start: u64 = first.parse().ok()?;
        let end: u64 = if last.is_empty() {
            u64::MAX
        } else {
            last.parse().ok()?
        };
        if end < start {
            return None;
        }
        if start >= len {
            return Some(Err(Unsatisfiable));
        }
        (start, end.min(len - 1))
    };
    Some(Ok(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_accept_only_safe_names() {
        let live = parse_route("/live/test/index.m3u8", 64).unwrap();
        assert_eq!(
            live,
            Route::LiveFile(
                StreamName::parse("test", 64).unwrap(),
                "index.m3u8".to_owned()
            )
        );
        assert!(matches!(
            parse_route("/vod/test/", 64),
            Ok(Route::VodListing(_))
        ));
        assert!(matches!(
            parse_route("/vod/test/1700000000000/12.ts", 64),
            Ok(Route::VodFile(..))
        ));
        for bad in [
            "/live/../index.m3u8",
            "/live/%2e%2e/index.m3u8",
            "/live/test/..%2findex.m3u8",
            "/live/test%2f..%2f..%2fetc/passwd",
            "/live/test/../../etc/passwd",
            "/live/.test/index.m3u8",
            "/vod/test/../x.ts",
            "/vod/test/.x/index.m3u8",
            "/live/test",
            "/other/test/index.m3u8",
            "live/test/index.m3u8",
        ] {
            assert_eq!(parse_route(bad, 64), Err(NoRoute::Unknown), "{bad}");
        }
    }

    #[test]
    fn single_ranges_parse_and_others_are_ignored() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-5000", 1000), Some(Ok((0, 999))));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some(Ok((990, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Some(Err(Unsatisfiable)));
        assert_eq!(parse_range("bytes=-0", 1000), Some(Err(Unsatisfiable)));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=5-1", 1000), None);
        assert_eq!(parse_range("bytes=x-1", 1000), None);
    }

    #[test]
    fn etag_depends_only_on_content() {
        assert_eq!(etag(b"abc"), etag(b"abc"));
        assert_ne!(etag(b"abc"), etag(b"abd"));
    }

    #[test]
    fn if_none_match_accepts_lists_and_weak_forms() {
        let tag = etag(b"x");
        let t = tag.to_str().unwrap().to_owned();
        for inm in [
            t.clone(),
            format!("W/{t}"),
            format!("\"other\", {t}"),
            "*".into(),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&inm).unwrap());
            assert!(not_modified(&h, &tag, None), "{inm}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(!not_modified(&h, &tag, None));
    }
}
