//! MPEG-TS muxing of one HLS segment (ISO/IEC 13818-1).
//!
//! A [`TsWriter`] produces one self-contained segment: PAT and PMT first, then one PES per video
//! access unit and per AAC frame, each split into 188-byte packets. Self-contained means
//! everything in the bytes is a function of the segment's own frames: continuity counters start
//! at 0 in every segment (the first packet of each elementary stream sets
//! `discontinuity_indicator`, so demuxers that read segments back to back do not flag the jump),
//! and the PCR is derived from each access unit's DTS. That is what lets two origins — one of
//! which never saw the previous segment — write identical segments.

use bytes::{BufMut, Bytes, BytesMut};

/// Size of a transport stream packet.
pub const PACKET_SIZE: usize = 188;
const SYNC_BYTE: u8 = 0x47;
/// PID of the program association table.
pub const PAT_PID: u16 = 0x0000;
/// PID of our single program's map table.
pub const PMT_PID: u16 = 0x1000;
/// PID of the H.264 elementary stream; it also carries the PCR.
pub const VIDEO_PID: u16 = 0x0100;
/// PID of the AAC elementary stream.
pub const AUDIO_PID: u16 = 0x0101;
/// `stream_type` of H.264 video.
pub const STREAM_TYPE_H264: u8 = 0x1b;
/// `stream_type` of AAC audio in ADTS framing.
pub const STREAM_TYPE_AAC_ADTS: u8 = 0x0f;
const PROGRAM_NUMBER: u16 = 1;
const STREAM_ID_VIDEO: u8 = 0xe0;
const STREAM_ID_AUDIO: u8 = 0xc0;
/// PTS/DTS/PCR base are 33-bit counters of a 90 kHz clock.
const TIMESTAMP_MASK: u64 = (1 << 33) - 1;
/// How far the PCR lags the DTS of the access unit it travels with: 700 ms (ffmpeg's default
/// `muxdelay`), so audio interleaved slightly behind the video is still on time for the decoder.
pub const PCR_DELAY_90K: u64 = 63_000;

/// Writes the packets of one segment into a growing buffer.
#[derive(Debug)]
pub struct TsWriter {
    buf: BytesMut,
    video_cc: u8,
    audio_cc: u8,
    video_started: bool,
    audio_started: bool,
}

impl TsWriter {
    /// Starts a segment with PAT and PMT; the PMT lists the AAC stream only if `with_audio`.
    pub fn new(with_audio: bool) -> Self {
        let mut writer = Self {
            buf: BytesMut::with_capacity(64 * PACKET_SIZE),
            video_cc: 0,
            audio_cc: 0,
            video_started: false,
            audio_started: false,
        };
        writer.write_section(PAT_PID, &pat_section());
        writer.write_section(PMT_PID, &pmt_section(with_audio));
        writer
    }

    /// Bytes written so far (always a multiple of [`PACKET_SIZE`]).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has been written (never true: PAT/PMT are written on creation).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Writes one H.264 access unit (Annex B) as a PES; timestamps in 90 kHz ticks (wrapped to
    /// 33 bits here). The first packet carries the PCR and, for a keyframe,
    /// `random_access_indicator`.
    pub fn write_video(&mut self, pts: u64, dts: u64, keyframe: bool, annex_b: &[u8]) {
        let header = PesHeader::new(STREAM_ID_VIDEO, pts, Some(dts), None);
        let first = AdaptationFlags {
            discontinuity: !self.video_started,
            random_access: keyframe,
            pcr: Some(dts.saturating_sub(PCR_DELAY_90K)),
        };
        self.video_started = true;
        let mut cc = self.video_cc;
        self.write_pes(VIDEO_PID, &mut cc, first, header.as_bytes(), annex_b);
        self.video_cc = cc;
    }

