//! The TLS listener's certificate, replaceable while riegel runs: rustls
//! asks [`Certs`] for the certificate at every handshake, and a reload
//! ([`super::Live::replace`]) swaps in a new one after loading and checking
//! it. Connections already open keep the certificate they were opened
//! with.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::ALPN;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use super::ProxyError;
use crate::config::TlsConfig;

/// The certificate every new TLS handshake is answered with.
#[derive(Debug)]
pub(super) struct Certs(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The chain and key of `tls`, checked against each other.
pub(super) fn load(tls: &TlsConfig) -> Result<Arc<CertifiedKey>, ProxyError> {
    pingora::tls::install_default_crypto_provider();
    let name = |p: &Path| p.display().to_string();
    let (cert, key) = (name(&tls.cert_file), name(&tls.key_file));
    let (chain, key_der) = match pingora::tls::load_certs_and_key_files(&cert, &key) {
        Ok(Some(pair)) => pair,
        Ok(None) => return Err(ProxyError::Tls(format!("tls: no certificate in {cert} or no private key in {key}"))),
        Err(e) => return Err(ProxyError::Tls(format!("tls: {cert} / {key}: {}", e.etype().as_str()))),
    };
    let provider = CryptoProvider::get_default().ok_or_else(|| ProxyError::Tls("no TLS crypto provider".into()))?;
    let ck = CertifiedKey::from_der(chain, key_der, provider)
        .map_err(|e| ProxyError::Tls(format!("tls: {cert} and {key} do not make a certificate: {e}")))?;
    Ok(Arc::new(ck))
}

impl Certs {
    pub(super) fn new(tls: &TlsConfig) -> Result<Self, ProxyError> {
        Ok(Self(ArcSwap::new(load(tls)?)))
    }

    pub(super) fn replace(&self, ck: Arc<CertifiedKey>) {
        self.0.store(ck);
    }
}

/// The listener's TLS settings: certificates from `certs`, ALPN `h2` and
/// `http/1.1` (HTTP/2 preferred).
pub(super) fn settings(certs: Arc<Certs>) -> Result<TlsSettings, ProxyError> {
    let mut s = TlsSettings::intermediate("", "").map_err(|e| ProxyError::Tls(e.etype().as_str().to_string()))?;
    s.set_cert_resolver(certs);
    s.set_alpn(ALPN::H2H1);
    Ok(s)
}
