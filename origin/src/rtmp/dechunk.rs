//! Chunk-stream reassembly in front of rml_rtmp's `ServerSession`.
//!
//! RTMP splits every message into chunks of at most the peer's chunk size, and a sender may
//! interleave chunks of different chunk streams mid-message (RTMP 1.0 §5.3.1): OBS 30+ and
//! FFmpeg 6.1+ put audio chunks between the chunks of a large video frame. rml_rtmp 0.8's
//! `ChunkDeserializer` keeps a single partial-payload buffer for all chunk streams, so such input
//! appends audio bytes to the video frame and then misreads payload as headers.
//!
//! [`Dechunker`] parses the wire's chunk headers with per-chunk-stream state and reassembles
//! each message on its own chunk stream ([`Dechunker::push_messages`]). The connection packages
//! audio and video messages itself; the others it re-encodes as contiguous chunks (a format-0
//! header, then format-3 continuations, [`Message::write_chunks`]) at the chunk size the
//! session believes, for `ServerSession::handle_input`. The session then never sees
//! interleaving, and needs no header state of its own because every message starts with a full
//! header. ([`Dechunker::push`] does both steps for a whole input.)
//!
//! It also bounds what a peer can make us hold: chunk sizes above [`MAX_CHUNK_SIZE`], messages
//! above [`DechunkLimits::max_message_bytes`], too many chunk streams or too many buffered bytes
//! are errors, and partial messages grow with the bytes that actually arrive, never with the
//! length a header declares.
//!
//! [`write_message_chunks`] is the single chunk encoder. The publisher uses it, and
//! [`Dechunker::push_messages`] on rml_rtmp's own output, when it interleaves chunks on purpose.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest chunk size a peer may set. The 24-bit message length field caps any message
/// below 16 MiB, so a larger chunk size can only be an attack or a bug (a 2 GiB one is the
/// classic probe).
pub const MAX_CHUNK_SIZE: u32 = 1 << 24;

/// Chunk size at the start of every RTMP connection (RTMP 1.0 §5.4.1).
pub const INITIAL_CHUNK_SIZE: u32 = 128;

/// Protocol control message: Set Chunk Size.
const TYPE_SET_CHUNK_SIZE: u8 = 1;
/// Protocol control message: Abort Message (drop the partial message on a chunk stream).
const TYPE_ABORT: u8 = 2;

/// A timestamp field holding this value means a 4-byte extended timestamp follows the header.
const EXTENDED_TIMESTAMP_MARKER: u32 = 0x00FF_FFFF;

/// Longest chunk header: 3-byte basic header, 11-byte message header, 4-byte extended timestamp.
const MAX_HEADER_BYTES: usize = 18;

/// What a peer may make one connection hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DechunkLimits {
    /// Largest accepted message, in bytes. Default 8 MiB: an H.264 keyframe of a 4K stream at
    /// broadcast bitrates stays well below it.
    pub max_message_bytes: u32,
    /// Most chunk streams a peer may use. Default 64; encoders use fewer than ten.
    pub max_chunk_streams: usize,
    /// Most bytes held in partial messages across all chunk streams. Default 16 MiB, room for
    /// an interleaved audio message next to the largest video message.
    pub max_buffered_bytes: usize,
}

