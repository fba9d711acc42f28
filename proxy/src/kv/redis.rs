//! [`RedisKv`]: the store shared by a fleet through one Redis, so one operator change (close a
//! region) reaches every node.
//!
//! # How it stays fresh
//!
//! Reads never touch the network: they are answered from a local mirror (a [`MemoryKv`]). A
//! background thread keeps the mirror fresh in two ways:
//!
//! 1. **Change notifications.** Every write goes through a Lua script that changes the key and
//!    `PUBLISH`es its name on the channel named like the key prefix, in one atomic step. The
//!    thread is `SUBSCRIBE`d to that channel and re-reads each announced key (value and
//!    remaining TTL), so a change is on every node within a round trip or two.
//! 2. **Full resync.** Pub/sub is fire-and-forget: messages sent while a node is disconnected
//!    are lost, and keys written by other tools (`redis-cli SET`) are never announced. So after
//!    every (re)connect, and every `redis_resync_interval_ms`, the thread `SCAN`s the prefix
//!    and replaces the mirror with what Redis holds. The subscription is made *before* the
//!    resync, so a change racing the resync is still announced and applied after it.
//!
//! Expiry needs neither: the mirror stores each key's remaining TTL as a deadline and hides the
//! key when it passes, as Redis does.
//!
//! # Writes and outages
//!
//! A node makes its first sync while starting, before it serves, so it never serves from an
//! empty store next to a healthy Redis.
//!
//! Writes go to Redis on a small pool of blocking connections, each call bounded by
//! `redis_timeout_ms` (connect included), and update the local mirror on success so a node
//! reads its own writes. The background thread owns the up/down state: it notices a closed
//! connection at once and a silent one by an unanswered `PING` (sent every second). While down,
//! writes fail at once with [`KvError::Unavailable`], reads keep the last known state, and the
//! thread reconnects every `redis_reconnect_interval_ms`. Each change of state is one log line
//! and moves `parallax_kv_redis_up` / `parallax_kv_redis_transitions_total`.
//!
//! Redis is the source of truth: a Redis that restarts empty (no persistence) empties the
//! mirrors on the next resync. Run it with `appendonly yes` if its state must survive restarts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::memory::{Entry, MemoryKv, ENTRY_OVERHEAD_BYTES};
use super::resp::{Conn, RespError, Value};
use super::{check_sizes, KvConfig, KvError, KvStore};
use crate::metrics::Metrics;

/// Sets KEYS[1] to ARGV[1] (PX ARGV[2] unless "0") and announces ARGV[4] on channel ARGV[3].
const SET_SCRIPT: &str = "\
if ARGV[2] == '0' then redis.call('SET', KEYS[1], ARGV[1]) \
else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end \
redis.call('PUBLISH', ARGV[3], ARGV[4]) return 1";

/// Like [`SET_SCRIPT`], only if KEYS[1] holds ARGV[6] (ARGV[5] == '1') or is unset
/// (ARGV[5] == '0'); returns 1 if it set the key, else 0. Atomic: a script runs alone.
const CAS_SCRIPT: &str = "\
local cur = redis.call('GET', KEYS[1]) \
if ARGV[5] == '1' then if cur ~= ARGV[6] then return 0 end elseif cur then return 0 end \
if ARGV[2] == '0' then redis.call('SET', KEYS[1], ARGV[1]) \
else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end \
redis.call('PUBLISH', ARGV[3], ARGV[4]) return 1";

/// Deletes KEYS[1] and announces ARGV[2] on channel ARGV[1].
const DEL_SCRIPT: &str = "\
redis.call('DEL', KEYS[1]) redis.call('PUBLISH', ARGV[1], ARGV[2]) return 1";

/// For each key: its value (nil when unset or not a string) and its PTTL, as one consistent
/// snapshot per batch.
const FETCH_SCRIPT: &str = "\
local out = {} \
for i, k in ipairs(KEYS) do \
  local v = redis.pcall('GET', k) \
  if type(v) == 'table' then v = false end \
  out[2 * i - 1] = v \
  out[2 * i] = redis.call('PTTL', k) \
end \
return out";

