//! Cache policy: which rule applies to a request, the cache key, and whether and for how long a
//! response is stored.
//!
//! - [`RuleConfig`]: one TTL rule, matched by path suffix and/or content type. Rules are tried in
//!   order, the first match wins, and the last rule must match everything ([`default_rules`]:
//!   playlists, segments, catch-all).
//! - [`CacheKeyConfig`]: the key is host + path + a short list of kept query parameters (LL-HLS
//!   `_HLS_msn`, `_HLS_part`, `_HLS_skip` by default); everything else in the query is ignored,
//!   so cache-busting parameters cannot multiply origin fetches.
//! - [`CacheRules::decide`]: origin `Cache-Control` (parsed by pingora's
//!   [`CacheControl`]) honored by default, capped by the rule, overridden per rule, negative
//!   caching for 404/410/5xx. [`CacheRules::response_cacheable`] turns that into the
//!   [`RespCacheable`] pingora's `response_cache_filter` returns.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use serde::{Deserialize, Serialize};

/// Upper bound on any configured TTL or stale window: one year. Larger values only risk
/// `SystemTime` overflow; nothing in a live cache should stay fresh longer.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Errors from building [`CacheRules`] out of configuration.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// No rules at all: every response needs a rule, so at least the catch-all must exist.
    #[error("cache rules: the list is empty; it needs at least a catch-all rule (no path_suffixes, no content_types)")]
    NoRules,
    /// The last rule does not match everything, so some responses would have no rule.
    #[error("cache rules: the last rule, rules[{index}] ({name:?}), must be a catch-all (no path_suffixes, no content_types)")]
    NoCatchAll {
        /// Position of the last rule.
        index: usize,
        /// Its name.
        name: String,
    },
    /// A rule after a catch-all can never match.
    #[error("cache rules: rules[{index}] ({name:?}) can never match: rules[{catch_all}] before it matches everything")]
    Unreachable {
        /// Position of the unreachable rule.
        index: usize,
        /// Its name.
        name: String,
        /// Position of the catch-all before it.
        catch_all: usize,
    },
    /// A rule field has a value outside its range.
    #[error("cache rules: rules[{index}].{field}: {reason}")]
    InvalidRule {
        /// Position of the rule.
        index: usize,
        /// The offending field.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A cache key setting is invalid.
    #[error("cache key: {field}: {reason}")]
    InvalidKey {
        /// The offending field.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// One TTL rule. Unknown keys are rejected so a typo cannot silently fall back to a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// Name for logs and metrics. Must be unique. Default `"default"`.
    pub name: String,
    /// Request path suffixes that select this rule, compared case-insensitively against the
    /// path without its query (e.g. `".m3u8"`). Default: none.
    pub path_suffixes: Vec<String>,
    /// Response `Content-Type` prefixes that select this rule, case-insensitive (e.g.
    /// `"video/"`). Only consulted once the response is known; at request time only suffixes
    /// match. A rule with neither suffixes nor content types matches everything (catch-all).
    /// Default: none.
    pub content_types: Vec<String>,
    /// Freshness in seconds for a successful response when the origin gives none (no
    /// `Cache-Control` max-age/s-maxage, no `Expires`), or always when `honor_origin` is off.
    /// 0 = store but revalidate on every request. Default 10, at most [`MAX_TTL_SECS`].
    pub ttl_secs: u64,
    /// Upper bound in seconds on the freshness of a successful response, whatever the origin
    /// says (live playlists change every segment, so an origin's `max-age=60` must not hold one
    /// for a minute). `None` = no cap. Default `None`; must be ≥ `ttl_secs`.
    pub max_ttl_secs: Option<u64>,
    /// Follow the origin's `Cache-Control` (`no-store`/`private` → not stored; `s-maxage` over
    /// `max-age`; `no-cache` → revalidate; `stale-while-revalidate`/`stale-if-error`), `Expires`
    /// and `Age`. Off = store every cacheable status with the rule's TTLs. Default `true`.
    pub honor_origin: bool,
    /// Freshness in seconds for every successful response of this rule, replacing the origin's
    /// and `ttl_secs`/`max_ttl_secs`. Whether to store at all still follows `honor_origin`.
    /// Default `None`, at most [`MAX_TTL_SECS`].
    pub force_ttl_secs: Option<u64>,
    /// Freshness in seconds for 404, 410 and 5xx responses, so a herd asking for a segment that
    /// is not published yet costs the origin one request per this period. A shorter origin
    /// freshness wins when `honor_origin` is on. 0 = never store errors. Default 1.
    pub negative_ttl_secs: u64,
    /// Seconds past freshness during which a stale response may be served while one request
    /// revalidates it in the background. The origin's `stale-while-revalidate` (or a directive
    /// forbidding stale: `must-revalidate`, `proxy-revalidate`, `s-maxage`) wins when
    /// `honor_origin` is on. Default 0.
    pub stale_while_revalidate_secs: u32,
    /// Seconds past freshness during which a stale response may be served if the origin fails.
    /// The origin's `stale-if-error` (or a directive forbidding stale) wins when `honor_origin`
    /// is on. Default 0.
    pub stale_if_error_secs: u32,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            name: "default".to_owned(),
            path_suffixes: Vec::new(),
            content_types: Vec::new(),
            ttl_secs: 10,
            max_ttl_secs: None,
            honor_origin: true,
            force_ttl_secs: None,
            negative_ttl_secs: 1,
            stale_while_revalidate_secs: 0,
            stale_if_error_secs: 0,
        }
    }
}

