//! The registry of live streams and the task that writes each one.
//!
//! A stream exists from its first publish until its publisher has been gone longer than the
//! reconnect grace. Its [`Packager`] sits behind a mutex that the publishing connection locks
//! to push each audio or video message itself ([`Publication::video`]): media never waits for
//! another task, which measured ~10 % of the origin's CPU as a channel send and a task wakeup
//! per RTMP message. The stream's task owns its [`LiveStore`] and [`Recorder`] and receives
//! only finished segments (one per target duration) over a bounded channel; a full channel
//! (a stalled disk) stops the connection reading its socket: backpressure, bounded memory.
//!
//! ```text
//! rtmp connection ──Publication: Packager──▶ segments ──▶ stream task: LiveStore (live/<s>/) → Recorder (vod/<s>/<id>/)
//! ```
//!
//! Lifecycle, all decided by the stream task:
//! - stream starts → its packager is restored from the numbering state the store kept
//!   ([`LiveStore::load_numbering`]), so a new publish continues the numbering of the previous
//!   one instead of reusing its names (see [`media`](crate::media#numbering-across-publishes-and-restarts));
//!   the task waits for the previous task on the same name to finish first, so it reads the
//!   state that task saved last;
//! - every segment → the numbering state is saved before the segment is written;
//! - publisher leaves → grace timer starts; a new publish within it continues the same
//!   Packager after [`Packager::discontinuity`], so the playlist goes on with
//!   EXT-X-DISCONTINUITY and its sequence never goes backwards;
//! - grace expires → [`Packager::finish`], playlist gets ENDLIST, recording finalized, hook run;
//! - the origin shuts down ([`Hub::shutdown`]) → recording finalized and hook run, but the live
//!   playlist gets **no** ENDLIST and the open segment is dropped: in a redundant pair the
//!   encoder goes on publishing to the partner, and a cache that fetched an ENDLIST playlist
//!   would tell every viewer the stream is over; a cut-short open segment would differ from the
//!   partner's segment of the same name;
//! - a second publisher is refused, or with `takeover` the first is disconnected (its media
//!   is dropped from the moment the new publisher is accepted);
//! - the packager rejects the media (bad codec config) → that publisher is disconnected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::config::{Config, HookConfig};
use crate::media::{MediaError, NumberingState, Packager, PackagerOptions, Segment};
use crate::record::{self, Recorder, Rollover};
use crate::rtmp::socket::next_tick;
use crate::store::{Layout, LiveStore, StreamName};

/// Why a publish could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Another publisher is live on this stream and takeover is off.
    #[error("stream {0} is already being published")]
    AlreadyPublishing(StreamName),
    /// The stream's task is gone (origin shutting down, or its disk failed).
    #[error("stream {0} is closed")]
    StreamClosed(StreamName),
    /// The packager refused the publisher's media (wrong codec configuration, broken data);
    /// the publisher is disconnected.
    #[error("media refused: {0}")]
    MediaRefused(#[from] MediaError),
}

/// Hub-wide settings, taken from [`Config`] once.
#[derive(Debug)]
struct Settings {
    layout: Layout,
    packager: PackagerOptions,
    target_duration_secs: u32,
    window_segments: usize,
    grace: Duration,
    takeover: bool,
    recording: Option<Rollover>,
    hook: Option<HookConfig>,
    queue: usize,
    /// How often a stream task checks its grace and deletes expired segments.
    housekeeping: Duration,
}

