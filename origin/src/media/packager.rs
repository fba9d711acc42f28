//! One live stream's packaging: FLV tag bodies in, finished MPEG-TS segments out.
//!
//! [`Packager`] ties the stages of this module together for one stream and survives encoder
//! reconnects. It holds the open segment (bounded by the keyframe timeout below) and no
//! history: the keyframe that closes a segment hands it out at once, and the caller lists the
//! [`Segment`]s it returns, e.g. in a
//! [`LiveWindow`](super::playlist::LiveWindow).

use bytes::Bytes;

use super::aac::AacConfig;
use super::avc::AvcConfig;
use super::flv::{self, AudioTag, VideoTag};
use super::playlist::SegmentInfo;
use super::segmenter::{KeyframeDecision, NumberingState, SegmentStart, Segmenter, Timeline};
use super::ts::TsWriter;
use super::MediaError;

/// Added to every timestamp before it becomes a 90 kHz PTS/DTS, so that negative composition
/// offsets and audio stamped slightly before the first video frame never go below zero, and the
/// PCR (700 ms behind DTS) starts positive. A constant, so it is the same on every origin.
const TIMESTAMP_OFFSET_MS: i64 = 10_000;

/// The longest stretch of stream time without a video keyframe before a push fails with
/// [`MediaError::NoKeyframe`]: `max(10 s, 3 × target)`. Beyond that the encoder is misconfigured
/// (or sends no video), and the open segment — the packager's only buffer — stops growing.
const MIN_KEYFRAME_TIMEOUT_MS: i64 = 10_000;

/// Packaging settings of a live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagerOptions {
    /// Target segment duration in ms; segments are cut at the first keyframe on each multiple of
    /// it. Rendered as EXT-X-TARGETDURATION, rounded up to whole seconds. Default 2000.
    pub target_duration_ms: u32,
    /// Segments listed in the live playlist. Default 6.
    pub window_segments: usize,
}

impl Default for PackagerOptions {
    fn default() -> Self {
        Self {
            target_duration_ms: 2000,
            window_segments: 6,
        }
    }
}

impl PackagerOptions {
    /// EXT-X-TARGETDURATION: the target rounded up to whole seconds (RFC 8216 §4.3.3.1 wants
    /// an integer no segment's rounded EXTINF exceeds).
    pub fn target_duration_secs(&self) -> u32 {
        self.target_duration_ms.div_ceil(1000)
    }

    /// Checks the values are usable: target 100 ms – 60 s, window at least 1.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=60_000).contains(&self.target_duration_ms) {
            return Err(format!(
                "target_duration_ms {} is outside 100..=60000",
                self.target_duration_ms
            ));
        }
        if self.window_segments == 0 {
            return Err("window_segments must be at least 1".into());
        }
        Ok(())
    }
}

/// A finished segment: what a playlist lists about it, and its MPEG-TS bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Sequence number (epoch-locked, see the [numbering rule](super#numbering-rule-epoch-locking)),
    /// name, duration and discontinuity: everything but the bytes.
    pub info: SegmentInfo,
    /// The MPEG-TS bytes.
    pub data: Bytes,
}

/// The segment being written.
#[derive(Debug)]
struct OpenSegment {
    start: SegmentStart,
    start_ms: i64,
    first_pts_90k: u64,
    writer: TsWriter,
    /// Whether the PMT lists audio: an AAC header arriving mid-segment waits for the next one.
    with_audio: bool,
    last_video_ms: i64,
}

/// Packages one live stream; see the [module doc of `media`](super) for the rules it follows.
#[derive(Debug)]
pub struct Packager {
    opts: PackagerOptions,
    timeline: Timeline,
    segmenter: Segmenter,
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    open: Option<OpenSegment>,
    /// Finished segments not yet handed out; every public call returns them.
    pending: Vec<Segment>,
    /// Timeline position of the last keyframe (or of the timeline's first frame).
    keyframe_wait_from_ms: Option<i64>,
    /// Last video DTS and the step to it, to estimate the last frame's duration at the end.
    last_video: Option<(i64, i64)>,
    /// Reused buffer for the Annex B form of a video frame.
    scratch: Vec<u8>,
    /// Numbering after the last segment handed out (or as restored).
    numbering: Option<NumberingState>,
}

