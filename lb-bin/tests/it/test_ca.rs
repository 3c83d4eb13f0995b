//! A certificate authority for the TLS tests (SNI routing, the TLS-safe
//! retry): made by rcgen at test time, its certificate written as
//! `ca.pem` for openssl and curl, and server certificates it signs, as
//! rustls configs or PEM files. Clients trust this CA only, so a test
//! that verifies a backend's certificate through ringlb proves the bytes
//! crossed untouched.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::harness::TempDir;

/// The CA, and the directory its files (and the PEM files of the server
/// certificates written with [`TestCa::server_pem_files`]) live in.
pub struct TestCa {
    dir: TempDir,
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    /// A new CA named after `label` (also the temporary directory's name).
    pub fn new(label: &str) -> TestCa {
        let dir = TempDir::new(label);
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ringlb {label} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA cert");
        dir.write("ca.pem", &cert.pem());
        TestCa { dir, key, cert }
    }

    /// The CA's certificate as a PEM file (`--cacert`, `-CAfile`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for DNS `names` and `ips`, signed by the CA,
    /// and its key.
    fn sign(&self, names: &[&str], ips: &[IpAddr]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server cert");
        (cert, key)
    }

    /// A rustls server config presenting a certificate for `names`.
    pub fn rustls_server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.sign(names, &[]);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server TLS config");
        Arc::new(config)
    }

    /// A certificate for `names` and `ips` and its key as PEM files in the
    /// CA's directory, `<stem>.pem` and `<stem>.key` (for openssl).
    pub fn server_pem_files(
        &self,
        stem: &str,
        names: &[&str],
        ips: &[IpAddr],
    ) -> (PathBuf, PathBuf) {
        let (cert, key) = self.sign(names, ips);
        let cert = self.dir.write(&format!("{stem}.pem"), &cert.pem());
        let key = self.dir.write(&format!("{stem}.key"), &key.serialize_pem());
        (cert, key)
    }

    /// A rustls client config trusting this CA only.
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).expect("the test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}
