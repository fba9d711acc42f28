//! Remembered rewrites: each playlist version is parsed and written once per instance, and
//! every viewer after that gets the remembered output with their own token spliced in.
//!
//! A live playlist changes every target duration, and in between every viewer of it asks for
//! the same bytes; with token propagation (job 3, after the cache) only the token differs
//! between their results. So a rewrite is done once with a marker in place of the token
//! ([`MARKER`]), the output is kept split at the markers, and a later request for the same
//! body, path and region is answered by joining the pieces with its token: the bytes
//! [`rewrite::rewrite`] would have produced for it, without parsing (the tests check this
//! equality). The writer copies a token into URIs verbatim, which is what makes the splice
//! exact.
//!
//! Not remembered: rewrites that read the kv store (`merge-source = kv`: the stored master may
//! change at any time), bodies that contain the marker, and errors (a malformed playlist is
//! reported on every request, as before). The memory is bounded ([`MAX_ENTRIES`],
//! [`MAX_BYTES`]) and belongs to one instance: a new instance, or a new module version,
//! starts empty.

use std::collections::VecDeque;

use crate::config::{Config, MergeSource};
use crate::rewrite::{self, Context, RewriteError};

/// Stands in for the viewer's token while a template is written. Query-safe, so it passes
/// through every URI rewrite unchanged, and checked to be absent from the body.
pub const MARKER: &str = "~parallax-viewer-token~";

/// Playlists remembered at once: enough for every rendition of the streams one worker serves
/// in one refresh interval, for a busy edge.
pub const MAX_ENTRIES: usize = 256;

/// Bytes remembered at once (bodies and outputs), well under a module's memory cap.
pub const MAX_BYTES: usize = 4 << 20;

/// One remembered rewrite: the request it was for, and its output cut where tokens go.
struct Entry {
    path: String,
    region: Option<String>,
    /// Whether the request carried a token (with none, the output has no pieces to join).
    tokenized: bool,
    body: Vec<u8>,
    /// The output with every marker removed.
    out: Vec<u8>,
    /// Offsets in `out` where the token goes, ascending.
    splices: Vec<usize>,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.path.len() + self.body.len() + self.out.len() + self.splices.len() * 8
    }

    /// What a playlist is remembered by: the request's path and region, and whether it had a
    /// token. A newer body under the same key replaces the entry.
    fn key(&self) -> (&str, Option<&str>, bool) {
        (&self.path, self.region.as_deref(), self.tokenized)
    }

    fn matches(&self, ctx: &Context<'_>, body: &[u8]) -> bool {
        self.key() == key(ctx) && self.body == body
    }

    /// Cuts `written` (a rewrite with [`MARKER`] as the token) at its markers.
    fn split(ctx: &Context<'_>, body: &[u8], written: Vec<u8>) -> Self {
        let marker = MARKER.as_bytes();
        let mut out = Vec::with_capacity(written.len());
        let mut splices = Vec::new();
        let mut rest = &written[..];
        if ctx.token.is_some() {
            while let Some(at) = find(rest, marker) {
                out.extend_from_slice(&rest[..at]);
                splices.push(out.len());
                rest = &rest[at + marker.len()..];
            }
        }
        out.extend_from_slice(rest);
        Entry {
            path: ctx.path.to_owned(),
            region: ctx.region.map(str::to_owned),
            tokenized: ctx.token.is_some(),
            body: body.to_vec(),
            out,
            splices,
        }
    }

    /// The output for `token` (ignored when the entry has no splices).
    fn render(&self, token: Option<&str>) -> Vec<u8> {
        let token = token.unwrap_or_default().as_bytes();
        let mut out = Vec::with_capacity(self.out.len() + self.splices.len() * token.len());
        let mut from = 0;
        for &at in &self.splices {
            out.extend_from_slice(&self.out[from..at]);
            out.extend_from_slice(token);
            from = at;
        }
        out.extend_from_slice(&self.out[from..]);
        out
    }
}

