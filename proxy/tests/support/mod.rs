//! Shared support for the proxy's integration tests: an in-test origin, the proxy as a child
//! process, and a minimal raw HTTP/1.1 client.
//!
//! # Why the proxy runs as a child process
//!
//! Pingora's `Server::run` owns the process: it installs signal handlers, creates its own
//! runtimes, and `run_forever` calls `exit`. Running it in-process would leave listeners and
//! threads behind after every test and make SIGTERM draining untestable. So each test starts the
//! real `proxy` binary (`env!("CARGO_BIN_EXE_proxy")`) with a generated config on a free
//! loopback port, waits for `/healthz`, and kills it on drop. That is also the most faithful test
//! of the shipped binary.
//!
//! # Why a raw client and a raw origin
//!
//! The cases under test are about bytes on the wire: truncated bodies, a dropped connection
//! mid-body, a hung origin, oversized heads, slowloris. A raw TCP client and server make each of
//! those one line, and a truncated body is reported as such instead of being "helpfully" hidden.
//!
//! Use from a test file with `mod support;` and `use support::*;`. Not every test file uses every
//! helper, hence the `dead_code` allowance.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod ports;
pub use ports::free_port;

/// Upper bound for any single client exchange in tests.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A `[[upstreams]]` group named `live` with `primary` (and `backup`) as its origins and active
/// health checks off, so the origins only see the requests a test makes.
pub fn upstream_config(primary: &Origin, backup: Option<&Origin>) -> String {
    let mut toml = format!(
        "[[upstreams]]\nname = \"live\"\nprimary.address = \"{}\"\nhealth_check.enabled = false\n",
        primary.host_port()
    );
    if let Some(backup) = backup {
        toml.push_str(&format!("backup.address = \"{}\"\n", backup.host_port()));
    }
    toml
}

/// A fresh private directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "parallax-proxy-test-{}-{}-{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------------------------

/// How the origin misbehaves for a path, on top of its status/headers/body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Send the head (with the full Content-Length) and half the body, then close.
    DropMidBody,
    /// Accept the request and never answer (a SIGSTOPped or wedged origin).
    Hang,
}

/// What the origin answers for one path.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Response status.
    pub status: u16,
    /// Extra response headers (Content-Length is added automatically).
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Delay before the response head is written.
    pub delay: Duration,
    /// Pause after the first half of the body (a slow origin mid-transfer).
    pub stall: Duration,
    /// Misbehaviour.
    pub fault: Fault,
}

impl Reply {
    /// 200 with `body` and no extra headers.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            stall: Duration::ZERO,
            fault: Fault::None,
        }
    }

    /// A bodiless reply with `status`.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            ..Reply::ok(Vec::new())
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Delays the response head.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Pauses after the first half of the body.
    pub fn stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// Sets a misbehaviour.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }
}

/// A request as the origin saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Request target (path + query).
    pub target: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct OriginState {
    replies: Mutex<HashMap<String, Reply>>,
    seen: Mutex<Vec<SeenRequest>>,
    total: AtomicU64,
    hung: AtomicBool,
}

/// An HTTP/1.1 origin on `127.0.0.1:0` with scripted replies per path (query ignored for
/// matching), a request log and counters. Unknown paths get 404. Replies carrying an `ETag`
/// answer a matching `If-None-Match` with 304. Stops when dropped.
pub struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    task: JoinHandle<()>,
}