impl RuleConfig {
    /// Whether this rule matches every request and response.
    pub fn is_catch_all(&self) -> bool {
        self.path_suffixes.is_empty() && self.content_types.is_empty()
    }

    /// Checks each field's range; `index` is the rule's position, for the error message.
    pub fn validate(&self, index: usize) -> Result<(), RulesError> {
        let invalid = |field: &'static str, reason: String| RulesError::InvalidRule {
            index,
            field,
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty".to_owned()));
        }
        if self.path_suffixes.iter().any(|s| s.is_empty()) {
            return Err(invalid(
                "path_suffixes",
                "entries must not be empty".to_owned(),
            ));
        }
        if self.content_types.iter().any(|s| s.is_empty()) {
            return Err(invalid(
                "content_types",
                "entries must not be empty".to_owned(),
            ));
        }
        let ttls = [
            ("ttl_secs", Some(self.ttl_secs)),
            ("max_ttl_secs", self.max_ttl_secs),
            ("force_ttl_secs", self.force_ttl_secs),
            ("negative_ttl_secs", Some(self.negative_ttl_secs)),
            (
                "stale_while_revalidate_secs",
                Some(self.stale_while_revalidate_secs.into()),
            ),
            ("stale_if_error_secs", Some(self.stale_if_error_secs.into())),
        ];
        for (field, value) in ttls {
            if let Some(value) = value.filter(|v| *v > MAX_TTL_SECS) {
                return Err(invalid(
                    field,
                    format!("{value} is more than the {MAX_TTL_SECS} s (one year) limit"),
                ));
            }
        }
        if let Some(max) = self.max_ttl_secs.filter(|max| *max < self.ttl_secs) {
            return Err(invalid(
                "max_ttl_secs",
                format!("{max} is below ttl_secs = {}", self.ttl_secs),
            ));
        }
        Ok(())
    }
}

/// The rules Parallax ships with: live playlists, media segments, then a catch-all.
pub fn default_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            name: "playlists".to_owned(),
            path_suffixes: vec![".m3u8".to_owned()],
            content_types: vec![
                "application/vnd.apple.mpegurl".to_owned(),
                "application/x-mpegurl".to_owned(),
                "audio/mpegurl".to_owned(),
            ],
            // A live playlist changes every segment (2 s here); one second keeps the origin at
            // one request per second per rendition while players see new segments promptly.
            ttl_secs: 1,
            max_ttl_secs: Some(1),
            // One second of stale-while-revalidate lets the herd that arrives as a playlist
            // expires get the previous version at once instead of queueing on the refresh.
            stale_while_revalidate_secs: 1,
            stale_if_error_secs: 2,
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "segments".to_owned(),
            path_suffixes: [
                ".ts", ".m4s", ".mp4", ".aac", ".m4a", ".mp3", ".vtt", ".webvtt",
            ]
            .map(str::to_owned)
            .to_vec(),
            content_types: [
                "video/mp2t",
                "video/mp4",
                "video/iso.segment",
                "audio/mp4",
                "audio/aac",
                "audio/mpeg",
                "text/vtt",
                "application/mp4",
            ]
            .map(str::to_owned)
            .to_vec(),
            // Segment names are never reused (epoch-locked numbering), so a segment never changes.
            ttl_secs: 24 * 3600,
            stale_if_error_secs: 3600,
            ..RuleConfig::default()
        },
        RuleConfig::default(),
    ]
}

/// Which parts of a request make up its cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheKeyConfig {
    /// Put the request's host (URI authority, else `Host` header, lowercased) in front of the
    /// path. Off only when every host serves the same content. Default `true`.
    pub include_host: bool,
    /// Query parameters kept in the key, in this order whatever their order in the request; all
    /// others are dropped. Names are case-sensitive. Default `_HLS_msn`, `_HLS_part`,
    /// `_HLS_skip` (LL-HLS blocking playlist reloads and delta updates, which return different
    /// playlists).
    pub query_params: Vec<String>,
}