/// How often the subscriber connection is checked with `PING`; a `PING` still unanswered when
/// the next one is due marks Redis down, so a silent Redis is noticed within two intervals.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long the background thread waits on the subscription before checking timers and the
/// stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Deadline for the background thread's own calls (subscribe, resync batches): generous,
/// they are off the request path.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys fetched per resync call.
const FETCH_BATCH: usize = 64;
/// Idle write connections kept.
const POOL_MAX: usize = 8;
/// Longest TTL sent to Redis (100 years); longer ones are clamped, as "practically never".
const MAX_TTL_MS: u128 = 100 * 365 * 24 * 3600 * 1000;

/// Where Redis is: parsed from `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port, default 6379.
    pub port: u16,
    /// `AUTH` user (empty: the default user) and password, if given.
    pub auth: Option<(String, String)>,
    /// Database number for `SELECT`, default 0.
    pub db: u32,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(f, "{self}")
    }
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl RedisTarget {
    /// Parses a `redis://` URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("rediss://") {
            return Err(
                "TLS (rediss://) is not supported: reach Redis over a private network \
                        or a local TLS tunnel and use redis://"
                    .into(),
            );
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or("must start with redis://")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let auth = userinfo.map(|userinfo| {
            let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
            (percent_decode(user), percent_decode(password))
        });
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            None => 6379,
            Some(port) => port
                .parse()
                .map_err(|_| format!("bad port {port:?}"))
                .and_then(|p| {
                    if p == 0 {
                        Err("port 0".to_string())
                    } else {
                        Ok(p)
                    }
                })?,
        };
        let db = match path {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| format!("bad database number {db:?}"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            auth,
            db,
        })
    }

    fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }

    fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `prefix` with Redis glob metacharacters escaped, for `SCAN MATCH`.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The TTL argument of the scripts: milliseconds, at least 1 (Redis refuses `PX 0`), "0" for
/// none.
fn ttl_arg(ttl: Option<Duration>) -> String {
    match ttl {
        None => "0".into(),
        Some(ttl) => ttl.as_millis().clamp(1, MAX_TTL_MS).to_string(),
    }
}

/// A key-value store in Redis, read from a local mirror. See the module docs.
pub struct RedisKv {
    inner: Arc<Inner>,
    /// The connections of the first sync, handed to the follower thread when it starts.
    first: Mutex<Option<Synced>>,
    /// Whether the follower thread was started.
    follower: AtomicBool,
}

