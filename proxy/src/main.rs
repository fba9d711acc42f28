//! The `proxy` binary: parse flags and the TOML config, set up logging, run.
//!
//! `proxy --upstream 127.0.0.1:8081` alone is a working cache on `0.0.0.0:8080`; everything
//! else lives in the config file (see `proxy/proxy.example.toml`). Flags override the file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use parallax_proxy::config::{Config, LogFormat};
use parallax_proxy::upstream::{GroupConfig, OriginConfig};
use pingora::server::configuration::Opt;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// mimalloc instead of the system allocator: a cache hit allocates and frees a handful of small
/// headers and buffers per request, and glibc malloc/free was ~9% of a playlist-hit profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Parallax edge cache for live HLS.
#[derive(Debug, Parser)]
#[command(name = "proxy", version)]
struct Args {
    /// TOML config file (see proxy.example.toml).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Primary origin host:port; replaces the upstream groups of the config file with one group.
    #[arg(long)]
    upstream: Option<String>,
    /// Backup origin host:port for the --upstream group.
    #[arg(long, requires = "upstream")]
    backup: Option<String>,
    /// Plain HTTP listen address (default 0.0.0.0:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Admin API bearer token (at least 16 characters); enables the admin API.
    #[arg(long)]
    admin_token: Option<String>,
    /// Admin API listen address (default 127.0.0.1:9090).
    #[arg(long)]
    admin_addr: Option<String>,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Pingora: take over the listeners of a running instance (graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
    /// Pingora: run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Pingora: validate the configuration and exit.
    #[arg(short, long)]
    test: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // Held until the end of main: dropping it flushes the access log.
    let _log_guard = init_logging(&config, args.daemon);
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        test: args.test,
        ..Opt::default()
    };
    match parallax_proxy::run(&config, opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(primary) = &args.upstream {
        config.upstreams = vec![GroupConfig {
            name: "default".into(),
            primary: OriginConfig::at(primary.clone()),
            backup: args.backup.clone().map(OriginConfig::at),
            ..GroupConfig::default()
        }];
        config.routes.clear();
    }
    if let Some(listen) = &args.listen {
        config.listen.http = listen.clone();
    }
    if let Some(token) = &args.admin_token {
        config.admin.token = token.clone();
        config.admin.enabled = true;
    }
    if let Some(addr) = &args.admin_addr {
        config.admin.listen = addr.clone();
    }
    if let Some(threads) = args.threads {
        config.server.threads = threads;
    }
    Ok(config.validate()?)
}

/// Logs go to stderr through a writer thread, so the access-log line of every request is a
/// channel send on the request path, not a write syscall. Daemon mode forks after this point and
/// would lose the thread, so it writes synchronously instead.
fn init_logging(config: &Config, daemon: bool) -> Option<WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let (writer, guard) = if daemon {
        (BoxMakeWriter::new(std::io::stderr), None)
    } else {
        // Not lossy: under overload, requests wait for the log rather than lines vanishing.
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::stderr());
        (BoxMakeWriter::new(writer), Some(guard))
    };
    // Colour codes only for a terminal, not for log files and collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