impl Default for CacheKeyConfig {
    fn default() -> Self {
        CacheKeyConfig {
            include_host: true,
            query_params: ["_HLS_msn", "_HLS_part", "_HLS_skip"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

impl CacheKeyConfig {
    /// Checks the parameter names: non-empty, no `&`, `=`, `?` or `#`, no duplicates.
    pub fn validate(&self) -> Result<(), RulesError> {
        let mut seen = HashSet::new();
        for param in &self.query_params {
            if param.is_empty() || param.contains(['&', '=', '?', '#']) {
                return Err(RulesError::InvalidKey {
                    field: "query_params",
                    reason: format!("{param:?} is not a query parameter name"),
                });
            }
            if !seen.insert(param.as_str()) {
                return Err(RulesError::InvalidKey {
                    field: "query_params",
                    reason: format!("{param:?} is listed twice"),
                });
            }
        }
        Ok(())
    }
}

/// A validated rule, with its match lists lowercased once.
#[derive(Debug, Clone)]
pub struct Rule {
    config: RuleConfig,
}

impl Rule {
    fn new(mut config: RuleConfig) -> Self {
        for suffix in &mut config.path_suffixes {
            suffix.make_ascii_lowercase();
        }
        for content_type in &mut config.content_types {
            content_type.make_ascii_lowercase();
        }
        Rule { config }
    }

    /// The rule's name, for logs and metric labels.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The rule's settings.
    pub fn config(&self) -> &RuleConfig {
        &self.config
    }

    fn matches_path(&self, path: &str) -> bool {
        let path = path.as_bytes();
        self.config.path_suffixes.iter().any(|suffix| {
            path.len() >= suffix.len()
                && path[path.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        })
    }

    fn matches_content_type(&self, content_type: &str) -> bool {
        let content_type = content_type.trim_start().as_bytes();
        self.config.content_types.iter().any(|prefix| {
            content_type.len() >= prefix.len()
                && content_type[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        })
    }
}

/// Why a response is not stored; `as_str` gives the log and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStoreReason {
    /// The origin sent `Cache-Control: no-store`.
    OriginNoStore,
    /// The origin sent `Cache-Control: private`.
    OriginPrivate,
    /// The origin sent `Vary: *`: no request can be known to match the stored one.
    VaryAny,
    /// The origin set a cookie: replaying it to every client would share one client's session
    /// (nginx `proxy_cache` and Varnish refuse these too).
    SetCookie,
    /// The status is not one a shared cache stores (e.g. 206, 302, 403).
    Status,
    /// An error response whose freshness is zero (negative caching off, or the origin said so).
    ZeroNegativeTtl,
}

impl NoStoreReason {
    /// Stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            NoStoreReason::OriginNoStore => "origin_no_store",
            NoStoreReason::OriginPrivate => "origin_private",
            NoStoreReason::VaryAny => "vary_any",
            NoStoreReason::SetCookie => "set_cookie",
            NoStoreReason::Status => "status",
            NoStoreReason::ZeroNegativeTtl => "zero_negative_ttl",
        }
    }
}

/// Whether and how long a response is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Do not store the response.
    NoStore {
        /// Why.
        reason: NoStoreReason,
    },
    /// Store the response.
    Cache {
        /// Seconds it is fresh from now; 0 = stale at once (revalidate before every use).
        fresh_secs: u64,
        /// Seconds past freshness it may be served while being revalidated.
        stale_while_revalidate_secs: u32,
        /// Seconds past freshness it may be served when the origin fails.
        stale_if_error_secs: u32,
    },
}

impl Decision {
    /// The [`RespCacheable`] pingora's `response_cache_filter` returns for this decision, with
    /// `header` as the stored response header and now as the creation time.
    pub fn into_resp_cacheable(self, header: ResponseHeader) -> RespCacheable {
        match self {
            Decision::NoStore { reason } => RespCacheable::Uncacheable(match reason {
                NoStoreReason::OriginNoStore | NoStoreReason::OriginPrivate => {
                    NoCacheReason::OriginNotCache
                }
                other => NoCacheReason::Custom(other.as_str()),
            }),
            Decision::Cache {
                fresh_secs,
                stale_while_revalidate_secs,
                stale_if_error_secs,
            } => {
                let now = SystemTime::now();
                // pingora compares `fresh_until >= now` at second resolution, so a zero TTL must
                // land in the past to be stale on the very next request.
                let fresh_until = if fresh_secs == 0 {
                    now - Duration::from_secs(1)
                } else {
                    now + Duration::from_secs(fresh_secs.min(MAX_TTL_SECS))
                };
                RespCacheable::Cacheable(CacheMeta::new(
                    fresh_until,
                    now,
                    stale_while_revalidate_secs,
                    stale_if_error_secs,
                    header,
                ))
            }
        }
    }
}

/// How a status is cached.
enum StatusClass {
    /// Cached with the rule's normal TTLs.
    Success,
    /// Cached briefly ([`RuleConfig::negative_ttl_secs`]), never served stale.
    Error,
    /// Never cached.
    Uncacheable,
}

impl StatusClass {
    fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            // 304 arrives on revalidation and carries the refreshed freshness of the stored 200.
            200 | 203 | 204 | 300 | 301 | 304 | 308 => StatusClass::Success,
            404 | 410 | 500..=599 => StatusClass::Error,
            _ => StatusClass::Uncacheable,
        }
    }
}

/// The compiled cache policy: ordered rules plus the key settings.
#[derive(Debug, Clone)]
pub struct CacheRules {
    /// All rules but the last.
    rules: Vec<Rule>,
    /// The last rule, which matches everything; kept apart so lookups always end on a rule.
    catch_all: Rule,
    key: CacheKeyConfig,
}

