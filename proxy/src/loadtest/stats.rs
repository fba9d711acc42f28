//! What a load test measured: one [`Sample`] per request, and the numbers computed from them.
//!
//! The viewers append samples to one [`Recorder`] (the whole test runs on one thread, so it is
//! a plain `RefCell`, no lock); the progress line reads the newest second of them, and at the
//! end [`Recorder::finish`] turns them into the [`Summary`] printed on the terminal, written
//! as JSON, and charted in the HTML report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a request fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A multivariant (master) playlist.
    Master,
    /// A media playlist (the one a live viewer reloads).
    Playlist,
    /// A media segment.
    Segment,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 3] = [Kind::Master, Kind::Playlist, Kind::Segment];

    /// The name used in the summary and the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Master => "master",
            Kind::Playlist => "playlist",
            Kind::Segment => "segment",
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A 2xx response, body read completely.
    Ok,
    /// A response with this non-2xx status.
    Status(u16),
    /// No complete response within the request timeout.
    Timeout,
    /// The TCP connection could not be made.
    Connect,
    /// The connection failed mid-request or mid-body.
    Io,
    /// A playlist that does not parse (or is not the kind expected).
    Parse,
    /// A URI on a host that is not a target; not fetched.
    OffTarget,
}

impl Outcome {
    /// The name used in error counts (`status 503`, `timeout`, ...).
    pub fn label(self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Status(code) => format!("status {code}"),
            Outcome::Timeout => "timeout".into(),
            Outcome::Connect => "connect".into(),
            Outcome::Io => "io".into(),
            Outcome::Parse => "bad playlist".into(),
            Outcome::OffTarget => "off-target uri".into(),
        }
    }
}

/// One request. 16 bytes, so ten million fit in 160 MB.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When the request started, in milliseconds since the test started.
    pub at_ms: u32,
    /// Request start to the last body byte (or to the failure), in microseconds.
    pub latency_us: u32,
    /// Body bytes received.
    pub bytes: u32,
    /// What was fetched.
    pub kind: Kind,
    /// How it ended.
    pub outcome: Outcome,
}

/// Collects samples while the test runs.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    samples: Vec<Sample>,
    errors: u64,
    max_requests: u64,
    /// Viewers that have started and not finished.
    pub active_viewers: u32,
    /// Segments whose download took longer than their duration (a real player would stall if
    /// this kept happening).
    pub slow_segments: u64,
    /// Times a viewer found its next segment already gone from the playlist window.
    pub fell_behind: u64,
    /// Viewers at each whole second, recorded by the progress ticker.
    viewers_at: Vec<u32>,
    /// Samples already shown by the progress line.
    progress_mark: usize,
}

impl Recorder {
    /// A recorder for a test that started at `started` and stops after `max_requests`.
    pub fn new(started: Instant, max_requests: u64) -> Self {
        Self {
            started,
            samples: Vec::with_capacity(max_requests.min(1 << 20) as usize),
            errors: 0,
            max_requests,
            active_viewers: 0,
            slow_segments: 0,
            fell_behind: 0,
            viewers_at: Vec::new(),
            progress_mark: 0,
        }
    }

    /// Whether the request budget is spent: viewers stop issuing requests.
    pub fn is_full(&self) -> bool {
        self.samples.len() as u64 >= self.max_requests
    }

    /// Records a request that started at `start`.
    pub fn record(&mut self, start: Instant, kind: Kind, outcome: Outcome, bytes: u64) {
        if self.is_full() {
            return;
        }
        if outcome != Outcome::Ok {
            self.errors += 1;
        }
        let at = start.saturating_duration_since(self.started);
        self.samples.push(Sample {
            at_ms: clamp_u32(at.as_millis()),
            latency_us: clamp_u32(start.elapsed().as_micros()),
            bytes: clamp_u32(u128::from(bytes)),
            kind,
            outcome,
        });
    }

