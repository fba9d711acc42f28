//! The RTMP accept loop and one task per connection.
//!
//! Per connection, top to bottom ([`handle_connection`]): handshake (bounded by
//! `handshake_timeout_ms`), then every socket read goes through the [`Dechunker`] (interleaved
//! chunk streams reassembled, memory bounded) and each message it completes takes one of two
//! paths (`Connection::input`):
//!
//! - audio and video on the publishing stream (`Connection::media`): codec checked, then
//!   packaged right here through the stream's [`Publication`]. This is nearly every message,
//!   so it is parsed once, by the Dechunker: handing it to rml_rtmp as well, then to another
//!   task, was a second parse and a task wakeup per message, a third of the origin's CPU
//!   (bench/RESULTS.md, issue 2);
//! - everything else goes, re-chunked, to rml_rtmp's `ServerSession`, and each event it raises
//!   is handled in `Connection::event`: connect (app name checked), publish (name validated,
//!   authorized, registered with the [`Hub`]), metadata (codecs checked), unpublish. Window
//!   Acknowledgement Size, which used to make the session acknowledge the bytes it saw, is
//!   kept here: [`AckWindow`] acknowledges every byte read.
//!
//! Every failure ends that connection only, with one log line naming the stage
//! ([`ConnectionError::as_str`]) in the connection's span (peer, app, stream). That span is
//! entered for the session path and the log lines, not around every poll of the connection
//! (a measured 4 % of the origin's CPU). A connection that goes silent for `idle_timeout_ms`,
//! or publishes without a keyframe for `keyframe_timeout_ms`, is closed. A refused peer (app,
//! name, auth, busy stream, codec) first gets an RTMP error status and up to a second to read
//! it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rml_rtmp::chunk_io::{ChunkSerializer, Packet};
use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent,
    ServerSessionResult, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::ack::{AckWindow, MalformedWindowAckSize, Outbound, TYPE_WINDOW_ACK_SIZE};
use super::auth::{AuthError, Authorizer, PublishRequest};
use super::dechunk::{DechunkError, Dechunker, Message};
use super::socket::{Socket, Ticker};
use crate::config::RtmpConfig;
use crate::hub::{Hub, HubError, Publication};
use crate::media::flv::{audio_codec_name, video_codec_name};
use crate::media::{audio_codec_id, video_codec_id};
use crate::store::StreamName;