impl Default for CacheRules {
    fn default() -> Self {
        let mut rules: Vec<Rule> = default_rules().into_iter().map(Rule::new).collect();
        let catch_all = rules
            .pop()
            .unwrap_or_else(|| Rule::new(RuleConfig::default()));
        CacheRules {
            rules,
            catch_all,
            key: CacheKeyConfig::default(),
        }
    }
}

impl CacheRules {
    /// Validates `rules` (ordered, first match wins, last must be a catch-all) and `key`.
    pub fn new(rules: Vec<RuleConfig>, key: CacheKeyConfig) -> Result<Self, RulesError> {
        key.validate()?;
        let mut names = HashSet::new();
        for (index, rule) in rules.iter().enumerate() {
            rule.validate(index)?;
            if !names.insert(rule.name.as_str()) {
                return Err(RulesError::InvalidRule {
                    index,
                    field: "name",
                    reason: format!("{:?} is used by an earlier rule", rule.name),
                });
            }
        }
        if let Some(catch_all) = rules.iter().position(RuleConfig::is_catch_all) {
            if let Some((index, rule)) = rules.iter().enumerate().nth(catch_all + 1) {
                return Err(RulesError::Unreachable {
                    index,
                    name: rule.name.clone(),
                    catch_all,
                });
            }
        }
        let mut rules: Vec<Rule> = rules.into_iter().map(Rule::new).collect();
        let catch_all = rules.pop().ok_or(RulesError::NoRules)?;
        if !catch_all.config.is_catch_all() {
            return Err(RulesError::NoCatchAll {
                index: rules.len(),
                name: catch_all.config.name,
            });
        }
        Ok(CacheRules {
            rules,
            catch_all,
            key,
        })
    }

    /// The cache key string for a request: `host` + path + `?` + kept query parameters
    /// (`name=value` joined by `&`, in [`CacheKeyConfig::query_params`] order, first value of
    /// each), e.g. `example.com/live/cam1/index.m3u8?_HLS_msn=12&_HLS_part=3`. Without a kept
    /// parameter there is no `?`. This is the string [`crate::storage::MokaStorage::purge_key`]
    /// and `purge_prefix` take, so a stream prefix is `host/path/to/stream/`.
    pub fn cache_key(&self, req: &http::request::Parts) -> String {
        let host = if self.key.include_host {
            req.uri.authority().map(|a| a.as_str()).or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
        } else {
            None
        };
        self.key_for(host, req.uri.path(), req.uri.query())
    }

