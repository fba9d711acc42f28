//! Segments and playlists on disk.
//!
//! Owns the data directory layout (`live/<stream>/`, `vod/<stream>/<id>/`), the only place
//! names from the network become paths: [`StreamName`] and [`is_safe_file_name`] admit a small
//! charset with no `/`, no `..` and no leading dot, so nothing outside the data directory can be
//! named. [`LiveStore`] writes a live stream's segments and playlist atomically (temp file +
//! rename) and deletes a segment only after RFC 8216 §6.2.2's availability time. It also keeps
//! the stream's [`NumberingState`] (`live/<stream>/.numbering.json`), so that a later publish or
//! a restarted origin continues the numbering instead of reusing names.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::media::{
    render_media_playlist, MediaPlaylist, NumberingState, PlaylistEntry, Segment, SegmentInfo,
};

/// Errors from the data directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stream name is outside the allowed charset or length.
    #[error("invalid stream name {0:?}: use 1 to the configured maximum bytes of [A-Za-z0-9_-.], no leading dot")]
    InvalidName(String),
    /// Creating a directory failed.
    #[error("creating directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing (or renaming into place) a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A validated stream name: safe to use as one path component and in a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Accepts `[A-Za-z0-9_-.]{1,max_bytes}` without a leading dot (which also excludes `.`,
    /// `..` and our own temp files).
    pub fn parse(name: &str, max_bytes: usize) -> Result<Self, StoreError> {
        let ok = !name.is_empty()
            && name.len() <= max_bytes
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(StoreError::InvalidName(name.to_owned()))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `name` may name a file we serve (a segment, a playlist, a recording id): at most 128
/// bytes of `[A-Za-z0-9_-.]`, no leading dot.
pub fn is_safe_file_name(name: &str) -> bool {
    StreamName::parse(name, 128).is_ok()
}

/// Where things live under the data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    data_dir: PathBuf,
}

impl Layout {
    /// A layout rooted at `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
        }
    }

    /// `<data>/live/<stream>/`: the live playlist and its segments.
    pub fn live_dir(&self, stream: &StreamName) -> PathBuf {
        self.data_dir.join("live").join(stream.as_str())
    }

    /// `<data>/vod/<stream>/`: one directory per recording.
    pub fn vod_dir(&self, stream: &StreamName) -> PathBuf {
        self.data_dir.join("vod").join(stream.as_str())
    }
}

/// The live playlist's file name inside a stream's directory.
pub const PLAYLIST_NAME: &str = "index.m3u8";

/// The numbering state's file inside a stream's directory. The leading dot keeps it off HTTP
/// (such names are refused) and out of the leftover-segment cleanup.
pub const NUMBERING_NAME: &str = ".numbering.json";

