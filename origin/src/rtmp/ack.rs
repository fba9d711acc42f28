//! Window acknowledgement accounting and the connection's outbound message encoding.
//!
//! A peer that sends Window Acknowledgement Size (RTMP 1.0 §5.4.4) expects an Acknowledgement
//! (§5.4.3) each time it has sent that many bytes, carrying the number of bytes received so
//! far. rml_rtmp's `ServerSession` did this for the bytes it was given; audio and video no
//! longer pass through it (the connection hands them to the packager itself), so [`AckWindow`]
//! counts every byte read from the socket instead. rml_rtmp 0.8 also sent the bytes since the
//! last acknowledgement rather than the running total the spec asks for; nginx-rtmp, FFmpeg
//! and librtmp (OBS) send the total.
//!
//! [`Outbound`] writes everything the connection sends: the session's responses and our
//! acknowledgements. Both share chunk stream 2 (protocol control), and the session compresses
//! its chunk headers against its own previous message on a chunk stream, not against ours, so
//! [`Outbound`] re-encodes the session's output with a full header on every message, which
//! a peer reads correctly whatever came before on that chunk stream.

use bytes::Bytes;

use super::dechunk::{DechunkError, Dechunker, MessageHeader};

/// Protocol control message: Acknowledgement.
const TYPE_ACKNOWLEDGEMENT: u8 = 3;
/// Protocol control message: Window Acknowledgement Size.
pub const TYPE_WINDOW_ACK_SIZE: u8 = 5;
/// The chunk stream of protocol control messages (RTMP 1.0 §5.4).
const CONTROL_CHUNK_STREAM: u32 = 2;

/// Bytes received on a connection and when the peer wants them acknowledged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AckWindow {
    /// The peer's window: acknowledge every this many bytes. `None` until the peer sets one,
    /// or when it set 0 (which would mean acknowledging every read).
    window: Option<u32>,
    /// Bytes received on the connection, handshake included.
    received: u64,
    /// `received` when we last acknowledged.
    acknowledged: u64,
}

impl AckWindow {
    /// A connection that has received `handshake_bytes` so far and no window yet.
    pub fn new(handshake_bytes: u64) -> Self {
        AckWindow {
            window: None,
            received: handshake_bytes,
            acknowledged: 0,
        }
    }

    /// Applies the payload of a Window Acknowledgement Size message.
    pub fn set_window(&mut self, payload: &[u8]) -> Result<(), MalformedWindowAckSize> {
        let size: [u8; 4] = payload
            .try_into()
            .map_err(|_| MalformedWindowAckSize(payload.len()))?;
        self.window = Some(u32::from_be_bytes(size)).filter(|size| *size > 0);
        Ok(())
    }

    /// Counts `n` more bytes read from the socket. Returns the sequence number to acknowledge
    /// (bytes received so far; the 32-bit field wraps, RTMP 1.0 §5.4.3) when the peer's window
    /// has filled since the last acknowledgement.
    pub fn received(&mut self, n: usize) -> Option<u32> {
        self.received += n as u64;
        let window = u64::from(self.window?);
        if self.received - self.acknowledged < window {
            return None;
        }
        self.acknowledged = self.received;
        Some(self.received as u32)
    }
}

/// A Window Acknowledgement Size message whose payload is not 4 bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("window acknowledgement size message has {0} bytes, expected 4")]
pub struct MalformedWindowAckSize(pub usize);

/// Encodes what the connection sends; see the module docs.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Parses the session's output back into messages (and follows its Set Chunk Size).
    session: Dechunker,
}

impl Outbound {
    /// Re-encodes bytes the session produced, every message with a full header.
    pub fn session_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, DechunkError> {
        let mut out = Vec::with_capacity(bytes.len() + 16);
        for message in self.session.push_messages(bytes)? {
            message.write_chunks(|head, body| {
                out.extend_from_slice(head);
                out.extend_from_slice(body);
            });
        }
        Ok(out)
    }