    /// The cache key for a host, path and raw query, as [`CacheRules::cache_key`] builds it
    /// from a request; for callers that start from a URL (the admin purge).
    pub fn key_for(&self, host: Option<&str>, path: &str, query: Option<&str>) -> String {
        let mut key = String::with_capacity(
            host.map_or(0, str::len) + path.len() + query.map_or(0, str::len) + 1,
        );
        if let Some(host) = host.filter(|_| self.key.include_host) {
            key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
        }
        key.push_str(path);
        let mut separator = '?';
        for name in &self.key.query_params {
            let value = query.and_then(|query| {
                query.split('&').find_map(|pair| {
                    let (param, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (param == name).then_some(value)
                })
            });
            if let Some(value) = value {
                key.push(separator);
                key.push_str(name);
                key.push('=');
                key.push_str(value);
                separator = '&';
            }
        }
        key
    }

    /// The rule for a request, by path suffix alone (the response's content type is not known
    /// yet): the first rule whose suffixes match, else the catch-all.
    pub fn rule_for(&self, path: &str) -> &Rule {
        self.rules
            .iter()
            .find(|rule| rule.matches_path(path))
            .unwrap_or(&self.catch_all)
    }

    /// The rule for a response: the first rule whose suffixes match `path` or whose content
    /// types match the response's `Content-Type`, else the catch-all.
    pub fn rule_for_response(&self, path: &str, resp: &ResponseHeader) -> &Rule {
        let content_type = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        self.rules
            .iter()
            .find(|rule| {
                rule.matches_path(path)
                    || content_type.is_some_and(|ct| rule.matches_content_type(ct))
            })
            .unwrap_or(&self.catch_all)
    }

    /// Whether and how long to store `resp` under `rule`.
    ///
    /// In order: with `honor_origin`, `no-store`, `private`, `Vary: *` and `Set-Cookie` mean no
    /// store. 404,
    /// 410 and 5xx get `negative_ttl_secs` (or the origin's freshness if shorter) and no stale
    /// serving. Other statuses outside 200/203/204/300/301/304/308 are not stored. Success
    /// responses get `force_ttl_secs` if set, else the origin's freshness (`s-maxage`, then
    /// `max-age`, then `Expires`, less `Age`) or `ttl_secs`, capped at `max_ttl_secs`.
    pub fn decide(&self, rule: &Rule, resp: &ResponseHeader) -> Decision {
        let config = &rule.config;
        let cache_control = if config.honor_origin {
            CacheControl::from_resp_headers(resp)
        } else {
            None
        };
        if let Some(cc) = &cache_control {
            if cc.no_store() {
                return Decision::NoStore {
                    reason: NoStoreReason::OriginNoStore,
                };
            }
            if cc.private() {
                return Decision::NoStore {
                    reason: NoStoreReason::OriginPrivate,
                };
            }
        }
        if config.honor_origin && vary_any(resp) {
            return Decision::NoStore {
                reason: NoStoreReason::VaryAny,
            };
        }
        if config.honor_origin && resp.headers.contains_key(http::header::SET_COOKIE) {
            return Decision::NoStore {
                reason: NoStoreReason::SetCookie,
            };
        }
        let origin_fresh_secs = || {
            if config.honor_origin {
                origin_fresh_secs(cache_control.as_ref(), resp)
            } else {
                None
            }
        };
        match StatusClass::of(resp.status) {
            StatusClass::Uncacheable => Decision::NoStore {
                reason: NoStoreReason::Status,
            },
            StatusClass::Error => {
                let fresh_secs = origin_fresh_secs().map_or(config.negative_ttl_secs, |origin| {
                    origin.min(config.negative_ttl_secs)
                });
                if fresh_secs == 0 {
                    return Decision::NoStore {
                        reason: NoStoreReason::ZeroNegativeTtl,
                    };
                }
                Decision::Cache {
                    fresh_secs,
                    stale_while_revalidate_secs: 0,
                    stale_if_error_secs: 0,
                }
            }
            StatusClass::Success => {
                let fresh_secs = match config.force_ttl_secs {
                    Some(forced) => forced,
                    None => {
                        let fresh = origin_fresh_secs().unwrap_or(config.ttl_secs);
                        config.max_ttl_secs.map_or(fresh, |max| fresh.min(max))
                    }
                };
                let (origin_swr, origin_sie) = cache_control.as_ref().map_or((None, None), |cc| {
                    (
                        cc.serve_stale_while_revalidate_duration(),
                        cc.serve_stale_if_error_duration(),
                    )
                });
                Decision::Cache {
                    fresh_secs,
                    stale_while_revalidate_secs: origin_swr
                        .map_or(config.stale_while_revalidate_secs, duration_secs_u32),
                    stale_if_error_secs: origin_sie
                        .map_or(config.stale_if_error_secs, duration_secs_u32),
                }
            }
        }
    }

    /// What pingora's `response_cache_filter` should return for `resp` to a request for `path`:
    /// picks the rule ([`CacheRules::rule_for_response`]), decides, and builds the
    /// [`CacheMeta`] (fresh until, created now, stale windows, the header to store).
    ///
    /// The stored header never carries `Set-Cookie` (only reachable with `honor_origin` off) nor
    /// the fields an origin names in `private="…"` / `no-cache="…"`, which a shared cache must not
    /// store (RFC 9111 §5.2.2.4, §5.2.2.7).
    pub fn response_cacheable(&self, path: &str, resp: &ResponseHeader) -> RespCacheable {
        let rule = self.rule_for_response(path, resp);
        let decision = self.decide(rule, resp);
        if let Decision::NoStore { .. } = decision {
            return decision.into_resp_cacheable(resp.clone());
        }
        let mut header = resp.clone();
        header.remove_header(&http::header::SET_COOKIE);
        if rule.config.honor_origin {
            if let Some(cc) = CacheControl::from_resp_headers(resp) {
                cc.strip_private_headers(&mut header);
            }
        }
        decision.into_resp_cacheable(header)
    }
}

/// The origin's remaining freshness in seconds: `s-maxage`, else `max-age` (`no-cache` = 0),
/// else `Expires` relative to now; minus the `Age` the response already has.
fn origin_fresh_secs(cache_control: Option<&CacheControl>, resp: &ResponseHeader) -> Option<u64> {
    let lifetime = cache_control
        .and_then(|cc| cc.fresh_duration())
        .map(|d| d.as_secs())
        .or_else(|| {
            calculate_expires_header_time(resp).map(|expires| {
                expires
                    .duration_since(SystemTime::now())
                    .map_or(0, |left| left.as_secs())
            })
        })?;
    let age = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(lifetime.saturating_sub(age))
}

fn vary_any(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|field| field.trim() == "*")
}