/// A subscribed connection and a command connection, after a full resync.
struct Synced {
    sub: Conn,
    cmd: Conn,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("target", &self.inner.target)
            .field("up", &self.inner.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Inner {
    target: RedisTarget,
    prefix: String,
    timeout: Duration,
    resync_interval: Duration,
    reconnect_interval: Duration,
    mirror: MemoryKv,
    max_keys: usize,
    up: AtomicBool,
    last_error: Mutex<String>,
    addrs: RwLock<Vec<SocketAddr>>,
    /// Idle write connections with the generation they were made in; a generation ends when
    /// Redis goes down, so connections from before an outage are never reused.
    pool: Mutex<Vec<(u64, Conn)>>,
    generation: AtomicU64,
    stop: AtomicBool,
    /// Failed connection attempts since the last success, for logging.
    failures: AtomicU64,
    metrics: Arc<Metrics>,
    /// Other channels the follower subscribes to, by full name, with what receives their
    /// messages ([`RedisKv::listen`]).
    listeners: RwLock<Vec<(String, Listener)>>,
}

/// Receives the payload of each message on a channel [`RedisKv::listen`]s to, on the follower
/// thread: keep it short.
pub type Listener = Arc<dyn Fn(&str) + Send + Sync>;

impl RedisKv {
    /// Connects to Redis for `config` (whose `redis_url` must be set and valid) and makes the
    /// first sync on this thread, bounded by a two-second deadline per call, so a node starting
    /// next to a healthy Redis serves its first requests with the fleet's state. Never fails on
    /// an unreachable Redis: the store starts empty and down and logs why. Starts no thread:
    /// call [`RedisKv::spawn_follower`] (pingora forks when daemonizing, and threads do not
    /// survive a fork, so the proxy does it from a background service; see [`RedisFollower`]).
    pub fn connect(config: &KvConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let target = RedisTarget::parse(&config.redis_url)?;
        let inner = Arc::new(Inner {
            target,
            prefix: config.redis_key_prefix.clone(),
            timeout: Duration::from_millis(config.redis_timeout_ms),
            resync_interval: Duration::from_millis(config.redis_resync_interval_ms),
            reconnect_interval: Duration::from_millis(config.redis_reconnect_interval_ms),
            mirror: MemoryKv::new(config.max_bytes),
            max_keys: config.max_bytes / ENTRY_OVERHEAD_BYTES,
            up: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            addrs: RwLock::default(),
            pool: Mutex::default(),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            metrics,
            listeners: RwLock::default(),
        });
        inner.metrics.kv_redis_up.set(0);
        let first = match inner.connect_and_sync() {
            Ok(synced) => Some(synced),
            Err(e) => {
                inner.failed(&e);
                None
            }
        };
        Ok(Self {
            inner,
            first: Mutex::new(first),
            follower: AtomicBool::new(false),
        })
    }

    /// Starts the thread that keeps the mirror fresh and reconnects (once; later calls do
    /// nothing).
    pub fn spawn_follower(&self) -> Result<(), String> {
        if self.follower.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let first = self
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("kv-redis".into())
            .spawn(move || inner.run(first))
            .map(|_| ())
            .map_err(|e| format!("cannot start the Redis thread: {e}"))
    }

    /// [`RedisKv::connect`] then [`RedisKv::spawn_follower`]: for use outside a pingora server.
    pub fn start(config: &KvConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let kv = Self::connect(config, metrics)?;
        kv.spawn_follower()?;
        Ok(kv)
    }

    /// Delivers every message published on channel `<prefix><name>` to `listener`, from the
    /// follower's next (re)connection on: call it before the server starts. Pub/sub is
    /// fire-and-forget, so messages published while this node is disconnected are lost.
    pub fn listen(&self, name: &str, listener: Listener) {
        let channel = format!("{}{name}", self.inner.prefix);
        self.inner
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((channel, listener));
    }

    /// Publishes `payload` on channel `<prefix><name>`; returns how many subscribers (this node
    /// included, if it listens) received it. Fails like a write while Redis is down.
    pub fn publish(&self, name: &str, payload: &str) -> Result<usize, KvError> {
        let channel = format!("{}{name}", self.inner.prefix);
        let command: [&[u8]; 3] = [b"PUBLISH", channel.as_bytes(), payload.as_bytes()];
        match self.inner.call("publish", name, &command)? {
            Value::Int(n) => Ok(usize::try_from(n).unwrap_or(0)),
            other => Err(self
                .inner
                .unavailable(format_args!("unexpected answer to PUBLISH: {other:?}"))),
        }
    }

    /// Whether the store is connected and in sync.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Stops the background thread (within a tenth of a second).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

/// The pingora background service that runs a [`RedisKv`]'s follower thread from server start
/// (after any daemonizing fork) until shutdown.
pub struct RedisFollower(pub Arc<RedisKv>);

#[async_trait::async_trait]
impl BackgroundService for RedisFollower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Err(e) = self.0.spawn_follower() {
            tracing::error!(error = %e, "key-value store: Redis changes will not be followed");
            return;
        }
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.0.stop();
    }
}

impl Drop for RedisKv {
    fn drop(&mut self) {
        // The thread holds its own `Arc<Inner>` and exits within one poll interval.
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

impl KvStore for RedisKv {
    fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        self.inner.mirror.get(key)
    }

    fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        check_sizes(key, value)?;
        let ttl_ms = ttl_arg(ttl);
        let args: [&[u8]; 4] = [
            value.as_bytes(),
            ttl_ms.as_bytes(),
            self.inner.prefix.as_bytes(),
            key.as_bytes(),
        ];
        self.inner.write("set", SET_SCRIPT, key, &args)?;
        self.inner
            .mirror_put(key, Entry::new(value.to_owned(), ttl));
        Ok(())
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        check_sizes(key, value)?;
        let ttl_ms = ttl_arg(ttl);
        let args: [&[u8]; 6] = [
            value.as_bytes(),
            ttl_ms.as_bytes(),
            self.inner.prefix.as_bytes(),
            key.as_bytes(),
            if expected.is_some() { b"1" } else { b"0" },
            expected.unwrap_or("").as_bytes(),
        ];
        match self
            .inner
            .write("compare_and_set", CAS_SCRIPT, key, &args)?
        {
            Value::Int(1) => {
                self.inner
                    .mirror_put(key, Entry::new(value.to_owned(), ttl));
                Ok(true)
            }
            Value::Int(0) => Ok(false),
            other => Err(KvError::Unavailable(format!(
                "unexpected answer from redis to compare-and-set: {other:?}"
            ))),
        }
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        if key.len() > super::MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        let args: [&[u8]; 2] = [self.inner.prefix.as_bytes(), key.as_bytes()];
        self.inner.write("delete", DEL_SCRIPT, key, &args)?;
        self.inner.mirror.remove(key);
        Ok(())
    }
}

impl Inner {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> KvError {
        KvError::Unavailable(format!(
            "redis at {} is unreachable ({why}); reads answer from the last known state",
            self.target
        ))
    }