    /// An Acknowledgement of `sequence_number` bytes, at the chunk size the session set.
    pub fn acknowledgement(&self, sequence_number: u32) -> Bytes {
        let header = MessageHeader {
            timestamp: 0,
            type_id: TYPE_ACKNOWLEDGEMENT,
            message_stream_id: 0,
        };
        let mut out = Vec::with_capacity(16);
        let payload = sequence_number.to_be_bytes();
        let chunk_size = self.session.chunk_size() as usize;
        super::dechunk::write_message_chunks(
            CONTROL_CHUNK_STREAM,
            &header,
            &payload,
            chunk_size,
            |head, body| {
                out.extend_from_slice(head);
                out.extend_from_slice(body);
            },
        );
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
    use rml_rtmp::messages::{MessagePayload, RtmpMessage};
    use rml_rtmp::time::RtmpTimestamp;

    #[test]
    fn no_acknowledgement_before_the_peer_sets_a_window() {
        let mut ack = AckWindow::new(3073);
        assert_eq!(ack.received(10_000_000), None);
    }

    #[test]
    fn acknowledgements_carry_the_running_total_once_per_window() {
        let mut ack = AckWindow::new(3073);
        ack.set_window(&1000u32.to_be_bytes()).unwrap();
        // The handshake and earlier bytes count toward the first window, as in nginx-rtmp.
        assert_eq!(ack.received(500), Some(3573));
        assert_eq!(ack.received(999), None);
        assert_eq!(ack.received(1), Some(4573));
        // One read spanning several windows gets one acknowledgement of the total.
        assert_eq!(ack.received(3500), Some(8073));
        assert_eq!(ack.received(10), None);
    }

    #[test]
    fn sequence_number_wraps_at_32_bits() {
        let mut ack = AckWindow::new(u64::from(u32::MAX) - 10);
        ack.set_window(&100u32.to_be_bytes()).unwrap();
        assert_eq!(ack.received(20), Some(9));
    }

    #[test]
    fn window_of_zero_turns_acknowledgements_off() {
        let mut ack = AckWindow::new(0);
        ack.set_window(&0u32.to_be_bytes()).unwrap();
        assert_eq!(ack.received(1 << 30), None);
    }

    #[test]
    fn malformed_window_size_is_an_error() {
        let mut ack = AckWindow::new(0);
        assert_eq!(ack.set_window(&[0, 1, 2]), Err(MalformedWindowAckSize(3)));
        assert_eq!(ack.window, None);
    }

    /// Decodes `bytes` with rml_rtmp, the way a peer does, following Set Chunk Size.
    fn decode(bytes: &[u8]) -> Vec<RtmpMessage> {
        let mut deserializer = ChunkDeserializer::new();
        let mut out = Vec::new();
        let mut input = bytes;
        while let Some(payload) = deserializer.get_next_message(input).unwrap() {
            input = &[];
            let message = payload.to_rtmp_message().unwrap();
            if let RtmpMessage::SetChunkSize { size } = message {
                deserializer.set_max_chunk_size(size as usize).unwrap();
            }
            out.push(message);
        }
        out
    }

    #[test]
    fn acknowledgements_between_compressed_session_messages_decode_correctly() {
        // rml_rtmp compresses a repeated control message to a format-2/3 header, which a peer
        // would misread after our acknowledgement on the same chunk stream; re-encoded, it
        // cannot be.
        let ping = RtmpMessage::UserControl {
            event_type: rml_rtmp::messages::UserControlEventType::PingResponse,
            stream_id: None,
            buffer_length: None,
            timestamp: Some(RtmpTimestamp::new(7)),
        };
        let payload: MessagePayload = ping
            .clone()
            .into_message_payload(RtmpTimestamp::new(0), 0)
            .unwrap();
        let mut serializer = ChunkSerializer::new();
        let chunk_size = serializer
            .set_max_chunk_size(4096, RtmpTimestamp::new(0))
            .unwrap();
        let first = serializer.serialize(&payload, false, false).unwrap();
        let second = serializer.serialize(&payload, false, false).unwrap();

        let mut outbound = Outbound::default();
        let mut wire = outbound.session_bytes(&chunk_size.bytes).unwrap();
        wire.extend(outbound.session_bytes(&first.bytes).unwrap());
        wire.extend_from_slice(&outbound.acknowledgement(123_456));
        wire.extend(outbound.session_bytes(&second.bytes).unwrap());

        let decoded = decode(&wire);
        assert_eq!(decoded.len(), 4);
        assert_eq!(decoded[1], ping);
        assert_eq!(
            decoded[2],
            RtmpMessage::Acknowledgement {
                sequence_number: 123_456
            }
        );
        assert_eq!(decoded[3], ping);
    }
}
