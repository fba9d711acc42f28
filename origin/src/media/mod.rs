//! The origin's media core: FLV tag bodies in, MPEG-TS segments and HLS media playlists out.
//!
//! Everything here is pure — no sockets, files, clocks or tasks — so the whole path from an RTMP
//! message to the bytes of a segment is deterministic and unit-tested alone. The RTMP session
//! hands each audio/video message body to a [`Packager`] (one per live stream); the packager
//! returns finished [`Segment`]s, which the caller stores and lists with
//! [`render_media_playlist`].
//!
//! # Pipeline
//!
//! 1. [`flv`] parses VIDEODATA/AUDIODATA tag bodies and refuses anything but H.264 + AAC
//!    ([`video_codec_id`], [`audio_codec_id`] let the RTMP layer name the codec it refuses).
//! 2. [`avc`] turns AVCC (length-prefixed) access units into Annex B with an AUD and, before
//!    every IDR, the SPS/PPS from the sequence header; [`aac`] frames raw AAC with ADTS headers.
//! 3. [`segmenter`] unwraps RTMP's 32-bit millisecond clock and decides where segments start and
//!    what they are called (the numbering rule below).
//! 4. [`ts`] writes the MPEG-TS bytes of one segment: PAT/PMT, PES with PTS/DTS, PCR, continuity.
//! 5. [`packager`] drives 1–4 per stream; [`playlist`] renders RFC 8216 media playlists.
//!
//! # Why our own muxer
//!
//! The muxer is ~400 lines and the redundant pair needs control no crate offered: segment bytes
//! must be a pure function of the stream's timestamps (PTS offset, PCR, continuity counters reset
//! per segment) so that two origins produce the same segment, and the segment cut must be decided
//! by our numbering rule, not by a muxer's own notion of duration.
//!
//! # Numbering rule (epoch locking)
//!
//! With `T` = `target_duration_ms`, the stream's own timeline is split into *slots*
//! `[kT − T/8, (k+1)T − T/8)`. A keyframe whose slot is later than the previous keyframe's slot
//! starts a segment, and that segment's sequence number is its slot `k` (plus an offset that only
//! changes at a discontinuity, see below); its name is `"<sequence>.ts"`. The `T/8` tolerance
//! puts a keyframe stamped a few milliseconds early (timestamps rounded to ms, audio-clocked
//! encoders) on the boundary it was meant for instead of skipping a slot.
//!
//! Whether a keyframe starts a segment therefore depends only on its own timestamp and the
//! previous keyframe's, so every origin that saw both makes the same decision, whatever it saw
//! earlier. An origin that joins mid-stream (started late, or restarted) drops everything before
//! its first keyframe, and cannot know whether that first keyframe starts a segment (it never saw
//! the one before) — so the segment it would open there is **not published**. Publishing starts
//! at the next segment start, which is then byte-for-byte the segment the other origin published
//! under the same name. The one exception is a keyframe at timestamp 0 on a fresh timeline: no
//! keyframe can precede it, so it always starts (and publishes) a segment.
//!
//! Every published segment begins at such a keyframe and lasts until the next one (EXTINF is
//! the difference of the two keyframe timestamps). It carries the video frames in between and
//! the audio that arrives between the two keyframes (publishers interleave by timestamp, so: the
//! audio stamped from its keyframe's DTS to the next one's), so sequence, name, EXTINF, PTS and
//! bytes agree across origins fed the same stream. Cutting at the keyframe's arrival lets a
//! segment be listed the moment its closing keyframe arrives; with B-frames its audio then starts
//! up to one composition offset before its first video frame is presented, as in nginx-rtmp's
//! and ffmpeg's HLS segments. No local counter and no wall clock enters the numbering.
//!
//! Encoder requirement: the keyframe interval must divide `T` (2 s at 30 fps: `keyint=60`, or 30,
//! …). A longer interval leaves slots without a keyframe: the segment then runs to the next
//! keyframe, exceeds EXT-X-TARGETDURATION (which stays the configured constant, RFC 8216
//! §4.3.3.1) and a sequence number is skipped; the packager logs a warning for each such segment.
//!
//! # Discontinuities
//!
//! When the encoder reconnects ([`Packager::discontinuity`]) its timestamps may restart at 0. The
//! open segment is closed, the discontinuity sequence increments and the first keyframe of the
//! new timeline always starts a published segment (`discontinuity = true`) numbered one past the
//! slot of the last keyframe before the reconnect; later segments follow the slot rule on the
//! new timeline from there. Sequence numbers never go backwards, and origins that both saw the
//! reconnect agree. An origin that *starts* after a reconnect cannot know the numbering before it
//! and falls back to the slot rule — that is the limit of deriving numbers from timestamps alone.
//! Likewise, after RTMP's 32-bit clock wraps (49.7 days) only origins that both saw the wrap
//! agree.
//!
//! # Numbering across publishes and restarts
//!
//! A stream's names must never repeat on an origin: caches keep segments for a day or more
//! (`immutable` at the CDN), so a name reused by a later publish would serve the old content, and
//! players would see the media sequence go backwards. Yet a new publish after the grace expired
//! restarts its timestamps at 0, where the slot rule alone would number from 0 again. So the
//! numbering outlives the packager: after each published segment the caller persists the
//! [`NumberingState`] ([`Packager::numbering_state`]: last sequence, its discontinuity sequence,
//! the offset in effect), and when the stream starts again — a new publish after the grace, or the
//! same publish after the origin restarted — it builds the packager with [`Packager::restore`].
//! The first keyframe then decides, from timestamps alone:
//!
//! - numbered by the stored offset it lands **past** the last published sequence: the encoder's
//!   clock kept running (the origin restarted mid-stream), so the stored offset is kept and the
//!   numbering is exactly that of the partner origin that never stopped, including the rule that
//!   a joiner's first segment is not published;
//! - at or **below** it: the timestamps restarted (a new publish), so numbering continues as after
//!   [`Packager::discontinuity`] — one past the last sequence, the discontinuity sequence
//!   incremented, the first segment flagged EXT-X-DISCONTINUITY — and the new live playlist starts
//!   at those continued numbers.
//!
//! Both origins of a pair saw the same publishes, so they stored the same state and agree. What
//! breaks alignment: an origin whose data directory was wiped (or whose state file was lost)
//! starts again from the slot rule, at 0 for a new publish — diverging from its partner *and*
//! reusing names it published before; an origin that was down while a publish ended (or while
//! the encoder reconnected) stored an older state than its partner and numbers the next publish
//! lower than the partner does, though never below its own names. Copying the partner's state
//! file over before the origin starts realigns it.
//!
//! # Towards LL-HLS
//!
//! [`ts::TsWriter`] writes each frame as whole 188-byte packets appended to one buffer, so any
//! frame boundary is a valid cut in the byte stream. LL-HLS partial segments fit in without a
//! rewrite: the packager would split the writer's buffer at the first frame boundary after each
//! part target (`EXT-X-PART` with `INDEPENDENT=YES` when the part starts with the keyframe) and
//! hand the parts out as they complete; the segment is their concatenation, so its bytes and
//! its numbering stay exactly as they are now.

