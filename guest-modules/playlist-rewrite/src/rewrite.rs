//! The playlist transformations: parse with `m3u8-rs`, change the model, write it back.

use std::collections::BTreeMap;
use std::fmt;

use m3u8_rs::{
    AlternativeMedia, ClosedCaptionGroupId, ExtTag, MasterPlaylist, MediaPlaylist, Playlist,
    SessionDataField, VariantStream,
};

use crate::config::{Config, MergeSource};
use crate::uri;

/// Largest second-region master read from the kv store (the store's own value cap).
const MAX_OTHER_MASTER_BYTES: usize = 64 * 1024;

/// Tags `m3u8-rs` keeps as unknown whose `URI` attribute names a resource (LL-HLS).
const URI_TAGS: &[&str] = &["X-PART", "X-PRELOAD-HINT", "X-RENDITION-REPORT"];

/// What one call knows about the request.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// The playlist's path (as requested).
    pub path: &'a str,
    /// The viewer's region as the request names it, if it does (unknown regions fall back to
    /// `default-region`).
    pub region: Option<&'a str>,
    /// The viewer's token, already query-safe, if token propagation is on and one was sent.
    pub token: Option<String>,
}

/// Why a playlist was passed on unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    /// The body is not UTF-8 (RFC 8216 §4.1 requires it).
    NotUtf8,
    /// The body is not an M3U8 playlist.
    Malformed(String),
    /// The second region's master playlist could not be had or parsed.
    OtherMaster(String),
}

impl RewriteError {
    /// Short label for counters.
    pub fn as_str(&self) -> &'static str {
        match self {
            RewriteError::NotUtf8 | RewriteError::Malformed(_) => "malformed",
            RewriteError::OtherMaster(_) => "merge-failed",
        }
    }
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::NotUtf8 => write!(f, "playlist is not UTF-8"),
            RewriteError::Malformed(why) => write!(f, "not an M3U8 playlist: {why}"),
            RewriteError::OtherMaster(why) => write!(f, "cannot merge: {why}"),
        }
    }
}

/// Rewrites `body` for `ctx`. `Ok(None)`: nothing to change. `other_master(region, path)` gives
/// the second region's master from the kv store when `merge-source = kv`.
pub fn rewrite(
    config: &Config,
    ctx: &Context<'_>,
    body: &[u8],
    other_master: &mut dyn FnMut(&str) -> Result<Option<String>, String>,
) -> Result<Option<Vec<u8>>, RewriteError> {
    let region = config.region(ctx.region);
    let base = region.and_then(|r| config.bases.get(r));
    if base.is_none() && config.merge.is_none() && ctx.token.is_none() {
        return Ok(None);
    }
    let playlist = parse(body)?;
    let out = match playlist {
        Playlist::MasterPlaylist(master) => {
            let mut master = match &config.merge {
                Some((a, b)) => {
                    let (primary, secondary) = if region == Some(b.as_str()) {
                        (b, a)
                    } else {
                        (a, b)
                    };
                    let other = match config.merge_source {
                        Some(MergeSource::Kv) => {
                            let text = other_master(secondary)
                                .map_err(|e| RewriteError::OtherMaster(format!("kv store: {e}")))?
                                .ok_or_else(|| {
                                    RewriteError::OtherMaster(format!(
                                        "no kv value {}",
                                        kv_key(secondary, ctx.path)
                                    ))
                                })?;
                            if text.len() > MAX_OTHER_MASTER_BYTES {
                                return Err(RewriteError::OtherMaster(
                                    "stored master over 64 KiB".into(),
                                ));
                            }
                            match parse(text.as_bytes()) {
                                Ok(Playlist::MasterPlaylist(m)) => m,
                                Ok(Playlist::MediaPlaylist(_)) => {
                                    return Err(RewriteError::OtherMaster(format!(
                                        "{} is a media playlist",
                                        kv_key(secondary, ctx.path)
                                    )))
                                }
                                Err(e) => {
                                    return Err(RewriteError::OtherMaster(format!(
                                        "{}: {e}",
                                        kv_key(secondary, ctx.path)
                                    )))
                                }
                            }
                        }
                        _ => master.clone(),
                    };
                    let mut first = master;
                    absolutize_master(&mut first, &config.bases[primary], ctx.path);
                    let mut second = other;
                    absolutize_master(&mut second, &config.bases[secondary], ctx.path);
                    rename_groups(&mut second, secondary);
                    merge(first, second)
                }
                None => {
                    let mut master = master;
                    if let Some(base) = base {
                        absolutize_master(&mut master, base, ctx.path);
                    }
                    master
                }
            };
            if let (Some(name), Some(token)) = (&config.token_name, &ctx.token) {
                tokenize_master(&mut master, name, token);
            }
            write(|w| master.write_to(w))
        }
        Playlist::MediaPlaylist(mut media) => {
            if let Some(base) = base {
                absolutize_media(&mut media, base, ctx.path);
            }
            if let (Some(name), Some(token)) = (&config.token_name, &ctx.token) {
                tokenize_media(&mut media, name, token);
            }
            write(|w| media.write_to(w))
        }
    };
    Ok(Some(out))
}

