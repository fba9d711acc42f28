//! FLV tag bodies (what RTMP audio/video messages carry) and FLV files.
//!
//! RTMP messages of type 8/9 carry exactly the body of an FLV AUDIODATA/VIDEODATA tag
//! (Adobe FLV spec v10.1, annex E.4.2/E.4.3). We accept H.264 (`CodecID` 7) and AAC
//! (`SoundFormat` 10) and refuse everything else by name, including enhanced-RTMP tags (HEVC,
//! AV1 … announced by a FourCC). [`FlvReader`] iterates over the tags of an FLV *file*, which the
//! built-in publisher and the tests use to replay a clip.
//!
//! Every parser here indexes its input with `get`, so a truncated or hostile body is an error,
//! never a panic.

use bytes::Bytes;

use super::MediaError;

/// FLV `CodecID` of H.264/AVC.
pub const CODEC_AVC: u8 = 7;
/// FLV `SoundFormat` of AAC.
pub const SOUND_AAC: u8 = 10;
/// FLV tag type of audio tags (RTMP message type 8).
pub const TAG_AUDIO: u8 = 8;
/// FLV tag type of video tags (RTMP message type 9).
pub const TAG_VIDEO: u8 = 9;
/// FLV tag type of script data (`onMetaData`), RTMP message type 18.
pub const TAG_SCRIPT: u8 = 18;

/// Set in the first byte of an enhanced-RTMP video tag: the low nibble is then a packet type and
/// a FourCC follows, instead of a legacy `CodecID`.
const EX_HEADER: u8 = 0x80;

/// The legacy `CodecID` of a VIDEODATA body, or `None` for an empty body or an enhanced-RTMP
/// tag (which names its codec by FourCC; [`parse_video_tag`] reports it).
pub fn video_codec_id(tag: &[u8]) -> Option<u8> {
    let first = *tag.first()?;
    (first & EX_HEADER == 0).then_some(first & 0x0f)
}

/// The `SoundFormat` of an AUDIODATA body, or `None` for an empty body.
pub fn audio_codec_id(tag: &[u8]) -> Option<u8> {
    tag.first().map(|b| b >> 4)
}

/// Human name of an FLV `CodecID`, for refusal messages.
pub fn video_codec_name(id: u8) -> &'static str {
    match id {
        1 => "JPEG",
        2 => "Sorenson H.263",
        3 => "Screen video",
        4 => "On2 VP6",
        5 => "On2 VP6 with alpha",
        6 => "Screen video v2",
        7 => "H.264/AVC",
        // Not in Adobe's spec, but what Chinese CDNs' HEVC/AV1-over-FLV extensions use.
        12 => "H.265/HEVC",
        13 => "AV1",
        _ => "unknown",
    }
}

/// Human name of an FLV `SoundFormat`, for refusal messages.
pub fn audio_codec_name(id: u8) -> &'static str {
    match id {
        0 => "linear PCM (platform endian)",
        1 => "ADPCM",
        2 => "MP3",
        3 => "linear PCM (little endian)",
        4 => "Nellymoser 16 kHz",
        5 => "Nellymoser 8 kHz",
        6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        9 => "enhanced-RTMP audio (FourCC)",
        10 => "AAC",
        11 => "Speex",
        14 => "MP3 8 kHz",
        15 => "device-specific",
        _ => "unknown",
    }
}

/// A parsed VIDEODATA body; slices borrow from the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// `AVCPacketType` 0: an AVCDecoderConfigurationRecord.
    SequenceHeader(&'a [u8]),
    /// `AVCPacketType` 1: one access unit of length-prefixed NAL units.
    Frame {
        /// FLV frame type 1 (keyframe).
        keyframe: bool,
        /// Composition time offset (PTS − DTS) in ms; signed 24-bit in the tag.
        cts_ms: i32,
        /// The AVCC NAL units.
        data: &'a [u8],
    },
    /// `AVCPacketType` 2, or a frame-type-5 info/command frame: nothing to package.
    Ignored,
}

