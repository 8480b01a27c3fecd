//! Optional HTTPS: rustls (through `tokio-rustls`, with the `ring` provider that the JWKS client
//! already links) when `tls.cert_file` and `tls.key_file` are set (docs/security.md, "TLS").
//! Certificates are read once at start; rotating them means a restart.

use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::TlsConfig;

/// The acceptor for `[tls]`, or `None` when TLS is off.
///
/// # Errors
/// A file that cannot be read, holds no certificate or no private key, or a key that does not
/// belong to the certificate: the message names the file.
pub fn acceptor(tls: &TlsConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect)
        .with_context(|| format!("tls.cert_file {}: cannot read a PEM certificate chain", cert_file.display()))?;
    if certs.is_empty() {
        bail!("tls.cert_file {}: no certificate in the file", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("tls.key_file {}: cannot read a PEM private key", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "tls.key_file {} does not fit tls.cert_file {} (or the key type is not supported)",
                key_file.display(),
                cert_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
