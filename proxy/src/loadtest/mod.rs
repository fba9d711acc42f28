//! `proxy loadtest`: simulated HLS viewers against a live stream, the built-in replacement for
//! the JMeter lab.
//!
//! Every viewer behaves like a player ([`viewer`]): it loads the playlist, picks a variant,
//! joins at the live edge, downloads each new segment and reloads per RFC 8216 §6.3.4. The
//! whole test runs on one thread (a current-thread tokio runtime), so "N viewers on one core"
//! is what it measures itself doing: the summary reports its own CPU use next to the figures
//! for the server under test.
//!
//! Bounds: at most [`MAX_VIEWERS`] viewers for at most [`MAX_DURATION`]; a request budget
//! (`--max-requests`) stops it early; it contacts only the host of the URL it is given and the
//! hosts named with `--allow-host` (a playlist pointing elsewhere is reported, not followed),
//! over plain HTTP.
//!
//! Output: a live progress line on stderr, the summary on stdout, optionally the summary as
//! JSON (`--json`) and an HTML report with charts (`--report`, [`report`]).

mod client;
pub mod report;
pub mod stats;
mod viewer;

use std::cell::RefCell;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use http::Uri;
use tokio::task::JoinSet;
use tokio::time::Instant;

use client::{Client, Targets};
use stats::{Kind, Recorder, RunContext, Summary};
pub use viewer::VariantChoice;
use viewer::{Shared, Viewer};

/// Most viewers one run simulates.
pub const MAX_VIEWERS: u32 = 100_000;
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// `proxy loadtest` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// The playlist viewers open (multivariant or media), `http://host:port/path.m3u8`.
    pub url: String,
    /// Viewers to simulate.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub viewers: u32,
    /// Time over which viewers join, evenly spaced (`30s`, `2m`, `500ms`; bare numbers are
    /// seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ramp_up: Duration,
    /// Length of the whole test, ramp-up included.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Which variant of a multivariant playlist viewers play.
    #[arg(long, value_enum, default_value_t = VariantChoice::Highest)]
    pub variant: VariantChoice,
    /// Per-request timeout: connect, header and body together.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_requests: u64,
    /// Another host (`host` or `host:port`) the playlists may point to; repeat for several.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
    pub allow_hosts: Vec<String>,
    /// The proxy's Prometheus endpoint (`http://127.0.0.1:9091/metrics`): scraped before and
    /// after to count the requests that reached the origin.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Write the HTML report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit with status 1 when more than this percentage of requests failed.
    #[arg(long, default_value_t = 1.0)]
    pub max_error_percent: f64,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    /// A flag out of range or unusable.
    #[error("{0}")]
    Usage(String),
    /// The first playlist could not be loaded: nothing to simulate.
    #[error("{url}: {reason}")]
    Target {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The runtime, the report or the JSON file.
    #[error("{0}")]
    Io(String),
}

/// A validated run.
struct Plan {
    url: Uri,
    targets: Targets,
    metrics: Option<Uri>,
    args: LoadtestArgs,
}

impl Plan {
    fn new(args: &LoadtestArgs) -> Result<Self, LoadtestError> {
        let usage = |m: String| LoadtestError::Usage(m);
        let url: Uri = args
            .url
            .parse()
            .map_err(|e| usage(format!("{}: not a URL: {e}", args.url)))?;
        if url.scheme_str() != Some("http") || url.authority().is_none() {
            return Err(usage(format!(
                "{}: give an http://host[:port]/... URL (HTTPS targets are not supported)",
                args.url
            )));
        }
        if args.viewers == 0 || args.viewers > MAX_VIEWERS {
            return Err(usage(format!("--viewers must be 1..={MAX_VIEWERS}")));
        }
        if args.duration.is_zero() || args.duration > MAX_DURATION {
            return Err(usage(format!(
                "--duration must be more than 0 and at most {} s",
                MAX_DURATION.as_secs()
            )));
        }
        if args.ramp_up > args.duration {
            return Err(usage("--ramp-up cannot be longer than --duration".into()));
        }
        if args.timeout.is_zero() {
            return Err(usage("--timeout must be more than 0".into()));
        }
        let targets = Targets::new(&url, &args.allow_hosts).map_err(usage)?;
        let metrics = match &args.metrics {
            None => None,
            Some(m) => {
                let uri: Uri = m
                    .parse()
                    .map_err(|e| usage(format!("--metrics {m}: not a URL: {e}")))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(usage(format!(
                        "--metrics {m}: give an http://host:port/path URL"
                    )));
                }
                Some(uri)
            }
        };
        Ok(Self {
            url,
            targets,
            metrics,
            args: args.clone(),
        })
    }
}

