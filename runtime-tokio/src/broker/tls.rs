//! The rustls server configuration of the `mqtts://` and `wss://` listeners.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::config::{ConfigError, TlsConfig};

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::new(format!("tls.{what} {}: {e}", path.display())))
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(format!("tls.{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(format!(
            "tls.{what} {}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The server configuration: certificate and key, and client certificates checked against
/// `client_ca_file` when one is set (required with `require_certificate`).
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Err(ConfigError::new("TLS needs tls.cert_file and tls.key_file"));
    };
    let chain = certs(cert, "cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&read(key, "key_file")?)
        .map_err(|e| ConfigError::new(format!("tls.key_file {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("TLS: {e}")))?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "client_ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| ConfigError::new(format!("tls.client_ca_file: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| ConfigError::new(format!("tls.client_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ConfigError::new(format!("tls.cert_file / tls.key_file: {e}")))?;
    Ok(Arc::new(config))
}

/// The common name of a (verified) client certificate.
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