    /// Writes one AAC frame as a PES: its ADTS header, then the raw frame; `pts` in 90 kHz
    /// ticks.
    pub fn write_audio(&mut self, pts: u64, adts_header: &[u8; 7], raw: &[u8]) {
        let es_len = adts_header.len() + raw.len();
        let mut header = PesHeader::new(STREAM_ID_AUDIO, pts, None, Some(es_len));
        // The ADTS header travels with the PES header, so the frame is copied once.
        header.extend(adts_header);
        let first = AdaptationFlags {
            discontinuity: !self.audio_started,
            // Every AAC frame decodes on its own.
            random_access: true,
            pcr: None,
        };
        self.audio_started = true;
        let mut cc = self.audio_cc;
        self.write_pes(AUDIO_PID, &mut cc, first, header.as_bytes(), raw);
        self.audio_cc = cc;
    }

    /// The segment's bytes.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }

    fn write_section(&mut self, pid: u16, section: &[u8]) {
        // pointer_field 0: the section starts right after it.
        let mut cc = 0;
        self.write_packet(pid, true, &mut cc, AdaptationFlags::NONE, &[0], section);
    }

    fn write_pes(
        &mut self,
        pid: u16,
        cc: &mut u8,
        first: AdaptationFlags,
        header: &[u8],
        es: &[u8],
    ) {
        // The first packet takes the header plus as much payload as fits.
        let mut rest = es;
        let used = self.write_packet(pid, true, cc, first, header, rest);
        rest = &rest[used..];
        while !rest.is_empty() {
            let used = self.write_packet(pid, false, cc, AdaptationFlags::NONE, &[], rest);
            rest = &rest[used..];
        }
    }

    /// Writes one packet carrying all of `head` (which must fit) and then as much of `payload`
    /// as fits, stuffing the adaptation field when they are short; returns how many `payload`
    /// bytes it took. Taking the two parts separately spares a per-packet staging copy.
    fn write_packet(
        &mut self,
        pid: u16,
        start: bool,
        cc: &mut u8,
        flags: AdaptationFlags,
        head: &[u8],
        payload: &[u8],
    ) -> usize {
        let room = PACKET_SIZE - 4 - flags.len() - head.len();
        let take = room.min(payload.len());
        let stuffing = room - take;
        let has_adaptation = flags.len() > 0 || stuffing > 0;

        self.buf.put_u8(SYNC_BYTE);
        self.buf.put_u16(u16::from(start) << 14 | (pid & 0x1fff));
        self.buf
            .put_u8(if has_adaptation { 0x30 } else { 0x10 } | (*cc & 0x0f));
        *cc = (*cc + 1) & 0x0f;

        if has_adaptation {
            let field_len = flags.len() + stuffing;
            if field_len == 1 {
                // A lone adaptation_field_length of 0 is the only way to stuff a single byte.
                self.buf.put_u8(0);
            } else {
                self.buf.put_u8((field_len - 1) as u8);
                self.buf.put_u8(flags.byte());
                if let Some(pcr) = flags.pcr {
                    let base = pcr & TIMESTAMP_MASK;
                    // 33-bit base, 6 reserved bits, 9-bit extension (0: we clock in 90 kHz).
                    self.buf.put_u32((base >> 1) as u32);
                    self.buf.put_u8(((base & 1) << 7) as u8 | 0x7e);
                    self.buf.put_u8(0);
                }
                // Whatever the length and flags bytes (and PCR) leave is stuffing.
                self.buf.put_bytes(0xff, field_len - flags.len().max(2));
            }
        }
        self.buf.put_slice(head);
        self.buf.put_slice(&payload[..take]);
        take
    }
}

/// What goes into a packet's adaptation field besides stuffing.
#[derive(Debug, Clone, Copy)]
struct AdaptationFlags {
    discontinuity: bool,
    random_access: bool,
    pcr: Option<u64>,
}

impl AdaptationFlags {
    const NONE: Self = Self {
        discontinuity: false,
        random_access: false,
        pcr: None,
    };

    /// Bytes the adaptation field needs for these flags (0 if none is set).
    fn len(&self) -> usize {
        if self.pcr.is_some() {
            8
        } else if self.discontinuity || self.random_access {
            2
        } else {
            0
        }
    }

