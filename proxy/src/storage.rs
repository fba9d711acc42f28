//! The cache store: [`MokaStorage`], pingora's [`Storage`] on a byte-bounded moka cache.
//!
//! It owns three things:
//!
//! - **Committed objects** (serialized [`CacheMeta`] + body) in a [`moka::sync::Cache`] whose
//!   weigher counts bytes, so `max_bytes` bounds memory; moka's TinyLFU policy decides admission
//!   and eviction. Objects also leave once they are past freshness, their serve-stale windows and
//!   [`STALE_RETENTION`], so dead playlists do not wait for size pressure.
//! - **In-flight fills**: an object a cache miss is writing. Lookups return it as a *partial hit*
//!   that streams bytes as they arrive, which is what lets pingora release the cache lock as soon
//!   as the miss handler exists ([`Storage::support_streaming_partial_write`]): coalesced waiters
//!   start streaming at once instead of waiting for the whole object.
//! - **A key index** from the user-visible cache key string (what the service passes as the
//!   [`CacheKey`] primary, e.g. `host/path?_HLS_msn=3`) to the hashed keys pingora stores under,
//!   so the admin API can purge one URL ([`MokaStorage::purge_key`]) or a whole stream
//!   ([`MokaStorage::purge_prefix`]); pingora's own [`Storage::purge`] only ever sees hashes.
//!
//! # Fill lifecycle
//!
//! 1. [`Storage::get_miss_handler`] registers a fill under the key's hash.
//! 2. Each `write_body` appends a chunk and wakes every partial reader.
//! 3. `finish` commits the body to the cache and only then publishes end-of-body. A
//!    `write_body(.., eof = true)` does not: until `finish` the write may still fail.
//! 4. A miss handler dropped without `finish` (the origin closed mid-body, the fill hit an error)
//!    publishes *aborted*: readers get an error, never a clean end-of-body that would make a
//!    truncated object look complete, and nothing is stored. That is the failure pingora issue
//!    #932 describes for `MemCache`; `aborted_fill_errors_readers_and_stores_nothing` pins it.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::Expiry;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::streaming_write::U64WriteId;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheEntryKey, CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use tokio::sync::watch;

/// How long an object is kept after its last serve-stale window closes.
///
/// A stale object that still has its validators (ETag, Last-Modified) can be revalidated with a
/// conditional request, and a 304 keeps the stored body instead of refetching it; a minute covers
/// the next few requests for an object that just went stale, after which it is dead weight.
pub const STALE_RETENTION: Duration = Duration::from_secs(60);

/// Upper bound on how long an object may be retained; moka rejects expiry durations beyond
/// about a thousand years, and anything past a year is "until evicted" for a live cache anyway.
const MAX_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Bytes each entry costs beyond its meta, body and key (moka node, `Arc`, entry struct, index
/// slot); counted so a cache of many tiny playlists cannot overshoot `max_bytes` by much.
const ENTRY_OVERHEAD_BYTES: usize = 256;

/// The error a partial reader gets when the fill it streams is abandoned before `finish`.
const FILL_ABORTED: ErrorType = ErrorType::Custom("CacheFillAborted");

/// Counters and sizes of a [`MokaStorage`], for the admin API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageStats {
    /// Bytes held by committed objects (meta + body + per-entry overhead), at most `max_bytes`.
    pub bytes: u64,
    /// The configured byte bound.
    pub max_bytes: u64,
    /// Committed objects.
    pub items: u64,
    /// Objects removed (or refused admission) by the size bound since start.
    pub evictions: u64,
    /// Objects removed since start because they were past freshness, serve-stale windows and
    /// [`STALE_RETENTION`].
    pub expirations: u64,
    /// Fills in progress (objects being written by a cache miss right now).
    pub in_flight_fills: usize,
}

/// A [`CacheMeta`] kept parsed for fast hits.
///
/// pingora's `CacheMeta::deserialize` decompresses and parses the response header on every call
/// (measured here: ~13 µs per hit unoptimised, 4× the alternative), and even with the header
/// kept parsed, decoding the small internal part still costs a zstd pass over an empty header
/// (3.4 % of a playlist-hit profile). So a hit rebuilds the meta with `CacheMeta::new` from the
/// kept timestamps and the parsed header, and only a meta carrying a variance or an epoch
/// override (neither of which this proxy sets) goes through the decoder.
///
/// `CacheMeta::new` cannot set `updated` (when the object was last revalidated, what `Age` and
/// freshness count from) nor the provenance pingora carries across refetches, so a refreshed
/// object gets `updated` as its epoch override: `epoch()`, `age()`, `fresh_sec()` and the `Age`
/// header are what the decoded meta gives, `created()` is the original admission time, and
/// `provenance()` falls back to `created()`. pingora reads provenance only as the tombstone of
/// Vary variants, which this proxy never creates (no `cache_vary_filter`).
#[derive(Clone)]
struct StoredMeta {
    times: MetaTimes,
    /// The serialized internal part, kept only when [`MetaTimes`] cannot rebuild it.
    internal: Option<Vec<u8>>,
    header: ResponseHeader,
    /// Serialized size of the internal part and the header, for the weigher.
    serialized_len: usize,
    /// When the object may be dropped (see [`retain_until`]); `None` = only by size pressure.
    retain_until: Option<SystemTime>,
}