impl Default for DechunkLimits {
    fn default() -> Self {
        DechunkLimits {
            max_message_bytes: 8 * 1024 * 1024,
            max_chunk_streams: 64,
            max_buffered_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why the peer's chunk stream cannot be reassembled. Every variant is fatal for the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DechunkError {
    /// A Set Chunk Size message carried 0, a value with the reserved top bit set, or more than
    /// [`MAX_CHUNK_SIZE`].
    #[error("peer set chunk size {size}; accepted sizes are 1..={MAX_CHUNK_SIZE}")]
    InvalidChunkSize {
        /// The size the peer asked for.
        size: u32,
    },
    /// A Set Chunk Size or Abort message whose payload is not 4 bytes.
    #[error("control message type {type_id} has {length} bytes, expected 4")]
    MalformedControlMessage {
        /// The message type id.
        type_id: u8,
        /// The payload length the header declared.
        length: u32,
    },
    /// A message header declared a length above [`DechunkLimits::max_message_bytes`].
    #[error("message of {length} bytes on chunk stream {csid} exceeds the {max}-byte limit")]
    MessageTooLarge {
        /// The chunk stream carrying the message.
        csid: u32,
        /// The declared message length.
        length: u32,
        /// The configured limit.
        max: u32,
    },
    /// The peer used more chunk streams than [`DechunkLimits::max_chunk_streams`].
    #[error("peer opened more than {max} chunk streams")]
    TooManyChunkStreams {
        /// The configured limit.
        max: usize,
    },
    /// Partial messages would hold more than [`DechunkLimits::max_buffered_bytes`].
    #[error("partial messages would hold {bytes} bytes, over the {max}-byte limit")]
    BufferLimit {
        /// Bytes that would be buffered.
        bytes: usize,
        /// The configured limit.
        max: usize,
    },
    /// A format 1, 2 or 3 header on a chunk stream that never had a format 0 header.
    #[error("chunk stream {csid} sent a compressed header before any full header")]
    NoPreviousHeader {
        /// The chunk stream.
        csid: u32,
    },
    /// A format 0, 1 or 2 header (which starts a message) arrived while the chunk stream's
    /// previous message was incomplete.
    #[error("chunk stream {csid} started a new message with {received} of {length} bytes of the previous one received")]
    InterruptedMessage {
        /// The chunk stream.
        csid: u32,
        /// Bytes of the interrupted message received so far.
        received: usize,
        /// Its declared length.
        length: u32,
    },
}

/// The fields of one RTMP message that its chunk headers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Absolute timestamp in milliseconds (wraps at 2^32).
    pub timestamp: u32,
    /// Message type id (8 = audio, 9 = video, 20 = AMF0 command, ...).
    pub type_id: u8,
    /// Message stream id.
    pub message_stream_id: u32,
}

/// One reassembled message and how to put it back on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The chunk stream it arrived on.
    pub csid: u32,
    /// Its timestamp, type and message stream id.
    pub header: MessageHeader,
    /// The complete payload.
    pub payload: Bytes,
    /// The chunk size the receiver expects for this message: the size in force before it, so
    /// a Set Chunk Size message itself still goes out at the old size.
    pub chunk_size: u32,
}

impl Message {
    /// Encodes the message contiguously with [`write_message_chunks`].
    pub fn write_chunks(&self, emit: impl FnMut(&[u8], &[u8])) {
        write_message_chunks(
            self.csid,
            &self.header,
            &self.payload,
            self.chunk_size as usize,
            emit,
        );
    }
}

/// Encodes `payload` as one message on chunk stream `csid`: a format-0 chunk followed by
/// format-3 continuation chunks of at most `chunk_size` payload bytes each, calling `emit` with
/// each chunk's header and payload in wire order.
///
/// Continuation chunks repeat the extended timestamp when the message has one, as RTMP 1.0
/// §5.3.1.3 asks and rml_rtmp, FFmpeg and OBS expect. `csid` must be in 2..=65599 and
/// `chunk_size` at least 1; the 24-bit length field limits `payload` to 16 MiB - 1.
pub fn write_message_chunks(
    csid: u32,
    header: &MessageHeader,
    payload: &[u8],
    chunk_size: usize,
    mut emit: impl FnMut(&[u8], &[u8]),
) {
    let extended = header.timestamp >= EXTENDED_TIMESTAMP_MARKER;
    let mut first = [0u8; MAX_HEADER_BYTES];
    let mut len = write_basic_header(&mut first, 0, csid);
    let field = header.timestamp.min(EXTENDED_TIMESTAMP_MARKER);
    first[len..len + 3].copy_from_slice(&field.to_be_bytes()[1..]);
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    first[len + 3..len + 6].copy_from_slice(&length.to_be_bytes()[1..]);
    first[len + 6] = header.type_id;
    // The message stream id is the one little-endian field in RTMP (§5.3.1.2.1).
    first[len + 7..len + 11].copy_from_slice(&header.message_stream_id.to_le_bytes());
    len += 11;
    if extended {
        first[len..len + 4].copy_from_slice(&header.timestamp.to_be_bytes());
        len += 4;
    }

    let mut continuation = [0u8; 7];
    let mut continuation_len = write_basic_header(&mut continuation, 3, csid);
    if extended {
        continuation[continuation_len..continuation_len + 4]
            .copy_from_slice(&header.timestamp.to_be_bytes());
        continuation_len += 4;
    }

    let chunk_size = chunk_size.max(1);
    let mut chunks = payload.chunks(chunk_size);
    emit(&first[..len], chunks.next().unwrap_or_default());
    for chunk in chunks {
        emit(&continuation[..continuation_len], chunk);
    }
}

/// Writes the 1-, 2- or 3-byte basic header (RTMP 1.0 §5.3.1.1) and returns its length.
fn write_basic_header(out: &mut [u8], fmt: u8, csid: u32) -> usize {
    let fmt = fmt << 6;
    match csid {
        2..=63 => {
            out[0] = fmt | csid as u8;
            1
        }
        64..=319 => {
            out[0] = fmt;
            out[1] = (csid - 64) as u8;
            2
        }
        _ => {
            let id = (csid.saturating_sub(64)).min(u32::from(u16::MAX)) as u16;
            out[0] = fmt | 1;
            out[1..3].copy_from_slice(&id.to_le_bytes());
            3
        }
    }
}