/// The rewrites one instance remembers, oldest first.
pub struct Memo {
    entries: VecDeque<Entry>,
    bytes: usize,
    hits: u64,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for Memo {
    fn default() -> Self {
        Self::with_limits(MAX_ENTRIES, MAX_BYTES)
    }
}

impl Memo {
    /// An empty memory holding at most `max_entries` rewrites and `max_bytes`.
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            hits: 0,
            max_entries,
            max_bytes,
        }
    }

    /// [`rewrite::rewrite`] for `ctx` and `body`, from memory when the same body was rewritten
    /// for the same path and region before.
    pub fn rewrite(
        &mut self,
        config: &Config,
        ctx: &Context<'_>,
        body: &[u8],
        other_master: &mut dyn FnMut(&str) -> Result<Option<String>, String>,
    ) -> Result<Option<Vec<u8>>, RewriteError> {
        let reads_kv = config.merge.is_some() && config.merge_source == Some(MergeSource::Kv);
        if reads_kv {
            return rewrite::rewrite(config, ctx, body, other_master);
        }
        // A remembered body was checked for the marker when it was remembered.
        if let Some(entry) = self.entries.iter().find(|e| e.matches(ctx, body)) {
            self.hits += 1;
            return Ok(Some(entry.render(ctx.token.as_deref())));
        }
        if find(body, MARKER.as_bytes()).is_some() {
            return rewrite::rewrite(config, ctx, body, other_master);
        }
        let template = Context {
            token: ctx.token.as_ref().map(|_| MARKER.to_owned()),
            ..ctx.clone()
        };
        let Some(written) = rewrite::rewrite(config, &template, body, other_master)? else {
            return Ok(None);
        };
        let entry = Entry::split(ctx, body, written);
        let out = entry.render(ctx.token.as_deref());
        self.remember(entry);
        Ok(Some(out))
    }

    /// How many rewrites came from memory.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    fn remember(&mut self, entry: Entry) {
        // A new version of a playlist replaces the old one.
        if let Some(i) = self.entries.iter().position(|e| e.key() == entry.key()) {
            if let Some(old) = self.entries.remove(i) {
                self.bytes -= old.bytes();
            }
        }
        if entry.bytes() > self.max_bytes {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + entry.bytes() > self.max_bytes
        {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.bytes(),
                None => break,
            }
        }
        self.bytes += entry.bytes();
        self.entries.push_back(entry);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The key of the entry a request for `ctx` would find ([`Entry::key`]).