/// The live streams of this origin.
#[derive(Debug)]
pub struct Hub {
    settings: Settings,
    streams: Mutex<HashMap<StreamName, Entry>>,
    /// Tasks of streams whose grace expired, still flushing their last segments and numbering
    /// state; a new task on the same name waits for its predecessor. Lock after `streams`.
    ending: Mutex<HashMap<StreamName, tokio::task::JoinHandle<()>>>,
    /// Set by [`Hub::shutdown`] (under the `streams` lock): no new stream may start.
    closed: AtomicBool,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    tx: mpsc::Sender<Command>,
    media: Arc<Mutex<Media>>,
    /// The publication currently feeding the stream. Set and cleared under the map lock, so
    /// the stream task's "am I idle? then I end" check cannot race a new publish.
    publisher: Option<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// What the publishing connection drives directly: the stream's packager.
#[derive(Debug)]
struct Media {
    packager: Packager,
    /// The publication whose media is packaged; set by the stream task when it accepts a
    /// publisher, so media of a publisher taken over or kicked is dropped at once.
    publisher: Option<u64>,
}

impl Media {
    fn lock(media: &Mutex<Media>) -> MutexGuard<'_, Media> {
        // A push that panicked (a bug) has already ended its connection; the packager is used
        // as it was left rather than ending the stream for its next publisher.
        media.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Command {
    /// A publisher starts; `ready` answers once its media will be packaged.
    Publish {
        id: u64,
        peer: SocketAddr,
        kick: oneshot::Sender<String>,
        ready: oneshot::Sender<()>,
    },
    Unpublish {
        id: u64,
    },
    /// Segments the packager finished, and the numbering to save before writing them.
    Segments {
        segments: Vec<Segment>,
        numbering: Option<NumberingState>,
    },
}

impl Hub {
    /// A hub with no streams.
    pub fn new(config: &Config) -> Arc<Self> {
        let target_ms = config.hls.target_duration_ms;
        let rec = &config.recording;
        Arc::new(Self {
            settings: Settings {
                layout: Layout::new(&config.data_dir),
                packager: PackagerOptions {
                    target_duration_ms: target_ms,
                    window_segments: config.hls.window_segments,
                },
                target_duration_secs: target_ms.div_ceil(1000),
                window_segments: config.hls.window_segments,
                grace: Duration::from_millis(config.hls.reconnect_grace_ms),
                takeover: config.hls.takeover,
                recording: rec.enabled.then_some(Rollover {
                    max_bytes: rec.max_bytes,
                    max_duration_ms: rec.max_duration_secs.saturating_mul(1000),
                }),
                hook: rec.post_record_hook.clone(),
                queue: config.rtmp.stream_queue_messages,
                housekeeping: housekeeping_interval(config.rtmp.read_interval_ms),
            },
            streams: Mutex::new(HashMap::new()),
            ending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        })
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<StreamName, Entry>> {
        // A panic while holding the lock leaves the map itself consistent (every update is a
        // single insert/remove/field write), so a poisoned lock is safe to keep using.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ending(&self) -> MutexGuard<'_, HashMap<StreamName, tokio::task::JoinHandle<()>>> {
        // As for `streams`: single inserts and removes only.
        self.ending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts publishing `stream` from `peer`: a new stream, the same stream resumed within
    /// its reconnect grace, or (with takeover) a stream taken from its current publisher.
    pub async fn publish(
        self: &Arc<Self>,
        stream: StreamName,
        peer: SocketAddr,
    ) -> Result<Publication, HubError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (kick_tx, kick_rx) = oneshot::channel();
        let (tx, media) = {
            let mut streams = self.streams();
            if self.closed.load(Ordering::Relaxed) {
                return Err(HubError::StreamClosed(stream));
            }
            let live = streams.get(&stream).filter(|e| !e.tx.is_closed());
            if live.is_some_and(|e| e.publisher.is_some()) && !self.settings.takeover {
                return Err(HubError::AlreadyPublishing(stream));
            }
            let entry = match streams.get_mut(&stream) {
                Some(e) if !e.tx.is_closed() => e,
                _ => {
                    let (tx, rx) = mpsc::channel(self.settings.queue);
                    // A root span: the stream outlives the connection that started it.
                    let span = tracing::info_span!(parent: None, "stream", stream = %stream);
                    let previous = self.ending().remove(&stream);
                    let task = StreamTask::new(self.clone(), stream.clone());
                    let media = task.media.clone();
                    let task = tokio::spawn(task.run(rx, previous).instrument(span));
                    streams.insert(
                        stream.clone(),
                        Entry {
                            tx,
                            media,
                            publisher: None,
                            task,
                        },
                    );
                    streams
                        .get_mut(&stream)
                        .ok_or_else(|| HubError::StreamClosed(stream.clone()))?
                }
            };
            entry.publisher = Some(id);
            (entry.tx.clone(), entry.media.clone())
        };
        // Built first, so that its drop tells the stream if this publish is abandoned.
        let publication = Publication {
            id,
            stream,
            tx,
            media,
            kicked: kick_rx,
            hub: self.clone(),
        };
        let closed = || HubError::StreamClosed(publication.stream.clone());
        let (ready_tx, ready_rx) = oneshot::channel();
        let publish = Command::Publish {
            id,
            peer,
            kick: kick_tx,
            ready: ready_tx,
        };
        publication.tx.send(publish).await.map_err(|_| closed())?;
        // Media pushed before the stream task accepted the publisher would be dropped (and a
        // new stream's packager restored only then), so the publish is confirmed after this.
        ready_rx.await.map_err(|_| closed())?;
        Ok(publication)
    }

    /// The origin is going away: takes every stream out of the registry *now*, refuses new
    /// publishes, and returns a future that waits for the streams' tasks to stop.
    ///
    /// Call it before the RTMP connections are dropped: a stream that is no longer registered
    /// cannot end by its reconnect grace, so publishers disconnecting during the shutdown do not
    /// turn into an ENDLIST. Each task stops once its publisher is gone: recording finalized,
    /// hook run, but the live playlist left without ENDLIST (the stream itself has not ended;
    /// the partner origin, or this one after its restart, carries it on) and the open segment
    /// dropped unpublished. Streams whose grace had already expired finish with ENDLIST.
    pub fn shutdown(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let entries: Vec<Entry> = {
            let mut streams = self.streams();
            self.closed.store(true, Ordering::Relaxed);
            streams.drain().map(|(_, e)| e).collect()
        };
        let ending: Vec<_> = self.ending().drain().map(|(_, task)| task).collect();
        async move {
            for entry in entries {
                // Once the publishers' clones are gone too, the closed channel tells the task
                // to stop.
                drop(entry.tx);
                if let Err(e) = entry.task.await {
                    tracing::error!(error = %e, "stream task failed during shutdown");
                }
            }
            for task in ending {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "ending stream task failed during shutdown");
                }
            }
        }
    }

