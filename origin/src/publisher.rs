//! Built-in RTMP publisher: loops an FLV clip to an RTMP server in real time.
//!
//! `origin publish`, the demo and the integration tests use it, so none of them needs ffmpeg to
//! produce a stream. It follows the steps of an encoder:
//!
//! 1. TCP connect and the RTMP handshake (`rml_rtmp::handshake`);
//! 2. `connect` → `createStream` → `publish` through rml_rtmp's `ClientSession`;
//! 3. onMetaData and the AVC/AAC sequence headers from the clip;
//! 4. the clip's audio and video tags, each sent when the wall clock reaches its timestamp,
//!    looping with timestamps offset by the clip duration so they stay continuous (a clip whose
//!    length is a multiple of the keyframe interval keeps keyframes on one grid forever).
//!
//! With [`PublishOptions::interleave_chunks`] it sends the way OBS 30+ and FFmpeg 6.1+ do:
//! 128-byte chunks, with each video message's chunks interleaved mid-message with the next
//! audio message's. rml_rtmp's serializer only writes whole messages, so in that mode its
//! output is reassembled with [`Dechunker::push_messages`] and re-chunked with
//! [`write_message_chunks`](crate::rtmp::dechunk::write_message_chunks), the same encoder the
//! server side uses.
//!
//! [`Publisher`] is the connected session underneath [`publish`]; tests use it directly to send
//! hand-made (including broken) media.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::rml_amf0::{self, Amf0Value};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionError, ClientSessionEvent,
    ClientSessionResult, PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, Instrument};

use crate::media::flv::{TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use crate::media::{FlvReader, MediaError};
use crate::rtmp::dechunk::{DechunkError, Dechunker, Message};

/// The bundled test clip: 10 s of test pattern and tone, H.264 + AAC, a keyframe every 2 s
/// (see `assets/make-testclip.sh`).
pub const BUNDLED_CLIP: &[u8] = include_bytes!("../assets/testclip.flv");

/// Default RTMP port when the URL names none.
pub const DEFAULT_RTMP_PORT: u16 = 1935;

/// How long the server may take to answer each step of connect/publish, and to accept the TCP
/// connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunk size in interleaving mode: the RTMP default, which is what makes OBS and FFmpeg split
/// a video frame into many chunks that audio can slip between.
const INTERLEAVED_CHUNK_SIZE: u32 = 128;

/// Chunk size otherwise; rml_rtmp's default, large enough that most audio frames fit one chunk.
const CONTIGUOUS_CHUNK_SIZE: u32 = 4096;

/// A future that resolves when publishing should stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What to publish, where, and for how long.
pub struct PublishOptions {
    /// `rtmp://host[:port]/app/stream`; the port defaults to 1935 and the stream name may carry
    /// a query string (`stream?key=...`), which is sent as part of the publish name.
    pub url: String,
    /// An FLV file (H.264 + AAC) to loop; `None` publishes [`BUNDLED_CLIP`].
    pub clip: Option<PathBuf>,
    /// How many times to play the clip; `None` loops until `shutdown` resolves or the server
    /// ends the connection.
    pub loops: Option<u32>,
    /// Send 128-byte chunks with audio interleaved inside video messages, as OBS 30+ and
    /// FFmpeg 6.1+ do. Default off.
    pub interleave_chunks: bool,
    /// Stops publishing (cleanly: `deleteStream`, then close) when it resolves; `None` never
    /// stops early.
    pub shutdown: Option<Shutdown>,
}

impl PublishOptions {
    /// Publishes the bundled clip to `url` forever, contiguous chunks.
    pub fn new(url: impl Into<String>) -> Self {
        PublishOptions {
            url: url.into(),
            clip: None,
            loops: None,
            interleave_chunks: false,
            shutdown: None,
        }
    }
}

impl std::fmt::Debug for PublishOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishOptions")
            .field("url", &self.url)
            .field("clip", &self.clip)
            .field("loops", &self.loops)
            .field("interleave_chunks", &self.interleave_chunks)
            .field("shutdown", &self.shutdown.is_some())
            .finish()
    }
}

