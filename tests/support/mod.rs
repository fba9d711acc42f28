//! What the end-to-end tests share: the shipped binaries as child processes on free loopback
//! ports, and a bounded HTTP GET.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../origin/tests/support/mod.rs"]
#[allow(unused_imports)]
pub mod origin_support;
#[path = "../../proxy/tests/support/ports.rs"]
pub mod ports;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use origin_support::{parse_playlist, wait_for};
use ports::free_port;

/// A shipped binary built by `cargo test --workspace` next to this test's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/chain-<hash> → target/<profile>/<name>
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `bash scripts/test.sh` (or `cargo test --workspace`), \
         which builds every binary first",
        path.display()
    );
    path
}

/// A child process, SIGKILLed on drop so a failing test leaves nothing running.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(dir: &Path, name: &str, program: &Path, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn wait_listening(port: u16, what: &str) {
    wait_for(what, Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// A running origin and its ports.
pub struct Origin {
    /// The process.
    pub proc: Proc,
    /// RTMP port.
    pub rtmp: u16,
    /// HTTP port.
    pub http: u16,
}

/// An `origin` on free loopback ports, data under `dir`.
pub async fn start_origin(dir: &Path, name: &str) -> Origin {
    let (rtmp, http) = (free_port(), free_port());
    let config = dir.join(format!("origin-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[rtmp]\nlisten = \"127.0.0.1:{rtmp}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n",
            dir.join(format!("data-{name}"))
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        dir,
        &format!("origin-{name}"),
        &bin("origin"),
        &["--config", config.to_str().unwrap()],
    );
    wait_listening(rtmp, "origin RTMP listener").await;
    wait_listening(http, "origin HTTP listener").await;
    Origin { proc, rtmp, http }
}

/// Two origins fed the same stream by the built-in publisher, as an encoder configured with
/// two RTMP outputs feeds a redundant pair.
pub struct PublishedPair {
    /// Origin A (the proxy's primary in these tests).
    pub a: Origin,
    /// Origin B.
    pub b: Origin,
    _publishers: [Proc; 2],
}

/// Starts origins A and B under `dir` and publishes `live/<stream>` to both.
pub async fn start_published_pair(dir: &Path, stream: &str) -> PublishedPair {
    let a = start_origin(dir, "a").await;
    let b = start_origin(dir, "b").await;
    let origin = bin("origin");
    let publish = |name: &str, port: u16| {
        let url = format!("rtmp://127.0.0.1:{port}/live/{stream}");
        Proc::spawn(dir, name, &origin, &["publish", &url])
    };
    let _publishers = [publish("publish-a", a.rtmp), publish("publish-b", b.rtmp)];
    PublishedPair { a, b, _publishers }
}

/// The proxy with A as primary and B as backup, active checks on `stream`'s live playlist;
/// `extra` is appended to its TOML config (more sections: `[player]`, `[metrics]`, ...).
pub async fn start_proxy(
    dir: &Path,
    primary: u16,
    backup: u16,
    stream: &str,
    extra: &str,
) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:{port}\"\n\
             [[upstreams]]\nname = \"live\"\n\
             primary.address = \"127.0.0.1:{primary}\"\nbackup.address = \"127.0.0.1:{backup}\"\n\
             health_check.path = \"/live/{stream}/index.m3u8\"\n\
             [server]\nthreads = 2\ndrain_secs = 0\ngrace_period_secs = 1\n\
             graceful_shutdown_timeout_secs = 1\npid_file = {:?}\nupgrade_sock = {:?}\n{extra}\n",
            dir.join("proxy.pid"),
            dir.join("proxy-upgrade.sock"),
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        dir,
        "proxy",
        &bin("proxy"),
        &["--config", config.to_str().unwrap()],
    );
    wait_for("proxy /healthz", Duration::from_secs(30), || async move {
        match fetch(&format!("http://127.0.0.1:{port}/healthz")).await {
            Ok((200, _)) => Some(()),
            _ => None,
        }
    })
    .await;
    (proc, port)
}

/// GET with a 5 s bound; a transport error or timeout is returned, not panicked on, because
/// counting failed requests is the point of the test.
pub async fn fetch(url: &str) -> Result<(u16, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(url).body(Empty::new()).unwrap();
    let work = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "no response within 5 s".to_owned())?
}

/// Waits (30 s at most) until `playlist_url` lists at least `segments` segments: when a player
/// would start.
pub async fn wait_for_segments(playlist_url: &str, segments: usize) {
    wait_for(
        "segments in the playlist",
        Duration::from_secs(30),
        || async move {
            match fetch(playlist_url).await {
                Ok((200, body)) => {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    (parse_playlist(&text).entries.len() >= segments).then_some(())
                }
                _ => None,
            }
        },
    )
    .await;
}