impl Packager {
    /// A packager for a new stream.
    pub fn new(opts: PackagerOptions) -> Self {
        Self {
            segmenter: Segmenter::new(opts.target_duration_ms),
            opts,
            timeline: Timeline::new(),
            avc: None,
            aac: None,
            open: None,
            pending: Vec::new(),
            keyframe_wait_from_ms: None,
            last_video: None,
            scratch: Vec::new(),
            numbering: None,
        }
    }

    /// A packager for a stream whose numbering stood at `state` when its last segment was
    /// published — by an earlier publish, or by this one before the origin restarted. The
    /// first keyframe either continues that numbering on the same timeline or, if the
    /// timestamps restarted, after a discontinuity (see [`Segmenter::restore`]), so names never
    /// repeat.
    pub fn restore(opts: PackagerOptions, state: NumberingState) -> Self {
        let mut packager = Self::new(opts);
        packager.segmenter = Segmenter::restore(packager.opts.target_duration_ms, state);
        packager.numbering = Some(state);
        packager
    }

    /// Where numbering stands after the last segment this packager handed out (or the state it
    /// was restored from; `None` before either). Persist it with each segment and pass it to
    /// [`Packager::restore`] when the stream starts again.
    pub fn numbering_state(&self) -> Option<NumberingState> {
        self.numbering
    }

    /// The options this packager was made with.
    pub fn options(&self) -> &PackagerOptions {
        &self.opts
    }

    /// An FLV VIDEODATA tag body (what an RTMP video message carries) at RTMP time `ts_ms`.
    /// Returns the segments finished by now: a segment is finished by the arrival of the
    /// keyframe that starts the next one.
    ///
    /// Errors leave the packager usable, but the caller should treat them as fatal for the
    /// publish: they mean the codec is wrong or the encoder sends broken data.
    pub fn push_video(&mut self, ts_ms: u32, tag: &[u8]) -> Result<Vec<Segment>, MediaError> {
        let (keyframe, cts_ms, avcc) = match flv::parse_video_tag(tag)? {
            VideoTag::SequenceHeader(record) => {
                self.avc = Some(AvcConfig::parse(record)?);
                return Ok(std::mem::take(&mut self.pending));
            }
            VideoTag::Ignored => return Ok(std::mem::take(&mut self.pending)),
            VideoTag::Frame {
                keyframe,
                cts_ms,
                data,
            } => (keyframe, cts_ms, data),
        };
        let avc = self.avc.as_ref().ok_or(MediaError::MissingAvcConfig)?;
        let mut annex_b = std::mem::take(&mut self.scratch);
        annex_b.clear();
        let converted = avc.to_annex_b(avcc, keyframe, &mut annex_b);
        let result = converted.and_then(|()| self.video_frame(ts_ms, keyframe, cts_ms, &annex_b));
        self.scratch = annex_b;
        result
    }

    /// An FLV AUDIODATA tag body at RTMP time `ts_ms`.
    ///
    /// Audio goes to the segment open when it arrives: segments are split at the *decode* time
    /// of the keyframe that starts the next one, the order the publisher interleaves in. With
    /// B-frames that keyframe is presented a few frames later, so a segment's audio may start up
    /// to that composition offset before its first video frame is shown (nginx-rtmp and
    /// ffmpeg's HLS muxer cut the same way). Splitting at the keyframe's PTS instead would hold
    /// every finished segment back until audio reached that PTS (67 ms with x264's defaults),
    /// in front of a latency goal of 50 ms. Audio before the first keyframe has no segment and
    /// is dropped.
    pub fn push_audio(&mut self, ts_ms: u32, tag: &[u8]) -> Result<Vec<Segment>, MediaError> {
        let raw = match flv::parse_audio_tag(tag)? {
            AudioTag::SequenceHeader(asc) => {
                self.aac = Some(AacConfig::parse(asc)?);
                return Ok(std::mem::take(&mut self.pending));
            }
            AudioTag::Frame(raw) => raw,
        };
        let aac = self.aac.ok_or(MediaError::MissingAacConfig)?;
        let header = aac.adts_header(raw.len())?;
        let t = self.timeline.unwrap(ts_ms);
        self.check_keyframe_wait(t)?;
        self.segmenter.on_frame(t);
        if let Some(segment) = self.open.as_mut().filter(|segment| segment.with_audio) {
            segment.writer.write_audio(to_90k(t), &header, raw);
        }
        Ok(std::mem::take(&mut self.pending))
    }

