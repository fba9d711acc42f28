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
    /// Tools instead of running the proxy.
    #[command(subcommand)]
    command: Option<Command>,
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
    /// Serve the built-in web player at /player/ (`player.enabled`).
    #[arg(long)]
    player: bool,
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

/// Subcommands: offline tools that do not start the proxy.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Signed tokens for the token-auth policy module.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Policy modules (WebAssembly components).
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Simulate HLS viewers against a live stream (playlist reloads, segment downloads) and
    /// report response times, errors and origin offload.
    Loadtest(parallax_proxy::loadtest::LoadtestArgs),
}

/// `proxy token …`
#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Print a token (or, with --url, a signed URL) the token-auth module accepts.
    Sign(SignArgs),
}

/// `proxy module ...`.
#[derive(Debug, clap::Subcommand)]
enum ModuleCommand {
    /// Validate a module offline with the checks the proxy makes before loading it: a
    /// component, importing only what the proxy provides, exporting at least one hook, and its
    /// self-test (if exported) passing with the given config.
    Check(CheckArgs),
}

/// `proxy module check`.
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The module file (`.wasm` component).
    file: PathBuf,
    /// A config value the module reads, `key=value`, as in its `[[wasm.modules]]` `config`
    /// table (repeat for several).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
}

/// `proxy token sign`: the same signing code the token-auth module verifies with
/// (`parallax-token`).
#[derive(Debug, clap::Args)]
struct SignArgs {
    /// The signing key in hex (the module's `key`); prefer --key-file to keep it out of shell
    /// history.
    #[arg(
        long,
        required_unless_present = "key_file",
        conflicts_with = "key_file"
    )]
    key: Option<String>,
    /// A file holding the hex key (surrounding whitespace ignored).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Path pattern the token allows (`*` any run of characters, `?` one); repeat for several.
    #[arg(long, required = true)]
    acl: Vec<String>,
    /// Lifetime in seconds from now (the token's `exp`).
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Seconds from now before which the token is refused (the token's `st`); omitted by default.
    #[arg(long)]
    start_in: Option<u64>,
    /// An opaque viewer/session id carried in the token (`id`).
    #[arg(long)]
    id: Option<String>,
    /// Print this URL with the token appended as a query parameter instead of the bare token.
    #[arg(long)]
    url: Option<String>,
    /// The query parameter name for --url (the module's `query-name`).
    #[arg(long, default_value = "__token__")]
    name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(command) = &args.command {
        return run_command(command);
    }
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

fn run_command(command: &Command) -> ExitCode {
    let sign = match command {
        Command::Token(TokenCommand::Sign(sign)) => sign,
        Command::Loadtest(args) => return loadtest(args),
        Command::Module(ModuleCommand::Check(check)) => {
            return match module_check(check) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proxy module check: {}: {e}", check.file.display());
                    ExitCode::FAILURE
                }
            };
        }
    };
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match token_sign(sign, now_secs) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy token sign: {e}");
            ExitCode::from(2)
        }
    }
}