    /// Called by the stream task when its grace expired: removes the stream unless a publisher
    /// attached meanwhile. Returns whether it was removed.
    fn remove_if_idle(&self, stream: &StreamName) -> bool {
        let mut streams = self.streams();
        match streams.get(stream) {
            Some(e) if e.publisher.is_none() => {
                if let Some(entry) = streams.remove(stream) {
                    self.ending().insert(stream.clone(), entry.task);
                }
                true
            }
            _ => false,
        }
    }

    fn unpublished(&self, stream: &StreamName, id: u64) {
        if let Some(e) = self.streams().get_mut(stream) {
            if e.publisher == Some(id) {
                e.publisher = None;
            }
        }
    }
}

/// One publisher's handle on its stream. Dropping it ends the publish (the stream enters its
/// reconnect grace).
#[derive(Debug)]
pub struct Publication {
    id: u64,
    stream: StreamName,
    tx: mpsc::Sender<Command>,
    media: Arc<Mutex<Media>>,
    kicked: oneshot::Receiver<String>,
    hub: Arc<Hub>,
}

impl Publication {
    /// Packages an FLV VIDEODATA body at RTMP time `ts_ms`, here in the caller's task. A
    /// segment it finishes goes to the stream's task to be written; this waits only while
    /// that queue is full.
    pub async fn video(&self, ts_ms: u32, data: &[u8]) -> Result<(), HubError> {
        self.push(true, ts_ms, data).await
    }

