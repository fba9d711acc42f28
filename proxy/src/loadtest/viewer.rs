//! One simulated viewer: what an HLS player does with a live stream.
//!
//! 1. GET the URL. A multivariant playlist → pick a variant ([`VariantChoice`]) and GET it.
//! 2. Join live the way hls.js does: three segments from the end of the window (all of them
//!    for a playlist with `EXT-X-ENDLIST`).
//! 3. Download each new segment, in order, as the playlist lists it.
//! 4. Reload the media playlist per RFC 8216 §6.3.4: no sooner than one target duration after
//!    the previous load *began* when it changed, half a target duration when it did not.
//!    A playlist with `EXT-X-ENDLIST` is not reloaded: the viewer finishes its segments and
//!    leaves.
//!
//! Failures are recorded and retried the way players retry (after half a target duration, at
//! least 500 ms), so an error never turns one viewer into a tight request loop. A segment that
//! fails is skipped, as a live player skips it.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use http::Uri;
use m3u8_rs::Playlist;
use tokio::time::{sleep_until, Instant};

use super::client::{resolve, Client, FetchError, Fetched, Targets};
use super::stats::{Kind, Outcome, Recorder};

/// Which variant of a multivariant playlist a viewer plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VariantChoice {
    /// The highest BANDWIDTH (viewers on good connections end up there).
    Highest,
    /// The lowest BANDWIDTH.
    Lowest,
    /// The first listed (a player's starting choice).
    First,
    /// Viewer n plays variant n mod count: load spread over every variant.
    Spread,
}

/// Shortest wait before retrying after an error.
const MIN_RETRY: Duration = Duration::from_millis(500);
/// How many segments from the live edge a viewer joins (hls.js's liveSyncDurationCount).
const JOIN_FROM_END: usize = 3;

/// What every viewer shares.
pub struct Shared {
    /// Where recorded samples go.
    pub recorder: Rc<RefCell<Recorder>>,
    /// Hosts that may be contacted.
    pub targets: Targets,
    /// The URL viewers start from.
    pub url: Uri,
    /// Variant selection.
    pub variant: VariantChoice,
    /// Per-request timeout.
    pub timeout: Duration,
    /// When the test ends.
    pub deadline: Instant,
}

/// One viewer, numbered from 0.
pub struct Viewer {
    id: u32,
    shared: Rc<Shared>,
    client: Client,
}

/// The playlist state a viewer keeps between reloads.
struct Position {
    /// Media sequence number of the next segment to download.
    next: Option<u64>,
    /// Media sequence number of the last segment listed in the previous load.
    last_listed: Option<u64>,
}

impl Viewer {
    /// Viewer `id` of the test.
    pub fn new(id: u32, shared: Rc<Shared>) -> Self {
        let client = Client::new(shared.timeout);
        Self { id, shared, client }
    }

    /// Watches until the deadline, the request budget, or the end of a finished stream.
    pub async fn run(mut self) {
        let mut media = self.shared.url.clone();
        let mut position = Position {
            next: None,
            last_listed: None,
        };
        let mut first = true;
        let mut retry = MIN_RETRY;
        while self.may_continue() {
            let load_began = Instant::now();
            let kind = if first { Kind::Master } else { Kind::Playlist };
            let Some(playlist) = self.fetch_playlist(&media, kind).await else {
                self.pause_until(load_began + retry).await;
                continue;
            };
            let playlist = match playlist {
                Playlist::MasterPlaylist(master) if first => {
                    match self.pick_variant(&master, &media) {
                        Some(uri) => {
                            media = uri;
                            first = false;
                            continue;
                        }
                        None => {
                            self.pause_until(load_began + retry).await;
                            continue;
                        }
                    }
                }
                Playlist::MasterPlaylist(_) => {
                    // A variant that turned into a multivariant playlist: a broken stream.
                    self.note(Instant::now(), Kind::Playlist, Outcome::Parse);
                    self.pause_until(load_began + retry).await;
                    continue;
                }
                Playlist::MediaPlaylist(playlist) => playlist,
            };
            first = false;
            let target = Duration::from_secs(playlist.target_duration.max(1));
            retry = (target / 2).max(MIN_RETRY);
            let changed = self
                .download_new_segments(&media, &playlist, &mut position)
                .await;
            if playlist.end_list {
                break;
            }
            let wait = if changed { target } else { target / 2 };
            self.pause_until(load_began + wait).await;
        }
    }

    fn may_continue(&self) -> bool {
        Instant::now() < self.shared.deadline && !self.shared.recorder.borrow().is_full()
    }

    /// Sleeps until `at` (or the deadline, whichever is first).
    async fn pause_until(&self, at: Instant) {
        sleep_until(at.min(self.shared.deadline)).await;
    }