/// The parts of pingora's internal meta a hit needs.
#[derive(Clone, Copy)]
struct MetaTimes {
    fresh_until: SystemTime,
    created: SystemTime,
    updated: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
}

impl StoredMeta {
    fn new(meta: &CacheMeta) -> Result<Self> {
        let (internal, header) = meta.serialize()?;
        let rebuildable = meta.variance().is_none() && meta.epoch_override().is_none();
        Ok(StoredMeta {
            times: MetaTimes {
                fresh_until: meta.fresh_until(),
                created: meta.created(),
                updated: meta.updated(),
                stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
                stale_if_error_sec: meta.stale_if_error_sec(),
            },
            serialized_len: internal.len() + header.len(),
            internal: (!rebuildable).then_some(internal),
            header: meta.response_header_copy(),
            retain_until: retain_until(meta),
        })
    }

    fn to_cache_meta(&self) -> Result<CacheMeta> {
        if let Some(internal) = &self.internal {
            let mut meta = CacheMeta::deserialize(internal, headerless()?)?;
            *meta.response_header_mut() = self.header.clone();
            return Ok(meta);
        }
        let t = &self.times;
        let mut meta = CacheMeta::new(
            t.fresh_until,
            t.created,
            t.stale_while_revalidate_sec,
            t.stale_if_error_sec,
            self.header.clone(),
        );
        if t.updated != t.created {
            meta.set_epoch_override(t.updated);
        }
        Ok(meta)
    }

    fn len(&self) -> usize {
        self.serialized_len
    }

    /// Gives a stored header that had no `Content-Length` (an origin's chunked response, or a
    /// playlist a module rewrote before the cache) the length of its now complete `body`, so
    /// hits go out with exact framing: header and body in one write instead of a chunk each
    /// and a terminator. Statuses that carry no body keep their header.
    fn frame_exactly(mut self, body: usize) -> Self {
        let status = self.header.status;
        let bodiless = status.is_informational()
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED;
        if !bodiless
            && !self
                .header
                .headers
                .contains_key(http::header::CONTENT_LENGTH)
        {
            self.header.remove_header(&http::header::TRANSFER_ENCODING);
            // Cannot fail: a number is a valid header value.
            let _ = self
                .header
                .insert_header(http::header::CONTENT_LENGTH, body);
        }
        self
    }
}

/// A serialized empty response header: the cheapest header to hand `CacheMeta::deserialize`
/// before the real, already parsed header replaces it.
fn headerless() -> Result<&'static [u8]> {
    static HEADERLESS: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(bytes) = HEADERLESS.get() {
        return Ok(bytes);
    }
    let now = SystemTime::now();
    let empty = ResponseHeader::build(200, Some(0))?;
    let (_, bytes) = CacheMeta::new(now, now, 0, 0, empty).serialize()?;
    Ok(HEADERLESS.get_or_init(|| bytes))
}

/// Freshness end + the longer serve-stale window + [`STALE_RETENTION`].
fn retain_until(meta: &CacheMeta) -> Option<SystemTime> {
    let stale_secs = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    meta.fresh_until()
        .checked_add(Duration::from_secs(stale_secs.into()))?
        .checked_add(STALE_RETENTION)
}

/// One committed object.
struct Entry {
    /// The user-visible key string, to keep the key index in step on removal.
    primary: Arc<str>,
    /// Which write produced this object, so a late removal notice for an older object under the
    /// same hash cannot drop the index slot of a newer one.
    generation: u64,
    meta: StoredMeta,
    body: Bytes,
}

impl Entry {
    fn weight(&self) -> usize {
        object_weight(&self.primary, &self.meta, self.body.len())
    }

    fn time_to_retain(&self) -> Option<Duration> {
        let until = self.meta.retain_until?;
        let left = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some(left.min(MAX_RETENTION))
    }
}

fn object_weight(primary: &str, meta: &StoredMeta, body_len: usize) -> usize {
    ENTRY_OVERHEAD_BYTES
        .saturating_add(primary.len())
        .saturating_add(meta.len())
        .saturating_add(body_len)
}

/// moka per-entry expiry: each object lives until its own `retain_until`, recomputed when
/// `update_meta` replaces it after a revalidation.
struct RetainUntil;

impl Expiry<HashBinary, Arc<Entry>> for RetainUntil {
    fn expire_after_create(
        &self,
        _key: &HashBinary,
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        entry.time_to_retain()
    }

    fn expire_after_update(
        &self,
        _key: &HashBinary,
        entry: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        entry.time_to_retain()
    }
}

/// User-visible key string → `(hash, generation)` of each stored object under it (usually one;
/// more only when pingora adds a variance).
///
/// A `BTreeMap` so that a prefix purge is a range scan, not a walk over every object.
#[derive(Default)]
struct KeyIndex {
    by_key: BTreeMap<Arc<str>, Vec<(HashBinary, u64)>>,
}

impl KeyIndex {
    fn insert(&mut self, key: &Arc<str>, hash: HashBinary, generation: u64) {
        let slots = self.by_key.entry(Arc::clone(key)).or_default();
        match slots.iter_mut().find(|(h, _)| *h == hash) {
            Some(slot) => slot.1 = generation,
            None => slots.push((hash, generation)),
        }
    }

