//! The `origin` binary: parse flags and config, set up logging, bind, and hand over to
//! [`parallax_origin::run`]; or, with `origin publish`, run the built-in test publisher.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use parallax_origin::publisher::{self, PublishOptions};
use parallax_origin::Config;
use tokio::net::TcpListener;

/// Parallax origin: RTMP ingest → live HLS, recording to VOD.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (see origin/origin.example.toml); flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// RTMP listen address (default 0.0.0.0:1935).
    #[arg(long)]
    rtmp_listen: Option<SocketAddr>,
    /// HTTP listen address (default 0.0.0.0:8080).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Data directory for live segments and recordings (default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish the bundled test clip (or an FLV file) to an RTMP URL in real time.
    Publish {
        /// Target, e.g. rtmp://127.0.0.1:1935/live/test
        url: String,
        /// FLV file to loop instead of the bundled clip.
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Stop after this many loops (default: loop forever).
        #[arg(long)]
        loops: Option<u32>,
        /// Interleave audio and video chunks mid-message, as OBS 30+ and FFmpeg 6.1+ do.
        #[arg(long)]
        interleave: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);

    if let Some(Command::Publish {
        url,
        clip,
        loops,
        interleave,
    }) = cli.command
    {
        let mut opts = PublishOptions::new(url);
        opts.clip = clip;
        opts.loops = loops;
        opts.interleave_chunks = interleave;
        return runtime(1)?.block_on(async {
            opts.shutdown = Some(Box::pin(shutdown_signal()));
            let stats = publisher::publish(opts).await.context("publishing")?;
            tracing::info!(?stats, "publish finished");
            Ok(())
        });
    }

    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(a) = cli.rtmp_listen {
        config.rtmp.listen = a;
    }
    if let Some(a) = cli.http_listen {
        config.http.listen = a;
    }
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    let config = config.validate()?;
    runtime(config.worker_threads)?.block_on(serve(config))
}

/// The tokio runtime: one event loop on this thread for 1, else a work-stealing pool of
/// `threads` workers (0: one per core).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            builder.worker_threads(threads);
        }
        builder
    };
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let rtmp = TcpListener::bind(config.rtmp.listen)
        .await
        .with_context(|| format!("binding RTMP on {}", config.rtmp.listen))?;
    let http = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
    parallax_origin::run(rtmp, http, config, shutdown_signal()).await?;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM (what systemd and container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