/// `proxy loadtest`: 0 when the test ran with at most `--max-error-percent` failures, 1 when
/// more failed, 2 when it could not run.
fn loadtest(args: &parallax_proxy::loadtest::LoadtestArgs) -> ExitCode {
    use parallax_proxy::loadtest;
    match loadtest::run(args) {
        Ok(summary) => {
            print!("{}", loadtest::format_summary(&summary));
            if let Some(path) = &args.report {
                println!("report: {}", path.display());
            }
            if summary.error_percent > args.max_error_percent {
                eprintln!(
                    "proxy loadtest: {:.2} % of requests failed (more than --max-error-percent {})",
                    summary.error_percent, args.max_error_percent
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// The token (or signed URL) `proxy token sign` prints for `args` at `now_secs`.
fn token_sign(args: &SignArgs, now_secs: u64) -> anyhow::Result<String> {
    let hex = match (&args.key, &args.key_file) {
        (Some(key), _) => key.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
        (None, None) => anyhow::bail!("--key or --key-file is required"),
    };
    let key = parallax_token::Key::from_hex(&hex)?;
    let token = parallax_token::sign(
        &key,
        &parallax_token::SignParams {
            expires_secs: now_secs.saturating_add(args.ttl),
            start_secs: args.start_in.map(|s| now_secs.saturating_add(s)),
            acl: args.acl.clone(),
            id: args.id.clone(),
        },
    )?;
    Ok(match &args.url {
        Some(url) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            let value = parallax_token::locate::percent_encode_query_value(&token);
            format!("{url}{separator}{}={value}", args.name)
        }
        None => token,
    })
}

/// `proxy module check`: the report line, or why the module would be rejected.
fn module_check(args: &CheckArgs) -> anyhow::Result<String> {
    use parallax_proxy::wasm::{config::ConfigValue, host::HostServices, runtime, ModuleConfig};
    let mut entry = ModuleConfig {
        name: "check".into(),
        ..ModuleConfig::default()
    };
    for pair in &args.config {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--config {pair:?}: expected KEY=VALUE"))?;
        entry
            .config
            .insert(key.to_owned(), ConfigValue::Text(value.to_owned()));
    }
    let bytes = std::fs::read(&args.file)?;
    let bound = runtime::check(bytes, &entry, HostServices::standalone()?)?;
    let code = &bound.code;
    Ok(format!(
        "ok: version {} ({} bytes), exports {}",
        code.short(),
        code.bytes.len(),
        code.hooks().join(", ")
    ))
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
    if args.player {
        config.player.enabled = true;
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
/// channel send on the request path, not a write syscall; the thread writes them in batches. Daemon mode forks after this point and
/// would lose the thread, so it writes synchronously instead.
fn init_logging(config: &Config, daemon: bool) -> Option<WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let (writer, guard) = if daemon {
        (BoxMakeWriter::new(std::io::stderr), None)
    } else {
        // Not lossy: under overload, requests wait for the log rather than lines vanishing.
        // Buffered: the writer thread drains every queued line, then flushes, so a busy proxy
        // writes its log in large writes instead of one syscall per request, and a quiet one
        // still shows each line at once.
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_args(extra: &[&str]) -> SignArgs {
        let mut argv = vec![
            "proxy",
            "token",
            "sign",
            "--key",
            "00112233445566778899aabbccddeeff",
        ];
        argv.extend_from_slice(extra);
        match Args::try_parse_from(argv).unwrap().command {
            Some(Command::Token(TokenCommand::Sign(args))) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn token_sign_prints_a_token_the_module_accepts_until_its_ttl_ends() {
        let out = token_sign(&sign_args(&["--acl", "/live/cam1/*", "--ttl", "60"]), 1000).unwrap();
        let key = parallax_token::Key::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let claims =
            parallax_token::verify(&out, "/live/cam1/a.ts", 1059, std::slice::from_ref(&key))
                .unwrap();
        assert_eq!(claims.expires_secs, 1060);
        assert!(parallax_token::verify(&out, "/live/cam1/a.ts", 1060, &[key]).is_err());
    }

    #[test]
    fn token_sign_with_a_url_appends_the_token_as_the_named_parameter() {
        let args = sign_args(&[
            "--acl",
            "/live/*",
            "--start-in",
            "5",
            "--url",
            "https://cdn.example/live/a.m3u8?x=1",
            "--name",
            "tok",
        ]);
        let out = token_sign(&args, 1000).unwrap();
        let (url, token) = out.split_once("&tok=").unwrap();
        assert_eq!(url, "https://cdn.example/live/a.m3u8?x=1");
        assert!(
            token.starts_with("exp=4600~st=1005~acl=/live/*~hmac="),
            "{token}"
        );
    }

    #[test]
    fn token_sign_refuses_a_short_key_with_a_reason() {
        let args = SignArgs {
            key: Some("abcd".into()),
            ..sign_args(&["--acl", "/*"])
        };
        let err = token_sign(&args, 0).unwrap_err().to_string();
        assert!(err.contains("shorter than 16 bytes"), "{err}");
    }
}