/// FLV VIDEODATA codec id of H.264/AVC.
const CODEC_AVC: u8 = 7;
/// FLV AUDIODATA sound format of AAC.
const CODEC_AAC: u8 = 10;
/// RTMP message type of audio (an FLV AUDIODATA body).
const TYPE_AUDIO: u8 = 8;
/// RTMP message type of video (an FLV VIDEODATA body).
const TYPE_VIDEO: u8 = 9;
/// The chunk size our session announces (rml_rtmp's default); our own error messages use it too.
const OUR_CHUNK_SIZE: u32 = 4096;
/// Bytes read from the socket at a time.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Socket read or write failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The RTMP handshake was malformed.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The handshake did not complete in time (or the peer closed mid-handshake).
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    /// The chunk stream could not be reassembled (absurd chunk size, oversized message, ...).
    #[error("chunk stream: {0}")]
    Dechunk(#[from] DechunkError),
    /// rml_rtmp refused the input.
    #[error("rtmp session: {0}")]
    Session(#[from] ServerSessionError),
    /// A Window Acknowledgement Size message was malformed.
    #[error("control message: {0}")]
    Control(#[from] MalformedWindowAckSize),
    /// The peer connected to an application other than the configured one.
    #[error("unknown application {0:?}")]
    WrongApp(String),
    /// The stream name is not acceptable.
    #[error("invalid stream name {0:?}")]
    BadName(String),
    /// Authorization refused the publish.
    #[error("publish refused: {0}")]
    Unauthorized(#[from] AuthError),
    /// The hub refused the publish (already published) or the stream closed.
    #[error("{0}")]
    Hub(#[from] HubError),
    /// The publisher sends, or announces, a codec other than H.264 video / AAC audio.
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
    /// Nothing arrived for `idle_timeout_ms`.
    #[error("no data for {0:?}")]
    Idle(Duration),
    /// A publish sent no video keyframe for `keyframe_timeout_ms`.
    #[error("no video keyframe within {0:?} of publishing")]
    NoKeyframe(Duration),
    /// The stream disconnected this publisher (takeover, refused media).
    #[error("disconnected by the stream: {0}")]
    Kicked(String),
}

impl ConnectionError {
    /// Whether we sent the peer an RTMP error status before failing (so it deserves a moment
    /// to read it).
    fn told_peer(&self) -> bool {
        matches!(
            self,
            Self::WrongApp(_)
                | Self::BadName(_)
                | Self::Unauthorized(_)
                | Self::Hub(HubError::AlreadyPublishing(_))
                | Self::UnsupportedCodec(_)
        )
    }

    /// A short label for the stage that failed, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Handshake(_) => "handshake",
            Self::HandshakeTimeout(_) => "handshake_timeout",
            Self::Dechunk(_) => "dechunk",
            Self::Session(_) => "session",
            Self::Control(_) => "control",
            Self::WrongApp(_) => "wrong_app",
            Self::BadName(_) => "bad_name",
            Self::Unauthorized(_) => "unauthorized",
            Self::Hub(HubError::MediaRefused(_)) => "media",
            Self::Hub(_) => "hub",
            Self::UnsupportedCodec(_) => "unsupported_codec",
            Self::Idle(_) => "idle",
            Self::NoKeyframe(_) => "no_keyframe",
            Self::Kicked(_) => "kicked",
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub struct RtmpContext {
    /// RTMP settings.
    pub config: RtmpConfig,
    /// The live streams.
    pub hub: Arc<Hub>,
    /// Publish authorization.
    pub auth: Authorizer,
    /// The tick publishing connections read on (`read_interval_ms`).
    pub ticker: Arc<Ticker>,
}

/// Accepts RTMP connections until `shutdown` resolves; then drops every connection.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<RtmpContext>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "rtmp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while conns.try_join_next().is_some() {}
        let ctx = ctx.clone();
        let span = tracing::info_span!(
            "rtmp",
            %peer,
            app = tracing::field::Empty,
            stream = tracing::field::Empty
        );
        // Not `.instrument(span)`: that enters the span on every poll, i.e. every read.
        conns.spawn(async move {
            tracing::debug!(parent: &span, "connection accepted");
            match handle_connection(socket, peer, &ctx, span.clone()).await {
                Ok(()) => tracing::info!(parent: &span, "connection closed by peer"),
                Err(e) => {
                    tracing::warn!(parent: &span, stage = e.as_str(), error = %e, "connection closed")
                }
            }
        });
    }
    conns.shutdown().await;
    Ok(())
}

/// One RTMP connection, from handshake to close. `span` (peer, app, stream) is entered for
/// its log lines; the caller logs the result in it.
pub async fn handle_connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    ctx: &RtmpContext,
    span: Span,
) -> Result<(), ConnectionError> {
    let _ = socket.set_nodelay(true);
    let handshake_timeout = Duration::from_millis(ctx.config.handshake_timeout_ms);
    let (leftover, handshake_bytes) =
        tokio::time::timeout(handshake_timeout, handshake(&mut socket))
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(handshake_timeout))??;

    let (session, initial) = ServerSession::new(ServerSessionConfig::new())?;
    let mut conn = Connection {
        ctx,
        peer,
        span,
        socket: Socket::new(socket),
        session,
        dechunker: Dechunker::new(),
        ack: AckWindow::new(handshake_bytes),
        outbound: Outbound::default(),
        session_stream_id: 0,
        publication: None,
        publish_stream_id: 0,
        keyframe_deadline: None,
        app: String::new(),
    };
    let result = conn.run(initial, &leftover).await;
    if result.as_ref().is_err_and(ConnectionError::told_peer) {
        conn.linger().await;
    }
    result
}

/// How long a refused peer gets to read our error status before the socket closes.
const LINGER: Duration = Duration::from_secs(1);

async fn kicked(publication: &mut Option<Publication>) -> String {
    match publication {
        Some(p) => p.kicked().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs the server side of the RTMP handshake; returns the bytes the peer sent after it, and
/// how many bytes it sent in all (the count acknowledgements start from).
async fn handshake(socket: &mut TcpStream) -> Result<(Vec<u8>, u64), ConnectionError> {
    let mut handshake = Handshake::new(PeerType::Server);
    // The handshake is 1 + 1536 + 1536 bytes from the peer; no need for a big buffer.
    let mut buf = [0u8; 4096];
    let mut received = 0;
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        received += n as u64;
        match handshake.process_bytes(&buf[..n])? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await?;
                let handshake_bytes = received - remaining_bytes.len() as u64;
                return Ok((remaining_bytes, handshake_bytes));
            }
        }
    }
}