/// A parsed AUDIODATA body; slices borrow from the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTag<'a> {
    /// `AACPacketType` 0: an AudioSpecificConfig.
    SequenceHeader(&'a [u8]),
    /// `AACPacketType` 1: one raw AAC frame.
    Frame(&'a [u8]),
}

/// Parses a VIDEODATA body, refusing every codec but H.264.
pub fn parse_video_tag(tag: &[u8]) -> Result<VideoTag<'_>, MediaError> {
    let truncated = || MediaError::TruncatedTag {
        kind: "video",
        len: tag.len(),
    };
    let first = *tag.first().ok_or_else(truncated)?;
    if first & EX_HEADER != 0 {
        let fourcc = tag.get(1..5).ok_or_else(truncated)?;
        let mut name = [0u8; 4];
        name.copy_from_slice(fourcc);
        return Err(MediaError::UnsupportedVideoFourCc(name));
    }
    let (frame_type, codec) = (first >> 4, first & 0x0f);
    if codec != CODEC_AVC {
        return Err(MediaError::UnsupportedVideoCodec(codec));
    }
    // Frame type 5 carries a one-byte command (seek start/end), not an AVC packet.
    if frame_type == 5 {
        return Ok(VideoTag::Ignored);
    }
    let header = tag.get(1..5).ok_or_else(truncated)?;
    let data = tag.get(5..).ok_or_else(truncated)?;
    match header.first() {
        Some(0) => Ok(VideoTag::SequenceHeader(data)),
        Some(1) => {
            let raw = i32::from(header[1]) << 16 | i32::from(header[2]) << 8 | i32::from(header[3]);
            // Sign-extend the 24-bit value: B-frame reordering can make PTS < DTS.
            let cts_ms = (raw << 8) >> 8;
            Ok(VideoTag::Frame {
                keyframe: frame_type == 1,
                cts_ms,
                data,
            })
        }
        _ => Ok(VideoTag::Ignored),
    }
}

/// Parses an AUDIODATA body, refusing every codec but AAC.
pub fn parse_audio_tag(tag: &[u8]) -> Result<AudioTag<'_>, MediaError> {
    let truncated = || MediaError::TruncatedTag {
        kind: "audio",
        len: tag.len(),
    };
    let format = audio_codec_id(tag).ok_or_else(truncated)?;
    if format != SOUND_AAC {
        return Err(MediaError::UnsupportedAudioCodec(format));
    }
    let packet_type = *tag.get(1).ok_or_else(truncated)?;
    let data = tag.get(2..).ok_or_else(truncated)?;
    Ok(if packet_type == 0 {
        AudioTag::SequenceHeader(data)
    } else {
        AudioTag::Frame(data)
    })
}

/// One tag of an FLV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    /// [`TAG_AUDIO`], [`TAG_VIDEO`] or [`TAG_SCRIPT`] (others are passed through).
    pub tag_type: u8,
    /// The tag's timestamp in ms (24 bits plus the extension byte).
    pub ts_ms: u32,
    /// The tag body: what an RTMP message of the same type carries.
    pub body: Bytes,
}

/// Iterates over the tags of an in-memory FLV file; yields one error and then stops if the file
/// is malformed or truncated.
#[derive(Debug, Clone)]
pub struct FlvReader {
    data: Bytes,
    pos: usize,
    failed: bool,
}

impl FlvReader {
    /// Checks the FLV file header and positions the reader at the first tag.
    pub fn new(data: Bytes) -> Result<Self, MediaError> {
        let header = data
            .get(..9)
            .ok_or_else(|| MediaError::BadFlvFile(format!("{} bytes, no header", data.len())))?;
        if &header[..3] != b"FLV" {
            return Err(MediaError::BadFlvFile("missing FLV signature".into()));
        }
        let header_len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        if header_len < 9 {
            return Err(MediaError::BadFlvFile(format!(
                "header length {header_len} is below 9"
            )));
        }
        // Skip the header and PreviousTagSize0.
        Ok(Self {
            data,
            pos: header_len + 4,
            failed: false,
        })
    }

    fn next_tag(&mut self) -> Result<Option<FlvTag>, MediaError> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let at = self.pos;
        let truncated = || MediaError::BadFlvFile(format!("truncated tag at byte {at}"));
        let header = self.data.get(at..at + 11).ok_or_else(truncated)?;
        let tag_type = header[0] & 0x1f;
        let size = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
        let ts_ms = u32::from_be_bytes([header[7], header[4], header[5], header[6]]);
        let body_start = at + 11;
        let body_end = body_start + size;
        // The body plus the 4-byte PreviousTagSize that follows it.
        if self.data.len() < body_end + 4 {
            return Err(truncated());
        }
        self.pos = body_end + 4;
        Ok(Some(FlvTag {
            tag_type,
            ts_ms,
            body: self.data.slice(body_start..body_end),
        }))
    }
}

impl Iterator for FlvReader {
    type Item = Result<FlvTag, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_tag().transpose();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avc_keyframe_with_negative_composition_time_is_parsed() {
        let tag = [0x17, 1, 0xff, 0xff, 0xdf, 0, 0, 0, 1, 0x65];
        assert_eq!(
            parse_video_tag(&tag),
            Ok(VideoTag::Frame {
                keyframe: true,
                cts_ms: -33,
                data: &[0, 0, 0, 1, 0x65]
            })
        );
    }

