//! TLS for the auditor's page: the controller's own certificate and, when `web_client_ca` is set,
//! an optional client certificate from that CA, which signs a person listed in `web_auditors` in
//! as an auditor. A certificate from another CA fails the handshake; no certificate at all leaves
//! the token sign-in.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::core::Controller;
use crate::error::{Error, Result};

/// The page's TLS setup and who may sign in by certificate.
pub struct PageTls {
    pub(super) acceptor: TlsAcceptor,
    pub(super) auditors: CertAuditors,
}

/// The `web_auditors` list: common names and SHA-256 fingerprints.
#[derive(Debug, Default)]
pub(super) struct CertAuditors {
    names: Vec<String>,
    fingerprints: Vec<[u8; 32]>,
}

impl CertAuditors {
    fn from_config(list: &[String]) -> Self {
        let mut me = Self::default();
        for who in list {
            match who.strip_prefix("sha256:").and_then(|h| hex::decode(h).ok()).and_then(|b| b.try_into().ok()) {
                Some(fp) => me.fingerprints.push(fp),
                None => me.names.push(who.clone()),
            }
        }
        me
    }

    /// The audit actor of a client certificate the handshake verified, or why it may not sign in.
    pub(super) fn actor(&self, der: &[u8]) -> std::result::Result<String, String> {
        let fingerprint: [u8; 32] = Sha256::digest(der).into();
        let short = hex::encode(&fingerprint[..8]);
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| format!("certificate sha256:{short}… does not parse"))?;
        // Printable only: the name goes into the audit log and the page.
        let name: String = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect();
        let listed = self.fingerprints.contains(&fingerprint) || (!name.is_empty() && self.names.contains(&name));
        if listed {
            Ok(format!("auditor:cert:{name}:{short}"))
        } else {
            Err(format!("the certificate of {name:?} (sha256:{short}…) is not in web_auditors"))
        }
    }
}

/// Build the page's TLS: fails, naming the file, when `web_client_ca` cannot be used.
///
/// # Errors
/// The controller's own certificate or the client CA file is unusable.
pub fn page_tls(ctl: &Controller) -> Result<PageTls> {
    let pki = |e: String| Error::Pki(format!("the auditor's page: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ctl.pki.server_chain_pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| pki(format!("server certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(ctl.pki.server_key_pem.as_bytes())
        .map_err(|e| pki(format!("server key: {e}")))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &ctl.config.web_client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let named = |e: String| Error::Config(format!("web_client_ca {}: {e}", path.display()));
            let pem =
                std::fs::read(path).map_err(|e| Error::io(format!("reading web_client_ca {}", path.display()), e))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.map_err(|e| named(e.to_string()))?).map_err(|e| named(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(named("no certificate in the file".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|e| named(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| pki(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(PageTls {
        acceptor: TlsAcceptor::from(Arc::new(cfg)),
        auditors: CertAuditors::from_config(&ctl.config.web_auditors),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn listed_names_and_fingerprints_sign_in_and_others_are_named() {
        let (erika, max, eve) = (cert("Erika Mustermann"), cert("Max"), cert("Eve\u{1b}[31m"));
        let max_fp = hex::encode(Sha256::digest(&max));
        let list = CertAuditors::from_config(&["Erika Mustermann".into(), format!("sha256:{max_fp}")]);
        assert!(list.actor(&erika).unwrap().starts_with("auditor:cert:Erika Mustermann:"));
        assert!(list.actor(&max).unwrap().starts_with("auditor:cert:Max:"));
        let refused = list.actor(&eve).unwrap_err();
        assert!(refused.contains("\"Eve[31m\"") && refused.contains("not in web_auditors"), "{refused}");
        // Another certificate with a listed fingerprint's name is not that person.
        let other = CertAuditors::from_config(&[format!("sha256:{max_fp}")]);
        assert!(other.actor(&cert("Max")).is_err());
        assert!(list.actor(b"garbage").unwrap_err().contains("does not parse"));
    }
}
