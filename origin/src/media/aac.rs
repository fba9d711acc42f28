//! AAC: the AudioSpecificConfig and ADTS framing.
//!
//! FLV carries raw AAC frames plus one AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1); MPEG-TS
//! stream type 0x0F carries ADTS frames, each with a 7-byte header repeating profile, sampling
//! rate and channels (ISO/IEC 13818-7 §6.2), so every audio PES is decodable on its own.

use super::MediaError;

/// Length of an ADTS header without CRC.
pub const ADTS_HEADER_LEN: usize = 7;
/// ADTS `frame_length` is a 13-bit field covering header and payload.
const ADTS_MAX_FRAME: usize = (1 << 13) - 1;

/// Sampling rates by `samplingFrequencyIndex` (ISO/IEC 14496-3 table 1.18).
const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// What an ADTS header needs from an AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// MPEG-4 audio object type of the core codec (2 = AAC LC); ADTS can carry 1–4.
    pub object_type: u8,
    /// `samplingFrequencyIndex` of the core codec (0–12).
    pub sampling_index: u8,
    /// `channelConfiguration` (1–7).
    pub channels: u8,
}

impl AacConfig {
    /// Parses an AudioSpecificConfig. HE-AAC with explicit SBR/PS signalling (object types 5
    /// and 29) is reduced to its AAC LC core, which ADTS can carry; decoders find the SBR
    /// extension implicitly.
    pub fn parse(asc: &[u8]) -> Result<Self, MediaError> {
        let bad = |why: String| MediaError::BadAacConfig(why);
        let cut = || bad(format!("{} bytes, cut off", asc.len()));
        let mut bits = BitReader::new(asc);
        let mut object_type = read_object_type(&mut bits).ok_or_else(cut)?;
        let sampling_index = read_sampling_index(&mut bits).ok_or_else(cut)?;
        let channels = bits.read(4).ok_or_else(cut)? as u8;
        if object_type == 5 || object_type == 29 {
            // extensionSamplingFrequencyIndex, then the core's own object type.
            read_sampling_index(&mut bits).ok_or_else(cut)?;
            object_type = read_object_type(&mut bits).ok_or_else(cut)?;
        }
        if !(1..=4).contains(&object_type) {
            return Err(bad(format!(
                "audio object type {object_type} cannot be carried in ADTS (only 1-4, e.g. AAC LC = 2)"
            )));
        }
        if usize::from(sampling_index) >= SAMPLE_RATES.len() {
            return Err(bad(format!(
                "sampling frequency index {sampling_index} has no ADTS equivalent"
            )));
        }
        if channels == 0 || channels > 7 {
            return Err(bad(format!(
                "channel configuration {channels} is not expressible in ADTS"
            )));
        }
        Ok(Self {
            object_type,
            sampling_index,
            channels,
        })
    }

    /// The sampling rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        SAMPLE_RATES
            .get(usize::from(self.sampling_index))
            .copied()
            .unwrap_or(0)
    }

    /// The ADTS header (MPEG-4, no CRC, one raw data block) for a raw frame of `payload_len`
    /// bytes.
    pub fn adts_header(&self, payload_len: usize) -> Result<[u8; ADTS_HEADER_LEN], MediaError> {
        let frame_len = payload_len + ADTS_HEADER_LEN;
        if frame_len > ADTS_MAX_FRAME {
            return Err(MediaError::BadAacFrame(format!(
                "{payload_len} bytes exceed ADTS's 13-bit frame length"
            )));
        }
        let profile = self.object_type - 1;
        // buffer_fullness 0x7FF signals a variable bit rate stream.
        Ok([
            0xff,
            0xf1,
            profile << 6 | self.sampling_index << 2 | self.channels >> 2,
            (self.channels & 3) << 6 | (frame_len >> 11) as u8,
            (frame_len >> 3) as u8,
            ((frame_len & 7) as u8) << 5 | 0x1f,
            0xfc,
        ])
    }
}

fn read_object_type(bits: &mut BitReader<'_>) -> Option<u8> {
    match bits.read(5)? {
        31 => Some(32 + bits.read(6)? as u8),
        ot => Some(ot as u8),
    }
}