    /// The progress ticker's once-a-second call: notes the active viewers and returns the
    /// requests recorded since the previous call.
    pub fn tick(&mut self) -> Progress {
        self.viewers_at.push(self.active_viewers);
        let new = &self.samples[self.progress_mark..];
        self.progress_mark = self.samples.len();
        let mut progress = Progress {
            requests: new.len() as u64,
            total_requests: self.samples.len() as u64,
            total_errors: self.errors,
            ..Progress::default()
        };
        let mut playlist = Vec::new();
        let mut segment = Vec::new();
        for s in new {
            progress.bytes += u64::from(s.bytes);
            if s.outcome != Outcome::Ok {
                progress.errors += 1;
            }
            match s.kind {
                Kind::Segment => segment.push(s.latency_us),
                _ => playlist.push(s.latency_us),
            }
        }
        progress.playlist_p95_ms = percentile_ms(&mut playlist, 95.0);
        progress.segment_p95_ms = percentile_ms(&mut segment, 95.0);
        progress
    }

    /// Everything the test measured.
    pub fn finish(self, context: RunContext) -> Summary {
        let wall = context.wall.as_secs_f64().max(1e-3);
        let mut kinds = Vec::new();
        let mut all_latencies = Vec::with_capacity(self.samples.len());
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for kind in Kind::ALL {
            let mut latencies = Vec::new();
            let mut stats = KindStats::new(kind);
            for s in self.samples.iter().filter(|s| s.kind == kind) {
                stats.requests += 1;
                stats.bytes += u64::from(s.bytes);
                if s.outcome != Outcome::Ok {
                    stats.errors += 1;
                    *errors.entry(s.outcome.label()).or_default() += 1;
                }
                // Off-target URIs were never requested: no latency to speak of.
                if s.outcome != Outcome::OffTarget {
                    latencies.push(s.latency_us);
                }
            }
            if stats.requests == 0 {
                continue;
            }
            all_latencies.extend_from_slice(&latencies);
            stats.latency = Latency::of(&mut latencies);
            stats.distribution_ms = PERCENTILES
                .iter()
                .map(|&p| sorted_percentile_ms(&latencies, p))
                .collect();
            kinds.push(stats);
        }
        let requests = self.samples.len() as u64;
        let bytes: u64 = self.samples.iter().map(|s| u64::from(s.bytes)).sum();
        let error_count: u64 = errors.values().sum();
        let origin_requests_per_viewer = context
            .origin_requests
            .map(|n| n as f64 / f64::from(context.viewers.max(1)));
        Summary {
            target: context.target,
            viewers: context.viewers,
            peak_viewers: self.viewers_at.iter().copied().max().unwrap_or(0),
            ramp_up_secs: context.ramp_up.as_secs_f64(),
            duration_secs: wall,
            requests,
            errors: error_count,
            error_percent: if requests == 0 {
                0.0
            } else {
                error_count as f64 * 100.0 / requests as f64
            },
            errors_by_kind: errors,
            requests_per_sec: requests as f64 / wall,
            bytes,
            megabytes_per_sec: bytes as f64 / 1e6 / wall,
            latency: Latency::of(&mut all_latencies),
            by_type: kinds,
            slow_segments: self.slow_segments,
            fell_behind: self.fell_behind,
            origin_requests: context.origin_requests,
            origin_requests_per_viewer,
            tester_cpu_percent: context.cpu.as_secs_f64() * 100.0 / wall,
            request_budget_hit: requests >= self.max_requests,
            timeline: timeline(&self.samples, &self.viewers_at),
        }
    }
}

/// One second of progress, for the live line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// Requests in the last second.
    pub requests: u64,
    /// Failed requests in the last second.
    pub errors: u64,
    /// Body bytes in the last second.
    pub bytes: u64,
    /// Requests since the start.
    pub total_requests: u64,
    /// Failures since the start.
    pub total_errors: u64,
    /// p95 of playlist requests in the last second, ms.
    pub playlist_p95_ms: f64,
    /// p95 of segment requests in the last second, ms.
    pub segment_p95_ms: f64,
}