impl Origin {
    /// Starts an origin on a free loopback port.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::serve(listener)
    }

    /// Starts an origin on a given address (e.g. to bring a "killed" origin back on its port).
    pub async fn start_on(addr: SocketAddr) -> Origin {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Origin::serve(listener),
                Err(e) if Instant::now() > deadline => panic!("rebinding {addr}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn serve(listener: TcpListener) -> Origin {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Origin { addr, state, task }
    }

    /// The origin's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as the proxy config wants it.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Scripts the reply for `path`.
    pub fn set(&self, path: &str, reply: Reply) {
        self.state
            .replies
            .lock()
            .unwrap()
            .insert(path.to_owned(), reply);
    }

    /// While true, every request (on new and open connections) is read and never answered.
    pub fn set_hung(&self, hung: bool) {
        self.state.hung.store(hung, Ordering::SeqCst);
    }

    /// Requests received for `path` (query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .count()
    }

    /// Requests received in total.
    pub fn total(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Every request received, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Stops accepting and closes the listener (connections already open finish their
    /// current exchange at most): afterwards connects are refused.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<OriginState>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(serve_connection(stream, state.clone()));
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<OriginState>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let seen = SeenRequest {
            method: method.clone(),
            target: target.clone(),
            headers,
        };
        let close = seen
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let inm = seen.header("if-none-match").map(str::to_owned);
        state.total.fetch_add(1, Ordering::SeqCst);
        state.seen.lock().unwrap().push(seen);

        if state.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let path = target.split('?').next().unwrap_or_default().to_owned();
        let reply = state
            .replies
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_else(|| Reply::status(404));
        if reply.fault == Fault::Hang {
            std::future::pending::<()>().await;
        }
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let etag = reply
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.clone());
        let not_modified = etag.is_some() && etag == inm;
        let status = if not_modified { 304 } else { reply.status };
        let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in &reply.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let send_body = !not_modified && method != "HEAD";
        if !not_modified {
            out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
        }
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if send_body {
            match reply.fault {
                Fault::DropMidBody => {
                    bytes.extend_from_slice(&reply.body[..reply.body.len() / 2]);
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.flush().await;
                    // Give the proxy a moment to forward the half body before the reset.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return;
                }
                Fault::None | Fault::Hang if !reply.stall.is_zero() => {
                    let half = reply.body.len() / 2;
                    bytes.extend_from_slice(&reply.body[..half]);
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(reply.stall).await;
                    bytes = reply.body[half..].to_vec();
                }
                Fault::None | Fault::Hang => bytes.extend_from_slice(&reply.body),
            }
        }
        if stream.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

/// Reads until a full request head is in `buf`; returns its length (through the blank line).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Other",
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy child process
// ---------------------------------------------------------------------------------------------

/// Options for [`Proxy::start_with`].
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `server.drain_secs` (default 1 in tests).
    pub drain_secs: u64,
    /// `server.grace_period_secs` (default 1 in tests).
    pub grace_period_secs: u64,
    /// Extra command-line arguments.
    pub args: Vec<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            drain_secs: 1,
            grace_period_secs: 1,
            args: Vec::new(),
        }
    }
}

/// The `proxy` binary running as a child process on a free loopback port. Killed on drop.
pub struct Proxy {
    child: Child,
    /// The plain HTTP listener.
    pub addr: SocketAddr,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    /// Whether dropping this proxy removes `dir` (an upgraded-away process hands it over).
    owns_dir: bool,
}

impl Proxy {
    /// Starts the proxy with `toml` as its config file and waits until `/healthz` answers 200.
    ///
    /// `toml` must not contain `listen.http` or a `[server]` table: the support module sets
    /// the listen address (`--listen`) and writes `[server]` itself (per-test pid file and
    /// upgrade socket, short drain and grace periods).
    pub async fn start(toml: &str) -> Proxy {
        Proxy::start_with(toml, ProxyOptions::default()).await
    }

    /// [`Proxy::start`] with options.
    pub async fn start_with(toml: &str, options: ProxyOptions) -> Proxy {
        let dir = temp_dir("proxy");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.join("proxy.toml");
        let mut config = std::fs::File::create(&config_path).unwrap();
        writeln!(
            config,
            "{toml}\n\n[server]\nthreads = 2\ndrain_secs = {}\ngrace_period_secs = {}\n\
             graceful_shutdown_timeout_secs = 1\npid_file = {:?}\nupgrade_sock = {:?}\n",
            options.drain_secs,
            options.grace_period_secs,
            dir.join("proxy.pid"),
            dir.join("upgrade.sock"),
        )
        .unwrap();
        let log_path = dir.join("proxy.log");
        let child = spawn_proxy(&config_path, addr, &log_path, &options.args);
        let mut proxy = Proxy {
            child,
            addr,
            dir,
            config_path,
            log_path,
            owns_dir: true,
        };
        proxy.wait_ready().await;
        proxy
    }