    fn remove(&mut self, key: &str, hash: HashBinary, generation: u64) {
        if let Some(slots) = self.by_key.get_mut(key) {
            slots.retain(|&(h, g)| h != hash || g != generation);
            if slots.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    fn exact(&self, key: &str) -> Vec<HashBinary> {
        self.by_key
            .get(key)
            .map(|slots| slots.iter().map(|(h, _)| *h).collect())
            .unwrap_or_default()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<HashBinary> {
        self.by_key
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .flat_map(|(_, slots)| slots.iter().map(|(h, _)| *h))
            .collect()
    }
}

/// Where a fill stands; only `finish` moves it to `Complete`, only a drop to `Aborted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum FillState {
    #[default]
    Writing,
    Complete,
    Aborted,
}

/// What partial readers watch: the chunks written so far and the state.
#[derive(Default)]
struct Progress {
    chunks: Vec<Bytes>,
    state: FillState,
}

/// An object being written by a cache miss.
struct Fill {
    /// Unique per write; doubles as the streaming write tag and the committed entry's generation.
    id: u64,
    hash: HashBinary,
    primary: Arc<str>,
    meta: StoredMeta,
    progress: watch::Sender<Progress>,
    /// Set by a purge: the fill keeps feeding its current readers (the bytes are genuine) but new
    /// lookups no longer see it and `finish` does not commit it, since its response predates the
    /// purge.
    purged: AtomicBool,
}

impl Fill {
    fn partial_hit(&self) -> Result<(CacheMeta, HitHandler)> {
        let meta = self.meta.to_cache_meta()?;
        let reader = HitBody::Partial(PartialHit {
            progress: self.progress.subscribe(),
            next_chunk: 0,
        });
        Ok((meta, Box::new(reader)))
    }

    fn is_purged(&self) -> bool {
        self.purged.load(Ordering::Acquire)
    }
}

/// Removal counters shared with moka's eviction listener.
#[derive(Default)]
struct Counters {
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// Locks a mutex, recovering it if a panicking thread poisoned it: every critical section here
/// is a few map operations that leave the maps consistent, and cascading panics through every
/// request would be worse than continuing.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// pingora's [`Storage`] on moka, bounded by bytes, with streaming partial writes and purge by
/// key string or prefix. See the module docs for the design.
///
/// pingora's storage methods take `&'static self` (the cache holds a
/// `&'static (dyn Storage + Sync)`), so the proxy builds one at startup and calls
/// [`MokaStorage::leak`]; it lives for the whole process, which is what leaking states.
pub struct MokaStorage {
    objects: moka::sync::Cache<HashBinary, Arc<Entry>>,
    index: Arc<Mutex<KeyIndex>>,
    /// Hash → fills writing it. A fill stays here until its writer finishes or is dropped, so the
    /// writer always finds its own fill in `lookup_streaming_write`, even after a purge.
    fills: Mutex<HashMap<HashBinary, Vec<Arc<Fill>>>>,
    /// Number of fills in `fills`, so lookups skip the mutex when nothing is in flight.
    fill_count: AtomicUsize,
    next_id: AtomicU64,
    counters: Arc<Counters>,
    max_bytes: u64,
    /// Largest object accepted: `max_bytes`, or moka's `u32` weight limit if lower.
    max_object_bytes: usize,
}

impl MokaStorage {
    /// A store holding at most `max_bytes` of objects (meta + body + a small per-entry overhead).
    pub fn new(max_bytes: u64) -> Self {
        let index = Arc::new(Mutex::new(KeyIndex::default()));
        let counters = Arc::new(Counters::default());
        let listener_index = Arc::clone(&index);
        let listener_counters = Arc::clone(&counters);
        let objects = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_hash: &HashBinary, entry: &Arc<Entry>| {
                u32::try_from(entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(RetainUntil)
            .eviction_listener(
                move |hash: Arc<HashBinary>, entry: Arc<Entry>, cause: RemovalCause| {
                    match cause {
                        // The hash is still stored, under a newer object: its index slot stays.
                        RemovalCause::Replaced => return,
                        RemovalCause::Size => {
                            listener_counters.evictions.fetch_add(1, Ordering::Relaxed);
                        }
                        RemovalCause::Expired => {
                            listener_counters
                                .expirations
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        RemovalCause::Explicit => {}
                    }
                    lock(&listener_index).remove(&entry.primary, *hash, entry.generation);
                },
            )
            .build();
        let max_object_bytes =
            usize::try_from(max_bytes.min(u64::from(u32::MAX))).unwrap_or(u32::MAX as usize);
        MokaStorage {
            objects,
            index,
            fills: Mutex::new(HashMap::new()),
            fill_count: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            counters,
            max_bytes,
            max_object_bytes,
        }
    }

    /// Moves the store to the heap for the rest of the process, as pingora's `&'static self`
    /// storage API requires. Call once at startup.
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self))
    }

    /// Removes every object stored under the cache key string `primary_key` (the exact string the
    /// service used as the [`CacheKey`] primary) and stops any fill of it from being stored.
    /// Returns whether anything was removed or cancelled.
    pub fn purge_key(&self, primary_key: &str) -> bool {
        let cancelled = self.cancel_fills(|fill| &*fill.primary == primary_key);
        let hashes = lock(&self.index).exact(primary_key);
        let removed = self.remove_objects(&hashes);
        tracing::debug!(key = primary_key, removed, cancelled, "cache purge by key");
        removed + cancelled > 0
    }

    /// Removes every object whose cache key string starts with `prefix` (e.g. all of one live
    /// stream: `host/live/stream1/`) and stops matching fills from being stored. An empty prefix
    /// purges everything. Returns how many objects were removed plus fills cancelled.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        // Fills first: a fill that commits concurrently either does so before it is marked here,
        // and then its index slot is visible to the scan below, or it sees the mark and skips.
        let cancelled = self.cancel_fills(|fill| fill.primary.starts_with(prefix));
        let hashes = lock(&self.index).with_prefix(prefix);
        let removed = self.remove_objects(&hashes);
        tracing::debug!(prefix, removed, cancelled, "cache purge by prefix");
        removed + cancelled
    }

    /// Sizes and counters. Runs moka's pending maintenance first so sizes reflect every write
    /// so far (moka applies them lazily); cheap enough for an admin call or a metrics scrape.
    pub fn stats(&self) -> StorageStats {
        self.objects.run_pending_tasks();
        StorageStats {
            bytes: self.objects.weighted_size(),
            max_bytes: self.max_bytes,
            items: self.objects.entry_count(),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            in_flight_fills: self.fill_count.load(Ordering::Relaxed),
        }
    }

    fn remove_objects(&self, hashes: &[HashBinary]) -> usize {
        hashes
            .iter()
            .filter(|hash| self.objects.remove(*hash).is_some())
            .count()
    }

    /// Marks matching fills purged; returns how many were newly marked.
    fn cancel_fills(&self, matches: impl Fn(&Fill) -> bool) -> usize {
        if self.fill_count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let fills = lock(&self.fills);
        fills
            .values()
            .flatten()
            .filter(|fill| matches(fill) && !fill.purged.swap(true, Ordering::AcqRel))
            .count()
    }

    /// The newest fill of `hash` that a plain lookup may stream.
    fn active_fill(&self, hash: &HashBinary) -> Option<Arc<Fill>> {
        if self.fill_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let fills = lock(&self.fills);
        fills
            .get(hash)?
            .iter()
            .rev()
            .find(|fill| !fill.is_purged())
            .cloned()
    }

    fn register_fill(&self, fill: Arc<Fill>) {
        let mut fills = lock(&self.fills);
        fills.entry(fill.hash).or_default().push(fill);
        self.fill_count.fetch_add(1, Ordering::AcqRel);
    }

    fn unregister_fill(fills: &mut HashMap<HashBinary, Vec<Arc<Fill>>>, fill: &Fill) -> bool {
        let Some(list) = fills.get_mut(&fill.hash) else {
            return false;
        };
        let before = list.len();
        list.retain(|other| other.id != fill.id);
        let removed = list.len() != before;
        if list.is_empty() {
            fills.remove(&fill.hash);
        }
        removed
    }

    /// Stores a finished fill's body (unless a purge cancelled it) and retires the fill. Done
    /// under the fills lock so a concurrent purge either sees the stored object or has already
    /// marked the fill.
    fn commit(&self, fill: &Fill, body: Bytes) -> usize {
        let entry = Arc::new(Entry {
            primary: Arc::clone(&fill.primary),
            generation: fill.id,
            meta: fill.meta.clone().frame_exactly(body.len()),
            body,
        });
        let weight = entry.weight();
        let mut fills = lock(&self.fills);
        if !fill.is_purged() {
            // Index before cache: removal notices for this object can only come after the insert,
            // and the generation check makes notices for older objects harmless.
            lock(&self.index).insert(&fill.primary, fill.hash, fill.id);
            self.objects.insert(fill.hash, entry);
        }
        if Self::unregister_fill(&mut fills, fill) {
            self.fill_count.fetch_sub(1, Ordering::AcqRel);
        }
        weight
    }

    fn abandon(&self, fill: &Fill) {
        let mut fills = lock(&self.fills);
        if Self::unregister_fill(&mut fills, fill) {
            self.fill_count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[async_trait]
impl Storage for MokaStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        // An in-flight fill wins over a stored object: when a stale object is being refetched,
        // readers should get the new body as it arrives, not the old one.
        if let Some(fill) = self.active_fill(&hash) {
            return fill.partial_hit().map(Some);
        }
        let Some(entry) = self.objects.get(&hash) else {
            return Ok(None);
        };
        let meta = entry.meta.to_cache_meta()?;
        let reader = HitBody::Complete(CompleteHit {
            body: entry.body.clone(),
            range: 0..entry.body.len(),
            done: false,
            weight: entry.weight(),
        });
        Ok(Some((meta, Box::new(reader))))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = streaming_write_tag else {
            return self.lookup(key, trace).await;
        };
        let id: u64 = U64WriteId::try_from(tag)
            .map_err(|_| {
                Error::explain(
                    ErrorType::InternalError,
                    format!("streaming write tag has {} bytes, expected 8", tag.len()),
                )
            })?
            .into();
        let hash = key.combined_bin();
        let fill = lock(&self.fills)
            .get(&hash)
            .and_then(|list| list.iter().find(|fill| fill.id == id).cloned());
        fill.map(|fill| fill.partial_hit()).transpose()
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let primary: Arc<str> = Arc::from(String::from_utf8_lossy(key.primary_key()).as_ref());
        let meta = StoredMeta::new(meta)?;
        let base_weight = object_weight(&primary, &meta, 0);
        let (progress, _) = watch::channel(Progress::default());
        let fill = Arc::new(Fill {
            id,
            hash: key.combined_bin(),
            primary,
            meta,
            progress,
            purged: AtomicBool::new(false),
        });
        self.register_fill(Arc::clone(&fill));
        Ok(Box::new(FillWriter {
            storage: self,
            fill,
            tag: U64WriteId::from(id),
            weight: base_weight,
            finished: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Entries carry no pingora entry id, so an id-qualified target names nothing stored here.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let hash = target.key().combined_bin();
        let cancelled = self.cancel_fills(|fill| fill.hash == hash);
        let removed = self.objects.remove(&hash).is_some();
        if removed || cancelled > 0 {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let meta = StoredMeta::new(meta)?;
        // Compute, not get-then-insert: an object evicted while its revalidation was in flight
        // must stay gone rather than be resurrected with a fresh meta.
        let result =
            self.objects
                .entry(key.combined_bin())
                .and_compute_with(|current| match current {
                    Some(current) => {
                        let old = current.into_value();
                        Op::Put(Arc::new(Entry {
                            primary: Arc::clone(&old.primary),
                            generation: old.generation,
                            meta: meta.frame_exactly(old.body.len()),
                            body: old.body.clone(),
                        }))
                    }
                    None => Op::Nop,
                });
        Ok(matches!(result, CompResult::ReplacedWith(_)))
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

/// The miss handler: appends to its [`Fill`], commits on `finish`, aborts on drop.
struct FillWriter {
    storage: &'static MokaStorage,
    fill: Arc<Fill>,
    tag: U64WriteId,
    /// Weight the object would have if committed now.
    weight: usize,
    finished: bool,
}

#[async_trait]
impl HandleMiss for FillWriter {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        let state = self.fill.progress.borrow().state;
        if state != FillState::Writing {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("cache fill of {} written after it ended", self.fill.primary),
            );
        }
        self.weight = self.weight.saturating_add(data.len());
        // Buffering a body that can never be stored would only grow memory without bound;
        // failing the fill is the same outcome as pingora's own max-file-size check.
        if self.weight > self.storage.max_object_bytes {
            return Error::e_explain(
                ErrorType::InternalError,
                format!(
                    "cache fill of {} exceeds the cache's {} byte object limit",
                    self.fill.primary, self.storage.max_object_bytes
                ),
            );
        }
        if !data.is_empty() {
            self.fill.progress.send_modify(|p| p.chunks.push(data));
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let body = {
            let progress = self.fill.progress.borrow();
            concat(&progress.chunks)
        };
        let weight = self.storage.commit(&self.fill, body);
        self.finished = true;
        self.fill
            .progress
            .send_modify(|p| p.state = FillState::Complete);
        Ok(MissFinishType::Created(weight))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.fill
            .progress
            .send_modify(|p| p.state = FillState::Aborted);
        self.storage.abandon(&self.fill);
        tracing::warn!(
            key = %self.fill.primary,
            written_bytes = self.weight,
            "cache fill ended before its body was complete; readers get an error, nothing stored"
        );
    }
}

fn concat(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [only] => only.clone(),
        _ => {
            let mut body = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in chunks {
                body.extend_from_slice(chunk);
            }
            body.freeze()
        }
    }
}

/// The whole body `hit` is about to serve, if it is one of ours holding a complete object and
/// nothing of it has been read yet; `None` for a fill still being streamed. The bytes are
/// shared with the stored object, not copied.
pub fn whole_body(hit: &HitHandler) -> Option<Bytes> {
    match hit.as_any().downcast_ref::<HitBody>()? {
        HitBody::Complete(hit) if !hit.done => Some(hit.body.slice(hit.range.clone())),
        _ => None,
    }
}

/// The hit handler: a stored object, or a fill being streamed.
enum HitBody {
    Complete(CompleteHit),
    Partial(PartialHit),
}

struct CompleteHit {
    body: Bytes,
    range: Range<usize>,
    done: bool,
    weight: usize,
}

struct PartialHit {
    progress: watch::Receiver<Progress>,
    next_chunk: usize,
}

impl PartialHit {
    async fn read(&mut self) -> Result<Option<Bytes>> {
        loop {
            {
                let progress = self.progress.borrow_and_update();
                if let Some(chunk) = progress.chunks.get(self.next_chunk) {
                    self.next_chunk += 1;
                    return Ok(Some(chunk.clone()));
                }
                match progress.state {
                    FillState::Writing => {}
                    FillState::Complete => return Ok(None),
                    FillState::Aborted => return fill_aborted(),
                }
            }
            // A closed channel without a final state is an abandoned fill as well: only an
            // explicit `Complete` may end a body cleanly.
            if self.progress.changed().await.is_err() {
                return fill_aborted();
            }
        }
    }
}

fn fill_aborted<T>() -> Result<T> {
    Error::e_explain(
        FILL_ABORTED,
        "the cache fill being streamed ended before its body was complete",
    )
}

#[async_trait]
impl HandleHit for HitBody {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            HitBody::Complete(hit) => {
                if hit.done {
                    return Ok(None);
                }
                hit.done = true;
                Ok(Some(hit.body.slice(hit.range.clone())))
            }
            HitBody::Partial(hit) => hit.read().await,
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        matches!(self, HitBody::Complete(_))
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let HitBody::Complete(hit) = self else {
            return Error::e_explain(
                ErrorType::InternalError,
                "seek on a cache object that is still being filled",
            );
        };
        let len = hit.body.len();
        // An end past the body is allowed (HTTP ranges may overshoot); the start must be inside.
        let end = end.map_or(len, |end| end.min(len));
        if start >= len || start > end {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek {start}..{end} outside a {len} byte body"),
            );
        }
        hit.range = start..end;
        // A seek rewinds, so one handler can serve several ranges.
        hit.done = false;
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        matches!(self, HitBody::Complete(_))
    }

    fn get_eviction_weight(&self) -> usize {
        match self {
            HitBody::Complete(hit) => hit.weight,
            HitBody::Partial(_) => 0,
        }
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;

    const PENDING: Duration = Duration::from_millis(50);
    const READY: Duration = Duration::from_secs(5);

    fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    fn meta(fresh_secs: u64) -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("content-type", "video/mp2t").unwrap();
        CacheMeta::new(now + Duration::from_secs(fresh_secs), now, 0, 0, header)
    }

    fn store(max_bytes: u64) -> &'static MokaStorage {
        MokaStorage::new(max_bytes).leak()
    }

    async fn fill(store: &'static MokaStorage, key: &str, body: &'static [u8]) {
        let key = CacheKey::new(key, "");
        let mut writer = store
            .get_miss_handler(&key, &meta(60), &span())
            .await
            .unwrap();
        writer
            .write_body(Bytes::from_static(body), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
    }

    async fn read_all(reader: &mut HitHandler) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(chunk) = tokio::time::timeout(READY, reader.read_body())
            .await
            .unwrap()?
        {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn stored_body(store: &'static MokaStorage, key: &str) -> Option<Vec<u8>> {
        let (_, mut reader) = store
            .lookup(&CacheKey::new(key, ""), &span())
            .await
            .unwrap()?;
        Some(read_all(&mut reader).await.unwrap())
    }

    #[tokio::test]
    async fn finished_fill_is_a_hit_with_the_whole_body_and_meta() {
        let store = store(1 << 20);
        let key = CacheKey::new("example.com/live/1.ts", "");
        assert!(store.lookup(&key, &span()).await.unwrap().is_none());

        // Sent chunked by the origin: the stored header gets the length of the whole body.
        let mut written = meta(60);
        written
            .response_header_mut()
            .insert_header("transfer-encoding", "chunked")
            .unwrap();
        let mut writer = store
            .get_miss_handler(&key, &written, &span())
            .await
            .unwrap();
        writer
            .write_body(Bytes::from_static(b"seg"), false)
            .await
            .unwrap();
        writer
            .write_body(Bytes::from_static(b"ment"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();

        let (read_meta, mut reader) = store.lookup(&key, &span()).await.unwrap().unwrap();
        assert_eq!(read_meta.fresh_until(), written.fresh_until());
        assert_eq!(
            read_meta
                .response_header()
                .headers
                .get("content-type")
                .unwrap(),
            "video/mp2t"
        );
        let header = read_meta.response_header();
        assert_eq!(header.headers.get("content-length").unwrap(), "7");
        assert!(header.headers.get("transfer-encoding").is_none());
        assert!(reader.can_seek(), "a stored object serves ranges directly");
        assert_eq!(whole_body(&reader).as_deref(), Some(&b"segment"[..]));
        assert_eq!(read_all(&mut reader).await.unwrap(), b"segment");
        assert!(
            whole_body(&reader).is_none(),
            "nothing once it has been read"
        );
        let stats = store.stats();
        assert_eq!(stats.items, 1);
        assert_eq!(stats.in_flight_fills, 0);
        assert!(stats.bytes >= 7);
    }

    #[tokio::test]
    async fn readers_stream_a_partial_fill_chunk_by_chunk_as_it_is_written() {
        let store = store(1 << 20);
        let key = CacheKey::new("example.com/live/2.ts", "");
        let mut writer = store
            .get_miss_handler(&key, &meta(60), &span())
            .await
            .unwrap();
        assert_eq!(store.stats().in_flight_fills, 1);

        let (_, mut early) = store.lookup(&key, &span()).await.unwrap().unwrap();
        assert!(
            !early.can_seek(),
            "an object still being filled cannot seek"
        );
        assert!(whole_body(&early).is_none(), "nor is it whole");
        assert!(
            tokio::time::timeout(PENDING, early.read_body())
                .await
                .is_err(),
            "nothing written yet: the reader waits instead of ending the body"
        );

        writer
            .write_body(Bytes::from_static(b"one"), false)
            .await
            .unwrap();
        let chunk = tokio::time::timeout(READY, early.read_body())
            .await
            .unwrap();
        assert_eq!(chunk.unwrap().unwrap(), "one");

        writer
            .write_body(Bytes::from_static(b"two"), false)
            .await
            .unwrap();
        let chunk = tokio::time::timeout(READY, early.read_body())
            .await
            .unwrap();
        assert_eq!(chunk.unwrap().unwrap(), "two");

        // A reader that arrives mid-fill starts from the first byte.
        let (_, mut late) = store.lookup(&key, &span()).await.unwrap().unwrap();
        let chunk = tokio::time::timeout(READY, late.read_body()).await.unwrap();
        assert_eq!(chunk.unwrap().unwrap(), "one");

        // eof on the last write is not the end yet: only finish commits and ends the body.
        writer
            .write_body(Bytes::from_static(b"three"), true)
            .await
            .unwrap();
        let chunk = tokio::time::timeout(READY, early.read_body())
            .await
            .unwrap();
        assert_eq!(chunk.unwrap().unwrap(), "three");
        assert!(tokio::time::timeout(PENDING, early.read_body())
            .await
            .is_err());

        let waiting = tokio::spawn(async move { read_all(&mut early).await });
        writer.finish().await.unwrap();
        assert!(waiting.await.unwrap().unwrap().is_empty());
        assert_eq!(read_all(&mut late).await.unwrap(), b"twothree");
        assert_eq!(
            stored_body(store, "example.com/live/2.ts").await.unwrap(),
            b"onetwothree"
        );
    }

    #[tokio::test]
    async fn the_writer_finds_its_own_fill_by_streaming_write_tag() {
        let store = store(1 << 20);
        let key = CacheKey::new("example.com/live/3.ts", "");
        let mut writer = store
            .get_miss_handler(&key, &meta(60), &span())
            .await
            .unwrap();
        let tag = writer.streaming_write_tag().unwrap().to_vec();
        let (_, mut own) = store
            .lookup_streaming_write(&key, Some(&tag), &span())
            .await
            .unwrap()
            .unwrap();
        writer
            .write_body(Bytes::from_static(b"body"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
        assert_eq!(read_all(&mut own).await.unwrap(), b"body");

        let unknown = U64WriteId::from(u64::MAX);
        let none = store
            .lookup_streaming_write(&key, Some(unknown.as_bytes()), &span())
            .await
            .unwrap();
        assert!(none.is_none(), "a tag names one write, never another one");
    }

    #[tokio::test]
    async fn aborted_fill_errors_readers_and_stores_nothing() {
        let store = store(1 << 20);
        let key = CacheKey::new("example.com/live/4.ts", "");
        let mut writer = store
            .get_miss_handler(&key, &meta(60), &span())
            .await
            .unwrap();
        writer
            .write_body(Bytes::from_static(b"prefix"), false)
            .await
            .unwrap();

        let (_, mut caught_up) = store.lookup(&key, &span()).await.unwrap().unwrap();
        let chunk = tokio::time::timeout(READY, caught_up.read_body())
            .await
            .unwrap();
        assert_eq!(chunk.unwrap().unwrap(), "prefix");
        // This reader is already waiting for the next chunk when the origin goes away.
        let waiting = tokio::spawn(async move { caught_up.read_body().await });
        let (_, mut from_start) = store.lookup(&key, &span()).await.unwrap().unwrap();
        tokio::time::sleep(PENDING).await;

        drop(writer);

        let err = tokio::time::timeout(READY, waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.etype(), &FILL_ABORTED);
        // A reader behind the abort still gets the bytes that exist, then the error, not EOF.
        let err = read_all(&mut from_start).await.unwrap_err();
        assert_eq!(err.etype(), &FILL_ABORTED);

        assert!(store.lookup(&key, &span()).await.unwrap().is_none());
        let stats = store.stats();
        assert_eq!(stats.items, 0);
        assert_eq!(stats.in_flight_fills, 0);
    }

    #[tokio::test]
    async fn total_weight_stays_within_max_bytes() {
        const MAX: u64 = 64 * 1024;
        let store = store(MAX);
        static BODY: [u8; 4096] = [7; 4096];
        for i in 0..64 {
            fill(store, &format!("example.com/live/{i}.ts"), &BODY).await;
        }
        let stats = store.stats();
        assert!(
            stats.bytes <= MAX,
            "{} bytes stored, bound is {MAX}",
            stats.bytes
        );
        assert!(stats.items < 64 && stats.items > 0, "{} items", stats.items);
        assert!(stats.evictions > 0);
        let indexed = lock(&store.index).by_key.len() as u64;
        assert_eq!(
            indexed, stats.items,
            "evicted keys leave the purge index too"
        );
    }

    #[tokio::test]
    async fn object_larger_than_the_cache_fails_its_fill_and_is_not_stored() {
        let store = store(1024);
        let key = CacheKey::new("example.com/vod/big.mp4", "");
        let mut writer = store
            .get_miss_handler(&key, &meta(60), &span())
            .await
            .unwrap();
        let err = writer
            .write_body(Bytes::from(vec![0; 2048]), true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("object limit"), "{err}");
        drop(writer);
        assert!(store.lookup(&key, &span()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn purge_key_removes_exactly_that_key() {
        let store = store(1 << 20);
        fill(store, "example.com/live/a.m3u8", b"playlist").await;
        fill(store, "example.com/live/a.m3u8?_HLS_msn=3", b"blocking").await;

        assert!(store.purge_key("example.com/live/a.m3u8"));
        assert!(stored_body(store, "example.com/live/a.m3u8")
            .await
            .is_none());
        assert_eq!(
            stored_body(store, "example.com/live/a.m3u8?_HLS_msn=3")
                .await
                .unwrap(),
            b"blocking"
        );
        assert!(!store.purge_key("example.com/live/a.m3u8"), "already gone");
    }

    #[tokio::test]
    async fn purge_prefix_removes_every_key_of_a_stream_and_nothing_else() {
        let store = store(1 << 20);
        for key in [
            "example.com/live/cam1/index.m3u8",
            "example.com/live/cam1/1.ts",
            "example.com/live/cam1/2.ts",
            "example.com/live/cam10/1.ts",
            "example.com/live/cam2/1.ts",
        ] {
            fill(store, key, b"x").await;
        }
        assert_eq!(store.purge_prefix("example.com/live/cam1/"), 3);
        for gone in ["index.m3u8", "1.ts", "2.ts"] {
            let key = format!("example.com/live/cam1/{gone}");
            assert!(stored_body(store, &key).await.is_none(), "{key}");
        }
        assert!(stored_body(store, "example.com/live/cam10/1.ts")
            .await
            .is_some());
        assert!(stored_body(store, "example.com/live/cam2/1.ts")
            .await
            .is_some());
        assert_eq!(store.stats().items, 2);
    }

    #[tokio::test]
    async fn purge_stops_an_in_flight_fill_from_being_stored() {
        let store = store(1 << 20);
        let key = CacheKey::new("example.com/live/cam3/index.m3u8", "");
        let mut writer = store
            .get_miss_handler(&key, &meta(60), &span())
            .await
            .unwrap();
        writer
            .write_body(Bytes::from_static(b"old"), false)
            .await
            .unwrap();
        let (_, mut reader) = store.lookup(&key, &span()).await.unwrap().unwrap();

        assert_eq!(store.purge_prefix("example.com/live/cam3/"), 1);
        assert!(
            store.lookup(&key, &span()).await.unwrap().is_none(),
            "after a purge the next request goes to the origin"
        );

        writer
            .write_body(Bytes::from_static(b" body"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
        assert_eq!(read_all(&mut reader).await.unwrap(), b"old body");
        assert!(store.lookup(&key, &span()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn storage_purge_by_compact_key_removes_the_object_and_its_index_slot() {
        let store = store(1 << 20);
        fill(store, "example.com/live/5.ts", b"x").await;
        let compact = CacheKey::new("example.com/live/5.ts", "").to_compact();
        let outcome = store
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Purged(None));
        assert!(stored_body(store, "example.com/live/5.ts").await.is_none());
        assert!(lock(&store.index).exact("example.com/live/5.ts").is_empty());
        let again = store
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(again, PurgeOutcome::NotFound);
    }

    #[tokio::test]
    async fn a_meta_with_a_variance_round_trips_through_the_decoder() {
        let store = store(1 << 20);
        let key = CacheKey::new("example.com/live/a.ts", "");
        let mut varied = meta(60);
        varied.set_variance([7u8; 16]);
        let mut writer = store
            .get_miss_handler(&key, &varied, &span())
            .await
            .unwrap();
        writer
            .write_body(Bytes::from_static(b"x"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
        let (hit, _) = store.lookup(&key, &span()).await.unwrap().unwrap();
        assert_eq!(hit.variance(), Some([7u8; 16]));
        assert_eq!(hit.created(), varied.created());
        assert_eq!(hit.fresh_until(), varied.fresh_until());
        assert_eq!(
            hit.response_header().headers.get("content-type").unwrap(),
            "video/mp2t"
        );
    }

    #[tokio::test]
    async fn update_meta_refreshes_freshness_and_keeps_the_body() {
        let store = store(1 << 20);
        let key = CacheKey::new("example.com/live/index.m3u8", "");
        let stale = meta(0);
        let mut writer = store.get_miss_handler(&key, &stale, &span()).await.unwrap();
        writer
            .write_body(Bytes::from_static(b"#EXTM3U"), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();

        let (mut revalidated, _) = store.lookup(&key, &span()).await.unwrap().unwrap();
        let later = SystemTime::now() + Duration::from_secs(30);
        assert!(!revalidated.is_fresh(later));
        revalidated.update_freshness(later + Duration::from_secs(30), 5, 10);
        assert!(store
            .update_meta(&key, &revalidated, &span())
            .await
            .unwrap());

        let (meta, mut reader) = store.lookup(&key, &span()).await.unwrap().unwrap();
        assert!(meta.is_fresh(later));
        // The revalidation time is what the Age header and freshness count from; the admission
        // time stays.
        assert_eq!(meta.epoch(), revalidated.updated());
        assert_eq!(meta.created(), revalidated.created());
        assert_ne!(meta.epoch(), meta.created());
        assert_eq!(meta.fresh_sec(), revalidated.fresh_sec());
        assert_eq!(meta.stale_while_revalidate_sec(), 5);
        assert_eq!(meta.stale_if_error_sec(), 10);
        assert_eq!(read_all(&mut reader).await.unwrap(), b"#EXTM3U");

        let missing = CacheKey::new("example.com/live/never.m3u8", "");
        assert!(!store
            .update_meta(&missing, &revalidated, &span())
            .await
            .unwrap());
        assert!(store.lookup(&missing, &span()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn seek_serves_a_single_range_of_a_stored_object() {
        let store = store(1 << 20);
        fill(store, "example.com/vod/1.ts", b"0123456789").await;
        let key = CacheKey::new("example.com/vod/1.ts", "");
        let (_, mut reader) = store.lookup(&key, &span()).await.unwrap().unwrap();
        reader.seek(2, Some(5)).unwrap();
        assert_eq!(read_all(&mut reader).await.unwrap(), b"234");
        reader.seek(7, Some(100)).unwrap();
        assert_eq!(read_all(&mut reader).await.unwrap(), b"789");
        assert!(reader.seek(10, None).is_err());
    }

    #[test]
    fn objects_are_retained_past_their_longest_stale_window_for_revalidation() {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(10), now, 5, 20, header);
        let until = retain_until(&meta).unwrap();
        assert_eq!(until, now + Duration::from_secs(10 + 20) + STALE_RETENTION);
    }
}
