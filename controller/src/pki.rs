//! The controller's own CA: made at first start, it signs the controller's server certificate
//! and the agents' short-lived client certificates. Agents send a CSR; their private keys never
//! leave them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::error::{Error, Result};
use crate::fsutil::{read_optional, write_atomic};

/// The CA and the controller's TLS identity.
pub struct Pki {
    ca_cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The controller's server certificate followed by the CA certificate.
    pub server_chain_pem: String,
    /// The server certificate's private key.
    pub server_key_pem: String,
}

/// A certificate issued to an agent.
pub struct Issued {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// When it expires (Unix seconds).
    pub not_after_unix: i64,
}

fn pki_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Pki(format!("{what}: {e}"))
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // a positive integer
    SerialNumber::from_slice(&b)
}

impl Pki {
    /// Load the CA from `dir`, or make one if there is none; (re)issue the server certificate
    /// for `server_names`.
    ///
    /// # Errors
    /// Files unreadable, or a CA that does not parse.
    pub fn load_or_create(dir: &Path, server_names: &[String]) -> Result<Self> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let cert = read_optional(&cert_path).map_err(|e| Error::io(format!("reading {}", cert_path.display()), e))?;
        let key = read_optional(&key_path).map_err(|e| Error::io(format!("reading {}", key_path.display()), e))?;
        let (ca_cert_pem, ca_key) = match (cert, key) {
            (Some(c), Some(k)) => {
                let c = String::from_utf8(c).map_err(|_| Error::Pki(format!("{} is not PEM", cert_path.display())))?;
                let k = String::from_utf8(k).map_err(|_| Error::Pki(format!("{} is not PEM", key_path.display())))?;
                let key = KeyPair::from_pem(&k).map_err(pki_err("the CA key ca.key"))?;
                (c, key)
            }
            (None, None) => Self::create_ca(dir)?,
            _ => {
                return Err(Error::Pki(format!(
                    "{} has only one of ca.pem and ca.key; restore both from the backup of the controller's CA",
                    dir.display()
                )));
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(pki_err("the CA certificate ca.pem"))?;
        let mut pki = Self { ca_cert_pem, issuer, server_chain_pem: String::new(), server_key_pem: String::new() };
        pki.issue_server_cert(server_names)?;
        Ok(pki)
    }

    fn create_ca(dir: &Path) -> Result<(String, KeyPair)> {
        let key = KeyPair::generate().map_err(pki_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Tresor controller CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(300));
        params.not_after = offset(now + Duration::from_secs(20 * 365 * 86_400));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(pki_err("making the CA certificate"))?;
        // The key first: a crash between the two writes leaves no usable CA, and the next start
        // reports the half-made pair instead of silently minting a second CA.
        write_atomic(&dir.join("ca.key"), key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| Error::io("writing ca.key", e))?;
        write_atomic(&dir.join("ca.pem"), cert.pem().as_bytes(), 0o644).map_err(|e| Error::io("writing ca.pem", e))?;
        tracing::info!(dir = %dir.display(), "made a new controller CA");
        Ok((cert.pem(), key))
    }

    fn issue_server_cert(&mut self, names: &[String]) -> Result<()> {
        let key = KeyPair::generate().map_err(pki_err("generating the server key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tresor-controller");
        params.distinguished_name = dn;
        params.subject_alt_names =
            names
                .iter()
                .map(|n| match n.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|_| {
                        Error::Config(format!("server_names: {n:?} is neither a DNS name nor an IP address"))
                    }),
                })
                .collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(300));
        params.not_after = offset(now + Duration::from_secs(365 * 86_400));
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(pki_err("signing the server certificate"))?;
        self.server_chain_pem = format!("{}{}", cert.pem(), self.ca_cert_pem);
        self.server_key_pem = key.serialize_pem();
        Ok(())
    }

    /// The CA certificate (PEM), which agents and tresorctl trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The pin enrollment tokens carry: BLAKE3 of the CA certificate's DER, first 16 bytes, hex.
    ///
    /// # Errors
    /// The CA PEM does not parse (cannot happen for a loaded CA).
    pub fn ca_pin(&self) -> Result<String> {
        ca_pin_of(&self.ca_cert_pem).ok_or_else(|| Error::Pki("the CA certificate does not parse".into()))
    }

    /// Sign an agent's CSR: the certificate names `agent_id` and nothing the CSR asked for.
    ///
    /// # Errors
    /// The CSR does not parse or its signature is wrong.
    pub fn issue_agent_cert(&self, csr_pem: &str, agent_id: &str, lifetime: Duration) -> Result<Issued> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::InvalidArgument(format!("the certificate signing request is invalid: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id);
        dn.push(DnType::OrganizationName, "tresor-agent");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        // A little back-dating absorbs clock skew between controller and agent.
        params.not_before = offset(now - Duration::from_secs(60));
        let not_after = now + lifetime;
        params.not_after = offset(not_after);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(pki_err("signing the agent certificate"))?;
        let not_after_unix = not_after.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        Ok(Issued { cert_pem: cert.pem(), not_after_unix })
    }
}

/// The pin of a CA certificate given as PEM (see [`Pki::ca_pin`]).
pub fn ca_pin_of(ca_pem: &str) -> Option<String> {
    let der = rustls_pemfile_der(ca_pem)?;
    Some(hex::encode(&blake3::hash(&der).as_bytes()[..16]))
}

fn rustls_pemfile_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|c| c.to_vec())
}

/// Who a verified client certificate names, and until when.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The agent id in the certificate's common name.
    pub agent_id: String,
    /// The certificate's expiry (Unix seconds).
    pub not_after_unix: i64,
}

/// Read the identity from a client certificate rustls has already verified against the CA.
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(PeerIdentity { agent_id: cn, not_after_unix: cert.validity().not_after.timestamp() })
}

/// The state directory's file for the receipt signing key.
pub fn receipt_key_path(dir: &Path) -> PathBuf {
    dir.join("receipt-signing.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_restart_and_signs_only_what_it_decides() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = Pki::load_or_create(dir.path(), &names).unwrap();
        let b = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem(), "the second start reuses the CA");
        assert_eq!(a.ca_pin().unwrap(), b.ca_pin().unwrap());

        let agent_key = KeyPair::generate().unwrap();
        let mut req = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        req.distinguished_name.push(DnType::CommonName, "someone-else");
        let csr = req.serialize_request(&agent_key).unwrap().pem().unwrap();
        let issued = b.issue_agent_cert(&csr, "a-0011", Duration::from_secs(20)).unwrap();
        let der = rustls_pemfile_der(&issued.cert_pem).unwrap();
        let id = peer_identity(&der).unwrap();
        assert_eq!(id.agent_id, "a-0011", "the CSR's own subject is ignored");
        assert_eq!(id.not_after_unix, issued.not_after_unix);

        assert!(b.issue_agent_cert("not a csr", "a-1", Duration::from_secs(20)).is_err());
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = Pki::load_or_create(dir.path(), &["localhost".into()]).err().unwrap().to_string();
        assert!(err.contains("only one of ca.pem and ca.key"), "{err}");
    }
}