/// Runs the test `args` describe on a fresh current-thread runtime (one core) and returns what
/// it measured; writes the report and JSON files when asked.
pub fn run(args: &LoadtestArgs) -> Result<Summary, LoadtestError> {
    let plan = Plan::new(args)?;
    check_open_files(args.viewers)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadtestError::Io(format!("starting the runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    let summary = local.block_on(&runtime, simulate(&plan))?;
    if let Some(path) = &plan.args.report {
        std::fs::write(path, report::render(&summary))
            .map_err(|e| LoadtestError::Io(format!("writing {}: {e}", path.display())))?;
    }
    if let Some(path) = &plan.args.json {
        let json = serde_json::to_vec_pretty(&summary)
            .map_err(|e| LoadtestError::Io(format!("encoding the summary: {e}")))?;
        std::fs::write(path, json)
            .map_err(|e| LoadtestError::Io(format!("writing {}: {e}", path.display())))?;
    }
    Ok(summary)
}

async fn simulate(plan: &Plan) -> Result<Summary, LoadtestError> {
    preflight(plan).await?;
    let origin_before = match &plan.metrics {
        Some(uri) => Some(origin_requests(uri, plan.args.timeout).await?),
        None => None,
    };

    let args = &plan.args;
    let cpu_before = process_cpu();
    let started = Instant::now();
    let deadline = started + args.duration;
    let recorder = Rc::new(RefCell::new(Recorder::new(
        started.into_std(),
        args.max_requests,
    )));
    let shared = Rc::new(Shared {
        recorder: Rc::clone(&recorder),
        targets: plan.targets.clone(),
        url: plan.url.clone(),
        variant: args.variant,
        timeout: args.timeout,
        deadline,
    });
    let mut viewers = JoinSet::new();
    for id in 0..args.viewers {
        let joins_at = started
            + args
                .ramp_up
                .mul_f64(f64::from(id) / f64::from(args.viewers));
        let shared = Rc::clone(&shared);
        viewers.spawn_local(async move {
            tokio::time::sleep_until(joins_at).await;
            shared.recorder.borrow_mut().active_viewers += 1;
            Viewer::new(id, Rc::clone(&shared)).run().await;
            shared.recorder.borrow_mut().active_viewers -= 1;
        });
    }

    let mut progress = ProgressLine::new(args.quiet, args.viewers);
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let snapshot = recorder.borrow_mut().tick();
                let active = recorder.borrow().active_viewers;
                progress.show(started.elapsed(), active, &snapshot);
                if Instant::now() >= deadline || recorder.borrow().is_full() {
                    break;
                }
            }
            joined = viewers.join_next() => {
                // Every viewer finished early (a stream that ended).
                if joined.is_none() {
                    break;
                }
            }
        }
    }
    // Requests still in flight at the deadline are abandoned, not recorded.
    viewers.abort_all();
    while viewers.join_next().await.is_some() {}
    let wall = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    progress.finish();

    let origin_requests = match (&plan.metrics, origin_before) {
        (Some(uri), Some(before)) => Some(
            origin_requests(uri, args.timeout)
                .await?
                .saturating_sub(before),
        ),
        _ => None,
    };
    drop(shared);
    let recorder = Rc::try_unwrap(recorder)
        .map_err(|_| LoadtestError::Io("viewers outlived the test".into()))?
        .into_inner();
    Ok(recorder.finish(RunContext {
        target: args.url.clone(),
        viewers: args.viewers,
        ramp_up: args.ramp_up,
        wall,
        cpu,
        origin_requests,
    }))
}

/// Each viewer holds a connection: refuse up front, with the fix, when the process may not open
/// that many files, instead of recording thousands of connect errors.
fn check_open_files(viewers: u32) -> Result<(), LoadtestError> {
    let needed = u64::from(viewers) + 64;
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<u64>().ok()
        });
    match limit {
        Some(limit) if limit < needed => Err(LoadtestError::Usage(format!(
            "{viewers} viewers need about {needed} open files but the limit is {limit}: \
             raise it first (ulimit -n {needed})"
        ))),
        _ => Ok(()),
    }
}

/// Loads the URL once so a wrong URL is one clear error, not N viewers' worth of them.
async fn preflight(plan: &Plan) -> Result<(), LoadtestError> {
    let body = fetch_once(&plan.url, plan.args.timeout).await?;
    m3u8_rs::parse_playlist_res(&body).map_err(|_| {
        let start = String::from_utf8_lossy(&body[..body.len().min(40)]).replace('\n', "\\n");
        target_error(&plan.url, format!("not an HLS playlist (starts {start:?})"))
    })?;
    Ok(())
}

/// One GET outside the viewers (the preflight, the metrics scrapes); a failure names the URL.
async fn fetch_once(uri: &Uri, timeout: Duration) -> Result<bytes::Bytes, LoadtestError> {
    Client::new(timeout)
        .get(uri, true)
        .await
        .map(|fetched| fetched.body)
        .map_err(|e| target_error(uri, e.outcome.label()))
}