pub mod aac;
pub mod avc;
pub mod flv;
pub mod packager;
pub mod playlist;
pub mod segmenter;
pub mod ts;

pub use flv::{audio_codec_id, video_codec_id, FlvReader, FlvTag};
pub use packager::{Packager, PackagerOptions, Segment};
pub use playlist::{render_media_playlist, LiveWindow, MediaPlaylist, PlaylistEntry, SegmentInfo};
pub use segmenter::NumberingState;

/// Why a tag, a header or a stream cannot be packaged. Variants are named by the stage that
/// refused the input; none is recoverable by retrying the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// A tag body shorter than its fixed header.
    #[error("truncated FLV {kind} tag: {len} bytes")]
    TruncatedTag {
        /// `"video"` or `"audio"`.
        kind: &'static str,
        /// The body's length.
        len: usize,
    },
    /// A VIDEODATA tag with a codec other than H.264.
    #[error("unsupported video codec {name} (FLV CodecID {0}); only H.264/AVC (7) is accepted", name = flv::video_codec_name(*.0))]
    UnsupportedVideoCodec(u8),
    /// An enhanced-RTMP video tag (HEVC, AV1, VP9 …), named by its FourCC.
    #[error("unsupported video codec {name} (enhanced-RTMP FourCC); only H.264/AVC is accepted", name = String::from_utf8_lossy(.0))]
    UnsupportedVideoFourCc([u8; 4]),
    /// An AUDIODATA tag with a sound format other than AAC.
    #[error("unsupported audio codec {name} (FLV SoundFormat {0}); only AAC (10) is accepted", name = flv::audio_codec_name(*.0))]
    UnsupportedAudioCodec(u8),
    /// The AVC sequence header (AVCDecoderConfigurationRecord) is malformed.
    #[error("bad AVC sequence header: {0}")]
    BadAvcConfig(String),
    /// The AAC sequence header (AudioSpecificConfig) is malformed or not expressible as ADTS.
    #[error("bad AAC sequence header: {0}")]
    BadAacConfig(String),
    /// An H.264 access unit whose NAL unit lengths do not add up.
    #[error("bad AVC frame: {0}")]
    BadAvcFrame(String),
    /// A raw AAC frame that does not fit an ADTS frame.
    #[error("bad AAC frame: {0}")]
    BadAacFrame(String),
    /// Video frames arrived before the AVC sequence header that makes them decodable.
    #[error("H.264 frame before the AVC sequence header")]
    MissingAvcConfig,
    /// Audio frames arrived before the AAC sequence header needed for their ADTS headers.
    #[error("AAC frame before the AAC sequence header")]
    MissingAacConfig,
    /// The stream went on too long without a video keyframe to start a segment at.
    #[error("no video keyframe for {waited_ms} ms of stream time (limit {limit_ms} ms)")]
    NoKeyframe {
        /// Stream time since the last keyframe (or the start of the timeline).
        waited_ms: i64,
        /// The limit that was exceeded.
        limit_ms: i64,
    },
    /// An FLV *file* (not a tag body) is malformed.
    #[error("bad FLV file: {0}")]
    BadFlvFile(String),
}
