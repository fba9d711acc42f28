//! Publish authorization: a list of allowed stream keys and/or an HTTP callback.
//!
//! The callback receives `POST <callback_url>` with an `application/x-www-form-urlencoded`
//! body (the format nginx-rtmp's `on_publish` uses, so existing auth services keep working):
//!
//! | field    | value                                                 |
//! |----------|-------------------------------------------------------|
//! | `call`   | `publish`                                             |
//! | `app`    | RTMP application name                                 |
//! | `stream` | stream name (without `?query`)                        |
//! | `name`   | same as `stream` (nginx-rtmp's field name)            |
//! | `addr`   | client `IP:port`                                      |
//! | `query`  | the stream key's query string (after `?`), may be empty |
//!
//! A 2xx answer allows the publish; any other status, a transport error or no answer within
//! `callback_timeout_ms` refuses it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use subtle::{Choice, ConstantTimeEq};

use crate::config::AuthConfig;

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The stream key is not in `auth.allowed_keys`.
    #[error("stream key not allowed")]
    KeyNotAllowed,
    /// The callback answered with a non-2xx status.
    #[error("auth callback refused with status {0}")]
    CallbackRefused(StatusCode),
    /// The callback could not be reached or failed mid-request.
    #[error("auth callback failed: {0}")]
    CallbackFailed(String),
    /// The callback did not answer within `auth.callback_timeout_ms`.
    #[error("auth callback timed out")]
    CallbackTimeout,
}

impl AuthError {
    /// A short label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::KeyNotAllowed => "key_not_allowed",
            Self::CallbackRefused(_) => "callback_refused",
            Self::CallbackFailed(_) => "callback_failed",
            Self::CallbackTimeout => "callback_timeout",
        }
    }
}

/// What the authorizer is asked about.
#[derive(Debug, Clone, Copy)]
pub struct PublishRequest<'a> {
    /// RTMP application name.
    pub app: &'a str,
    /// Stream name, without the query.
    pub stream: &'a str,
    /// The publisher's address.
    pub addr: SocketAddr,
    /// The part of the stream key after `?` (empty if none).
    pub query: &'a str,
}

/// Decides whether a publish may start. Built once at startup, shared by every connection.
#[derive(Debug)]
pub struct Authorizer {
    keys: Vec<Vec<u8>>,
    callback: Option<Callback>,
}

#[derive(Debug)]
struct Callback {
    uri: Uri,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Authorizer {
    /// Builds the authorizer; the config was validated (the callback URL parses).
    pub fn new(config: &AuthConfig) -> Self {
        let callback = config
            .callback_url
            .as_deref()
            .and_then(|u| u.parse::<Uri>().ok())
            .map(|uri| Callback {
                uri,
                timeout: Duration::from_millis(config.callback_timeout_ms),
                client: Client::builder(TokioExecutor::new()).build_http(),
            });
        Self {
            keys: config
                .allowed_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            callback,
        }
    }

    /// Allows or refuses a publish: the key list first (no network), then the callback.
    pub async fn check(&self, req: PublishRequest<'_>) -> Result<(), AuthError> {
        if !self.keys.is_empty() {
            // Compare against every key so timing reveals neither which key nor how much of it
            // matched.
            let allowed = self
                .keys
                .iter()
                .fold(Choice::from(0), |ok, k| ok | k.ct_eq(req.stream.as_bytes()));
            if !bool::from(allowed) {
                return Err(AuthError::KeyNotAllowed);
            }
        }
        if let Some(cb) = &self.callback {
            cb.check(req).await?;
        }
        Ok(())
    }
}

impl Callback {
    async fn check(&self, req: PublishRequest<'_>) -> Result<(), AuthError> {
        let addr = req.addr.to_string();
        let body = form_encode(&[
            ("call", "publish"),
            ("app", req.app),
            ("stream", req.stream),
            ("name", req.stream),
            ("addr", &addr),
            ("query", req.query),
        ]);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AuthError::CallbackFailed(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| AuthError::CallbackTimeout)?
            .map_err(|e| AuthError::CallbackFailed(e.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(AuthError::CallbackRefused(response.status()))
        }
    }
}

/// `application/x-www-form-urlencoded` (WHATWG URL §5.2).
fn form_encode(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(k, &mut out);
        out.push('=');
        encode_component(v, &mut out);
    }
    out
}

fn encode_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn request(stream: &str) -> PublishRequest<'_> {
        PublishRequest {
            app: "live",
            stream,
            addr: SocketAddr::from(([127, 0, 0, 1], 5555)),
            query: "token=a b&x=1",
        }
    }

    #[tokio::test]
    async fn only_listed_keys_may_publish() {
        let auth = Authorizer::new(&AuthConfig {
            allowed_keys: vec!["secret1".into(), "secret2".into()],
            ..AuthConfig::default()
        });
        assert!(auth.check(request("secret2")).await.is_ok());
        for bad in ["secret", "secret3", "", "secret22"] {
            assert!(matches!(
                auth.check(request(bad)).await,
                Err(AuthError::KeyNotAllowed)
            ));
        }
    }

    #[tokio::test]
    async fn without_keys_or_callback_everyone_may_publish() {
        let auth = Authorizer::new(&AuthConfig::default());
        assert!(auth.check(request("anything")).await.is_ok());
    }

    /// A callback server on 127.0.0.1:0 answering `status`, recording each body it got.
    async fn callback_server(
        status: StatusCode,
        delay: Duration,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/auth", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                seen.lock()
                                    .unwrap()
                                    .push(String::from_utf8(body.to_vec()).unwrap());
                                tokio::time::sleep(delay).await;
                                let mut r = http::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = status;
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (url, bodies)
    }

    fn with_callback(url: String, timeout_ms: u64) -> Authorizer {
        Authorizer::new(&AuthConfig {
            callback_url: Some(url),
            callback_timeout_ms: timeout_ms,
            ..AuthConfig::default()
        })
    }

    #[tokio::test]
    async fn callback_2xx_allows_and_receives_the_form() {
        let (url, bodies) = callback_server(StatusCode::NO_CONTENT, Duration::ZERO).await;
        with_callback(url, 2000)
            .check(request("cam"))
            .await
            .unwrap();
        let bodies = bodies.lock().unwrap();
        assert_eq!(
            bodies.as_slice(),
            ["call=publish&app=live&stream=cam&name=cam&addr=127.0.0.1%3A5555&query=token%3Da+b%26x%3D1"]
        );
    }

    #[tokio::test]
    async fn callback_non_2xx_refuses() {
        let (url, _) = callback_server(StatusCode::FORBIDDEN, Duration::ZERO).await;
        let err = with_callback(url, 2000)
            .check(request("cam"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuthError::CallbackRefused(StatusCode::FORBIDDEN)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn slow_callback_refuses_after_the_timeout() {
        let (url, _) = callback_server(StatusCode::OK, Duration::from_secs(5)).await;
        let err = with_callback(url, 200)
            .check(request("cam"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::CallbackTimeout), "{err}");
    }

    #[tokio::test]
    async fn unreachable_callback_refuses() {
        // Bind then drop: the port is closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = with_callback(format!("http://127.0.0.1:{port}/"), 2000)
            .check(request("cam"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::CallbackFailed(_)), "{err}");
    }
}