    /// Pingora's graceful upgrade: starts a second process with `-u` on the same config, then
    /// sends this one SIGQUIT so it hands its listening sockets over and drains. Returns the new
    /// process once it has its sockets; this one keeps running until its drain ends (see
    /// [`Proxy::wait_exit`]).
    pub async fn upgrade(&mut self) -> Proxy {
        let log_path = self.dir.join("proxy-upgraded.log");
        let child = spawn_proxy(&self.config_path, self.addr, &log_path, &["-u".to_owned()]);
        let mut new = Proxy {
            child,
            addr: self.addr,
            dir: self.dir.clone(),
            config_path: self.config_path.clone(),
            log_path,
            owns_dir: true,
        };
        self.owns_dir = false;
        // The new process waits on the upgrade socket; give it a moment to bind it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.dir.join("upgrade.sock").exists() {
            assert!(
                Instant::now() < deadline,
                "no upgrade socket:\n{}",
                new.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -QUIT failed");
        while !new.log().contains("Bootstrap done") {
            if let Some(status) = new.child.try_wait().unwrap() {
                panic!("upgraded proxy exited with {status}:\n{}", new.log());
            }
            assert!(Instant::now() < deadline, "upgrade stalled:\n{}", new.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        new
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("proxy exited with {status} during startup:\n{}", self.log());
            }
            if let Ok(resp) = get(self.addr, "/healthz").await {
                if resp.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("proxy not ready after 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the proxy wrote to stdout/stderr so far (logs, access log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM (graceful drain + shutdown).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `timeout` for the process to exit; returns whether it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn_proxy(
    config_path: &std::path::Path,
    addr: SocketAddr,
    log_path: &std::path::Path,
    args: &[String],
) -> Child {
    let log = std::fs::File::create(log_path).unwrap();
    Command::new(env!("CARGO_BIN_EXE_proxy"))
        .arg("--config")
        .arg(config_path)
        .arg("--listen")
        .arg(addr.to_string())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
    /// False when the connection ended before the body its framing announced.
    pub complete: bool,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    get_with(addr, path, &[]).await
}

/// `GET path` with extra headers.
pub async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    request(addr, "GET", path, headers).await
}

/// Any method, extra headers, `Host: test.local`, `Connection: close`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(addr, raw.as_bytes(), method == "HEAD").await
}

/// Writes `raw` bytes, reads until the server closes, parses one response.
pub async fn send_raw(addr: SocketAddr, raw: &[u8], head_only: bool) -> std::io::Result<Response> {
    tokio::time::timeout(CLIENT_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(raw).await?;
        let mut bytes = Vec::new();
        // A reset after a partial body is a result to report, not a test error.
        let _ = stream.read_to_end(&mut bytes).await;
        parse_response(&bytes, head_only)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client timeout"))?
}

/// Parses one HTTP/1.1 response from `bytes` (everything the server sent).
pub fn parse_response(bytes: &[u8], head_only: bool) -> std::io::Result<Response> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let head_end = find(bytes, b"\r\n\r\n").ok_or_else(|| invalid("no response head"))?;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
        complete: true,
    };
    let rest = &bytes[head_end + 4..];
    if head_only || status == 304 || status == 204 {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, complete) = dechunk(rest);
        resp.body = body;
        resp.complete = complete;
    } else if let Some(len) = resp.header("content-length").and_then(|v| v.parse().ok()) {
        let len: usize = len;
        resp.complete = rest.len() >= len;
        resp.body = rest[..rest.len().min(len)].to_vec();
    } else {
        resp.body = rest.to_vec();
    }
    Ok(resp)
}

fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (body, false);
        };
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (body, true);
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..rest.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A body of `len` bytes whose content depends on `seed`, so a mix-up is detectable.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Policy modules
// ---------------------------------------------------------------------------------------------

/// The crates built by [`guest_module`]: the shipped modules, the template and the test guest.
const GUEST_CRATES: &[&str] = &[
    "token-auth",
    "region-steer",
    "playlist-rewrite",
    "module-template",
    "test-guest",
];

/// The component built from guest crate `name` (e.g. `"token-auth"`). The first call in a test
/// process builds every guest crate with `cargo build --release --target wasm32-wasip2` into
/// `target/wasm-guests` (its own target dir, so it never waits on the build that runs these
/// tests); later calls, and other test processes, find them built.
pub fn guest_module(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = root.join("target/wasm-guests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(&root);
        for name in GUEST_CRATES {
            command.args(["-p", name]);
        }
        let output = command
            .output()
            .expect("running cargo to build the guest modules");
        assert!(
            output.status.success(),
            "building the guest modules failed (is the wasm32-wasip2 target installed? \
             `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        target.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Copies module `name` into `dir` as `<file>.wasm` the way operators are told to: written
/// under a temporary name, then renamed, so the watcher never sees half a file.
pub fn install_module(name: &str, dir: &std::path::Path, file: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::copy(guest_module(name), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{file}.wasm"))).unwrap();
}

/// Reads `GET /metrics` from the proxy's metrics listener at `addr`.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let resp = get(addr, "/metrics").await.unwrap();
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// The sum of the Prometheus samples of metric `name` whose labels include every one of
/// `labels` (each written as rendered, e.g. `module="a"`); 0 when there is none.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `method path` with `body` and extra headers (`Content-Length` added), `Connection: close`.
pub async fn send_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw, false).await
}
