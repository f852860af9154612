//! TLS: the fleet's own CA and server certificate (made by `init`), and the rustls server
//! configuration built from them.
//!
//! A private CA rather than a public one: hosts are given `ca.pem` when they are set up and
//! trust only it, so no public CA can impersonate the server. The CA's private key is not
//! kept: it signs the server certificate once, and a key that does not exist cannot leak
//! (a new server certificate means a new CA handed to hosts again). rustls with the `ring`
//! provider, chosen explicitly so nothing depends on a process-wide default.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// The names the server certificate is valid for.
const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// PEM texts `init` writes.
#[derive(Debug)]
pub(crate) struct Certificates {
    pub ca: String,
    pub server: String,
    pub server_key: String,
}

/// Makes a CA and a server certificate it signs, for [`SERVER_NAMES`].
pub(crate) fn generate() -> Result<Certificates, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "graft fleet CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

    let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "graft server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let server = params.signed_by(&key, &ca, &ca_key)?;
    Ok(Certificates {
        ca: ca.pem(),
        server: server.pem(),
        server_key: key.serialize_pem(),
    })
}

/// The rustls configuration for the certificate and key in PEM files.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let tls = |path: &Path, reason: String| ServerError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(tls(cert, "no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| tls(key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
