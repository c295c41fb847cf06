//! The agent's identity: its key (made here, never sent), its certificate from the controller's
//! CA, and the CA itself. First contact trusts the controller through the CA pin carried in the
//! enrollment token; after that, only through the stored CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity, Uri};
use tresor_proto::MAX_MESSAGE_BYTES;
use tresor_proto::pb::agent_service_client::AgentServiceClient;

/// The gRPC client agents use.
pub type Client = AgentServiceClient<Channel>;

/// What `enroll` stores in the state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The id in the certificate.
    pub agent_id: String,
    /// The name it enrolled with.
    pub name: String,
    /// The controller's URL.
    pub controller: String,
    /// Certificate expiry (Unix seconds).
    pub not_after_unix: i64,
    /// When the certificate was issued (Unix seconds), to renew at two thirds of its life.
    pub issued_unix: i64,
}

/// The identity files below a state directory.
pub struct IdentityFiles {
    dir: PathBuf,
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl IdentityFiles {
    /// The files in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// Whether the agent has enrolled.
    pub fn exists(&self) -> bool {
        self.dir.join("identity.json").exists()
    }

    /// Load the identity and the PEMs (cert, key, CA).
    pub fn load(&self) -> anyhow::Result<(Identity, String, String, String)> {
        let read = |n: &str| {
            std::fs::read_to_string(self.dir.join(n)).with_context(|| {
                format!("cannot read {} (enroll the agent first: tresor-agent enroll)", self.dir.join(n).display())
            })
        };
        let id: Identity =
            serde_json::from_str(&read("identity.json")?).context("identity.json is damaged; enroll again")?;
        Ok((id, read("agent.pem")?, read("agent.key")?, read("ca.pem")?))
    }

    /// Store a (new) certificate and key; the key is written first, so a crash leaves either the
    /// old pair or a new key the old certificate does not match (then the agent re-enrolls).
    pub fn store(&self, id: &Identity, cert: &str, key: &str, ca: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        write_private(&self.dir.join("agent.key"), key.as_bytes())?;
        write_private(&self.dir.join("agent.pem"), cert.as_bytes())?;
        write_private(&self.dir.join("ca.pem"), ca.as_bytes())?;
        write_private(&self.dir.join("identity.json"), &serde_json::to_vec_pretty(id)?)?;
        Ok(())
    }
}

/// A new key pair and a CSR for it.
pub fn new_key_and_csr(name: &str) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating the agent key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key).context("making the CSR")?.pem()?;
    Ok((key.serialize_pem(), csr))
}

fn host_of(url: &str) -> anyhow::Result<(Uri, String, u16)> {
    let uri: Uri = url.parse().with_context(|| format!("{url:?} is not a URL such as https://controller:7443"))?;
    if uri.scheme_str() != Some("https") {
        bail!("{url:?}: the controller is reached over https://");
    }
    let host = uri.host().context("the controller URL has no host")?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(443);
    Ok((uri, host, port))
}

/// A channel to the controller, trusting `ca_pem`, with the agent's certificate if given.
/// Connects lazily; calls fail until the controller answers.
pub fn channel(url: &str, ca_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<Client> {
    let (uri, host, _) = host_of(url)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host);
    if let Some((cert, key)) = identity {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    let ch = Channel::builder(uri)
        .tls_config(tls)
        .context("TLS setup")?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .connect_lazy();
    Ok(AgentServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The pin of a certificate: BLAKE3 of its DER, first 16 bytes, hex (as the controller makes it).
fn pin_of(der: &[u8]) -> String {
    hex::encode(&blake3::hash(der).as_bytes()[..16])
}

/// Fetch the controller's CA certificate on first contact and accept it only if its pin matches
/// the one in the enrollment token. The real connection that follows verifies the server
/// certificate against this CA, so a stranger who replays the CA certificate gains nothing.
pub async fn fetch_pinned_ca(url: &str, pin: &str) -> anyhow::Result<String> {
    let (_, host, port) = host_of(url)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(RecordOnly(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp =
        tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .context("the controller did not answer within 10 s")?
            .with_context(|| format!("cannot reach the controller at {host}:{port}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).context("bad controller host name")?;
    let tls = connector.connect(name, tcp).await.context("TLS handshake with the controller failed")?;
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let ca = certs.iter().find(|c| pin_of(c) == pin).with_context(|| {
        format!("the server at {url} does not present the CA this enrollment token names (pin {pin}); check the URL")
    })?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    Ok(pem)
}

/// Accepts any server certificate chain but still checks the handshake signature; used only to
/// read the chain for the pin check above.
#[derive(Debug)]
struct RecordOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