/// What a publish sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Video messages sent, sequence headers included.
    pub video_frames: u64,
    /// Audio messages sent, sequence headers included.
    pub audio_frames: u64,
    /// Bytes written to the socket, handshake included.
    pub bytes_sent: u64,
    /// Complete passes over the clip.
    pub loops_completed: u64,
    /// The byte count of the server's last Acknowledgement (RTMP 1.0 §5.4.3; 0 before one).
    /// rml_rtmp's client asks for one every 2.5 MB.
    pub acknowledged_bytes: u32,
}

/// Why a publish failed, by stage.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The URL is not `rtmp://host[:port]/app/stream`.
    #[error("invalid RTMP URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The clip file could not be read.
    #[error("reading clip {path}: {source}")]
    ReadClip {
        /// The clip path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The clip is not an FLV file, or is truncated.
    #[error("reading FLV clip: {0}")]
    Flv(#[from] MediaError),
    /// The clip is an FLV file the publisher cannot loop.
    #[error("bad FLV clip: {0}")]
    BadClip(String),
    /// The TCP connection could not be made.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The I/O error (e.g. connection refused).
        source: std::io::Error,
    },
    /// The RTMP handshake failed.
    #[error("RTMP handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server refused the `connect` or `publish` command.
    #[error("server rejected {stage}: {code} {description}")]
    Rejected {
        /// `connect` or `publish`.
        stage: &'static str,
        /// The status code the server sent, e.g. `NetStream.Publish.BadName`.
        code: String,
        /// The server's description, if any.
        description: String,
    },
    /// The server closed the connection.
    #[error("server closed the connection during {stage}")]
    ConnectionClosed {
        /// What the publisher was doing.
        stage: &'static str,
    },
    /// The server did not answer in time.
    #[error("no answer from the server during {stage} within {RESPONSE_TIMEOUT:?}")]
    Timeout {
        /// What the publisher was waiting for.
        stage: &'static str,
    },
    /// Reading from or writing to the socket failed.
    #[error("socket I/O during {stage}: {source}")]
    Io {
        /// What the publisher was doing.
        stage: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rml_rtmp's client session failed (a malformed message from the server, or a state
    /// error).
    #[error("RTMP session: {0}")]
    Session(#[from] ClientSessionError),
    /// Re-chunking our own output for interleaving failed.
    #[error("re-chunking for interleaving: {0}")]
    Chunking(#[from] DechunkError),
}

/// A parsed `rtmp://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Application name (the first path segment).
    pub app: String,
    /// Stream name, with its query string if any.
    pub stream: String,
}

impl RtmpUrl {
    /// Parses `rtmp://host[:port]/app/stream[?query]`.
    pub fn parse(url: &str) -> Result<Self, PublishError> {
        let invalid = |reason| PublishError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("rtmp://")
            .ok_or_else(|| invalid("scheme must be rtmp://"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("missing /app/stream"))?;
        let (app, stream) = path
            .split_once('/')
            .ok_or_else(|| invalid("missing stream name after the app"))?;
        if app.is_empty() || stream.is_empty() {
            return Err(invalid("app and stream must not be empty"));
        }
        let port_of = |port: &str| port.parse().map_err(|_| invalid("port is not a number"));
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 literal: [addr] or [addr]:port.
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed [ in the host"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port_of(port)?),
                None if after.is_empty() => (host, DEFAULT_RTMP_PORT),
                None => return Err(invalid("junk after the IPv6 address")),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, port_of(port)?),
                None => (authority, DEFAULT_RTMP_PORT),
            }
        };
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        Ok(RtmpUrl {
            host: host.to_owned(),
            port,
            app: app.to_owned(),
            stream: stream.to_owned(),
        })
    }

    /// `host:port`, for connecting.
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `tcUrl` a `connect` command carries: the URL up to the app.
    fn tc_url(&self) -> String {
        format!("rtmp://{}/{}", self.addr(), self.app)
    }
}

/// Publishes a clip per `opts` until the loops are done, `shutdown` resolves or an error.
pub async fn publish(opts: PublishOptions) -> Result<PublishStats, PublishError> {
    let url = RtmpUrl::parse(&opts.url)?;
    let clip = match &opts.clip {
        Some(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|source| PublishError::ReadClip {
                    path: path.clone(),
                    source,
                })?;
            Clip::parse(bytes.into())?
        }
        None => Clip::bundled()?,
    };
    let span = tracing::info_span!(
        "publish",
        addr = %url.addr(),
        app = %url.app,
        stream = %url.stream,
        interleave = opts.interleave_chunks,
    );
    let mut shutdown = opts
        .shutdown
        .unwrap_or_else(|| Box::pin(std::future::pending()));
    let loops = opts.loops;
    let interleave = opts.interleave_chunks;
    async move {
        let mut publisher = Publisher::connect(&url, interleave).await?;
        info!(duration_ms = clip.duration_ms, "publishing");
        publisher.send_metadata(&clip.metadata).await?;
        if let Some(config) = &clip.video_config {
            publisher.send_video(0, config.clone()).await?;
        }
        if let Some(config) = &clip.audio_config {
            publisher.send_audio(0, config.clone()).await?;
        }
        let start = Instant::now();
        let mut loop_index: u64 = 0;
        'play: while loops.is_none_or(|n| loop_index < u64::from(n)) {
            let offset = loop_index * clip.duration_ms;
            let mut tags = clip.tags.iter().peekable();
            while let Some(tag) = tags.next() {
                let at = offset + u64::from(tag.timestamp_ms);
                if !publisher
                    .serve_until(start + Duration::from_millis(at), &mut shutdown)
                    .await?
                {
                    break 'play;
                }
                // RTMP timestamps are 32-bit milliseconds and wrap after 49 days.
                let timestamp = at as u32;
                // FLV frame type 1 in the high nibble: a keyframe.
                let keyframe =
                    tag.kind == TagKind::Video && tag.data.first().is_some_and(|b| b >> 4 == 1);
                match (tag.kind, tags.peek()) {
                    (TagKind::Video, Some(next)) if interleave && next.kind == TagKind::Audio => {
                        // Sent early by at most one audio frame, so that its chunks can go
                        // between this video frame's.
                        let audio_at = (offset + u64::from(next.timestamp_ms)) as u32;
                        publisher
                            .send_video_and_audio(
                                (timestamp, tag.data.clone()),
                                (audio_at, next.data.clone()),
                            )
                            .await?;
                        tags.next();
                    }
                    (TagKind::Video, _) => {
                        publisher.send_video(timestamp, tag.data.clone()).await?
                    }
                    (TagKind::Audio, _) => {
                        publisher.send_audio(timestamp, tag.data.clone()).await?
                    }
                }
                if keyframe {
                    // Written to the socket: bench/origin measures segment availability from here.
                    debug!(timestamp_ms = timestamp, "keyframe sent");
                }
            }
            loop_index += 1;
            publisher.stats.loops_completed = loop_index;
            debug!(loops = loop_index, "clip loop complete");
        }
        let stats = publisher.finish().await?;
        info!(?stats, "publish finished");
        Ok(stats)
    }
    .instrument(span)
    .await
}