fn target_error(uri: &Uri, reason: String) -> LoadtestError {
    LoadtestError::Target {
        url: uri.to_string(),
        reason,
    }
}

/// The sum of `parallax_origin_requests_total` on the proxy's metrics endpoint.
async fn origin_requests(uri: &Uri, timeout: Duration) -> Result<u64, LoadtestError> {
    let body = fetch_once(uri, timeout).await?;
    let text = String::from_utf8_lossy(&body);
    let mut found = false;
    let mut total = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("parallax_origin_requests_total") else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        found = true;
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            total += value;
        }
    }
    if !found && !text.contains("# TYPE parallax_origin_requests_total") {
        return Err(target_error(
            uri,
            "no parallax_origin_requests_total: not a Parallax proxy's metrics endpoint".into(),
        ));
    }
    Ok(total as u64)
}

fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The live line on stderr: rewritten in place on a terminal, one line every 5 s otherwise.
struct ProgressLine {
    quiet: bool,
    terminal: bool,
    viewers: u32,
    shown: bool,
}

impl ProgressLine {
    fn new(quiet: bool, viewers: u32) -> Self {
        Self {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            viewers,
            shown: false,
        }
    }

    fn show(&mut self, elapsed: Duration, active: u32, p: &stats::Progress) {
        let secs = elapsed.as_secs();
        if self.quiet || (!self.terminal && !secs.is_multiple_of(5)) {
            return;
        }
        let line = format!(
            "[{secs:>4} s] viewers {active}/{} | {} req/s | {:.1} MB/s | errors {} ({} total) | \
             p95 playlist {:.1} ms, segment {:.1} ms | {} requests",
            self.viewers,
            p.requests,
            p.bytes as f64 / 1e6,
            p.errors,
            p.total_errors,
            p.playlist_p95_ms,
            p.segment_p95_ms,
            p.total_requests,
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.shown = true;
    }

    fn finish(&self) {
        if self.shown && self.terminal {
            eprintln!();
        }
    }
}

/// The summary as the terminal shows it.
pub fn format_summary(s: &Summary) -> String {
    let mut out = format!(
        "Parallax load test: {} viewers (ramp-up {:.0} s) for {:.1} s against {}\n\
         tester CPU: {:.0} % of one core\n\n\
         {:<9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}\n",
        s.viewers,
        s.ramp_up_secs,
        s.duration_secs,
        s.target,
        s.tester_cpu_percent,
        "type",
        "requests",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "MB"
    );
    let row = |name: &str, requests: u64, errors: u64, l: &stats::Latency, bytes: u64| {
        format!(
            "{name:<9} {requests:>9} {errors:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1}\n",
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            bytes as f64 / 1e6
        )
    };
    for k in &s.by_type {
        out.push_str(&row(
            k.kind.name(),
            k.requests,
            k.errors,
            &k.latency,
            k.bytes,
        ));
    }
    out.push_str(&row("all", s.requests, s.errors, &s.latency, s.bytes));
    out.push_str(&format!(
        "\nthroughput: {:.0} req/s, {:.1} MB/s\n",
        s.requests_per_sec, s.megabytes_per_sec
    ));
    out.push_str(&format!("errors: {}\n", s.errors_text()));
    out.push_str(&format!(
        "slow segments (download longer than the segment): {}; fell behind the window: {}\n",
        s.slow_segments, s.fell_behind
    ));
    if let (Some(n), Some(per)) = (s.origin_requests, s.origin_requests_per_viewer) {
        out.push_str(&format!(
            "requests reaching the origin: {n} ({per:.3} per viewer)\n"
        ));
    }
    if s.request_budget_hit {
        out.push_str("stopped early: --max-requests reached\n");
    }
    let segments = s.by_type.iter().find(|k| k.kind == Kind::Segment);
    if segments.is_none_or(|k| k.requests == 0) {
        out.push_str("warning: no segment was downloaded\n");
    }
    out
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 30s, 2m or 500ms"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
    }

    fn args(extra: &[&str]) -> LoadtestArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadtestArgs,
        }
        let mut argv = vec!["loadtest"];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        let err = |extra: &[&str]| match Plan::new(&args(extra)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {extra:?}"),
        };
        assert!(err(&["https://a/x.m3u8"]).contains("HTTPS targets are not supported"));
        assert!(err(&["/x.m3u8"]).contains("http://host"));
        assert!(err(&["http://a/x.m3u8", "--viewers", "0"]).contains("--viewers"));
        assert!(err(&["http://a/x.m3u8", "--duration", "2h"]).contains("--duration"));
        assert!(
            err(&["http://a/x.m3u8", "--ramp-up", "2m", "--duration", "1m"]).contains("--ramp-up")
        );
        assert!(err(&["http://a/x.m3u8", "--metrics", "ftp://m/x"]).contains("--metrics"));
        assert!(Plan::new(&args(&["http://a:81/x.m3u8", "-n", "5000"])).is_ok());
    }
}