    /// The encoder reconnected (a new publish on this stream within the grace period): the
    /// open segment is closed — it is returned by the next `push_*` or [`Packager::finish`] —
    /// and the next keyframe starts a segment with EXT-X-DISCONTINUITY on a new timeline.
    /// Numbering continues monotonically. Calling it again before new media changes nothing.
    pub fn discontinuity(&mut self) {
        if let Some(open) = self.open.take() {
            // No next keyframe will come: the segment ends one frame after its last video frame.
            let frame_ms = self.last_video.map_or(0, |(_, step)| step.max(0));
            let end_ms = open.last_video_ms + frame_ms;
            let done = self.close(open, end_ms);
            self.pending.push(done);
        }
        self.segmenter.discontinuity();
        self.timeline.reset();
        self.keyframe_wait_from_ms = None;
        self.last_video = None;
    }

    /// The publish ended: returns the segments not yet handed out, including the open one
    /// (which lasts until its last video frame plus one frame duration). The packager stays
    /// usable: should the encoder come back, what it sends is a new timeline after a
    /// discontinuity, exactly as if [`Packager::discontinuity`] had been called.
    pub fn finish(&mut self) -> Vec<Segment> {
        self.discontinuity();
        std::mem::take(&mut self.pending)
    }

    fn video_frame(
        &mut self,
        ts_ms: u32,
        keyframe: bool,
        cts_ms: i32,
        annex_b: &[u8],
    ) -> Result<Vec<Segment>, MediaError> {
        let t = self.timeline.unwrap(ts_ms);
        let pts_ms = t + i64::from(cts_ms);
        if keyframe {
            self.keyframe_wait_from_ms = Some(t);
            if let KeyframeDecision::Start(start) = self.segmenter.on_keyframe(t) {
                if let Some(done) = self.open.take() {
                    let done = self.close(done, t);
                    self.pending.push(done);
                }
                if start.publish {
                    self.open = Some(OpenSegment {
                        start,
                        start_ms: t,
                        first_pts_90k: to_90k(pts_ms),
                        writer: TsWriter::new(self.aac.is_some()),
                        with_audio: self.aac.is_some(),
                        last_video_ms: t,
                    });
                }
            }
        } else {
            self.check_keyframe_wait(t)?;
            self.segmenter.on_frame(t);
        }
        self.last_video = Some((t, self.last_video.map_or(0, |(last, _)| t - last)));
        if let Some(open) = &mut self.open {
            open.writer
                .write_video(to_90k(pts_ms), to_90k(t), keyframe, annex_b);
            open.last_video_ms = t;
        }
        Ok(std::mem::take(&mut self.pending))
    }

    fn check_keyframe_wait(&mut self, t: i64) -> Result<(), MediaError> {
        let limit_ms = MIN_KEYFRAME_TIMEOUT_MS.max(3 * i64::from(self.opts.target_duration_ms));
        let from = *self.keyframe_wait_from_ms.get_or_insert(t);
        let waited_ms = t - from;
        if waited_ms > limit_ms {
            // The open segment cannot be finished properly; it is dropped, not published.
            self.open = None;
            return Err(MediaError::NoKeyframe {
                waited_ms,
                limit_ms,
            });
        }
        Ok(())
    }

