//! One viewer's HTTP: keep-alive HTTP/1.1 connections (one per target, as a player holds),
//! only to the targets the operator named, and relative-URI resolution (RFC 3986 §5.2).
//!
//! hyper's low-level client connection does the protocol; this module owns which hosts may be
//! contacted, reconnecting after a connection closes, and the per-request timeout that covers
//! connect, response header and the whole body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::stats::Outcome;

// The playlist-rewrite module's URI code (plain std Rust), compiled into the proxy as well so
// the load tester resolves playlist URIs exactly as the module rewrites them.
#[path = "../../../guest-modules/playlist-rewrite/src/uri.rs"]
#[allow(dead_code)]
mod playlist_uri;

/// Largest playlist body a viewer reads; anything bigger is a bad playlist, not a stream.
const MAX_PLAYLIST_BYTES: usize = 4 << 20;

/// The hosts a load test may contact: the playlist URL's own authority and those given with
/// `--allow-host`. Everything else a playlist points to is reported, not fetched.
#[derive(Debug, Clone)]
pub struct Targets {
    allowed: Vec<HostPort>,
}

impl Targets {
    /// Targets made of `url`'s authority and `extra` (`host` or `host:port`, port 80 if none).
    pub fn new(url: &Uri, extra: &[String]) -> Result<Self, String> {
        let mut allowed = vec![host_port(url).ok_or_else(|| format!("{url}: no host"))?];
        for host in extra {
            let authority: Authority = host
                .parse()
                .map_err(|e| format!("--allow-host {host:?}: {e}"))?;
            allowed.push((
                authority.host().to_ascii_lowercase(),
                authority.port_u16().unwrap_or(80),
            ));
        }
        Ok(Self { allowed })
    }

    /// Whether `uri` may be fetched.
    pub fn allows(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&Scheme::HTTP)
            && host_port(uri).is_some_and(|hp| self.allowed.contains(&hp))
    }
}

fn host_port(uri: &Uri) -> Option<HostPort> {
    let authority = uri.authority()?;
    Some((
        authority.host().to_ascii_lowercase(),
        authority.port_u16().unwrap_or(80),
    ))
}

/// A response as the viewer needs it.
#[derive(Debug)]
pub struct Fetched {
    /// The body, when asked to keep it (playlists); segments are only counted.
    pub body: Bytes,
    /// Body bytes received.
    pub bytes: u64,
}

/// A failed fetch: how it failed and the body bytes that arrived before it did.
#[derive(Debug)]
pub struct FetchError {
    /// The outcome to record.
    pub outcome: Outcome,
    /// Body bytes received before the failure.
    pub bytes: u64,
}

impl From<Outcome> for FetchError {
    fn from(outcome: Outcome) -> Self {
        Self { outcome, bytes: 0 }
    }
}

/// A target as connections are keyed: lower-case host and port.
type HostPort = (String, u16);

/// One viewer's connections.
pub struct Client {
    timeout: Duration,
    /// Open connections by authority; a viewer talks to one or two hosts, a Vec is enough.
    conns: Vec<(HostPort, SendRequest<Empty<Bytes>>)>,
}

