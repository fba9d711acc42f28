//! The web player (`player/`), built into the binary and served at `/player/` when
//! `player.enabled`.
//!
//! The files are the repository's `player/` directory as committed: the page, its script and
//! style, and the vendored hls.js and three.js builds (pinned by `player/package-lock.json`,
//! checked by `player/vendor.sh --check`) with their licences. Embedding them means a proxy
//! binary is the whole demo: no document root to deploy, and the page is same-origin with the
//! playlists it plays, so no CORS.
//!
//! `/player` redirects to `/player/` (the page's references are relative); `/player/` is the
//! page. Responses carry a content-hash `ETag` with `Cache-Control: no-cache`, so browsers and
//! CloudFront revalidate cheaply (304) and never keep an old script after an upgrade.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Where the player is served.
pub const PREFIX: &str = "/player/";

/// One embedded file.
pub struct Asset {
    /// Path under [`PREFIX`].
    pub name: &'static str,
    /// The bytes.
    pub body: &'static [u8],
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The strong `ETag`, computed on first use.
    etag: OnceLock<String>,
}

impl Asset {
    /// The strong `ETag`: a quoted prefix of the body's SHA-256, computed once.
    pub fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!("../../player/", $name)),
            content_type: $content_type,
            etag: OnceLock::new(),
        }
    };
}

/// Every file the player needs (`README.md`, `package*.json` and `vendor.sh` are for
/// developers and stay out).
pub static ASSETS: [Asset; 9] = [
    asset!("index.html", HTML),
    asset!("player.js", JS),
    asset!("player.css", CSS),
    asset!("THIRD-PARTY.txt", TEXT),
    asset!("vendor/hls.min.js", JS),
    asset!("vendor/three.module.min.js", JS),
    asset!("vendor/three.core.min.js", JS),
    asset!("vendor/LICENSE-hls.js.txt", TEXT),
    asset!("vendor/LICENSE-three.txt", TEXT),
];

/// What to answer for a request path.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Not a player path: the request goes on to the cache.
    NotPlayer,
    /// `/player` without the slash: redirect here (query kept).
    Redirect(String),
    /// A file.
    File(&'static Asset),
    /// Under `/player/` but no such file.
    NotFound,
}

impl std::fmt::Debug for Asset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Asset({})", self.name)
    }
}

impl PartialEq for Asset {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Asset {}

/// Routes `path` (and its `query`, for the redirect).
pub fn route(path: &str, query: Option<&str>) -> Route {
    if path == "/player" {
        return Route::Redirect(match query {
            Some(q) => format!("{PREFIX}?{q}"),
            None => PREFIX.to_owned(),
        });
    }
    let Some(name) = path.strip_prefix(PREFIX) else {
        return Route::NotPlayer;
    };
    let name = if name.is_empty() { "index.html" } else { name };
    // Exact names only: no directory walking, nothing outside the table.
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map_or(Route::NotFound, Route::File)
}

/// Whether an `If-None-Match` value matches `etag` (`*`, or one of a comma-separated list,
/// weak or strong).
pub fn not_modified(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn player_paths_route_to_embedded_files_only() {
        assert_eq!(route("/live/a/index.m3u8", None), Route::NotPlayer);
        assert_eq!(route("/playerx", None), Route::NotPlayer);
        assert_eq!(
            route("/player", Some("url=/live/a/index.m3u8")),
            Route::Redirect("/player/?url=/live/a/index.m3u8".into())
        );
        assert_eq!(route("/player", None), Route::Redirect("/player/".into()));
        match route("/player/", None) {
            Route::File(a) => assert_eq!(a.name, "index.html"),
            other => panic!("{other:?}"),
        }
        match route("/player/vendor/hls.min.js", None) {
            Route::File(a) => assert!(a.content_type.starts_with("text/javascript")),
            other => panic!("{other:?}"),
        }
        for bad in [
            "/player/../Cargo.toml",
            "/player/vendor/../../proxy/src/player.rs",
            "/player/README.md",
            "/player/package.json",
            "/player/vendor/",
        ] {
            assert_eq!(route(bad, None), Route::NotFound, "{bad}");
        }
    }

    #[test]
    fn every_asset_is_non_empty_and_has_a_distinct_etag() {
        let mut tags: Vec<&str> = ASSETS.iter().map(Asset::etag).collect();
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
        assert_eq!(tags[0].len(), 26);
    }

    #[test]
    fn if_none_match_matches_lists_weak_tags_and_star() {
        assert!(not_modified("\"abc\"", "\"abc\""));
        assert!(not_modified("\"x\", W/\"abc\"", "\"abc\""));
        assert!(not_modified("*", "\"abc\""));
        assert!(!not_modified("\"abd\"", "\"abc\""));
    }
}