struct Connection<'a> {
    ctx: &'a RtmpContext,
    peer: SocketAddr,
    span: Span,
    socket: Socket,
    session: ServerSession,
    dechunker: Dechunker,
    ack: AckWindow,
    outbound: Outbound,
    /// The message stream of the message the session is handling: the stream a publish
    /// command publishes on (rml_rtmp's event does not say).
    session_stream_id: u32,
    publication: Option<Publication>,
    /// The message stream the publish was made on; media on others is ignored, as rml_rtmp
    /// did.
    publish_stream_id: u32,
    /// Set while publishing and no keyframe has arrived yet.
    keyframe_deadline: Option<Instant>,
    app: String,
}

impl Connection<'_> {
    /// The session loop: socket bytes in, responses out, until the peer leaves or a failure.
    async fn run(
        &mut self,
        initial: Vec<ServerSessionResult>,
        leftover: &[u8],
    ) -> Result<(), ConnectionError> {
        self.results(initial).await?;
        self.input(leftover).await?;
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        let paced = self.ctx.config.read_interval_ms > 0;
        loop {
            let open = if self.publication.is_some() && paced {
                self.read_paced(&mut buf).await?
            } else {
                self.read_registered(&mut buf).await?
            };
            if !open {
                return Ok(());
            }
        }
    }

    /// Reads bytes as they arrive until the peer closes (`false`) or, with pacing on, a
    /// publish starts (`true`).
    async fn read_registered(&mut self, buf: &mut [u8]) -> Result<bool, ConnectionError> {
        let idle = Duration::from_millis(self.ctx.config.idle_timeout_ms);
        let paced = self.ctx.config.read_interval_ms > 0;
        // One idle timer for the connection, pushed back only when it fires: a timeout around
        // every read would register and cancel a timer per RTMP message.
        let mut last_read = Instant::now();
        let idle_timer = tokio::time::sleep_until(last_read + idle);
        tokio::pin!(idle_timer);
        loop {
            let keyframe_deadline = self.keyframe_deadline;
            tokio::select! {
                read = self.socket.read(buf) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(false);
                    }
                    last_read = Instant::now();
                    self.input(&buf[..n]).await?;
                    if paced && self.publication.is_some() {
                        return Ok(true);
                    }
                }
                () = &mut idle_timer => {
                    let deadline = last_read + idle;
                    if Instant::now() >= deadline {
                        return Err(ConnectionError::Idle(idle));
                    }
                    idle_timer.as_mut().reset(deadline);
                }
                reason = kicked(&mut self.publication) => return Err(ConnectionError::Kicked(reason)),
                () = sleep_until(keyframe_deadline) => return Err(self.no_keyframe()),
            }
        }
    }

    /// Reads the socket on every tick of the shared [`Ticker`] until the peer closes
    /// (`false`) or the publish ends (`true`); see [`super::socket`].
    async fn read_paced(&mut self, buf: &mut [u8]) -> Result<bool, ConnectionError> {
        self.socket.pace()?;
        let idle = Duration::from_millis(self.ctx.config.idle_timeout_ms);
        let mut ticks = self.ctx.ticker.subscribe();
        let mut last_read = Instant::now();
        loop {
            if ticks.changed().await.is_err() {
                // The ticker lives as long as the context; only a shutdown drops it.
                return Ok(false);
            }
            let now = *ticks.borrow_and_update();
            if let Some(reason) = self.publication.as_mut().and_then(Publication::try_kicked) {
                return Err(ConnectionError::Kicked(reason));
            }
            if self
                .keyframe_deadline
                .is_some_and(|deadline| now >= deadline)
            {
                return Err(self.no_keyframe());
            }
            // Drain what arrived since the last tick: a full buffer means there may be more.
            loop {
                let n = match self.socket.try_read(buf) {
                    Ok(0) => return Ok(false),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                last_read = now;
                self.input(&buf[..n]).await?;
                if self.publication.is_none() {
                    self.socket.register()?;
                    return Ok(true);
                }
                if n < buf.len() {
                    break;
                }
            }
            if now.duration_since(last_read) >= idle {
                return Err(ConnectionError::Idle(idle));
            }
        }
    }

    fn no_keyframe(&self) -> ConnectionError {
        ConnectionError::NoKeyframe(Duration::from_millis(self.ctx.config.keyframe_timeout_ms))
    }

    /// Half-closes and drains the socket for up to [`LINGER`]: closing at once would make a
    /// publisher that is mid-write (FFmpeg) hit a reset before it reads the status saying why.
    async fn linger(&mut self) {
        // Our side is done; stop accepting media for the stream right away.
        self.publication = None;
        let _ = self.socket.shutdown().await;
        let mut buf = [0u8; 16 * 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(self.socket.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// Bytes read from the socket: acknowledged when the peer's window fills, reassembled into
    /// messages, and each message taken, in order, down the media or the session path.
    async fn input(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        if let Some(sequence_number) = self.ack.received(bytes.len()) {
            let ack = self.outbound.acknowledgement(sequence_number);
            self.socket.write_all(&ack).await?;
        }
        for message in self.dechunker.push_messages(bytes)? {
            match message.header.type_id {
                TYPE_AUDIO | TYPE_VIDEO => self.media(message).await?,
                TYPE_WINDOW_ACK_SIZE => self.ack.set_window(&message.payload)?,
                _ => self.session_message(message).await?,
            }
        }
        Ok(())
    }

    /// Hands one message (a command, metadata, control: a handful per connection) to the
    /// session, re-chunked, and acts on what it returns, in the connection's span.
    async fn session_message(&mut self, message: Message) -> Result<(), ConnectionError> {
        let span = self.span.clone();
        async {
            self.session_stream_id = message.header.message_stream_id;
            let mut bytes = Vec::with_capacity(message.payload.len() + 32);
            message.write_chunks(|head, body| {
                bytes.extend_from_slice(head);
                bytes.extend_from_slice(body);
            });
            let results = self.session.handle_input(&bytes)?;
            self.results(results).await
        }
        .instrument(span)
        .await
    }

    /// Writes a packet the session produced.
    async fn write_packet(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        let bytes = self.outbound.session_bytes(&packet.bytes)?;
        self.socket.write_all(&bytes).await?;
        Ok(())
    }

    async fn results(&mut self, results: Vec<ServerSessionResult>) -> Result<(), ConnectionError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.write_packet(&packet).await?;
                }
                ServerSessionResult::RaisedEvent(event) => {
                    let more = self.event(event).await?;
                    self.send(more).await?;
                }
                ServerSessionResult::UnhandleableMessageReceived(payload) => {
                    tracing::debug!(type_id = payload.type_id, "ignoring unhandled rtmp message");
                }
            }
        }
        Ok(())
    }

    /// Writes the packets among `results`. Accepting or rejecting a request yields only
    /// responses, never events, so these need no event handling.
    async fn send(&mut self, results: Vec<ServerSessionResult>) -> Result<(), ConnectionError> {
        for r in results {
            if let ServerSessionResult::OutboundResponse(packet) = r {
                self.write_packet(&packet).await?;
            }
        }
        Ok(())
    }

    async fn event(
        &mut self,
        event: ServerSessionEvent,
    ) -> Result<Vec<ServerSessionResult>, ConnectionError> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                tracing::Span::current().record("app", app_name.as_str());
                if app_name.trim_end_matches('/') != self.ctx.config.app {
                    let reject = self.session.reject_request(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        "unknown application",
                    )?;
                    self.send(reject).await?;
                    return Err(ConnectionError::WrongApp(app_name));
                }
                self.app = app_name;
                Ok(self.session.accept_request(request_id)?)
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                self.publish_stream_id = self.session_stream_id;
                self.publish(request_id, &stream_key).await
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                tracing::info!("publisher sent unpublish");
                self.publication = None;
                self.keyframe_deadline = None;
                Ok(Vec::new())
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                self.check_metadata(&metadata).await?;
                Ok(Vec::new())
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                // This origin serves HLS only; RTMP playback is not offered.
                let reject = self.session.reject_request(
                    request_id,
                    "NetStream.Play.Failed",
                    "playback is not supported; use HLS",
                )?;
                Ok(reject)
            }
            other => {
                tracing::trace!(event = ?other, "rtmp event");
                Ok(Vec::new())
            }
        }
    }

    async fn publish(
        &mut self,
        request_id: u32,
        stream_key: &str,
    ) -> Result<Vec<ServerSessionResult>, ConnectionError> {
        let (name, query) = stream_key.split_once('?').unwrap_or((stream_key, ""));
        tracing::Span::current().record("stream", name);
        let refuse = |this: &mut Self, code: &str, description: &str| {
            this.session.reject_request(request_id, code, description)
        };
        if self.publication.is_some() {
            let r = refuse(self, "NetStream.Publish.BadName", "already publishing")?;
            self.send(r).await?;
            return Err(ConnectionError::BadName(stream_key.to_owned()));
        }
        let stream = match StreamName::parse(name, self.ctx.config.max_stream_name_bytes) {
            Ok(s) => s,
            Err(_) => {
                let r = refuse(self, "NetStream.Publish.BadName", "invalid stream name")?;
                self.send(r).await?;
                return Err(ConnectionError::BadName(name.to_owned()));
            }
        };
        let request = PublishRequest {
            app: &self.app,
            stream: name,
            addr: self.peer,
            query,
        };
        if let Err(e) = self.ctx.auth.check(request).await {
            let r = refuse(
                self,
                "NetStream.Publish.Unauthorized",
                "publish not authorized",
            )?;
            self.send(r).await?;
            return Err(e.into());
        }
        match self.ctx.hub.publish(stream, self.peer).await {
            Ok(p) => {
                tracing::info!("publish accepted");
                self.publication = Some(p);
                self.keyframe_deadline = Some(
                    Instant::now() + Duration::from_millis(self.ctx.config.keyframe_timeout_ms),
                );
                Ok(self.session.accept_request(request_id)?)
            }
            Err(e) => {
                let r = refuse(
                    self,
                    "NetStream.Publish.BadName",
                    "stream is already publishing",
                )?;
                self.send(r).await?;
                Err(e.into())
            }
        }
    }

    async fn check_metadata(&mut self, metadata: &StreamMetadata) -> Result<(), ConnectionError> {
        if let Some(id) = metadata
            .video_codec_id
            .filter(|id| *id != u32::from(CODEC_AVC))
        {
            return self
                .refuse_codec(format!(
                    "{} in metadata (only H.264/AVC, id 7)",
                    metadata_codec(id, video_codec_name)
                ))
                .await;
        }
        if let Some(id) = metadata
            .audio_codec_id
            .filter(|id| *id != u32::from(CODEC_AAC))
        {
            return self
                .refuse_codec(format!(
                    "{} in metadata (only AAC, id 10)",
                    metadata_codec(id, audio_codec_name)
                ))
                .await;
        }
        Ok(())
    }

    /// An audio or video message: packaged if it belongs to this connection's publish; like
    /// rml_rtmp's session, media before the publish or on another message stream is ignored.
    async fn media(&mut self, message: Message) -> Result<(), ConnectionError> {
        if self.publication.is_none()
            || message.header.message_stream_id != self.publish_stream_id
            || message.payload.is_empty()
        {
            return Ok(());
        }
        let ts_ms = message.header.timestamp;
        if message.header.type_id == TYPE_VIDEO {
            self.video(ts_ms, &message.payload).await
        } else {
            self.audio(ts_ms, &message.payload).await
        }
    }

    async fn video(&mut self, ts_ms: u32, data: &[u8]) -> Result<(), ConnectionError> {
        match video_codec_id(data) {
            Some(CODEC_AVC) => {}
            Some(other) => {
                return self
                    .refuse_codec(format!(
                        "{} (FLV video codec id {other})",
                        video_codec_name(other)
                    ))
                    .await
            }
            None => {
                return self
                    .refuse_codec(
                        "enhanced-RTMP video (a FourCC codec such as HEVC or AV1)".to_owned(),
                    )
                    .await
            }
        }
        // FLV VIDEODATA: frame type 1 (keyframe) and AVCPacketType 1 (NALUs, not the config).
        if data[0] >> 4 == 1 && data.get(1) == Some(&1) {
            self.keyframe_deadline = None;
        }
        if let Some(p) = &self.publication {
            p.video(ts_ms, data).await?;
        }
        Ok(())
    }

    async fn audio(&mut self, ts_ms: u32, data: &[u8]) -> Result<(), ConnectionError> {
        match audio_codec_id(data) {
            Some(CODEC_AAC) => {}
            Some(other) => {
                return self
                    .refuse_codec(format!(
                        "{} (FLV sound format {other})",
                        audio_codec_name(other)
                    ))
                    .await
            }
            None => return self.refuse_codec("unrecognised audio tag".to_owned()).await,
        }
        if let Some(p) = &self.publication {
            p.audio(ts_ms, data).await?;
        }
        Ok(())
    }

    /// Tells the publisher why (an `onStatus` error on its stream), then fails the connection.
    async fn refuse_codec(&mut self, codec: String) -> Result<(), ConnectionError> {
        let description = format!("unsupported codec: {codec}; this origin accepts H.264 + AAC");
        match error_status("NetStream.Publish.Rejected", &description) {
            Ok(bytes) => {
                // Best effort: the connection is closed either way.
                let _ = self.socket.write_all(&bytes).await;
            }
            Err(e) => tracing::debug!(error = %e, "could not encode the error status"),
        }
        Err(ConnectionError::UnsupportedCodec(codec))
    }
}