    /// Packages an FLV AUDIODATA body at RTMP time `ts_ms`, as [`Publication::video`].
    pub async fn audio(&self, ts_ms: u32, data: &[u8]) -> Result<(), HubError> {
        self.push(false, ts_ms, data).await
    }

    async fn push(&self, video: bool, ts_ms: u32, data: &[u8]) -> Result<(), HubError> {
        let (segments, numbering) = {
            let mut media = Media::lock(&self.media);
            if media.publisher != Some(self.id) {
                // Taken over or kicked; the connection learns it from `kicked`.
                return Ok(());
            }
            let pushed = if video {
                media.packager.push_video(ts_ms, data)
            } else {
                media.packager.push_audio(ts_ms, data)
            };
            let segments = match pushed {
                Ok(segments) if segments.is_empty() => return Ok(()),
                Ok(segments) => segments,
                Err(e) => {
                    media.publisher = None;
                    return Err(e.into());
                }
            };
            (segments, media.packager.numbering_state())
        };
        self.tx
            .send(Command::Segments {
                segments,
                numbering,
            })
            .await
            .map_err(|_| HubError::StreamClosed(self.stream.clone()))
    }

    /// The reason, if the stream has disconnected this publisher; see [`Publication::kicked`].
    pub fn try_kicked(&mut self) -> Option<String> {
        match self.kicked.try_recv() {
            Ok(reason) => Some(reason),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some("stream ended".to_owned()),
        }
    }

    /// Resolves when the stream disconnects this publisher, with the reason: taken over by
    /// another publisher, media the packager refused, or the stream ended.
    pub async fn kicked(&mut self) -> String {
        (&mut self.kicked)
            .await
            .unwrap_or_else(|_| "stream ended".to_owned())
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        self.hub.unpublished(&self.stream, self.id);
        let cmd = Command::Unpublish { id: self.id };
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(cmd) {
            // The queue is full of this publisher's segments; the stream must still learn it
            // left.
            let tx = self.tx.clone();
            // No runtime means the origin itself is going away; nobody is left to tell.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }
}

/// State of one stream's packaging task.
struct StreamTask {
    hub: Arc<Hub>,
    stream: StreamName,
    media: Arc<Mutex<Media>>,
    disk: Option<Disk>,
    publisher: Option<(u64, oneshot::Sender<String>)>,
    /// Whether any publisher ever fed this packager (the next one is then a reconnect).
    published_before: bool,
    grace_until: Option<Instant>,
}

/// Why a stream task stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The publisher left and the reconnect grace expired: the stream is over.
    GraceExpired,
    /// The origin is shutting down; the stream itself goes on elsewhere.
    Shutdown,
}

/// The stream's files; moved into `spawn_blocking` for each batch of writes.
struct Disk {
    store: LiveStore,
    recorder: Option<Recorder>,
}

impl StreamTask {
    fn new(hub: Arc<Hub>, stream: StreamName) -> Self {
        let packager = Packager::new(hub.settings.packager.clone());
        Self {
            media: Arc::new(Mutex::new(Media {
                packager,
                publisher: None,
            })),
            hub,
            stream,
            disk: None,
            publisher: None,
            published_before: false,
            grace_until: None,
        }
    }