    /// Turns a segment ending at `end_ms` into its final form; numbering now stands at it.
    fn close(&mut self, open: OpenSegment, end_ms: i64) -> Segment {
        let duration_ms = u32::try_from((end_ms - open.start_ms).max(0)).unwrap_or(u32::MAX);
        // RFC 8216 §4.3.3.1: EXTINF rounded to the nearest second must not exceed the target.
        if duration_ms.saturating_add(500) / 1000 > self.opts.target_duration_secs() {
            tracing::warn!(
                sequence = open.start.sequence,
                duration_ms,
                target_duration_ms = self.opts.target_duration_ms,
                "segment exceeds the target duration: the encoder's keyframe interval must divide it"
            );
        }
        let sequence = open.start.sequence;
        self.numbering = Some(NumberingState {
            last_sequence: sequence,
            discontinuity_sequence: open.start.discontinuity_sequence,
            offset: i64::try_from(sequence).unwrap_or(i64::MAX)
                - self.segmenter.slot(open.start_ms),
        });
        Segment {
            info: SegmentInfo {
                sequence,
                discontinuity_sequence: open.start.discontinuity_sequence,
                discontinuity: open.start.discontinuity,
                duration_ms,
                name: format!("{sequence}.ts"),
                first_pts_90k: open.first_pts_90k,
            },
            data: open.writer.finish(),
        }
    }
}