/// Header state of one chunk stream, as later compressed headers inherit it.
#[derive(Debug)]
struct ChunkStream {
    /// Absolute timestamp of the current (or last) message.
    timestamp: u32,
    /// What a format-3 header that starts a new message adds to `timestamp`: the last
    /// timestamp field, which after a format-0 header is the absolute value (rml_rtmp and
    /// FFmpeg read it that way, so we must too).
    delta: u32,
    /// The last format 0/1/2 header used an extended timestamp, so format-3 chunks carry one.
    extended: bool,
    message_length: u32,
    type_id: u8,
    message_stream_id: u32,
    /// The message being reassembled; empty between messages.
    partial: BytesMut,
}

/// Where the parser is in the input.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Expecting a chunk header.
    Header,
    /// Inside a chunk's payload: `remaining` more bytes belong to the message on `csid`.
    Payload { csid: u32, remaining: usize },
}

/// Reassembles interleaved RTMP chunk streams into contiguous messages; see the module docs.
#[derive(Debug)]
pub struct Dechunker {
    limits: DechunkLimits,
    /// The peer's current chunk size. Our output uses the same size: the session switches to
    /// a new size when it processes the Set Chunk Size message we forward, and every message we
    /// emit after that one is chunked at the new size.
    chunk_size: u32,
    streams: HashMap<u32, ChunkStream>,
    /// Input not yet parsed: at most one incomplete chunk header.
    pending: BytesMut,
    state: ReadState,
    /// Bytes held across all `ChunkStream::partial` buffers.
    buffered: usize,
}

impl Default for Dechunker {
    fn default() -> Self {
        Dechunker::new()
    }
}

/// A parsed chunk header.
struct ChunkHeader {
    csid: u32,
    /// Header bytes consumed, including a recognised extended timestamp.
    length: usize,
}

impl Dechunker {
    /// A dechunker for a fresh connection, with [`DechunkLimits::default`].
    pub fn new() -> Self {
        Dechunker::with_limits(DechunkLimits::default())
    }

    /// A dechunker for a fresh connection with explicit limits.
    pub fn with_limits(limits: DechunkLimits) -> Self {
        Dechunker {
            limits,
            chunk_size: INITIAL_CHUNK_SIZE,
            streams: HashMap::new(),
            pending: BytesMut::new(),
            state: ReadState::Header,
            buffered: 0,
        }
    }

    /// The peer's current chunk size, which is also the size of the chunks [`push`] emits.
    ///
    /// [`push`]: Dechunker::push
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Feed raw bytes read from the socket *after the handshake*; returns bytes to hand to
    /// `ServerSession::handle_input` in which every message's chunks are contiguous.
    ///
    /// The output holds the messages the input completed, in the order they completed; bytes
    /// of incomplete chunks and messages are kept for the next call. After an error the
    /// connection's chunk stream is unrecoverable and must be closed.
    pub fn push(&mut self, input: &[u8]) -> Result<Bytes, DechunkError> {
        // Re-chunking adds at most a few header bytes per chunk to what came in.
        let mut out = BytesMut::with_capacity(input.len() + MAX_HEADER_BYTES);
        for message in self.push_messages(input)? {
            message.write_chunks(|head, body| {
                out.put_slice(head);
                out.put_slice(body);
            });
        }
        Ok(out.freeze())
    }

    /// Like [`push`], but returns the completed messages themselves.
    ///
    /// The publisher runs rml_rtmp's own output through this to get messages it can chunk and
    /// interleave itself.
    ///
    /// [`push`]: Dechunker::push
    pub fn push_messages(&mut self, input: &[u8]) -> Result<Vec<Message>, DechunkError> {
        self.pending.extend_from_slice(input);
        let mut out = Vec::new();
        loop {
            match self.state {
                ReadState::Header => match self.parse_header()? {
                    Some(header) => {
                        self.pending.advance(header.length);
                        self.start_chunk(header.csid, &mut out)?;
                    }
                    None => break,
                },
                ReadState::Payload { csid, remaining } => {
                    if self.pending.is_empty() {
                        break;
                    }
                    let take = remaining.min(self.pending.len());
                    let new_total = self.buffered + take;
                    if new_total > self.limits.max_buffered_bytes {
                        return Err(DechunkError::BufferLimit {
                            bytes: new_total,
                            max: self.limits.max_buffered_bytes,
                        });
                    }
                    let stream = self
                        .streams
                        .get_mut(&csid)
                        .ok_or(DechunkError::NoPreviousHeader { csid })?;
                    stream.partial.extend_from_slice(&self.pending[..take]);
                    self.pending.advance(take);
                    self.buffered = new_total;
                    if take == remaining {
                        self.finish_chunk(csid, &mut out)?;
                    } else {
                        self.state = ReadState::Payload {
                            csid,
                            remaining: remaining - take,
                        };
                    }
                }
            }
        }
        Ok(out)
    }