/// Writes `data` to `path` so readers see the old file or the new one, never a partial one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| err(std::io::Error::other("path has no file name")))?;
    // A leading dot keeps the temp file unservable (names with a leading dot are refused).
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Creates `path` and its parents.
pub fn create_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(path).map_err(|source| StoreError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// A segment listed (or formerly listed) in a live playlist.
#[derive(Debug, Clone)]
pub struct StoredSegment {
    /// The segment's metadata as the packager produced it.
    pub info: SegmentInfo,
    /// EXT-X-PROGRAM-DATE-TIME of its first sample, Unix milliseconds.
    pub program_date_time_ms: i64,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// One live stream's directory: the rolling playlist window and the segments behind it.
///
/// Methods do blocking file I/O; the hub calls them from `spawn_blocking`.
#[derive(Debug)]
pub struct LiveStore {
    dir: PathBuf,
    target_duration_secs: u32,
    window_segments: usize,
    window: VecDeque<StoredSegment>,
    /// Segments that left the playlist, with the instant they may be deleted.
    expiring: VecDeque<(Instant, PathBuf)>,
    ended: bool,
}

impl LiveStore {
    /// Opens (creating) `dir` for a stream whose playlist lists `window_segments` segments.
    ///
    /// `target_duration_secs` is written as EXT-X-TARGETDURATION for the life of the playlist
    /// (RFC 8216 §4.3.3.1 forbids changing it).
    pub fn open(
        dir: PathBuf,
        target_duration_secs: u32,
        window_segments: usize,
    ) -> Result<Self, StoreError> {
        create_dir(&dir)?;
        // Segments left by an earlier publish of this name (or an earlier run) would otherwise
        // stay forever. Clients may still hold the old playlist, so they get the availability
        // time of a full window; a name the new publish writes again is spared (see
        // `add_segment`).
        let keep =
            Duration::from_secs(u64::from(target_duration_secs) * (window_segments as u64 + 1));
        let now = Instant::now();
        let expiring = std::fs::read_dir(&dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ts"))
            .map(|p| (now + keep, p))
            .collect();
        Ok(Self {
            dir,
            target_duration_secs,
            window_segments,
            window: VecDeque::new(),
            expiring,
            ended: false,
        })
    }

    /// Writes a segment, then the playlist listing it; returns what was stored.
    ///
    /// Segments pushed out of the window are scheduled for deletion at `now` + their duration +
    /// the playlist's duration: RFC 8216 §6.2.2 requires a segment removed from the playlist
    /// to stay available that long, since a client may have just loaded a playlist listing it.
    pub fn add_segment(
        &mut self,
        segment: &Segment,
        program_date_time_ms: i64,
        now: Instant,
    ) -> Result<StoredSegment, StoreError> {
        let path = self.dir.join(&segment.info.name);
        write_atomic(&path, &segment.data)?;
        // Rewritten under a name that was scheduled for deletion: the new file must stay.
        self.expiring.retain(|(_, p)| *p != path);
        let stored = StoredSegment {
            info: segment.info.clone(),
            program_date_time_ms,
            path,
            bytes: segment.data.len() as u64,
        };
        // The longest playlist that listed the segments about to leave: the current one.
        let playlist_ms: u64 = self
            .window
            .iter()
            .map(|s| u64::from(s.info.duration_ms))
            .sum();
        self.window.push_back(stored.clone());
        self.ended = false;
        while self.window.len() > self.window_segments {
            if let Some(old) = self.window.pop_front() {
                let keep = Duration::from_millis(u64::from(old.info.duration_ms) + playlist_ms);
                self.expiring.push_back((now + keep, old.path));
            }
        }
        self.write_playlist()?;
        Ok(stored)
    }

    /// Rewrites the playlist with EXT-X-ENDLIST: the publish is over for good.
    pub fn end(&mut self) -> Result<(), StoreError> {
        if self.window.is_empty() {
            // Nothing was ever packaged (the publish failed early): no playlist to end.
            return Ok(());
        }
        self.ended = true;
        self.write_playlist()
    }

    /// The numbering state saved by an earlier publish of this stream (or by this publish before
    /// the origin restarted); `None` if there is none. A file that cannot be read or parsed is
    /// logged and ignored: numbering then starts afresh, which beats refusing the publish.
    pub fn load_numbering(&self) -> Option<NumberingState> {
        let path = self.dir.join(NUMBERING_NAME);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the numbering state; numbering starts afresh");
                return None;
            }
        };
        match serde_json::from_slice(&text) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "malformed numbering state; numbering starts afresh");
                None
            }
        }
    }

    /// Saves the numbering state. Called before the segments it covers are written, so a crash
    /// in between skips a sequence number rather than reusing one.
    pub fn save_numbering(&self, state: &NumberingState) -> Result<(), StoreError> {
        let path = self.dir.join(NUMBERING_NAME);
        let json = serde_json::to_vec(state).map_err(|e| StoreError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &json)
    }

    /// Whether some segment's availability time has passed (cheap; no I/O).
    pub fn has_expired(&self, now: Instant) -> bool {
        self.expiring.front().is_some_and(|(t, _)| *t <= now)
    }

    /// Deletes segments whose availability time has passed; returns how many.
    pub fn delete_expired(&mut self, now: Instant) -> usize {
        let mut deleted = 0;
        while let Some((deadline, _)) = self.expiring.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, path)) = self.expiring.pop_front() {
                match std::fs::remove_file(&path) {
                    Ok(()) => deleted += 1,
                    // Already gone is the state we want.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "deleting expired segment")
                    }
                }
            }
        }
        deleted
    }

    /// The playlist text as currently written.
    pub fn render(&self) -> String {
        let entries = self
            .window
            .iter()
            .map(|s| PlaylistEntry {
                segment: s.info.clone(),
                program_date_time_ms: Some(s.program_date_time_ms),
            })
            .collect();
        let mut playlist = MediaPlaylist::new(self.target_duration_secs, entries);
        playlist.ended = self.ended;
        render_media_playlist(&playlist)
    }

    fn write_playlist(&self) -> Result<(), StoreError> {
        write_atomic(&self.dir.join(PLAYLIST_NAME), self.render().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_allow_only_a_safe_charset() {
        for good in ["test", "cam-1", "a_b.c", "A9", "x".repeat(64).as_str()] {
            assert!(StreamName::parse(good, 64).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "%2e%2e",
            "a%2fb",
            "a b",
            "é",
            "a\0b",
            "x".repeat(65).as_str(),
        ] {
            assert!(StreamName::parse(bad, 64).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names_refuse_traversal_and_temp_files() {
        assert!(is_safe_file_name("123.ts"));
        assert!(is_safe_file_name("index.m3u8"));
        assert!(!is_safe_file_name(".index.m3u8.tmp"));
        assert!(!is_safe_file_name(".."));
        assert!(!is_safe_file_name("../x.ts"));
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("parallax-store-{}", std::process::id()));
        create_dir(&dir).unwrap();
        let path = dir.join("index.m3u8");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("index.m3u8")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn segment(sequence: u64) -> Segment {
        Segment {
            info: SegmentInfo {
                sequence,
                discontinuity_sequence: 0,
                discontinuity: false,
                duration_ms: 2000,
                name: format!("{sequence}.ts"),
                first_pts_90k: sequence * 180_000,
            },
            data: bytes::Bytes::from(vec![0x47; 188]),
        }
    }

    fn temp(what: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("parallax-store-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn segments_leave_disk_only_after_their_availability_time() {
        let dir = temp("availability");
        let mut store = LiveStore::open(dir.clone(), 2, 3).unwrap();
        let t0 = Instant::now();
        for seq in 0..5 {
            store.add_segment(&segment(seq), 0, t0).unwrap();
        }
        let playlist = std::fs::read_to_string(dir.join(PLAYLIST_NAME)).unwrap();
        assert!(playlist.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{playlist}");
        assert!(!playlist.contains("0.ts") && !playlist.contains("1.ts"));
        assert!(playlist.contains("#EXT-X-PROGRAM-DATE-TIME:"));
        // 0.ts left a playlist of 3 × 2 s: it stays 2 s + 6 s.
        assert!(!store.has_expired(t0 + Duration::from_millis(7_999)));
        assert_eq!(store.delete_expired(t0 + Duration::from_millis(7_999)), 0);
        assert!(store.has_expired(t0 + Duration::from_millis(8_000)));
        assert!(dir.join("0.ts").exists());
        assert_eq!(store.delete_expired(t0 + Duration::from_millis(8_000)), 2);
        assert!(!dir.join("0.ts").exists() && !dir.join("1.ts").exists());
        assert!(dir.join("2.ts").exists());
        store.end().unwrap();
        let ended = std::fs::read_to_string(dir.join(PLAYLIST_NAME)).unwrap();
        assert!(ended.ends_with("#EXT-X-ENDLIST\n"), "{ended}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leftovers_of_an_earlier_publish_expire_unless_rewritten() {
        let dir = temp("leftovers");
        create_dir(&dir).unwrap();
        std::fs::write(dir.join("7.ts"), b"old").unwrap();
        std::fs::write(dir.join("8.ts"), b"old").unwrap();
        let t0 = Instant::now();
        let mut store = LiveStore::open(dir.clone(), 2, 3).unwrap();
        store.add_segment(&segment(8), 0, t0).unwrap();
        assert_eq!(store.delete_expired(t0 + Duration::from_secs(60)), 1);
        assert!(!dir.join("7.ts").exists());
        assert_eq!(std::fs::read(dir.join("8.ts")).unwrap().len(), 188);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbering_state_round_trips_and_a_broken_file_means_none() {
        let dir = temp("numbering");
        let store = LiveStore::open(dir.clone(), 2, 3).unwrap();
        assert_eq!(store.load_numbering(), None);
        let state = NumberingState {
            last_sequence: 41,
            discontinuity_sequence: 2,
            offset: -7,
        };
        store.save_numbering(&state).unwrap();
        assert_eq!(store.load_numbering(), Some(state));
        assert!(!is_safe_file_name(NUMBERING_NAME), "must not be served");
        for broken in [&b"{\"last_sequence\": 4"[..], b"[]", b"\xff\xfe", b""] {
            std::fs::write(dir.join(NUMBERING_NAME), broken).unwrap();
            assert_eq!(store.load_numbering(), None);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stream_that_never_produced_a_segment_gets_no_playlist() {
        let dir = temp("empty");
        let mut store = LiveStore::open(dir.clone(), 2, 3).unwrap();
        store.end().unwrap();
        assert!(!dir.join(PLAYLIST_NAME).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