/// What the runner knows that the samples do not.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The playlist URL the viewers started from.
    pub target: String,
    /// Viewers asked for.
    pub viewers: u32,
    /// Ramp-up asked for.
    pub ramp_up: Duration,
    /// How long the test ran.
    pub wall: Duration,
    /// CPU time the tester used.
    pub cpu: Duration,
    /// Requests that reached the origin during the test, from the proxy's metrics.
    pub origin_requests: Option<u64>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Percentiles of `latencies_us` (sorted in place).
    fn of(latencies_us: &mut [u32]) -> Self {
        if latencies_us.is_empty() {
            return Self::default();
        }
        latencies_us.sort_unstable();
        let sum: u64 = latencies_us.iter().map(|&l| u64::from(l)).sum();
        Self {
            p50_ms: sorted_percentile_ms(latencies_us, 50.0),
            p95_ms: sorted_percentile_ms(latencies_us, 95.0),
            p99_ms: sorted_percentile_ms(latencies_us, 99.0),
            max_ms: f64::from(latencies_us[latencies_us.len() - 1]) / 1000.0,
            mean_ms: sum as f64 / latencies_us.len() as f64 / 1000.0,
        }
    }
}

/// Requests of one [`Kind`].
#[derive(Debug, Clone, Serialize)]
pub struct KindStats {
    /// What was fetched.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Requests made.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Response times.
    pub latency: Latency,
    /// The response time at each of [`PERCENTILES`], ms.
    pub distribution_ms: Vec<f64>,
}

/// The percentiles of the per-type distribution (the report's percentile chart).
pub const PERCENTILES: [f64; 9] = [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

impl KindStats {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            requests: 0,
            errors: 0,
            bytes: 0,
            latency: Latency::default(),
            distribution_ms: Vec::new(),
        }
    }
}

/// One second of the test, for the report's charts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: u32,
    /// Viewers active.
    pub viewers: u32,
    /// Requests started in this second.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Body bytes of those requests.
    pub bytes: u64,
    /// Median playlist (master + media) response time, ms.
    pub playlist_p50_ms: f64,
    /// 95th percentile playlist response time, ms.
    pub playlist_p95_ms: f64,
    /// Median segment response time, ms.
    pub segment_p50_ms: f64,
    /// 95th percentile segment response time, ms.
    pub segment_p95_ms: f64,
}

/// The result of a load test.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The playlist URL the viewers started from.
    pub target: String,
    /// Viewers asked for.
    pub viewers: u32,
    /// Most viewers active at once.
    pub peak_viewers: u32,
    /// Ramp-up, seconds.
    pub ramp_up_secs: f64,
    /// How long the test ran, seconds.
    pub duration_secs: f64,
    /// Requests made (including failures).
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Failed requests, percent of all.
    pub error_percent: f64,
    /// Failures by cause.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Requests per second over the whole test.
    pub requests_per_sec: f64,
    /// Body bytes received.
    pub bytes: u64,
    /// Body megabytes (10^6) per second.
    pub megabytes_per_sec: f64,
    /// Response times of every request.
    pub latency: Latency,
    /// Per request type.
    pub by_type: Vec<KindStats>,
    /// Segments that took longer to download than to play.
    pub slow_segments: u64,
    /// Times a viewer's next segment had left the playlist window.
    pub fell_behind: u64,
    /// Requests that reached the origin (from the proxy's metrics), if scraped.
    pub origin_requests: Option<u64>,
    /// `origin_requests` / viewers.
    pub origin_requests_per_viewer: Option<f64>,
    /// The tester's own CPU use, percent of one core.
    pub tester_cpu_percent: f64,
    /// Whether the test stopped early at `--max-requests`.
    pub request_budget_hit: bool,
    /// Per second.
    pub timeline: Vec<Second>,
}

impl Summary {
    /// The failures in one line: `none`, or the count, the share and each cause's count.
    pub fn errors_text(&self) -> String {
        if self.errors == 0 {
            return "none".to_owned();
        }
        let causes: Vec<String> = self
            .errors_by_kind
            .iter()
            .map(|(cause, n)| format!("{cause}: {n}"))
            .collect();
        format!(
            "{} ({:.2} %): {}",
            self.errors,
            self.error_percent,
            causes.join(", ")
        )
    }
}

