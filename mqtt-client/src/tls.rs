//! The rustls client configuration of the `std` runtimes (feature `rustls`), made from
//! [`TlsOptions`]: the same roots, client certificate and error messages on every runtime.
//!
//! No I/O here: the runtime passes the function that reads a file (`std::fs::read`).

use std::format;
use std::io;
use std::path::Path;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::options::Options;
#[cfg(doc)]
use crate::options::TlsOptions;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The rustls client configuration of `opts` ([`TlsOptions`]): the CA file's roots (or the
/// web PKI roots), the `ring` provider, and an optional client certificate. `read` reads a
/// file.
pub fn client_config(
    opts: &Options,
    read: impl Fn(&Path) -> io::Result<Vec<u8>>,
) -> io::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    match &opts.tls.ca_file {
        Some(path) => {
            let err =
                |e: &dyn std::fmt::Display| invalid(format!("CA file {}: {e}", path.display()));
            let pem = read(path).map_err(|e| err(&e))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| err(&e))?;
                roots.add(cert).map_err(|e| err(&e))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (&opts.tls.cert_file, &opts.tls.key_file) {
        (Some(cert), Some(key)) => {
            let cert_err = |e: &dyn std::fmt::Display| {
                invalid(format!("certificate file {}: {e}", cert.display()))
            };
            let pem = read(cert).map_err(|e| cert_err(&e))?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cert_err(&e))?;
            let key_err =
                |e: &dyn std::fmt::Display| invalid(format!("key file {}: {e}", key.display()));
            let pem = read(key).map_err(|e| key_err(&e))?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_err(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The name to verify in the server's certificate: [`TlsOptions::server_name`], else the
/// broker's host.
pub fn server_name(opts: &Options) -> io::Result<ServerName<'static>> {
    let name = opts.tls.server_name.as_deref().unwrap_or(&opts.broker.host);
    ServerName::try_from(name.to_string())
        .map_err(|e| invalid(format!("TLS server name {name:?}: {e}")))
}
