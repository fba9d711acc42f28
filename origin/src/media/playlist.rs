//! HLS media playlists (RFC 8216): the live window and VOD.
//!
//! A playlist is rendered from [`SegmentInfo`]s the packager produced, so everything in it —
//! URIs, EXT-X-MEDIA-SEQUENCE, EXT-X-DISCONTINUITY-SEQUENCE, EXTINF — is derived from the stream
//! and agrees between origins. Only EXT-X-PROGRAM-DATE-TIME comes from the caller.
//! EXT-X-TARGETDURATION is whatever the caller passes, which must be the configured constant for
//! the life of the playlist (RFC 8216 §4.3.3.1: it MUST NOT change; nginx-rtmp recomputes it).

use std::collections::VecDeque;
use std::fmt::Write as _;

/// A finished segment's description, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Media sequence number.
    pub sequence: u64,
    /// Discontinuity sequence number (the count of discontinuities before and at this segment).
    pub discontinuity_sequence: u64,
    /// Whether EXT-X-DISCONTINUITY precedes this segment.
    pub discontinuity: bool,
    /// EXTINF duration in ms.
    pub duration_ms: u32,
    /// URI relative to the playlist, e.g. `"123.ts"`.
    pub name: String,
    /// PTS of the first video frame in 90 kHz units, before the 33-bit wrap of the TS field.
    pub first_pts_90k: u64,
}

/// One segment as listed in a playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistEntry {
    /// The segment.
    pub segment: SegmentInfo,
    /// EXT-X-PROGRAM-DATE-TIME of its first sample, ms since the Unix epoch (UTC), if known.
    pub program_date_time_ms: Option<i64>,
}

/// A media playlist ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlaylist {
    /// EXT-X-TARGETDURATION in whole seconds; the configured constant, never recomputed.
    pub target_duration_secs: u32,
    /// EXT-X-MEDIA-SEQUENCE: the first entry's sequence number.
    pub media_sequence: u64,
    /// EXT-X-DISCONTINUITY-SEQUENCE of the first entry.
    pub discontinuity_sequence: u64,
    /// The listed segments, oldest first.
    pub entries: Vec<PlaylistEntry>,
    /// Appends EXT-X-ENDLIST: no segment will be added.
    pub ended: bool,
    /// Renders `EXT-X-PLAYLIST-TYPE:VOD` (and EXT-X-ENDLIST).
    pub vod: bool,
}

impl MediaPlaylist {
    /// A live (not ended) playlist of `entries`, with the sequence numbers taken from the first.
    pub fn new(target_duration_secs: u32, entries: Vec<PlaylistEntry>) -> Self {
        let (media_sequence, discontinuity_sequence) = entries.first().map_or((0, 0), |first| {
            let segment = &first.segment;
            // The first entry's own EXT-X-DISCONTINUITY counts towards its number
            // (RFC 8216 §4.3.3.3), so the playlist-level value is one less.
            (
                segment.sequence,
                segment
                    .discontinuity_sequence
                    .saturating_sub(u64::from(segment.discontinuity)),
            )
        });
        Self {
            target_duration_secs,
            media_sequence,
            discontinuity_sequence,
            entries,
            ended: false,
            vod: false,
        }
    }
}

/// The rolling window of a live stream: the last `window_segments` entries.
#[derive(Debug, Clone)]
pub struct LiveWindow {
    target_duration_secs: u32,
    window_segments: usize,
    entries: VecDeque<PlaylistEntry>,
}

impl LiveWindow {
    /// An empty window listing at most `window_segments` (at least 1) segments.
    pub fn new(target_duration_secs: u32, window_segments: usize) -> Self {
        let window_segments = window_segments.max(1);
        Self {
            target_duration_secs,
            window_segments,
            entries: VecDeque::with_capacity(window_segments + 1),
        }
    }

    /// Appends a segment; returns the one that slid out of the window, which stays available
    /// until its RFC 8216 §6.2.2 availability time is over (the store's job).
    pub fn push(&mut self, entry: PlaylistEntry) -> Option<PlaylistEntry> {
        self.entries.push_back(entry);
        if self.entries.len() > self.window_segments {
            self.entries.pop_front()
        } else {
            None
        }
    }

    /// The segments currently listed, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &PlaylistEntry> {
        self.entries.iter()
    }

    /// The playlist for the current window; `ended` appends EXT-X-ENDLIST.
    pub fn playlist(&self, ended: bool) -> MediaPlaylist {
        let mut playlist = MediaPlaylist::new(
            self.target_duration_secs,
            self.entries.iter().cloned().collect(),
        );
        playlist.ended = ended;
        playlist
    }
}