/// An `onStatus` command with level `error` on message stream 1 (the first stream rml_rtmp
/// hands out, the one a publisher publishes on). A fresh serializer starts with a full chunk
/// header, so the message does not depend on the session serializer's compression state.
/// (`force_uncompressed` would repeat the full header on every continuation chunk, which a
/// peer reads as a new message.)
fn error_status(code: &str, description: &str) -> Result<Vec<u8>, ServerSessionError> {
    let mut info = std::collections::HashMap::new();
    info.insert(
        "level".to_owned(),
        Amf0Value::Utf8String("error".to_owned()),
    );
    info.insert("code".to_owned(), Amf0Value::Utf8String(code.to_owned()));
    info.insert(
        "description".to_owned(),
        Amf0Value::Utf8String(description.to_owned()),
    );
    let message = RtmpMessage::Amf0Command {
        command_name: "onStatus".to_owned(),
        transaction_id: 0.0,
        command_object: Amf0Value::Null,
        additional_arguments: vec![Amf0Value::Object(info)],
    };
    let payload = message.into_message_payload(RtmpTimestamp::new(0), 1)?;
    let mut serializer = ChunkSerializer::new();
    // Re-announcing the session's chunk size keeps the peer's reassembly in step with ours.
    let mut bytes = serializer
        .set_max_chunk_size(OUR_CHUNK_SIZE, RtmpTimestamp::new(0))?
        .bytes;
    bytes.extend(serializer.serialize(&payload, false, false)?.bytes);
    Ok(bytes)
}

