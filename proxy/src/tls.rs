//! TLS termination with rustls: PEM certificates chosen by SNI, ALPN `h2` + `http/1.1`.
//!
//! Pingora's rustls listener takes one cert/key pair or a [`ResolvesServerCert`]; several
//! certificates on one address need the resolver, so every listener uses [`SniResolver`]
//! (one code path whether a listener has one certificate or ten).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use pingora::{Error, ErrorType, OrErr, Result};

use crate::config::{CertConfig, TlsListenerConfig};

/// Picks a certificate by the client's SNI name; clients without SNI, or asking for a name we
/// do not have, get the first configured certificate.
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SniResolver {
    /// Loads every certificate and key; fails naming the file that does not load.
    pub fn new(certs: &[CertConfig]) -> Result<Self> {
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "no rustls crypto provider installed",
            )
        })?;
        let mut default = None;
        let mut by_name = HashMap::new();
        for cert in certs {
            let key = Arc::new(load(cert, provider)?);
            for name in &cert.server_names {
                by_name.insert(name.to_ascii_lowercase(), key.clone());
            }
            default.get_or_insert(key);
        }
        let default = default
            .ok_or_else(|| Error::explain(ErrorType::InvalidCert, "no certificate configured"))?;
        Ok(SniResolver { default, by_name })
    }
}

fn load(cert: &CertConfig, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let cert_path = cert.cert_path.to_string_lossy();
    let key_path = cert.key_path.to_string_lossy();
    // pingora's loader does not say which file it failed on.
    let (chain, key) = pingora::tls::load_certs_and_key_files(&cert_path, &key_path)
        .map_err(|e| e.more_context(format!("certificate {cert_path}, key {key_path}")))?
        .ok_or_else(|| {
            Error::explain(
                ErrorType::InvalidCert,
                format!("no certificate in {cert_path} or no private key in {key_path}"),
            )
        })?;
    if chain.is_empty() {
        return Error::e_explain(
            ErrorType::InvalidCert,
            format!("no certificate in {cert_path}"),
        );
    }
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .explain_err(ErrorType::InvalidCert, |e| {
            format!("unusable private key {key_path}: {e}")
        })?;
    Ok(CertifiedKey::new(chain, signing_key))
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_sni = hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()));
        Some(by_sni.unwrap_or(&self.default).clone())
    }
}

/// Pingora TLS settings for one listener: SNI resolver and, if enabled, HTTP/2 via ALPN.
pub fn listener_settings(config: &TlsListenerConfig) -> Result<TlsSettings> {
    let resolver = SniResolver::new(&config.certs)?;
    // With a resolver set, pingora ignores the cert/key paths given here.
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(Arc::new(resolver));
    if config.http2 {
        settings.enable_h2();
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &std::path::Path, name: &str) -> CertConfig {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, generated.cert.pem()).unwrap();
        std::fs::write(&key_path, generated.key_pair.serialize_pem()).unwrap();
        CertConfig {
            cert_path,
            key_path,
            server_names: vec![name.to_owned()],
        }
    }

    fn temp_dir(label: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("parallax-tls-unit-{}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn every_configured_name_resolves_and_the_first_certificate_is_the_default() {
        let dir = temp_dir("names");
        let certs = [write_cert(&dir, "Live.Test"), write_cert(&dir, "vod.test")];
        let resolver = SniResolver::new(&certs).unwrap();
        assert_eq!(resolver.by_name.len(), 2);
        assert!(Arc::ptr_eq(
            &resolver.default,
            &resolver.by_name["live.test"]
        ));
        assert!(!Arc::ptr_eq(
            &resolver.default,
            &resolver.by_name["vod.test"]
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_key_file_is_an_error_naming_it() {
        let dir = temp_dir("missing");
        let mut cert = write_cert(&dir, "live.test");
        cert.key_path = dir.join("nope.key");
        let err = SniResolver::new(&[cert]).unwrap_err();
        assert!(err.to_string().contains("nope.key"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