/// The kv key holding `region`'s master playlist for `path` when `merge-source = kv`.
pub fn kv_key(region: &str, path: &str) -> String {
    format!("playlist/{region}{path}")
}

fn parse(body: &[u8]) -> Result<Playlist, RewriteError> {
    let text = std::str::from_utf8(body).map_err(|_| RewriteError::NotUtf8)?;
    if !text.trim_start_matches('\u{feff}').starts_with("#EXTM3U") {
        return Err(RewriteError::Malformed(
            "does not start with #EXTM3U".into(),
        ));
    }
    m3u8_rs::parse_playlist_res(body).map_err(|e| {
        // nom's error echoes the remaining input; a short excerpt is enough for a log line.
        let mut why = format!("{e:?}");
        why.truncate(120);
        RewriteError::Malformed(why)
    })
}

fn write(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail; if the writer ever reported an error the body would be
    // short, so it would be better to pass the original, but there is no such path.
    let _ = f(&mut out);
    out
}

fn absolutize_master(master: &mut MasterPlaylist, base: &str, path: &str) {
    let resolve = |u: &mut String| *u = uri::resolve(base, path, u);
    for variant in &mut master.variants {
        resolve(&mut variant.uri);
    }
    for media in &mut master.alternatives {
        if let Some(u) = &mut media.uri {
            resolve(u);
        }
    }
    for data in &mut master.session_data {
        if let SessionDataField::Uri(u) = &mut data.field {
            resolve(u);
        }
    }
    for key in &mut master.session_key {
        if let Some(u) = &mut key.0.uri {
            resolve(u);
        }
    }
    for tag in &mut master.unknown_tags {
        map_tag_uri(tag, |u| uri::resolve(base, path, u));
    }
}

fn absolutize_media(media: &mut MediaPlaylist, base: &str, path: &str) {
    for segment in &mut media.segments {
        segment.uri = uri::resolve(base, path, &segment.uri);
        if let Some(key) = segment.key.as_mut().and_then(|k| k.uri.as_mut()) {
            *key = uri::resolve(base, path, key);
        }
        if let Some(map) = &mut segment.map {
            map.uri = uri::resolve(base, path, &map.uri);
        }
        for tag in &mut segment.unknown_tags {
            map_tag_uri(tag, |u| uri::resolve(base, path, u));
        }
    }
}

fn tokenize_master(master: &mut MasterPlaylist, name: &str, token: &str) {
    for variant in &mut master.variants {
        variant.uri = uri::append_query(&variant.uri, name, token);
    }
    for media in &mut master.alternatives {
        if let Some(u) = &mut media.uri {
            *u = uri::append_query(u, name, token);
        }
    }
}

fn tokenize_media(media: &mut MediaPlaylist, name: &str, token: &str) {
    for segment in &mut media.segments {
        segment.uri = uri::append_query(&segment.uri, name, token);
        if let Some(map) = &mut segment.map {
            map.uri = uri::append_query(&map.uri, name, token);
        }
        // Keys are left alone: key servers are usually elsewhere, with their own auth, and
        // should not receive the viewer's token.
        for tag in &mut segment.unknown_tags {
            map_tag_uri(tag, |u| uri::append_query(u, name, token));
        }
    }
}

/// Applies `f` to the quoted `URI` attribute of an LL-HLS tag kept as unknown by `m3u8-rs`.
fn map_tag_uri(tag: &mut ExtTag, f: impl Fn(&str) -> String) {
    if !URI_TAGS.contains(&tag.tag.as_str()) {
        return;
    }
    if let Some(rest) = &mut tag.rest {
        *rest = map_attribute(rest, "URI", f);
    }
}