/// Names a codec id from `onMetaData`: a legacy FLV id, or an enhanced-RTMP FourCC (`hvc1`,
/// `av01`, ...) that OBS and FFmpeg 6.1+ send as a number.
fn metadata_codec(id: u32, legacy_name: fn(u8) -> &'static str) -> String {
    match u8::try_from(id) {
        Ok(small) => format!("{} (codec id {id})", legacy_name(small)),
        Err(_) => {
            let fourcc: String = id
                .to_be_bytes()
                .iter()
                .map(|b| {
                    if b.is_ascii_graphic() {
                        char::from(*b)
                    } else {
                        '?'
                    }
                })
                .collect();
            format!("FourCC {fourcc:?} (codec id {id})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_codecs_are_named_for_the_log() {
        assert_eq!(
            metadata_codec(12, video_codec_name),
            "H.265/HEVC (codec id 12)"
        );
        assert_eq!(
            metadata_codec(u32::from_be_bytes(*b"hvc1"), video_codec_name),
            "FourCC \"hvc1\" (codec id 1752589105)"
        );
        assert_eq!(metadata_codec(2, audio_codec_name), "MP3 (codec id 2)");
    }

    #[test]
    fn error_status_is_one_full_header_chunked_at_our_chunk_size() {
        let bytes = error_status("NetStream.Publish.Rejected", &"x".repeat(5000)).unwrap();
        let mut d = Dechunker::new();
        // Our Set Chunk Size comes first, so a peer reassembles the rest at 4096.
        let out = d.push(&bytes).unwrap();
        assert_eq!(d.chunk_size(), OUR_CHUNK_SIZE);
        assert!(!out.is_empty());
    }
}