    /// Runs the stream until its grace expires or the hub shuts down. `previous` is the task
    /// that ended the last publish on this name, if it may still be writing.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        previous: Option<tokio::task::JoinHandle<()>>,
    ) {
        if let Some(previous) = previous {
            // Its last segments move the numbering state this task starts from.
            if let Err(e) = previous.await {
                tracing::error!(error = %e, "the previous task on this stream failed");
            }
        }
        let settings = &self.hub.settings;
        let opened = {
            let dir = settings.layout.live_dir(&self.stream);
            let (secs, window) = (settings.target_duration_secs, settings.window_segments);
            tokio::task::spawn_blocking(move || {
                LiveStore::open(dir, secs, window).map(|store| {
                    let numbering = store.load_numbering();
                    (store, numbering)
                })
            })
            .await
        };
        let recorder = settings.recording.map(|rollover| {
            Recorder::new(
                self.stream.clone(),
                settings.layout.vod_dir(&self.stream),
                settings.target_duration_secs,
                rollover,
            )
        });
        match opened {
            Ok(Ok((store, numbering))) => {
                if let Some(state) = numbering {
                    tracing::info!(
                        last_sequence = state.last_sequence,
                        discontinuity_sequence = state.discontinuity_sequence,
                        "continuing the stream's numbering"
                    );
                    Media::lock(&self.media).packager =
                        Packager::restore(settings.packager.clone(), state);
                }
                self.disk = Some(Disk { store, recorder });
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot open the stream's directory"),
            Err(e) => tracing::error!(error = %e, "opening the stream's directory panicked"),
        }
        if self.disk.is_none() {
            self.hub.streams().remove(&self.stream);
            return;
        }
        // Drives grace expiry and deletion of segments past their availability time.
        let period = settings.housekeeping;
        let mut tick = tokio::time::interval_at(next_tick(period), period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let end = loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break End::Shutdown,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if self.disk.as_ref().is_some_and(|d| d.store.has_expired(now)) {
                        self.with_disk(move |disk| disk.store.delete_expired(now)).await;
                    }
                    if self.grace_until.is_some_and(|t| now >= t) && self.hub.remove_if_idle(&self.stream) {
                        tracing::info!("reconnect grace expired; ending the stream");
                        break End::GraceExpired;
                    }
                }
            }
            if self.disk.is_none() {
                // The disk failed: end the stream rather than pretend to package.
                self.hub.streams().remove(&self.stream);
                return;
            }
        };
        self.finish(end).await;
        if end == End::GraceExpired {
            // Done writing; a later publish need not wait for this task any more. Only this
            // task's own handle can be there: a successor takes it, and cannot end before this.
            self.hub.ending().remove(&self.stream);
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish {
                id,
                peer,
                kick,
                ready,
            } => {
                if let Some((old, old_kick)) = self.publisher.take() {
                    tracing::info!(old, new = id, %peer, "publisher taken over");
                    let _ = old_kick.send("taken over by another publisher".to_owned());
                }
                {
                    let mut media = Media::lock(&self.media);
                    if self.published_before {
                        tracing::info!(%peer, "publisher resumed within grace; discontinuity");
                        media.packager.discontinuity();
                    } else {
                        tracing::info!(%peer, "stream started");
                    }
                    media.publisher = Some(id);
                }
                self.published_before = true;
                self.publisher = Some((id, kick));
                self.grace_until = None;
                // A publisher that gave up waiting is told by its Unpublish.
                let _ = ready.send(());
            }
            Command::Unpublish { id } => {
                if self.publisher.as_ref().is_some_and(|(p, _)| *p == id) {
                    self.publisher = None;
                    Media::lock(&self.media).publisher = None;
                    self.start_grace();
                }
            }
            Command::Segments {
                segments,
                numbering,
            } => self.write(segments, numbering).await,
        }
    }

    fn start_grace(&mut self) {
        tracing::info!(
            grace_ms = self.hub.settings.grace.as_millis() as u64,
            "publisher left; waiting for a reconnect"
        );
        self.grace_until = Some(Instant::now() + self.hub.settings.grace);
    }

