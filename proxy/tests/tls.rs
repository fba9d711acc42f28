//! TLS termination: self-signed certificates generated per run, chosen by SNI, HTTP/1.1 and
//! HTTP/2 (ALPN) to clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use pingora::tls::{
    CertificateDer, ClientConfig, ClientTlsStream, RootCertStore, ServerName, TlsConnector,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Certs {
    live: CertificateDer<'static>,
    vod: CertificateDer<'static>,
    toml: String,
}

/// Two self-signed certificates (`live.test`, `vod.test`) written as PEM files, and the
/// `[[listen.tls]]` table serving them on `addr`.
fn certs(addr: SocketAddr) -> Certs {
    let dir = temp_dir("tls");
    let mut toml = format!("[[listen.tls]]\naddr = \"{addr}\"\nhttp2 = true\n");
    let mut ders = Vec::new();
    for name in ["live.test", "vod.test"] {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, generated.cert.pem()).unwrap();
        std::fs::write(&key_path, generated.key_pair.serialize_pem()).unwrap();
        toml.push_str(&format!(
            "[[listen.tls.certs]]\ncert_path = {cert_path:?}\nkey_path = {key_path:?}\n\
             server_names = [\"{name}\"]\n"
        ));
        ders.push(generated.cert.der().clone());
    }
    Certs {
        vod: ders.pop().unwrap(),
        live: ders.pop().unwrap(),
        toml,
    }
}

/// Connects with SNI `name`, trusting only `roots`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> ClientTlsStream<TcpStream> {
    pingora::tls::install_default_crypto_provider();
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

async fn start() -> (Origin, Proxy, SocketAddr, Certs) {
    let origin = Origin::start().await;
    origin.set("/live/1.ts", Reply::ok(pattern(50_000, 5)));
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let certs = certs(tls_addr);
    let proxy = Proxy::start(&format!(
        "{}\n{}",
        certs.toml,
        upstream_config(&origin, None)
    ))
    .await;
    (origin, proxy, tls_addr, certs)
}

#[tokio::test]
async fn each_sni_name_gets_its_own_certificate() {
    let (_origin, _proxy, tls_addr, certs) = start().await;
    let all = [certs.live.clone(), certs.vod.clone()];
    for (name, expected) in [("live.test", &certs.live), ("vod.test", &certs.vod)] {
        // Trusting both roots, the handshake also verifies the certificate names `name`.
        let stream = connect(tls_addr, name, &all, &[b"http/1.1"]).await;
        let (_, connection) = stream.get_ref();
        let presented = connection.peer_certificates().unwrap();
        assert_eq!(&presented[0], expected, "{name}");
    }
}

#[tokio::test]
async fn http_1_1_over_tls_is_proxied_and_cached() {
    let (origin, _proxy, tls_addr, certs) = start().await;
    for expected_cache in ["MISS", "HIT"] {
        let mut stream = connect(
            tls_addr,
            "live.test",
            std::slice::from_ref(&certs.live),
            &[b"http/1.1"],
        )
        .await;
        stream
            .write_all(b"GET /live/1.ts HTTP/1.1\r\nhost: live.test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes).await;
        let resp = parse_response(&bytes, false).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-cache"), Some(expected_cache));
        assert!(resp.body == pattern(50_000, 5));
    }
    assert_eq!(origin.hits("/live/1.ts"), 1);
}

#[tokio::test]
async fn http_2_is_negotiated_by_alpn_and_serves_requests() {
    let (_origin, _proxy, tls_addr, certs) = start().await;
    let stream = connect(
        tls_addr,
        "live.test",
        std::slice::from_ref(&certs.live),
        &[b"h2", b"http/1.1"],
    )
    .await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for _ in 0..2 {
        let request = http::Request::get("https://live.test/live/1.ts")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.as_ref() == pattern(50_000, 5).as_slice());
    }
}
