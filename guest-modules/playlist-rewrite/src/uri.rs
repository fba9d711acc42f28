//! URI work on playlist entries: resolving a relative reference (RFC 3986 §5.2) against the
//! playlist's URL on a region's base, and appending a query parameter.

/// Whether `uri` already has a scheme (`https:`, `data:`, `skd:` …), so it is left alone.
pub fn has_scheme(uri: &str) -> bool {
    match uri.find(':') {
        Some(colon) => {
            let scheme = &uri[..colon];
            !scheme.is_empty()
                && scheme.as_bytes()[0].is_ascii_alphabetic()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        }
        None => false,
    }
}

/// `reference` (a URI from a playlist served at `playlist_path`) as an absolute URL on `base`
/// (`https://host[:port][/prefix]`, no trailing slash). Absolute URIs are returned unchanged;
/// `//host/x` keeps its host with the base's scheme; dot segments are removed.
pub fn resolve(base: &str, playlist_path: &str, reference: &str) -> String {
    if has_scheme(reference) {
        return reference.to_owned();
    }
    if let Some(rest) = reference.strip_prefix("//") {
        let scheme = base.split_once("://").map_or("https", |(s, _)| s);
        return format!("{scheme}://{rest}");
    }
    // Split the reference's query/fragment off so dot-segment removal only sees the path.
    let split = reference.find(['?', '#']).unwrap_or(reference.len());
    let (ref_path, suffix) = reference.split_at(split);
    let merged = if ref_path.starts_with('/') {
        ref_path.to_owned()
    } else if ref_path.is_empty() {
        playlist_path.to_owned()
    } else {
        let dir = &playlist_path[..playlist_path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{dir}{ref_path}")
    };
    format!("{base}{}{suffix}", remove_dot_segments(&merged))
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments vanish, `..` removes the one before (never
/// climbing above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A trailing `.`/`..` leaves a directory, so keep the final slash.
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// `uri` with `name=value` added to its query (before any fragment). `value` must already be
/// query-safe.
pub fn append_query(uri: &str, name: &str, value: &str) -> String {
    let (main, fragment) = uri.split_at(uri.find('#').unwrap_or(uri.len()));
    let separator = if main.contains('?') { '&' } else { '?' };
    format!("{main}{separator}{name}={value}{fragment}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://eu.cdn.example";

    #[test]
    fn relative_uris_resolve_against_the_playlists_directory() {
        assert_eq!(
            resolve(BASE, "/live/a/index.m3u8", "720p.m3u8"),
            "https://eu.cdn.example/live/a/720p.m3u8"
        );
        assert_eq!(
            resolve(BASE, "/live/a/index.m3u8", "720p/seg-1.ts?x=1"),
            "https://eu.cdn.example/live/a/720p/seg-1.ts?x=1"
        );
        assert_eq!(
            resolve(BASE, "/live/a/index.m3u8", "/vod/b.ts"),
            "https://eu.cdn.example/vod/b.ts"
        );
        assert_eq!(
            resolve(BASE, "/live/a/720p/i.m3u8", "../audio/en.m3u8"),
            "https://eu.cdn.example/live/a/audio/en.m3u8"
        );
        assert_eq!(
            resolve(BASE, "/live/a/i.m3u8", "./x/../y.ts"),
            "https://eu.cdn.example/live/a/y.ts"
        );
        assert_eq!(
            resolve(BASE, "/i.m3u8", "../../../x.ts"),
            "https://eu.cdn.example/x.ts"
        );
        assert_eq!(
            resolve(BASE, "/live/a/i.m3u8", "x/.."),
            "https://eu.cdn.example/live/a/"
        );
        assert_eq!(
            resolve(BASE, "/live/a/i.m3u8", "?v=2"),
            "https://eu.cdn.example/live/a/i.m3u8?v=2"
        );
    }

    #[test]
    fn a_base_with_a_path_prefix_keeps_it() {
        assert_eq!(
            resolve("http://127.0.0.1:8080/edge", "/live/i.m3u8", "a.ts"),
            "http://127.0.0.1:8080/edge/live/a.ts"
        );
    }

    #[test]
    fn absolute_and_scheme_relative_uris_keep_their_host() {
        assert_eq!(
            resolve(BASE, "/l/i.m3u8", "https://other.example/a.ts"),
            "https://other.example/a.ts"
        );
        assert_eq!(resolve(BASE, "/l/i.m3u8", "skd://key-id"), "skd://key-id");
        assert_eq!(
            resolve(BASE, "/l/i.m3u8", "data:text/plain,x"),
            "data:text/plain,x"
        );
        assert_eq!(
            resolve(BASE, "/l/i.m3u8", "//cdn2.example/a.ts"),
            "https://cdn2.example/a.ts"
        );
        // A colon after a slash is a path, not a scheme.
        assert_eq!(
            resolve(BASE, "/l/i.m3u8", "seg/1:2.ts"),
            "https://eu.cdn.example/l/seg/1:2.ts"
        );
    }

    #[test]
    fn appending_a_query_parameter_respects_existing_query_and_fragment() {
        assert_eq!(append_query("a.ts", "t", "v"), "a.ts?t=v");
        assert_eq!(append_query("a.ts?x=1", "t", "v"), "a.ts?x=1&t=v");
        assert_eq!(append_query("a.ts#f", "t", "v"), "a.ts?t=v#f");
    }
}