/// `attributes` (an RFC 8216 §4.2 attribute list) with the quoted value of `name` replaced by
/// `f(value)`. Commas inside quoted strings are respected.
pub fn map_attribute(attributes: &str, name: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(attributes.len() + 64);
    let mut rest = attributes;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            out.push_str(rest);
            break;
        };
        let attr_name = &rest[..eq];
        out.push_str(attr_name);
        out.push('=');
        rest = &rest[eq + 1..];
        let value_len = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.find('"').map_or(rest.len(), |close| close + 2)
        } else {
            rest.find(',').unwrap_or(rest.len())
        };
        let value = &rest[..value_len];
        match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) if attr_name.trim() == name => {
                out.push('"');
                out.push_str(&f(inner));
                out.push('"');
            }
            _ => out.push_str(value),
        }
        rest = &rest[value_len..];
        if let Some(after) = rest.strip_prefix(',') {
            out.push(',');
            rest = after;
        }
    }
    out
}

/// Gives `master`'s rendition groups region-specific ids (`<group>-<region>`) and points its
/// variants at them, so the merged playlist's backup variants use backup renditions.
fn rename_groups(master: &mut MasterPlaylist, region: &str) {
    let rename = |g: &str| format!("{g}-{region}");
    for media in &mut master.alternatives {
        media.group_id = rename(&media.group_id);
    }
    for variant in &mut master.variants {
        for group in [
            &mut variant.audio,
            &mut variant.video,
            &mut variant.subtitles,
        ]
        .into_iter()
        .flatten()
        {
            *group = rename(group);
        }
        if let Some(ClosedCaptionGroupId::GroupId(group)) = &mut variant.closed_captions {
            *group = rename(group);
        }
    }
}

/// One master from two: `first`'s header, session data and tags; both regions' renditions;
/// variants grouped by bandwidth (in order of first appearance), `first`'s copy before
/// `second`'s within each group; I-frame variants likewise, after the others.
fn merge(first: MasterPlaylist, second: MasterPlaylist) -> MasterPlaylist {
    let version = first.version.max(second.version);
    let mut alternatives: Vec<AlternativeMedia> = first.alternatives.clone();
    alternatives.extend(second.alternatives);
    let (first_iframes, first_variants): (Vec<_>, Vec<_>) =
        first.variants.iter().cloned().partition(|v| v.is_i_frame);
    let (second_iframes, second_variants): (Vec<_>, Vec<_>) =
        second.variants.into_iter().partition(|v| v.is_i_frame);
    let mut variants = group_by_bandwidth(first_variants, second_variants);
    variants.extend(group_by_bandwidth(first_iframes, second_iframes));
    MasterPlaylist {
        version,
        variants,
        alternatives,
        ..first
    }
}

