//! TLS material for tests, generated on the spot with `rcgen`: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, and a client certificate, both signed by the CA.
//!
//! Every [`Certs::generate`] makes a new CA with new keys, so a second `Certs` is an "other CA"
//! that the first one's broker does not trust. The PEM files live in a temp dir that is removed
//! when the `Certs` is dropped (a [`Broker`](crate::mosquitto::Broker) copies what it needs).
//!
//! ```no_run
//! let certs = tests::certs::Certs::generate();
//! assert!(certs.ca_pem().is_file());
//! assert!(certs.pem().ca.starts_with("-----BEGIN CERTIFICATE-----"));
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// The DNS name the server certificate is valid for (it is also valid for IP `127.0.0.1`).
pub const SERVER_NAME: &str = "localhost";

/// The common name of the client certificate (what mosquitto sees with `use_identity_as_username`).
pub const CLIENT_NAME: &str = "mqtt-test-client";

/// The generated material as PEM text.
#[derive(Clone, Debug)]
pub struct CertsPem {
    /// The CA certificate.
    pub ca: String,
    /// The server certificate (`localhost`, `127.0.0.1`), signed by the CA.
    pub server_cert: String,
    /// The server's private key (PKCS#8).
    pub server_key: String,
    /// The client certificate (CN [`CLIENT_NAME`]), signed by the CA.
    pub client_cert: String,
    /// The client's private key (PKCS#8).
    pub client_key: String,
}

/// A CA, a server and a client certificate, as PEM files in a temp dir and as PEM/DER in memory.
#[derive(Debug)]
pub struct Certs {
    dir: TempDir,
    pem: CertsPem,
    ca_der: Vec<u8>,
    client_cert_der: Vec<u8>,
    client_key_der: Vec<u8>,
}

impl Certs {
    /// Generates a new CA, server and client certificate and writes them as PEM files.
    ///
    /// Panics if generation or writing fails (nothing a test could recover from).
    pub fn generate() -> Certs {
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
            panic!("certs: cannot generate the {what}: {e}")
        };

        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail("CA params", &e));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mqtt test CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "mqtt tests");
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_key = KeyPair::generate().unwrap_or_else(|e| fail("CA key", &e));
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .unwrap_or_else(|e| fail("CA certificate", &e));
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params =
                CertificateParams::new(names).unwrap_or_else(|e| fail("leaf params", &e));
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap_or_else(|e| fail("leaf key", &e));
            let cert = params
                .signed_by(&key, &issuer)
                .unwrap_or_else(|e| fail("leaf certificate", &e));
            (cert, key)
        };
        let (server_cert, server_key) = leaf(
            vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()],
            SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(Vec::new(), CLIENT_NAME, ExtendedKeyUsagePurpose::ClientAuth);

        let pem = CertsPem {
            ca: ca_cert.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        };
        let dir = tempfile::Builder::new()
            .prefix("mqtt-certs-")
            .tempdir()
            .unwrap_or_else(|e| fail("temp dir", &e));
        for (name, text) in [
            ("ca.pem", &pem.ca),
            ("server.crt", &pem.server_cert),
            ("server.key", &pem.server_key),
            ("client.crt", &pem.client_cert),
            ("client.key", &pem.client_key),
        ] {
            fs::write(dir.path().join(name), text).unwrap_or_else(|e| fail(name, &e));
        }
        Certs {
            dir,
            pem,
            ca_der: ca_cert.der().to_vec(),
            client_cert_der: client_cert.der().to_vec(),
            client_key_der: client_key.serialize_der(),
        }
    }

    /// The folder holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Path of the CA certificate (`ca.pem`): the trust anchor for clients and for mutual TLS.
    pub fn ca_pem(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// Path of the server certificate (`server.crt`).
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.crt")
    }

    /// Path of the server's private key (`server.key`).
    pub fn server_key(&self) -> PathBuf {
        self.file("server.key")
    }

    /// Path of the client certificate (`client.crt`).
    pub fn client_cert(&self) -> PathBuf {
        self.file("client.crt")
    }

    /// Path of the client's private key (`client.key`).
    pub fn client_key(&self) -> PathBuf {
        self.file("client.key")
    }

    /// All of the material as PEM text.
    pub fn pem(&self) -> &CertsPem {
        &self.pem
    }

    /// The CA certificate, DER (for a rustls `RootCertStore`).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The client certificate, DER.
    pub fn client_cert_der(&self) -> &[u8] {
        &self.client_cert_der
    }

    /// The client's private key, PKCS#8 DER.
    pub fn client_key_der(&self) -> &[u8] {
        &self.client_key_der
    }
}
