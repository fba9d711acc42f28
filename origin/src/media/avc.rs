//! H.264: the AVC sequence header and AVCC → Annex B conversion.
//!
//! FLV carries H.264 the way MP4 does (ISO/IEC 14496-15): parameter sets once, in an
//! AVCDecoderConfigurationRecord, and access units as NAL units prefixed with their length.
//! MPEG-TS wants Annex B (ITU-T H.264 annex B): start codes, an access unit delimiter opening
//! each access unit (required in TS by ISO/IEC 13818-1 §2.14), and SPS/PPS in-band before every
//! IDR so a player can start decoding at any segment.

use bytes::Bytes;

use super::MediaError;

/// NAL unit types we look for (H.264 table 7-1).
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// Annex B start code; the 4-byte form is required before the first NAL unit of an access unit
/// and allowed everywhere, so we use it everywhere.
const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// An AUD with `primary_pic_type` 7 ("any slice type"), so we need not inspect the slices.
const AUD: [u8; 6] = [0, 0, 0, 1, NAL_AUD, 0xf0];

/// The decoder configuration from an AVC sequence header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// Bytes in each NAL unit's length prefix (1, 2 or 4).
    pub nal_length_size: usize,
    /// `AVCProfileIndication`, e.g. 100 for High.
    pub profile: u8,
    /// `AVCLevelIndication`, e.g. 31 for level 3.1.
    pub level: u8,
    /// Sequence parameter set NAL units (without start codes).
    pub sps: Vec<Bytes>,
    /// Picture parameter set NAL units (without start codes).
    pub pps: Vec<Bytes>,
}

impl AvcConfig {
    /// Parses an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1).
    pub fn parse(record: &[u8]) -> Result<Self, MediaError> {
        let bad = |why: String| MediaError::BadAvcConfig(why);
        let fixed = record
            .get(..6)
            .ok_or_else(|| bad(format!("{} bytes, need at least 6", record.len())))?;
        if fixed[0] != 1 {
            return Err(bad(format!(
                "configurationVersion {} (expected 1)",
                fixed[0]
            )));
        }
        let nal_length_size = usize::from(fixed[4] & 0x03) + 1;
        if nal_length_size == 3 {
            return Err(bad("lengthSizeMinusOne 2 is not allowed".into()));
        }
        let mut pos = 6;
        let sps = read_parameter_sets(record, &mut pos, usize::from(fixed[5] & 0x1f), NAL_SPS)?;
        let pps_count = *record
            .get(pos)
            .ok_or_else(|| bad("missing numOfPictureParameterSets".into()))?;
        pos += 1;
        let pps = read_parameter_sets(record, &mut pos, usize::from(pps_count), NAL_PPS)?;
        if sps.is_empty() || pps.is_empty() {
            return Err(bad(format!(
                "{} SPS and {} PPS (need at least one of each)",
                sps.len(),
                pps.len()
            )));
        }
        Ok(Self {
            nal_length_size,
            profile: fixed[1],
            level: fixed[3],
            sps,
            pps,
        })
    }

    /// Appends the Annex B form of one AVCC access unit to `out`: an AUD, then — for an IDR or
    /// any keyframe without its own SPS — the configured SPS/PPS, then the frame's NAL units
    /// (minus any AUD of its own). Nothing is appended if the frame is malformed.
    pub fn to_annex_b(
        &self,
        avcc: &[u8],
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), MediaError> {
        let nalus = self.split_nalus(avcc)?;
        let nal_type = |nalu: &[u8]| nalu.first().map_or(0, |b| b & 0x1f);
        let has_idr = nalus.iter().any(|n| nal_type(n) == NAL_IDR);
        let has_sps = nalus.iter().any(|n| nal_type(n) == NAL_SPS);
        out.extend_from_slice(&AUD);
        if (keyframe || has_idr) && !has_sps {
            for ps in self.sps.iter().chain(&self.pps) {
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(ps);
            }
        }
        for nalu in nalus.iter().filter(|n| nal_type(n) != NAL_AUD) {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(nalu);
        }
        Ok(())
    }

    fn split_nalus<'a>(&self, mut avcc: &'a [u8]) -> Result<Vec<&'a [u8]>, MediaError> {
        let mut nalus = Vec::new();
        while !avcc.is_empty() {
            let prefix = avcc.get(..self.nal_length_size).ok_or_else(|| {
                MediaError::BadAvcFrame(format!(
                    "{} trailing bytes, shorter than the {}-byte length prefix",
                    avcc.len(),
                    self.nal_length_size
                ))
            })?;
            let len = prefix
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            let rest = &avcc[self.nal_length_size..];
            let nalu = rest.get(..len).ok_or_else(|| {
                MediaError::BadAvcFrame(format!(
                    "NAL unit length {len} exceeds the {} bytes left",
                    rest.len()
                ))
            })?;
            // Zero-length NAL units carry nothing and would emit a bare start code.
            if !nalu.is_empty() {
                nalus.push(nalu);
            }
            avcc = &rest[len..];
        }
        Ok(nalus)
    }
}