fn key<'c>(ctx: &'c Context<'_>) -> (&'c str, Option<&'c str>, bool) {
    (ctx.path, ctx.region, ctx.token.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::tests::{config, ctx};

    const MEDIA: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n\
        #EXT-X-MEDIA-SEQUENCE:41\n#EXT-X-MAP:URI=\"init.mp4\"\n\
        #EXT-X-KEY:METHOD=AES-128,URI=\"https://keys.example/k1\"\n\
        #EXTINF:2.000,\nseg41.m4s\n#EXTINF:2.000,\nseg42.m4s?v=2\n\
        #EXT-X-PART:DURATION=0.5,URI=\"seg43.0.m4s\"\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg43.1.m4s\"\n";
    const MASTER: &str = "#EXTM3U\n\
        #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"audio/en.m3u8\"\n\
        #EXT-X-STREAM-INF:BANDWIDTH=1280000,AUDIO=\"aud\"\n720p.m3u8\n\
        #EXT-X-STREAM-INF:BANDWIDTH=640000,AUDIO=\"aud\"\n360p.m3u8\n";

    fn no_kv(_: &str) -> Result<Option<String>, String> {
        Err("no kv in this test".into())
    }

    /// The memo's answer and the direct rewrite's, which must be equal.
    fn both(
        memo: &mut Memo,
        config: &Config,
        ctx: &Context<'_>,
        body: &str,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let remembered = memo
            .rewrite(config, ctx, body.as_bytes(), &mut no_kv)
            .unwrap();
        let direct = rewrite::rewrite(config, ctx, body.as_bytes(), &mut no_kv).unwrap();
        (remembered, direct)
    }

    #[test]
    fn every_viewer_gets_exactly_the_direct_rewrite_and_the_playlist_is_parsed_once() {
        let config = config(&[
            ("token-name", "__token__"),
            ("base.eu", "https://eu.example"),
        ]);
        let mut memo = Memo::default();
        let tokens = [
            "exp=1~acl=%2Flive%2F*~hmac=aa",
            "exp=2~hmac=bb",
            "",
            "x&y=%22",
        ];
        for (i, token) in tokens.iter().enumerate() {
            for (path, body) in [("/live/a/720p.m3u8", MEDIA), ("/live/a/index.m3u8", MASTER)] {
                let c = ctx(path, Some("eu"), Some(token));
                let (remembered, direct) = both(&mut memo, &config, &c, body);
                assert!(direct.is_some());
                assert_eq!(remembered, direct, "token {token:?} on {path}");
                if i == 0 {
                    let text = String::from_utf8(direct.unwrap()).unwrap();
                    assert!(text.contains(&format!("__token__={token}")), "{text}");
                }
            }
        }
        // Two playlists, rewritten once each; every later viewer came from memory.
        assert_eq!(memo.hits(), (tokens.len() as u64 - 1) * 2);
    }

    #[test]
    fn without_a_token_the_shared_rewrite_is_remembered_too() {
        let config = config(&[
            ("token-name", "__token__"),
            ("base.eu", "https://eu.example"),
        ]);
        let mut memo = Memo::default();
        for _ in 0..3 {
            let (remembered, direct) = both(
                &mut memo,
                &config,
                &ctx("/live/a/720p.m3u8", Some("eu"), None),
                MEDIA,
            );
            assert_eq!(remembered, direct);
        }
        assert_eq!(memo.hits(), 2);
        // A viewer with a token is another entry, not the tokenless output.
        let c = ctx("/live/a/720p.m3u8", Some("eu"), Some("t1"));
        let (remembered, direct) = both(&mut memo, &config, &c, MEDIA);
        assert_eq!(remembered, direct);
        assert_eq!(memo.hits(), 2);
    }

    #[test]
    fn a_new_version_region_or_path_is_rewritten_afresh() {
        let config = config(&[
            ("token-name", "__token__"),
            ("base.eu", "https://eu.example"),
            ("base.us", "https://us.example"),
        ]);
        let mut memo = Memo::default();
        let next = MEDIA.replace("SEQUENCE:41", "SEQUENCE:42");
        for (path, region, body) in [
            ("/live/a/720p.m3u8", Some("eu"), MEDIA),
            ("/live/a/720p.m3u8", Some("eu"), next.as_str()),
            ("/live/a/720p.m3u8", Some("us"), next.as_str()),
            ("/live/b/720p.m3u8", Some("us"), next.as_str()),
        ] {
            let (remembered, direct) =
                both(&mut memo, &config, &ctx(path, region, Some("t")), body);
            assert_eq!(remembered, direct);
        }
        assert_eq!(memo.hits(), 0);
        // The new version replaced the old one for eu: three entries, not four.
        assert_eq!(memo.entries.len(), 3);
    }

    #[test]
    fn a_body_containing_the_marker_and_kv_merges_bypass_the_memory() {
        let config_token = config(&[("token-name", "__token__")]);
        let mut memo = Memo::default();
        let tricky = format!("{MEDIA}#EXTINF:2.000,\nseg44.m4s?note={MARKER}\n");
        for _ in 0..2 {
            let (remembered, direct) = both(
                &mut memo,
                &config_token,
                &ctx("/p.m3u8", None, Some("t")),
                &tricky,
            );
            assert_eq!(remembered, direct);
        }
        assert_eq!((memo.hits(), memo.entries.len()), (0, 0));

        let kv_merge = config(&[
            ("base.eu", "https://eu.example"),
            ("base.us", "https://us.example"),
            ("merge", "eu,us"),
            ("merge-source", "kv"),
        ]);
        let mut kv = |_: &str| Ok(Some(MASTER.to_owned()));
        for _ in 0..2 {
            let c = ctx("/live/a/index.m3u8", Some("eu"), None);
            assert!(memo
                .rewrite(&kv_merge, &c, MASTER.as_bytes(), &mut kv)
                .unwrap()
                .is_some());
        }
        assert_eq!((memo.hits(), memo.entries.len()), (0, 0));
    }

    #[test]
    fn errors_and_untouched_bodies_are_not_remembered() {
        let config = config(&[("token-name", "__token__")]);
        let mut memo = Memo::default();
        let c = ctx("/p.m3u8", None, Some("t"));
        for _ in 0..2 {
            assert!(memo
                .rewrite(&config, &c, b"not a playlist", &mut no_kv)
                .is_err());
        }
        assert_eq!(
            memo.rewrite(
                &config,
                &ctx("/p.m3u8", None, None),
                MEDIA.as_bytes(),
                &mut no_kv
            )
            .unwrap(),
            None
        );
        assert_eq!(memo.entries.len(), 0);
    }

    #[test]
    fn the_memory_stays_within_its_bounds() {
        let config = config(&[("token-name", "__token__")]);
        let mut memo = Memo::with_limits(16, 64 * 1024);
        for i in 0..16 + 10 {
            let path = format!("/live/s{i}/index.m3u8");
            memo.rewrite(
                &config,
                &ctx(&path, None, Some("t")),
                MEDIA.as_bytes(),
                &mut no_kv,
            )
            .unwrap();
        }
        assert_eq!(memo.entries.len(), 16);
        assert!(memo.bytes <= 64 * 1024);
        assert_eq!(
            memo.bytes,
            memo.entries.iter().map(Entry::bytes).sum::<usize>()
        );
        // The oldest went first.
        assert_eq!(memo.entries[0].path, "/live/s10/index.m3u8");

        // Eight entries fit in 8 KiB; filling it evicts from the front.
        let mut small = Memo::with_limits(100, 8 * 1024);
        for i in 0..20 {
            let path = format!("/live/s{i}/index.m3u8");
            small
                .rewrite(
                    &config,
                    &ctx(&path, None, Some("t")),
                    MEDIA.as_bytes(),
                    &mut no_kv,
                )
                .unwrap();
            assert!(small.bytes <= 8 * 1024);
        }
        assert!(small.entries.len() < 20);
        assert_eq!(small.entries.back().unwrap().path, "/live/s19/index.m3u8");

        // One rewrite larger than the whole memory is answered, not kept.
        let huge = format!("{MEDIA}{}", "#EXTINF:2.000,\nseg.m4s\n".repeat(400));
        let out = small
            .rewrite(
                &config,
                &ctx("/huge.m3u8", None, Some("t")),
                huge.as_bytes(),
                &mut no_kv,
            )
            .unwrap();
        assert!(out.is_some());
        assert!(small.entries.iter().all(|e| e.path != "/huge.m3u8"));
    }
}