fn duration_secs_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            resp.append_header(name.to_string(), *value).unwrap();
        }
        resp
    }

    fn decide(path: &str, status: u16, headers: &[(&str, &str)]) -> Decision {
        let rules = CacheRules::default();
        let resp = response(status, headers);
        rules.decide(rules.rule_for_response(path, &resp), &resp)
    }

    fn cached(fresh_secs: u64, swr: u32, sie: u32) -> Decision {
        Decision::Cache {
            fresh_secs,
            stale_while_revalidate_secs: swr,
            stale_if_error_secs: sie,
        }
    }

    fn request(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut builder = http::Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn rules_with(rule: RuleConfig) -> CacheRules {
        CacheRules::new(vec![rule, RuleConfig::default()], CacheKeyConfig::default()).unwrap()
    }

    #[test]
    fn playlists_match_by_suffix_or_content_type() {
        let rules = CacheRules::default();
        assert_eq!(rules.rule_for("/live/cam1/index.m3u8").name(), "playlists");
        assert_eq!(rules.rule_for("/live/cam1/INDEX.M3U8").name(), "playlists");
        let resp = response(200, &[("content-type", "application/vnd.apple.mpegurl")]);
        assert_eq!(
            rules.rule_for_response("/live/cam1/playlist", &resp).name(),
            "playlists"
        );
        let resp = response(
            200,
            &[("content-type", "Application/X-MpegURL; charset=utf-8")],
        );
        assert_eq!(rules.rule_for_response("/p", &resp).name(), "playlists");
    }

    #[test]
    fn segments_match_every_segment_suffix_and_content_type() {
        let rules = CacheRules::default();
        for suffix in ["ts", "m4s", "mp4", "aac", "m4a", "mp3", "vtt", "webvtt"] {
            let path = format!("/live/cam1/12.{suffix}");
            assert_eq!(rules.rule_for(&path).name(), "segments", "{path}");
        }
        for content_type in ["video/mp2t", "video/mp4", "audio/aac", "text/vtt"] {
            let resp = response(200, &[("content-type", content_type)]);
            assert_eq!(rules.rule_for_response("/seg", &resp).name(), "segments");
        }
    }

    #[test]
    fn anything_else_falls_to_the_catch_all() {
        let rules = CacheRules::default();
        assert_eq!(rules.rule_for("/vod/index.json").name(), "default");
        // The suffix must end the path: a directory named like a segment is not one.
        assert_eq!(rules.rule_for("/live/x.ts/info").name(), "default");
        let resp = response(200, &[("content-type", "application/json")]);
        assert_eq!(rules.rule_for_response("/vod", &resp).name(), "default");
    }

    #[test]
    fn playlist_without_cache_control_is_fresh_for_one_second() {
        assert_eq!(decide("/live/index.m3u8", 200, &[]), cached(1, 1, 2));
    }

    #[test]
    fn origin_max_age_on_a_playlist_is_capped_at_one_second() {
        let decision = decide("/live/index.m3u8", 200, &[("cache-control", "max-age=60")]);
        assert_eq!(decision, cached(1, 1, 2));
    }

    #[test]
    fn segment_without_cache_control_is_fresh_for_a_day() {
        assert_eq!(decide("/live/7.ts", 200, &[]), cached(86_400, 0, 3600));
    }

    #[test]
    fn segment_follows_the_origin_max_age() {
        let decision = decide(
            "/live/7.ts",
            200,
            &[("cache-control", "public, max-age=600")],
        );
        assert_eq!(decision, cached(600, 0, 3600));
    }

    #[test]
    fn s_maxage_takes_precedence_over_max_age() {
        let decision = decide(
            "/v/1.ts",
            200,
            &[("cache-control", "max-age=10, s-maxage=300")],
        );
        // s-maxage also forbids serving stale (RFC 9111 §5.2.2.10), as pingora's reading does.
        assert_eq!(decision, cached(300, 0, 0));
    }

    #[test]
    fn no_store_and_private_responses_are_not_cached() {
        assert_eq!(
            decide("/v/1.ts", 200, &[("cache-control", "no-store")]),
            Decision::NoStore {
                reason: NoStoreReason::OriginNoStore
            }
        );
        assert_eq!(
            decide("/v/1.ts", 200, &[("cache-control", "private, max-age=60")]),
            Decision::NoStore {
                reason: NoStoreReason::OriginPrivate
            }
        );
        assert_eq!(
            decide("/v/1.ts", 200, &[("vary", "Accept-Encoding, *")]),
            Decision::NoStore {
                reason: NoStoreReason::VaryAny
            }
        );
        assert_eq!(
            decide("/v/1.ts", 200, &[("set-cookie", "session=1")]),
            Decision::NoStore {
                reason: NoStoreReason::SetCookie
            }
        );
    }

    #[test]
    fn stored_headers_drop_cookies_and_fields_the_origin_marked_private() {
        let rules = CacheRules::default();
        let resp = response(
            200,
            &[
                ("cache-control", "max-age=60, private=\"x-user\""),
                ("x-user", "alice"),
                ("content-type", "video/mp2t"),
            ],
        );
        let RespCacheable::Cacheable(meta) = rules.response_cacheable("/v/1.ts", &resp) else {
            panic!("private with field names still allows storing the rest");
        };
        assert!(meta.headers().get("x-user").is_none());
        assert!(meta.headers().get("content-type").is_some());

        let rules = rules_with(RuleConfig {
            name: "ignore-origin".to_owned(),
            path_suffixes: vec![".ts".to_owned()],
            honor_origin: false,
            ..RuleConfig::default()
        });
        let resp = response(200, &[("set-cookie", "session=1")]);
        let RespCacheable::Cacheable(meta) = rules.response_cacheable("/v/1.ts", &resp) else {
            panic!("with honor_origin off a cookie does not prevent storing");
        };
        assert!(meta.headers().get("set-cookie").is_none());
    }

    #[test]
    fn no_cache_is_stored_but_stale_at_once() {
        let decision = decide("/v/1.ts", 200, &[("cache-control", "no-cache")]);
        assert_eq!(decision, cached(0, 0, 3600));
    }

    #[test]
    fn origin_directives_are_ignored_when_honor_origin_is_off() {
        let rules = rules_with(RuleConfig {
            name: "vod".to_owned(),
            path_suffixes: vec![".ts".to_owned()],
            honor_origin: false,
            ttl_secs: 30,
            ..RuleConfig::default()
        });
        let resp = response(200, &[("cache-control", "no-store, max-age=5")]);
        assert_eq!(
            rules.decide(rules.rule_for("/a.ts"), &resp),
            cached(30, 0, 0)
        );
    }

    #[test]
    fn force_ttl_replaces_the_origin_max_age() {
        let rules = rules_with(RuleConfig {
            name: "forced".to_owned(),
            path_suffixes: vec![".m3u8".to_owned()],
            force_ttl_secs: Some(3),
            max_ttl_secs: Some(10),
            ..RuleConfig::default()
        });
        let resp = response(200, &[("cache-control", "max-age=600")]);
        assert_eq!(
            rules.decide(rules.rule_for("/a.m3u8"), &resp),
            cached(3, 0, 0)
        );
        // Forcing a TTL does not override a no-store while the origin is honored.
        let resp = response(200, &[("cache-control", "no-store")]);
        assert!(matches!(
            rules.decide(rules.rule_for("/a.m3u8"), &resp),
            Decision::NoStore { .. }
        ));
    }

    #[test]
    fn not_found_and_service_unavailable_are_cached_for_the_negative_ttl() {
        for status in [404, 410, 500, 503] {
            assert_eq!(
                decide("/live/99.ts", status, &[]),
                cached(1, 0, 0),
                "{status}"
            );
        }
        // An origin max-age on an error response cannot stretch the negative TTL.
        let decision = decide("/live/99.ts", 404, &[("cache-control", "max-age=3600")]);
        assert_eq!(decision, cached(1, 0, 0));
        assert_eq!(
            decide("/live/99.ts", 404, &[("cache-control", "max-age=0")]),
            Decision::NoStore {
                reason: NoStoreReason::ZeroNegativeTtl
            }
        );
    }

    #[test]
    fn negative_caching_can_be_turned_off() {
        let rules = rules_with(RuleConfig {
            name: "no-negative".to_owned(),
            path_suffixes: vec![".ts".to_owned()],
            negative_ttl_secs: 0,
            ..RuleConfig::default()
        });
        let resp = response(503, &[]);
        assert_eq!(
            rules.decide(rules.rule_for("/a.ts"), &resp),
            Decision::NoStore {
                reason: NoStoreReason::ZeroNegativeTtl
            }
        );
    }

    #[test]
    fn partial_content_redirects_and_client_errors_are_not_cached() {
        for status in [206, 302, 307, 400, 401, 403] {
            assert_eq!(
                decide("/live/1.ts", status, &[]),
                Decision::NoStore {
                    reason: NoStoreReason::Status
                },
                "{status}"
            );
        }
    }

    #[test]
    fn age_already_spent_upstream_shortens_origin_freshness() {
        let decision = decide(
            "/v/1.ts",
            200,
            &[("cache-control", "max-age=100"), ("age", "40")],
        );
        assert_eq!(decision, cached(60, 0, 3600));
        let decision = decide(
            "/v/1.ts",
            200,
            &[("cache-control", "max-age=100"), ("age", "400")],
        );
        assert_eq!(decision, cached(0, 0, 3600));
    }

    #[test]
    fn expires_is_used_when_cache_control_has_no_max_age() {
        let decision = decide(
            "/v/1.ts",
            200,
            &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")],
        );
        assert_eq!(
            decision,
            cached(0, 0, 3600),
            "an Expires in the past is stale"
        );
    }

    #[test]
    fn origin_stale_directives_win_over_the_rule_windows() {
        let decision = decide(
            "/v/1.ts",
            200,
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=5, stale-if-error=7",
            )],
        );
        assert_eq!(decision, cached(60, 5, 7));
        let decision = decide(
            "/v/1.ts",
            200,
            &[("cache-control", "max-age=60, must-revalidate")],
        );
        assert_eq!(
            decision,
            cached(60, 0, 0),
            "must-revalidate forbids serving stale"
        );
    }

    #[test]
    fn response_cacheable_builds_the_meta_pingora_stores() {
        let rules = CacheRules::default();
        let resp = response(200, &[("cache-control", "max-age=600")]);
        let before = SystemTime::now();
        let RespCacheable::Cacheable(meta) = rules.response_cacheable("/live/3.ts", &resp) else {
            panic!("a segment with max-age is cacheable");
        };
        assert!(meta.is_fresh(before + Duration::from_secs(599)));
        assert!(!meta.is_fresh(before + Duration::from_secs(602)));
        assert_eq!(meta.stale_if_error_sec(), 3600);
        assert_eq!(meta.response_header().status, StatusCode::OK);

        let RespCacheable::Cacheable(meta) =
            rules.response_cacheable("/v/1.ts", &response(200, &[("cache-control", "no-cache")]))
        else {
            panic!("no-cache is stored for revalidation");
        };
        assert!(
            !meta.is_fresh(SystemTime::now()),
            "zero TTL is stale at once"
        );

        let uncacheable = rules.response_cacheable("/v/1.ts", &response(302, &[]));
        assert!(matches!(
            uncacheable,
            RespCacheable::Uncacheable(NoCacheReason::Custom("status"))
        ));
    }

    #[test]
    fn key_is_host_and_path_by_default() {
        let rules = CacheRules::default();
        let req = request("/live/cam1/1.ts?token=abc", Some("CDN.Example.com"));
        assert_eq!(rules.cache_key(&req), "cdn.example.com/live/cam1/1.ts");
        // HTTP/2 carries the host in the URI authority.
        let req = request("https://example.com/live/cam1/1.ts", None);
        assert_eq!(rules.cache_key(&req), "example.com/live/cam1/1.ts");
    }

    #[test]
    fn key_without_host_is_the_path() {
        let rules = CacheRules::new(
            default_rules(),
            CacheKeyConfig {
                include_host: false,
                ..CacheKeyConfig::default()
            },
        )
        .unwrap();
        let req = request("/live/cam1/1.ts", Some("a.example.com"));
        assert_eq!(rules.cache_key(&req), "/live/cam1/1.ts");
        assert_eq!(rules.key_for(Some("b.example.com"), "/x.ts", None), "/x.ts");
    }

    #[test]
    fn key_keeps_only_ll_hls_params_in_canonical_order() {
        let rules = CacheRules::default();
        let req = request(
            "/live/index.m3u8?_HLS_skip=YES&cb=123&_HLS_part=2&_HLS_msn=40&_HLS_msn=41",
            Some("example.com"),
        );
        assert_eq!(
            rules.cache_key(&req),
            "example.com/live/index.m3u8?_HLS_msn=40&_HLS_part=2&_HLS_skip=YES"
        );
        let req = request("/live/index.m3u8?_hls_msn=40&x=1", Some("example.com"));
        assert_eq!(
            rules.cache_key(&req),
            "example.com/live/index.m3u8",
            "parameter names are case-sensitive and others are dropped"
        );
    }

    #[test]
    fn default_rules_validate() {
        let rules = CacheRules::new(default_rules(), CacheKeyConfig::default()).unwrap();
        assert_eq!(rules.rule_for("/x").name(), "default");
    }

    #[test]
    fn rule_sets_without_a_final_catch_all_are_rejected() {
        let err = CacheRules::new(Vec::new(), CacheKeyConfig::default()).unwrap_err();
        assert!(matches!(err, RulesError::NoRules));

        let mut rules = default_rules();
        rules.pop();
        let err = CacheRules::new(rules, CacheKeyConfig::default()).unwrap_err();
        assert!(
            matches!(err, RulesError::NoCatchAll { index: 1, .. }),
            "{err}"
        );

        let mut rules = default_rules();
        rules.swap(1, 2);
        let err = CacheRules::new(rules, CacheKeyConfig::default()).unwrap_err();
        assert!(
            matches!(
                err,
                RulesError::Unreachable {
                    index: 2,
                    catch_all: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_rule_fields_are_rejected_naming_the_field() {
        let cases = [
            RuleConfig {
                ttl_secs: 10,
                max_ttl_secs: Some(5),
                ..RuleConfig::default()
            },
            RuleConfig {
                force_ttl_secs: Some(MAX_TTL_SECS + 1),
                ..RuleConfig::default()
            },
            RuleConfig {
                name: " ".to_owned(),
                ..RuleConfig::default()
            },
        ];
        let fields = ["max_ttl_secs", "force_ttl_secs", "name"];
        for (rule, field) in cases.into_iter().zip(fields) {
            let err = CacheRules::new(vec![rule], CacheKeyConfig::default()).unwrap_err();
            assert!(
                err.to_string().contains(&format!("rules[0].{field}")),
                "{err}"
            );
        }

        let duplicate = vec![
            RuleConfig {
                path_suffixes: vec![".ts".to_owned()],
                ..RuleConfig::default()
            },
            RuleConfig::default(),
        ];
        let err = CacheRules::new(duplicate, CacheKeyConfig::default()).unwrap_err();
        assert!(err.to_string().contains("rules[1].name"), "{err}");
    }

    #[test]
    fn invalid_key_params_are_rejected() {
        for params in [vec!["a=b"], vec![""], vec!["_HLS_msn", "_HLS_msn"]] {
            let key = CacheKeyConfig {
                query_params: params.iter().map(|p| p.to_string()).collect(),
                ..CacheKeyConfig::default()
            };
            let err = CacheRules::new(default_rules(), key).unwrap_err();
            assert!(err.to_string().contains("query_params"), "{err}");
        }
    }

    #[test]
    fn rule_config_reads_from_toml_with_defaults_and_rejects_unknown_keys() {
        let rule: RuleConfig =
            toml::from_str("name = \"live\"\npath_suffixes = [\".m3u8\"]\nmax_ttl_secs = 2\n")
                .unwrap();
        assert_eq!(rule.name, "live");
        assert_eq!(rule.max_ttl_secs, Some(2));
        assert_eq!(rule.negative_ttl_secs, 1);
        assert!(rule.honor_origin);

        let err = toml::from_str::<RuleConfig>("max_ttl = 2\n").unwrap_err();
        assert!(err.to_string().contains("max_ttl"), "{err}");
    }
}