    fn mirror_put(&self, key: &str, entry: Entry) {
        // The write reached Redis; a full mirror only means this node cannot see it, which
        // `MemoryKv` has already logged.
        let _ = self.mirror.put(key, entry);
    }

    /// Runs `script` on `key` with `args`, on a pooled connection, within the write timeout.
    fn write(
        &self,
        op: &'static str,
        script: &str,
        key: &str,
        args: &[&[u8]],
    ) -> Result<Value, KvError> {
        let full_key = format!("{}{key}", self.prefix);
        let mut command: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), b"1", full_key.as_bytes()];
        command.extend_from_slice(args);
        self.call(op, key, &command)
    }

    /// Sends `command` (about `key`, for logs) on a pooled connection, within the write
    /// timeout; fails at once while Redis is down.
    fn call(&self, op: &'static str, key: &str, command: &[&[u8]]) -> Result<Value, KvError> {
        if !self.up.load(Ordering::Acquire) {
            let why = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            self.count_failure(op, "down");
            return Err(self.unavailable(why));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match pooled {
            Some((g, conn)) if g == generation => conn,
            _ => {
                let addrs = self
                    .addrs
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                Conn::connect(&addrs, self.timeout, self.target.auth(), self.target.db).map_err(
                    |e| {
                        self.count_failure(op, "connect");
                        self.unavailable(e)
                    },
                )?
            }
        };
        let result = conn.call(command, Instant::now() + self.timeout);
        if !result.as_ref().is_err_and(RespError::breaks_connection) {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < POOL_MAX {
                pool.push((generation, conn));
            }
        }
        result.map_err(|e| {
            let reason = match e {
                RespError::Timeout => "timeout",
                RespError::Io(_) => "io",
                RespError::Protocol(_) => "protocol",
                RespError::Server(_) => "redis_error",
            };
            self.count_failure(op, reason);
            tracing::debug!(op, key, error = %e, "kv write to redis failed");
            match e {
                RespError::Timeout => self.unavailable(format_args!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )),
                e => self.unavailable(e),
            }
        })
    }

    fn count_failure(&self, op: &str, reason: &str) {
        self.metrics
            .kv_write_failures
            .with_label_values(&[op, reason])
            .inc();
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(redis = %self.target, keys = self.mirror.len(), "redis up: key-value store in sync");
            self.metrics.kv_redis_up.set(1);
            self.metrics
                .kv_redis_transitions
                .with_label_values(&["up"])
                .inc();
        }
    }

    /// Records `why`, ends the connection generation; returns whether Redis was up until now.
    fn mark_down(&self, why: &str) -> bool {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = why.to_owned();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up {
            tracing::warn!(
                redis = %self.target,
                error = why,
                retry_ms = self.reconnect_interval.as_millis() as u64,
                "redis down: key-value writes fail, reads keep the last known state"
            );
            self.metrics.kv_redis_up.set(0);
            self.metrics
                .kv_redis_transitions
                .with_label_values(&["down"])
                .inc();
        }
        was_up
    }

    /// Marks Redis down after `e`; logs the first failure after a success at warn, later ones
    /// at debug.
    fn failed(&self, e: &RespError) {
        let why = e.to_string();
        let was_up = self.mark_down(&why);
        let failures = if was_up {
            self.failures.store(1, Ordering::Relaxed);
            1
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed) + 1
        };
        if failures == 1 && !was_up {
            tracing::warn!(
                redis = %self.target,
                error = %why,
                retry_ms = self.reconnect_interval.as_millis() as u64,
                "cannot reach redis; key-value writes fail until it answers"
            );
        } else if !was_up {
            tracing::debug!(redis = %self.target, error = %why, failures, "redis still unreachable");
        }
    }

    /// The follower thread: follow changes from `first` (or a fresh sync); on failure wait and
    /// start over.
    fn run(self: Arc<Self>, first: Option<Synced>) {
        let mut synced = first;
        while !self.stopped() {
            let result = match synced.take() {
                Some(synced) => Ok(synced),
                None => self.connect_and_sync(),
            }
            .and_then(|synced| self.follow(synced));
            match result {
                Ok(()) => return,
                Err(e) => self.failed(&e),
            }
            let until = Instant::now() + self.reconnect_interval;
            while !self.stopped() && Instant::now() < until {
                std::thread::sleep(POLL.min(self.reconnect_interval));
            }
        }
    }

    /// Subscribes, then resyncs (in that order, so no change falls between), then marks up.
    fn connect_and_sync(&self) -> Result<Synced, RespError> {
        let addrs = self.target.resolve()?;
        *self.addrs.write().unwrap_or_else(PoisonError::into_inner) = addrs.clone();
        let timeout = BACKGROUND_TIMEOUT.max(self.timeout);
        let (auth, db) = (self.target.auth(), self.target.db);

        let mut sub = Conn::connect(&addrs, timeout, auth, db)?;
        let deadline = Instant::now() + timeout;
        sub.send(&[b"SUBSCRIBE", self.prefix.as_bytes()], deadline)?;
        match sub.read(deadline)? {
            Some(Value::Array(Some(items)))
                if items.first() == Some(&Value::Bulk(Some(b"subscribe".to_vec()))) => {}
            Some(other) => {
                return Err(RespError::Protocol(format!(
                    "unexpected answer to SUBSCRIBE: {other:?}"
                )))
            }
            None => return Err(RespError::Timeout),
        }
        let mut cmd = Conn::connect(&addrs, timeout, auth, db)?;
        self.resync(&mut cmd)?;
        self.failures.store(0, Ordering::Relaxed);
        self.mark_up();
        Ok(Synced { sub, cmd })
    }

    /// Applies announced changes, pings, resyncs on schedule; returns `Ok` only when asked to
    /// stop.
    fn follow(&self, synced: Synced) -> Result<(), RespError> {
        let Synced { mut sub, mut cmd } = synced;
        let timeout = BACKGROUND_TIMEOUT.max(self.timeout);
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !listeners.is_empty() {
            // Confirmations arrive as ordinary pub/sub replies and are skipped below.
            let mut command: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            command.extend(listeners.iter().map(|(channel, _)| channel.as_bytes()));
            sub.send(&command, Instant::now() + timeout)?;
        }
        let mut next_resync = Instant::now() + self.resync_interval;
        let mut next_ping = Instant::now() + PING_INTERVAL;
        let mut awaiting_pong = false;
        while !self.stopped() {
            if let Some(message) = sub.read(Instant::now() + POLL)? {
                match pubsub_message(&message) {
                    Some(("message", channel, key)) if channel == self.prefix => {
                        self.refresh(&mut cmd, key)?
                    }
                    Some(("message", channel, payload)) => {
                        match listeners.iter().find(|(c, _)| c == channel) {
                            Some((_, listener)) => listener(payload),
                            None => tracing::debug!(channel, "message on an unknown channel"),
                        }
                    }
                    Some(("pong", _, _)) => awaiting_pong = false,
                    _ => tracing::debug!(?message, "ignoring pub/sub message"),
                }
            }
            let now = Instant::now();
            if now >= next_ping {
                if awaiting_pong {
                    return Err(RespError::Protocol(format!(
                        "no answer to PING within {} ms",
                        PING_INTERVAL.as_millis()
                    )));
                }
                sub.send(&[b"PING"], now + timeout)?;
                awaiting_pong = true;
                next_ping = now + PING_INTERVAL;
            }
            if now >= next_resync {
                self.resync(&mut cmd)?;
                next_resync = Instant::now() + self.resync_interval;
            }
        }
        Ok(())
    }

    /// Values and TTLs of `keys` (unprefixed), `None` for keys that are unset.
    fn fetch(
        &self,
        cmd: &mut Conn,
        keys: &[String],
    ) -> Result<Vec<(String, Option<Entry>)>, RespError> {
        let full: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
        let count = keys.len().to_string();
        let mut command: Vec<&[u8]> = vec![b"EVAL", FETCH_SCRIPT.as_bytes(), count.as_bytes()];
        command.extend(full.iter().map(|k| k.as_bytes()));
        let reply = cmd.call(
            &command,
            Instant::now() + BACKGROUND_TIMEOUT.max(self.timeout),
        )?;
        let Value::Array(Some(items)) = reply else {
            return Err(RespError::Protocol(format!(
                "unexpected fetch answer: {reply:?}"
            )));
        };
        if items.len() != 2 * keys.len() {
            return Err(RespError::Protocol(
                "fetch answer of the wrong length".into(),
            ));
        }
        Ok(keys
            .iter()
            .zip(items.chunks(2))
            .map(|(key, pair)| {
                let entry = match (&pair[0], &pair[1]) {
                    (Value::Bulk(Some(bytes)), Value::Int(pttl)) if *pttl != -2 => {
                        match String::from_utf8(bytes.clone()) {
                            Ok(value) => Some(Entry::new(
                                value,
                                u64::try_from(*pttl).ok().map(Duration::from_millis),
                            )),
                            Err(_) => {
                                tracing::debug!(key, "skipping a non-UTF-8 value in redis");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                (key.clone(), entry)
            })
            .collect())
    }

    /// Applies one announced change.
    fn refresh(&self, cmd: &mut Conn, key: &str) -> Result<(), RespError> {
        for (key, entry) in self.fetch(cmd, &[key.to_owned()])? {
            match entry {
                Some(entry) => self.mirror_put(&key, entry),
                None => {
                    self.mirror.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Replaces the mirror with every key under the prefix.
    fn resync(&self, cmd: &mut Conn) -> Result<(), RespError> {
        let started = Instant::now();
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor = b"0".to_vec();
        let mut keys = Vec::new();
        loop {
            let reply = cmd.call(
                &[
                    b"SCAN",
                    &cursor,
                    b"MATCH",
                    pattern.as_bytes(),
                    b"COUNT",
                    b"256",
                ],
                Instant::now() + BACKGROUND_TIMEOUT.max(self.timeout),
            )?;
            let Some((next, page)) = scan_page(reply) else {
                return Err(RespError::Protocol("unexpected SCAN answer".into()));
            };
            keys.extend(page.into_iter().filter_map(|full| {
                String::from_utf8(full)
                    .ok()?
                    .strip_prefix(&self.prefix)
                    .map(str::to_owned)
            }));
            cursor = next;
            if cursor == b"0" {
                break;
            }
            if keys.len() > self.max_keys {
                tracing::warn!(
                    max_keys = self.max_keys,
                    "more keys under the prefix than kv.max_bytes can mirror; the rest are not \
                     visible on this node"
                );
                break;
            }
        }
        keys.sort_unstable();
        keys.dedup(); // SCAN may return a key twice.
        let mut entries = Vec::with_capacity(keys.len());
        for batch in keys.chunks(FETCH_BATCH) {
            entries.extend(
                self.fetch(cmd, batch)?
                    .into_iter()
                    .filter_map(|(key, entry)| Some((key, entry?))),
            );
        }
        let count = entries.len();
        let left_out = self.mirror.replace_all(entries);
        if left_out > 0 {
            tracing::warn!(
                left_out,
                "kv.max_bytes is too small for what Redis holds; some keys are not mirrored"
            );
        }
        tracing::debug!(
            keys = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "kv resync"
        );
        Ok(())
    }
}

/// `["message", channel, payload]` → ("message", channel, payload); `["pong", ""]` →
/// ("pong", "", "").
fn pubsub_message(value: &Value) -> Option<(&str, &str, &str)> {
    let Value::Array(Some(items)) = value else {
        return None;
    };
    fn text(v: &Value) -> Option<&str> {
        match v {
            Value::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    match items.as_slice() {
        [kind, channel, payload] if text(kind) == Some("message") => {
            Some(("message", text(channel)?, text(payload)?))
        }
        [kind, _] if text(kind) == Some("pong") => Some(("pong", "", "")),
        _ => None,
    }
}

/// `[cursor, [key...]]` from `SCAN`.
fn scan_page(reply: Value) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let Value::Array(Some(mut items)) = reply else {
        return None;
    };
    if items.len() != 2 {
        return None;
    }
    let Value::Array(Some(page)) = items.pop()? else {
        return None;
    };
    let Value::Bulk(Some(cursor)) = items.pop()? else {
        return None;
    };
    let keys = page
        .into_iter()
        .filter_map(|v| match v {
            Value::Bulk(Some(k)) => Some(k),
            _ => None,
        })
        .collect();
    Some((cursor, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_parse_with_defaults_auth_and_database() {
        let t = RedisTarget::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.db, t.auth.clone()),
            ("127.0.0.1", 6379, 0, None)
        );
        let t = RedisTarget::parse("redis://cache.internal").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("cache.internal", 6379));
        let t = RedisTarget::parse("redis://:p%40ss@[::1]:7000/2").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.db), ("::1", 7000, 2));
        assert_eq!(t.auth, Some((String::new(), "p@ss".into())));
        assert_eq!(t.to_string(), "[::1]:7000/2");
        let t = RedisTarget::parse("redis://edge:secret@h:1").unwrap();
        assert_eq!(t.auth, Some(("edge".into(), "secret".into())));
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn bad_redis_urls_say_what_is_wrong() {
        for (url, says) in [
            ("rediss://h:6379", "TLS"),
            ("http://h:6379", "redis://"),
            ("redis://", "no host"),
            ("redis://h:port", "bad port"),
            ("redis://h:0", "port 0"),
            ("redis://h:6379/x", "database"),
            ("redis://[::1:6379", "unclosed"),
        ] {
            let err = RedisTarget::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn ttls_are_whole_milliseconds_at_least_one() {
        assert_eq!(ttl_arg(None), "0");
        assert_eq!(ttl_arg(Some(Duration::ZERO)), "1");
        assert_eq!(ttl_arg(Some(Duration::from_micros(1500))), "1");
        assert_eq!(ttl_arg(Some(Duration::from_secs(2))), "2000");
        assert_eq!(ttl_arg(Some(Duration::MAX)), MAX_TTL_MS.to_string());
    }

    #[test]
    fn the_scan_pattern_matches_the_prefix_literally() {
        assert_eq!(glob_escape("parallax:kv:"), "parallax:kv:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn pubsub_messages_and_pongs_are_recognised() {
        let bulk = |s: &str| Value::Bulk(Some(s.as_bytes().to_vec()));
        let message = Value::Array(Some(vec![
            bulk("message"),
            bulk("parallax:kv:"),
            bulk("region/eu/state"),
        ]));
        assert_eq!(
            pubsub_message(&message),
            Some(("message", "parallax:kv:", "region/eu/state"))
        );
        let pong = Value::Array(Some(vec![bulk("pong"), bulk("")]));
        assert_eq!(pubsub_message(&pong), Some(("pong", "", "")));
        assert_eq!(pubsub_message(&Value::Int(1)), None);
    }
}