    fn stream_mut(&mut self, csid: u32) -> Result<&mut ChunkStream, DechunkError> {
        self.streams
            .get_mut(&csid)
            .ok_or(DechunkError::NoPreviousHeader { csid })
    }

    /// Parses the chunk header at the front of `pending` and updates its chunk stream's header
    /// state. `None` when `pending` does not yet hold the whole header; nothing is changed then,
    /// so the same bytes parse again once more arrive.
    fn parse_header(&mut self) -> Result<Option<ChunkHeader>, DechunkError> {
        let buf = &self.pending[..];
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let fmt = first >> 6;
        let (csid, mut pos) = match first & 0x3F {
            0 => match buf.get(1) {
                Some(&b) => (u32::from(b) + 64, 2),
                None => return Ok(None),
            },
            1 => match buf.get(1..3) {
                Some(b) => (u32::from(u16::from_le_bytes([b[0], b[1]])) + 64, 3),
                None => return Ok(None),
            },
            id => (u32::from(id), 1),
        };
        let message_header_len = [11, 7, 3, 0][usize::from(fmt)];
        let Some(fields) = buf.get(pos..pos + message_header_len) else {
            return Ok(None);
        };
        pos += message_header_len;

        if fmt == 3 {
            let Some(stream) = self.streams.get(&csid) else {
                return Err(DechunkError::NoPreviousHeader { csid });
            };
            let starts_message = stream.partial.is_empty();
            let mut delta = stream.delta;
            if stream.extended {
                let Some(ext) = buf.get(pos..pos + 4) else {
                    return Ok(None);
                };
                let ext = read_u32(ext);
                if starts_message {
                    // A format-3 header that starts a message always carries the extended
                    // delta, and it is the authoritative one.
                    delta = ext;
                    pos += 4;
                } else if ext == stream.delta {
                    // Continuations repeat the last header's extended field (`delta` holds
                    // it, the absolute timestamp after a format-0 header).
                    pos += 4;
                }
                // Otherwise the encoder omitted the extended timestamp on a continuation
                // chunk, as some pre-2012 encoders do, and the 4 bytes are payload. Like
                // SRS we tell the two apart by comparing with the expected value.
            }
            if starts_message {
                let stream = self.stream_mut(csid)?;
                stream.timestamp = stream.timestamp.wrapping_add(delta);
                stream.delta = delta;
            }
            return Ok(Some(ChunkHeader { csid, length: pos }));
        }

        let field = read_u24(&fields[0..3]);
        let extended = field == EXTENDED_TIMESTAMP_MARKER;
        let value = if extended {
            let Some(ext) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            read_u32(ext)
        } else {
            field
        };
        let length_and_type = (fmt <= 1).then(|| (read_u24(&fields[3..6]), fields[6]));
        let message_stream_id = (fmt == 0).then(|| read_u32_le(&fields[7..11]));

        if let Some(stream) = self.streams.get(&csid) {
            if !stream.partial.is_empty() {
                return Err(DechunkError::InterruptedMessage {
                    csid,
                    received: stream.partial.len(),
                    length: stream.message_length,
                });
            }
        } else if fmt != 0 {
            return Err(DechunkError::NoPreviousHeader { csid });
        } else if self.streams.len() >= self.limits.max_chunk_streams {
            return Err(DechunkError::TooManyChunkStreams {
                max: self.limits.max_chunk_streams,
            });
        }
        if let Some((length, _)) = length_and_type {
            if length > self.limits.max_message_bytes {
                return Err(DechunkError::MessageTooLarge {
                    csid,
                    length,
                    max: self.limits.max_message_bytes,
                });
            }
        }

        let stream = self.streams.entry(csid).or_insert_with(|| ChunkStream {
            timestamp: 0,
            delta: 0,
            extended: false,
            message_length: 0,
            type_id: 0,
            message_stream_id: 0,
            partial: BytesMut::new(),
        });
        stream.timestamp = if fmt == 0 {
            value
        } else {
            stream.timestamp.wrapping_add(value)
        };
        stream.delta = value;
        stream.extended = extended;
        if let Some((length, type_id)) = length_and_type {
            stream.message_length = length;
            stream.type_id = type_id;
        }
        if let Some(id) = message_stream_id {
            stream.message_stream_id = id;
        }
        Ok(Some(ChunkHeader { csid, length: pos }))
    }