    fn byte(&self) -> u8 {
        u8::from(self.discontinuity) << 7
            | u8::from(self.random_access) << 6
            | u8::from(self.pcr.is_some()) << 4
    }
}

/// A PES header, built on the stack (one per frame), with room for the start of the
/// elementary stream that must travel with it (an ADTS header).
#[derive(Debug)]
struct PesHeader {
    bytes: [u8; 32],
    len: usize,
}

impl PesHeader {
    /// A PES header with PTS (and DTS when it differs). `es_len` gives PES_packet_length;
    /// `None` leaves it 0 ("unbounded"), which ISO/IEC 13818-1 allows only for video — and which
    /// video needs, as an access unit can exceed 64 KiB.
    fn new(stream_id: u8, pts: u64, dts: Option<u64>, es_len: Option<usize>) -> Self {
        let dts = dts.filter(|dts| *dts != pts);
        let header_data_len: u8 = if dts.is_some() { 10 } else { 5 };
        let packet_len = es_len
            .map(|len| len + 3 + usize::from(header_data_len))
            .filter(|len| *len <= usize::from(u16::MAX))
            .unwrap_or(0);
        let mut header = Self {
            bytes: [0; 32],
            len: 0,
        };
        header.extend(&[0, 0, 1, stream_id]);
        header.extend(&(packet_len as u16).to_be_bytes());
        // '10', not scrambled, data_alignment_indicator: every PES starts an access unit.
        header.extend(&[
            0x84,
            if dts.is_some() { 0xc0 } else { 0x80 },
            header_data_len,
        ]);
        match dts {
            Some(dts) => {
                header.extend(&encode_timestamp(0b0011, pts));
                header.extend(&encode_timestamp(0b0001, dts));
            }
            None => header.extend(&encode_timestamp(0b0010, pts)),
        }
        header
    }