fn timeline(samples: &[Sample], viewers_at: &[u32]) -> Vec<Second> {
    let last = samples.iter().map(|s| s.at_ms / 1000).max().unwrap_or(0);
    let seconds = (last as usize + 1).max(viewers_at.len());
    let mut buckets: Vec<(Vec<u32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); seconds];
    let mut out: Vec<Second> = (0..seconds)
        .map(|t| Second {
            t: t as u32,
            // viewers_at[i] is taken at the end of second i.
            viewers: viewers_at.get(t).copied().unwrap_or(0),
            ..Second::default()
        })
        .collect();
    for s in samples {
        let t = (s.at_ms / 1000) as usize;
        let (second, (playlist, segment)) = (&mut out[t], &mut buckets[t]);
        second.requests += 1;
        second.bytes += u64::from(s.bytes);
        if s.outcome != Outcome::Ok {
            second.errors += 1;
        }
        if s.outcome == Outcome::OffTarget {
            continue;
        }
        match s.kind {
            Kind::Segment => segment.push(s.latency_us),
            _ => playlist.push(s.latency_us),
        }
    }
    for (second, (playlist, segment)) in out.iter_mut().zip(&mut buckets) {
        playlist.sort_unstable();
        segment.sort_unstable();
        second.playlist_p50_ms = sorted_percentile_ms(playlist, 50.0);
        second.playlist_p95_ms = sorted_percentile_ms(playlist, 95.0);
        second.segment_p50_ms = sorted_percentile_ms(segment, 50.0);
        second.segment_p95_ms = sorted_percentile_ms(segment, 95.0);
    }
    out
}

fn percentile_ms(values_us: &mut [u32], p: f64) -> f64 {
    values_us.sort_unstable();
    sorted_percentile_ms(values_us, p)
}

/// The nearest-rank percentile of sorted microseconds, in ms; 0 for no values.
pub fn sorted_percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[index]) / 1000.0
}

fn clamp_u32(v: u128) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(sorted_percentile_ms(&v, 50.0), 50.0);
        assert_eq!(sorted_percentile_ms(&v, 95.0), 95.0);
        assert_eq!(sorted_percentile_ms(&v, 99.0), 99.0);
        assert_eq!(sorted_percentile_ms(&v, 100.0), 100.0);
        assert_eq!(sorted_percentile_ms(&[7000], 1.0), 7.0);
        assert_eq!(sorted_percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn summary_counts_errors_by_cause_and_type() {
        let started = Instant::now();
        let mut rec = Recorder::new(started, 100);
        rec.record(started, Kind::Playlist, Outcome::Ok, 300);
        rec.record(started, Kind::Segment, Outcome::Ok, 1000);
        rec.record(started, Kind::Segment, Outcome::Status(503), 0);
        rec.record(started, Kind::Segment, Outcome::Timeout, 0);
        rec.tick();
        let summary = rec.finish(RunContext {
            target: "http://127.0.0.1/x.m3u8".into(),
            viewers: 2,
            ramp_up: Duration::ZERO,
            wall: Duration::from_secs(2),
            cpu: Duration::from_millis(500),
            origin_requests: Some(3),
        });
        assert_eq!(summary.requests, 4);
        assert_eq!(summary.errors, 2);
        assert_eq!(summary.error_percent, 50.0);
        assert_eq!(summary.errors_by_kind["status 503"], 1);
        assert_eq!(summary.errors_by_kind["timeout"], 1);
        assert_eq!(summary.bytes, 1300);
        assert_eq!(summary.origin_requests_per_viewer, Some(1.5));
        assert_eq!(summary.tester_cpu_percent, 25.0);
        let segment = summary
            .by_type
            .iter()
            .find(|k| k.kind == Kind::Segment)
            .unwrap();
        assert_eq!((segment.requests, segment.errors), (3, 2));
        // No master playlist was fetched: no row for it.
        assert!(summary.by_type.iter().all(|k| k.kind != Kind::Master));
        assert_eq!(summary.timeline[0].requests, 4);
    }

    #[test]
    fn the_request_budget_stops_recording() {
        let started = Instant::now();
        let mut rec = Recorder::new(started, 2);
        for _ in 0..5 {
            rec.record(started, Kind::Segment, Outcome::Ok, 1);
        }
        assert!(rec.is_full());
        assert_eq!(rec.tick().total_requests, 2);
    }
}