    fn note(&self, start: Instant, kind: Kind, outcome: Outcome) {
        self.shared
            .recorder
            .borrow_mut()
            .record(start.into_std(), kind, outcome, 0);
    }

    /// GETs and parses a playlist; `None` after recording why it failed.
    async fn fetch_playlist(&mut self, uri: &Uri, kind: Kind) -> Option<Playlist> {
        let start = Instant::now();
        let fetched = self.get(uri, kind, true).await?;
        let parsed = m3u8_rs::parse_playlist_res(&fetched.body);
        // Recorded as what it turned out to be: a URL may name either kind.
        let (kind, outcome) = match &parsed {
            Ok(Playlist::MasterPlaylist(_)) => (Kind::Master, Outcome::Ok),
            Ok(Playlist::MediaPlaylist(_)) => (Kind::Playlist, Outcome::Ok),
            Err(_) => (kind, Outcome::Parse),
        };
        self.shared
            .recorder
            .borrow_mut()
            .record(start.into_std(), kind, outcome, fetched.bytes);
        parsed.ok()
    }

    /// GETs `uri` unless it is off-target; failures are recorded here, successes by the caller
    /// (a playlist is only a success once it parses).
    async fn get(&mut self, uri: &Uri, kind: Kind, keep_body: bool) -> Option<Fetched> {
        let start = Instant::now();
        if !self.shared.targets.allows(uri) {
            self.note(start, kind, Outcome::OffTarget);
            return None;
        }
        match self.client.get(uri, keep_body).await {
            Ok(fetched) => Some(fetched),
            Err(FetchError { outcome, bytes }) => {
                self.shared
                    .recorder
                    .borrow_mut()
                    .record(start.into_std(), kind, outcome, bytes);
                None
            }
        }
    }

    fn pick_variant(&self, master: &m3u8_rs::MasterPlaylist, base: &Uri) -> Option<Uri> {
        let variants: Vec<_> = master.variants.iter().filter(|v| !v.is_i_frame).collect();
        let chosen = match self.shared.variant {
            VariantChoice::Highest => variants.iter().max_by_key(|v| v.bandwidth),
            VariantChoice::Lowest => variants.iter().min_by_key(|v| v.bandwidth),
            VariantChoice::First => variants.first(),
            VariantChoice::Spread => variants.get(self.id as usize % variants.len().max(1)),
        };
        let Some(chosen) = chosen else {
            self.note(Instant::now(), Kind::Master, Outcome::Parse);
            return None;
        };
        match resolve(base, &chosen.uri) {
            Ok(uri) => Some(uri),
            Err(_) => {
                self.note(Instant::now(), Kind::Master, Outcome::Parse);
                None
            }
        }
    }

    /// Downloads the segments after `position`; returns whether the playlist changed since the
    /// previous load.
    async fn download_new_segments(
        &mut self,
        base: &Uri,
        playlist: &m3u8_rs::MediaPlaylist,
        position: &mut Position,
    ) -> bool {
        let first_seq = playlist.media_sequence;
        let count = playlist.segments.len() as u64;
        let last_listed = (count > 0).then(|| first_seq + count - 1);
        let changed = last_listed != position.last_listed;
        position.last_listed = last_listed;
        let Some(last) = last_listed else {
            return changed;
        };
        let next = match position.next {
            None if playlist.end_list => first_seq,
            None => (last + 1)
                .saturating_sub(JOIN_FROM_END as u64)
                .max(first_seq),
            Some(next) if next < first_seq => {
                self.shared.recorder.borrow_mut().fell_behind += 1;
                first_seq
            }
            Some(next) => next,
        };
        position.next = Some(next);
        for seq in next..=last {
            if !self.may_continue() {
                break;
            }
            let segment = &playlist.segments[(seq - first_seq) as usize];
            let start = Instant::now();
            let uri = match resolve(base, &segment.uri) {
                Ok(uri) => uri,
                Err(_) => {
                    self.note(start, Kind::Segment, Outcome::Parse);
                    position.next = Some(seq + 1);
                    continue;
                }
            };
            if let Some(fetched) = self.get(&uri, Kind::Segment, false).await {
                let took = start.elapsed();
                let mut recorder = self.shared.recorder.borrow_mut();
                recorder.record(start.into_std(), Kind::Segment, Outcome::Ok, fetched.bytes);
                if took.as_secs_f64() > f64::from(segment.duration) {
                    recorder.slow_segments += 1;
                }
            }
            // A failed segment is skipped, as a live player skips a segment it cannot load.
            position.next = Some(seq + 1);
        }
        changed
    }
}