/// An RTMP connection in the publishing state.
pub struct Publisher {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    session: ClientSession,
    /// Reassembles rml_rtmp's output so it can be re-chunked; `Some` in interleaving mode.
    rechunker: Option<Dechunker>,
    read_buf: Vec<u8>,
    stats: PublishStats,
}

impl Publisher {
    /// Connects to `url`, handshakes, and runs `connect` → `createStream` → `publish` until the
    /// server answers `NetStream.Publish.Start`.
    pub async fn connect(url: &RtmpUrl, interleave_chunks: bool) -> Result<Self, PublishError> {
        let addr = url.addr();
        let stream = tokio::time::timeout(RESPONSE_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| PublishError::Timeout { stage: "connect" })?
            .map_err(|source| PublishError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Media is latency-sensitive and written in whole messages already.
        stream
            .set_nodelay(true)
            .map_err(|source| PublishError::Io {
                stage: "connect",
                source,
            })?;
        let (reader, writer) = stream.into_split();

        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(url.tc_url());
        config.chunk_size = if interleave_chunks {
            INTERLEAVED_CHUNK_SIZE
        } else {
            CONTIGUOUS_CHUNK_SIZE
        };
        let (session, initial) = ClientSession::new(config)?;
        let mut publisher = Publisher {
            reader,
            writer,
            session,
            rechunker: interleave_chunks.then(Dechunker::new),
            read_buf: vec![0; 64 * 1024],
            stats: PublishStats::default(),
        };

        let leftover = publisher.handshake().await?;
        publisher.handle_results(initial, "connect").await?;
        let request = publisher.session.request_connection(url.app.clone())?;
        publisher.handle_results(vec![request], "connect").await?;
        publisher
            .wait_for(&leftover, "connect", |e| {
                matches!(e, ClientSessionEvent::ConnectionRequestAccepted)
            })
            .await?;
        let request = publisher
            .session
            .request_publishing(url.stream.clone(), PublishRequestType::Live)?;
        publisher.handle_results(vec![request], "publish").await?;
        publisher
            .wait_for(&[], "publish", |e| {
                matches!(e, ClientSessionEvent::PublishRequestAccepted)
            })
            .await?;
        debug!("publish accepted");
        Ok(publisher)
    }

    /// What has been sent so far.
    pub fn stats(&self) -> PublishStats {
        self.stats
    }

    /// Sends onMetaData (`@setDataFrame`).
    pub async fn send_metadata(&mut self, metadata: &StreamMetadata) -> Result<(), PublishError> {
        let result = self.session.publish_metadata(metadata)?;
        self.handle_results(vec![result], "publishing").await?;
        Ok(())
    }

    /// Sends one FLV VIDEODATA body at `timestamp_ms`.
    pub async fn send_video(&mut self, timestamp_ms: u32, tag: Bytes) -> Result<(), PublishError> {
        let result =
            self.session
                .publish_video_data(tag, RtmpTimestamp::new(timestamp_ms), false)?;
        self.stats.video_frames += 1;
        self.handle_results(vec![result], "publishing").await?;
        Ok(())
    }

    /// Sends one FLV AUDIODATA body at `timestamp_ms`.
    pub async fn send_audio(&mut self, timestamp_ms: u32, tag: Bytes) -> Result<(), PublishError> {
        let result =
            self.session
                .publish_audio_data(tag, RtmpTimestamp::new(timestamp_ms), false)?;
        self.stats.audio_frames += 1;
        self.handle_results(vec![result], "publishing").await?;
        Ok(())
    }

    /// Sends a video and an audio message `(timestamp_ms, tag body)`. In interleaving mode
    /// their chunks alternate on the wire, video first, so the audio message starts and
    /// usually completes inside the video message; otherwise they go one after the other.
    pub async fn send_video_and_audio(
        &mut self,
        video: (u32, Bytes),
        audio: (u32, Bytes),
    ) -> Result<(), PublishError> {
        if self.rechunker.is_none() {
            self.send_video(video.0, video.1).await?;
            return self.send_audio(audio.0, audio.1).await;
        }
        let video = self
            .session
            .publish_video_data(video.1, RtmpTimestamp::new(video.0), false)?;
        let audio = self
            .session
            .publish_audio_data(audio.1, RtmpTimestamp::new(audio.0), false)?;
        self.stats.video_frames += 1;
        self.stats.audio_frames += 1;
        let (video, audio) = match (video, audio, self.rechunker.as_mut()) {
            (
                ClientSessionResult::OutboundResponse(video),
                ClientSessionResult::OutboundResponse(audio),
                Some(rechunker),
            ) => (
                rechunker.push_messages(&video.bytes)?,
                rechunker.push_messages(&audio.bytes)?,
            ),
            // publish_*_data return nothing but their packet; anything else takes the
            // ordinary path.
            (video, audio, _) => {
                self.handle_results(vec![video, audio], "publishing")
                    .await?;
                return Ok(());
            }
        };
        let mut wire = Vec::new();
        let mut video_chunks = chunk_list(&video).into_iter();
        let mut audio_chunks = chunk_list(&audio).into_iter();
        loop {
            match (video_chunks.next(), audio_chunks.next()) {
                (None, None) => break,
                (v, a) => {
                    wire.extend(v.unwrap_or_default());
                    wire.extend(a.unwrap_or_default());
                }
            }
        }
        self.write_raw(&wire, "publishing").await
    }

    /// Answers the server (acknowledgements, pings) for `duration` without sending media;
    /// fails with [`PublishError::ConnectionClosed`] if the server closes the connection.
    pub async fn idle(&mut self, duration: Duration) -> Result<(), PublishError> {
        let mut never: Shutdown = Box::pin(std::future::pending());
        self.serve_until(Instant::now() + duration, &mut never)
            .await?;
        Ok(())
    }

    /// Ends the publish with `deleteStream` and closes the connection.
    pub async fn finish(mut self) -> Result<PublishStats, PublishError> {
        let results = self.session.stop_publishing()?;
        self.handle_results(results, "unpublish").await?;
        self.writer
            .shutdown()
            .await
            .map_err(|source| PublishError::Io {
                stage: "unpublish",
                source,
            })?;
        Ok(self.stats)
    }

    /// Client side of the RTMP handshake; returns bytes the server sent after it.
    async fn handshake(&mut self) -> Result<Vec<u8>, PublishError> {
        let mut handshake = Handshake::new(PeerType::Client);
        let c0c1 = handshake.generate_outbound_p0_and_p1()?;
        self.write_raw(&c0c1, "handshake").await?;
        loop {
            let n = self.read("handshake").await?;
            match handshake.process_bytes(&self.read_buf[..n])? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.write_raw(&response_bytes, "handshake").await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.write_raw(&response_bytes, "handshake").await?;
                    return Ok(remaining_bytes);
                }
            }
        }
    }

    /// Feeds `first` and then server input to the session until an event matches `done`.
    async fn wait_for(
        &mut self,
        first: &[u8],
        stage: &'static str,
        done: impl Fn(&ClientSessionEvent) -> bool,
    ) -> Result<(), PublishError> {
        let mut input = first.to_vec();
        loop {
            let results = self.session.handle_input(&input)?;
            let events = self.handle_results(results, stage).await?;
            if events.iter().any(&done) {
                return Ok(());
            }
            let n = self.read(stage).await?;
            input = self.read_buf[..n].to_vec();
        }
    }

    /// Answers the server (acknowledgements, pings) until `deadline`. `Ok(false)` when
    /// `shutdown` resolved first.
    async fn serve_until(
        &mut self,
        deadline: Instant,
        shutdown: &mut Shutdown,
    ) -> Result<bool, PublishError> {
        loop {
            let read = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(true),
                () = shutdown.as_mut() => return Ok(false),
                read = self.reader.read(&mut self.read_buf) => read,
            };
            let n = read.map_err(|source| PublishError::Io {
                stage: "publishing",
                source,
            })?;
            if n == 0 {
                return Err(PublishError::ConnectionClosed {
                    stage: "publishing",
                });
            }
            let results = self.session.handle_input(&self.read_buf[..n])?;
            self.handle_results(results, "publishing").await?;
        }
    }

    /// One read from the server within [`RESPONSE_TIMEOUT`]; returns the byte count.
    async fn read(&mut self, stage: &'static str) -> Result<usize, PublishError> {
        let n = tokio::time::timeout(RESPONSE_TIMEOUT, self.reader.read(&mut self.read_buf))
            .await
            .map_err(|_| PublishError::Timeout { stage })?
            .map_err(|source| PublishError::Io { stage, source })?;
        if n == 0 {
            return Err(PublishError::ConnectionClosed { stage });
        }
        Ok(n)
    }

    /// Writes the session's outbound packets and returns its events, failing on a rejection.
    async fn handle_results(
        &mut self,
        results: Vec<ClientSessionResult>,
        stage: &'static str,
    ) -> Result<Vec<ClientSessionEvent>, PublishError> {
        let mut events = Vec::new();
        for result in results {
            match result {
                ClientSessionResult::OutboundResponse(packet) => {
                    self.write_packet(&packet.bytes, stage).await?;
                }
                ClientSessionResult::RaisedEvent(event) => {
                    check_event(&event, stage)?;
                    if let ClientSessionEvent::AcknowledgementReceived { bytes_received } = event {
                        self.stats.acknowledged_bytes = bytes_received;
                    }
                    events.push(event);
                }
                ClientSessionResult::UnhandleableMessageReceived(payload) => {
                    debug!(type_id = payload.type_id, "ignoring message from server");
                }
            }
        }
        Ok(events)
    }

    /// Writes a packet rml_rtmp serialized, re-chunked at the interleaving chunk size when
    /// interleaving (so the chunk stream state the server sees is ours alone).
    async fn write_packet(
        &mut self,
        bytes: &[u8],
        stage: &'static str,
    ) -> Result<(), PublishError> {
        match self.rechunker.as_mut() {
            Some(rechunker) => {
                let messages = rechunker.push_messages(bytes)?;
                let wire = chunk_list(&messages).concat();
                self.write_raw(&wire, stage).await
            }
            None => self.write_raw(bytes, stage).await,
        }
    }

    async fn write_raw(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), PublishError> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|source| PublishError::Io { stage, source })?;
        self.stats.bytes_sent += bytes.len() as u64;
        Ok(())
    }
}