    /// Appends bytes; at most 13 fit after the longest header (19 bytes).
    fn extend(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The 5-byte PTS/DTS encoding: 4-bit prefix, then 33 bits split 3/15/15 with marker bits.
fn encode_timestamp(prefix: u8, ts: u64) -> [u8; 5] {
    let ts = ts & TIMESTAMP_MASK;
    [
        prefix << 4 | ((ts >> 29) & 0x0e) as u8 | 1,
        (ts >> 22) as u8,
        ((ts >> 14) & 0xfe) as u8 | 1,
        (ts >> 7) as u8,
        ((ts << 1) & 0xfe) as u8 | 1,
    ]
}

fn pat_section() -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    // transport_stream_id, version 0 + current_next_indicator, section 0 of 0.
    body.extend_from_slice(&[0x00, 0x01, 0xc1, 0x00, 0x00]);
    body.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    body.extend_from_slice(&(0xe000 | PMT_PID).to_be_bytes());
    psi_section(0x00, &body)
}

fn pmt_section(with_audio: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    body.extend_from_slice(&[0xc1, 0x00, 0x00]);
    body.extend_from_slice(&(0xe000 | VIDEO_PID).to_be_bytes()); // PCR_PID
    body.extend_from_slice(&[0xf0, 0x00]); // no program descriptors
    let mut streams = vec![(STREAM_TYPE_H264, VIDEO_PID)];
    if with_audio {
        streams.push((STREAM_TYPE_AAC_ADTS, AUDIO_PID));
    }
    for (stream_type, pid) in streams {
        body.push(stream_type);
        body.extend_from_slice(&(0xe000 | pid).to_be_bytes());
        body.extend_from_slice(&[0xf0, 0x00]); // no ES descriptors
    }
    psi_section(0x02, &body)
}

/// Wraps a table body with table_id, section_length and the trailing CRC.
fn psi_section(table_id: u8, body: &[u8]) -> Vec<u8> {
    let section_len = body.len() + 4;
    let mut section = Vec::with_capacity(section_len + 3);
    section.push(table_id);
    // section_syntax_indicator, '0', reserved '11', 12-bit length.
    section.extend_from_slice(&(0xb000 | section_len as u16).to_be_bytes());
    section.extend_from_slice(body);
    let crc = crc32_mpeg2(&section);
    section.extend_from_slice(&crc.to_be_bytes());
    section
}

/// CRC-32/MPEG-2: polynomial 0x04C11DB7, initial value all ones, no reflection, no final XOR
/// (ISO/IEC 13818-1 annex A).
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xffff_ffff, |mut crc, byte| {
        crc ^= u32::from(*byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                crc << 1 ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
        crc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(data: &[u8]) -> Vec<&[u8]> {
        assert_eq!(data.len() % PACKET_SIZE, 0, "not a whole number of packets");
        data.chunks(PACKET_SIZE).collect()
    }

    fn pid(packet: &[u8]) -> u16 {
        u16::from_be_bytes([packet[1], packet[2]]) & 0x1fff
    }

    /// The payload of a packet (after header and adaptation field).
    fn payload(packet: &[u8]) -> &[u8] {
        if packet[3] & 0x20 != 0 {
            &packet[5 + usize::from(packet[4])..]
        } else {
            &packet[4..]
        }
    }

    #[test]
    fn crc32_mpeg2_matches_the_standard_check_value() {
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn pat_is_the_canonical_single_program_table() {
        // The PAT every ffmpeg-made TS carries for program 1 → PMT PID 0x1000, CRC included.
        assert_eq!(
            pat_section(),
            [
                0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01, 0xf0, 0x00, 0x2a, 0xb1,
                0x04, 0xb2
            ]
        );
    }

    #[test]
    fn pmt_lists_h264_with_pcr_and_optionally_adts_aac() {
        let pmt = pmt_section(true);
        assert_eq!(&pmt[..3], &[0x02, 0xb0, 0x17]);
        assert_eq!(u16::from_be_bytes([pmt[8], pmt[9]]) & 0x1fff, VIDEO_PID);
        assert_eq!(&pmt[12..17], &[0x1b, 0xe1, 0x00, 0xf0, 0x00]);
        assert_eq!(&pmt[17..22], &[0x0f, 0xe1, 0x01, 0xf0, 0x00]);
        // A section including its CRC has a CRC of zero.
        assert_eq!(crc32_mpeg2(&pmt), 0);
        let video_only = pmt_section(false);
        assert_eq!(video_only.len(), pmt.len() - 5);
        assert_eq!(crc32_mpeg2(&video_only), 0);
    }

    #[test]
    fn pts_encoding_matches_known_bytes() {
        // 1.4 s, ffmpeg's usual first PTS.
        assert_eq!(
            encode_timestamp(0b0010, 126_000),
            [0x21, 0x00, 0x07, 0xd8, 0x61]
        );
        // All 33 bits set survive with their markers; bit 33 is dropped.
        assert_eq!(
            encode_timestamp(0b0011, (1 << 34) - 1),
            [0x3f, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn pes_header_carries_dts_only_when_it_differs_from_pts() {
        let both = PesHeader::new(STREAM_ID_VIDEO, 129_000, Some(126_000), None);
        let both = both.as_bytes();
        assert_eq!(&both[..9], &[0, 0, 1, 0xe0, 0, 0, 0x84, 0xc0, 10]);
        assert_eq!(&both[9..14], &encode_timestamp(0b0011, 129_000));
        assert_eq!(&both[14..19], &encode_timestamp(0b0001, 126_000));

        let same = PesHeader::new(STREAM_ID_VIDEO, 126_000, Some(126_000), None);
        let same = same.as_bytes();
        assert_eq!(&same[7..9], &[0x80, 5]);
        assert_eq!(same.len(), 14);

        let audio = PesHeader::new(STREAM_ID_AUDIO, 126_000, None, Some(300));
        let audio = audio.as_bytes();
        assert_eq!(u16::from_be_bytes([audio[4], audio[5]]), 300 + 8);
    }

    #[test]
    fn segment_starts_with_pat_and_pmt_and_every_packet_is_188_bytes_with_sync() {
        let mut writer = TsWriter::new(true);
        writer.write_video(200_000, 190_000, true, &[0x55; 5000]);
        writer.write_audio(190_000, &[0x66; 7], &[0x66; 393]);
        let data = writer.finish();
        let packets = packets(&data);
        assert!(packets.iter().all(|p| p[0] == SYNC_BYTE));
        assert_eq!(pid(packets[0]), PAT_PID);
        assert_eq!(pid(packets[1]), PMT_PID);
        assert_eq!(&payload(packets[0])[1..17], &pat_section()[..]);
    }

    #[test]
    fn continuity_counters_count_per_pid_from_zero_and_wrap() {
        let mut writer = TsWriter::new(true);
        for i in 0..20 {
            writer.write_video(90_000 + i * 3000, 90_000 + i * 3000, i == 0, &[0x55; 300]);
            writer.write_audio(90_000 + i * 1920, &[0x66; 7], &[0x66; 193]);
        }
        let data = writer.finish();
        let mut next = std::collections::HashMap::new();
        for packet in packets(&data) {
            let cc = packet[3] & 0x0f;
            let expected = next.entry(pid(packet)).or_insert(0u8);
            assert_eq!(cc, *expected, "pid {:#x}", pid(packet));
            *expected = (cc + 1) & 0x0f;
        }
        // 20 PES of 2 packets each wrapped the 4-bit counter.
        assert_eq!(next[&VIDEO_PID], 40 % 16);
    }

    #[test]
    fn first_video_packet_has_pcr_random_access_and_discontinuity() {
        let mut writer = TsWriter::new(false);
        writer.write_video(129_000, 126_000, true, &[0x55; 1000]);
        writer.write_video(132_000, 129_000, false, &[0x55; 10]);
        let data = writer.finish();
        let packets = packets(&data);
        let first = packets[2];
        assert_eq!(first[1] & 0x40, 0x40, "payload_unit_start_indicator");
        assert_eq!(first[3] & 0x30, 0x30, "adaptation field + payload");
        assert_eq!(first[5], 0xd0, "discontinuity, random access, PCR");
        let base = u64::from(u32::from_be_bytes([first[6], first[7], first[8], first[9]])) << 1
            | u64::from(first[10] >> 7);
        assert_eq!(base, 126_000 - PCR_DELAY_90K);
        assert_eq!(&payload(first)[..4], &[0, 0, 1, 0xe0]);

        let second_pes = packets.iter().skip(3).find(|p| p[1] & 0x40 != 0).unwrap();
        assert_eq!(second_pes[5], 0x10, "PCR only");
    }

    #[test]
    fn last_packet_of_a_pes_is_padded_with_adaptation_stuffing() {
        for es_len in [1, 150, 169, 170, 171, 183, 184, 185, 500] {
            let mut writer = TsWriter::new(false);
            writer.write_video(126_000, 126_000, false, &vec![0xab; es_len]);
            let data = writer.finish();
            let packets = packets(&data);
            let es: Vec<u8> = packets[2..]
                .iter()
                .flat_map(|p| payload(p).iter().copied())
                .skip(14)
                .collect();
            assert_eq!(es, vec![0xab; es_len], "es_len {es_len}");
        }
    }

    #[test]
    fn single_byte_of_stuffing_uses_an_empty_adaptation_field() {
        // First packet: 4 + 8 (adaptation with PCR) + 14 (PES header) leaves 162 bytes, so
        // 162 + 183 bytes leave a second packet exactly one byte short.
        let mut writer = TsWriter::new(false);
        writer.write_video(126_000, 126_000, false, &[0xab; 162 + 183]);
        let data = writer.finish();
        let last = packets(&data)[3];
        assert_eq!(last[3] & 0x30, 0x30);
        assert_eq!(last[4], 0);
        assert_eq!(payload(last), &[0xab; 183][..]);
    }
}