/// Reads `count` 16-bit-length-prefixed parameter sets starting at `*pos`, each of which must be
/// a NAL unit of `want_type`, and leaves `*pos` just past the last one.
fn read_parameter_sets(
    record: &[u8],
    pos: &mut usize,
    count: usize,
    want_type: u8,
) -> Result<Vec<Bytes>, MediaError> {
    let name = if want_type == NAL_SPS { "SPS" } else { "PPS" };
    let mut sets = Vec::with_capacity(count);
    for i in 0..count {
        let len_bytes = record.get(*pos..*pos + 2).ok_or_else(|| {
            MediaError::BadAvcConfig(format!("{name} {i} of {count}: length cut off"))
        })?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let start = *pos + 2;
        let set = record.get(start..start + len).ok_or_else(|| {
            MediaError::BadAvcConfig(format!("{name} {i} of {count}: {len} bytes cut off"))
        })?;
        match set.first() {
            Some(b) if b & 0x1f == want_type => {}
            other => {
                return Err(MediaError::BadAvcConfig(format!(
                    "{name} {i} has NAL unit type {:?}",
                    other.map(|b| b & 0x1f)
                )))
            }
        }
        sets.push(Bytes::copy_from_slice(set));
        *pos = start + len;
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: [u8; 4] = [0x67, 0x64, 0x00, 0x1f];
    const PPS: [u8; 2] = [0x68, 0xee];

    fn record() -> Vec<u8> {
        let mut r = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x04];
        r.extend_from_slice(&SPS);
        r.extend_from_slice(&[1, 0x00, 0x02]);
        r.extend_from_slice(&PPS);
        r
    }

    #[test]
    fn sequence_header_yields_length_size_and_parameter_sets() {
        let config = AvcConfig::parse(&record()).unwrap();
        assert_eq!(config.nal_length_size, 4);
        assert_eq!((config.profile, config.level), (100, 31));
        assert_eq!(config.sps, vec![Bytes::from_static(&SPS)]);
        assert_eq!(config.pps, vec![Bytes::from_static(&PPS)]);
    }

    #[test]
    fn every_prefix_of_a_sequence_header_is_an_error_not_a_panic() {
        let full = record();
        for end in 0..full.len() {
            assert!(
                matches!(
                    AvcConfig::parse(&full[..end]),
                    Err(MediaError::BadAvcConfig(_))
                ),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn sequence_header_without_pps_or_with_wrong_nal_types_is_refused() {
        let mut no_pps = record();
        no_pps.truncate(12);
        no_pps.push(0);
        assert!(AvcConfig::parse(&no_pps).is_err());
        let mut swapped = record();
        swapped[8] = 0x68;
        let err = AvcConfig::parse(&swapped).unwrap_err();
        assert!(err.to_string().contains("SPS 0"), "{err}");
        let mut version = record();
        version[0] = 0;
        assert!(AvcConfig::parse(&version).is_err());
    }

    #[test]
    fn keyframe_gets_aud_then_sps_pps_then_its_nal_units() {
        let config = AvcConfig::parse(&record()).unwrap();
        let avcc = [0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 3, 0x65, 0xaa, 0xbb];
        let mut out = Vec::new();
        config.to_annex_b(&avcc, true, &mut out).unwrap();
        let mut want = AUD.to_vec();
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&SPS);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&PPS);
        want.extend_from_slice(&[0, 0, 0, 1, 0x65, 0xaa, 0xbb]);
        assert_eq!(out, want);
    }

    #[test]
    fn frames_carrying_their_own_sps_or_no_idr_get_no_parameter_sets() {
        let config = AvcConfig::parse(&record()).unwrap();
        let mut inband = vec![0, 0, 0, 4];
        inband.extend_from_slice(&SPS);
        inband.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        let mut out = Vec::new();
        config.to_annex_b(&inband, true, &mut out).unwrap();
        assert_eq!(out.windows(4).filter(|w| *w == SPS).count(), 1);

        out.clear();
        config
            .to_annex_b(&[0, 0, 0, 1, 0x41], false, &mut out)
            .unwrap();
        assert_eq!(out, [&AUD[..], &[0, 0, 0, 1, 0x41]].concat());
    }

    #[test]
    fn idr_slice_gets_parameter_sets_even_without_the_keyframe_flag() {
        let config = AvcConfig::parse(&record()).unwrap();
        let mut out = Vec::new();
        config
            .to_annex_b(&[0, 0, 0, 1, 0x65], false, &mut out)
            .unwrap();
        assert!(out.windows(4).any(|w| w == SPS));
    }

    #[test]
    fn two_byte_length_prefixes_are_honoured() {
        let mut r = record();
        r[4] = 0xfd;
        let config = AvcConfig::parse(&r).unwrap();
        assert_eq!(config.nal_length_size, 2);
        let mut out = Vec::new();
        config
            .to_annex_b(&[0, 1, 0x41, 0, 1, 0x41], false, &mut out)
            .unwrap();
        assert_eq!(out.len(), AUD.len() + 2 * 5);
    }

    #[test]
    fn overlong_nal_length_is_an_error_and_appends_nothing() {
        let config = AvcConfig::parse(&record()).unwrap();
        let frame = [0, 0, 0, 9, 0x65, 1, 2];
        for end in 1..frame.len() {
            let mut out = Vec::new();
            assert!(config.to_annex_b(&frame[..end], true, &mut out).is_err());
            assert!(out.is_empty());
        }
    }
}