impl Client {
    /// A client whose requests each get `timeout` for connect, header and body together.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            conns: Vec::new(),
        }
    }

    /// GETs `uri` (which the caller has checked against [`Targets`]). With `keep_body` the body
    /// is returned (up to 4 MiB); otherwise only counted.
    pub async fn get(&mut self, uri: &Uri, keep_body: bool) -> Result<Fetched, FetchError> {
        let mut bytes = 0;
        match tokio::time::timeout(self.timeout, self.exchange(uri, keep_body, &mut bytes)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                // The connection may be mid-response: never reuse it.
                if let Some(hp) = host_port(uri) {
                    self.conns.retain(|(k, _)| *k != hp);
                }
                Err(FetchError {
                    outcome: Outcome::Timeout,
                    bytes,
                })
            }
        }
    }

    async fn exchange(
        &mut self,
        uri: &Uri,
        keep_body: bool,
        bytes: &mut u64,
    ) -> Result<Fetched, FetchError> {
        let hp = host_port(uri).ok_or(Outcome::OffTarget)?;
        let authority = uri.authority().ok_or(Outcome::OffTarget)?.as_str();
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, "parallax-loadtest")
            .body(Empty::<Bytes>::new())
            .map_err(|_| Outcome::OffTarget)?;
        let sender = self.connection(&hp).await?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => {
                self.conns.retain(|(k, _)| *k != hp);
                return Err(Outcome::Io.into());
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        let mut kept = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                self.conns.retain(|(k, _)| *k != hp);
                return Err(FetchError {
                    outcome: Outcome::Io,
                    bytes: *bytes,
                });
            };
            if let Ok(data) = frame.into_data() {
                *bytes += data.len() as u64;
                if keep_body {
                    if kept.len() + data.len() > MAX_PLAYLIST_BYTES {
                        self.conns.retain(|(k, _)| *k != hp);
                        return Err(FetchError {
                            outcome: Outcome::Parse,
                            bytes: *bytes,
                        });
                    }
                    kept.extend_from_slice(&data);
                }
            }
        }
        if !status.is_success() {
            return Err(FetchError {
                outcome: Outcome::Status(status.as_u16()),
                bytes: *bytes,
            });
        }
        Ok(Fetched {
            body: kept.freeze(),
            bytes: *bytes,
        })
    }

    /// A ready connection to `hp`: the open one, or a new one.
    async fn connection(
        &mut self,
        hp: &HostPort,
    ) -> Result<&mut SendRequest<Empty<Bytes>>, Outcome> {
        if let Some(i) = self.conns.iter().position(|(k, _)| k == hp) {
            // `ready` fails once the server closed the connection (keep-alive timeout).
            if self.conns[i].1.ready().await.is_ok() {
                return Ok(&mut self.conns[i].1);
            }
            self.conns.swap_remove(i);
        }
        let stream = TcpStream::connect((hp.0.as_str(), hp.1))
            .await
            .map_err(|_| Outcome::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Outcome::Connect)?;
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.conns.push((hp.clone(), sender));
        let last = self.conns.len() - 1;
        Ok(&mut self.conns[last].1)
    }
}

/// Resolves `reference` (a URI from a playlist) against `base` (the playlist's URL), per RFC
/// 3986 §5.2, with the resolver the playlist-rewrite module uses: absolute URIs stay as they
/// are, `//host/...` takes base's scheme, `/path` base's authority, and a relative path base's
/// directory; dot segments are removed.
pub fn resolve(base: &Uri, reference: &str) -> Result<Uri, String> {
    let origin = format!(
        "{}://{}",
        base.scheme_str().unwrap_or("http"),
        base.authority().map_or("", Authority::as_str)
    );
    playlist_uri::resolve(&origin, base.path(), reference)
        .parse::<Uri>()
        .map_err(|e| format!("URI {reference:?} in the playlist: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn relative_uris_resolve_against_the_playlist() {
        let base = uri("http://127.0.0.1:8080/live/demo/index.m3u8?tok=1");
        let cases = [
            ("seg-7.ts", "http://127.0.0.1:8080/live/demo/seg-7.ts"),
            (
                "720p/index.m3u8",
                "http://127.0.0.1:8080/live/demo/720p/index.m3u8",
            ),
            (
                "../other/a.ts?x=1",
                "http://127.0.0.1:8080/live/other/a.ts?x=1",
            ),
            ("./a.ts", "http://127.0.0.1:8080/live/demo/a.ts"),
            ("/abs/b.ts", "http://127.0.0.1:8080/abs/b.ts"),
            ("//cdn.example/c.ts", "http://cdn.example/c.ts"),
            ("http://o.example:81/d.ts", "http://o.example:81/d.ts"),
            ("", "http://127.0.0.1:8080/live/demo/index.m3u8"),
        ];
        for (reference, want) in cases {
            assert_eq!(resolve(&base, reference).unwrap(), uri(want), "{reference}");
        }
        assert!(resolve(&base, "http://bad host/x").is_err());
    }

    #[test]
    fn only_named_targets_are_allowed() {
        let targets = Targets::new(
            &uri("http://127.0.0.1:8080/live/a.m3u8"),
            &["cdn.example".into()],
        )
        .unwrap();
        assert!(targets.allows(&uri("http://127.0.0.1:8080/live/a.ts")));
        assert!(targets.allows(&uri("http://CDN.example/x.ts")));
        assert!(!targets.allows(&uri("http://127.0.0.1:8081/live/a.ts")));
        assert!(!targets.allows(&uri("http://cdn.example:8080/x.ts")));
        assert!(!targets.allows(&uri("https://cdn.example/x.ts")));
        assert!(!targets.allows(&uri("http://10.0.0.1/x.ts")));
        assert!(Targets::new(&uri("http://a/x"), &["bad host".into()]).is_err());
    }
}
