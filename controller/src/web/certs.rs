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

/// The `web_auditors` list: common names and SHA-256 fingerprints, and the subjects of the
/// `web_client_ca` file's certificates, one of which must have issued the certificate itself.
#[derive(Debug, Default)]
pub(super) struct CertAuditors {
    names: Vec<String>,
    fingerprints: Vec<[u8; 32]>,
    issuers: Vec<Vec<u8>>,
}

impl CertAuditors {
    fn from_config(list: &[String], issuers: Vec<Vec<u8>>) -> Self {
        let mut me = Self { issuers, ..Self::default() };
        for who in list {
            // The config has refused malformed fingerprints already.
            match crate::config::auditor_fingerprint(who) {
                Some(Ok(fp)) => me.fingerprints.push(fp),
                _ => me.names.push(who.clone()),
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
        let raw_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("");
        // Printable and short for the audit log and the page; the comparison uses the name as issued.
        let name: String = raw_name.chars().filter(|c| !c.is_control()).take(64).collect();
        // The file's own CA must have issued it: a sub-CA under it could issue any name.
        if !self.issuers.iter().any(|i| i.as_slice() == cert.issuer().as_raw()) {
            return Err(format!(
                "the certificate of {name:?} (sha256:{short}…) was issued by an intermediate CA, not by web_client_ca itself"
            ));
        }
        let listed = self.fingerprints.contains(&fingerprint)
            || (!raw_name.is_empty() && self.names.iter().any(|n| n == raw_name));
        if listed {
            Ok(format!("{}{name}:{short}", tresor_report::portal::CERT_ACTOR_PREFIX))
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
    let mut issuers = Vec::new();
    let builder = match &ctl.config.web_client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let named = |e: String| Error::Config(format!("web_client_ca {}: {e}", path.display()));
            let pem =
                std::fs::read(path).map_err(|e| Error::io(format!("reading web_client_ca {}", path.display()), e))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| named(e.to_string()))?;
                let (_, parsed) =
                    x509_parser::parse_x509_certificate(&cert).map_err(|e| named(format!("a certificate: {e}")))?;
                issuers.push(parsed.subject().as_raw().to_vec());
                roots.add(cert).map_err(|e| named(e.to_string()))?;
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
        auditors: CertAuditors::from_config(&ctl.config.web_auditors, issuers),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a certificate it issued for `cn`.
    fn issued(ca_name: &str, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_der = ca.self_signed(&ca_key).unwrap().der().to_vec();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        (ca_der, params.signed_by(&key, &issuer).unwrap().der().to_vec())
    }

    fn subject(der: &[u8]) -> Vec<u8> {
        x509_parser::parse_x509_certificate(der).unwrap().1.subject().as_raw().to_vec()
    }

    #[test]
    fn listed_names_and_fingerprints_sign_in_and_others_are_named() {
        let (ca, erika) = issued("People CA", "Erika Mustermann");
        let (_, max) = issued("People CA", "Max");
        let max_fp = hex::encode(Sha256::digest(&max));
        // Two CAs of the same name stand for one here: only the issuer's name is compared (the
        // handshake has already checked the signature).
        let list =
            CertAuditors::from_config(&["Erika Mustermann".into(), format!("sha256:{max_fp}")], vec![subject(&ca)]);
        assert!(list.actor(&erika).unwrap().starts_with("auditor:cert:Erika Mustermann:"));
        assert!(list.actor(&max).unwrap().starts_with("auditor:cert:Max:"));
        let (_, eve) = issued("People CA", "Eve\u{1b}[31m");
        let refused = list.actor(&eve).unwrap_err();
        assert!(refused.contains("\"Eve[31m\"") && refused.contains("not in web_auditors"), "{refused}");
        // A listed name with a control character or more after it is another name.
        for near in ["Erika Mustermann\t", "Erika Mustermann\u{0}", "Erika Mustermann und mehr"] {
            assert!(list.actor(&issued("People CA", near).1).is_err(), "{near:?}");
        }
        // Another certificate with a listed fingerprint's name is not that person.
        let other = CertAuditors::from_config(&[format!("sha256:{max_fp}")], vec![subject(&ca)]);
        assert!(other.actor(&issued("People CA", "Max").1).is_err());
        // Issued by a sub-CA (another issuer name), a listed name is refused.
        let sub = list.actor(&issued("Sub CA", "Erika Mustermann").1).unwrap_err();
        assert!(sub.contains("intermediate CA"), "{sub}");
        assert!(list.actor(b"garbage").unwrap_err().contains("does not parse"));
        // A long name is cut in the actor, and the fingerprint stays within the log's 128 bytes.
        let long = "L".repeat(300);
        let (_, cert) = issued("People CA", &long);
        let actor = CertAuditors::from_config(std::slice::from_ref(&long), vec![subject(&ca)]).actor(&cert).unwrap();
        assert!(actor.len() <= 128 && actor.ends_with(&hex::encode(&Sha256::digest(&cert)[..8])), "{actor}");
    }
}