fn group_by_bandwidth(first: Vec<VariantStream>, second: Vec<VariantStream>) -> Vec<VariantStream> {
    let mut order: Vec<u64> = Vec::new();
    let mut groups: BTreeMap<u64, (Vec<VariantStream>, Vec<VariantStream>)> = BTreeMap::new();
    for (is_second, variant) in first
        .into_iter()
        .map(|v| (false, v))
        .chain(second.into_iter().map(|v| (true, v)))
    {
        if !groups.contains_key(&variant.bandwidth) {
            order.push(variant.bandwidth);
        }
        let group = groups.entry(variant.bandwidth).or_default();
        if is_second {
            group.1.push(variant)
        } else {
            group.0.push(variant)
        }
    }
    order
        .into_iter()
        .filter_map(|bandwidth| groups.remove(&bandwidth))
        .flat_map(|(a, b)| a.into_iter().chain(b))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MASTER: &str = "#EXTM3U
#EXT-X-VERSION:4
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,URI=\"audio/en.m3u8\"
#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID=\"cc\",NAME=\"CC1\",INSTREAM-ID=\"CC1\"
#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720,CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\",CLOSED-CAPTIONS=\"cc\"
720p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,CODECS=\"avc1.4d401e,mp4a.40.2\",AUDIO=\"aud\",CLOSED-CAPTIONS=\"cc\"
360p/index.m3u8
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=200000,RESOLUTION=1280x720,URI=\"720p/iframes.m3u8\"
";

    const MEDIA: &str = "#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:41
#EXT-X-DISCONTINUITY-SEQUENCE:1
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-PROGRAM-DATE-TIME:2026-11-22T02:00:00.000Z
#EXTINF:2.000,
41.ts
#EXT-X-DISCONTINUITY
#EXTINF:2.000,
../other/42.ts?x=1
#EXT-X-PART:DURATION=0.5,URI=\"43.0.ts\",INDEPENDENT=YES
#EXTINF:2.000,
https://elsewhere.example/43.ts
";

    /// A config of `pairs` (also used by `memo`'s tests).
    pub(crate) fn config(pairs: &[(&str, &str)]) -> Config {
        let entries: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_entries(&entries).unwrap()
    }

    fn run(config: &Config, ctx: &Context<'_>, body: &str) -> Result<Option<String>, RewriteError> {
        let mut no_kv =
            |_: &str| -> Result<Option<String>, String> { Err("no kv in this test".into()) };
        rewrite(config, ctx, body.as_bytes(), &mut no_kv)
            .map(|o| o.map(|b| String::from_utf8(b).unwrap()))
    }

    /// The context of a request for `path` (also used by `memo`'s tests).
    pub(crate) fn ctx<'a>(
        path: &'a str,
        region: Option<&'a str>,
        token: Option<&str>,
    ) -> Context<'a> {
        Context {
            path,
            region,
            token: token.map(str::to_owned),
        }
    }

    fn uris(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in text.lines() {
            if !line.starts_with('#') && !line.is_empty() {
                out.push(line.to_owned());
            } else if let Some(start) = line.find("URI=\"") {
                let rest = &line[start + 5..];
                out.push(rest[..rest.find('"').unwrap()].to_owned());
            }
        }
        out
    }

    #[test]
    fn nothing_configured_for_the_request_leaves_the_body_alone() {
        assert_eq!(
            run(&config(&[]), &ctx("/live/a/index.m3u8", None, None), MASTER),
            Ok(None)
        );
    }

    #[test]
    fn master_uris_become_absolute_on_the_regions_base() {
        let c = config(&[
            ("base.eu", "https://eu.cdn.example"),
            ("base.us", "https://us.cdn.example"),
        ]);
        let out = run(&c, &ctx("/live/a/index.m3u8", Some("us"), None), MASTER)
            .unwrap()
            .unwrap();
        assert_eq!(
            uris(&out),
            [
                "https://us.cdn.example/live/a/audio/en.m3u8",
                "https://us.cdn.example/live/a/720p/index.m3u8",
                "https://us.cdn.example/live/a/360p/index.m3u8",
                "https://us.cdn.example/live/a/720p/iframes.m3u8",
            ]
        );
        assert!(out.contains("INSTREAM-ID=\"CC1\""));
        assert!(out.contains("#EXT-X-INDEPENDENT-SEGMENTS"));
    }

    #[test]
    fn media_uris_become_absolute_including_parts_and_keep_the_timeline() {
        let c = config(&[("base.eu", "https://eu.cdn.example")]);
        let out = run(&c, &ctx("/live/a/720p/index.m3u8", None, None), MEDIA)
            .unwrap()
            .unwrap();
        assert_eq!(
            uris(&out),
            [
                "https://eu.cdn.example/live/a/720p/41.ts",
                "https://eu.cdn.example/live/a/other/42.ts?x=1",
                "https://eu.cdn.example/live/a/720p/43.0.ts",
                "https://elsewhere.example/43.ts",
            ]
        );
        for line in [
            "#EXT-X-MEDIA-SEQUENCE:41",
            "#EXT-X-DISCONTINUITY-SEQUENCE:1",
            "#EXT-X-DISCONTINUITY",
            "#EXT-X-TARGETDURATION:2",
            "#EXTINF:2,",
            "#EXT-X-PROGRAM-DATE-TIME:2026-11-22T02:00:00.000Z",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        // The rewritten playlist parses again (what players will do).
        assert!(
            matches!(m3u8_rs::parse_playlist_res(out.as_bytes()), Ok(Playlist::MediaPlaylist(m)) if m.segments.len() == 3)
        );
    }

    #[test]
    fn the_viewers_token_is_appended_to_child_playlists_and_segments_but_not_keys() {
        let c = config(&[("token-name", "__token__")]);
        let master = run(
            &c,
            &ctx(
                "/live/a/index.m3u8",
                None,
                Some("exp=1~acl=/live/a/*~hmac=ab"),
            ),
            MASTER,
        )
        .unwrap()
        .unwrap();
        assert!(
            uris(&master)
                .iter()
                .all(|u| u.ends_with("?__token__=exp=1~acl=/live/a/*~hmac=ab")),
            "{master}"
        );
        let keyed = MEDIA.replace(
            "#EXTINF:2.000,\n41.ts",
            "#EXT-X-KEY:METHOD=AES-128,URI=\"key.bin\"\n#EXTINF:2.000,\n41.ts",
        );
        let media = run(&c, &ctx("/live/a/720p/index.m3u8", None, Some("t")), &keyed)
            .unwrap()
            .unwrap();
        assert_eq!(
            uris(&media),
            [
                "key.bin",
                "41.ts?__token__=t",
                "../other/42.ts?x=1&__token__=t",
                "43.0.ts?__token__=t",
                "https://elsewhere.example/43.ts?__token__=t"
            ]
        );
        // No token in the request: nothing to do.
        assert_eq!(
            run(&c, &ctx("/live/a/index.m3u8", None, None), MASTER),
            Ok(None)
        );
    }

    #[test]
    fn two_regions_merge_into_redundant_variants_grouped_by_bandwidth() {
        let c = config(&[
            ("base.eu", "https://eu.cdn.example"),
            ("base.us", "https://us.cdn.example"),
            ("merge", "eu,us"),
        ]);
        let out = run(&c, &ctx("/live/a/index.m3u8", Some("eu"), None), MASTER)
            .unwrap()
            .unwrap();
        let merged = match m3u8_rs::parse_playlist_res(out.as_bytes()).unwrap() {
            Playlist::MasterPlaylist(m) => m,
            other => panic!("{other:?}"),
        };
        let variants: Vec<(u64, bool, &str)> = merged
            .variants
            .iter()
            .map(|v| (v.bandwidth, v.is_i_frame, v.uri.as_str()))
            .collect();
        assert_eq!(
            variants,
            [
                (
                    2_500_000,
                    false,
                    "https://eu.cdn.example/live/a/720p/index.m3u8"
                ),
                (
                    2_500_000,
                    false,
                    "https://us.cdn.example/live/a/720p/index.m3u8"
                ),
                (
                    800_000,
                    false,
                    "https://eu.cdn.example/live/a/360p/index.m3u8"
                ),
                (
                    800_000,
                    false,
                    "https://us.cdn.example/live/a/360p/index.m3u8"
                ),
                (
                    200_000,
                    true,
                    "https://eu.cdn.example/live/a/720p/iframes.m3u8"
                ),
                (
                    200_000,
                    true,
                    "https://us.cdn.example/live/a/720p/iframes.m3u8"
                ),
            ]
        );
        // Backup variants use backup renditions.
        let groups: Vec<(&str, Option<&str>)> = merged
            .alternatives
            .iter()
            .map(|m| (m.group_id.as_str(), m.uri.as_deref()))
            .collect();
        assert_eq!(
            groups,
            [
                ("aud", Some("https://eu.cdn.example/live/a/audio/en.m3u8")),
                ("cc", None),
                (
                    "aud-us",
                    Some("https://us.cdn.example/live/a/audio/en.m3u8")
                ),
                ("cc-us", None),
            ]
        );
        assert_eq!(merged.variants[1].audio.as_deref(), Some("aud-us"));
        assert_eq!(
            merged.variants[1].closed_captions,
            Some(ClosedCaptionGroupId::GroupId("cc-us".into()))
        );
        assert_eq!(merged.variants[0].audio.as_deref(), Some("aud"));
    }

    #[test]
    fn a_viewer_of_the_second_region_gets_its_own_region_first() {
        let c = config(&[
            ("base.eu", "https://eu.cdn.example"),
            ("base.us", "https://us.cdn.example"),
            ("merge", "eu,us"),
        ]);
        let out = run(&c, &ctx("/live/a/index.m3u8", Some("us"), None), MASTER)
            .unwrap()
            .unwrap();
        assert_eq!(uris(&out)[0], "https://us.cdn.example/live/a/audio/en.m3u8");
        assert!(out.contains("GROUP-ID=\"aud-eu\""));
    }

    #[test]
    fn the_second_master_can_come_from_the_kv_store() {
        let c = config(&[
            ("base.eu", "https://eu.cdn.example"),
            ("base.us", "https://us.cdn.example"),
            ("merge", "eu,us"),
            ("merge-source", "kv"),
        ]);
        let us_master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=5000000\n1080p.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlow.m3u8\n";
        let mut asked = Vec::new();
        let mut kv = |region: &str| -> Result<Option<String>, String> {
            asked.push(region.to_owned());
            Ok(Some(us_master.to_owned()))
        };
        let out = rewrite(
            &c,
            &ctx("/live/a/index.m3u8", Some("eu"), None),
            MASTER.as_bytes(),
            &mut kv,
        )
        .unwrap()
        .unwrap();
        assert_eq!(asked, ["us"]);
        let out = String::from_utf8(out).unwrap();
        let variant_uris: Vec<String> = uris(&out)
            .into_iter()
            .filter(|u| !u.contains("audio") && !u.contains("iframes"))
            .collect();
        // The 800k group gains the second region's copy; 5M, new, comes after the known groups.
        assert_eq!(
            variant_uris,
            [
                "https://eu.cdn.example/live/a/720p/index.m3u8",
                "https://eu.cdn.example/live/a/360p/index.m3u8",
                "https://us.cdn.example/live/a/low.m3u8",
                "https://us.cdn.example/live/a/1080p.m3u8",
            ]
        );
        assert_eq!(
            kv_key("us", "/live/a/index.m3u8"),
            "playlist/us/live/a/index.m3u8"
        );
    }

    #[test]
    fn a_missing_or_broken_second_master_is_a_clear_merge_error() {
        let c = config(&[
            ("base.eu", "https://e"),
            ("base.us", "https://u"),
            ("merge", "eu,us"),
            ("merge-source", "kv"),
        ]);
        let cx = ctx("/live/a/index.m3u8", Some("eu"), None);
        let mut missing = |_: &str| -> Result<Option<String>, String> { Ok(None) };
        let err = rewrite(&c, &cx, MASTER.as_bytes(), &mut missing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot merge: no kv value playlist/us/live/a/index.m3u8"
        );
        assert_eq!(err.as_str(), "merge-failed");
        let mut down = |_: &str| -> Result<Option<String>, String> { Err("redis down".into()) };
        assert_eq!(
            rewrite(&c, &cx, MASTER.as_bytes(), &mut down)
                .unwrap_err()
                .to_string(),
            "cannot merge: kv store: redis down"
        );
        let mut garbage = |_: &str| -> Result<Option<String>, String> { Ok(Some("hello".into())) };
        assert!(matches!(
            rewrite(&c, &cx, MASTER.as_bytes(), &mut garbage),
            Err(RewriteError::OtherMaster(_))
        ));
        let mut media = |_: &str| -> Result<Option<String>, String> { Ok(Some(MEDIA.into())) };
        assert!(rewrite(&c, &cx, MASTER.as_bytes(), &mut media)
            .unwrap_err()
            .to_string()
            .contains("is a media playlist"));
    }

    #[test]
    fn malformed_playlists_are_refused_with_a_reason_never_a_panic() {
        let c = config(&[("base.eu", "https://eu.cdn.example"), ("token-name", "t")]);
        let cx = ctx("/a.m3u8", None, Some("x"));
        assert_eq!(
            run(&c, &cx, "not a playlist"),
            Err(RewriteError::Malformed(
                "does not start with #EXTM3U".into()
            ))
        );
        let mut no_kv = |_: &str| -> Result<Option<String>, String> { Ok(None) };
        assert_eq!(
            rewrite(&c, &cx, &[0xff, 0xfe, 0x00], &mut no_kv),
            Err(RewriteError::NotUtf8)
        );
        // Truncated and odd inputs either parse into something or fail cleanly.
        for body in [
            "#EXTM3U",
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=",
            "#EXTM3U\n#EXTINF:abc,\nx.ts\n",
            "#EXTM3U\n#EXT-X-STREAM-INF\n",
            &MASTER[..MASTER.len() / 2],
            &MEDIA[..MEDIA.len() / 3],
        ] {
            let _ = run(&c, &cx, body);
        }
    }

    #[test]
    fn attribute_lists_are_rewritten_by_name_with_quoted_commas_respected() {
        let out = map_attribute(
            "DURATION=0.5,NAME=\"a,URI=b\",URI=\"x.ts\",INDEPENDENT=YES",
            "URI",
            |u| format!("/{u}"),
        );
        assert_eq!(
            out,
            "DURATION=0.5,NAME=\"a,URI=b\",URI=\"/x.ts\",INDEPENDENT=YES"
        );
        assert_eq!(map_attribute("BROKEN", "URI", |u| u.into()), "BROKEN");
        assert_eq!(
            map_attribute("URI=\"unterminated", "URI", |u| u.into()),
            "URI=\"unterminated"
        );
    }
}