    /// A header for `csid` was consumed: work out how many payload bytes its chunk carries.
    fn start_chunk(&mut self, csid: u32, out: &mut Vec<Message>) -> Result<(), DechunkError> {
        let chunk_size = self.chunk_size as usize;
        let stream = self.stream_mut(csid)?;
        let outstanding = (stream.message_length as usize).saturating_sub(stream.partial.len());
        let remaining = outstanding.min(chunk_size);
        if remaining == 0 {
            // A zero-length message is complete with its header.
            self.finish_chunk(csid, out)
        } else {
            self.state = ReadState::Payload { csid, remaining };
            Ok(())
        }
    }

    /// The chunk on `csid` is complete; if its message is too, act on it or emit it.
    fn finish_chunk(&mut self, csid: u32, out: &mut Vec<Message>) -> Result<(), DechunkError> {
        self.state = ReadState::Header;
        let chunk_size = self.chunk_size;
        let stream = self.stream_mut(csid)?;
        if stream.partial.len() < stream.message_length as usize {
            return Ok(());
        }
        let payload = stream.partial.split().freeze();
        let header = MessageHeader {
            timestamp: stream.timestamp,
            type_id: stream.type_id,
            message_stream_id: stream.message_stream_id,
        };
        self.buffered -= payload.len();

        match header.type_id {
            TYPE_SET_CHUNK_SIZE => {
                let size = control_value(&header, &payload)?;
                if size == 0 || size > MAX_CHUNK_SIZE {
                    return Err(DechunkError::InvalidChunkSize { size });
                }
                // Emitted at the old size; the session applies the new one when it reads it.
                out.push(Message {
                    csid,
                    header,
                    payload,
                    chunk_size,
                });
                self.chunk_size = size;
            }
            TYPE_ABORT => {
                // Abort names a chunk stream of the wire; the session's chunk streams never
                // hold partial messages, so the message ends here.
                let aborted = control_value(&header, &payload)?;
                if let Some(stream) = self.streams.get_mut(&aborted) {
                    self.buffered -= stream.partial.len();
                    stream.partial.clear();
                }
            }
            _ => out.push(Message {
                csid,
                header,
                payload,
                chunk_size,
            }),
        }
        Ok(())
    }
}

/// The 4-byte big-endian value of a Set Chunk Size or Abort message.
fn control_value(header: &MessageHeader, payload: &[u8]) -> Result<u32, DechunkError> {
    match payload.try_into() {
        Ok(bytes) => Ok(u32::from_be_bytes(bytes)),
        Err(_) => Err(DechunkError::MalformedControlMessage {
            type_id: header.type_id,
            length: payload.len() as u32,
        }),
    }
}

