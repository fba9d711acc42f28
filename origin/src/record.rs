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
use crate::store::StreamName;

/// The metadata file written next to a finished recording's playlist.
pub const INFO_NAME: &str = "recording.json";

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
    use crate::store::create_dir;

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
}