/// A timeline position in ms as a 90 kHz timestamp, offset so it is never negative.
fn to_90k(ms: i64) -> u64 {
    u64::try_from(ms + TIMESTAMP_OFFSET_MS).unwrap_or(0) * 90
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: [u8; 4] = [0x67, 0x42, 0xc0, 0x1e];
    const PPS: [u8; 2] = [0x68, 0xce];

    fn avc_header() -> Vec<u8> {
        let mut tag = vec![0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4];
        tag.extend_from_slice(&SPS);
        tag.extend_from_slice(&[1, 0, 2]);
        tag.extend_from_slice(&PPS);
        tag
    }

    fn video(keyframe: bool, cts_ms: i32, frame: u32) -> Vec<u8> {
        let cts = cts_ms.to_be_bytes();
        let nal_type = if keyframe { 0x65 } else { 0x41 };
        let mut tag = vec![
            if keyframe { 0x17 } else { 0x27 },
            1,
            cts[1],
            cts[2],
            cts[3],
        ];
        tag.extend_from_slice(&[0, 0, 0, 5, nal_type]);
        tag.extend_from_slice(&frame.to_be_bytes());
        tag
    }

    const AAC_HEADER: [u8; 4] = [0xaf, 0, 0x12, 0x10];

    fn audio(frame: u32) -> Vec<u8> {
        let mut tag = vec![0xaf, 1, 0x21];
        tag.extend_from_slice(&frame.to_be_bytes());
        tag
    }

    /// A 30 fps stream with a keyframe every 2 s and 44.1 kHz AAC, as (timestamp, is_video, tag).
    fn stream(from_ms: u32, to_ms: u32) -> Vec<(u32, bool, Vec<u8>)> {
        let mut tags = Vec::new();
        for i in 0.. {
            let ts = i * 1000 / 30;
            if ts >= to_ms {
                break;
            }
            if ts >= from_ms {
                tags.push((ts, true, video(i % 60 == 0, 33, i)));
            }
        }
        for i in 0.. {
            let ts = i * 1024 * 1000 / 44_100;
            if ts >= to_ms {
                break;
            }
            if ts >= from_ms {
                tags.push((ts, false, audio(i)));
            }
        }
        tags.sort_by_key(|(ts, is_video, _)| (*ts, !*is_video));
        tags
    }

    /// Sends the sequence headers, as every new publish does; returns what the calls returned.
    fn started(packager: &mut Packager) -> Vec<Segment> {
        let mut out = packager.push_video(0, &avc_header()).unwrap();
        out.extend(packager.push_audio(0, &AAC_HEADER).unwrap());
        out
    }

    fn feed(packager: &mut Packager, tags: &[(u32, bool, Vec<u8>)]) -> Vec<Segment> {
        feed_shifted(packager, tags, 0)
    }

    fn feed_shifted(
        packager: &mut Packager,
        tags: &[(u32, bool, Vec<u8>)],
        shift_ms: u32,
    ) -> Vec<Segment> {
        let mut out = Vec::new();
        for (ts, is_video, tag) in tags {
            let ts = ts.wrapping_add(shift_ms);
            let segments = if *is_video {
                packager.push_video(ts, tag)
            } else {
                packager.push_audio(ts, tag)
            };
            out.extend(segments.unwrap());
        }
        out
    }

    fn summary(segments: &[Segment]) -> Vec<(u64, u64, bool, u32)> {
        segments
            .iter()
            .map(|s| {
                (
                    s.info.sequence,
                    s.info.discontinuity_sequence,
                    s.info.discontinuity,
                    s.info.duration_ms,
                )
            })
            .collect()
    }

    #[test]
    fn segments_are_cut_on_boundary_keyframes_and_named_by_sequence() {
        let mut packager = Packager::new(PackagerOptions::default());
        started(&mut packager);
        let segments = feed(&mut packager, &stream(0, 7000));
        assert_eq!(
            summary(&segments),
            vec![
                (0, 0, false, 2000),
                (1, 0, false, 2000),
                (2, 0, false, 2000)
            ]
        );
        assert_eq!(segments[1].info.name, "1.ts");
        // PTS = (DTS + composition offset + the constant offset) in 90 kHz.
        assert_eq!(segments[1].info.first_pts_90k, (2000 + 33 + 10_000) * 90);
        for segment in &segments {
            assert_eq!(segment.data.len() % 188, 0);
            assert_eq!(&segment.data[..4], &[0x47, 0x40, 0x00, 0x30], "PAT first");
        }
        let last = packager.finish();
        assert_eq!(summary(&last), vec![(3, 0, false, 999)]);
    }

    /// PTS of every audio PES in a segment.
    fn audio_pts(data: &[u8]) -> Vec<u64> {
        data.chunks(188)
            .filter(|p| u16::from_be_bytes([p[1], p[2]]) == 0x4000 | crate::media::ts::AUDIO_PID)
            .map(|p| {
                let payload = if p[3] & 0x20 != 0 {
                    &p[5 + usize::from(p[4])..]
                } else {
                    &p[4..]
                };
                let ts = &payload[9..14];
                u64::from(ts[0] >> 1 & 7) << 30
                    | u64::from(ts[1]) << 22
                    | u64::from(ts[2] >> 1) << 15
                    | u64::from(ts[3]) << 7
                    | u64::from(ts[4] >> 1)
            })
            .collect()
    }

    #[test]
    fn audio_is_split_at_the_arrival_of_the_cutting_keyframe() {
        let mut packager = Packager::new(PackagerOptions::default());
        started(&mut packager);
        let segments = feed(&mut packager, &stream(0, 6100));
        assert_eq!(segments[1].info.first_pts_90k, (2000 + 33 + 10_000) * 90);
        let first = audio_pts(&segments[0].data);
        let second = audio_pts(&segments[1].data);
        // The AAC frame stamped 2020 ms arrives after the keyframe (2000 ms), so it opens the
        // second segment although that keyframe is presented later (2033 ms).
        assert_eq!(first.last(), Some(&((1996 + 10_000) * 90)));
        assert_eq!(second.first(), Some(&((2020 + 10_000) * 90)));
        // Every AAC frame up to the last cut is in exactly one segment, in order.
        let all: Vec<u64> = segments.iter().flat_map(|s| audio_pts(&s.data)).collect();
        let expected: Vec<u64> = (0..)
            .map(|i: u64| (i * 1024 * 1000 / 44_100 + 10_000) * 90)
            .take_while(|pts| *pts < (6000 + 10_000) * 90)
            .collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_segment_is_handed_out_by_the_keyframe_that_closes_it() {
        let mut packager = Packager::new(PackagerOptions::default());
        started(&mut packager);
        let tags = stream(0, 2100);
        let cut = tags
            .iter()
            .position(|(ts, is_video, _)| *ts == 2000 && *is_video)
            .unwrap();
        assert!(feed(&mut packager, &tags[..cut]).is_empty());
        // Nothing stamped after the keyframe is waited for: with B-frames (composition offset
        // 33 ms here) the segment is final when its closing keyframe arrives.
        let (ts, _, keyframe) = &tags[cut];
        let out = packager.push_video(*ts, keyframe).unwrap();
        assert_eq!(summary(&out), vec![(0, 0, false, 2000)]);
        assert!(feed(&mut packager, &tags[cut + 1..]).is_empty());
    }

    #[test]
    fn keyframes_get_parameter_sets_in_band() {
        let mut packager = Packager::new(PackagerOptions::default());
        started(&mut packager);
        let segments = feed(&mut packager, &stream(0, 2100));
        let data = &segments[0].data;
        let sps_at = data.windows(SPS.len()).position(|w| w == SPS).unwrap();
        assert_eq!(&data[sps_at - 4..sps_at], &[0, 0, 0, 1]);
        assert!(data.windows(PPS.len()).any(|w| w == PPS));
    }

    #[test]
    fn origins_joining_late_or_restarting_publish_identical_segments() {
        let tags = stream(0, 20_000);
        let mut first = Packager::new(PackagerOptions::default());
        started(&mut first);
        let all = feed(&mut first, &tags);

        // Joins 7 s in: its keyframe at 8 s is its first, so it starts publishing at 10 s.
        let mut late = Packager::new(PackagerOptions::default());
        started(&mut late);
        let joined = feed(&mut late, &stream(7000, 20_000));
        assert_eq!(joined[0].info.sequence, 5);

        // Ran for 5 s, crashed, came back at 9 s.
        let mut crashed = Packager::new(PackagerOptions::default());
        started(&mut crashed);
        let before = feed(&mut crashed, &stream(0, 5000));
        let mut restarted = Packager::new(PackagerOptions::default());
        started(&mut restarted);
        let after = feed(&mut restarted, &stream(9000, 20_000));

        for segment in joined.iter().chain(&before).chain(&after) {
            let same = all
                .iter()
                .find(|s| s.info.sequence == segment.info.sequence)
                .unwrap();
            assert_eq!(segment, same, "segment {} differs", segment.info.sequence);
        }
        assert_eq!(
            joined.last().unwrap().info.sequence,
            all.last().unwrap().info.sequence
        );
    }

    #[test]
    fn reconnect_restarting_at_zero_continues_numbering_with_a_discontinuity() {
        let mut packager = Packager::new(PackagerOptions::default());
        started(&mut packager);
        let mut segments = feed(&mut packager, &stream(0, 5000));
        packager.discontinuity();
        // The closed segment comes out of the next call, here the new publish's first header.
        segments.extend(started(&mut packager));
        segments.extend(feed(&mut packager, &stream(0, 4100)));
        segments.extend(packager.finish());
        assert_eq!(
            summary(&segments),
            vec![
                (0, 0, false, 2000),
                (1, 0, false, 2000),
                // Last frame at 4966 ms plus its 33 ms step.
                (2, 0, false, 999),
                (3, 1, true, 2000),
                (4, 1, false, 2000),
                (5, 1, false, 99),
            ]
        );
    }

    #[test]
    fn a_restored_packager_continues_numbering_when_timestamps_restart() {
        let mut first = Packager::new(PackagerOptions::default());
        started(&mut first);
        let mut before = feed(&mut first, &stream(0, 5000));
        before.extend(first.finish());
        let state = first.numbering_state().unwrap();
        assert_eq!(
            state,
            NumberingState {
                last_sequence: 2,
                discontinuity_sequence: 0,
                offset: 0
            }
        );

        // A new publish, timestamps from 0 again, in a packager built from the stored state.
        let mut next = Packager::restore(PackagerOptions::default(), state);
        assert_eq!(next.numbering_state(), Some(state));
        started(&mut next);
        let mut after = feed(&mut next, &stream(0, 4100));
        after.extend(next.finish());
        assert_eq!(
            summary(&after),
            vec![(3, 1, true, 2000), (4, 1, false, 2000), (5, 1, false, 99)]
        );
        assert!(after
            .iter()
            .all(|a| before.iter().all(|b| a.info.name != b.info.name)));
        assert_eq!(
            next.numbering_state(),
            Some(NumberingState {
                last_sequence: 5,
                discontinuity_sequence: 1,
                offset: 3
            })
        );

        // Numbering is the same as within one session's reconnect.
        let mut session = Packager::new(PackagerOptions::default());
        started(&mut session);
        feed(&mut session, &stream(0, 5000));
        session.discontinuity();
        let mut within = started(&mut session);
        within.extend(feed(&mut session, &stream(0, 4100)));
        within.extend(session.finish());
        assert_eq!(&within[1..], &after[..]);
    }

    #[test]
    fn a_packager_restored_mid_stream_publishes_what_a_never_restarted_one_does() {
        // The stream's numbering was moved on by an earlier publish (state after it: 2.ts).
        let earlier = NumberingState {
            last_sequence: 2,
            discontinuity_sequence: 0,
            offset: 0,
        };
        let mut steady = Packager::restore(PackagerOptions::default(), earlier);
        started(&mut steady);
        let all = feed(&mut steady, &stream(0, 20_000));
        assert_eq!(all[0].info.sequence, 3);

        // The other origin ran for 5 s, stopped, and came back at 9 s with its saved state.
        let mut crashed = Packager::restore(PackagerOptions::default(), earlier);
        started(&mut crashed);
        let before = feed(&mut crashed, &stream(0, 5000));
        let saved = crashed.numbering_state().unwrap();
        let mut restarted = Packager::restore(PackagerOptions::default(), saved);
        started(&mut restarted);
        let after = feed(&mut restarted, &stream(9000, 20_000));

        assert!(!after.is_empty() && after.iter().all(|s| !s.info.discontinuity));
        for segment in before.iter().chain(&after) {
            let same = all
                .iter()
                .find(|s| s.info.sequence == segment.info.sequence)
                .unwrap();
            assert_eq!(segment, same, "segment {} differs", segment.info.sequence);
        }
        assert_eq!(
            after.last().unwrap().info.sequence,
            all.last().unwrap().info.sequence
        );
    }

    #[test]
    fn timestamps_wrapping_past_u32_max_keep_segments_in_order() {
        // Start 3 s before the wrap, on a 2 s boundary of the raw clock's own grid.
        let start = u32::MAX - 2999;
        let mut packager = Packager::new(PackagerOptions::default());
        packager.push_video(start, &avc_header()).unwrap();
        packager.push_audio(start, &AAC_HEADER).unwrap();
        let segments = feed_shifted(&mut packager, &stream(0, 9000), start);
        let sequences: Vec<u64> = segments.iter().map(|s| s.info.sequence).collect();
        assert!(
            sequences.windows(2).all(|w| w[1] == w[0] + 1),
            "{sequences:?}"
        );
        assert!(segments.iter().all(|s| s.info.duration_ms == 2000));
        assert!(segments
            .windows(2)
            .all(|w| w[1].info.first_pts_90k == w[0].info.first_pts_90k + 180_000));
    }

    #[test]
    fn other_codecs_and_broken_headers_are_errors() {
        let mut packager = Packager::new(PackagerOptions::default());
        assert_eq!(
            packager.push_video(0, &[0x1c, 0, 0, 0, 0]),
            Err(MediaError::UnsupportedVideoCodec(12))
        );
        assert_eq!(
            packager.push_audio(0, &[0x2f, 0]),
            Err(MediaError::UnsupportedAudioCodec(2))
        );
        assert_eq!(
            packager.push_video(0, &video(true, 0, 0)),
            Err(MediaError::MissingAvcConfig)
        );
        let header = avc_header();
        for end in 5..header.len() {
            assert!(matches!(
                packager.push_video(0, &header[..end]),
                Err(MediaError::BadAvcConfig(_))
            ));
        }
    }

    #[test]
    fn a_stream_without_keyframes_fails_after_the_timeout() {
        let mut packager = Packager::new(PackagerOptions::default());
        started(&mut packager);
        let mut failure = None;
        for i in 0..400u32 {
            if let Err(err) = packager.push_video(i * 33, &video(false, 0, i)) {
                failure = Some((i * 33, err));
                break;
            }
        }
        let (at, err) = failure.unwrap();
        assert!(at > 10_000 && at < 10_100, "{at}");
        assert!(matches!(
            err,
            MediaError::NoKeyframe {
                limit_ms: 10_000,
                ..
            }
        ));
    }

    #[test]
    fn audio_only_publish_fails_for_want_of_keyframes() {
        let mut packager = Packager::new(PackagerOptions::default());
        packager.push_audio(0, &AAC_HEADER).unwrap();
        let result: Result<Vec<_>, _> = (0..500u32)
            .map(|i| packager.push_audio(i * 23, &audio(i)))
            .collect();
        assert!(matches!(result, Err(MediaError::NoKeyframe { .. })));
    }
}