    #[test]
    fn avc_inter_frame_and_sequence_header_are_told_apart() {
        let frame = [0x27, 1, 0, 0, 0x42, 9];
        assert_eq!(
            parse_video_tag(&frame),
            Ok(VideoTag::Frame {
                keyframe: false,
                cts_ms: 66,
                data: &[9]
            })
        );
        assert_eq!(
            parse_video_tag(&[0x17, 0, 0, 0, 0, 1, 2]),
            Ok(VideoTag::SequenceHeader(&[1, 2]))
        );
        assert_eq!(parse_video_tag(&[0x17, 2, 0, 0, 0]), Ok(VideoTag::Ignored));
    }

    #[test]
    fn non_avc_video_codecs_are_refused_by_name() {
        let err = parse_video_tag(&[0x1c, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(err, MediaError::UnsupportedVideoCodec(12));
        assert!(err.to_string().contains("HEVC"), "{err}");
        assert_eq!(
            parse_video_tag(&[0x22, 0]),
            Err(MediaError::UnsupportedVideoCodec(2))
        );
        assert_eq!(video_codec_id(&[0x1c]), Some(12));
    }

    #[test]
    fn enhanced_rtmp_video_is_refused_with_its_fourcc() {
        let tag = [0x90, b'h', b'v', b'c', b'1', 0, 0];
        let err = parse_video_tag(&tag).unwrap_err();
        assert_eq!(err, MediaError::UnsupportedVideoFourCc(*b"hvc1"));
        assert!(err.to_string().contains("hvc1"), "{err}");
        assert_eq!(video_codec_id(&tag), None);
    }

    #[test]
    fn non_aac_audio_codecs_are_refused_by_name() {
        let err = parse_audio_tag(&[0x2f, 0xff]).unwrap_err();
        assert_eq!(err, MediaError::UnsupportedAudioCodec(2));
        assert!(err.to_string().contains("MP3"), "{err}");
        assert_eq!(audio_codec_id(&[0xaf, 1]), Some(10));
    }

    #[test]
    fn aac_sequence_header_and_frames_are_told_apart() {
        assert_eq!(
            parse_audio_tag(&[0xaf, 0, 0x12, 0x10]),
            Ok(AudioTag::SequenceHeader(&[0x12, 0x10]))
        );
        assert_eq!(
            parse_audio_tag(&[0xaf, 1, 7, 8]),
            Ok(AudioTag::Frame(&[7, 8]))
        );
    }

    #[test]
    fn every_prefix_of_a_tag_parses_or_errors_without_panicking() {
        let video = [0x17, 1, 0, 0, 0x21, 0, 0, 0, 2, 0x65, 0x88];
        for end in 0..=video.len() {
            let _ = parse_video_tag(&video[..end]);
        }
        let ex = [0x90, b'a', b'v', b'0', b'1'];
        for end in 0..=ex.len() {
            assert!(parse_video_tag(&ex[..end]).is_err());
        }
        let audio = [0xaf, 1, 0x21];
        for end in 0..=audio.len() {
            let _ = parse_audio_tag(&audio[..end]);
        }
        assert!(parse_video_tag(&video[..4]).is_err());
        assert!(parse_audio_tag(&audio[..1]).is_err());
    }

    fn flv_file(tags: &[(u8, u32, &[u8])]) -> Vec<u8> {
        let mut out = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for (tag_type, ts, body) in tags {
            let len = body.len() as u32;
            out.push(*tag_type);
            out.extend_from_slice(&len.to_be_bytes()[1..]);
            out.extend_from_slice(&ts.to_be_bytes()[1..]);
            out.push((ts >> 24) as u8);
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(body);
            out.extend_from_slice(&(len + 11).to_be_bytes());
        }
        out
    }

    #[test]
    fn flv_reader_yields_tags_with_extended_timestamps() {
        let file = flv_file(&[
            (TAG_SCRIPT, 0, b"meta"),
            (TAG_VIDEO, 0x0123_4567, b"\x17\x00"),
        ]);
        let tags: Vec<_> = FlvReader::new(Bytes::from(file))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].tag_type, TAG_SCRIPT);
        assert_eq!(&tags[0].body[..], b"meta");
        assert_eq!(tags[1].ts_ms, 0x0123_4567);
        assert_eq!(&tags[1].body[..], b"\x17\x00");
    }

    #[test]
    fn truncated_flv_file_yields_one_error_then_stops() {
        let file = flv_file(&[(TAG_AUDIO, 5, b"\xaf\x01abc")]);
        for end in 0..file.len() {
            let Ok(reader) = FlvReader::new(Bytes::copy_from_slice(&file[..end])) else {
                assert!(end < 9);
                continue;
            };
            let items: Vec<_> = reader.collect();
            assert!(items.len() <= 1, "prefix {end}: {items:?}");
            if end > 13 {
                assert!(
                    matches!(items[0], Err(MediaError::BadFlvFile(_))),
                    "prefix {end}"
                );
            }
        }
        assert!(FlvReader::new(Bytes::from_static(b"NOTFLV\0\0\0\x09")).is_err());
    }
}