/// Every chunk of `messages`, each with its header, in order.
fn chunk_list(messages: &[Message]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    for message in messages {
        message.write_chunks(|head, body| chunks.push([head, body].concat()));
    }
    chunks
}

/// Turns the server's refusals into errors; other events pass.
fn check_event(event: &ClientSessionEvent, stage: &'static str) -> Result<(), PublishError> {
    match event {
        ClientSessionEvent::ConnectionRequestRejected { description } => {
            Err(PublishError::Rejected {
                stage: "connect",
                code: "NetConnection.Connect.Rejected".to_owned(),
                description: description.clone(),
            })
        }
        ClientSessionEvent::UnhandleableOnStatusCode { code } if is_error_status(code) => {
            Err(PublishError::Rejected {
                stage,
                code: code.clone(),
                description: String::new(),
            })
        }
        // rml_rtmp's ServerSession refuses a publish with an `_error` for transaction 0, which
        // the client session does not track, so it surfaces as an unknown transaction result.
        ClientSessionEvent::UnknownTransactionResultReceived {
            additional_values, ..
        } => match error_status(additional_values) {
            Some((code, description)) => Err(PublishError::Rejected {
                stage,
                code,
                description,
            }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// onStatus codes that end a publish (NetStream.Publish.BadName, ...Denied, ...Failed, ...).
fn is_error_status(code: &str) -> bool {
    [
        "Bad", "Denied", "Failed", "Rejected", "Error", "Invalid", "Closed",
    ]
    .iter()
    .any(|word| code.contains(word))
}

/// `(code, description)` of a status object with level `error`/`_error`.
fn error_status(values: &[Amf0Value]) -> Option<(String, String)> {
    values.iter().find_map(|value| {
        let Amf0Value::Object(properties) = value else {
            return None;
        };
        let text = |key: &str| match properties.get(key) {
            Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
            _ => None,
        };
        let level = text("level")?;
        if level != "error" && level != "_error" {
            return None;
        }
        Some((
            text("code").unwrap_or_default(),
            text("description").unwrap_or_default(),
        ))
    })
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// An FLV AUDIODATA tag.
    Audio,
    /// An FLV VIDEODATA tag.
    Video,
}

/// One media tag of a clip.
#[derive(Debug, Clone)]
pub struct ClipTag {
    /// Audio or video.
    pub kind: TagKind,
    /// Milliseconds from the clip start.
    pub timestamp_ms: u32,
    /// The FLV tag body (what RTMP carries as the message payload).
    pub data: Bytes,
}

/// An FLV file split into what the publisher sends once and what it loops.
#[derive(Debug)]
pub struct Clip {
    /// The onMetaData properties rml_rtmp knows (empty without a script tag).
    pub metadata: StreamMetadata,
    /// The AVC sequence header tag body (carrying the AVCDecoderConfigurationRecord).
    pub video_config: Option<Bytes>,
    /// The AAC sequence header tag body (carrying the AudioSpecificConfig).
    pub audio_config: Option<Bytes>,
    /// Media tags in file order, sequence headers removed, all earlier than `duration_ms`.
    pub tags: Vec<ClipTag>,
    /// Loop period: the last video frame's timestamp plus one frame interval.
    pub duration_ms: u64,
}

impl Clip {
    /// The bundled clip, [`BUNDLED_CLIP`].
    pub fn bundled() -> Result<Self, PublishError> {
        Clip::parse(Bytes::from_static(BUNDLED_CLIP))
    }

    /// Splits an FLV file (read with [`FlvReader`]) into onMetaData, the sequence headers and
    /// the media tags to loop.
    pub fn parse(file: Bytes) -> Result<Self, PublishError> {
        let mut metadata = StreamMetadata::new();
        let (mut video_config, mut audio_config) = (None, None);
        let mut tags = Vec::new();
        for tag in FlvReader::new(file)? {
            let tag = tag?;
            let body = &tag.body[..];
            match tag.tag_type {
                TAG_VIDEO => {
                    // AVC (codec 7) packet type 0 is the sequence header, 2 end of sequence.
                    let avc_packet_type = (body.first().map(|b| b & 0x0F) == Some(7))
                        .then(|| body.get(1))
                        .flatten();
                    match avc_packet_type {
                        Some(0) => {
                            video_config.get_or_insert(tag.body);
                        }
                        Some(2) => {}
                        _ => tags.push(ClipTag {
                            kind: TagKind::Video,
                            timestamp_ms: tag.ts_ms,
                            data: tag.body,
                        }),
                    }
                }
                TAG_AUDIO => {
                    // AAC (sound format 10) packet type 0 is the sequence header.
                    let is_aac = body.first().map(|b| b >> 4) == Some(10);
                    if is_aac && body.get(1) == Some(&0) {
                        audio_config.get_or_insert(tag.body);
                    } else {
                        tags.push(ClipTag {
                            kind: TagKind::Audio,
                            timestamp_ms: tag.ts_ms,
                            data: tag.body,
                        });
                    }
                }
                TAG_SCRIPT => {
                    let values = rml_amf0::deserialize(&mut std::io::Cursor::new(body))
                        .map_err(|e| PublishError::BadClip(format!("script tag: {e}")))?;
                    if let [Amf0Value::Utf8String(name), Amf0Value::Object(properties), ..] =
                        &values[..]
                    {
                        if name == "onMetaData" {
                            metadata.apply_metadata_values(properties.clone());
                        }
                    }
                }
                other => {
                    return Err(PublishError::BadClip(format!("unknown tag type {other}")));
                }
            }
        }
        let duration_ms = loop_duration_ms(&tags).ok_or_else(|| {
            PublishError::BadClip("fewer than two frames of video or audio".into())
        })?;
        // Audio a little past the last video frame would overlap the next loop's first tags.
        tags.retain(|tag| u64::from(tag.timestamp_ms) < duration_ms);
        Ok(Clip {
            metadata,
            video_config,
            audio_config,
            tags,
            duration_ms,
        })
    }
}

/// The last video frame's timestamp plus the mean frame interval, rounded: FLV timestamps are
/// whole milliseconds, so 30 fps alternates 33/34 ms steps and the last step alone would be
/// off by one. Falls back to audio for a clip without video.
fn loop_duration_ms(tags: &[ClipTag]) -> Option<u64> {
    [TagKind::Video, TagKind::Audio].iter().find_map(|&kind| {
        let mut stamps = tags
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.timestamp_ms);
        let first = stamps.next()?;
        let (count, last) = stamps.fold((1u64, first), |(n, _), ts| (n + 1, ts));
        if count < 2 || last <= first {
            return None;
        }
        let interval = f64::from(last - first) / (count - 1) as f64;
        Some((f64::from(last) + interval).round() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_app_and_stream() {
        let url = RtmpUrl::parse("rtmp://127.0.0.1:1936/live/test?key=abc").unwrap();
        assert_eq!(
            url,
            RtmpUrl {
                host: "127.0.0.1".into(),
                port: 1936,
                app: "live".into(),
                stream: "test?key=abc".into(),
            }
        );
        assert_eq!(url.tc_url(), "rtmp://127.0.0.1:1936/live");
        assert_eq!(
            RtmpUrl::parse("rtmp://example.com/live/a").unwrap().port,
            1935
        );
        assert_eq!(
            RtmpUrl::parse("rtmp://[::1]:99/live/a").unwrap().addr(),
            "[::1]:99"
        );
    }

    #[test]
    fn malformed_urls_are_rejected() {
        for url in [
            "http://h/live/s",
            "rtmp://h/live",
            "rtmp://h//s",
            "rtmp://h:port/live/s",
            "rtmp:///live/s",
            "rtmp://[::1/live/s",
            "rtmp://[::1]x/live/s",
        ] {
            assert!(
                matches!(RtmpUrl::parse(url), Err(PublishError::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn bundled_clip_loops_every_10_s_with_keyframes_every_2_s() {
        let clip = Clip::bundled().unwrap();
        assert_eq!(clip.duration_ms, 10_000);
        assert!(clip.video_config.is_some() && clip.audio_config.is_some());
        assert_eq!(clip.metadata.video_width, Some(640));
        let keyframes: Vec<_> = clip
            .tags
            .iter()
            .filter(|t| t.kind == TagKind::Video && t.data[0] >> 4 == 1)
            .map(|t| t.timestamp_ms)
            .collect();
        assert_eq!(keyframes, vec![0, 2000, 4000, 6000, 8000]);
        let video = clip
            .tags
            .iter()
            .filter(|t| t.kind == TagKind::Video)
            .count();
        assert_eq!(video, 300);
        assert!(clip.tags.iter().all(|t| u64::from(t.timestamp_ms) < 10_000));
        assert!(clip.tags.iter().any(|t| t.kind == TagKind::Audio));
    }

    #[test]
    fn truncated_clip_is_rejected_with_its_offset() {
        let cut = Bytes::from_static(&BUNDLED_CLIP[..BUNDLED_CLIP.len() / 2]);
        let err = Clip::parse(cut).unwrap_err();
        assert!(err.to_string().contains("truncated tag at byte"), "{err}");
        assert!(matches!(
            Clip::parse(Bytes::from_static(b"not an flv file")),
            Err(PublishError::Flv(_))
        ));
    }

    #[tokio::test]
    async fn refused_connection_is_reported_with_the_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut opts = PublishOptions::new(format!("rtmp://{addr}/live/s"));
        opts.loops = Some(1);
        let err = publish(opts).await.unwrap_err();
        assert!(matches!(err, PublishError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