/// Renders a media playlist per RFC 8216.
pub fn render_media_playlist(p: &MediaPlaylist) -> String {
    let mut out = String::with_capacity(128 + p.entries.len() * 96);
    // Writing to a String cannot fail; the results are ignored for that reason only.
    // Version 3: EXTINF with decimals (§4.3.2.1, §7).
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{}\n\
         #EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
        p.target_duration_secs, p.media_sequence, p.discontinuity_sequence
    );
    if p.vod {
        out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    }
    // Every segment starts with a keyframe and its own SPS/PPS.
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    for entry in &p.entries {
        let segment = &entry.segment;
        if segment.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if let Some(ms) = entry.program_date_time_ms {
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                format_program_date_time(ms)
            );
        }
        let _ = write!(
            out,
            "#EXTINF:{}.{:03},\n{}\n",
            segment.duration_ms / 1000,
            segment.duration_ms % 1000,
            segment.name
        );
    }
    if p.ended || p.vod {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

/// Formats ms since the Unix epoch as ISO 8601 UTC with milliseconds,
/// e.g. `2026-11-21T23:40:23.123Z`.
pub fn format_program_date_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (days, sec_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sec_of_day / 3600,
        sec_of_day % 3600 / 60,
        sec_of_day % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`
/// algorithm: shift to a year starting in March so the leap day is last, then split into
/// 400-year eras).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64, dseq: u64, discontinuity: bool, duration_ms: u32) -> PlaylistEntry {
        PlaylistEntry {
            segment: SegmentInfo {
                sequence,
                discontinuity_sequence: dseq,
                discontinuity,
                duration_ms,
                name: format!("{sequence}.ts"),
                first_pts_90k: 0,
            },
            program_date_time_ms: None,
        }
    }

    #[test]
    fn program_date_time_is_iso_8601_utc_with_milliseconds() {
        assert_eq!(format_program_date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_program_date_time(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_program_date_time(951_782_400_007),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(format_program_date_time(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn live_playlist_renders_header_entries_and_no_endlist() {
        let mut first = entry(41, 0, false, 2000);
        first.program_date_time_ms = Some(1_700_000_000_000);
        let playlist = MediaPlaylist::new(2, vec![first, entry(42, 0, false, 1967)]);
        assert_eq!(
            render_media_playlist(&playlist),
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:41\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:0\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z\n#EXTINF:2.000,\n41.ts\n\
             #EXTINF:1.967,\n42.ts\n"
        );
    }

    #[test]
    fn vod_playlist_has_type_and_endlist() {
        let mut playlist = MediaPlaylist::new(2, vec![entry(0, 0, false, 2000)]);
        playlist.vod = true;
        let text = render_media_playlist(&playlist);
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
        assert!(text.ends_with("0.ts\n#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn window_keeps_the_last_segments_and_a_constant_target_duration() {
        let mut window = LiveWindow::new(2, 3);
        let mut evicted = Vec::new();
        for seq in 10..16 {
            // A 4.5 s segment (sparse keyframes) must not change the target duration.
            let duration = if seq == 14 { 4500 } else { 2000 };
            evicted.extend(window.push(entry(seq, 0, false, duration)));
        }
        let playlist = window.playlist(false);
        assert_eq!(playlist.media_sequence, 13);
        let text = render_media_playlist(&playlist);
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"));
        assert!(text.contains("#EXTINF:4.500,\n14.ts\n"));
        assert_eq!(
            evicted
                .iter()
                .map(|e| e.segment.sequence)
                .collect::<Vec<_>>(),
            vec![10, 11, 12]
        );
        assert!(render_media_playlist(&window.playlist(true)).ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn discontinuity_tags_and_sequence_follow_the_window() {
        let mut window = LiveWindow::new(2, 3);
        window.push(entry(5, 0, false, 2000));
        window.push(entry(6, 1, true, 2000));
        window.push(entry(7, 1, false, 2000));
        let text = render_media_playlist(&window.playlist(false));
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXTINF:2.000,\n6.ts\n"));

        // The discontinuity segment is first: its tag still counts, so the header says 0.
        window.push(entry(8, 1, false, 2000));
        let playlist = window.playlist(false);
        assert_eq!(
            (playlist.media_sequence, playlist.discontinuity_sequence),
            (6, 0)
        );

        // Once it has slid out, the header carries the increment instead.
        window.push(entry(9, 1, false, 2000));
        let playlist = window.playlist(false);
        assert_eq!(
            (playlist.media_sequence, playlist.discontinuity_sequence),
            (7, 1)
        );
        assert!(!render_media_playlist(&playlist).contains("#EXT-X-DISCONTINUITY\n"));
    }
}