fn read_u24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn read_u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::{ChunkDeserializationError, ChunkDeserializer, ChunkSerializer};
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::time::RtmpTimestamp;

    const VIDEO: u8 = 9;
    const AUDIO: u8 = 8;
    const COMMAND: u8 = 20;

    fn message(type_id: u8, timestamp: u32, len: usize) -> MessagePayload {
        MessagePayload {
            timestamp: RtmpTimestamp::new(timestamp),
            type_id,
            message_stream_id: 1,
            data: (0..len)
                .map(|i| (i as u32 ^ timestamp ^ u32::from(type_id)) as u8)
                .collect::<Vec<_>>()
                .into(),
        }
    }

    fn set_chunk_size(size: u32) -> MessagePayload {
        MessagePayload {
            timestamp: RtmpTimestamp::new(0),
            type_id: TYPE_SET_CHUNK_SIZE,
            message_stream_id: 0,
            data: size.to_be_bytes().to_vec().into(),
        }
    }

    /// Decodes `bytes` with rml_rtmp's deserializer the way `ServerSession::handle_input` does,
    /// switching chunk size when a Set Chunk Size message goes by.
    fn decode_with_rml(bytes: &[u8]) -> Result<Vec<MessagePayload>, ChunkDeserializationError> {
        let mut deserializer = ChunkDeserializer::new();
        let mut messages = Vec::new();
        let mut input = bytes;
        while let Some(m) = deserializer.get_next_message(input)? {
            if m.type_id == TYPE_SET_CHUNK_SIZE {
                let size = u32::from_be_bytes([m.data[0], m.data[1], m.data[2], m.data[3]]);
                deserializer.set_max_chunk_size(size as usize)?;
            }
            messages.push(m);
            input = &[];
        }
        Ok(messages)
    }

    /// Serializes with rml_rtmp's own serializer: contiguous messages with compressed headers.
    fn serialize_with_rml(messages: &[MessagePayload]) -> Vec<u8> {
        let mut serializer = ChunkSerializer::new();
        let mut wire = Vec::new();
        for m in messages {
            let packet = if m.type_id == TYPE_SET_CHUNK_SIZE {
                let size = u32::from_be_bytes([m.data[0], m.data[1], m.data[2], m.data[3]]);
                serializer.set_max_chunk_size(size, m.timestamp).unwrap()
            } else {
                serializer.serialize(m, false, false).unwrap()
            };
            wire.extend_from_slice(&packet.bytes);
        }
        wire
    }

    /// The chunks of one message as separate wire pieces.
    fn chunks_of(csid: u32, m: &MessagePayload, chunk_size: usize) -> Vec<Vec<u8>> {
        let header = MessageHeader {
            timestamp: m.timestamp.value,
            type_id: m.type_id,
            message_stream_id: m.message_stream_id,
        };
        let mut chunks = Vec::new();
        write_message_chunks(csid, &header, &m.data, chunk_size, |head, body| {
            chunks.push([head, body].concat());
        });
        chunks
    }

    /// Video on chunk stream 6 and audio on chunk stream 4, chunks alternating mid-message the
    /// way OBS and FFmpeg 6.1 send them.
    fn interleave(video: &MessagePayload, audio: &MessagePayload, chunk_size: usize) -> Vec<u8> {
        let mut video_chunks = chunks_of(6, video, chunk_size).into_iter();
        let mut audio_chunks = chunks_of(4, audio, chunk_size).into_iter();
        let mut wire = Vec::new();
        loop {
            let (v, a) = (video_chunks.next(), audio_chunks.next());
            if v.is_none() && a.is_none() {
                return wire;
            }
            wire.extend(v.unwrap_or_default());
            wire.extend(a.unwrap_or_default());
        }
    }

    fn dechunk(wire: &[u8]) -> Result<Bytes, DechunkError> {
        Dechunker::new().push(wire)
    }

    #[test]
    fn contiguous_input_decodes_to_the_same_messages() {
        let messages = vec![
            message(COMMAND, 0, 180),
            message(VIDEO, 0, 1000),
            message(AUDIO, 0, 300),
            // Same length and delta: rml_rtmp sends these with format 2 and then format 3
            // headers that start a new message.
            message(AUDIO, 23, 300),
            message(AUDIO, 46, 300),
            message(AUDIO, 69, 300),
            set_chunk_size(4096),
            message(VIDEO, 33, 10_000),
            message(VIDEO, 66, 10_000),
            message(VIDEO, 100, 3),
        ];
        let wire = serialize_with_rml(&messages);
        assert_eq!(decode_with_rml(&wire).unwrap(), messages);

        let out = dechunk(&wire).unwrap();
        assert_eq!(decode_with_rml(&out).unwrap(), messages);
    }

    #[test]
    fn interleaved_audio_and_video_chunks_come_out_reassembled() {
        let video = message(VIDEO, 1000, 1000);
        let audio = message(AUDIO, 1010, 300);
        let wire = interleave(&video, &audio, 128);

        let out = dechunk(&wire).unwrap();

        // The audio message completes first on the wire, so it comes out first; both decode
        // exactly as they do when sent one after the other.
        let contiguous = [chunks_of(4, &audio, 128), chunks_of(6, &video, 128)].concat();
        assert_eq!(decode_with_rml(&out).unwrap(), vec![audio, video]);
        assert_eq!(
            decode_with_rml(&out).unwrap(),
            decode_with_rml(&contiguous.concat()).unwrap()
        );
    }

    #[test]
    fn interleaved_input_breaks_rml_rtmp_without_the_dechunker() {
        let video = message(VIDEO, 1000, 1000);
        let audio = message(AUDIO, 1010, 300);
        let wire = interleave(&video, &audio, 128);

        // rml_rtmp 0.8 appends the audio chunk to the video frame's buffer: it either fails,
        // panics on its length arithmetic, or returns corrupted messages.
        let decoded = std::panic::catch_unwind(|| decode_with_rml(&wire));
        let intact = matches!(&decoded, Ok(Ok(m)) if *m == vec![audio, video]);
        assert!(!intact, "rml_rtmp decoded interleaved chunks: {decoded:?}");
    }

    #[test]
    fn byte_at_a_time_feeding_gives_the_same_output() {
        let mut wire = serialize_with_rml(&[message(COMMAND, 0, 200), set_chunk_size(300)]);
        wire.extend(interleave(
            &message(VIDEO, 0x00FF_FFF0, 2000),
            &message(AUDIO, 0x0100_0005, 700),
            300,
        ));
        let whole = dechunk(&wire).unwrap();

        let mut dechunker = Dechunker::new();
        let mut pieces = Vec::new();
        for byte in &wire {
            pieces.extend_from_slice(&dechunker.push(&[*byte]).unwrap());
        }
        assert_eq!(pieces, whole.to_vec());
        assert_eq!(decode_with_rml(&whole).unwrap().len(), 4);
    }

    #[test]
    fn extended_timestamps_survive_reassembly() {
        let messages = vec![
            message(VIDEO, 0x00FF_FFFF, 500),
            message(VIDEO, 0x0100_0020, 500),
            // Same delta again: a format-3 header starting a message with an extended field.
            message(VIDEO, 0x0200_0041, 500),
            message(VIDEO, 0x0300_0062, 500),
            message(AUDIO, 0xFFFF_FFF0, 200),
        ];
        let wire = serialize_with_rml(&messages);
        let out = dechunk(&wire).unwrap();
        assert_eq!(decode_with_rml(&out).unwrap(), messages);

        let video = message(VIDEO, 0x1234_5678, 700);
        let audio = message(AUDIO, 0x1234_5680, 400);
        let out = dechunk(&interleave(&video, &audio, 128)).unwrap();
        assert_eq!(decode_with_rml(&out).unwrap(), vec![audio, video]);
    }

    #[test]
    fn continuation_chunks_that_omit_the_extended_timestamp_are_accepted() {
        let video = message(VIDEO, 0x0200_0000, 300);
        let mut wire = Vec::new();
        for (i, chunk) in chunks_of(6, &video, 128).into_iter().enumerate() {
            if i == 0 {
                wire.extend(chunk);
            } else {
                // Basic header, then payload without the 4-byte extended timestamp.
                wire.push(chunk[0]);
                wire.extend(&chunk[5..]);
            }
        }
        let out = dechunk(&wire).unwrap();
        assert_eq!(decode_with_rml(&out).unwrap(), vec![video]);
    }

    #[test]
    fn compressed_headers_inherit_per_chunk_stream_state() {
        // Hand-built: format 0 on both streams, then a format-1 video header, a format-2
        // audio header and a format-3 video header that starts a new message, interleaved.
        let mut wire = Vec::new();
        wire.extend(chunks_of(6, &message(VIDEO, 100, 10), 128).concat());
        wire.extend(chunks_of(4, &message(AUDIO, 90, 5), 128).concat());
        let video2 = message(VIDEO, 140, 6);
        wire.extend([0x46, 0, 0, 40, 0, 0, 6, VIDEO]);
        wire.extend(&video2.data[..]);
        let audio2 = message(AUDIO, 113, 5);
        wire.extend([0x84, 0, 0, 23]);
        wire.extend(&audio2.data[..]);
        let video3 = message(VIDEO, 180, 6);
        wire.push(0xC6);
        wire.extend(&video3.data[..]);

        let decoded = decode_with_rml(&dechunk(&wire).unwrap()).unwrap();
        let timestamps: Vec<_> = decoded.iter().map(|m| m.timestamp.value).collect();
        assert_eq!(timestamps, vec![100, 90, 140, 113, 180]);
        assert_eq!(decoded[2], video2);
        assert_eq!(decoded[3], audio2);
        assert_eq!(decoded[4], video3);
    }

    #[test]
    fn two_byte_and_three_byte_chunk_stream_ids_round_trip() {
        let a = message(VIDEO, 5, 300);
        let b = message(AUDIO, 6, 300);
        let mut wire = chunks_of(100, &a, 128).concat();
        wire.extend(chunks_of(1000, &b, 128).concat());
        let decoded = decode_with_rml(&dechunk(&wire).unwrap()).unwrap();
        assert_eq!(decoded, vec![a, b]);
    }

    #[test]
    fn chunk_size_of_2_gib_is_rejected() {
        let wire = chunks_of(2, &set_chunk_size(0x8000_0000), 128).concat();
        assert_eq!(
            dechunk(&wire),
            Err(DechunkError::InvalidChunkSize { size: 0x8000_0000 })
        );
    }

    #[test]
    fn chunk_sizes_of_zero_and_above_2_pow_24_are_rejected() {
        for size in [0, MAX_CHUNK_SIZE + 1] {
            let wire = chunks_of(2, &set_chunk_size(size), 128).concat();
            assert_eq!(dechunk(&wire), Err(DechunkError::InvalidChunkSize { size }));
        }
        let wire = serialize_with_rml(&[set_chunk_size(MAX_CHUNK_SIZE)]);
        let mut dechunker = Dechunker::new();
        dechunker.push(&wire).unwrap();
        assert_eq!(dechunker.chunk_size(), MAX_CHUNK_SIZE);
    }

    #[test]
    fn message_over_the_limit_is_rejected_from_its_header() {
        let limits = DechunkLimits {
            max_message_bytes: 1000,
            ..DechunkLimits::default()
        };
        let wire = chunks_of(6, &message(VIDEO, 0, 1001), 128).concat();
        // Only the header is fed: nothing of the declared length is buffered.
        assert_eq!(
            Dechunker::with_limits(limits).push(&wire[..12]),
            Err(DechunkError::MessageTooLarge {
                csid: 6,
                length: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn buffered_partial_messages_are_capped() {
        let limits = DechunkLimits {
            max_buffered_bytes: 300,
            ..DechunkLimits::default()
        };
        let wire = interleave(&message(VIDEO, 0, 1000), &message(AUDIO, 0, 1000), 128);
        assert!(matches!(
            Dechunker::with_limits(limits).push(&wire),
            Err(DechunkError::BufferLimit { max: 300, .. })
        ));
    }

    #[test]
    fn too_many_chunk_streams_are_rejected() {
        let limits = DechunkLimits {
            max_chunk_streams: 3,
            ..DechunkLimits::default()
        };
        let mut dechunker = Dechunker::with_limits(limits);
        for csid in 2..5 {
            dechunker
                .push(&chunks_of(csid, &message(AUDIO, 0, 4), 128).concat())
                .unwrap();
        }
        assert_eq!(
            dechunker.push(&chunks_of(5, &message(AUDIO, 0, 4), 128).concat()),
            Err(DechunkError::TooManyChunkStreams { max: 3 })
        );
    }

    #[test]
    fn compressed_header_on_an_unknown_chunk_stream_is_rejected() {
        assert_eq!(
            dechunk(&[0xC7, 1, 2, 3]),
            Err(DechunkError::NoPreviousHeader { csid: 7 })
        );
    }

    #[test]
    fn new_message_header_mid_message_is_rejected() {
        let mut wire = chunks_of(6, &message(VIDEO, 0, 300), 128).remove(0);
        wire.extend(chunks_of(6, &message(VIDEO, 33, 10), 128).concat());
        assert_eq!(
            dechunk(&wire),
            Err(DechunkError::InterruptedMessage {
                csid: 6,
                received: 128,
                length: 300
            })
        );
    }

    #[test]
    fn corrupted_input_errors_or_stays_bounded_and_never_panics() {
        let limits = DechunkLimits {
            max_message_bytes: 64 * 1024,
            max_chunk_streams: 8,
            max_buffered_bytes: 128 * 1024,
        };
        let mut valid = serialize_with_rml(&[message(COMMAND, 0, 300), message(VIDEO, 0, 900)]);
        valid.extend(interleave(
            &message(VIDEO, 40, 1500),
            &message(AUDIO, 45, 400),
            128,
        ));
        let mut seed = 0x9E37_79B9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize
        };
        let (mut errors, mut completed) = (0, 0);
        for _ in 0..2000 {
            let mut wire = valid.clone();
            for _ in 0..1 + next() % 3 {
                let at = next() % wire.len();
                wire[at] = next() as u8;
            }
            let mut dechunker = Dechunker::with_limits(limits);
            let mut rest = &wire[..];
            let mut failed = false;
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at((1 + next() % 200).min(rest.len()));
                rest = tail;
                failed = dechunker.push(piece).is_err();
                if failed {
                    break;
                }
                assert!(dechunker.pending.len() <= MAX_HEADER_BYTES + 4);
                assert!(dechunker.buffered <= limits.max_buffered_bytes);
                assert!(dechunker.streams.len() <= limits.max_chunk_streams);
            }
            if failed {
                errors += 1;
            } else {
                completed += 1;
            }
        }
        // Corruption both broke parsing and slipped through as different payload or header
        // values, so both paths ran.
        assert!(
            errors > 0 && completed > 0,
            "{errors} errors, {completed} completed"
        );
    }

    #[test]
    fn abort_discards_the_partial_message() {
        let mut wire = chunks_of(6, &message(VIDEO, 0, 300), 128).remove(0);
        let abort = MessagePayload {
            timestamp: RtmpTimestamp::new(0),
            type_id: TYPE_ABORT,
            message_stream_id: 0,
            data: 6u32.to_be_bytes().to_vec().into(),
        };
        wire.extend(chunks_of(2, &abort, 128).concat());
        let video = message(VIDEO, 40, 200);
        wire.extend(chunks_of(6, &video, 128).concat());

        let decoded = decode_with_rml(&dechunk(&wire).unwrap()).unwrap();
        assert_eq!(decoded, vec![video]);
    }
}