    /// Writes segments to the live store and the recording, off the runtime's threads, after
    /// saving the packager's `numbering` as it stood once they were cut.
    async fn write(&mut self, segments: Vec<Segment>, numbering: Option<NumberingState>) {
        if segments.is_empty() {
            return;
        }
        let written = self
            .with_disk(move |disk| {
                // First: a crash before the segments are written then skips their numbers
                // instead of reusing them.
                if let Some(state) = numbering {
                    disk.store.save_numbering(&state)?;
                }
                let mut finished = Vec::new();
                for segment in &segments {
                    let pdt = unix_ms() - i64::from(segment.info.duration_ms);
                    let stored = disk.store.add_segment(segment, pdt, Instant::now())?;
                    tracing::debug!(
                        name = %segment.info.name,
                        sequence = segment.info.sequence,
                        duration_ms = segment.info.duration_ms,
                        bytes = stored.bytes,
                        "segment written"
                    );
                    if let Some(rec) = &mut disk.recorder {
                        match rec.add(&stored) {
                            Ok(f) => finished.extend(f),
                            // Recording trouble must not take the live stream down.
                            Err(e) => tracing::error!(error = %e, "recording segment"),
                        }
                    }
                }
                Ok::<_, crate::store::StoreError>(finished)
            })
            .await;
        match written {
            Some(Ok(finished)) => {
                for f in finished {
                    self.run_hook(f);
                }
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "writing segment; ending the stream");
                self.disk = None;
            }
            None => {}
        }
    }

    /// Runs blocking file work on the stream's [`Disk`] off the runtime's threads, inside the
    /// stream's span. `None` if the disk is gone (an earlier failure) or the work panicked, in
    /// which case the disk is dropped and the stream ends.
    async fn with_disk<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Disk) -> T + Send + 'static,
    ) -> Option<T> {
        let mut disk = self.disk.take()?;
        let span = tracing::Span::current();
        let done = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let out = work(&mut disk);
            (disk, out)
        })
        .await;
        match done {
            Ok((disk, out)) => {
                self.disk = Some(disk);
                Some(out)
            }
            Err(e) => {
                tracing::error!(error = %e, "disk work panicked; ending the stream");
                None
            }
        }
    }

    /// Stops the stream's task. After the grace ([`End::GraceExpired`]) the publish is over:
    /// flush the open segment, ENDLIST. On [`End::Shutdown`] the live playlist stays as it is
    /// (see the module doc). Either way the recording is finalized and its hook awaited.
    async fn finish(&mut self, end: End) {
        if let Some((_, kick)) = self.publisher.take() {
            let reason = match end {
                End::GraceExpired => "stream ended",
                End::Shutdown => "origin shutting down",
            };
            let _ = kick.send(reason.to_owned());
        }
        Media::lock(&self.media).publisher = None;
        if end == End::GraceExpired {
            let (rest, numbering) = {
                let mut media = Media::lock(&self.media);
                (media.packager.finish(), media.packager.numbering_state())
            };
            self.write(rest, numbering).await;
        }
        let ended = self
            .with_disk(move |disk| {
                let live = match end {
                    End::GraceExpired => disk.store.end(),
                    End::Shutdown => Ok(()),
                };
                (live, disk.recorder.as_mut().map(Recorder::finish))
            })
            .await;
        let Some((ended, finished)) = ended else {
            return;
        };
        if let Err(e) = ended {
            tracing::error!(error = %e, "writing the final playlist");
        }
        match finished {
            // Awaited, not spawned: on shutdown the origin waits for the last hooks instead of
            // leaving them to die with the runtime.
            Some(Ok(Some(f))) => {
                if let Some(hook) = &self.hub.settings.hook {
                    record::run_hook(hook, &f).await;
                }
            }
            Some(Err(e)) => tracing::error!(error = %e, "finalizing the recording"),
            Some(Ok(None)) | None => {}
        }
        match end {
            End::GraceExpired => tracing::info!("stream ended"),
            End::Shutdown => tracing::info!("stream stopped; live playlist left open"),
        }
    }

    fn run_hook(&self, finished: record::Finished) {
        if let Some(hook) = self.hub.settings.hook.clone() {
            tokio::spawn(async move { record::run_hook(&hook, &finished).await }.in_current_span());
        }
    }
}

/// About 250 ms, a multiple of the publishers' read interval: on the same grid
/// ([`next_tick`]) the stream tasks then tick together with the connections, and cost the
/// runtime no wakeup of their own.
fn housekeeping_interval(read_interval_ms: u64) -> Duration {
    const ABOUT_MS: u64 = 250;
    let ms = match read_interval_ms {
        0 => ABOUT_MS,
        read => ABOUT_MS.div_ceil(read) * read,
    };
    Duration::from_millis(ms)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
