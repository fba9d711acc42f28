//! Recording every publish for VOD.
//!
//! A [`Recorder`] follows one live stream: each segment the live store wrote is hard-linked into
//! `vod/<stream>/<recording-id>/` (no second copy of the bytes, and the live store may delete
//! its own link whenever it likes). The recording rolls over to a new id at the configured size
//! or duration; when it ends, the recorder writes the VOD playlist (`EXT-X-PLAYLIST-TYPE:VOD`,
//! `EXT-X-ENDLIST`) and `recording.json`, which `/vod/<stream>/` lists. Then the post-record
//! hook runs; it only reads the recording, so a failing hook never loses it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::config::HookConfig;
use crate::media::{render_media_playlist, MediaPlaylist, PlaylistEntry, SegmentInfo};
use crate::store::{
    create_dir, write_atomic, StoreError, StoredSegment, StreamName, PLAYLIST_NAME,
};

/// The metadata file written next to a finished recording's playlist.
pub const INFO_NAME: &str = "recording.json";

/// Errors while recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Creating the recording's directory or writing its playlist or metadata failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Linking (or, across filesystems, copying) a segment into the recording failed.
    #[error("linking {from} into {to}: {source}")]
    Link {
        /// The live segment.
        from: PathBuf,
        /// Its place in the recording.
        to: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One finished recording, as listed by `/vod/<stream>/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordingInfo {
    /// The recording id: the Unix time of its first segment in milliseconds.
    pub id: String,
    /// The stream it was published on.
    pub stream: String,
    /// When its first segment started (RFC 3339, UTC).
    pub start_time: String,
    /// Its duration: the sum of its segments' durations, in milliseconds.
    pub duration_ms: u64,
    /// How many segments it holds.
    pub segments: usize,
    /// Bytes of segment data.
    pub bytes: u64,
    /// Path of its VOD playlist on this server.
    pub url: String,
}

/// A recording that was just finalized: what the post-record hook is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The recording's directory.
    pub dir: PathBuf,
    /// The recording's id.
    pub id: String,
}

/// Limits that make a recording roll over to a new id.
#[derive(Debug, Clone, Copy)]
pub struct Rollover {
    /// Bytes of segment data.
    pub max_bytes: u64,
    /// Duration in milliseconds.
    pub max_duration_ms: u64,
}

#[derive(Debug)]
struct Recording {
    info: RecordingInfo,
    dir: PathBuf,
    entries: Vec<PlaylistEntry>,
}

/// Records one live stream. Methods do blocking file I/O (called from `spawn_blocking`).
#[derive(Debug)]
pub struct Recorder {
    stream: StreamName,
    vod_dir: PathBuf,
    target_duration_secs: u32,
    rollover: Rollover,
    current: Option<Recording>,
}

impl Recorder {
    /// A recorder writing under `vod_dir` (`<data>/vod/<stream>/`).
    pub fn new(
        stream: StreamName,
        vod_dir: PathBuf,
        target_duration_secs: u32,
        rollover: Rollover,
    ) -> Self {
        Self {
            stream,
            vod_dir,
            target_duration_secs,
            rollover,
            current: None,
        }
    }

    /// Adds a segment the live store wrote; returns the recording it finalized if adding it
    /// rolled over.
    pub fn add(&mut self, segment: &StoredSegment) -> Result<Option<Finished>, RecordError> {
        let finished = match &self.current {
            Some(rec)
                if rec.info.bytes + segment.bytes > self.rollover.max_bytes
                    || rec.info.duration_ms >= self.rollover.max_duration_ms =>
            {
                self.finish()?
            }
            _ => None,
        };
        let rec = match &mut self.current {
            Some(rec) => rec,
            None => {
                let id = segment.program_date_time_ms.to_string();
                let dir = self.vod_dir.join(&id);
                create_dir(&dir)?;
                self.current.insert(Recording {
                    info: RecordingInfo {
                        url: format!("/vod/{}/{id}/{PLAYLIST_NAME}", self.stream),
                        id,
                        stream: self.stream.to_string(),
                        start_time: rfc3339(segment.program_date_time_ms),
                        duration_ms: 0,
                        segments: 0,
                        bytes: 0,
                    },
                    dir,
                    entries: Vec::new(),
                })
            }
        };
        let to = rec.dir.join(&segment.info.name);
        link_or_copy(&segment.path, &to)?;
        let mut info: SegmentInfo = segment.info.clone();
        // A recording starts fresh: a discontinuity before its first segment means nothing.
        if rec.entries.is_empty() {
            info.discontinuity = false;
        }
        rec.info.duration_ms += u64::from(info.duration_ms);
        rec.info.segments += 1;
        rec.info.bytes += segment.bytes;
        rec.entries.push(PlaylistEntry {
            segment: info,
            program_date_time_ms: Some(segment.program_date_time_ms),
        });
        Ok(finished)
    }

    /// Finalizes the current recording (if any): VOD playlist and `recording.json`.
    pub fn finish(&mut self) -> Result<Option<Finished>, RecordError> {
        let Some(rec) = self.current.take() else {
            return Ok(None);
        };
        let mut playlist = MediaPlaylist::new(self.target_duration_secs, rec.entries);
        playlist.ended = true;
        playlist.vod = true;
        write_atomic(
            &rec.dir.join(PLAYLIST_NAME),
            render_media_playlist(&playlist).as_bytes(),
        )?;
        let json = serde_json::to_vec_pretty(&rec.info).unwrap_or_default();
        // Written last: a recording is listed only once its playlist is complete.
        write_atomic(&rec.dir.join(INFO_NAME), &json)?;
        tracing::info!(
            stream = %self.stream,
            id = %rec.info.id,
            segments = rec.info.segments,
            duration_ms = rec.info.duration_ms,
            bytes = rec.info.bytes,
            "recording finalized"
        );
        Ok(Some(Finished {
            dir: rec.dir,
            id: rec.info.id,
        }))
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), RecordError> {
    let err = |source| RecordError::Link {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        // The same segment linked twice (a rewritten segment after a restart): keep the first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // EXDEV: a data dir split over filesystems still records, at the cost of a copy.
        Err(_) => std::fs::copy(from, to).map(|_| ()).map_err(err),
    }
}

/// Lists the finished recordings in `dir` (`<data>/vod/<stream>/`), oldest first; `None` if
/// the stream was never recorded.
pub async fn list_recordings(
    dir: &Path,
    stream: &StreamName,
) -> std::io::Result<Option<Vec<RecordingInfo>>> {
    let dir = dir.to_owned();
    let stream = stream.clone();
    tokio::task::spawn_blocking(move || {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut list = Vec::new();
        for entry in entries {
            let path = entry?.path().join(INFO_NAME);
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                // Still recording (no metadata yet), or not a recording at all.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match serde_json::from_slice::<RecordingInfo>(&text) {
                Ok(info) => list.push(info),
                Err(e) => {
                    tracing::warn!(%stream, path = %path.display(), error = %e, "unreadable recording metadata")
                }
            }
        }
        list.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
        Ok(Some(list))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Runs the post-record hook: `command args... <dir> <id>`, and logs how it ended.
///
/// The hook's output goes to our log; its failure (spawn error, non-zero exit, timeout) is
/// logged and otherwise ignored — the recording stays where it is.
pub async fn run_hook(hook: &HookConfig, finished: &Finished) {
    let span = tracing::info_span!("post_record_hook", command = %hook.command, id = %finished.id);
    async move {
        let child = tokio::process::Command::new(&hook.command)
            .args(&hook.args)
            .arg(&finished.dir)
            .arg(&finished.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the wait on timeout kills the hook instead of leaking it.
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "post-record hook could not be started; recording kept");
                return;
            }
        };
        let wait = child.wait_with_output();
        let out = if hook.timeout_secs == 0 {
            Some(wait.await)
        } else {
            tokio::time::timeout(Duration::from_secs(hook.timeout_secs), wait)
                .await
                .ok()
        };
        match out {
            Some(Ok(out)) if out.status.success() => {
                tracing::info!(status = %out.status, "post-record hook succeeded")
            }
            Some(Ok(out)) => tracing::warn!(
                status = %out.status,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "post-record hook failed; recording kept"
            ),
            Some(Err(e)) => tracing::error!(error = %e, "post-record hook failed to run; recording kept"),
            None => tracing::warn!(
                timeout_secs = hook.timeout_secs,
                "post-record hook timed out and was killed; recording kept"
            ),
        }
    }
    .instrument(span)
    .await
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-11-21T23:40:00.123Z`).
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_763_768_400_123), "2025-11-21T23:40:00.123Z");
    }

    #[tokio::test]
    async fn listing_a_never_recorded_stream_is_none() {
        let name = StreamName::parse("nobody", 64).unwrap();
        let dir = std::env::temp_dir().join("parallax-record-never-recorded");
        assert_eq!(list_recordings(&dir, &name).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failing_hook_leaves_the_recording_in_place() {
        let dir = std::env::temp_dir().join(format!("parallax-hook-{}", std::process::id()));
        create_dir(&dir).unwrap();
        std::fs::write(dir.join("0.ts"), b"x").unwrap();
        let hook = HookConfig {
            command: "sh".into(),
            args: vec!["-c".into(), "exit 3".into(), "hook".into()],
            timeout_secs: 5,
        };
        let finished = Finished {
            dir: dir.clone(),
            id: "1".into(),
        };
        run_hook(&hook, &finished).await;
        assert!(dir.join("0.ts").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn stored(dir: &Path, sequence: u64) -> StoredSegment {
        let path = dir.join(format!("{sequence}.ts"));
        std::fs::write(&path, vec![0x47u8; 188 * 10]).unwrap();
        StoredSegment {
            info: SegmentInfo {
                sequence,
                discontinuity_sequence: 0,
                discontinuity: false,
                duration_ms: 2000,
                name: format!("{sequence}.ts"),
                first_pts_90k: sequence * 180_000,
            },
            program_date_time_ms: 1_700_000_000_000 + sequence as i64 * 2000,
            path,
            bytes: 1880,
        }
    }

    #[tokio::test]
    async fn recordings_roll_over_and_share_the_live_segment_files() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("parallax-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let live = root.join("live");
        create_dir(&live).unwrap();
        let name = StreamName::parse("show", 64).unwrap();
        let vod = root.join("vod");
        let rollover = Rollover {
            max_bytes: 1 << 30,
            max_duration_ms: 4000,
        };
        let mut rec = Recorder::new(name.clone(), vod.clone(), 2, rollover);
        let mut finished = Vec::new();
        for seq in 0..5 {
            finished.extend(rec.add(&stored(&live, seq)).unwrap());
        }
        finished.extend(rec.finish().unwrap());
        assert_eq!(finished.len(), 3, "4 s rollover over 10 s: {finished:?}");

        let list = list_recordings(&vod, &name).await.unwrap().unwrap();
        let segments: Vec<usize> = list.iter().map(|r| r.segments).collect();
        assert_eq!(segments, [2, 2, 1]);
        assert_eq!(list[0].id, "1700000000000");
        assert_eq!(list[0].url, "/vod/show/1700000000000/index.m3u8");
        assert_eq!(list[0].duration_ms, 4000);
        assert_eq!(list[0].start_time, "2023-11-14T22:13:20.000Z");

        let playlist = std::fs::read_to_string(finished[1].dir.join(PLAYLIST_NAME)).unwrap();
        assert!(
            playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"),
            "{playlist}"
        );
        assert!(playlist.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{playlist}");
        assert!(playlist.trim_end().ends_with("#EXT-X-ENDLIST"));
        // A hard link, not a copy.
        let a = std::fs::metadata(live.join("2.ts")).unwrap().ino();
        let b = std::fs::metadata(finished[1].dir.join("2.ts"))
            .unwrap()
            .ino();
        assert_eq!(a, b);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