fn read_sampling_index(bits: &mut BitReader<'_>) -> Option<u8> {
    match bits.read(4)? {
        // An explicit 24-bit frequency, which ADTS cannot express; report it as index 15.
        15 => bits.read(24).map(|_| 15),
        index => Some(index as u8),
    }
}

/// MSB-first bit reader over a byte slice; `None` once the input runs out.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn read(&mut self, count: u32) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..count {
            let byte = self.data.get(self.pos / 8)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            value = value << 1 | u32::from(bit);
            self.pos += 1;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lc_44100_stereo_config_gives_the_well_known_adts_header() {
        let config = AacConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!(
            config,
            AacConfig {
                object_type: 2,
                sampling_index: 4,
                channels: 2
            }
        );
        assert_eq!(config.sample_rate(), 44_100);
        // 100-byte payload: frame_length 107 = 0b0_0000_0110_1011.
        assert_eq!(
            config.adts_header(100).unwrap(),
            [0xff, 0xf1, 0x50, 0x80, 0x0d, 0x7f, 0xfc]
        );
    }

    #[test]
    fn adts_header_fields_round_trip_through_their_bit_positions() {
        let config = AacConfig::parse(&[0x11, 0x88]).unwrap(); // LC, 48 kHz, mono
        let header = config.adts_header(8000).unwrap();
        let mut bits = BitReader::new(&header);
        assert_eq!(bits.read(12), Some(0xfff));
        assert_eq!(bits.read(1), Some(0), "MPEG-4");
        assert_eq!(bits.read(2), Some(0), "layer");
        assert_eq!(bits.read(1), Some(1), "protection absent");
        assert_eq!(bits.read(2), Some(1), "profile = object type - 1");
        assert_eq!(bits.read(4), Some(3), "48 kHz");
        assert_eq!(bits.read(1), Some(0));
        assert_eq!(bits.read(3), Some(1), "mono");
        assert_eq!(bits.read(4), Some(0));
        assert_eq!(bits.read(13), Some(8007), "frame length");
        assert_eq!(bits.read(11), Some(0x7ff), "VBR fullness");
        assert_eq!(bits.read(2), Some(0), "one raw data block");
    }

    #[test]
    fn oversized_frame_is_refused() {
        let config = AacConfig::parse(&[0x12, 0x10]).unwrap();
        assert!(config.adts_header(8184).is_ok());
        assert!(matches!(
            config.adts_header(8185),
            Err(MediaError::BadAacFrame(_))
        ));
    }

    #[test]
    fn he_aac_with_explicit_sbr_is_reduced_to_its_lc_core() {
        // Object type 5, 22.05 kHz core, stereo, extension 44.1 kHz, then object type 2.
        let config = AacConfig::parse(&[0x2b, 0x92, 0x08, 0x00]).unwrap();
        assert_eq!(config.object_type, 2);
        assert_eq!(config.sampling_index, 7);
        assert_eq!(config.channels, 2);
    }

    #[test]
    fn configs_adts_cannot_carry_are_refused_with_a_reason() {
        // Object type 23 (ER AAC LD).
        let err = AacConfig::parse(&[0xba, 0x10]).unwrap_err();
        assert!(err.to_string().contains("object type 23"), "{err}");
        // Channel configuration 0 (program config element).
        assert!(AacConfig::parse(&[0x12, 0x00]).is_err());
        // Explicit frequency (index 15).
        assert!(AacConfig::parse(&[0x17, 0x80, 0xbb, 0x80, 0x10]).is_err());
    }

    #[test]
    fn every_prefix_of_a_config_is_an_error_not_a_panic() {
        let full = [0x2b, 0x92, 0x08, 0x00];
        for end in 0..2 {
            assert!(AacConfig::parse(&full[..end]).is_err(), "prefix {end}");
        }
        for end in 2..full.len() {
            let _ = AacConfig::parse(&full[..end]);
        }
        assert!(AacConfig::parse(&[0xf8]).is_err());
    }
}
